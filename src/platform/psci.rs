//! The PSCI conduit from /psci.

use alloc::format;

use crate::fdt::{ConfigError, Dtb, lookup, str_prop};

use super::PsciConduit;

pub(super) fn parse_psci(dt: &Dtb<'_>) -> Result<Option<PsciConduit>, ConfigError> {
    let Some(lin) = lookup(dt, "/psci") else {
        return Ok(None);
    };
    let path = lin.path();
    match str_prop(lin.node(), "method") {
        Ok(Some("smc")) => Ok(Some(PsciConduit::Smc)),
        Ok(Some("hvc")) => Ok(Some(PsciConduit::Hvc)),
        Ok(Some(other)) => Err(ConfigError::new(
            &path,
            "method",
            format!("\"{other}\" is neither \"smc\" nor \"hvc\""),
        )),
        Ok(None) => Err(ConfigError::new(&path, "method", "missing")),
        Err(problem) => Err(ConfigError::new(&path, "method", problem)),
    }
}
