//! The build script of every guest binary (each guest's Cargo.toml names this file as `build`):
//! links its binaries with the runtime's linker script, `elvisor-guest.ld`, which
//! elvisor-guest-rt's build.rs writes to a directory on the link search path. For the
//! bare-metal target only.

fn main() {
    println!("cargo:rerun-if-changed=../rt/link-guest.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        println!("cargo:rustc-link-arg-bins=-Telvisor-guest.ld");
    }
}
