//! The HTTP client delivery posts with: HTTP/1.1 over pooled keep-alive
//! connections, plain or TLS (rustls with the `ring` provider, through
//! hyper-rustls' connector), with **pipelining**: a batch of requests goes
//! out in one write and the answers come back in order
//! ([RFC 9112 §9.3.2](https://www.rfc-editor.org/rfc/rfc9112#section-9.3.2)).
//! Answers are parsed with `httparse` (hyper's parser).
//!
//! Why not hyper's (or reqwest's) client: the backend takes one record per
//! POST, and their HTTP/1.1 clients send one request per round trip, so
//! every record paid a write, a read and two cross-CPU wake-ups on each
//! side; the kernel's TCP send path alone was 27% of the collector's CPU
//! under load (docs/BENCHMARKS.md). Sending `delivery_pipeline` requests
//! per write divides that by the batch size.
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
//! // `requests`: whole HTTP/1.1 requests, as `delivery::encode_request` writes them.
//! let t = telem_collector::transport::Transport::new(cfg).unwrap();
//! for answer in t.exchange(&uri, &requests).await {
//!     println!("{:?}", answer.map(|a| a.status));
//! }
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::config::Config;

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

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Opens the TCP connection a post goes over: straight to the server, or
/// through the HTTP proxy the environment names for it (a `CONNECT`
/// tunnel, so TLS still runs end to end with the server).
#[derive(Clone)]
pub struct Connector {
    tcp: HttpConnector,
    proxies: Arc<Matcher>,
}

impl Connector {
    /// A connector using `proxies` (e.g. [`Matcher::from_env`]).
    pub fn new(tcp: HttpConnector, proxies: Matcher) -> Connector {
        Connector { tcp, proxies: Arc::new(proxies) }
    }
}

/// `dst` with its scheme's port spelled out (a tunnel names host:port).
fn with_port(dst: http::Uri) -> http::Uri {
    if dst.port().is_some() {
        return dst;
    }
    let port = if dst.scheme_str() == Some("http") { 80 } else { 443 };
    let Some(host) = dst.host() else { return dst };
    let mut parts = dst.clone().into_parts();
    match format!("{host}:{port}").parse() {
        Ok(a) => {
            parts.authority = Some(a);
            http::Uri::from_parts(parts).unwrap_or(dst)
        }
        Err(_) => dst,
    }
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: http::Uri) -> Self::Future {
        let Some(proxy) = self.proxies.intercept(&dst) else {
            let direct = self.tcp.call(dst);
            return Box::pin(async move { direct.await.map_err(Into::into) });
        };
        let via = proxy.uri().clone();
        if via.scheme_str() != Some("http") {
            return Box::pin(async move {
                Err(format!("proxy {via}: only http:// proxies (CONNECT) are supported").into())
            });
        }
        let mut tunnel = Tunnel::new(via.clone(), self.tcp.clone());
        if let Some(auth) = proxy.basic_auth() {
            tunnel = tunnel.with_auth(auth.clone());
        }
        let dst = with_port(dst);
        Box::pin(async move {
            std::future::poll_fn(|cx| tunnel.poll_ready(cx))
                .await
                .map_err(|e| format!("proxy {via}: {}", chain(&e)))?;
            tunnel.call(dst).await.map_err(|e| format!("proxy {via}: {}", chain(&e)).into())
        })
    }
}

/// The rustls configuration: only the CAs of `cainfo` when it is set, else
/// the platform verifier (the system's trust store).
fn tls_config(cfg: &Config) -> Result<rustls::ClientConfig, ClientBuildError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientBuildError::Tls(e.to_string()))?;
    let b = match &cfg.cainfo {
        Some(ca) => {
            let path = ca.display().to_string();
            let pem = std::fs::read(ca).map_err(|source| ClientBuildError::CaRead { path: path.clone(), source })?;
            let bad = |reason: String| ClientBuildError::CaParse { path: path.clone(), reason };
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| bad(e.to_string()))?;
                roots.add(cert).map_err(|e| bad(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(bad("it holds no certificate".into()));
            }
            b.with_root_certificates(roots)
        }
        None => {
            use rustls_platform_verifier::BuilderVerifierExt;
            b.with_platform_verifier().map_err(|e| ClientBuildError::Tls(e.to_string()))?
        }
    };
    Ok(b.with_no_client_auth())
}

