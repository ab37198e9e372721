//! Stage: the journal, an append-only file of JSON lines under
//! `journal_dir` (`journal`, rotated to `journal.1` past 32 MiB).
//!
//! Every accepted record gets one entry (record id, time, classification,
//! event id, boot id, sender uid/pid, severity, fate, and the payload when
//! `record_retention_enabled`). Later fates (delivered, rejected by the
//! server, expired) are appended as short entries naming the same record id;
//! readers keep the last fate. Stages queue [`Line`]s (which borrow the
//! accepted record, so nothing is copied for the journal); one writer
//! thread turns whatever is queued into one write and one `fdatasync`
//! (group commit) and then tells the waiters. Lines nobody waits for
//! (records already durable in the spool, later fates) are gathered for
//! [`GATHER`] before they are written, without waking the writer per
//! append, and are fsync'd within [`LAZY_SYNC`]. `telemctl journal` reads
//! the files back through [`read`].

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize, Serializer};
use telemetry::EventId;
use thiserror::Error;

use crate::spool::Item;

/// Past this size the journal is rotated.
pub const ROTATE_BYTES: u64 = 32 << 20;
pub const FILE_NAME: &str = "journal";
pub const OLD_FILE_NAME: &str = "journal.1";

/// What became of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Durably in the spool, waiting for delivery.
    Spooled,
    /// Over a rate window, kept in the spool.
    RateLimitedSpooled,
    /// Over a rate window and dropped (`rate_limit_strategy=drop`).
    RateLimitedDropped,
    /// Posted and answered 2xx.
    Delivered,
    /// The server refused it (4xx other than 408/429).
    /// `attempts`: the 5xx answers it got while the server took other
    /// records (a record the server keeps failing), or `None` for a 4xx.
    RejectedByServer { status: u16, body: String, attempts: Option<u32> },
    /// Not sent by policy.
    LocalOnly(String),
    /// Dropped (spool full, expired, cannot store).
    Dropped(String),
}

impl std::fmt::Display for Fate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fate::Spooled => f.write_str("spooled"),
            Fate::RateLimitedSpooled => f.write_str("rate-limited: spooled"),
            Fate::RateLimitedDropped => f.write_str("rate-limited: dropped"),
            Fate::Delivered => f.write_str("delivered"),
            Fate::RejectedByServer { status, body, attempts: None } => write!(f, "rejected-by-server: {status} {body}"),
            Fate::RejectedByServer { status, body, attempts: Some(n) } => {
                write!(f, "rejected-by-server: {status} after {n} attempts: {body}")
            }
            Fate::LocalOnly(why) => write!(f, "local-only: {why}"),
            Fate::Dropped(why) => write!(f, "dropped: {why}"),
        }
    }
}

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Record id, 32 hex.
    pub id: String,
    /// Unix seconds when this entry was written.
    pub time: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<u8>,
    pub fate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// The record's own creation time (as it would be sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_format_version: Option<u32>,
    /// The host facts as they would be sent (after the privacy level).
    #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
    pub host: Option<telemetry::HostInfo>,
}

impl Entry {
    /// A fate update for a record already journaled.
    pub fn update(id: &str, fate: &Fate) -> Entry {
        Entry {
            id: id.into(),
            time: telemetry::record::now_unix(),
            class: None,
            event: None,
            boot: None,
            uid: None,
            pid: None,
            severity: None,
            fate: fate.to_string(),
            payload: None,
            creation_timestamp: None,
            payload_format_version: None,
            host: None,
        }
    }
}

/// A line to write: a record's first entry, or a later fate. Written as
/// the JSON of an [`Entry`] (what [`read`] parses back).
#[derive(Debug, Clone)]
pub enum Line {
    First {
        /// The accepted record (shared with the spool, not copied).
        item: Arc<Item>,
        /// Unix seconds of the entry.
        time: u64,
        boot: Arc<str>,
        fate: Fate,
        /// Keep the payload (`record_retention_enabled`).
        payload: bool,
    },
    Fate {
        id: [u8; 16],
        time: u64,
        fate: Fate,
    },
}

impl Line {
    /// A later fate of a record already journaled, now.
    pub fn fate(id: [u8; 16], fate: Fate) -> Line {
        Line::Fate { id, time: telemetry::record::now_unix(), fate }
    }

