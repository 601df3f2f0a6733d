//! The PCI host node of `elvisor,pci` mappings (`vm::fdt::pci`).

use super::*;

fn ivshmem(base: u64, device: u32, intid: u32) -> GuestShmem {
    GuestShmem {
        name: "iv".into(),
        base,
        size_bytes: 0x20_0000,
        doorbell: 0x0b20_0000 + 0x1000 * u64::from(device),
        intid,
        index: 0,
        peers: 2,
        read_only: false,
        pci_device: Some(device),
    }
}

#[test]
fn pci_host_node() {
    let shm = [
        ivshmem(0x2000_0000, 0, 80),
        GuestShmem {
            pci_device: None,
            doorbell: 0x0b00_1000,
            ..ivshmem(0x3000_0000, 1, 81)
        },
        ivshmem(0x1_0000_0000, 2, 82),
    ];
    let blob = generate(&GuestFdt {
        shmem: &shm,
        ..spec_v3()
    })
    .unwrap();
    let fdt = fdt::Fdt::new(&blob).unwrap();
    // The PCI functions get no shmem node; the plain mapping keeps its own.
    assert!(fdt.find_node("/shmem@20000000").is_none());
    assert!(fdt.find_node("/shmem@100000000").is_none());
    assert!(fdt.find_node("/shmem@30000000").is_some());
    assert_eq!(cells(&fdt, "/chosen", "linux,pci-probe-only"), [1]);
    let p = "/pcie@b100000";
    assert_eq!(strs(&fdt, p, "compatible"), ["pci-host-ecam-generic"]);
    assert_eq!(strs(&fdt, p, "device_type"), ["pci"]);
    assert_eq!(cells(&fdt, p, "reg"), [0, 0x0b10_0000, 0, 0x10_0000]);
    assert_eq!(cells(&fdt, p, "bus-range"), [0, 0]);
    assert_eq!(cells(&fdt, p, "#address-cells"), [3]);
    assert_eq!(cells(&fdt, p, "#size-cells"), [2]);
    assert!(has(&fdt, p, "dma-coherent"));
    assert_eq!(
        cells(&fdt, p, "ranges"),
        [
            0x0200_0000,
            0,
            0x0b20_0000,
            0,
            0x0b20_0000,
            0,
            0x8000, //
            0x0200_0000,
            0,
            0x2000_0000,
            0,
            0x2000_0000,
            0,
            0x20_0000, //
            0x0300_0000,
            1,
            0,
            1,
            0,
            0,
            0x20_0000,
        ]
    );
    assert_eq!(cells(&fdt, p, "#interrupt-cells"), [1]);
    assert_eq!(cells(&fdt, p, "interrupt-map-mask"), [0xf800, 0, 0, 7]);
    assert_eq!(
        cells(&fdt, p, "interrupt-map"),
        [
            0, 0, 0, 1, 1, 0, 0, 0, 48, 4, //
            0x1000, 0, 0, 1, 1, 0, 0, 0, 50, 4,
        ]
    );
}

#[test]
fn no_pci_host_without_pci_mappings() {
    let shm = [GuestShmem {
        pci_device: None,
        ..ivshmem(0x2000_0000, 0, 80)
    }];
    let blob = generate(&GuestFdt {
        shmem: &shm,
        ..spec_v3()
    })
    .unwrap();
    let fdt = fdt::Fdt::new(&blob).unwrap();
    assert!(fdt.find_node("/pcie@b100000").is_none());
    assert!(!has(&fdt, "/chosen", "linux,pci-probe-only"));
}
