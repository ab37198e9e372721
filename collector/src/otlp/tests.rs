use std::io::Read;

use telemetry::{Classification, Payload, Record, RecordId, Severity};

use super::*;

fn record(class: &str, sev: Severity, payload: &str) -> Record {
    Record::builder(Classification::parse(class).unwrap(), sev, Payload::text(payload))
        .creation_timestamp(1_700_000_000)
        .build()
}

fn otlp(encoding: OtlpEncoding, gzip: bool) -> Otlp {
    Otlp {
        url: url::Url::parse("http://127.0.0.1:4318/v1/logs").unwrap(),
        headers: vec![("Authorization".into(), "Bearer t".into())],
        gzip,
        encoding,
        batch_records: 512,
        batch_bytes: 1 << 20,
    }
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs.iter().find(|k| k.key == key).and_then(|k| k.value.as_ref()).and_then(|v| v.value.as_ref())
}

fn str_attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attr(attrs, key) {
        Some(any_value::Value::StringValue(s)) => Some(s),
        _ => None,
    }
}

const CRASH_V1: &str = "Process: /usr/bin/segv\nPID: 1218\nSignal: 11\nSignature: segv!level3 | segv!level2 @ segv+0x1139\n\nBacktrace (TID 1218):\n#0 level3() - [segv] - segv.c:3\n#1 main() - [segv] - segv.c:9\n\n";

const FATAL: &str = "Process: /opt/app/bin/server\nPID: 77\nTID: 78\nComm: server\nUID: 0\nSignal: 6 (SIGABRT)\nsi_code: SI_TKILL\nRegisters: ip=0x1 sp=0x2 bp=0x3\nBacktrace (unwound: cfi, then frame pointers, then scan; end: Outermost):\n#0  0x0000000000401000 abort [server+0x1000]\nFrame-pointer stack (bpf_get_stack):\n#0  0x0000000000401000 ??\n";

#[test]
fn severities() {
    assert_eq!(severity(1), (SeverityNumber::Info, "INFO"));
    assert_eq!(severity(2), (SeverityNumber::Warn, "WARN"));
    assert_eq!(severity(3), (SeverityNumber::Error, "ERROR"));
    assert_eq!(severity(4), (SeverityNumber::Fatal, "FATAL"));
    assert_eq!(SeverityNumber::Info as i32, 9);
    assert_eq!(SeverityNumber::Fatal as i32, 21);
}

#[test]
fn crash_v1_record_maps_every_attribute() {
    let r = record("org.clearlinux/crash/clr", Severity::High, CRASH_V1);
    let id = RecordId::from_bytes([9; 16]);
    let lr = log_record(&Source { record: &r, record_id: id, accepted: 1_700_000_005 });
    assert_eq!(lr.time_unix_nano, 1_700_000_000_000_000_000);
    assert_eq!(lr.observed_time_unix_nano, 1_700_000_005_000_000_000);
    assert_eq!(lr.severity_number, SeverityNumber::Error as i32);
    assert_eq!(lr.severity_text, "ERROR");
    assert_eq!(lr.body.as_ref().and_then(|b| b.value.clone()), Some(any_value::Value::StringValue(CRASH_V1.into())));
    let a = &lr.attributes;
    assert_eq!(str_attr(a, "telemetry.classification"), Some("org.clearlinux/crash/clr"));
    assert_eq!(str_attr(a, "telemetry.event_id"), Some(r.event_id.to_string().as_str()));
    assert_eq!(str_attr(a, "telemetry.record_id"), Some(id.to_string().as_str()));
    assert_eq!(attr(a, "telemetry.record_format_version"), Some(&any_value::Value::IntValue(4)));
    assert_eq!(attr(a, "telemetry.payload_format_version"), Some(&any_value::Value::IntValue(1)));
    assert_eq!(str_attr(a, "exception.type"), Some("SIGSEGV"));
    assert_eq!(
        str_attr(a, "exception.message"),
        Some("SIGSEGV (signal 11) in /usr/bin/segv: segv!level3 | segv!level2 @ segv+0x1139")
    );
    let st = str_attr(a, "exception.stacktrace").unwrap();
    assert!(st.starts_with("Backtrace (TID 1218):\n#0 level3()") && st.ends_with("segv.c:9"), "{st}");
    assert_eq!(attr(a, "process.pid"), Some(&any_value::Value::IntValue(1218)));
    assert_eq!(str_attr(a, "process.executable.name"), Some("segv"));
    assert_eq!(str_attr(a, "process.executable.path"), Some("/usr/bin/segv"));
    assert_eq!(str_attr(a, "process.executable.build_id.gnu"), None);
}

