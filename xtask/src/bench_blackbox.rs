//! `cargo xtask bench blackbox [PHASE...]`: the black box benchmark.
//!
//! Phases:
//! - `record` ([`crate::bench_blackbox_record`], needs root): the real
//!   collector recording while the real eventprobe feeds it, under 1,000
//!   exec/s for 60 s (`--quick`: 15 s), against the same load not
//!   recording: no event lost, added CPU (eventprobe + collector) at most
//!   5% of one vCPU.
//! - `export` (`tests/examples/bench_blackbox.rs`, release mode, driving
//!   headless Chromium through `e2e::chromium`): 1,000,000 synthetic entries to the HTML timeline with
//!   `blackbox_timeline::write_html` (target <= 10 s), and that page
//!   interactive in headless Chromium, navigation start to
//!   `window.timelineReady` (target <= 3 s).
//!
//! All phases by default; name some (`cargo xtask bench blackbox export`)
//! or set `BENCH_ONLY=export` to run only those.

use crate::util;

const PHASES: &[&str] = &["record", "export"];

pub fn main(args: &[String]) -> Result<(), String> {
    let quick = args.iter().any(|a| a == "--quick");
    let mut wanted: Vec<String> = args.iter().filter(|a| *a != "--quick").cloned().collect();
    if let Ok(only) = std::env::var("BENCH_ONLY") {
        wanted.extend(only.split(',').filter(|p| !p.is_empty()).map(String::from));
    }
    if wanted.is_empty() {
        wanted = PHASES.iter().map(|p| p.to_string()).collect();
    }
    if let Some(bad) = wanted.iter().find(|p| !PHASES.contains(&p.as_str())) {
        return Err(format!("bench blackbox: unknown phase {bad:?}; known: {}", PHASES.join(", ")));
    }
    if wanted.iter().any(|p| p == "record") {
        crate::bench_blackbox_record::main(quick)?;
    }
    if wanted.iter().any(|p| p == "export") {
        export()?;
    }
    Ok(())
}

fn export() -> Result<(), String> {
    crate::install::ensure_apt(&["chromium"])?;
    crate::install::ensure_apt(crate::install::BUILD_PACKAGES)?;
    util::cargo(&["build", "--release", "-p", "e2e", "--example", "bench_blackbox"])?;
    // BENCH_ONLY is read here, not by the example.
    let st = std::process::Command::new(util::cargo_bin())
        .args(["run", "--quiet", "--release", "-p", "e2e", "--example", "bench_blackbox", "--", "export"])
        .env_remove("BENCH_ONLY")
        .current_dir(util::root())
        .status()
        .map_err(|e| format!("run bench_blackbox: {e}"))?;
    if !st.success() {
        return Err("bench blackbox export failed".into());
    }
    Ok(())
}
