//! The original libtelemetry framing (docs/WIRE.md), byte-exact.
//!
//! ```text
//! u32 LE  total size, these four bytes included
//! [ "CFG:" absolute-config-path "\0" ]      only when the probe had a config file
//! u32 LE  size of the header block
//! header block: 15 lines "name: value\n" in HEADER_NAMES order
//! payload bytes, then one "\0"
//! ```
//!
//! One record per connection; the daemon sends nothing back.

use thiserror::Error;

use crate::record::HEADER_NAMES;
use crate::{
    Classification, ClassificationError, EventId, EventIdError, HeaderText, HeaderTextError, HostInfo, MachineId,
    Payload, PayloadError, Record, Severity, SeverityError, RECORD_FORMAT_VERSION,
};

/// Smallest possible legacy record: size, header size, 15 shortest lines
/// (`name: \n`), the NUL.
pub const MIN_RECORD_SIZE: usize = 4 + 4 + 1;

/// A record decoded from the legacy framing, with what the sender added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyRecord {
    /// The record.
    pub record: Record,
    /// The `machine_id` the probe sent (the library sends `FFFFFFFF`).
    pub machine_id: MachineId,
    /// The `CFG:` path, when the probe sent one.
    pub config_path: Option<String>,
}

/// Why bytes are not a legacy record.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LegacyError {
    /// The bytes given are not as many as the size field says.
    #[error("legacy record is {got} bytes but its size field says {declared}")]
    SizeMismatch {
        /// What the size field says.
        declared: usize,
        /// The bytes given.
        got: usize,
    },
    /// The size field is over the limit.
    #[error("legacy record of {size} bytes is over the limit of {limit} bytes")]
    TooLarge {
        /// What the size field says.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Shorter than [`MIN_RECORD_SIZE`].
    #[error("legacy record is too short ({0} bytes)")]
    TooShort(usize),
    /// The `CFG:` block is malformed.
    #[error("legacy CFG: path is not NUL-terminated, absolute, UTF-8 text")]
    BadConfigPath,
    /// The header size field points past the record.
    #[error("legacy header block size {header} does not fit in the record ({available} bytes left)")]
    HeaderSize {
        /// What the header size field says.
        header: usize,
        /// The bytes left after it.
        available: usize,
    },
    /// A header line is missing.
    #[error("legacy header line {line} is missing; expected {expected:?}")]
    MissingHeader {
        /// The line's index (0-based).
        line: usize,
        /// The header name expected there.
        expected: &'static str,
    },
    /// A header line has the wrong name.
    #[error("legacy header line {line} should be {expected:?} but is {found:?}")]
    WrongHeader {
        /// The line's index (0-based).
        line: usize,
        /// The header name expected there.
        expected: &'static str,
        /// The line found.
        found: String,
    },
    /// Bytes after the 15 header lines, inside the header block.
    #[error("legacy header block has data after the 15 header lines")]
    ExtraHeaderData,
    /// `record_format_version` is not 4.
    #[error("legacy record_format_version is {0:?}; only 4 is understood")]
    FormatVersion(String),
    /// A numeric header is not a number.
    #[error("legacy {field} is not a number: {value:?}")]
    NotNumber {
        /// The header.
        field: &'static str,
        /// Its value.
        value: String,
    },
    /// The classification header is not valid.
    #[error("legacy classification: {0}")]
    Classification(#[from] ClassificationError),
    /// The severity header is not valid.
    #[error("legacy severity: {0}")]
    Severity(#[from] SeverityError),
    /// The event id header is not valid.
    #[error("legacy event_id: {0}")]
    EventId(#[from] EventIdError),
    /// The machine id header is not valid.
    #[error("legacy machine_id: {0}")]
    MachineId(String),
    /// A text header is not valid.
    #[error("legacy {field}: {source}")]
    Text {
        /// The header.
        field: &'static str,
        /// Why its value is not valid.
        source: HeaderTextError,
    },
    /// The payload lacks its terminating NUL.
    #[error("legacy payload does not end with a NUL byte")]
    PayloadNotTerminated,
    /// A NUL inside the payload.
    #[error("legacy payload has a NUL byte at {0} before its end")]
    PayloadNul(usize),
}

/// Encodes `record` in the legacy framing, appending to `out`. The machine
/// id is `FFFFFFFF`, as the original library sends; `config_path` adds the
/// `CFG:` block.
pub fn encode_into(record: &Record, config_path: Option<&str>, out: &mut Vec<u8>) -> Result<(), PayloadError> {
    let payload = record.payload.as_bytes();
    if let Some(position) = payload.iter().position(|&b| b == 0) {
        return Err(PayloadError::HasNul { position });
    }
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    if let Some(cfg) = config_path {
        out.extend_from_slice(b"CFG:");
        out.extend_from_slice(cfg.as_bytes());
        out.push(0);
    }
    let hsize_at = out.len();
    out.extend_from_slice(&[0; 4]);
    let header_start = out.len();
    let unset = MachineId::unset();
    for (name, value) in HEADER_NAMES.iter().zip(record.header_values(&unset)) {
        use std::io::Write;
        // Writing to a Vec cannot fail.
        let _ = writeln!(out, "{name}: {value}");
    }
    let header_len = (out.len() - header_start) as u32;
    out[hsize_at..hsize_at + 4].copy_from_slice(&header_len.to_le_bytes());
    out.extend_from_slice(payload);
    out.push(0);
    let total = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&total.to_le_bytes());
    Ok(())
}

/// Encodes `record` as one legacy record.
pub fn encode(record: &Record, config_path: Option<&str>) -> Result<Vec<u8>, PayloadError> {
    let mut v = Vec::with_capacity(512 + record.payload.len());
    encode_into(record, config_path, &mut v)?;
    Ok(v)
}

/// Checks the total-size field of a legacy record against `limit` before
/// the rest is read.
pub fn check_total_size(total: u32, limit: usize) -> Result<usize, LegacyError> {
    let size = total as usize;
    if size > limit {
        return Err(LegacyError::TooLarge { size, limit });
    }
    if size < MIN_RECORD_SIZE {
        return Err(LegacyError::TooShort(size));
    }
    Ok(size)
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Decodes one whole legacy record (its size field included).
pub fn decode(buf: &[u8]) -> Result<LegacyRecord, LegacyError> {
    let declared = u32_at(buf, 0).ok_or(LegacyError::TooShort(buf.len()))? as usize;
    if declared != buf.len() {
        return Err(LegacyError::SizeMismatch { declared, got: buf.len() });
    }
    let mut at = 4;
    let mut config_path = None;
    if buf[at..].starts_with(b"CFG:") {
        let rest = &buf[at + 4..];
        let nul = rest.iter().position(|&b| b == 0).ok_or(LegacyError::BadConfigPath)?;
        let path = std::str::from_utf8(&rest[..nul]).map_err(|_| LegacyError::BadConfigPath)?;
        if !path.starts_with('/') {
            return Err(LegacyError::BadConfigPath);
        }
        config_path = Some(path.to_string());
        at += 4 + nul + 1;
    }
    let header_len = u32_at(buf, at).ok_or(LegacyError::TooShort(buf.len()))? as usize;
    at += 4;
    let available = buf.len() - at;
    // The header block must leave room for at least the payload's NUL.
    if header_len >= available {
        return Err(LegacyError::HeaderSize { header: header_len, available });
    }
    let header = &buf[at..at + header_len];
    let body = &buf[at + header_len..];
    let (record, machine_id) = parse_header(header, body)?;
    Ok(LegacyRecord { record, machine_id, config_path })
}

fn parse_header(header: &[u8], body: &[u8]) -> Result<(Record, MachineId), LegacyError> {
    let mut values: [&[u8]; 15] = [&[]; 15];
    let mut rest = header;
    for (line, expected) in HEADER_NAMES.iter().enumerate() {
        let nl = rest.iter().position(|&b| b == b'\n').ok_or(LegacyError::MissingHeader { line, expected })?;
        let text = &rest[..nl];
        rest = &rest[nl + 1..];
        let value = text.strip_prefix(expected.as_bytes()).and_then(|t| t.strip_prefix(b": ")).ok_or_else(|| {
            LegacyError::WrongHeader { line, expected, found: String::from_utf8_lossy(text).into_owned() }
        })?;
        values[line] = value;
    }
    if !rest.is_empty() {
        return Err(LegacyError::ExtraHeaderData);
    }
    let text = |i: usize| -> Result<HeaderText, LegacyError> {
        HeaderText::from_bytes(values[i]).map_err(|source| LegacyError::Text { field: HEADER_NAMES[i], source })
    };
    let number = |i: usize| -> Result<u64, LegacyError> {
        let v = values[i];
        let not = || LegacyError::NotNumber { field: HEADER_NAMES[i], value: String::from_utf8_lossy(v).into_owned() };
        if v.is_empty() || v.len() > 20 || !v.iter().all(u8::is_ascii_digit) {
            return Err(not());
        }
        std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()).ok_or_else(not)
    };
    if number(0).ok() != Some(RECORD_FORMAT_VERSION as u64) || values[0].len() != 1 {
        return Err(LegacyError::FormatVersion(String::from_utf8_lossy(values[0]).into_owned()));
    }
    let classification = Classification::from_bytes(values[1])?;
    let severity: Severity = std::str::from_utf8(values[2]).unwrap_or("?").parse()?;
    let machine_id = std::str::from_utf8(values[3])
        .map_err(|_| LegacyError::MachineId("not UTF-8".into()))
        .and_then(|s| MachineId::parse(s).map_err(|e| LegacyError::MachineId(e.to_string())))?;
    let creation_timestamp = number(4)?;
    let payload_format_version = u32::try_from(number(9)?).map_err(|_| LegacyError::NotNumber {
        field: "payload_format_version",
        value: String::from_utf8_lossy(values[9]).into_owned(),
    })?;
    let event_id: EventId = std::str::from_utf8(values[14]).unwrap_or("?").parse()?;
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
    let (&last, payload) = body.split_last().ok_or(LegacyError::PayloadNotTerminated)?;
    if last != 0 {
        return Err(LegacyError::PayloadNotTerminated);
    }
    if let Some(p) = payload.iter().position(|&b| b == 0) {
        return Err(LegacyError::PayloadNul(p));
    }
    let record = Record {
        classification,
        severity,
        event_id,
        payload_format_version,
        creation_timestamp,
        host: host.into(),
        payload: Payload::from_vec(payload.to_vec()),
    };
    Ok((record, machine_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record with every field fixed, for byte-exact checks.
    pub(crate) fn fixed_record() -> Record {
        let t = |s: &str| HeaderText::new(s).unwrap();
        Record {
            classification: Classification::parse("org.clearlinux/hello/world").unwrap(),
            severity: Severity::Low,
            event_id: "0123456789abcdef0123456789abcdef".parse().unwrap(),
            payload_format_version: 1,
            creation_timestamp: 1700000000,
            host: std::sync::Arc::new(HostInfo {
                arch: t("x86_64"),
                host_type: t("QEMU|Standard PC|pc-1.0"),
                build: t("41230"),
                kernel_version: t("6.18.0"),
                system_name: t("clear-linux-os"),
                board_name: t("no_bn_file|no_bv_file"),
                cpu_model: t("Intel(R) Xeon(R) CPU @ 2.20GHz"),
                bios_version: t("1.16.3"),
            }),
            payload: Payload::text("hello\n"),
        }
    }

    /// The legacy bytes of `fixed_record()`, written out by hand:
    /// the header block is 410 bytes (15 lines counted below), the payload
    /// 6 bytes plus its NUL, so the total is 4 + 4 + 410 + 7 = 425 (0x1a9).
    fn expected_bytes(cfg: bool) -> Vec<u8> {
        let header: &[u8] = b"record_format_version: 4\n\
classification: org.clearlinux/hello/world\n\
severity: 1\n\
machine_id: FFFFFFFF\n\
creation_timestamp: 1700000000\n\
arch: x86_64\n\
host_type: QEMU|Standard PC|pc-1.0\n\
build: 41230\n\
kernel_version: 6.18.0\n\
payload_format_version: 1\n\
system_name: clear-linux-os\n\
board_name: no_bn_file|no_bv_file\n\
cpu_model: Intel(R) Xeon(R) CPU @ 2.20GHz\n\
bios_version: 1.16.3\n\
event_id: 0123456789abcdef0123456789abcdef\n";
        // Line lengths, newline included:
        // 25+43+12+21+31+13+35+13+23+26+28+34+42+21+43 = 410 = 0x19a.
        let mut v = Vec::new();
        if cfg {
            // + "CFG:" (4) + "/etc/t.conf" (11) + NUL (1) = 16 more: 441 = 0x1b9.
            v.extend_from_slice(&[0xb9, 0x01, 0x00, 0x00]);
            v.extend_from_slice(b"CFG:/etc/t.conf\0");
        } else {
            v.extend_from_slice(&[0xa9, 0x01, 0x00, 0x00]); // 425
        }
        v.extend_from_slice(&[0x9a, 0x01, 0x00, 0x00]); // 410
        v.extend_from_slice(header);
        v.extend_from_slice(b"hello\n\0");
        v
    }

    #[test]
    fn encoder_matches_hand_written_bytes() {
        let expected = expected_bytes(false);
        assert_eq!(expected.len(), 425, "hand count of the layout");
        assert_eq!(encode(&fixed_record(), None).unwrap(), expected);
        let expected_cfg = expected_bytes(true);
        assert_eq!(expected_cfg.len(), 441);
        assert_eq!(encode(&fixed_record(), Some("/etc/t.conf")).unwrap(), expected_cfg);
    }

    #[test]
    fn decoder_reads_hand_written_bytes() {
        let d = decode(&expected_bytes(true)).unwrap();
        assert_eq!(d.record, fixed_record());
        assert_eq!(d.machine_id.as_str(), "FFFFFFFF");
        assert_eq!(d.config_path.as_deref(), Some("/etc/t.conf"));
    }

    fn corrupt(f: impl FnOnce(&mut Vec<u8>)) -> LegacyError {
        let mut b = expected_bytes(false);
        f(&mut b);
        decode(&b).unwrap_err()
    }

    fn replace(b: &mut Vec<u8>, from: &[u8], to: &[u8]) {
        let pos = b.windows(from.len()).position(|w| w == from).unwrap();
        b.splice(pos..pos + from.len(), to.iter().copied());
        // keep sizes consistent when lengths differ
        let delta = to.len() as i64 - from.len() as i64;
        let total = (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64 + delta) as u32;
        b[0..4].copy_from_slice(&total.to_le_bytes());
        let hs = (u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as i64 + delta) as u32;
        b[4..8].copy_from_slice(&hs.to_le_bytes());
    }

    #[test]
    fn each_class_of_bad_input_has_its_error() {
        assert!(matches!(
            corrupt(|b| {
                b.pop();
            }),
            LegacyError::SizeMismatch { .. }
        ));
        assert!(matches!(
            corrupt(|b| {
                let n = b.len();
                b[n - 1] = b'x';
            }),
            LegacyError::PayloadNotTerminated
        ));
        assert!(matches!(
            corrupt(|b| {
                let n = b.len();
                b[n - 3] = 0;
            }),
            LegacyError::PayloadNul(4)
        ));
        assert!(matches!(corrupt(|b| b[4..8].copy_from_slice(&5000u32.to_le_bytes())), LegacyError::HeaderSize { .. }));
        assert!(matches!(corrupt(|b| replace(b, b"severity: 1", b"severity: 9")), LegacyError::Severity(_)));
        assert!(matches!(
            corrupt(|b| replace(b, b"org.clearlinux/hello/world", b"org/hello")),
            LegacyError::Classification(_)
        ));
        assert!(matches!(
            corrupt(|b| replace(b, b"severity: 1", b"sevarity: 1")),
            LegacyError::WrongHeader { line: 2, .. }
        ));
        assert!(matches!(
            corrupt(|b| replace(b, b"record_format_version: 4", b"record_format_version: 3")),
            LegacyError::FormatVersion(_)
        ));
        assert!(matches!(
            corrupt(|b| replace(b, b"1700000000", b"17000x0000")),
            LegacyError::NotNumber { field: "creation_timestamp", .. }
        ));
        assert!(matches!(
            corrupt(|b| replace(b, b"0123456789abcdef0123456789abcdef", b"xyz")),
            LegacyError::EventId(_)
        ));
        assert!(matches!(corrupt(|b| replace(b, b"FFFFFFFF", b"FF-F")), LegacyError::MachineId(_)));
        assert!(matches!(corrupt(|b| replace(b, b"x86_64", b"x86\x0164")), LegacyError::Text { field: "arch", .. }));
        assert!(matches!(
            corrupt(|b| replace(b, b"event_id: 0123456789abcdef0123456789abcdef\n", b"")),
            LegacyError::MissingHeader { line: 14, .. }
        ));
        assert!(matches!(decode(&[1, 0]), Err(LegacyError::TooShort(2))));
        assert!(matches!(check_total_size(0, 100), Err(LegacyError::TooShort(0))));
        assert!(matches!(check_total_size(200, 100), Err(LegacyError::TooLarge { .. })));
    }

    #[test]
    fn large_payloads_are_not_dropped() {
        // The original dropped payloads of 8188 bytes or more while saying success.
        let mut r = fixed_record();
        r.payload = Payload::text("x".repeat(20_000));
        let d = decode(&encode(&r, None).unwrap()).unwrap();
        assert_eq!(d.record.payload.len(), 20_000);
    }

    #[test]
    fn nul_in_payload_cannot_be_encoded() {
        let mut r = fixed_record();
        r.payload = Payload::Bytes(vec![1, 0, 2]);
        assert_eq!(encode(&r, None), Err(PayloadError::HasNul { position: 1 }));
    }
}
