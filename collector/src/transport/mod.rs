//! The HTTP client delivery posts with: HTTP/1.1 over pooled keep-alive
//! connections, plain or TLS (rustls with the `ring` provider, through
//! hyper-rustls' connector), with **pipelining**: a batch of requests goes
//! out in one write and the answers come back in order
//! ([RFC 9112 §9.3.2](https://www.rfc-editor.org/rfc/rfc9112#section-9.3.2)).
//! Answers are parsed with `httparse` (hyper's parser).
//!
//! Why not hyper's (or reqwest's) client: the backend takes one record per
//! POST, and their HTTP/1.1 clients send one request per round trip, so
//! every record pays a write, a read and two cross-CPU wake-ups on each
//! side, and the kernel's TCP send path becomes a large share of the
//! collector's CPU under load (figures in docs/BENCHMARKS.md). Sending
//! `delivery_pipeline` requests per write divides that by the batch size.
//!
//! Pipelining is used only where it is known to work:
//! - a new connection carries one request alone; only once an HTTP/1.1
//!   keep-alive answer came back on it are later requests pipelined;
//! - an answer with `Connection: close` (e.g. nginx's `keepalive_requests`)
//!   ends the connection: the requests behind it are sent again on a new
//!   one (they were not answered, so not processed);
//! - a server that answers part of a pipelined batch and then closes the
//!   connection without saying so, or stops answering, gets one request
//!   per round trip for [`PIPELINING_PAUSE`], with a warning;
//! - a pooled connection the server closed while it was idle is detected on
//!   use, and the batch is sent once more on a new connection.
//!
//! Each write of an exchange first passes a [`Gate`]
//! ([`Transport::exchange_gated`]): delivery's gate holds a write back
//! once consent is withdrawn, so no request starts after `telemctl opt-out`.
//!
//! Delivery is at least once: a request whose answer never came is
//! reported as failed and sent again later, even if the server had in fact
//! processed it.
//!
//! What it keeps of a full client: connections are reused (up to
//! `delivery_concurrency` idle, [`IDLE_TIMEOUT`]), TLS via rustls with the
//! platform verifier, or only the CAs of `cainfo`; the connect timeout and
//! one total timeout per batch (connect, send, answers and bodies); the
//! proxy environment as curl reads it (`HTTPS_PROXY`, `HTTP_PROXY`,
//! `ALL_PROXY`, `NO_PROXY`, and lower-case), through an HTTP proxy's
//! `CONNECT` tunnel (credentials in the proxy URL are sent as basic auth).
//! Redirects are not followed (as the original's libcurl): a 3xx is the
//! server's answer. Answers may be `Content-Length`, chunked or
//! close-delimited.
//!
//! ```no_run
//! # async fn f(cfg: &telem_collector::Config, uri: http::Uri, requests: Vec<bytes::Bytes>) {
//! // `requests`: whole HTTP/1.1 requests, as `request::encode_request` writes them.
//! let t = telem_collector::transport::Transport::new(cfg).unwrap();
//! for answer in t.exchange(&uri, &requests).await {
//!     println!("{:?}", answer.map(|a| a.status));
//! }
//! # }
//! ```

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use thiserror::Error;
use tokio::time::Instant;

use crate::config::Config;

mod connect;
mod http1;
mod pool;
#[cfg(test)]
mod tests;

pub use connect::Connector;
use connect::*;
pub use http1::retry_after;
use http1::*;
use pool::*;

/// The most of an answer's body that is kept (the journal keeps 512 bytes
/// of a refusal).
pub const MAX_ANSWER_BODY: usize = 64 * 1024;
/// The most of an answer's body that is read and thrown away so the
/// connection can be reused; past it the connection is closed.
pub const MAX_DISCARD: usize = 1 << 20;
/// The most bytes an answer's head (status line and headers) may have.
pub const MAX_HEAD: usize = 64 * 1024;
/// A pooled connection unused this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long requests go one per round trip after the server mishandled
/// pipelined ones (then pipelining is tried again).
pub const PIPELINING_PAUSE: Duration = Duration::from_secs(300);

#[derive(Debug, Error)]
pub enum ClientBuildError {
    #[error("cannot read cainfo {path}: {source}")]
    CaRead { path: String, source: std::io::Error },
    #[error("cainfo {path} is not a PEM bundle: {reason}")]
    CaParse { path: String, reason: String },
    #[error("cannot set up TLS: {0}")]
    Tls(String),
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SendError {
    #[error("timed out: no complete answer within {0:?}")]
    TimedOut(Duration),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("request failed: {0}")]
    Failed(String),
    /// Not sent: the [`Gate`] was closed (consent withdrawn, configuration
    /// changed) before it was written.
    #[error("not sent: no longer allowed to send")]
    Withheld,
}

/// Asked before each write of an exchange whether its requests may still
/// go out.
pub trait Gate: Sync {
    /// Held while the requests are written.
    type Guard<'a>: Send
    where
        Self: 'a;
    /// `Some(guard)`: write now, holding `guard`; `None`: send nothing more.
    fn admit(&self) -> impl Future<Output = Option<Self::Guard<'_>>> + Send;
}

/// A gate that is always open.
#[derive(Debug, Clone, Copy, Default)]
pub struct Open;

impl Gate for Open {
    type Guard<'a> = ();
    fn admit(&self) -> impl Future<Output = Option<()>> + Send {
        std::future::ready(Some(()))
    }
}

/// A server's answer: status, `Retry-After` (seconds or HTTP-date), body (at most
/// [`MAX_ANSWER_BODY`] bytes; longer bodies are cut).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: Bytes,
}

/// The client of one configuration; cheap to clone (shared pool).
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

