//! `hprobe`: sends a `hello/world` record (or a `heartbeat/ping`) to the
//! collector, to check that records flow.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use hello_probes::{send, SendOptions};
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
    /// Collector socket (default: $TELEM_SOCKET, then the config file's
    /// socket_path, then /run/telem-0).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Configuration file to read socket_path from.
    #[arg(short = 'f', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Use the original C library's framing (no acknowledgement).
    #[arg(long)]
    legacy: bool,
    /// Seconds to wait for the collector.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// Print the record id the collector gave the record.
    #[arg(long)]
    print_id: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let class = if args.heartbeat { "heartbeat/ping" } else { "hello/world" };
    let classification = match Classification::parse(&format!("{DEFAULT_DOMAIN}/{class}")) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hprobe: {e}");
            return ExitCode::FAILURE;
        }
    };
    let record = Record::builder(classification, Severity::Low, Payload::text("hello\n")).build();
    let opts = SendOptions { socket: args.socket, config: args.config, legacy: args.legacy, timeout: Duration::from_secs(args.timeout) };
    match send(&record, &opts) {
        Ok(id) => {
            if let (true, Some(id)) = (args.print_id, id) {
                println!("{id}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hprobe: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        super::Args::command().debug_assert();
    }
}
