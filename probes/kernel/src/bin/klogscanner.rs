//! `klogscanner`: follows the kernel log (`/dev/kmsg`) and sends a record
//! for every oops, warning, BUG, panic and BERT block it finds.
//!
//! ```text
//! /dev/kmsg ──▶ klogscanner ──(native framing)──▶ telem-collector
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use kernel_probes::config::Config;
use kernel_probes::klog::{Options, Scanner};
use kernel_probes::send::Sender;

/// Follows the kernel log (/dev/kmsg, without taking lines away from other
/// readers) and sends a record for every kernel report it recognises:
/// oops, WARNING, BUG, panic, BERT hardware errors (classifications
/// org.clearlinux/kernel/... and org.clearlinux/bert/debug). Its position
/// is kept in state_dir/klogscanner.state, so a restart neither misses nor
/// repeats a report; lost messages (overrun) give an
/// org.clearlinux/kernel/overrun record. SIGTERM or SIGINT stops it.
///
/// Keys read from the configuration file: socket_path, state_dir, etc_dir,
/// klog_facilities (default kern), klog_storm_window (seconds, default 60).
/// Logs go to stderr; RUST_LOG sets the level (default info).
#[derive(Parser, Debug)]
#[command(name = "klogscanner", version)]
struct Args {
    /// Configuration file (default: /etc/telemetrics/telemetrics.conf, then
    /// /usr/share/defaults/telemetrics/telemetrics.conf).
    #[arg(short = 'f', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Collector socket (default: TELEM_SOCKET, else the configuration's
    /// socket_path, else /run/telem-0).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// The kernel log device.
    #[arg(long, value_name = "PATH", default_value = kernel_probes::kmsg::DEV_KMSG)]
    kmsg: PathBuf,
    /// Read what the log holds now, send it, and exit (instead of following).
    #[arg(long)]
    once: bool,
}

fn main() -> ExitCode {
    kernel_probes::init_logging();
    let args = Args::parse();
    let cfg = match Config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let socket = match cfg.socket(args.socket.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let sender = Sender::new(socket.path, Duration::from_secs(10));
    let run = Scanner::new(cfg, Options { kmsg: args.kmsg, once: args.once }, sender).and_then(|mut s| s.run());
    match run {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
