//! Installing what the tests need, idempotently: quiet and quick when
//! everything is present.

use std::process::Command;

use crate::util::{run, succeeds};

/// Debian packages the tests use (C and C++ compilers for the crash test
/// programs, binutils for strip/objcopy; libc6-dbg: glibc's separate debug
/// info, which the crash tests symbolize libc frames from; gdb: the crash
/// tests read cores saved by gdb's `generate-core-file`; golang-go: the Go
/// crash programs of the unwinder's and eventprobe's tests).
const APT_PACKAGES: &[&str] = &["gcc", "g++", "binutils", "make", "libc6-dbg", "gdb", "golang-go"];

/// Debian packages the workspace needs to build: journalprobe links
/// libsystemd (sd-journal), found with pkg-config.
pub const BUILD_PACKAGES: &[&str] = &["pkg-config", "libsystemd-dev"];

/// Installs everything `cargo xtask test` needs.
pub fn setup() -> Result<(), String> {
    ensure_apt(APT_PACKAGES)?;
    // Collector tests: openssl makes the TLS test's CA and certificate,
    // mount (util-linux) the small tmpfs of the full-disk test.
    ensure_apt(&["openssl", "util-linux"])?;
    ensure_apt(BUILD_PACKAGES)?;
    // journalprobe tests: systemd-journal-remote makes real journal files
    // from export streams.
    ensure_apt(&["systemd-journal-remote"])?;
    // The black box timeline test and `bench blackbox`: headless Chromium
    // opens the exported page.
    ensure_apt(&["chromium"])?;
    ensure_cargo_fuzz()?;
    ensure_lint_tools()?;
    // OTLP tests and `bench collector`: rotel, an OpenTelemetry collector.
    ensure_rotel()?;
    Ok(())
}

/// The target directory (`CARGO_TARGET_DIR`, else `target/` of the
/// workspace), where the tests look for rotel.
pub fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| crate::util::root().join("target"))
}

/// Where rotel's virtualenv lives, and the `rotel-agent` the tests run
/// (a link to the binary the `rotel` wheel carries in its package).
pub fn rotel_agent() -> std::path::PathBuf {
    target_dir().join("rotel-venv/bin/rotel-agent")
}

/// Installs rotel (PyPI `rotel`, whose wheel carries the `rotel-agent`
/// binary: an OTLP receiver with a blackhole exporter and a debug log of
/// every log record) into a virtualenv under the target directory, when it
/// is not there; links `rotel-venv/bin/rotel-agent` to it.
pub fn ensure_rotel() -> Result<(), String> {
    let agent = rotel_agent();
    if agent.exists() {
        return Ok(());
    }
    let venv = target_dir().join("rotel-venv");
    let python = venv.join("bin/python3");
    if !python.exists() {
        ensure_apt(&["python3-venv"])?;
        println!("creating the virtualenv {}", venv.display());
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    }
    println!("installing rotel (PyPI) into {}", venv.display());
    run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", "rotel"]))?;
    let out = Command::new(&python)
        .args(["-c", "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    let found = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !found.exists() {
        return Err(format!("the rotel package has no rotel-agent binary (looked at {})", found.display()));
    }
    std::os::unix::fs::symlink(&found, &agent).map_err(|e| format!("cannot link {}: {e}", agent.display()))?;
    Ok(())
}

/// rustfmt and clippy (rustup components) and cargo-deny, when missing,
/// and the Debian packages clippy needs to build the workspace.
pub fn ensure_lint_tools() -> Result<(), String> {
    ensure_apt(BUILD_PACKAGES)?;
    let cargo = crate::util::cargo_bin();
    for (sub, component) in [("fmt", "rustfmt"), ("clippy", "clippy")] {
        if !succeeds(Command::new(&cargo).args([sub, "--version"])) {
            println!("installing the {component} component");
            run(Command::new("rustup").args(["component", "add", component]))?;
        }
    }
    if !succeeds(Command::new(&cargo).args(["deny", "--version"])) {
        println!("installing cargo-deny");
        run(Command::new(&cargo).args(["install", "--locked", "cargo-deny"]))?;
    }
    Ok(())
}

/// Whether a copy of the RustSec advisory database fetched earlier is
/// here (cargo-deny keeps it in `$CARGO_HOME/advisory-dbs/`).
pub fn advisory_db_present() -> bool {
    let home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cargo")));
    let Some(dbs) = home.map(|h| h.join("advisory-dbs")) else { return false };
    std::fs::read_dir(dbs).map(|d| d.filter_map(Result::ok).any(|e| e.path().join(".git").exists())).unwrap_or(false)
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
