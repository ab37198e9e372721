//! Legacy connections: the original library's one record per connection,
//! taken in the accept loop when it is all there (see [`take_legacy`]).

use bytes::BytesMut;
use telemetry::wire::native::Ack;
use telemetry::wire::{self, legacy, Framing};
use tokio::sync::{mpsc, oneshot};

use super::{ConnError, Sender};
use crate::pipeline::{Incoming, Shared};
use crate::stats::{Refusal, Stats};

/// Bytes read from a newly accepted socket before deciding how to serve
/// it: a legacy record of the usual size fits.
pub(super) const FAST_READ: usize = 16 * 1024;

/// What [`take_legacy`] did with a new connection.
pub(super) enum Taken {
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
pub(super) fn peer_of(stream: &std::os::unix::net::UnixStream) -> (u32, u32) {
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
pub(super) async fn take_legacy(
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
pub(super) struct Closing {
    pub(super) ack: oneshot::Receiver<Vec<Ack>>,
    pub(super) stream: std::os::unix::net::UnixStream,
    pub(super) permit: tokio::sync::OwnedSemaphorePermit,
}

/// Closes each legacy connection taken by [`take_legacy`] once its record
/// is stored (or refused: the commit stage counts, journals and logs that),
/// giving its connection slot back.
pub(super) async fn close_when_stored(mut rx: mpsc::UnboundedReceiver<Closing>) {
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
pub(super) fn legacy_incoming(
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

/// The refusal a legacy decoding error is counted as.
pub(super) fn legacy_refusal(e: &legacy::LegacyError) -> Refusal {
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
