//! Stage: delivery. Takes records from the spool in FIFO order and posts
//! them (through [`crate::transport`]: one pooled hyper client over rustls,
//! so connections are reused) in the `server_protocol` form with the
//! `tidheader`, up to `delivery_concurrency` at once.
//!
//! - 2xx: delivered (journaled, removed from the spool).
//! - 408, 429, 5xx, timeouts, connection errors: the record stays in the
//!   spool; retry after an exponential backoff with jitter (429 honours
//!   `Retry-After`), capped by `retry_max_backoff`; as soon as a retry
//!   succeeds the spool drains at full speed.
//! - other 4xx: the server refused this record: journaled as
//!   `rejected-by-server` with status and body, not retried.
//!
//! Records over a rate window wait here until the window allows them.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use telemetry::posting::{self, V3_PATH};
use telemetry::MachineId;
use tokio::task::JoinSet;
use url::Url;

use crate::config::{Config, Protocol};
use crate::consent::Decision;
use crate::journal::{Entry, Fate};
use crate::pipeline::Shared;
use crate::ratelimit::Verdict;
use crate::spool::{Item, Ticket};
use crate::stats::bump;
use crate::transport::{SendError, Transport};

/// First retry delay.
pub const BASE_BACKOFF: Duration = Duration::from_millis(250);

/// The result of one post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Try again later; `after` from a Retry-After header.
    Retry { error: String, after: Option<Duration> },
    /// The server refused the record for good.
    Refused { status: u16, body: String },
    /// This record cannot be sent in the configured form.
    Unsendable(String),
}

/// Classifies an HTTP status.
pub fn classify(status: u16, body: String, retry_after: Option<Duration>) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered,
        408 | 429 | 500..=599 => Outcome::Retry { error: format!("server answered {status}"), after: retry_after },
        _ => Outcome::Refused { status, body },
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

/// What every post of one configuration shares, parsed once.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub url: Option<Url>,
    /// `url` as the HTTP client takes it (parsed once, not per post).
    uri: Option<http::Uri>,
    pub protocol: Protocol,
    tid: Option<(HeaderName, HeaderValue)>,
    v2_names: Vec<HeaderName>,
}

impl Prepared {
    pub fn new(cfg: &Config) -> Prepared {
        let tid = HeaderName::from_bytes(cfg.tidheader.name.as_bytes())
            .ok()
            .zip(HeaderValue::from_str(&cfg.tidheader.value).ok());
        let url = cfg.server.as_ref().map(|s| target(s, cfg.server_protocol));
        Prepared {
            uri: url.as_ref().and_then(|u| u.as_str().parse().ok()),
            url,
            protocol: cfg.server_protocol,
            tid,
            v2_names: posting::V2_HEADER_NAMES.iter().filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok()).collect(),
        }
    }
}

/// The `User-Agent` every post carries.
pub const USER_AGENT: &str = concat!("telem-collector/", env!("CARGO_PKG_VERSION"));

/// Exactly the HTTP request a record is posted as: what [`post`] sends and
/// what `telemctl preview` and the `debug` setting show. Headers are in
/// sending order, names lower-case as they go on the wire; `host` and
/// `content-length` are included with the values the HTTP client derives
/// from the URL and the body.
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

/// The headers (in sending order, without the transport's `host` and
/// `content-length`) and the body `record` is posted with, stamped with
/// `mid` (no I/O). What [`post`] sends and [`describe`] shows.
pub fn request_parts(prep: &Prepared, mid: &MachineId, record: &telemetry::Record) -> Result<(HeaderMap, Vec<u8>), String> {
    request_parts_cached(prep, mid, record, &mut ValueCache::default())
}

/// The v2 header values of the last record, per header: records from one
/// host repeat most of them (host facts, machine id), and reusing a value
/// is a reference count instead of a validated copy.
#[derive(Debug, Default)]
pub struct ValueCache {
    last: Vec<Option<(String, HeaderValue)>>,
}

impl ValueCache {
    fn get(&mut self, i: usize, s: &str) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
        if self.last.len() <= i {
            self.last.resize(i + 1, None);
        }
        if let Some((k, v)) = &self.last[i] {
            if k == s {
                return Ok(v.clone());
            }
        }
        let v = HeaderValue::from_str(s)?;
        self.last[i] = Some((s.to_string(), v.clone()));
        Ok(v)
    }
}

