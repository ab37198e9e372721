//! One recording on disk: `state_dir/blackbox/<id>/`, a `meta.json`
//! (written atomically: temporary file, fsync, rename, fsync of the
//! folder) and append-only segment files `seg-NNNNNNNN` of at most
//! `segment_bytes` each ([`super::segment`] frames).
//!
//! The meta file is a checkpoint, written when a segment closes: which
//! segments are closed (with their sizes, entry counts and newest time),
//! the counts of what they hold, and the last `seq` written per eventprobe
//! `source`. At a restart only the segments after the checkpoint are read
//! (their torn tail cut), so a recording of any size reopens quickly and
//! nothing eventprobe resends is written twice.
//!
//! `--max-size`: when a segment closes and the kept segments would exceed
//! it, the oldest closed segments are deleted (the checkpoint first, then
//! the files; `first_index` says which files are gone, so a crash between
//! the two leaves nothing half-counted) and a [`Event::Truncated`] entry
//! says what went.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use telemetry::blackbox::{Entry, Event};

use super::segment::{self, Frame, MAGIC};
use super::BlackboxError;

/// Segment size without `--max-size`.
pub const SEGMENT_BYTES: u64 = 8 << 20;
/// The smallest segment (a `--max-size` holds at least four).
pub const MIN_SEGMENT_BYTES: u64 = 16 << 10;
/// The smallest `--max-size`.
pub const MIN_MAX_SIZE: u64 = 4 * MIN_SEGMENT_BYTES;

/// What some segments hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Entries written.
    pub entries: u64,
    /// `gap` entries among them.
    pub gaps: u64,
    /// Events those gaps say were lost.
    pub lost: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.entries += o.entries;
        self.gaps += o.gaps;
        self.lost += o.lost;
    }
    fn count(&mut self, e: &Event) {
        self.entries += 1;
        if let Event::Gap { lost, .. } = e {
            self.gaps += 1;
            self.lost += lost;
        }
    }
}

/// A closed segment, as the checkpoint lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegInfo {
    pub index: u64,
    pub bytes: u64,
    pub entries: u64,
    pub newest_wall_ns: u64,
}

/// `meta.json`: what a recording is, and the checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Wall-clock start, nanoseconds since the epoch.
    pub started_wall_ns: u64,
    /// Set once stopped.
    #[serde(default)]
    pub stopped_wall_ns: Option<u64>,
    /// Why it stopped (`stopped`, `max-age reached`, ...).
    #[serde(default)]
    pub stop_reason: Option<String>,
    #[serde(default)]
    pub max_age_secs: Option<u64>,
    #[serde(default)]
    pub max_size_bytes: Option<u64>,
    pub segment_bytes: u64,
    /// Segment files below this index were deleted (`--max-size`).
    #[serde(default)]
    pub first_index: u64,
    /// The closed segments kept, oldest first.
    #[serde(default)]
    pub closed: Vec<SegInfo>,
    /// What every closed segment held (deleted ones included).
    #[serde(default)]
    pub closed_counts: Counts,
    /// The last `seq` written per eventprobe `source`, in closed segments.
    #[serde(default)]
    pub sources: BTreeMap<String, u64>,
    #[serde(default)]
    pub truncated_segments: u64,
    #[serde(default)]
    pub truncated_entries: u64,
}

impl Meta {
    /// Bytes of the closed segments kept.
    pub fn closed_bytes(&self) -> u64 {
        self.closed.iter().map(|s| s.bytes).sum()
    }
}

/// A recording's id is a folder name: letters, digits, `-`, `_`, `.`
/// (not first), at most 64.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> BlackboxError + '_ {
    move |source| BlackboxError::Io { path: path.to_path_buf(), source }
}

/// Creates a folder only its owner may enter.
pub fn private_dir(p: &Path) -> Result<(), BlackboxError> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(p).map_err(io(p))
}

fn seg_name(index: u64) -> String {
    format!("seg-{index:08}")
}

/// The index of a segment file name.
fn seg_index(name: &str) -> Option<u64> {
    name.strip_prefix("seg-")?.parse().ok()
}

