//! Link the bare-metal image with linker.ld as a position-independent executable; host builds
//! (unit tests) are left alone.
fn main() {
    println!("cargo:rerun-if-changed=linker.ld");
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "none" {
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
        println!("cargo:rustc-link-arg-bins=-T{dir}/linker.ld");
        // A static PIE: no interpreter, only R_AARCH64_RELATIVE dynamic relocations, which the
        // boot code applies itself (arch/aarch64/boot.rs). `-z notext`: the precompiled core
        // library (relocation-model static) leaves absolute pointers in .rodata; they are
        // relocated like any other, with the MMU off, before the text/rodata become read-only.
        // `-z norelro`: the EL2 map sets its own permissions; no RELRO segment is needed.
        for arg in [
            "--pie",
            "--no-dynamic-linker",
            "-z",
            "notext",
            "-z",
            "norelro",
        ] {
            println!("cargo:rustc-link-arg-bins={arg}");
        }
    }
}
