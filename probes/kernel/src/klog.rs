//! klogscanner's loop: `/dev/kmsg` records → the oops parser → the storm
//! governor → records to the collector, with its position kept in
//! `state_dir/klogscanner.state` (`BOOT_ID NEXT_SEQ`).
//!
//! The position is the sequence number to resume from: everything before
//! it was turned into acknowledged records or was not part of a report,
//! except the lines of a report still being collected, which are read
//! again. It is written after each acknowledged batch, when the log goes
//! quiet, and on SIGTERM/SIGINT (which end the loop between batches, after
//! reading what the log holds and sending the storm governor's counts), so a
//! restart neither misses nor repeats a report. A kill -9 between the
//! collector's acknowledgement and the write (microseconds) repeats that
//! batch. Messages the kernel overwrote before they were read (an `EPIPE`
//! overrun, or while klogscanner was not running) give one
//! `org.clearlinux/kernel/overrun` record saying how many were lost.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use telemetry::{BootId, EventId, Record};

use crate::config::Config;
use crate::kmsg::{Kmsg, Read1};
use crate::oops::{Parser, Report};
use crate::send::{self, Sender};
use crate::storm::{self, Held, Storm};

/// Classification of the record that says messages were lost.
pub const OVERRUN_CLASS: &str = "org.clearlinux/kernel/overrun";
/// A report with no new line for this long is complete.
pub const QUIET: Duration = Duration::from_millis(1000);
/// Most records sent in one batch.
const BATCH: usize = 256;

/// Why the scanner stopped.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// `/dev/kmsg` cannot be opened or read.
    #[error("cannot read the kernel log {path}: {source}")]
    Kmsg {
        /// The path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The position cannot be written.
    #[error("cannot write the position file {path}: {source} (check state_dir)")]
    State {
        /// The path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The stop signals cannot be set up.
    #[error("cannot set up signal handling: {0}")]
    Signals(io::Error),
}

/// Where klogscanner resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The boot it is from.
    pub boot: BootId,
    /// The first sequence number not yet handled.
    pub next: u64,
}

impl Position {
    /// Reads the file; `None` when missing or not understood.
    pub fn load(path: &Path) -> Option<Position> {
        let text = std::fs::read_to_string(path).ok()?;
        let mut w = text.split_whitespace();
        let boot = w.next()?.parse().ok()?;
        let next = w.next()?.parse().ok()?;
        Some(Position { boot, next })
    }

    /// Writes the file (a new file renamed over the old one).
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let tmp = path.with_extension("state.tmp");
        std::fs::write(&tmp, format!("{} {}\n", self.boot, self.next))?;
        std::fs::rename(&tmp, path)
    }
}

/// The path of the position file in `state_dir`.
pub fn state_path(state_dir: &Path) -> PathBuf {
    state_dir.join("klogscanner.state")
}

/// The options of one run.
#[derive(Debug)]
pub struct Options {
    /// The kernel log (`/dev/kmsg`).
    pub kmsg: PathBuf,
    /// Stop once the log has nothing more (for tests and one-shot runs).
    pub once: bool,
}

/// The scanner's state.
pub struct Scanner {
    cfg: Config,
    opts: Options,
    sender: Sender,
    parser: Parser,
    storm: Storm,
    boot: BootId,
    state_file: PathBuf,
    saved: Option<u64>,
    /// The position from the file, while nothing of this run was read.
    resume: Option<u64>,
    last_seen: Option<u64>,
    last_line: Instant,
    overrun: bool,
    out: Vec<Record>,
    stop: crate::signals::Stop,
}