/// The segment files of a recording folder, by index.
pub fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, BlackboxError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io(dir))? {
        let e = e.map_err(io(dir))?;
        if let Some(i) = e.file_name().to_str().and_then(seg_index) {
            out.push((i, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Reads a recording's `meta.json`.
pub fn read_meta(dir: &Path) -> Result<Meta, BlackboxError> {
    let path = dir.join("meta.json");
    let text = std::fs::read(&path).map_err(io(&path))?;
    serde_json::from_slice(&text).map_err(|e| BlackboxError::BadMeta { path, reason: e.to_string() })
}

/// Writes `meta.json` atomically.
pub fn write_meta(dir: &Path, meta: &Meta) -> Result<(), BlackboxError> {
    let path = dir.join("meta.json");
    let tmp = dir.join("meta.json.tmp");
    let text = serde_json::to_vec_pretty(meta)
        .map_err(|e| BlackboxError::BadMeta { path: path.clone(), reason: e.to_string() })?;
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io(&tmp))?;
    f.write_all(&text).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// What reopening a recording found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Entries read back from the segments after the checkpoint.
    pub entries: u64,
    /// Bytes of torn tails cut.
    pub torn_bytes: u64,
}

/// The recording being written.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    pub meta: Meta,
    file: Arc<File>,
    cur: SegInfo,
    cur_counts: Counts,
    /// `meta.sources` and what the current segment added.
    sources: HashMap<String, u64>,
    dirty: bool,
    buf: Vec<u8>,
}

impl Store {
    /// The segment size for a `--max-size`.
    pub fn segment_bytes_for(max_size: Option<u64>) -> u64 {
        max_size.map(|m| (m / 4).clamp(MIN_SEGMENT_BYTES, SEGMENT_BYTES)).unwrap_or(SEGMENT_BYTES)
    }

    /// Starts a new recording in `root/<meta.id>`.
    pub fn create(root: &Path, meta: Meta) -> Result<Store, BlackboxError> {
        private_dir(root)?;
        let dir = root.join(&meta.id);
        if dir.exists() {
            return Err(BlackboxError::Exists(meta.id.clone()));
        }
        private_dir(&dir)?;
        write_meta(&dir, &meta)?;
        let index = meta.first_index;
        let file = new_segment(&dir, index)?;
        Ok(Store {
            dir,
            sources: meta.sources.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            meta,
            file: Arc::new(file),
            cur: SegInfo { index, bytes: MAGIC.len() as u64, entries: 0, newest_wall_ns: 0 },
            cur_counts: Counts::default(),
            dirty: false,
            buf: Vec::new(),
        })
    }

    /// Reopens a recording that was not stopped (after a restart): reads
    /// the segments after the checkpoint, cutting a torn tail, and goes on
    /// writing the last one.
    pub fn open(dir: &Path) -> Result<(Store, Recovered), BlackboxError> {
        let mut meta = read_meta(dir)?;
        let mut rec = Recovered::default();
        let closed: std::collections::HashSet<u64> = meta.closed.iter().map(|s| s.index).collect();
        let mut open = Vec::new();
        for (i, path) in segments(dir)? {
            if i < meta.first_index {
                // Dropped by --max-size; the checkpoint already says so.
                std::fs::remove_file(&path).map_err(io(&path))?;
            } else if !closed.contains(&i) {
                open.push((i, path));
            }
        }
        meta.closed.retain(|s| dir.join(seg_name(s.index)).exists());
        let mut sources: HashMap<String, u64> = meta.sources.iter().map(|(k, v)| (k.clone(), *v)).collect();
        let mut last: Option<(u64, SegInfo, Counts)> = None;
        let n_open = open.len();
        for (k, (i, path)) in open.into_iter().enumerate() {
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            let mut info = SegInfo { index: i, bytes: 0, entries: 0, newest_wall_ns: 0 };
            let mut counts = Counts::default();
            let scanned = segment::scan(&bytes, |f: Frame<'_>| {
                info.newest_wall_ns = info.newest_wall_ns.max(f.wall_ns);
                counts.entries += 1;
                if f.kind == segment::GAP {
                    if let Ok(Entry { event: Event::Gap { lost, .. }, .. }) = serde_json::from_slice::<Entry>(f.json) {
                        counts.gaps += 1;
                        counts.lost += lost;
                    }
                }
                if let Some((src, seq)) = f.source {
                    let s = sources.entry(src.to_string()).or_insert(0);
                    *s = (*s).max(seq);
                }
            });
            rec.entries += scanned.frames;
            info.entries = scanned.frames;
            if scanned.good_len < MAGIC.len() as u64 {
                // Not even the magic: start the file again.
                std::fs::write(&path, MAGIC).map_err(io(&path))?;
                rec.torn_bytes += scanned.torn_bytes;
                info.bytes = MAGIC.len() as u64;
            } else {
                if scanned.torn_bytes > 0 {
                    let f = OpenOptions::new().write(true).open(&path).map_err(io(&path))?;
                    f.set_len(scanned.good_len).map_err(io(&path))?;
                    f.sync_all().map_err(io(&path))?;
                    rec.torn_bytes += scanned.torn_bytes;
                }
                info.bytes = scanned.good_len;
            }
            if k + 1 < n_open {
                meta.closed_counts.add(&counts);
                meta.closed.push(info);
            } else {
                last = Some((i, info, counts));
            }
        }
        meta.closed.sort_by_key(|s| s.index);
        let (file, cur, cur_counts) = match last {
            Some((i, info, counts)) => {
                let path = dir.join(seg_name(i));
                let f = OpenOptions::new().append(true).open(&path).map_err(io(&path))?;
                (f, info, counts)
            }
            None => {
                let i = meta.closed.last().map(|s| s.index + 1).unwrap_or(meta.first_index);
                (
                    new_segment(dir, i)?,
                    SegInfo { index: i, bytes: MAGIC.len() as u64, entries: 0, newest_wall_ns: 0 },
                    Counts::default(),
                )
            }
        };
        Ok((
            Store {
                dir: dir.to_path_buf(),
                meta,
                file: Arc::new(file),
                cur,
                cur_counts,
                sources,
                dirty: false,
                buf: Vec::new(),
            },
            rec,
        ))
    }

    /// The recording's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether eventprobe's `seq` of `source` is written already.
    /// The highest `seq` of `source` written (entries of a source are
    /// written in order: every one up to it is in the recording).
    pub fn last_seq(&self, source: &str) -> Option<u64> {
        self.sources.get(source).copied()
    }

    pub fn has(&self, source: &str, seq: u64) -> bool {
        self.sources.get(source).is_some_and(|&s| s >= seq)
    }

    /// Appends an entry; `false` when it is a feed entry written already
    /// (its `seq` is not above the last one of its `source`).
    pub fn append(&mut self, entry: &Entry, source: Option<(&str, u64)>) -> Result<bool, BlackboxError> {
        if let Some((src, seq)) = source {
            if self.has(src, seq) {
                return Ok(false);
            }
        }
        let json = serde_json::to_vec(entry).map_err(|e| BlackboxError::Encode(e.to_string()))?;
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let frame = Frame {
            kind: segment::kind_code(&entry.event),
            wall_ns: entry.wall_ns,
            mono_ns: entry.mono_ns,
            source,
            json: &json,
        };
        let len = segment::encode(&frame, &mut buf) as u64;
        let r = self.write_frame(&buf, len);
        self.buf = buf;
        r?;
        self.cur.entries += 1;
        self.cur.newest_wall_ns = self.cur.newest_wall_ns.max(entry.wall_ns);
        self.cur_counts.count(&entry.event);
        if let Some((src, seq)) = source {
            self.sources.insert(src.to_string(), seq);
        }
        self.dirty = true;
        Ok(true)
    }

    fn write_frame(&mut self, frame: &[u8], len: u64) -> Result<(), BlackboxError> {
        if self.cur.entries > 0 && self.cur.bytes + len > self.meta.segment_bytes {
            self.rotate()?;
        }
        let path = self.dir.join(seg_name(self.cur.index));
        if let Err(e) = (&*self.file).write_all(frame) {
            // Nothing half-written stays to be read as a torn tail later.
            let _ = self.file.set_len(self.cur.bytes);
            return Err(io(&path)(e));
        }
        self.cur.bytes += len;
        Ok(())
    }

    /// Closes the current segment into the checkpoint, applies
    /// `--max-size`, and opens the next segment.
    fn rotate(&mut self) -> Result<(), BlackboxError> {
        self.close_current()?;
        let mut dropped: Vec<SegInfo> = Vec::new();
        if let Some(max) = self.meta.max_size_bytes {
            while !self.meta.closed.is_empty() && self.meta.closed_bytes() + self.meta.segment_bytes > max {
                dropped.push(self.meta.closed.remove(0));
            }
        }
        if let Some(last) = dropped.last() {
            self.meta.first_index = last.index + 1;
            self.meta.truncated_segments += dropped.len() as u64;
            self.meta.truncated_entries += dropped.iter().map(|s| s.entries).sum::<u64>();
        }
        write_meta(&self.dir, &self.meta)?;
        for s in &dropped {
            let p = self.dir.join(seg_name(s.index));
            if let Err(e) = std::fs::remove_file(&p) {
                tracing::warn!("blackbox: cannot delete {}: {e}", p.display());
            }
        }
        let index = self.cur.index + 1;
        self.file = Arc::new(new_segment(&self.dir, index)?);
        self.cur = SegInfo { index, bytes: MAGIC.len() as u64, entries: 0, newest_wall_ns: 0 };
        self.cur_counts = Counts::default();
        if !dropped.is_empty() {
            let e = Entry::now(Event::Truncated {
                segments: dropped.len() as u64,
                entries: dropped.iter().map(|s| s.entries).sum(),
                until_wall_ns: dropped.iter().map(|s| s.newest_wall_ns).max().unwrap_or(0),
            });
            self.append(&e, None)?;
        }
        Ok(())
    }

    /// fsyncs the current segment and moves it into the checkpoint
    /// (`meta` in memory; the caller writes it).
    fn close_current(&mut self) -> Result<(), BlackboxError> {
        let path = self.dir.join(seg_name(self.cur.index));
        self.file.sync_all().map_err(io(&path))?;
        self.dirty = false;
        self.meta.closed.push(self.cur.clone());
        self.meta.closed_counts.add(&self.cur_counts);
        self.cur_counts = Counts::default();
        for (k, v) in &self.sources {
            self.meta.sources.insert(k.clone(), *v);
        }
        Ok(())
    }

    /// The current segment's file when something was written since the
    /// last sync (fsync'd by the caller, outside the recorder's lock).
    pub fn take_dirty(&mut self) -> Option<Arc<File>> {
        std::mem::take(&mut self.dirty).then(|| self.file.clone())
    }

    /// What the recording holds so far, and its bytes on disk.
    pub fn totals(&self) -> (Counts, u64) {
        let mut c = self.meta.closed_counts;
        c.add(&self.cur_counts);
        (c, self.meta.closed_bytes() + self.cur.bytes)
    }

    /// Stops the recording: the last segment fsync'd and closed, the
    /// stop time and reason in `meta.json`.
    pub fn finish(mut self, reason: &str) -> Result<Meta, BlackboxError> {
        self.close_current()?;
        self.meta.stopped_wall_ns = Some(telemetry::blackbox::wall_ns());
        self.meta.stop_reason = Some(reason.to_string());
        write_meta(&self.dir, &self.meta)?;
        Ok(self.meta)
    }
}

fn new_segment(dir: &Path, index: u64) -> Result<File, BlackboxError> {
    let path = dir.join(seg_name(index));
    let mut f =
        OpenOptions::new().append(true).create(true).truncate(false).mode(0o600).open(&path).map_err(io(&path))?;
    let len = f.metadata().map_err(io(&path))?.len();
    if len == 0 {
        f.write_all(MAGIC).map_err(io(&path))?;
    }
    Ok(f)
}

/// Calls `each` with the bytes of every segment of a recording, oldest
/// first (readers: export).
pub fn read_segments(dir: &Path, mut each: impl FnMut(Vec<u8>)) -> Result<(), BlackboxError> {
    let meta = read_meta(dir)?;
    for (i, path) in segments(dir)? {
        if i >= meta.first_index {
            match std::fs::read(&path) {
                Ok(b) => each(b),
                // Deleted by --max-size meanwhile.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path)(e)),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: &str, max: Option<u64>) -> Meta {
        Meta {
            id: id.into(),
            label: None,
            started_wall_ns: 1,
            stopped_wall_ns: None,
            stop_reason: None,
            max_age_secs: None,
            max_size_bytes: max,
            segment_bytes: Store::segment_bytes_for(max),
            first_index: 0,
            closed: vec![],
            closed_counts: Counts::default(),
            sources: BTreeMap::new(),
            truncated_segments: 0,
            truncated_entries: 0,
        }
    }

    fn marker(i: u64) -> Entry {
        Entry { mono_ns: i, wall_ns: i, event: Event::Marker { text: format!("entry {i} {}", "x".repeat(200)) } }
    }

    fn all(dir: &Path) -> Vec<Entry> {
        let mut out = Vec::new();
        read_segments(dir, |b| {
            segment::scan(&b, |f| out.push(serde_json::from_slice(f.json).unwrap()));
        })
        .unwrap();
        out
    }

    #[test]
    fn a_reopened_recording_skips_written_seqs_and_cuts_a_torn_tail() {
        let root = tempfile::tempdir().unwrap();
        let mut s = Store::create(root.path(), meta("r1", None)).unwrap();
        for seq in 1..=5 {
            assert!(s.append(&marker(seq), Some(("src", seq))).unwrap());
        }
        assert!(!s.append(&marker(3), Some(("src", 3))).unwrap(), "a seq written already");
        let dir = s.dir().to_path_buf();
        drop(s);
        // Tear the last frame.
        let seg = dir.join(seg_name(0));
        let len = std::fs::metadata(&seg).unwrap().len();
        OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 7).unwrap();
        let (mut s, rec) = Store::open(&dir).unwrap();
        assert_eq!(rec.entries, 4);
        assert!(rec.torn_bytes > 0);
        // seq 5 was torn: eventprobe's resend is written; 4 is not again.
        assert!(!s.append(&marker(4), Some(("src", 4))).unwrap());
        assert!(s.append(&marker(5), Some(("src", 5))).unwrap());
        assert_eq!(s.totals().0.entries, 5);
        let m = s.finish("stopped").unwrap();
        assert_eq!(m.closed_counts.entries, 5);
        let got: Vec<u64> = all(&dir).iter().map(|e| e.wall_ns).collect();
        assert_eq!(got, vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn max_size_drops_the_oldest_segments_and_says_so() {
        let root = tempfile::tempdir().unwrap();
        let mut s = Store::create(root.path(), meta("r2", Some(MIN_MAX_SIZE))).unwrap();
        for i in 1..=2000 {
            s.append(&marker(i), None).unwrap();
        }
        let (counts, bytes) = s.totals();
        assert!(bytes <= MIN_MAX_SIZE, "{bytes}");
        assert!(s.meta.truncated_segments > 0);
        let dir = s.dir().to_path_buf();
        // Reopen (as after a restart): the checkpoint holds.
        drop(s);
        let (s, _) = Store::open(&dir).unwrap();
        assert_eq!(s.totals().0, counts);
        let m = s.finish("stopped").unwrap();
        let entries = all(&dir);
        let truncated: Vec<_> = entries.iter().filter(|e| matches!(e.event, Event::Truncated { .. })).collect();
        assert!(!truncated.is_empty());
        // Every entry written is kept or counted as truncated.
        assert_eq!(entries.len() as u64 + m.truncated_entries, m.closed_counts.entries);
        // The markers kept are the newest, without a hole.
        let kept: Vec<u64> =
            entries.iter().filter(|e| matches!(e.event, Event::Marker { .. })).map(|e| e.wall_ns).collect();
        assert_eq!(kept, (kept[0]..=2000).collect::<Vec<_>>());
        // The newest marker is kept.
        assert!(entries.iter().any(|e| e.wall_ns == 2000));
    }
}
