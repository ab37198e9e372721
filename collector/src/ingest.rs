//! Stage: ingest. One unix socket (bound, or handed over by systemd socket
//! activation), both framings on it, told apart by the first four bytes
//! (`telemetry::wire::sniff`).
//!
//! - native: prefix check, `Hello { max_payload = record_max_bytes }`, then
//!   per record frame: decode (which validates every field), submit to the
//!   commit stage, and answer `Ack`s in order (pipelining allowed).
//! - legacy: one record, no reply; the connection is closed once the
//!   record is stored.
//!
//! Bounds: frame size, an idle timeout on every read, and a cap on
//! concurrent connections. A bad frame is answered with a rejection naming
//! the reason, and only that connection is closed.

use std::sync::Arc;
use std::time::Duration;

use telemetry::wire::native::{self, Ack, ClientFrame, Hello, ServerFrame};
use telemetry::wire::{self, legacy, Framing};
use telemetry::Record;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::pipeline::{Shared, Submission};

/// Acks a connection may have outstanding before its reader waits.
const PIPELINE_DEPTH: usize = 1024;

/// Accepts connections until `stop` fires.
pub async fn serve(
    listener: UnixListener,
    shared: Arc<Shared>,
    submit: mpsc::Sender<Submission>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let max = shared.config().max_connections;
    let slots = Arc::new(Semaphore::new(max));
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = stop.changed() => return,
        };
        let stream = match conn {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and friends: wait a little instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!("refusing a connection: {max} are open already (max_connections)");
            drop(stream);
            continue;
        };
        let shared = shared.clone();
        let submit = submit.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, &shared, submit).await {
                tracing::debug!("probe connection ended: {e}");
            }
            drop(permit);
        });
    }
}

/// Why a connection was closed.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("idle for more than {0:?}")]
    Idle(Duration),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Protocol(String),
    #[error("the collector is shutting down")]
    Closing,
}

async fn read_exact_idle<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8], idle: Duration) -> Result<(), ConnError> {
    match tokio::time::timeout(idle, r.read_exact(buf)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(ConnError::Idle(idle)),
    }
}

async fn connection(stream: UnixStream, shared: &Shared, submit: mpsc::Sender<Submission>) -> Result<(), ConnError> {
    let cfg = shared.config();
    let (uid, pid) = match stream.peer_cred() {
        Ok(c) => (c.uid(), c.pid().unwrap_or(0).max(0) as u32),
        Err(_) => (u32::MAX, 0),
    };
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(16 * 1024, rd);
    let mut first = [0u8; 4];
    read_exact_idle(&mut rd, &mut first, cfg.idle_timeout).await?;
    match wire::sniff(first) {
        Framing::Legacy { total_size } => {
            let size = legacy::check_total_size(total_size, cfg.max_legacy_record())
                .map_err(|e| ConnError::Protocol(e.to_string()))?;
            let mut buf = vec![0u8; size];
            buf[..4].copy_from_slice(&first);
            read_exact_idle(&mut rd, &mut buf[4..], cfg.idle_timeout).await?;
            let rec = legacy::decode(&buf).map_err(|e| {
                tracing::warn!("legacy record from uid {uid} pid {pid} refused: {e}");
                ConnError::Protocol(e.to_string())
            })?;
            if let Some(cfgp) = &rec.config_path {
                tracing::debug!("legacy probe named config {cfgp}; the collector's own configuration applies");
            }
            if let Err(e) = rec.record.payload.check_limit(cfg.record_max_bytes) {
                tracing::warn!("legacy record from uid {uid} pid {pid} refused: {e}");
                return Err(ConnError::Protocol(e.to_string()));
            }
            let (tx, rx) = oneshot::channel();
            submit
                .send(Submission { record: rec.record, uid, pid, size: size as u64, reply: tx })
                .await
                .map_err(|_| ConnError::Closing)?;
            match rx.await {
                Ok(Ack::Accepted { .. }) => {}
                Ok(Ack::Rejected { reason }) => tracing::warn!("legacy record from uid {uid} pid {pid} not kept: {reason}"),
                Err(_) => return Err(ConnError::Closing),
            }
            // Closing tells the legacy sender its record was read.
            drop(wr);
            Ok(())
        }
        Framing::Native => native_conn(rd, wr, first, &cfg, uid, pid, submit).await,
    }
}

enum Out {
    Ready(Ack),
    Wait(oneshot::Receiver<Ack>),
}

