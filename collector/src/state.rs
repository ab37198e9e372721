//! The state every stage reads: the configuration in force, counters,
//! the spool and journal handles, the rate windows, the machine id, the
//! consent gate and whether delivery flows. Created by the daemon, shared
//! by ingest, the store stage, delivery and the control socket.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use telemetry::scrub::Scrubber;
use telemetry::{MachineId, RecordId};
use tokio::sync::{watch, Notify};

use crate::config::Config;
use crate::consent::{self, Decision};
use crate::journal::Journal;
use crate::ratelimit::RateLimiter;
use crate::spool::{Dest, Spool, DESTS};
use crate::stats::Stats;

/// What every stage shares.
pub struct State {
    pub cfg: watch::Receiver<Arc<Config>>,
    /// State with journal callbacks (a record refused because the journal
    /// failed is counted there).
    pub stats: Arc<Stats>,
    pub spool: Arc<Spool>,
    pub journal: Journal,
    pub limiter: Mutex<RateLimiter>,
    pub machine_id: Mutex<MachineId>,
    /// This boot's id (32 hex), from /proc/sys/kernel/random/boot_id.
    pub boot_id: Arc<str>,
    /// Wakes the delivery stage, every destination's loop (new records,
    /// flush, reload).
    pub wake_delivery: Wake,
    /// Set by `telemctl flush`, per destination: retry now, forgetting
    /// the backoff.
    pub flush: [AtomicBool; DESTS],
    /// Unix seconds the daemon started.
    pub since: u64,
    /// The boot the host went down in under the previous run
    /// ([`crate::running`]), shown by `telemctl status`.
    pub host_went_down: Option<String>,
    /// Delivery's backoff deadline (ms since `since_instant`), 0 = none.
    pub retry_at_ms: AtomicU64,
    /// Set by delivery: why the server cannot take records now, or `None`
    /// while it does (consent given, a server configured, no pause or rate
    /// window in force): then a full spool drains, and commits wait for
    /// room instead of dropping.
    pub held: Mutex<Option<String>>,
    /// Each destination's own `held` ([`State::set_held`]).
    held_by: Mutex<[Option<String>; DESTS]>,
    /// When records dropped for a full spool were last logged.
    pub(crate) spool_full_log: Mutex<Option<Instant>>,
    pub since_instant: Instant,
    /// This collector start's id (the `anonymous` level's id; in memory
    /// only, never written).
    pub session_id: MachineId,
    /// Scrubs payloads (unless `opt-in-no-privacy-filters` exists).
    pub scrubber: Scrubber,
    /// The black box recorder ([`crate::blackbox`]): idle unless a
    /// recording runs.
    pub blackbox: crate::blackbox::Recorder,
    id_prefix: [u8; 8],
    id_counter: AtomicU64,
    /// The consent generation, bumped by [`State::consent_changed`] under
    /// the write lock; delivery writes requests under the read lock (see
    /// [`State::may_post`]).
    consent_gate: tokio::sync::RwLock<u64>,
    /// The generation, for readers that cannot wait for the lock.
    consent_gen: AtomicU64,
    consent_cache: Mutex<Option<CachedPolicy>>,
}

/// The last consent decision: when, for which configuration and generation.
type CachedPolicy = (Instant, Policy, Arc<Config>, u64);

/// What consent decided for records accepted now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub decision: Decision,
    /// Payloads are scrubbed.
    pub scrub: bool,
}

/// How long a consent decision is reused, unless [`State::consent_changed`]
/// drops it first (`telemctl opt-in`, `opt-out` and `reload` do): the
/// bound on how late a change made behind the daemon's back (the opt-in
/// file edited by hand) is seen.
pub const CONSENT_TTL: std::time::Duration = std::time::Duration::from_millis(200);

