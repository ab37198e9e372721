//! Stage: control. A unix socket in `state_dir` (`control.sock`, mode
//! 0600) where `telemctl` asks; one line in, one JSON line out:
//!
//! | command   | does | answer |
//! |---|---|---|
//! | `status`  | | [`Status`] |
//! | `flush`   | retry delivery now, forgetting the backoff | `{"ok":true}` |
//! | `reload`  | re-reads the configuration (as SIGHUP) | `{"ok":true}` once it is in force, or `{"error":...}` when refused |
//! | `consent` | the opt-in file changed (`telemctl opt-in`, `opt-out`): drops the cached consent decision ([`State::consent_changed`]) | `{"ok":true,"consent":...,"mode":...}` once in force |
//! | `blackbox start {json}` / `stop` / `status` / `list` / `delete ID` | the black box ([`crate::blackbox::control`]); root's connections only (peer credentials) | `{"ok":true,...}` or `{"error":...}` |
//!
//! Answers to `reload` and `consent` come only when the change is in
//! force: a record accepted after it, and every post started after it,
//! follow the new state.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

use crate::state::State;
use crate::stats::{DestStatus, Status};

/// Builds the status snapshot.
pub fn status(shared: &State) -> Status {
    let [received, accepted, rejected, mut delivered, rate_limited, dropped, expired, mut rejected_by_server, local_only, mut delivery_failures] =
        shared.stats.snapshot();
    let cfg = shared.config();
    let mut last_delivery_error = shared.stats.error();
    // With OTLP alone, the delivery counters are the OTLP destination's
    // (each destination's own are in `destinations`).
    if cfg.server.is_none() && cfg.otlp.is_some() {
        let o = &shared.stats.otlp;
        delivered = o.delivered.load(Ordering::Relaxed);
        rejected_by_server = o.rejected.load(Ordering::Relaxed);
        delivery_failures = o.failures.load(Ordering::Relaxed);
        last_delivery_error = o.error();
    }
    let policy = shared.policy(&cfg);
    let retry_ms = shared.retry_at_ms.load(Ordering::Relaxed);
    let now_ms = shared.since_instant.elapsed().as_millis() as u64;
    Status {
        pid: std::process::id(),
        since: shared.since,
        received,
        accepted,
        rejected,
        rejected_by_reason: shared.stats.refusals(),
        delivered,
        spooled: shared.spool.records(),
        spool_bytes: shared.spool.bytes(),
        rate_limited,
        dropped,
        expired,
        rejected_by_server,
        local_only,
        delivery_failures,
        last_delivery_error,
        server: cfg.server.as_ref().map(|u| u.to_string()),
        consent: policy.decision.describe(),
        retry_in_secs: (retry_ms > now_ms).then(|| (retry_ms - now_ms) as f64 / 1000.0),
        mode: crate::consent::explain(&policy.decision, &cfg),
        privacy_level: cfg.privacy_level.as_str().into(),
        scrubbing: policy.scrub,
        do_not_track: cfg.do_not_track,
        destinations: destinations(shared, &cfg),
        host_went_down: shared.host_went_down.as_deref().map(crate::running::warning),
    }
}

/// Each configured destination's counters and state.
fn destinations(shared: &State, cfg: &crate::config::Config) -> Vec<DestStatus> {
    use crate::spool::Dest;
    let st = &shared.stats;
    let mut out = Vec::new();
    if let Some(u) = &cfg.server {
        out.push(DestStatus {
            name: Dest::Server.as_str().into(),
            url: u.to_string(),
            delivered: st.delivered.load(Ordering::Relaxed),
            rejected: st.rejected_by_server.load(Ordering::Relaxed),
            partial_rejected: 0,
            failures: st.delivery_failures.load(Ordering::Relaxed),
            held: shared.held_at(Dest::Server),
            last_error: st.error(),
        });
    }
    if let Some(o) = &cfg.otlp {
        let ot = &st.otlp;
        out.push(DestStatus {
            name: Dest::Otlp.as_str().into(),
            url: o.url.to_string(),
            delivered: ot.delivered.load(Ordering::Relaxed),
            rejected: ot.rejected.load(Ordering::Relaxed),
            partial_rejected: ot.partial_rejected.load(Ordering::Relaxed),
            failures: ot.failures.load(Ordering::Relaxed),
            held: shared.held_at(Dest::Otlp),
            last_error: ot.error(),
        });
    }
    out
}

