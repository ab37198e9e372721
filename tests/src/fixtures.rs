//! The records and raw bytes the tests send, and reading the collector's
//! answers on a raw native connection.
//!
//! Each test file names its records' classification and severity once,
//! `const RECORDS: Records = Records::new("org.test/x/y", Severity::Low);`,
//! and makes every record with it (`RECORDS.text("payload")`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use telemetry::record::RecordBuilder;
use telemetry::wire::native::{self, Ack, ServerFrame};
use telemetry::{Classification, HeaderText, HostInfo, Payload, Record, Severity};

/// How long a test waits for the collector to answer one request.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes the records of one test: one classification and severity, text
/// payloads, this machine's host facts unless said otherwise.
#[derive(Debug, Clone, Copy)]
pub struct Records {
    class: &'static str,
    severity: Severity,
}

impl Records {
    /// Records of classification `class` (`DOMAIN/PROBE/REST`) and `severity`.
    pub const fn new(class: &'static str, severity: Severity) -> Records {
        Records { class, severity }
    }

    /// A record with this text payload, a random event id, created now.
    pub fn text(&self, payload: impl Into<String>) -> Record {
        self.builder(payload).build()
    }

    /// As [`text`](Self::text), to set more before building.
    pub fn builder(&self, payload: impl Into<String>) -> RecordBuilder {
        record_builder(self.class, self.severity, payload)
    }

    /// Record number `i`, every field fixed but the event id, so what
    /// arrives can be compared field by field: payload `record {i}\nsecond
    /// line\n`, created at 1,700,000,000 + `i`, host facts of
    /// [`vm_host`].
    pub fn numbered(&self, i: usize) -> Record {
        self.builder(format!("record {i}\nsecond line\n"))
            .host(vm_host())
            .creation_timestamp(1_700_000_000 + i as u64)
            .build()
    }

    /// Record number `i` with a payload of `len` bytes: `record {i} `
    /// padded with `x`.
    pub fn sized(&self, i: usize, len: usize) -> Record {
        let mut p = format!("record {i} ");
        if p.len() < len {
            p.extend(std::iter::repeat_n('x', len - p.len()));
        }
        self.text(p)
    }
}

/// A record of `class` and `severity` with a text payload (for tests whose
/// records differ in classification).
pub fn record(class: &str, severity: Severity, payload: impl Into<String>) -> Record {
    record_builder(class, severity, payload).build()
}

fn record_builder(class: &str, severity: Severity, payload: impl Into<String>) -> RecordBuilder {
    let class = Classification::parse(class).unwrap_or_else(|e| panic!("test classification {class:?}: {e}"));
    Record::builder(class, severity, Payload::text(payload))
}

/// The host facts of a Clear Linux VM, as the original probes send them.
pub fn vm_host() -> HostInfo {
    let t = |s: &str| HeaderText::new(s).unwrap();
    HostInfo {
        arch: t("x86_64"),
        host_type: t("QEMU|Standard PC (i440FX + PIIX, 1996)|pc-i440fx-9.0"),
        build: t("41230"),
        kernel_version: t("6.18.44-fc-v769"),
        system_name: t("clear-linux-os"),
        board_name: t("no_bn_file|no_bv_file"),
        cpu_model: t("Intel(R) Xeon(R) CPU @ 2.20GHz"),
        bios_version: t("rel-1.16.3"),
    }
}

/// A legacy record written byte by byte as the C library writes it
/// (docs/WIRE.md), not with the telemetry crate's encoder: total size
/// (u32 LE), an optional `CFG:path\0` block, header size (u32 LE), the 15
/// header lines, the payload, a NUL.
#[derive(Debug, Clone)]
pub struct Legacy<'a> {
    /// The `classification:` line.
    pub class: &'a str,
    /// The `host_type:` line.
    pub host_type: &'a str,
    /// The payload.
    pub payload: &'a str,
    /// A `CFG:` block naming this configuration file.
    pub cfg: Option<&'a str>,
    /// Whether the payload ends with its NUL (else with an `x`: malformed).
    pub terminated: bool,
}

