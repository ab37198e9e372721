//! # xtask: the project's tasks
//!
//! `cargo xtask test` is the test command: it installs what is missing
//! (idempotently), checks formatting, clippy and cargo-deny (`cargo xtask
//! lint`), builds everything, and runs every test and each fuzz target for
//! a bounded time. `cargo xtask run` is the main job. `cargo
//! xtask bench [WHAT]` runs the benchmarks and prints figures and ratios.

mod bench_blackbox;
mod bench_blackbox_record;
mod bench_collector;
mod bench_crash;
mod bench_events;
mod bench_kernel;
mod bench_storm;
mod ebpf;
mod install;
mod run;
mod show;
mod util;

use std::process::{Command, ExitCode};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  test                 install what is missing, lint, build, run all tests and fuzz targets
  lint                 cargo fmt --check, clippy -D warnings, cargo deny (as `test` runs them)
  run [--server URL]   run the collector on a local default with the probes (see README)
  build-ebpf           install the eBPF toolchain if missing and build probe-ebpf/
  bench [WHAT]         run benchmarks (framing, collector, crash, events, kernel, blackbox; all by
                       default; crash takes --storm-secs N and --storm-only; collector includes the
                       OTLP round into rotel, BENCH_ONLY=otlp runs it alone; blackbox takes phase
                       names `record` (root) and `export`, or BENCH_ONLY=..., and --quick)
  fuzz [--secs N]      run each fuzz target for N seconds (default 60)
  setup                only install what is missing (rotel for the OTLP tests in a virtualenv
                       under the target directory)

environment:
  TELEM_FUZZ_SECS      seconds per fuzz target in `test` (default 60; 0 skips fuzzing)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => cmd_test(&args[1..]),
        Some("lint") => install::ensure_lint_tools().and_then(|()| cmd_lint()),
        Some("setup") => install::setup(),
        Some("fuzz") => cmd_fuzz(&args[1..]),
        Some("bench") => cmd_bench(&args[1..]),
        Some("run") => run::main(&args[1..]),
        Some("build-ebpf") => ebpf::main(&args[1..]),
        Some("-h" | "--help" | "help") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!("unknown command {other:?}\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn fuzz_secs(args: &[String]) -> Result<u64, String> {
    if let Some(i) = args.iter().position(|a| a == "--secs") {
        return args.get(i + 1).and_then(|s| s.parse().ok()).ok_or_else(|| "--secs needs a number".to_string());
    }
    Ok(std::env::var("TELEM_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60))
}

fn cmd_test(args: &[String]) -> Result<(), String> {
    install::setup()?;
    cmd_lint()?;
    // The eBPF object is embedded in eventprobe: build it (and its
    // toolchain, when missing) before the workspace.
    ebpf::build()?;
    util::cargo(&["build", "--workspace", "--all-targets"])?;
    let (passed, failed) = util::cargo_test_counted(&["test", "--workspace", "--no-fail-fast"])?;
    let secs = fuzz_secs(args)?;
    if secs > 0 {
        cmd_fuzz(&["--secs".into(), secs.to_string()])?;
    }
    println!("xtask test: all steps passed (lint, tests, then fuzz targets for {secs} s each)");
    println!("tests: {passed} passed, {failed} failed");
    Ok(())
}

/// What CI enforces before any test runs: rustfmt (rustfmt.toml),
/// clippy with every warning an error (the lints are `[workspace.lints]`
/// of Cargo.toml), and cargo-deny (deny.toml).
fn cmd_lint() -> Result<(), String> {
    println!("xtask: cargo fmt --all --check");
    util::cargo(&["fmt", "--all", "--check"]).map_err(|e| format!("{e}: run `cargo fmt --all`"))?;
    println!("xtask: cargo clippy --workspace --all-targets -- -D warnings");
    util::cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])?;
    cmd_deny()
}

/// cargo-deny: bans, licenses and sources always; advisories when the
/// RustSec advisory database can be fetched (from GitHub) or a copy
/// fetched earlier is on this machine, and saying so when neither is.
fn cmd_deny() -> Result<(), String> {
    println!("xtask: cargo deny check bans licenses sources");
    util::cargo(&["deny", "check", "bans", "licenses", "sources"])?;
    match util::output(Command::new(util::cargo_bin()).args(["deny", "fetch", "db"]).current_dir(util::root())) {
        Ok(_) => {
            println!("xtask: cargo deny check advisories");
            util::cargo(&["deny", "check", "advisories"])
        }
        Err(why) if install::advisory_db_present() => {
            println!("xtask: the advisory database cannot be fetched ({why}); checking advisories against the copy fetched earlier");
            util::cargo(&["deny", "--offline", "check", "advisories"])
        }
        Err(why) => {
            println!(
                "xtask: cargo deny advisories NOT checked: the RustSec advisory database \
                 (https://github.com/RustSec/advisory-db) cannot be fetched from this machine ({why}) \
                 and no earlier copy is here; bans, licenses and sources were checked"
            );
            Ok(())
        }
    }
}

/// The fuzz targets: (crate dir with a fuzz/ folder, target name).
const FUZZ_TARGETS: &[(&str, &str)] = &[
    ("telemetry", "native_frame"),
    ("telemetry", "legacy_record"),
    ("telemetry", "posting_v3"),
    ("probes/crash", "core_reader"),
    ("probes/crash", "unwinder"),
];

fn cmd_fuzz(args: &[String]) -> Result<(), String> {
    install::ensure_cargo_fuzz()?;
    let secs = fuzz_secs(args)?;
    for (dir, target) in FUZZ_TARGETS {
        println!("fuzzing {dir}:{target} for {secs} s");
        util::fuzz(dir, target, secs)?;
    }
    Ok(())
}

fn cmd_bench(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("framing") => util::cargo(&["bench", "-p", "telemetry", "--bench", "framing"]),
        Some("collector") => bench_collector::main(&args[1..]),
        Some("crash") => bench_crash::main(&args[1..]),
        Some("events") => bench_events::main(&args[1..]),
        Some("kernel") => bench_kernel::main(&args[1..]),
        Some("blackbox") => bench_blackbox::main(&args[1..]),
        None => {
            util::cargo(&["bench", "-p", "telemetry", "--bench", "framing"])?;
            bench_collector::main(&[])?;
            bench_crash::main(&[])?;
            bench_events::main(&[])?;
            bench_kernel::main(&[])?;
            bench_blackbox::main(&[])
        }
        Some(other) => {
            Err(format!("unknown benchmark {other:?}; known: framing, collector, crash, events, kernel, blackbox"))
        }
    }
}
