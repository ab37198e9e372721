//! Collector -> backend posting forms (docs/WIRE.md): v2, the record's
//! fields as HTTP headers and the payload as the body; v3, one JSON object.
//!
//! - **v2**: `POST` the raw payload with the record's fields as HTTP headers
//!   (`Record-Format-Version`, `Classification`, ...) plus the tid header.
//! - **v3**: `POST /v3/collector`, a flat JSON object of the 15 header names
//!   plus `payload`.
//!
//! Unlike the original, values are never cut at spaces, `build` carries no
//! quotes, and the payload goes out unchanged. Both forms decode too, so
//! tests and local sinks can read what was posted.

use serde_json::{Map, Value};
use thiserror::Error;

use crate::record::HEADER_NAMES;
use crate::{
    Classification, EventId, HeaderText, HostInfo, MachineId, Payload, Record, Severity, RECORD_FORMAT_VERSION,
};

/// The v2 HTTP header names, in [`HEADER_NAMES`] order.
pub const V2_HEADER_NAMES: [&str; 15] = [
    "Record-Format-Version",
    "Classification",
    "Severity",
    "Machine-Id",
    "Creation-Timestamp",
    "Arch",
    "Host-Type",
    "Build",
    "Kernel-Version",
    "Payload-Format-Version",
    "System-Name",
    "Board-Name",
    "Cpu-Model",
    "Bios-Version",
    "Event-Id",
];

/// The tid header the original sends (config key `tidheader`).
pub const DEFAULT_TID_HEADER: &str = "X-Telemetry-TID: 6907c830-eed9-4ce9-81ae-76daf8d88f0f";

/// The `tidheader` setting: a header name and value sent with every post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TidHeader {
    /// The header's name (letters, digits, `-`, `_`).
    pub name: String,
    /// Its value.
    pub value: String,
}

/// Why a posting form cannot be made or read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PostingError {
    /// The `tidheader` setting is not `Name: value`.
    #[error("tidheader {0:?} is not `Name: value`")]
    BadTidHeader(String),
    /// A v2 post lacks a record header.
    #[error("header {0} is missing")]
    Missing(&'static str),
    /// A record field of the post is not valid.
    #[error("header {name}: {reason}")]
    Invalid {
        /// The field (header name, or JSON key for v3).
        name: &'static str,
        /// Why it is not valid.
        reason: String,
    },
    /// v3 carries text only.
    #[error("the v3 JSON form carries text payloads only; this payload is not UTF-8 (use server_protocol=v2)")]
    BinaryPayload,
    /// A v3 body that is not the expected JSON object.
    #[error("v3 body is not a JSON object: {0}")]
    Json(String),
}

impl TidHeader {
    /// Parses the `tidheader` setting (`Name: value`).
    pub fn parse(s: &str) -> Result<Self, PostingError> {
        let (name, value) = s.split_once(':').ok_or_else(|| PostingError::BadTidHeader(s.into()))?;
        let name = name.trim();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(PostingError::BadTidHeader(s.into()));
        }
        let value = value.trim();
        // It goes on a header line as it is.
        if value.chars().any(|c| c.is_control()) {
            return Err(PostingError::BadTidHeader(s.into()));
        }
        Ok(TidHeader { name: name.into(), value: value.into() })
    }
}

impl Default for TidHeader {
    fn default() -> Self {
        // The constant is well formed.
        TidHeader::parse(DEFAULT_TID_HEADER).unwrap_or(TidHeader { name: String::new(), value: String::new() })
    }
}

/// The v2 form: header pairs (tid and content type included) and the body.
pub fn v2_headers(record: &Record, machine_id: &MachineId, tid: &TidHeader) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = V2_HEADER_NAMES
        .iter()
        .zip(record.header_values(machine_id))
        .map(|(n, v)| ((*n).to_string(), v.to_string()))
        .collect();
    out.push((tid.name.clone(), tid.value.clone()));
    out.push(("Content-Type".into(), "application/text".into()));
    out
}

/// The v3 form: the JSON body. Every value is a JSON string, as the
/// backend reads header text.
pub fn v3_body(record: &Record, machine_id: &MachineId) -> Result<Vec<u8>, PostingError> {
    let Payload::Text(payload) = &record.payload else {
        return Err(PostingError::BinaryPayload);
    };
    let mut map = Map::new();
    for (n, v) in HEADER_NAMES.iter().zip(record.header_values(machine_id)) {
        map.insert((*n).into(), Value::String(v.to_string()));
    }
    map.insert("payload".into(), Value::String(payload.clone()));
    serde_json::to_vec(&Value::Object(map)).map_err(|e| PostingError::Json(e.to_string()))
}

/// The path a v3 post goes to.
pub const V3_PATH: &str = "/v3/collector";

/// Reads a v2 post back: `get` looks a header up by name (case-insensitive
/// in HTTP; the caller decides), `body` is the request body.
pub fn v2_decode<'a>(get: impl Fn(&str) -> Option<&'a str>, body: &[u8]) -> Result<(Record, MachineId), PostingError> {
    let mut vals: [&str; 15] = [""; 15];
    for (i, n) in V2_HEADER_NAMES.iter().enumerate() {
        vals[i] = get(n).ok_or(PostingError::Missing(V2_HEADER_NAMES[i]))?;
    }
    from_values(&vals, &V2_HEADER_NAMES, Payload::from_vec(body.to_vec()))
}

