//! The kernel's request/ack coredump protocol (core_pattern `@@SOCKET`,
//! Linux 6.17+, `include/uapi/linux/coredump.h`): on a crash the kernel
//! connects, sends a `coredump_req` (size, size of the ack it accepts, the
//! features it supports) and waits; the server answers with a
//! `coredump_ack` whose mask says how to dump (`COREDUMP_KERNEL`: stream
//! the core on this connection; `COREDUMP_WAIT`: and keep the process
//! until the server closes) or not at all (`COREDUMP_REJECT`); the kernel
//! confirms with a 4-byte mark, then (unless rejected) the core follows.
//!
//! Before answering, crashprobe can name the crash site without its core:
//! the dumping thread's pc and sp are in `/proc/PID/task/TID/stat` while it
//! dumps (`kstkeip`, `kstkesp`), its stack in `/proc/PID/mem`, its modules
//! in `/proc/PID/maps`. Unwinding them (no symbols) gives an *early key*:
//! the top frames' modules and offsets, from pc and sp only (without the
//! other registers, so not always the frames the core gives). The governor
//! learns which signature each early key has from the first core of it
//! ([`crate::governor::Governor::learn_site`]), and from then on refuses that
//! site's repeated crashes before any byte of their core is written. Pipe
//! mode uses the same key to stop before reading the core.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use unwind::{Backtrace, ProcOpener, Registers, StackSnapshot, Unwinder};

use crate::procfs;
use crate::security;

pub const COREDUMP_KERNEL: u64 = 1 << 0;
pub const COREDUMP_USERSPACE: u64 = 1 << 1;
pub const COREDUMP_REJECT: u64 = 1 << 2;
pub const COREDUMP_WAIT: u64 = 1 << 3;
/// `COREDUMP_REQ_SIZE_VER0`, `COREDUMP_ACK_SIZE_VER0`.
pub const REQ_SIZE_VER0: u32 = 16;
pub const ACK_SIZE_VER0: u32 = 16;
/// `COREDUMP_MARK_REQACK`: the kernel took the ack.
pub const MARK_REQACK: u32 = 0;
/// A request larger than this is not the kernel's.
const REQ_SIZE_MAX: u32 = 4096;
/// `PF_DUMPCORE`: the thread that is writing the core.
const PF_DUMPCORE: u64 = 0x200;

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("reading the coredump request: {0}")]
    Io(#[from] std::io::Error),
    #[error("coredump request of {0} bytes: not the kernel's protocol")]
    Size(u32),
    #[error("the kernel accepts acks of {0} bytes; ours is {ACK_SIZE_VER0}")]
    AckSize(u32),
    #[error("the kernel refused our ack (mark {0})")]
    Mark(u32),
}

/// What the kernel asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub size: u32,
    pub size_ack: u32,
    /// The features this kernel supports.
    pub mask: u64,
}

/// What the first bytes on a connection from the kernel are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// An ELF core (`@SOCKET`).
    Core,
    /// A `coredump_req` (`@@SOCKET`).
    Request,
    /// Closed without data (such as `crashprobe --install` checking that
    /// something serves the socket).
    Closed,
}

