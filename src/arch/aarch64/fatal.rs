//! What an exception taken at EL2 was, in words: a stack overflow into a guard page, a write
//! to the hypervisor's text or an instruction fetch from its data (W^X), or something else.
//! Pure decoding of ESR_EL2 and FAR_EL2 against the image layout, so it builds and is tested
//! on the host; the fatal handler (exit.rs) supplies the registers and the layout.

use core::fmt;

use super::esr::{Esr, data_abort, ec, fsc};

/// The image ranges the classification needs, each `[start, end)`.
#[derive(Clone, Copy, Debug)]
pub struct ImageMap {
    /// .text: mapped read-only and executable.
    pub text: (u64, u64),
    /// Everything after .text: rodata, data, bss, stacks, heap (never executable).
    pub data: (u64, u64),
}

/// A stack guard page FAR_EL2 fell into (see cpu::guard_pages).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct GuardHit {
    /// The CPU whose stack the guard page protects.
    pub cpu: usize,
    /// Base address of the guard page.
    pub page: u64,
    /// True for the guard below the exception stack, false for the kernel stack's.
    pub exception_stack: bool,
}

/// What an EL2 exception was.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum El2Fault {
    /// A data access into a stack's guard page: the stack ran over its end.
    StackOverflow(GuardHit),
    /// A store to .text, refused by its read-only mapping.
    WriteToText { addr: u64 },
    /// An instruction fetch from the image outside .text, refused by execute-never.
    ExecFromData { addr: u64 },
    /// Anything else: the generic report (syndrome, registers) says the rest.
    Other,
}

/// ISS.FnV (data and instruction aborts): FAR is not valid.
const ISS_FNV: u32 = 1 << 10;

fn inside(addr: u64, (start, end): (u64, u64)) -> bool {
    start <= addr && addr < end
}

/// Classifies a synchronous exception taken at EL2 from its syndrome `esr` and fault address
/// `far`. `guard` is the guard page `far` lies in, if any (the caller knows the stacks).
pub fn classify(esr: u64, far: u64, map: &ImageMap, guard: Option<GuardHit>) -> El2Fault {
    let esr = Esr(esr);
    let iss = esr.iss();
    if iss & ISS_FNV != 0 {
        return El2Fault::Other;
    }
    match esr.ec() {
        // Data abort taken without a change in exception level (ARM ARM D24.2.40, EC 0x25).
        ec::DABT_CUR => {
            let da = data_abort(iss);
            match guard {
                // Guard pages are unmapped: any access there is a translation fault, and
                // only a stack grows into one.
                Some(g) if fsc::is_translation(da.fsc) => El2Fault::StackOverflow(g),
                _ if da.write && fsc::is_permission(da.fsc) && inside(far, map.text) => {
                    El2Fault::WriteToText { addr: far }
                }
                _ => El2Fault::Other,
            }
        }
        // Instruction abort taken without a change in exception level (EC 0x21): IFSC in the
        // same place as DFSC.
        ec::IABT_CUR if fsc::is_permission((iss & 0x3f) as u8) && inside(far, map.data) => {
            El2Fault::ExecFromData { addr: far }
        }
        _ => El2Fault::Other,
    }
}

impl fmt::Display for El2Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            El2Fault::StackOverflow(g) if g.exception_stack => write!(
                f,
                "exception stack overflow on cpu{} (guard page at {:#x})",
                g.cpu, g.page
            ),
            El2Fault::StackOverflow(g) => write!(
                f,
                "stack overflow on cpu{} (guard page at {:#x})",
                g.cpu, g.page
            ),
            El2Fault::WriteToText { addr } => {
                write!(f, "write to hypervisor text at {addr:#x} (W^X)")
            }
            El2Fault::ExecFromData { addr } => write!(
                f,
                "instruction fetch from hypervisor data at {addr:#x} (W^X)"
            ),
            El2Fault::Other => f.write_str("exception at EL2"),
        }
    }
}

