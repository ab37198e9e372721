//! Handing records out for delivery and taking their fates back.

use std::fs::File;
use std::sync::Arc;
use std::time::Instant;

use super::*;

impl Spool {
    /// The next record for the original backend, FIFO; `None` when there
    /// is none now.
    pub fn next(&self) -> Option<Ticket> {
        match self.next_ticket(Dest::Server) {
            Next::Ready(t) => Some(t),
            Next::Empty | Next::Busy(_) => None,
        }
    }

    /// The next record to deliver to `dest`, FIFO (each destination takes
    /// the records in order at its own pace; records already final are
    /// skipped). A block no longer in memory is
    /// opened under the lock (the descriptor survives the housekeeper's
    /// rename) but read and decoded outside it, so commits (and their acks)
    /// never wait for that. A block that cannot be opened or read for want
    /// of a resource stays as it is ([`Next::Busy`]); one that cannot be
    /// read back at all is lost, and its records are counted and kept for
    /// [`take_lost`](Self::take_lost).
    pub fn next_ticket(&self, dest: Dest) -> Next {
        let d = dest.index();
        loop {
            let (seq, file, offset) = {
                let mut ix = self.lock();
                let active = ix.active;
                let over_cache = ix.cached > CACHE_BYTES;
                let Some(seg) = ix.segments.iter_mut().find(|s| s.handed[d] < s.total) else { return Next::Empty };
                // Records already final (for every destination, or at this
                // one) are not handed out again.
                while seg.handed[d] < seg.total && seg.state[seg.handed[d] as usize] & (FINAL | dest.bit()) != 0 {
                    seg.handed[d] += 1;
                }
                if seg.handed[d] >= seg.total {
                    continue;
                }
                if let Some(recs) = &seg.records {
                    let idx = seg.handed[d];
                    let Some(item) = recs.get(idx as usize).cloned() else { return Next::Empty };
                    seg.handed[d] += 1;
                    let seq = seg.seq;
                    // A destination ahead of another does not keep the blocks
                    // it is done with in memory beyond the cache's size: the
                    // one behind reads them again.
                    if seg.all_handed(active) || (seg.handed[d] >= seg.total && over_cache) {
                        // All handed out: each ticket holds its own record, so
                        // one that waits long (a retry) keeps only itself in
                        // memory, not its whole block.
                        seg.records = None;
                        let bytes = seg.bytes;
                        ix.cached = ix.cached.saturating_sub(bytes);
                    }
                    return Next::Ready(Ticket { seq, idx, dest, item });
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
            if seg.records.is_some() || seg.handed[d] >= seg.total {
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
    pub(super) fn lose(&self, ix: &mut Index, seq: u64, why: &str) {
        let Some(pos) = ix.segments.iter().position(|s| s.seq == seq) else { return };
        let seg = &mut ix.segments[pos];
        // Every record not final yet is lost, for every destination (those
        // handed out and in flight are final already when they come back).
        let mut ids = Vec::new();
        for (i, st) in seg.state.iter_mut().enumerate() {
            if *st & FINAL == 0 {
                *st |= FINAL;
                if let Some(id) = seg.ids.get(i) {
                    ids.push(*id);
                }
            }
        }
        let lost = ids.len() as u32;
        tracing::error!(
            "spool block {seq} (file {}) cannot be read back: {why}; its {lost} record(s) are lost",
            ix.files.get(&seg.file).map(|f| f.path.display().to_string()).unwrap_or_default(),
        );
        let seg = &mut ix.segments[pos];
        seg.handed = [seg.total; DESTS];
        seg.outstanding = seg.outstanding.saturating_sub(lost);
        let share = seg.release_share(lost);
        ix.bytes = ix.bytes.saturating_sub(share);
        ix.records = ix.records.saturating_sub(lost as u64);
        ix.lost.push(Lost { ids, why: format!("the spool block holding it cannot be read back: {why}") });
        ix.freed_at = Instant::now();
        if ix.segments[pos].outstanding == 0 {
            self.remove_segment(ix, pos);
        }
        self.room.notify_all();
    }

    /// Removes the block at `pos` (all its records final); its file goes
    /// back to the free pool when it was the file's last live block.
    pub(super) fn remove_segment(&self, ix: &mut Index, pos: usize) {
        let Some(seg) = ix.segments.remove(pos) else { return };
        ix.bytes = ix.bytes.saturating_sub(seg.counted);
        if seg.records.is_some() {
            ix.cached = ix.cached.saturating_sub(seg.bytes);
        }
        if let Some(p) = ix.release_block(seg.file, true) {
            self.send_house(House::Recycle(p));
        }
    }

    /// Record `idx` of the block at `pos` is final for every destination:
    /// it leaves the counts. False when it already was.
    pub(super) fn finalize(&self, ix: &mut Index, pos: usize, idx: u32) -> bool {
        let seg = &mut ix.segments[pos];
        let Some(st) = seg.state.get_mut(idx as usize) else { return false };
        if *st & FINAL != 0 {
            return false;
        }
        *st |= FINAL;
        seg.outstanding = seg.outstanding.saturating_sub(1);
        let share = seg.release_share(1);
        ix.records = ix.records.saturating_sub(1);
        ix.bytes = ix.bytes.saturating_sub(share);
        ix.freed_at = Instant::now();
        true
    }

    /// Whether the held record of `t` already took its room in the rate
    /// windows (at another destination): it takes it once, whichever
    /// destination sends it first ([`mark_released`](Self::mark_released)).
    pub fn released(&self, t: &Ticket) -> bool {
        let ix = self.lock();
        let seg = ix.segments.iter().find(|s| s.seq == t.seq);
        seg.and_then(|s| s.state.get(t.idx as usize)).is_some_and(|st| st & RELEASED != 0)
    }

    /// The held record of `t` took its room in the rate windows. (Two
    /// destinations releasing it at the same moment both count it: the
    /// windows err on the side of fewer records, never more.)
    pub fn mark_released(&self, t: &Ticket) {
        let mut ix = self.lock();
        let seg = ix.segments.iter_mut().find(|s| s.seq == t.seq);
        if let Some(st) = seg.and_then(|s| s.state.get_mut(t.idx as usize)) {
            *st |= RELEASED;
        }
    }

    /// Records lost since the last call (blocks that could not be read
    /// back), for the journal and the `dropped` count.
    pub fn take_lost(&self) -> Vec<Lost> {
        std::mem::take(&mut self.lock().lost)
    }

    /// The fate of a handed-out record is final at its destination; once
    /// it is final at every active destination it leaves the spool. A block
    /// whose records are all final is dropped, and a file whose blocks all
    /// are goes back to the free pool.
    pub fn done(&self, t: &Ticket) {
        let mut ix = self.lock();
        let active = ix.active;
        let Some(pos) = ix.segments.iter().position(|s| s.seq == t.seq) else { return };
        let seg = &mut ix.segments[pos];
        let Some(st) = seg.state.get_mut(t.idx as usize) else { return };
        *st |= t.dest.bit();
        if *st & active != active || !self.finalize(&mut ix, pos, t.idx) {
            return;
        }
        if ix.segments[pos].outstanding == 0 {
            self.remove_segment(&mut ix, pos);
        }
        drop(ix);
        self.room.notify_all();
    }

    /// Removes blocks accepted before `before` (unix seconds) that have
    /// nothing handed out; returns their records. Nothing changes on disk
    /// yet: the files it frees are handed back in [`Expired::files`], to be
    /// recycled ([`Spool::recycle`]) once the records' fates are journaled,
    /// so a collector killed in between finds them still spooled (and
    /// expires them again at start) rather than gone without a word.
    pub fn expire(&self, before: u64) -> Expired {
        let mut out = Vec::new();
        let mut recycle = Vec::new();
        let mut ix = self.lock();
        while let Some(seg) = ix.segments.front() {
            if seg.accepted >= before || seg.handed.iter().any(|h| *h > 0) {
                break;
            }
            let Some(seg) = ix.segments.pop_front() else { break };
            ix.bytes = ix.bytes.saturating_sub(seg.counted);
            ix.freed_at = Instant::now();
            ix.records = ix.records.saturating_sub(seg.outstanding as u64);
            match seg.records {
                Some(r) => {
                    ix.cached = ix.cached.saturating_sub(seg.bytes);
                    out.extend(
                        r.iter().zip(seg.state.iter()).filter(|(_, st)| **st & FINAL == 0).map(|(i, _)| (**i).clone()),
                    );
                }
                None => {
                    let read = ix
                        .files
                        .get(&seg.file)
                        .and_then(|f| File::open(&f.path).ok())
                        .map(|f| read_block_at(&f, seg.offset));
                    if let Some(Ok(s)) = read {
                        out.extend(
                            s.items
                                .into_iter()
                                .zip(seg.state.iter())
                                .filter(|(_, st)| **st & FINAL == 0)
                                .map(|(i, _)| i),
                        );
                    }
                }
            }
            if let Some(p) = ix.release_block(seg.file, false) {
                recycle.push(p);
            }
        }
        drop(ix);
        self.room.notify_all();
        Expired { items: out, files: recycle }
    }

    /// Files [`expire`](Self::expire) freed, back to the free pool.
    pub fn recycle(&self, files: Vec<PathBuf>) {
        for p in files {
            self.send_house(House::Recycle(p));
        }
    }
}

/// What [`Spool::expire`] took out.
#[derive(Debug, Default)]
pub struct Expired {
    pub items: Vec<Item>,
    /// Spool files with no live block left, for [`Spool::recycle`] once
    /// the items' fates are written.
    pub files: Vec<PathBuf>,
}