impl Scanner {
    /// Sets up a scanner (reads its position, prepares the stop signals).
    pub fn new(cfg: Config, opts: Options, sender: Sender) -> Result<Scanner, ScanError> {
        let boot = BootId::read().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the boot id; positions of different boots cannot be told apart");
            BootId::UNKNOWN
        });
        let state_file = state_path(&cfg.state_dir);
        let resume = match Position::load(&state_file) {
            Some(p) if p.boot == boot => Some(p.next),
            Some(_) => {
                tracing::info!("position is from another boot: reading this boot's log from its start");
                None
            }
            None => None,
        };
        let stop = crate::signals::Stop::install().map_err(ScanError::Signals)?;
        Ok(Scanner {
            storm: Storm::new(cfg.storm_window),
            cfg,
            opts,
            sender,
            parser: Parser::new(),
            boot,
            state_file,
            saved: resume,
            resume,
            last_seen: None,
            last_line: Instant::now(),
            overrun: false,
            out: Vec::new(),
            stop,
        })
    }

    /// Runs until SIGTERM/SIGINT (or, with `once`, until the log is read).
    pub fn run(&mut self) -> Result<(), ScanError> {
        let mut kmsg =
            Kmsg::open(&self.opts.kmsg).map_err(|source| ScanError::Kmsg { path: self.opts.kmsg.clone(), source })?;
        std::fs::create_dir_all(&self.cfg.state_dir)
            .map_err(|source| ScanError::State { path: self.cfg.state_dir.clone(), source })?;
        tracing::info!(resume = ?self.resume, socket = %self.sender.socket().display(), "following the kernel log");
        loop {
            // Sampled before reading: what was written before the stop
            // signal is read (and counted) before stopping.
            let stopping = self.stop.requested();
            let mut drained = false;
            while self.out.len() < BATCH {
                match kmsg.read_record().map_err(|source| ScanError::Kmsg { path: self.opts.kmsg.clone(), source })? {
                    Read1::Message(m) => self.message(m),
                    Read1::Overrun => {
                        tracing::warn!("the kernel log was overwritten before it was read");
                        self.overrun = true;
                    }
                    Read1::Empty => {
                        drained = true;
                        break;
                    }
                }
            }
            let now = Instant::now();
            if drained && self.parser.open_since().is_some() && (self.once_done() || now >= self.last_line + QUIET) {
                if let Some(r) = self.parser.flush() {
                    self.report(r, now);
                }
            }
            let ending = stopping || (drained && self.opts.once);
            // Ending: the counts of windows still open go now, not lost.
            let counts = if ending { self.storm.drain() } else { self.storm.expired(now) };
            for (held, count) in counts {
                let payload = storm::count_payload(&held, count, self.cfg.storm_window);
                self.push(held.classification, held.severity, payload, EventId::random());
            }
            if !self.out.is_empty() && !self.deliver() {
                break; // stopped while the collector was away
            }
            self.save()?;
            if ending {
                break;
            }
            if drained && !self.stop.requested() {
                self.wait(&kmsg, now);
            }
        }
        self.save()
    }

    fn once_done(&self) -> bool {
        self.opts.once
    }

    fn message(&mut self, m: crate::kmsg::Message) {
        let expected = self.last_seen.map(|s| s + 1).or(self.resume);
        if let Some(first) = self.resume.filter(|_| self.last_seen.is_none()) {
            if m.seq < first {
                // Handled before the restart. (`resume` stays the
                // expectation until a newer message is seen.)
                return;
            }
        }
        if let Some(exp) = expected {
            if m.seq > exp {
                // Lines of an open report are gone: send what it has.
                if let Some(r) = self.parser.flush() {
                    self.report(r, Instant::now());
                }
                let lost = m.seq - exp;
                let why = if self.overrun { "the reader fell behind (EPIPE)" } else { "klogscanner was not running" };
                let payload = format!(
                    "Kernel log messages lost : {lost}\nSequence numbers : {exp} to {}\nCause : the kernel's ring buffer was overwritten before they were read; {why}\n",
                    m.seq - 1
                );
                self.push(OVERRUN_CLASS, 2, payload, EventId::random());
            }
        }
        self.overrun = false;
        self.last_seen = Some(m.seq);
        if !self.cfg.reads_facility(m.facility) {
            return;
        }
        self.last_line = Instant::now();
        for line in m.text.split('\n') {
            if let Some(r) = self.parser.push(m.seq, line) {
                self.report(r, self.last_line);
            }
        }
    }

    fn report(&mut self, r: Report, now: Instant) {
        let payload = r.payload(self.cfg.register_values());
        let held = Held { classification: r.pattern.classification, severity: r.pattern.severity, payload };
        if self.storm.admit(r.signature(), held.clone(), now) {
            // The same report gets the same event id if it is ever sent
            // again (a kill between the ack and saving the position).
            let event = telemetry::crash_id::kernel_report_event_id(&self.boot, r.first);
            self.push(held.classification, held.severity, held.payload, event);
        } else {
            tracing::debug!(class = held.classification, "identical report held back (storm window)");
        }
    }

    fn push(&mut self, class: &str, severity: u8, payload: String, event: EventId) {
        match send::record_of(class, severity, payload, event) {
            Ok(r) => self.out.push(r),
            Err(e) => tracing::error!(error = %e, "cannot make a record"),
        }
    }

    /// Sends the pending records, retrying while the collector is away;
    /// false when a stop was requested before they could be sent.
    fn deliver(&mut self) -> bool {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.sender.send(&self.out) {
                Ok(sent) => {
                    for reason in &sent.rejected {
                        tracing::error!(%reason, "the collector refused a record");
                    }
                    tracing::debug!(accepted = sent.accepted, "batch acknowledged");
                    self.out.clear();
                    return true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, records = self.out.len(), "cannot send; retrying");
                    if self.stop.wait(backoff) {
                        return false;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn position(&self) -> Option<u64> {
        self.parser.open_since().or(self.last_seen.map(|s| s + 1)).or(self.resume)
    }

    fn save(&mut self) -> Result<(), ScanError> {
        // Records not yet acknowledged keep the position where it was.
        if !self.out.is_empty() {
            return Ok(());
        }
        let Some(next) = self.position() else { return Ok(()) };
        if self.saved == Some(next) {
            return Ok(());
        }
        Position { boot: self.boot, next }
            .save(&self.state_file)
            .map_err(|source| ScanError::State { path: self.state_file.clone(), source })?;
        self.saved = Some(next);
        Ok(())
    }

    fn wait(&self, kmsg: &Kmsg, now: Instant) {
        let mut deadline: Option<Instant> = self.storm.next_deadline();
        if self.parser.open_since().is_some() {
            let quiet = self.last_line + QUIET;
            deadline = Some(deadline.map_or(quiet, |d| d.min(quiet)));
        }
        let timeout = deadline.map(|d| d.saturating_duration_since(now) + Duration::from_millis(1));
        self.stop.poll_with(kmsg, timeout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let p = state_path(d.path());
        assert_eq!(Position::load(&p), None);
        let pos = Position { boot: "0123456789abcdef0123456789abcdef".parse().unwrap(), next: 42 };
        pos.save(&p).unwrap();
        assert_eq!(Position::load(&p), Some(pos));
    }
}
