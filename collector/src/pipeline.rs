//! The shared state of the stages, and the commit stage: committer threads
//! take every submission queued by ingest (group commit), decide each
//! record's fate (consent, rate windows, spool room), append one
//! spool block with one fdatasync, queue the journal entries, and only then
//! answer the senders.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use telemetry::scrub::Scrubber;
use telemetry::wire::native::Ack;
use telemetry::{MachineId, Payload, Record};
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::config::{Config, Strategy};
use crate::consent::{self, Decision};
use crate::journal::{Entry, Fate, Journal};
use crate::ratelimit::{RateLimiter, Verdict};
use crate::spool::{self, Item, Spool};
use crate::stats::{bump, Stats};

/// Most records in one group commit.
pub const MAX_BATCH: usize = 1024;
/// Most bytes in one group commit.
pub const MAX_BATCH_BYTES: usize = 1 << 20;

/// One record handed from ingest to the commit stage.
#[derive(Debug)]
pub struct Submission {
    pub record: Record,
    pub uid: u32,
    pub pid: u32,
    /// Bytes it took on the wire (what the byte window counts).
    pub size: u64,
    pub reply: oneshot::Sender<Ack>,
}

/// What every stage shares.
pub struct Shared {
    pub cfg: watch::Receiver<Arc<Config>>,
    pub stats: Stats,
    pub spool: Arc<Spool>,
    pub journal: Journal,
    pub limiter: Mutex<RateLimiter>,
    pub machine_id: Mutex<MachineId>,
    /// This boot's id (32 hex), from /proc/sys/kernel/random/boot_id.
    pub boot_id: String,
    /// Wakes the delivery stage (new records, flush, reload).
    pub wake_delivery: Notify,
    /// Set by `telemctl flush`: retry now, forgetting the backoff.
    pub flush: AtomicBool,
    /// Unix seconds the daemon started.
    pub since: u64,
    /// Delivery's backoff deadline (ms since `since_instant`), 0 = none.
    pub retry_at_ms: AtomicU64,
    pub since_instant: Instant,
    /// This collector start's id (the `anonymous` level's id; in memory
    /// only, never written).
    pub session_id: MachineId,
    /// Scrubs payloads (unless `opt-in-no-privacy-filters` exists).
    pub scrubber: Scrubber,
    id_prefix: [u8; 8],
    id_counter: AtomicU64,
    consent_cache: Mutex<Option<(Instant, Policy, Arc<Config>)>>,
}

/// What consent decided for records accepted now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub decision: Decision,
    /// Payloads are scrubbed.
    pub scrub: bool,
}

/// How long a consent decision is reused.
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
            stats: Stats::default(),
            spool,
            journal,
            limiter: Mutex::new(limiter),
            machine_id: Mutex::new(machine_id),
            boot_id: boot_id(),
            wake_delivery: Notify::new(),
            flush: AtomicBool::new(false),
            since: telemetry::record::now_unix(),
            retry_at_ms: AtomicU64::new(0),
            since_instant: Instant::now(),
            session_id,
            scrubber: Scrubber::for_this_host(),
            id_prefix,
            id_counter: AtomicU64::new(0),
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
        let mut c = self.consent_cache.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match &*c {
            Some((at, p, for_cfg)) if now.duration_since(*at) < CONSENT_TTL && Arc::ptr_eq(for_cfg, cfg) => p.clone(),
            _ => {
                let p = Policy { decision: consent::decide(cfg), scrub: consent::scrubbing(cfg) };
                *c = Some((now, p.clone(), cfg.clone()));
                p
            }
        }
    }

    /// A fresh record id: a per-run random prefix and a counter.
    pub fn next_record_id(&self) -> [u8; 16] {
        let n = self.id_counter.fetch_add(1, Ordering::Relaxed);
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.id_prefix);
        id[8..].copy_from_slice(&n.to_be_bytes());
        id
    }

    pub fn limiter(&self) -> std::sync::MutexGuard<'_, RateLimiter> {
        self.limiter.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn machine_id(&self) -> MachineId {
        self.machine_id.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// This boot's id without dashes (32 hex), or zeros when unknown.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().replace('-', ""))
        .ok()
        .filter(|s| s.len() == 32)
        .unwrap_or_else(|| "0".repeat(32))
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

/// Runs one committer thread until the submission channel closes.
pub fn committer(shared: Arc<Shared>, rx: Arc<Mutex<mpsc::Receiver<Submission>>>) {
    loop {
        let batch = {
            let mut rx = rx.lock().unwrap_or_else(|p| p.into_inner());
            let Some(first) = rx.blocking_recv() else { return };
            let mut bytes = first.size as usize;
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(s) => {
                        bytes += s.size as usize;
                        batch.push(s);
                    }
                    Err(_) => break,
                }
            }
            batch
        };
        commit_batch(&shared, batch);
    }
}

