//! The OTLP destination's requests: records as OpenTelemetry log records
//! (the mapping is in docs/WIRE.md), an export request per batch encoded
//! as protobuf (`prost`, the types of `opentelemetry-proto`) or the OTLP
//! JSON form, gzip-compressed or not, and the HTTP/1.1 request that
//! carries it to `otlp_endpoint` + `/v1/logs`. Also what the answer says
//! (partial success). Used by delivery and by `telemctl preview`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use telemetry::{MachineId, Payload, Record, RecordId};
use thiserror::Error;

use crate::config::{Config, Otlp, OtlpEncoding, PrivacyLevel};
use crate::request::USER_AGENT;

/// Why an export request could not be made.
#[derive(Debug, Error)]
pub enum OtlpError {
    #[error("cannot encode the OTLP export request as JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot gzip the OTLP export request: {0}")]
    Gzip(std::io::Error),
}

/// The instrumentation scope every log record is under.
pub const SCOPE_NAME: &str = "telemetrics";

/// What every record of one destination's requests shares, worked out once
/// per configuration.
#[derive(Debug, Clone)]
pub struct OtlpPrepared {
    pub otlp: Otlp,
    /// The URL as the transport connects to it.
    pub(crate) uri: Option<http::Uri>,
    path: String,
    host: String,
    pub privacy: PrivacyLevel,
}

impl OtlpPrepared {
    pub fn new(cfg: &Config) -> Option<OtlpPrepared> {
        let otlp = cfg.otlp.clone()?;
        let u = &otlp.url;
        let mut path = u.path().to_string();
        if let Some(q) = u.query() {
            path.push('?');
            path.push_str(q);
        }
        let host = match u.port() {
            Some(p) => format!("{}:{p}", u.host_str().unwrap_or_default()),
            None => u.host_str().unwrap_or_default().to_string(),
        };
        Some(OtlpPrepared { uri: u.as_str().parse().ok(), otlp, path, host, privacy: cfg.privacy_level })
    }
}

/// Who the records are from: the id sent as `host.id` (the rotating or
/// static machine id), or at `privacy_level = anonymous` the per-start
/// session id sent as `session.id` instead (no `host.id` at all).
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    pub id: &'a MachineId,
    pub privacy: PrivacyLevel,
}

/// One record as it is exported: its id and accept time beside it.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub record: &'a Record,
    pub record_id: RecordId,
    /// Unix seconds the collector accepted it.
    pub accepted: u64,
}

fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue { key: key.to_string(), value: Some(AnyValue { value: Some(v) }), ..KeyValue::default() }
}

fn s(key: &str, v: impl Into<String>) -> KeyValue {
    kv(key, any_value::Value::StringValue(v.into()))
}

fn i(key: &str, v: i64) -> KeyValue {
    kv(key, any_value::Value::IntValue(v))
}

/// The OpenTelemetry severity of severity 1-4.
pub fn severity(sev: u8) -> (SeverityNumber, &'static str) {
    match sev {
        0 | 1 => (SeverityNumber::Info, "INFO"),
        2 => (SeverityNumber::Warn, "WARN"),
        3 => (SeverityNumber::Error, "ERROR"),
        _ => (SeverityNumber::Fatal, "FATAL"),
    }
}

/// `host.arch` as the semantic conventions spell it.
pub fn host_arch(uname: &str) -> &str {
    match uname {
        "x86_64" => "amd64",
        "aarch64" | "arm64" => "arm64",
        "i386" | "i486" | "i586" | "i686" => "x86",
        "ppc64le" | "ppc64" => "ppc64",
        "s390x" => "s390x",
        other => other,
    }
}

/// `service.name`: the probe that sends records of this classification.
pub fn service_name(record: &Record) -> Cow<'static, str> {
    let c = &record.classification;
    let name = match (c.domain(), c.probe()) {
        ("org.clearlinux", "crash") => "crashprobe",
        ("org.clearlinux", "signal" | "oom" | "exit") => "eventprobe",
        ("org.clearlinux", "kernel" | "bert") => "klogscanner",
        ("org.clearlinux", "journal") => "journalprobe",
        ("org.clearlinux", "hello" | "heartbeat") => "hprobe",
        (_, probe) => return Cow::Owned(format!("telemetrics/{probe}")),
    };
    Cow::Borrowed(name)
}

