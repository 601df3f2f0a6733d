//! elvisor isolation guest: reads, writes and executes guest physical addresses outside its
//! RAM, where nothing of the VM's lives, and expects every access to end in a synchronous
//! external abort injected by the hypervisor, never in data.
//!
//! Several of the addresses are where, on QEMU `virt` with 1 GiB, the *host* keeps other VMs'
//! RAM and the module images (0x5000_0000, 0x6000_0000, 0x7000_0000): a hypervisor that
//! leaked host physical memory into the IPA space, or mapped too much RAM, is caught here.
//!
//! ```text
//!   IPA              why
//!   0x0              below everything (flash on the host)
//!   0x2000_0000      a hole (PCIe MMIO window on the host)
//!   RAM end          the first byte past this VM's RAM
//!   RAM end + 64M    further past it
//!   0x5000_0000      host RAM: another VM, modules
//!   0x6000_0000      host RAM: where scripts/mkdtb puts module images
//!   0x7000_0000      host RAM
//! ```
//!
//! One check per access, in this order:
//! `read <addr>`   a 32-bit load: data abort taken at EL1 (EC 0x25), DFSC 0x10 (synchronous
//!                 external abort), WnR 0, FAR = the address (unless FnV says it is invalid);
//! `write <addr>`  a 32-bit store of a marker: the same with WnR 1;
//! `fetch <addr>`  a branch to the first address that reads as unbacked: instruction abort
//!                 (EC 0x21), IFSC 0x10;
//! `ram-edge`      the last word of RAM is ordinary memory (write, read back).
//! Addresses that fall inside this VM's RAM (a VM bigger than 256 MiB) are skipped with a note.
//! Then `PROBE RESULT: passed=N failed=M` and PSCI SYSTEM_OFF.
//!
//! Without a hypervisor QEMU's own memory map applies: with `-m 64M` the host-RAM addresses and
//! those past the VM's RAM abort as they should, but 0x0 is flash and 0x2000_0000 PCIe (both
//! read without a fault), so expect `failed=4` there.

#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use core::sync::atomic::Ordering;

use elvisor_guest_rt::arch::probe;
use elvisor_guest_rt::exception::{Fault, ec, fsc};
use elvisor_guest_rt::{BootInfo, Report, mem};

elvisor_guest_rt::entry!(main);

/// What the write probes try to store: "PROB", xor the address.
const MARKER: u32 = 0x5052_4f42;

/// ISS.FnV (bit 10) of a data or instruction abort: FAR is not valid.
const ISS_FNV: u32 = 1 << 10;

/// 64 MiB.
const MIB_64: usize = 64 << 20;

fn main(boot: &BootInfo) {
    let mut report = Report::new("PROBE");
    let Some(ram) = boot.ram.clone() else {
        report.fail("ram", format_args!("no /memory node in the device tree"));
        report.finish();
        return;
    };
    report.note(format_args!(
        "elvisor isolation guest: RAM {:#x}..{:#x} ({} MiB), reset-count={:?}",
        ram.start,
        ram.end,
        (ram.end - ram.start) >> 20,
        boot.reset_count
    ));

    let candidates = [
        0x0,
        0x2000_0000,
        ram.end,
        ram.end + MIB_64,
        0x5000_0000,
        0x6000_0000,
        0x7000_0000,
    ];
    let mut first_unbacked = None;
    for (i, &addr) in candidates.iter().enumerate() {
        if candidates[..i].contains(&addr) {
            continue;
        }
        if mem::in_guest_ram(addr) {
            report.note(format_args!(
                "{addr:#x} is inside this VM's RAM: not probed"
            ));
            continue;
        }
        let read = probe::read_u32(addr);
        check_abort(&mut report, "read", addr, read.map(u64::from), false);
        if read.is_err() && first_unbacked.is_none() {
            first_unbacked = Some(addr);
        }
        let write = probe::write_u32(addr, MARKER ^ addr as u32);
        check_abort(&mut report, "write", addr, write.map(|()| 0), true);
    }

    match first_unbacked {
        Some(addr) => fetch(&mut report, addr),
        None => report.fail(
            "fetch",
            format_args!("no probed address aborted a read: nothing safe to branch to"),
        ),
    }
    ram_edge(&mut report, ram.end);
    report.finish();
}

