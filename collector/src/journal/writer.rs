//! The journal writer: the queue stages append to, and the thread that
//! group-commits it, syncs lazily, rotates and prunes.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::*;

/// Called once the lines of a batch are on disk (or failed to be).
pub type Done = Box<dyn FnOnce(Result<(), String>) + Send>;

/// What the stages queued for the writer.
#[derive(Default)]
pub(super) struct Queue {
    pub(super) lines: Vec<Line>,
    pub(super) waiters: Vec<Done>,
    /// Told once their lines are written (in the page cache: they survive
    /// the process being killed), without asking for an fsync.
    pub(super) after_write: Vec<Done>,
    /// The writer sleeps until told (nothing queued): wake it.
    pub(super) idle: bool,
    pub(super) closed: bool,
}

pub(super) struct Shared {
    pub(super) q: Mutex<Queue>,
    /// Wakes the writer.
    pub(super) cv: Condvar,
    /// Wakes appenders waiting for room.
    pub(super) room: Condvar,
}

/// A handle to the writer thread; the writer finishes what is queued and
/// stops when the last handle is dropped.
#[derive(Clone)]
pub struct Journal {
    pub(super) shared: Arc<Shared>,
    pub(super) _closer: Arc<Closer>,
}

/// Closes the queue when the last [`Journal`] handle goes.
pub(super) struct Closer(Arc<Shared>);

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
pub(super) const HIGH_WATER: usize = 2048;
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
        let cut = cut_torn_tail(&file).map_err(|source| JournalError::Open { path: path.clone(), source })?;
        if cut > 0 {
            tracing::warn!(
                "journal: removed a torn last line ({cut} bytes) left by a crash while it was written; \
                 the records it named are still spooled and journaled again"
            );
        }
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

    /// Queues lines; `written` runs once they are written to the file
    /// (they then outlive the process, even killed), without forcing an
    /// fsync: the lazy sync ([`LAZY_SYNC`]) makes them durable.
    pub fn append_after_write(&self, lines: Vec<Line>, written: Done) {
        let mut q = self.queue();
        if q.closed {
            drop(q);
            written(Err(JournalError::Stopped.to_string()));
            return;
        }
        q.lines.extend(lines);
        q.after_write.push(written);
        if q.idle || q.lines.len() >= HIGH_WATER {
            q.idle = false;
            self.shared.cv.notify_one();
        }
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

/// Cuts a torn last line (a process killed, or a disk filled, in the
/// middle of a write) off `file`, so the next line appended starts a line
/// of its own instead of being glued to the fragment and lost with it.
/// Returns how many bytes were cut.
pub(super) fn cut_torn_tail(file: &File) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len();
    let mut end = len;
    let mut chunk = vec![0u8; 64 << 10];
    // Back from the end to the last newline (or the start of the file).
    let keep = loop {
        if end == 0 {
            break 0;
        }
        let n = chunk.len().min(end as usize);
        let start = end - n as u64;
        file.read_exact_at(&mut chunk[..n], start)?;
        if let Some(i) = chunk[..n].iter().rposition(|&b| b == b'\n') {
            break start + i as u64 + 1;
        }
        end = start;
    };
    if keep < len {
        file.set_len(keep)?;
        file.sync_data()?;
    }
    Ok(len - keep)
}

pub(super) fn open_append(path: &Path) -> Result<File, JournalError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let oerr = |source| JournalError::Open { path: path.into(), source };
    let f = OpenOptions::new().create(true).read(true).append(true).mode(FILE_MODE).open(path).map_err(oerr)?;
    // A file made before (by an older version, or another umask) is
    // made private too.
    if f.metadata().map_err(oerr)?.permissions().mode() & 0o777 != FILE_MODE {
        f.set_permissions(std::fs::Permissions::from_mode(FILE_MODE)).map_err(oerr)?;
    }
    Ok(f)
}

/// The writer writes its batch in pieces of about this size.
pub(super) const WRITE_CHUNK: usize = 64 << 10;

/// Lines nobody waits for are fsync'd at least this often.
pub const LAZY_SYNC: Duration = Duration::from_millis(100);

/// Waits for the next batch: at once when someone waits for durability,
/// the queue is long, or the writer was idle (the last write is older than
/// [`GATHER`]); else, under a steady flow of lazy lines, after gathering
/// for [`GATHER`]; with nothing queued, until woken (or until a lazy fsync
/// is due: `None` then).
pub(super) fn next_batch(
    shared: &Shared,
    sync_due: Option<Instant>,
    last_write: Instant,
    spare: &mut Vec<Line>,
) -> Option<Batch> {
    let mut q = shared.q.lock().unwrap_or_else(|p| p.into_inner());
    let mut gathering: Option<Instant> = None;
    loop {
        if !q.waiters.is_empty() || q.lines.len() >= HIGH_WATER || (q.closed && !q.lines.is_empty()) {
            break;
        }
        if q.closed {
            return Some(Batch { lines: Vec::new(), waiters: Vec::new(), after_write: Vec::new(), closed: true });
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
    Some(Batch {
        lines: std::mem::replace(&mut q.lines, std::mem::take(spare)),
        waiters: std::mem::take(&mut q.waiters),
        after_write: std::mem::take(&mut q.after_write),
        closed: q.closed,
    })
}

/// What the writer takes from the queue at once.
pub(super) struct Batch {
    pub(super) lines: Vec<Line>,
    /// Told after the lines are fsync'd.
    pub(super) waiters: Vec<Done>,
    /// Told after the lines are written.
    pub(super) after_write: Vec<Done>,
    pub(super) closed: bool,
}

pub(super) fn writer(dir: PathBuf, path: PathBuf, mut file: File, shared: &Shared, retention: Option<Retention>) {
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
        let Some(Batch { mut lines, waiters, after_write, closed }) =
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
        let before = size;
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
                    tracing::debug!(target: "telem_collector::journal", id = %item.record_id, class = item.record.classification.as_str(), fate = %fate, "journaled");
                }
            }
        }
        // Group commit: the batch written; one fdatasync when someone waits for
        // it (records kept only here), else at most every LAZY_SYNC
        // (spooled records are durable in the spool already).
        let mut result = written.and_then(|()| if buf.is_empty() { Ok(()) } else { file.write_all(&buf) });
        last_write = Instant::now();
        if result.is_err() {
            // A write cut short (a full disk) may leave part of a line: cut
            // the file back to the last whole batch, so later lines are not
            // glued to the fragment.
            match file.set_len(before) {
                Ok(()) => size = before,
                Err(e) => tracing::error!("cannot cut a torn write off the journal {}: {e}", path.display()),
            }
            buf.clear();
        }
        if !after_write.is_empty() {
            let r = result.as_ref().map(|_| ()).map_err(|e| {
                JournalError::Write { path: path.clone(), source: std::io::Error::new(e.kind(), e.to_string()) }
                    .to_string()
            });
            for d in after_write {
                d(r.clone());
            }
        }
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

pub(super) fn rotate(dir: &Path, path: &Path) -> Result<File, JournalError> {
    let old = dir.join(OLD_FILE_NAME);
    std::fs::rename(path, &old).map_err(|source| JournalError::Write { path: old.clone(), source })?;
    let f = open_append(path)?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(f)
}
