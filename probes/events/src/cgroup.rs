//! An OOM victim's (and, for the black box, an exec's) cgroup: the kernel
//! gives its cgroup v2 id (`bpf_get_current_cgroup_id`, the inode number
//! of the cgroup's directory); the path is found by walking the cgroup2
//! mount for that inode while the cgroup still exists. (On a cgroup v1 system the memory
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

/// The cgroup2 mount point of this machine.
pub fn root() -> PathBuf {
    std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|m| cgroup2_root(&m))
        .map_or_else(|| PathBuf::from(CGROUP2_ROOT), PathBuf::from)
}

/// Every cgroup under `root`: (id, path relative to `root`), in one walk
/// (bounded as [`find_in`]'s).
pub fn all_in(root: &Path) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let Ok(md) = std::fs::symlink_metadata(root) else { return out };
    out.push((md.ino(), "/".to_string()));
    let mut stack: Vec<(PathBuf, usize)> = vec![(root.to_path_buf(), 0)];
    let mut visited = 0usize;
    while let Some((dir, depth)) = stack.pop() {
        visited += 1;
        if visited > MAX_VISITED {
            tracing::debug!("cgroup walk stopped after {MAX_VISITED} directories");
            break;
        }
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for e in rd.filter_map(Result::ok) {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Ok(m) = e.metadata() else { continue };
            let p = e.path();
            if let Ok(rel) = p.strip_prefix(root) {
                out.push((m.ino(), format!("/{}", rel.display())));
            }
            if depth + 1 < MAX_DEPTH {
                stack.push((p, depth + 1));
            }
        }
    }
    out
}

/// The systemd unit a cgroup path names: its deepest `.service` or
/// `.scope` component (`/system.slice/nginx.service` -> `nginx.service`,
/// `/user.slice/user-1000.slice/session-3.scope` -> `session-3.scope`).
pub fn unit_of(path: &str) -> Option<&str> {
    path.rsplit('/').find(|c| c.ends_with(".service") || c.ends_with(".scope"))
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
    fn units_are_the_deepest_service_or_scope() {
        assert_eq!(unit_of("/system.slice/nginx.service"), Some("nginx.service"));
        assert_eq!(unit_of("/user.slice/user-1000.slice/session-3.scope"), Some("session-3.scope"));
        assert_eq!(
            unit_of("/user.slice/user-1000.slice/user@1000.service/app.slice/app-foo-12.scope"),
            Some("app-foo-12.scope")
        );
        assert_eq!(unit_of("/system.slice/docker.service/sub"), Some("docker.service"));
        assert_eq!(unit_of("/"), None);
        assert_eq!(unit_of("/machine.slice"), None);
    }

    #[test]
    fn walks_every_directory_once() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        std::fs::create_dir_all(d.path().join("c")).unwrap();
        std::fs::write(d.path().join("a/f"), b"x").unwrap();
        let mut all: Vec<String> = all_in(d.path()).into_iter().map(|(_, p)| p).collect();
        all.sort();
        assert_eq!(all, vec!["/", "/a", "/a/b", "/c"]);
        let b = std::fs::metadata(d.path().join("a/b")).unwrap().ino();
        assert!(all_in(d.path()).contains(&(b, "/a/b".to_string())));
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
