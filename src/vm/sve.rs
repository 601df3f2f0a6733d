//! SVE for guests: the per-VM vector length and a vCPU's saved SVE register file.
//!
//! A VM gets SVE when the CPU has it, unless its node says `elvisor,sve-vector-length = <0>`
//! (docs/configuration.md). Its vector length is the CPU's largest, or the node's limit; the
//! hypervisor enforces it with ZCR_EL2.LEN, written whenever the vCPU's registers are loaded.
//!
//! The registers are switched lazily, with FP/SIMD (`kernel::fpu`): a vCPU is in *FP mode*
//! (its state is [`super::vcpu::FpState`], SVE trapped) until its first SVE instruction or
//! ZCR_EL1 access traps (EC 0x19); from then on, until it is reset, it is in *SVE mode* and its
//! whole register file, Z0-Z31, P0-P15, FFR, FPSR, FPCR and ZCR_EL1, lives here. The V
//! registers are the low 128 bits of the Z registers, so the SVE state covers the FP state;
//! entering SVE mode copies the FP state in and zeroes everything above it.

use alloc::boxed::Box;
use alloc::vec;

use super::vcpu::FpState;

/// Largest architectural vector length: 2048 bits (ZCR_ELx.LEN = 15).
pub const MAX_VL_BYTES: usize = 256;
/// ZCR_ELx.LEN: bits [3:0]; the effective length is (LEN + 1) * 128 bits, rounded down to one
/// the CPU supports (ARM ARM, ZCR_EL2).
pub const ZCR_LEN_MASK: u64 = 0xf;
/// The guest's ZCR_EL1 when it enters SVE mode: LEN all ones, so its vector length is the VM's
/// until it writes ZCR_EL1 (the register's reset value is architecturally UNKNOWN).
pub const ZCR_EL1_RESET: u64 = ZCR_LEN_MASK;

/// u128 words for the register file at vector length `vl` bytes: 32 Z registers of `vl` bytes,
/// then 16 P registers and FFR of `vl / 8` bytes each (the layout `str z<n>, [x, #n, mul vl]`
/// and `str p<n>, [x + 32 * VL, #n, mul vl]` store).
pub const fn words_for(vl: usize) -> usize {
    (32 * vl + 17 * vl / 8).div_ceil(16)
}

/// Byte offset of the predicate registers in the buffer at vector length `vl`.
pub const fn p_offset(vl: usize) -> usize {
    32 * vl
}

/// The ZCR_EL2.LEN a VM runs with: `None` when it gets no SVE (the CPU has none, whose largest
/// vector length is `host_max_vl` bytes, or the VM's node turned it off with 0), else the
/// node's limit in bits (a multiple of 128, checked by the configuration parser), capped at the
/// CPU's largest.
pub fn vm_len(requested_bits: Option<u32>, host_max_vl: Option<u32>) -> Option<u8> {
    let host = host_max_vl.filter(|&b| b >= 16)?;
    let host_len = (host / 16 - 1).min(ZCR_LEN_MASK as u32);
    let len = match requested_bits {
        Some(0) => return None,
        None => host_len,
        Some(bits) => (bits / 128).saturating_sub(1).min(host_len),
    };
    Some(len as u8)
}

/// Whether `bits` is an acceptable `elvisor,sve-vector-length`: 0 (SVE off) or a multiple of
/// 128 from 128 to 2048.
pub fn valid_vector_bits(bits: u32) -> bool {
    bits == 0 || (bits.is_multiple_of(128) && (128..=2048).contains(&bits))
}

/// A vCPU's SVE registers while another vCPU owns the register file, and its mode.
#[derive(Debug)]
pub struct SveState {
    /// Z0-Z31, P0-P15, FFR at vector length `vl` ([`words_for`]); sized for the largest
    /// length LEN allows, (LEN + 1) * 16 bytes, so no CPU's rounding can overflow it.
    pub regs: Box<[u128]>,
    pub zcr_el1: u64,
    pub fpsr: u64,
    pub fpcr: u64,
    /// ZCR_EL2.LEN for this vCPU (the VM's limit).
    pub len: u8,
    /// The vector length in bytes the registers were last laid out at.
    pub vl: u32,
    /// SVE mode: the register file is this state (FP mode: the vCPU's FpState).
    pub active: bool,
}

