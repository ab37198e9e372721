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
//! Both accept the original C probes' command lines unchanged
//! (`telem-record-gen -c CLASS -s SEV -p TEXT -P FILE -R VER -e ID -f FILE
//! -n -o -V -h`, `hprobe -H -f FILE -V -h`), with our additions as long
//! options (`--socket`, `--legacy`, `--timeout`, `--print-id`).
//!
//! Both exit non-zero with a one-line reason when the record was not
//! accepted, or when the command line is wrong (exit status 1, as the
//! originals).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use telemetry::client::{self, ClientError, SocketPath};
use telemetry::config::{ConfigError, Settings};
use telemetry::record::HEADER_NAMES;
use telemetry::{ClassificationError, EventIdError, MachineId, Record, RecordId, SeverityError};

/// How a record goes to the collector: the options both probes share.
#[derive(Debug, Clone, clap::Args)]
pub struct SendOptions {
    /// Collector socket (default: $TELEM_SOCKET, then the configuration
    /// file's socket_path, then /run/telem-0).
    #[arg(long, value_name = "PATH", allow_hyphen_values = true)]
    pub socket: Option<PathBuf>,
    /// Configuration file to take socket_path from, instead of
    /// /etc/telemetrics/telemetrics.conf or
    /// /usr/share/defaults/telemetrics/telemetrics.conf (sent as CFG: with
    /// --legacy). `--config` as in every program of the suite;
    /// `--config-file` and `--config_file` as the original probes spell it.
    #[arg(
        short = 'f',
        long = "config-file",
        visible_aliases = ["config", "config_file"],
        value_name = "FILE",
        allow_hyphen_values = true
    )]
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

fn parse_secs(s: &str) -> Result<Duration, std::num::ParseIntError> {
    s.parse::<u64>().map(Duration::from_secs)
}

impl SendOptions {
    /// Checks that the `-f FILE` given, if any, is a readable configuration
    /// file. The original refuses an unusable `-f` whatever else is given,
    /// so this runs before anything is built or sent, even with `--socket`
    /// or `-n`.
    pub fn check_config(&self) -> Result<(), ProbeError> {
        match &self.config {
            Some(p) => Settings::read(p).map(drop).map_err(ProbeError::from),
            None => Ok(()),
        }
    }
}

/// The version line of `-V/--version`: the bare version number, as the
/// original probes print it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Parses the process's command line as `T`, as the original probes do:
/// `-h` prints the help and exits 0; a wrong command line prints one line,
/// `PROGRAM: what is wrong (see --help)`, and exits 1.
pub fn parse_args<T: clap::Parser>(program: &str) -> Result<T, ExitCode> {
    parse_args_from(program, std::env::args_os())
}

/// As [`parse_args`], from `args` (the first is the program name).
pub fn parse_args_from<T, I, A>(program: &str, args: I) -> Result<T, ExitCode>
where
    T: clap::Parser,
    I: IntoIterator<Item = A>,
    A: Into<OsString> + Clone,
{
    T::try_parse_from(args).map_err(|e| {
        if e.use_stderr() {
            eprintln!("{program}: {} (see --help)", usage_error_line(&e));
            ExitCode::FAILURE
        } else {
            // --help: clap's own text on stdout.
            let _ = e.print();
            ExitCode::SUCCESS
        }
    })
}

/// The first line of clap's message, without its `error: ` prefix.
pub fn usage_error_line(e: &clap::Error) -> String {
    let text = e.to_string();
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("invalid command line");
    line.strip_prefix("error: ").unwrap_or(line).trim().to_string()
}

/// Prints a failure as a probe does: one line on stderr, exit status 1.
pub fn report_error(program: &str, e: &ProbeError) -> ExitCode {
    eprintln!("{program}: {e}");
    ExitCode::FAILURE
}

