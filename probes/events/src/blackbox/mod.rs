//! The black box's feed: eventprobe's process events streamed to the
//! collector's recorder over the blackbox socket
//! (`state_dir/blackbox.sock`, protocol in `telemetry::blackbox`).
//!
//! ```text
//!  collector ──{"recording":true|false}──▶ feed ──▶ BlackboxSwitch: FLAG_BLACKBOX in CONFIG
//!  kernel ── ExecBlackboxEvent, ProcessExitEvent ──▶ Recorder ─convert─▶ Outbox ─▶ feed ──Feed lines──▶ collector
//!            (and, while recording, fatal signals, OOM kills)     ▲ seq, kept until {"ack":N}
//!  LOST map growth (every second) ──▶ Gap entries ────────────────┘
//! ```
//!
//! - The connection is made at start and again every second while it
//!   cannot be; after each (re)connection every entry not acknowledged is
//!   sent again, in order (the collector skips a `seq` it already wrote).
//! - The feed holds every command line of the machine: it goes only to a
//!   socket served by root (or by eventprobe's own user), checked with
//!   `SO_PEERCRED` at each connection.
//! - Recording is what the collector last said: while the connection is
//!   down the kernel flag stays as it was, so a collector restart in the
//!   middle of a recording loses nothing (the entries wait in the outbox).
//! - The outbox is bounded (see [`outbox`]); what it must drop becomes a
//!   `Gap`, as do the kernel side's ring-buffer losses.
//! - Entries are written in batches: the reader drains the ring on a
//!   timer or when woken (the kernel side wakes it when the ring is an
//!   eighth full), and one write takes everything queued.

pub mod clock;
pub mod convert;
pub mod outbox;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use telemetry::blackbox::{Control, Entry};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::Notify;

use crate::event::{BlackboxExec, Event, ProcessEnd};
use crate::loader::{BlackboxSwitch, Lost};
use convert::Converter;
use outbox::{Outbox, OutboxStats, MAX_UNACKED, MAX_UNACKED_BYTES};

/// How long to wait before connecting again.
pub const RECONNECT: Duration = Duration::from_secs(1);
/// Most bytes written at once.
const BATCH_BYTES: usize = 256 * 1024;
/// Longest control line accepted from the collector.
const MAX_CONTROL_LINE: usize = 64 * 1024;

