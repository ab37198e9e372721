//! Native connections: prefix, `Hello`, then pipelined record frames
//! decoded where they lie, answered with acks in order.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use telemetry::wire::native::{self, Ack, Hello, ServerFrame};
use telemetry::Record;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{
    read_at_least, read_more, truncated, ConnError, Sender, CLOSING, MAX_READ_BUFFER, MAX_SUBMISSION, MIN_READ_BUFFER,
    PIPELINE_DEPTH,
};
use crate::stats::{Refusal, Stats};
use crate::store::Incoming;

/// The refusal a native framing error is counted as.
fn frame_refusal(e: &native::FrameError) -> Refusal {
    use native::FrameError as E;
    match e {
        E::BadPrefix(_) | E::Version(_) => Refusal::BadPrefix,
        E::TooLarge { .. } => Refusal::FrameTooLarge,
        E::Truncated => Refusal::Truncated,
        // The field rules (classification, severity, host facts) fail as
        // custom errors; serde's own custom errors name an enum variant.
        E::Decode(k) => match &**k {
            bincode::ErrorKind::Custom(m) if !m.contains("variant") => Refusal::InvalidField,
            _ => Refusal::Malformed,
        },
        E::Io(_) => Refusal::Malformed,
    }
}

/// Acks on their way to the writer.
enum Out {
    Ready(Ack),
    /// The acks of `n` records from the commit stage.
    Wait(oneshot::Receiver<Vec<Ack>>, usize),
}

/// What one frame held.
enum Frame {
    Record(Incoming),
    /// Answered with this rejection; the connection goes on.
    Refused(String),
}

/// Decodes one record frame where it lies, its host facts shared with the
/// connection's earlier records (`hosts`); refusals are counted in `stats`.
fn decode_frame(
    body: &[u8],
    max_payload: usize,
    uid: u32,
    pid: u32,
    hosts: &mut native::HostCache,
    stats: &Stats,
) -> Result<Frame, String> {
    let record: Record = match native::decode_record(body, hosts) {
        Ok(r) => r,
        Err(e) => {
            let reason = e.to_string();
            tracing::warn!("native frame from uid {uid} pid {pid} refused: {reason}");
            stats.refuse(frame_refusal(&e), 1);
            return Err(reason);
        }
    };
    if let Err(e) = record.payload.check_limit(max_payload) {
        stats.refuse(Refusal::PayloadTooLarge, 1);
        return Ok(Frame::Refused(e.to_string()));
    }
    Ok(Frame::Record(Incoming { record, size: (4 + body.len()) as u64, uid, pid }))
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn native_conn(
    mut rd: tokio::net::unix::OwnedReadHalf,
    mut wr: tokio::net::unix::OwnedWriteHalf,
    mut buf: BytesMut,
    cfg: &crate::config::Config,
    uid: u32,
    pid: u32,
    sender: Sender,
    stats: &Stats,
) -> Result<(), ConnError> {
    let idle = cfg.idle_timeout;
    truncated(stats, true, read_at_least(&mut rd, &mut buf, 8, idle).await)?;
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&buf[..8]);
    buf.advance(8);
    let mut out = Vec::with_capacity(1024);
    if let Err(e) = native::check_prefix(prefix) {
        stats.refuse(frame_refusal(&e), 1);
        let reason = e.to_string();
        let _ = native::encode_into(&ServerFrame::Ack(Ack::Rejected { reason: reason.clone() }), &mut out);
        let _ = wr.write_all(&out).await;
        return Err(ConnError::Protocol(reason));
    }
    let max_payload = cfg.record_max_bytes;
    let hello = Hello { protocol: native::PROTOCOL_VERSION, max_payload: max_payload.min(u32::MAX as usize) as u32 };
    native::encode_into(&ServerFrame::Hello(hello), &mut out).map_err(|e| ConnError::Protocol(e.to_string()))?;
    wr.write_all(&out).await?;

    // Unacknowledged records of this connection.
    let depth = Arc::new(Semaphore::new(PIPELINE_DEPTH));
    let (otx, mut orx) = mpsc::unbounded_channel::<Out>();
    let d2 = depth.clone();
    let writer = tokio::spawn(async move {
        let r = write_acks(&mut wr, &mut orx, &d2, idle).await;
        // The reader may wait for pipeline room that will never come back.
        d2.close();
        r
    });

    let limit = native::max_record_frame(max_payload);
    let mut want = MIN_READ_BUFFER;
    let mut hosts = native::HostCache::default();
    let result: Result<(), ConnError> = 'conn: loop {
        // Every whole frame already read, decoded where it lies.
        let mut batch: Vec<Incoming> = Vec::new();
        let mut fatal = None;
        loop {
            let (body, used) = match native::split_frame(&buf, limit) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    stats.refuse(frame_refusal(&e), 1);
                    fatal = Some(e.to_string());
                    break;
                }
            };
            let frame = decode_frame(body, max_payload, uid, pid, &mut hosts, stats);
            buf.advance(used);
            match frame {
                Ok(Frame::Record(r)) => {
                    batch.push(r);
                    if batch.len() >= MAX_SUBMISSION {
                        if let Err(e) = submit(&sender, &depth, &otx, std::mem::take(&mut batch)).await {
                            break 'conn Err(e);
                        }
                    }
                }
                Ok(Frame::Refused(reason)) => {
                    if let Err(e) = submit(&sender, &depth, &otx, std::mem::take(&mut batch)).await {
                        break 'conn Err(e);
                    }
                    let _ = otx.send(Out::Ready(Ack::Rejected { reason }));
                }
                Err(reason) => {
                    fatal = Some(reason);
                    break;
                }
            }
        }
        // Hand over what is ready before waiting for more bytes.
        if let Err(e) = submit(&sender, &depth, &otx, batch).await {
            break Err(e);
        }
        if let Some(reason) = fatal {
            let _ = otx.send(Out::Ready(Ack::Rejected { reason: reason.clone() }));
            break Err(ConnError::Protocol(reason));
        }
        // The next frame's length, if known, sets how much to read.
        let need = buf.get(..4).map(|h| 4 + u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize).unwrap_or(4);
        let room = want.max(need);
        // (Bytes already here are a frame begun: ending now cuts it.)
        let begun = !buf.is_empty();
        let got = match truncated(stats, begun, read_more(&mut rd, &mut buf, room, idle).await) {
            Ok(n) => n,
            Err(e) => break Err(e),
        };
        if got == 0 {
            // A clean end of stream between frames ends the connection.
            break if buf.is_empty() {
                Ok(())
            } else {
                stats.refuse(Refusal::Truncated, 1);
                Err(ConnError::Protocol("connection closed in the middle of a frame".into()))
            };
        }
        // Reads that fill the buffer: a busy sender, read more at a time.
        if buf.len() >= want && want < MAX_READ_BUFFER {
            want *= 2;
        }
        if buf.is_empty() && buf.capacity() > 2 * MAX_READ_BUFFER {
            buf = BytesMut::with_capacity(want);
        }
    };
    drop(otx);
    let _ = writer.await;
    result
}