/// The name of signal `n` (Linux numbering).
pub fn signal_name(n: i64) -> Cow<'static, str> {
    const NAMES: [&str; 32] = [
        "",
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    match usize::try_from(n).ok().and_then(|i| NAMES.get(i)).filter(|s| !s.is_empty()) {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(format!("SIG{n}")),
    }
}

/// What a crash or fatal-signal payload says about the process, for the
/// `exception.*` and `process.*` attributes. Taken from the payload as it
/// is sent (so scrubbed as it is).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CrashFacts {
    pub signal: Option<i64>,
    pub pid: Option<i64>,
    pub exe: Option<String>,
    pub signature: Option<String>,
    pub stacktrace: Option<String>,
    pub build_id: Option<String>,
}

impl CrashFacts {
    /// Reads the facts of crashprobe (format 1 text, format 2 JSON) and
    /// eventprobe (`signal/fatal`) payloads; `None` for other records.
    pub fn of(record: &Record) -> Option<CrashFacts> {
        let c = &record.classification;
        let crash = c.probe() == "crash" && c.rest() != "repeated";
        let fatal = c.probe() == "signal" && c.rest() == "fatal";
        if !(crash || fatal) {
            return None;
        }
        let text = match &record.payload {
            Payload::Text(t) => Cow::Borrowed(t.as_str()),
            Payload::Bytes(b) => String::from_utf8_lossy(b),
        };
        let facts = if text.trim_start().starts_with('{') { Self::from_json(&text) } else { Self::from_text(&text) };
        facts.filter(|f| f.signal.is_some() || f.exe.is_some())
    }

    fn from_text(text: &str) -> Option<CrashFacts> {
        let mut f = CrashFacts::default();
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("Process: ") {
                f.exe.get_or_insert_with(|| v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("PID: ") {
                f.pid = f.pid.or(v.trim().parse().ok());
            } else if let Some(v) = line.strip_prefix("Signal: ") {
                // `11` (crashprobe) or `11 (SIGSEGV)` (eventprobe).
                f.signal = f.signal.or(v.split_whitespace().next().and_then(|n| n.parse().ok()));
            } else if let Some(v) = line.strip_prefix("Signature: ") {
                f.signature.get_or_insert_with(|| v.trim().to_string());
            }
        }
        // The backtrace text: from the first backtrace heading on.
        let start = ["\nBacktrace", "\nFrame-pointer stack"].iter().filter_map(|h| text.find(h)).min();
        if let Some(st) = start {
            let bt = text[st + 1..].trim_end();
            if !bt.is_empty() {
                f.stacktrace = Some(bt.to_string());
            }
        }
        // eventprobe names build ids only in the kernel's frames, and which of
        // them is the executable is not said: none is claimed.
        Some(f)
    }

    fn from_json(text: &str) -> Option<CrashFacts> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        let exe = v.get("process").and_then(|p| p.as_str()).map(str::to_string);
        let mut f = CrashFacts {
            signal: v.get("signal").and_then(|s| s.as_i64()),
            pid: v.get("pid").and_then(|s| s.as_i64()),
            signature: v.get("signature").and_then(|s| s.as_str()).map(str::to_string),
            ..CrashFacts::default()
        };
        let mut bt = String::new();
        for t in v.get("threads").and_then(|t| t.as_array()).into_iter().flatten() {
            let tid = t.get("tid").and_then(|x| x.as_u64()).unwrap_or(0);
            let crashed = t.get("crashed").and_then(|x| x.as_bool()).unwrap_or(false);
            if !bt.is_empty() {
                bt.push('\n');
            }
            let _ = writeln!(bt, "Backtrace (TID {tid}{}):", if crashed { ", crashed" } else { "" });
            for fr in t.get("frames").and_then(|x| x.as_array()).into_iter().flatten() {
                let get = |k: &str| fr.get(k).and_then(|x| x.as_str());
                let module = get("module");
                let _ = write!(
                    bt,
                    "#{} {}() - [{}]",
                    fr.get("index").and_then(|x| x.as_u64()).unwrap_or(0),
                    get("function").unwrap_or("???"),
                    module.unwrap_or("??")
                );
                if let (Some(file), Some(line)) = (get("file"), fr.get("line").and_then(|x| x.as_u64())) {
                    let _ = write!(bt, " - {file}:{line}");
                }
                bt.push('\n');
                // The executable's build id: a frame in the executable.
                if f.build_id.is_none() {
                    if let (Some(m), Some(b), Some(e)) = (module, get("build_id"), exe.as_deref()) {
                        if m == e || e.rsplit('/').next() == Some(m) {
                            f.build_id = Some(b.to_string());
                        }
                    }
                }
            }
        }
        if !bt.is_empty() {
            f.stacktrace = Some(bt.trim_end().to_string());
        }
        f.exe = exe;
        Some(f)
    }

