//! The in-memory index of the spool: its blocks (segments) and files.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use telemetry::RecordId;

use super::*;

/// One group commit in a spool file.
pub(super) struct Segment {
    pub(super) seq: u64,
    /// The spool file (key of `Index::files`) and where the block starts.
    pub(super) file: u64,
    pub(super) offset: u64,
    pub(super) bytes: u64,
    pub(super) accepted: u64,
    pub(super) total: u32,
    /// Records handed out, per destination ([`Dest`]): each destination
    /// takes the block's records in order at its own pace.
    pub(super) handed: [u32; DESTS],
    /// Per record: [`DONE`] bits of the destinations whose fate is final,
    /// [`FINAL`] once it is final for every active destination (it then
    /// left `outstanding`), [`RELEASED`] once it took its room in the rate
    /// windows (a held record is counted once, whichever destination sends
    /// it first).
    pub(super) state: Box<[u8]>,
    /// Records not final.
    pub(super) outstanding: u32,
    /// Bytes of this block still counted in `Index::bytes`: each record
    /// that becomes final takes its share off, so a record that waits
    /// long (a retry) holds only its own share of the cap, not its block's.
    pub(super) counted: u64,
    /// The records' ids, so a block that cannot be read back is still
    /// journaled record by record.
    pub(super) ids: Box<[RecordId]>,
    pub(super) records: Option<Vec<Arc<Item>>>,
}

impl Segment {
    /// Takes `n` records' share of the block's bytes off its count; the
    /// last record takes what is left. Returns the bytes taken.
    pub(super) fn release_share(&mut self, n: u32) -> u64 {
        let share = if self.outstanding == 0 {
            self.counted
        } else {
            (self.bytes / self.total.max(1) as u64).saturating_mul(n as u64).min(self.counted)
        };
        self.counted -= share;
        share
    }
}

/// A spool file holding blocks.
pub(super) struct SpoolFile {
    pub(super) path: PathBuf,
    /// This use's epoch (in every block header).
    pub(super) epoch: u64,
    /// Bytes written (where the next block goes).
    pub(super) len: u64,
    /// Blocks not yet final.
    pub(super) live: u32,
    /// Takes more blocks (it is in `Index::writers`, or a committer holds it).
    pub(super) open: bool,
    /// Named after its first block already (`seg-SEQ`).
    pub(super) named: bool,
}

pub(super) struct Index {
    pub(super) segments: VecDeque<Segment>,
    pub(super) files: HashMap<u64, SpoolFile>,
    /// Open spool files no committer is appending to right now.
    pub(super) writers: Vec<(u64, File)>,
    pub(super) next_file: u64,
    pub(super) free: Vec<PathBuf>,
    pub(super) next_seq: u64,
    pub(super) next_free: u64,
    pub(super) bytes: u64,
    pub(super) records: u64,
    pub(super) cached: u64,
    /// Bytes reserved by commits in flight.
    pub(super) reserved: u64,
    /// Records of blocks that could not be read back, not yet journaled.
    pub(super) lost: Vec<Lost>,
    /// When a record last left the spool (room was freed).
    pub(super) freed_at: Instant,
    /// An idle spool file whose blocks are all final and that holds at
    /// most this many bytes is started over in place (see `release_block`).
    pub(super) rewind_max: u64,
    /// The destinations records wait for (bit [`Dest::bit`] each).
    pub(super) active: u8,
}

impl Segment {
    /// Every active destination has handed out all of the block's records.
    pub(super) fn all_handed(&self, active: u8) -> bool {
        Dest::ALL.iter().filter(|d| active & d.bit() != 0).all(|d| self.handed[d.index()] >= self.total)
    }
}

impl Index {
    /// One block of `file` is final; the file's path when the file can go
    /// back to the free pool (no live blocks and it takes no more).
    /// `rewind`: an idle small file may instead be started over in place
    /// (which zeroes its first header now); without it the file is retired,
    /// and nothing on disk changes until its path is recycled.
    pub(super) fn release_block(&mut self, file: u64, rewind: bool) -> Option<PathBuf> {
        let f = self.files.get_mut(&file)?;
        f.live = f.live.saturating_sub(1);
        if f.live > 0 {
            return None;
        }
        if f.open && !rewind {
            let pos = self.writers.iter().position(|(id, _)| *id == file)?;
            self.writers.swap_remove(pos);
        } else if f.open {
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
