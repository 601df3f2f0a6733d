//! elvisor-guest-rt: the runtime every elvisor test and benchmark guest links against.
//!
//! A guest is a raw arm64 Image (Linux Image header at offset 0) that the hypervisor enters at
//! EL1h with the MMU off, DAIF masked and x0 = the IPA of its device tree. This crate owns
//! everything between that entry and the guest's `main`:
//!
//! - [`arch`]: the Image header and entry code (stack, `.bss`, FP/SIMD, vectors), the EL1
//!   exception vectors, SMCCC conduits, MMIO accessors, fault probes and the RAM layout. The
//!   only module with `asm!` and `unsafe` (the rest of the crate denies `unsafe_code`).
//! - [`boot`]: what the device tree says (UART, RAM, PSCI conduit, `elvisor,reset-count`).
//! - [`console`]: the polled PL011 driver behind [`print!`] / [`println!`].
//! - [`smccc`]: SMCCC/PSCI function ids and calls.
//! - [`exception`]: fault records and the "expected exception" facility the probes use.
//! - [`report`]: `<PREFIX> PASS/FAIL/RESULT` lines, parsed by the QEMU system tests.
//! - [`mem`] (= `arch::mem`): safe access to free guest RAM outside the image and the DTB.
//! - [`dt`]: device-tree lookups by `compatible`, `reg` ranges, GIC interrupt specifiers.
//! - [`gic`]: GICv2/GICv3 discovery, bring-up and the operations interrupt tests need;
//!   [`gic_setup`]: the usual whole bring-up with the IRQ handler slot set.
//! - [`timer`]: the EL1 virtual and physical timers and their INTIDs; IRQ masking, `wfi` and
//!   the IRQ handler slot are in [`arch::irq`].
//! - [`smp`]: secondary CPUs (PSCI CPU_ON into the runtime's entry code, a stack each), waits
//!   between CPUs and a lock built from loads and stores (the MMU stays off: no exclusives).
//! - [`virtio_mmio`], [`virtq`], [`virtio_net`]: the virtio-mmio registers, a split virtqueue
//!   with device bring-up, and the virtio-net driver of guests/net and guests/iobench.
//!
//! A guest binary is `#![no_std] #![no_main]`, links with a linker script that provides the
//! symbols listed in [`arch::boot`], and names its main function with [`entry!`]:
//!
//! ```ignore
//! elvisor_guest_rt::entry!(main);
//! fn main(boot: &elvisor_guest_rt::BootInfo) { elvisor_guest_rt::println!("hello"); }
//! ```
//!
//! When `main` returns, the runtime calls PSCI SYSTEM_OFF.

#![no_std]
#![deny(unsafe_code)]

#[allow(unsafe_code)]
pub mod arch;
pub mod boot;
pub mod console;
pub mod dt;
pub mod exception;
pub mod gic;
pub mod gic_setup;
pub mod report;
pub mod smccc;
pub mod smp;
pub mod timer;
pub mod virtio_mmio;
pub mod virtio_net;
pub mod virtq;

mod panic;

pub use arch::mem;
pub use boot::BootInfo;
/// What the guests and elvisor agree on (vendor hypercalls, UID, guest memory map), shared
/// with the hypervisor.
pub use elvisor_abi as abi;
pub use exception::{ExceptionKind, Fault};
pub use report::Report;

/// Names the guest's main function, `fn(&BootInfo)`, which the runtime calls after boot.
///
/// Expands to the one symbol the runtime's entry code looks for, with the signature checked by
/// the compiler, so the guest never writes `no_mangle` itself.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        /// The guest's entry point, called once by elvisor-guest-rt after boot.
        #[unsafe(export_name = "__elvisor_guest_main")]
        fn __elvisor_guest_main(boot: &$crate::BootInfo) {
            let main: fn(&$crate::BootInfo) = $main;
            main(boot)
        }
    };
}

/// First Rust code to run, called by the entry assembly once the stack, `.bss`, FP/SIMD and
/// VBAR_EL1 are set up. `dtb` is the value the loader put in x0.
extern "C" fn rt_start(dtb: usize) -> ! {
    let boot = boot::BootInfo::discover(dtb);
    mem::init(&boot);
    console::init(boot.uart_base);
    smccc::set_conduit(boot.psci_conduit);

    arch::boot::call_guest_main(&boot);

    smccc::psci::system_off()
}
