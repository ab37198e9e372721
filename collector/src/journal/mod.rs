//! Stage: the journal, an append-only file of JSON lines under
//! `journal_dir` (`journal`, rotated to `journal.1` past 32 MiB).
//!
//! Every accepted record gets one entry (record id, time, classification,
//! event id, boot id, sender uid/pid, severity, fate, and the payload when
//! `record_retention_enabled`). Later fates (delivered, rejected by the
//! server, expired) are appended as short entries naming the same record id;
//! readers keep the last fate. Stages queue [`Line`]s (which borrow the
//! accepted record, so nothing is copied for the journal); one writer
//! thread turns whatever is queued into one write and one `fdatasync`
//! (group commit) and then tells the waiters. Lines nobody waits for
//! (records already durable in the spool, later fates) are gathered for
//! [`GATHER`] before they are written, without waking the writer per
//! append, and are fsync'd within [`LAZY_SYNC`]. `telemctl journal` reads
//! the files back through [`read`].

use std::path::PathBuf;

use thiserror::Error;

mod entry;
mod prune;
mod reader;
#[cfg(test)]
mod tests;
mod writer;

pub use entry::*;
pub use prune::*;
pub use reader::*;
pub use writer::*;

/// Past this size the journal is rotated.
pub const ROTATE_BYTES: u64 = 32 << 20;
pub const FILE_NAME: &str = "journal";
pub const OLD_FILE_NAME: &str = "journal.1";

/// Why the journal cannot be written or read.
#[derive(Debug, Error)]
pub enum JournalError {
    #[error("cannot open the journal {path}: {source} (check journal_dir and its permissions)")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("cannot write the journal {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("the journal writer has stopped")]
    Stopped,
}

/// Journal files are readable by their owner only (the daemon's user,
/// root): they hold payloads.
pub const FILE_MODE: u32 = 0o600;
