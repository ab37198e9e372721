//! Identifying a crashed process across probes: the event id shared by
//! every record of one crash, and the strict parser for the `/proc/PID/stat`
//! fields it is made of. crashprobe and eventprobe both derive it, so the
//! records they make about one crash group under one event id; tests
//! derive it too, to check them.

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::{BootId, EventId};

/// The domain separator of [`crash_event_id`].
pub const EVENT_ID_DOMAIN: &[u8] = b"telemetrics crash event id v1\0";

/// The event id of a crash of one process, the same in every probe that
/// sees it (crashprobe, eventprobe):
///
/// `SHA-256(EVENT_ID_DOMAIN || boot_id (16 raw bytes) || pid (u32 LE) ||
/// start_time (u64 LE))`, first 16 bytes,
///
/// where `boot_id` is `/proc/sys/kernel/random/boot_id` parsed as a UUID
/// ([`BootId::read`]), `pid` is the process id in the initial PID
/// namespace (the thread-group id) and `start_time` is field 22 of
/// `/proc/PID/stat`: clock ticks since boot ([`parse_stat`]). Boot id and
/// start time together make (pid) unique for the machine's lifetime.
pub fn crash_event_id(boot_id: &BootId, pid: u32, start_time_ticks: u64) -> EventId {
    let mut h = Sha256::new();
    h.update(EVENT_ID_DOMAIN);
    h.update(boot_id.as_bytes());
    h.update(pid.to_le_bytes());
    h.update(start_time_ticks.to_le_bytes());
    let d = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    EventId::from_bytes(out)
}

/// The domain separator of [`kernel_report_event_id`].
pub const KERNEL_REPORT_DOMAIN: &[u8] = b"telemetrics kernel report event id v1\0";

/// The event id of a kernel report read from `/dev/kmsg` (klogscanner):
/// `SHA-256(KERNEL_REPORT_DOMAIN || boot_id (16 raw bytes) || seq (u64
/// LE))`, first 16 bytes, where `seq` is the `/dev/kmsg` sequence number
/// of the report's first line. A report sent again after the probe was
/// killed between the collector's acknowledgement and saving its position
/// carries the same event id, so a backend can tell it is the same report.
pub fn kernel_report_event_id(boot_id: &BootId, seq: u64) -> EventId {
    let mut h = Sha256::new();
    h.update(KERNEL_REPORT_DOMAIN);
    h.update(boot_id.as_bytes());
    h.update(seq.to_le_bytes());
    let d = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    EventId::from_bytes(out)
}

/// Why a `/proc/PID/stat` line was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StatError {
    /// No `(comm)` field.
    #[error("/proc/PID/stat has no `(comm)` field")]
    NoComm,
    /// A field after the comm is missing or malformed.
    #[error("/proc/PID/stat field {0} is missing or not a number")]
    Field(usize),
}

/// The fields of `/proc/PID/stat` a crash handler needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// The command name, as raw bytes (may hold spaces, `)` and invalid
    /// UTF-8).
    pub comm: Vec<u8>,
    /// The process state (field 3: `R`, `S`, `D`, `Z`, ...).
    pub state: u8,
    /// The parent's pid (field 4).
    pub ppid: i64,
    /// Start time, clock ticks after boot (field 22).
    pub start_time: u64,
}

/// Parses `/proc/PID/stat`: the comm runs from the first `(` to the *last*
/// `)`, so a comm of `a) R 1 (` cannot shift the fields.
pub fn parse_stat(s: &[u8]) -> Result<Stat, StatError> {
    let open = s.iter().position(|&c| c == b'(').ok_or(StatError::NoComm)?;
    let close = s.iter().rposition(|&c| c == b')').ok_or(StatError::NoComm)?;
    if close < open {
        return Err(StatError::NoComm);
    }
    let comm = s[open + 1..close].to_vec();
    let rest = s.get(close + 1..).unwrap_or(&[]);
    let fields: Vec<&[u8]> = rest.split(|&c| c == b' ' || c == b'\n').filter(|f| !f.is_empty()).collect();
    // fields[0] is field 3 (state).
    let field = |n: usize| fields.get(n - 3).copied().ok_or(StatError::Field(n));
    let num = |n: usize| -> Result<i64, StatError> {
        std::str::from_utf8(field(n)?).ok().and_then(|x| x.parse().ok()).ok_or(StatError::Field(n))
    };
    let st = field(3)?;
    if st.len() != 1 {
        return Err(StatError::Field(3));
    }
    let start = num(22)?;
    Ok(Stat { comm, state: st[0], ppid: num(4)?, start_time: u64::try_from(start).map_err(|_| StatError::Field(22))? })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn stat_with_hostile_comm() {
        let mut s = b"1234 (a) R 1 (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 777 19 20\n".to_vec();
        let st = parse_stat(&s).unwrap();
        assert_eq!(st.comm, b"a) R 1 (x");
        assert_eq!(st.state, b'S');
        assert_eq!(st.ppid, 1);
        // field 22: after state(3) ppid(4) ... count: 5..=21 are 17 numbers.
        assert_eq!(st.start_time, 777);
        s.truncate(20);
        assert!(parse_stat(&s).is_err());
        assert!(parse_stat(b"12 no comm").is_err());
    }
    #[test]
    fn kernel_report_event_id_is_a_function_of_boot_and_sequence() {
        let b = BootId::UNKNOWN;
        assert_eq!(kernel_report_event_id(&b, 7), kernel_report_event_id(&b, 7));
        assert_ne!(kernel_report_event_id(&b, 7), kernel_report_event_id(&b, 8));
        assert_ne!(kernel_report_event_id(&b, 7), crash_event_id(&b, 7, 0));
    }

    #[test]
    fn event_id_is_a_function_of_boot_pid_and_start() {
        let b = BootId::parse_uuid(b"0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0\n").unwrap();
        let a = crash_event_id(&b, 10, 20);
        assert_eq!(a, crash_event_id(&b, 10, 20));
        assert_ne!(a, crash_event_id(&b, 10, 21));
        assert_ne!(a, crash_event_id(&b, 11, 20));
        assert_ne!(a, crash_event_id(&BootId::UNKNOWN, 10, 20));
        // Pinned so that other probes can check their implementation.
        assert_eq!(crash_event_id(&BootId::UNKNOWN, 1, 2).to_string(), "71a63c4491f4f05ba2c4f3c760127d66");
    }
}
