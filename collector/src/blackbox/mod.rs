//! The black box: a start/stop flight recorder of what happened on this
//! host, kept locally (`telemctl blackbox ...`). Beside the record
//! pipeline, never part of it: recordings are not records and are never
//! delivered.
//!
//! ```text
//!  eventprobe ── exec / exit / fatal signal / OOM (Feed lines) ──► feed.rs (state_dir/blackbox.sock)
//!                                                                   │ argv scrubbed, breadcrumb index
//!  decide ── every record accepted (atomic flag when idle) ──► Recorder::on_record
//!             crash / signal/fatal: payload += "Recent activity:" ◄─┤ breadcrumbs.rs
//!  instruments.rs ── load, memory, disk, top CPU every 10 s ───────►┤
//!                                                                   ▼
//!                          store.rs: state_dir/blackbox/<id>/ meta.json + seg-N (segment.rs frames, CRC-32)
//!                                                                   │
//!  telemctl blackbox start|stop|status|list|delete ── control.sock ─┤ export.rs: JSON lines (time order)
//!  retention.rs: finished recordings older than blackbox_retention_days go
//! ```
//!
//! One recording at a time. It survives collector restarts (and reboots)
//! until stopped or its `--max-age` passes: each start while recording
//! writes a `marker` with the boot id. Entries are written at once
//! (eventprobe's are acknowledged then: a collector crash loses none) and
//! fsync'd at least once a second, and when a segment closes or the
//! recording stops.

pub mod breadcrumbs;
pub mod export;
pub mod feed;
pub mod instruments;
pub mod retention;
pub mod segment;
pub mod store;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use telemetry::blackbox::{Control, Entry, Event, Feed};
use telemetry::scrub::Scrubber;
use telemetry::{Payload, Record, RecordId};
use tokio::sync::watch;

use breadcrumbs::Breadcrumbs;
use store::{Meta, Store};

/// The folder of the recordings under `state_dir`.
pub const DIR_NAME: &str = "blackbox";
/// A record's payload in a recording is cut at this many bytes.
pub const MAX_RECORD_PAYLOAD: usize = 64 << 10;
/// How often the recorder's thread wakes (fsync, max-age).
const TICK: Duration = Duration::from_secs(1);
/// How often instrument readings are taken while recording.
pub const READING_EVERY: Duration = Duration::from_secs(10);
/// Test hook: the reading interval in milliseconds (not a documented
/// setting; the e2e tests shorten it).
pub const READING_ENV: &str = "TELEM_BLACKBOX_READING_MS";

/// Why a black-box command failed.
#[derive(Debug, thiserror::Error)]
pub enum BlackboxError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a recording's meta file: {reason}")]
    BadMeta { path: PathBuf, reason: String },
    #[error("cannot encode an entry: {0}")]
    Encode(String),
    #[error("a recording is already running ({0}); stop it first (`telemctl blackbox stop`)")]
    Running(String),
    #[error("no recording is running")]
    NotRunning,
    #[error("recording {0} exists already")]
    Exists(String),
    #[error("no recording {0:?} (see `telemctl blackbox list`)")]
    NoSuch(String),
    #[error("recording {0} is running; stop it before deleting it")]
    DeleteRunning(String),
    #[error("{0:?} is not a recording id (letters, digits, '-', '_', '.')")]
    BadId(String),
    #[error("--max-size {0} is too small: at least {min} bytes", min = store::MIN_MAX_SIZE)]
    TooSmall(u64),
    #[error("{0}: permission denied (only root reads black-box recordings)")]
    NotRoot(PathBuf),
}

/// `telemctl blackbox start`'s options, as sent on the control socket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size_bytes: Option<u64>,
}

/// `telemctl blackbox status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub recording: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Wall-clock start, nanoseconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_wall_ns: Option<u64>,
    /// Entries written (those `--max-size` deleted included).
    pub events: u64,
    /// Bytes on disk now.
    pub bytes: u64,
    /// `gap` entries, and the events they say were lost.
    pub gaps: u64,
    pub lost: u64,
    pub truncated_segments: u64,
    pub truncated_entries: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size_bytes: Option<u64>,
    /// Feeds (eventprobe) connected to the blackbox socket now: without
    /// one, no exec or exit is being recorded.
    #[serde(default)]
    pub feeds: u64,
}

