//! Stage: the durable spool under `spool_dir`: a FIFO of blocks (one per
//! group commit) appended to spool files.
//!
//! Every record to be delivered is in the spool before its sender gets
//! `Accepted`, so a kill -9 at any moment loses no acknowledged record
//! (delivery is at least once). One block holds one group commit: many
//! records, one write, one `fdatasync` before the ack ([`Fsync::Now`]), or
//! for blocks of records under `spool_sync_severity` one by the
//! housekeeper within [`LAZY_SYNC`] ([`Fsync::Lazy`], `lazy_sync.rs`). A spool file takes blocks until it
//! holds [`MAX_FILE`] bytes, so files are made per megabyte, not per commit
//! (on ext4, making a file costs more CPU than writing a block into one).
//!
//! Files are written in place: a new file is [`MAX_FILE`] bytes of zeros,
//! written and synced ahead of time, and a file whose blocks are all final
//! is reused as it is. So a commit that fits in its file changes no file
//! size or extent, and its `fdatasync` writes the data and flushes the
//! disk without an ext4 journal commit (concurrent commits would queue
//! behind one another's journal commits, raising the tail of `fdatasync`).
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

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use telemetry::RecordId;

use serde::{Deserialize, Serialize};
use telemetry::Record;
use thiserror::Error;

mod commit;
mod files;
mod format;
mod housekeeper;
mod index;
mod lazy_sync;
mod recover;
#[cfg(test)]
mod tests;
mod tickets;
pub use tickets::Expired;

pub use commit::Fsync;
use files::*;
use format::*;
pub use format::{encode_item, read_file, ReadSegment, HEADER_LEN};
use housekeeper::*;
use index::*;
pub use lazy_sync::LAZY_SYNC;

/// Records of segments kept in memory, in bytes of segment file.
const CACHE_BYTES: u64 = 256 << 10;
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
    pub record_id: RecordId,
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
        self.record_id.to_string()
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
    pub ids: Vec<RecordId>,
    pub why: String,
}

/// A resource that runs out for a while (descriptors, memory), as
/// opposed to a fault of the data or the disk.
pub fn is_transient(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::EAGAIN | libc::EINTR))
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
    /// `Index::active`, readable without the lock.
    active: std::sync::atomic::AtomicU8,
    /// Files with blocks written without fdatasync, synced within
    /// [`LAZY_SYNC`].
    lazy: lazy_sync::LazySync,
}

/// With a `spool_max_size` below this, files are not preallocated nor
/// reused in place: the spool's files then take no more disk than its
/// blocks (the few MiB of free and partly written files would be a large
/// part of a small cap).
pub const IN_PLACE_MIN_CAP: u64 = 64 * MAX_FILE;

/// Where records go: the original backend (`server`) and the OTLP
/// destination (`otlp_endpoint`). The spool keeps a record until every
/// active destination has given it a final fate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dest {
    /// `server` (v2/v3 posting).
    Server,
    /// `otlp_endpoint` (OpenTelemetry logs over OTLP/HTTP).
    Otlp,
}

/// How many destinations there are.
pub const DESTS: usize = 2;
/// Per-record state bits (see `Segment::state`).
pub(crate) const FINAL: u8 = 1 << 6;
pub(crate) const RELEASED: u8 = 1 << 7;

impl Dest {
    pub const ALL: [Dest; DESTS] = [Dest::Server, Dest::Otlp];

    pub fn index(self) -> usize {
        self as usize
    }

    /// Its bit in a destination mask (and in a record's done bits).
    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// Its name in the journal (`delivered (otlp)`) and `telemctl status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Dest::Server => "server",
            Dest::Otlp => "otlp",
        }
    }

    /// The destinations `cfg` configures, as a mask; the server's bit when
    /// none is (records then stay local, see `consent`).
    pub fn mask(cfg: &crate::config::Config) -> u8 {
        let mut m = 0;
        if cfg.server.is_some() {
            m |= Dest::Server.bit();
        }
        if cfg.otlp.is_some() {
            m |= Dest::Otlp.bit();
        }
        if m == 0 {
            Dest::Server.bit()
        } else {
            m
        }
    }
}

