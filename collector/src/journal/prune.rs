//! Local retention: pruning the journal by age and record count.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use super::*;

/// Local retention (`local_retention_days`, `local_retention_records`):
/// what [`prune()`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Records first journaled more than this many seconds ago are pruned.
    pub max_age_secs: u64,
    /// At most this many records are kept (the newest).
    pub max_records: u64,
}

impl Retention {
    pub fn from_config(cfg: &crate::config::Config) -> Retention {
        Retention {
            max_age_secs: u64::from(cfg.local_retention_days) * 86_400,
            max_records: cfg.local_retention_records,
        }
    }
}

/// How often the writer prunes (also once at open).
pub const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// What [`prune()`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub kept: u64,
    pub removed: u64,
}

/// Removes from `journal.1` and `journal` every record (its first entry,
/// its retained payload and its later fates) first journaled before
/// `now - max_age_secs`, and the oldest beyond `max_records`. Rewrites the
/// journal only when something goes: `journal.tmp`, fsync, rename over
/// `journal`, remove `journal.1`, fsync the directory. The writer thread
/// calls it (and reopens its file); `now` is explicit for tests.
pub fn prune(dir: &Path, now: u64, r: &Retention) -> Result<Pruned, JournalError> {
    let mut lines: Vec<(String, Vec<u8>)> = Vec::new();
    let mut firsts: Vec<(String, u64)> = Vec::new();
    let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
    super::reader::for_each_entry(dir, |e, line| {
        if e.class.is_some() && seen.insert(e.id.clone()) {
            firsts.push((e.id.clone(), e.time));
        }
        lines.push((e.id, line));
    })?;
    let cutoff = now.saturating_sub(r.max_age_secs);
    let young: Vec<&(String, u64)> = firsts.iter().filter(|(_, t)| *t >= cutoff).collect();
    let skip = young.len().saturating_sub(r.max_records as usize);
    let keep: std::collections::HashSet<&str> = young[skip..].iter().map(|(id, _)| id.as_str()).collect();
    let removed = (firsts.len() - keep.len()) as u64;
    let dropped_lines = lines.iter().any(|(id, _)| !keep.contains(id.as_str()));
    if !dropped_lines && !dir.join(OLD_FILE_NAME).exists() {
        return Ok(Pruned { kept: keep.len() as u64, removed });
    }
    let tmp = dir.join("journal.tmp");
    let werr = |source| JournalError::Write { path: tmp.clone(), source };
    // (A leftover of a crash keeps its mode: made anew.)
    let _ = std::fs::remove_file(&tmp);
    let tmp_file = {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new().write(true).create(true).truncate(true).mode(FILE_MODE).open(&tmp).map_err(werr)?
    };
    let mut out = std::io::BufWriter::new(tmp_file);
    for (id, line) in &lines {
        if keep.contains(id.as_str()) {
            out.write_all(line).and_then(|()| out.write_all(b"\n")).map_err(werr)?;
        }
    }
    let f = out.into_inner().map_err(|e| werr(e.into_error()))?;
    f.sync_all().map_err(werr)?;
    std::fs::rename(&tmp, dir.join(FILE_NAME)).map_err(werr)?;
    match std::fs::remove_file(dir.join(OLD_FILE_NAME)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(werr(e)),
        _ => {}
    }
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(Pruned { kept: keep.len() as u64, removed })
}
