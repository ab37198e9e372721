//! telem-collector: the daemon. See the library's documentation.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// The telemetrics collector daemon: receives records from probes on a unix
/// socket (native and legacy framing), journals them, spools them durably
/// and delivers them to the configured server once the user opted in
/// (never when DO_NOT_TRACK is set or airgap = true; see docs/PRIVACY.md).
///
/// Configuration: -f FILE, else /etc/telemetrics/telemetrics.conf, else
/// /usr/share/defaults/telemetrics/telemetrics.conf, else built-in
/// defaults ([settings] section). SIGHUP reloads it; SIGTERM or SIGINT stop
/// the daemon cleanly. Logs go to stderr (RUST_LOG sets the level).
#[derive(Parser, Debug)]
#[command(name = "telem-collector", version)]
struct Args {
    /// Use this configuration file instead of the lookup order.
    #[arg(short = 'f', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check the configuration, print it, and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    telem_collector::init_logging("info");
    let cfg = match telem_collector::Config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("telem-collector: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        println!("{cfg:#?}");
        return ExitCode::SUCCESS;
    }
    match telem_collector::daemon::run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("telem-collector: {e}");
            ExitCode::FAILURE
        }
    }
}
