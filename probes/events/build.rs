//! Finds the kernel-side object built by `cargo xtask build-ebpf` and copies
//! it into OUT_DIR for `include_bytes_aligned!`.
//!
//! When the object has not been built, an empty file is embedded instead so
//! `cargo build --workspace` still succeeds; `eventprobe` then refuses to
//! start with a message telling to run `cargo xtask build-ebpf` and rebuild.

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = manifest.join("../../probe-ebpf/target/bpfel-unknown-none/release/probe-ebpf");
    println!("cargo:rerun-if-changed={}", object.display());
    println!("cargo:rerun-if-env-changed=EVENTPROBE_OBJECT");
    let source = std::env::var_os("EVENTPROBE_OBJECT").map(PathBuf::from).unwrap_or(object);
    let dest = out.join("probe-ebpf.o");
    let bytes = match std::fs::read(&source) {
        Ok(b) => b,
        Err(e) => {
            println!(
                "cargo:warning=eBPF object {} not found ({e}): eventprobe will refuse to start; run `cargo xtask build-ebpf`, then rebuild",
                source.display()
            );
            Vec::new()
        }
    };
    std::fs::write(&dest, bytes).expect("write the object copy into OUT_DIR");
}
