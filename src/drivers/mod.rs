//! Drivers for the physical devices the EL2 kernel owns.

pub mod pl011;
