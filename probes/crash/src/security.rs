//! Hardening of the handler itself: not dumpable, no new privileges,
//! privileges dropped to the crashed user before anything that user
//! controls is read.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum SecurityError {
    #[error("prctl({what}) failed: {source}")]
    Prctl { what: &'static str, source: std::io::Error },
    #[error("cannot drop privileges to uid {uid} gid {gid}: {source}; refusing to read the user's files as root")]
    Drop { uid: u32, gid: u32, source: std::io::Error },
}

/// `PR_SET_DUMPABLE 0`: the handler never dumps itself (no recursion) and
/// cannot be ptraced by the crashed user, even after dropping to its uid.
pub fn set_not_dumpable() -> Result<(), SecurityError> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(SecurityError::Prctl { what: "PR_SET_DUMPABLE", source: std::io::Error::last_os_error() });
    }
    Ok(())
}

/// Whether this process is dumpable (for tests and logs).
pub fn is_dumpable() -> bool {
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) == 1 }
}

/// Drops the *calling thread's* credentials to `uid`/`gid` with no
/// supplementary groups (raw syscalls: thread-scoped, so the socket-mode
/// server keeps root in its accept thread while each worker thread runs as
/// the crashed user). Sets no-new-privileges and non-dumpable again
/// (changing credentials resets the dumpable flag).
pub fn drop_thread_privileges(uid: u32, gid: u32) -> Result<(), SecurityError> {
    let err = |_: ()| SecurityError::Drop { uid, gid, source: std::io::Error::last_os_error() };
    // SAFETY: raw credential syscalls with plain integer arguments.
    unsafe {
        if libc::geteuid() != 0 && libc::geteuid() == uid {
            // Already this user (tests run unprivileged).
        } else {
            if libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) != 0 {
                return Err(err(()));
            }
            if libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0 {
                return Err(err(()));
            }
            if libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0 {
                return Err(err(()));
            }
        }
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    }
    set_not_dumpable()?;
    // Verify: a drop that silently failed must not go on as root.
    let (mut r, mut e, mut s) = (0u32, 0u32, 0u32);
    // SAFETY: getresuid writes three u32s.
    unsafe { libc::syscall(libc::SYS_getresuid, &mut r, &mut e, &mut s) };
    if r != uid || e != uid || s != uid {
        return Err(SecurityError::Drop { uid, gid, source: std::io::Error::other("credentials did not change") });
    }
    Ok(())
}

/// Runs `f` on the calling thread with the file access of `uid`/`gid`:
/// no effective capabilities, no supplementary groups, file-system ids set
/// to the user's, then restores them all. Thread-scoped and reversible
/// (raw syscalls; the real, effective and saved ids stay root's), for the
/// early key of a crash, which is decided before the handler drops its
/// privileges for good: files the unwinder opens while `f` runs are
/// checked as the crashed user's, as after [`drop_thread_privileges`],
/// without a thread to start (a thread's start and its stack's unmapping
/// were ~5% of a repeated crash's CPU in pipe mode). Not root: runs `f`.
pub fn with_user_files<T>(uid: u32, gid: u32, f: impl FnOnce() -> T) -> Result<T, SecurityError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(f());
    }
    let err = |what: &str| SecurityError::Drop {
        uid,
        gid,
        source: std::io::Error::other(format!("{what}: {}", std::io::Error::last_os_error())),
    };
    let saved = Saved::take().ok_or_else(|| err("cannot read this thread's capabilities and groups"))?;
    // From here on, whatever happens, the thread's credentials are restored.
    let restore = Restore(saved);
    // SAFETY: raw credential syscalls on the calling thread, plain
    // arguments and buffers of the sizes they are given.
    unsafe {
        if libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) != 0 {
            return Err(err("setgroups"));
        }
        libc::syscall(libc::SYS_setfsgid, gid);
        libc::syscall(libc::SYS_setfsuid, uid);
        let mut none = restore.0.caps;
        for d in &mut none.1 {
            d.effective = 0;
        }
        if libc::syscall(libc::SYS_capset, &mut none.0, none.1.as_mut_ptr()) != 0 {
            return Err(err("capset"));
        }
        // setfs[ug]id answer the previous id: asked with an invalid one,
        // they change nothing and tell the current.
        if libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32 != uid
            || libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32 != gid
        {
            return Err(err("file-system ids did not change"));
        }
    }
    // A change of file-system ids may make the process dumpable again.
    set_not_dumpable()?;
    let out = f();
    drop(restore);
    set_not_dumpable()?;
    Ok(out)
}