struct Inner {
    connector: HttpsConnector<Connector>,
    idle: Mutex<Vec<Conn>>,
    max_idle: usize,
    timeout: Duration,
    /// Most requests written back to back on one connection.
    pipeline: usize,
    /// When the server was last seen to mishandle pipelined requests.
    pipelining_off: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("timeout", &self.inner.timeout)
            .field("pipeline", &self.pipeline())
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// The client for `cfg` (`cainfo`, `connect_timeout`,
    /// `delivery_timeout`, `delivery_concurrency`, `delivery_pipeline`).
    /// No I/O but reading `cainfo`.
    pub fn new(cfg: &Config) -> Result<Transport, ClientBuildError> {
        Transport::with_proxies(cfg, Matcher::from_env())
    }

    /// [`new`](Self::new) with these proxy rules instead of the
    /// environment's.
    pub fn with_proxies(cfg: &Config, proxies: Matcher) -> Result<Transport, ClientBuildError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(cfg)?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(Connector::new(http, proxies));
        Ok(Transport {
            inner: Arc::new(Inner {
                connector,
                idle: Mutex::new(Vec::new()),
                max_idle: cfg.delivery_concurrency.max(1),
                timeout: cfg.delivery_timeout,
                pipeline: cfg.delivery_pipeline.max(1),
                pipelining_off: Mutex::new(None),
            }),
        })
    }

    /// Sends `requests` (each a whole HTTP/1.1 request) to `uri`'s origin
    /// and returns their answers, in order, all within the total timeout.
    /// Requests go out pipelined where that is known to work (see the
    /// module doc); a request without an answer gets the error that ended
    /// the exchange.
    pub async fn exchange(&self, uri: &http::Uri, requests: &[Bytes]) -> Vec<Result<Answer, SendError>> {
        self.exchange_gated(uri, requests, &Open).await
    }

    /// As [`exchange`](Self::exchange), asking `gate` before each write
    /// (holding its guard while writing): once it says no, the requests not
    /// yet written get [`SendError::Withheld`].
    pub async fn exchange_gated<G: Gate>(
        &self,
        uri: &http::Uri,
        requests: &[Bytes],
        gate: &G,
    ) -> Vec<Result<Answer, SendError>> {
        let deadline = Instant::now() + self.inner.timeout;
        let origin = origin_of(uri);
        let n = requests.len();
        let mut out: Vec<Result<Answer, SendError>> = Vec::with_capacity(n);
        let fail = |out: &mut Vec<Result<Answer, SendError>>, e: SendError| {
            while out.len() < n {
                out.push(Err(e.clone()));
            }
        };
        // A pooled connection may have been closed by the server while idle:
        // then the batch is sent once more, on a new connection.
        let mut may_retry_stale = true;
        'conns: while out.len() < n {
            // Not even a connection when nothing may be sent.
            if gate.admit().await.is_none() {
                fail(&mut out, SendError::Withheld);
                break;
            }
            let (mut conn, reused) = match self.checkout(&origin) {
                Some(c) => (c, true),
                None => match self.connect(uri, &origin, deadline).await {
                    Ok(c) => (c, false),
                    Err(e) => {
                        fail(&mut out, e);
                        break;
                    }
                },
            };
            let mut answered_here = 0usize;
            loop {
                let first = out.len();
                let window = if conn.answers > 0 { (n - first).min(self.pipeline()) } else { 1 };
                // The window's requests in one write.
                let joined;
                let bytes: &[u8] = match &requests[first..first + window] {
                    [one] => one,
                    many => {
                        joined = many.concat();
                        &joined
                    }
                };
                let Some(admitted) = gate.admit().await else {
                    // Every request written on it was answered: reusable.
                    if conn.rbuf.is_empty() {
                        self.checkin(conn);
                    }
                    fail(&mut out, SendError::Withheld);
                    break 'conns;
                };
                let written = write_all(&mut conn.io, bytes, deadline, self.inner.timeout).await;
                drop(admitted);
                if let Err(e) = written {
                    if answered_here == 0 && reused && may_retry_stale {
                        may_retry_stale = false;
                        self.forget(&origin);
                        continue 'conns;
                    }
                    fail(&mut out, e);
                    break 'conns;
                }
                for k in 0..window {
                    match read_answer(&mut conn.io, &mut conn.rbuf, deadline, self.inner.timeout).await {
                        Ok((answer, reusable)) => {
                            out.push(Ok(answer));
                            answered_here += 1;
                            conn.answers += 1;
                            if !reusable {
                                // The rest were not answered: a new connection.
                                continue 'conns;
                            }
                        }
                        Err(ReadError::Closed) if answered_here == 0 && reused && may_retry_stale => {
                            may_retry_stale = false;
                            self.forget(&origin);
                            continue 'conns;
                        }
                        Err(ReadError::Closed) if answered_here > 0 => {
                            if window > 1 {
                                self.stop_pipelining("closed the connection in the middle of pipelined requests");
                            }
                            continue 'conns;
                        }
                        Err(ReadError::Closed) => {
                            fail(
                                &mut out,
                                SendError::Failed("the server closed the connection without answering".into()),
                            );
                            break 'conns;
                        }
                        Err(ReadError::Send(e)) => {
                            if k > 0 && matches!(e, SendError::TimedOut(_)) {
                                self.stop_pipelining("stopped answering pipelined requests");
                            }
                            fail(&mut out, e);
                            break 'conns;
                        }
                    }
                }
                if out.len() == n {
                    // Bytes beyond the last answer would be taken for the
                    // next request's answer: such a connection is not reused.
                    if conn.rbuf.is_empty() {
                        self.checkin(conn);
                    } else {
                        tracing::debug!(
                            "the server sent {} bytes more than its answers; closing that connection",
                            conn.rbuf.len()
                        );
                    }
                    break 'conns;
                }
            }
        }
        out
    }
}
