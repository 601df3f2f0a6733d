//! The shared-memory doorbell: one 4 KiB register page per VM that maps a shared-memory region
//! (`vm::config::shmem`), through which the VMs of that region interrupt each other.
//!
//! The region's VMs are its *members*, numbered by their place in the region's map list
//! (0..peers). Member `i` writes `n` to RING: bit `i` of member `n`'s STATUS is set and member
//! `n`'s interrupt line goes high. The line is a level: it stays high while STATUS is nonzero;
//! member `n` reads STATUS to learn who rang and writes those bits to ACK, which lowers the
//! line once nothing is left. The register map is `elvisor_abi::doorbell`'s:
//!
//! ```text
//!   0x00 MAGIC  RO "EDBL"         0x10 RING   WO peer index (n >= PEERS: ignored)
//!   0x04 INDEX  RO this member    0x14 STATUS RO who rang (bit per member)
//!   0x08 PEERS  RO member count   0x18 ACK    WO clears STATUS bits written as 1
//!   0x0c FLAGS  RO bit 0: read-only mapping
//! ```
//!
//! Only aligned 32-bit accesses are taken (anything else is refused: the caller injects an
//! external abort); reserved offsets and reads of write-only registers read as zero, writes to
//! read-only or reserved registers are ignored.
//!
//! State shared by the members lives in one [`DoorbellGroup`] behind a lock; the interrupt
//! lines of the members (in other VMs) are driven through [`DoorbellLines`], which the kernel
//! implements with the target VM's vGIC. The line is driven with the group locked, so it always
//! equals "STATUS nonzero" even when a ring and an acknowledgement race on two CPUs.
#![forbid(unsafe_code)]

use alloc::sync::Arc;
use alloc::vec::Vec;

use elvisor_abi::doorbell as abi;

use super::{AccessWidth, MmioDevice, MmioError, VcpuId};
use crate::arch::aarch64::sync::Mutex;

/// Size of a doorbell page.
pub const WINDOW_SIZE_BYTES: u64 = 0x1000;
/// Most members of one group (STATUS has one bit each).
pub const MAX_PEERS: usize = abi::MAX_PEERS;

/// Drives the doorbell interrupt line of a member (in whatever VM it is).
pub trait DoorbellLines: Send + Sync {
    /// Sets member `member`'s line to `level`.
    fn set_line(&self, member: usize, level: bool);
}

/// The pending doorbells of every member of one region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DoorbellGroup {
    /// STATUS of each member: bit i = member i rang it.
    status: Vec<u32>,
    /// Which STATUS bits of each member drive its line: all for a doorbell page; what the
    /// guest enabled for a PCI function (`vdev::pci::ivshmem`: its interrupt mask and INTx
    /// Disable).
    enabled: Vec<u32>,
}

impl DoorbellGroup {
    /// A group of `peers` members (clamped to 1..=[`MAX_PEERS`]), nothing pending.
    pub fn new(peers: usize) -> Self {
        let n = peers.clamp(1, MAX_PEERS);
        Self {
            status: alloc::vec![0; n],
            enabled: alloc::vec![u32::MAX; n],
        }
    }

    /// Number of members.
    pub fn peers(&self) -> usize {
        self.status.len()
    }

    /// Member `from` rings member `to`. Returns whether `to` exists (else nothing changes).
    pub fn ring(&mut self, from: usize, to: usize) -> bool {
        if from >= self.status.len() {
            return false;
        }
        match self.status.get_mut(to) {
            Some(s) => {
                *s |= 1 << from;
                true
            }
            None => false,
        }
    }

    /// Clears `mask` in member `member`'s STATUS; returns its line level afterwards.
    pub fn ack(&mut self, member: usize, mask: u32) -> bool {
        if let Some(s) = self.status.get_mut(member) {
            *s &= !mask;
        }
        self.level(member)
    }

    /// Sets which of member `member`'s STATUS bits drive its line; returns the level after.
    pub fn set_enabled(&mut self, member: usize, mask: u32) -> bool {
        if let Some(e) = self.enabled.get_mut(member) {
            *e = mask;
        }
        self.level(member)
    }

    /// Member `member`'s STATUS.
    pub fn status(&self, member: usize) -> u32 {
        self.status.get(member).copied().unwrap_or(0)
    }

    /// Member `member`'s line: high while an enabled bit of its STATUS is set (for a
    /// doorbell page: while STATUS is nonzero).
    pub fn level(&self, member: usize) -> bool {
        self.status(member) & self.enabled.get(member).copied().unwrap_or(0) != 0
    }
}

