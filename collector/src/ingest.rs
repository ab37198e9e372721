//! Stage: ingest. One unix socket (bound, or handed over by systemd socket
//! activation), both framings on it, told apart by the first four bytes
//! (`telemetry::wire::sniff`).
//!
//! - native: prefix check, `Hello { max_payload = record_max_bytes }`, then
//!   record frames, decoded (which validates every field) where they lie
//!   in the connection's read buffer; every frame that arrived in one read
//!   goes to the commit stage as one submission, and their `Ack`s come back
//!   together and are written in order (pipelining allowed).
//! - legacy: one record, no reply; the connection is closed once the
//!   record is stored.
//!
//! Bounds: frame size, an idle timeout on every read, a cap on concurrent
//! connections (at the cap nothing more is accepted: senders wait in the
//! listen backlog; the cap fits the open-files limit), [`PIPELINE_DEPTH`] unacknowledged records per connection,
//! and [`INFLIGHT_BYTES`] of records in the commit stage over all
//! connections (taken in arrival order; a client that does not read its
//! acks holds only its own pipeline). A bad frame is answered with a
//! rejection naming the reason, and only that connection is closed.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use telemetry::wire::native::{self, Ack, Hello, ServerFrame};
use telemetry::wire::{self, legacy, Framing};
use telemetry::Record;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::pipeline::{Incoming, Shared, Submission};
use crate::stats::{Refusal, Stats};

/// Records a connection may have unacknowledged before its reader waits.
pub const PIPELINE_DEPTH: usize = 4096;
/// Bytes (as sent) of records between ingest and the commit stage's
/// answer, over all connections: what bounds the memory records take
/// on their way to the spool.
pub const INFLIGHT_BYTES: usize = 2 << 20;
/// Most records in one submission.
const MAX_SUBMISSION: usize = 512;
/// A connection's read buffer starts this small (most connections send one
/// record) and grows to [`MAX_READ_BUFFER`] while reads keep filling it.
const MIN_READ_BUFFER: usize = 4 * 1024;
const MAX_READ_BUFFER: usize = 64 * 1024;

/// Descriptors kept back from probe connections for everything else the
/// daemon opens: spool and journal files, delivery connections (added on
/// top), the control socket, the runtime's own.
pub const FD_RESERVE: usize = 64;

/// How many probe connections may be open at once: `max_connections`,
/// lowered so that they and the rest of the daemon fit the open-files
/// limit `nofile` (a connection refused for want of a descriptor would
/// lose a legacy sender's record).
pub fn connection_cap(max_connections: usize, delivery_concurrency: usize, nofile: u64) -> usize {
    let room = (nofile as usize).saturating_sub(FD_RESERVE + 2 * delivery_concurrency);
    max_connections.min(room).max(1)
}

/// The soft open-files limit in force.
pub fn nofile_limit() -> u64 {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit fills a local struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0 {
        r.rlim_cur
    } else {
        1024
    }
}

