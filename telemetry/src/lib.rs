//! # telemetry: the record library of the telemetrics suite
//!
//! Where it sits in the data flow:
//!
//! ```text
//!  probe (hprobe, crashprobe, eventprobe, telem-record-gen, C probes)
//!    │  builds a `Record` (this crate: invalid records cannot be built)
//!    │  sends it with `client::Client` over a unix socket
//!    ▼  native framing (wire::native) or legacy framing (wire::legacy)
//!  telem-collector ── decodes with this crate, acks each record,
//!    │                journals, spools, stamps the machine id
//!    ▼  posting::v2 (HTTP headers) or posting::v3 (JSON)
//!  backend
//! ```
//!
//! The smallest working use, sending one record to the collector:
//!
//! ```no_run
//! use telemetry::{Classification, Record, Severity, Payload};
//! use telemetry::client::{Client, SocketPath};
//!
//! let record = Record::builder(
//!     "org.example/hello/world".parse::<Classification>()?,
//!     Severity::Low,
//!     Payload::text("hello\n"),
//! ).build();
//! let mut client = Client::connect(&SocketPath::resolve(None)?)?;
//! client.send(&record)?; // waits for the collector's acknowledgement
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Types parse their input once (`Classification`, `Severity`, `EventId`,
//! `RecordId`, `BootId`, `HeaderText`, `MachineId`) and can only hold valid values afterwards, so
//! every encoder can write them without checking again, and every decoder
//! rejects a bad record with an error that names the field and the reason.

#![warn(missing_docs)]

pub mod blackbox;
pub mod classification;
pub mod client;
pub mod config;
pub mod crash_id;
pub mod event_id;
pub mod fields;
pub mod host;
pub mod payload;
pub mod posting;
pub mod record;
pub mod scrub;
pub mod severity;
pub mod text;
pub mod wire;

/// The classification domain of the suite's own probes, as the original's
/// (the backend's retention rules key on it, e.g. `org.clearlinux/hello/world`).
pub const DEFAULT_DOMAIN: &str = "org.clearlinux";

pub use classification::{Classification, ClassificationError};
pub use event_id::{BootId, BootIdError, EventId, EventIdError, MachineId, MachineIdError, RecordId};
pub use host::HostInfo;
pub use payload::{Payload, PayloadError, DEFAULT_MAX_PAYLOAD};
pub use record::{Record, RecordBuilder, RECORD_FORMAT_VERSION};
pub use severity::{Severity, SeverityError};
pub use text::{HeaderText, HeaderTextError};