/// The stream of one connection: TCP, maybe tunnelled, maybe TLS.
type Stream = TokioIo<MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>>;

/// One keep-alive connection and what was read ahead on it.
struct Conn {
    io: Stream,
    rbuf: BytesMut,
    /// `scheme://authority` it is connected to.
    origin: String,
    /// Answers read on it so far (0: it has not shown yet that it keeps
    /// connections alive, so nothing is pipelined on it).
    answers: u64,
    idle_since: Instant,
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

/// `scheme://authority` of `uri` (what a pooled connection is for).
fn origin_of(uri: &http::Uri) -> String {
    format!("{}://{}", uri.scheme_str().unwrap_or(""), uri.authority().map(|a| a.as_str()).unwrap_or(""))
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

    /// Requests written back to back on one connection now (1: no
    /// pipelining, by configuration, or for [`PIPELINING_PAUSE`] after the
    /// server mishandled it).
    pub fn pipeline(&self) -> usize {
        if self.inner.pipeline == 1 {
            return 1;
        }
        let mut off = self.inner.pipelining_off.lock().unwrap_or_else(|p| p.into_inner());
        match *off {
            Some(at) if at.elapsed() < PIPELINING_PAUSE => 1,
            Some(_) => {
                *off = None;
                tracing::info!("trying pipelined requests again");
                self.inner.pipeline
            }
            None => self.inner.pipeline,
        }
    }

    fn stop_pipelining(&self, why: &str) {
        let mut off = self.inner.pipelining_off.lock().unwrap_or_else(|p| p.into_inner());
        if off.is_none() {
            tracing::warn!(
                "the server {why}; sending one request per round trip for the next {} s",
                PIPELINING_PAUSE.as_secs()
            );
        }
        *off = Some(Instant::now());
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Conn>> {
        self.inner.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn checkout(&self, origin: &str) -> Option<Conn> {
        let mut idle = self.idle();
        idle.retain(|c| c.idle_since.elapsed() < IDLE_TIMEOUT);
        let pos = idle.iter().rposition(|c| c.origin == origin)?;
        Some(idle.swap_remove(pos))
    }

    fn checkin(&self, mut conn: Conn) {
        conn.idle_since = Instant::now();
        let mut idle = self.idle();
        idle.push(conn);
        if idle.len() > self.inner.max_idle {
            idle.remove(0);
        }
    }

    /// Drops every idle connection to `origin` (one was found closed by
    /// the server: the others probably are too).
    fn forget(&self, origin: &str) {
        self.idle().retain(|c| c.origin != origin);
    }

    async fn connect(&self, uri: &http::Uri, origin: &str, deadline: Instant) -> Result<Conn, SendError> {
        use tower_service::Service;
        let mut connector = self.inner.connector.clone();
        let connecting = async {
            std::future::poll_fn(|cx| connector.poll_ready(cx)).await.map_err(|e| SendError::Connect(chain(&*e)))?;
            connector.call(uri.clone()).await.map_err(|e| SendError::Connect(chain(&*e)))
        };
        let stream = match tokio::time::timeout_at(deadline, connecting).await {
            Ok(s) => s?,
            Err(_) => return Err(SendError::TimedOut(self.inner.timeout)),
        };
        Ok(Conn {
            io: TokioIo::new(stream),
            rbuf: BytesMut::with_capacity(16 * 1024),
            origin: origin.to_string(),
            answers: 0,
            idle_since: Instant::now(),
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

async fn write_all<W: AsyncWrite + Unpin>(
    io: &mut W,
    bytes: &[u8],
    deadline: Instant,
    timeout: Duration,
) -> Result<(), SendError> {
    let w = async {
        io.write_all(bytes).await?;
        io.flush().await
    };
    match tokio::time::timeout_at(deadline, w).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(SendError::Failed(format!("sending: {e}"))),
        Err(_) => Err(SendError::TimedOut(timeout)),
    }
}

/// Why no answer was read.
#[derive(Debug, PartialEq, Eq)]
enum ReadError {
    /// The connection ended before any byte of this answer.
    Closed,
    Send(SendError),
}

impl From<SendError> for ReadError {
    fn from(e: SendError) -> Self {
        ReadError::Send(e)
    }
}

/// Reads more of the connection into `rbuf`; the byte count (0: closed).
async fn fill<R: AsyncRead + Unpin>(
    io: &mut R,
    rbuf: &mut BytesMut,
    deadline: Instant,
    timeout: Duration,
) -> Result<usize, SendError> {
    rbuf.reserve(16 * 1024);
    match tokio::time::timeout_at(deadline, io.read_buf(rbuf)).await {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => Err(SendError::Failed(format!("reading the answer: {e}"))),
        Err(_) => Err(SendError::TimedOut(timeout)),
    }
}

fn cut_short() -> SendError {
    SendError::Failed("the server closed the connection in the middle of an answer".into())
}

/// What an answer's head says.
#[derive(Debug, Default, PartialEq, Eq)]
struct Head {
    len: usize,
    status: u16,
    http11: bool,
    content_length: Option<u64>,
    chunked: bool,
    close: bool,
    keep_alive: bool,
    retry_after: Option<Duration>,
}

/// Parses the answer head at the start of `buf`; `Ok(None)`: incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let mut hs = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut hs);
    let len = match r.parse(buf) {
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(len)) => len,
        Err(e) => return Err(format!("malformed answer: {e}")),
    };
    let mut head = Head { len, status: r.code.unwrap_or(0), http11: r.version == Some(1), ..Head::default() };
    for h in r.headers.iter() {
        let value = String::from_utf8_lossy(h.value);
        let value = value.trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let n: u64 = value.parse().map_err(|_| format!("malformed answer: Content-Length {value:?}"))?;
            if head.content_length.is_some_and(|m| m != n) {
                return Err("malformed answer: two different Content-Length headers".into());
            }
            head.content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.rsplit(',').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            for t in value.split(',').map(str::trim) {
                head.close |= t.eq_ignore_ascii_case("close");
                head.keep_alive |= t.eq_ignore_ascii_case("keep-alive");
            }
        } else if h.name.eq_ignore_ascii_case("retry-after") {
            head.retry_after = retry_after(value, std::time::SystemTime::now());
        }
    }
    Ok(Some(head))
}

/// A `Retry-After` value as a wait from `now`: delay-seconds, or an
/// HTTP-date (a date in the past is no wait); `None` when it is neither.
pub fn retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Reads an answer's body from a connection.
struct Body<'a, R> {
    io: &'a mut R,
    rbuf: &'a mut BytesMut,
    /// The first [`MAX_ANSWER_BODY`] bytes.
    kept: BytesMut,
    total: usize,
    deadline: Instant,
    timeout: Duration,
}

impl<R: AsyncRead + Unpin> Body<'_, R> {
    /// Reads more; false: the connection ended.
    async fn more(&mut self) -> Result<bool, SendError> {
        Ok(fill(self.io, self.rbuf, self.deadline, self.timeout).await? > 0)
    }

    /// Takes `want` bytes of body (to the end of the connection when
    /// `to_eof`); false: more than [`MAX_DISCARD`] (the rest is not read).
    async fn take(&mut self, want: u64, to_eof: bool) -> Result<bool, ReadError> {
        let mut left = want;
        while left > 0 {
            if self.rbuf.is_empty() && !self.more().await? {
                if to_eof {
                    break;
                }
                return Err(cut_short().into());
            }
            let n = (self.rbuf.len() as u64).min(left) as usize;
            let keep = n.min(MAX_ANSWER_BODY.saturating_sub(self.kept.len()));
            self.kept.extend_from_slice(&self.rbuf[..keep]);
            self.rbuf.advance(n);
            left -= n as u64;
            self.total += n;
            if self.total > MAX_DISCARD {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Takes a chunked body and its trailers; false as [`take`](Self::take).
    async fn chunked(&mut self) -> Result<bool, ReadError> {
        let bad = |what: &str| ReadError::Send(SendError::Failed(format!("malformed answer: {what}")));
        loop {
            let size = loop {
                match httparse::parse_chunk_size(self.rbuf) {
                    Ok(httparse::Status::Complete((i, size))) => {
                        self.rbuf.advance(i);
                        break size;
                    }
                    Ok(httparse::Status::Partial) if self.rbuf.len() > 1024 => {
                        return Err(bad("chunk size line too long"))
                    }
                    Ok(httparse::Status::Partial) => {
                        if !self.more().await? {
                            return Err(cut_short().into());
                        }
                    }
                    Err(_) => return Err(bad("bad chunk size")),
                }
            };
            if size == 0 {
                // Trailer lines, up to the empty line.
                loop {
                    match self.rbuf.windows(2).position(|w| w == b"\r\n") {
                        Some(0) => {
                            self.rbuf.advance(2);
                            return Ok(true);
                        }
                        Some(i) => self.rbuf.advance(i + 2),
                        None if self.rbuf.len() > MAX_HEAD => return Err(bad("trailers too long")),
                        None => {
                            if !self.more().await? {
                                return Err(cut_short().into());
                            }
                        }
                    }
                }
            }
            if !self.take(size, false).await? {
                return Ok(false);
            }
            while self.rbuf.len() < 2 {
                if !self.more().await? {
                    return Err(cut_short().into());
                }
            }
            if &self.rbuf[..2] != b"\r\n" {
                return Err(bad("chunk not followed by CRLF"));
            }
            self.rbuf.advance(2);
        }
    }
}

/// Reads one answer; with it, whether the connection can carry more.
async fn read_answer<R: AsyncRead + Unpin>(
    io: &mut R,
    rbuf: &mut BytesMut,
    deadline: Instant,
    timeout: Duration,
) -> Result<(Answer, bool), ReadError> {
    let mut started = !rbuf.is_empty();
    let head = loop {
        match parse_head(rbuf).map_err(SendError::Failed)? {
            // 1xx (100 Continue, 103 Early Hints) precede the answer.
            Some(h) if (100..200).contains(&h.status) && h.status != 101 => rbuf.advance(h.len),
            Some(h) => break h,
            None if rbuf.len() > MAX_HEAD => {
                return Err(SendError::Failed(format!("answer head over {MAX_HEAD} bytes")).into())
            }
            None => {
                if fill(io, rbuf, deadline, timeout).await? == 0 {
                    return Err(if started { ReadError::Send(cut_short()) } else { ReadError::Closed });
                }
                started = true;
            }
        }
    };
    rbuf.advance(head.len);
    let mut body = Body { io, rbuf, kept: BytesMut::new(), total: 0, deadline, timeout };
    // After 101 Switching Protocols the connection is no longer HTTP.
    let mut reusable = if head.http11 { !head.close } else { head.keep_alive } && head.status != 101;
    if head.status == 204 || head.status == 304 {
        // No body, whatever the headers say.
    } else if head.chunked {
        reusable &= body.chunked().await?;
    } else if let Some(len) = head.content_length {
        reusable &= body.take(len, false).await?;
    } else {
        // Neither length nor chunks: the body ends with the connection.
        body.take(u64::MAX, true).await?;
        reusable = false;
    }
    let answer = Answer { status: head.status, retry_after: head.retry_after, body: body.kept.freeze() };
    Ok((answer, reusable))
}

/// An error and its sources, as one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn retry_after_in_seconds_or_as_an_http_date() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(" 120 ", now), Some(Duration::from_secs(120)));
        assert_eq!(retry_after("Sun, 06 Nov 1994 08:49:40 GMT", now), Some(Duration::from_secs(3)));
        assert_eq!(retry_after("Sun, 06 Nov 1994 08:49:30 GMT", now), Some(Duration::ZERO), "a date past is no wait");
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("-5", now), None);
    }

    #[test]
    fn tunnels_name_the_port() {
        assert_eq!(with_port("https://h.example/v3".parse().unwrap()).to_string(), "https://h.example:443/v3");
        assert_eq!(with_port("http://h.example/".parse().unwrap()).to_string(), "http://h.example:80/");
        assert_eq!(with_port("http://h.example:8080/".parse().unwrap()).to_string(), "http://h.example:8080/");
    }

    /// Reads one answer from `bytes` (the connection ends after them).
    fn answer_of(bytes: &[u8]) -> (Result<(Answer, bool), ReadError>, usize) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let mut io = bytes;
        let mut rbuf = BytesMut::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        let r = rt.block_on(read_answer(&mut io, &mut rbuf, deadline, Duration::from_secs(5)));
        (r, rbuf.len())
    }

