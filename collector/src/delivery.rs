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
//! While the server takes records delivery says so ([`Shared::flowing`]),
//! and a full spool makes the commit stage wait for room (backpressure)
//! instead of dropping: `spool_max_size` bounds only what waits because
//! the server cannot take it.
//!
//! Records over a rate window wait here until the window allows them.
//! Every request is built by [`request_parts`], which `telemctl preview`
//! and the `debug` setting show through [`describe`], byte for byte what
//! [`encode_request`] puts on the wire.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use telemetry::posting::{self, V3_PATH};
use telemetry::record::HeaderValue;
use telemetry::MachineId;
use tokio::task::JoinSet;
use url::Url;

use crate::config::{Config, Protocol};
use crate::consent::Decision;
use crate::journal::{Fate, Line};
use crate::pipeline::Shared;
use crate::ratelimit::Verdict;
use crate::spool::{Item, Next, Ticket};
use crate::stats::bump;
use crate::transport::{Answer, SendError, Transport};

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

/// The first 200 bytes of an answer body on one line (control characters
/// become spaces), cut at a character boundary.
fn answer_text(body: &[u8]) -> String {
    let s: String = String::from_utf8_lossy(&body[..body.len().min(200)])
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    s.trim().to_string()
}

/// The outcome of a post from what the transport got back.
fn outcome(answer: Result<Answer, SendError>) -> Outcome {
    match answer {
        Ok(a) => {
            let body = if (200..300).contains(&a.status) { String::new() } else { answer_text(&a.body) };
            classify(a.status, body, a.retry_after)
        }
        Err(SendError::Withheld) => Outcome::Withheld,
        Err(e) => Outcome::ServerBusy { error: e.to_string(), after: None },
    }
}

/// The URL a post goes to.
pub fn target(server: &Url, protocol: Protocol) -> Url {
    match protocol {
        Protocol::V2 => server.clone(),
        Protocol::V3 if server.path().ends_with(V3_PATH) => server.clone(),
        Protocol::V3 => {
            let mut u = server.clone();
            u.set_path(V3_PATH);
            u
        }
    }
}

/// What every post of one configuration shares, worked out once.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub url: Option<Url>,
    /// `url` as the transport connects to it.
    uri: Option<http::Uri>,
    /// The request target (path and query) and the `Host` header.
    path: String,
    host: String,
    pub protocol: Protocol,
    tid: (String, String),
}

impl Prepared {
    pub fn new(cfg: &Config) -> Prepared {
        let url = cfg.server.as_ref().map(|s| target(s, cfg.server_protocol));
        let (path, host) = match &url {
            Some(u) => {
                let mut path = u.path().to_string();
                if let Some(q) = u.query() {
                    path.push('?');
                    path.push_str(q);
                }
                let host = match u.port() {
                    Some(p) => format!("{}:{p}", u.host_str().unwrap_or_default()),
                    None => u.host_str().unwrap_or_default().to_string(),
                };
                (path, host)
            }
            None => (String::new(), String::new()),
        };
        Prepared {
            uri: url.as_ref().and_then(|u| u.as_str().parse().ok()),
            url,
            path,
            host,
            protocol: cfg.server_protocol,
            tid: (cfg.tidheader.name.clone(), cfg.tidheader.value.clone()),
        }
    }
}

/// The `User-Agent` every post carries.
pub const USER_AGENT: &str = concat!("telem-collector/", env!("CARGO_PKG_VERSION"));

/// Exactly the HTTP request a record is posted as: what delivery sends and
/// what `telemctl preview` and the `debug` setting show. Headers are in
/// sending order, spelled as they go on the wire, `Host` and
/// `Content-Length` included.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RequestDesc {
    pub method: &'static str,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RequestDesc {
    /// As text: request line, headers, blank line, body (lossy UTF-8).
    pub fn render(&self) -> String {
        let mut s = format!("{} {}\n", self.method, self.url);
        for (k, v) in &self.headers {
            s.push_str(&format!("{k}: {v}\n"));
        }
        s.push('\n');
        s.push_str(&String::from_utf8_lossy(&self.body));
        if !s.ends_with('\n') {
            s.push('\n');
        }
        s
    }
}

