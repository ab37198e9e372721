//! `cargo xtask bench blackbox [PHASE...]`: the black box benchmark.
//!
//! Builds and runs `tests/examples/bench_blackbox.rs` in release mode (it
//! drives headless Chromium through `e2e::chromium`). Phases:
//! - `export`: 1,000,000 synthetic entries to the HTML timeline with
//!   `blackbox_timeline::write_html` (target <= 10 s), and that page
//!   interactive in headless Chromium, navigation start to
//!   `window.timelineReady` (target <= 3 s).
//!
//! All phases by default; name some (`cargo xtask bench blackbox export`)
//! or set `BENCH_ONLY=export` to run only those.

use crate::util;

pub fn main(args: &[String]) -> Result<(), String> {
    crate::install::ensure_apt(&["chromium"])?;
    crate::install::ensure_apt(crate::install::BUILD_PACKAGES)?;
    util::cargo(&["build", "--release", "-p", "e2e", "--example", "bench_blackbox"])?;
    let mut run = vec!["run", "--quiet", "--release", "-p", "e2e", "--example", "bench_blackbox", "--"];
    run.extend(args.iter().map(String::as_str));
    util::cargo(&run)
}
