//! elvisor: a bare-metal Type-1 hypervisor for 64-bit Arm.
//!
//! The hypervisor and its kernel live together in EL2 (Dall, Li & Nieh, ATC 2017), so EL1
//! belongs to the guest alone. Everything that is pure logic (syndrome decoding, device
//! models, device-tree parsing and generation, stage-2 construction, SMCCC/PSCI decoding)
//! builds and is unit-tested on the host; the code that touches the CPU lives in
//! `arch::aarch64` and is compiled for the bare-metal target only.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

// Unsafe code lives in `arch` alone (the workspace lints in Cargo.toml hold it to its
// contract); every other module forbids it, so a new `unsafe` outside arch fails the build.
pub mod arch;
#[forbid(unsafe_code)]
pub mod console;
pub mod fdt; // forbids unsafe code itself (src/fdt/mod.rs)
#[forbid(unsafe_code)]
pub mod mm;
pub mod platform; // forbids unsafe code itself (src/platform/mod.rs)
#[forbid(unsafe_code)]
pub mod shell;
pub mod vdev; // forbids unsafe code itself (src/vdev/mod.rs)
#[forbid(unsafe_code)]
pub mod vm;

#[cfg(target_os = "none")]
#[forbid(unsafe_code)]
pub mod drivers;
#[cfg(target_os = "none")]
#[forbid(unsafe_code)]
pub mod kernel;