    /// The attributes (semantic conventions `exception.*`, `process.*`).
    pub fn attributes(&self, out: &mut Vec<KeyValue>) {
        if let Some(sig) = self.signal {
            let name = signal_name(sig);
            out.push(s("exception.type", name.clone()));
            let mut msg = format!("{name} (signal {sig})");
            if let Some(exe) = &self.exe {
                let _ = write!(msg, " in {exe}");
            }
            if let Some(sign) = &self.signature {
                let _ = write!(msg, ": {sign}");
            }
            out.push(s("exception.message", msg));
        }
        if let Some(st) = &self.stacktrace {
            out.push(s("exception.stacktrace", st.clone()));
        }
        if let Some(pid) = self.pid {
            out.push(i("process.pid", pid));
        }
        if let Some(exe) = &self.exe {
            let name = exe.rsplit('/').next().unwrap_or(exe);
            out.push(s("process.executable.name", name));
            if exe.starts_with('/') {
                out.push(s("process.executable.path", exe.clone()));
            }
        }
        if let Some(b) = &self.build_id {
            out.push(s("process.executable.build_id.gnu", b.clone()));
        }
    }
}

/// One record as an OpenTelemetry log record.
pub fn log_record(src: &Source<'_>) -> LogRecord {
    let r = src.record;
    let (num, text) = severity(r.severity.as_u8());
    let body = match &r.payload {
        Payload::Text(t) => any_value::Value::StringValue(t.clone()),
        Payload::Bytes(b) => any_value::Value::BytesValue(b.clone()),
    };
    let h = &r.host;
    let mut attributes = vec![
        s("telemetry.classification", r.classification.as_str()),
        s("telemetry.event_id", r.event_id.to_string()),
        s("telemetry.record_id", src.record_id.to_string()),
        i("telemetry.record_format_version", telemetry::record::RECORD_FORMAT_VERSION as i64),
        i("telemetry.payload_format_version", r.payload_format_version as i64),
        s("telemetry.kernel_version", h.kernel_version.as_str()),
        s("telemetry.host_type", h.host_type.as_str()),
        s("telemetry.board_name", h.board_name.as_str()),
        s("telemetry.cpu_model", h.cpu_model.as_str()),
        s("telemetry.bios_version", h.bios_version.as_str()),
    ];
    if let Some(f) = CrashFacts::of(r) {
        f.attributes(&mut attributes);
    }
    LogRecord {
        time_unix_nano: r.creation_timestamp.saturating_mul(1_000_000_000),
        observed_time_unix_nano: src.accepted.saturating_mul(1_000_000_000),
        severity_number: num as i32,
        severity_text: text.to_string(),
        body: Some(AnyValue { value: Some(body) }),
        attributes,
        event_name: r.classification.as_str().to_string(),
        ..LogRecord::default()
    }
}

/// The resource attributes of `record`'s machine and probe.
pub fn resource(record: &Record, who: &Identity<'_>) -> Resource {
    let h = &record.host;
    let mut attributes = vec![
        s("service.name", service_name(record)),
        s("host.arch", host_arch(h.arch.as_str())),
        s("os.type", "linux"),
        s("os.name", h.system_name.as_str()),
        s("os.version", h.build.as_str()),
    ];
    match who.privacy {
        PrivacyLevel::Anonymous => attributes.push(s("session.id", who.id.as_str())),
        _ => attributes.push(s("host.id", who.id.as_str())),
    }
    Resource { attributes, ..Resource::default() }
}

