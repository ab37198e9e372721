//! Stage: the durable spool under `spool_dir`: a FIFO of blocks (one per
//! group commit) appended to spool files.
//!
//! Every record to be delivered is in the spool before its sender gets
//! `Accepted`, so a kill -9 at any moment loses no acknowledged record
//! (delivery is at least once). One block holds one group commit: many
//! records, one write, one `fdatasync`. A spool file takes blocks until it
//! holds [`MAX_FILE`] bytes, so files are made per megabytes, not per commit
//! (on ext4, making a file per commit cost more CPU than the rest of the
//! spool under load).
//!
//! ```text
//! free-N   empty files made ahead of time, their directory entry fsync'd
//!          (the "create" half of write/fsync/rename/fsync-dir, off the ack path)
//! commit:  append the batch as a block to an open spool file (each file is
//!          appended by one committer at a time), fdatasync  -> acks go out
//! then:    a file's first block: rename free-N -> seg-SEQ, fsync the
//!          directory (housekeeper thread)
//! done:    a file whose blocks are all delivered/refused/expired, and that
//!          takes no more blocks, is emptied and returned to the free pool
//! ```
//!
//! Every block starts with a header (magic, sequence number, record count,
//! accept time, body length, FNV-1a checksum of the body). On start every
//! file is read block by block, so a written-but-not-yet-renamed `free-N`
//! is recognised, and a torn block (never acknowledged: the ack waits for
//! fdatasync) ends its file's valid blocks: appends to a file are
//! sequential, so only the last block can be torn.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
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
const CACHE_BYTES: u64 = 256 << 10;
/// Largest segment file read back (a sanity bound on a corrupt header).
const MAX_SEGMENT: u64 = 1 << 30;
/// A spool file takes no more blocks once it holds this many bytes.
pub const MAX_FILE: u64 = 4 << 20;

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

/// A block read back from disk.
#[derive(Debug)]
pub struct ReadSegment {
    pub seq: u64,
    pub accepted: u64,
    pub items: Vec<Item>,
    /// Bytes of the block (header and body).
    pub bytes: u64,
}

/// Parses the block at the start of `b`; `Ok(None)`: `b` is empty.
fn parse_block(b: &[u8]) -> Result<Option<ReadSegment>, String> {
    if b.is_empty() {
        return Ok(None);
    }
    if b.len() < HEADER_LEN || &b[..8] != MAGIC {
        return Err("not a spool block (bad magic or torn header)".into());
    }
    let u64at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]));
    let seq = u64at(8);
    let count = u32::from_le_bytes(b[16..20].try_into().unwrap_or([0; 4]));
    let accepted = u64at(20);
    let body_len = usize::try_from(u64at(28)).map_err(|_| "block length does not fit".to_string())?;
    let sum = u64at(36);
    let end = HEADER_LEN.checked_add(body_len).ok_or("block length overflows")?;
    let body = b.get(HEADER_LEN..end).ok_or("torn block (body shorter than its header says)")?;
    if fnv1a(body) != sum {
        return Err("torn block (checksum mismatch)".into());
    }
    let mut items = Vec::with_capacity((count as usize).min(body_len / 4 + 1));
    let mut at = 0;
    for _ in 0..count {
        let l = body.get(at..at + 4).ok_or("block entry header missing")?;
        let l = u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize;
        let e = body.get(at + 4..at + 4 + l).ok_or("block entry truncated")?;
        items.push(opts().deserialize::<Item>(e).map_err(|e| format!("block entry does not decode: {e}"))?);
        at += 4 + l;
    }
    Ok(Some(ReadSegment { seq, accepted, items, bytes: end as u64 }))
}

