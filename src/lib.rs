//! elvisor: a bare-metal Type-1 hypervisor for 64-bit Arm.
//!
//! The hypervisor and its kernel live together in EL2 (Dall, Li & Nieh, ATC 2017), so EL1
//! belongs to the guest alone. Everything that is pure logic (syndrome decoding, device
//! models, device-tree parsing and generation, stage-2 construction, SMCCC/PSCI decoding)
//! builds and is unit-tested on the host; the code that touches the CPU lives in
//! `arch::aarch64` and is compiled for the bare-metal target only.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

pub mod arch;
pub mod console;
pub mod fdt;
pub mod mm;
pub mod platform;
pub mod vdev;
pub mod vm;

#[cfg(target_os = "none")]
pub mod drivers;
#[cfg(target_os = "none")]
pub mod kernel;
