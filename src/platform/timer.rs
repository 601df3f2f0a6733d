//! The architected timer's interrupts.

use crate::fdt::{
    ConfigError, InterruptParent, Lineage, compatible_with, find_first, gic_intid, prop,
};

use super::Timer;

pub(super) fn parse_timer(
    root: &Lineage<'_>,
    gic: &InterruptParent<'_>,
) -> Result<Timer, ConfigError> {
    let lin = find_first(root, &|n| compatible_with(n, &["arm,armv8-timer"])).ok_or_else(|| {
        ConfigError::new(
            "/",
            "compatible",
            "no node compatible with \"arm,armv8-timer\"",
        )
    })?;
    let path = lin.path();
    let spec = prop(lin.node(), "interrupts")
        .ok_or_else(|| ConfigError::new(&path, "interrupts", "missing"))?;
    if !gic.is_parent_of(&lin) {
        return Err(ConfigError::new(
            &path,
            "interrupts",
            "not routed to the GIC",
        ));
    }
    let ppi = |index: usize| -> Result<Option<u32>, ConfigError> {
        let intid = gic_intid(spec, index).map_err(|p| ConfigError::new(&path, "interrupts", p))?;
        match intid {
            Some(id) if !(16..32).contains(&id) => Err(ConfigError::new(
                &path,
                "interrupts",
                "timer interrupts must be PPIs",
            )),
            other => Ok(other),
        }
    };
    let required = |index: usize| -> Result<u32, ConfigError> {
        ppi(index)?.ok_or_else(|| {
            ConfigError::new(
                &path,
                "interrupts",
                "needs secure-phys, phys, virt and hyp-phys interrupts",
            )
        })
    };
    Ok(Timer {
        secure_phys_intid: required(0)?,
        phys_intid: required(1)?,
        virt_intid: required(2)?,
        hyp_phys_intid: required(3)?,
        hyp_virt_intid: ppi(4)?,
    })
}
