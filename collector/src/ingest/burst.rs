//! Connections served whole by the accept loop: a legacy record (the C
//! library connects, writes one record and closes), or a native sender
//! that wrote its prefix and records and shut its side (`client::send_once`:
//! hprobe, telem-record-gen) is usually all there when accepted (a
//! connection accepted the instant its sender connected, before it wrote,
//! gets one `sched_yield` to let the sender run). It is decoded right
//! there (no task, no event-loop registration, no second round trip), and
//! the records of a burst of such connections go to the commit stage as
//! one submission; the commit stage answers each connection (a native
//! sender's hello and acks in one write) and closes it once its records
//! are stored. Anything else goes to a connection task with the bytes read.

use std::io::Read;
use std::os::unix::net::UnixStream;

use bytes::BytesMut;
use telemetry::wire::native::{self, Hello, ServerFrame};
use telemetry::wire::{self, legacy, Framing};
use tokio::sync::OwnedSemaphorePermit;

use super::legacy_conn::legacy_incoming;
use super::Sender;
use crate::state::State;
use crate::store::{Incoming, NativeAnswer, Reply, Submission, Whole};

/// Bytes read from a newly accepted socket before deciding how to serve
/// it: a legacy record of the usual size fits.
pub(super) const FAST_READ: usize = 16 * 1024;
/// Most records gathered from one burst of accepts into one submission,
/// and most bytes (as sent); also the most records one native connection
/// may have for it to be served here.
pub(super) const BURST_RECORDS: usize = 64;
const BURST_BYTES: u64 = 256 * 1024;

/// What [`take`] did with a new connection.
pub(super) enum Taken {
    /// Its records were all there, decoded (a native sender has its hello
    /// already); the connection is answered and closed once they are
    /// stored.
    Whole(Whole, Vec<Incoming>),
    /// Refused or ended (counted and logged where it happened).
    Done,
    /// To be served by a task, with the bytes already read and its slot.
    Not(UnixStream, BytesMut, OwnedSemaphorePermit),
}