/// A random hex id for this run's stream (`Feed::source`).
pub fn new_source() -> String {
    let mut b = [0u8; 8];
    // SAFETY: getrandom(2) into a buffer on this stack of the given length.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        // Not expected on Linux >= 3.17; time and pid still tell runs apart.
        let t = clock::boot_ns() ^ (u64::from(std::process::id()) << 40);
        b = t.to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What the feed task and the event reader share.
struct Shared {
    outbox: Mutex<Outbox>,
    notify: Notify,
    recording: AtomicBool,
}

impl Shared {
    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The connection to the collector's blackbox socket (a tokio task).
#[derive(Clone)]
pub struct Feed {
    shared: Arc<Shared>,
}

impl Feed {
    /// Starts the feed's task on the current tokio runtime: it connects
    /// to `path` and sets the kernel flag through `switch` as the
    /// collector says.
    pub fn start(path: PathBuf, switch: BlackboxSwitch) -> Feed {
        let shared = Arc::new(Shared {
            outbox: Mutex::new(Outbox::new(new_source(), MAX_UNACKED, MAX_UNACKED_BYTES)),
            notify: Notify::new(),
            recording: AtomicBool::new(false),
        });
        tracing::info!("blackbox: feed {} to {}", shared.outbox().source(), path.display());
        tokio::spawn(run(path, shared.clone(), switch));
        Feed { shared }
    }

    /// Whether the collector last said a recording runs.
    pub fn recording(&self) -> bool {
        self.shared.recording.load(Ordering::Relaxed)
    }

    /// Queues an entry for the collector.
    pub fn push(&self, entry: Entry) {
        self.shared.outbox().push(entry);
        self.shared.notify.notify_one();
    }

    pub fn stats(&self) -> OutboxStats {
        self.shared.outbox().stats()
    }

    /// Waits (at most `timeout`) until the collector acknowledged every
    /// entry (at exit).
    pub async fn flush(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.shared.outbox().is_drained() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn run(path: PathBuf, shared: Arc<Shared>, mut switch: BlackboxSwitch) {
    let mut warned = false;
    loop {
        match UnixStream::connect(&path).await {
            Ok(stream) => {
                // Every command line of the machine goes there: only to a
                // collector of root's (or of our own user).
                let refused = match stream.peer_cred() {
                    Ok(c) if peer_allowed(c.uid()) => None,
                    Ok(c) => Some(format!("it is served by uid {} (not root)", c.uid())),
                    Err(e) => Some(format!("cannot tell who serves it ({e})")),
                };
                if let Some(why) = refused {
                    if !warned {
                        tracing::error!("blackbox: sending nothing to {}: {why}; trying every second", path.display());
                        warned = true;
                    }
                    drop(stream);
                    tokio::time::sleep(RECONNECT).await;
                    continue;
                }
                warned = false;
                tracing::info!("blackbox: connected to {}", path.display());
                let why = serve(stream, &shared, &mut switch).await;
                tracing::info!(
                    "blackbox: connection to {} ended ({why}); {} entries wait for it",
                    path.display(),
                    shared.outbox().unacked()
                );
            }
            Err(e) => {
                if !warned {
                    tracing::info!(
                        "blackbox: cannot connect to {} ({e}): no recording until the collector serves it; trying every second",
                        path.display()
                    );
                    warned = true;
                }
            }
        }
        tokio::time::sleep(RECONNECT).await;
    }
}

/// Whether a collector running as `uid` may have the feed: root, or the
/// user eventprobe runs as.
fn peer_allowed(uid: u32) -> bool {
    // SAFETY: geteuid has no preconditions.
    uid == 0 || uid == unsafe { libc::geteuid() }
}

/// One connection: control lines in, entry lines out, until either side
/// fails; returns why.
async fn serve(stream: UnixStream, shared: &Shared, switch: &mut BlackboxSwitch) -> String {
    shared.outbox().rewind();
    let (rd, mut wr) = stream.into_split();
    let reading = async {
        let mut rd = BufReader::new(rd);
        let mut line = Vec::new();
        loop {
            line.clear();
            match (&mut rd).take(MAX_CONTROL_LINE as u64).read_until(b'\n', &mut line).await {
                Ok(0) => return "closed by the collector".to_string(),
                Ok(_) if line.last() != Some(&b'\n') && line.len() >= MAX_CONTROL_LINE => {
                    return format!("the collector sent a line longer than {MAX_CONTROL_LINE} bytes");
                }
                Ok(_) => control(&line, shared, switch),
                Err(e) => return format!("read failed: {e}"),
            }
        }
    };
    let writing = async {
        loop {
            let batch = shared.outbox().take_batch(BATCH_BYTES);
            match batch {
                Some(b) => {
                    if let Err(e) = wr.write_all(&b).await {
                        return format!("write failed: {e}");
                    }
                }
                None => shared.notify.notified().await,
            }
        }
    };
    tokio::select! {
        why = reading => why,
        why = writing => why,
    }
}

/// One line from the collector.
fn control(line: &[u8], shared: &Shared, switch: &mut BlackboxSwitch) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim();
    if text.is_empty() {
        return;
    }
    match serde_json::from_str::<Control>(text) {
        Ok(Control::Ack { ack }) => shared.outbox().ack(ack),
        Ok(Control::State { recording, id }) => {
            let was = shared.recording.swap(recording, Ordering::Relaxed);
            if let Err(e) = switch.set(recording) {
                tracing::error!(
                    "blackbox: cannot turn the kernel side's events {}: {e}",
                    if recording { "on" } else { "off" }
                );
            }
            if was != recording {
                let id = id.as_deref().unwrap_or("?");
                if recording {
                    tracing::info!("blackbox: recording {id}: sending every exec and exit");
                } else {
                    tracing::info!("blackbox: not recording");
                }
            }
            shared.notify.notify_one();
        }
        Err(e) => tracing::warn!(
            "blackbox: ignoring a line from the collector that is not a control message ({e}): {text:.200}"
        ),
    }
}

/// The kinds whose kernel-side losses become gaps, with their names.
fn lost_kinds(l: &Lost) -> [(u64, &'static str, bool); 4] {
    // (count, name, whether it is a black-box event: a gap whether or not
    // the collector says it records)
    [(l.bb_exec, "exec", true), (l.bb_exit, "exit", true), (l.fatal, "fatal signal", false), (l.oom, "oom kill", false)]
}

/// Turns the reader's events into entries for the feed.
pub struct Recorder {
    feed: Feed,
    conv: Converter,
    last_lost: Lost,
}

impl Recorder {
    pub fn new(feed: Feed, cgroup_root: PathBuf) -> Recorder {
        Recorder { feed, conv: Converter::new(cgroup_root), last_lost: Lost::default() }
    }

    /// An exec seen while the kernel flag was on.
    pub fn exec(&mut self, e: BlackboxExec) {
        let entry = self.conv.exec(e);
        self.feed.push(entry);
    }

    /// A process's end seen while the kernel flag was on.
    pub fn exit(&mut self, x: &ProcessEnd) {
        if let Some(entry) = self.conv.exit(x) {
            self.feed.push(entry);
        }
    }

    /// Any other event: fatal signals and OOM kills are entries while the
    /// collector says it records.
    pub fn event(&mut self, ev: &Event) {
        if !self.feed.recording() {
            return;
        }
        let entry = match ev {
            Event::Fatal(f) => self.conv.fatal(f),
            Event::Oom(o) => self.conv.oom(o),
            _ => return,
        };
        self.feed.push(entry);
    }

    /// Every second: the clock offset, and kernel-side losses as gaps.
    pub fn tick(&mut self, lost: &Lost) {
        self.conv.refresh_clock();
        let recording = self.feed.recording();
        for ((now, name, bb), (before, _, _)) in lost_kinds(lost).into_iter().zip(lost_kinds(&self.last_lost)) {
            if now > before && (bb || recording) {
                let reason = format!("kernel ring buffer full ({name}); raise eventprobe's --ring-bytes");
                self.feed.push(self.conv.gap(now - before, reason));
            }
        }
        self.last_lost = *lost;
    }
}

/// The blackbox socket of a state directory.
pub fn socket_in(state_dir: &Path) -> PathBuf {
    state_dir.join(telemetry::blackbox::SOCKET_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_random_hex() {
        let (a, b) = (new_source(), new_source());
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn only_root_or_ourselves_get_the_feed() {
        assert!(peer_allowed(0));
        // SAFETY: geteuid has no preconditions.
        assert!(peer_allowed(unsafe { libc::geteuid() }));
        // SAFETY: as above.
        if unsafe { libc::geteuid() } == 0 {
            assert!(!peer_allowed(65534));
        }
    }

    #[test]
    fn losses_are_named_per_kind() {
        let l = Lost { bb_exec: 3, fatal: 1, ..Lost::default() };
        let k = lost_kinds(&l);
        assert_eq!(k[0], (3, "exec", true));
        assert_eq!(k[2], (1, "fatal signal", false));
        assert_eq!(socket_in(Path::new("/var/lib/telemetry")), PathBuf::from("/var/lib/telemetry/blackbox.sock"));
    }
}
