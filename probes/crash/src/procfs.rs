//! The crashed process as seen through `/proc`, opened once by directory
//! fd and bound to the process by its pidfd (or, without one, by a start
//! time check against the dump time), so a recycled PID cannot substitute
//! another process.

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use telemetry::crash_id::{parse_stat, Stat};
use thiserror::Error;
use unwind::{parse_proc_maps, Mappings};

#[derive(Debug, Error)]
pub enum ProcError {
    #[error("cannot open /proc/{pid}: {source} (the process is gone?)")]
    Open { pid: u32, source: std::io::Error },
    #[error("cannot read /proc/{pid}/{file}: {source}")]
    Read { pid: u32, file: &'static str, source: std::io::Error },
    #[error("/proc/{pid}/{file} is malformed: {reason}")]
    Parse { pid: u32, file: &'static str, reason: String },
    #[error(
        "PID {pid} no longer names the crashed process (its pidfd is dead): refusing to read another process's /proc"
    )]
    Reused { pid: u32 },
    #[error("PID {pid} started after the crash (start {start_unix} > dump time {dump_time}): the PID was reused")]
    StartedLater { pid: u32, start_unix: u64, dump_time: u64 },
}

/// What the handler knows of the live (dumping) process.
#[derive(Debug)]
pub struct Process {
    pub pid: u32,
    pub dir: OwnedFd,
    pub stat: Stat,
    /// Real uid and gid (from `status`).
    pub uid: u32,
    pub gid: u32,
    /// `/proc/PID/exe` target (raw bytes, lossy).
    pub exe: Option<String>,
    /// Owner of `/proc/PID`: root for a non-dumpable process.
    pub proc_owner: u32,
    pub maps: Option<Mappings>,
}

fn read_at(dir: &OwnedFd, name: &str, limit: u64) -> std::io::Result<Vec<u8>> {
    let c = CString::new(name).map_err(std::io::Error::other)?;
    // SAFETY: valid arguments; fd checked.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    let f = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut v = Vec::new();
    f.take(limit).read_to_end(&mut v)?;
    Ok(v)
}

/// Why `/proc/PID/status` has no usable real uid or gid.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StatusError {
    /// No line with this prefix (`Uid:` or `Gid:`).
    #[error("no {0} line")]
    Missing(&'static str),
    /// The line's first value is not a number.
    #[error("bad {0} line")]
    Bad(&'static str),
}

/// Parses the `Uid:` and `Gid:` lines of `/proc/PID/status` (real ids).
pub fn parse_status_ids(s: &[u8]) -> Result<(u32, u32), StatusError> {
    let mut uid = None;
    let mut gid = None;
    for line in s.split(|&c| c == b'\n') {
        let field = |prefix: &'static str| -> Option<Result<u32, StatusError>> {
            let rest = line.strip_prefix(prefix.as_bytes())?;
            let first = rest.split(|&c| c == b'\t' || c == b' ').find(|f| !f.is_empty());
            Some(
                first
                    .and_then(|f| std::str::from_utf8(f).ok())
                    .and_then(|f| f.parse().ok())
                    .ok_or(StatusError::Bad(prefix)),
            )
        };
        if let Some(v) = field("Uid:") {
            uid = Some(v?);
        }
        if let Some(v) = field("Gid:") {
            gid = Some(v?);
        }
    }
    Ok((uid.ok_or(StatusError::Missing("Uid:"))?, gid.ok_or(StatusError::Missing("Gid:"))?))
}

/// Whether the pidfd still names a live (or dumping) process.
pub fn pidfd_alive(pidfd: RawFd) -> bool {
    // SAFETY: pidfd_send_signal with signal 0 only checks.
    unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd, 0, std::ptr::null::<libc::siginfo_t>(), 0) == 0 }
}

/// Opens a pidfd for `pid` (socket mode gets one from the peer instead).
pub fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: plain syscall; fd checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: a fresh fd we own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn boot_time() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    s.lines().find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}

/// Opens `/proc/PID` and reads what the handler needs. With `pidfd`, the
/// directory is proven to be the crashed process's by checking the pidfd
/// is alive *after* opening it; without one, by its start time not being
/// after `dump_time` (unix seconds, core_pattern `%t`).
pub fn open(pid: u32, pidfd: Option<RawFd>, dump_time: Option<u64>) -> Result<Process, ProcError> {
    let dir =
        unwind::open_dir(None, Path::new(&format!("/proc/{pid}"))).map_err(|source| ProcError::Open { pid, source })?;
    let stat_b = read_at(&dir, "stat", 4096).map_err(|source| ProcError::Read { pid, file: "stat", source })?;
    let stat = parse_stat(&stat_b).map_err(|e| ProcError::Parse { pid, file: "stat", reason: e.to_string() })?;
    match (pidfd, dump_time) {
        (Some(fd), _) => {
            if !pidfd_alive(fd) {
                return Err(ProcError::Reused { pid });
            }
        }
        (None, Some(t)) => {
            // SAFETY: sysconf has no preconditions.
            let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
            if let Some(bt) = boot_time() {
                let start_unix = bt + stat.start_time / hz;
                if start_unix > t.saturating_add(1) {
                    return Err(ProcError::StartedLater { pid, start_unix, dump_time: t });
                }
            }
        }
        (None, None) => {}
    }
    let status = read_at(&dir, "status", 64 << 10).map_err(|source| ProcError::Read { pid, file: "status", source })?;
    let (uid, gid) =
        parse_status_ids(&status).map_err(|e| ProcError::Parse { pid, file: "status", reason: e.to_string() })?;
    let exe = readlink_at(&dir, "exe");
    // SAFETY: stat is plain data; all zeros is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on the directory fd we hold, into `st`.
    let proc_owner = if unsafe { libc::fstat(dir.as_raw_fd(), &mut st) } == 0 { st.st_uid } else { 0 };
    let maps = read_at(&dir, "maps", 64 << 20).ok().and_then(|b| match parse_proc_maps(&b) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!(pid, error = %e, "ignoring malformed /proc/PID/maps");
            None
        }
    });
    Ok(Process { pid, dir, stat, uid, gid, exe, proc_owner, maps })
}

fn readlink_at(dir: &OwnedFd, name: &str) -> Option<String> {
    let c = CString::new(name).ok()?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: buffer valid for its length.
    let n = unsafe { libc::readlinkat(dir.as_raw_fd(), c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(String::from_utf8_lossy(&buf).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn status_ids_strict() {
        assert_eq!(
            parse_status_ids(b"Name:\tx\nUid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\n"),
            Ok((1000, 100))
        );
        assert!(parse_status_ids(b"Uid:\tabc\nGid:\t1\n").is_err());
        assert!(parse_status_ids(b"Gid:\t1\n").is_err());
    }
    #[test]
    fn opens_self_and_rejects_dead_pidfd() {
        let me = std::process::id();
        let fd = pidfd_open(me).unwrap();
        let p = open(me, Some(fd.as_raw_fd()), None).unwrap();
        assert_eq!(p.pid, me);
        assert!(p.maps.is_some());
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let cfd = pidfd_open(child.id()).unwrap();
        child.wait().unwrap();
        assert!(!pidfd_alive(cfd.as_raw_fd()));
        // A start-time check against a dump time long before this process started.
        assert!(matches!(open(me, None, Some(1000)), Err(ProcError::StartedLater { .. })));
    }
}
