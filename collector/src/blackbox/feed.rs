//! The blackbox socket (`state_dir/blackbox.sock`, mode 0600): where
//! eventprobe streams exec, exit, fatal-signal and OOM entries (protocol:
//! [`telemetry::blackbox`]). On connect, and whenever recording starts or
//! stops, the collector sends the [`Control`] state; each [`Feed`] line is
//! written to the recording (argv scrubbed as payloads are, a `seq`
//! already written for its `source` skipped), and once the lines read so
//! far are written an `{"ack":N}` goes back. Only root's (or the
//! collector's own user's) connections are served.

use std::sync::Arc;

use telemetry::blackbox::{Control, Feed};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use crate::state::State;

/// The longest line read (a bigger one ends the connection).
pub const MAX_LINE: u64 = 1 << 20;

/// Serves the blackbox socket until `stop`.
pub async fn serve(listener: UnixListener, shared: Arc<State>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    tokio::spawn(connection(stream, shared.clone()));
                }
                Err(e) => {
                    tracing::warn!("blackbox socket: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => return,
        }
    }
}

fn line_of(c: &Control) -> String {
    let mut s = serde_json::to_string(c).unwrap_or_default();
    s.push('\n');
    s
}

async fn connection(stream: UnixStream, shared: Arc<State>) {
    match stream.peer_cred() {
        Ok(c) if crate::control::trusted_peer(c.uid()) => {}
        Ok(c) => {
            tracing::warn!("blackbox socket: refusing uid {} (root only)", c.uid());
            return;
        }
        Err(e) => {
            tracing::warn!("blackbox socket: no peer credentials: {e}");
            return;
        }
    }
    let (rd, mut wr) = stream.into_split();
    let mut rd = tokio::io::BufReader::new(rd);
    let mut ctl = shared.blackbox.subscribe();
    let first = line_of(&ctl.borrow_and_update());
    if wr.write_all(first.as_bytes()).await.is_err() {
        return;
    }
    // Bytes of the line being read (read_until keeps them across a
    // cancelled select! branch).
    let mut line: Vec<u8> = Vec::new();
    let mut unacked: Option<u64> = None;
    // Acks only go forward, on one connection and across them.
    let mut acked = 0u64;
    let mut source: Option<String> = None;
    let mut bad = 0u64;
    loop {
        let limit = MAX_LINE.saturating_sub(line.len() as u64).max(1);
        let mut limited = (&mut rd).take(limit);
        let read = tokio::select! {
            r = ctl.changed() => {
                drop(limited);
                if r.is_err() {
                    return;
                }
                let l = line_of(&ctl.borrow_and_update());
                if wr.write_all(l.as_bytes()).await.is_err() {
                    return;
                }
                continue;
            }
            r = limited.read_until(b'\n', &mut line) => r,
        };
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) if !line.ends_with(b"\n") && line.len() as u64 >= MAX_LINE => {
                tracing::warn!("blackbox socket: a line over {MAX_LINE} bytes; closing the connection");
                return;
            }
            // The rest of the line comes with the next read.
            Ok(_) if !line.ends_with(b"\n") => continue,
            Ok(_) => {}
        }
        match serde_json::from_slice::<Feed>(&line) {
            Ok(feed) => {
                let seq = feed.seq;
                if source.as_deref() != Some(feed.source.as_str()) {
                    source = Some(feed.source.clone());
                }
                let cfg = shared.config();
                let scrub = shared.policy(&cfg).scrub;
                // File writes (and, when a segment fills, its fsync): off the
                // runtime's event loop.
                let fed = tokio::task::block_in_place(|| shared.blackbox.feed(feed, scrub.then_some(&shared.scrubber)));
                if let Err(e) = fed {
                    // Not acknowledged: eventprobe sends it again after
                    // reconnecting.
                    tracing::error!("blackbox: cannot write eventprobe's entry {seq}: {e}; closing the connection");
                    return;
                }
                unacked = Some(unacked.map_or(seq, |u| u.max(seq)));
            }
            Err(e) => {
                bad += 1;
                if bad.is_power_of_two() {
                    tracing::warn!("blackbox socket: {bad} line(s) that are not feed entries, e.g.: {e}");
                }
            }
        }
        line.clear();
        // Everything read so far is written: acknowledge it.
        if rd.buffer().is_empty() {
            // Lines sent again after a reconnection that were written
            // before it: the ack covers what the recording holds.
            let held = source.as_deref().and_then(|s| shared.blackbox.last_seq(s)).unwrap_or(0);
            if let Some(n) = unacked.take().map(|n| n.max(held)).filter(|&n| n > acked) {
                if wr.write_all(line_of(&Control::Ack { ack: n }).as_bytes()).await.is_err() {
                    return;
                }
                acked = n;
            }
        }
    }
}
