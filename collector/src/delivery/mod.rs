//! Stage: delivery. Takes records from the spool in FIFO order and posts
//! them (through [`crate::transport`]: pooled keep-alive connections,
//! pipelined, over rustls) in the `server_protocol` form with the
//! `tidheader`, on up to `delivery_concurrency` connections at once, each
//! carrying up to `delivery_pipeline` pipelined posts when records wait.
//!
//! Each record carries its own retry state, so one record never holds up
//! the others:
//!
//! - 2xx: delivered (journaled, removed from the spool).
//! - the server cannot take records now (no connection, TLS failure,
//!   timeout, 429, 503): the *server* pauses (`Retry-After` in seconds or
//!   as an HTTP-date, else an exponential backoff with jitter up to
//!   `retry_max_backoff`), no record is blamed; then one record at a time
//!   probes it, and the first success lets everything flow again.
//! - 408 or another 5xx: *this record* waits its own backoff (1 s doubling
//!   up to `delivery_retry_max`, with jitter) while the rest keep flowing.
//!   A failure counts against the record only when the server took other
//!   records since it was last sent (an outage never makes a poison);
//!   after `delivery_max_attempts` such failures it leaves the spool as
//!   `rejected-by-server: <status> after <n> attempts: <answer>`.
//!   [`OUTAGE_AFTER`] failures in a row with no success between them
//!   pause the server as above.
//! - other 4xx: the server refused this record: journaled as
//!   `rejected-by-server` with status and body, not retried.
//!
//! While the server takes records delivery says so ([`State::held`]),
//! and a full spool makes the commit stage wait for room (backpressure)
//! instead of dropping: `spool_max_size` bounds only what waits because
//! the server cannot take it.
//!
//! Each destination ([`Dest`]: the original backend, the OTLP endpoint)
//! has its own loop ([`run`]) with its own cursor in the spool, its own
//! pauses and per-record retry state; a record leaves the spool once every
//! configured destination has a final fate for it, each journaled (fates
//! at the OTLP endpoint marked `(otlp)`). The OTLP loop sends batches of
//! up to `otlp_batch_records` records / `otlp_batch_bytes` bytes, one
//! export request per connection, and follows the OTLP/HTTP rules: 429,
//! 502, 503 and 504 (and no answer) pause the destination (`Retry-After`
//! honoured) and the batch is sent again; any other non-2xx answer refuses
//! the batch for good; a partial success is journaled with each record of
//! the batch (how many log records were rejected and why).
//!
//! Records over a rate window wait here until the window allows them.
//! Every request is built by [`request_parts`], which `telemctl preview`
//! and the `debug` setting show through [`describe`], byte for byte what
//! [`encode_request`] puts on the wire.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use telemetry::MachineId;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::consent::Decision;
use crate::otlp::OtlpPrepared;
use crate::spool::{Dest, Next, Ticket};
use crate::state::State;
use crate::stats::bump;
use crate::store::settle::{self, Settle};
use crate::transport::{SendError, Transport};

mod retry;
#[cfg(test)]
mod tests;

use crate::request::*;
pub use retry::*;

/// Lets a write of delivery's go only while consent is `deliver` under
/// the configuration the requests were made with ([`State::may_post`]).
struct ConsentGate {
    shared: Arc<State>,
    cfg: Arc<Config>,
}

impl crate::transport::Gate for ConsentGate {
    type Guard<'a> = tokio::sync::RwLockReadGuard<'a, u64>;
    fn admit(&self) -> impl std::future::Future<Output = Option<Self::Guard<'_>>> + Send {
        self.shared.may_post(&self.cfg)
    }
}

/// Posts a batch of records on one connection (pipelined); the outcomes
/// in the same order.
async fn post_batch(
    client: &Transport,
    prep: &Prepared,
    requests: Vec<Result<Bytes, String>>,
    gate: &ConsentGate,
) -> Vec<Outcome> {
    let Some(uri) = &prep.uri else {
        return requests
            .iter()
            .map(|_| Outcome::ServerBusy { error: "no server configured".into(), after: None })
            .collect();
    };
    let sendable: Vec<Bytes> = requests.iter().filter_map(|r| r.as_ref().ok().cloned()).collect();
    let mut answers = client.exchange_gated(uri, &sendable, gate).await.into_iter();
    requests
        .into_iter()
        .map(|r| match r {
            Err(why) => Outcome::Unsendable(why),
            Ok(_) => outcome(answers.next().unwrap_or_else(|| Err(SendError::Failed("no answer".into())))),
        })
        .collect()
}

