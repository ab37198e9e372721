//! # kernel-probes: `klogscanner` and `pstoreprobe`
//!
//! Kernel reports (oops, warnings, BUGs, panics, BERT hardware-error
//! blocks) turned into records, from the live kernel log and from the
//! dumps the kernel saved in pstore before the last reboot. Both use one
//! parser ([`oops`]) and write the original's payload shape:
//!
//! ```text
//! /dev/kmsg ──▶ klogscanner ─┐ (oops parser, storm governor,
//!                            │  position in state_dir)
//! pstore    ──▶ pstoreprobe ─┤ (dumps reassembled, files moved to
//!   (previous boot)          │  state_dir/pstore/ after the ack)
//!                            ▼  native framing, acknowledged
//!                      telem-collector ──▶ journal, spool, backend
//! ```
//!
//! | module | what |
//! |---|---|
//! | [`oops`] | start patterns, report assembly, payload |
//! | [`kmsg`] | reading `/dev/kmsg` records |
//! | [`klog`] | klogscanner's loop and position |
//! | [`pstore`] | pstore dump files: names, headers, parts, compression, the record of a dump |
//! | [`storm`] | one record per identical report per window, plus a count |
//! | [`config`] | the keys both read from the suite's configuration file |
//! | [`send`] | records to the collector |

#![warn(missing_docs)]

pub mod config;
pub mod klog;
pub mod kmsg;
pub mod oops;
pub mod pstore;
pub mod send;
pub mod signals;
pub mod storm;

/// Sets up logging on stderr: `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(false).with_env_filter(filter).init();
}