/// A record handed out to one destination; give it back with
/// [`Spool::done`] once its fate there is final.
#[derive(Debug, Clone)]
pub struct Ticket {
    pub seq: u64,
    /// Its place in the block.
    pub idx: u32,
    pub dest: Dest,
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
    /// Files that held only expired blocks, untouched: recycle them
    /// ([`Spool::recycle`]) once the expired records' fates are journaled.
    pub expired_files: Vec<PathBuf>,
    /// The newest records kept (up to [`NEWEST`], oldest first): those
    /// whose journal entries a crash may have cut off.
    pub newest: Vec<Item>,
}

/// How many of the newest recovered records [`Recovered::newest`] holds.
pub const NEWEST: usize = 8192;

impl Spool {
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

    /// How many spool files wait for a lazy sync.
    #[cfg(test)]
    pub fn lazy_pending(&self) -> usize {
        self.lazy.len()
    }

    /// Bytes of the blocks waiting in the spool.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// Sets the destinations records wait for (a mask of [`Dest::bit`]).
    /// A destination added takes every record still spooled from the
    /// start; when one is removed, records final for the rest leave.
    pub fn set_destinations(&self, mask: u8) {
        let mut ix = self.lock();
        if ix.active == mask {
            return;
        }
        let shrunk = ix.active & !mask != 0;
        let added = mask & !ix.active;
        ix.active = mask;
        self.active.store(mask, std::sync::atomic::Ordering::Relaxed);
        if added != 0 {
            // A destination added (again) starts from the oldest record.
            for seg in ix.segments.iter_mut() {
                for d in Dest::ALL.iter().filter(|d| added & d.bit() != 0) {
                    seg.handed[d.index()] = 0;
                }
            }
        }
        if shrunk {
            let mut pos = 0;
            while pos < ix.segments.len() {
                let total = ix.segments[pos].total;
                for idx in 0..total {
                    let st = ix.segments[pos].state[idx as usize];
                    if st & FINAL == 0 && st & mask == mask {
                        self.finalize(&mut ix, pos, idx);
                    }
                }
                if ix.segments.get(pos).is_some_and(|s| s.outstanding == 0) {
                    self.remove_segment(&mut ix, pos);
                } else {
                    pos += 1;
                }
            }
        }
        drop(ix);
        self.room.notify_all();
    }

    /// Applies fates journaled before a restart: `finals` holds, per record
    /// id, the destinations ([`Dest::bit`]) at which it was final. A
    /// recovered record final at some destinations is not handed to them
    /// again; one final at every active destination leaves the spool.
    /// Returns how many records left.
    pub fn apply_finals(&self, finals: &std::collections::HashMap<RecordId, u8>) -> u64 {
        if finals.is_empty() {
            return 0;
        }
        let mut ix = self.lock();
        let mask = ix.active;
        let mut left = 0;
        let mut pos = 0;
        while pos < ix.segments.len() {
            for idx in 0..ix.segments[pos].total {
                let Some(bits) = ix.segments[pos].ids.get(idx as usize).and_then(|id| finals.get(id)).copied() else {
                    continue;
                };
                let st = &mut ix.segments[pos].state[idx as usize];
                *st |= bits & !(FINAL | RELEASED);
                if *st & mask == mask && self.finalize(&mut ix, pos, idx) {
                    left += 1;
                }
            }
            if ix.segments[pos].outstanding == 0 {
                self.remove_segment(&mut ix, pos);
            } else {
                pos += 1;
            }
        }
        drop(ix);
        self.room.notify_all();
        left
    }

    /// The destinations records wait for (read without the index lock,
    /// which the commits' acknowledgements take).
    pub fn destinations(&self) -> u8 {
        self.active.load(std::sync::atomic::Ordering::Relaxed)
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

    /// Whether `need` bytes fit under `max` with `spare` bytes left over,
    /// counting what commits in flight have reserved.
    pub fn has_room(&self, need: u64, max: Option<u64>, spare: u64) -> bool {
        let ix = self.lock();
        max.is_none_or(|m| ix.bytes + ix.reserved + need + spare <= m)
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
}