/// Reads every valid block of a spool file, in file order. The error is
/// why reading stopped early (a torn last block), with what came before.
pub fn read_file(mut f: File) -> (Vec<(u64, ReadSegment)>, Option<String>) {
    let mut buf = Vec::new();
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len > MAX_SEGMENT {
        return (Vec::new(), Some(format!("{len} bytes is too large for a spool file")));
    }
    if let Err(e) = f.read_to_end(&mut buf) {
        return (Vec::new(), Some(e.to_string()));
    }
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < buf.len() {
        match parse_block(&buf[at..]) {
            Ok(Some(s)) => {
                let n = s.bytes as usize;
                out.push((at as u64, s));
                at += n;
            }
            Ok(None) => break,
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

/// Reads the block at `offset` of an open spool file.
fn read_block_at(f: &File, offset: u64) -> Result<Option<ReadSegment>, String> {
    let mut h = [0u8; HEADER_LEN];
    f.read_exact_at(&mut h, offset).map_err(|e| e.to_string())?;
    if &h[..8] != MAGIC {
        return Err("not a spool block (bad magic)".into());
    }
    let body_len = u64::from_le_bytes(h[28..36].try_into().unwrap_or([0; 8]));
    if body_len > MAX_SEGMENT {
        return Err(format!("a {body_len}-byte block is too large"));
    }
    let mut b = vec![0u8; HEADER_LEN + body_len as usize];
    f.read_exact_at(&mut b, offset).map_err(|e| e.to_string())?;
    parse_block(&b)
}

/// A spool file found on start: (file id, path, its valid blocks with their offsets).
type FoundFile = (u64, PathBuf, Vec<(u64, ReadSegment)>);

/// One group commit in a spool file.
struct Segment {
    seq: u64,
    /// The spool file (key of `Index::files`) and where the block starts.
    file: u64,
    offset: u64,
    bytes: u64,
    accepted: u64,
    total: u32,
    handed: u32,
    outstanding: u32,
    records: Option<Vec<Arc<Item>>>,
}

/// A spool file holding blocks.
struct SpoolFile {
    path: PathBuf,
    /// Bytes written (where the next block goes).
    len: u64,
    /// Blocks not yet final.
    live: u32,
    /// Takes more blocks (it is in `Index::writers`, or a committer holds it).
    open: bool,
}

struct Index {
    segments: VecDeque<Segment>,
    files: HashMap<u64, SpoolFile>,
    /// Open spool files no committer is appending to right now.
    writers: Vec<(u64, File)>,
    next_file: u64,
    free: Vec<PathBuf>,
    next_seq: u64,
    next_free: u64,
    bytes: u64,
    records: u64,
    cached: u64,
    /// Bytes reserved by commits in flight.
    reserved: u64,
}

impl Index {
    /// One block of `file` is final; the file's path when the file can go
    /// back to the free pool (no live blocks and it takes no more).
    fn release_block(&mut self, file: u64) -> Option<PathBuf> {
        let f = self.files.get_mut(&file)?;
        f.live = f.live.saturating_sub(1);
        if f.live > 0 {
            return None;
        }
        if f.open {
            // Idle in the writers pool: retire it rather than keep dead
            // blocks on disk. (If a committer holds it, it lives on.)
            let pos = self.writers.iter().position(|(id, _)| *id == file)?;
            self.writers.swap_remove(pos);
        }
        self.files.remove(&file).map(|f| f.path)
    }
}

enum House {
    /// A file got its first block (sequence number `seq`): name it after it.
    Rename { file: u64, seq: u64 },
    Refill,
    /// A spool file whose blocks are all final: emptied and kept as a free
    /// file, or unlinked when the pool is full.
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
        let mut found: Vec<FoundFile> = Vec::new();
        let mut free = Vec::new();
        let mut rec = Recovered::default();
        let mut next_free = 0u64;
        let mut next_file = 0u64;
        for e in std::fs::read_dir(dir).map_err(derr)? {
            let e = e.map_err(derr)?;
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            let n = name.strip_prefix("free-").or_else(|| name.strip_prefix("seg-"));
            let Some(n) = n.and_then(|n| n.parse::<u64>().ok()) else { continue };
            if name.starts_with("free-") {
                next_free = next_free.max(n + 1);
            }
            let (blocks, torn) = match File::open(&path) {
                Ok(f) => read_file(f),
                Err(e) => (Vec::new(), Some(e.to_string())),
            };
            if let Some(why) = &torn {
                tracing::warn!("{}: {why} after {} valid block(s); the rest was never acknowledged", path.display(), blocks.len());
                rec.torn += 1;
            }
            let (old, keep): (Vec<_>, Vec<_>) = blocks.into_iter().partition(|(_, s)| s.accepted < expire_before);
            for (_, s) in old {
                rec.expired.extend(s.items);
            }
            if !keep.is_empty() {
                found.push((next_file, path, keep));
                next_file += 1;
            } else if torn.is_none() && std::fs::metadata(&path).map(|m| m.len() == 0).unwrap_or(false) {
                free.push(path);
            } else {
                let _ = std::fs::remove_file(&path);
            }
        }
        let mut blocks: Vec<(u64, u64, ReadSegment)> = Vec::new();
        let mut files = HashMap::new();
        for (id, path, bs) in found {
            let len = bs.last().map(|(o, s)| o + s.bytes).unwrap_or(0);
            // Name the file after its first block (it may still be free-N).
            let first = bs.iter().map(|(_, s)| s.seq).min().unwrap_or(0);
            let want = dir.join(format!("seg-{first:016}"));
            let path = if path != want && !want.exists() && std::fs::rename(&path, &want).is_ok() { want } else { path };
            files.insert(id, SpoolFile { path, len, live: bs.len() as u32, open: false });
            blocks.extend(bs.into_iter().map(|(o, s)| (id, o, s)));
        }
        blocks.sort_by_key(|(_, _, s)| s.seq);
        let mut index = Index {
            segments: VecDeque::new(),
            files,
            writers: Vec::new(),
            next_file,
            free,
            next_seq: blocks.last().map(|(_, _, s)| s.seq + 1).unwrap_or(1),
            next_free,
            bytes: 0,
            records: 0,
            cached: 0,
            reserved: 0,
        };
        for (file, offset, s) in blocks {
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
                file,
                offset,
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

    /// Bytes of the blocks waiting in the spool.
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

    /// Writes `items` as one block, durably (fdatasync), and queues them
    /// for delivery. `body` holds their [`encode_item`] encodings;
    /// `reserved` bytes (from [`reserve`](Self::reserve)) are released.
    pub fn commit(&self, items: Vec<Item>, body: &[u8], reserved: u64) -> Result<u64, SpoolError> {
        let r = self.commit_inner(items, body);
        let mut ix = self.lock();
        ix.reserved = ix.reserved.saturating_sub(reserved);
        r
    }

    /// An open spool file for this committer alone: an idle writer, else a
    /// free file (made durable first if none was prepared).
    fn take_writer(&self) -> Result<(u64, File, u64), SpoolError> {
        let (slot, fresh) = {
            let mut ix = self.lock();
            if let Some((id, f)) = ix.writers.pop() {
                let off = ix.files.get(&id).map_or(0, |f| f.len);
                return Ok((id, f, off));
            }
            match ix.free.pop() {
                Some(p) => (p, false),
                None => {
                    let n = ix.next_free;
                    ix.next_free += 1;
                    (self.dir.join(format!("free-{n}")), true)
                }
            }
        };
        self.send_house(House::Refill);
        let werr = |source| SpoolError::Write { path: slot.clone(), source };
        let f = OpenOptions::new().write(true).read(true).create(true).truncate(false).open(&slot).map_err(werr)?;
        if fresh {
            // No prepared file was left: make this one's name durable first.
            sync_dir(&self.dir).map_err(werr)?;
        }
        let mut ix = self.lock();
        let id = ix.next_file;
        ix.next_file += 1;
        ix.files.insert(id, SpoolFile { path: slot, len: 0, live: 0, open: true });
        Ok((id, f, 0))
    }

    fn commit_inner(&self, items: Vec<Item>, body: &[u8]) -> Result<u64, SpoolError> {
        let accepted = items.iter().map(|i| i.accepted).max().unwrap_or(0);
        let (file, f, offset) = self.take_writer()?;
        let seq = {
            let mut ix = self.lock();
            ix.next_seq += 1;
            ix.next_seq - 1
        };
        let h = header(seq, items.len() as u32, accepted, body);
        let written = f.write_all_at(&h, offset).and_then(|()| f.write_all_at(body, offset + HEADER_LEN as u64)).and_then(|()| f.sync_data());
        if let Err(e) = written {
            // Give the space back; the file takes no more blocks.
            let _ = f.set_len(offset);
            let _ = f.sync_data();
            let mut ix = self.lock();
            let path = ix.files.get(&file).map(|sf| sf.path.clone()).unwrap_or_default();
            let recycle = match ix.files.get_mut(&file) {
                Some(sf) if sf.live == 0 => ix.files.remove(&file).map(|sf| sf.path),
                Some(sf) => {
                    sf.open = false;
                    None
                }
                None => None,
            };
            drop(ix);
            if let Some(p) = recycle {
                self.send_house(House::Recycle(p));
            }
            return Err(SpoolError::Write { path, source: e });
        }
        tracing::debug!(seq, records = items.len(), offset, "spool block committed");
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
                file,
                offset,
                bytes,
                accepted,
                total: n,
                handed: 0,
                outstanding: n,
                records: cache.then(|| items.into_iter().map(Arc::new).collect()),
            };
            ix.bytes += bytes;
            ix.records += n as u64;
            if let Some(sf) = ix.files.get_mut(&file) {
                sf.len = offset + bytes;
                sf.live += 1;
                if sf.len >= MAX_FILE {
                    sf.open = false;
                } else {
                    ix.writers.push((file, f));
                }
            }
            // Concurrent commits may finish out of order; keep seq order.
            let pos = ix.segments.iter().rposition(|s| s.seq < seq).map(|p| p + 1).unwrap_or(0);
            ix.segments.insert(pos, seg);
        }
        if offset == 0 {
            self.send_house(House::Rename { file, seq });
        }
        Ok(seq)
    }

    /// The next record to deliver, FIFO. A block no longer in memory is
    /// opened under the lock (the descriptor survives the housekeeper's
    /// rename) but read and decoded outside it, so commits (and their acks)
    /// never wait for that.
    pub fn next(&self) -> Option<Ticket> {
        loop {
            let (seq, file, offset) = {
                let mut ix = self.lock();
                let seg = ix.segments.iter_mut().find(|s| s.handed < s.total)?;
                if let Some(recs) = &seg.records {
                    let item = recs.get(seg.handed as usize)?.clone();
                    seg.handed += 1;
                    return Some(Ticket { seq: seg.seq, item });
                }
                let (seq, fid, offset) = (seg.seq, seg.file, seg.offset);
                match ix.files.get(&fid).map(|f| File::open(&f.path)) {
                    Some(Ok(f)) => (seq, f, offset),
                    Some(Err(e)) => {
                        self.lose(&mut ix, seq, &e.to_string());
                        continue;
                    }
                    None => {
                        self.lose(&mut ix, seq, "its file is gone");
                        continue;
                    }
                }
            };
            let read = read_block_at(&file, offset);
            let mut ix = self.lock();
            let Some(seg) = ix.segments.iter_mut().find(|s| s.seq == seq) else { continue };
            if seg.records.is_some() {
                continue;
            }
            match read {
                Ok(Some(s)) if s.items.len() == seg.total as usize && s.seq == seq => {
                    let bytes = seg.bytes;
                    seg.records = Some(s.items.into_iter().map(Arc::new).collect());
                    ix.cached += bytes;
                }
                other => {
                    let why = match other {
                        Err(e) => e,
                        _ => "empty or changed".into(),
                    };
                    self.lose(&mut ix, seq, &why);
                }
            }
        }
    }

    /// A block that cannot be read back: nothing of it can be handed out.
    fn lose(&self, ix: &mut Index, seq: u64, why: &str) {
        let Some(pos) = ix.segments.iter().position(|s| s.seq == seq) else { return };
        let seg = &mut ix.segments[pos];
        tracing::error!(
            "spool block {seq} (file {}) cannot be read back: {why}; its {} record(s) are lost",
            ix.files.get(&seg.file).map(|f| f.path.display().to_string()).unwrap_or_default(),
            seg.total - seg.handed
        );
        let lost = (seg.total - seg.handed) as u64;
        seg.handed = seg.total;
        seg.outstanding = seg.outstanding.saturating_sub(lost as u32);
        ix.records = ix.records.saturating_sub(lost);
        if ix.segments[pos].outstanding == 0 {
            if let Some(gone) = ix.segments.remove(pos) {
                ix.bytes = ix.bytes.saturating_sub(gone.bytes);
                if let Some(p) = ix.release_block(gone.file) {
                    self.send_house(House::Recycle(p));
                }
            }
        }
    }

    /// Marks a handed-out record final (delivered, refused, expired); a
    /// block whose records are all final is dropped, and a file whose
    /// blocks all are goes back to the free pool.
    pub fn done(&self, seq: u64) {
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
        if let Some(p) = ix.release_block(seg.file) {
            drop(ix);
            self.send_house(House::Recycle(p));
        }
    }

    /// Removes blocks accepted before `before` (unix seconds) that have
    /// nothing handed out; returns their records.
    pub fn expire(&self, before: u64) -> Vec<Item> {
        let mut out = Vec::new();
        let mut recycle = Vec::new();
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
                    let read = ix.files.get(&seg.file).and_then(|f| File::open(&f.path).ok()).map(|f| read_block_at(&f, seg.offset));
                    if let Some(Ok(Some(s))) = read {
                        out.extend(s.items);
                    }
                }
            }
            if let Some(p) = ix.release_block(seg.file) {
                recycle.push(p);
            }
        }
        drop(ix);
        for p in recycle {
            self.send_house(House::Recycle(p));
        }
        out
    }
}

