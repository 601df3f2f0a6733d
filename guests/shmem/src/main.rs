//! elvisor shared-memory guest: two VMs (boards/qemu-virt/vms/shmem-a.dtsi, shmem-b.dtsi) run
//! this image and talk through two shared-memory regions and their doorbells.
//!
//! * `ping` (2 MiB, both read-write): the VM whose `elvisor,index` is 0 (A) writes a message
//!   and rings member 1 (B); B takes the doorbell interrupt, reads STATUS (who rang),
//!   acknowledges it (the line falls), reads the message, writes a reply and rings A; A takes
//!   its interrupt and checks the reply.
//! * `board` (2 MiB, A read-write, B read-only): A writes a word before ringing B; B reads it,
//!   and its own write there must abort (stage-2 permission fault, an external abort injected)
//!   and change nothing; then B rings A on the `board` doorbell and A checks the word is intact.
//!
//! Each VM first finds its regions and doorbell pages in its device tree (`elvisor,shmem`
//! nodes) and checks the doorbell's MAGIC, INDEX, PEERS and FLAGS against the node. Interrupts
//! are taken by polling the GIC's acknowledge register with IRQs masked (the MMU is off: the
//! shared memory is reached with single 32-bit loads and stores). Lines start with `SHMEM`.

#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use elvisor_guest_rt::abi::doorbell as db;
use elvisor_guest_rt::arch::mmio::Region;
use elvisor_guest_rt::arch::probe;
use elvisor_guest_rt::boot::find_node;
use elvisor_guest_rt::gic::{self, Gic};
use elvisor_guest_rt::timer::{Timer, frequency_hz};
use elvisor_guest_rt::{BootInfo, Report, dt};

elvisor_guest_rt::entry!(main);

/// What the device tree says of one mapping, with its registers.
struct Shm {
    name: &'static str,
    mem: Region,
    bell: Region,
    intid: u32,
    index: u32,
    peers: u32,
    read_only: bool,
}

/// Message layout in `ping`: A's words at 0x100, B's reply at 0x200, 16 words each.
const MSG: usize = 0x100;
const REPLY: usize = 0x200;
const WORDS: usize = 16;
const BOARD_WORD: u32 = 0xB0A2_D000;

fn main(boot: &BootInfo) {
    let mut report = Report::new("SHMEM");
    let Some(fdt) = boot.fdt.as_ref() else {
        report.fail("dt", format_args!("no device tree"));
        report.finish();
        return;
    };
    let mut shms: [Option<Shm>; 2] = [None, None];
    let mut found = 0;
    if let Some(root) = find_node(fdt, "/") {
        for node in root.children() {
            if !dt::is_compatible(node, &[db::COMPATIBLE]) {
                continue;
            }
            let name = node
                .property("elvisor,name")
                .and_then(|p| p.as_str())
                .unwrap_or("");
            let slot = match name {
                "ping" => 0,
                "board" => 1,
                _ => continue,
            };
            let (Some(mem), Some(bell), Some(irq)) = (
                dt::reg_range(node, 0),
                dt::reg_range(node, 1),
                dt::gic_interrupt(node, 0),
            ) else {
                continue;
            };
            let (Some(mem), Some(bell), Some(intid)) = (
                Region::new(mem.start, mem.end - mem.start),
                Region::new(bell.start, bell.end - bell.start),
                irq.intid(),
            ) else {
                continue;
            };
            shms[slot] = Some(Shm {
                name,
                mem,
                bell,
                intid,
                index: dt::u32_property(node, "elvisor,index").unwrap_or(u32::MAX),
                peers: dt::u32_property(node, "elvisor,peers").unwrap_or(0),
                read_only: node.property("read-only").is_some(),
            });
            found += 1;
        }
    }
    let [Some(ping), Some(board)] = shms else {
        report.fail(
            "dt",
            format_args!("{found} usable elvisor,shmem nodes; want ping and board"),
        );
        report.finish();
        return;
    };
    for s in [&ping, &board] {
        let b = &s.bell;
        let (magic, index, peers, flags) = (
            b.read32(db::REG_MAGIC as usize),
            b.read32(db::REG_INDEX as usize),
            b.read32(db::REG_PEERS as usize),
            b.read32(db::REG_FLAGS as usize),
        );
        report.note(format_args!(
            "{} at {:#x}+{:#x}, doorbell {:#x} INTID {}, member {} of {}{}",
            s.name,
            s.mem.base(),
            s.mem.len_bytes(),
            b.base(),
            s.intid,
            s.index,
            s.peers,
            if s.read_only { ", read-only" } else { "" }
        ));
        report.check(
            "dt: region and doorbell found, registers agree",
            magic == db::MAGIC
                && index == s.index
                && peers == s.peers
                && peers == 2
                && (flags & db::FLAG_READ_ONLY != 0) == s.read_only,
            format_args!(
                "{}: MAGIC {magic:#x} INDEX {index} PEERS {peers} FLAGS {flags:#x}",
                s.name
            ),
        );
    }

    let g = match Gic::discover(Some(fdt)) {
        Ok(g) => g,
        Err(e) => {
            report.fail("gic", format_args!("{e}"));
            report.finish();
            return;
        }
    };
    if g.init_distributor().is_err() || g.init_cpu().is_err() {
        report.fail("gic", format_args!("bring-up failed"));
    }
    g.set_priority_mask(gic::PRIORITY_MASK_NONE);
    for s in [&ping, &board] {
        g.set_priority(s.intid, 0x80);
        g.enable(s.intid);
    }

    if ping.index == 0 {
        run_a(&mut report, &g, &ping, &board);
    } else {
        run_b(&mut report, &g, &ping, &board);
    }
    report.finish();
}

