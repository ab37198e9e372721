//! Opening the files named by mappings, without trusting their paths.
//!
//! A crash handler runs as root on paths that the crashed process controls:
//! [`ProcOpener`] opens the very file that is mapped through
//! `/proc/PID/map_files/START-END` (no path walk at all), else resolves the
//! path inside the process's own root (`/proc/PID/root`) with
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`;
//! it never opens a bare path. Every opener refuses anything but a regular
//! file and opens with `O_NONBLOCK`, so a FIFO cannot hang it.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Mutex;

use crate::maps::{Mapping, Mappings};

/// How the unwinder gets at module and debug files.
pub trait FileOpener: Send + Sync {
    /// The file mapped by `m`.
    fn open_mapping(&self, m: &Mapping) -> Option<File>;
    /// An auxiliary file (separate debug info) by absolute path, as the
    /// process sees the file system.
    fn open_path(&self, path: &Path) -> Option<File>;
}

/// Keeps `f` only if it is a regular file.
fn regular(f: File) -> Option<File> {
    let md = f.metadata().ok()?;
    md.file_type().is_file().then_some(f)
}

fn cstr(p: &Path) -> Option<CString> {
    CString::new(p.as_os_str().as_bytes()).ok()
}

const O_FLAGS: i32 = libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY;

/// `openat(dirfd, path)`, following a final magic link only when `follow`.
fn openat(dir: i32, path: &Path, follow: bool) -> Option<File> {
    let c = cstr(path)?;
    let flags = O_FLAGS | if follow { 0 } else { libc::O_NOFOLLOW };
    // SAFETY: c is a valid NUL-terminated string; the fd is checked.
    let fd = unsafe { libc::openat(dir, c.as_ptr(), flags) };
    // SAFETY: fd is a fresh descriptor we own.
    (fd >= 0).then(|| unsafe { File::from_raw_fd(fd) }).and_then(regular)
}

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}
const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_NO_SYMLINKS: u64 = 0x04;
const RESOLVE_IN_ROOT: u64 = 0x10;

/// Opens `path` (absolute or not) beneath `root` as if `root` were `/`,
/// refusing every symlink on the way.
pub fn open_in_root(root: &OwnedFd, path: &Path) -> Option<File> {
    let c = cstr(path)?;
    let how = OpenHow {
        flags: O_FLAGS as u64,
        mode: 0,
        resolve: RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: arguments are valid for openat2(2); the fd is checked.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh descriptor we own.
    regular(unsafe { File::from_raw_fd(fd as i32) })
}

/// Opens a directory (`O_PATH`), refusing a final symlink.
pub fn open_dir(dir: Option<&OwnedFd>, path: &Path) -> std::io::Result<OwnedFd> {
    let c = cstr(path).ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let at = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: valid arguments; fd checked.
    let fd =
        unsafe { libc::openat(at, c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_NOFOLLOW) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens a process's files through its `/proc/PID` directory (opened once,
/// so a recycled PID cannot redirect later opens).
pub struct ProcOpener {
    proc_dir: OwnedFd,
    root: Option<OwnedFd>,
    preopened: Mutex<HashMap<String, File>>,
}

impl ProcOpener {
    /// `proc_dir` is an fd of `/proc/PID` opened by the caller.
    pub fn new(proc_dir: OwnedFd) -> ProcOpener {
        let root = openat_dir(&proc_dir, "root");
        ProcOpener { proc_dir, root, preopened: Mutex::new(HashMap::new()) }
    }

    /// Opens every file-backed mapping now, through `map_files` (which
    /// needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE: call this before
    /// dropping privileges; the descriptors stay usable afterwards).
    pub fn preopen(&self, maps: &Mappings) -> usize {
        let mut got = 0;
        let Ok(mut pre) = self.preopened.lock() else { return 0 };
        for m in maps.iter().filter(|m| m.is_file()) {
            let Some(path) = m.path.clone() else { continue };
            if pre.contains_key(&path) {
                continue;
            }
            if let Some(f) = self.map_file(m) {
                pre.insert(path, f);
                got += 1;
            }
        }
        got
    }

    fn map_file(&self, m: &Mapping) -> Option<File> {
        let name = format!("map_files/{:x}-{:x}", m.start, m.end);
        openat(self.proc_dir.as_raw_fd(), Path::new(&name), true)
    }
}

fn openat_dir(dir: &OwnedFd, name: &str) -> Option<OwnedFd> {
    let c = CString::new(name).ok()?;
    // SAFETY: valid arguments; fd checked. `root` is a magic link the
    // kernel resolves to the process's root directory itself.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    // SAFETY: a fresh descriptor we own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

impl FileOpener for ProcOpener {
    fn open_mapping(&self, m: &Mapping) -> Option<File> {
        if !m.is_file() {
            return None;
        }
        let path = m.path.as_deref()?;
        if let Some(f) = self.preopened.lock().ok()?.get(path).and_then(|f| f.try_clone().ok()) {
            return Some(f);
        }
        self.map_file(m).or_else(|| self.open_path(Path::new(m.display_path())))
    }
    fn open_path(&self, path: &Path) -> Option<File> {
        open_in_root(self.root.as_ref()?, path)
    }
}

/// Opens paths of this process's own file system (tools, tests, a profiler
/// sampling processes in its own mount namespace), refusing a final
/// symlink and anything but a regular file.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostOpener;

impl FileOpener for HostOpener {
    fn open_mapping(&self, m: &Mapping) -> Option<File> {
        m.is_file().then(|| self.open_path(Path::new(m.display_path()))).flatten()
    }
    fn open_path(&self, path: &Path) -> Option<File> {
        openat(libc::AT_FDCWD, path, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn refuses_symlinks_and_fifos() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        std::os::unix::fs::symlink(&f, d.path().join("l")).unwrap();
        let fifo = CString::new(d.path().join("p").as_os_str().as_bytes()).unwrap();
        // SAFETY: valid path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert!(HostOpener.open_path(&f).is_some());
        assert!(HostOpener.open_path(&d.path().join("l")).is_none());
        assert!(HostOpener.open_path(&d.path().join("p")).is_none());
        let root = open_dir(None, d.path()).unwrap();
        assert!(open_in_root(&root, Path::new("/f")).is_some());
        assert!(open_in_root(&root, Path::new("/l")).is_none());
        assert!(open_in_root(&root, Path::new("/p")).is_none());
        // `..` cannot climb out of the root.
        let sub = d.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let root2 = open_dir(None, &sub).unwrap();
        assert!(open_in_root(&root2, Path::new("/../f")).is_none());
    }
}
