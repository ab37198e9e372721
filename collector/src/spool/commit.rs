//! Committing a block: a writer file, the write, the fdatasync (now, or
//! within [`LAZY_SYNC`]: [`Fsync`]).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

impl Spool {
    /// Writes `items` as one block, durably (fdatasync), and queues them
    /// for delivery: [`write`](Self::write) then [`publish`](Self::publish).
    pub fn commit(&self, items: Vec<Arc<Item>>, body: &[u8], reserved: u64) -> Result<u64, SpoolError> {
        let w = self.write(items, body, reserved, Fsync::Now)?;
        let seq = w.seq();
        self.publish(w);
        Ok(seq)
    }

    /// Writes `items` as one block, synced as `fsync` says, not yet visible to
    /// delivery: the store stage journals them first, then
    /// [`publish`](Self::publish)es the block (so a record's first journal
    /// entry always precedes the fates delivery gives it). `body` holds
    /// their [`encode_item`] encodings; `reserved` bytes (from
    /// [`reserve`](Self::reserve)) stay reserved until it is published. A resource that runs out
    /// for a while (no file descriptor left) is waited out, up to
    /// [`TRANSIENT_WAIT`]: a record is not refused for it.
    pub fn write(
        &self,
        items: Vec<Arc<Item>>,
        body: &[u8],
        reserved: u64,
        fsync: Fsync,
    ) -> Result<Written, SpoolError> {
        let deadline = Instant::now() + TRANSIENT_WAIT;
        let r = loop {
            match self.write_block(&items, body, fsync) {
                Err(SpoolError::Write { source, .. }) if is_transient(&source) && Instant::now() < deadline => {
                    tracing::debug!("spool commit waits: {source}");
                    std::thread::sleep(Duration::from_millis(20));
                }
                r => break r,
            }
        };
        match r {
            Ok(block) => Ok(Written { block, items, reserved }),
            Err(e) => {
                self.release(reserved);
                Err(e)
            }
        }
    }

    /// Gives `reserved` bytes of room back.
    fn release(&self, reserved: u64) {
        let mut ix = self.lock();
        ix.reserved = ix.reserved.saturating_sub(reserved);
        drop(ix);
        self.room.notify_all();
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

    fn write_block(&self, items: &[Arc<Item>], body: &[u8], fsync: Fsync) -> Result<Block, SpoolError> {
        let accepted = items.iter().map(|i| i.accepted).max().unwrap_or(0);
        let (file, f, offset, epoch) = self.take_writer()?;
        let seq = {
            let mut ix = self.lock();
            ix.next_seq += 1;
            ix.next_seq - 1
        };
        let h = header(seq, epoch, items.len() as u32, accepted, body);
        let written = write_two_at(&f, &h, body, offset).and_then(|()| match fsync {
            Fsync::Lazy => match self.lazy.add(file, &f) {
                Ok(first) => {
                    if first {
                        self.send_house(House::LazySync);
                    }
                    Ok(())
                }
                // No handle for the housekeeper (no descriptor left): now.
                Err(_) => f.sync_data(),
            },
            Fsync::Now => f.sync_data().map(|()| self.lazy.synced(file)),
        });
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
        Ok(Block { file, f, offset, seq, accepted, bytes: (HEADER_LEN + body.len()) as u64 })
    }

    /// Makes a written block visible to delivery.
    pub fn publish(&self, w: Written) {
        let Written { block: Block { file, f, offset, seq, accepted, bytes }, items, reserved } = w;
        let mut rename = false;
        {
            let mut ix = self.lock();
            let cache = ix.cached + bytes <= CACHE_BYTES;
            if cache {
                ix.cached += bytes;
            }
            let n = items.len() as u32;
            let n_items = items.len();
            let seg = Segment {
                seq,
                file,
                offset,
                bytes,
                accepted,
                total: n,
                handed: [0; DESTS],
                state: vec![0u8; n_items].into_boxed_slice(),
                outstanding: n,
                counted: bytes,
                ids: items.iter().map(|i| i.record_id).collect(),
                records: cache.then(|| items.to_vec()),
            };
            ix.bytes += bytes;
            ix.records += n as u64;
            // The room reserved for it is now taken by it.
            ix.reserved = ix.reserved.saturating_sub(reserved);
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
        self.room.notify_all();
        if rename {
            self.send_house(House::Rename { file, seq });
        }
    }
}

/// When a block written to the spool is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// fdatasync before [`Spool::write`] returns (before the ack).
    Now,
    /// Written before it returns (a killed process loses nothing), synced
    /// by the housekeeper within [`LAZY_SYNC`].
    Lazy,
}

/// Where a block was written.
struct Block {
    file: u64,
    f: File,
    offset: u64,
    seq: u64,
    accepted: u64,
    bytes: u64,
}

/// A block written durably and not yet published (see [`Spool::write`]).
#[must_use = "a written block reaches delivery only once published"]
pub struct Written {
    block: Block,
    items: Vec<Arc<Item>>,
    reserved: u64,
}

impl Written {
    /// The block's sequence number.
    pub fn seq(&self) -> u64 {
        self.block.seq
    }
}

/// Writes `a` then `b` at `offset` in one `pwritev` (one pass through the
/// filesystem's write path instead of two), finishing what a short write
/// left.
fn write_two_at(f: &File, a: &[u8], b: &[u8], offset: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let iov = [
        libc::iovec { iov_base: a.as_ptr() as *mut libc::c_void, iov_len: a.len() },
        libc::iovec { iov_base: b.as_ptr() as *mut libc::c_void, iov_len: b.len() },
    ];
    let at = libc::off_t::try_from(offset).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let n = loop {
        // SAFETY: both iovecs point into live slices of the given lengths,
        // only read during the call, on a descriptor `f` keeps open.
        let r = unsafe { libc::pwritev(f.as_raw_fd(), iov.as_ptr(), 2, at) };
        if r >= 0 {
            break r as usize;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    if n < a.len() {
        f.write_all_at(&a[n..], offset + n as u64)?;
        f.write_all_at(b, offset + a.len() as u64)
    } else if n - a.len() < b.len() {
        f.write_all_at(&b[n - a.len()..], offset + n as u64)
    } else {
        Ok(())
    }
}