/// Accepts connections until `stop` fires. At the connection cap it
/// stops accepting: new senders wait in the listen backlog (a blocking
/// `connect` waits there), none is accepted and then dropped.
pub async fn serve(
    listener: UnixListener,
    shared: Arc<Shared>,
    submit: crate::pipeline::SubmitTx,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let cfg = shared.config();
    let nofile = nofile_limit();
    let max = connection_cap(cfg.max_connections, cfg.delivery_concurrency, nofile);
    if max < cfg.max_connections {
        tracing::info!(
            "serving at most {max} probe connections at once (max_connections {} does not fit the open-files limit {nofile})",
            cfg.max_connections
        );
    }
    let slots = Arc::new(Semaphore::new(max));
    let budget = Arc::new(Semaphore::new(INFLIGHT_BYTES));
    // Accepted sockets stay plain (std) sockets unless they need a task:
    // a legacy sender's whole record is usually there by the time it is
    // accepted, and is then taken without registering the socket with the
    // event loop or starting a task for it (see `take_legacy`).
    let registered = listener.into_std().and_then(|l| {
        // SAFETY: the AsyncFd owns the std listener, whose descriptor stays
        // open and the same for the AsyncFd's whole life.
        unsafe { AsyncFd::register(l) }.map_err(std::io::Error::from)
    });
    let listener = match registered {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("cannot serve the probe socket: {e}");
            return;
        }
    };
    let (close_tx, close_rx) = mpsc::unbounded_channel();
    tokio::spawn(close_when_stored(close_rx));
    let mut scratch = vec![0u8; FAST_READ];
    let mut last_full_log: Option<std::time::Instant> = None;
    loop {
        // A free slot first, then accept: at the cap, senders wait in the
        // listen backlog.
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if last_full_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    tracing::info!("{max} probe connections are open (max_connections); new ones wait to be accepted");
                    last_full_log = Some(std::time::Instant::now());
                }
                tokio::select! {
                    p = slots.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                    _ = stop.changed() => return,
                }
            }
        };
        let stream = loop {
            let mut ready = tokio::select! {
                r = listener.readable() => match r {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!("the probe socket failed: {e}");
                        return;
                    }
                },
                _ = stop.changed() => return,
            };
            match ready.try_io(|l| l.get_ref().accept()) {
                Ok(Ok((s, _))) => break s,
                Ok(Err(e)) => {
                    // EMFILE and friends: the sender stays in the backlog;
                    // wait a little for a descriptor instead of spinning.
                    tracing::warn!("accept failed: {e}; trying again shortly");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(_would_block) => {}
            }
        };
        let sender = Sender { submit: submit.clone(), budget: budget.clone() };
        let stream = match take_legacy(stream, &shared, &sender, &mut scratch).await {
            Taken::Submitted(stream, ack) => {
                let _ = close_tx.send(Closing { ack, stream, permit });
                continue;
            }
            Taken::Done => continue,
            Taken::Not(stream, buf) => (stream, buf),
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let (stream, buf) = stream;
            match UnixStream::from_std(stream) {
                Ok(stream) => {
                    if let Err(e) = connection(stream, buf, &shared, sender).await {
                        tracing::debug!("probe connection ended: {e}");
                    }
                }
                Err(e) => tracing::warn!("cannot serve a probe connection: {e}"),
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

const CLOSING: &str = "the collector is shutting down";

/// Hands submissions to the commit stage within the shared byte budget.
struct Sender {
    submit: crate::pipeline::SubmitTx,
    budget: Arc<Semaphore>,
}

impl Sender {
    /// Submits `records`; the receiver of their acks. The budget is held by
    /// the submission and given back when the commit stage is done with it.
    async fn send(&self, records: Vec<Incoming>, uid: u32, pid: u32) -> Result<oneshot::Receiver<Vec<Ack>>, ConnError> {
        let bytes: usize = records.iter().map(|r| r.size as usize).sum();
        let permits = bytes.clamp(1, INFLIGHT_BYTES) as u32;
        let budget = self.budget.clone().acquire_many_owned(permits).await.map_err(|_| ConnError::Closing)?;
        let (tx, rx) = oneshot::channel();
        self.submit
            .send(Submission { records, uid, pid, reply: tx, budget: Some(budget) })
            .await
            .map_err(|_| ConnError::Closing)?;
        Ok(rx)
    }
}

/// Reads more into `buf` within `idle`; the byte count (0: end of stream).
async fn read_more<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    want: usize,
    idle: Duration,
) -> Result<usize, ConnError> {
    buf.reserve(want.saturating_sub(buf.len()).max(1));
    match tokio::time::timeout(idle, r.read_buf(buf)).await {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(ConnError::Idle(idle)),
    }
}

/// Reads until `buf` holds at least `n` bytes.
async fn read_at_least<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    n: usize,
    idle: Duration,
) -> Result<(), ConnError> {
    while buf.len() < n {
        if read_more(r, buf, n, idle).await? == 0 {
            return Err(ConnError::Protocol("connection closed in the middle of a frame".into()));
        }
    }
    Ok(())
}