/// Posts one OTLP export request of a batch of records; the outcome of
/// each record, in order.
async fn post_otlp(
    client: &Transport,
    prep: &OtlpPrepared,
    request: Result<Bytes, String>,
    n: usize,
    gate: &ConsentGate,
) -> Vec<Outcome> {
    let one = match (&prep.uri, request) {
        (_, Err(why)) => Outcome::Unsendable(why),
        (None, _) => Outcome::ServerBusy { error: "the OTLP endpoint is not a valid URI".into(), after: None },
        (Some(uri), Ok(req)) => {
            let answer = client
                .exchange_gated(uri, std::slice::from_ref(&req), gate)
                .await
                .into_iter()
                .next()
                .unwrap_or_else(|| Err(SendError::Failed("no answer".into())));
            otlp_outcome(answer, prep.otlp.encoding, n)
        }
    };
    vec![one; n]
}

/// The delivery stage's state between wake-ups (one per destination).
struct Deliverer {
    dest: Dest,
    shared: Arc<State>,
    cfg: Arc<Config>,
    prep: Arc<Prepared>,
    /// The OTLP destination's request parts (`None` when not configured).
    oprep: Option<Arc<OtlpPrepared>>,
    client: Option<Transport>,
    /// Records to post again as soon as the server takes records (put
    /// back by a server-wide condition, no fault of theirs), oldest first.
    ready: VecDeque<Job>,
    /// Records that failed, each with its own next-attempt time.
    waiting: BTreeMap<(Instant, u64), Job>,
    /// Tie-breaker of `waiting` keys.
    waiting_n: u64,
    /// One batch per connection in use.
    inflight: JoinSet<Vec<(Job, Outcome)>>,
    /// Pause rounds of the server since it last took a record (0: it is
    /// taking records; otherwise one record probes it at a time).
    outage: u32,
    /// The server is paused until then.
    pause: Option<Instant>,
    /// Records the server took (delivered) since the start.
    successes: u64,
    /// Server pauses begun since the start.
    outages: u64,
    /// Failures in a row with no success between them.
    failing: u32,
    rate_wait: Option<Instant>,
    /// The spool could not read a block for want of a resource.
    busy_wait: Option<Instant>,
}

impl Deliverer {
    fn new(shared: Arc<State>, dest: Dest) -> Deliverer {
        let cfg = shared.config();
        let mut d = Deliverer {
            dest,
            prep: Arc::new(Prepared::new(&cfg)),
            oprep: OtlpPrepared::new(&cfg).map(Arc::new),
            client: None,
            cfg,
            shared,
            ready: VecDeque::new(),
            waiting: BTreeMap::new(),
            waiting_n: 0,
            inflight: JoinSet::new(),
            outage: 0,
            pause: None,
            successes: 0,
            outages: 0,
            failing: 0,
            rate_wait: None,
            busy_wait: None,
        };
        d.new_client();
        d
    }

