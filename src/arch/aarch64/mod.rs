//! AArch64 support: the only home of assembly, system registers, barriers, TLB and cache
//! maintenance. `esr`, `fatal`, `mpidr` and `sync` also build on the host for unit tests.

pub mod esr;
pub mod fatal;
pub mod mpidr;
pub mod sync;

#[cfg(target_os = "none")]
pub mod boot;
#[cfg(target_os = "none")]
pub mod cache;
#[cfg(target_os = "none")]
pub mod cpu;
#[cfg(target_os = "none")]
pub mod debug;
#[cfg(target_os = "none")]
pub mod exit;
#[cfg(target_os = "none")]
pub mod firmware;
#[cfg(target_os = "none")]
pub mod fp;
#[cfg(target_os = "none")]
pub mod gic;
#[cfg(target_os = "none")]
pub mod guest;
#[cfg(target_os = "none")]
pub mod handlers;
#[cfg(target_os = "none")]
pub mod heap;
#[cfg(target_os = "none")]
pub mod idregs;
#[cfg(target_os = "none")]
pub mod mmio;
#[cfg(target_os = "none")]
pub mod mmu;
#[cfg(target_os = "none")]
pub mod pmu;
#[cfg(target_os = "none")]
pub mod ram;
#[cfg(all(target_os = "none", feature = "selftest"))]
pub mod selftest;
#[cfg(target_os = "none")]
pub mod sve;
#[cfg(target_os = "none")]
pub mod timer;
#[cfg(target_os = "none")]
pub mod vectors;