impl SveState {
    /// A vCPU's state for ZCR_EL2.LEN `len`, in FP mode.
    pub fn new(len: u8) -> Self {
        let len = len.min(ZCR_LEN_MASK as u8);
        let cap = (usize::from(len) + 1) * 16;
        Self {
            regs: vec![0u128; words_for(cap)].into_boxed_slice(),
            zcr_el1: ZCR_EL1_RESET,
            fpsr: 0,
            fpcr: 0,
            len,
            vl: cap as u32,
            active: false,
        }
    }

    /// The largest vector length in bytes the buffer holds.
    pub fn capacity_vl(&self) -> usize {
        (usize::from(self.len) + 1) * 16
    }

    /// Back to FP mode (vCPU reset). The buffer is rewritten whole on the next activation.
    pub fn reset(&mut self) {
        self.active = false;
        self.zcr_el1 = ZCR_EL1_RESET;
    }

    /// Enters SVE mode from the FP state `fp`, laid out at vector length `vl` bytes (what the
    /// CPU gives for `len`): each Z register is its V register zero-extended, P0-P15 and FFR
    /// are zero, ZCR_EL1 starts at [`ZCR_EL1_RESET`]. Nothing of an earlier life of the buffer
    /// survives. Returns false (and stays in FP mode) if `vl` does not fit the buffer.
    pub fn activate_from(&mut self, fp: &FpState, vl: usize) -> bool {
        if vl == 0 || !vl.is_multiple_of(16) || vl > self.capacity_vl() {
            return false;
        }
        self.regs.fill(0);
        for (i, q) in fp.q.iter().enumerate() {
            if let Some(w) = self.regs.get_mut(i * vl / 16) {
                *w = *q;
            }
        }
        self.fpsr = fp.fpsr;
        self.fpcr = fp.fpcr;
        self.zcr_el1 = ZCR_EL1_RESET;
        self.vl = vl as u32;
        self.active = true;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_vector_length() {
        // QEMU -cpu max: 2048 bits.
        assert_eq!(vm_len(None, Some(256)), Some(15));
        assert_eq!(vm_len(Some(512), Some(256)), Some(3));
        assert_eq!(vm_len(Some(128), Some(256)), Some(0));
        assert_eq!(vm_len(Some(0), Some(256)), None, "turned off");
        assert_eq!(vm_len(Some(2048), Some(64)), Some(3), "capped at the CPU's");
        assert_eq!(vm_len(None, None), None, "no SVE on the CPU (Cortex-A72)");
        assert_eq!(vm_len(Some(256), None), None);
        for ok in [0, 128, 256, 384, 2048] {
            assert!(valid_vector_bits(ok), "{ok}");
        }
        for bad in [1, 64, 100, 2176, 4096, u32::MAX] {
            assert!(!valid_vector_bits(bad), "{bad}");
        }
    }

    #[test]
    fn activation_zero_extends_the_fp_state() {
        let mut s = SveState::new(3); // 512 bits
        assert_eq!(s.capacity_vl(), 64);
        assert_eq!(s.regs.len(), words_for(64));
        s.regs.fill(u128::MAX); // an earlier life
        let mut fp = FpState::default();
        for (i, q) in fp.q.iter_mut().enumerate() {
            *q = 0x1000 + i as u128;
        }
        fp.fpcr = 0x0300_0000;
        fp.fpsr = 0x8;
        assert!(s.activate_from(&fp, 32), "a CPU may round 512 down to 256");
        assert!(s.active);
        for i in 0..32 {
            assert_eq!(s.regs[i * 2], 0x1000 + i as u128);
            assert_eq!(s.regs[i * 2 + 1], 0);
        }
        assert!(
            s.regs[64..].iter().all(|&w| w == 0),
            "P, FFR and the rest zero"
        );
        assert_eq!((s.fpcr, s.fpsr, s.zcr_el1), (0x0300_0000, 0x8, 0xf));
        assert!(!s.activate_from(&fp, 80), "larger than LEN allows");
        s.reset();
        assert!(!s.active);
        assert_eq!(p_offset(32), 1024);
        assert_eq!(words_for(16), (512 + 34usize).div_ceil(16));
        assert_eq!(words_for(MAX_VL_BYTES), (8192 + 544) / 16);
    }
}