impl Default for Legacy<'_> {
    fn default() -> Self {
        Legacy { class: "org.c/legacy/probe", host_type: "blank|blank|blank", payload: "", cfg: None, terminated: true }
    }
}

impl Legacy<'_> {
    /// The record's bytes.
    pub fn bytes(&self) -> Vec<u8> {
        let Legacy { class, host_type, payload, cfg, terminated } = self;
        let header = format!(
            "record_format_version: 4\nclassification: {class}\nseverity: 2\nmachine_id: FFFFFFFF\n\
             creation_timestamp: 1700000000\narch: x86_64\nhost_type: {host_type}\nbuild: 41230\n\
             kernel_version: 6.1.0\npayload_format_version: 1\nsystem_name: clear-linux-os\n\
             board_name: no_bn_file|no_bv_file\ncpu_model: Intel(R) Xeon(R) CPU @ 2.20GHz\nbios_version: no_bv_file\n\
             event_id: 00112233445566778899aabbccddeeff\n"
        );
        let mut rest = Vec::new();
        if let Some(p) = cfg {
            rest.extend_from_slice(b"CFG:");
            rest.extend_from_slice(p.as_bytes());
            rest.push(0);
        }
        rest.extend_from_slice(&(header.len() as u32).to_le_bytes());
        rest.extend_from_slice(header.as_bytes());
        rest.extend_from_slice(payload.as_bytes());
        rest.push(if *terminated { 0 } else { b'x' });
        let mut out = ((rest.len() + 4) as u32).to_le_bytes().to_vec();
        out.extend_from_slice(&rest);
        out
    }
}

/// Connects to `socket` raw, sends the native prefix, reads the hello.
pub fn raw_native(socket: &Path) -> UnixStream {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
    s.write_all(&native::PREFIX).unwrap();
    let mut buf = Vec::new();
    assert!(native::read_frame(&mut s, native::MAX_SERVER_FRAME, &mut buf).unwrap());
    assert!(matches!(native::decode_body::<ServerFrame>(&buf).unwrap(), ServerFrame::Hello(_)));
    s
}

/// Reads the next acknowledgement on a raw native connection.
pub fn read_ack(s: &mut UnixStream) -> Ack {
    let mut buf = Vec::new();
    assert!(native::read_frame(s, native::MAX_SERVER_FRAME, &mut buf).unwrap(), "an ack frame");
    match native::decode_body::<ServerFrame>(&buf).unwrap() {
        ServerFrame::Ack(a) => a,
        other => panic!("expected an ack, got {other:?}"),
    }
}

/// Whether the peer closed the connection (the next read gets nothing).
pub fn closed(s: &mut UnixStream) -> bool {
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(0))
}

/// Counter `key` of a `telemctl status --json` (0 when absent).
pub fn count(status: &serde_json::Value, key: &str) -> u64 {
    status[key].as_u64().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_bytes_decode_with_the_library() {
        let b = Legacy { payload: "p\n", cfg: Some("/etc/t.conf"), ..Legacy::default() }.bytes();
        let d = telemetry::wire::legacy::decode(&b).unwrap();
        assert_eq!(d.record.payload.as_bytes(), b"p\n");
        assert_eq!(d.config_path.as_deref(), Some("/etc/t.conf"));
        let bad = Legacy { terminated: false, ..Legacy::default() }.bytes();
        assert!(telemetry::wire::legacy::decode(&bad).is_err());
    }

    #[test]
    fn records() {
        const R: Records = Records::new("org.test/fixtures/r", Severity::High);
        assert_eq!(R.sized(3, 20).payload.as_bytes(), b"record 3 xxxxxxxxxxx");
        assert_eq!(R.numbered(2).creation_timestamp, 1_700_000_002);
        assert_eq!(R.text("t").classification.as_str(), "org.test/fixtures/r");
    }
}
