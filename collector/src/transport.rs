//! The HTTP client delivery posts with: hyper-util's pooled HTTP/1.1
//! client over hyper-rustls (rustls with the `ring` provider), the stack
//! reqwest is built on, used directly.
//!
//! Why not reqwest itself: the backend takes one record per POST, so the
//! client's per-request cost is the delivery rate. reqwest wraps every
//! request in layers we do not use (a redirect policy that re-parses the
//! URL twice per request, proxy matching, decompression and timeout
//! layers); against the same loopback sink, in one run, this client posts
//! 36-46k records/s where reqwest posts 18-25k/s (docs/BENCHMARKS.md).
//!
//! What it keeps: connections are pooled and reused (up to
//! `delivery_concurrency` idle per host, 90 s idle timeout), TLS via rustls
//! with the platform verifier, or only the CAs of `cainfo`; the connect
//! timeout and the total timeout per post (connect, send, answer and body);
//! the proxy environment as curl reads it (`HTTPS_PROXY`, `HTTP_PROXY`,
//! `ALL_PROXY`, `NO_PROXY`, and lower-case), through an HTTP proxy's
//! `CONNECT` tunnel (credentials in the proxy URL are sent as basic auth).
//! Redirects are not followed (as the original's libcurl): a 3xx is the
//! server's answer.
//!
//! ```no_run
//! # async fn f(cfg: &telem_collector::Config, req: http::Request<bytes::Bytes>) {
//! let t = telem_collector::transport::Transport::new(cfg).unwrap();
//! let answer = t.send(req).await;
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::Client;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use thiserror::Error;

use crate::config::Config;

/// The most of an answer's body that is read (the journal keeps 512 bytes
/// of a refusal; a 2xx body is read so the connection can be reused).
pub const MAX_ANSWER_BODY: usize = 64 * 1024;

#[derive(Debug, Error)]
pub enum ClientBuildError {
    #[error("cannot read cainfo {path}: {source}")]
    CaRead { path: String, source: std::io::Error },
    #[error("cainfo {path} is not a PEM bundle: {reason}")]
    CaParse { path: String, reason: String },
    #[error("cannot set up TLS: {0}")]
    Tls(String),
}

/// Why a post got no answer.
#[derive(Debug, Error)]
pub enum SendError {
    #[error("timed out: no complete answer within {0:?}")]
    TimedOut(Duration),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("request failed: {0}")]
    Failed(String),
}

/// A server's answer: status, `Retry-After` (seconds form), body (at most
/// [`MAX_ANSWER_BODY`] bytes; longer bodies are cut).
#[derive(Debug)]
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
            return Box::pin(async move { Err(format!("proxy {via}: only http:// proxies (CONNECT) are supported").into()) });
        }
        let mut tunnel = Tunnel::new(via.clone(), self.tcp.clone());
        if let Some(auth) = proxy.basic_auth() {
            tunnel = tunnel.with_auth(auth.clone());
        }
        let dst = with_port(dst);
        Box::pin(async move {
            std::future::poll_fn(|cx| tunnel.poll_ready(cx)).await.map_err(|e| format!("proxy {via}: {}", chain(&e)))?;
            tunnel.call(dst).await.map_err(|e| format!("proxy {via}: {}", chain(&e)).into())
        })
    }
}

/// The pooled client of one configuration.
#[derive(Clone)]
pub struct Transport {
    client: Client<HttpsConnector<Connector>, Full<Bytes>>,
    timeout: Duration,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport").field("timeout", &self.timeout).finish_non_exhaustive()
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

impl Transport {
    /// The client for `cfg` (`cainfo`, `connect_timeout`,
    /// `delivery_timeout`, `delivery_concurrency`). No I/O but reading
    /// `cainfo`.
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
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(cfg)?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(Connector::new(http, proxies));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(cfg.delivery_concurrency)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .build(https);
        Ok(Transport { client, timeout: cfg.delivery_timeout })
    }

    /// Sends `req` and reads the answer, all within the total timeout.
    pub async fn send(&self, req: http::Request<Bytes>) -> Result<Answer, SendError> {
        let req = req.map(Full::new);
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| {
                let msg = chain(&e);
                if e.is_connect() {
                    SendError::Connect(msg)
                } else {
                    SendError::Failed(msg)
                }
            })?;
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            // An answer whose body is too long is cut: its connection is
            // then dropped instead of reused.
            let body = match Limited::new(resp.into_body(), MAX_ANSWER_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => Bytes::new(),
            };
            Ok(Answer { status, retry_after, body })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(SendError::TimedOut(self.timeout)),
        }
    }
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

    #[test]
    fn tunnels_name_the_port() {
        assert_eq!(with_port("https://h.example/v3".parse().unwrap()).to_string(), "https://h.example:443/v3");
        assert_eq!(with_port("http://h.example/".parse().unwrap()).to_string(), "http://h.example:80/");
        assert_eq!(with_port("http://h.example:8080/".parse().unwrap()).to_string(), "http://h.example:8080/");
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
