//! Counters every stage bumps, and the status snapshot `telemctl status`
//! prints.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

#[derive(Debug, Default)]
pub struct Stats {
    pub received: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub delivered: AtomicU64,
    pub rate_limited: AtomicU64,
    pub dropped: AtomicU64,
    pub rejected_by_server: AtomicU64,
    pub local_only: AtomicU64,
    pub expired: AtomicU64,
    pub delivery_failures: AtomicU64,
    pub last_delivery_error: Mutex<Option<String>>,
}

pub fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Relaxed);
}

impl Stats {
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
    pub rejected: u64,
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