/// One line of `telemctl blackbox list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub started_wall_ns: u64,
    #[serde(default)]
    pub stopped_wall_ns: Option<u64>,
    #[serde(default)]
    pub stop_reason: Option<String>,
    pub recording: bool,
    pub events: u64,
    pub bytes: u64,
    pub lost: u64,
}

impl Summary {
    /// A recording as its files say (the collector not running).
    pub fn from_files(meta: &Meta) -> Summary {
        Summary::of(meta, false, None)
    }

    fn of(meta: &Meta, recording: bool, totals: Option<(store::Counts, u64)>) -> Summary {
        let (c, bytes) = totals.unwrap_or((meta.closed_counts, meta.closed_bytes()));
        Summary {
            id: meta.id.clone(),
            label: meta.label.clone(),
            started_wall_ns: meta.started_wall_ns,
            stopped_wall_ns: meta.stopped_wall_ns,
            stop_reason: meta.stop_reason.clone(),
            recording,
            events: c.entries,
            bytes,
            lost: c.lost,
        }
    }
}

/// `2026-12-03T17:10:00.123Z` for nanoseconds since the epoch.
pub fn format_wall(ns: u64) -> String {
    let utc = telemetry::record::format_utc(ns / 1_000_000_000).replacen(' ', "T", 1);
    format!("{utc}.{:03}Z", (ns / 1_000_000) % 1000)
}

/// Parses `--max-age`: a number with `s`, `m`, `h`, `d` or `w` (seconds
/// without a unit).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("{s:?}: expected a number and a unit (90s, 30m, 12h, 7d, 2w)"))?;
    let mult = match unit.trim() {
        "" | "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        u => return Err(format!("{s:?}: unknown unit {u:?} (s, m, h, d, w)")),
    };
    match n.checked_mul(mult) {
        Some(0) | None => Err(format!("{s:?}: expected a duration above zero")),
        Some(secs) => Ok(Duration::from_secs(secs)),
    }
}

/// Parses `--max-size`: bytes, or a number with `K`, `M`, `G` (KiB, MiB,
/// GiB; `KiB` and `KB` are read alike).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num.parse().map_err(|_| format!("{s:?}: expected a size (512K, 64M, 2G)"))?;
    let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        u => return Err(format!("{s:?}: unknown unit {u:?} (K, M, G)")),
    };
    n.checked_mul(mult).filter(|&b| b > 0).ok_or_else(|| format!("{s:?}: expected a size above zero"))
}

/// The recorder: the recording being written (if any), the breadcrumb
/// index, and the state eventprobe is told.
pub struct Recorder {
    root: PathBuf,
    /// Set while recording: the one check the record path makes.
    recording: AtomicBool,
    active: Mutex<Option<Store>>,
    crumbs: Mutex<Breadcrumbs>,
    control: watch::Sender<Control>,
    /// The recording stopped last, and the entries that reached the socket
    /// after it stopped although they happened while it ran (eventprobe
    /// was not connected at the stop): counted and logged, not written.
    late: Mutex<Option<Late>>,
}

/// See [`Recorder::late`].
#[derive(Debug, Default)]
struct Late {
    id: String,
    started_wall_ns: u64,
    stopped_wall_ns: u64,
    count: u64,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").field("root", &self.root).field("recording", &self.is_recording()).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Recorder {
    /// A recorder keeping its recordings under `state_dir/blackbox`; not
    /// recording until [`resume`](Self::resume) or [`start`](Self::start).
    pub fn new(state_dir: &Path) -> Recorder {
        Recorder {
            root: state_dir.join(DIR_NAME),
            recording: AtomicBool::new(false),
            active: Mutex::new(None),
            crumbs: Mutex::new(Breadcrumbs::default()),
            control: watch::Sender::new(Control::State { recording: false, id: None }),
            late: Mutex::new(None),
        }
    }

    /// The folder of the recordings.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether a recording is running (an atomic load).
    #[inline]
    pub fn is_recording(&self) -> bool {
        self.recording.load(Ordering::Relaxed)
    }

    /// What eventprobe is told, now and on every change.
    pub fn subscribe(&self) -> watch::Receiver<Control> {
        self.control.subscribe()
    }

