//! The crashing process's executable mappings as the kernel named them at
//! the fatal signal (`bpf_find_vma` for ip and the stack's words: start,
//! end, file offset, device, inode, the dentry names up to the file
//! system's root), turned into [`Mappings`] and a [`FileOpener`] when
//! `/proc/PID` is already gone.
//!
//! A file is opened by its path (the dentry names under each mount of its
//! device, from `/proc/self/mountinfo`), refusing symlinks and anything but
//! a regular file, and kept only if its device and inode are those the
//! kernel recorded: the very file that was mapped, whatever the dying
//! process's paths say. A file already open (an executable held since its
//! `exec`, see [`crate::exec`]) is used as it is, so a binary deleted or
//! replaced after exec still unwinds.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use unwind::{FileOpener, HostOpener, Mapping, Mappings};

use crate::event::KernelModule;

/// One line of `/proc/self/mountinfo`: device, root in the file system,
/// mount point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub dev: (u32, u32),
    pub root: String,
    pub point: String,
}

/// `\040` and friends of mountinfo back to bytes.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo (lines that do not parse are skipped).
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let _id = f.next()?;
            let _parent = f.next()?;
            let (maj, min) = f.next()?.split_once(':')?;
            let root = unescape(f.next()?);
            let point = unescape(f.next()?);
            Some(Mount { dev: (maj.parse().ok()?, min.parse().ok()?), root, point })
        })
        .collect()
}

/// Where a path inside the file system of `dev` may be seen from here.
pub fn candidates(mounts: &[Mount], dev: (u32, u32), fs_path: &str) -> Vec<String> {
    let mut out = Vec::new();
    for m in mounts.iter().filter(|m| m.dev == dev) {
        let rest = if m.root == "/" {
            Some(fs_path)
        } else {
            fs_path.strip_prefix(m.root.as_str()).filter(|r| r.is_empty() || r.starts_with('/'))
        };
        if let Some(rest) = rest {
            let p = format!("{}{}", m.point.trim_end_matches('/'), rest);
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

/// The (device, inode) key of a mapping, as `unwind::parse_proc_maps`
/// encodes it (major << 32 | minor).
pub fn inode_key(dev: (u32, u32), ino: u64) -> (u64, u64) {
    ((u64::from(dev.0) << 32) | u64::from(dev.1), ino)
}

fn identity_of(f: &File) -> Option<(u64, u64)> {
    let md = f.metadata().ok()?;
    let d = md.dev();
    Some(inode_key((libc::major(d), libc::minor(d)), md.ino()))
}

/// Opens module files by the identity the kernel recorded.
#[derive(Default)]
pub struct KernelOpener {
    files: HashMap<(u64, u64), File>,
}

impl FileOpener for KernelOpener {
    fn open_mapping(&self, m: &Mapping) -> Option<File> {
        self.files.get(&m.inode?).and_then(|f| f.try_clone().ok())
    }
    fn open_path(&self, path: &Path) -> Option<File> {
        HostOpener.open_path(path)
    }
}

/// What the kernel's modules gave: mappings to unwind with, the opener of
/// their files, and how many could be opened.
pub struct Resolved {
    pub maps: Mappings,
    pub opener: KernelOpener,
    pub opened: usize,
}

/// Builds mappings and opens the files of the kernel's modules; `held`
/// gives files already open by identity (executables held since exec).
pub fn resolve(modules: &[KernelModule], held: &dyn Fn((u64, u64)) -> Option<File>) -> Resolved {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").map(|t| parse_mountinfo(&t)).unwrap_or_default();
    let mut opener = KernelOpener::default();
    let mut out = Vec::new();
    for k in modules {
        let key = inode_key(k.dev, k.ino);
        let mut path = None;
        if let std::collections::hash_map::Entry::Vacant(e) = opener.files.entry(key) {
            if let Some(f) = held(key) {
                e.insert(f);
            }
        }
        if let Some(fs_path) = &k.fs_path {
            for c in candidates(&mounts, k.dev, fs_path) {
                if let Some(f) = HostOpener.open_path(Path::new(&c)) {
                    if identity_of(&f) == Some(key) {
                        opener.files.entry(key).or_insert(f);
                        path = Some(c);
                        break;
                    }
                }
            }
        }
        // A path that no longer names the file (deleted, replaced, in
        // another mount namespace): shown as the kernel named it.
        let shown = path.or_else(|| k.fs_path.clone()).unwrap_or_else(|| format!("/.../{}", k.name));
        out.push(Mapping {
            start: k.start,
            end: k.end,
            offset: k.offset,
            path: Some(shown),
            exec: Some(true),
            inode: Some(key),
        });
    }
    let opened = out.iter().filter(|m| m.inode.is_some_and(|k| opener.files.contains_key(&k))).count();
    Resolved { maps: Mappings::new(out), opener, opened }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_and_candidates() {
        let m = parse_mountinfo(
            "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
             30 25 0:27 / /dev/shm rw - tmpfs tmpfs rw\n\
             50 27 254:0 /srv/data /mnt/my\\040data rw - ext4 /dev/vda rw\n\
             garbage\n",
        );
        assert_eq!(m.len(), 3);
        assert_eq!(m[2].point, "/mnt/my data");
        assert_eq!(
            candidates(&m, (254, 0), "/srv/data/bin/x"),
            vec!["/srv/data/bin/x".to_string(), "/mnt/my data/bin/x".to_string()]
        );
        assert_eq!(candidates(&m, (0, 27), "/a"), vec!["/dev/shm/a".to_string()]);
        assert!(candidates(&m, (9, 9), "/a").is_empty());
        assert!(candidates(&m[2..], (254, 0), "/srv/database").is_empty());
    }

    #[test]
    fn opens_only_the_recorded_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("lib.so");
        std::fs::write(&p, b"\x7fELF").unwrap();
        let md = std::fs::metadata(&p).unwrap();
        let dev = (libc::major(md.dev()), libc::minor(md.dev()));
        let k = KernelModule {
            start: 0x1000,
            end: 0x2000,
            offset: 0,
            dev,
            ino: md.ino(),
            fs_path: None,
            name: "lib.so".into(),
        };
        // Without a path nothing is opened; with one whose inode differs
        // neither.
        let r = resolve(std::slice::from_ref(&k), &|_| None);
        assert_eq!(r.opened, 0);
        let mounts = parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").unwrap());
        let on_root = mounts.iter().any(|m| m.dev == dev && m.root == "/" && m.point == "/");
        if on_root {
            let k2 = KernelModule { fs_path: Some(p.display().to_string()), ..k.clone() };
            let r = resolve(std::slice::from_ref(&k2), &|_| None);
            assert_eq!(r.opened, 1);
            let wrong = KernelModule { ino: md.ino() + 1, ..k2 };
            assert_eq!(resolve(&[wrong], &|_| None).opened, 0);
        }
    }
}
