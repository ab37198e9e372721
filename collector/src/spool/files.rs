//! Spool files on disk: the free pool, preallocation, recycling, free space.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::*;

/// Preallocated free files kept ready.
pub(super) const POOL: usize = 2;
/// Most free files kept (finished files beyond it are unlinked).
pub(super) const POOL_MAX: usize = 8;

/// A random epoch for a new use of a spool file.
pub(super) fn new_epoch() -> u64 {
    let mut e = [0u8; 8];
    e.copy_from_slice(&telemetry::EventId::random().as_bytes()[..8]);
    u64::from_le_bytes(e)
}

pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Makes a spool file whose blocks are all final a free file again: its
/// first header is zeroed (so none of its blocks is valid any more) and it
/// is renamed `free-N`, ready for the next commit to write over. Neither
/// step is synced: after a crash the file may still hold its old,
/// delivered blocks under either name, and they are delivered again (at
/// least once, as when an unlink is lost). Blocks written over it later
/// are made durable by their own fdatasync and carry a new epoch, so
/// recovery never takes the old blocks behind them for new ones.
pub(super) fn recycle(spool: &Spool, path: &Path) {
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
pub(super) fn free_space(dir: &Path) -> Option<u64> {
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
pub(super) const PREALLOC_MIN_FREE: u64 = 64 * MAX_FILE;

/// Makes a free file of [`MAX_FILE`] zeros, written and synced.
pub(super) fn preallocate(p: &Path) -> std::io::Result<()> {
    let f = OpenOptions::new().write(true).create_new(true).open(p)?;
    let zeros = vec![0u8; 256 << 10];
    let mut at = 0u64;
    while at < MAX_FILE {
        f.write_all_at(&zeros, at)?;
        at += zeros.len() as u64;
    }
    f.sync_data()
}
