//! Fuzz target `dtb`: the host device-tree reader and the VM-node parser (`platform::parse`)
//! and the allocation-free early readers, on arbitrary blobs (seeded with QEMU's own DTBs).
//!
//! Property: no input panics. When `parse` accepts a blob, what it returns is consistent with
//! the early readers (which the boot code trusts before the heap exists) and with the reservations
//! it promises: the reserved list is sorted, holds the DTB and the image, and no VM module overlaps
//! either of them; every module (disks too) is reserved, and no module of any VM overlaps a disk.
#![no_main]

use elvisor::mm::{PhysAddr, PhysRange};
use elvisor::platform;
use libfuzzer_sys::fuzz_target;

/// Where QEMU puts the DTB with -kernel, and the image's range: arbitrary but realistic, so
/// module placement checks against them are exercised.
const DTB_PA: PhysAddr = PhysAddr(0x4800_0000);
const IMAGE: PhysRange = PhysRange::new(PhysAddr(0x4008_0000), 0x100_0000);

fuzz_target!(|data: &[u8]| {
    let total = platform::fdt_total_size(data);
    let console = platform::early_console(data);
    let bootargs = platform::early_bootargs(data);
    let Ok(p) = platform::parse(data, DTB_PA, IMAGE).map_err(|e| e.to_string()) else {
        return;
    };
    // parse checked the header, so the boot code's size probe agrees and fits.
    let total = total.expect("parse accepted a blob whose header fdt_total_size rejects");
    assert!(total <= data.len(), "totalsize {total} past the blob");
    // The console the boot code used before the heap is the one the platform describes.
    assert_eq!(
        console,
        Some(p.uart.base),
        "early_console disagrees with parse"
    );
    assert_eq!(
        bootargs.unwrap_or(""),
        p.bootargs,
        "early_bootargs disagrees"
    );
    assert!(!p.ram.is_empty() && !p.cpus.is_empty());
    assert!(
        p.reserved
            .windows(2)
            .all(|w| (w[0].base, w[0].size_bytes) <= (w[1].base, w[1].size_bytes)),
        "reserved ranges not sorted"
    );
    // The DTB is reserved as far as its header says it reaches.
    let dtb = PhysRange::new(DTB_PA, total as u64);
    assert!(p.reserved.contains(&dtb) && p.reserved.contains(&IMAGE));
    for vm in &p.vms {
        assert!(vm.vcpus >= 1, "{}: no vCPUs", vm.node_path);
        let disks = vm.disks.iter().map(|d| &d.range);
        for module in core::iter::once(&vm.kernel)
            .chain(vm.ramdisk.iter())
            .chain(disks)
        {
            assert!(
                !module.overlaps(&dtb) && !module.overlaps(&IMAGE),
                "{}: module {module:?} overlaps the DTB or the image",
                vm.node_path
            );
            assert!(
                p.reserved.contains(module),
                "{}: module not reserved",
                vm.node_path
            );
        }
        // A disk is the one VM's writable storage: no other module of any VM overlaps it.
        for d in &vm.disks {
            for other in &p.vms {
                let theirs = core::iter::once(&other.kernel)
                    .chain(other.ramdisk.iter())
                    .chain(other.disks.iter().map(|e| &e.range));
                for m in theirs {
                    assert!(
                        core::ptr::eq(m, &d.range) || !m.overlaps(&d.range),
                        "{}: disk {:?} overlaps module {m:?} of {}",
                        d.node_path,
                        d.range,
                        other.node_path
                    );
                }
            }
            assert!(
                d.range.size_bytes >= 512,
                "{}: disk under a sector",
                d.node_path
            );
        }
        for pt in &vm.passthrough {
            for &(intid, _) in &pt.irqs {
                assert!(
                    (32..1020).contains(&intid),
                    "{}: INTID {intid} is not an SPI",
                    pt.node_path
                );
            }
        }
    }
});