    fn new_client(&mut self) {
        self.client = match Transport::new(&self.cfg) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!("delivery ({}) is paused: {e}", self.dest.as_str());
                self.set_error(Some(e.to_string()));
                None
            }
        };
    }

    fn reconfigure(&mut self, new: Arc<Config>) {
        let c = &self.cfg;
        let transport_changed = new.cainfo != c.cainfo
            || new.connect_timeout != c.connect_timeout
            || new.delivery_timeout != c.delivery_timeout
            || new.delivery_concurrency != c.delivery_concurrency
            || new.delivery_pipeline != c.delivery_pipeline;
        let server_changed = match self.dest {
            Dest::Server => new.server != c.server || new.server_protocol != c.server_protocol,
            Dest::Otlp => new.otlp.as_ref().map(|o| &o.url) != c.otlp.as_ref().map(|o| &o.url),
        };
        self.cfg = new;
        if transport_changed {
            self.new_client();
        }
        self.prep = Arc::new(Prepared::new(&self.cfg));
        self.oprep = OtlpPrepared::new(&self.cfg).map(Arc::new);
        self.pause = None;
        self.outage = 0;
        if server_changed {
            // A new server owes nothing to the old one's answers.
            self.retry_all_now();
        }
    }

    /// Forgets every wait: paused server, records' backoffs (flush).
    fn retry_all_now(&mut self) {
        self.pause = None;
        self.outage = 0;
        self.rate_wait = None;
        self.busy_wait = None;
        let waiting = std::mem::take(&mut self.waiting);
        let mut jobs: Vec<Job> = self.ready.drain(..).chain(waiting.into_values()).collect();
        jobs.sort_by_key(|j| j.ticket.seq);
        self.ready.extend(jobs);
    }

    /// Whether this destination is configured (records wait for it).
    fn active(&self) -> bool {
        self.shared.spool.destinations() & self.dest.bit() != 0
    }

    /// Drops every job (the destination is no longer configured: the
    /// spool no longer waits for it).
    fn forget_jobs(&mut self) {
        self.ready.clear();
        self.waiting.clear();
        self.pause = None;
        self.outage = 0;
        self.rate_wait = None;
    }

    /// The last error of this destination.
    fn error(&self) -> Option<String> {
        match self.dest {
            Dest::Server => self.shared.stats.error(),
            Dest::Otlp => self.shared.stats.otlp.error(),
        }
    }

    fn set_error(&self, e: Option<String>) {
        match self.dest {
            Dest::Server => self.shared.stats.set_error(e),
            Dest::Otlp => self.shared.stats.otlp.set_error(e),
        }
    }

    fn count_delivered(&self) {
        match self.dest {
            Dest::Server => bump(&self.shared.stats.delivered, 1),
            Dest::Otlp => bump(&self.shared.stats.otlp.delivered, 1),
        }
    }

    fn count_failure(&self) {
        match self.dest {
            Dest::Server => bump(&self.shared.stats.delivery_failures, 1),
            Dest::Otlp => bump(&self.shared.stats.otlp.failures, 1),
        }
    }

    fn count_rejected(&self) {
        match self.dest {
            Dest::Server => bump(&self.shared.stats.rejected_by_server, 1),
            Dest::Otlp => bump(&self.shared.stats.otlp.rejected, 1),
        }
    }

    /// Whether the server takes records now (a full spool then drains),
    /// else why not.
    fn held(&self, deliver: bool) -> Option<String> {
        let last = || self.error().unwrap_or_else(|| "no answer yet".into());
        if !self.active() {
            None
        } else if !deliver {
            Some("records may not be sent (consent)".into())
        } else if self.client.is_none() {
            Some(format!("delivery cannot start: {}", last()))
        } else if self.rate_wait.is_some() {
            Some("a rate window holds records back".into())
        } else if self.pause.is_some() {
            Some(format!("the server is paused after: {}", last()))
        } else if self.outage > 0 {
            Some(format!("the server is being tried again after: {}", last()))
        } else {
            None
        }
    }

    /// The next record to post: one put back by a server-wide condition,
    /// else a failed one whose wait is over, else the spool's next; `None`
    /// when there is none now or a rate window makes it wait.
    fn next_job(&mut self) -> Option<Job> {
        loop {
            let now = Instant::now();
            let mut job = if let Some(j) = self.ready.pop_front() {
                j
            } else if let Some(e) = self.waiting.first_entry().filter(|e| e.key().0 <= now) {
                let mut job = e.remove();
                if self.judge(&mut job) {
                    continue;
                }
                job
            } else {
                if self.busy_wait.is_some() {
                    return None;
                }
                match self.shared.spool.next_ticket(self.dest) {
                    Next::Ready(t) => Job::new(t),
                    Next::Empty => {
                        settle::lost(&self.shared);
                        return None;
                    }
                    Next::Busy(why) => {
                        tracing::warn!("cannot read the spool now ({why}); trying again shortly, nothing is lost");
                        self.busy_wait = Some(now + BUSY_RETRY);
                        return None;
                    }
                }
            };
            let expire_before = telemetry::record::now_unix().saturating_sub(self.cfg.record_expiry.as_secs());
            if job.ticket.item.accepted < expire_before {
                expire_one(&self.shared, &job.ticket);
                continue;
            }
            if !job.counted {
                // A held record takes its room in the windows once, at
                // the first destination that sends it.
                if self.shared.spool.released(&job.ticket) {
                    job.counted = true;
                } else {
                    match crate::decide::release_held(&self.shared, now, &job.ticket.item) {
                        Ok(()) => {
                            self.shared.spool.mark_released(&job.ticket);
                            job.counted = true;
                        }
                        Err(wait) => {
                            self.rate_wait = Some(now + wait);
                            self.ready.push_front(job);
                            return None;
                        }
                    }
                }
            }
            return Some(job);
        }
    }

    /// Starts posts on up to `delivery_concurrency` connections at once
    /// (one record at a time while probing a paused server). Ready records
    /// are spread over the free connections first, and pipelined (up to
    /// `delivery_pipeline` per connection) only when there are more of them
    /// than connections: a slow server answers a pipelined batch one request
    /// after the other.
    fn start_posts(&mut self) {
        let Some(client) = self.client.clone() else { return };
        if self.dest == Dest::Otlp {
            return self.start_exports(&client);
        }
        let (connections, depth) =
            if self.outage > 0 { (1, 1) } else { (self.cfg.delivery_concurrency, client.pipeline()) };
        let mid = self.shared.machine_id();
        while self.inflight.len() < connections && self.pause.is_none() && self.rate_wait.is_none() {
            let free = connections - self.inflight.len();
            let mut jobs = Vec::new();
            while jobs.len() < free * depth {
                match self.next_job() {
                    Some(j) => jobs.push(j),
                    None => break,
                }
            }
            if jobs.is_empty() {
                return;
            }
            // Contiguous runs of nearly equal size, one per connection.
            let batches = free.min(jobs.len());
            let mut rest = jobs.into_iter();
            for b in 0..batches {
                let n = rest.len().div_ceil(batches - b);
                let jobs: Vec<Job> = rest.by_ref().take(n).collect();
                self.post(&client, &mid, jobs);
            }
        }
    }

    /// The OTLP destination's [`start_posts`](Self::start_posts): one export
    /// request per free connection (one at a time while probing a paused
    /// endpoint), each a batch of up to `otlp_batch_records` records and
    /// `otlp_batch_bytes` bytes of payload.
    fn start_exports(&mut self, client: &Transport) {
        let Some(oprep) = self.oprep.clone() else { return };
        let connections = if self.outage > 0 { 1 } else { self.cfg.delivery_concurrency };
        let (max_n, max_bytes) = (oprep.otlp.batch_records, oprep.otlp.batch_bytes);
        let mid = self.shared.machine_id();
        while self.inflight.len() < connections && self.pause.is_none() && self.rate_wait.is_none() {
            let mut jobs: Vec<Job> = Vec::new();
            let mut bytes = 0usize;
            while jobs.len() < max_n {
                let Some(j) = self.next_job() else { break };
                let size = j.ticket.item.record.payload.len() + 256;
                if !jobs.is_empty() && bytes + size > max_bytes {
                    self.ready.push_front(j);
                    break;
                }
                bytes += size;
                jobs.push(j);
            }
            if jobs.is_empty() {
                return;
            }
            self.export(client, &oprep, &mid, jobs);
        }
    }

    fn export(&mut self, client: &Transport, oprep: &Arc<OtlpPrepared>, mid: &MachineId, mut jobs: Vec<Job>) {
        for j in &mut jobs {
            j.mark = self.successes;
        }
        let who = crate::otlp::Identity { id: mid, privacy: oprep.privacy };
        let sources: Vec<crate::otlp::Source<'_>> = jobs
            .iter()
            .map(|j| crate::otlp::Source {
                record: &j.ticket.item.record,
                record_id: j.ticket.item.record_id,
                accepted: j.ticket.item.accepted,
            })
            .collect();
        let req = crate::otlp::export_request(&sources, &who);
        let request = crate::otlp::encode_body(&req, &oprep.otlp)
            .map(|body| crate::otlp::encode_http(oprep, &body))
            .map_err(|e| e.to_string());
        let client = client.clone();
        let oprep = oprep.clone();
        let gate = ConsentGate { shared: self.shared.clone(), cfg: self.cfg.clone() };
        self.inflight.spawn(async move {
            let outcomes = post_otlp(&client, &oprep, request, jobs.len(), &gate).await;
            jobs.into_iter().zip(outcomes).collect()
        });
    }

    fn post(&mut self, client: &Transport, mid: &MachineId, mut jobs: Vec<Job>) {
        let prep = self.prep.clone();
        for j in &mut jobs {
            j.mark = self.successes;
        }
        let requests: Vec<Result<Bytes, String>> = jobs
            .iter()
            .map(|j| request_parts(&prep, mid, &j.ticket.item.record).map(|p| encode_request(&prep, &p)))
            .collect();
        let client = client.clone();
        let gate = ConsentGate { shared: self.shared.clone(), cfg: self.cfg.clone() };
        self.inflight.spawn(async move {
            let outcomes = post_batch(&client, &prep, requests, &gate).await;
            jobs.into_iter().zip(outcomes).collect()
        });
    }

    /// Lets posts already on the wire finish (up to 3 s), so a record the
    /// server received is not sent again after a restart; the rest stay
    /// spooled.
    async fn stop(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        let mut settle = Settle::default();
        while let Ok(Some(res)) = tokio::time::timeout_at(deadline, self.inflight.join_next()).await {
            if let Ok(batch) = res {
                self.finished(batch, &mut settle);
            }
        }
        self.inflight.abort_all();
        settle.commit(&self.shared);
    }

    /// The earliest moment something may become possible again.
    fn next_wake(&self, consent_wait: Option<Instant>) -> Option<Instant> {
        let due = if self.pause.is_none() && self.rate_wait.is_none() {
            self.waiting.keys().next().map(|k| k.0)
        } else {
            None
        };
        [self.pause, self.rate_wait, self.busy_wait, due, consent_wait].into_iter().flatten().min()
    }
}

