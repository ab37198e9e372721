//! `cargo xtask bench collector [--quick]`: the collector benchmark.
//!
//! Builds the collector in release mode and runs
//! `collector/examples/bench_collector.rs`, which starts the real daemon
//! and measures, each printed with its target and ratio:
//! - records/s delivered end to end, 8 concurrent senders -> collector ->
//!   local HTTP sink on loopback (target >= 30,000/s; the original C client
//!   does 1.6k-3.2k/s);
//! - records/s accepted on one native connection into journal + spool
//!   (target >= 200,000/s);
//! - p99 acknowledgement latency at 10,000 records/s (target < 5 ms);
//! - the collector's peak RSS (target < 20 MB);
//! - legacy burst (issue #12): 8 processes x 12,000 one-record legacy
//!   connections of 1 KiB from `telem-legacy-burst` (the C library's way of
//!   sending), default settings: records delivered (must be all), records/s
//!   end to end (target >= 30,000/s), collector peak RSS (target < 32 MB);
//! - 2,000 sequential `hprobe` runs: time per run, collector CPU per record
//!   (target <= 150 us);
//! - poison round (issue #13): the end-to-end round with one record in every
//!   1,000 answered 500: good records/s as a ratio of the clean round
//!   (target >= 0.90);
//! - OTLP (issue #18): 8 senders -> collector -> rotel (blackhole exporter):
//!   records/s exported (target >= 100,000/s or rotel's ceiling) and
//!   collector CPU per exported record (export stage target <= 5 us), beside
//!   the v2 figure of the same run.
//!
//! `BENCH_ONLY=e2e|one|latency|legacy|hprobe|poison|otlp` runs one phase.
//!
//! Full runs take the best and the median of three rounds (the machine's
//! vCPUs and disk are shared); `--quick` runs one smaller round.

use crate::util;

pub fn main(args: &[String]) -> Result<(), String> {
    for a in args {
        if a != "--quick" {
            return Err(format!("unknown argument {a:?}; usage: cargo xtask bench collector [--quick]"));
        }
    }
    // The OTLP round exports to rotel (an OpenTelemetry collector).
    crate::install::ensure_rotel()?;
    util::cargo(&["build", "--release", "-p", "telem-collector", "--bins", "--examples"])?;
    // The load generator (tests/src/bin) and hprobe, run by the example.
    util::cargo(&[
        "build",
        "--release",
        "-p",
        "e2e",
        "--bin",
        "telem-legacy-burst",
        "-p",
        "hello-probes",
        "--bin",
        "hprobe",
    ])?;
    let mut run = vec!["run", "--quiet", "--release", "-p", "telem-collector", "--example", "bench_collector", "--"];
    run.extend(args.iter().map(String::as_str));
    util::cargo(&run)
}
