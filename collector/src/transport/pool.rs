//! The connection pool (idle keep-alive connections per origin) and the
//! pipelining policy.

use bytes::BytesMut;
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::*;

/// The stream of one connection: TCP, maybe tunnelled, maybe TLS.
pub(super) type Stream = TokioIo<MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>>;

/// One keep-alive connection and what was read ahead on it.
pub(super) struct Conn {
    pub(super) io: Stream,
    pub(super) rbuf: BytesMut,
    /// `scheme://authority` it is connected to.
    pub(super) origin: String,
    /// Answers read on it so far (0: it has not shown yet that it keeps
    /// connections alive, so nothing is pipelined on it).
    pub(super) answers: u64,
    pub(super) idle_since: Instant,
}

/// `scheme://authority` of `uri` (what a pooled connection is for).
pub(super) fn origin_of(uri: &http::Uri) -> String {
    format!("{}://{}", uri.scheme_str().unwrap_or(""), uri.authority().map(|a| a.as_str()).unwrap_or(""))
}

impl Transport {
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

    pub(super) fn stop_pipelining(&self, why: &str) {
        let mut off = self.inner.pipelining_off.lock().unwrap_or_else(|p| p.into_inner());
        if off.is_none() {
            tracing::warn!(
                "the server {why}; sending one request per round trip for the next {} s",
                PIPELINING_PAUSE.as_secs()
            );
        }
        *off = Some(Instant::now());
    }

    pub(super) fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Conn>> {
        self.inner.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn checkout(&self, origin: &str) -> Option<Conn> {
        let mut idle = self.idle();
        idle.retain(|c| c.idle_since.elapsed() < IDLE_TIMEOUT);
        let pos = idle.iter().rposition(|c| c.origin == origin)?;
        Some(idle.swap_remove(pos))
    }

    pub(super) fn checkin(&self, mut conn: Conn) {
        conn.idle_since = Instant::now();
        let mut idle = self.idle();
        idle.push(conn);
        if idle.len() > self.inner.max_idle {
            idle.remove(0);
        }
    }

    /// Drops every idle connection to `origin` (one was found closed by
    /// the server: the others probably are too).
    pub(super) fn forget(&self, origin: &str) {
        self.idle().retain(|c| c.origin != origin);
    }

    pub(super) async fn connect(&self, uri: &http::Uri, origin: &str, deadline: Instant) -> Result<Conn, SendError> {
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
}