/// Looks at the first 4 bytes without consuming them (waiting until the
/// stream's read timeout).
pub fn peek_opening(conn: &UnixStream) -> std::io::Result<Opening> {
    let mut b = [0u8; 4];
    loop {
        // SAFETY: recv into a 4-byte buffer on a socket we hold.
        let n =
            unsafe { libc::recv(conn.as_raw_fd(), b.as_mut_ptr().cast(), b.len(), libc::MSG_PEEK | libc::MSG_WAITALL) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok(match (n, &b) {
            (4, b"\x7fELF") => Opening::Core,
            (4, _) => Opening::Request,
            _ => Opening::Closed,
        });
    }
}

/// Reads the kernel's `coredump_req` (any larger tail is read and ignored).
pub fn read_request(conn: &mut UnixStream) -> Result<Request, RequestError> {
    let mut head = [0u8; REQ_SIZE_VER0 as usize];
    conn.read_exact(&mut head)?;
    let u32_at = |o: usize| u32::from_le_bytes([head[o], head[o + 1], head[o + 2], head[o + 3]]);
    let size = u32_at(0);
    if !(REQ_SIZE_VER0..REQ_SIZE_MAX).contains(&size) {
        return Err(RequestError::Size(size));
    }
    let mut rest = vec![0u8; (size - REQ_SIZE_VER0) as usize];
    conn.read_exact(&mut rest)?;
    let mut mask = [0u8; 8];
    mask.copy_from_slice(&head[8..16]);
    Ok(Request { size, size_ack: u32_at(4), mask: u64::from_le_bytes(mask) })
}

/// Sends the `coredump_ack` with `mask` (only bits the kernel offered) and
/// reads the kernel's mark.
pub fn answer(conn: &mut UnixStream, req: &Request, mask: u64) -> Result<(), RequestError> {
    if req.size_ack < ACK_SIZE_VER0 {
        return Err(RequestError::AckSize(req.size_ack));
    }
    let mut ack = Vec::with_capacity(16);
    ack.extend_from_slice(&ACK_SIZE_VER0.to_le_bytes());
    ack.extend_from_slice(&0u32.to_le_bytes());
    ack.extend_from_slice(&(mask & req.mask).to_le_bytes());
    conn.write_all(&ack)?;
    let mut mark = [0u8; 4];
    conn.read_exact(&mut mark)?;
    match u32::from_le_bytes(mark) {
        MARK_REQACK => Ok(()),
        m => Err(RequestError::Mark(m)),
    }
}

/// The dumping thread's (tid, pc, sp), from `task/*/stat` of the process
/// directory `dir` (`kstkeip`/`kstkesp` are shown for a dumping task).
fn dumping_thread(dir: &OwnedFd) -> Option<(u32, u64, u64)> {
    let tasks = std::fs::read_dir(format!("/proc/self/fd/{}/task", dir.as_raw_fd())).ok()?;
    for t in tasks.flatten().take(1 << 16) {
        let Ok(stat) = std::fs::read(t.path().join("stat")) else { continue };
        let Some(close) = stat.iter().rposition(|&c| c == b')') else { continue };
        let rest = String::from_utf8_lossy(&stat[close + 1..]).into_owned();
        let f: Vec<&str> = rest.split_ascii_whitespace().collect();
        // Fields from 3 (state): flags is 9, kstkesp 29, kstkeip 30.
        let num = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        let (Some(flags), Some(sp), Some(pc)) = (num(9), num(29), num(30)) else { continue };
        if flags & PF_DUMPCORE != 0 && pc != 0 && sp != 0 {
            let tid = t.file_name().to_str().and_then(|s| s.parse().ok())?;
            return Some((tid, pc, sp));
        }
    }
    None
}

fn pread_all(fd: RawFd, buf: &mut [u8], at: u64) -> usize {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: pread into the unfilled part of `buf`, on an fd we hold.
        let n = unsafe {
            libc::pread(fd, buf[done..].as_mut_ptr().cast(), buf.len() - done, (at + done as u64) as libc::off_t)
        };
        if n <= 0 {
            break;
        }
        done += n as usize;
    }
    done
}

/// Frames in an early key.
const KEY_FRAMES: usize = 8;
/// Stack bytes read for an early key.
const KEY_STACK: u64 = 64 << 10;

/// The early key of a backtrace: its top frames' modules (file names) and
/// offsets, no symbols (cheap, and the same across ASLR).
pub fn key_of(bt: &Backtrace) -> Option<String> {
    let parts: Vec<String> = bt
        .frames
        .iter()
        .take(KEY_FRAMES)
        .map(|f| match (f.module.as_deref(), f.module_offset) {
            (Some(m), Some(o)) => format!("{}+{o:#x}", m.rsplit('/').next().unwrap_or(m)),
            _ => "???".into(),
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join(" "))
}

/// The crash's early key from the live (dumping) process, before its core
/// (pipe mode: while the kernel waits on the pipe; request mode: before
/// the answer): `None` when it cannot be had (not dumpable, no `/proc`,
/// not x86_64, no frame). The stack is read as root from `/proc/PID/mem`
/// and unwound with the crashed user's file access ([`security::with_user_files`]).
pub fn early_key(
    pid: u32,
    pidfd: Option<RawFd>,
    dump_time: Option<u64>,
    dumpable: Option<u8>,
    unwinder: &Arc<Unwinder>,
) -> Option<String> {
    if !cfg!(target_arch = "x86_64") || dumpable.is_some_and(|d| d != 1) {
        return None;
    }
    // Bound to the crashed process (pidfd, else start time) as for the core.
    let p = procfs::open(pid, pidfd, dump_time).ok()?;
    if dumpable.is_none() && p.proc_owner != p.uid {
        // Not dumpable: its memory is not read.
        return None;
    }
    let maps = p.maps.clone()?;
    let (_tid, pc, sp) = dumping_thread(&p.dir)?;
    let stack = maps.find(sp)?;
    let start = sp.saturating_sub(128).max(stack.start);
    let end = stack.end.min(sp.saturating_add(KEY_STACK));
    let c = std::ffi::CString::new("mem").ok()?;
    // SAFETY: openat on the process directory fd we hold.
    let fd = unsafe { libc::openat(p.dir.as_raw_fd(), c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh fd we own.
    let mem: OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
    let mut bytes = vec![0u8; end.saturating_sub(start) as usize];
    let n = pread_all(mem.as_raw_fd(), &mut bytes, start);
    bytes.truncate(n);
    let opener = ProcOpener::new(p.dir.try_clone().ok()?);
    opener.preopen(&maps);
    // The modules are parsed with the crashed user's file access (on this
    // thread, undone after: the full path still needs root's).
    security::with_user_files(p.uid, p.gid, || {
        let memory = StackSnapshot::new(start, &bytes);
        let mut session = unwinder.session(&memory, &maps, &opener);
        key_of(&session.unwind(&Registers::x86_64(pc, sp, 0)))
    })
    .ok()
    .flatten()
}