    /// The record id.
    pub fn id(&self) -> [u8; 16] {
        match self {
            Line::First { item, .. } => item.record_id,
            Line::Fate { id, .. } => *id,
        }
    }

    /// The line's JSON, appended to `out` (no newline).
    pub fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        /// Writes with `Display`, without an intermediate string.
        struct Shown<T>(T);
        impl<T: std::fmt::Display> Serialize for Shown<T> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(&self.0)
            }
        }
        #[derive(Serialize)]
        struct FirstJson<'a> {
            id: Shown<EventId>,
            time: u64,
            class: &'a str,
            event: Shown<EventId>,
            boot: &'a str,
            uid: u32,
            pid: u32,
            severity: u8,
            fate: Shown<&'a Fate>,
            #[serde(skip_serializing_if = "Option::is_none")]
            payload: Option<std::borrow::Cow<'a, str>>,
            creation_timestamp: u64,
            payload_format_version: u32,
            #[serde(flatten)]
            host: &'a telemetry::HostInfo,
        }
        #[derive(Serialize)]
        struct FateJson<'a> {
            id: Shown<EventId>,
            time: u64,
            fate: Shown<&'a Fate>,
        }
        match self {
            Line::First { item, time, boot, fate, payload } => {
                let r = &item.record;
                serde_json::to_writer(
                    out,
                    &FirstJson {
                        id: Shown(EventId::from_bytes(item.record_id)),
                        time: *time,
                        class: r.classification.as_str(),
                        event: Shown(r.event_id),
                        boot,
                        uid: item.uid,
                        pid: item.pid,
                        severity: r.severity.as_u8(),
                        fate: Shown(fate),
                        payload: payload.then(|| r.payload.to_text_lossy()),
                        creation_timestamp: r.creation_timestamp,
                        payload_format_version: r.payload_format_version,
                        host: &r.host,
                    },
                )
            }
            Line::Fate { id, time, fate } => serde_json::to_writer(
                out,
                &FateJson { id: Shown(EventId::from_bytes(*id)), time: *time, fate: Shown(fate) },
            ),
        }
    }
}

/// Why the journal cannot be written or read.
#[derive(Debug, Error)]
pub enum JournalError {
    #[error("cannot open the journal {path}: {source} (check journal_dir and its permissions)")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("cannot write the journal {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("the journal writer has stopped")]
    Stopped,
}

/// Local retention (`local_retention_days`, `local_retention_records`):
/// what [`prune`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Records first journaled more than this many seconds ago are pruned.
    pub max_age_secs: u64,
    /// At most this many records are kept (the newest).
    pub max_records: u64,
}

impl Retention {
    pub fn from_config(cfg: &crate::config::Config) -> Retention {
        Retention {
            max_age_secs: u64::from(cfg.local_retention_days) * 86_400,
            max_records: cfg.local_retention_records,
        }
    }
}

/// How often the writer prunes (also once at open).
pub const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// What [`prune`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub kept: u64,
    pub removed: u64,
}

