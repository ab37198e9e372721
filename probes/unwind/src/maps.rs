//! The process's mappings: from `/proc/PID/maps` (eBPF probe) or a core's
//! `NT_FILE` note (crashprobe).

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// One mapping of the process's address space.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// Offset in the mapped file.
    pub offset: u64,
    /// The file's path as the process sees it (may contain any byte but NUL
    /// and newline; shown lossily). `None` for anonymous memory; pseudo
    /// paths such as `[stack]` and `[vdso]` are kept as given.
    pub path: Option<String>,
    /// Whether the mapping is executable (`None` when unknown, e.g. NT_FILE).
    pub exec: Option<bool>,
    /// Device and inode of the file, when known (`/proc/PID/maps`).
    pub inode: Option<(u64, u64)>,
}

impl Mapping {
    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }
    /// A real file (not anonymous, not `[pseudo]`).
    pub fn is_file(&self) -> bool {
        self.path.as_deref().is_some_and(|p| p.starts_with('/'))
    }
    /// The path shown for a frame: the file path with a ` (deleted)` suffix
    /// removed.
    pub fn display_path(&self) -> &str {
        let p = self.path.as_deref().unwrap_or("");
        p.strip_suffix(" (deleted)").unwrap_or(p)
    }
}

/// Sorted, non-overlapping mappings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mappings {
    maps: Vec<Mapping>,
}

impl Mappings {
    /// Sorts `maps` and drops empty or overlapping entries (a lying core
    /// cannot make lookups ambiguous).
    pub fn new(mut maps: Vec<Mapping>) -> Mappings {
        maps.retain(|m| m.start < m.end);
        maps.sort_by_key(|m| m.start);
        let mut out: Vec<Mapping> = Vec::with_capacity(maps.len());
        for m in maps {
            if out.last().is_some_and(|l| l.end > m.start) {
                continue;
            }
            out.push(m);
        }
        Mappings { maps: out }
    }

    pub fn find(&self, addr: u64) -> Option<&Mapping> {
        let i = self.maps.partition_point(|m| m.start <= addr);
        self.maps.get(i.checked_sub(1)?).filter(|m| m.contains(addr))
    }

    /// The mappings of the same file (same path), for the module's base.
    pub fn of_path<'a>(&'a self, path: &'a str) -> impl Iterator<Item = &'a Mapping> + 'a {
        self.maps.iter().filter(move |m| m.path.as_deref() == Some(path))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Mapping> {
        self.maps.iter()
    }
    pub fn len(&self) -> usize {
        self.maps.len()
    }
    pub fn is_empty(&self) -> bool {
        self.maps.is_empty()
    }
    pub fn push_unchecked(&mut self, m: Mapping) {
        let at = self.maps.partition_point(|x| x.start < m.start);
        self.maps.insert(at, m);
    }
}

/// Why a line of `/proc/PID/maps` was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("/proc/PID/maps line {line}: {reason}")]
pub struct MapsError {
    pub line: usize,
    pub reason: &'static str,
}

fn hex(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    let s = std::str::from_utf8(s).ok()?;
    u64::from_str_radix(s, 16).ok()
}

/// Parses `/proc/PID/maps` strictly: `start-end perms offset maj:min inode
/// [path]`, where the path (after the padding) runs to the end of the line
/// and may hold spaces and invalid UTF-8.
pub fn parse_proc_maps(content: &[u8]) -> Result<Mappings, MapsError> {
    let mut out = Vec::new();
    for (i, line) in content.split(|&c| c == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let err = |reason| MapsError { line: i + 1, reason };
        let mut fields = line.splitn(6, |&c| c == b' ');
        let range = fields.next().ok_or(err("no address range"))?;
        let perms = fields.next().ok_or(err("no permissions"))?;
        let offset = fields.next().and_then(hex).ok_or(err("bad offset"))?;
        let dev = fields.next().ok_or(err("no device"))?;
        let inode = fields.next().ok_or(err("no inode"))?;
        let rest = fields.next().unwrap_or(b"");
        let mut r = range.splitn(2, |&c| c == b'-');
        let start = r.next().and_then(hex).ok_or(err("bad start address"))?;
        let end = r.next().and_then(hex).ok_or(err("bad end address"))?;
        if start >= end {
            return Err(err("start is not below end"));
        }
        if perms.len() != 4 {
            return Err(err("permissions are not 4 characters"));
        }
        let mut d = dev.splitn(2, |&c| c == b':');
        let major = d.next().and_then(hex).ok_or(err("bad device major"))?;
        let minor = d.next().and_then(hex).ok_or(err("bad device minor"))?;
        let inode: u64 = std::str::from_utf8(inode).ok().and_then(|s| s.parse().ok()).ok_or(err("bad inode"))?;
        let name = rest.iter().position(|&c| c != b' ').map(|p| &rest[p..]).unwrap_or(b"");
        let path = (!name.is_empty()).then(|| String::from_utf8_lossy(name).into_owned());
        out.push(Mapping {
            start,
            end,
            offset,
            path,
            exec: Some(perms[2] == b'x'),
            inode: (inode != 0).then_some(((major << 32) | minor, inode)),
        });
    }
    Ok(Mappings::new(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn parses_spaces_and_pseudo_paths() {
        let m = parse_proc_maps(
            b"55d0c0000000-55d0c0001000 r-xp 00001000 fd:01 1234    /tmp/a b ) c\n\
              7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0       [stack]\n\
              7f0000000000-7f0000001000 rw-p 00000000 00:00 0\n",
        )
        .unwrap();
        assert_eq!(m.len(), 3);
        let a = m.find(0x55d0c0000010).unwrap();
        assert_eq!(a.path.as_deref(), Some("/tmp/a b ) c"));
        assert_eq!(a.offset, 0x1000);
        assert_eq!(a.exec, Some(true));
        assert!(a.is_file());
        assert!(!m.find(0x7ffc00000000).unwrap().is_file());
        assert_eq!(m.find(0x7f0000000000).unwrap().path, None);
        assert!(m.find(0x10).is_none());
    }
    #[test]
    fn rejects_garbage() {
        assert!(parse_proc_maps(b"zz-10 r-xp 0 0:0 0\n").is_err());
        assert!(parse_proc_maps(b"20-10 r-xp 0 0:0 0\n").is_err());
        assert!(parse_proc_maps(b"10-20 r-x 0 0:0 0\n").is_err());
        assert!(parse_proc_maps(b"10-20 r-xp 0 0:0 x\n").is_err());
    }
    #[test]
    fn overlapping_entries_are_dropped() {
        let mk = |s, e| Mapping { start: s, end: e, offset: 0, path: None, exec: None, inode: None };
        let m = Mappings::new(vec![mk(0x10, 0x30), mk(0x20, 0x40), mk(0x40, 0x50)]);
        assert_eq!(m.len(), 2);
    }
}