/// Sends `record` and reports the outcome as a probe does: the record id
/// on stdout with --print-id, a one-line reason on stderr and a failure
/// exit status otherwise.
pub fn send_and_report(program: &str, record: Result<Record, ProbeError>, opts: &SendOptions) -> ExitCode {
    match record.and_then(|r| send(&r, opts)) {
        Ok(id) => {
            if let (true, Some(id)) = (opts.print_id, id) {
                println!("{id}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => report_error(program, &e),
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
    #[error("a classification is required: -c DOMAIN/PROBE/REST (see --help)")]
    MissingClassification,
    #[error("-c {value:?}: {source}")]
    Classification { value: String, source: ClassificationError },
    #[error("-s {value:?}: {source}")]
    Severity { value: String, source: SeverityError },
    #[error("-e {value:?}: {source}")]
    EventId { value: String, source: EventIdError },
    #[error("configuration file path {path}: {reason}")]
    ConfigPath { path: PathBuf, reason: String },
    #[error("cannot print the record: {0}")]
    Echo(std::io::Error),
}

/// Sends `record` as the options say; returns the record id the collector
/// gave it (native framing only).
pub fn send(record: &Record, opts: &SendOptions) -> Result<Option<RecordId>, ProbeError> {
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
    Ok(Some(client::send_once(&socket.path, record, opts.timeout)?))
}

fn absolute(p: &Path) -> Result<String, ProbeError> {
    let abs = std::path::absolute(p).map_err(|e| ProbeError::ConfigPath { path: p.into(), reason: e.to_string() })?;
    abs.to_str()
        .map(str::to_string)
        .ok_or_else(|| ProbeError::ConfigPath { path: abs.clone(), reason: "not UTF-8".into() })
}

/// Writes `record` as the original `telem-record-gen -o` prints it: the
/// 15 header lines `name: value` in wire order (machine id `FFFFFFFF`, as
/// a probe sends it before the collector stamps its own), then the payload
/// and a newline.
pub fn write_echo<W: Write>(record: &Record, out: &mut W) -> std::io::Result<()> {
    let unset = MachineId::unset();
    for (name, value) in HEADER_NAMES.iter().zip(record.header_values(&unset)) {
        writeln!(out, "{name}: {value}")?;
    }
    out.write_all(record.payload.as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()
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

#[cfg(test)]
mod tests {
    use super::*;
    use telemetry::{Classification, EventId, Payload, Severity};

    #[test]
    fn echo_is_the_header_block_then_the_payload() {
        let id: EventId = "0123456789abcdef0123456789abcdef".parse().unwrap();
        let r = Record::builder(Classification::parse("a/b/c").unwrap(), Severity::High, Payload::text("body"))
            .event_id(id)
            .payload_format_version(7)
            .creation_timestamp(1_700_000_000)
            .build();
        let mut out = Vec::new();
        write_echo(&r, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 16, "{text}");
        for (line, name) in lines.iter().zip(HEADER_NAMES) {
            assert!(line.starts_with(&format!("{name}: ")), "{line}");
        }
        assert_eq!(lines[0], "record_format_version: 4");
        assert_eq!(lines[1], "classification: a/b/c");
        assert_eq!(lines[2], "severity: 3");
        assert_eq!(lines[3], "machine_id: FFFFFFFF");
        assert_eq!(lines[4], "creation_timestamp: 1700000000");
        assert_eq!(lines[9], "payload_format_version: 7");
        assert_eq!(lines[14], "event_id: 0123456789abcdef0123456789abcdef");
        assert!(text.ends_with("\nbody\n"), "{text:?}");
    }

    #[test]
    fn unreadable_config_file_is_refused() {
        let opts = SendOptions {
            socket: Some("/x".into()),
            config: Some("/nonexistent/telemetrics.conf".into()),
            legacy: false,
            timeout: Duration::from_secs(1),
            print_id: false,
        };
        let e = opts.check_config().unwrap_err();
        assert!(e.to_string().contains("/nonexistent/telemetrics.conf"), "{e}");
    }
}
