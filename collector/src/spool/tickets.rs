//! Handing records out for delivery and taking their fates back.

use std::fs::File;
use std::sync::Arc;
use std::time::Instant;
use telemetry::RecordId;

use super::*;

impl Spool {
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
    pub(super) fn lose(&self, ix: &mut Index, seq: u64, why: &str) {
        let Some(pos) = ix.segments.iter().position(|s| s.seq == seq) else { return };
        let seg = &mut ix.segments[pos];
        let lost = seg.total - seg.handed;
        let ids: Vec<RecordId> = seg.ids.get(seg.handed as usize..).map(|s| s.to_vec()).unwrap_or_default();
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
