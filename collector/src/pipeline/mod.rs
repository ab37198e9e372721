//! The shared state of the stages, and the commit stage: committer threads
//! take every submission queued by ingest (group commit; a submission is
//! the records one connection had ready), decide each record's fate
//! (consent, rate windows, spool room), append one spool block with one
//! fdatasync, queue the journal lines, and only then answer the senders,
//! one reply per submission.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use telemetry::scrub::Scrubber;
use telemetry::wire::native::Ack;
use telemetry::{MachineId, Payload, Record};
use tokio::sync::{oneshot, watch, Notify};

use crate::config::{Config, Strategy};
use crate::consent::{self, Decision};
use crate::journal::{Fate, Journal, Line};
use crate::ratelimit::{RateLimiter, Verdict};
use crate::spool::{self, Item, Spool};
use crate::stats::{bump, Refusal, Stats};

/// Most records in one group commit.
pub const MAX_BATCH: usize = 1024;
/// Most bytes in one group commit.
pub const MAX_BATCH_BYTES: usize = 512 << 10;
/// How often a commit waiting for spool room looks again at whether the
/// server still takes records.
const ROOM_POLL: std::time::Duration = std::time::Duration::from_millis(50);
/// Records dropped for a full spool are logged at most this often (each
/// is counted and journaled).
const SPOOL_FULL_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// A wait for spool room longer than this is logged (debug).
const SLOW_ROOM: std::time::Duration = std::time::Duration::from_millis(500);

/// One record as ingest read it.
#[derive(Debug)]
pub struct Incoming {
    pub record: Record,
    /// Bytes it took on the wire (what the byte window counts).
    pub size: u64,
    /// The sending process's uid and pid (SO_PEERCRED).
    pub uid: u32,
    pub pid: u32,
}

