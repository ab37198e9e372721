//! Socket mode: core_pattern `@@SOCKET` (kernel 6.17+: the kernel asks
//! first, [`crate::request`]) or `@SOCKET` (6.16: the core at once); the
//! server tells them apart by the first bytes. The kernel connects to this
//! socket for each crash and streams the core; the peer's
//! credentials and pidfd name the crashed process. One long-running
//! process, one thread per crash (each drops its own credentials), at most
//! [`MAX_CONCURRENT`] at once.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use unwind::Unwinder;

use crate::config::Config;
use crate::governor::{Decision, Governor};
use crate::handle::{handle, Input};
use crate::request;
use crate::stream::Stream;

pub const MAX_CONCURRENT: usize = 4;
/// How often the server sends the `crash/repeated` records of governor
/// windows that are over.
const SWEEP_EVERY: Duration = Duration::from_secs(2);
const SO_PEERPIDFD: libc::c_int = 77;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotSocket(PathBuf),
    #[error("cannot listen on {path}: {source}")]
    Bind { path: PathBuf, source: std::io::Error },
}

/// The peer's (pid, uid, gid).
pub fn peer_cred(s: &UnixStream) -> Option<(u32, u32, u32)> {
    let mut c = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt into a ucred of the given size.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut c as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (r == 0 && c.pid > 0).then_some((c.pid as u32, c.uid, c.gid))
}

