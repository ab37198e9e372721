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
}