/// The sender's uid and pid of a unix socket.
pub(super) fn peer_of(stream: &UnixStream) -> (u32, u32) {
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

/// Reads what a new connection already sent and takes it whole when it
/// can (see the module's doc); `slot` is its connection slot.
pub(super) fn take(stream: UnixStream, slot: OwnedSemaphorePermit, shared: &State, scratch: &mut [u8]) -> Taken {
    if let Err(e) = stream.set_nonblocking(true) {
        tracing::debug!("probe connection dropped: {e}");
        return Taken::Done;
    }
    let mut read = || match (&stream).read(scratch) {
        Ok(n) => Ok(n),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
        Err(e) => Err(e),
    };
    let mut first = read();
    if matches!(first, Ok(0)) {
        // Accepted the instant the sender connected (woken by its
        // connect, often on its CPU, before its write): let it run once.
        std::thread::yield_now();
        first = read();
    }
    let n = match first {
        Ok(n) => n,
        Err(e) => {
            tracing::debug!("probe connection ended: {e}");
            return Taken::Done;
        }
    };
    let got = &scratch[..n];
    let Some(framing) = got.get(..4).map(|h| wire::sniff([h[0], h[1], h[2], h[3]])) else {
        return Taken::Not(stream, BytesMut::from(got), slot);
    };
    let cfg = shared.config();
    match framing {
        Framing::Legacy { total_size } => {
            let size = match legacy::check_total_size(total_size, cfg.max_legacy_record()) {
                Ok(size) if size <= n => size,
                // Not all there yet, or too large (the task refuses it, counting).
                _ => return Taken::Not(stream, BytesMut::from(got), slot),
            };
            let (uid, pid) = peer_of(&stream);
            match legacy_incoming(&got[..size], &cfg, uid, pid, &shared.stats) {
                Ok(i) => Taken::Whole(Whole { stream, slot, native: None }, vec![i]),
                Err(_) => Taken::Done,
            }
        }
        Framing::Native => {
            // Served here only when the sender shut its side after its
            // records (nothing more can come) and every frame is good;
            // anything else (errors included, counted there) is the task's.
            if n == scratch.len() || !at_end(&stream) {
                return Taken::Not(stream, BytesMut::from(got), slot);
            }
            let (uid, pid) = peer_of(&stream);
            let Some(records) = native_records(got, cfg.record_max_bytes, uid, pid) else {
                return Taken::Not(stream, BytesMut::from(got), slot);
            };
            let hello = Hello {
                protocol: native::PROTOCOL_VERSION,
                max_payload: cfg.record_max_bytes.min(u32::MAX as usize) as u32,
            };
            // Sent with the acks, once the records are stored: the sender
            // wrote everything already and waits for both.
            let mut out = Vec::with_capacity(16);
            if native::encode_into(&ServerFrame::Hello(hello), &mut out).is_err() {
                return Taken::Not(stream, BytesMut::from(got), slot);
            }
            let native = Some(NativeAnswer { hello: out, records: records.len() });
            Taken::Whole(Whole { stream, slot, native }, records)
        }
    }
}

/// Whether the peer has shut its writing side (a read finds the end).
fn at_end(stream: &UnixStream) -> bool {
    let mut one = [0u8; 1];
    matches!((&*stream).read(&mut one), Ok(0))
}

/// Every record of a whole native exchange (prefix, then frames filling
/// `bytes` exactly), or `None` when anything is not as it should be.
fn native_records(bytes: &[u8], max_payload: usize, uid: u32, pid: u32) -> Option<Vec<Incoming>> {
    let prefix: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    native::check_prefix(prefix).ok()?;
    let limit = native::max_record_frame(max_payload);
    let mut rest = &bytes[8..];
    let mut hosts = native::HostCache::default();
    let mut records = Vec::new();
    while !rest.is_empty() {
        let (body, used) = native::split_frame(rest, limit).ok()??;
        let record = native::decode_record(body, &mut hosts).ok()?;
        record.payload.check_limit(max_payload).ok()?;
        records.push(Incoming { record, size: (4 + body.len()) as u64, uid, pid });
        if records.len() > BURST_RECORDS {
            return None;
        }
        rest = &rest[used..];
    }
    (!records.is_empty()).then_some(records)
}

/// The records taken by one burst of accepts, on their way to the commit
/// stage as one submission (one hand-over and one wake-up for the burst
/// instead of one per connection).
#[derive(Default)]
pub(super) struct Burst {
    records: Vec<Incoming>,
    conns: Vec<Whole>,
    bytes: u64,
    /// Block scratch space for commits made here.
    body: Vec<u8>,
}

/// Most records a burst may have to be committed on the pipeline thread.
const COMMIT_HERE_RECORDS: usize = 4;

impl Burst {
    /// Whether these records are committed right here, on the pipeline thread,
    /// instead of by a committer thread: a lone record or a few, when no
    /// committer is behind, none of them is synced before its ack
    /// (`spool_sync_severity`: so nothing here waits for the disk, only
    /// for a write to the page cache), and the spool has room to spare
    /// beyond what every committer could reserve meanwhile (a wait for room
    /// here would hold up delivery, which runs on this thread and makes
    /// the room). Saves waking a committer thread, the larger part of what
    /// a lone record costs beyond its own work.
    fn commit_here(&self, sender: &Sender, records: &[Incoming], bytes: u64) -> bool {
        if records.len() > COMMIT_HERE_RECORDS || !sender.queue.is_empty() {
            return false;
        }
        let cfg = sender.shared.config();
        let spare = (crate::store::COMMITTERS * crate::store::MAX_BATCH_BYTES) as u64;
        !records.iter().any(|r| cfg.syncs_before_ack(r.record.severity))
            && sender.shared.spool.has_room(2 * bytes, cfg.spool_max_bytes, spare)
    }

    /// Adds a connection's records.
    pub(super) fn push(&mut self, conn: Whole, records: Vec<Incoming>) {
        self.bytes += records.iter().map(|r| r.size).sum::<u64>();
        self.records.extend(records);
        self.conns.push(conn);
    }

    /// Whether the burst should be submitted before taking more.
    pub(super) fn is_full(&self) -> bool {
        self.records.len() >= BURST_RECORDS || self.bytes >= BURST_BYTES
    }

    /// Hands the records to the commit stage (waiting, within ingest's
    /// byte budget, while the stage is behind); nothing when empty.
    pub(super) async fn submit(&mut self, sender: &Sender) {
        if self.records.is_empty() {
            return;
        }
        let bytes = std::mem::take(&mut self.bytes);
        let records = std::mem::take(&mut self.records);
        let conns = std::mem::take(&mut self.conns);
        if self.commit_here(sender, &records, bytes) {
            let sub = Submission { records, reply: Reply::Whole(conns), budget: None };
            crate::store::commit_batch(&sender.shared, vec![sub], &mut self.body);
            return;
        }
        let n = records.len();
        if let Err(e) = sender.submit(records, Reply::Whole(conns)).await {
            // Only when the collector stops: the senders see their
            // connections closed with the records unanswered.
            tracing::warn!("{n} record(s) not taken: {e}");
        }
    }
}