    #[test]
    fn answers_of_every_framing() {
        // Content-Length, keep-alive; what follows stays for the next answer.
        let (r, left) = answer_of(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 201");
        let (a, reusable) = r.unwrap();
        assert_eq!((a.status, &a.body[..], reusable, left), (201, &b"ok"[..], true, 12));
        // Interim 100 Continue, then chunked with a trailer.
        let (r, _) = answer_of(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 400 Bad\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nbad\r\n4;x=y\r\n tid\r\n0\r\nX-T: 1\r\n\r\n");
        let (a, reusable) = r.unwrap();
        assert_eq!((a.status, &a.body[..], reusable), (400, &b"bad tid"[..], true));
        // Close-delimited (HTTP/1.0, no length): not reusable.
        let (r, _) = answer_of(b"HTTP/1.0 500 Oops\r\n\r\nall of it");
        let (a, reusable) = r.unwrap();
        assert_eq!((a.status, &a.body[..], reusable), (500, &b"all of it"[..], false));
        // Connection: close; Retry-After.
        let (r, _) =
            answer_of(b"HTTP/1.1 429 Slow down\r\nRetry-After: 7\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
        let (a, reusable) = r.unwrap();
        assert_eq!((a.status, a.retry_after, reusable), (429, Some(Duration::from_secs(7)), false));
        // HTTP/1.0 keep-alive is honoured; 204 has no body whatever it says.
        let (r, left) = answer_of(b"HTTP/1.0 204 No Content\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\n");
        assert!(r.unwrap().1);
        assert_eq!(left, 0);
        // Nothing at all: closed cleanly. Half an answer, garbage, lies: errors.
        assert_eq!(answer_of(b"").0.unwrap_err(), ReadError::Closed);
        for bad in [
            &b"HTTP/1.1 201 Created\r\nContent-Le"[..],
            b"HTTP/1.1 201 Created\r\nContent-Length: 9\r\n\r\nshort",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX",
        ] {
            assert!(
                matches!(answer_of(bad).0, Err(ReadError::Send(SendError::Failed(_)))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // A long body is cut to MAX_ANSWER_BODY.
        let mut long = format!("HTTP/1.1 400 Bad\r\nContent-Length: {}\r\n\r\n", 100_000).into_bytes();
        long.extend(std::iter::repeat_n(b'x', 100_000));
        let (a, reusable) = answer_of(&long).0.unwrap();
        assert_eq!((a.body.len(), reusable), (MAX_ANSWER_BODY, true));
    }

    /// What a scripted server does with one request.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum Act {
        /// Answer 201 with the request's number (over all connections) as body.
        Answer,
        /// Answer, with `Connection: close`, and close.
        AnswerAndClose,
        /// Close without answering (and without saying so before).
        Close,
        /// Never answer.
        Hang,
        /// Answer twice (a broken server).
        Twice,
    }

    /// A real HTTP/1.1 server on 127.0.0.1 that decides per request
    /// (connection number, request number on it, requests already buffered
    /// behind it); it records how many whole requests each read held.
    struct Scripted {
        uri: http::Uri,
        reads: Arc<Mutex<Vec<(usize, usize)>>>,
        conns: Arc<std::sync::atomic::AtomicUsize>,
        closer: Arc<Mutex<Vec<std::net::TcpStream>>>,
    }

    impl Scripted {
        fn start(script: fn(usize, usize, usize) -> Act) -> Scripted {
            use std::io::{Read, Write};
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let uri: http::Uri = format!("http://{}/", l.local_addr().unwrap()).parse().unwrap();
            let reads = Arc::new(Mutex::new(Vec::new()));
            let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let closer = Arc::new(Mutex::new(Vec::new()));
            let numbered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let (r2, c2, cl2) = (reads.clone(), conns.clone(), closer.clone());
            std::thread::spawn(move || {
                for s in l.incoming() {
                    let Ok(mut s) = s else { continue };
                    let conn = c2.fetch_add(1, Ordering::SeqCst);
                    cl2.lock().unwrap().push(s.try_clone().unwrap());
                    let (reads, numbered) = (r2.clone(), numbered.clone());
                    std::thread::spawn(move || {
                        let mut buf = Vec::new();
                        let mut on_conn = 0;
                        let mut tmp = [0u8; 65536];
                        loop {
                            let n = match s.read(&mut tmp) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            buf.extend_from_slice(&tmp[..n]);
                            // Whole requests in the buffer.
                            let mut whole = Vec::new();
                            let mut at = 0;
                            loop {
                                let mut hs = [httparse::EMPTY_HEADER; 32];
                                let mut req = httparse::Request::new(&mut hs);
                                let Ok(httparse::Status::Complete(h)) = req.parse(&buf[at..]) else { break };
                                let len: usize = req
                                    .headers
                                    .iter()
                                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                                    .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                                    .unwrap_or(0);
                                if buf.len() < at + h + len {
                                    break;
                                }
                                at += h + len;
                                whole.push(());
                            }
                            buf.drain(..at);
                            reads.lock().unwrap().push((conn, whole.len()));
                            let total = whole.len();
                            for (k, ()) in whole.into_iter().enumerate() {
                                let behind = total - k - 1;
                                match script(conn, on_conn, behind) {
                                    Act::Hang => loop {
                                        std::thread::sleep(Duration::from_secs(1));
                                    },
                                    Act::Close => {
                                        let _ = s.shutdown(std::net::Shutdown::Both);
                                        return;
                                    }
                                    act => {
                                        let answer = |numbered: &std::sync::atomic::AtomicUsize| {
                                            let i = numbered.fetch_add(1, Ordering::SeqCst).to_string();
                                            let close =
                                                if act == Act::AnswerAndClose { "Connection: close\r\n" } else { "" };
                                            format!(
                                                "HTTP/1.1 201 Created\r\n{close}Content-Length: {}\r\n\r\n{i}",
                                                i.len()
                                            )
                                        };
                                        let mut a = answer(&numbered);
                                        if act == Act::Twice {
                                            a.push_str(&answer(&numbered));
                                        }
                                        if s.write_all(a.as_bytes()).is_err() || act == Act::AnswerAndClose {
                                            let _ = s.shutdown(std::net::Shutdown::Both);
                                            return;
                                        }
                                    }
                                }
                                on_conn += 1;
                            }
                        }
                    });
                }
            });
            Scripted { uri, reads, conns, closer }
        }

        /// Closes every connection accepted so far.
        fn close_all(&self) {
            for s in self.closer.lock().unwrap().drain(..) {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    fn client(timeout: Duration) -> Transport {
        let cfg =
            Config { delivery_timeout: timeout, delivery_pipeline: 8, delivery_concurrency: 8, ..Config::default() };
        Transport::with_proxies(&cfg, Matcher::builder().build()).unwrap()
    }

    fn requests(n: usize) -> Vec<Bytes> {
        (0..n)
            .map(|i| Bytes::from(format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{:02}", i % 100)))
            .collect()
    }

    fn bodies(answers: &[Result<Answer, SendError>]) -> Vec<String> {
        answers.iter().map(|a| String::from_utf8_lossy(&a.as_ref().expect("answered").body).into_owned()).collect()
    }

    fn numbers(from: usize, n: usize) -> Vec<String> {
        (from..from + n).map(|i| i.to_string()).collect()
    }

    /// Open for its first `n` admissions.
    struct OpenFor(std::sync::atomic::AtomicUsize);

    impl Gate for OpenFor {
        type Guard<'a> = ();
        fn admit(&self) -> impl Future<Output = Option<()>> + Send {
            let left = self.0.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            std::future::ready(left.ok().map(|_| ()))
        }
    }

    #[test]
    fn a_closed_gate_withholds_every_request_not_yet_written() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let srv = Scripted::start(|_, _, _| Act::Answer);
        let t = client(Duration::from_secs(5));
        // Closed from the start: no connection, nothing sent.
        let got = rt.block_on(t.exchange_gated(&srv.uri, &requests(3), &OpenFor(0.into())));
        assert!(got.iter().all(|a| a == &Err(SendError::Withheld)), "{got:?}");
        assert_eq!(srv.conns.load(Ordering::SeqCst), 0);
        // Open for the connection and the first write (one request alone on
        // a new connection), then closed: the rest are withheld.
        let got = rt.block_on(t.exchange_gated(&srv.uri, &requests(4), &OpenFor(2.into())));
        assert_eq!(bodies(&got[..1]), numbers(0, 1));
        assert!(got[1..].iter().all(|a| a == &Err(SendError::Withheld)), "{got:?}");
        // The connection went back to the pool, and serves the next batch.
        let got = rt.block_on(t.exchange(&srv.uri, &requests(2)));
        assert_eq!(bodies(&got), numbers(1, 2));
        assert_eq!(srv.conns.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn pipelines_only_after_a_keep_alive_answer_and_keeps_the_order() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let srv = Scripted::start(|_, _, _| Act::Answer);
        let t = client(Duration::from_secs(5));
        let got = rt.block_on(t.exchange(&srv.uri, &requests(8)));
        assert_eq!(bodies(&got), numbers(0, 8));
        let got = rt.block_on(t.exchange(&srv.uri, &requests(8)));
        assert_eq!(bodies(&got), numbers(8, 8));
        let reads = srv.reads.lock().unwrap().clone();
        assert_eq!(srv.conns.load(Ordering::SeqCst), 1, "one pooled connection: {reads:?}");
        // The first request went alone; then the rest of the batch in one
        // write, and the whole second batch on the now-proven connection.
        assert_eq!(reads[0], (0, 1), "{reads:?}");
        assert!(reads.iter().any(|&(_, n)| n >= 7), "{reads:?}");
        assert_eq!(t.pipeline(), 8);
    }

    #[test]
    fn connection_close_sends_the_rest_on_a_new_connection() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        // As nginx's keepalive_requests: the third answer on a connection is its last.
        let srv = Scripted::start(|_, i, _| if i == 2 { Act::AnswerAndClose } else { Act::Answer });
        let t = client(Duration::from_secs(5));
        let got = rt.block_on(t.exchange(&srv.uri, &requests(8)));
        assert_eq!(bodies(&got), numbers(0, 8));
        assert_eq!(srv.conns.load(Ordering::SeqCst), 3);
        assert_eq!(t.pipeline(), 8, "that is not a reason to stop pipelining");
    }

    #[test]
    fn a_server_that_drops_pipelined_requests_gets_one_at_a_time() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        // Answers a request, but closes the connection when another one
        // arrived with it (without saying so).
        let srv = Scripted::start(|_, _, behind| if behind > 0 { Act::Close } else { Act::Answer });
        let t = client(Duration::from_secs(5));
        let got = rt.block_on(t.exchange(&srv.uri, &requests(8)));
        assert!(got.iter().all(|a| a.as_ref().is_ok_and(|a| a.status == 201)), "{got:?}");
        assert_eq!(t.pipeline(), 1);
        let got = rt.block_on(t.exchange(&srv.uri, &requests(3)));
        assert!(got.iter().all(|a| a.is_ok()), "{got:?}");
    }

    #[test]
    fn a_pooled_connection_closed_by_the_server_is_replaced() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let srv = Scripted::start(|_, _, _| Act::Answer);
        let t = client(Duration::from_secs(5));
        assert_eq!(bodies(&rt.block_on(t.exchange(&srv.uri, &requests(2)))), numbers(0, 2));
        srv.close_all();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(bodies(&rt.block_on(t.exchange(&srv.uri, &requests(3)))), numbers(2, 3));
        assert_eq!(srv.conns.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_connection_with_bytes_beyond_its_answers_is_not_reused() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let srv = Scripted::start(|_, _, _| Act::Twice);
        let t = client(Duration::from_secs(5));
        assert_eq!(bodies(&rt.block_on(t.exchange(&srv.uri, &requests(1)))), numbers(0, 1));
        std::thread::sleep(Duration::from_millis(50));
        // Not "1", the extra answer of the first request.
        assert_eq!(bodies(&rt.block_on(t.exchange(&srv.uri, &requests(1)))), numbers(2, 1));
        assert_eq!(srv.conns.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn no_answer_is_an_error_for_every_request() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let t = client(Duration::from_millis(300));
        let hang = Scripted::start(|_, _, _| Act::Hang);
        let got = rt.block_on(t.exchange(&hang.uri, &requests(3)));
        assert!(got.iter().all(|a| matches!(a, Err(SendError::TimedOut(_)))), "{got:?}");
        let close = Scripted::start(|_, _, _| Act::Close);
        let got = rt.block_on(t.exchange(&close.uri, &requests(3)));
        assert!(got.iter().all(|a| matches!(a, Err(SendError::Failed(_)))), "{got:?}");
        // Nothing listening.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let got = rt.block_on(t.exchange(&format!("http://127.0.0.1:{port}/").parse().unwrap(), &requests(2)));
        assert!(got.iter().all(|a| matches!(a, Err(SendError::Connect(_)))), "{got:?}");
    }

    #[test]
    fn cainfo_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let cfg = Config { cainfo: Some(missing.clone()), ..Config::default() };
        let e = Transport::new(&cfg).unwrap_err().to_string();
        assert!(e.contains("missing.pem"), "{e}");
        let bad = dir.path().join("bad.pem");
        std::fs::write(&bad, "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n").unwrap();
        let cfg = Config { cainfo: Some(bad), ..Config::default() };
        let e = Transport::new(&cfg).unwrap_err().to_string();
        assert!(e.contains("bad.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        let cfg = Config { cainfo: Some(empty), ..Config::default() };
        let e = Transport::new(&cfg).unwrap_err().to_string();
        assert!(e.contains("empty.pem") && e.contains("no certificate"), "{e}");
        assert!(Transport::new(&Config::default()).is_ok());
    }
}
