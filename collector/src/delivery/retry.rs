//! Outcomes of posts and retry state: the server's pauses (backoff,
//! `Retry-After`), each record's own backoff and attempts, giving up.

use std::time::{Duration, Instant};

use crate::journal::Fate;
use crate::spool::Ticket;
use crate::stats::bump;
use crate::store::settle::Settle;
use crate::transport::{Answer, SendError};

use super::*;

/// First pause of a server that cannot take records.
pub const BASE_BACKOFF: Duration = Duration::from_millis(250);
/// First wait before a record that failed is posted again.
pub const RECORD_BACKOFF: Duration = Duration::from_secs(1);
/// Failures in a row, with no success between them, that make a server
/// count as failing as a whole (an outage) rather than record by record.
pub const OUTAGE_AFTER: u32 = 4;

/// The result of one post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// OTLP: the request was taken, but the receiver says it rejected
    /// `rejected` of its `of` log records (partial success), for `why`. The
    /// rejected ones are not to be sent again; which they are is not said.
    DeliveredPartly {
        rejected: i64,
        of: usize,
        why: String,
    },
    /// The server cannot take records now (no connection, TLS, timeout,
    /// 429, 503): it pauses, no record is blamed; `after` from Retry-After.
    ServerBusy {
        error: String,
        after: Option<Duration>,
    },
    /// The server failed this record (408, 5xx other than 503): the record
    /// waits its own backoff; others go on.
    Failed {
        status: u16,
        body: String,
    },
    /// The server refused the record for good.
    Refused {
        status: u16,
        body: String,
    },
    /// This record cannot be sent in the configured form.
    Unsendable(String),
    /// Not sent: consent was withdrawn (or the configuration changed)
    /// before it was written (`transport::Gate`); no fault of the server's
    /// or the record's: it stays spooled for when sending is allowed again.
    Withheld,
}

/// Classifies an HTTP status.
pub fn classify(status: u16, body: String, retry_after: Option<Duration>) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered,
        429 | 503 => Outcome::ServerBusy { error: format!("server answered {status}"), after: retry_after },
        408 | 500..=599 => Outcome::Failed { status, body },
        _ => Outcome::Refused { status, body },
    }
}

/// Classifies an OTLP/HTTP answer's status (the OTLP spec's rules): 429,
/// 502, 503 and 504 are retried after `Retry-After` or a backoff, every
/// other non-2xx is final.
pub fn classify_otlp(status: u16, body: String, retry_after: Option<Duration>) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered,
        429 | 502 | 503 | 504 => {
            Outcome::ServerBusy { error: format!("OTLP endpoint answered {status}"), after: retry_after }
        }
        _ => Outcome::Refused { status, body },
    }
}

/// The outcome of an OTLP export request of `n` records.
pub(super) fn otlp_outcome(
    answer: Result<Answer, SendError>,
    encoding: crate::config::OtlpEncoding,
    n: usize,
) -> Outcome {
    match answer {
        Ok(a) if (200..300).contains(&a.status) => match crate::otlp::partial_success(&a.body, encoding) {
            Some((rejected, why)) => Outcome::DeliveredPartly { rejected, of: n, why: answer_text(why.as_bytes()) },
            None => Outcome::Delivered,
        },
        // An error status's body is a google.rpc.Status (protobuf or
        // JSON): kept as text, cut as other answers are.
        Ok(a) => classify_otlp(a.status, answer_text(&a.body), a.retry_after),
        Err(SendError::Withheld) => Outcome::Withheld,
        Err(e) => Outcome::ServerBusy { error: e.to_string(), after: None },
    }
}

/// The first 200 bytes of an answer body on one line (control characters
/// become spaces), cut at a character boundary.
pub(super) fn answer_text(body: &[u8]) -> String {
    let s: String = String::from_utf8_lossy(&body[..body.len().min(200)])
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    s.trim().to_string()
}

/// The outcome of a post from what the transport got back.
pub(super) fn outcome(answer: Result<Answer, SendError>) -> Outcome {
    match answer {
        Ok(a) => {
            let body = if (200..300).contains(&a.status) { String::new() } else { answer_text(&a.body) };
            classify(a.status, body, a.retry_after)
        }
        Err(SendError::Withheld) => Outcome::Withheld,
        Err(e) => Outcome::ServerBusy { error: e.to_string(), after: None },
    }
}

