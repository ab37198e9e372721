//! The black box's events: what a recording holds, and how eventprobe
//! hands its process events to the collector.
//!
//! Where it sits in the data flow:
//!
//! ```text
//!  kernel ── exec / exit / fatal signal / OOM ──► eventprobe ─┐
//!                                                            │ blackbox socket
//!  probes ── records ──► telem-collector ◄───────────────────┘ (JSON lines, this module)
//!                          └─ blackbox recorder: segments under state_dir/blackbox/<id>/
//!                               ▲ instrument readings every 10 s, records accepted
//!  telemctl blackbox start|stop|status|list|export|delete ── control socket
//! ```
//!
//! A recording is a sequence of [`Entry`]: a time pair and an [`Event`].
//! The same JSON form (one object per line, `kind` naming the event) is
//! used on the blackbox socket, in `telemctl blackbox export --json`, and
//! as the data embedded in the HTML timeline.
//!
//! ## The blackbox socket
//! A unix stream socket at `state_dir/blackbox.sock` (mode 0600, root's),
//! served by the collector. eventprobe connects (and reconnects every
//! second while it cannot), and the two exchange JSON lines:
//!
//! - collector → eventprobe: [`Control`] — at once after the connection is
//!   made, and whenever recording starts or stops. eventprobe streams
//!   every exec and exit only while `recording` is true (it always sends
//!   fatal signals and OOM kills as records, recording or not).
//! - eventprobe → collector: [`Feed`] lines — `Entry` objects with a
//!   sequence number `seq` (counting from 1 for each `source`, a random id
//!   eventprobe picks at start), and `Gap` events for what it had to drop.
//! - collector → eventprobe: `{"ack": N}` once every entry up to `seq` N
//!   is written to the recording. eventprobe keeps unacknowledged entries
//!   (bounded; what it must drop becomes a `Gap`) and sends them again
//!   after a reconnection; the collector skips a `seq` it already wrote
//!   for that `source`, so a collector restart loses and doubles nothing.

// Self-describing fields; each is listed, with its meaning, in the data
// dictionary (`telemetry::fields`, docs/DATA.md).
#![allow(missing_docs)]

use serde::{Deserialize, Serialize};

/// One event of a recording, with its two clocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// `CLOCK_BOOTTIME` in nanoseconds (the kernel side's
    /// `bpf_ktime_get_boot_ns`): orders events within one boot.
    pub mono_ns: u64,
    /// Wall-clock time, nanoseconds since the Unix epoch (UTC).
    pub wall_ns: u64,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
}

/// What happened. Serialized with a `kind` tag, e.g.
/// `{"kind":"exec","pid":42,...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A process ran `execve`.
    Exec {
        pid: u32,
        ppid: u32,
        uid: u32,
        /// The controlling terminal (`pts/3`, `tty1`), when there is one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tty: Option<String>,
        /// The executable's path.
        exe: String,
        /// The arguments, `argv[0]` first (scrubbed by the collector with
        /// the payload scrubber before they are written).
        argv: Vec<String>,
        /// The cgroup v2 path (`/system.slice/nginx.service`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cgroup: Option<String>,
        /// The systemd unit the cgroup names, when it names one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unit: Option<String>,
        /// Run from a terminal by a person: `tty` is set.
        #[serde(default)]
        operator: bool,
    },
    /// A process (thread group) ended.
    Exit {
        pid: u32,
        ppid: u32,
        comm: String,
        /// The exit status (0-255) when it exited; none when killed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<i32>,
        /// The signal that killed it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
        /// The kernel dumped (or piped) its core.
        #[serde(default)]
        core_dumped: bool,
        /// From its start to its exit, milliseconds.
        run_ms: u64,
    },
    /// A fatal signal was delivered (before the process is gone).
    FatalSignal { pid: u32, tid: u32, comm: String, signal: i32 },
    /// The OOM killer chose a victim.
    Oom { pid: u32, comm: String, anon_rss_kb: u64 },
    /// A record the collector accepted while recording.
    Record {
        record_id: String,
        event_id: String,
        classification: String,
        severity: u8,
        /// The crashed or reporting process, when the payload names it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<u32>,
        /// The payload as journaled (scrubbed), at most 64 KiB: the
        /// backtrace the timeline opens.
        payload: String,
    },
    /// Instrument readings, every 10 s.
    Reading {
        load1: f64,
        load5: f64,
        load15: f64,
        mem_total_kb: u64,
        mem_available_kb: u64,
        swap_total_kb: u64,
        swap_free_kb: u64,
        /// Bytes used and total on the file system of `state_dir`.
        disk_used_bytes: u64,
        disk_total_bytes: u64,
        /// The processes that used the most CPU since the last reading.
        top: Vec<TopProcess>,
    },
    /// Events that were lost: dropped by the kernel side under overload,
    /// by eventprobe's bounded buffer, or while nothing could receive them.
    Gap {
        lost: u64,
        /// Why, e.g. `ring buffer full (exec)`.
        reason: String,
    },
    /// Older segments were deleted to keep the recording under its
    /// `--max-size`: what the timeline no longer holds.
    Truncated {
        segments: u64,
        entries: u64,
        /// Wall-clock time of the newest entry deleted.
        until_wall_ns: u64,
    },
    /// The recorder's own events: started, stopped, collector restarted
    /// (with the boot id, as `mono_ns` restarts at each boot), max-age
    /// reached.
    Marker { text: String },
}