/// How a reload asked for on the control socket is answered: `Ok` once the
/// new configuration is in force, or why it was refused.
pub type ReloadDone = tokio::sync::oneshot::Sender<Result<(), String>>;

/// Serves the control socket. `reload` is sent on `reload_tx`, and
/// answered when the daemon says it is done.
pub async fn serve(listener: UnixListener, shared: Arc<State>, reload_tx: tokio::sync::mpsc::Sender<ReloadDone>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let shared = shared.clone();
        let reload_tx = reload_tx.clone();
        tokio::spawn(async move {
            let root = stream.peer_cred().is_ok_and(|c| trusted_peer(c.uid()));
            let (rd, mut wr) = stream.into_split();
            let mut line = String::new();
            let mut rd = tokio::io::BufReader::new(rd);
            let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(5), rd.read_line(&mut line)).await else { return };
            let answer = match line.trim() {
                "status" => serde_json::to_string(&status(&shared)).unwrap_or_default(),
                "flush" => {
                    shared.request_flush();
                    r#"{"ok":true}"#.to_string()
                }
                "reload" => {
                    let (done, rx) = tokio::sync::oneshot::channel();
                    let answer = match reload_tx.send(done).await {
                        Ok(()) => rx.await.unwrap_or_else(|_| Err("the collector is shutting down".into())),
                        Err(_) => Err("the collector is shutting down".into()),
                    };
                    match answer {
                        Ok(()) => r#"{"ok":true}"#.to_string(),
                        Err(e) => serde_json::json!({ "error": e }).to_string(),
                    }
                }
                "consent" => {
                    shared.consent_changed(|| ()).await;
                    let cfg = shared.config();
                    let decision = shared.consent(&cfg);
                    serde_json::json!({
                        "ok": true,
                        "consent": decision.describe(),
                        "mode": crate::consent::explain(&decision, &cfg),
                    })
                    .to_string()
                }
                l if l.starts_with("blackbox ") => {
                    if !root {
                        serde_json::json!({ "error": "only root may use the black box" }).to_string()
                    } else {
                        // File writes and fsyncs: off the runtime's workers.
                        let (s, args) = (shared.clone(), l["blackbox ".len()..].to_string());
                        tokio::task::spawn_blocking(move || crate::blackbox::control(&s, &args))
                            .await
                            .unwrap_or_else(|_| r#"{"error":"the black box command failed"}"#.to_string())
                    }
                }
                other => serde_json::json!({ "error": format!("unknown command {other:?}") }).to_string(),
            };
            let _ = wr.write_all(format!("{answer}\n").as_bytes()).await;
        });
    }
}

/// Why `telemctl` cannot talk to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("the collector is not running (no control socket at {path}: {source}); start it with `telemctl start`")]
    NotRunning { path: String, source: std::io::Error },
    #[error("talking to the collector at {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("the collector answered: {0}")]
    Refused(String),
}

/// Sends one command and returns the answer line.
pub fn request(socket: &Path, command: &str) -> Result<String, ControlError> {
    let path = socket.display().to_string();
    let mut s = std::os::unix::net::UnixStream::connect(socket).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ControlError::NotRunning { path: path.clone(), source }
        }
        _ => ControlError::Io { path: path.clone(), source },
    })?;
    let io = |source| ControlError::Io { path: path.clone(), source };
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(io)?;
    s.write_all(format!("{command}\n").as_bytes()).map_err(io)?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).map_err(io)?;
    Ok(line.trim().to_string())
}

/// Sends a command whose answer is `{"ok":true,...}` or `{"error":...}`;
/// the answer when it is ok.
pub fn command(socket: &Path, command: &str) -> Result<serde_json::Value, ControlError> {
    let line = request(socket, command)?;
    if line.is_empty() {
        return Err(ControlError::Refused("nothing (it closed the connection)".into()));
    }
    let v: serde_json::Value = serde_json::from_str(&line)
        .map_err(|e| ControlError::Refused(format!("an unexpected answer ({e}): {line}")))?;
    match v.get("error") {
        Some(e) => Err(ControlError::Refused(e.as_str().map(str::to_string).unwrap_or_else(|| e.to_string()))),
        None => Ok(v),
    }
}

/// Whether a peer running as `uid` may control the daemon or feed its
/// black box: root, or the user the daemon runs as.
pub(crate) fn trusted_peer(uid: u32) -> bool {
    // SAFETY: geteuid has no memory effects.
    uid == 0 || uid == unsafe { libc::geteuid() }
}