/// The records one connection had ready (or the one record each of a
/// burst of legacy connections sent), handed from ingest to the commit
/// stage; answered with one [`Ack`] per record, in order.
#[derive(Debug)]
pub struct Submission {
    pub records: Vec<Incoming>,
    pub reply: Reply,
    /// Ingest's in-flight budget, given back when the submission is done.
    pub budget: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// How a submission is answered once its records are stored (or refused).
#[derive(Debug)]
pub enum Reply {
    /// A connection task's acks, one per record, in order.
    Acks(oneshot::Sender<Vec<Ack>>),
    /// Connections taken whole by ingest, their records in order: each is
    /// answered and closed here, on the thread that stored its records,
    /// and its connection slot goes back to ingest.
    Whole(Vec<Whole>),
}

/// A connection whose records ingest took whole (see `ingest::burst`).
#[derive(Debug)]
pub struct Whole {
    pub stream: std::os::unix::net::UnixStream,
    /// Its connection slot, given back when it is closed.
    pub slot: tokio::sync::OwnedSemaphorePermit,
    /// `None`: a legacy record (that protocol has no reply; closing tells
    /// its sender the record was read; a refusal was counted, journaled and
    /// logged where it was made). `Some(n)`: a native sender's `n` records,
    /// answered with their acks before closing.
    pub acks: Option<usize>,
}

impl Reply {
    /// Answers the submission.
    pub fn send(self, acks: Vec<Ack>) {
        match self {
            Reply::Acks(tx) => {
                let _ = tx.send(acks);
            }
            Reply::Whole(conns) => {
                let mut acks = acks.into_iter();
                let mut out = Vec::new();
                for conn in conns {
                    let n = conn.acks.unwrap_or(1);
                    out.clear();
                    for ack in acks.by_ref().take(n) {
                        if conn.acks.is_some() {
                            let _ = telemetry::wire::native::encode_into(
                                &telemetry::wire::native::ServerFrame::Ack(ack),
                                &mut out,
                            );
                        }
                    }
                    if !out.is_empty() {
                        // A few dozen bytes to a sender waiting for them.
                        use std::io::Write;
                        if let Err(e) = (&conn.stream).write_all(&out) {
                            tracing::debug!("cannot answer a probe connection: {e}");
                        }
                    }
                }
            }
        }
    }
}

/// What every stage shares.
pub struct Shared {
    pub cfg: watch::Receiver<Arc<Config>>,
    /// Shared with journal callbacks (a record refused because the journal
    /// failed is counted there).
    pub stats: Arc<Stats>,
    pub spool: Arc<Spool>,
    pub journal: Journal,
    pub limiter: Mutex<RateLimiter>,
    pub machine_id: Mutex<MachineId>,
    /// This boot's id (32 hex), from /proc/sys/kernel/random/boot_id.
    pub boot_id: Arc<str>,
    /// Wakes the delivery stage (new records, flush, reload).
    pub wake_delivery: Notify,
    /// Set by `telemctl flush`: retry now, forgetting the backoff.
    pub flush: AtomicBool,
    /// Unix seconds the daemon started.
    pub since: u64,
    /// Delivery's backoff deadline (ms since `since_instant`), 0 = none.
    pub retry_at_ms: AtomicU64,
    /// Set by delivery: why the server cannot take records now, or `None`
    /// while it does (consent given, a server configured, no pause or rate
    /// window in force): then a full spool drains, and commits wait for
    /// room instead of dropping.
    pub held: Mutex<Option<String>>,
    /// When records dropped for a full spool were last logged.
    spool_full_log: Mutex<Option<Instant>>,
    pub since_instant: Instant,
    /// This collector start's id (the `anonymous` level's id; in memory
    /// only, never written).
    pub session_id: MachineId,
    /// Scrubs payloads (unless `opt-in-no-privacy-filters` exists).
    pub scrubber: Scrubber,
    id_prefix: [u8; 8],
    id_counter: AtomicU64,
    /// The consent generation, bumped by [`Shared::consent_changed`] under
    /// the write lock; delivery writes requests under the read lock (see
    /// [`Shared::may_post`]).
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

/// How long a consent decision is reused, unless [`Shared::consent_changed`]
/// drops it first (`telemctl opt-in`, `opt-out` and `reload` do): the
/// bound on how late a change made behind the daemon's back (the opt-in
/// file edited by hand) is seen.
pub const CONSENT_TTL: std::time::Duration = std::time::Duration::from_millis(200);

impl Shared {
    pub fn new(
        cfg: watch::Receiver<Arc<Config>>,
        spool: Arc<Spool>,
        journal: Journal,
        machine_id: MachineId,
        session_id: MachineId,
    ) -> Shared {
        let limiter = RateLimiter::new(&cfg.borrow(), Instant::now());
        let mut id_prefix = [0u8; 8];
        id_prefix.copy_from_slice(&telemetry::EventId::random().as_bytes()[..8]);
        Shared {
            cfg,
            stats: Arc::new(Stats::default()),
            spool,
            journal,
            limiter: Mutex::new(limiter),
            machine_id: Mutex::new(machine_id),
            boot_id: telemetry::BootId::read().unwrap_or(telemetry::BootId::UNKNOWN).to_string().into(),
            wake_delivery: Notify::new(),
            flush: AtomicBool::new(false),
            since: telemetry::record::now_unix(),
            retry_at_ms: AtomicU64::new(0),
            held: Mutex::new(Some("delivery has not started".into())),
            spool_full_log: Mutex::new(None),
            since_instant: Instant::now(),
            session_id,
            scrubber: Scrubber::for_this_host(),
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
    pub fn next_record_id(&self) -> [u8; 16] {
        let n = self.id_counter.fetch_add(1, Ordering::Relaxed);
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.id_prefix);
        id[8..].copy_from_slice(&n.to_be_bytes());
        id
    }

    /// Why delivery cannot take records now, for the reason of a drop.
    pub fn held_reason(&self) -> String {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_else(|| "delivery is held back".into())
    }

    /// Whether the server takes records now (see [`Shared::held`]).
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

/// The queue from ingest to the committer threads: many producers (tasks
/// that await room), many consumers (threads that block), and one idle
/// committer woken per submission.
pub type SubmitTx = async_channel::Sender<Submission>;
/// See [`SubmitTx`].
pub type SubmitRx = async_channel::Receiver<Submission>;

/// Runs one committer thread until the submission channel closes: takes a
/// submission, then every one already queued (group commit).
pub fn committer(shared: Arc<Shared>, rx: SubmitRx) {
    // The block buffer is kept from one commit to the next.
    let mut body = Vec::new();
    while let Ok(first) = rx.recv_blocking() {
        let mut records = first.records.len();
        let mut bytes: u64 = first.records.iter().map(|r| r.size).sum();
        let mut batch = vec![first];
        while records < MAX_BATCH && bytes < MAX_BATCH_BYTES as u64 {
            match rx.try_recv() {
                Ok(s) => {
                    records += s.records.len();
                    bytes += s.records.iter().map(|r| r.size).sum::<u64>();
                    batch.push(s);
                }
                Err(_) => break,
            }
        }
        commit_batch(&shared, batch, &mut body);
        if body.capacity() > 4 * MAX_BATCH_BYTES {
            body = Vec::new();
        }
    }
}

/// How a record of a batch is answered.
enum Answer {
    /// Once the spool block is on disk.
    Spooled(Ack),
    /// Once the journal is on disk (records not spooled).
    Journaled(Ack),
    /// Now (not kept).
    Now(Ack),
}

/// Decides, stores and answers one batch; `body` is scratch space for the
/// spool block.
pub fn commit_batch(shared: &Shared, batch: Vec<Submission>, body: &mut Vec<u8>) {
    let cfg = shared.config();
    let Policy { decision, scrub } = shared.policy(&cfg);
    let debug = cfg.debug.then(|| (crate::delivery::Prepared::new(&cfg), shared.machine_id()));
    let now = Instant::now();
    let now_unix = telemetry::record::now_unix();
    let payload = cfg.record_retention_enabled;

    let n: usize = batch.iter().map(|s| s.records.len()).sum();
    let mut items: Vec<Arc<Item>> = Vec::with_capacity(n);
    let mut fates: Vec<Fate> = Vec::with_capacity(n);
    let mut answers: Vec<Answer> = Vec::with_capacity(n);
    let mut replies = Vec::with_capacity(batch.len());
    // Ingest's in-flight budget is held until the records are stored.
    let mut budgets = Vec::with_capacity(batch.len());
    // Records to spool: their index in `items` and encoded size.
    let mut spool_sizes: Vec<u64> = Vec::with_capacity(n);
    let mut to_spool: Vec<usize> = Vec::with_capacity(n);
    body.clear();
    {
        let mut limiter = shared.limiter();
        for sub in batch {
            replies.push((sub.reply, sub.records.len()));
            budgets.push(sub.budget);
            bump(&shared.stats.received, sub.records.len() as u64);
            for Incoming { mut record, size, uid, pid } in sub.records {
                protect(&mut record, &cfg, scrub.then_some(&shared.scrubber));
                let record_id = shared.next_record_id();
                if let Some((prep, mid)) = &debug {
                    let id = telemetry::client::record_id_hex(&record_id);
                    match crate::delivery::describe(prep, mid, &record) {
                        Ok(d) => tracing::info!("debug: record {id} would be sent as:\n{}", d.render()),
                        Err(e) => tracing::info!("debug: record {id} cannot be sent: {e}"),
                    }
                }
                let accepted = Ack::Accepted { record_id };
                let (fate, answer, counted) = match &decision {
                    Decision::LocalOnly(why) => {
                        bump(&shared.stats.local_only, 1);
                        (Fate::LocalOnly((*why).into()), Answer::Journaled(accepted), true)
                    }
                    Decision::Deliver => match limiter.try_acquire(now, size) {
                        Verdict::Allowed => (Fate::Spooled, Answer::Spooled(accepted), true),
                        Verdict::Limited { .. } => {
                            bump(&shared.stats.rate_limited, 1);
                            if cfg.rate_limit_strategy == Strategy::Drop {
                                bump(&shared.stats.dropped, 1);
                                (Fate::RateLimitedDropped, Answer::Journaled(accepted), true)
                            } else {
                                (Fate::RateLimitedSpooled, Answer::Spooled(accepted), false)
                            }
                        }
                    },
                };
                let item = Item { record_id, accepted: now_unix, counted, uid, pid, record };
                let (fate, answer) = match answer {
                    Answer::Spooled(_) => {
                        let before = body.len();
                        match spool::encode_item(&item, body) {
                            Ok(n) => {
                                to_spool.push(items.len());
                                spool_sizes.push(n as u64);
                                (fate, answer)
                            }
                            Err(e) => {
                                body.truncate(before);
                                bump(&shared.stats.dropped, 1);
                                shared.stats.refuse(Refusal::StoreFailed, 1);
                                (
                                    Fate::Dropped(e.to_string()),
                                    Answer::Journaled(Ack::Rejected { reason: e.to_string() }),
                                )
                            }
                        }
                    }
                    other => (fate, other),
                };
                items.push(Arc::new(item));
                fates.push(fate);
                answers.push(answer);
            }
        }
    }

    // Room in the spool, for all of them at once.
    let mut spooled: Vec<Arc<Item>> = Vec::with_capacity(to_spool.len());
    let mut reserved = 0;
    if !to_spool.is_empty() {
        // While the server takes records, a full spool is a backlog that
        // drains: wait for room (ingest stops reading meanwhile, so senders
        // wait). Only what waits because the server cannot take it now
        // (down, refusing, paused, rate windows) is bounded by dropping.
        let (fits, total, waited) =
            shared.spool.reserve_wait(&spool_sizes, cfg.spool_max_bytes, ROOM_POLL, cfg.delivery_timeout, &|| {
                shared.delivery_flowing()
            });
        if waited > SLOW_ROOM {
            tracing::debug!(
                "a group commit waited {:.0} ms for spool room (server slower than ingest)",
                waited.as_secs_f64() * 1e3
            );
        }
        reserved = total;
        if fits.iter().any(|f| !f) {
            // Rare (spool full): rebuild the block from the entries that fit.
            let reason = format!(
                "the spool is full ({} bytes used of spool_max_size {} bytes) while the server cannot take records ({})",
                shared.spool.bytes(),
                cfg.spool_max_bytes.unwrap_or(0),
                shared.held_reason()
            );
            let dropped = fits.iter().filter(|f| !**f).count();
            let mut last_log = shared.spool_full_log.lock().unwrap_or_else(|p| p.into_inner());
            if last_log.is_none_or(|t| t.elapsed() > SPOOL_FULL_LOG_EVERY) {
                tracing::warn!("dropping {dropped} record(s) (and more may follow, logged every 10 s): {reason}");
                *last_log = Some(Instant::now());
            }
            drop(last_log);
            let mut kept = Vec::with_capacity(body.len());
            let mut at = 0usize;
            for ((&i, &n), fit) in to_spool.iter().zip(&spool_sizes).zip(&fits) {
                let n = n as usize;
                if *fit {
                    kept.extend_from_slice(&body[at..at + n]);
                } else {
                    fates[i] = Fate::Dropped("spool full while the server cannot take records".into());
                    answers[i] = Answer::Journaled(Ack::Rejected { reason: reason.clone() });
                    bump(&shared.stats.dropped, 1);
                    shared.stats.refuse(Refusal::SpoolFull, 1);
                }
                at += n;
            }
            *body = kept;
        }
        spooled.extend(to_spool.iter().zip(&fits).filter(|(_, f)| **f).map(|(&i, _)| items[i].clone()));
    }

    // Store the spooled records first: their journal fate depends on it.
    let n_spooled = spooled.len() as u64;
    if !spooled.is_empty() {
        match shared.spool.commit(spooled, body, reserved) {
            Ok(_) => bump(&shared.stats.accepted, n_spooled),
            Err(e) => {
                let reason = format!("{e}; the record was not kept, send it again later");
                tracing::warn!("rejecting {n_spooled} record(s): {e}");
                for (fate, answer) in fates.iter_mut().zip(answers.iter_mut()) {
                    if matches!(answer, Answer::Spooled(_)) {
                        *fate = Fate::Dropped(format!("cannot store: {e}"));
                        *answer = Answer::Now(Ack::Rejected { reason: reason.clone() });
                        bump(&shared.stats.dropped, 1);
                        shared.stats.refuse(Refusal::StoreFailed, 1);
                    }
                }
            }
        }
    }

    // Each submission's acks, and whether they wait for the journal.
    let mut now_replies = Vec::new();
    let mut journal_replies = Vec::new();
    let mut answers = answers.into_iter();
    for (reply, n) in replies {
        let mut acks = Vec::with_capacity(n);
        let mut wait = false;
        for a in answers.by_ref().take(n) {
            acks.push(match a {
                Answer::Spooled(ack) | Answer::Now(ack) => ack,
                Answer::Journaled(ack) => {
                    wait = true;
                    // (Rejections were counted, with their reason, where made.)
                    if let Ack::Accepted { .. } = &ack {
                        bump(&shared.stats.accepted, 1);
                    }
                    ack
                }
            });
        }
        if wait {
            journal_replies.push((reply, acks));
        } else {
            now_replies.push((reply, acks));
        }
    }

    // Queue the journal lines before anything can deliver these records,
    // so a record's first entry always precedes its later fates.
    let lines: Vec<Line> = items
        .into_iter()
        .zip(fates)
        .map(|(item, fate)| Line::First { item, time: now_unix, boot: shared.boot_id.clone(), fate, payload })
        .collect();
    if journal_replies.is_empty() {
        shared.journal.append_bounded(lines, None);
    } else {
        let stats = shared.stats.clone();
        shared.journal.append_bounded(
            lines,
            Some(Box::new(move |r: Result<(), String>| {
                for (reply, acks) in journal_replies {
                    let acks = match &r {
                        Ok(()) => acks,
                        Err(e) => acks
                            .into_iter()
                            .map(|a| {
                                if let Ack::Accepted { .. } = a {
                                    // Counted accepted above; refused after all.
                                    stats.accepted.fetch_sub(1, Ordering::Relaxed);
                                    stats.refuse(Refusal::JournalFailed, 1);
                                }
                                Ack::Rejected { reason: format!("cannot journal the record: {e}") }
                            })
                            .collect(),
                    };
                    reply.send(acks);
                }
            })),
        );
    }
    // Records durably in the spool are acknowledged now (their journal
    // entries are written by the group commit that follows, not waited for).
    for (reply, acks) in now_replies {
        reply.send(acks);
    }
    if n_spooled > 0 {
        shared.wake_delivery.notify_one();
    }
    drop(budgets);
}

#[cfg(test)]
mod tests;