/// One line of [`Event::Reading`]'s top list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopProcess {
    pub pid: u32,
    pub comm: String,
    /// Percent of one CPU over the interval.
    pub cpu_pct: f64,
}

/// collector → eventprobe on the blackbox socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Control {
    /// Whether a recording is running (and which).
    State {
        recording: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
    },
    /// Every entry up to this `seq` is written.
    Ack { ack: u64 },
}

/// eventprobe → collector on the blackbox socket: an entry with its
/// place in eventprobe's stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feed {
    /// eventprobe's random id for this run (hex).
    pub source: String,
    /// 1, 2, 3 ... for each `source`.
    pub seq: u64,
    #[serde(flatten)]
    pub entry: Entry,
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a timespec on this stack.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return 0;
    }
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

/// `CLOCK_BOOTTIME` now, nanoseconds: the clock of [`Entry::mono_ns`] (and
/// of the kernel side's `bpf_ktime_get_boot_ns`); 0 if it cannot be read.
pub fn boot_ns() -> u64 {
    clock_ns(libc::CLOCK_BOOTTIME)
}

/// `CLOCK_REALTIME` now, nanoseconds since the epoch: the clock of
/// [`Entry::wall_ns`]; 0 if it cannot be read.
pub fn wall_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

impl Entry {
    /// `event`, stamped with both clocks now.
    pub fn now(event: Event) -> Entry {
        Entry { mono_ns: boot_ns(), wall_ns: wall_ns(), event }
    }
}

/// The blackbox socket's file name under `state_dir`.
pub const SOCKET_NAME: &str = "blackbox.sock";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_are_tagged_by_kind_and_round_trip() {
        let e = Entry {
            mono_ns: 5,
            wall_ns: 6,
            event: Event::Exec {
                pid: 42,
                ppid: 1,
                uid: 0,
                tty: Some("pts/0".into()),
                exe: "/usr/bin/ls".into(),
                argv: vec!["ls".into(), "-l".into()],
                cgroup: None,
                unit: None,
                operator: true,
            },
        };
        let line = serde_json::to_string(&Feed { source: "ab".into(), seq: 1, entry: e.clone() }).unwrap();
        assert!(line.starts_with(r#"{"source":"ab","seq":1,"mono_ns":5,"wall_ns":6,"kind":"exec","pid":42"#), "{line}");
        let back: Feed = serde_json::from_str(&line).unwrap();
        assert_eq!(back.entry, e);
        let c: Control = serde_json::from_str(r#"{"ack":7}"#).unwrap();
        assert_eq!(c, Control::Ack { ack: 7 });
        let c: Control = serde_json::from_str(r#"{"recording":true,"id":"x"}"#).unwrap();
        assert_eq!(c, Control::State { recording: true, id: Some("x".into()) });
    }
}