/// The peer's pidfd (`SO_PEERPIDFD`, Linux 6.5+).
pub fn peer_pidfd(s: &UnixStream) -> Option<OwnedFd> {
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into an int.
    let r = unsafe {
        libc::getsockopt(s.as_raw_fd(), libc::SOL_SOCKET, SO_PEERPIDFD, (&mut fd as *mut libc::c_int).cast(), &mut len)
    };
    // SAFETY: a fresh fd we own.
    (r == 0 && fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `PIDFD_GET_INFO` (`_IOWR(0xFF, 11, struct pidfd_info)`, 80 bytes).
const PIDFD_GET_INFO: libc::c_ulong = (3 << 30) | (80 << 16) | (0xFF << 8) | 11;
const PIDFD_INFO_COREDUMP: u64 = 1 << 4;
/// `coredump_mask`: the core is dumped as the user (dumpable), or as root
/// (not dumpable: set-id, changed credentials, `PR_SET_DUMPABLE` 0).
const PIDFD_COREDUMP_USER: u32 = 1 << 2;
const PIDFD_COREDUMP_ROOT: u32 = 1 << 3;

/// Whether the kernel dumps the peer as a dumpable process: `Some(1)` as
/// the user, `Some(2)` as root (memory to be withheld), as core_pattern's
/// `%d` says in pipe mode; `None` when the kernel does not say (before 6.16).
pub fn peer_dump_mode(pidfd: &OwnedFd) -> Option<u8> {
    let mut info = [0u8; 80];
    info[..8].copy_from_slice(&PIDFD_INFO_COREDUMP.to_le_bytes());
    // SAFETY: PIDFD_GET_INFO fills at most the 80 bytes its number encodes.
    let r = unsafe { libc::ioctl(pidfd.as_raw_fd(), PIDFD_GET_INFO as _, info.as_mut_ptr()) };
    let mask = u64::from_le_bytes(info[..8].try_into().ok()?);
    if r != 0 || mask & PIDFD_INFO_COREDUMP == 0 {
        return None;
    }
    let coredump = u32::from_le_bytes(info[64..68].try_into().ok()?);
    if coredump & PIDFD_COREDUMP_ROOT != 0 {
        Some(2)
    } else if coredump & PIDFD_COREDUMP_USER != 0 {
        Some(1)
    } else {
        None
    }
}

/// Binds `path` (replacing a stale socket, never another file), mode 0600.
pub fn bind(path: &Path) -> Result<UnixListener, ServeError> {
    if let Ok(md) = std::fs::symlink_metadata(path) {
        if !md.file_type().is_socket() {
            return Err(ServeError::NotSocket(path.into()));
        }
        let _ = std::fs::remove_file(path);
    }
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let l = UnixListener::bind(path).map_err(|source| ServeError::Bind { path: path.into(), source })?;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    Ok(l)
}

/// Serves until `stop` is set (checked between connections).
pub fn serve(listener: UnixListener, cfg: Config, collector: Option<PathBuf>, stop: Arc<AtomicBool>) {
    let unwinder = Arc::new(Unwinder::new(cfg.unwind_options()));
    let busy = Arc::new((Mutex::new(0usize), Condvar::new()));
    let governor = crate::governor::open_for(&cfg).map(Arc::new);
    let mut swept = Instant::now();
    let _ = listener.set_nonblocking(true);
    while !stop.load(Ordering::Relaxed) {
        // Windows of the crash-loop governor that are over: their
        // `crash/repeated` records.
        if let Some(g) = governor.as_ref().filter(|_| swept.elapsed() >= SWEEP_EVERY) {
            swept = Instant::now();
            let now =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            match g.sweep(now) {
                Ok(reports) => {
                    if let Err(e) = crate::deliver_repeated(&cfg, collector.as_deref(), &reports) {
                        tracing::error!(error = %e, "crash/repeated records not delivered");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "crash governor sweep failed"),
            }
        }
        let conn = match listener.accept() {
            Ok((c, _)) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // Wait for the kernel's next connection (woken at once),
                // looking at the stop flag every 200 ms.
                let mut p = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd on a listener we hold.
                unsafe { libc::poll(&mut p, 1, 200) };
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let _ = conn.set_nonblocking(false);
        {
            let (m, cv) = &*busy;
            let Ok(mut n) = m.lock() else { break };
            while *n >= MAX_CONCURRENT {
                let Ok(g) = cv.wait(n) else { return };
                n = g;
            }
            *n += 1;
        }
        let (cfg, unwinder, busy, collector) = (cfg.clone(), unwinder.clone(), busy.clone(), collector.clone());
        let governor = governor.clone();
        std::thread::spawn(move || {
            one(conn, &cfg, &unwinder, collector.as_deref(), governor.as_deref());
            let (m, cv) = &*busy;
            if let Ok(mut n) = m.lock() {
                *n -= 1;
            }
            cv.notify_one();
        });
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn one(
    mut conn: UnixStream,
    cfg: &Config,
    unwinder: &Arc<Unwinder>,
    collector: Option<&Path>,
    governor: Option<&Governor>,
) {
    let deadline = Instant::now() + cfg.budget;
    let cred = peer_cred(&conn);
    let pidfd = peer_pidfd(&conn);
    let Some((pid, _, _)) = cred else {
        tracing::warn!("connection without peer credentials; dropped");
        return;
    };
    let input = Input {
        pid: Some(pid),
        pidfd: pidfd.as_ref().map(|f| f.as_raw_fd()),
        // The kernel's word on dumpability (else /proc's owner decides).
        dumpable: pidfd.as_ref().and_then(peer_dump_mode),
        // SAFETY: geteuid has no preconditions.
        drop_privileges: unsafe { libc::geteuid() } == 0,
        ..Input::default()
    };
    let _ =
        conn.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))));
    let opening = match request::peek_opening(&conn) {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(pid, error = %e, "nothing read from the kernel's connection");
            return;
        }
    };
    let governor_all = governor;
    let mut governor = governor;
    let mut early_reports = Vec::new();
    let mut early: Option<String> = None;
    match opening {
        request::Opening::Closed => {
            tracing::debug!(pid, "connection closed without a core (a check that the socket is served)");
            return;
        }
        request::Opening::Core => {}
        request::Opening::Request => {
            let req = match request::read_request(&mut conn) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(pid, error = %e, "bad coredump request; dropped");
                    return;
                }
            };
            // The governor decides before the kernel writes a byte of the
            // core, once a core has shown which signature this crash site
            // (its early key, from the live process) has.
            early = governor.and_then(|_| request::early_key(pid, input.pidfd, None, input.dumpable, unwinder));
            if let (Some(g), Some(key)) = (governor, &early) {
                match g.admit_site(key, unix_now()) {
                    Ok(Some((sig, decision, reports))) => {
                        early_reports = reports;
                        if decision == Decision::Repeated {
                            tracing::info!(pid, signature = %sig, "repeated crash counted; core refused");
                            if let Err(e) = request::answer(&mut conn, &req, request::COREDUMP_REJECT) {
                                tracing::warn!(pid, error = %e, "refusing the core");
                            }
                            if let Err(e) = crate::deliver_repeated(cfg, collector, &early_reports) {
                                tracing::error!(error = %e, "crash/repeated records not delivered");
                            }
                            return;
                        }
                        // Counted here: the core is not counted again.
                        governor = None;
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "crash governor unavailable; the core decides"),
                }
            }
            // The kernel streams the core here and keeps the process (and
            // its /proc) until we are done.
            if let Err(e) = request::answer(&mut conn, &req, request::COREDUMP_KERNEL | request::COREDUMP_WAIT) {
                tracing::error!(pid, error = %e, "the kernel did not take our answer; no core");
                return;
            }
        }
    }
    let _ = conn.set_read_timeout(None);
    let mut stream = Stream::from_fd(conn, Some(deadline));
    match handle(&mut stream, &input, cfg, unwinder, deadline, governor) {
        Ok(mut out) => {
            out.repeated.extend(early_reports);
            if let (Some(g), Some(key), Some(sig)) = (governor_all, &early, &out.report.signature) {
                if let Err(e) = g.learn_site(key, sig) {
                    tracing::warn!(error = %e, "crash site not remembered");
                }
            }
            if let Err(e) = crate::deliver(cfg, collector, &out) {
                tracing::error!(pid, error = %e, "crash record not delivered");
            }
        }
        Err(e) => tracing::error!(pid, error = %e, "crash not handled"),
    }
}
