//! Stage: the durable spool under `spool_dir`: a FIFO of blocks (one per
//! group commit) appended to spool files.
//!
//! Every record to be delivered is in the spool before its sender gets
//! `Accepted`, so a kill -9 at any moment loses no acknowledged record
//! (delivery is at least once). One block holds one group commit: many
//! records, one write, one `fdatasync`. A spool file takes blocks until it
//! holds [`MAX_FILE`] bytes, so files are made per megabyte, not per commit
//! (on ext4, making a file per commit cost more CPU than the rest of the
//! spool under load).
//!
//! Files are written in place: a new file is [`MAX_FILE`] bytes of zeros,
//! written and synced ahead of time, and a file whose blocks are all final
//! is reused as it is. So a commit that fits in its file changes no file
//! size or extent, and its `fdatasync` writes the data and flushes the
//! disk without an ext4 journal commit (which under concurrent commits
//! queued behind one another: p99 of `fdatasync` 8 ms instead of 5 here).
//! This costs up to a few MiB of disk beyond the blocks (free files, the
//! unwritten end of open ones), so a spool capped under
//! [`IN_PLACE_MIN_CAP`] (the original's 5 MiB default among them) keeps
//! files exactly as large as their blocks instead: new files start empty
//! and finished ones are truncated.
//!
//! ```text
//! free-N   files ready for use: preallocated, or finished and reused
//!          (the "create" half of write/fsync/rename/fsync-dir, off the ack path)
//! commit:  write the batch as a block at the file's end of blocks (each file
//!          is appended by one committer at a time), fdatasync  -> acks go out
//! then:    a file's first block: rename free-N -> seg-SEQ (housekeeper;
//!          names are for people, recovery does not need them)
//! done:    a file whose blocks are all delivered/refused/expired, and that
//!          takes no more blocks, has its first header zeroed and goes back
//!          to the free pool
//! ```
//!
//! Every block starts with a header (magic, sequence number, the file's
//! epoch, record count, accept time, body length, CRC-32 of header and
//! body). Each use of a file draws a random epoch, and a file's valid
//! blocks are the run from offset 0 that share the first block's epoch:
//! what follows them (zeros, a torn block that was never acknowledged, or
//! blocks of the file's earlier use) ends the run. On start every file is
//! read this way, so a written-but-not-yet-renamed `free-N` is recognised.
//! Blocks of the previous format (`TSPOOL01`) are still read.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bincode::Options;
use serde::{Deserialize, Serialize};
use telemetry::Record;
use thiserror::Error;

/// Blocks written now: epoch, CRC-32 (IEEE) of header and body.
const MAGIC: &[u8; 8] = b"TSPOOL02";
/// Blocks of the first format (no epoch, FNV-1a of the body), still read.
const MAGIC_V1: &[u8; 8] = b"TSPOOL01";
/// Bytes of a block header.
pub const HEADER_LEN: usize = 8 + 8 + 8 + 4 + 8 + 8 + 8;
const HEADER_LEN_V1: usize = 8 + 8 + 4 + 8 + 8 + 8;
/// Preallocated free files kept ready.
const POOL: usize = 2;
/// Most free files kept (finished files beyond it are unlinked).
const POOL_MAX: usize = 8;
/// Records of segments kept in memory, in bytes of segment file.
const CACHE_BYTES: u64 = 256 << 10;
/// Largest segment file read back (a sanity bound on a corrupt header).
const MAX_SEGMENT: u64 = 1 << 30;
/// Under a spool cap below [`IN_PLACE_MIN_CAP`], an idle spool file is
/// started over in place only while it holds at most this many bytes.
const REWIND_SMALL: u64 = 64 << 10;
/// How long a commit waits out a resource that ran out (descriptors)
/// before it fails.
pub const TRANSIENT_WAIT: Duration = Duration::from_secs(30);
/// A spool file takes no more blocks once it holds this many bytes; new
/// files are preallocated to it.
pub const MAX_FILE: u64 = 1 << 20;

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
    // No limit on the way in (a limit makes bincode size the entry in a
    // first pass); blocks are bounded on the way out by `opts()`.
    bincode::DefaultOptions::new().serialize_into(&mut *out, item).map_err(|e| SpoolError::Encode(e.to_string()))?;
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

/// CRC-32 (crc32fast: the CPU's carry-less multiply, gigabytes per
/// second; the first format's byte-at-a-time FNV-1a took ~20% of a
/// committer's CPU) of the header fields and the body.
fn crc(fields: &[u8], body: &[u8]) -> u64 {
    let mut h = crc32fast::Hasher::new();
    h.update(fields);
    h.update(body);
    u64::from(h.finalize())
}

fn header(seq: u64, epoch: u64, count: u32, accepted: u64, body: &[u8]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    h[16..24].copy_from_slice(&epoch.to_le_bytes());
    h[24..28].copy_from_slice(&count.to_le_bytes());
    h[28..36].copy_from_slice(&accepted.to_le_bytes());
    h[36..44].copy_from_slice(&(body.len() as u64).to_le_bytes());
    let sum = crc(&h[8..44], body);
    h[44..52].copy_from_slice(&sum.to_le_bytes());
    h
}

/// A block header, either format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    seq: u64,
    /// `None`: the first format.
    epoch: Option<u64>,
    count: u32,
    accepted: u64,
    body_len: u64,
    sum: u64,
    len: usize,
}

/// Why there is no valid block at a place.
#[derive(Debug, PartialEq, Eq)]
enum NoBlock {
    /// No block starts here (zeros, or other data).
    None,
    /// A block of this format starts here but is incomplete or damaged.
    Torn(String),
}