/// `<kind> <addr>`: the access must have raised a synchronous external abort at EL1.
fn check_abort(
    report: &mut Report,
    kind: &str,
    addr: usize,
    result: Result<u64, Fault>,
    write: bool,
) {
    let mut name = Name::new();
    name.push(kind);
    name.push(" ");
    name.push_hex(addr);
    let name = name.as_str();
    match result {
        Ok(_) if write => report.fail(
            name,
            format_args!("no abort: the write to IPA {addr:#x} completed"),
        ),
        Ok(value) => report.fail(
            name,
            format_args!("no abort: the read of IPA {addr:#x} returned {value:#x}"),
        ),
        Err(fault) => {
            let esr = fault.esr;
            let far_ok = esr.iss() & ISS_FNV != 0 || fault.far == addr as u64;
            let ok = esr.ec() == ec::DABT_CURRENT
                && esr.fsc() == fsc::SYNC_EXTERNAL_ABORT
                && esr.wnr() == write
                && far_ok;
            report.check(
                name,
                ok,
                format_args!(
                    "{fault}; expected EC {:#04x} DFSC {:#04x} WnR {} FAR {addr:#x}",
                    ec::DABT_CURRENT,
                    fsc::SYNC_EXTERNAL_ABORT,
                    u8::from(write)
                ),
            );
        }
    }
}

/// `fetch <addr>`: a branch to an address whose read aborted must raise an instruction abort.
fn fetch(report: &mut Report, addr: usize) {
    let mut name = Name::new();
    name.push("fetch ");
    name.push_hex(addr);
    let name = name.as_str();
    match probe::branch_unbacked(addr) {
        Some(Err(fault)) => {
            let esr = fault.esr;
            report.check(
                name,
                esr.ec() == ec::IABT_CURRENT && esr.fsc() == fsc::SYNC_EXTERNAL_ABORT,
                format_args!(
                    "{fault}; expected EC {:#04x} IFSC {:#04x}",
                    ec::IABT_CURRENT,
                    fsc::SYNC_EXTERNAL_ABORT
                ),
            );
        }
        Some(Ok(())) => report.fail(name, format_args!("the code at {addr:#x} ran and returned")),
        None => report.fail(
            name,
            format_args!("a read of {addr:#x} no longer aborts: not branching there"),
        ),
    }
}

/// `ram-edge`: the last word of RAM is RAM (the VM has all the memory it was given).
fn ram_edge(report: &mut Report, ram_end: usize) {
    let addr = ram_end - 4;
    let Some(word) = mem::free_ram_word(addr) else {
        report.note(format_args!(
            "ram-edge skipped: {addr:#x} is not free RAM (the image or the DTB?)"
        ));
        return;
    };
    let pattern = MARKER ^ addr as u32;
    word.store(pattern, Ordering::SeqCst);
    let back = word.load(Ordering::SeqCst);
    report.check(
        "ram-edge",
        back == pattern,
        format_args!("the last RAM word {addr:#x} read back {back:#x}, wrote {pattern:#x}"),
    );
}

/// A check name built without an allocator: "read 0x50000000" and the like.
struct Name {
    bytes: [u8; 32],
    len: usize,
}

impl Name {
    fn new() -> Self {
        Self {
            bytes: [0; 32],
            len: 0,
        }
    }

    fn push(&mut self, s: &str) {
        for &b in s.as_bytes() {
            if self.len < self.bytes.len() {
                self.bytes[self.len] = b;
                self.len += 1;
            }
        }
    }

    fn push_hex(&mut self, value: usize) {
        self.push("0x");
        let digits = (usize::BITS - value.leading_zeros()).div_ceil(4).max(1);
        for shift in (0..digits).rev() {
            let nibble = (value >> (4 * shift)) & 0xf;
            let b = b"0123456789abcdef"[nibble];
            self.push(core::str::from_utf8(&[b]).unwrap_or("?"));
        }
    }

    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("?")
    }
}
