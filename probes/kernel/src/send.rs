//! Sending records to the collector: one connection kept open, records of a
//! batch pipelined, each batch acknowledged before the caller moves on.

use std::path::PathBuf;
use std::time::Duration;

use telemetry::client::{Client, ClientError};
use telemetry::{Classification, EventId, Payload, Record, Severity};

/// Why a record cannot be made (the tables' values are fixed and valid:
/// unit tests build every one).
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The classification is invalid.
    #[error("classification {0:?}: {1}")]
    Classification(String, telemetry::ClassificationError),
    /// The severity is out of range.
    #[error("severity {0}: {1}")]
    Severity(u8, telemetry::SeverityError),
}

/// A record: classification, severity, text payload, created now, with a
/// random event id.
pub fn record(classification: &str, severity: u8, payload: String) -> Result<Record, RecordError> {
    record_of(classification, severity, payload, EventId::random())
}

/// A record as [`record`], with the given event id.
pub fn record_of(classification: &str, severity: u8, payload: String, event: EventId) -> Result<Record, RecordError> {
    let class = Classification::parse(classification)
        .map_err(|e| RecordError::Classification(classification.to_string(), e))?;
    let sev = Severity::try_from(severity).map_err(|e| RecordError::Severity(severity, e))?;
    Ok(Record::builder(class, sev, Payload::text(payload)).event_id(event).build())
}

/// The collector's connection.
#[derive(Debug)]
pub struct Sender {
    socket: PathBuf,
    timeout: Duration,
    client: Option<Client>,
}

/// What became of a batch.
#[derive(Debug, Default)]
pub struct Sent {
    /// Records the collector accepted.
    pub accepted: usize,
    /// Records it refused, with its reasons (they will not be accepted
    /// later either).
    pub rejected: Vec<String>,
}

impl Sender {
    /// A sender to `socket`; connects on first use.
    pub fn new(socket: PathBuf, timeout: Duration) -> Sender {
        Sender { socket, timeout, client: None }
    }

    /// Sends `records` and waits for every acknowledgement. `Err`: the
    /// collector could not be reached or the connection failed; none of the
    /// batch can be taken as sent, and sending it again may repeat records
    /// the collector acknowledged before the failure.
    pub fn send(&mut self, records: &[Record]) -> Result<Sent, ClientError> {
        if records.is_empty() {
            return Ok(Sent::default());
        }
        let client = match self.client.as_mut() {
            Some(c) => c,
            None => self.client.insert(Client::connect_path(&self.socket, self.timeout)?),
        };
        let acks = match client.send_many(records) {
            Ok(a) => a,
            Err(e) => {
                self.client = None;
                return Err(e);
            }
        };
        let mut sent = Sent::default();
        for a in acks {
            match a {
                Ok(_) => sent.accepted += 1,
                Err(e) => sent.rejected.push(e.to_string()),
            }
        }
        Ok(sent)
    }

    /// The socket it sends to.
    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }
}