fn parse_head(b: &[u8]) -> Result<Head, NoBlock> {
    let u64at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]));
    let u32at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or([0; 4]));
    match b.get(..8) {
        Some(m) if m == MAGIC => {
            if b.len() < HEADER_LEN {
                return Err(NoBlock::Torn("torn block header".into()));
            }
            Ok(Head {
                seq: u64at(8),
                epoch: Some(u64at(16)),
                count: u32at(24),
                accepted: u64at(28),
                body_len: u64at(36),
                sum: u64at(44),
                len: HEADER_LEN,
            })
        }
        Some(m) if m == MAGIC_V1 => {
            if b.len() < HEADER_LEN_V1 {
                return Err(NoBlock::Torn("torn block header".into()));
            }
            Ok(Head {
                seq: u64at(8),
                epoch: None,
                count: u32at(16),
                accepted: u64at(20),
                body_len: u64at(28),
                sum: u64at(36),
                len: HEADER_LEN_V1,
            })
        }
        _ => Err(NoBlock::None),
    }
}

/// A block read back from disk.
#[derive(Debug)]
pub struct ReadSegment {
    pub seq: u64,
    /// The epoch of the file's use it belongs to (`None`: first format).
    pub epoch: Option<u64>,
    pub accepted: u64,
    pub items: Vec<Item>,
    /// Bytes of the block (header and body).
    pub bytes: u64,
}

/// Parses the block at the start of `b`.
fn parse_block(b: &[u8]) -> Result<ReadSegment, NoBlock> {
    let h = parse_head(b)?;
    let torn = |why: &str| NoBlock::Torn(why.to_string());
    let body_len = usize::try_from(h.body_len).map_err(|_| torn("block length does not fit"))?;
    let end = h.len.checked_add(body_len).ok_or_else(|| torn("block length overflows"))?;
    let body = b.get(h.len..end).ok_or_else(|| torn("torn block (body shorter than its header says)"))?;
    let sum = match h.epoch {
        Some(_) => crc(&b[8..44], body),
        None => fnv1a(body),
    };
    if sum != h.sum {
        return Err(torn("torn block (checksum mismatch)"));
    }
    let mut items = Vec::with_capacity((h.count as usize).min(body_len / 4 + 1));
    let mut at = 0;
    for _ in 0..h.count {
        let l = body.get(at..at + 4).ok_or_else(|| torn("block entry header missing"))?;
        let l = u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize;
        let e = body.get(at + 4..at + 4 + l).ok_or_else(|| torn("block entry truncated"))?;
        items.push(
            opts().deserialize::<Item>(e).map_err(|e| NoBlock::Torn(format!("block entry does not decode: {e}")))?,
        );
        at += 4 + l;
    }
    Ok(ReadSegment { seq: h.seq, epoch: h.epoch, accepted: h.accepted, items, bytes: end as u64 })
}

/// Reads the valid blocks of a spool file, in file order: the run from
/// offset 0 sharing the first block's epoch. The error says why a block
/// of that run was found incomplete (a torn write, never acknowledged).
pub fn read_file(mut f: File) -> (Vec<(u64, ReadSegment)>, Option<String>) {
    let mut buf = Vec::new();
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len > MAX_SEGMENT {
        return (Vec::new(), Some(format!("{len} bytes is too large for a spool file")));
    }
    if let Err(e) = f.read_to_end(&mut buf) {
        return (Vec::new(), Some(e.to_string()));
    }
    let mut out: Vec<(u64, ReadSegment)> = Vec::new();
    let mut at = 0usize;
    while at < buf.len() {
        match parse_block(&buf[at..]) {
            // Blocks of an earlier use of the file end this one's.
            Ok(s) if out.first().is_some_and(|(_, f)| f.epoch != s.epoch) => break,
            Ok(s) => {
                let n = s.bytes as usize;
                out.push((at as u64, s));
                at += n;
            }
            Err(NoBlock::None) => break,
            Err(NoBlock::Torn(why)) => {
                // After blocks of the current use, a damaged header of the
                // same format may be an earlier use's: only a torn block
                // that is the file's first, or follows first-format blocks,
                // or claims this epoch, is reported.
                let ours = match (out.first(), parse_head(&buf[at..])) {
                    (None, _) => true,
                    (Some((_, f)), Ok(h)) => f.epoch == h.epoch,
                    (Some((_, f)), Err(_)) => f.epoch.is_none(),
                };
                return (out, ours.then_some(why));
            }
        }
    }
    (out, None)
}

/// Why a block could not be read back.
#[derive(Debug, Error)]
enum ReadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Bad(String),
}

/// Reads the block at `offset` of an open spool file.
fn read_block_at(f: &File, offset: u64) -> Result<ReadSegment, ReadError> {
    let mut h = [0u8; HEADER_LEN];
    f.read_exact_at(&mut h[..HEADER_LEN_V1], offset)?;
    if &h[..8] == MAGIC {
        f.read_exact_at(&mut h[HEADER_LEN_V1..], offset + HEADER_LEN_V1 as u64)?;
    }
    let head = parse_head(&h).map_err(|_| ReadError::Bad("not a spool block (bad magic)".into()))?;
    if head.body_len > MAX_SEGMENT {
        return Err(ReadError::Bad(format!("a {}-byte block is too large", head.body_len)));
    }
    let mut b = vec![0u8; head.len + head.body_len as usize];
    f.read_exact_at(&mut b, offset)?;
    parse_block(&b).map_err(|e| match e {
        NoBlock::None => ReadError::Bad("not a spool block".to_string()),
        NoBlock::Torn(why) => ReadError::Bad(why),
    })
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
    /// Bytes of this block still counted in `Index::bytes`: each record
    /// that becomes final takes its share off, so a record that waits
    /// long (a retry) holds only its own share of the cap, not its block's.
    counted: u64,
    /// The records' ids, so a block that cannot be read back is still
    /// journaled record by record.
    ids: Box<[[u8; 16]]>,
    records: Option<Vec<Arc<Item>>>,
}

