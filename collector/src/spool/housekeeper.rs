//! The housekeeper thread: renames, recycling and refilling the free pool,
//! off the ack path.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Instant;

use super::*;

pub(super) enum House {
    /// A file got its first block (sequence number `seq`): name it after it.
    Rename {
        file: u64,
        seq: u64,
    },
    Refill,
    /// A spool file whose blocks are all final: made a free file again, or
    /// unlinked when the pool is full.
    Recycle(PathBuf),
    /// A block was written without fdatasync and nothing else waited for
    /// one: sync it by its deadline (see `lazy_sync`).
    LazySync,
    /// Answer once everything asked before is done.
    Flush(mpsc::Sender<()>),
}

pub(super) fn housekeeper(spool: std::sync::Weak<Spool>, rx: mpsc::Receiver<House>) {
    loop {
        // Asleep until told, or until a lazy sync is due.
        let due = match spool.upgrade() {
            Some(s) => s.lazy.next_due(),
            None => return,
        };
        let first = match due {
            Some(due) => match rx.recv_timeout(due.saturating_duration_since(Instant::now())) {
                Ok(m) => Some(m),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            },
            None => match rx.recv() {
                Ok(m) => Some(m),
                Err(_) => return,
            },
        };
        let mut msgs: Vec<House> = first.into_iter().collect();
        while let Ok(m) = rx.try_recv() {
            msgs.push(m);
        }
        let Some(spool) = spool.upgrade() else { return };
        spool.lazy.sync_due(Some(Instant::now()));
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
                House::Refill | House::LazySync => {}
                House::Flush(done) => {
                    // Everything written before is durable too.
                    spool.lazy.sync_due(None);
                    flushed.push(done)
                }
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
