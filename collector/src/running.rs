//! The "running" mark: did the host go down under the previous run?
//!
//! Records under `spool_sync_severity` are acknowledged once written and
//! `fdatasync`'d within 100 ms (`spool::lazy_sync`), as the journal's lazy
//! lines are. A killed collector loses none of them (the page cache
//! survives it); a power loss, kernel crash or hard reset in those 100 ms
//! may, and then nothing on disk names what is gone. So the collector says
//! that it may have happened: at start it writes, and syncs, this boot's id
//! to `state_dir/telem-collector.running`, and removes the file when it
//! stops cleanly. A start that finds the file with another boot's id knows
//! the previous run ended with its host: it logs a warning and `telemctl
//! status` shows it (`host_went_down`) until the next start. A file with
//! this boot's id is a killed collector: nothing can have been lost.
//!
//! ```text
//!  start: read mark ──(other boot)──▶ warning + status.host_went_down
//!         write mark (boot id, fdatasync, directory fsync)
//!  clean stop: remove mark
//! ```

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The mark's file name under `state_dir`.
pub const FILE_NAME: &str = "telem-collector.running";

/// The mark's path.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// What a start found of the previous run, from the mark left in
/// `state_dir`: the boot the host went down in while that run was
/// serving, or `None` (a clean stop, a first start, or a killed
/// collector of this boot).
pub fn host_went_down(state_dir: &Path, this_boot: &str) -> Option<String> {
    let previous = std::fs::read_to_string(path(state_dir)).ok()?;
    let previous = previous.trim();
    (previous != this_boot).then(|| previous.to_string())
}

/// The sentence status and the log give for [`host_went_down`].
pub fn warning(boot: &str) -> String {
    let boot = if boot.is_empty() { "an earlier boot" } else { boot };
    format!(
        "the host went down while the collector was running (boot {boot}): records below \
         spool_sync_severity acknowledged in its last 100 ms, and journal lines of its last \
         100 ms, may be lost (set spool_sync_severity=1 to sync every record before its ack)"
    )
}

/// Writes this boot's mark, durably (the file and its directory).
pub fn mark(state_dir: &Path, this_boot: &str) -> std::io::Result<()> {
    let p = path(state_dir);
    let mut f = File::create(&p)?;
    f.write_all(format!("{this_boot}\n").as_bytes())?;
    f.sync_data()?;
    File::open(state_dir)?.sync_all()
}

/// A clean stop: the mark goes.
pub fn clear(state_dir: &Path) {
    let _ = std::fs::remove_file(path(state_dir));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_mark_of_another_boot_says_the_host_went_down() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(host_went_down(d.path(), "b1"), None, "first start");
        mark(d.path(), "b1").unwrap();
        assert_eq!(host_went_down(d.path(), "b1"), None, "a killed collector of this boot");
        assert_eq!(host_went_down(d.path(), "b2"), Some("b1".into()), "the host went down in b1");
        clear(d.path());
        assert_eq!(host_went_down(d.path(), "b2"), None, "a clean stop");
        assert!(warning("b1").contains("boot b1"));
    }
}
