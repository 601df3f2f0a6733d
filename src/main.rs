//! Entry glue: the global allocator, the panic handler, and the jump into the kernel.
#![cfg_attr(target_os = "none", no_std, no_main)]
// The only unsafe here is exporting the two entry symbols the boot code calls by name.
#![deny(unsafe_code)]

#[cfg(target_os = "none")]
mod bare_metal {
    use elvisor::arch::aarch64::heap::KernelHeap;

    /// The kernel heap; its memory is the image's .heap section (see linker.ld).
    #[global_allocator]
    static HEAP: KernelHeap = KernelHeap::empty();

    /// Called by the boot code (arch/aarch64/boot.rs) with the DTB address and CurrentEL.
    #[allow(unsafe_code)] // an exported symbol: nothing else may define it
    #[unsafe(no_mangle)]
    extern "C" fn elvisor_primary_main(dtb_pa: u64, el: u64) -> ! {
        elvisor::kernel::primary_main(dtb_pa, el, &HEAP)
    }

    /// Called by the secondary-CPU entry code with the CPU's index.
    #[allow(unsafe_code)] // as above
    #[unsafe(no_mangle)]
    extern "C" fn elvisor_secondary_main(index: u64) -> ! {
        elvisor::kernel::secondary_main(index as usize)
    }

    // The kernel's exit policy, scheduler entry and halt protocol, as the arch code calls them.
    elvisor::install_handlers!(elvisor::kernel::Kernel);

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
        elvisor::kernel::halt::panic(info)
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("elvisor is a bare-metal image: build it with scripts/build");
    std::process::exit(2);
}
