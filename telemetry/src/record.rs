//! The record: what a probe reports about one event.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::{Classification, EventId, HostInfo, MachineId, Payload, Severity};

/// The Record Format Version of the header block and of the posting forms.
pub const RECORD_FORMAT_VERSION: u32 = 4;

/// The 15 header names of Record Format Version 4, in wire order.
pub const HEADER_NAMES: [&str; 15] = [
    "record_format_version",
    "classification",
    "severity",
    "machine_id",
    "creation_timestamp",
    "arch",
    "host_type",
    "build",
    "kernel_version",
    "payload_format_version",
    "system_name",
    "board_name",
    "cpu_model",
    "bios_version",
    "event_id",
];

/// One record. Every field holds a parsed, valid value, so a `Record` can be
/// encoded in any framing or posting form without further checks. The
/// machine id is not part of it: the collector stamps it on the way out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// What kind of event (`DOMAIN/PROBE/REST`).
    pub classification: Classification,
    /// How bad it is.
    pub severity: Severity,
    /// Groups the records of one occurrence.
    pub event_id: EventId,
    /// Version of the payload's own layout (crash payloads: 1 text, 2 JSON).
    pub payload_format_version: u32,
    /// Unix seconds at creation.
    pub creation_timestamp: u64,
    /// Shared: the records of one machine carry the same facts (and a
    /// collector keeps one copy of them for a connection's records).
    /// Serialized as the facts themselves.
    pub host: Arc<HostInfo>,
    /// The probe's data.
    pub payload: Payload,
}

impl Record {
    /// Starts a record with this machine's host facts, a random event id,
    /// payload format version 1 and the current time.
    pub fn builder(classification: Classification, severity: Severity, payload: Payload) -> RecordBuilder {
        RecordBuilder {
            record: Record {
                classification,
                severity,
                event_id: EventId::random(),
                payload_format_version: 1,
                creation_timestamp: now_unix(),
                host: HostInfo::shared(),
                payload,
            },
        }
    }

    /// The 15 header values in wire order ([`HEADER_NAMES`]), with
    /// `machine_id` as given.
    pub fn header_values<'a>(&'a self, machine_id: &'a MachineId) -> [HeaderValue<'a>; 15] {
        use HeaderValue::*;
        let h = &self.host;
        [
            Num(RECORD_FORMAT_VERSION as u64),
            Str(self.classification.as_str()),
            Num(self.severity.as_u8() as u64),
            Str(machine_id.as_str()),
            Num(self.creation_timestamp),
            Str(h.arch.as_str()),
            Str(h.host_type.as_str()),
            Str(h.build.as_str()),
            Str(h.kernel_version.as_str()),
            Num(self.payload_format_version as u64),
            Str(h.system_name.as_str()),
            Str(h.board_name.as_str()),
            Str(h.cpu_model.as_str()),
            Str(h.bios_version.as_str()),
            Id(self.event_id),
        ]
    }
}

/// A header value, borrowed from a record.
#[derive(Debug, Clone, Copy)]
pub enum HeaderValue<'a> {
    /// A text field.
    Str(&'a str),
    /// A number field.
    Num(u64),
    /// The event id.
    Id(EventId),
}

impl std::fmt::Display for HeaderValue<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderValue::Str(s) => f.write_str(s),
            HeaderValue::Num(n) => write!(f, "{n}"),
            HeaderValue::Id(id) => write!(f, "{id}"),
        }
    }
}

/// Sets the optional parts of a [`Record`].
#[derive(Debug, Clone)]
pub struct RecordBuilder {
    record: Record,
}

impl RecordBuilder {
    /// Sets the event id (default: random).
    pub fn event_id(mut self, id: EventId) -> Self {
        self.record.event_id = id;
        self
    }
    /// Sets the payload's format version (default: 1).
    pub fn payload_format_version(mut self, v: u32) -> Self {
        self.record.payload_format_version = v;
        self
    }
    /// Sets the creation time, unix seconds (default: now).
    pub fn creation_timestamp(mut self, t: u64) -> Self {
        self.record.creation_timestamp = t;
        self
    }
    /// Sets the host facts (default: this machine's).
    pub fn host(mut self, host: HostInfo) -> Self {
        self.record.host = Arc::new(host);
        self
    }
    /// The record.
    pub fn build(self) -> Record {
        self.record
    }
}

/// Unix seconds now (0 if the clock is before 1970).
pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS` (UTC), as `telemctl journal`
/// prints them.
pub fn format_utc(t: u64) -> String {
    let days = (t / 86_400) as i64;
    let rem = t % 86_400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}