/// The backoff before retry number `attempt` (1-based) of a paused
/// server, with jitter in [50%, 100%] of the exponential value, capped at
/// `max`.
pub fn backoff(attempt: u32, max: Duration, jitter: f64) -> Duration {
    backoff_from(BASE_BACKOFF, attempt, max, jitter)
}

/// The wait before a failed record is posted again: [`RECORD_BACKOFF`]
/// doubled per failure, with jitter, capped at `max` (`delivery_retry_max`).
pub fn record_backoff(failures: u32, max: Duration, jitter: f64) -> Duration {
    backoff_from(RECORD_BACKOFF, failures, max, jitter)
}

pub(super) fn backoff_from(base: Duration, attempt: u32, max: Duration, jitter: f64) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let d = exp.min(max);
    d.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

pub(super) fn jitter() -> f64 {
    let b = telemetry::EventId::random();
    (b.as_bytes()[0] as f64) / 255.0
}

/// A record being delivered, with its own retry state.
pub(super) struct Job {
    pub(super) ticket: Ticket,
    /// Counted by the rate windows (at ingest or here).
    pub(super) counted: bool,
    /// Failed posts of this record (any kind that blames it): its backoff.
    pub(super) failures: u32,
    /// Failures while the server took other records: after
    /// `delivery_max_attempts` of them the record is given up.
    pub(super) suspect: u32,
    /// The server's success count when this record was last posted, then
    /// when it last failed.
    pub(super) mark: u64,
    /// Server pauses begun before its last failure (see `pending`).
    pub(super) outage_mark: u64,
    /// Its last failure is not judged yet: it becomes suspect if the
    /// server takes other records before the record's next attempt, with
    /// no server pause between.
    pub(super) pending: bool,
    /// The last failing answer: status, first 200 bytes of the body.
    pub(super) last: Option<(u16, String)>,
}

impl Job {
    pub(super) fn new(ticket: Ticket) -> Job {
        let counted = ticket.item.counted;
        Job { ticket, counted, failures: 0, suspect: 0, mark: 0, outage_mark: 0, pending: false, last: None }
    }
}

impl Deliverer {
    /// Pauses the server: `after` (Retry-After) when given, else the next
    /// backoff round unless a pause is already running.
    pub(super) fn pause_server(&mut self, error: &str, after: Option<Duration>) {
        let now = Instant::now();
        match after {
            Some(after) => {
                self.outage = self.outage.max(1);
                self.outages += 1;
                self.pause = self.pause.max(Some(now + after));
                tracing::warn!("delivery paused for {:.1} s: {error} (Retry-After)", after.as_secs_f64());
            }
            None if self.pause.is_none() => {
                self.outage = self.outage.saturating_add(1);
                self.outages += 1;
                let wait = backoff(self.outage, self.cfg.retry_max_backoff, jitter());
                tracing::warn!(
                    "delivery paused: {error}; {} record(s) spooled, trying the server again in {:.1} s",
                    self.shared.spool.records(),
                    wait.as_secs_f64()
                );
                self.pause = Some(now + wait);
            }
            None => {}
        }
    }

    /// Judges a failed record that comes due again: its last failure is
    /// suspect if the server took other records since, with no pause
    /// between. True when it was given up (journaled, out of the spool).
    pub(super) fn judge(&mut self, job: &mut Job) -> bool {
        if job.pending && self.successes > job.mark && self.outages == job.outage_mark {
            job.suspect += 1;
        }
        job.pending = false;
        let mut settle = Settle::default();
        let gone = self.give_up(job, &mut settle);
        settle.commit(&self.shared);
        gone
    }

    /// Gives the record up after `delivery_max_attempts` suspect failures:
    /// out of the spool, `rejected-by-server` with its last answer.
    pub(super) fn give_up(&self, job: &mut Job, settle: &mut Settle) -> bool {
        if job.suspect < self.cfg.delivery_max_attempts {
            return false;
        }
        let (status, body) = job.last.take().unwrap_or((500, String::new()));
        tracing::warn!(
            "record {} given up: the server answered {status} {} times while it took other records: {body}",
            job.ticket.item.record_id_hex(),
            job.suspect
        );
        self.count_rejected();
        settle.finish(&job.ticket, Fate::RejectedByServer { status, body, attempts: Some(job.suspect) });
        true
    }

