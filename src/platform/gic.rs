//! The physical GIC: version, frames and maintenance interrupt.

use alloc::format;
use alloc::vec::Vec;

use crate::fdt::{
    ConfigError, InterruptParent, Lineage, compatible_with, find_first, gic_intid, prop, reg,
    reg_count, u32_prop,
};
use crate::mm::{PhysAddr, PhysRange};

use super::{Gic, GicVersion};

const GICV3_COMPATIBLE: &[&str] = &["arm,gic-v3"];
const GICV2_COMPATIBLE: &[&str] = &[
    "arm,cortex-a15-gic",
    "arm,gic-400",
    "arm,cortex-a7-gic",
    "arm,arm-gic",
];

pub(super) fn parse_gic<'a>(root: &Lineage<'a>) -> Result<(Gic, InterruptParent<'a>), ConfigError> {
    let lin = find_first(root, &|n| {
        n.property("interrupt-controller").is_some()
            && (compatible_with(n, GICV3_COMPATIBLE) || compatible_with(n, GICV2_COMPATIBLE))
    })
    .ok_or_else(|| {
        ConfigError::new(
            "/",
            "compatible",
            "no interrupt controller compatible with \"arm,gic-v3\", \"arm,gic-400\", \
             \"arm,cortex-a15-gic\", \"arm,cortex-a7-gic\" or \"arm,arm-gic\"",
        )
    })?;
    let node = lin.node();
    let path = lin.path();
    let version = if compatible_with(node, GICV3_COMPATIBLE) {
        GicVersion::V3
    } else {
        GicVersion::V2
    };
    match u32_prop(node, "#interrupt-cells") {
        Ok(Some(3)) => {}
        _ => {
            return Err(ConfigError::new(&path, "#interrupt-cells", "must be 3"));
        }
    }
    let range = |index: usize| -> Result<Option<PhysRange>, ConfigError> {
        Ok(reg(&lin, index)
            .map_err(|f| lin.error(f))?
            .map(|(base, size)| PhysRange::new(PhysAddr(base), size)))
    };
    let count = reg_count(&lin).map_err(|f| lin.error(f))?;
    let gicd = range(0)?.ok_or_else(|| ConfigError::new(&path, "reg", "missing"))?;
    let mut gic = Gic {
        version,
        gicd,
        gicr: Vec::new(),
        gicc: None,
        gich: None,
        gicv: None,
        maintenance_intid: None,
    };
    let mut next = 1;
    if version == GicVersion::V3 {
        let regions = match u32_prop(node, "#redistributor-regions") {
            Ok(None) => 1,
            Ok(Some(n)) if n >= 1 => n as usize,
            _ => {
                return Err(ConfigError::new(
                    &path,
                    "#redistributor-regions",
                    "must be one cell, at least 1",
                ));
            }
        };
        if count < 1 + regions {
            return Err(ConfigError::new(
                &path,
                "reg",
                format!("needs GICD and {regions} redistributor region(s), has {count} entries"),
            ));
        }
        for index in 1..=regions {
            gic.gicr.extend(range(index)?);
        }
        next = 1 + regions;
    } else if count < 4 {
        return Err(ConfigError::new(
            &path,
            "reg",
            format!(
                "has {count} entries; a GICv2 needs GICD, GICC, GICH and GICV \
                 (the virtualization extensions)"
            ),
        ));
    }
    // GICv2, and optionally GICv3 with legacy support: GICC, GICH, GICV follow.
    gic.gicc = range(next)?;
    gic.gich = range(next + 1)?;
    gic.gicv = range(next + 2)?;
    if let Some(spec) = prop(node, "interrupts") {
        gic.maintenance_intid =
            gic_intid(spec, 0).map_err(|problem| ConfigError::new(&path, "interrupts", problem))?;
    }
    let phandle = u32_prop(node, "phandle")
        .ok()
        .flatten()
        .or_else(|| u32_prop(node, "linux,phandle").ok().flatten());
    Ok((
        gic,
        InterruptParent {
            phandle,
            lineage: lin,
        },
    ))
}
