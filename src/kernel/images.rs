//! Writing a VM's RAM: zeroing or rewriting it, copying the kernel and initrd modules,
//! generating the guest device tree.

use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use super::{Vm, entropy_pool};
use crate::arch::aarch64::timer;
use crate::mm::GuestPhysAddr;
use crate::mm::lazy::BLOCK_BYTES;
use crate::mm::rewrite::Segment;
use crate::platform::GicVersion;
use crate::vm::fdt::{GuestFdt, GuestGic, GuestUart};
use crate::vm::layout;

/// What a VM's RAM held before [`load_images`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Reload {
    /// Just taken from the frame allocator (VM build): the image blocks zeroed (DC ZVA),
    /// then the images copied, which costs the fewest instructions.
    FreshRam,
    /// The previous run (SYSTEM_RESET): rewritten storing only the words that change.
    Reset,
}

/// (Re)writes a VM's RAM from scratch: copies the kernel and initrd modules and the device
/// tree it generates into zeroed blocks, and unmaps every other block, to be zeroed when the
/// guest first touches it. Used at build and on SYSTEM_RESET, so nothing of a previous run
/// survives.
pub fn load_images(vm: &Vm, how: Reload) -> Result<(), String> {
    let mpidrs = &vm.mpidrs;
    // A fresh seed for this boot of this VM (vm::entropy).
    let boot = vm.reset_count.load(Ordering::Relaxed);
    let pool = entropy_pool();
    let seed = pool.guest_seed(vm.id.0, boot, timer::now());
    let kaslr = pool.kaslr_seed(vm.id.0, boot, timer::now());
    let initrd = vm
        .initrd_offset
        .zip(vm.ramdisk)
        .map(|(off, m)| (GuestPhysAddr(vm.ram.base().0 + off), m.bytes().len() as u64));
    // Read on its own line: in the struct literal below the guard would live (and the VM's
    // vGIC stay locked) for the whole device-tree generation.
    let vgic_version = vm.vgic.lock().version();
    let blob = crate::vm::fdt::generate(&GuestFdt {
        ram_base: vm.ram.base(),
        ram_bytes: vm.config.memory_bytes,
        mpidrs,
        uart: Some(GuestUart {
            base: layout::UART_BASE,
            size_bytes: layout::UART_SIZE,
            intid: Some(layout::UART_INTID),
        }),
        gic: Some(match vgic_version {
            version @ GicVersion::V3 => GuestGic {
                version,
                gicd: (layout::GICD_BASE, layout::GICD_SIZE),
                gicr_or_gicc: (
                    layout::GICR_BASE,
                    layout::GICR_STRIDE * vm.mpidrs.len() as u64,
                ),
                maintenance_intid: None,
                pmu_intid: super::pmu::vm_has_pmu(vm).then_some(crate::vm::pmu::PMU_INTID),
            },
            version @ GicVersion::V2 => GuestGic {
                version,
                gicd: (layout::GICD_BASE, layout::GICD_V2_SIZE),
                gicr_or_gicc: (layout::GICC_BASE, layout::GICC_SIZE),
                maintenance_intid: None,
                pmu_intid: super::pmu::vm_has_pmu(vm).then_some(crate::vm::pmu::PMU_INTID),
            },
        }),
        bootargs: &vm.config.bootargs,
        initrd,
        reset_count: vm.reset_count.load(Ordering::Relaxed),
        passthrough: &vm.guest_nodes,
        shmem: &vm.shmem_nodes,
        rng_seed: Some(&seed),
        kaslr_seed: Some(kaslr),
    })
    .map_err(|e| alloc::format!("cannot generate the guest device tree: {e}"))?;
    if blob.len() as u64 > layout::FDT_SLOT {
        return Err(alloc::format!(
            "guest device tree is {} bytes, over 2 MiB",
            blob.len()
        ));
    }
    // Only the blocks the images touch are written now; every other block is left unmapped
    // and zeroed when the guest first touches it (kernel::ram, mm::lazy).
    let mut placed: Vec<(u64, u64)> = Vec::with_capacity(3);
    placed.push((vm.entry_offset, vm.kernel.bytes().len() as u64));
    if let (Some(off), Some(m)) = (vm.initrd_offset, vm.ramdisk) {
        placed.push((off, m.bytes().len() as u64));
    }
    placed.push((vm.fdt_offset, blob.len() as u64));
    // A VM with passthrough devices may hand a device (DMA, no IOMMU: direct-mapped RAM) a
    // buffer it never touched; a block backed only at the guest's first touch would then be
    // zeroed over what the device wrote. Such VMs get all of their RAM backed now.
    let eager = if vm.config.passthrough.is_empty() && !vm.config.direct_map {
        vm.ram.eager(&placed)
    } else {
        alloc::vec![true; vm.ram.blocks()]
    };
    vm.ram.prepare(&eager, how == Reload::Reset)?;
    // After a run, zero and copy in one pass that stores only words that change (mm::rewrite
    // says why): the same result as zeroing and then copying, which stays the way for fresh
    // RAM (DC ZVA there) and for a module that is not 8-byte aligned.
    let (fdt_words, fdt_tail) = crate::mm::rewrite::to_words(&blob);
    let mut segments: Vec<Segment<'_>> = Vec::with_capacity(3);
    let mut aligned = true;
    let images = [
        (Some(vm.entry_offset), Some(vm.kernel)),
        (vm.initrd_offset, vm.ramdisk),
    ];
    for (offset, module) in images {
        if let (Some(offset), Some(module)) = (offset, module) {
            match module.words() {
                Some(seg) => segments.push(Segment {
                    offset_bytes: offset as usize,
                    ..seg
                }),
                None => aligned = false,
            }
        }
    }
    segments.push(Segment {
        offset_bytes: vm.fdt_offset as usize,
        words: &fdt_words,
        tail: fdt_tail,
    });
    segments.sort_by_key(|s| s.offset_bytes);
    let mut ram = vm.ram.region.lock();
    let mut ok = true;
    for run in crate::mm::lazy::runs(&eager) {
        let off = run.start as u64 * BLOCK_BYTES;
        let len = run.len() as u64 * BLOCK_BYTES;
        let inside = |o: u64| (off..off + len).contains(&o);
        if aligned && how == Reload::Reset {
            let shifted: Vec<Segment<'_>> = segments
                .iter()
                .filter(|s| inside(s.offset_bytes as u64))
                .map(|s| Segment {
                    offset_bytes: s.offset_bytes - off as usize,
                    ..*s
                })
                .collect();
            ok &= ram.rewrite_range(off, len, &shifted).is_ok();
        } else {
            ram.zero_range(off, len);
            for (o, bytes) in [
                (Some(vm.entry_offset), Some(vm.kernel.bytes())),
                (vm.initrd_offset, vm.ramdisk.map(|m| m.bytes())),
                (Some(vm.fdt_offset), Some(&blob[..])),
            ] {
                if let (Some(o), Some(bytes)) = (o, bytes)
                    && inside(o)
                {
                    ok &= ram.write(o, bytes);
                }
            }
        }
        // The guest starts with its MMU off: what it reads first must be in memory, not
        // only in this CPU's cache (ARM ARM D8.2: its accesses are Non-cacheable).
        ram.clean_range(off, len);
    }
    if ok {
        Ok(())
    } else {
        Err("an image does not fit in guest RAM".into())
    }
}