/// Removes from `journal.1` and `journal` every record (its first entry,
/// its retained payload and its later fates) first journaled before
/// `now - max_age_secs`, and the oldest beyond `max_records`. Rewrites the
/// journal only when something goes: `journal.tmp`, fsync, rename over
/// `journal`, remove `journal.1`, fsync the directory. The writer thread
/// calls it (and reopens its file); `now` is explicit for tests.
pub fn prune(dir: &Path, now: u64, r: &Retention) -> Result<Pruned, JournalError> {
    let mut lines: Vec<(String, Vec<u8>)> = Vec::new();
    let mut firsts: Vec<(String, u64)> = Vec::new();
    let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
    for name in [OLD_FILE_NAME, FILE_NAME] {
        let path = dir.join(name);
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(JournalError::Open { path, source }),
        };
        for line in BufReader::new(f).split(b'\n') {
            let line = line.map_err(|source| JournalError::Open { path: path.clone(), source })?;
            let Ok(e) = serde_json::from_slice::<Entry>(&line) else { continue };
            if e.class.is_some() && seen.insert(e.id.clone()) {
                firsts.push((e.id.clone(), e.time));
            }
            lines.push((e.id, line));
        }
    }
    let cutoff = now.saturating_sub(r.max_age_secs);
    let young: Vec<&(String, u64)> = firsts.iter().filter(|(_, t)| *t >= cutoff).collect();
    let skip = young.len().saturating_sub(r.max_records as usize);
    let keep: std::collections::HashSet<&str> = young[skip..].iter().map(|(id, _)| id.as_str()).collect();
    let removed = (firsts.len() - keep.len()) as u64;
    let dropped_lines = lines.iter().any(|(id, _)| !keep.contains(id.as_str()));
    if !dropped_lines && !dir.join(OLD_FILE_NAME).exists() {
        return Ok(Pruned { kept: keep.len() as u64, removed });
    }
    let tmp = dir.join("journal.tmp");
    let werr = |source| JournalError::Write { path: tmp.clone(), source };
    // (A leftover of a crash keeps its mode: made anew.)
    let _ = std::fs::remove_file(&tmp);
    let tmp_file = {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new().write(true).create(true).truncate(true).mode(FILE_MODE).open(&tmp).map_err(werr)?
    };
    let mut out = std::io::BufWriter::new(tmp_file);
    for (id, line) in &lines {
        if keep.contains(id.as_str()) {
            out.write_all(line).and_then(|()| out.write_all(b"\n")).map_err(werr)?;
        }
    }
    let f = out.into_inner().map_err(|e| werr(e.into_error()))?;
    f.sync_all().map_err(werr)?;
    std::fs::rename(&tmp, dir.join(FILE_NAME)).map_err(werr)?;
    match std::fs::remove_file(dir.join(OLD_FILE_NAME)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(werr(e)),
        _ => {}
    }
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(Pruned { kept: keep.len() as u64, removed })
}

/// The end of the journal: the record ids of its last first entries
/// (within the last [`TAIL_BYTES`] of `journal`) and the newest entry time.
#[derive(Debug, Default)]
pub struct Tail {
    pub ids: std::collections::HashSet<[u8; 16]>,
    pub newest: Option<u64>,
}

/// How much of the journal's end [`tail`] reads.
pub const TAIL_BYTES: u64 = 8 << 20;

/// Reads the end of `dir/journal` (see [`Tail`]).
pub fn tail(dir: &Path) -> Result<Tail, JournalError> {
    use std::io::{Seek, SeekFrom};
    let path = dir.join(FILE_NAME);
    let mut f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Tail::default()),
        Err(source) => return Err(JournalError::Open { path, source }),
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let from = len.saturating_sub(TAIL_BYTES);
    f.seek(SeekFrom::Start(from)).map_err(|source| JournalError::Open { path: path.clone(), source })?;
    let mut out = Tail::default();
    let mut lines = BufReader::new(f).split(b'\n');
    if from > 0 {
        // Most likely the middle of a line.
        lines.next();
    }
    for line in lines {
        let line = line.map_err(|source| JournalError::Open { path: path.clone(), source })?;
        let Ok(e) = serde_json::from_slice::<Entry>(&line) else { continue };
        out.newest = out.newest.max(Some(e.time));
        if e.class.is_some() {
            if let Ok(id) = e.id.parse::<EventId>() {
                out.ids.insert(*id.as_bytes());
            }
        }
    }
    Ok(out)
}

/// Called once the lines of a batch are on disk (or failed to be).
pub type Done = Box<dyn FnOnce(Result<(), String>) + Send>;

/// What the stages queued for the writer.
#[derive(Default)]
struct Queue {
    lines: Vec<Line>,
    waiters: Vec<Done>,
    /// The writer sleeps until told (nothing queued): wake it.
    idle: bool,
    closed: bool,
}

struct Shared {
    q: Mutex<Queue>,
    /// Wakes the writer.
    cv: Condvar,
    /// Wakes appenders waiting for room.
    room: Condvar,
}

/// A handle to the writer thread; the writer finishes what is queued and
/// stops when the last handle is dropped.
#[derive(Clone)]
pub struct Journal {
    shared: Arc<Shared>,
    _closer: Arc<Closer>,
}

/// Closes the queue when the last [`Journal`] handle goes.
struct Closer(Arc<Shared>);

impl Drop for Closer {
    fn drop(&mut self) {
        let mut q = self.0.q.lock().unwrap_or_else(|p| p.into_inner());
        q.closed = true;
        self.0.cv.notify_one();
    }
}