/// How soon a spool read that ran out of a resource is tried again.
const BUSY_RETRY: Duration = Duration::from_millis(100);

/// Runs the delivery stage of destination `dest` until `stop` fires.
pub async fn run(shared: Arc<State>, dest: Dest, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut d = Deliverer::new(shared.clone(), dest);
    // What this loop last said in `State::held` (set only when it changes).
    let mut last_held = Some(String::new());
    let mut cfg_rx = shared.cfg.clone();
    let mut expiry_tick =
        tokio::time::interval(Duration::from_secs(1).max(d.cfg.spool_process_time.min(Duration::from_secs(10))));
    loop {
        // Flush: retry now.
        if shared.flush[dest.index()].swap(false, Ordering::SeqCst) {
            d.retry_all_now();
        }
        let now = Instant::now();
        if d.pause.is_some_and(|t| t <= now) {
            d.pause = None;
        }
        if d.rate_wait.is_some_and(|t| t <= now) {
            d.rate_wait = None;
        }
        if d.busy_wait.is_some_and(|t| t <= now) {
            d.busy_wait = None;
        }
        let active = d.active();
        if !active && (!d.ready.is_empty() || !d.waiting.is_empty()) {
            d.forget_jobs();
        }
        // `telemctl status`'s retry time: the server's, or the OTLP
        // endpoint's when there is no server.
        let server_active = shared.spool.destinations() & Dest::Server.bit() != 0;
        if (dest == Dest::Server) == server_active {
            shared.retry_at_ms.store(
                d.pause.map(|t| t.saturating_duration_since(shared.since_instant).as_millis() as u64).unwrap_or(0),
                Ordering::Relaxed,
            );
        }
        // A configuration not taken in here yet is taken in first (its
        // change wakes this loop): posts made with the old one are withheld.
        let deliver = Arc::ptr_eq(&d.cfg, &shared.config()) && shared.consent(&d.cfg) == Decision::Deliver;
        if deliver && active {
            d.start_posts();
        }
        let held = d.held(deliver);
        if held != last_held {
            shared.set_held(dest, held.clone());
            last_held = held;
        }
        // Not allowed to send: look at the opt-in state again in a second.
        let consent_wait = (!deliver).then(|| Instant::now() + Duration::from_secs(1));
        let sleep_until = d.next_wake(consent_wait);
        tokio::select! {
            biased;
            _ = stop.changed() => {
                shared.set_held(dest, Some("the collector is stopping".into()));
                d.stop().await;
                return;
            }
            Some(res) = d.inflight.join_next(), if !d.inflight.is_empty() => {
                // Take every finished batch, then journal their fates at once.
                let mut settle = Settle::default();
                let mut next = Some(res);
                while let Some(res) = next.take() {
                    if let Ok(batch) = res {
                        d.finished(batch, &mut settle);
                    }
                    next = d.inflight.try_join_next();
                }
                settle.commit(&shared);
            }
            _ = shared.wake_delivery.notified(dest) => {}
            _ = cfg_rx.changed() => {
                let new = cfg_rx.borrow_and_update().clone();
                d.reconfigure(new);
            }
            _ = expiry_tick.tick() => {
                let before = telemetry::record::now_unix().saturating_sub(d.cfg.record_expiry.as_secs());
                let gone = shared.spool.expire(before);
                settle::expired(&shared, gone);
                settle::lost(&shared);
            }
            _ = sleep_opt(sleep_until) => {}
        }
    }
}

async fn sleep_opt(until: Option<Instant>) {
    match until {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// A record too old when its turn came at this destination: final there
/// as `dropped: expired` (counted once, by the first destination).
fn expire_one(shared: &State, t: &Ticket) {
    let mut s = Settle::default();
    if t.dest == Dest::Server || shared.spool.destinations() & Dest::Server.bit() == 0 {
        bump(&shared.stats.expired, 1);
        bump(&shared.stats.dropped, 1);
    }
    s.finish(t, crate::journal::Fate::Dropped("expired".into()));
    s.commit(shared);
}
