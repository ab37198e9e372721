//! # telem-collector: the collector daemon of the telemetrics suite
//!
//! One process (the original had two) between the probes and the backend.
//! Each stage is its own module; stages talk through bounded queues, so a
//! slow stage pushes back on the one before it instead of growing memory.
//!
//! ```text
//!  probes ──unix socket (socket_path or systemd LISTEN_FDS)──┐
//!                                                            ▼
//!  ingest      native (prefix, Hello, frames, Acks) | legacy (one record, no reply)
//!    │ Submission = the frames of one read   (frame size, idle timeout, max_connections,
//!    │                                        4096 unacked per connection, 2 MiB in flight)
//!    ▼
//!  pipeline    committer threads, group commit:
//!    │           consent   -> local-only? (DO_NOT_TRACK / airgap / no server /
//!    │                        delivery off / not opted in / debug); scrub?
//!    │           privacy   -> host facts per privacy_level, payload scrubbed
//!    │           ratelimit -> record + byte windows (monotonic), spool or drop
//!    │           spool     -> one block per batch, written in place: write, fdatasync ==> Acks
//!    │           journal   -> one JSON line per record (queued lines borrow the record;
//!    │                        one writer: group commit, lazy fdatasync),
//!    │                        pruned by local_retention_days / _records
//!    ▼
//!  delivery    FIFO from the spool, v2/v3 (identity stamps the machine id), over
//!    │         transport: HTTP/1.1 keep-alive, pipelined, rustls; 2xx delivered,
//!    │         408/429/5xx/errors backoff+retry, other 4xx rejected-by-server;
//!    │         fates appended to the journal
//!    ▼
//!  backend                 control: status / flush / reload / consent for telemctl
//!                          (reload and consent answer once in force: delivery
//!                          writes under the consent gate, see Shared::consent_changed)
//! ```
//!
//! `main` of both binaries is thin: `telem-collector` calls [`daemon::run`],
//! `telemctl` uses [`control`], [`journal::read`], [`consent`], [`preview`]
//! (the requests delivery would send, built by [`delivery::describe`]) and
//! [`service`]. Privacy: docs/PRIVACY.md.

pub mod config;
pub mod consent;
pub mod control;
pub mod crash;
pub mod daemon;
pub mod delivery;
pub mod identity;
pub mod ingest;
pub mod journal;
pub mod pipeline;
pub mod preview;
pub mod ratelimit;
pub mod service;
pub mod spool;
pub mod stats;
pub mod transport;

pub use config::Config;

/// Sets up `tracing` output on stderr (RUST_LOG overrides `default`).
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}
