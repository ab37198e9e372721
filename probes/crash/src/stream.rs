//! A forward-only reader over the core stream (a pipe in pipe mode, a
//! socket in socket mode) with a deadline, and cheap discarding: bytes
//! nobody needs are spliced from a pipe into /dev/null without being
//! copied to user space.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

/// Why reading the stream stopped.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("the core stream ended at byte {at} (a truncated or lying core)")]
    Eof { at: u64 },
    #[error("the wall-clock budget ran out at byte {at} of the core")]
    Deadline { at: u64 },
    #[error("reading the core at byte {at}: {source}")]
    Io { at: u64, source: io::Error },
    #[error("the core asks to go back from byte {at} to {to}; a core is read once, forward")]
    Backwards { at: u64, to: u64 },
}

pub struct Stream<R> {
    inner: R,
    fd: Option<RawFd>,
    pos: u64,
    deadline: Option<Instant>,
    devnull: Option<std::fs::File>,
    is_pipe: bool,
    /// The fd is non-blocking: read first, poll only when it would block
    /// (one syscall per chunk instead of two, and no poll wake-ups while
    /// the writer keeps up).
    nonblock: bool,
    /// The fd is a regular file: [`Stream::seek_to`] may go back.
    seekable: bool,
    scratch: Vec<u8>,
}

impl<R: Read> Stream<R> {
    /// A stream over a plain reader (tests, files).
    pub fn new(inner: R, deadline: Option<Instant>) -> Self {
        Stream {
            inner,
            fd: None,
            pos: 0,
            deadline,
            devnull: None,
            is_pipe: false,
            nonblock: false,
            seekable: false,
            scratch: Vec::new(),
        }
    }

    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// Whether the stream is a file that can be read again from any offset
    /// (a saved core given with `--core-only < FILE`), not a pipe or socket.
    pub fn can_seek(&self) -> bool {
        self.seekable
    }

    /// Moves to offset `to`, backwards too when [`can_seek`](Self::can_seek).
    pub fn seek_to(&mut self, to: u64) -> Result<(), StreamError> {
        match (self.seekable, self.fd) {
            (true, Some(fd)) if to < self.pos => {
                let off = libc::off_t::try_from(to).map_err(|_| StreamError::Backwards { at: self.pos, to })?;
                // SAFETY: lseek on an fd we hold; `inner` reads it unbuffered.
                if unsafe { libc::lseek(fd, off, libc::SEEK_SET) } < 0 {
                    return Err(StreamError::Io { at: self.pos, source: io::Error::last_os_error() });
                }
                self.pos = to;
                Ok(())
            }
            _ => self.skip_to(to),
        }
    }