impl Segment {
    /// Takes `n` records' share of the block's bytes off its count; the
    /// last record takes what is left. Returns the bytes taken.
    fn release_share(&mut self, n: u32) -> u64 {
        let share = if self.outstanding == 0 && self.handed == self.total {
            self.counted
        } else {
            (self.bytes / self.total.max(1) as u64).saturating_mul(n as u64).min(self.counted)
        };
        self.counted -= share;
        share
    }
}

/// What [`Spool::next_ticket`] found.
#[derive(Debug)]
pub enum Next {
    Ready(Ticket),
    /// Nothing waits (or everything waiting is handed out).
    Empty,
    /// A block could not be read now for want of a resource (file
    /// descriptors, memory): nothing is lost, ask again a little later.
    Busy(String),
}

/// Records of a block that could not be read back, for the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    pub ids: Vec<[u8; 16]>,
    pub why: String,
}

/// A resource that runs out for a while (descriptors, memory), as
/// opposed to a fault of the data or the disk.
pub fn is_transient(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::EAGAIN | libc::EINTR))
}

/// A spool file holding blocks.
struct SpoolFile {
    path: PathBuf,
    /// This use's epoch (in every block header).
    epoch: u64,
    /// Bytes written (where the next block goes).
    len: u64,
    /// Blocks not yet final.
    live: u32,
    /// Takes more blocks (it is in `Index::writers`, or a committer holds it).
    open: bool,
    /// Named after its first block already (`seg-SEQ`).
    named: bool,
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
    /// Records of blocks that could not be read back, not yet journaled.
    lost: Vec<Lost>,
    /// When a record last left the spool (room was freed).
    freed_at: Instant,
    /// An idle spool file whose blocks are all final and that holds at
    /// most this many bytes is started over in place (see `release_block`).
    rewind_max: u64,
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
            // Idle in the writers pool (if a committer holds it, it lives on).
            let pos = self.writers.iter().position(|(id, _)| *id == file)?;
            // Small enough: start it over where it is (its next block goes
            // at offset 0 over the dead ones, with a new epoch; in place,
            // so that block's fdatasync changes no file size), instead of
            // renaming and truncating a file per lone record. Its first
            // header is zeroed first so the dead blocks are not valid any
            // more (unsynced, like a recycled file: after a crash they may
            // be sent again, at least once).
            if f.len <= self.rewind_max && self.writers[pos].1.write_all_at(&[0u8; HEADER_LEN], 0).is_ok() {
                f.len = 0;
                f.epoch = new_epoch();
                return None;
            }
            // Else retire it rather than keep dead blocks on disk.
            self.writers.swap_remove(pos);
        }
        self.files.remove(&file).map(|f| f.path)
    }
}

enum House {
    /// A file got its first block (sequence number `seq`): name it after it.
    Rename {
        file: u64,
        seq: u64,
    },
    Refill,
    /// A spool file whose blocks are all final: made a free file again, or
    /// unlinked when the pool is full.
    Recycle(PathBuf),
    /// Answer once everything asked before is done.
    Flush(mpsc::Sender<()>),
}

/// The spool; cheap to share (`Arc`).
pub struct Spool {
    dir: PathBuf,
    index: Mutex<Index>,
    house: Mutex<mpsc::Sender<House>>,
    /// Files are preallocated and written in place (see the module doc);
    /// else they start empty and finished ones are truncated.
    in_place: std::sync::atomic::AtomicBool,
    /// Signalled whenever records leave the spool (room for waiting commits).
    room: Condvar,
}

/// With a `spool_max_size` below this, files are not preallocated nor
/// reused in place: the spool's files then take no more disk than its
/// blocks (the few MiB of free and partly written files would be a large
/// part of a small cap).
pub const IN_PLACE_MIN_CAP: u64 = 64 * MAX_FILE;

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
    /// The newest records kept (up to [`NEWEST`], oldest first): those
    /// whose journal entries a crash may have cut off.
    pub newest: Vec<Item>,
}

/// How many of the newest recovered records [`Recovered::newest`] holds.
pub const NEWEST: usize = 8192;

