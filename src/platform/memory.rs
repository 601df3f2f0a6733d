//! RAM (`device_type = "memory"` nodes) and /reserved-memory.

use alloc::vec::Vec;
use core::ops::ControlFlow;

use crate::fdt::{
    ConfigError, Dtb, Lineage, as_string, is_enabled, lookup, prop, reg, reg_count, visit,
};
use crate::mm::{PhysAddr, PhysRange};

pub(super) fn parse_memory(root: &Lineage<'_>) -> Result<Vec<PhysRange>, ConfigError> {
    let mut ram = Vec::new();
    let mut lin = *root;
    let flow = visit(&mut lin, &mut |l| {
        let node = l.node();
        if !is_enabled(node) || prop(node, "device_type").and_then(as_string) != Some("memory") {
            return ControlFlow::Continue(());
        }
        let count = match reg_count(l) {
            Ok(count) => count,
            Err(fault) => return ControlFlow::Break(l.error(fault)),
        };
        for index in 0..count {
            match reg(l, index) {
                Ok(Some((base, size))) if size > 0 => {
                    ram.push(PhysRange::new(PhysAddr(base), size));
                }
                Ok(_) => {}
                Err(fault) => return ControlFlow::Break(l.error(fault)),
            }
        }
        ControlFlow::Continue(())
    });
    if let ControlFlow::Break(error) = flow {
        return Err(error);
    }
    if ram.is_empty() {
        return Err(ConfigError::new(
            "/memory",
            "reg",
            "no device_type = \"memory\" node with a non-empty reg",
        ));
    }
    ram.sort_by_key(|r| r.base);
    Ok(ram)
}

pub(super) fn parse_reserved_memory(
    dt: &Dtb<'_>,
    out: &mut Vec<PhysRange>,
) -> Result<(), ConfigError> {
    let Some(mut lin) = lookup(dt, "/reserved-memory") else {
        return Ok(());
    };
    for child in lin.node().children() {
        if !is_enabled(child) || !lin.push(child) {
            continue;
        }
        let result = (|| {
            for index in 0..reg_count(&lin)? {
                if let Some((base, size)) = reg(&lin, index)?
                    && size > 0
                {
                    out.push(PhysRange::new(PhysAddr(base), size));
                }
            }
            Ok(())
        })();
        let error = result.map_err(|fault| lin.error(fault));
        lin.pop();
        error?;
    }
    Ok(())
}
