//! Stage: the durable spool under `spool_dir`, a FIFO of segment files.
//!
//! Every record to be delivered is in the spool before its sender gets
//! `Accepted`, so a kill -9 at any moment loses no acknowledged record
//! (delivery is at least once). One segment holds one group commit: many
//! records, one write, one `fdatasync`.
//!
//! ```text
//! free-N   empty files made ahead of time, their directory entry fsync'd
//!          (the "create" half of write/fsync/rename/fsync-dir, off the ack path)
//! commit:  write the batch into a free file, fdatasync  -> acks go out
//! then:    rename free-N -> seg-SEQ, fsync the directory (housekeeper thread)
//! done:    a segment whose records are all delivered/refused/expired is unlinked
//! ```
//!
//! A segment file starts with a header (magic, sequence number, record count,
//! accept time, body length, FNV-1a checksum of the body), so on start a
//! written-but-not-yet-renamed `free-N` is recognised as a segment, and a
//! torn write (never acknowledged: the ack waits for fdatasync) is deleted.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};

use bincode::Options;
use serde::{Deserialize, Serialize};
use telemetry::Record;
use thiserror::Error;

const MAGIC: &[u8; 8] = b"TSPOOL01";
/// Bytes of a segment header.
pub const HEADER_LEN: usize = 8 + 8 + 4 + 8 + 8 + 8;
/// Free files kept ready.
const POOL: usize = 256;
/// Records of segments kept in memory, in bytes of segment file.
const CACHE_BYTES: u64 = 1 << 20;
/// Largest segment file read back (a sanity bound on a corrupt header).
const MAX_SEGMENT: u64 = 1 << 30;

/// Why the spool cannot store or read records.
#[derive(Debug, Error)]
pub enum SpoolError {
    #[error("cannot use the spool directory {path}: {source} (check spool_dir, its permissions and free space)")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("cannot store the record in the spool ({path}): {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot encode a spool entry: {0}")]
    Encode(String),
}

/// One spooled record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub record_id: [u8; 16],
    /// Unix seconds when it was accepted.
    pub accepted: u64,
    /// Already counted by the rate windows (false: it was over a window
    /// and must be counted before it is sent).
    pub counted: bool,
    pub uid: u32,
    pub pid: u32,
    pub record: Record,
}

impl Item {
    pub fn record_id_hex(&self) -> String {
        telemetry::client::record_id_hex(&self.record_id)
    }
}

fn opts() -> impl Options {
    bincode::DefaultOptions::new().with_limit(MAX_SEGMENT)
}

/// The encoded size of one entry (what it adds to the spool).
pub fn encode_item(item: &Item, out: &mut Vec<u8>) -> Result<usize, SpoolError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    opts().serialize_into(&mut *out, item).map_err(|e| SpoolError::Encode(e.to_string()))?;
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    Ok(out.len() - start)
}