/// The export request of a batch: one `ResourceLogs` per probe and host
/// facts, records in batch order within each.
pub fn export_request(batch: &[Source<'_>], who: &Identity<'_>) -> ExportLogsServiceRequest {
    // Keyed by (service, host facts): records of one probe of this machine
    // share a resource.
    type Key<'a> = (Cow<'static, str>, &'a str, &'a str, &'a str);
    let mut groups: BTreeMap<Key<'_>, usize> = BTreeMap::new();
    let mut out: Vec<ResourceLogs> = Vec::new();
    for src in batch {
        let h = &src.record.host;
        let key = (service_name(src.record), h.arch.as_str(), h.system_name.as_str(), h.build.as_str());
        let at = *groups.entry(key).or_insert_with(|| {
            out.push(ResourceLogs {
                resource: Some(resource(src.record, who)),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: SCOPE_NAME.into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..InstrumentationScope::default()
                    }),
                    ..ScopeLogs::default()
                }],
                ..ResourceLogs::default()
            });
            out.len() - 1
        });
        if let Some(sl) = out.get_mut(at).and_then(|rl| rl.scope_logs.first_mut()) {
            sl.log_records.push(log_record(src));
        }
    }
    ExportLogsServiceRequest { resource_logs: out }
}

/// The export request's body: encoded, then gzipped when configured.
pub fn encode_body(req: &ExportLogsServiceRequest, otlp: &Otlp) -> Result<Vec<u8>, OtlpError> {
    let raw = match otlp.encoding {
        OtlpEncoding::Protobuf => req.encode_to_vec(),
        OtlpEncoding::Json => serde_json::to_vec(req)?,
    };
    if !otlp.gzip {
        return Ok(raw);
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::with_capacity(raw.len() / 4 + 64), flate2::Compression::fast());
    gz.write_all(&raw).map_err(OtlpError::Gzip)?;
    gz.finish().map_err(OtlpError::Gzip)
}

/// The content type of `encoding`.
pub fn content_type(encoding: OtlpEncoding) -> &'static str {
    match encoding {
        OtlpEncoding::Protobuf => "application/x-protobuf",
        OtlpEncoding::Json => "application/json",
    }
}

/// The headers of an export request, in sending order, as spelled on the
/// wire (`Host` and `Content-Length` included).
pub fn headers(prep: &OtlpPrepared, body_len: usize) -> Vec<(String, String)> {
    let mut h = vec![
        ("Host".to_string(), prep.host.clone()),
        ("User-Agent".to_string(), USER_AGENT.to_string()),
        ("Content-Type".to_string(), content_type(prep.otlp.encoding).to_string()),
    ];
    if prep.otlp.gzip {
        h.push(("Content-Encoding".into(), "gzip".into()));
    }
    h.extend(prep.otlp.headers.iter().cloned());
    h.push(("Content-Length".into(), body_len.to_string()));
    h
}

/// The export request on the wire: request line, headers, body.
pub fn encode_http(prep: &OtlpPrepared, body: &[u8]) -> Bytes {
    let hs = headers(prep, body.len());
    let head: usize = hs.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
    let mut out = Vec::with_capacity(prep.path.len() + 20 + head + body.len());
    let _ = write!(out, "POST {} HTTP/1.1\r\n", prep.path);
    for (k, v) in &hs {
        let _ = write!(out, "{k}: {v}\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    Bytes::from(out)
}

/// What a 2xx answer says: how many log records the receiver rejected
/// and why (a partial success), or `None` when it took them all. An answer
/// that cannot be parsed is taken as full success (the status says so).
pub fn partial_success(body: &[u8], encoding: OtlpEncoding) -> Option<(i64, String)> {
    if body.is_empty() {
        return None;
    }
    let (rejected, message) = match encoding {
        OtlpEncoding::Protobuf => {
            let p = ExportLogsServiceResponse::decode(body).ok()?.partial_success?;
            (p.rejected_log_records, p.error_message)
        }
        OtlpEncoding::Json => {
            // int64 comes as a JSON string or number (the OTLP JSON rules).
            let v: serde_json::Value = serde_json::from_slice(body).ok()?;
            let p = v.get("partialSuccess")?;
            let rejected = match p.get("rejectedLogRecords") {
                Some(serde_json::Value::String(s)) => s.parse().unwrap_or(0),
                Some(n) => n.as_i64().unwrap_or(0),
                None => 0,
            };
            (rejected, p.get("errorMessage").and_then(|m| m.as_str()).unwrap_or_default().to_string())
        }
    };
    (rejected > 0 || !message.is_empty()).then_some((rejected, message))
}

/// The OTLP JSON form of one record's export request (what `telemctl
/// preview` shows).
pub fn preview_json(src: &Source<'_>, who: &Identity<'_>) -> Result<String, OtlpError> {
    Ok(serde_json::to_string_pretty(&export_request(std::slice::from_ref(src), who))?)
}

#[cfg(test)]
mod tests;
