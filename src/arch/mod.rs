//! Architecture support. Only `aarch64` exists; it is the single home of assembly, system
//! register access, barriers, TLB and cache maintenance.

pub mod aarch64;
