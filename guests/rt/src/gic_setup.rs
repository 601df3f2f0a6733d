//! The bring-up most interrupt-driven guests share (guests/heartbeat, spy, sve): the whole GIC
//! up on the boot CPU, a few interrupts enabled and the runtime's IRQ handler slot set.

use fdt::Fdt;

use crate::arch::irq;
use crate::gic::{self, Gic, GicError};

/// Discovers the GIC in `fdt`, brings up the distributor, this CPU's redistributor (GICv3)
/// and CPU interface, enables each of `intids` (default priority), publishes the GIC for the
/// handler ([`gic::install`]) and puts `handler` in the IRQ handler slot. IRQs stay masked
/// (the caller unmasks them with [`irq::unmask`] when it is ready).
pub fn bring_up(
    fdt: Option<&Fdt<'static>>,
    intids: &[u32],
    handler: fn(),
) -> Result<Gic, GicError> {
    let gic = Gic::discover(fdt)?;
    gic.init_distributor()?;
    gic.wake_redistributor()?;
    gic.init_cpu()?;
    for &intid in intids {
        gic.enable(intid);
    }
    gic::install(&gic);
    irq::set_handler(Some(handler));
    Ok(gic)
}
