//! `cargo xtask build-ebpf`: installs the eBPF toolchain when it is missing
//! and builds the kernel-side programs in `probe-ebpf/`.
//!
//! The toolchain: Debian's `rustc-web` (its sysroot holds a prebuilt `core`
//! for `bpfel-unknown-none`), `llvm-22-dev`, and `bpf-linker` 0.13.0 built
//! against that LLVM (probe-ebpf/README.md). Every step
//! is idempotent and quiet when its tool is already there.
//!
//! The object lands in
//! `probe-ebpf/target/bpfel-unknown-none/release/probe-ebpf`, where the
//! `eventprobe` build script finds and embeds it.

use std::path::PathBuf;
use std::process::Command;

use crate::install::ensure_apt;
use crate::util::{cargo_bin, root, run};

/// Debian packages of the eBPF toolchain.
const APT_PACKAGES: &[&str] = &["rustc-web", "cargo-web", "libstd-rust-web-dev-bpf", "llvm-22-dev"];

/// The bpf-linker version that builds against `llvm-22-dev`.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// The rustc that can build for `bpfel-unknown-none` (Debian's).
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";

/// Name of the object the eBPF crate produces.
pub const OBJECT_NAME: &str = "probe-ebpf";

/// `cargo xtask build-ebpf`.
pub fn main(args: &[String]) -> Result<(), String> {
    if let Some(a) = args.first() {
        return Err(format!("build-ebpf takes no arguments (got {a:?})"));
    }
    let obj = build()?;
    println!("eBPF object: {}", obj.display());
    Ok(())
}

/// Installs what is missing, builds `probe-ebpf/` and returns the object's
/// path.
pub fn build() -> Result<PathBuf, String> {
    ensure_toolchain()?;
    let dir = root().join("probe-ebpf");
    let mut cmd = Command::new(cargo_bin());
    cmd.current_dir(&dir)
        .args(["build", "--release", "--quiet"])
        .env_remove("RUSTC")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO_BUILD_TARGET")
        .env("PATH", path_with_cargo_bin());
    run(&mut cmd)?;
    let obj = dir.join("target/bpfel-unknown-none/release").join(OBJECT_NAME);
    if !obj.is_file() {
        return Err(format!("probe-ebpf built but {} is missing", obj.display()));
    }
    Ok(obj)
}

/// Installs the Debian packages and bpf-linker when missing.
pub fn ensure_toolchain() -> Result<(), String> {
    ensure_apt(APT_PACKAGES)?;
    if !std::path::Path::new(DEBIAN_RUSTC).is_file() {
        return Err(format!("{DEBIAN_RUSTC} is missing although rustc-web is installed"));
    }
    ensure_bpf_linker()
}

/// `$HOME/.cargo/bin` (where `cargo install` puts bpf-linker) in front of
/// `PATH`, so the eBPF build finds the linker however xtask was started.
fn path_with_cargo_bin() -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    match cargo_home_bin() {
        Some(bin) if !std::env::split_paths(&path).any(|p| p == bin) => format!("{}:{path}", bin.display()),
        _ => path,
    }
}

fn cargo_home_bin() -> Option<PathBuf> {
    if let Ok(h) = std::env::var("CARGO_HOME") {
        return Some(PathBuf::from(h).join("bin"));
    }
    std::env::var("HOME").ok().map(|h| PathBuf::from(h).join(".cargo/bin"))
}

fn bpf_linker_version() -> Option<String> {
    let out = Command::new("bpf-linker").arg("--version").env("PATH", path_with_cargo_bin()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn ensure_bpf_linker() -> Result<(), String> {
    if bpf_linker_version().is_some_and(|v| v.split_whitespace().any(|w| w == BPF_LINKER_VERSION)) {
        return Ok(());
    }
    println!("installing bpf-linker {BPF_LINKER_VERSION} against Debian's LLVM 22 (about 2 minutes)");
    let path = format!("/usr/lib/llvm-22/bin:{}", std::env::var("PATH").unwrap_or_default());
    run(Command::new(cargo_bin())
        .args(["install", "--locked", "--quiet"])
        .arg(format!("bpf-linker@{BPF_LINKER_VERSION}"))
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("PATH", path)
        .env_remove("RUSTC")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTC_WRAPPER"))?;
    match bpf_linker_version() {
        Some(v) if v.split_whitespace().any(|w| w == BPF_LINKER_VERSION) => Ok(()),
        other => Err(format!("bpf-linker installed but `bpf-linker --version` gives {other:?}")),
    }
}
