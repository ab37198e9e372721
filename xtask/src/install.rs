//! Installing what the tests need, idempotently: quiet and quick when
//! everything is present.

use std::process::Command;

use crate::util::{run, succeeds};

/// Debian packages the tests use (C and C++ compilers for the crash test
/// programs, binutils for strip/objcopy; libc6-dbg: glibc's separate debug
/// info, which the crash tests symbolize libc frames from).
const APT_PACKAGES: &[&str] = &["gcc", "g++", "binutils", "make", "libc6-dbg"];

/// Installs everything `cargo xtask test` needs.
pub fn setup() -> Result<(), String> {
    ensure_apt(APT_PACKAGES)?;
    // Collector tests: openssl makes the TLS test's CA and certificate,
    // mount (util-linux) the small tmpfs of the full-disk test.
    ensure_apt(&["openssl", "util-linux"])?;
    ensure_cargo_fuzz()?;
    Ok(())
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Installs the missing ones of `pkgs` with apt-get (one `apt-get update`
/// first, only when something is missing).
pub fn ensure_apt(pkgs: &[&str]) -> Result<(), String> {
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !dpkg_installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("installing Debian packages: {}", missing.join(" "));
    let lock = ["-o", "DPkg::Lock::Timeout=600"];
    run(Command::new("apt-get").args(lock).args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(lock)
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Installs cargo-fuzz when `cargo fuzz` is missing.
pub fn ensure_cargo_fuzz() -> Result<(), String> {
    if succeeds(Command::new(crate::util::cargo_bin()).args(["fuzz", "--version"])) {
        return Ok(());
    }
    println!("installing cargo-fuzz");
    run(Command::new(crate::util::cargo_bin()).args(["install", "--locked", "cargo-fuzz"]))
}
