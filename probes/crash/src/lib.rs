//! # crashprobe: the kernel's `core_pattern` crash handler
//!
//! Where it sits in the data flow:
//!
//! ```text
//!  kernel: a process dumps core
//!    │  pipe mode:   core_pattern "|crashprobe -P %P -F %F -d %d -t %t -s %s"
//!    │  socket mode: core_pattern "@@/run/telemetrics/crash.sock" (or "@...")
//!    │               -> crashprobe --serve; with "@@" the kernel asks first
//!    │               and the governor may refuse the core (request.rs)
//!    ▼  the core as a stream (never written to disk)
//!  core::read_core ── notes (threads' registers, siginfo, auxv, NT_FILE) and
//!    │                the stacks' bytes only; the rest is discarded as it passes
//!    ▼
//!  unwind (probes/unwind) ── CFI / frame pointers / scan, addr2line symbols,
//!    │                       module files opened via /proc/PID/map_files
//!    ▼
//!  signature, governor ── per-signature burst per window; repeats counted,
//!    │                     one crash/repeated record per window
//!    ▼
//!  report ── payload v1 (the original's text) or v2 (JSON), class, severity,
//!    │       event id = telemetry::crash_id::crash_event_id(boot id, pid, start time)
//!    ▼  telemetry::client::Client
//!  telem-collector
//! ```
//!
//! Security ([`security`], [`procfs`]): not dumpable, privileges dropped to
//! the crashed user after opening `/proc/PID` and the mapped files (the
//! governor's early key, decided before that, unwinds with the user's file
//! access: no effective capabilities, no groups, the user's fsuid), pidfd or
//! start-time binding against PID reuse, no memory for non-dumpable
//! processes, strict parsing, a wall-clock budget after which a partial
//! record is sent. Install/uninstall of the core_pattern: [`install`].

pub mod config;
pub mod core;
pub mod governor;
pub mod handle;
pub mod install;
pub mod procfs;
pub mod report;
pub mod request;
pub mod security;
pub mod serve;
pub mod signature;
pub mod stream;

/// The `org.clearlinux/crash/repeated` record of one governor window
/// (severity 2, payload format 1: `Signature:`, `Count:`, `First:`,
/// `Last:` and `Window:` lines).
pub fn repeated_record(r: &governor::Repeated) -> telemetry::Record {
    let class = telemetry::Classification::parse(&format!("{}/crash/repeated", telemetry::DEFAULT_DOMAIN))
        .unwrap_or_else(|_| {
            telemetry::Classification::parse("org.clearlinux/crash/repeated").unwrap_or_else(|_| unreachable!())
        });
    telemetry::Record::builder(class, telemetry::Severity::Medium, telemetry::Payload::text(r.payload())).build()
}

/// Sends `crash/repeated` records (the socket-mode server's sweep).
pub fn deliver_repeated(
    cfg: &config::Config,
    collector: Option<&std::path::Path>,
    reports: &[governor::Repeated],
) -> Result<(), SendError> {
    if reports.is_empty() {
        return Ok(());
    }
    let mut c = telemetry::client::Client::connect(&cfg.socket(collector)?)?;
    for r in reports {
        c.send(&repeated_record(r))?;
    }
    Ok(())
}

/// Why a record was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Config(#[from] telemetry::config::ConfigError),
    #[error(transparent)]
    Client(#[from] telemetry::client::ClientError),
}

/// Sends the outcome's record to the collector (`collector` overrides the
/// socket the configuration names), refitting the payload to the limit
/// the collector announces.
pub fn deliver(
    cfg: &config::Config,
    collector: Option<&std::path::Path>,
    out: &handle::Outcome,
) -> Result<(), SendError> {
    if out.record.is_none() && out.repeated.is_empty() {
        return Ok(());
    }
    let sock = cfg.socket(collector)?;
    let mut c = telemetry::client::Client::connect(&sock)?;
    if let Some(record) = &out.record {
        let limit = c.hello().max_payload as usize;
        if record.payload.len() > limit && out.unwound {
            let mut r = record.clone();
            r.payload = telemetry::Payload::text(report::payload_fitting(&out.report, cfg.payload_version, limit));
            c.send(&r)?;
        } else {
            c.send(record)?;
        }
    }
    for r in &out.repeated {
        c.send(&repeated_record(r))?;
    }
    Ok(())
}
