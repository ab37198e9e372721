//! Committing a block: a writer file, the write, the fdatasync.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

impl Spool {
    /// Writes `items` as one block, durably (fdatasync), and queues them
    /// for delivery. `body` holds their [`encode_item`] encodings;
    /// `reserved` bytes (from [`reserve`](Self::reserve)) are released.
    /// A resource that runs out for a while (no file descriptor left) is
    /// waited out, up to [`TRANSIENT_WAIT`]: a record is not refused for it.
    pub fn commit(&self, items: Vec<Arc<Item>>, body: &[u8], reserved: u64) -> Result<u64, SpoolError> {
        let deadline = Instant::now() + TRANSIENT_WAIT;
        let r = loop {
            match self.commit_inner(&items, body) {
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
    pub(super) fn take_writer(&self) -> Result<(u64, File, u64, u64), SpoolError> {
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

    pub(super) fn commit_inner(&self, items: &[Arc<Item>], body: &[u8]) -> Result<u64, SpoolError> {
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
                records: cache.then(|| items.to_vec()),
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
}