async fn connection(stream: UnixStream, mut buf: BytesMut, shared: &Shared, sender: Sender) -> Result<(), ConnError> {
    let cfg = shared.config();
    let (uid, pid) = match stream.peer_cred() {
        Ok(c) => (c.uid(), c.pid().unwrap_or(0).max(0) as u32),
        Err(_) => (u32::MAX, 0),
    };
    let (mut rd, wr) = stream.into_split();
    let stats = &shared.stats;
    buf.reserve(MIN_READ_BUFFER.saturating_sub(buf.len()));
    let first = read_at_least(&mut rd, &mut buf, 4, cfg.idle_timeout).await;
    // A connection that ends before its first byte sent nothing to refuse.
    truncated(stats, !buf.is_empty(), first)?;
    let first = [buf[0], buf[1], buf[2], buf[3]];
    match wire::sniff(first) {
        Framing::Legacy { total_size } => {
            let size = legacy::check_total_size(total_size, cfg.max_legacy_record()).map_err(|e| {
                tracing::warn!("legacy record from uid {uid} pid {pid} refused: {e}");
                stats.refuse(legacy_refusal(&e), 1);
                ConnError::Protocol(e.to_string())
            })?;
            truncated(stats, true, read_at_least(&mut rd, &mut buf, size, cfg.idle_timeout).await)?;
            let incoming = legacy_incoming(&buf[..size], &cfg, uid, pid, stats)?;
            let acks = sender.send(vec![incoming], uid, pid).await?;
            match acks.await.map_err(|_| ConnError::Closing)?.pop() {
                // Counted and journaled by the commit stage, which also logs
                // (a storm of drops is not a storm of log lines).
                Some(Ack::Rejected { reason }) => {
                    tracing::debug!("legacy record from uid {uid} pid {pid} not kept: {reason}")
                }
                Some(Ack::Accepted { .. }) => {}
                None => return Err(ConnError::Closing),
            }
            // Closing tells the legacy sender its record was read.
            drop(wr);
            Ok(())
        }
        Framing::Native => native_conn(rd, wr, buf, &cfg, uid, pid, sender, stats).await,
    }
}

/// Bytes read from a newly accepted socket before deciding how to serve
/// it: a legacy record of the usual size fits.
const FAST_READ: usize = 16 * 1024;

/// What [`take_legacy`] did with a new connection.
enum Taken {
    /// A whole legacy record was there and went to the commit stage; the
    /// socket is closed once it is stored (its sender may wait for that).
    Submitted(std::os::unix::net::UnixStream, oneshot::Receiver<Vec<Ack>>),
    /// Refused or ended (counted and logged where it happened).
    Done,
    /// To be served by a task (native framing, or not all there yet), with
    /// the bytes already read.
    Not(std::os::unix::net::UnixStream, BytesMut),
}

/// The sender's uid and pid of a unix socket.
fn peer_of(stream: &std::os::unix::net::UnixStream) -> (u32, u32) {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred { pid: 0, uid: u32::MAX, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED fills a ucred of the given size on a socket we own.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        (cred.uid, cred.pid.max(0) as u32)
    } else {
        (u32::MAX, 0)
    }
}

/// Reads what a new connection already sent; when it is a whole legacy
/// record (the C library connects, writes one record and closes, so it
/// usually is), decodes and submits it right here: no task, no event-loop
/// registration, no second read. Anything else goes to [`connection`].
async fn take_legacy(
    stream: std::os::unix::net::UnixStream,
    shared: &Shared,
    sender: &Sender,
    scratch: &mut [u8],
) -> Taken {
    use std::io::Read;
    if let Err(e) = stream.set_nonblocking(true) {
        tracing::debug!("probe connection dropped: {e}");
        return Taken::Done;
    }
    let n = match (&stream).read(scratch) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(e) => {
            tracing::debug!("probe connection ended: {e}");
            return Taken::Done;
        }
    };
    let got = &scratch[..n];
    let Some(Framing::Legacy { total_size }) = got.get(..4).map(|h| wire::sniff([h[0], h[1], h[2], h[3]])) else {
        return Taken::Not(stream, BytesMut::from(got));
    };
    let cfg = shared.config();
    let size = match legacy::check_total_size(total_size, cfg.max_legacy_record()) {
        Ok(size) if size <= n => size,
        // Not all there yet, or too large (the task refuses it, counting).
        _ => return Taken::Not(stream, BytesMut::from(got)),
    };
    let (uid, pid) = peer_of(&stream);
    let incoming = match legacy_incoming(&got[..size], &cfg, uid, pid, &shared.stats) {
        Ok(i) => i,
        Err(_) => return Taken::Done,
    };
    match sender.send(vec![incoming], uid, pid).await {
        Ok(ack) => Taken::Submitted(stream, ack),
        Err(_) => Taken::Done,
    }
}

