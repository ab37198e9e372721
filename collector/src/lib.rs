//! # telem-collector: the collector daemon of the telemetrics suite
//!
//! One process (the original had two) between the probes and the backend.
//! Each stage is its own module; stages talk through bounded queues, so a
//! slow stage pushes back on the one before it instead of growing memory.
//!
//! ```text
//!  probes ──unix socket (socket_path or systemd LISTEN_FDS)──┐
//!                                                            ▼
//!  ingest      native (prefix, Hello, frames, Acks) | legacy (one record, no reply);
//!    │         whole connections taken in the accept loop, a burst per Submission
//!    │         (frame size, idle timeout, max_connections, 4096 unacked per connection,
//!    │          2 MiB in flight)
//!    ▼
//!  decide      consent (local-only or deliver; scrub?), privacy (host facts, scrubbing),
//!    │         rate windows (within / dropped / held), record id  [committer threads; a lone
//!    │         record not synced before its ack: on the pipeline thread]
//!    │         black box, while recording (else one atomic load): ──────► blackbox recorder
//!    │         a crash gets `Recent activity:`, the record an entry        ▲ eventprobe's exec/exit
//!    ▼                                                                     │ (blackbox.sock), readings
//!                                                                          ▼ state_dir/blackbox/<id>/
//!  store       room in the spool (wait while delivery flows), one block per batch:
//!    │         write, fdatasync (severity >= spool_sync_severity; else within 100 ms)
//!    │         ==> answers; journal lines to its one writer thread
//!    ▼
//!  delivery    FIFO from the spool, per-record retries; requests built by `request`
//!    │         (machine id stamped there; also used by preview and `debug`), sent by
//!    │         transport (HTTP/1.1 keep-alive, pipelined, rustls); fates journaled
//!    ▼
//!  backend                 control: status / flush / reload / consent / blackbox for telemctl
//!                          (reload and consent answer once in force: delivery
//!                          writes under the consent gate, see State::consent_changed)
//! ```
//!
//! `main` of both binaries is thin: `telem-collector` calls [`daemon::run`],
//! `telemctl` uses [`control`], [`journal::read`], [`consent`], [`preview`]
//! (the requests delivery would send, built by [`request::describe`]) and
//! [`service`]. Privacy: docs/PRIVACY.md. The black box ([`blackbox`]) sits
//! beside the pipeline: recordings are not records and are never delivered.

pub mod blackbox;
pub mod config;
pub mod consent;
pub mod control;
pub mod crash;
pub mod daemon;
pub mod decide;
pub mod delivery;
pub mod identity;
pub mod ingest;
pub mod journal;
pub mod otlp;
pub mod preview;
pub mod ratelimit;
pub mod request;
pub mod running;
pub mod service;
pub mod spool;
pub mod state;
pub mod stats;
pub mod store;
pub mod transport;

pub use config::Config;

/// Sets up `tracing` output on stderr (RUST_LOG overrides `default`).
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}