/// Which kind of exception vector was taken, for the report.
pub fn vector_name(kind: u64) -> &'static str {
    match kind {
        0 => "synchronous exception",
        1 => "IRQ",
        2 => "FIQ",
        3 => "SError",
        _ => "unknown exception",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    const MAP: ImageMap = ImageMap {
        text: (0x4008_0000, 0x4010_0000),
        data: (0x4010_0000, 0x4100_0000),
    };
    const GUARD: GuardHit = GuardHit {
        cpu: 1,
        page: 0x4020_0000,
        exception_stack: false,
    };
    // EC << 26 | IL.
    const DABT_CUR: u64 = (0x25 << 26) | (1 << 25);
    const IABT_CUR: u64 = (0x21 << 26) | (1 << 25);
    const WNR: u64 = 1 << 6;
    const L3_TRANSLATION: u64 = 0x07;
    const L3_PERMISSION: u64 = 0x0f;

    #[test]
    fn a_store_into_a_guard_page_is_a_stack_overflow() {
        let far = GUARD.page + 0xff0;
        let f = classify(DABT_CUR | WNR | L3_TRANSLATION, far, &MAP, Some(GUARD));
        assert_eq!(f, El2Fault::StackOverflow(GUARD));
        assert_eq!(
            f.to_string(),
            "stack overflow on cpu1 (guard page at 0x40200000)"
        );
        let exc = GuardHit {
            exception_stack: true,
            ..GUARD
        };
        assert_eq!(
            classify(DABT_CUR | L3_TRANSLATION, far, &MAP, Some(exc)).to_string(),
            "exception stack overflow on cpu1 (guard page at 0x40200000)"
        );
    }

    #[test]
    fn a_store_to_text_is_a_w_x_violation_and_a_load_is_not() {
        let f = classify(DABT_CUR | WNR | L3_PERMISSION, 0x4008_1234, &MAP, None);
        assert_eq!(f, El2Fault::WriteToText { addr: 0x4008_1234 });
        assert_eq!(
            f.to_string(),
            "write to hypervisor text at 0x40081234 (W^X)"
        );
        // A read permission fault on text cannot happen; a write fault elsewhere is generic.
        assert_eq!(
            classify(DABT_CUR | L3_PERMISSION, 0x4008_1234, &MAP, None),
            El2Fault::Other
        );
        assert_eq!(
            classify(DABT_CUR | WNR | L3_PERMISSION, 0x4010_0000, &MAP, None),
            El2Fault::Other
        );
        // A translation fault in text (not W^X) is generic too.
        assert_eq!(
            classify(DABT_CUR | WNR | L3_TRANSLATION, 0x4008_1234, &MAP, None),
            El2Fault::Other
        );
    }

    #[test]
    fn a_fetch_from_data_is_a_w_x_violation() {
        let f = classify(IABT_CUR | L3_PERMISSION, 0x4012_0040, &MAP, None);
        assert_eq!(f, El2Fault::ExecFromData { addr: 0x4012_0040 });
        assert_eq!(
            f.to_string(),
            "instruction fetch from hypervisor data at 0x40120040 (W^X)"
        );
        // Outside the image, or not a permission fault: generic.
        assert_eq!(
            classify(IABT_CUR | L3_PERMISSION, 0x5000_0000, &MAP, None),
            El2Fault::Other
        );
        assert_eq!(
            classify(IABT_CUR | L3_TRANSLATION, 0x4012_0040, &MAP, None),
            El2Fault::Other
        );
    }

    #[test]
    fn no_valid_far_or_another_class_is_generic() {
        let fnv = u64::from(ISS_FNV);
        assert_eq!(
            classify(DABT_CUR | fnv | L3_TRANSLATION, 0, &MAP, Some(GUARD)),
            El2Fault::Other
        );
        // A guest's data abort (EC 0x24) never reaches here, but must not be mistaken.
        assert_eq!(
            classify((0x24 << 26) | WNR | L3_PERMISSION, 0x4008_1234, &MAP, None),
            El2Fault::Other
        );
        assert_eq!(vector_name(3), "SError");
        assert_eq!(vector_name(9), "unknown exception");
    }
}
