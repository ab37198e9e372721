//! Journal entries: fates, the JSON of an entry, and the lines stages queue.

use std::sync::Arc;
use telemetry::RecordId;

use serde::{Deserialize, Serialize, Serializer};
use telemetry::EventId;

use crate::spool::Item;

/// What became of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Durably in the spool, waiting for delivery.
    Spooled,
    /// Over a rate window, kept in the spool.
    RateLimitedSpooled,
    /// Over a rate window and dropped (`rate_limit_strategy=drop`).
    RateLimitedDropped,
    /// Posted and answered 2xx.
    Delivered,
    /// OTLP: taken, but the answer (a partial success) says `rejected` of
    /// the request's `of` log records were rejected, for `why`.
    DeliveredPartly { rejected: i64, of: usize, why: String },
    /// The server refused it (4xx other than 408/429).
    /// `attempts`: the 5xx answers it got while the server took other
    /// records (a record the server keeps failing), or `None` for a 4xx.
    RejectedByServer { status: u16, body: String, attempts: Option<u32> },
    /// Not sent by policy.
    LocalOnly(String),
    /// Dropped (spool full, expired, cannot store).
    Dropped(String),
    /// A fate at one destination other than the original backend:
    /// written with the destination after its first word
    /// (`delivered (otlp)`, `rejected-by-server (otlp): 400 ...`). Fates
    /// without a destination are the original backend's (or, for drops
    /// and expiry of the whole record, every destination's).
    At(crate::spool::Dest, Box<Fate>),
}

impl std::fmt::Display for Fate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fate::Spooled => f.write_str("spooled"),
            Fate::RateLimitedSpooled => f.write_str("rate-limited: spooled"),
            Fate::RateLimitedDropped => f.write_str("rate-limited: dropped"),
            Fate::Delivered => f.write_str("delivered"),
            Fate::DeliveredPartly { rejected, of, why } => {
                write!(f, "delivered: partial success, {rejected} of {of} log records in its request rejected: {why}")
            }
            Fate::RejectedByServer { status, body, attempts: None } => write!(f, "rejected-by-server: {status} {body}"),
            Fate::RejectedByServer { status, body, attempts: Some(n) } => {
                write!(f, "rejected-by-server: {status} after {n} attempts: {body}")
            }
            Fate::LocalOnly(why) => write!(f, "local-only: {why}"),
            Fate::Dropped(why) => write!(f, "dropped: {why}"),
            Fate::At(dest, inner) => {
                let text = inner.to_string();
                match text.split_once(':') {
                    Some((head, rest)) => write!(f, "{head} ({}):{rest}", dest.as_str()),
                    None => write!(f, "{text} ({})", dest.as_str()),
                }
            }
        }
    }
}

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Record id, 32 hex.
    pub id: String,
    /// Unix seconds when this entry was written.
    pub time: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<u8>,
    pub fate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// The record's own creation time (as it would be sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_format_version: Option<u32>,
    /// The host facts as they would be sent (after the privacy level).
    #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
    pub host: Option<telemetry::HostInfo>,
}

impl Entry {
    /// A fate update for a record already journaled.
    pub fn update(id: &str, fate: &Fate) -> Entry {
        Entry {
            id: id.into(),
            time: telemetry::record::now_unix(),
            class: None,
            event: None,
            boot: None,
            uid: None,
            pid: None,
            severity: None,
            fate: fate.to_string(),
            payload: None,
            creation_timestamp: None,
            payload_format_version: None,
            host: None,
        }
    }
}

/// A line to write: a record's first entry, or a later fate. Written as
/// the JSON of an [`Entry`] (what [`read`](super::read) parses back).
#[derive(Debug, Clone)]
pub enum Line {
    First {
        /// The accepted record (shared with the spool, not copied).
        item: Arc<Item>,
        /// Unix seconds of the entry.
        time: u64,
        boot: Arc<str>,
        fate: Fate,
        /// Keep the payload (`record_retention_enabled`).
        payload: bool,
    },
    Fate {
        id: RecordId,
        time: u64,
        fate: Fate,
    },
}

impl Line {
    /// A later fate of a record already journaled, now.
    pub fn fate(id: RecordId, fate: Fate) -> Line {
        Line::Fate { id, time: telemetry::record::now_unix(), fate }
    }

    /// The record id.
    pub fn id(&self) -> RecordId {
        match self {
            Line::First { item, .. } => item.record_id,
            Line::Fate { id, .. } => *id,
        }
    }

    /// The line's JSON, appended to `out` (no newline).
    pub fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        /// Writes with `Display`, without an intermediate string.
        struct Shown<T>(T);
        impl<T: std::fmt::Display> Serialize for Shown<T> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(&self.0)
            }
        }
        #[derive(Serialize)]
        struct FirstJson<'a> {
            id: Shown<RecordId>,
            time: u64,
            class: &'a str,
            event: Shown<EventId>,
            boot: &'a str,
            uid: u32,
            pid: u32,
            severity: u8,
            fate: Shown<&'a Fate>,
            #[serde(skip_serializing_if = "Option::is_none")]
            payload: Option<std::borrow::Cow<'a, str>>,
            creation_timestamp: u64,
            payload_format_version: u32,
            #[serde(flatten)]
            host: &'a telemetry::HostInfo,
        }
        #[derive(Serialize)]
        struct FateJson<'a> {
            id: Shown<RecordId>,
            time: u64,
            fate: Shown<&'a Fate>,
        }
        match self {
            Line::First { item, time, boot, fate, payload } => {
                let r = &item.record;
                serde_json::to_writer(
                    out,
                    &FirstJson {
                        id: Shown(item.record_id),
                        time: *time,
                        class: r.classification.as_str(),
                        event: Shown(r.event_id),
                        boot,
                        uid: item.uid,
                        pid: item.pid,
                        severity: r.severity.as_u8(),
                        fate: Shown(fate),
                        payload: payload.then(|| r.payload.to_text_lossy()),
                        creation_timestamp: r.creation_timestamp,
                        payload_format_version: r.payload_format_version,
                        host: &r.host,
                    },
                )
            }
            Line::Fate { id, time, fate } => {
                serde_json::to_writer(out, &FateJson { id: Shown(*id), time: *time, fate: Shown(fate) })
            }
        }
    }
}