/// Decides, stores and answers one batch.
pub fn commit_batch(shared: &Shared, batch: Vec<Submission>) {
    let cfg = shared.config();
    let Policy { decision, scrub } = shared.policy(&cfg);
    let debug = cfg.debug.then(|| (crate::delivery::Prepared::new(&cfg), shared.machine_id()));
    let now = Instant::now();
    let now_unix = telemetry::record::now_unix();
    let retention = cfg.record_retention_enabled;
    bump(&shared.stats.received, batch.len() as u64);

    let mut entries = Vec::with_capacity(batch.len());
    // Answered once the journal is on disk (records not spooled).
    let mut after_journal: Vec<(oneshot::Sender<Ack>, Ack)> = Vec::new();
    // Answered once the spool block is on disk.
    let mut after_spool: Vec<(oneshot::Sender<Ack>, [u8; 16], usize)> = Vec::new();
    let mut items = Vec::new();
    let mut body = Vec::new();
    let mut reserved = 0u64;

    for mut sub in batch {
        protect(&mut sub.record, &cfg, scrub.then_some(&shared.scrubber));
        let record_id = shared.next_record_id();
        let id_hex = telemetry::client::record_id_hex(&record_id);
        let mut entry = Entry {
            id: id_hex,
            time: now_unix,
            class: Some(sub.record.classification.to_string()),
            event: Some(sub.record.event_id.to_string()),
            boot: Some(shared.boot_id.clone()),
            uid: Some(sub.uid),
            pid: Some(sub.pid),
            severity: Some(sub.record.severity.as_u8()),
            fate: String::new(),
            payload: retention.then(|| sub.record.payload.to_text_lossy().into_owned()),
            creation_timestamp: Some(sub.record.creation_timestamp),
            payload_format_version: Some(sub.record.payload_format_version),
            host: Some(sub.record.host.clone()),
        };
        if let Some((prep, mid)) = &debug {
            match crate::delivery::describe(prep, mid, &sub.record) {
                Ok(d) => tracing::info!("debug: record {} would be sent as:\n{}", entry.id, d.render()),
                Err(e) => tracing::info!("debug: record {} cannot be sent: {e}", entry.id),
            }
        }
        let accepted = Ack::Accepted { record_id };
        let counted = match &decision {
            Decision::LocalOnly(why) => {
                entry.fate = Fate::LocalOnly((*why).into()).to_string();
                bump(&shared.stats.local_only, 1);
                after_journal.push((sub.reply, accepted));
                entries.push(entry);
                continue;
            }
            Decision::Deliver => match shared.limiter().try_acquire(now, sub.size) {
                Verdict::Allowed => true,
                Verdict::Limited { .. } => {
                    bump(&shared.stats.rate_limited, 1);
                    if cfg.rate_limit_strategy == Strategy::Drop {
                        entry.fate = Fate::RateLimitedDropped.to_string();
                        bump(&shared.stats.dropped, 1);
                        after_journal.push((sub.reply, accepted));
                        entries.push(entry);
                        continue;
                    }
                    false
                }
            },
        };
        entry.fate = if counted { Fate::Spooled } else { Fate::RateLimitedSpooled }.to_string();
        let item = Item { record_id, accepted: now_unix, counted, uid: sub.uid, pid: sub.pid, record: sub.record };
        let before = body.len();
        if let Err(e) = spool::encode_item(&item, &mut body) {
            body.truncate(before);
            let reason = e.to_string();
            entry.fate = Fate::Dropped(reason.clone()).to_string();
            bump(&shared.stats.dropped, 1);
            after_journal.push((sub.reply, Ack::Rejected { reason }));
            entries.push(entry);
            continue;
        }
        let need = (body.len() - before + if reserved == 0 { spool::HEADER_LEN } else { 0 }) as u64;
        if !shared.spool.reserve(need, cfg.spool_max_bytes) {
            body.truncate(before);
            let max = cfg.spool_max_bytes.unwrap_or(0);
            let reason = format!(
                "the spool is full ({} bytes used of spool_max_size {max} bytes) and the server has not taken records yet",
                shared.spool.bytes()
            );
            entry.fate = Fate::Dropped("spool full".into()).to_string();
            bump(&shared.stats.dropped, 1);
            after_journal.push((sub.reply, Ack::Rejected { reason }));
            entries.push(entry);
            continue;
        }
        reserved += need;
        after_spool.push((sub.reply, record_id, entries.len()));
        entries.push(entry);
        items.push(item);
    }

    // Store the spooled records first: their journal fate depends on it.
    let mut spooled_acks = Vec::new();
    if !items.is_empty() {
        match shared.spool.commit(items, &body, reserved) {
            Ok(_) => {
                bump(&shared.stats.accepted, after_spool.len() as u64);
                spooled_acks = after_spool.into_iter().map(|(reply, record_id, _)| (reply, Ack::Accepted { record_id })).collect();
            }
            Err(e) => {
                let reason = format!("{e}; the record was not kept, send it again later");
                tracing::warn!("rejecting {} record(s): {e}", after_spool.len());
                for (reply, _, i) in after_spool {
                    entries[i].fate = Fate::Dropped(format!("cannot store: {e}")).to_string();
                    bump(&shared.stats.dropped, 1);
                    bump(&shared.stats.rejected, 1);
                    spooled_acks.push((reply, Ack::Rejected { reason: reason.clone() }));
                }
            }
        }
    }

    // Queue the journal entries before anything can deliver these records,
    // so a record's first entry always precedes its later fates.
    if after_journal.is_empty() {
        shared.journal.append(entries, None);
    } else {
        let accepted_n = after_journal.iter().filter(|(_, a)| matches!(a, Ack::Accepted { .. })).count() as u64;
        bump(&shared.stats.accepted, accepted_n);
        bump(&shared.stats.rejected, after_journal.len() as u64 - accepted_n);
        shared.journal.append(
            entries,
            Some(Box::new(move |r: Result<(), String>| {
                for (reply, ack) in after_journal {
                    let ack = match (&r, ack) {
                        (Ok(()), ack) => ack,
                        (Err(e), _) => Ack::Rejected { reason: format!("cannot journal the record: {e}") },
                    };
                    let _ = reply.send(ack);
                }
            })),
        );
    }
    // Records durably in the spool are acknowledged now (their journal
    // entries are written by the group commit that follows, not waited for).
    let any_spooled = spooled_acks.iter().any(|(_, a)| matches!(a, Ack::Accepted { .. }));
    for (reply, ack) in spooled_acks {
        let _ = reply.send(ack);
    }
    if any_spooled {
        shared.wake_delivery.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use telemetry::{Classification, Severity};

    fn shared(dir: &std::path::Path, cfg: Config) -> (Arc<Shared>, watch::Sender<Arc<Config>>, std::thread::JoinHandle<()>) {
        let (spool, _) = Spool::open(&dir.join("spool"), 0).unwrap();
        let (journal, h) = Journal::open(&dir.join("journal")).unwrap();
        let (tx, rx) = watch::channel(Arc::new(cfg));
        (Arc::new(Shared::new(rx, spool, journal, MachineId::random(), MachineId::random())), tx, h)
    }

    fn submit(shared: &Shared, text: &str) -> oneshot::Receiver<Ack> {
        let record = Record::builder(Classification::parse("org.t/pipe/x").unwrap(), Severity::Low, Payload::text(text)).build();
        let (tx, rx) = oneshot::channel();
        commit_batch(shared, vec![Submission { record, uid: 1, pid: 2, size: 10, reply: tx }]);
        rx
    }

    #[test]
    fn consent_is_not_retroactive_and_payloads_are_scrubbed_first() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config {
            etc_dir: dir.path().join("etc"),
            server: Some("http://127.0.0.1:9/".parse().unwrap()),
            record_retention_enabled: true,
            privacy_level: crate::config::PrivacyLevel::Anonymous,
            ..Config::default()
        };
        let (sh, tx, h) = shared(dir.path(), cfg.clone());
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        // Not opted in: journaled, acknowledged, never spooled.
        let ack = rt.block_on(submit(&sh, "user alice@example.org at 10.1.2.3 in /home/alice/x")).unwrap();
        assert!(matches!(ack, Ack::Accepted { .. }));
        assert_eq!(sh.spool.records(), 0);
        // A later opt-in (and a new configuration, so the cache is gone).
        crate::consent::opt_in(&cfg).unwrap();
        tx.send(Arc::new(cfg.clone())).unwrap();
        assert_eq!(sh.consent(&sh.config()), Decision::Deliver);
        assert_eq!(sh.spool.next().map(|t| t.item.record_id), None, "the earlier record is not in the spool");
        drop(rt.block_on(submit(&sh, "plain")));
        let t = sh.spool.next().expect("the record after the opt-in is spooled");
        assert_eq!(t.item.record.host.cpu_model.as_str(), crate::identity::PLACEHOLDER);
        assert!(sh.spool.next().is_none());
        drop(sh);
        drop(tx);
        h.join().unwrap();
        let j = crate::journal::read(&dir.path().join("journal")).unwrap();
        assert_eq!(j.len(), 2);
        assert_eq!(j[0].entry.fate, "local-only: not opted in");
        assert_eq!(j[0].entry.payload.as_deref(), Some("user <email> at <ipv4> in /home/<user>/x"));
        assert_eq!(j[1].entry.fate, "spooled");
    }
}