    /// Puts a job back to be posted as soon as the server takes records,
    /// in spool order.
    pub(super) fn put_back(&mut self, job: Job) {
        let pos = self.ready.iter().position(|j| j.ticket.seq > job.ticket.seq).unwrap_or(self.ready.len());
        self.ready.insert(pos, job);
    }

    /// Takes the outcomes of one batch; final fates go to `settle`.
    pub(super) fn finished(&mut self, batch: Vec<(Job, Outcome)>, settle: &mut Settle) {
        let shared = self.shared.clone();
        let mut partly: Option<(i64, usize, String)> = None;
        for (mut job, out) in batch {
            match out {
                Outcome::Delivered | Outcome::DeliveredPartly { .. } => {
                    self.successes += 1;
                    self.failing = 0;
                    if self.outage > 0 {
                        tracing::info!("the {} destination takes records again", self.dest.as_str());
                        self.set_error(None);
                    }
                    self.outage = 0;
                    self.pause = None;
                    // Counted before it leaves the spool, so a status never
                    // shows it neither spooled nor delivered.
                    self.count_delivered();
                    let fate = match out {
                        Outcome::DeliveredPartly { rejected, of, why } => {
                            partly.get_or_insert((rejected, of, why.clone()));
                            Fate::DeliveredPartly { rejected, of, why }
                        }
                        _ => Fate::Delivered,
                    };
                    settle.finish(&job.ticket, fate);
                }
                Outcome::ServerBusy { error, after } => {
                    self.count_failure();
                    self.pause_server(&error, after);
                    self.set_error(Some(error));
                    self.put_back(job);
                }
                Outcome::Failed { status, body } => {
                    self.count_failure();
                    self.failing = self.failing.saturating_add(1);
                    job.failures = job.failures.saturating_add(1);
                    // Blamed only when the server takes other records
                    // meanwhile: now if it took some while this post was
                    // on the wire, else at the record's next attempt if it
                    // took some by then (with no pause of the server
                    // between). An outage never makes a poison.
                    job.pending = self.successes == job.mark;
                    if !job.pending {
                        job.suspect += 1;
                    }
                    job.mark = self.successes;
                    job.outage_mark = self.outages;
                    let id = job.ticket.item.record_id_hex();
                    self.set_error(Some(format!("server answered {status} to record {id}")));
                    job.last = Some((status, body));
                    if self.give_up(&mut job, settle) {
                        continue;
                    }
                    let wait = record_backoff(job.failures, self.cfg.delivery_retry_max, jitter());
                    tracing::info!(
                        "record {id}: server answered {status}; posting it again in {:.1} s",
                        wait.as_secs_f64()
                    );
                    self.waiting_n += 1;
                    self.waiting.insert((Instant::now() + wait, self.waiting_n), job);
                    if self.failing >= OUTAGE_AFTER {
                        // Record after record fails and none gets through:
                        // the server is failing, not these records.
                        self.pause_server(
                            &format!("server answered {status} to {} records in a row", self.failing),
                            None,
                        );
                    }
                }
                Outcome::Refused { status, body } => {
                    self.successes += 1;
                    self.failing = 0;
                    self.count_rejected();
                    tracing::warn!(
                        "{} refused record {}: {status} {body}",
                        self.dest.as_str(),
                        job.ticket.item.record_id_hex()
                    );
                    settle.finish(&job.ticket, Fate::RejectedByServer { status, body, attempts: None });
                }
                Outcome::Unsendable(why) => {
                    bump(&shared.stats.dropped, 1);
                    settle.finish(&job.ticket, Fate::Dropped(why));
                }
                Outcome::Withheld => self.put_back(job),
            }
        }
        if let Some((rejected, of, why)) = partly {
            // Once per answer, not per record.
            bump(&shared.stats.otlp.partial_rejected, rejected.max(0) as u64);
            tracing::warn!("the OTLP endpoint rejected {rejected} of {of} log records: {why}");
        }
    }
}
