//! `journalprobe`: failed units from the systemd journal, as records.
//!
//! ```text
//! systemd journal ──▶ journalprobe ──(native framing)──▶ telem-collector
//! ```

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use journalprobe::{payload, select, CLASSIFICATION, CURSOR_FILE, FIELDS, SEVERITY};
use kernel_probes::config::Config;
use kernel_probes::send::{self, Sender};
use kernel_probes::signals::Stop;
use systemd::journal::{Journal, OpenDirectoryOptions, OpenFilesOptions, OpenOptions};
use telemetry::{BootId, Record};

/// Reads the systemd journal of the current boot and sends one record
/// (org.clearlinux/journal/error, severity 2, payload the entry's MESSAGE)
/// per unit whose process failed (EXIT_CODE exited with a non-zero status,
/// killed by a signal other than HUP/INT/TERM/PIPE, or dumped) and, only
/// when etc_dir/opt-in-no-privacy-filters exists, per entry of priority 0-3.
/// The cursor of the last entry sent is kept in
/// state_dir/journalprobe.cursor, so a restart sends nothing twice.
///
/// Keys read from the configuration file: socket_path, state_dir, etc_dir.
/// Logs go to stderr; RUST_LOG sets the level (default info).
#[derive(Parser, Debug)]
#[command(name = "journalprobe", version)]
struct Args {
    /// Configuration file (default: /etc/telemetrics/telemetrics.conf, then
    /// /usr/share/defaults/telemetrics/telemetrics.conf).
    #[arg(short = 'f', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Collector socket (default: TELEM_SOCKET, else the configuration's
    /// socket_path, else /run/telem-0).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Follow the journal (tail mode) until SIGTERM or SIGINT, instead of
    /// reading what it holds and exiting.
    #[arg(short = 't', long = "tail")]
    tail: bool,
    /// Read the journal files of DIR (another root's /var/log/journal, or
    /// a test's) instead of the system journal.
    #[arg(long, value_name = "DIR", conflicts_with = "file")]
    directory: Option<PathBuf>,
    /// Read these journal files instead of the system journal.
    #[arg(long, value_name = "FILE")]
    file: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error(transparent)]
    Config(#[from] kernel_probes::config::KernelConfigError),
    #[error(transparent)]
    Socket(#[from] telemetry::config::ConfigError),
    #[error("cannot read the boot id: {0}")]
    Boot(std::io::Error),
    #[error("journal: {what}: {source}")]
    Journal { what: &'static str, source: systemd::Error },
    #[error("cannot write the cursor file {path}: {source} (check state_dir)")]
    Cursor { path: PathBuf, source: std::io::Error },
    #[error("cannot set up signal handling: {0}")]
    Signals(std::io::Error),
    #[error("cannot send; the cursor stays where it was: {0}")]
    Send(telemetry::client::ClientError),
}

fn jerr(what: &'static str) -> impl FnOnce(systemd::Error) -> ProbeError {
    move |source| ProbeError::Journal { what, source }
}

fn main() -> ExitCode {
    kernel_probes::init_logging();
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn open(args: &Args) -> Result<Journal, ProbeError> {
    if let Some(d) = &args.directory {
        return OpenDirectoryOptions::default()
            .open_directory(d.as_os_str().as_bytes().to_vec())
            .map_err(jerr("cannot open the journal directory"));
    }
    if !args.file.is_empty() {
        return OpenFilesOptions::default()
            .open_files(args.file.iter().map(|f| f.as_os_str().as_bytes().to_vec()))
            .map_err(jerr("cannot open the journal files"));
    }
    OpenOptions::default().system(true).local_only(true).open().map_err(jerr("cannot open the system journal"))
}

/// The fields journalprobe looks at, of the entry at the read pointer.
fn fields(j: &mut Journal) -> Result<BTreeMap<String, String>, ProbeError> {
    let mut m = BTreeMap::new();
    for f in FIELDS {
        if let Some(v) = j.get_data(f).map_err(jerr("cannot read an entry"))? {
            if let Some(v) = v.value() {
                m.insert(f.to_string(), String::from_utf8_lossy(v).into_owned());
            }
        }
    }
    Ok(m)
}

fn run(args: Args) -> Result<(), ProbeError> {
    let cfg = Config::load(args.config.as_deref())?;
    let socket = cfg.socket(args.socket.as_deref())?;
    let stop = Stop::install().map_err(ProbeError::Signals)?;
    let boot = BootId::read().map_err(ProbeError::Boot)?.to_string();
    let error_priorities = cfg.register_values();
    let mut j = open(&args)?;
    // (_BOOT_ID AND EXIT_CODE in exited|killed|dumped) OR (_BOOT_ID AND PRIORITY 0-3)
    j.match_add("_BOOT_ID", boot.as_str()).map_err(jerr("match"))?;
    for code in ["exited", "killed", "dumped"] {
        j.match_add("EXIT_CODE", code).map_err(jerr("match"))?;
    }
    if error_priorities {
        j.match_or().map_err(jerr("match"))?;
        j.match_add("_BOOT_ID", boot.as_str()).map_err(jerr("match"))?;
        for p in 0..=3 {
            j.match_add("PRIORITY", p.to_string()).map_err(jerr("match"))?;
        }
    }
    let cursor_path = cfg.state_dir.join(CURSOR_FILE);
    let saved = std::fs::read_to_string(&cursor_path).ok().map(|c| c.trim().to_string()).filter(|c| !c.is_empty());
    match &saved {
        Some(c) => {
            j.seek_cursor(c.as_str()).map_err(jerr("cannot seek to the saved cursor"))?;
            // The entry at the cursor was sent: step over it.
            if j.next().map_err(jerr("next"))? > 0 && !j.test_cursor(c.as_str()).map_err(jerr("cursor"))? {
                j.previous().map_err(jerr("previous"))?;
            }
        }
        None => j.seek_head().map_err(jerr("cannot seek to the start"))?,
    }
    std::fs::create_dir_all(&cfg.state_dir)
        .map_err(|source| ProbeError::Cursor { path: cfg.state_dir.clone(), source })?;
    let mut sender = Sender::new(socket.path, Duration::from_secs(10));
    tracing::info!(follow = args.tail, error_priorities, "reading the journal of boot {boot}");
    loop {
        let mut batch: Vec<Record> = Vec::new();
        let mut last = None;
        while batch.len() < 256 && j.next().map_err(jerr("next"))? > 0 {
            let f = fields(&mut j)?;
            last = Some(j.cursor().map_err(jerr("cursor"))?);
            if select(&f, &boot, error_priorities).is_some() {
                match send::record(CLASSIFICATION, SEVERITY, payload(&f)) {
                    Ok(r) => batch.push(r),
                    Err(e) => tracing::error!("{e}"),
                }
            }
        }
        match deliver(&mut sender, &batch, &stop, args.tail) {
            Delivered::Yes => {}
            Delivered::Stopped => return Ok(()),
            Delivered::GaveUp(e) => return Err(ProbeError::Send(e)),
        }
        if let Some(c) = last {
            save(&cursor_path, &c)?;
        }
        if batch.len() == 256 {
            continue;
        }
        if !args.tail || stop.requested() {
            return Ok(());
        }
        // sd_journal_wait would not see the stop signal: wait in slices.
        j.wait(Some(Duration::from_millis(500))).map_err(jerr("wait"))?;
        if stop.requested() {
            return Ok(());
        }
    }
}

/// What became of a batch.
enum Delivered {
    Yes,
    /// A stop was requested while the collector was away.
    Stopped,
    /// One-shot mode: the collector stayed away.
    GaveUp(telemetry::client::ClientError),
}

/// Sends `batch`, retrying while the collector is away: until stopped in
/// follow mode, for about half a minute otherwise.
fn deliver(sender: &mut Sender, batch: &[Record], stop: &Stop, follow: bool) -> Delivered {
    let mut backoff = Duration::from_millis(100);
    let mut tries = 0;
    loop {
        match sender.send(batch) {
            Ok(s) => {
                for reason in s.rejected {
                    tracing::error!(%reason, "the collector refused a record");
                }
                if s.accepted > 0 {
                    tracing::info!(records = s.accepted, "sent");
                }
                return Delivered::Yes;
            }
            Err(e) => {
                tries += 1;
                if !follow && tries >= 8 {
                    return Delivered::GaveUp(e);
                }
                tracing::warn!(error = %e, "cannot send; retrying");
                if stop.wait(backoff) {
                    return Delivered::Stopped;
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn save(path: &Path, cursor: &str) -> Result<(), ProbeError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{cursor}\n"))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| ProbeError::Cursor { path: path.into(), source })
}