/// A thread's capabilities and supplementary groups, to restore.
struct Saved {
    caps: (CapHeader, [CapData; 2]),
    groups: Vec<libc::gid_t>,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words of each set.
const CAP_V3: u32 = 0x2008_0522;

impl Saved {
    fn take() -> Option<Saved> {
        let mut caps = (CapHeader { version: CAP_V3, pid: 0 }, [CapData::default(); 2]);
        let mut groups = vec![0 as libc::gid_t; 256];
        // SAFETY: capget fills the header and two data structs;
        // getgroups fills at most `groups.len()` ids.
        unsafe {
            if libc::syscall(libc::SYS_capget, &mut caps.0, caps.1.as_mut_ptr()) != 0 {
                return None;
            }
            let n = libc::syscall(libc::SYS_getgroups, groups.len() as libc::c_int, groups.as_mut_ptr());
            groups.truncate(usize::try_from(n).ok()?);
        }
        Some(Saved { caps, groups })
    }
}

/// Gives the calling thread back its capabilities, groups and root's
/// file-system ids.
struct Restore(Saved);

impl Drop for Restore {
    fn drop(&mut self) {
        let mut caps = self.0.caps;
        // SAFETY: as in with_user_files. The effective capabilities come
        // back first (within the permitted set), so setgroups is allowed.
        let ok = unsafe {
            libc::syscall(libc::SYS_capset, &mut caps.0, caps.1.as_mut_ptr()) == 0
                && libc::syscall(libc::SYS_setgroups, self.0.groups.len(), self.0.groups.as_ptr()) == 0
                && {
                    libc::syscall(libc::SYS_setfsgid, 0u32);
                    libc::syscall(libc::SYS_setfsuid, 0u32);
                    libc::syscall(libc::SYS_setfsuid, u32::MAX) == 0
                }
        };
        if !ok {
            // Without its credentials the handler cannot go on safely as
            // root or as the user: it stops here, the crash unrecorded.
            tracing::error!(
                "cannot restore the handler's credentials after the early key: {}; exiting",
                std::io::Error::last_os_error()
            );
            std::process::exit(1);
        }
    }
}

/// The calling thread's (real, effective, saved) uid.
pub fn thread_uids() -> (u32, u32, u32) {
    let (mut r, mut e, mut s) = (0u32, 0u32, 0u32);
    // SAFETY: getresuid writes three u32s.
    unsafe { libc::syscall(libc::SYS_getresuid, &mut r, &mut e, &mut s) };
    (r, e, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_dumpable_after_hardening() {
        set_not_dumpable().unwrap();
        assert!(!is_dumpable());
    }

    #[test]
    fn drop_is_per_thread_and_verified() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(std::env::var("CI").map_or(true, |v| v != "true"), "needs root in CI");
            return;
        }
        let before = thread_uids();
        let t = std::thread::spawn(|| {
            drop_thread_privileges(65534, 65534).unwrap();
            let ids = thread_uids();
            // Root-only files are now out of reach for this thread.
            let denied = std::fs::read("/proc/1/environ").is_err();
            (ids, denied, is_dumpable())
        });
        let ((r, e, s), denied, dumpable) = t.join().unwrap();
        assert_eq!((r, e, s), (65534, 65534, 65534));
        assert!(denied, "a dropped thread cannot read root's files");
        assert!(!dumpable, "still not dumpable after changing credentials");
        assert_eq!(thread_uids(), before, "other threads keep their credentials");
    }

    #[test]
    fn user_files_are_the_users_and_everything_comes_back() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(std::env::var("CI").map_or(true, |v| v != "true"), "needs root in CI");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("root-only");
        std::fs::write(&secret, b"x").unwrap();
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let before = (thread_uids(), Saved::take().unwrap());
        let inside = with_user_files(65534, 65534, || {
            // SAFETY: setfsuid(-1) only reads.
            let fsuid = unsafe { libc::syscall(libc::SYS_setfsuid, u32::MAX) } as u32;
            (std::fs::read(&secret).is_err(), std::fs::read("/proc/1/environ").is_err(), fsuid, thread_uids())
        })
        .unwrap();
        assert!(inside.0, "root's 0600 file is out of reach inside");
        assert!(inside.1, "so is /proc/1/environ");
        assert_eq!(inside.2, 65534);
        assert_eq!(inside.3, before.0, "real, effective and saved ids stay root's");
        let after = Saved::take().unwrap();
        assert_eq!(std::fs::read(&secret).unwrap(), b"x", "readable again after");
        // SAFETY: setfsuid(-1) only reads.
        assert_eq!(unsafe { libc::syscall(libc::SYS_setfsuid, u32::MAX) }, 0);
        assert_eq!(after.groups, before.1.groups);
        assert_eq!(
            after.caps.1.iter().map(|d| (d.effective, d.permitted)).collect::<Vec<_>>(),
            before.1.caps.1.iter().map(|d| (d.effective, d.permitted)).collect::<Vec<_>>()
        );
        assert!(!is_dumpable());
    }
}