async fn native_conn(
    mut rd: BufReader<tokio::net::unix::OwnedReadHalf>,
    wr: tokio::net::unix::OwnedWriteHalf,
    first: [u8; 4],
    cfg: &crate::config::Config,
    uid: u32,
    pid: u32,
    submit: mpsc::Sender<Submission>,
) -> Result<(), ConnError> {
    let idle = cfg.idle_timeout;
    let mut wr = BufWriter::with_capacity(8 * 1024, wr);
    let mut prefix = [0u8; 8];
    prefix[..4].copy_from_slice(&first);
    read_exact_idle(&mut rd, &mut prefix[4..], idle).await?;
    if let Err(e) = native::check_prefix(prefix) {
        let reason = e.to_string();
        let _ = write_frame(&mut wr, &ServerFrame::Ack(Ack::Rejected { reason: reason.clone() })).await;
        let _ = wr.flush().await;
        return Err(ConnError::Protocol(reason));
    }
    let max_payload = cfg.record_max_bytes;
    write_frame(
        &mut wr,
        &ServerFrame::Hello(Hello { protocol: native::PROTOCOL_VERSION, max_payload: max_payload.min(u32::MAX as usize) as u32 }),
    )
    .await?;
    wr.flush().await?;

    let (otx, mut orx) = mpsc::channel::<Out>(PIPELINE_DEPTH);
    let writer = tokio::spawn(async move {
        while let Some(o) = orx.recv().await {
            let ack = match o {
                Out::Ready(a) => a,
                Out::Wait(rx) => rx.await.unwrap_or(Ack::Rejected { reason: "the collector is shutting down".into() }),
            };
            write_frame(&mut wr, &ServerFrame::Ack(ack)).await?;
            if orx.is_empty() {
                wr.flush().await?;
            }
        }
        wr.flush().await?;
        wr.shutdown().await
    });

    let limit = native::max_record_frame(max_payload);
    let mut body = Vec::new();
    let result = loop {
        let mut h = [0u8; 4];
        // A clean end of stream between frames ends the connection.
        match tokio::time::timeout(idle, rd.read(&mut h[..1])).await {
            Err(_) => break Err(ConnError::Idle(idle)),
            Ok(Err(e)) => break Err(e.into()),
            Ok(Ok(0)) => break Ok(()),
            Ok(Ok(_)) => {}
        }
        if let Err(e) = read_exact_idle(&mut rd, &mut h[1..], idle).await {
            break Err(e);
        }
        let len = match native::body_len(h, limit) {
            Ok(l) => l,
            Err(e) => {
                let reason = e.to_string();
                let _ = otx.send(Out::Ready(Ack::Rejected { reason: reason.clone() })).await;
                break Err(ConnError::Protocol(reason));
            }
        };
        body.clear();
        body.resize(len, 0);
        if let Err(e) = read_exact_idle(&mut rd, &mut body, idle).await {
            break Err(e);
        }
        let record: Record = match native::decode_body::<ClientFrame>(&body) {
            Ok(ClientFrame::Record(r)) => r,
            Err(e) => {
                let reason = e.to_string();
                tracing::warn!("native frame from uid {uid} pid {pid} refused: {reason}");
                let _ = otx.send(Out::Ready(Ack::Rejected { reason: reason.clone() })).await;
                break Err(ConnError::Protocol(reason));
            }
        };
        if let Err(e) = record.payload.check_limit(max_payload) {
            if otx.send(Out::Ready(Ack::Rejected { reason: e.to_string() })).await.is_err() {
                break Ok(());
            }
            continue;
        }
        let (tx, rx) = oneshot::channel();
        let sub = Submission { record, uid, pid, size: (4 + len) as u64, reply: tx };
        if submit.send(sub).await.is_err() {
            let _ = otx.send(Out::Ready(Ack::Rejected { reason: "the collector is shutting down".into() })).await;
            break Err(ConnError::Closing);
        }
        if otx.send(Out::Wait(rx)).await.is_err() {
            break Ok(());
        }
        if body.capacity() > 256 * 1024 {
            body = Vec::new();
        }
    };
    drop(otx);
    let _ = writer.await;
    result
}

async fn write_frame<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, msg: &ServerFrame) -> std::io::Result<()> {
    let bytes = native::encode(msg).map_err(|e| std::io::Error::other(e.to_string()))?;
    w.write_all(&bytes).await
}
