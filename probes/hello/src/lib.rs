//! # hello-probes: `hprobe` and `telem-record-gen`
//!
//! The smallest probes of the suite. They build one [`telemetry::Record`]
//! and hand it to the collector over its unix socket, in the native framing
//! (waiting for the collector's acknowledgement) or, with `--legacy`, in the
//! original C library's framing (no acknowledgement exists there):
//!
//! ```text
//! hprobe / telem-record-gen ──(native | legacy framing)──▶ telem-collector
//! ```
//!
//! Both exit non-zero with a one-line reason when the record was not
//! accepted.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use telemetry::client::{self, Client, ClientError, SocketPath};
use telemetry::config::ConfigError;
use telemetry::Record;

/// How a record goes to the collector: the options both probes share.
#[derive(Debug, Clone, clap::Args)]
pub struct SendOptions {
    /// Collector socket (default: $TELEM_SOCKET, then the config file's
    /// socket_path, then /run/telem-0).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Configuration file to read socket_path from (sent as CFG: with --legacy).
    #[arg(short = 'f', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Use the original C library's framing (no acknowledgement).
    #[arg(long)]
    pub legacy: bool,
    /// Seconds to wait for the collector.
    #[arg(long = "timeout", value_name = "SECONDS", default_value = "10", value_parser = parse_secs)]
    pub timeout: Duration,
    /// Print the record id the collector gave the record.
    #[arg(long)]
    pub print_id: bool,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    s.parse::<u64>().map(Duration::from_secs).map_err(|e| format!("{s:?}: {e}"))
}

/// Sends `record` and reports the outcome as a probe does: the record id
/// on stdout with --print-id, a one-line reason on stderr and a failure
/// exit status otherwise.
pub fn send_and_report(program: &str, record: Result<Record, ProbeError>, opts: &SendOptions) -> std::process::ExitCode {
    match record.and_then(|r| send(&r, opts)) {
        Ok(id) => {
            if let (true, Some(id)) = (opts.print_id, id) {
                println!("{id}");
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{program}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Why a probe failed; printed as one line.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Send(#[from] ClientError),
    #[error("cannot read payload from {what}: {source}")]
    Payload { what: String, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
}

/// Sends `record` as the options say; returns the record id the collector
/// gave it (native framing only).
pub fn send(record: &Record, opts: &SendOptions) -> Result<Option<String>, ProbeError> {
    let socket = SocketPath::resolve_with(
        opts.socket.as_deref(),
        std::env::var_os(client::SOCKET_ENV).map(PathBuf::from),
        opts.config.as_deref(),
    )?;
    if opts.legacy {
        let cfg = opts.config.as_deref().map(absolute).transpose()?;
        client::send_legacy(&socket.path, record, cfg.as_deref(), opts.timeout)?;
        return Ok(None);
    }
    let mut c = Client::connect_path(&socket.path, opts.timeout)?;
    let id = c.send(record)?;
    Ok(Some(client::record_id_hex(&id)))
}

fn absolute(p: &Path) -> Result<String, ProbeError> {
    let abs = std::path::absolute(p).map_err(|e| ProbeError::Invalid(format!("config path {}: {e}", p.display())))?;
    abs.to_str()
        .map(str::to_string)
        .ok_or_else(|| ProbeError::Invalid(format!("config path {} is not UTF-8", abs.display())))
}

/// Reads a payload from a file (`-` is stdin).
pub fn read_payload(source: Option<&Path>) -> Result<Vec<u8>, ProbeError> {
    match source {
        Some(p) if p != Path::new("-") => {
            std::fs::read(p).map_err(|source| ProbeError::Payload { what: p.display().to_string(), source })
        }
        _ => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|source| ProbeError::Payload { what: "standard input".into(), source })?;
            Ok(buf)
        }
    }
}