/// [`request_parts`], reusing the header values of the previous record.
pub fn request_parts_cached(
    prep: &Prepared,
    mid: &MachineId,
    record: &telemetry::Record,
    cache: &mut ValueCache,
) -> Result<(HeaderMap, Vec<u8>), String> {
    use http::header::{ACCEPT, CONTENT_TYPE, USER_AGENT as UA};
    use telemetry::record::HeaderValue as V;
    let mut h = HeaderMap::with_capacity(24);
    if let Some((n, v)) = &prep.tid {
        h.insert(n.clone(), v.clone());
    }
    let body = match prep.protocol {
        Protocol::V2 => {
            for (i, (name, v)) in prep.v2_names.iter().zip(record.header_values(mid)).enumerate() {
                let value = match v {
                    V::Num(n) => HeaderValue::from(n),
                    V::Str(s) => cache.get(i, s).map_err(|e| format!("header {name}: {e}"))?,
                    V::Id(id) => HeaderValue::from_str(&id.to_string()).map_err(|e| format!("header {name}: {e}"))?,
                };
                h.insert(name.clone(), value);
            }
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/text"));
            record.payload.as_bytes().to_vec()
        }
        Protocol::V3 => {
            let body = posting::v3_body(record, mid).map_err(|e| e.to_string())?;
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            body
        }
    };
    h.insert(UA, HeaderValue::from_static(USER_AGENT));
    h.insert(ACCEPT, HeaderValue::from_static("*/*"));
    Ok((h, body))
}

/// Builds the request for `record` stamped with `mid` (no I/O).
pub fn describe(prep: &Prepared, mid: &MachineId, record: &telemetry::Record) -> Result<RequestDesc, String> {
    let url = prep.url.as_ref().ok_or_else(|| "no server configured".to_string())?;
    let (map, body) = request_parts(prep, mid, record)?;
    let mut h: Vec<(String, String)> =
        map.iter().map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect();
    let host = match url.port() {
        Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_string(),
    };
    h.push(("host".into(), host));
    h.push(("content-length".into(), body.len().to_string()));
    Ok(RequestDesc { method: "POST", url: url.to_string(), headers: h, body })
}

/// Posts one record, as [`request_parts`] built it.
pub async fn post(client: &Transport, prep: &Prepared, parts: Result<(HeaderMap, Vec<u8>), String>) -> Outcome {
    let Some(uri) = &prep.uri else { return Outcome::Retry { error: "no server configured".into(), after: None } };
    let (h, body) = match parts {
        Ok(p) => p,
        Err(e) => return Outcome::Unsendable(e),
    };
    let mut req = http::Request::new(bytes::Bytes::from(body));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = uri.clone();
    *req.headers_mut() = h;
    match client.send(req).await {
        Ok(a) => {
            let body = if (200..300).contains(&a.status) {
                String::new()
            } else {
                // One line in the journal: control characters become spaces.
                let s: String = String::from_utf8_lossy(&a.body[..a.body.len().min(512)])
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect();
                s.trim().to_string()
            };
            classify(a.status, body, a.retry_after)
        }
        Err(e @ (SendError::TimedOut(_) | SendError::Connect(_) | SendError::Failed(_))) => {
            Outcome::Retry { error: e.to_string(), after: None }
        }
    }
}

