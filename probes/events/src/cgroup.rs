//! An OOM victim's cgroup: the kernel gives its cgroup v2 id
//! (`bpf_get_current_cgroup_id`, the inode number of the cgroup's
//! directory); the path is found by walking the cgroup2 mount for that
//! inode while the cgroup still exists. (On a cgroup v1 system the memory
//! controller's cgroup is another hierarchy: the record takes it from the
//! kernel's OOM summary line, see `crate::kmsg`.)

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where cgroup v2 is mounted on unified systemd systems.
pub const CGROUP2_ROOT: &str = "/sys/fs/cgroup";

/// The cgroup2 mount point: the first `cgroup2` line of
/// `/proc/self/mountinfo` (`/sys/fs/cgroup/unified` on hybrid systems).
pub fn cgroup2_root(mountinfo: &str) -> Option<String> {
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(str::to_string)
    })
}

/// Most directories visited per lookup (a bound whatever the hierarchy).
const MAX_VISITED: usize = 20_000;
/// Deepest level searched.
const MAX_DEPTH: usize = 16;

/// The path of cgroup `id` relative to the cgroup2 root (`/` for the root
/// itself), or None when it is not found (already removed, cgroup v1 only).
pub fn path_of(id: u64) -> Option<String> {
    let root = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|m| cgroup2_root(&m))
        .unwrap_or_else(|| CGROUP2_ROOT.to_string());
    find_in(Path::new(&root), id)
}

/// As [`path_of`] under `root`.
pub fn find_in(root: &Path, id: u64) -> Option<String> {
    if id == 0 {
        return None;
    }
    let md = std::fs::symlink_metadata(root).ok()?;
    if md.ino() == id {
        return Some("/".into());
    }
    let mut stack: Vec<(PathBuf, usize)> = vec![(root.to_path_buf(), 0)];
    let mut visited = 0usize;
    while let Some((dir, depth)) = stack.pop() {
        visited += 1;
        if visited > MAX_VISITED {
            tracing::debug!(id, "cgroup search stopped after {MAX_VISITED} directories");
            return None;
        }
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for e in rd.filter_map(Result::ok) {
            let Ok(ft) = e.file_type() else { continue };
            if !ft.is_dir() {
                continue;
            }
            let Ok(m) = e.metadata() else { continue };
            let p = e.path();
            if m.ino() == id {
                let rel = p.strip_prefix(root).ok()?;
                return Some(format!("/{}", rel.display()));
            }
            if depth + 1 < MAX_DEPTH {
                stack.push((p, depth + 1));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount() {
        let m = "30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n\
                 40 30 0:35 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                 41 30 0:36 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_root(m).as_deref(), Some("/sys/fs/cgroup/unified"));
        assert_eq!(cgroup2_root("30 25 0:26 / /x rw - tmpfs tmpfs rw\n"), None);
    }

    #[test]
    fn finds_a_directory_by_inode() {
        let d = tempfile::tempdir().unwrap();
        let leaf = d.path().join("a/b/c");
        std::fs::create_dir_all(&leaf).unwrap();
        std::fs::write(d.path().join("a/file"), b"x").unwrap();
        let ino = std::fs::metadata(&leaf).unwrap().ino();
        assert_eq!(find_in(d.path(), ino).as_deref(), Some("/a/b/c"));
        let root_ino = std::fs::metadata(d.path()).unwrap().ino();
        assert_eq!(find_in(d.path(), root_ino).as_deref(), Some("/"));
        assert_eq!(find_in(d.path(), 0), None);
        let file_ino = std::fs::metadata(d.path().join("a/file")).unwrap().ino();
        assert_eq!(find_in(d.path(), file_ino), None, "only directories are cgroups");
    }
}
