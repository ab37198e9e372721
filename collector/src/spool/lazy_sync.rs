//! Blocks written without their own fdatasync (records under
//! `spool_sync_severity`): each spool file holding such a block is synced
//! by the housekeeper once [`LAZY_SYNC`] has passed since the first of
//! them, or at once when a durable block goes into the same file. Until
//! then the blocks are in the page cache: a killed collector loses none;
//! a power loss may lose those written in the last [`LAZY_SYNC`].

use std::fs::File;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A block written without fdatasync is made durable within this.
pub const LAZY_SYNC: Duration = Duration::from_millis(100);

/// Spool files with blocks not yet synced.
#[derive(Default)]
pub(super) struct LazySync {
    pending: Mutex<Vec<Pending>>,
}

struct Pending {
    file: u64,
    /// A handle of its own (the writer's may be closed meanwhile).
    handle: File,
    due: Instant,
}

impl LazySync {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Spool file `file` (open as `f`) got a block without fdatasync:
    /// `Ok(true)` when nothing was pending before (the housekeeper must be
    /// told of the new deadline). A handle that cannot be made (no
    /// descriptor left) is an error: the caller syncs now instead.
    pub(super) fn add(&self, file: u64, f: &File) -> std::io::Result<bool> {
        let mut p = self.lock();
        if p.iter().any(|x| x.file == file) {
            return Ok(false);
        }
        let handle = f.try_clone()?;
        p.push(Pending { file, handle, due: Instant::now() + LAZY_SYNC });
        Ok(p.len() == 1)
    }

    /// `file` was just synced whole (a durable block's fdatasync).
    pub(super) fn synced(&self, file: u64) {
        self.lock().retain(|x| x.file != file);
    }

    /// How many files wait for their sync.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    /// When the next sync is due.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.lock().iter().map(|x| x.due).min()
    }

    /// Syncs the files due by `now` (every file with `now == None`).
    pub(super) fn sync_due(&self, now: Option<Instant>) {
        let due: Vec<Pending> = {
            let mut p = self.lock();
            let (due, rest) = std::mem::take(&mut *p).into_iter().partition(|x| now.is_none_or(|n| x.due <= n));
            *p = rest;
            due
        };
        for x in due {
            if let Err(e) = x.handle.sync_data() {
                tracing::error!(
                    "cannot fdatasync spool file {}: {e}; records accepted in the last {} ms may not survive a power loss",
                    x.file,
                    LAZY_SYNC.as_millis()
                );
            }
        }
    }
}