/// The backoff before retry number `attempt` (1-based), with jitter in
/// [50%, 100%] of the exponential value, capped at `max`.
pub fn backoff(attempt: u32, max: Duration, jitter: f64) -> Duration {
    let exp = BASE_BACKOFF.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let d = exp.min(max);
    d.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

fn jitter() -> f64 {
    let b = telemetry::EventId::random();
    (b.as_bytes()[0] as f64) / 255.0
}

struct Job {
    ticket: Ticket,
    /// Counted by the rate windows (at ingest or here).
    counted: bool,
}

/// Runs the delivery stage until `stop` fires.
pub async fn run(shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut cfg = shared.config();
    let mut prep = Arc::new(Prepared::new(&cfg));
    let mut client = match Transport::new(&cfg) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::error!("delivery is paused: {e}");
            shared.stats.set_error(Some(e.to_string()));
            None
        }
    };
    let mut retry: VecDeque<Job> = VecDeque::new();
    let mut inflight: JoinSet<(Job, Outcome)> = JoinSet::new();
    let mut attempt: u32 = 0;
    let mut values = ValueCache::default();
    let mut retry_at: Option<Instant> = None;
    let mut rate_wait: Option<Instant> = None;
    let mut cfg_rx = shared.cfg.clone();
    let mut expiry_tick = tokio::time::interval(Duration::from_secs(1).max(cfg.spool_process_time.min(Duration::from_secs(10))));
    loop {
        // Flush: retry now.
        if shared.flush.swap(false, Ordering::SeqCst) {
            retry_at = None;
            rate_wait = None;
            attempt = 0;
        }
        let now = Instant::now();
        if retry_at.is_some_and(|t| t <= now) {
            retry_at = None;
        }
        if rate_wait.is_some_and(|t| t <= now) {
            rate_wait = None;
        }
        shared.retry_at_ms.store(
            retry_at.map(|t| t.saturating_duration_since(shared.since_instant).as_millis() as u64).unwrap_or(0),
            Ordering::Relaxed,
        );
        let deliver = shared.consent(&cfg) == Decision::Deliver;
        // While backing off, one probe request at a time.
        let limit = if attempt > 0 { 1 } else { cfg.delivery_concurrency };
        if deliver && retry_at.is_none() && rate_wait.is_none() {
            if let Some(client) = &client {
                let mid = shared.machine_id();
                while inflight.len() < limit {
                    let job = match retry.pop_front() {
                        Some(j) => j,
                        None => match shared.spool.next() {
                            Some(t) => {
                                let counted = t.item.counted;
                                Job { ticket: t, counted }
                            }
                            None => break,
                        },
                    };
                    let expire_before = telemetry::record::now_unix().saturating_sub(cfg.record_expiry.as_secs());
                    if job.ticket.item.accepted < expire_before {
                        expire_one(&shared, &job.ticket);
                        continue;
                    }
                    let mut job = job;
                    if !job.counted {
                        let size = size_of(&job.ticket.item);
                        match shared.limiter().try_acquire(Instant::now(), size) {
                            Verdict::Allowed => job.counted = true,
                            Verdict::Limited { retry_in } => {
                                let wait = retry_in.unwrap_or(Duration::from_secs(60));
                                rate_wait = Some(Instant::now() + wait);
                                retry.push_front(job);
                                break;
                            }
                        }
                    }
                    let client = client.clone();
                    let prep = prep.clone();
                    let parts = request_parts_cached(&prep, &mid, &job.ticket.item.record, &mut values);
                    inflight.spawn(async move {
                        let out = post(&client, &prep, parts).await;
                        (job, out)
                    });
                }
            }
        }
        // Not allowed to send: look at the opt-in state again in a second.
        let consent_wait = (!deliver).then(|| Instant::now() + Duration::from_secs(1));
        let sleep_until = [retry_at, rate_wait, consent_wait].into_iter().flatten().min();
        tokio::select! {
            biased;
            _ = stop.changed() => {
                // Let posts already on the wire finish (up to 3 s), so a
                // record the server received is not sent again after a
                // restart; then give up on the rest (they stay spooled).
                let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
                let mut updates = Vec::new();
                while let Ok(Some(res)) = tokio::time::timeout_at(deadline, inflight.join_next()).await {
                    if let Ok((job, out)) = res {
                        handle(&shared, &cfg, job, out, &mut updates, &mut attempt, &mut retry_at, &mut retry);
                    }
                }
                inflight.abort_all();
                if !updates.is_empty() {
                    shared.journal.append(updates, None);
                }
                return;
            }
            Some(res) = inflight.join_next(), if !inflight.is_empty() => {
                // Take every finished post, then journal their fates at once.
                let mut updates = Vec::new();
                let mut next = Some(res);
                while let Some(res) = next.take() {
                    if let Ok((job, out)) = res {
                        handle(&shared, &cfg, job, out, &mut updates, &mut attempt, &mut retry_at, &mut retry);
                    }
                    next = inflight.try_join_next();
                }
                if !updates.is_empty() {
                    shared.journal.append(updates, None);
                }
            }
            _ = shared.wake_delivery.notified() => {}
            _ = cfg_rx.changed() => {
                let new = cfg_rx.borrow_and_update().clone();
                if new.cainfo != cfg.cainfo || new.connect_timeout != cfg.connect_timeout
                    || new.delivery_timeout != cfg.delivery_timeout || new.delivery_concurrency != cfg.delivery_concurrency {
                    match Transport::new(&new) {
                        Ok(c) => client = Some(c),
                        Err(e) => {
                            tracing::error!("delivery is paused: {e}");
                            shared.stats.set_error(Some(e.to_string()));
                            client = None;
                        }
                    }
                }
                cfg = new;
                prep = Arc::new(Prepared::new(&cfg));
                retry_at = None;
                attempt = 0;
            }
            _ = expiry_tick.tick() => {
                let before = telemetry::record::now_unix().saturating_sub(cfg.record_expiry.as_secs());
                let gone = shared.spool.expire(before);
                journal_expired(&shared, &gone);
            }
            _ = sleep_opt(sleep_until) => {}
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn handle(
    shared: &Shared,
    cfg: &Config,
    job: Job,
    out: Outcome,
    updates: &mut Vec<Entry>,
    attempt: &mut u32,
    retry_at: &mut Option<Instant>,
    retry: &mut VecDeque<Job>,
) {
    match out {
        Outcome::Delivered => {
            *attempt = 0;
            // Counted before it leaves the spool, so a status never shows
            // it neither spooled nor delivered.
            bump(&shared.stats.delivered, 1);
            shared.spool.done(job.ticket.seq);
            updates.push(Entry::update(&job.ticket.item.record_id_hex(), &Fate::Delivered));
        }
        Outcome::Retry { error, after } => {
            bump(&shared.stats.delivery_failures, 1);
            *attempt = attempt.saturating_add(1);
            let wait = after.unwrap_or_else(|| backoff(*attempt, cfg.retry_max_backoff, jitter()));
            if retry_at.is_none() {
                tracing::warn!(
                    "delivery failed ({error}); {} record(s) spooled, retrying in {:.1} s",
                    shared.spool.records(),
                    wait.as_secs_f64()
                );
            }
            shared.stats.set_error(Some(error));
            *retry_at = Some(Instant::now() + wait);
            // Keep FIFO order among the records to retry.
            let pos = retry.iter().position(|j| j.ticket.seq > job.ticket.seq).unwrap_or(retry.len());
            retry.insert(pos, job);
        }
        Outcome::Refused { status, body } => {
            *attempt = 0;
            shared.spool.done(job.ticket.seq);
            bump(&shared.stats.rejected_by_server, 1);
            tracing::warn!("server refused record {}: {status} {body}", job.ticket.item.record_id_hex());
            updates.push(Entry::update(&job.ticket.item.record_id_hex(), &Fate::RejectedByServer { status, body }));
        }
        Outcome::Unsendable(why) => {
            shared.spool.done(job.ticket.seq);
            bump(&shared.stats.dropped, 1);
            updates.push(Entry::update(&job.ticket.item.record_id_hex(), &Fate::Dropped(why)));
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
    shared.journal.append(items.iter().map(|i| Entry::update(&i.record_id_hex(), &fate)).collect(), None);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        assert_eq!(classify(201, String::new(), None), Outcome::Delivered);
        assert_eq!(classify(204, String::new(), None), Outcome::Delivered);
        for s in [408, 429, 500, 502, 503, 599] {
            assert!(matches!(classify(s, String::new(), None), Outcome::Retry { .. }), "{s}");
        }
        assert_eq!(classify(400, "bad tid".into(), None), Outcome::Refused { status: 400, body: "bad tid".into() });
        assert!(matches!(classify(404, String::new(), None), Outcome::Refused { status: 404, .. }));
        assert!(matches!(classify(302, String::new(), None), Outcome::Refused { status: 302, .. }));
    }

    #[test]
    fn backoff_grows_with_jitter_and_cap() {
        let max = Duration::from_secs(60);
        assert_eq!(backoff(1, max, 1.0), BASE_BACKOFF);
        assert_eq!(backoff(1, max, 0.0), BASE_BACKOFF / 2);
        assert_eq!(backoff(3, max, 1.0), BASE_BACKOFF * 4);
        assert_eq!(backoff(30, max, 1.0), max);
        assert_eq!(backoff(30, max, 0.0), max / 2);
    }

    #[test]
    fn cached_header_values_equal_fresh_ones() {
        use telemetry::{Classification, Payload, Record, Severity};
        let cfg = Config { server: Some("http://127.0.0.1:9/".parse().unwrap()), ..Config::default() };
        let prep = Prepared::new(&cfg);
        let mid = MachineId::random();
        let rec = |cpu: &str| {
            let mut host = telemetry::HostInfo::current().clone();
            host.cpu_model = telemetry::HeaderText::new(cpu).unwrap();
            Record::builder(Classification::parse("org.t/cache/x").unwrap(), Severity::Low, Payload::text("p\n")).host(host).build()
        };
        let mut cache = ValueCache::default();
        for cpu in ["Intel(R) Xeon(R) A", "Intel(R) Xeon(R) A", "AMD B", "Intel(R) Xeon(R) A"] {
            let r = rec(cpu);
            let fresh = request_parts(&prep, &mid, &r).unwrap();
            let cached = request_parts_cached(&prep, &mid, &r, &mut cache).unwrap();
            assert_eq!(fresh, cached);
            assert_eq!(cached.0.get("Cpu-Model").unwrap(), cpu);
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
