//! Legacy records: the original library's one record per connection,
//! decoded and checked (served by the accept loop, see `burst`, or by a
//! connection task when it arrives in pieces).

use telemetry::wire::legacy;

use super::ConnError;
use crate::stats::{Refusal, Stats};
use crate::store::Incoming;

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
    Ok(Incoming { record: rec.record, size: bytes.len() as u64, uid, pid })
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
