//! Counters every stage bumps, and the status snapshot `telemctl status`
//! prints.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Why a record was refused (answered with a rejection, or, for a legacy
/// sender, dropped with its connection): the fixed set of reasons
/// `telemctl status` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A native connection whose prefix is not ours, or of another version.
    BadPrefix,
    /// A frame (native) or record (legacy) announcing more bytes than allowed.
    FrameTooLarge,
    /// Bytes that do not decode as a record.
    Malformed,
    /// A record that decodes but has a field out of its rules
    /// (classification, severity, a host fact too long, ...).
    InvalidField,
    /// A payload over `record_max_bytes`.
    PayloadTooLarge,
    /// The connection ended (closed or idle) in the middle of a record.
    Truncated,
    /// No room left in the spool (`spool_max_size`).
    SpoolFull,
    /// The record could not be written to the spool.
    StoreFailed,
    /// The record could not be written to the journal.
    JournalFailed,
}

impl Refusal {
    pub const ALL: [Refusal; 9] = [
        Refusal::BadPrefix,
        Refusal::FrameTooLarge,
        Refusal::Malformed,
        Refusal::InvalidField,
        Refusal::PayloadTooLarge,
        Refusal::Truncated,
        Refusal::SpoolFull,
        Refusal::StoreFailed,
        Refusal::JournalFailed,
    ];

    /// The name `telemctl status` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::BadPrefix => "bad-prefix",
            Refusal::FrameTooLarge => "frame-too-large",
            Refusal::Malformed => "malformed",
            Refusal::InvalidField => "invalid-field",
            Refusal::PayloadTooLarge => "payload-too-large",
            Refusal::Truncated => "truncated",
            Refusal::SpoolFull => "spool-full",
            Refusal::StoreFailed => "store-failed",
            Refusal::JournalFailed => "journal-failed",
        }
    }
}

#[derive(Debug, Default)]
pub struct Stats {
    pub received: AtomicU64,
    pub accepted: AtomicU64,
    /// Records refused, every reason together (bumped by [`Stats::refuse`]).
    pub rejected: AtomicU64,
    /// Per [`Refusal`], in the order of [`Refusal::ALL`].
    refused: [AtomicU64; Refusal::ALL.len()],
    pub delivered: AtomicU64,
    pub rate_limited: AtomicU64,
    pub dropped: AtomicU64,
    pub rejected_by_server: AtomicU64,
    pub local_only: AtomicU64,
    pub expired: AtomicU64,
    pub delivery_failures: AtomicU64,
    pub last_delivery_error: Mutex<Option<String>>,
    /// The OTLP destination's counters (the fields above are the original
    /// backend's, as before OTLP existed).
    pub otlp: DestStats,
}

/// Counters of one destination other than the original backend.
#[derive(Debug, Default)]
pub struct DestStats {
    /// Records it took.
    pub delivered: AtomicU64,
    /// Records it refused for good (4xx, and 5xx other than 502-504).
    pub rejected: AtomicU64,
    /// Log records its answers said were rejected (OTLP partial success).
    pub partial_rejected: AtomicU64,
    /// Requests that failed and will be sent again.
    pub failures: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

impl DestStats {
    pub fn set_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }
    pub fn error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// One destination as `telemctl status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DestStatus {
    /// `server` or `otlp`.
    pub name: String,
    /// Where it posts.
    pub url: String,
    pub delivered: u64,
    pub rejected: u64,
    /// OTLP partial success: log records the receiver said it rejected.
    #[serde(default)]
    pub partial_rejected: u64,
    pub failures: u64,
    /// Why it cannot take records now (`None`: flowing).
    pub held: Option<String>,
    pub last_error: Option<String>,
}

pub fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Relaxed);
}

impl Stats {
    /// Counts `n` records refused for `why` (in `rejected` too).
    pub fn refuse(&self, why: Refusal, n: u64) {
        self.rejected.fetch_add(n, Relaxed);
        self.refused[why as usize].fetch_add(n, Relaxed);
    }

    /// Refusals per reason, every reason listed.
    pub fn refusals(&self) -> BTreeMap<String, u64> {
        Refusal::ALL.iter().map(|r| (r.as_str().to_string(), self.refused[*r as usize].load(Relaxed))).collect()
    }

    pub fn set_error(&self, e: Option<String>) {
        *self.last_delivery_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }
    pub fn error(&self) -> Option<String> {
        self.last_delivery_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What `telemctl status` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    /// Unix seconds the daemon started.
    pub since: u64,
    pub received: u64,
    pub accepted: u64,
    /// Records refused, every reason together.
    pub rejected: u64,
    /// Records refused, per reason (`frame-too-large`, `malformed`, ...).
    #[serde(default)]
    pub rejected_by_reason: BTreeMap<String, u64>,
    pub delivered: u64,
    pub spooled: u64,
    pub spool_bytes: u64,
    pub rate_limited: u64,
    pub dropped: u64,
    pub expired: u64,
    pub rejected_by_server: u64,
    pub local_only: u64,
    pub delivery_failures: u64,
    pub last_delivery_error: Option<String>,
    pub server: Option<String>,
    /// `deliver` or `local-only: <why>`.
    pub consent: String,
    /// Seconds until the next delivery retry, when backing off.
    pub retry_in_secs: Option<f64>,
    /// One plain sentence: which mode is in force and why.
    #[serde(default)]
    pub mode: String,
    /// `anonymous`, `standard` or `static`.
    #[serde(default)]
    pub privacy_level: String,
    /// Payloads are scrubbed of personal data.
    #[serde(default)]
    pub scrubbing: bool,
    /// DO_NOT_TRACK was set in the collector's environment.
    #[serde(default)]
    pub do_not_track: bool,
    /// Each configured destination: `server` and/or `otlp`. (`delivered`,
    /// `rejected_by_server`, `delivery_failures` and `last_delivery_error`
    /// above are the server's, or the OTLP destination's when it is the
    /// only one.)
    #[serde(default)]
    pub destinations: Vec<DestStatus>,
    /// Set when the host went down under the previous run (a power loss,
    /// kernel crash or reset): what may have been lost, in one sentence
    /// (`collector::running`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_went_down: Option<String>,
}

impl Stats {
    pub fn snapshot(&self) -> [u64; 10] {
        [
            self.received.load(Relaxed),
            self.accepted.load(Relaxed),
            self.rejected.load(Relaxed),
            self.delivered.load(Relaxed),
            self.rate_limited.load(Relaxed),
            self.dropped.load(Relaxed),
            self.expired.load(Relaxed),
            self.rejected_by_server.load(Relaxed),
            self.local_only.load(Relaxed),
            self.delivery_failures.load(Relaxed),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_per_reason_and_in_total() {
        let s = Stats::default();
        s.refuse(Refusal::Malformed, 2);
        s.refuse(Refusal::SpoolFull, 1);
        assert_eq!(s.rejected.load(Relaxed), 3);
        let by = s.refusals();
        assert_eq!(by.len(), Refusal::ALL.len(), "every reason is listed");
        assert_eq!((by["malformed"], by["spool-full"], by["bad-prefix"]), (2, 1, 0));
        for (i, r) in Refusal::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "ALL is in declaration order");
        }
    }
}