/// Reads a v3 JSON body back.
pub fn v3_decode(body: &[u8]) -> Result<(Record, MachineId), PostingError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| PostingError::Json(e.to_string()))?;
    let obj = v.as_object().ok_or_else(|| PostingError::Json("not an object".into()))?;
    let mut vals: [&str; 15] = [""; 15];
    for (i, n) in HEADER_NAMES.iter().enumerate() {
        vals[i] = obj.get(*n).and_then(Value::as_str).ok_or(PostingError::Missing(HEADER_NAMES[i]))?;
    }
    let payload = obj.get("payload").and_then(Value::as_str).ok_or(PostingError::Missing("payload"))?;
    from_values(&vals, &HEADER_NAMES, Payload::Text(payload.into()))
}

fn from_values(
    v: &[&str; 15],
    names: &[&'static str; 15],
    payload: Payload,
) -> Result<(Record, MachineId), PostingError> {
    let inv = |i: usize, reason: String| PostingError::Invalid { name: names[i], reason };
    let text = |i: usize| HeaderText::new(v[i]).map_err(|e| inv(i, e.to_string()));
    let num = |i: usize| -> Result<u64, PostingError> {
        if v[i].is_empty() || !v[i].bytes().all(|b| b.is_ascii_digit()) {
            return Err(inv(i, format!("{:?} is not a number", v[i])));
        }
        v[i].parse().map_err(|_| inv(i, format!("{:?} is out of range", v[i])))
    };
    if v[0] != RECORD_FORMAT_VERSION.to_string() {
        return Err(inv(0, format!("{:?} is not 4", v[0])));
    }
    let classification = Classification::parse(v[1]).map_err(|e| inv(1, e.to_string()))?;
    let severity: Severity = v[2].parse().map_err(|e: crate::SeverityError| inv(2, e.to_string()))?;
    let machine_id = MachineId::parse(v[3]).map_err(|e| inv(3, e.to_string()))?;
    let creation_timestamp = num(4)?;
    let payload_format_version = u32::try_from(num(9)?).map_err(|_| inv(9, "out of range".into()))?;
    let event_id: EventId = v[14].parse().map_err(|e: crate::EventIdError| inv(14, e.to_string()))?;
    let host = HostInfo {
        arch: text(5)?,
        host_type: text(6)?,
        build: text(7)?,
        kernel_version: text(8)?,
        system_name: text(10)?,
        board_name: text(11)?,
        cpu_model: text(12)?,
        bios_version: text(13)?,
    };
    let record = Record {
        classification,
        severity,
        event_id,
        payload_format_version,
        creation_timestamp,
        host: host.into(),
        payload,
    };
    Ok((record, machine_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        let t = |s: &str| HeaderText::new(s).unwrap();
        Record {
            classification: Classification::parse("org.clearlinux/crash/clr").unwrap(),
            severity: Severity::High,
            event_id: "00112233445566778899aabbccddeeff".parse().unwrap(),
            payload_format_version: 1,
            creation_timestamp: 1700000000,
            host: std::sync::Arc::new(HostInfo {
                arch: t("x86_64"),
                host_type: t("QEMU|Standard PC (i440FX + PIIX, 1996)|pc-i440fx-9.0"),
                build: t("41230"),
                kernel_version: t("6.18.44-fc-v769"),
                system_name: t("clear-linux-os"),
                board_name: t("no_bn_file|no_bv_file"),
                cpu_model: t("Intel(R) Xeon(R) CPU @ 2.20GHz"),
                bios_version: t("rel-1.16.3-0-ga6ed6b701f0a-prebuilt.qemu.org"),
            }),
            payload: Payload::text("Process: /usr/bin/segv\nPID: 1\n"),
        }
    }

    #[test]
    fn v2_headers_are_complete_and_uncut() {
        let mid = MachineId::parse("0123456789abcdef0123456789abcdef").unwrap();
        let h = v2_headers(&record(), &mid, &TidHeader::default());
        let get = |n: &str| h.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("Cpu-Model"), Some("Intel(R) Xeon(R) CPU @ 2.20GHz"));
        assert_eq!(get("Build"), Some("41230"));
        assert_eq!(get("X-Telemetry-TID"), Some("6907c830-eed9-4ce9-81ae-76daf8d88f0f"));
        assert_eq!(get("Machine-Id"), Some("0123456789abcdef0123456789abcdef"));
        assert_eq!(get("Record-Format-Version"), Some("4"));
        assert_eq!(h.len(), 17);
    }

    #[test]
    fn v3_body_is_flat_and_payload_unchanged() {
        let mid = MachineId::unset();
        let body = v3_body(&record(), &mid).unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["cpu_model"], "Intel(R) Xeon(R) CPU @ 2.20GHz");
        assert_eq!(v["payload"], "Process: /usr/bin/segv\nPID: 1\n");
        assert_eq!(v.as_object().unwrap().len(), 16);
        let (r, m) = v3_decode(&body).unwrap();
        assert_eq!((r, m), (record(), mid));
    }

    #[test]
    fn binary_payload_is_refused_by_v3() {
        let mut r = record();
        r.payload = Payload::Bytes(vec![0xff]);
        assert_eq!(v3_body(&r, &MachineId::unset()), Err(PostingError::BinaryPayload));
    }

    #[test]
    fn tid_header_parses() {
        assert_eq!(TidHeader::parse("X-A: b c").unwrap(), TidHeader { name: "X-A".into(), value: "b c".into() });
        assert!(TidHeader::parse("nocolon").is_err());
        assert!(TidHeader::parse("bad name: x").is_err());
    }
}