/// A group shared by the doorbell pages of its members.
pub type SharedGroup = Arc<Mutex<DoorbellGroup>>;

/// One member's doorbell page, on its VM's MMIO bus.
pub struct Doorbell {
    group: SharedGroup,
    lines: Arc<dyn DoorbellLines>,
    index: usize,
    read_only: bool,
}

impl Doorbell {
    /// Member `index` of `group`; `read_only` is what FLAGS reports of its mapping.
    pub fn new(
        group: SharedGroup,
        lines: Arc<dyn DoorbellLines>,
        index: usize,
        read_only: bool,
    ) -> Self {
        Self {
            group,
            lines,
            index,
            read_only,
        }
    }
}

impl MmioDevice for Doorbell {
    fn name(&self) -> &'static str {
        "doorbell"
    }

    fn size_bytes(&self) -> u64 {
        WINDOW_SIZE_BYTES
    }

    fn read(&mut self, _vcpu: VcpuId, offset: u64, width: AccessWidth) -> Result<u64, MmioError> {
        if width != AccessWidth::Word || !offset.is_multiple_of(4) {
            return Err(MmioError::BadAccess);
        }
        let g = self.group.lock();
        let value = match offset {
            abi::REG_MAGIC => abi::MAGIC,
            abi::REG_INDEX => self.index as u32,
            abi::REG_PEERS => g.peers() as u32,
            abi::REG_FLAGS => u32::from(self.read_only) * abi::FLAG_READ_ONLY,
            abi::REG_STATUS => g.status(self.index),
            _ => 0,
        };
        Ok(u64::from(value))
    }

    fn write(
        &mut self,
        _vcpu: VcpuId,
        offset: u64,
        width: AccessWidth,
        value: u64,
    ) -> Result<(), MmioError> {
        if width != AccessWidth::Word || !offset.is_multiple_of(4) {
            return Err(MmioError::BadAccess);
        }
        let mut g = self.group.lock();
        match offset {
            abi::REG_RING => {
                let to = usize::try_from(value).unwrap_or(usize::MAX);
                let was = g.level(to);
                if g.ring(self.index, to) && !was && g.level(to) {
                    self.lines.set_line(to, true);
                }
            }
            abi::REG_ACK => {
                let was = g.level(self.index);
                if was && !g.ack(self.index, value as u32) {
                    self.lines.set_line(self.index, false);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// VM reset: what was pending for this member is dropped (its vGIC is reset too, so the
    /// line starts low on both sides).
    fn reset(&mut self) {
        let mut g = self.group.lock();
        let all = g.status(self.index);
        g.ack(self.index, all);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::boxed::Box;

    /// Records every line change.
    #[derive(Default)]
    struct Log(Mutex<Vec<(usize, bool)>>);
    impl DoorbellLines for Log {
        fn set_line(&self, member: usize, level: bool) {
            self.0.lock().push((member, level));
        }
    }

    fn pair() -> (Doorbell, Doorbell, Doorbell, Arc<Log>) {
        let group: SharedGroup = Arc::new(Mutex::new(DoorbellGroup::new(3)));
        let log = Arc::new(Log::default());
        let a = Doorbell::new(group.clone(), log.clone(), 0, false);
        let b = Doorbell::new(group.clone(), log.clone(), 1, true);
        let c = Doorbell::new(group, log.clone(), 2, false);
        (a, b, c, log)
    }

    const W: AccessWidth = AccessWidth::Word;
    const V: VcpuId = VcpuId(0);

    #[test]
    fn identification() {
        let (mut a, mut b, _, _) = pair();
        assert_eq!(a.read(V, abi::REG_MAGIC, W), Ok(u64::from(abi::MAGIC)));
        assert_eq!(a.read(V, abi::REG_INDEX, W), Ok(0));
        assert_eq!(b.read(V, abi::REG_INDEX, W), Ok(1));
        assert_eq!(b.read(V, abi::REG_PEERS, W), Ok(3));
        assert_eq!(a.read(V, abi::REG_FLAGS, W), Ok(0));
        assert_eq!(b.read(V, abi::REG_FLAGS, W), Ok(1));
        // Write-only and reserved registers read as zero.
        for off in [abi::REG_RING, abi::REG_ACK, 0x1c, 0xffc] {
            assert_eq!(a.read(V, off, W), Ok(0), "{off:#x}");
        }
        assert_eq!(a.name(), "doorbell");
        assert_eq!(a.size_bytes(), 0x1000);
    }

    #[test]
    fn ring_raises_the_target_and_ack_lowers_it() {
        let (mut a, mut b, mut c, log) = pair();
        a.write(V, abi::REG_RING, W, 1).unwrap();
        assert_eq!(*log.0.lock(), [(1, true)]);
        assert_eq!(b.read(V, abi::REG_STATUS, W), Ok(0b001));
        assert_eq!(a.read(V, abi::REG_STATUS, W), Ok(0));
        // A second ring while high: STATUS gains a bit, the line does not move again.
        c.write(V, abi::REG_RING, W, 1).unwrap();
        a.write(V, abi::REG_RING, W, 1).unwrap();
        assert_eq!(b.read(V, abi::REG_STATUS, W), Ok(0b101));
        assert_eq!(log.0.lock().len(), 1);
        // Acknowledging part keeps the line high; the rest lowers it.
        b.write(V, abi::REG_ACK, W, 0b001).unwrap();
        assert_eq!(b.read(V, abi::REG_STATUS, W), Ok(0b100));
        assert_eq!(log.0.lock().len(), 1);
        b.write(V, abi::REG_ACK, W, 0xffff_ffff).unwrap();
        assert_eq!(b.read(V, abi::REG_STATUS, W), Ok(0));
        assert_eq!(*log.0.lock(), [(1, true), (1, false)]);
        // Acknowledging nothing pending does nothing.
        b.write(V, abi::REG_ACK, W, 1).unwrap();
        assert_eq!(log.0.lock().len(), 2);
        // B rings A back; a member may ring itself.
        b.write(V, abi::REG_RING, W, 0).unwrap();
        assert_eq!(a.read(V, abi::REG_STATUS, W), Ok(0b010));
        c.write(V, abi::REG_RING, W, 2).unwrap();
        assert_eq!(c.read(V, abi::REG_STATUS, W), Ok(0b100));
        assert_eq!(*log.0.lock(), [(1, true), (1, false), (0, true), (2, true)]);
    }

    #[test]
    fn hostile_accesses() {
        let (mut a, mut b, _, log) = pair();
        // Ringing a member that does not exist, or with a huge value: ignored.
        for v in [3, 31, 32, u64::from(u32::MAX), u64::MAX] {
            a.write(V, abi::REG_RING, W, v).unwrap();
        }
        assert!(log.0.lock().is_empty());
        // Only aligned words.
        for w in [AccessWidth::Byte, AccessWidth::Half, AccessWidth::Double] {
            assert_eq!(a.read(V, abi::REG_MAGIC, w), Err(MmioError::BadAccess));
            assert_eq!(a.write(V, abi::REG_RING, w, 1), Err(MmioError::BadAccess));
        }
        assert_eq!(a.read(V, 0x11, W), Err(MmioError::BadAccess));
        assert_eq!(a.write(V, 0x12, W, 1), Err(MmioError::BadAccess));
        // Writes to read-only and reserved registers change nothing.
        for off in [
            abi::REG_MAGIC,
            abi::REG_INDEX,
            abi::REG_PEERS,
            abi::REG_STATUS,
            0x800,
        ] {
            a.write(V, off, W, 0xffff_ffff).unwrap();
        }
        assert_eq!(a.read(V, abi::REG_INDEX, W), Ok(0));
        assert_eq!(b.read(V, abi::REG_STATUS, W), Ok(0));
        assert!(log.0.lock().is_empty());
    }

    #[test]
    fn reset_drops_what_was_pending() {
        let (mut a, mut b, _, log) = pair();
        a.write(V, abi::REG_RING, W, 1).unwrap();
        b.reset();
        assert_eq!(b.read(V, abi::REG_STATUS, W), Ok(0));
        // The next ring is a rising edge again.
        a.write(V, abi::REG_RING, W, 1).unwrap();
        assert_eq!(*log.0.lock(), [(1, true), (1, true)]);
    }

    #[test]
    fn group_bounds() {
        let mut g = DoorbellGroup::new(0);
        assert_eq!(g.peers(), 1);
        assert!(!g.ring(1, 0));
        assert!(!g.ack(5, 1));
        assert_eq!(DoorbellGroup::new(100).peers(), MAX_PEERS);
        let _boxed: Box<dyn MmioDevice> = Box::new(pair().0);
    }
}