    fn set_active(&self, slot: &mut Option<Store>, store: Option<Store>) {
        let id = store.as_ref().map(|s| s.meta.id.clone());
        self.recording.store(store.is_some(), Ordering::SeqCst);
        *slot = store;
        self.control.send_replace(Control::State { recording: id.is_some(), id });
    }

    /// At collector start: goes on with a recording that was not stopped
    /// (a `marker` says the collector started, with the boot id), or stops
    /// it when its `--max-age` passed meanwhile.
    pub fn resume(&self, boot_id: &str) -> Result<Option<String>, BlackboxError> {
        if !self.root.is_dir() {
            return Ok(None);
        }
        let mut open: Vec<Meta> = list_metas(&self.root)?.into_iter().filter(|m| m.stopped_wall_ns.is_none()).collect();
        open.sort_by_key(|m| m.started_wall_ns);
        let Some(newest) = open.pop() else { return Ok(None) };
        // One recording at a time: older unstopped ones (cannot happen
        // unless meta files were copied in) are closed as interrupted.
        for m in open {
            let dir = self.root.join(&m.id);
            match Store::open(&dir) {
                Ok((s, _)) => drop(s.finish("interrupted")),
                Err(e) => tracing::warn!("blackbox: cannot close recording {}: {e}", m.id),
            }
        }
        let dir = self.root.join(&newest.id);
        let (mut store, rec) = Store::open(&dir)?;
        if rec.torn_bytes > 0 {
            tracing::warn!("blackbox: recording {}: cut a torn tail of {} bytes", newest.id, rec.torn_bytes);
        }
        store.append(
            &Entry::now(Event::Marker { text: format!("collector started (boot {boot_id}); recording continues") }),
            None,
        )?;
        let id = newest.id.clone();
        tracing::info!("blackbox: recording {id} continues ({} entries read back)", rec.entries);
        let mut slot = lock(&self.active);
        self.set_active(&mut slot, Some(store));
        drop(slot);
        self.check_max_age();
        Ok(Some(id))
    }

    /// Starts a recording.
    pub fn start(&self, opts: &StartOptions, boot_id: &str) -> Result<Meta, BlackboxError> {
        if let Some(m) = opts.max_size_bytes.filter(|&m| m < store::MIN_MAX_SIZE) {
            return Err(BlackboxError::TooSmall(m));
        }
        let mut slot = lock(&self.active);
        if let Some(s) = slot.as_ref() {
            return Err(BlackboxError::Running(s.meta.id.clone()));
        }
        let wall = telemetry::blackbox::wall_ns();
        let rand = telemetry::EventId::random().to_string();
        let stamp: String = format_wall(wall).chars().filter(|c| c.is_ascii_digit()).take(14).collect();
        let id = format!("{}-{}-{}", &stamp[..8], &stamp[8..], &rand[..6]);
        let meta = Meta {
            id: id.clone(),
            label: opts.label.clone().filter(|l| !l.is_empty()),
            started_wall_ns: wall,
            stopped_wall_ns: None,
            stop_reason: None,
            max_age_secs: opts.max_age_secs,
            max_size_bytes: opts.max_size_bytes,
            segment_bytes: Store::segment_bytes_for(opts.max_size_bytes),
            first_index: 0,
            closed: Vec::new(),
            closed_counts: Default::default(),
            sources: Default::default(),
            truncated_segments: 0,
            truncated_entries: 0,
        };
        let mut store = Store::create(&self.root, meta)?;
        let label = opts.label.as_deref().map(|l| format!(" ({l})")).unwrap_or_default();
        store
            .append(&Entry::now(Event::Marker { text: format!("recording started{label} (boot {boot_id})") }), None)?;
        let meta = store.meta.clone();
        *lock(&self.crumbs) = Breadcrumbs::default();
        self.set_active(&mut slot, Some(store));
        tracing::info!("blackbox: recording {id} started{label}");
        Ok(meta)
    }

