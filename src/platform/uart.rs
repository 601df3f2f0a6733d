//! The console UART: /chosen `stdout-path`, with a PL011 fallback through the aliases.

use crate::fdt::{
    ConfigError, Dtb, InterruptParent, Lineage, Node, as_string, compatible_with, gic_intid,
    is_enabled, lookup, prop, reg, resolve_path,
};
use crate::mm::PhysAddr;

use super::Uart;

/// Where the console PL011 of each board elvisor supports sits, for one purpose only: when no
/// PL011 answers where the device tree says the console is, the stop message can still reach
/// the machine's real console and say which board this machine looks like.
pub const KNOWN_CONSOLES: &[(&str, PhysAddr)] = &[
    ("QEMU virt", PhysAddr(0x0900_0000)),
    ("a Raspberry Pi 4 (BCM2711)", PhysAddr(0xfe20_1000)),
];

fn is_pl011(node: Node<'_>) -> bool {
    compatible_with(node, &["arm,pl011"])
}

/// The console node: /chosen `stdout-path` (or `linux,stdout-path`), options after ':'
/// stripped, aliases resolved. When it names something other than a PL011, the enabled PL011
/// with the lowest `serialN` alias is used instead. Errors are (property, problem).
pub(super) fn console_node<'a>(dt: &Dtb<'a>) -> Result<Lineage<'a>, (&'static str, &'static str)> {
    const STDOUT: &str = "stdout-path";
    let chosen = lookup(dt, "/chosen").ok_or((STDOUT, "missing (there is no /chosen node)"))?;
    let (property, value) = ["stdout-path", "linux,stdout-path"]
        .into_iter()
        .find_map(|name| prop(chosen.node(), name).map(|v| (name, v)))
        .ok_or((STDOUT, "missing (and no linux,stdout-path)"))?;
    let spec = as_string(value).ok_or((property, "not a NUL-terminated UTF-8 string"))?;
    let path = spec.split(':').next().unwrap_or(spec);
    let node = resolve_path(dt, path).ok_or((property, "names no node (nor an alias of one)"))?;
    if is_pl011(node.node()) {
        return Ok(node);
    }
    let mut best: Option<(u32, Lineage<'a>)> = None;
    if let Some(aliases) = lookup(dt, "/aliases") {
        for alias in aliases.node().properties() {
            let Some(n) = alias
                .name
                .strip_prefix("serial")
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if best.as_ref().is_some_and(|(m, _)| *m <= n) {
                continue;
            }
            if let Some(target) = as_string(alias.value).and_then(|t| lookup(dt, t))
                && is_pl011(target.node())
                && is_enabled(target.node())
            {
                best = Some((n, target));
            }
        }
    }
    best.map(|(_, lin)| lin).ok_or((
        property,
        "names a UART that is not compatible with \"arm,pl011\", and no serialN alias names \
         an enabled PL011",
    ))
}

pub(super) fn parse_uart(dt: &Dtb<'_>, gic: &InterruptParent<'_>) -> Result<Uart, ConfigError> {
    let lin = console_node(dt)
        .map_err(|(property, problem)| ConfigError::new("/chosen", property, problem))?;
    let path = lin.path();
    let (base, size) = reg(&lin, 0)
        .map_err(|f| lin.error(f))?
        .ok_or_else(|| ConfigError::new(&path, "reg", "missing"))?;
    let mut intid = None;
    if let Some(spec) = prop(lin.node(), "interrupts")
        && gic.is_parent_of(&lin)
    {
        intid = gic_intid(spec, 0).map_err(|p| ConfigError::new(&path, "interrupts", p))?;
    }
    Ok(Uart {
        path,
        base: PhysAddr(base),
        size_bytes: size,
        intid,
    })
}