/// Empties a spool file whose blocks are all final and renames it
/// `free-N`, ready for the next commit. Neither step is synced: after a
/// crash the file may still hold its old, delivered blocks under either
/// name, and they are delivered again (at least once, as when an unlink is
/// lost). Blocks appended to it later are made durable by their own
/// fdatasync, and recovery goes by the blocks' sequence numbers, not by
/// names.
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
        tracing::warn!("cannot remove finished spool file {}: {e}", path.display());
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
                House::Rename { file, seq } => {
                    let mut ix = spool.lock();
                    if let Some(f) = ix.files.get_mut(file) {
                        let to = spool.dir.join(format!("seg-{seq:016}"));
                        if std::fs::rename(&f.path, &to).is_ok() {
                            f.path = to;
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

    #[test]
    fn blocks_share_a_file_and_a_torn_last_block_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let nonempty = |d: &Path| -> Vec<PathBuf> {
            std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| std::fs::metadata(p).map(|m| m.len() > 0).unwrap_or(false))
                .collect()
        };
        {
            let (s, _) = Spool::open(dir.path(), 0).unwrap();
            commit(&s, vec![item(1, 100), item(2, 100)]);
            commit(&s, vec![item(3, 100)]);
            // One committer, one open file: both group commits went into it.
            assert_eq!(nonempty(dir.path()).len(), 1);
        }
        // A crash in the middle of appending a third block.
        let file = nonempty(dir.path()).remove(0);
        let mut torn = std::fs::read(&file).unwrap();
        torn.extend_from_slice(&MAGIC[..]);
        torn.extend_from_slice(&[7u8; 20]);
        std::fs::write(&file, &torn).unwrap();
        let (s, rec) = Spool::open(dir.path(), 0).unwrap();
        assert_eq!((rec.segments, rec.records, rec.torn), (2, 3, 1));
        let ids: Vec<u8> = std::iter::from_fn(|| s.next()).map(|t| t.item.record_id[0]).collect();
        assert_eq!(ids, vec![1, 2, 3]);
    }
}
