//! `/dev/kmsg`: the kernel log as numbered records, read without taking
//! them away from other readers (unlike `klogctl(SYSLOG_ACTION_READ)`).
//!
//! Each `read(2)` returns one record, `PRIO,SEQ,USEC,FLAGS[,...];TEXT\n`
//! and optional ` KEY=VALUE\n` lines; the text escapes non-printable bytes as
//! `\xNN`. A reader that fell behind the ring buffer gets `EPIPE` once and
//! then continues at the oldest record still there.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The default path.
pub const DEV_KMSG: &str = "/dev/kmsg";

/// The syslog facility names, by number (`kern` = 0, `user` = 1, ...).
pub const FACILITIES: &[&str] = &[
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];

/// One record of the kernel log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Syslog facility (0 = kern, 1 = user).
    pub facility: u32,
    /// Syslog level (0 emerg .. 7 debug).
    pub level: u32,
    /// The kernel's sequence number (from 0 at each boot).
    pub seq: u64,
    /// Microseconds since boot.
    pub usec: u64,
    /// The text, unescaped; may hold several lines.
    pub text: String,
}

/// Parses one record as `read(2)` returned it; `None` when it is not one.
pub fn parse(buf: &[u8]) -> Option<Message> {
    let head_end = buf.iter().position(|&b| b == b';')?;
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let mut fields = head.split(',');
    let prio: u32 = fields.next()?.parse().ok()?;
    let seq: u64 = fields.next()?.parse().ok()?;
    let usec: u64 = fields.next()?.parse().ok()?;
    let rest = &buf[head_end + 1..];
    let text_end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
    Some(Message { facility: prio >> 3, level: prio & 7, seq, usec, text: unescape(&rest[..text_end]) })
}

/// Undoes the kernel's `\xNN` escaping.
pub fn unescape(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'\\' && raw.get(i + 1) == Some(&b'x') {
            if let Some(v) = raw
                .get(i + 2..i + 4)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What one read gave.
#[derive(Debug)]
pub enum Read1 {
    /// A record.
    Message(Message),
    /// The reader fell behind; records were overwritten before being read.
    Overrun,
    /// Nothing more for now.
    Empty,
}

/// `/dev/kmsg` opened non-blocking.
#[derive(Debug)]
pub struct Kmsg {
    file: File,
    buf: Vec<u8>,
}

impl Kmsg {
    /// Opens `path` (normally [`DEV_KMSG`]) at its oldest record.
    pub fn open(path: &Path) -> io::Result<Kmsg> {
        let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
        Ok(Kmsg { file, buf: vec![0; 16 * 1024] })
    }

    /// Reads the next record.
    pub fn read_record(&mut self) -> io::Result<Read1> {
        loop {
            match self.file.read(&mut self.buf) {
                Ok(0) => return Ok(Read1::Empty),
                Ok(n) => {
                    if let Some(m) = parse(&self.buf[..n]) {
                        return Ok(Read1::Message(m));
                    }
                    tracing::debug!("skipping a record that does not parse");
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Read1::Empty),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => return Ok(Read1::Overrun),
                Err(e) => return Err(e),
            }
        }
    }
}

impl AsRawFd for Kmsg {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_record() {
        let m = parse(b"14,1234,5678901,-;WARNING: tab\\x09here\n SUBSYSTEM=x\n").unwrap();
        assert_eq!((m.facility, m.level, m.seq, m.usec), (1, 6, 1234, 5678901));
        assert_eq!(m.text, "WARNING: tab\there");
        let m = parse(b"4,7,1,c,more;x\\x0ay\n").unwrap();
        assert_eq!((m.facility, m.seq, m.text.as_str()), (0, 7, "x\ny"));
        assert!(parse(b"garbage").is_none());
    }
}