/// Lines nobody waits for are gathered this long before they are written.
pub const GATHER: Duration = Duration::from_millis(5);
/// Past this many queued lines the writer is woken at once.
const HIGH_WATER: usize = 2048;
/// [`Journal::append_bounded`] waits while this many lines are queued (a
/// queued first entry holds its record).
pub const MAX_QUEUED: usize = 2048;

impl Journal {
    /// Opens (creating) `dir/journal` and starts the writer thread.
    pub fn open(dir: &Path) -> Result<(Journal, std::thread::JoinHandle<()>), JournalError> {
        Journal::open_with(dir, None)
    }

    /// As [`open`](Self::open), pruning by `retention` at open and every
    /// [`PRUNE_EVERY`].
    pub fn open_with(
        dir: &Path,
        retention: Option<Retention>,
    ) -> Result<(Journal, std::thread::JoinHandle<()>), JournalError> {
        std::fs::create_dir_all(dir).map_err(|source| JournalError::Open { path: dir.into(), source })?;
        if let Some(r) = &retention {
            let p = prune(dir, telemetry::record::now_unix(), r)?;
            if p.removed > 0 {
                tracing::info!("journal: {} record(s) pruned by local retention, {} kept", p.removed, p.kept);
            }
        }
        let path = dir.join(FILE_NAME);
        let file = open_append(&path)?;
        let old = dir.join(OLD_FILE_NAME);
        if old.exists() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&old, std::fs::Permissions::from_mode(FILE_MODE))
                .map_err(|source| JournalError::Open { path: old, source })?;
        }
        let shared = Arc::new(Shared { q: Mutex::new(Queue::default()), cv: Condvar::new(), room: Condvar::new() });
        let dir = dir.to_path_buf();
        let s2 = shared.clone();
        let handle = std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || writer(dir, path, file, &s2, retention))
            .map_err(|source| JournalError::Open { path: "journal thread".into(), source })?;
        Ok((Journal { _closer: Arc::new(Closer(shared.clone())), shared }, handle))
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.shared.q.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues lines; `done` runs after they are fsync'd.
    pub fn append(&self, lines: Vec<Line>, done: Option<Done>) {
        self.append_inner(lines, done, false)
    }

    /// As [`append`](Self::append), but first waits (blocking the thread)
    /// while [`MAX_QUEUED`] lines are queued: the commit stage's
    /// backpressure when the journal's disk is slower than the spool's.
    pub fn append_bounded(&self, lines: Vec<Line>, done: Option<Done>) {
        self.append_inner(lines, done, true)
    }

    fn append_inner(&self, lines: Vec<Line>, done: Option<Done>, bounded: bool) {
        let mut q = self.queue();
        while bounded && q.lines.len() >= MAX_QUEUED && !q.closed {
            q.idle = false;
            self.shared.cv.notify_one();
            q = self.shared.room.wait(q).unwrap_or_else(|p| p.into_inner());
        }
        if q.closed {
            drop(q);
            if let Some(d) = done {
                d(Err(JournalError::Stopped.to_string()));
            }
            return;
        }
        q.lines.extend(lines);
        let wake = done.is_some() || q.idle || q.lines.len() >= HIGH_WATER;
        if let Some(d) = done {
            q.waiters.push(d);
        }
        if wake {
            q.idle = false;
            self.shared.cv.notify_one();
        }
    }

    /// Queues lines and waits until they are on disk.
    pub async fn append_durable(&self, lines: Vec<Line>) -> Result<(), String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.append(lines, Some(Box::new(move |r| drop(tx.send(r)))));
        rx.await.unwrap_or_else(|_| Err(JournalError::Stopped.to_string()))
    }
}

/// Journal files are readable by their owner only (the daemon's user,
/// root): they hold payloads.
pub const FILE_MODE: u32 = 0o600;

fn open_append(path: &Path) -> Result<File, JournalError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let oerr = |source| JournalError::Open { path: path.into(), source };
    let f = OpenOptions::new().create(true).append(true).mode(FILE_MODE).open(path).map_err(oerr)?;
    // A file made before (by an older version, or another umask) is
    // made private too.
    if f.metadata().map_err(oerr)?.permissions().mode() & 0o777 != FILE_MODE {
        f.set_permissions(std::fs::Permissions::from_mode(FILE_MODE)).map_err(oerr)?;
    }
    Ok(f)
}

/// The writer writes its batch in pieces of about this size.
const WRITE_CHUNK: usize = 64 << 10;

