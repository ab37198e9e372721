//! Opening the spool: recovery of what a previous run left.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::Instant;

use super::*;

/// A spool file found on start: (file id, path, its valid blocks with their offsets).
pub(super) type FoundFile = (u64, PathBuf, Vec<(u64, ReadSegment)>);

impl Spool {
    /// Opens `dir` (creating it), recovers what a previous run left, drops
    /// segments accepted before `expire_before` (unix seconds), and starts
    /// the housekeeper thread.
    pub fn open(dir: &Path, expire_before: u64) -> Result<(Arc<Spool>, Recovered), SpoolError> {
        let derr = |source| SpoolError::Dir { path: dir.into(), source };
        std::fs::create_dir_all(dir).map_err(derr)?;
        let mut found: Vec<FoundFile> = Vec::new();
        let mut free = Vec::new();
        let mut rec = Recovered::default();
        let mut next_free = 0u64;
        let mut next_file = 0u64;
        for e in std::fs::read_dir(dir).map_err(derr)? {
            let e = e.map_err(derr)?;
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            let n = name.strip_prefix("free-").or_else(|| name.strip_prefix("seg-"));
            let Some(n) = n.and_then(|n| n.parse::<u64>().ok()) else { continue };
            if name.starts_with("free-") {
                next_free = next_free.max(n + 1);
            }
            let (blocks, torn) = match File::open(&path) {
                Ok(f) => read_file(f),
                Err(e) => (Vec::new(), Some(e.to_string())),
            };
            if let Some(why) = &torn {
                tracing::warn!(
                    "{}: {why} after {} valid block(s); the rest was never acknowledged",
                    path.display(),
                    blocks.len()
                );
                rec.torn += 1;
            }
            let (old, keep): (Vec<_>, Vec<_>) = blocks.into_iter().partition(|(_, s)| s.accepted < expire_before);
            let had_expired = !old.is_empty();
            for (_, s) in old {
                rec.expired.extend(s.items);
            }
            if keep.is_empty() && had_expired {
                // Only expired blocks: left as they are until their fates
                // are journaled (see `Spool::expire`).
                rec.expired_files.push(path);
            } else if !keep.is_empty() {
                found.push((next_file, path, keep));
                next_file += 1;
            } else if free.len() < POOL_MAX
                && OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.write_all_at(&[0u8; HEADER_LEN], 0))
                    .is_ok()
            {
                // Nothing valid left (or only expired blocks): a free file.
                free.push(path);
            } else {
                let _ = std::fs::remove_file(&path);
            }
        }
        let mut blocks: Vec<(u64, u64, ReadSegment)> = Vec::new();
        let mut files = HashMap::new();
        for (id, path, bs) in found {
            let len = bs.last().map(|(o, s)| o + s.bytes).unwrap_or(0);
            // Name the file after its first block (it may still be free-N).
            let first = bs.iter().map(|(_, s)| s.seq).min().unwrap_or(0);
            let want = dir.join(format!("seg-{first:016}"));
            let path =
                if path != want && !want.exists() && std::fs::rename(&path, &want).is_ok() { want } else { path };
            let epoch = bs.first().and_then(|(_, s)| s.epoch).unwrap_or(0);
            files.insert(id, SpoolFile { path, epoch, len, live: bs.len() as u32, open: false, named: true });
            blocks.extend(bs.into_iter().map(|(o, s)| (id, o, s)));
        }
        blocks.sort_by_key(|(_, _, s)| s.seq);
        let mut index = Index {
            segments: VecDeque::new(),
            files,
            writers: Vec::new(),
            next_file,
            free,
            next_seq: blocks.last().map(|(_, _, s)| s.seq + 1).unwrap_or(1),
            next_free,
            bytes: 0,
            records: 0,
            cached: 0,
            reserved: 0,
            lost: Vec::new(),
            freed_at: Instant::now(),
            rewind_max: MAX_FILE,
            active: 1,
        };
        let mut tail = 0usize;
        for (_, _, s) in blocks.iter().rev() {
            if tail >= NEWEST {
                break;
            }
            tail += s.items.len();
        }
        let mut to_skip = blocks.iter().map(|(_, _, s)| s.items.len()).sum::<usize>().saturating_sub(tail.min(NEWEST));
        for (_, _, s) in &blocks {
            let skip = to_skip.min(s.items.len());
            to_skip -= skip;
            rec.newest.extend(s.items[skip..].iter().cloned());
        }
        for (file, offset, s) in blocks {
            rec.segments += 1;
            rec.records += s.items.len() as u64;
            index.bytes += s.bytes;
            index.records += s.items.len() as u64;
            let cache = index.cached + s.bytes <= CACHE_BYTES;
            if cache {
                index.cached += s.bytes;
            }
            let n_items = s.items.len();
            index.segments.push_back(Segment {
                seq: s.seq,
                file,
                offset,
                bytes: s.bytes,
                accepted: s.accepted,
                total: s.items.len() as u32,
                handed: [0; DESTS],
                state: vec![0u8; n_items].into_boxed_slice(),
                outstanding: s.items.len() as u32,
                counted: s.bytes,
                ids: s.items.iter().map(|i| i.record_id).collect(),
                records: cache.then(|| s.items.into_iter().map(Arc::new).collect()),
            });
        }
        sync_dir(dir).map_err(derr)?;
        let (tx, rx) = mpsc::channel();
        let spool = Arc::new(Spool {
            dir: dir.into(),
            index: Mutex::new(index),
            house: Mutex::new(tx),
            in_place: std::sync::atomic::AtomicBool::new(true),
            active: std::sync::atomic::AtomicU8::new(1),
            room: Condvar::new(),
            lazy: Default::default(),
        });
        let weak = Arc::downgrade(&spool);
        std::thread::Builder::new().name("spool-house".into()).spawn(move || housekeeper(weak, rx)).map_err(derr)?;
        spool.send_house(House::Refill);
        Ok((spool, rec))
    }
}