    /// Stops the recording (`reason` in its `marker` and meta file).
    pub fn stop(&self, reason: &str) -> Result<Meta, BlackboxError> {
        let mut slot = lock(&self.active);
        let Some(mut store) = slot.take() else { return Err(BlackboxError::NotRunning) };
        self.set_active(&mut slot, None);
        let r = store.append(&Entry::now(Event::Marker { text: format!("recording {reason}") }), None);
        if let Err(e) = r {
            tracing::warn!("blackbox: {e}");
        }
        // Finished before the lock goes: `status` and `list` never show a
        // recording that is neither running nor stopped with its reason.
        let finished = store.finish(reason);
        drop(slot);
        let meta = finished?;
        *lock(&self.late) = Some(Late {
            id: meta.id.clone(),
            started_wall_ns: meta.started_wall_ns,
            stopped_wall_ns: meta.stopped_wall_ns.unwrap_or(u64::MAX),
            count: 0,
        });
        *lock(&self.crumbs) = Breadcrumbs::default();
        tracing::info!("blackbox: recording {} {reason}", meta.id);
        Ok(meta)
    }

    /// Stops the recording when its `--max-age` has passed.
    pub fn check_max_age(&self) {
        let due = {
            let slot = lock(&self.active);
            slot.as_ref().is_some_and(|s| {
                s.meta.max_age_secs.is_some_and(|a| {
                    telemetry::blackbox::wall_ns().saturating_sub(s.meta.started_wall_ns)
                        >= a.saturating_mul(1_000_000_000)
                })
            })
        };
        if due {
            if let Err(e) = self.stop("stopped: max-age reached") {
                tracing::error!("blackbox: stopping at max-age: {e}");
            }
        }
    }

    /// The status of the recorder.
    pub fn status(&self) -> Status {
        let feeds = self.control.receiver_count() as u64;
        let slot = lock(&self.active);
        let Some(s) = slot.as_ref() else { return Status { feeds, ..Status::default() } };
        let (c, bytes) = s.totals();
        Status {
            recording: true,
            id: Some(s.meta.id.clone()),
            label: s.meta.label.clone(),
            since_wall_ns: Some(s.meta.started_wall_ns),
            events: c.entries,
            bytes,
            gaps: c.gaps,
            lost: c.lost,
            truncated_segments: s.meta.truncated_segments,
            truncated_entries: s.meta.truncated_entries,
            max_age_secs: s.meta.max_age_secs,
            max_size_bytes: s.meta.max_size_bytes,
            feeds,
        }
    }

    /// Every recording, oldest first (the running one with its live counts).
    pub fn list(&self) -> Result<Vec<Summary>, BlackboxError> {
        let slot = lock(&self.active);
        let active = slot.as_ref().map(|s| (s.meta.id.clone(), s.totals()));
        drop(slot);
        Ok(list_metas(&self.root)?
            .iter()
            .map(|m| match &active {
                Some((id, t)) if *id == m.id => Summary::of(m, true, Some(*t)),
                _ => Summary::of(m, false, None),
            })
            .collect())
    }

    /// Deletes a stopped recording.
    pub fn delete(&self, id: &str) -> Result<(), BlackboxError> {
        let slot = lock(&self.active);
        if slot.as_ref().is_some_and(|s| s.meta.id == id) {
            return Err(BlackboxError::DeleteRunning(id.into()));
        }
        delete(&self.root, id)
    }

    /// Writes an entry to the running recording; `false` when none runs
    /// or the feed entry was written already.
    pub fn write(&self, entry: &Entry, source: Option<(&str, u64)>) -> Result<bool, BlackboxError> {
        let mut slot = lock(&self.active);
        match slot.as_mut() {
            Some(s) => s.append(entry, source),
            None => Ok(false),
        }
    }

    /// One line from eventprobe: argv scrubbed, the breadcrumb index
    /// updated, written unless its `seq` was (`Ok(false)`: not written).
    /// The highest `seq` of `source` the running recording holds.
    pub fn last_seq(&self, source: &str) -> Option<u64> {
        lock(&self.active).as_ref().and_then(|s| s.last_seq(source))
    }

    pub fn feed(&self, mut feed: Feed, scrubber: Option<&Scrubber>) -> Result<bool, BlackboxError> {
        if !self.is_recording() {
            self.note_late(&feed.entry);
            return Ok(false);
        }
        if let Event::Exec { argv, exe, .. } = &mut feed.entry.event {
            if let Some(sc) = scrubber {
                for a in argv.iter_mut() {
                    if let std::borrow::Cow::Owned(o) = sc.scrub(a) {
                        *a = o;
                    }
                }
                if let std::borrow::Cow::Owned(o) = sc.scrub(exe) {
                    *exe = o;
                }
            }
        }
        let source = (feed.source.len() <= segment::MAX_SOURCE && !feed.source.is_empty())
            .then_some((feed.source.as_str(), feed.seq));
        let written = self.write(&feed.entry, source)?;
        if written {
            lock(&self.crumbs).note(&feed.entry);
        }
        Ok(written)
    }

