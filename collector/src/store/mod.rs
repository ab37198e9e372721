//! Stage: store. Committer threads take every submission queued by ingest
//! (group commit; a submission is the records one connection had ready,
//! or those of a burst of whole connections), have each record decided
//! ([`crate::decide`]), make room in the spool (waiting while delivery
//! flows, dropping with the reason only what waits because the server
//! cannot take it), append one spool block (with one fdatasync when a
//! record of the block is of `spool_sync_severity` or higher; else synced
//! within [`crate::spool::LAZY_SYNC`]), queue the journal lines, and only
//! then answer the senders, one reply per submission.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use telemetry::wire::native::Ack;
use telemetry::Record;
use tokio::sync::oneshot;

use crate::decide::{Decided, Decider, Keep};
use crate::journal::{Fate, Line};
use crate::spool::{self, Item};
use crate::state::State;
use crate::stats::{bump, Refusal};

/// Committer threads (group commits in flight at once).
pub const COMMITTERS: usize = 3;
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
    /// logged where it was made). `Some`: a native sender's records,
    /// answered before closing.
    pub native: Option<NativeAnswer>,
}

/// How a native sender served whole is answered: its hello and its acks in
/// one write (one wake-up of the sender instead of two).
#[derive(Debug)]
pub struct NativeAnswer {
    /// Its hello frame, encoded.
    pub hello: Vec<u8>,
    /// How many records it sent (as many acks follow).
    pub records: usize,
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
                    out.clear();
                    let n = match &conn.native {
                        Some(a) => {
                            out.extend_from_slice(&a.hello);
                            a.records
                        }
                        None => 1,
                    };
                    for ack in acks.by_ref().take(n) {
                        if conn.native.is_some() {
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

/// The queue from ingest to the committer threads: many producers (tasks
/// that await room), many consumers (threads that block), and one idle
/// committer woken per submission.
pub type SubmitTx = async_channel::Sender<Submission>;
/// See [`SubmitTx`].
pub type SubmitRx = async_channel::Receiver<Submission>;

/// Runs one committer thread until the submission channel closes: takes a
/// submission, then every one already queued (group commit).
pub fn committer(shared: Arc<State>, rx: SubmitRx) {
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
pub fn commit_batch(shared: &State, batch: Vec<Submission>, body: &mut Vec<u8>) {
    let cfg = shared.config();
    let decider = Decider::new(shared, &cfg);
    let now_unix = decider.now_unix();
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
        let mut windows = shared.limiter();
        for sub in batch {
            replies.push((sub.reply, sub.records.len()));
            budgets.push(sub.budget);
            bump(&shared.stats.received, sub.records.len() as u64);
            for incoming in sub.records {
                let Decided { item, fate, keep } = decider.decide(incoming, &mut windows);
                let accepted = Ack::Accepted { record_id: item.record_id.into() };
                let (fate, answer) = match keep {
                    Keep::Journal => (fate, Answer::Journaled(accepted)),
                    Keep::Spool => {
                        let before = body.len();
                        match spool::encode_item(&item, body) {
                            Ok(n) => {
                                to_spool.push(items.len());
                                spool_sizes.push(n as u64);
                                (fate, Answer::Spooled(accepted))
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

    // Write the spooled records first (their journal fate depends on it);
    // delivery sees them only once their journal lines are queued.
    let n_spooled = spooled.len() as u64;
    let mut written = None;
    if !spooled.is_empty() {
        // Synced before the ack when any record of the block is of
        // `spool_sync_severity` or higher; else within LAZY_SYNC.
        let fsync = if spooled.iter().any(|i| cfg.syncs_before_ack(i.record.severity)) {
            spool::Fsync::Now
        } else {
            spool::Fsync::Lazy
        };
        match shared.spool.write(spooled, body, reserved, fsync) {
            Ok(w) => {
                bump(&shared.stats.accepted, n_spooled);
                written = Some(w);
            }
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

    // Queue the journal lines before delivery can see these records, so a
    // record's first entry always precedes its later fates.
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
    // Delivery may take them now: their first entries are queued ahead of
    // any fate it gives them.
    if let Some(w) = written {
        shared.spool.publish(w);
        shared.wake_delivery.notify_one();
    }
    // Records durably in the spool are acknowledged now (their journal
    // entries are written by the group commit that follows, not waited for).
    for (reply, acks) in now_replies {
        reply.send(acks);
    }
    drop(budgets);
}

pub mod settle;
#[cfg(test)]
mod tests;