/// The headers (in sending order, as spelled on the wire) and the body of
/// the post of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parts<'a> {
    pub headers: Vec<(&'a str, Cow<'a, str>)>,
    pub body: Cow<'a, [u8]>,
}

/// The request `record` is posted with, stamped with `mid` (no I/O): what
/// [`encode_request`] sends and [`describe`] shows. Every value is a
/// parsed record field (no control characters, see
/// `telemetry::HeaderText`) or a checked setting, so it can be written on
/// a header line as it is.
pub fn request_parts<'a>(
    prep: &'a Prepared,
    mid: &'a MachineId,
    record: &'a telemetry::Record,
) -> Result<Parts<'a>, String> {
    let mut h: Vec<(&str, Cow<'_, str>)> = Vec::with_capacity(22);
    h.push((prep.tid.0.as_str(), Cow::Borrowed(prep.tid.1.as_str())));
    let body = match prep.protocol {
        Protocol::V2 => {
            for (name, v) in posting::V2_HEADER_NAMES.iter().zip(record.header_values(mid)) {
                let value = match v {
                    HeaderValue::Str(s) => Cow::Borrowed(s),
                    HeaderValue::Num(n) => Cow::Owned(n.to_string()),
                    HeaderValue::Id(id) => Cow::Owned(id.to_string()),
                };
                h.push((name, value));
            }
            h.push(("Content-Type", Cow::Borrowed("application/text")));
            Cow::Borrowed(record.payload.as_bytes())
        }
        Protocol::V3 => {
            let body = posting::v3_body(record, mid).map_err(|e| e.to_string())?;
            h.push(("Content-Type", Cow::Borrowed("application/json")));
            Cow::Owned(body)
        }
    };
    h.push(("User-Agent", Cow::Borrowed(USER_AGENT)));
    h.push(("Accept", Cow::Borrowed("*/*")));
    h.push(("Host", Cow::Borrowed(prep.host.as_str())));
    h.push(("Content-Length", Cow::Owned(body.len().to_string())));
    Ok(Parts { headers: h, body })
}

/// The post as bytes on the wire: request line, header lines, body.
pub fn encode_request(prep: &Prepared, parts: &Parts<'_>) -> Bytes {
    let head: usize = parts.headers.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
    let mut out = Vec::with_capacity(prep.path.len() + 20 + head + parts.body.len());
    // Writing into a Vec cannot fail.
    let _ = write!(out, "POST {} HTTP/1.1\r\n", prep.path);
    for (k, v) in &parts.headers {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&parts.body);
    Bytes::from(out)
}

/// The request for `record` stamped with `mid` (no I/O).
pub fn describe(prep: &Prepared, mid: &MachineId, record: &telemetry::Record) -> Result<RequestDesc, String> {
    let url = prep.url.as_ref().ok_or_else(|| "no server configured".to_string())?;
    let parts = request_parts(prep, mid, record)?;
    Ok(RequestDesc {
        method: "POST",
        url: url.to_string(),
        headers: parts.headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        body: parts.body.into_owned(),
    })
}