    /// An entry that arrived while not recording but happened while the
    /// last recording ran: counted, and logged at powers of two.
    fn note_late(&self, e: &Entry) {
        let mut late = lock(&self.late);
        let Some(l) = late.as_mut() else { return };
        if e.wall_ns < l.started_wall_ns || e.wall_ns > l.stopped_wall_ns {
            return;
        }
        l.count += 1;
        if l.count.is_power_of_two() {
            tracing::warn!(
                "blackbox: {} entries from eventprobe arrived after recording {} stopped although they happened \
                 while it ran (eventprobe was not connected when it stopped); they are not in it",
                l.count,
                l.id
            );
        }
    }

    /// While recording: the record accepted becomes a `record` entry; a
    /// crash or fatal-signal record's payload first gets its process
    /// tree's recent activity (within `max_payload` bytes).
    pub fn on_record(&self, record: &mut Record, record_id: RecordId, max_payload: usize) {
        let c = &record.classification;
        let crash = (c.probe() == "crash" && c.rest() != "repeated") || (c.probe() == "signal" && c.rest() == "fatal");
        let pid = match &record.payload {
            Payload::Text(t) => breadcrumbs::payload_pid(t),
            Payload::Bytes(b) => std::str::from_utf8(b).ok().and_then(breadcrumbs::payload_pid),
        };
        if crash {
            if let Some(pid) = pid {
                let lines = lock(&self.crumbs).recent(pid, breadcrumbs::RECENT);
                if !lines.is_empty() {
                    let limit = max_payload.min(telemetry::DEFAULT_MAX_PAYLOAD);
                    match &mut record.payload {
                        Payload::Text(t) => breadcrumbs::append(t, &lines, limit),
                        Payload::Bytes(b) => {
                            if let Ok(mut t) = String::from_utf8(std::mem::take(b)) {
                                breadcrumbs::append(&mut t, &lines, limit);
                                *b = t.into_bytes();
                            }
                        }
                    }
                }
            }
        }
        let mut payload = match &record.payload {
            Payload::Text(t) => t.clone(),
            Payload::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        };
        if payload.len() > MAX_RECORD_PAYLOAD {
            let mut cut = MAX_RECORD_PAYLOAD;
            while !payload.is_char_boundary(cut) {
                cut -= 1;
            }
            payload.truncate(cut);
        }
        let e = Entry::now(Event::Record {
            record_id: record_id.to_string(),
            event_id: record.event_id.to_string(),
            classification: record.classification.as_str().to_string(),
            severity: record.severity.as_u8(),
            pid,
            payload,
        });
        if let Err(e) = self.write(&e, None) {
            tracing::warn!("blackbox: cannot write a record entry: {e}");
        }
    }

    /// fsyncs what was written since the last call (outside the lock).
    pub fn sync(&self) {
        let f = lock(&self.active).as_mut().and_then(Store::take_dirty);
        if let Some(f) = f {
            if let Err(e) = f.sync_data() {
                tracing::warn!("blackbox: fsync: {e}");
            }
        }
    }
}

/// Every recording's meta file, oldest first (unreadable ones are logged
/// and left out).
pub fn list_metas(root: &Path) -> Result<Vec<Meta>, BlackboxError> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(source) => return Err(BlackboxError::Io { path: root.into(), source }),
    };
    for e in rd.flatten() {
        if !e.path().is_dir() {
            continue;
        }
        match store::read_meta(&e.path()) {
            Ok(m) => out.push(m),
            Err(err) => tracing::warn!("blackbox: {err}"),
        }
    }
    out.sort_by_key(|m| m.started_wall_ns);
    Ok(out)
}