#[test]
fn fatal_signal_and_v2_crash_payloads() {
    let r = record("org.clearlinux/signal/fatal", Severity::High, FATAL);
    let f = CrashFacts::of(&r).unwrap();
    assert_eq!((f.signal, f.pid), (Some(6), Some(77)));
    assert_eq!(f.exe.as_deref(), Some("/opt/app/bin/server"));
    assert!(f.stacktrace.as_deref().unwrap().starts_with("Backtrace (unwound"));
    let v2 = r#"{"payload_format":2,"process":"/usr/bin/segv","pid":5,"signal":11,"signature":"s","threads":[{"tid":5,"crashed":true,"end":"outermost","frames":[{"index":0,"pc":"0x1","module":"/usr/bin/segv","build_id":"abcdef","function":"level3","file":"segv.c","line":3},{"index":1,"pc":"0x2","module":"/usr/lib/libc.so.6","build_id":"0011","function":"__libc_start_main"}]}]}"#;
    let mut r = record("org.clearlinux/crash/clr", Severity::High, v2);
    r.payload_format_version = 2;
    let f = CrashFacts::of(&r).unwrap();
    assert_eq!(f.build_id.as_deref(), Some("abcdef"));
    assert_eq!(f.stacktrace.as_deref(), Some("Backtrace (TID 5, crashed):\n#0 level3() - [/usr/bin/segv] - segv.c:3\n#1 __libc_start_main() - [/usr/lib/libc.so.6]"));
    let mut a = Vec::new();
    f.attributes(&mut a);
    assert_eq!(str_attr(&a, "process.executable.build_id.gnu"), Some("abcdef"));
    // Other records carry no exception attributes.
    assert!(CrashFacts::of(&record("org.clearlinux/hello/world", Severity::Low, "Signal: 11\n")).is_none());
    assert!(CrashFacts::of(&record("org.clearlinux/crash/repeated", Severity::Low, "count: 3\n")).is_none());
    assert_eq!(signal_name(64), "SIG64");
}

#[test]
fn resource_by_privacy_level() {
    let r = record("org.clearlinux/hello/world", Severity::Low, "hello\n");
    let id = MachineId::parse("0123456789abcdef0123456789abcdef").unwrap();
    let res = resource(&r, &Identity { id: &id, privacy: PrivacyLevel::Standard });
    let a = &res.attributes;
    assert_eq!(str_attr(a, "service.name"), Some("hprobe"));
    assert_eq!(str_attr(a, "os.type"), Some("linux"));
    assert!(str_attr(a, "host.arch").is_some() && str_attr(a, "os.version").is_some());
    assert_eq!(str_attr(a, "host.id"), Some(id.as_str()));
    assert_eq!(str_attr(a, "session.id"), None);
    let res = resource(&r, &Identity { id: &id, privacy: PrivacyLevel::Anonymous });
    assert_eq!(str_attr(&res.attributes, "host.id"), None);
    assert_eq!(str_attr(&res.attributes, "session.id"), Some(id.as_str()));
    assert_eq!(host_arch("x86_64"), "amd64");
    assert_eq!(host_arch("aarch64"), "arm64");
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b).read_to_end(&mut out).unwrap();
    out
}

