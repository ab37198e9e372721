//! Reading the journal back: its tail on start, and the merged records
//! `telemctl journal` shows.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use telemetry::RecordId;

use serde::Serialize;
use telemetry::EventId;

use super::*;

/// The end of the journal: the record ids of its last first entries
/// (within the last [`TAIL_BYTES`] of `journal`), the newest entry time,
/// and the destinations at which records got a final fate there (bits of
/// [`crate::spool::Dest::bit`]; `u8::MAX`: final everywhere).
#[derive(Debug, Default)]
pub struct Tail {
    pub ids: std::collections::HashSet<RecordId>,
    pub newest: Option<u64>,
    pub finals: HashMap<RecordId, u8>,
}

/// The destinations a journaled fate is final at (`Dest::bit`s; `u8::MAX`
/// for a drop of the whole record), or 0 when it is not final
/// (`spooled`, `rate-limited: ...`, `local-only: ...`).
pub fn final_at(fate: &str) -> u8 {
    use crate::spool::Dest;
    let head = fate.split(':').next().unwrap_or(fate);
    let (word, dest) = match head.strip_suffix(" (otlp)") {
        Some(w) => (w, Some(Dest::Otlp)),
        None => (head, None),
    };
    match (word, dest) {
        ("delivered" | "rejected-by-server", None) => Dest::Server.bit(),
        ("delivered" | "rejected-by-server" | "dropped", Some(d)) => d.bit(),
        ("dropped", None) => u8::MAX,
        _ => 0,
    }
}

/// How much of the journal's end [`tail`] reads.
pub const TAIL_BYTES: u64 = 8 << 20;

/// Reads the end of `dir/journal` (see [`Tail`]).
pub fn tail(dir: &Path) -> Result<Tail, JournalError> {
    use std::io::{Seek, SeekFrom};
    let path = dir.join(FILE_NAME);
    let mut f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Tail::default()),
        Err(source) => return Err(JournalError::Open { path, source }),
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let from = len.saturating_sub(TAIL_BYTES);
    f.seek(SeekFrom::Start(from)).map_err(|source| JournalError::Open { path: path.clone(), source })?;
    let mut out = Tail::default();
    let mut lines = BufReader::new(f).split(b'\n');
    if from > 0 {
        // Most likely the middle of a line.
        lines.next();
    }
    for line in lines {
        let line = line.map_err(|source| JournalError::Open { path: path.clone(), source })?;
        let Ok(e) = serde_json::from_slice::<Entry>(&line) else { continue };
        out.newest = out.newest.max(Some(e.time));
        let Ok(id) = e.id.parse::<EventId>() else { continue };
        let id = RecordId::from_bytes(*id.as_bytes());
        if e.class.is_some() {
            out.ids.insert(id);
        }
        let bits = final_at(&e.fate);
        if bits != 0 {
            *out.finals.entry(id).or_insert(0) |= bits;
        }
    }
    Ok(out)
}

/// One record as the journal knows it: its first entry with the last fate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Merged {
    #[serde(flatten)]
    pub entry: Entry,
    /// Unix seconds of the last fate.
    pub fate_time: u64,
}

/// Reads `journal.1` then `journal` and merges fate updates into their
/// records, in the order records were first journaled. A torn last line
/// (crash while writing) is skipped.
pub fn read(dir: &Path) -> Result<Vec<Merged>, JournalError> {
    let mut out: Vec<Merged> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for_each_entry(dir, |e, _| match index.get(&e.id) {
        Some(&i) if e.class.is_none() => {
            out[i].entry.fate = e.fate;
            out[i].fate_time = e.time;
        }
        Some(_) => {}
        None if e.class.is_some() => {
            index.insert(e.id.clone(), out.len());
            out.push(Merged { fate_time: e.time, entry: e });
        }
        // An update whose record was rotated away.
        None => {}
    })?;
    Ok(out)
}

/// Calls `f` with every entry of `journal.1` then `journal`, oldest first,
/// and its line as written; lines that are not entries (a torn last line)
/// are skipped.
pub(super) fn for_each_entry(dir: &Path, mut f: impl FnMut(Entry, Vec<u8>)) -> Result<(), JournalError> {
    for name in [OLD_FILE_NAME, FILE_NAME] {
        let path = dir.join(name);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(JournalError::Open { path, source }),
        };
        for line in BufReader::new(file).split(b'\n') {
            let line = line.map_err(|source| JournalError::Open { path: path.clone(), source })?;
            if let Ok(e) = serde_json::from_slice::<Entry>(&line) {
                f(e, line);
            }
        }
    }
    Ok(())
}

/// The `telemctl journal` filters.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub record_id: Option<String>,
    pub event_id: Option<String>,
    /// Exact, or a prefix ending in `/*`.
    pub classification: Option<String>,
    pub boot_id: Option<String>,
}

impl Filter {
    pub fn matches(&self, m: &Merged) -> bool {
        let e = &m.entry;
        let eq = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().is_none_or(|w| have.as_deref() == Some(w.as_str()))
        };
        if self.record_id.as_ref().is_some_and(|r| *r != e.id) {
            return false;
        }
        if !eq(&self.event_id, &e.event) || !eq(&self.boot_id, &e.boot) {
            return false;
        }
        if let Some(pattern) = &self.classification {
            let class = e.class.as_deref().unwrap_or("");
            let ok = match pattern.strip_suffix("/*") {
                Some(prefix) => class.starts_with(prefix) && class[prefix.len()..].starts_with('/'),
                None => class == pattern,
            };
            if !ok {
                return false;
            }
        }
        true
    }
}

pub use telemetry::record::format_utc as format_time;

/// Calls `f` with every entry appended to the journal in `dir` from now
/// on (first entries and later fates), in order; polls every 100 ms and
/// follows rotation and pruning (the file shrinking). Returns when `f`
/// returns false. `telemctl journal --follow` and `telemctl preview
/// --follow` both read through it.
pub fn follow(dir: &std::path::Path, mut f: impl FnMut(Entry) -> bool) {
    use std::io::{Read, Seek, SeekFrom};
    let path = dir.join(super::FILE_NAME);
    let mut pos = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let mut pending = Vec::new();
    loop {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let Ok(mut file) = std::fs::File::open(&path) else { continue };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < pos {
            // Rotated or pruned: a new file from its start.
            pos = 0;
            pending.clear();
        }
        if len == pos || file.seek(SeekFrom::Start(pos)).is_err() {
            continue;
        }
        let mut buf = Vec::new();
        if file.read_to_end(&mut buf).is_err() {
            continue;
        }
        pos += buf.len() as u64;
        pending.extend_from_slice(&buf);
        let cut = pending.iter().rposition(|&b| b == b'\n').map(|p| p + 1).unwrap_or(0);
        let complete: Vec<u8> = pending.drain(..cut).collect();
        for line in complete.split(|&b| b == b'\n') {
            let Ok(e) = serde_json::from_slice::<Entry>(line) else { continue };
            if !f(e) {
                return;
            }
        }
    }
}