/// Lines nobody waits for are fsync'd at least this often.
pub const LAZY_SYNC: Duration = Duration::from_millis(100);

/// Waits for the next batch: at once when someone waits for durability,
/// the queue is long, or the writer was idle (the last write is older than
/// [`GATHER`]); else, under a steady flow of lazy lines, after gathering
/// for [`GATHER`]; with nothing queued, until woken (or until a lazy fsync
/// is due: `None` then).
fn next_batch(
    shared: &Shared,
    sync_due: Option<Instant>,
    last_write: Instant,
    spare: &mut Vec<Line>,
) -> Option<(Vec<Line>, Vec<Done>, bool)> {
    let mut q = shared.q.lock().unwrap_or_else(|p| p.into_inner());
    let mut gathering: Option<Instant> = None;
    loop {
        if !q.waiters.is_empty() || q.lines.len() >= HIGH_WATER || (q.closed && !q.lines.is_empty()) {
            break;
        }
        if q.closed {
            return Some((Vec::new(), Vec::new(), true));
        }
        let now = Instant::now();
        if !q.lines.is_empty() {
            let until =
                *gathering.get_or_insert(if now.duration_since(last_write) >= GATHER { now } else { now + GATHER });
            if now >= until {
                break;
            }
            q = shared.cv.wait_timeout(q, until - now).unwrap_or_else(|p| p.into_inner()).0;
            continue;
        }
        q.idle = true;
        match sync_due {
            Some(due) if due <= now => {
                q.idle = false;
                return None;
            }
            Some(due) => q = shared.cv.wait_timeout(q, due - now).unwrap_or_else(|p| p.into_inner()).0,
            None => q = shared.cv.wait(q).unwrap_or_else(|p| p.into_inner()),
        }
        q.idle = false;
    }
    shared.room.notify_all();
    // The writer's emptied vector goes back, so the queue keeps its room.
    Some((std::mem::replace(&mut q.lines, std::mem::take(spare)), std::mem::take(&mut q.waiters), q.closed))
}

fn writer(dir: PathBuf, path: PathBuf, mut file: File, shared: &Shared, retention: Option<Retention>) {
    let mut size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut buf = Vec::with_capacity(1 << 16);
    let mut dirty_since: Option<Instant> = None;
    let mut last_prune = Instant::now();
    let mut last_write = Instant::now() - GATHER;
    let mut spare: Vec<Line> = Vec::new();
    loop {
        if let Some(r) = retention.as_ref().filter(|_| last_prune.elapsed() >= PRUNE_EVERY) {
            last_prune = Instant::now();
            let _ = file.sync_data();
            match prune(&dir, telemetry::record::now_unix(), r).and_then(|p| open_append(&path).map(|f| (p, f))) {
                Ok((p, f)) => {
                    file = f;
                    size = file.metadata().map(|m| m.len()).unwrap_or(0);
                    if p.removed > 0 {
                        tracing::info!("journal: {} record(s) pruned by local retention, {} kept", p.removed, p.kept);
                    }
                }
                Err(e) => tracing::error!("journal retention: {e}"),
            }
        }
        let Some((mut lines, waiters, closed)) =
            next_batch(shared, dirty_since.map(|t| t + LAZY_SYNC), last_write, &mut spare)
        else {
            // A lazy fsync is due and nothing new came.
            if let Err(e) = file.sync_data() {
                tracing::error!("{}", JournalError::Write { path: path.clone(), source: e });
            }
            dirty_since = None;
            continue;
        };
        buf.clear();
        let mut written = Ok(());
        for l in &lines {
            if l.write_json(&mut buf).is_ok() {
                buf.push(b'\n');
            }
            // Written in pieces, so a long batch does not need one big buffer.
            if buf.len() >= WRITE_CHUNK && written.is_ok() {
                written = file.write_all(&buf);
                size += buf.len() as u64;
                buf.clear();
                dirty_since.get_or_insert_with(Instant::now);
            }
            if tracing::enabled!(tracing::Level::DEBUG) {
                if let Line::First { item, fate, .. } = l {
                    tracing::debug!(target: "telem_collector::journal", id = %EventId::from_bytes(item.record_id), class = item.record.classification.as_str(), fate = %fate, "journaled");
                }
            }
        }
        // Group commit: the batch written; one fdatasync when someone waits for
        // it (records kept only here), else at most every LAZY_SYNC
        // (spooled records are durable in the spool already).
        let mut result = written.and_then(|()| if buf.is_empty() { Ok(()) } else { file.write_all(&buf) });
        last_write = Instant::now();
        if !buf.is_empty() && dirty_since.is_none() {
            dirty_since = Some(Instant::now());
        }
        if result.is_ok() && (!waiters.is_empty() || closed || dirty_since.is_some_and(|t| t.elapsed() >= LAZY_SYNC)) {
            result = file.sync_data();
            dirty_since = None;
        }
        let result = result.map_err(|source| JournalError::Write { path: path.clone(), source }.to_string());
        if let Err(e) = &result {
            tracing::error!("{e}");
        }
        size += buf.len() as u64;
        for d in waiters {
            d(result.clone());
        }
        if closed {
            break;
        }
        // Emptied (the records it held are released), its room kept.
        lines.clear();
        spare = lines;
        if size > ROTATE_BYTES {
            let _ = file.sync_data();
            match rotate(&dir, &path) {
                Ok(f) => {
                    file = f;
                    size = 0;
                }
                Err(e) => tracing::error!("cannot rotate the journal: {e}"),
            }
        }
        if buf.capacity() > 4 * WRITE_CHUNK {
            buf = Vec::with_capacity(1 << 16);
        }
    }
    let _ = file.sync_all();
}

