//! Stage: control. A unix socket in `state_dir` (`control.sock`, mode
//! 0600) where `telemctl` asks for `status`, `flush` and `reload`; one
//! line in, one JSON line out.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

use crate::pipeline::Shared;
use crate::stats::Status;

/// Builds the status snapshot.
pub fn status(shared: &Shared) -> Status {
    let [received, accepted, rejected, delivered, rate_limited, dropped, expired, rejected_by_server, local_only, delivery_failures] =
        shared.stats.snapshot();
    let cfg = shared.config();
    let policy = shared.policy(&cfg);
    let retry_ms = shared.retry_at_ms.load(Ordering::Relaxed);
    let now_ms = shared.since_instant.elapsed().as_millis() as u64;
    Status {
        pid: std::process::id(),
        since: shared.since,
        received,
        accepted,
        rejected,
        delivered,
        spooled: shared.spool.records(),
        spool_bytes: shared.spool.bytes(),
        rate_limited,
        dropped,
        expired,
        rejected_by_server,
        local_only,
        delivery_failures,
        last_delivery_error: shared.stats.error(),
        server: cfg.server.as_ref().map(|u| u.to_string()),
        consent: policy.decision.describe(),
        retry_in_secs: (retry_ms > now_ms).then(|| (retry_ms - now_ms) as f64 / 1000.0),
        mode: crate::consent::explain(&policy.decision, &cfg),
        privacy_level: cfg.privacy_level.as_str().into(),
        scrubbing: policy.scrub,
        do_not_track: cfg.do_not_track,
    }
}

/// Serves the control socket. `reload` is sent on `reload_tx`.
pub async fn serve(listener: UnixListener, shared: Arc<Shared>, reload_tx: tokio::sync::mpsc::Sender<()>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let shared = shared.clone();
        let reload_tx = reload_tx.clone();
        tokio::spawn(async move {
            let (rd, mut wr) = stream.into_split();
            let mut line = String::new();
            let mut rd = tokio::io::BufReader::new(rd);
            let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(5), rd.read_line(&mut line)).await else { return };
            let answer = match line.trim() {
                "status" => serde_json::to_string(&status(&shared)).unwrap_or_default(),
                "flush" => {
                    shared.flush.store(true, Ordering::SeqCst);
                    shared.wake_delivery.notify_one();
                    r#"{"ok":true}"#.to_string()
                }
                "reload" => {
                    let _ = reload_tx.send(()).await;
                    r#"{"ok":true}"#.to_string()
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
}

/// Sends one command and returns the answer line.
pub fn request(socket: &Path, command: &str) -> Result<String, ControlError> {
    let path = socket.display().to_string();
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|source| ControlError::NotRunning { path: path.clone(), source })?;
    let io = |source| ControlError::Io { path: path.clone(), source };
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(io)?;
    s.write_all(format!("{command}\n").as_bytes()).map_err(io)?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).map_err(io)?;
    Ok(line.trim().to_string())
}