/// Writes acks in order as they come, each burst in one write; a client
/// that does not read them for `idle` is dropped.
async fn write_acks(
    wr: &mut tokio::net::unix::OwnedWriteHalf,
    orx: &mut mpsc::UnboundedReceiver<Out>,
    depth: &Semaphore,
    idle: Duration,
) -> Result<(), ConnError> {
    let mut out = Vec::with_capacity(8 * 1024);
    let encode = |a: Ack, out: &mut Vec<u8>| {
        native::encode_into(&ServerFrame::Ack(a), out).map_err(|e| ConnError::Protocol(e.to_string()))
    };
    let mut freed = 0;
    while let Some(o) = orx.recv().await {
        match o {
            Out::Ready(a) => encode(a, &mut out)?,
            Out::Wait(rx, n) => {
                let mut acks = rx.await.unwrap_or_default().into_iter();
                for _ in 0..n {
                    encode(acks.next().unwrap_or(Ack::Rejected { reason: CLOSING.into() }), &mut out)?;
                }
                freed += n;
            }
        }
        if orx.is_empty() || out.len() >= 64 * 1024 {
            write_idle(wr, &out, idle).await?;
            out.clear();
            depth.add_permits(std::mem::take(&mut freed));
        }
    }
    write_idle(wr, &out, idle).await?;
    wr.shutdown().await?;
    Ok(())
}

async fn write_idle(wr: &mut tokio::net::unix::OwnedWriteHalf, bytes: &[u8], idle: Duration) -> Result<(), ConnError> {
    match tokio::time::timeout(idle, wr.write_all(bytes)).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(ConnError::Idle(idle)),
    }
}

/// Submits a batch (nothing when empty) within the connection's pipeline.
async fn submit(
    sender: &Sender,
    depth: &Arc<Semaphore>,
    otx: &mpsc::UnboundedSender<Out>,
    batch: Vec<Incoming>,
) -> Result<(), ConnError> {
    if batch.is_empty() {
        return Ok(());
    }
    let n = batch.len();
    depth.acquire_many(n as u32).await.map_err(|_| ConnError::Closing)?.forget();
    match sender.send(batch).await {
        Ok(rx) => {
            let _ = otx.send(Out::Wait(rx, n));
            Ok(())
        }
        Err(e) => {
            for _ in 0..n {
                let _ = otx.send(Out::Ready(Ack::Rejected { reason: CLOSING.into() }));
            }
            Err(e)
        }
    }
}
