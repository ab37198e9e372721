//! Stage: decide. Between ingest and the store stage, on the committer
//! threads: for each record, what happens to it, decided in one place:
//!
//! - consent: delivered (spooled) or kept locally only, and why;
//! - privacy: host facts reduced at the `anonymous` level, payload scrubbed
//!   unless `opt-in-no-privacy-filters` exists ([`protect`]);
//! - rate windows: within them, or over them and dropped or held
//!   (`rate_limit_strategy`); a held record takes its room in the windows
//!   when delivery sends it;
//! - stamping: the record id and the accept time (the machine id is a
//!   header of the request, stamped by the request builder at delivery,
//!   so a rotation applies to what is sent after it).
//!
//! - the black box, while recording: the record becomes a `record` entry
//!   and a crash's payload gets its `Recent activity:` ([`crate::blackbox`]).
//!
//! Nothing here does I/O but the black box's (while recording); the store
//! stage keeps what is decided.

use std::sync::Arc;
use std::time::Instant;

use telemetry::scrub::Scrubber;
use telemetry::wire::native::Ack;
use telemetry::{MachineId, Payload, Record};

use crate::config::{Config, Strategy};
use crate::consent::Decision;
use crate::journal::Fate;
use crate::ratelimit::{RateLimiter, Verdict};
use crate::request::Prepared;
use crate::spool::Item;
use crate::state::{Policy, State};
use crate::stats::bump;
use crate::store::Incoming;

/// Where a decided record is kept, which also says when its sender hears
/// of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// In the spool, to be delivered: answered once the spool block is on
    /// disk.
    Spool,
    /// In the journal only: answered once the journal is on disk.
    Journal,
}

/// A record with its fate decided.
#[derive(Debug)]
pub struct Decided {
    pub item: Item,
    pub fate: Fate,
    pub keep: Keep,
}

impl Decided {
    /// The answer for the sender, once kept.
    pub fn ack(&self) -> Ack {
        Ack::Accepted { record_id: self.item.record_id.into() }
    }
}

/// Decides the records of one group commit under one configuration and
/// consent decision.
pub struct Decider<'a> {
    state: &'a State,
    cfg: &'a Config,
    policy: Policy,
    /// With the `debug` setting: how each record would be sent.
    debug: Option<(Prepared, MachineId)>,
    now: Instant,
    now_unix: u64,
}

impl<'a> Decider<'a> {
    pub fn new(state: &'a State, cfg: &'a Arc<Config>) -> Decider<'a> {
        Decider {
            state,
            cfg,
            policy: state.policy(cfg),
            debug: cfg.debug.then(|| (Prepared::new(cfg), state.machine_id())),
            now: Instant::now(),
            now_unix: telemetry::record::now_unix(),
        }
    }

    /// The accept time stamped on the records.
    pub fn now_unix(&self) -> u64 {
        self.now_unix
    }

    /// Decides one record; `windows` are the rate windows, held for the
    /// whole batch.
    pub fn decide(&self, incoming: Incoming, windows: &mut RateLimiter) -> Decided {
        let Incoming { mut record, size, uid, pid } = incoming;
        let stats = &self.state.stats;
        protect(&mut record, self.cfg, self.policy.scrub.then_some(&self.state.scrubber));
        let record_id = self.state.next_record_id();
        // The black box: one atomic load when not recording.
        if self.state.blackbox.is_recording() {
            self.state.blackbox.on_record(&mut record, record_id, self.cfg.record_max_bytes);
        }
        if let Some((prep, mid)) = &self.debug {
            let id = record_id;
            match crate::request::describe(prep, mid, &record) {
                Ok(d) => tracing::info!("debug: record {id} would be sent as:\n{}", d.render()),
                Err(e) => tracing::info!("debug: record {id} cannot be sent: {e}"),
            }
        }
        let (fate, keep, counted) = match &self.policy.decision {
            Decision::LocalOnly(why) => {
                bump(&stats.local_only, 1);
                (Fate::LocalOnly((*why).into()), Keep::Journal, true)
            }
            Decision::Deliver => match windows.try_acquire(self.now, size) {
                Verdict::Allowed => (Fate::Spooled, Keep::Spool, true),
                Verdict::Limited { .. } => {
                    bump(&stats.rate_limited, 1);
                    if self.cfg.rate_limit_strategy == Strategy::Drop {
                        bump(&stats.dropped, 1);
                        (Fate::RateLimitedDropped, Keep::Journal, true)
                    } else {
                        (Fate::RateLimitedSpooled, Keep::Spool, false)
                    }
                }
            },
        };
        Decided { item: Item { record_id, accepted: self.now_unix, counted, uid, pid, record }, fate, keep }
    }
}

/// A record held over a rate window (`rate_limit_strategy = spool`) is
/// about to be sent: it takes its room in the windows now, or says how
/// long until there is room.
pub fn release_held(state: &State, now: Instant, item: &Item) -> Result<(), std::time::Duration> {
    let mut size = Vec::new();
    let size = crate::spool::encode_item(item, &mut size).map(|n| n as u64).unwrap_or(0);
    match state.limiter().try_acquire(now, size) {
        Verdict::Allowed => Ok(()),
        Verdict::Limited { retry_in } => Err(retry_in.unwrap_or(std::time::Duration::from_secs(60))),
    }
}

/// Applies the privacy settings to a record before it is journaled or
/// spooled: host facts reduced at the `anonymous` level, payload scrubbed
/// when `scrubber` is given (bytes payloads only when they are UTF-8).
pub fn protect(record: &mut Record, cfg: &Config, scrubber: Option<&Scrubber>) {
    crate::identity::anonymize_host(&mut record.host, cfg.privacy_level);
    let Some(sc) = scrubber else { return };
    let scrubbed = match &record.payload {
        Payload::Text(t) => match sc.scrub(t) {
            std::borrow::Cow::Owned(o) => Some(Payload::Text(o)),
            std::borrow::Cow::Borrowed(_) => None,
        },
        Payload::Bytes(b) => match std::str::from_utf8(b).map(|t| sc.scrub(t)) {
            Ok(std::borrow::Cow::Owned(o)) => Some(Payload::Bytes(o.into_bytes())),
            _ => None,
        },
    };
    if let Some(p) = scrubbed {
        record.payload = p;
    }
}