fn rotate(dir: &Path, path: &Path) -> Result<File, JournalError> {
    let old = dir.join(OLD_FILE_NAME);
    std::fs::rename(path, &old).map_err(|source| JournalError::Write { path: old.clone(), source })?;
    let f = open_append(path)?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(f)
}

/// One record as the journal knows it: its first entry with the last fate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Merged {
    #[serde(flatten)]
    pub entry: Entry,
    /// Unix seconds of the last fate.
    pub fate_time: u64,
}

/// Reads `journal.1` then `journal` and merges fate updates into their
/// records, in the order records were first journaled. A torn last line
/// (crash while writing) is skipped.
pub fn read(dir: &Path) -> Result<Vec<Merged>, JournalError> {
    let mut out: Vec<Merged> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for name in [OLD_FILE_NAME, FILE_NAME] {
        let path = dir.join(name);
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(JournalError::Open { path, source }),
        };
        for line in BufReader::new(f).split(b'\n') {
            let line = line.map_err(|source| JournalError::Open { path: path.clone(), source })?;
            let Ok(e) = serde_json::from_slice::<Entry>(&line) else { continue };
            match index.get(&e.id) {
                Some(&i) if e.class.is_none() => {
                    out[i].entry.fate = e.fate;
                    out[i].fate_time = e.time;
                }
                Some(_) => {}
                None if e.class.is_some() => {
                    index.insert(e.id.clone(), out.len());
                    out.push(Merged { fate_time: e.time, entry: e });
                }
                // An update whose record was rotated away.
                None => {}
            }
        }
    }
    Ok(out)
}

/// The `telemctl journal` filters.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub record_id: Option<String>,
    pub event_id: Option<String>,
    /// Exact, or a prefix ending in `/*`.
    pub classification: Option<String>,
    pub boot_id: Option<String>,
}

