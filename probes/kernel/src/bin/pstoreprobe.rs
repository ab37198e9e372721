//! `pstoreprobe`: at boot, sends a record for every crash dump the kernel
//! saved in pstore before the reboot, then moves the dump files out of
//! pstore (so the next crash has room).
//!
//! ```text
//! pstore (previous boot) ──▶ pstoreprobe ──(native framing, ack)──▶ telem-collector
//!                                 └──▶ state_dir/pstore/ (files, after the ack)
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use kernel_probes::config::Config;
use kernel_probes::pstore::{self, DumpReport};
use kernel_probes::send::{self, Sender};

/// Reads the crash dumps the kernel saved in pstore (dmesg-efi-*,
/// dmesg-efi_pstore-*, dmesg-ramoops-*, dmesg-erst-*, compressed .enc.z
/// parts; multi-part dumps joined in order) and sends one record per dump
/// (org.clearlinux/kernel/panic, .../bug, .../warning, ..., marked "Boot :
/// previous"), with the console and pmsg logs attached when present. Only
/// after the collector acknowledged a dump's record are its files moved to
/// state_dir/pstore/ (and so removed from pstore); a dump whose record was
/// not acknowledged stays in place for the next run. Mounts pstore on
/// pstore_dir (default /sys/fs/pstore) when it is not mounted.
///
/// Keys read from the configuration file: socket_path, state_dir, etc_dir,
/// pstore_dir. Logs go to stderr; RUST_LOG sets the level (default info).
/// Exits 1 when a dump could not be sent or moved.
#[derive(Parser, Debug)]
#[command(name = "pstoreprobe", version)]
struct Args {
    /// Configuration file (default: /etc/telemetrics/telemetrics.conf, then
    /// /usr/share/defaults/telemetrics/telemetrics.conf).
    #[arg(short = 'f', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Collector socket (default: TELEM_SOCKET, else the configuration's
    /// socket_path, else /run/telem-0).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Read dumps from DIR instead of pstore_dir, and never mount it (for
    /// tests, and for dumps copied from another machine).
    #[arg(long, value_name = "DIR")]
    pstore_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    kernel_probes::init_logging();
    let args = Args::parse();
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error(transparent)]
    Config(#[from] kernel_probes::config::KernelConfigError),
    #[error(transparent)]
    Socket(#[from] telemetry::config::ConfigError),
    #[error("cannot mount pstore on {dir}: {source}")]
    Mount { dir: PathBuf, source: std::io::Error },
    #[error("cannot list {dir}: {source}")]
    List { dir: PathBuf, source: std::io::Error },
}

/// Ok(true): every dump sent and moved.
fn run(args: Args) -> Result<bool, ProbeError> {
    let cfg = Config::load(args.config.as_deref())?;
    let socket = cfg.socket(args.socket.as_deref())?;
    let dir = match &args.pstore_dir {
        Some(d) => d.clone(),
        None => {
            let d = cfg.pstore_dir.clone();
            if !pstore::is_mounted(&d) {
                tracing::info!(dir = %d.display(), "mounting pstore");
                pstore::mount(&d).map_err(|source| ProbeError::Mount { dir: d.clone(), source })?;
            }
            d
        }
    };
    let files = pstore::list(&dir).map_err(|source| ProbeError::List { dir: dir.clone(), source })?;
    let (dumps, errors) = pstore::dumps(&files);
    let mut ok = errors.is_empty();
    for e in &errors {
        tracing::error!("{e}; the file stays in place");
    }
    if dumps.is_empty() {
        tracing::info!(dir = %dir.display(), "no crash dump in pstore");
        return Ok(ok);
    }
    // Console and pmsg logs of the previous boot go with every dump.
    let attached: Vec<&pstore::File> = files.iter().filter(|f| f.kind == "console" || f.kind == "pmsg").collect();
    let mut attachments = Vec::new();
    for f in &attached {
        match pstore::read_text(f) {
            Ok(t) => attachments.push((format!("{} log {}", capitalized(&f.kind), f.backend), t)),
            Err(e) => tracing::warn!("{e}; not attached"),
        }
    }
    let mut sender = Sender::new(socket.path, Duration::from_secs(30));
    let archive = cfg.state_dir.join("pstore");
    let mut all_sent = true;
    for dump in &dumps {
        let dest = archive.join(format!("{}-{}-{}", dump.time.unwrap_or_else(now), dump.backend, dump.count));
        let Some(DumpReport { classification, severity, payload }) =
            pstore::dump_report(dump, cfg.register_values(), &attachments)
        else {
            tracing::info!(backend = %dump.backend, reason = ?dump.reason, "dump holds no crash; archived without a record");
            ok &= move_files(&dump.files, &dest);
            continue;
        };
        let record = match send::record(classification, severity, payload) {
            Ok(r) => match dump.time {
                Some(t) => {
                    let mut r = r;
                    r.creation_timestamp = t;
                    r
                }
                None => r,
            },
            Err(e) => {
                tracing::error!("{e}");
                ok = false;
                continue;
            }
        };
        match sender.send(std::slice::from_ref(&record)) {
            Ok(s) if s.accepted == 1 => {
                tracing::info!(class = classification, files = dump.files.len(), "dump sent");
                ok &= move_files(&dump.files, &dest);
            }
            Ok(s) => {
                for reason in s.rejected {
                    tracing::error!(%reason, "the collector refused the record; the dump stays in pstore");
                }
                ok = false;
                all_sent = false;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot send; the dump stays in pstore");
                ok = false;
                all_sent = false;
            }
        }
    }
    if all_sent {
        let dest = archive.join(format!("{}-logs", now()));
        ok &= move_files(&attached.iter().map(|f| f.path.clone()).collect::<Vec<_>>(), &dest);
    }
    Ok(ok)
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

fn now() -> u64 {
    telemetry::record::now_unix()
}

fn move_files(files: &[PathBuf], dest: &std::path::Path) -> bool {
    let mut ok = true;
    for f in files {
        if let Err(e) = pstore::archive(f, dest) {
            tracing::error!(file = %f.display(), dest = %dest.display(), error = %e, "cannot move the file out of pstore");
            ok = false;
        }
    }
    ok
}