fn fnv1a(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h ^= x as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn header(seq: u64, count: u32, accepted: u64, body: &[u8]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    h[16..20].copy_from_slice(&count.to_le_bytes());
    h[20..28].copy_from_slice(&accepted.to_le_bytes());
    h[28..36].copy_from_slice(&(body.len() as u64).to_le_bytes());
    h[36..44].copy_from_slice(&fnv1a(body).to_le_bytes());
    h
}

/// A segment read back from disk.
#[derive(Debug)]
pub struct ReadSegment {
    pub seq: u64,
    pub accepted: u64,
    pub items: Vec<Item>,
    pub bytes: u64,
}

/// Reads and checks one segment file. `Ok(None)`: empty (a free file).
pub fn read_segment(path: &Path) -> Result<Option<ReadSegment>, String> {
    read_segment_from(File::open(path).map_err(|e| e.to_string())?)
}

/// [`read_segment`] of an open file.
pub fn read_segment_from(mut f: File) -> Result<Option<ReadSegment>, String> {
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    if len == 0 {
        return Ok(None);
    }
    if len > MAX_SEGMENT {
        return Err(format!("{len} bytes is too large for a segment"));
    }
    let mut buf = Vec::with_capacity(len as usize);
    f.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    if buf.len() < HEADER_LEN || &buf[..8] != MAGIC {
        return Err("not a spool segment (bad magic or torn header)".into());
    }
    let u64at = |at: usize| u64::from_le_bytes(buf[at..at + 8].try_into().unwrap_or([0; 8]));
    let seq = u64at(8);
    let count = u32::from_le_bytes(buf[16..20].try_into().unwrap_or([0; 4]));
    let accepted = u64at(20);
    let body_len = u64at(28) as usize;
    let sum = u64at(36);
    let body = buf.get(HEADER_LEN..HEADER_LEN + body_len).ok_or("torn segment (body shorter than its header says)")?;
    if fnv1a(body) != sum {
        return Err("torn segment (checksum mismatch)".into());
    }
    let mut items = Vec::with_capacity(count as usize);
    let mut at = 0;
    for _ in 0..count {
        let l = body.get(at..at + 4).ok_or("segment entry header missing")?;
        let l = u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize;
        let b = body.get(at + 4..at + 4 + l).ok_or("segment entry truncated")?;
        items.push(opts().deserialize::<Item>(b).map_err(|e| format!("segment entry does not decode: {e}"))?);
        at += 4 + l;
    }
    Ok(Some(ReadSegment { seq, accepted, items, bytes: len }))
}

struct Segment {
    seq: u64,
    path: PathBuf,
    bytes: u64,
    accepted: u64,
    total: u32,
    handed: u32,
    outstanding: u32,
    records: Option<Vec<Arc<Item>>>,
}

struct Index {
    segments: VecDeque<Segment>,
    free: Vec<PathBuf>,
    next_seq: u64,
    next_free: u64,
    bytes: u64,
    records: u64,
    cached: u64,
    /// Bytes reserved by commits in flight.
    reserved: u64,
}

enum House {
    Rename { seq: u64 },
    Refill,
    /// A segment whose records are all final: emptied and kept as a free
    /// file (creating and unlinking a file per segment is what costs most
    /// on ext4 under churn), or unlinked when the pool is full.
    Recycle(PathBuf),
}

/// The spool; cheap to share (`Arc`).
pub struct Spool {
    dir: PathBuf,
    index: Mutex<Index>,
    house: Mutex<mpsc::Sender<House>>,
}

/// A record handed out for delivery; give it back with
/// [`Spool::done`] once its fate is final.
#[derive(Debug, Clone)]
pub struct Ticket {
    pub seq: u64,
    pub item: Arc<Item>,
}

/// What was found on start.
#[derive(Debug, Default)]
pub struct Recovered {
    pub segments: usize,
    pub records: u64,
    /// Torn, never-acknowledged writes that were removed.
    pub torn: usize,
    /// Records older than `record_expiry`, removed.
    pub expired: Vec<Item>,
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Spool {
    /// Opens `dir` (creating it), recovers what a previous run left, drops
    /// segments accepted before `expire_before` (unix seconds), and starts
    /// the housekeeper thread.
    pub fn open(dir: &Path, expire_before: u64) -> Result<(Arc<Spool>, Recovered), SpoolError> {
        let derr = |source| SpoolError::Dir { path: dir.into(), source };
        std::fs::create_dir_all(dir).map_err(derr)?;
        let mut found: Vec<(PathBuf, ReadSegment)> = Vec::new();
        let mut free = Vec::new();
        let mut rec = Recovered::default();
        let mut next_free = 0u64;
        for e in std::fs::read_dir(dir).map_err(derr)? {
            let e = e.map_err(derr)?;
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            let n = name.strip_prefix("free-").or_else(|| name.strip_prefix("seg-"));
            let Some(n) = n.and_then(|n| n.parse::<u64>().ok()) else { continue };
            if name.starts_with("free-") {
                next_free = next_free.max(n + 1);
            }
            match read_segment(&path) {
                Ok(None) => free.push(path),
                Ok(Some(s)) if s.accepted < expire_before => {
                    rec.expired.extend(s.items);
                    let _ = std::fs::remove_file(&path);
                }
                Ok(Some(s)) => found.push((path, s)),
                Err(why) => {
                    tracing::warn!("removing {} from the spool: {why} (it was never acknowledged)", path.display());
                    rec.torn += 1;
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        found.sort_by_key(|(_, s)| s.seq);
        let mut index = Index {
            segments: VecDeque::new(),
            free,
            next_seq: found.last().map(|(_, s)| s.seq + 1).unwrap_or(1),
            next_free,
            bytes: 0,
            records: 0,
            cached: 0,
            reserved: 0,
        };
        for (mut path, s) in found {
            let want = dir.join(format!("seg-{:016}", s.seq));
            if path != want && std::fs::rename(&path, &want).is_ok() {
                path = want;
            }
            rec.segments += 1;
            rec.records += s.items.len() as u64;
            index.bytes += s.bytes;
            index.records += s.items.len() as u64;
            let cache = index.cached + s.bytes <= CACHE_BYTES;
            if cache {
                index.cached += s.bytes;
            }
            index.segments.push_back(Segment {
                seq: s.seq,
                path,
                bytes: s.bytes,
                accepted: s.accepted,
                total: s.items.len() as u32,
                handed: 0,
                outstanding: s.items.len() as u32,
                records: cache.then(|| s.items.into_iter().map(Arc::new).collect()),
            });
        }
        sync_dir(dir).map_err(derr)?;
        let (tx, rx) = mpsc::channel();
        let spool = Arc::new(Spool { dir: dir.into(), index: Mutex::new(index), house: Mutex::new(tx) });
        let weak = Arc::downgrade(&spool);
        std::thread::Builder::new()
            .name("spool-house".into())
            .spawn(move || housekeeper(weak, rx))
            .map_err(derr)?;
        spool.send_house(House::Refill);
        Ok((spool, rec))
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send_house(&self, m: House) {
        let _ = self.house.lock().unwrap_or_else(|p| p.into_inner()).send(m);
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes of segment files in the spool.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// Records waiting in the spool (handed out but not done included).
    pub fn records(&self) -> u64 {
        self.lock().records
    }

    /// Reserves `n` bytes for a commit about to be made, if the spool stays
    /// within `max` with them (commits in flight counted).
    pub fn reserve(&self, n: u64, max: Option<u64>) -> bool {
        let mut ix = self.lock();
        if max.is_some_and(|m| ix.bytes + ix.reserved + n > m) {
            return false;
        }
        ix.reserved += n;
        true
    }

    /// Writes `items` as one segment, durably (fdatasync), and queues them
    /// for delivery. `body` holds their [`encode_item`] encodings;
    /// `reserved` bytes (from [`reserve`](Self::reserve)) are released.
    pub fn commit(&self, items: Vec<Item>, body: &[u8], reserved: u64) -> Result<u64, SpoolError> {
        let r = self.commit_inner(items, body);
        let mut ix = self.lock();
        ix.reserved = ix.reserved.saturating_sub(reserved);
        r
    }

    fn commit_inner(&self, items: Vec<Item>, body: &[u8]) -> Result<u64, SpoolError> {
        let accepted = items.iter().map(|i| i.accepted).max().unwrap_or(0);
        let (seq, slot, fresh) = {
            let mut ix = self.lock();
            let seq = ix.next_seq;
            ix.next_seq += 1;
            match ix.free.pop() {
                Some(p) => (seq, p, false),
                None => {
                    let n = ix.next_free;
                    ix.next_free += 1;
                    (seq, self.dir.join(format!("free-{n}")), true)
                }
            }
        };
        self.send_house(House::Refill);
        let werr = |source| SpoolError::Write { path: slot.clone(), source };
        let mut f = OpenOptions::new().write(true).create(true).truncate(false).open(&slot).map_err(werr)?;
        if fresh {
            // No prepared file was left: make this one's name durable first.
            sync_dir(&self.dir).map_err(werr)?;
        }
        let h = header(seq, items.len() as u32, accepted, body);
        let written = f.write_all(&h).and_then(|()| f.write_all(body)).and_then(|()| f.sync_data());
        if let Err(e) = written {
            // Give the space back; the file stays a free slot.
            let _ = f.set_len(0);
            let _ = f.sync_data();
            let err = werr(e);
            self.lock().free.push(slot);
            return Err(err);
        }
        drop(f);
        tracing::debug!(seq, records = items.len(), "spool segment committed");
        let bytes = (HEADER_LEN + body.len()) as u64;
        {
            let mut ix = self.lock();
            let cache = ix.cached + bytes <= CACHE_BYTES;
            if cache {
                ix.cached += bytes;
            }
            let n = items.len() as u32;
            let seg = Segment {
                seq,
                path: slot,
                bytes,
                accepted,
                total: n,
                handed: 0,
                outstanding: n,
                records: cache.then(|| items.into_iter().map(Arc::new).collect()),
            };
            ix.bytes += bytes;
            ix.records += n as u64;
            // Concurrent commits may finish out of order; keep seq order.
            let pos = ix.segments.iter().rposition(|s| s.seq < seq).map(|p| p + 1).unwrap_or(0);
            ix.segments.insert(pos, seg);
        }
        self.send_house(House::Rename { seq });
        Ok(seq)
    }

    /// The next record to deliver, FIFO. A segment no longer in memory is
    /// opened under the lock (the descriptor survives the housekeeper's
    /// rename) but read and decoded outside it, so commits (and their acks)
    /// never wait for that.
    pub fn next(&self) -> Option<Ticket> {
        loop {
            let (seq, file) = {
                let mut ix = self.lock();
                let seg = ix.segments.iter_mut().find(|s| s.handed < s.total)?;
                if let Some(recs) = &seg.records {
                    let item = recs.get(seg.handed as usize)?.clone();
                    seg.handed += 1;
                    return Some(Ticket { seq: seg.seq, item });
                }
                let seq = seg.seq;
                match File::open(&seg.path) {
                    Ok(f) => (seq, f),
                    Err(e) => {
                        Self::lose(&mut ix, seq, &e.to_string());
                        continue;
                    }
                }
            };
            let read = read_segment_from(file);
            let mut ix = self.lock();
            let Some(seg) = ix.segments.iter_mut().find(|s| s.seq == seq) else { continue };
            if seg.records.is_some() {
                continue;
            }
            match read {
                Ok(Some(s)) if s.items.len() == seg.total as usize => {
                    let bytes = seg.bytes;
                    seg.records = Some(s.items.into_iter().map(Arc::new).collect());
                    ix.cached += bytes;
                }
                other => {
                    let why = match other {
                        Err(e) => e,
                        _ => "empty or changed".into(),
                    };
                    Self::lose(&mut ix, seq, &why);
                }
            }
        }
    }

    /// A segment that cannot be read back: nothing of it can be handed out.
    fn lose(ix: &mut Index, seq: u64, why: &str) {
        let Some(pos) = ix.segments.iter().position(|s| s.seq == seq) else { return };
        let seg = &mut ix.segments[pos];
        tracing::error!(
            "spool segment {} cannot be read back: {why}; its {} record(s) are lost",
            seg.path.display(),
            seg.total - seg.handed
        );
        let lost = (seg.total - seg.handed) as u64;
        seg.handed = seg.total;
        seg.outstanding = seg.outstanding.saturating_sub(lost as u32);
        ix.records = ix.records.saturating_sub(lost);
        if ix.segments[pos].outstanding == 0 {
            if let Some(gone) = ix.segments.remove(pos) {
                ix.bytes = ix.bytes.saturating_sub(gone.bytes);
                let _ = std::fs::remove_file(&gone.path);
            }
        }
    }

    /// Marks a handed-out record final (delivered, refused, expired);
    /// unlinks its segment once all of the segment's records are final.
    pub fn done(&self, seq: u64) {
        let gone = {
            let mut ix = self.lock();
            let Some(pos) = ix.segments.iter().position(|s| s.seq == seq) else { return };
            ix.records = ix.records.saturating_sub(1);
            let seg = &mut ix.segments[pos];
            seg.outstanding = seg.outstanding.saturating_sub(1);
            if seg.outstanding != 0 || seg.handed != seg.total {
                return;
            }
            let Some(seg) = ix.segments.remove(pos) else { return };
            ix.bytes = ix.bytes.saturating_sub(seg.bytes);
            if seg.records.is_some() {
                ix.cached = ix.cached.saturating_sub(seg.bytes);
            }
            seg
        };
        // Gone from the index, so nothing renames it any more.
        self.send_house(House::Recycle(gone.path));
    }

    /// Removes segments accepted before `before` (unix seconds) that have
    /// nothing handed out; returns their records.
    pub fn expire(&self, before: u64) -> Vec<Item> {
        let mut out = Vec::new();
        let mut ix = self.lock();
        while let Some(seg) = ix.segments.front() {
            if seg.accepted >= before || seg.handed > 0 {
                break;
            }
            let Some(seg) = ix.segments.pop_front() else { break };
            ix.bytes = ix.bytes.saturating_sub(seg.bytes);
            ix.records = ix.records.saturating_sub(seg.outstanding as u64);
            match seg.records {
                Some(r) => {
                    ix.cached = ix.cached.saturating_sub(seg.bytes);
                    out.extend(r.iter().map(|i| (**i).clone()));
                }
                None => {
                    if let Ok(Some(s)) = read_segment(&seg.path) {
                        out.extend(s.items);
                    }
                }
            }
            let _ = std::fs::remove_file(&seg.path);
        }
        out
    }
}

/// Empties a finished segment file and renames it `free-N`, ready for the
/// next commit. Neither step is synced: after a crash the file may still
/// hold its old, delivered records under either name, and they are
/// delivered again (at least once, as when an unlink is lost). A commit
/// into it makes its new content durable with its own fdatasync, and
/// recovery goes by the header's sequence number, not the name.
fn recycle(spool: &Spool, path: &Path) {
    let full = spool.lock().free.len() >= POOL;
    let emptied = !full && OpenOptions::new().write(true).open(path).and_then(|f| f.set_len(0)).is_ok();
    if emptied {
        let n = {
            let mut ix = spool.lock();
            ix.next_free += 1;
            ix.next_free - 1
        };
        let to = spool.dir.join(format!("free-{n}"));
        if std::fs::rename(path, &to).is_ok() {
            spool.lock().free.push(to);
            return;
        }
    }
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!("cannot remove delivered spool segment {}: {e}", path.display());
    }
}

fn housekeeper(spool: std::sync::Weak<Spool>, rx: mpsc::Receiver<House>) {
    while let Ok(first) = rx.recv() {
        let mut msgs = vec![first];
        while let Ok(m) = rx.try_recv() {
            msgs.push(m);
        }
        let Some(spool) = spool.upgrade() else { return };
        let mut renamed = false;
        for m in &msgs {
            match m {
                House::Rename { seq } => {
                    let mut ix = spool.lock();
                    if let Some(seg) = ix.segments.iter_mut().find(|s| s.seq == *seq) {
                        let to = spool.dir.join(format!("seg-{seq:016}"));
                        if std::fs::rename(&seg.path, &to).is_ok() {
                            seg.path = to;
                            renamed = true;
                        }
                    }
                }
                House::Recycle(path) => recycle(&spool, path),
                House::Refill => {}
            }
        }
        let need = {
            let ix = spool.lock();
            POOL.saturating_sub(ix.free.len())
        };
        let mut made = Vec::new();
        for _ in 0..need {
            let n = {
                let mut ix = spool.lock();
                ix.next_free += 1;
                ix.next_free - 1
            };
            let p = spool.dir.join(format!("free-{n}"));
            match OpenOptions::new().write(true).create_new(true).open(&p) {
                Ok(_) => made.push(p),
                Err(e) => {
                    tracing::debug!("cannot prepare spool file {}: {e}", p.display());
                    break;
                }
            }
        }
        if renamed || !made.is_empty() {
            if let Err(e) = sync_dir(&spool.dir) {
                tracing::warn!("cannot fsync the spool directory {}: {e}", spool.dir.display());
                for p in &made {
                    let _ = std::fs::remove_file(p);
                }
                continue;
            }
        }
        // Only files whose names are durable become usable.
        spool.lock().free.extend(made);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use telemetry::{Classification, Payload, Severity};

    fn item(n: u8, accepted: u64) -> Item {
        let record = Record::builder(Classification::parse("org.t/spool/test").unwrap(), Severity::Low, Payload::text(format!("r{n}")))
            .build();
        Item { record_id: [n; 16], accepted, counted: true, uid: 1, pid: 2, record }
    }

    fn commit(s: &Spool, items: Vec<Item>) -> u64 {
        let mut body = Vec::new();
        for i in &items {
            encode_item(i, &mut body).unwrap();
        }
        s.commit(items, &body, 0).unwrap()
    }

    #[test]
    fn fifo_done_and_recovery() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (s, rec) = Spool::open(dir.path(), 0).unwrap();
            assert_eq!(rec.records, 0);
            commit(&s, vec![item(1, 100), item(2, 100)]);
            commit(&s, vec![item(3, 100)]);
            assert_eq!(s.records(), 3);
            let t = s.next().unwrap();
            assert_eq!(t.item.record_id, [1; 16]);
            s.done(t.seq);
            // Record 2 handed out but not done: it must come back after a restart.
            let t2 = s.next().unwrap();
            assert_eq!(t2.item.record_id, [2; 16]);
        }
        // A torn write left in a free file is removed on start.
        std::fs::write(dir.path().join("free-999"), b"TSPOOL01garbage").unwrap();
        let (s, rec) = Spool::open(dir.path(), 0).unwrap();
        assert_eq!(rec.torn, 1);
        assert_eq!(rec.records, 3, "the first segment had one record not done");
        let ids: Vec<u8> = std::iter::from_fn(|| s.next()).map(|t| t.item.record_id[0]).collect();
        assert_eq!(ids, vec![1, 2, 3]);
    }

    #[test]
    fn done_unlinks_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = Spool::open(dir.path(), 0).unwrap();
        commit(&s, vec![item(1, 10)]);
        commit(&s, vec![item(2, 1000)]);
        assert!(s.bytes() > 0);
        let expired = s.expire(500);
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].record_id, [1; 16]);
        let t = s.next().unwrap();
        assert_eq!(t.item.record_id, [2; 16]);
        s.done(t.seq);
        assert_eq!((s.bytes(), s.records()), (0, 0));
        // The housekeeper empties (recycles) the finished segment.
        let nonempty = || {
            std::fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| std::fs::metadata(e.as_ref().unwrap().path()).map(|m| m.len() > 0).unwrap_or(false))
                .count()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while nonempty() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(nonempty(), 0);
        // Expiry on open too.
        commit(&s, vec![item(3, 10)]);
        drop(s);
        let (_, rec) = Spool::open(dir.path(), 500).unwrap();
        assert_eq!(rec.expired.len(), 1);
    }

    #[test]
    fn recycled_files_carry_new_segments_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = Spool::open(dir.path(), 0).unwrap();
        let files = || std::fs::read_dir(dir.path()).unwrap().count();
        // Let the pool fill, then churn: every finished segment is reused.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while files() < POOL && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        for i in 0..(2 * POOL as u8).min(200) {
            commit(&s, vec![item(i, 1000)]);
            let t = s.next().unwrap();
            assert_eq!(t.item.record_id, [i; 16]);
            s.done(t.seq);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        commit(&s, vec![item(250, 1000)]);
        commit(&s, vec![item(251, 1000)]);
        drop(s);
        let (s, rec) = Spool::open(dir.path(), 0).unwrap();
        assert_eq!(rec.records, 2, "exactly the two undelivered records come back");
        assert_eq!(s.next().unwrap().item.record_id, [250; 16]);
        assert_eq!(s.next().unwrap().item.record_id, [251; 16]);
        assert!(s.next().is_none());
    }
}
