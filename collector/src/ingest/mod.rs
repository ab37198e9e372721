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

use bytes::BytesMut;
use telemetry::wire::native::Ack;
use telemetry::wire::{self, legacy, Framing};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{oneshot, Semaphore};

use crate::state::State;
use crate::stats::{Refusal, Stats};
use crate::store::{Incoming, Reply, Submission};

mod burst;
mod legacy_conn;
mod native_conn;

use burst::{take, Burst, Taken, FAST_READ};
use legacy_conn::{legacy_incoming, legacy_refusal};
use native_conn::native_conn;

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
    shared: Arc<State>,
    submit: crate::store::SubmitTx,
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
    let sender = Sender { queue: submit, budget: Arc::new(Semaphore::new(INFLIGHT_BYTES)), shared: shared.clone() };
    let mut scratch = vec![0u8; FAST_READ];
    let mut burst = Burst::default();
    let mut last_full_log: Option<std::time::Instant> = None;
    loop {
        // A free slot first, then accept: at the cap, senders wait in the
        // listen backlog.
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // The burst's connections hold slots until stored.
                burst.submit(&sender).await;
                if last_full_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    tracing::info!("{max} probe connections are open (max_connections); new ones wait to be accepted");
                    last_full_log = Some(std::time::Instant::now());
                }
                tokio::select! {
                    p = slots.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                    _ = stop.changed() => return drain(&listener, &shared, &sender, &mut scratch, burst).await,
                }
            }
        };
        let stream = loop {
            // Accept while connections are there (the listener stays ready
            // until an accept finds none); once none is, submit the legacy
            // records taken so far and wait for the next.
            let mut ready = tokio::select! {
                r = listener.readable() => match r {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!("the probe socket failed: {e}");
                        return;
                    }
                },
                _ = stop.changed() => return drain(&listener, &shared, &sender, &mut scratch, burst).await,
            };
            match ready.try_io(|l| l.get_ref().accept()) {
                Ok(Ok((s, _))) => break s,
                Ok(Err(e)) => {
                    burst.submit(&sender).await;
                    accept_failed(e).await;
                }
                // None waits (readiness cleared).
                Err(_would_block) => burst.submit(&sender).await,
            }
        };
        let (stream, buf, permit) = match take(stream, permit, &shared, &mut scratch) {
            Taken::Whole(conn, records) => {
                burst.push(conn, records);
                if burst.is_full() {
                    burst.submit(&sender).await;
                }
                continue;
            }
            Taken::Done => continue,
            Taken::Not(stream, buf, permit) => (stream, buf, permit),
        };
        let shared = shared.clone();
        let sender = sender.clone();
        tokio::spawn(async move {
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

/// An accept that failed for want of a descriptor (or memory): the sender
/// stays in the backlog; wait a little instead of spinning.
async fn accept_failed(e: std::io::Error) {
    tracing::warn!("accept failed: {e}; trying again shortly");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// How long a stopping collector keeps taking the legacy records already
/// waiting in the listen backlog.
const DRAIN_FOR: Duration = Duration::from_secs(2);

/// On stop: takes the records already sent by connections still in the
/// listen backlog (a legacy sender wrote its record and will never learn
/// otherwise), within [`DRAIN_FOR`], and submits them. At most a burst of
/// them is open at once, whatever the connection cap (open connections may
/// hold every slot). Anything not whole is closed unread (a native sender
/// sees no ack and keeps its records).
async fn drain(
    listener: &AsyncFd<std::os::unix::net::UnixListener>,
    shared: &State,
    sender: &Sender,
    scratch: &mut [u8],
    mut burst: Burst,
) {
    let until = tokio::time::Instant::now() + DRAIN_FOR;
    let slots = Arc::new(Semaphore::new(burst::BURST_RECORDS));
    let mut taken = 0usize;
    loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                burst.submit(sender).await;
                match tokio::time::timeout_at(until, slots.clone().acquire_owned()).await {
                    Ok(Ok(p)) => p,
                    _ => break,
                }
            }
        };
        let stream = match listener.get_ref().accept() {
            Ok((s, _)) => s,
            Err(_) => break,
        };
        if let Taken::Whole(conn, records) = take(stream, permit, shared, scratch) {
            taken += records.len();
            burst.push(conn, records);
            if burst.is_full() {
                burst.submit(sender).await;
            }
        }
        if tokio::time::Instant::now() >= until {
            break;
        }
    }
    burst.submit(sender).await;
    if taken > 0 {
        tracing::info!("took {taken} record(s) from connections still waiting in the listen backlog");
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
#[derive(Clone)]
struct Sender {
    queue: crate::store::SubmitTx,
    budget: Arc<Semaphore>,
    /// For commits made on the pipeline thread (see `Burst::submit`).
    shared: Arc<State>,
}

impl Sender {
    /// Submits `records`; the receiver of their acks.
    async fn send(&self, records: Vec<Incoming>) -> Result<oneshot::Receiver<Vec<Ack>>, ConnError> {
        let (tx, rx) = oneshot::channel();
        self.submit(records, Reply::Acks(tx)).await?;
        Ok(rx)
    }

    /// Submits `records`, answered by `reply`. The budget is held by the
    /// submission and given back when the commit stage is done with it.
    async fn submit(&self, records: Vec<Incoming>, reply: Reply) -> Result<(), ConnError> {
        let bytes: usize = records.iter().map(|r| r.size as usize).sum();
        let permits = bytes.clamp(1, INFLIGHT_BYTES) as u32;
        let budget = self.budget.clone().acquire_many_owned(permits).await.map_err(|_| ConnError::Closing)?;
        self.queue.send(Submission { records, reply, budget: Some(budget) }).await.map_err(|_| ConnError::Closing)
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

async fn connection(stream: UnixStream, mut buf: BytesMut, shared: &State, sender: Sender) -> Result<(), ConnError> {
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
            let acks = sender.send(vec![incoming]).await?;
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

/// Counts a read that failed in the middle of a record (`started`) as a
/// [`Refusal::Truncated`].
fn truncated<T>(stats: &Stats, started: bool, r: Result<T, ConnError>) -> Result<T, ConnError> {
    if r.is_err() && started {
        stats.refuse(Refusal::Truncated, 1);
    }
    r
}
