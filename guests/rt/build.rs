//! Writes the one linker script of every guest to OUT_DIR (the pattern of Google's aarch64-rt):
//! rt/guest.ld with its load address filled in from elvisor-abi, as `elvisor-guest.ld`, and puts
//! OUT_DIR on the linker's search path of every crate that depends on the runtime. The guests'
//! shared build script (link-guest.rs) then links their binaries with `-Telvisor-guest.ld`.

use std::env;
use std::fs;
use std::path::PathBuf;

fn main() {
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let template = manifest.join("guest.ld");
    println!("cargo:rerun-if-changed={}", template.display());
    println!("cargo:rerun-if-changed=build.rs");
    let text = fs::read_to_string(&template).expect("rt/guest.ld is readable");
    let load = format!("{:#x}", elvisor_abi::image::LOAD_ADDRESS);
    assert!(
        text.contains("@LOAD_ADDRESS@"),
        "rt/guest.ld has no @LOAD_ADDRESS@"
    );
    fs::write(
        out.join("elvisor-guest.ld"),
        text.replace("@LOAD_ADDRESS@", &load),
    )
    .expect("OUT_DIR is writable");
    println!("cargo:rustc-link-search=native={}", out.display());
}
