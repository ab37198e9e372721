//! `telemctl blackbox export ID --json FILE | --html FILE`: a recording's
//! entries in time order (wall clock, then CLOCK_BOOTTIME, then the order
//! they were written), read straight from its segments (files only root
//! reads), written to a file the operator names, created 0600.
//!
//! JSON lines: one [`telemetry::blackbox::Entry`] per line, exactly as
//! stored. HTML: the timeline page ([`export_html`], by the
//! `blackbox-timeline` crate).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use telemetry::blackbox::Entry;

use super::segment;
use super::store::{self, Meta};
use super::BlackboxError;

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    pub entries: u64,
    pub bytes: u64,
}

/// Creates (or empties) the operator's file, mode 0600.
pub fn create_private(path: &Path) -> Result<File, BlackboxError> {
    let io = |source| BlackboxError::Io { path: path.into(), source };
    let f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).map_err(io)?;
    // An existing file keeps its mode on open: make it 0600 too.
    f.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(f)
}

/// Calls `each` with every entry's JSON of recording `dir`, in time order.
pub fn for_each_sorted(
    dir: &Path,
    mut each: impl FnMut(&[u8]) -> Result<(), BlackboxError>,
) -> Result<u64, BlackboxError> {
    let mut segs: Vec<Vec<u8>> = Vec::new();
    store::read_segments(dir, |b| segs.push(b))?;
    // (wall, mono, segment, start, end): the order key and where the JSON is.
    let mut order: Vec<(u64, u64, u32, u32, u32)> = Vec::new();
    for (i, bytes) in segs.iter().enumerate() {
        let base = bytes.as_ptr() as usize;
        segment::scan(bytes, |f| {
            let start = f.json.as_ptr() as usize - base;
            order.push((f.wall_ns, f.mono_ns, i as u32, start as u32, (start + f.json.len()) as u32));
        });
    }
    // Stable: entries with the same times stay in the order written.
    order.sort_by_key(|&(w, m, ..)| (w, m));
    for &(_, _, i, s, e) in &order {
        each(&segs[i as usize][s as usize..e as usize])?;
    }
    Ok(order.len() as u64)
}

/// Every entry of recording `id` under `root`, in time order, with its
/// meta file (for the HTML timeline).
pub fn read_sorted(root: &Path, id: &str) -> Result<(Meta, Vec<Entry>), BlackboxError> {
    let dir = super::recording_dir(root, id)?;
    let meta = store::read_meta(&dir)?;
    let mut out = Vec::new();
    for_each_sorted(&dir, |json| {
        match serde_json::from_slice::<Entry>(json) {
            Ok(e) => out.push(e),
            Err(e) => tracing::warn!("blackbox: an entry of {id} does not parse: {e}"),
        }
        Ok(())
    })?;
    Ok((meta, out))
}

/// Writes recording `id` as JSON lines to `out` (created 0600).
pub fn export_json(root: &Path, id: &str, out: &Path) -> Result<Exported, BlackboxError> {
    let dir = super::recording_dir(root, id)?;
    let io = |source| BlackboxError::Io { path: out.into(), source };
    let mut w = BufWriter::new(create_private(out)?);
    let mut bytes = 0u64;
    let entries = for_each_sorted(&dir, |json| {
        w.write_all(json).and_then(|()| w.write_all(b"\n")).map_err(io)?;
        bytes += json.len() as u64 + 1;
        Ok(())
    })?;
    let f = w.into_inner().map_err(|e| io(e.into_error()))?;
    f.sync_all().map_err(io)?;
    Ok(Exported { entries, bytes })
}

/// Writes recording `id` as one self-contained HTML timeline page to
/// `out` (created 0600), made by the `blackbox-timeline` crate.
pub fn export_html(root: &Path, id: &str, out: &Path) -> Result<Exported, BlackboxError> {
    let (meta, entries) = read_sorted(root, id)?;
    let io = |source| BlackboxError::Io { path: out.into(), source };
    let page = blackbox_timeline::PageMeta {
        title: String::new(),
        recording_id: meta.id.clone(),
        label: meta.label.clone(),
        started_wall_ns: Some(meta.started_wall_ns),
        stopped_wall_ns: meta.stopped_wall_ns,
    };
    let n = entries.len() as u64;
    let f = create_private(out)?;
    // write_html buffers its own output.
    blackbox_timeline::write_html(entries, &page, &f).map_err(io)?;
    f.sync_all().map_err(io)?;
    let bytes = f.metadata().map_err(io)?.len();
    Ok(Exported { entries: n, bytes })
}
