//! Support for the end-to-end tests in `tests/tests/`: finding the suite's
//! binaries (built on first use), the CI rule that a test needing root must
//! run, not skip, and one set of fixtures and stand-ins:
//!
//! | module | what |
//! |---|---|
//! | [`fixtures`] | the records and raw bytes tests send; raw native connections |
//! | [`collector`] | the real collector in a temporary directory, and telemctl |
//! | [`receiver`] | a unix-socket receiver standing in for the collector (probe tests) |
//! | [`sink`] | an HTTP server standing in for the backend |
//! | [`http`] | the request parser of the test servers |
//! | [`kernel`] | core_pattern and friends, restored; crashing programs; eventprobe |
//! | [`burst`] | bursts of legacy records from many processes |
//! | [`kmsg`] | lines written to `/dev/kmsg`, unique tags, a probe process to stop and restart |
//! | [`rotel`] | rotel, a real OpenTelemetry collector, as the OTLP receiver; its debug log parsed |
//! | [`chromium`] | headless Chromium driven over the DevTools protocol (real clicks, wheel, keys) |

pub mod burst;
pub mod chromium;
pub mod collector;
pub mod fixtures;
pub mod http;
pub mod kernel;
pub mod kmsg;
pub mod receiver;
pub mod rotel;
pub mod sink;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// The directory the workspace's binaries are built into (the profile this
/// test binary was built with).
pub fn bin_dir() -> PathBuf {
    // target/<profile>/deps/e2e-xxxx -> target/<profile>
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent().and_then(Path::parent).map(Path::to_path_buf).expect("target dir")
}

static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The package that builds each binary of the suite.
fn package_of(name: &str) -> &'static str {
    match name {
        "hprobe" | "telem-record-gen" => "hello-probes",
        "telem-collector" | "telemctl" => "telem-collector",
        "crashprobe" => "crashprobe",
        "eventprobe" => "eventprobe",
        "klogscanner" | "pstoreprobe" => "kernel-probes",
        "journalprobe" => "journalprobe",
        "telem-legacy-burst" => "e2e",
        other => panic!("unknown binary {other}"),
    }
}

/// The path of one of the suite's binaries, built (once per test process)
/// in the profile of this test binary, so `cargo test` alone works.
pub fn bin(name: &str) -> PathBuf {
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == name) {
        let release = bin_dir().file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "--quiet", "-p", package_of(name), "--bin", name]).current_dir(workspace_root());
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build --bin {name} failed");
        built.push(name.to_string());
    }
    let p = bin_dir().join(name);
    // Another cargo in the same target directory may be replacing the
    // file right now: give it a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !p.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(p.exists(), "{} was not built", p.display());
    p
}

/// True in CI (`CI=true`), where tests that need root or BPF must run.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Whether this process runs as root. Outside CI a test that needs root may
/// skip (printing why); in CI it fails instead.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        assert!(!in_ci(), "{test} needs root and CI=true: failing rather than skipping");
        eprintln!("skipping {test}: needs root");
    }
    root
}