#[test]
fn protobuf_and_json_gzip_or_not() {
    let a = record("org.clearlinux/crash/clr", Severity::High, CRASH_V1);
    let b = record("org.clearlinux/hello/world", Severity::Low, "hello\n");
    let c = record("org.clearlinux/hello/world", Severity::Low, "hello again\n");
    let id = MachineId::parse("0123456789abcdef0123456789abcdef").unwrap();
    let who = Identity { id: &id, privacy: PrivacyLevel::Standard };
    let batch: Vec<Source<'_>> = [&a, &b, &c]
        .iter()
        .enumerate()
        .map(|(n, r)| Source { record: r, record_id: RecordId::from_bytes([n as u8; 16]), accepted: 1 })
        .collect();
    let req = export_request(&batch, &who);
    // Grouped by probe: crashprobe's record, then hprobe's two.
    assert_eq!(req.resource_logs.len(), 2);
    assert_eq!(req.resource_logs[1].scope_logs[0].log_records.len(), 2);
    assert_eq!(req.resource_logs[0].scope_logs[0].scope.as_ref().unwrap().name, SCOPE_NAME);
    for gzip in [false, true] {
        let body = encode_body(&req, &otlp(OtlpEncoding::Protobuf, gzip)).unwrap();
        let raw = if gzip { gunzip(&body) } else { body };
        assert_eq!(ExportLogsServiceRequest::decode(raw.as_slice()).unwrap(), req);
        let body = encode_body(&req, &otlp(OtlpEncoding::Json, gzip)).unwrap();
        let raw = if gzip { gunzip(&body) } else { body };
        let v: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        let lr = &v["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0];
        assert_eq!(lr["timeUnixNano"], "1700000000000000000");
        assert_eq!(lr["severityNumber"], 17);
        assert_eq!(lr["body"]["stringValue"], CRASH_V1);
        let back: ExportLogsServiceRequest = serde_json::from_slice(&raw).unwrap();
        assert_eq!(back, req);
    }
}

#[test]
fn http_request_and_partial_success() {
    let cfg = Config { otlp: Some(otlp(OtlpEncoding::Protobuf, true)), ..Config::default() };
    let prep = OtlpPrepared::new(&cfg).unwrap();
    let wire = encode_http(&prep, b"xyz");
    let text = String::from_utf8_lossy(&wire);
    assert!(text.starts_with("POST /v1/logs HTTP/1.1\r\nHost: 127.0.0.1:4318\r\n"), "{text}");
    assert!(text.contains("\r\nContent-Type: application/x-protobuf\r\nContent-Encoding: gzip\r\nAuthorization: Bearer t\r\nContent-Length: 3\r\n\r\nxyz"), "{text}");
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsPartialSuccess;
    let resp = ExportLogsServiceResponse {
        partial_success: Some(ExportLogsPartialSuccess { rejected_log_records: 2, error_message: "too old".into() }),
    };
    assert_eq!(partial_success(&resp.encode_to_vec(), OtlpEncoding::Protobuf), Some((2, "too old".into())));
    assert_eq!(
        partial_success(br#"{"partialSuccess":{"rejectedLogRecords":"3","errorMessage":"bad"}}"#, OtlpEncoding::Json),
        Some((3, "bad".into()))
    );
    assert_eq!(partial_success(b"{}", OtlpEncoding::Json), None);
    assert_eq!(partial_success(b"", OtlpEncoding::Protobuf), None);
    assert_eq!(partial_success(&ExportLogsServiceResponse::default().encode_to_vec(), OtlpEncoding::Protobuf), None);
}

/// The data dictionary's OTLP table (`telemetry::fields::OTLP_FIELDS`,
/// docs/DATA.md) names exactly the attributes the mapping makes.
#[test]
fn the_data_dictionary_lists_every_attribute() {
    use std::collections::BTreeSet;
    let names: BTreeSet<String> = telemetry::fields::OTLP_FIELDS
        .iter()
        .flat_map(|f| {
            let n = f.name.trim_start_matches("resource: ");
            let parts: Vec<&str> = n.split(" / ").collect();
            let stem = parts[0].rfind('.').map(|i| &parts[0][..i]).unwrap_or("");
            parts
                .iter()
                .map(|p| if p.starts_with('.') { format!("{stem}{p}") } else { p.to_string() })
                .collect::<Vec<_>>()
        })
        .filter(|n| n.contains('.'))
        .collect();
    let v2 = r#"{"payload_format":2,"process":"/usr/bin/segv","pid":5,"signal":11,"threads":[{"tid":5,"crashed":true,"frames":[{"index":0,"module":"/usr/bin/segv","build_id":"ab"}]}]}"#;
    let r = record("org.clearlinux/crash/clr", Severity::High, v2);
    let id = MachineId::parse("0123456789abcdef0123456789abcdef").unwrap();
    let mut made = BTreeSet::new();
    let lr = log_record(&Source { record: &r, record_id: RecordId::from_bytes([1; 16]), accepted: 1 });
    made.extend(lr.attributes.iter().map(|k| k.key.clone()));
    for privacy in [PrivacyLevel::Standard, PrivacyLevel::Anonymous] {
        made.extend(resource(&r, &Identity { id: &id, privacy }).attributes.iter().map(|k| k.key.clone()));
    }
    assert_eq!(made, names, "telemetry::fields::OTLP_FIELDS and the mapping disagree");
}
