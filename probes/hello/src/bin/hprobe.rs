//! `hprobe`: sends a `hello/world` record (or a `heartbeat/ping`) to the
//! collector, to check that records flow.

use std::process::ExitCode;

use clap::Parser;
use hello_probes::{send_and_report, ProbeError, SendOptions};
use telemetry::{Classification, Payload, Record, Severity, DEFAULT_DOMAIN};

/// Send a hello record to the telemetrics collector.
///
/// Exits 0 once the collector has accepted the record, non-zero with a
/// one-line reason otherwise.
#[derive(Parser, Debug)]
#[command(name = "hprobe", version)]
struct Args {
    /// Send a `heartbeat/ping` record instead of `hello/world`.
    #[arg(long)]
    heartbeat: bool,
    #[command(flatten)]
    send: SendOptions,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let class = if args.heartbeat { "heartbeat/ping" } else { "hello/world" };
    let record = Classification::parse(&format!("{DEFAULT_DOMAIN}/{class}"))
        .map_err(|e| ProbeError::Invalid(e.to_string()))
        .map(|c| Record::builder(c, Severity::Low, Payload::text("hello\n")).build());
    send_and_report("hprobe", record, &args.send)
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        super::Args::command().debug_assert();
    }
}