impl Filter {
    pub fn matches(&self, m: &Merged) -> bool {
        let e = &m.entry;
        let eq = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().is_none_or(|w| have.as_deref() == Some(w.as_str()))
        };
        if self.record_id.as_ref().is_some_and(|r| *r != e.id) {
            return false;
        }
        if !eq(&self.event_id, &e.event) || !eq(&self.boot_id, &e.boot) {
            return false;
        }
        if let Some(pattern) = &self.classification {
            let class = e.class.as_deref().unwrap_or("");
            let ok = match pattern.strip_suffix("/*") {
                Some(prefix) => class.starts_with(prefix) && class[prefix.len()..].starts_with('/'),
                None => class == pattern,
            };
            if !ok {
                return false;
            }
        }
        true
    }
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) for unix seconds.
pub fn format_time(t: u64) -> String {
    let days = (t / 86_400) as i64;
    let rem = t % 86_400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, class: &str) -> Entry {
        Entry {
            id: id.into(),
            time: 1,
            class: Some(class.into()),
            event: Some("e".repeat(32)),
            boot: Some("b".repeat(32)),
            uid: Some(0),
            pid: Some(1),
            severity: Some(1),
            fate: Fate::Spooled.to_string(),
            payload: None,
            creation_timestamp: Some(5),
            payload_format_version: Some(1),
            host: Some(telemetry::HostInfo::current().clone()),
        }
    }

    fn first(id: u8, class: &str, payload: &str) -> Line {
        let record = telemetry::Record::builder(
            telemetry::Classification::parse(class).unwrap(),
            telemetry::Severity::High,
            telemetry::Payload::text(payload),
        )
        .creation_timestamp(5)
        .build();
        let item = Item { record_id: [id; 16], accepted: 1, counted: true, uid: 7, pid: 8, record };
        Line::First { item: Arc::new(item), time: 1, boot: "b".repeat(32).into(), fate: Fate::Spooled, payload: true }
    }

    #[test]
    fn a_line_reads_back_as_the_entry_it_describes() {
        let l = first(0xab, "org.x/crash/clr", "text \"quoted\" \u{1}");
        let Line::First { item, .. } = &l else { unreachable!() };
        let mut json = Vec::new();
        l.write_json(&mut json).unwrap();
        let e: Entry = serde_json::from_slice(&json).unwrap();
        let r = &item.record;
        assert_eq!(
            e,
            Entry {
                id: "ab".repeat(16),
                time: 1,
                class: Some("org.x/crash/clr".into()),
                event: Some(r.event_id.to_string()),
                boot: Some("b".repeat(32)),
                uid: Some(7),
                pid: Some(8),
                severity: Some(3),
                fate: "spooled".into(),
                payload: Some("text \"quoted\" \u{1}".into()),
                creation_timestamp: Some(5),
                payload_format_version: Some(1),
                host: Some((*r.host).clone()),
            }
        );
        let mut json = Vec::new();
        Line::fate([0xab; 16], Fate::RejectedByServer { status: 400, body: "bad".into(), attempts: None })
            .write_json(&mut json)
            .unwrap();
        let u: Entry = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            (u.id.as_str(), u.fate.as_str(), u.class),
            ("ab".repeat(16).as_str(), "rejected-by-server: 400 bad", None)
        );
    }

    #[test]
    fn write_merge_filter() {
        let dir = tempfile::tempdir().unwrap();
        let (j, h) = Journal::open(dir.path()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            j.append_durable(vec![first(0xa, "org.x/crash/clr", "a"), first(0xb, "org.x/hello/world", "b")])
                .await
                .unwrap();
            j.append_durable(vec![Line::fate([0xa; 16], Fate::Delivered)]).await.unwrap();
        });
        // Lazy lines are written too (within GATHER), without anyone waiting.
        j.append(vec![first(0xc, "org.x/hello/world", "c")], None);
        let deadline = Instant::now() + Duration::from_secs(5);
        while read(dir.path()).unwrap().len() < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(j);
        h.join().unwrap();
        // A torn line at the end is ignored.
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(FILE_NAME))
            .unwrap()
            .write_all(b"{\"id\":")
            .unwrap();
        let all = read(dir.path()).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].entry.fate, "delivered");
        assert_eq!(all[1].entry.fate, "spooled");
        let f = Filter { classification: Some("org.x/crash/*".into()), ..Default::default() };
        assert_eq!(all.iter().filter(|m| f.matches(m)).count(), 1);
        let f = Filter { classification: Some("org.x/*".into()), ..Default::default() };
        assert_eq!(all.iter().filter(|m| f.matches(m)).count(), 3);
        let f = Filter { classification: Some("org.x/cr/*".into()), ..Default::default() };
        assert_eq!(all.iter().filter(|m| f.matches(m)).count(), 0);
        let f = Filter { record_id: Some("0b".repeat(16)), ..Default::default() };
        assert_eq!(all.iter().filter(|m| f.matches(m)).count(), 1);
    }

    #[test]
    fn journal_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        // Made private, whatever the umask.
        let (j, h) = Journal::open(dir.path()).unwrap();
        drop(j);
        h.join().unwrap();
        assert_eq!(mode(&dir.path().join(FILE_NAME)), 0o600);
        // Files an older version left readable are made private at open.
        std::fs::set_permissions(dir.path().join(FILE_NAME), std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(dir.path().join(OLD_FILE_NAME), "").unwrap();
        std::fs::set_permissions(dir.path().join(OLD_FILE_NAME), std::fs::Permissions::from_mode(0o644)).unwrap();
        let (j, h) = Journal::open(dir.path()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(j.append_durable(vec![first(1, "a/b/c", "x")])).unwrap();
        drop(j);
        h.join().unwrap();
        assert_eq!((mode(&dir.path().join(FILE_NAME)), mode(&dir.path().join(OLD_FILE_NAME))), (0o600, 0o600));
        // The file pruning writes (and renames over the journal) too.
        std::fs::write(dir.path().join("journal.tmp"), "").unwrap();
        std::fs::set_permissions(dir.path().join("journal.tmp"), std::fs::Permissions::from_mode(0o644)).unwrap();
        let r = Retention { max_age_secs: 1, max_records: 10 };
        assert_eq!(prune(dir.path(), 1 << 40, &r).unwrap().removed, 1);
        assert_eq!(mode(&dir.path().join(FILE_NAME)), 0o600);
    }

    #[test]
    fn the_writer_lives_while_a_handle_does() {
        let dir = tempfile::tempdir().unwrap();
        let (j, h) = Journal::open(dir.path()).unwrap();
        let j2 = j.clone();
        drop(j);
        // One handle is still alive: the writer goes on.
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(j2.append_durable(vec![first(1, "a/b/c", "x")])).unwrap();
        drop(j2);
        h.join().unwrap();
        assert_eq!(read(dir.path()).unwrap().len(), 1);
    }

    #[test]
    fn retention_prunes_old_and_excess_records_with_their_fates() {
        let dir = tempfile::tempdir().unwrap();
        let day = 86_400;
        let now = 100 * day;
        let mut old = entry("old", "org.x/a/b");
        old.time = now - 15 * day;
        old.payload = Some("secret old payload".into());
        let mut lines = vec![old, Entry { time: now - 15 * day + 5, ..Entry::update("old", &Fate::Delivered) }];
        for i in 0..5u64 {
            let mut e = entry(&format!("r{i}"), "org.x/a/b");
            e.time = now - 13 * day + i;
            lines.push(e);
            lines.push(Entry { time: now, ..Entry::update(&format!("r{i}"), &Fate::Delivered) });
        }
        let text: String = lines.iter().map(|e| serde_json::to_string(e).unwrap() + "\n").collect();
        // Half in the rotated file.
        let (a, b) = text.split_at(text.match_indices('\n').nth(3).unwrap().0 + 1);
        std::fs::write(dir.path().join(OLD_FILE_NAME), a).unwrap();
        std::fs::write(dir.path().join(FILE_NAME), b).unwrap();
        let r = Retention { max_age_secs: 14 * day, max_records: 3 };
        assert_eq!(prune(dir.path(), now, &r).unwrap(), Pruned { kept: 3, removed: 3 });
        let all = read(dir.path()).unwrap();
        let ids: Vec<&str> = all.iter().map(|m| m.entry.id.as_str()).collect();
        assert_eq!(ids, ["r2", "r3", "r4"]);
        assert!(all.iter().all(|m| m.entry.fate == "delivered"));
        let raw = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert!(!raw.contains("secret old payload") && !raw.contains("\"r0\""));
        assert!(!dir.path().join(OLD_FILE_NAME).exists());
        // Nothing more to prune: the file is left alone.
        assert_eq!(prune(dir.path(), now, &r).unwrap(), Pruned { kept: 3, removed: 0 });
        // Everything ages out.
        assert_eq!(prune(dir.path(), now + 20 * day, &r).unwrap(), Pruned { kept: 0, removed: 3 });
        assert!(read(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn every_journal_key_is_in_the_data_dictionary() {
        let mut e = entry("a", "org.x/a/b");
        e.payload = Some("p".into());
        let m = Merged { entry: e, fate_time: 1 };
        let v = serde_json::to_value(&m).unwrap();
        for key in v.as_object().unwrap().keys() {
            let f = telemetry::fields::field(key)
                .unwrap_or_else(|| panic!("journal key {key} is missing from telemetry::fields::FIELDS"));
            assert!(matches!(f.scope, telemetry::fields::Scope::Local | telemetry::fields::Scope::Sent), "{key}");
        }
    }

    #[test]
    fn time_format() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00");
        assert_eq!(format_time(1_700_000_000), "2023-11-14 22:13:20");
        assert_eq!(format_time(951_782_400), "2000-02-29 00:00:00");
    }
}
