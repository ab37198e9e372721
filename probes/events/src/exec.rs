//! Executables held open while their processes live, so that a binary
//! deleted or replaced after `exec` still unwinds when its process crashes
//! (the kernel names the crashing process's files by device and inode; a
//! deleted file has no path left to open).
//!
//! Each `sched:sched_process_exec` event gives the pid and the identity of
//! its executable; the first process of an executable has its file opened
//! through `/proc/PID/exe` (checked against that identity) and later ones
//! only join the entry. Bounded: at most [`MAX_HELD`] executables (the
//! least recently exec'd goes first), and an executable whose processes
//! have all exited for two sweeps in a row is closed.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::time::Instant;

use crate::modules::inode_key;

/// Most executables held open at once.
pub const MAX_HELD: usize = 1024;

struct Held {
    file: File,
    /// A set: thousands of short processes of one executable may exec
    /// between two sweeps.
    pids: HashSet<u32>,
    last: Instant,
    dead_sweeps: u8,
}

/// The executables held open, by (device, inode).
#[derive(Default)]
pub struct HeldExes {
    by_file: HashMap<(u64, u64), Held>,
}

fn alive(pid: u32) -> bool {
    let Ok(p) = i32::try_from(pid) else { return false };
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(p, 0) == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) }
}

impl HeldExes {
    /// A process `pid` exec'd the file `(dev, ino)`.
    pub fn exec(&mut self, pid: u32, dev: (u32, u32), ino: u64) {
        let key = inode_key(dev, ino);
        let now = Instant::now();
        if let Some(h) = self.by_file.get_mut(&key) {
            h.pids.insert(pid);
            h.last = now;
            h.dead_sweeps = 0;
            return;
        }
        let Ok(file) = File::open(format!("/proc/{pid}/exe")) else { return };
        let same = file.metadata().is_ok_and(|md| {
            md.file_type().is_file() && inode_key((libc::major(md.dev()), libc::minor(md.dev())), md.ino()) == key
        });
        if !same {
            return;
        }
        if self.by_file.len() >= MAX_HELD {
            if let Some(oldest) = self.by_file.iter().min_by_key(|(_, h)| h.last).map(|(k, _)| *k) {
                self.by_file.remove(&oldest);
            }
        }
        self.by_file.insert(key, Held { file, pids: HashSet::from([pid]), last: now, dead_sweeps: 0 });
    }

    /// The held file of `(dev, ino)` (the key of `modules::inode_key`).
    pub fn get(&self, key: (u64, u64)) -> Option<File> {
        self.by_file.get(&key).and_then(|h| h.file.try_clone().ok())
    }

    /// Forgets exited processes; closes executables none of whose
    /// processes lived at this sweep and the one before.
    pub fn sweep(&mut self) {
        self.by_file.retain(|_, h| {
            h.pids.retain(|&p| alive(p));
            if h.pids.is_empty() {
                h.dead_sweeps = h.dead_sweeps.saturating_add(1);
            }
            h.dead_sweeps < 2
        });
    }

    pub fn len(&self) -> usize {
        self.by_file.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_file.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_own_exe_and_releases_it_after_two_dead_sweeps() {
        let me = std::process::id();
        let md = std::fs::metadata("/proc/self/exe").unwrap();
        let dev = (libc::major(md.dev()), libc::minor(md.dev()));
        let mut h = HeldExes::default();
        h.exec(me, dev, md.ino() + 1);
        assert!(h.is_empty(), "a file whose identity differs is not held");
        h.exec(me, dev, md.ino());
        assert_eq!(h.len(), 1);
        assert!(h.get(inode_key(dev, md.ino())).is_some());
        h.sweep();
        h.sweep();
        assert_eq!(h.len(), 1, "its process lives");
        // A pid that does not exist: the entry goes after two sweeps.
        h.by_file.values_mut().for_each(|x| x.pids = HashSet::from([u32::MAX]));
        h.sweep();
        assert_eq!(h.len(), 1);
        h.sweep();
        assert!(h.is_empty());
    }
}