/// A random epoch for a new use of a spool file.
fn new_epoch() -> u64 {
    let mut e = [0u8; 8];
    e.copy_from_slice(&telemetry::EventId::random().as_bytes()[..8]);
    u64::from_le_bytes(e)
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
                tracing::warn!(
                    "{}: {why} after {} valid block(s); the rest was never acknowledged",
                    path.display(),
                    blocks.len()
                );
                rec.torn += 1;
            }
            let (old, keep): (Vec<_>, Vec<_>) = blocks.into_iter().partition(|(_, s)| s.accepted < expire_before);
            for (_, s) in old {
                rec.expired.extend(s.items);
            }
            if !keep.is_empty() {
                found.push((next_file, path, keep));
                next_file += 1;
            } else if free.len() < POOL_MAX
                && OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.write_all_at(&[0u8; HEADER_LEN], 0))
                    .is_ok()
            {
                // Nothing valid left (or only expired blocks): a free file.
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
            let path =
                if path != want && !want.exists() && std::fs::rename(&path, &want).is_ok() { want } else { path };
            let epoch = bs.first().and_then(|(_, s)| s.epoch).unwrap_or(0);
            files.insert(id, SpoolFile { path, epoch, len, live: bs.len() as u32, open: false, named: true });
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
            lost: Vec::new(),
            freed_at: Instant::now(),
            rewind_max: MAX_FILE,
        };
        let mut tail = 0usize;
        for (_, _, s) in blocks.iter().rev() {
            if tail >= NEWEST {
                break;
            }
            tail += s.items.len();
        }
        let mut to_skip = blocks.iter().map(|(_, _, s)| s.items.len()).sum::<usize>().saturating_sub(tail.min(NEWEST));
        for (_, _, s) in &blocks {
            let skip = to_skip.min(s.items.len());
            to_skip -= skip;
            rec.newest.extend(s.items[skip..].iter().cloned());
        }
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
                counted: s.bytes,
                ids: s.items.iter().map(|i| i.record_id).collect(),
                records: cache.then(|| s.items.into_iter().map(Arc::new).collect()),
            });
        }
        sync_dir(dir).map_err(derr)?;
        let (tx, rx) = mpsc::channel();
        let spool = Arc::new(Spool {
            dir: dir.into(),
            index: Mutex::new(index),
            house: Mutex::new(tx),
            in_place: std::sync::atomic::AtomicBool::new(true),
            room: Condvar::new(),
        });
        let weak = Arc::downgrade(&spool);
        std::thread::Builder::new().name("spool-house".into()).spawn(move || housekeeper(weak, rx)).map_err(derr)?;
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

    /// Sets how files are used for a spool capped at `max` bytes: in place
    /// (preallocated, reused) unless the cap is under [`IN_PLACE_MIN_CAP`].
    pub fn set_cap(&self, max: Option<u64>) {
        let in_place = max.is_none_or(|m| m >= IN_PLACE_MIN_CAP);
        self.in_place.store(in_place, std::sync::atomic::Ordering::Relaxed);
        // Under a small cap a file keeps no more dead bytes than this.
        self.lock().rewind_max = if in_place { MAX_FILE } else { REWIND_SMALL };
        self.send_house(House::Refill);
    }

    fn in_place(&self) -> bool {
        self.in_place.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits (up to `timeout`) until the housekeeper has done everything
    /// asked of it so far, so that finished files are free before the
    /// daemon exits (else their delivered blocks would be found and sent
    /// again on the next start).
    pub fn settle(&self, timeout: std::time::Duration) {
        let (tx, rx) = mpsc::channel();
        self.send_house(House::Flush(tx));
        let _ = rx.recv_timeout(timeout);
    }

    /// Bytes of the blocks waiting in the spool.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// Records waiting in the spool (handed out but not done included).
    pub fn records(&self) -> u64 {
        self.lock().records
    }

    /// Reserves room for the entries of a commit about to be made, in
    /// order, each only if the spool stays within `max` with it (commits in
    /// flight counted); which ones fit, and the bytes reserved (block
    /// header included when any fits).
    pub fn reserve(&self, sizes: &[u64], max: Option<u64>) -> (Vec<bool>, u64) {
        let mut ix = self.lock();
        Self::reserve_locked(&mut ix, sizes, max)
    }

    fn reserve_locked(ix: &mut Index, sizes: &[u64], max: Option<u64>) -> (Vec<bool>, u64) {
        let mut total = 0u64;
        let fits = sizes
            .iter()
            .map(|&n| {
                let n = n + if total == 0 { HEADER_LEN as u64 } else { 0 };
                let ok = max.is_none_or(|m| ix.bytes + ix.reserved + total + n <= m);
                if ok {
                    total += n;
                }
                ok
            })
            .collect();
        ix.reserved += total;
        (fits, total)
    }

    /// As [`reserve`](Self::reserve), but while `wait()` says so (the
    /// server is taking records, so room is coming) and records keep
    /// leaving the spool (none for `stall` means the room is held by
    /// records that wait for a retry, which waiting will not free), waits
    /// for room for all of them instead of leaving some out. `wait` is
    /// asked again at least every `poll`. Returns as `reserve` does, and
    /// how long it waited.
    pub fn reserve_wait(
        &self,
        sizes: &[u64],
        max: Option<u64>,
        poll: Duration,
        stall: Duration,
        wait: &dyn Fn() -> bool,
    ) -> (Vec<bool>, u64, Duration) {
        let start = Instant::now();
        let need: u64 = sizes.iter().sum::<u64>() + HEADER_LEN as u64;
        let mut ix = self.lock();
        loop {
            let fits_all = max.is_none_or(|m| ix.bytes + ix.reserved + need <= m);
            // Nothing to wait for when nothing is stored or in flight (the
            // batch alone is over the cap), or nothing has left for `stall`.
            let progress = ix.freed_at.max(start).elapsed() < stall;
            let can_wait = ix.bytes + ix.reserved > 0 && progress;
            if fits_all || !can_wait || !wait() {
                let (fits, total) = Self::reserve_locked(&mut ix, sizes, max);
                return (fits, total, start.elapsed());
            }
            ix = self.room.wait_timeout(ix, poll).map(|(g, _)| g).unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Writes `items` as one block, durably (fdatasync), and queues them
    /// for delivery. `body` holds their [`encode_item`] encodings;
    /// `reserved` bytes (from [`reserve`](Self::reserve)) are released.
    /// A resource that runs out for a while (no file descriptor left) is
    /// waited out, up to [`TRANSIENT_WAIT`]: a record is not refused for it.
    pub fn commit(&self, items: Vec<Arc<Item>>, body: &[u8], reserved: u64) -> Result<u64, SpoolError> {
        let deadline = Instant::now() + TRANSIENT_WAIT;
        let r = loop {
            match self.commit_inner(items.clone(), body) {
                Err(SpoolError::Write { source, .. }) if is_transient(&source) && Instant::now() < deadline => {
                    tracing::debug!("spool commit waits: {source}");
                    std::thread::sleep(Duration::from_millis(20));
                }
                r => break r,
            }
        };
        let mut ix = self.lock();
        ix.reserved = ix.reserved.saturating_sub(reserved);
        drop(ix);
        self.room.notify_all();
        r
    }

    /// An open spool file for this committer alone: an idle writer, else a
    /// free file (made durable first if none was prepared).
    fn take_writer(&self) -> Result<(u64, File, u64, u64), SpoolError> {
        let (slot, fresh) = {
            let mut ix = self.lock();
            if let Some((id, f)) = ix.writers.pop() {
                let (off, epoch) = ix.files.get(&id).map_or((0, 0), |f| (f.len, f.epoch));
                return Ok((id, f, off, epoch));
            }
            // In place, the largest free file first: its blocks are written
            // over bytes it already has, so a full disk does not refuse them
            // while a smaller free file would need new space.
            let pick = if self.in_place() && ix.free.len() > 1 {
                let sizes: Vec<u64> =
                    ix.free.iter().map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)).collect();
                (0..ix.free.len()).max_by_key(|&i| sizes[i])
            } else {
                ix.free.len().checked_sub(1)
            };
            match pick.map(|i| ix.free.remove(i)) {
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
        if !self.in_place() && f.metadata().map(|m| m.len() > 0).unwrap_or(true) {
            // Made in place before a reload set a small cap.
            f.set_len(0).map_err(werr)?;
        }
        if fresh {
            // No prepared file was left: make this one's name durable first.
            sync_dir(&self.dir).map_err(werr)?;
        }
        let epoch = new_epoch();
        let mut ix = self.lock();
        let id = ix.next_file;
        ix.next_file += 1;
        ix.files.insert(id, SpoolFile { path: slot, epoch, len: 0, live: 0, open: true, named: false });
        Ok((id, f, 0, epoch))
    }

    fn commit_inner(&self, items: Vec<Arc<Item>>, body: &[u8]) -> Result<u64, SpoolError> {
        let accepted = items.iter().map(|i| i.accepted).max().unwrap_or(0);
        let (file, f, offset, epoch) = self.take_writer()?;
        let seq = {
            let mut ix = self.lock();
            ix.next_seq += 1;
            ix.next_seq - 1
        };
        let h = header(seq, epoch, items.len() as u32, accepted, body);
        let written = f
            .write_all_at(&h, offset)
            .and_then(|()| f.write_all_at(body, offset + HEADER_LEN as u64))
            .and_then(|()| f.sync_data());
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
        let mut rename = false;
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
                counted: bytes,
                ids: items.iter().map(|i| i.record_id).collect(),
                records: cache.then_some(items),
            };
            ix.bytes += bytes;
            ix.records += n as u64;
            if let Some(sf) = ix.files.get_mut(&file) {
                sf.len = offset + bytes;
                sf.live += 1;
                rename = !sf.named;
                sf.named = true;
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
        if rename {
            self.send_house(House::Rename { file, seq });
        }
        Ok(seq)
    }

    /// The next record to deliver, FIFO; `None` when there is none now.
    pub fn next(&self) -> Option<Ticket> {
        match self.next_ticket() {
            Next::Ready(t) => Some(t),
            Next::Empty | Next::Busy(_) => None,
        }
    }

    /// The next record to deliver, FIFO. A block no longer in memory is
    /// opened under the lock (the descriptor survives the housekeeper's
    /// rename) but read and decoded outside it, so commits (and their acks)
    /// never wait for that. A block that cannot be opened or read for want
    /// of a resource stays as it is ([`Next::Busy`]); one that cannot be
    /// read back at all is lost, and its records are counted and kept for
    /// [`take_lost`](Self::take_lost).
    pub fn next_ticket(&self) -> Next {
        loop {
            let (seq, file, offset) = {
                let mut ix = self.lock();
                let Some(seg) = ix.segments.iter_mut().find(|s| s.handed < s.total) else { return Next::Empty };
                if let Some(recs) = &seg.records {
                    let Some(item) = recs.get(seg.handed as usize).cloned() else { return Next::Empty };
                    seg.handed += 1;
                    let seq = seg.seq;
                    if seg.handed == seg.total {
                        // All handed out: each ticket holds its own record, so
                        // one that waits long (a retry) keeps only itself in
                        // memory, not its whole block.
                        seg.records = None;
                        let bytes = seg.bytes;
                        ix.cached = ix.cached.saturating_sub(bytes);
                    }
                    return Next::Ready(Ticket { seq, item });
                }
                let (seq, fid, offset) = (seg.seq, seg.file, seg.offset);
                match ix.files.get(&fid).map(|f| File::open(&f.path)) {
                    Some(Ok(f)) => (seq, f, offset),
                    Some(Err(e)) if is_transient(&e) => return Next::Busy(e.to_string()),
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
            drop(file);
            let mut ix = self.lock();
            let Some(seg) = ix.segments.iter_mut().find(|s| s.seq == seq) else { continue };
            if seg.records.is_some() || seg.handed >= seg.total {
                continue;
            }
            match read {
                Ok(s) if s.items.len() == seg.total as usize && s.seq == seq => {
                    let bytes = seg.bytes;
                    seg.records = Some(s.items.into_iter().map(Arc::new).collect());
                    ix.cached += bytes;
                }
                Err(ReadError::Io(e)) if is_transient(&e) => return Next::Busy(e.to_string()),
                other => {
                    let why = match other {
                        Err(e) => e.to_string(),
                        _ => "empty or changed".into(),
                    };
                    self.lose(&mut ix, seq, &why);
                }
            }
        }
    }

    /// A block that cannot be read back: nothing more of it can be handed
    /// out. Its records not handed out yet are lost: logged, and kept for
    /// [`take_lost`](Self::take_lost) so they are counted and journaled.
    fn lose(&self, ix: &mut Index, seq: u64, why: &str) {
        let Some(pos) = ix.segments.iter().position(|s| s.seq == seq) else { return };
        let seg = &mut ix.segments[pos];
        let lost = seg.total - seg.handed;
        let ids: Vec<[u8; 16]> = seg.ids.get(seg.handed as usize..).map(|s| s.to_vec()).unwrap_or_default();
        tracing::error!(
            "spool block {seq} (file {}) cannot be read back: {why}; its {lost} record(s) are lost",
            ix.files.get(&seg.file).map(|f| f.path.display().to_string()).unwrap_or_default(),
        );
        let seg = &mut ix.segments[pos];
        seg.handed = seg.total;
        seg.outstanding = seg.outstanding.saturating_sub(lost);
        let share = seg.release_share(lost);
        ix.bytes = ix.bytes.saturating_sub(share);
        ix.records = ix.records.saturating_sub(lost as u64);
        ix.lost.push(Lost { ids, why: format!("the spool block holding it cannot be read back: {why}") });
        ix.freed_at = Instant::now();
        if ix.segments[pos].outstanding == 0 {
            if let Some(gone) = ix.segments.remove(pos) {
                ix.bytes = ix.bytes.saturating_sub(gone.counted);
                if let Some(p) = ix.release_block(gone.file) {
                    self.send_house(House::Recycle(p));
                }
            }
        }
        self.room.notify_all();
    }

    /// Records lost since the last call (blocks that could not be read
    /// back), for the journal and the `dropped` count.
    pub fn take_lost(&self) -> Vec<Lost> {
        std::mem::take(&mut self.lock().lost)
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
        let share = seg.release_share(1);
        let finished = seg.outstanding == 0 && seg.handed == seg.total;
        ix.bytes = ix.bytes.saturating_sub(share);
        ix.freed_at = Instant::now();
        if !finished {
            drop(ix);
            self.room.notify_all();
            return;
        }
        let Some(seg) = ix.segments.remove(pos) else { return };
        ix.bytes = ix.bytes.saturating_sub(seg.counted);
        if seg.records.is_some() {
            ix.cached = ix.cached.saturating_sub(seg.bytes);
        }
        let recycle = ix.release_block(seg.file);
        drop(ix);
        self.room.notify_all();
        if let Some(p) = recycle {
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
            ix.bytes = ix.bytes.saturating_sub(seg.counted);
            ix.freed_at = Instant::now();
            ix.records = ix.records.saturating_sub(seg.outstanding as u64);
            match seg.records {
                Some(r) => {
                    ix.cached = ix.cached.saturating_sub(seg.bytes);
                    out.extend(r.iter().map(|i| (**i).clone()));
                }
                None => {
                    let read = ix
                        .files
                        .get(&seg.file)
                        .and_then(|f| File::open(&f.path).ok())
                        .map(|f| read_block_at(&f, seg.offset));
                    if let Some(Ok(s)) = read {
                        out.extend(s.items);
                    }
                }
            }
            if let Some(p) = ix.release_block(seg.file) {
                recycle.push(p);
            }
        }
        drop(ix);
        self.room.notify_all();
        for p in recycle {
            self.send_house(House::Recycle(p));
        }
        out
    }
}

/// Makes a spool file whose blocks are all final a free file again: its
/// first header is zeroed (so none of its blocks is valid any more) and it
/// is renamed `free-N`, ready for the next commit to write over. Neither
/// step is synced: after a crash the file may still hold its old,
/// delivered blocks under either name, and they are delivered again (at
/// least once, as when an unlink is lost). Blocks written over it later
/// are made durable by their own fdatasync and carry a new epoch, so
/// recovery never takes the old blocks behind them for new ones.
fn recycle(spool: &Spool, path: &Path) {
    let full = spool.lock().free.len() >= POOL_MAX;
    let in_place = spool.in_place();
    let freed = !full
        && OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| if in_place { f.write_all_at(&[0u8; HEADER_LEN], 0) } else { f.set_len(0) })
            .is_ok();
    if freed {
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

/// Free space on the spool's file system (bytes), if known.
fn free_space(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs into a local struct, with a NUL-terminated path.
    let st = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        (libc::statvfs(c.as_ptr(), &mut st) == 0).then_some(st)
    }?;
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Preallocation never takes the last of the disk: below this much free
/// space, new files start empty and grow as blocks are appended.
const PREALLOC_MIN_FREE: u64 = 64 * MAX_FILE;

/// Makes a free file of [`MAX_FILE`] zeros, written and synced.
fn preallocate(p: &Path) -> std::io::Result<()> {
    let f = OpenOptions::new().write(true).create_new(true).open(p)?;
    let zeros = vec![0u8; 256 << 10];
    let mut at = 0u64;
    while at < MAX_FILE {
        f.write_all_at(&zeros, at)?;
        at += zeros.len() as u64;
    }
    f.sync_data()
}

fn housekeeper(spool: std::sync::Weak<Spool>, rx: mpsc::Receiver<House>) {
    while let Ok(first) = rx.recv() {
        let mut msgs = vec![first];
        while let Ok(m) = rx.try_recv() {
            msgs.push(m);
        }
        let Some(spool) = spool.upgrade() else { return };
        let mut flushed = Vec::new();
        for m in msgs {
            match m {
                // Names are for people: a lost rename costs nothing.
                House::Rename { file, seq } => {
                    let mut ix = spool.lock();
                    if let Some(f) = ix.files.get_mut(&file) {
                        let to = spool.dir.join(format!("seg-{seq:016}"));
                        if std::fs::rename(&f.path, &to).is_ok() {
                            f.path = to;
                        }
                    }
                }
                House::Recycle(path) => recycle(&spool, &path),
                House::Refill => {}
                House::Flush(done) => flushed.push(done),
            }
        }
        let need = {
            let ix = spool.lock();
            POOL.saturating_sub(ix.free.len())
        };
        let mut made = Vec::new();
        let in_place = spool.in_place();
        for _ in 0..need {
            if in_place && free_space(&spool.dir).is_none_or(|f| f < PREALLOC_MIN_FREE) {
                break;
            }
            let n = {
                let mut ix = spool.lock();
                ix.next_free += 1;
                ix.next_free - 1
            };
            let p = spool.dir.join(format!("free-{n}"));
            let made_one = if in_place {
                preallocate(&p)
            } else {
                OpenOptions::new().write(true).create_new(true).open(&p).map(drop)
            };
            match made_one {
                Ok(()) => made.push(p),
                Err(e) => {
                    tracing::debug!("cannot prepare spool file {}: {e}", p.display());
                    let _ = std::fs::remove_file(&p);
                    break;
                }
            }
        }
        if !made.is_empty() {
            if let Err(e) = sync_dir(&spool.dir) {
                tracing::warn!("cannot fsync the spool directory {}: {e}", spool.dir.display());
                for p in &made {
                    let _ = std::fs::remove_file(p);
                }
                made.clear();
            }
        }
        // Only files whose names are durable become usable; finished files
        // (at the end) are used before new ones (their pages are cached).
        spool.lock().free.splice(0..0, made);
        for done in flushed {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use telemetry::{Classification, Payload, Severity};

    fn item(n: u8, accepted: u64) -> Item {
        let record = Record::builder(
            Classification::parse("org.t/spool/test").unwrap(),
            Severity::Low,
            Payload::text(format!("r{n}")),
        )
        .build();
        Item { record_id: [n; 16], accepted, counted: true, uid: 1, pid: 2, record }
    }

    fn commit(s: &Spool, items: Vec<Item>) -> u64 {
        let mut body = Vec::new();
        for i in &items {
            encode_item(i, &mut body).unwrap();
        }
        s.commit(items.into_iter().map(Arc::new).collect(), &body, 0).unwrap()
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

    /// Files holding at least one valid block.
    fn with_blocks(d: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            // A file the housekeeper renames meanwhile is seen under its new name.
            .filter(|p| File::open(p).is_ok_and(|f| !read_file(f).0.is_empty()))
            .collect();
        v.sort();
        v
    }

    fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !cond() {
            assert!(std::time::Instant::now() < deadline, "timed out waiting: {what}");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn a_record_that_waits_holds_only_its_share_and_commits_wait_for_room() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = Spool::open(dir.path(), 0).unwrap();
        let items: Vec<Item> = (0..10).map(|i| item(i, 10)).collect();
        commit(&s, items);
        let full = s.bytes();
        // Nine of ten delivered; one (a retry) still out: it holds a tenth.
        let tickets: Vec<Ticket> = std::iter::from_fn(|| s.next()).collect();
        assert_eq!(tickets.len(), 10);
        for t in &tickets[1..] {
            s.done(t.seq);
        }
        assert!(s.bytes() <= full / 10 + 10, "{} of {full}", s.bytes());
        assert_eq!(s.records(), 1);
        // A cap the spool is at: a commit that may wait gets room as soon
        // as the last record leaves; one that may not is left out.
        let cap = Some(s.bytes() + 10);
        let (poll, long) = (Duration::from_millis(10), Duration::from_secs(30));
        let (fits, reserved, _) = s.reserve_wait(&[100], cap, poll, long, &|| false);
        assert_eq!((fits, reserved), (vec![false], 0));
        // Nothing leaves: waiting stops after `stall`.
        let (fits, _, waited) = s.reserve_wait(&[100], cap, poll, Duration::from_millis(300), &|| true);
        assert_eq!(fits, vec![false]);
        assert!(waited >= Duration::from_millis(250) && waited < Duration::from_secs(10), "{waited:?}");
        let s2 = s.clone();
        let seq = tickets[0].seq;
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            s2.done(seq);
        });
        let (fits, reserved, waited) = s.reserve_wait(&[100], cap, Duration::from_secs(5), long, &|| true);
        assert_eq!(fits, vec![true]);
        assert!(reserved > 0);
        assert!(waited >= Duration::from_millis(150) && waited < Duration::from_secs(4), "{waited:?}");
        t.join().unwrap();
        assert_eq!((s.bytes(), s.records()), (0, 0));
    }

    #[test]
    fn an_idle_file_whose_blocks_are_all_final_is_started_over_in_place() {
        for cap in [None, Some(5 << 20)] {
            let dir = tempfile::tempdir().unwrap();
            let (s, _) = Spool::open(dir.path(), 0).unwrap();
            s.set_cap(cap);
            s.settle(std::time::Duration::from_secs(5));
            // Lone records, each delivered before the next arrives.
            for i in 0..20 {
                commit(&s, vec![item(i, 10)]);
                let t = s.next().unwrap();
                s.done(t.seq);
            }
            s.settle(std::time::Duration::from_secs(5));
            assert_eq!(with_blocks(dir.path()), Vec::<PathBuf>::new(), "no dead block is valid ({cap:?})");
            // One more, not delivered: the only block a restart finds.
            commit(&s, vec![item(99, 10)]);
            s.settle(std::time::Duration::from_secs(5));
            let segs: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("seg-"))
                .collect();
            assert_eq!(segs.len(), 1, "one file took every block: {segs:?} ({cap:?})");
            drop(s);
            let (s, rec) = Spool::open(dir.path(), 0).unwrap();
            assert_eq!(rec.records, 1, "{cap:?}");
            assert_eq!(s.next().map(|t| t.item.record_id), Some([99; 16]));
        }
    }

    #[test]
    fn done_frees_files_and_expiry() {
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
        // The housekeeper makes the finished file free: no valid block is left.
        s.settle(std::time::Duration::from_secs(5));
        assert_eq!(with_blocks(dir.path()), Vec::<PathBuf>::new());
        // Expiry on open too.
        commit(&s, vec![item(3, 10)]);
        drop(s);
        let (_, rec) = Spool::open(dir.path(), 500).unwrap();
        assert_eq!(rec.expired.len(), 1);
    }

    #[test]
    fn commits_write_over_preallocated_files_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = Spool::open(dir.path(), 0).unwrap();
        let sizes = || -> Vec<u64> {
            let mut v: Vec<u64> =
                std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).collect();
            v.sort();
            v
        };
        if free_space(dir.path()).is_some_and(|f| f >= PREALLOC_MIN_FREE) {
            wait_until("the free files are made", || sizes() == vec![MAX_FILE; POOL]);
            s.settle(std::time::Duration::from_secs(5));
            for i in 0..20 {
                commit(&s, vec![item(i, 100), item(i, 100)]);
            }
            // No file grew or shrank: the blocks went over the zeros.
            assert_eq!(sizes().iter().filter(|&&n| n == MAX_FILE).count(), sizes().len(), "{:?}", sizes());
            assert_eq!(with_blocks(dir.path()).len(), 1);
        }
    }

    #[test]
    fn blocks_of_a_files_earlier_use_are_not_taken_for_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (s, _) = Spool::open(dir.path(), 0).unwrap();
            // First use of a file: three blocks of the same size, delivered.
            for i in 1..=3 {
                commit(&s, vec![item(i, 100)]);
            }
            s.settle(std::time::Duration::from_secs(5));
            let file = with_blocks(dir.path()).remove(0);
            let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
            let first_use = inode(&file);
            for _ in 1..=3 {
                let t = s.next().unwrap();
                s.done(t.seq);
            }
            s.settle(std::time::Duration::from_secs(5));
            assert!(with_blocks(dir.path()).is_empty());
            // Its second use: one block exactly the size of the old first,
            // so the old second block lies right behind it.
            commit(&s, vec![item(9, 100)]);
            s.settle(std::time::Duration::from_secs(5));
            let reused = with_blocks(dir.path());
            assert_eq!(reused.len(), 1);
            let (blocks, _) = read_file(File::open(&reused[0]).unwrap());
            assert_eq!(blocks.len(), 1);
            assert_eq!(inode(&reused[0]), first_use, "the finished file was used again");
        }
        let (s, rec) = Spool::open(dir.path(), 0).unwrap();
        assert_eq!((rec.records, rec.torn), (1, 0));
        assert_eq!(s.next().unwrap().item.record_id, [9; 16]);
        assert!(s.next().is_none());
    }

    #[test]
    fn recycled_files_carry_new_segments_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = Spool::open(dir.path(), 0).unwrap();
        for i in 0..200u8 {
            commit(&s, vec![item(i, 1000)]);
            let t = s.next().unwrap();
            assert_eq!(t.item.record_id, [i; 16]);
            s.done(t.seq);
        }
        s.settle(std::time::Duration::from_secs(5));
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
        {
            let (s, _) = Spool::open(dir.path(), 0).unwrap();
            commit(&s, vec![item(1, 100), item(2, 100)]);
            commit(&s, vec![item(3, 100)]);
            // One committer, one open file: both group commits went into it.
            assert_eq!(with_blocks(dir.path()).len(), 1);
        }
        // A crash in the middle of writing a third block: its header and
        // half its body reached the disk.
        let file = with_blocks(dir.path()).remove(0);
        let (blocks, _) = read_file(File::open(&file).unwrap());
        let (last_at, last) = blocks.last().unwrap();
        let end = last_at + last.bytes;
        let mut body = Vec::new();
        encode_item(&item(4, 100), &mut body).unwrap();
        let mut torn = header(last.seq + 1, last.epoch.unwrap(), 1, 100, &body).to_vec();
        torn.extend_from_slice(&body[..body.len() / 2]);
        File::options().write(true).open(&file).unwrap().write_all_at(&torn, end).unwrap();
        let (s, rec) = Spool::open(dir.path(), 0).unwrap();
        assert_eq!((rec.segments, rec.records, rec.torn), (2, 3, 1));
        let ids: Vec<u8> = std::iter::from_fn(|| s.next()).map(|t| t.item.record_id[0]).collect();
        assert_eq!(ids, vec![1, 2, 3]);
    }

    #[test]
    fn first_format_blocks_are_read() {
        let dir = tempfile::tempdir().unwrap();
        // A block as the first format wrote it.
        let mut body = Vec::new();
        encode_item(&item(5, 100), &mut body).unwrap();
        let mut b = MAGIC_V1.to_vec();
        b.extend_from_slice(&7u64.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&100u64.to_le_bytes());
        b.extend_from_slice(&(body.len() as u64).to_le_bytes());
        b.extend_from_slice(&fnv1a(&body).to_le_bytes());
        b.extend_from_slice(&body);
        std::fs::write(dir.path().join("seg-0000000000000007"), &b).unwrap();
        let (s, rec) = Spool::open(dir.path(), 0).unwrap();
        assert_eq!((rec.records, rec.torn), (1, 0));
        let t = s.next().unwrap();
        assert_eq!((t.seq, t.item.record_id), (7, [5; 16]));
        // New blocks number on from it.
        assert!(commit(&s, vec![item(6, 100)]) > 7);
    }
}
