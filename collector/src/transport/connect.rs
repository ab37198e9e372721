//! Opening connections: TCP, through an HTTP proxy's `CONNECT` tunnel, TLS.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::config::Config;

use super::*;

pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Opens the TCP connection a post goes over: straight to the server, or
/// through the HTTP proxy the environment names for it (a `CONNECT`
/// tunnel, so TLS still runs end to end with the server).
#[derive(Clone)]
pub struct Connector {
    pub(super) tcp: HttpConnector,
    pub(super) proxies: Arc<Matcher>,
}

impl Connector {
    /// A connector using `proxies` (e.g. [`Matcher::from_env`]).
    pub fn new(tcp: HttpConnector, proxies: Matcher) -> Connector {
        Connector { tcp, proxies: Arc::new(proxies) }
    }
}

/// `dst` with its scheme's port spelled out (a tunnel names host:port).
pub(super) fn with_port(dst: http::Uri) -> http::Uri {
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
pub(super) fn tls_config(cfg: &Config) -> Result<rustls::ClientConfig, ClientBuildError> {
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

/// An error and its sources, as one line.
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}