    /// Enlarges the pipe (4 MiB, else 1 MiB): fewer wake-ups of the writer
    /// (the kernel dumping the core), so bulk data moves markedly faster.
    /// Call it only once everything that needs the live process is open
    /// (`/proc/PID`, its maps, the mapped files through `map_files`, its
    /// root): while the pipe is full the dumping process cannot exit, and
    /// with `core_pipe_limit` 0 nothing else keeps it there. A core smaller
    /// than the enlarged pipe is written at once, and the process is gone.
    pub fn grow_pipe(&self) {
        let (true, Some(fd)) = (self.is_pipe, self.fd) else { return };
        for size in [4 << 20, 1 << 20] {
            // SAFETY: fcntl on an fd we hold.
            if unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, size) } >= 0 {
                break;
            }
        }
    }

    /// Before a read: with a non-blocking fd only the deadline is checked
    /// (the read itself says when to poll); otherwise poll.
    fn ready(&self) -> Result<(), StreamError> {
        if self.nonblock {
            return match self.deadline {
                Some(d) if Instant::now() >= d => Err(StreamError::Deadline { at: self.pos }),
                _ => Ok(()),
            };
        }
        self.wait()
    }

    fn wait(&self) -> Result<(), StreamError> {
        let (Some(fd), Some(deadline)) = (self.fd, self.deadline) else {
            return match self.deadline {
                Some(d) if Instant::now() >= d => Err(StreamError::Deadline { at: self.pos }),
                _ => Ok(()),
            };
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(StreamError::Deadline { at: self.pos });
            }
            let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut p, 1, ms.max(1)) };
            if r > 0 {
                return Ok(());
            }
            if r < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                return Err(StreamError::Io { at: self.pos, source: io::Error::last_os_error() });
            }
        }
    }

    /// Reads exactly `buf.len()` bytes.
    pub fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), StreamError> {
        let mut done = 0;
        while done < buf.len() {
            self.ready()?;
            match self.inner.read(&mut buf[done..]) {
                Ok(0) => return Err(StreamError::Eof { at: self.pos }),
                Ok(n) => {
                    done += n;
                    self.pos += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && self.nonblock => self.wait()?,
                Err(e) => return Err(StreamError::Io { at: self.pos, source: e }),
            }
        }
        Ok(())
    }

    /// Reads `len` bytes into a new vector (the caller bounds `len`).
    pub fn read_vec(&mut self, len: usize) -> Result<Vec<u8>, StreamError> {
        let mut v = vec![0u8; len];
        self.read_exact(&mut v)?;
        Ok(v)
    }

    /// Discards bytes up to offset `to`.
    pub fn skip_to(&mut self, to: u64) -> Result<(), StreamError> {
        if to < self.pos {
            return Err(StreamError::Backwards { at: self.pos, to });
        }
        self.discard(Some(to - self.pos)).map(|_| ())
    }

    /// Discards everything to the end of the stream; returns the count.
    pub fn drain(&mut self) -> Result<u64, StreamError> {
        self.discard(None)
    }

    fn discard(&mut self, limit: Option<u64>) -> Result<u64, StreamError> {
        let mut left = limit.unwrap_or(u64::MAX);
        let mut total = 0u64;
        while left > 0 {
            self.ready()?;
            let n = match (self.is_pipe, &self.devnull, self.fd) {
                (true, Some(null), Some(fd)) => {
                    let chunk = left.min(4 << 20) as usize;
                    let flags = libc::SPLICE_F_MOVE | if self.nonblock { libc::SPLICE_F_NONBLOCK } else { 0 };
                    // SAFETY: both fds are open; splice moves pipe pages to /dev/null.
                    let r = unsafe {
                        libc::splice(fd, std::ptr::null_mut(), null.as_raw_fd(), std::ptr::null_mut(), chunk, flags)
                    };
                    if r < 0 {
                        let e = io::Error::last_os_error();
                        if e.kind() == io::ErrorKind::Interrupted {
                            continue;
                        }
                        if e.kind() == io::ErrorKind::WouldBlock && self.nonblock {
                            self.wait()?;
                            continue;
                        }
                        if e.raw_os_error() == Some(libc::EINVAL) {
                            self.is_pipe = false;
                            continue;
                        }
                        return Err(StreamError::Io { at: self.pos, source: e });
                    }
                    r as usize
                }
                _ => {
                    if self.scratch.is_empty() {
                        self.scratch = vec![0u8; 256 << 10];
                    }
                    let chunk = left.min(self.scratch.len() as u64) as usize;
                    match self.inner.read(&mut self.scratch[..chunk]) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock && self.nonblock => {
                            self.wait()?;
                            continue;
                        }
                        Err(e) => return Err(StreamError::Io { at: self.pos, source: e }),
                    }
                }
            };
            if n == 0 {
                if limit.is_some() {
                    return Err(StreamError::Eof { at: self.pos });
                }
                break;
            }
            self.pos += n as u64;
            total += n as u64;
            left -= n as u64;
        }
        Ok(total)
    }
}

impl<R: Read + AsRawFd> Stream<R> {
    /// A stream over a file descriptor: polled against the deadline, and
    /// spliced into /dev/null when it is a pipe.
    pub fn from_fd(inner: R, deadline: Option<Instant>) -> Self {
        let fd = inner.as_raw_fd();
        // SAFETY: stat is plain data; all zeros is a valid value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat on an fd we hold, into `st`.
        let is_pipe = unsafe { libc::fstat(fd, &mut st) } == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFIFO;
        let devnull = if is_pipe { std::fs::OpenOptions::new().write(true).open("/dev/null").ok() } else { None };
        let kind = st.st_mode & libc::S_IFMT;
        // Only our own end of a pipe or socket is made non-blocking (the
        // flag is per open file description: the writer is not affected).
        let nonblock = deadline.is_some() && (kind == libc::S_IFIFO || kind == libc::S_IFSOCK) && set_nonblocking(fd);
        // A regular file read from its start (the offset is where reading begins).
        // SAFETY: lseek on an fd we hold.
        let seekable = kind == libc::S_IFREG && unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) } == 0;
        Stream { inner, fd: Some(fd), pos: 0, deadline, devnull, is_pipe, nonblock, seekable, scratch: Vec::new() }
    }
}

/// Sets O_NONBLOCK on `fd`; whether it is set.
fn set_nonblocking(fd: RawFd) -> bool {
    // SAFETY: fcntl on an fd the caller holds.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        fl >= 0 && libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) >= 0
    }
}