impl State {
    pub fn new(
        cfg: watch::Receiver<Arc<Config>>,
        spool: Arc<Spool>,
        journal: Journal,
        machine_id: MachineId,
        session_id: MachineId,
    ) -> State {
        let limiter = RateLimiter::new(&cfg.borrow(), Instant::now());
        let blackbox = crate::blackbox::Recorder::new(&cfg.borrow().state_dir);
        let mut id_prefix = [0u8; 8];
        id_prefix.copy_from_slice(&telemetry::EventId::random().as_bytes()[..8]);
        State {
            cfg,
            stats: Arc::new(Stats::default()),
            spool,
            journal,
            limiter: Mutex::new(limiter),
            machine_id: Mutex::new(machine_id),
            boot_id: telemetry::BootId::read().unwrap_or(telemetry::BootId::UNKNOWN).to_string().into(),
            wake_delivery: Wake::default(),
            flush: Default::default(),
            since: telemetry::record::now_unix(),
            host_went_down: None,
            retry_at_ms: AtomicU64::new(0),
            held: Mutex::new(Some("delivery has not started".into())),
            held_by: Mutex::new([Some("delivery has not started".into()), None]),
            spool_full_log: Mutex::new(None),
            since_instant: Instant::now(),
            session_id,
            scrubber: Scrubber::for_this_host(),
            blackbox,
            id_prefix,
            id_counter: AtomicU64::new(0),
            consent_gate: tokio::sync::RwLock::new(0),
            consent_gen: AtomicU64::new(0),
            consent_cache: Mutex::new(None),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.cfg.borrow().clone()
    }

    /// The consent decision, re-read from the opt-in file at most every
    /// [`CONSENT_TTL`] (a stat per record would cost more than the rest).
    pub fn consent(&self, cfg: &Arc<Config>) -> Decision {
        self.policy(cfg).decision
    }

    /// The consent decision and the scrubbing switch, cached as [`consent`](Self::consent).
    pub fn policy(&self, cfg: &Arc<Config>) -> Policy {
        // Read before the decision is made: a decision made while the
        // generation moves is cached under the old one, so not reused.
        let gen = self.consent_gen.load(Ordering::SeqCst);
        let mut c = self.consent_cache.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match &*c {
            Some((at, p, for_cfg, g))
                if *g == gen && now.duration_since(*at) < CONSENT_TTL && Arc::ptr_eq(for_cfg, cfg) =>
            {
                p.clone()
            }
            _ => {
                let p = Policy { decision: consent::decide(cfg), scrub: consent::scrubbing(cfg) };
                *c = Some((now, p.clone(), cfg.clone(), gen));
                p
            }
        }
    }

    /// Applies a change of what may leave the machine: runs `change` (a
    /// new configuration, or nothing when the opt-in file was changed by
    /// `telemctl`) while no delivery write is being decided or made, bumps
    /// the consent generation and drops the cached decision. Once it
    /// returns, every record accepted decides consent afresh, and no post
    /// starts unless the new state allows it (posts already written may
    /// still be answered: those records were accepted before).
    pub async fn consent_changed(&self, change: impl FnOnce()) {
        let mut gen = self.consent_gate.write().await;
        change();
        *gen += 1;
        self.consent_gen.store(*gen, Ordering::SeqCst);
        *self.consent_cache.lock().unwrap_or_else(|p| p.into_inner()) = None;
        drop(gen);
        // Records waiting in the spool go (or stay) now, not at the next poll.
        self.wake_delivery.notify_one();
    }

    /// Waits until delivery may decide to write requests made with `cfg`;
    /// the guard, held while they are written, when they may go (consent
    /// is `deliver` and `cfg` is still the configuration in force), else
    /// `None`. [`consent_changed`](Self::consent_changed) waits for the
    /// guards, so no write decided under the old state outlives it.
    pub async fn may_post(&self, cfg: &Arc<Config>) -> Option<tokio::sync::RwLockReadGuard<'_, u64>> {
        let guard = self.consent_gate.read().await;
        let current = self.config();
        (Arc::ptr_eq(&current, cfg) && self.consent(cfg) == Decision::Deliver).then_some(guard)
    }

    /// A fresh record id: a per-run random prefix and a counter.
    pub fn next_record_id(&self) -> RecordId {
        let n = self.id_counter.fetch_add(1, Ordering::Relaxed);
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.id_prefix);
        id[8..].copy_from_slice(&n.to_be_bytes());
        RecordId::from_bytes(id)
    }

    /// Sets why destination `dest` cannot take records now (`None`: it
    /// does, or it is not configured); [`State::held`] becomes the first
    /// destination's reason, so a full spool drains only while every
    /// destination takes records.
    pub fn set_held(&self, dest: Dest, why: Option<String>) {
        let mut by = self.held_by.lock().unwrap_or_else(|p| p.into_inner());
        by[dest.index()] = why;
        let all = by.iter().flatten().next().cloned();
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = all;
    }

    /// Why destination `dest` cannot take records now.
    pub fn held_at(&self, dest: Dest) -> Option<String> {
        self.held_by.lock().unwrap_or_else(|p| p.into_inner())[dest.index()].clone()
    }

    /// `telemctl flush`: every destination retries now.
    pub fn request_flush(&self) {
        for f in &self.flush {
            f.store(true, Ordering::SeqCst);
        }
        self.wake_delivery.notify_one();
    }

    /// Why delivery cannot take records now, for the reason of a drop.
    pub fn held_reason(&self) -> String {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_else(|| "delivery is held back".into())
    }

    /// Whether the server takes records now (see [`State::held`]).
    pub fn delivery_flowing(&self) -> bool {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).is_none()
    }

    pub fn limiter(&self) -> std::sync::MutexGuard<'_, RateLimiter> {
        self.limiter.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn machine_id(&self) -> MachineId {
        self.machine_id.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Wakes the delivery loops of the configured destinations (each waits on
/// its own [`Notify`], so one wake-up is not taken by the other). A loop
/// whose destination is not configured is woken by configuration changes
/// only (its `cfg` watch), not per record.
#[derive(Debug)]
pub struct Wake {
    each: [Notify; DESTS],
    /// The destinations to wake (`Spool::destinations`).
    mask: std::sync::atomic::AtomicU8,
}

impl Default for Wake {
    fn default() -> Wake {
        Wake { each: Default::default(), mask: std::sync::atomic::AtomicU8::new(u8::MAX) }
    }
}

impl Wake {
    /// Wakes the configured destinations' loops (a permit is kept for a
    /// loop that is not waiting yet).
    pub fn notify_one(&self) {
        let mask = self.mask.load(Ordering::Relaxed);
        for d in Dest::ALL {
            if mask & d.bit() != 0 {
                self.each[d.index()].notify_one();
            }
        }
    }

    /// Sets which destinations' loops records wake.
    pub fn set_destinations(&self, mask: u8) {
        self.mask.store(mask, Ordering::Relaxed);
    }

    /// Waits for a wake-up of `dest`'s loop.
    pub fn notified(&self, dest: Dest) -> tokio::sync::futures::Notified<'_> {
        self.each[dest.index()].notified()
    }
}
