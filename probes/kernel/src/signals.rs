//! SIGTERM and SIGINT as a file descriptor (`signalfd`), so the scanner
//! waits for the kernel log and for a stop request in one `poll(2)` and
//! stops between batches, after writing its position.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// The stop request: SIGTERM/SIGINT blocked and read from a signalfd.
#[derive(Debug)]
pub struct Stop {
    fd: OwnedFd,
    requested: std::cell::Cell<bool>,
}

impl Stop {
    /// Blocks SIGTERM and SIGINT for this thread (call it before starting
    /// other threads) and opens a signalfd for them.
    pub fn install() -> io::Result<Stop> {
        // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise
        // it; pthread_sigmask and signalfd get valid pointers.
        let fd = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGINT);
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC)
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Stop { fd, requested: std::cell::Cell::new(false) })
    }

    /// Whether a stop signal arrived (reads any pending one).
    pub fn requested(&self) -> bool {
        if !self.requested.get() {
            self.drain();
        }
        self.requested.get()
    }

    fn drain(&self) {
        let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
        loop {
            // SAFETY: reading into a buffer of the size signalfd writes.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), info.as_mut_ptr().cast(), info.len()) };
            if n <= 0 {
                break;
            }
            self.requested.set(true);
        }
    }

    /// Sleeps up to `d`; true when a stop was requested.
    pub fn wait(&self, d: Duration) -> bool {
        self.poll(None, Some(d));
        self.requested()
    }

    /// Waits until `other` is readable, a stop is requested, or `timeout`
    /// passes (`None`: no timeout).
    pub fn poll_with(&self, other: &impl AsRawFd, timeout: Option<Duration>) {
        self.poll(Some(other.as_raw_fd()), timeout);
    }

    fn poll(&self, other: Option<i32>, timeout: Option<Duration>) {
        let mut fds = [
            libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: other.unwrap_or(-1), events: libc::POLLIN, revents: 0 },
        ];
        let ms = timeout.map(|t| t.as_millis().min(i32::MAX as u128) as i32).unwrap_or(-1);
        // SAFETY: fds is a valid array of two pollfd; a negative fd is ignored.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
    }
}