/// Waits up to 10 s for `intid`, acknowledging and ending anything else that comes.
fn take(g: &Gic, intid: u32) -> bool {
    let deadline = Timer::Virtual.count() + 10 * frequency_hz();
    while Timer::Virtual.count() < deadline {
        let iar = g.acknowledge();
        if iar.is_special() {
            core::hint::spin_loop();
            continue;
        }
        g.end_of_interrupt(iar);
        if iar.intid() == intid {
            return true;
        }
    }
    false
}

/// Takes the doorbell interrupt of `s`, checks STATUS is `want`, acknowledges, and checks the
/// line fell.
fn doorbell(report: &mut Report, g: &Gic, s: &Shm, want: u32, what: &str) -> bool {
    if !take(g, s.intid) {
        report.fail(
            what,
            format_args!("no doorbell interrupt {} within 10 s", s.intid),
        );
        return false;
    }
    let status = s.bell.read32(db::REG_STATUS as usize);
    s.bell.write32(db::REG_ACK as usize, status);
    let after = s.bell.read32(db::REG_STATUS as usize);
    let pending = g.is_pending(s.intid);
    let ok = status == want && after == 0 && !pending;
    if !ok {
        report.fail(
            what,
            format_args!(
                "STATUS {status:#x} (want {want:#x}), after ACK {after:#x}, still pending {pending}"
            ),
        );
    }
    ok
}

fn run_a(report: &mut Report, g: &Gic, ping: &Shm, board: &Shm) {
    board.mem.write32(0, BOARD_WORD);
    for i in 0..WORDS {
        ping.mem.write32(MSG + 4 * i, 0xA000_0000 + i as u32);
    }
    ping.bell.write32(db::REG_RING as usize, 1);
    report.pass("a: message written, B rung");
    if doorbell(report, g, ping, 0b10, "a: B's reply") {
        let bad = (0..WORDS).find(|&i| ping.mem.read32(REPLY + 4 * i) != 0xB000_0000 + i as u32);
        report.check(
            "a: B's reply arrived with the doorbell",
            bad.is_none(),
            format_args!("reply word {bad:?} wrong"),
        );
    }
    if doorbell(report, g, board, 0b10, "a: board doorbell") {
        let word = board.mem.read32(0);
        report.check(
            "a: B's refused write left the board intact",
            word == BOARD_WORD,
            format_args!("board word {word:#x}"),
        );
    }
}

fn run_b(report: &mut Report, g: &Gic, ping: &Shm, board: &Shm) {
    if !doorbell(report, g, ping, 0b01, "b: A's doorbell") {
        return;
    }
    let bad = (0..WORDS).find(|&i| ping.mem.read32(MSG + 4 * i) != 0xA000_0000 + i as u32);
    report.check(
        "b: A's message arrived with the doorbell",
        bad.is_none(),
        format_args!("message word {bad:?} wrong"),
    );
    for i in 0..WORDS {
        ping.mem.write32(REPLY + 4 * i, 0xB000_0000 + i as u32);
    }
    // Ringing members that do not exist does nothing.
    ping.bell.write32(db::REG_RING as usize, 2);
    ping.bell.write32(db::REG_RING as usize, u32::MAX);
    ping.bell.write32(db::REG_RING as usize, 0);
    report.pass("b: reply written, A rung");

    // The read-only mapping: reads see A's word, a write aborts and changes nothing.
    let before = board.mem.read32(0);
    let write = probe::write_u32(board.mem.base(), 0xdead_beef);
    let after = board.mem.read32(0);
    report.check(
        "b: a write to the read-only mapping aborts and changes nothing",
        before == BOARD_WORD
            && after == BOARD_WORD
            && write.as_ref().is_err_and(|f| f.esr.ec() == 0x25),
        format_args!("board {before:#x} -> {after:#x}, write {write:?}"),
    );
    board.bell.write32(db::REG_RING as usize, 0);
}