/// A legacy connection whose record is on its way to the spool.
struct Closing {
    ack: oneshot::Receiver<Vec<Ack>>,
    stream: std::os::unix::net::UnixStream,
    permit: tokio::sync::OwnedSemaphorePermit,
}

/// Closes each legacy connection taken by [`take_legacy`] once its record
/// is stored (or refused: the commit stage counts, journals and logs that),
/// giving its connection slot back.
async fn close_when_stored(mut rx: mpsc::UnboundedReceiver<Closing>) {
    let mut waiting = futures_util::stream::FuturesUnordered::new();
    loop {
        tokio::select! {
            c = rx.recv() => match c {
                Some(Closing { ack, stream, permit }) => waiting.push(async move {
                    let _ = ack.await;
                    drop(stream);
                    drop(permit);
                }),
                None => break,
            },
            Some(()) = futures_util::StreamExt::next(&mut waiting), if !waiting.is_empty() => {}
        }
    }
    while futures_util::StreamExt::next(&mut waiting).await.is_some() {}
}

/// Decodes one legacy record (its `size` bytes) and checks its payload
/// against `record_max_bytes`; a refusal is counted and logged.
fn legacy_incoming(
    bytes: &[u8],
    cfg: &crate::config::Config,
    uid: u32,
    pid: u32,
    stats: &Stats,
) -> Result<Incoming, ConnError> {
    let rec = legacy::decode(bytes).map_err(|e| {
        tracing::warn!("legacy record from uid {uid} pid {pid} refused: {e}");
        stats.refuse(legacy_refusal(&e), 1);
        ConnError::Protocol(e.to_string())
    })?;
    if let Some(cfgp) = &rec.config_path {
        tracing::debug!("legacy probe named config {cfgp}; the collector's own configuration applies");
    }
    if let Err(e) = rec.record.payload.check_limit(cfg.record_max_bytes) {
        tracing::warn!("legacy record from uid {uid} pid {pid} refused: {e}");
        stats.refuse(Refusal::PayloadTooLarge, 1);
        return Err(ConnError::Protocol(e.to_string()));
    }
    Ok(Incoming { record: rec.record, size: bytes.len() as u64 })
}

/// Counts a read that failed in the middle of a record (`started`) as a
/// [`Refusal::Truncated`].
fn truncated<T>(stats: &Stats, started: bool, r: Result<T, ConnError>) -> Result<T, ConnError> {
    if r.is_err() && started {
        stats.refuse(Refusal::Truncated, 1);
    }
    r
}

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

/// The refusal a legacy decoding error is counted as.
fn legacy_refusal(e: &legacy::LegacyError) -> Refusal {
    use legacy::LegacyError as E;
    match e {
        E::TooLarge { .. } => Refusal::FrameTooLarge,
        E::FormatVersion(_)
        | E::NotNumber { .. }
        | E::Classification(_)
        | E::Severity(_)
        | E::EventId(_)
        | E::MachineId(_)
        | E::Text { .. } => Refusal::InvalidField,
        E::SizeMismatch { .. }
        | E::TooShort(_)
        | E::BadConfigPath
        | E::HeaderSize { .. }
        | E::MissingHeader { .. }
        | E::WrongHeader { .. }
        | E::ExtraHeaderData
        | E::PayloadNotTerminated
        | E::PayloadNul(_) => Refusal::Malformed,
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
    Ok(Frame::Record(Incoming { record, size: (4 + body.len()) as u64 }))
}

#[allow(clippy::too_many_arguments)]
async fn native_conn(
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
                        if let Err(e) = submit(&sender, &depth, &otx, std::mem::take(&mut batch), uid, pid).await {
                            break 'conn Err(e);
                        }
                    }
                }
                Ok(Frame::Refused(reason)) => {
                    if let Err(e) = submit(&sender, &depth, &otx, std::mem::take(&mut batch), uid, pid).await {
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
        if let Err(e) = submit(&sender, &depth, &otx, batch, uid, pid).await {
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
    uid: u32,
    pid: u32,
) -> Result<(), ConnError> {
    if batch.is_empty() {
        return Ok(());
    }
    let n = batch.len();
    depth.acquire_many(n as u32).await.map_err(|_| ConnError::Closing)?.forget();
    match sender.send(batch, uid, pid).await {
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