/// Lets a write of delivery's go only while consent is `deliver` under
/// the configuration the requests were made with ([`Shared::may_post`]).
struct ConsentGate {
    shared: Arc<Shared>,
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

fn backoff_from(base: Duration, attempt: u32, max: Duration, jitter: f64) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let d = exp.min(max);
    d.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

fn jitter() -> f64 {
    let b = telemetry::EventId::random();
    (b.as_bytes()[0] as f64) / 255.0
}

/// A record being delivered, with its own retry state.
struct Job {
    ticket: Ticket,
    /// Counted by the rate windows (at ingest or here).
    counted: bool,
    /// Failed posts of this record (any kind that blames it): its backoff.
    failures: u32,
    /// Failures while the server took other records: after
    /// `delivery_max_attempts` of them the record is given up.
    suspect: u32,
    /// The server's success count when this record was last posted, then
    /// when it last failed.
    mark: u64,
    /// Server pauses begun before its last failure (see `pending`).
    outage_mark: u64,
    /// Its last failure is not judged yet: it becomes suspect if the
    /// server takes other records before the record's next attempt, with
    /// no server pause between.
    pending: bool,
    /// The last failing answer: status, first 200 bytes of the body.
    last: Option<(u16, String)>,
}

impl Job {
    fn new(ticket: Ticket) -> Job {
        let counted = ticket.item.counted;
        Job { ticket, counted, failures: 0, suspect: 0, mark: 0, outage_mark: 0, pending: false, last: None }
    }
}

/// The delivery stage's state between wake-ups.
struct Deliverer {
    shared: Arc<Shared>,
    cfg: Arc<Config>,
    prep: Arc<Prepared>,
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
    fn new(shared: Arc<Shared>) -> Deliverer {
        let cfg = shared.config();
        let mut d = Deliverer {
            prep: Arc::new(Prepared::new(&cfg)),
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
                tracing::error!("delivery is paused: {e}");
                self.shared.stats.set_error(Some(e.to_string()));
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
        let server_changed = new.server != c.server || new.server_protocol != c.server_protocol;
        self.cfg = new;
        if transport_changed {
            self.new_client();
        }
        self.prep = Arc::new(Prepared::new(&self.cfg));
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

    /// Whether the server takes records now (a full spool then drains),
    /// else why not.
    fn held(&self, deliver: bool) -> Option<String> {
        let last = || self.shared.stats.error().unwrap_or_else(|| "no answer yet".into());
        if !deliver {
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
                match self.shared.spool.next_ticket() {
                    Next::Ready(t) => Job::new(t),
                    Next::Empty => {
                        self.journal_lost();
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
                let size = size_of(&job.ticket.item);
                match self.shared.limiter().try_acquire(now, size) {
                    Verdict::Allowed => job.counted = true,
                    Verdict::Limited { retry_in } => {
                        self.rate_wait = Some(now + retry_in.unwrap_or(Duration::from_secs(60)));
                        self.ready.push_front(job);
                        return None;
                    }
                }
            }
            return Some(job);
        }
    }

    /// Counts and journals records of spool blocks that could not be read
    /// back.
    fn journal_lost(&self) {
        let lost = self.shared.spool.take_lost();
        if lost.is_empty() {
            return;
        }
        let mut lines = Vec::new();
        for l in lost {
            bump(&self.shared.stats.dropped, l.ids.len() as u64);
            lines.extend(l.ids.iter().map(|id| Line::fate(*id, Fate::Dropped(l.why.clone()))));
        }
        self.shared.journal.append(lines, None);
    }

    /// Starts posts on up to `delivery_concurrency` connections at once
    /// (one record at a time while probing a paused server). Ready records
    /// are spread over the free connections first, and pipelined (up to
    /// `delivery_pipeline` per connection) only when there are more of them
    /// than connections: a slow server answers a pipelined batch one request
    /// after the other.
    fn start_posts(&mut self) {
        let Some(client) = self.client.clone() else { return };
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

    /// Pauses the server: `after` (Retry-After) when given, else the next
    /// backoff round unless a pause is already running.
    fn pause_server(&mut self, error: &str, after: Option<Duration>) {
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
    fn judge(&mut self, job: &mut Job) -> bool {
        if job.pending && self.successes > job.mark && self.outages == job.outage_mark {
            job.suspect += 1;
        }
        job.pending = false;
        let mut updates = Vec::new();
        let gone = self.give_up(job, &mut updates);
        if !updates.is_empty() {
            self.shared.journal.append(updates, None);
        }
        gone
    }

    /// Gives the record up after `delivery_max_attempts` suspect failures:
    /// out of the spool, `rejected-by-server` with its last answer.
    fn give_up(&self, job: &mut Job, updates: &mut Vec<Line>) -> bool {
        if job.suspect < self.cfg.delivery_max_attempts {
            return false;
        }
        let (status, body) = job.last.take().unwrap_or((500, String::new()));
        tracing::warn!(
            "record {} given up: the server answered {status} {} times while it took other records: {body}",
            job.ticket.item.record_id_hex(),
            job.suspect
        );
        self.shared.spool.done(job.ticket.seq);
        bump(&self.shared.stats.rejected_by_server, 1);
        updates.push(Line::fate(
            job.ticket.item.record_id,
            Fate::RejectedByServer { status, body, attempts: Some(job.suspect) },
        ));
        true
    }

    /// Puts a job back to be posted as soon as the server takes records,
    /// in spool order.
    fn put_back(&mut self, job: Job) {
        let pos = self.ready.iter().position(|j| j.ticket.seq > job.ticket.seq).unwrap_or(self.ready.len());
        self.ready.insert(pos, job);
    }

    /// Takes the outcomes of one batch; journal entries go to `updates`.
    fn finished(&mut self, batch: Vec<(Job, Outcome)>, updates: &mut Vec<Line>) {
        let shared = self.shared.clone();
        for (mut job, out) in batch {
            match out {
                Outcome::Delivered => {
                    self.successes += 1;
                    self.failing = 0;
                    if self.outage > 0 {
                        tracing::info!("the server takes records again");
                        shared.stats.set_error(None);
                    }
                    self.outage = 0;
                    self.pause = None;
                    // Counted before it leaves the spool, so a status never
                    // shows it neither spooled nor delivered.
                    bump(&shared.stats.delivered, 1);
                    shared.spool.done(job.ticket.seq);
                    updates.push(Line::fate(job.ticket.item.record_id, Fate::Delivered));
                }
                Outcome::ServerBusy { error, after } => {
                    bump(&shared.stats.delivery_failures, 1);
                    self.pause_server(&error, after);
                    shared.stats.set_error(Some(error));
                    self.put_back(job);
                }
                Outcome::Failed { status, body } => {
                    bump(&shared.stats.delivery_failures, 1);
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
                    shared.stats.set_error(Some(format!("server answered {status} to record {id}")));
                    job.last = Some((status, body));
                    if self.give_up(&mut job, updates) {
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
                    shared.spool.done(job.ticket.seq);
                    bump(&shared.stats.rejected_by_server, 1);
                    tracing::warn!("server refused record {}: {status} {body}", job.ticket.item.record_id_hex());
                    updates.push(Line::fate(
                        job.ticket.item.record_id,
                        Fate::RejectedByServer { status, body, attempts: None },
                    ));
                }
                Outcome::Unsendable(why) => {
                    shared.spool.done(job.ticket.seq);
                    bump(&shared.stats.dropped, 1);
                    updates.push(Line::fate(job.ticket.item.record_id, Fate::Dropped(why)));
                }
                Outcome::Withheld => self.put_back(job),
            }
        }
    }

    /// Lets posts already on the wire finish (up to 3 s), so a record the
    /// server received is not sent again after a restart; the rest stay
    /// spooled.
    async fn stop(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        let mut updates = Vec::new();
        while let Ok(Some(res)) = tokio::time::timeout_at(deadline, self.inflight.join_next()).await {
            if let Ok(batch) = res {
                self.finished(batch, &mut updates);
            }
        }
        self.inflight.abort_all();
        if !updates.is_empty() {
            self.shared.journal.append(updates, None);
        }
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

/// Runs the delivery stage until `stop` fires.
pub async fn run(shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut d = Deliverer::new(shared.clone());
    let mut cfg_rx = shared.cfg.clone();
    let mut expiry_tick =
        tokio::time::interval(Duration::from_secs(1).max(d.cfg.spool_process_time.min(Duration::from_secs(10))));
    loop {
        // Flush: retry now.
        if shared.flush.swap(false, Ordering::SeqCst) {
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
        shared.retry_at_ms.store(
            d.pause.map(|t| t.saturating_duration_since(shared.since_instant).as_millis() as u64).unwrap_or(0),
            Ordering::Relaxed,
        );
        // A configuration not taken in here yet is taken in first (its
        // change wakes this loop): posts made with the old one are withheld.
        let deliver = Arc::ptr_eq(&d.cfg, &shared.config()) && shared.consent(&d.cfg) == Decision::Deliver;
        if deliver {
            d.start_posts();
        }
        let held = d.held(deliver);
        shared.flowing.store(held.is_none(), Ordering::Relaxed);
        *shared.held.lock().unwrap_or_else(|p| p.into_inner()) = held;
        // Not allowed to send: look at the opt-in state again in a second.
        let consent_wait = (!deliver).then(|| Instant::now() + Duration::from_secs(1));
        let sleep_until = d.next_wake(consent_wait);
        tokio::select! {
            biased;
            _ = stop.changed() => {
                shared.flowing.store(false, Ordering::Relaxed);
                d.stop().await;
                return;
            }
            Some(res) = d.inflight.join_next(), if !d.inflight.is_empty() => {
                // Take every finished batch, then journal their fates at once.
                let mut updates = Vec::new();
                let mut next = Some(res);
                while let Some(res) = next.take() {
                    if let Ok(batch) = res {
                        d.finished(batch, &mut updates);
                    }
                    next = d.inflight.try_join_next();
                }
                if !updates.is_empty() {
                    shared.journal.append(updates, None);
                }
            }
            _ = shared.wake_delivery.notified() => {}
            _ = cfg_rx.changed() => {
                let new = cfg_rx.borrow_and_update().clone();
                d.reconfigure(new);
            }
            _ = expiry_tick.tick() => {
                let before = telemetry::record::now_unix().saturating_sub(d.cfg.record_expiry.as_secs());
                let gone = shared.spool.expire(before);
                journal_expired(&shared, &gone);
                d.journal_lost();
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

fn size_of(item: &Item) -> u64 {
    let mut v = Vec::new();
    crate::spool::encode_item(item, &mut v).map(|n| n as u64).unwrap_or(0)
}

fn expire_one(shared: &Shared, t: &Ticket) {
    shared.spool.done(t.seq);
    journal_expired(shared, std::slice::from_ref(&*t.item));
}

/// Journals records dropped for age.
pub fn journal_expired(shared: &Shared, items: &[Item]) {
    if items.is_empty() {
        return;
    }
    bump(&shared.stats.expired, items.len() as u64);
    bump(&shared.stats.dropped, items.len() as u64);
    tracing::info!("{} spooled record(s) expired (older than record_expiry)", items.len());
    let fate = Fate::Dropped("expired".into());
    shared.journal.append(items.iter().map(|i| Line::fate(i.record_id, fate.clone())).collect(), None);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        assert_eq!(classify(201, String::new(), None), Outcome::Delivered);
        assert_eq!(classify(204, String::new(), None), Outcome::Delivered);
        for s in [429, 503] {
            assert!(matches!(classify(s, String::new(), None), Outcome::ServerBusy { .. }), "{s}");
        }
        for s in [408, 500, 502, 504, 599] {
            assert!(matches!(classify(s, String::new(), None), Outcome::Failed { status, .. } if status == s), "{s}");
        }
        assert_eq!(classify(400, "bad tid".into(), None), Outcome::Refused { status: 400, body: "bad tid".into() });
        assert!(matches!(classify(404, String::new(), None), Outcome::Refused { status: 404, .. }));
        assert!(matches!(classify(302, String::new(), None), Outcome::Refused { status: 302, .. }));
        // Transport failures pause the server and blame no record.
        assert!(matches!(outcome(Err(SendError::Connect("refused".into()))), Outcome::ServerBusy { .. }));
    }

    #[test]
    fn answer_text_is_one_line_of_at_most_200_bytes() {
        let mut body = b"line one\nline\ttwo ".to_vec();
        body.extend(std::iter::repeat_n(b'x', 500));
        let t = answer_text(&body);
        assert!(t.starts_with("line one line two"), "{t}");
        assert!(t.len() <= 200);
        // A cut inside a multi-byte character stays valid text.
        let t = answer_text("é".repeat(150).as_bytes());
        assert!(t.chars().all(|c| c == 'é' || c == '\u{fffd}'));
    }

    #[test]
    fn backoff_grows_with_jitter_and_cap() {
        let max = Duration::from_secs(60);
        assert_eq!(backoff(1, max, 1.0), BASE_BACKOFF);
        assert_eq!(backoff(1, max, 0.0), BASE_BACKOFF / 2);
        assert_eq!(backoff(3, max, 1.0), BASE_BACKOFF * 4);
        assert_eq!(backoff(30, max, 1.0), max);
        assert_eq!(backoff(30, max, 0.0), max / 2);
        let hour = Duration::from_secs(3600);
        assert_eq!(record_backoff(1, hour, 1.0), Duration::from_secs(1));
        assert_eq!(record_backoff(4, hour, 1.0), Duration::from_secs(8));
        assert_eq!(record_backoff(40, hour, 1.0), hour);
    }

    #[test]
    fn the_wire_bytes_are_what_describe_shows() {
        use telemetry::{Classification, Payload, Record, Severity};
        let rec = {
            let mut host = telemetry::HostInfo::current().clone();
            host.cpu_model = telemetry::HeaderText::new("Intel(R) Xeon(R) CPU @ 2.10GHz – ünïcode").unwrap();
            Record::builder(Classification::parse("org.t/wire/x").unwrap(), Severity::Low, Payload::text("p\n"))
                .host(host)
                .build()
        };
        let mid = MachineId::random();
        for (server, proto) in [("http://127.0.0.1:9/a?b=c", Protocol::V2), ("https://h.example/", Protocol::V3)] {
            let cfg = Config { server: Some(server.parse().unwrap()), server_protocol: proto, ..Config::default() };
            let prep = Prepared::new(&cfg);
            let d = describe(&prep, &mid, &rec).unwrap();
            let wire = encode_request(&prep, &request_parts(&prep, &mid, &rec).unwrap());
            let mut hs = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut hs);
            let head = match req.parse(&wire).unwrap() {
                httparse::Status::Complete(n) => n,
                httparse::Status::Partial => panic!("incomplete request"),
            };
            assert_eq!(req.method, Some("POST"));
            let url: Url = d.url.parse().unwrap();
            let want_path = format!("{}{}", url.path(), url.query().map(|q| format!("?{q}")).unwrap_or_default());
            assert_eq!(req.path, Some(want_path.as_str()));
            let got: Vec<(String, String)> = req
                .headers
                .iter()
                .map(|h| (h.name.to_string(), String::from_utf8(h.value.to_vec()).unwrap()))
                .collect();
            assert_eq!(got, d.headers, "{server}");
            assert_eq!(&wire[head..], &d.body[..]);
            let len = d.headers.iter().find(|(k, _)| k == "Content-Length").unwrap();
            assert_eq!(len.1, d.body.len().to_string());
            if proto == Protocol::V2 {
                assert!(d.headers.iter().any(|(k, v)| k == "Cpu-Model" && v.ends_with("ünïcode")), "{:?}", d.headers);
                assert!(d.headers.iter().any(|(k, v)| k == "Host" && v == "127.0.0.1:9"));
            } else {
                assert!(d.headers.iter().any(|(k, v)| k == "Host" && v == "h.example"));
            }
        }
    }

    #[test]
    fn v3_target() {
        let u: Url = "https://h.example/".parse().unwrap();
        assert_eq!(target(&u, Protocol::V3).as_str(), "https://h.example/v3/collector");
        assert_eq!(target(&u, Protocol::V2).as_str(), "https://h.example/");
        let u: Url = "https://h.example/v3/collector".parse().unwrap();
        assert_eq!(target(&u, Protocol::V3).as_str(), "https://h.example/v3/collector");
    }
}