/// The folder of recording `id`, when it exists.
pub fn recording_dir(root: &Path, id: &str) -> Result<PathBuf, BlackboxError> {
    if !store::valid_id(id) {
        return Err(BlackboxError::BadId(id.into()));
    }
    let dir = root.join(id);
    let meta = dir.join("meta.json");
    match std::fs::metadata(&meta) {
        Ok(m) if m.is_file() => Ok(dir),
        Ok(_) => Err(BlackboxError::NoSuch(id.into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(BlackboxError::NoSuch(id.into())),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(BlackboxError::NotRoot(meta)),
        Err(source) => Err(BlackboxError::Io { path: meta, source }),
    }
}

/// Deletes recording `id` (the caller checked it is not running).
pub fn delete(root: &Path, id: &str) -> Result<(), BlackboxError> {
    let dir = recording_dir(root, id)?;
    std::fs::remove_dir_all(&dir).map_err(|source| BlackboxError::Io { path: dir, source })
}

/// The control socket's `blackbox ...` commands; the answer line.
pub fn control(shared: &crate::state::State, args: &str) -> String {
    let bb = &shared.blackbox;
    let (cmd, rest) = args.split_once(' ').unwrap_or((args, ""));
    let answer: Result<serde_json::Value, BlackboxError> = match cmd {
        "start" => match serde_json::from_str::<StartOptions>(if rest.trim().is_empty() { "{}" } else { rest }) {
            Ok(o) => bb.start(&o, &shared.boot_id).map(|m| serde_json::json!({ "ok": true, "id": m.id })),
            Err(e) => return serde_json::json!({ "error": format!("bad start options: {e}") }).to_string(),
        },
        "stop" => bb.stop("stopped").map(|m| serde_json::json!({ "ok": true, "id": m.id })),
        "status" => Ok(serde_json::json!({ "ok": true, "status": bb.status() })),
        "list" => bb.list().map(|l| serde_json::json!({ "ok": true, "recordings": l })),
        "delete" => bb.delete(rest.trim()).map(|()| serde_json::json!({ "ok": true })),
        other => return serde_json::json!({ "error": format!("unknown blackbox command {other:?}") }).to_string(),
    };
    match answer {
        Ok(v) => v.to_string(),
        Err(e) => serde_json::json!({ "error": e.to_string() }).to_string(),
    }
}

/// The recorder's thread: fsync every second, max-age, instrument
/// readings while recording, retention at start and daily. Ends when
/// `stop` is dropped or sent to.
pub fn run_thread(shared: Arc<crate::state::State>, stop: std::sync::mpsc::Receiver<()>) {
    let every = std::env::var(READING_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .map(Duration::from_millis)
        .unwrap_or(READING_EVERY);
    let bb = &shared.blackbox;
    // The CPU baseline is taken when a recording starts (or is found
    // running): nothing scans /proc while none is.
    let mut inst: Option<instruments::Instruments> = None;
    let mut next_reading = Instant::now() + every;
    // Retention ran at start (daemon.rs); then daily.
    let mut next_retention = Instant::now() + Duration::from_secs(86_400);
    loop {
        let now = Instant::now();
        if now >= next_retention {
            let days = shared.config().blackbox_retention_days;
            retention::prune(bb.root(), days, telemetry::blackbox::wall_ns());
            next_retention = now + Duration::from_secs(86_400);
        }
        match (&mut inst, bb.is_recording()) {
            (None, true) => {
                inst = Some(instruments::Instruments::new());
                next_reading = now + every;
            }
            (Some(_), false) => inst = None,
            (Some(i), true) if now >= next_reading => {
                let reading = i.read(&shared.config().state_dir);
                if let Err(e) = bb.write(&Entry::now(reading), None) {
                    tracing::warn!("blackbox: cannot write a reading: {e}");
                }
                next_reading = now + every;
            }
            _ => {}
        }
        bb.check_max_age();
        bb.sync();
        let wait = match inst {
            Some(_) => TICK.min(next_reading.saturating_duration_since(Instant::now())),
            None => TICK,
        };
        match stop.recv_timeout(wait) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            _ => break,
        }
    }
    bb.sync();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("2M"), Ok(2 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("x").is_err() && parse_size("0").is_err() && parse_size("5T").is_err());
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("0s").is_err() && parse_duration("h").is_err() && parse_duration("3y").is_err());
    }

    #[test]
    fn wall_times_format_as_utc() {
        assert_eq!(format_wall(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_wall(1_700_000_000_123_000_000), "2023-11-14T22:13:20.123Z");
    }
}
