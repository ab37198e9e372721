//! The OTLP destination end to end: the real collector exporting to a real
//! OpenTelemetry collector (rotel, its OTLP/HTTP receiver and debug log),
//! and to the test sink where answers must be scripted (429, 400, partial
//! success).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::time::{Duration, Instant};

use e2e::collector::Collector;
use e2e::fixtures::record;
use e2e::rotel::{LogRecord, Rotel};
use e2e::sink::{Mode, Sink};
use telemetry::client::Client;
use telemetry::{Record, Severity};

const CRASH_V1: &str = "Process: /home/alice/bin/crasher\nPID: 4242\nSignal: 11\nSignature: crasher!level3 | crasher!main @ crasher+0x1139\n\nBacktrace (TID 4242):\n#0 level3() - [crasher] - crasher.c:3\n#1 main() - [crasher] - crasher.c:9\n\n";

const CRASH_V2: &str = r#"{"payload_format":2,"process":"/usr/bin/segv","pid":5,"signal":6,"signal_code":null,"fault_address":null,"partial":false,"memory_withheld":false,"signature":"segv!abort","errors":[],"threads":[{"tid":5,"crashed":true,"end":"outermost","error":null,"frames":[{"index":0,"pc":"0x1","sp":"0x2","source":"cfi","exact":true,"module":"/usr/bin/segv","build_id":"0123abcd","module_offset":"0x10","function":"main","file":"segv.c","line":3,"inlined":[]}]}]}"#;

const FATAL: &str = "Process: /opt/app/bin/server\nPID: 77\nTID: 78\nComm: server\nUID: 0\nSignal: 6 (SIGABRT)\nsi_code: SI_TKILL\nRegisters: ip=0x1 sp=0x2 bp=0x3\nStack copy: 4096 bytes from 0x7ffc0000\nBacktrace (unwound: cfi, then frame pointers, then scan; end: Outermost):\n#0  0x0000000000401000 abort [server+0x1000]\nFrame-pointer stack (bpf_get_stack):\n#0  0x0000000000401000 ??\n";

/// A record of each probe's kind, as the probes send them.
fn probe_records() -> Vec<(&'static str, Record)> {
    let mut v2 = record("org.clearlinux/crash/clr", Severity::High, CRASH_V2);
    v2.payload_format_version = 2;
    vec![
        ("hprobe", record("org.clearlinux/hello/world", Severity::Low, "hello\n")),
        ("crashprobe", record("org.clearlinux/crash/clr", Severity::High, CRASH_V1)),
        ("crashprobe", v2),
        ("eventprobe", record("org.clearlinux/signal/fatal", Severity::High, FATAL)),
        ("eventprobe", record("org.clearlinux/exit/abnormal", Severity::Medium, "PID: 9\nExit code: 3\n")),
        (
            "klogscanner",
            record(
                "org.clearlinux/kernel/warning",
                Severity::Medium,
                "WARNING: CPU: 0 PID: 1 at x\nKernel Version : 6\n",
            ),
        ),
        ("journalprobe", record("org.clearlinux/journal/error", Severity::Critical, "unit x.service failed\n")),
    ]
}

fn otlp_collector(endpoint: &str, extra: &str) -> Collector {
    let c = Collector::new(None, &format!("otlp_endpoint={endpoint}\n{extra}"));
    std::fs::create_dir_all(c.dir.join("etc")).unwrap();
    std::fs::write(c.dir.join("etc/opt-in"), b"").unwrap();
    c
}

fn send_all(client: &mut Client, records: &[Record]) -> Vec<String> {
    let mut ids = Vec::new();
    for chunk in records.chunks(200) {
        for a in client.send_many(chunk).expect("sent") {
            ids.push(a.expect("accepted").to_string());
        }
    }
    ids
}

fn by_id(got: &[LogRecord]) -> BTreeMap<String, LogRecord> {
    got.iter().map(|r| (r.attributes.get("telemetry.record_id").cloned().unwrap_or_default(), r.clone())).collect()
}

fn check_probes(encoding: &str, compression: &str) {
    let Some(rotel) = Rotel::start() else { return };
    let mut c = otlp_collector(&rotel.endpoint(), &format!("otlp_encoding={encoding}\notlp_compression={compression}"));
    c.start();
    let recs = probe_records();
    let records: Vec<Record> = recs.iter().map(|(_, r)| r.clone()).collect();
    let ids = send_all(&mut c.client(), &records);
    let got = rotel.wait_records(Duration::from_secs(20), |g| by_id(g).len() >= ids.len());
    let got = by_id(&got);
    assert_eq!(got.len(), ids.len(), "every record arrives ({encoding}, {compression}):\n{}", c.log());
    let mid = std::fs::read_to_string(c.dir.join("state/machine_id")).unwrap().trim().to_string();
    for ((probe, sent), id) in recs.iter().zip(&ids) {
        let r = &got[id];
        let a = &r.attributes;
        assert_eq!(r.resource["service.name"], *probe, "{r:?}");
        assert_eq!(r.resource["host.id"], mid);
        assert_eq!(r.resource["os.type"], "linux");
        assert!(r.resource.contains_key("host.arch") && r.resource.contains_key("os.version"), "{r:?}");
        assert!(!r.resource.contains_key("session.id"));
        assert_eq!(a["telemetry.classification"], sent.classification.as_str());
        assert_eq!(a["telemetry.event_id"], sent.event_id.to_string());
        assert_eq!(a["telemetry.record_format_version"], "4");
        assert_eq!(a["telemetry.payload_format_version"], sent.payload_format_version.to_string());
        assert_eq!(r.timestamp, format!("{}", sent.creation_timestamp as u128 * 1_000_000_000));
        assert!(r.observed.parse::<u128>().unwrap() >= sent.creation_timestamp as u128 * 1_000_000_000);
        let (text, num) = match sent.severity.as_u8() {
            1 => ("INFO", 9),
            2 => ("WARN", 13),
            3 => ("ERROR", 17),
            _ => ("FATAL", 21),
        };
        assert_eq!(r.severity_text, text);
        assert!(r.severity_number.ends_with(&format!("({num})")), "{}", r.severity_number);
        let body = sent.payload.to_text_lossy().replace("/home/alice/", "/home/<user>/");
        assert_eq!(r.body, body, "body = the payload (scrubbed)");
        let crash = sent.classification.probe() == "crash" || sent.classification.as_str().ends_with("signal/fatal");
        assert_eq!(a.contains_key("exception.type"), crash, "{a:?}");
    }
    let crash = &got[&ids[1]].attributes;
    assert_eq!(crash["exception.type"], "SIGSEGV");
    assert!(crash["exception.message"].starts_with("SIGSEGV (signal 11) in /home/<user>/bin/crasher"), "{crash:?}");
    assert!(crash["exception.stacktrace"].starts_with("Backtrace (TID 4242):\n#0 level3()"), "{crash:?}");
    assert_eq!(crash["process.pid"], "4242");
    assert_eq!(crash["process.executable.name"], "crasher");
    assert_eq!(crash["process.executable.path"], "/home/<user>/bin/crasher", "scrubbed like the payload");
    let v2 = &got[&ids[2]].attributes;
    assert_eq!(v2["exception.type"], "SIGABRT");
    assert_eq!(v2["process.executable.build_id.gnu"], "0123abcd");
    let fatal = &got[&ids[3]].attributes;
    assert_eq!((fatal["exception.type"].as_str(), fatal["process.pid"].as_str()), ("SIGABRT", "77"));
    assert_eq!(fatal["process.executable.path"], "/opt/app/bin/server");
    assert!(fatal["exception.stacktrace"].starts_with("Backtrace (unwound"));
    // Journaled per destination.
    let j = c.wait_journal(Duration::from_secs(10), |j| j.iter().all(|e| e["fate"] == "delivered (otlp)"));
    assert!(j.iter().all(|e| e["fate"] == "delivered (otlp)"), "{j:?}");
    let s = c.status();
    let d = &s["destinations"][0];
    assert_eq!((d["name"].as_str(), d["delivered"].as_u64()), (Some("otlp"), Some(ids.len() as u64)), "{s}");
    assert_eq!(s["delivered"], ids.len() as u64, "with OTLP alone the top-level counters are its own: {s}");
    // (It leaves the spool once its journal line is written.)
    assert_eq!(c.wait_status(Duration::from_secs(10), |s| s["spooled"] == 0)["spooled"], 0);
    assert!(c.stop(), "clean exit:\n{}", c.log());
}

#[test]
fn every_probe_arrives_with_its_attributes_protobuf_gzip() {
    check_probes("protobuf", "gzip");
}

#[test]
fn every_probe_arrives_with_its_attributes_protobuf_plain() {
    check_probes("protobuf", "none");
}

#[test]
fn every_probe_arrives_with_its_attributes_json_gzip() {
    check_probes("json", "gzip");
}

#[test]
fn every_probe_arrives_with_its_attributes_json_plain() {
    check_probes("json", "none");
}

/// At `privacy_level = anonymous` no `host.id` leaves: the per-start
/// session id is sent as `session.id`.
#[test]
fn anonymous_sends_no_host_id() {
    let Some(rotel) = Rotel::start() else { return };
    let mut c = otlp_collector(&rotel.endpoint(), "privacy_level=anonymous");
    c.start();
    let ids = send_all(&mut c.client(), &[record("org.clearlinux/hello/world", Severity::Low, "hello\n")]);
    let got = rotel.wait_records(Duration::from_secs(20), |g| !g.is_empty());
    let r = &by_id(&got)[&ids[0]];
    assert!(!r.resource.contains_key("host.id"), "{r:?}");
    assert_eq!(r.resource["session.id"].len(), 32);
    assert!(!c.dir.join("state/machine_id").exists());
}

/// kill -9 of rotel in the middle of 20,000 records, then started again:
/// every record arrives (at least once), none is lost, and the collector
/// journals each as delivered. rotel answers an export once the batch is in
/// its pipeline, before its exporter has written it: a batch it answered in
/// the instant before the kill is gone with it (the receiver's loss, not
/// ours). Such records must be journaled as delivered no later than the
/// kill, and be at most a few batches; any other missing record fails.
#[test]
fn rotel_killed_mid_stream_loses_nothing() {
    const N: usize = 20_000;
    let Some(mut rotel) = Rotel::start() else { return };
    let mut c =
        otlp_collector(&rotel.endpoint(), "rate_limit_enabled=false\nspool_max_size=-1\notlp_batch_records=200");
    c.start();
    let records: Vec<Record> =
        (0..N).map(|i| record("org.test/otlp/kill", Severity::Medium, format!("record {i}\n"))).collect();
    let mut client = c.client();
    let mut ids = send_all(&mut client, &records[..N / 4]);
    // Wait until records flow, then kill rotel while the rest are sent.
    let flowing = rotel.wait_records(Duration::from_secs(20), |g| g.len() > 1000);
    assert!(flowing.len() > 1000, "records flow before the kill:\n{}", c.log_summary(10));
    rotel.kill9();
    let killed_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    ids.extend(send_all(&mut client, &records[N / 4..N / 2]));
    std::thread::sleep(Duration::from_millis(1500));
    rotel.restart();
    ids.extend(send_all(&mut client, &records[N / 2..]));
    assert_eq!(ids.len(), N);
    let want: BTreeSet<String> = ids.iter().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut got: BTreeSet<String> = BTreeSet::new();
    while Instant::now() < deadline {
        got = rotel.record_ids().into_iter().collect();
        if want.is_subset(&got) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let missing: BTreeSet<&String> = want.difference(&got).collect();
    if !missing.is_empty() {
        // Answered by the rotel that was killed: journaled as delivered by then.
        let journal = c.journal(&[]);
        let acked_before_kill: BTreeSet<&String> = missing
            .iter()
            .copied()
            .filter(|id| {
                journal.iter().any(|j| {
                    j["id"] == id.as_str()
                        && j["fate"] == "delivered (otlp)"
                        && j["fate_time"].as_u64().is_some_and(|t| t <= killed_at + 1)
                })
            })
            .collect();
        let lost: Vec<&&String> = missing.difference(&acked_before_kill).take(5).collect();
        assert!(
            lost.is_empty() && missing.len() <= 4 * 200,
            "{} of {N} records never arrived, {} of them answered by rotel before its kill (at most 800 may be), \
             e.g. not answered: {lost:?}:\n{}",
            missing.len(),
            acked_before_kill.len(),
            c.log_summary(10)
        );
        eprintln!("{} records answered by rotel just before its kill -9 were lost with it", missing.len());
    }
    let s = c.wait_status(Duration::from_secs(20), |s| s["spooled"] == 0);
    assert_eq!(s["spooled"], 0, "{s}");
    assert!(s["destinations"][0]["failures"].as_u64().unwrap_or(0) > 0, "the kill was noticed: {s}");
    let total = rotel.record_ids().len();
    // Records rotel lost with its kill (allowed above) are not among them.
    let again = (total + missing.len()).saturating_sub(N);
    eprintln!("{N} records sent, {total} log records received ({} lost with rotel, {again} again)", missing.len());
}

/// A 429 with `Retry-After` is honoured: nothing is sent to the endpoint
/// before it says, then the same records are sent again.
#[test]
fn retry_after_is_honoured() {
    let sink = Sink::start();
    sink.answer_next([Mode::retry_after_secs(429, 2)]);
    let mut c = otlp_collector(&sink.url(), "otlp_compression=none");
    c.start();
    let ids = send_all(&mut c.client(), &[record("org.test/otlp/retry", Severity::Low, "one\n")]);
    assert!(sink.wait_for(Duration::from_secs(15), |p| p.len() >= 2), "posted again:\n{}", c.log());
    let posts = sink.posts();
    assert_eq!(posts[0].answered, Some(429));
    assert_eq!(posts[0].path, "/v1/logs");
    assert_eq!(posts[0].header("Content-Type"), Some("application/x-protobuf"));
    let waited = posts[1].at.duration_since(posts[0].at);
    assert!(waited >= Duration::from_millis(1900), "Retry-After: 2 honoured, waited {waited:?}");
    assert_eq!(posts[0].body, posts[1].body, "the same request again");
    let j = c.wait_journal(Duration::from_secs(10), |j| j.iter().any(|e| e["fate"] == "delivered (otlp)"));
    assert_eq!(j[0]["id"], ids[0].as_str());
    assert_eq!(j[0]["fate"], "delivered (otlp)");
    assert!(c.status()["destinations"][0]["failures"].as_u64() >= Some(1));
}

/// 502/503/504 are retried; other statuses are final (`rejected-by-server
/// (otlp)`), and a partial success is journaled with how many were
/// rejected and why.
#[test]
fn final_statuses_and_partial_success() {
    let sink = Sink::start();
    sink.answer_next([
        Mode::Status(503, String::new()),
        Mode::Status(400, "bad data".into()),
        Mode::Status(200, r#"{"partialSuccess":{"rejectedLogRecords":"1","errorMessage":"too old"}}"#.into()),
    ]);
    let mut c = otlp_collector(&sink.url(), "otlp_encoding=json\notlp_compression=none\notlp_batch_records=1");
    c.start();
    let mut client = c.client();
    // One at a time, so each meets its answer.
    let a = send_all(&mut client, &[record("org.test/otlp/final", Severity::Low, "a\n")]);
    assert!(sink.wait_for(Duration::from_secs(15), |p| p.iter().filter(|p| p.answered == Some(400)).count() == 1));
    let b = send_all(&mut client, &[record("org.test/otlp/final", Severity::Low, "b\n")]);
    let j = c.wait_journal(Duration::from_secs(15), |j| j.len() == 2 && j.iter().all(|e| e["fate"] != "spooled"));
    let fate = |id: &str| j.iter().find(|e| e["id"] == id).map(|e| e["fate"].as_str().unwrap_or("").to_string());
    // 503 then 400: the record was sent twice and refused for good.
    assert_eq!(fate(&a[0]).as_deref(), Some("rejected-by-server (otlp): 400 bad data"), "{j:?}");
    assert_eq!(
        fate(&b[0]).as_deref(),
        Some("delivered (otlp): partial success, 1 of 1 log records in its request rejected: too old"),
        "{j:?}"
    );
    let posts = sink.posts();
    assert_eq!(posts[0].header("Content-Type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_slice(&posts[0].body).unwrap();
    assert_eq!(v["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]["body"]["stringValue"], "a\n");
    let s = c.status();
    let d = &s["destinations"][0];
    assert_eq!((d["rejected"].as_u64(), d["partial_rejected"].as_u64()), (Some(1), Some(1)), "{s}");
}

/// The original v2 backend and OTLP at once: each receives every record,
/// and a record leaves the spool only once both took it (one down keeps
/// it spooled; the journal has a fate per destination).
#[test]
fn server_and_otlp_each_receive_every_record() {
    let Some(rotel) = Rotel::start() else { return };
    let sink = Sink::start();
    sink.set_mode(Mode::Status(503, String::new()));
    let mut c =
        Collector::new(Some(&sink.url()), &format!("otlp_endpoint={}\nrate_limit_enabled=false", rotel.endpoint()));
    c.start();
    let records: Vec<Record> =
        (0..300).map(|i| record("org.test/otlp/both", Severity::Medium, format!("both {i}\n"))).collect();
    let ids = send_all(&mut c.client(), &records);
    // OTLP takes them all while the server refuses: they stay spooled.
    let got = rotel.wait_records(Duration::from_secs(20), |g| g.len() >= 300);
    assert_eq!(by_id(&got).len(), 300);
    std::thread::sleep(Duration::from_millis(300));
    let s = c.status();
    assert_eq!(s["spooled"], 300, "kept for the server: {s}");
    sink.set_mode(Mode::ok());
    assert!(
        sink.wait_for(Duration::from_secs(30), |p| p.iter().filter(|p| p.ok()).count() >= 300),
        "the server gets every record:\n{}",
        c.log_summary(10)
    );
    let s = c.wait_status(Duration::from_secs(20), |s| s["spooled"] == 0);
    assert_eq!(s["spooled"], 0, "{s}");
    let delivered: BTreeSet<String> = sink
        .delivered()
        .iter()
        .filter_map(|p| p.decoded.as_ref().ok().map(|(r, _)| r.payload.to_text_lossy().into_owned()))
        .collect();
    assert_eq!(delivered.len(), 300);
    let names: Vec<&str> = s["destinations"].as_array().unwrap().iter().filter_map(|d| d["name"].as_str()).collect();
    assert_eq!(names, ["server", "otlp"]);
    // Each record's journal has both fates (the last one shows in
    // `telemctl journal`; the raw journal has both lines).
    let mut raw = String::new();
    std::fs::File::open(c.dir.join("journal/journal")).unwrap().read_to_string(&mut raw).unwrap();
    for id in ids.iter().take(20) {
        let lines: Vec<&str> = raw.lines().filter(|l| l.contains(id.as_str())).collect();
        assert!(lines.iter().any(|l| l.contains(r#""fate":"delivered""#)), "{lines:?}");
        assert!(lines.iter().any(|l| l.contains(r#""fate":"delivered (otlp)""#)), "{lines:?}");
    }
    assert!(c.stop());
}

/// `telemctl preview` shows the OTLP JSON form of a journaled record.
#[test]
fn preview_shows_the_otlp_json_form() {
    let mut c = otlp_collector("http://127.0.0.1:9", "");
    std::fs::remove_file(c.dir.join("etc/opt-in")).unwrap();
    c.start();
    let ids = send_all(&mut c.client(), &[record("org.clearlinux/crash/clr", Severity::High, CRASH_V1)]);
    c.wait_journal(Duration::from_secs(10), |j| j.len() == 1);
    let out = c.telemctl(&["preview", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(v["record_id"], ids[0].as_str());
    assert_eq!(v["otlp"]["url"], "http://127.0.0.1:9/v1/logs");
    let lr = &v["otlp"]["json"]["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0];
    assert_eq!(lr["severityText"], "ERROR");
    let keys: Vec<&str> = lr["attributes"].as_array().unwrap().iter().filter_map(|a| a["key"].as_str()).collect();
    assert!(keys.contains(&"exception.stacktrace") && keys.contains(&"telemetry.record_id"), "{keys:?}");
    let text = c.telemctl(&["preview"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("# OTLP export request") && text.contains("\"resourceLogs\""), "{text}");
}

/// kill -9 of the collector while it delivers to both destinations, then
/// a restart: every acknowledged record reaches both (at least once).
#[test]
fn collector_killed_with_two_destinations_loses_nothing() {
    const N: usize = 3_000;
    let Some(rotel) = Rotel::start() else { return };
    let sink = Sink::start();
    sink.set_lean(true);
    let mut c = Collector::new(
        Some(&sink.url()),
        &format!("otlp_endpoint={}\nrate_limit_enabled=false\nspool_max_size=-1", rotel.endpoint()),
    );
    c.start();
    let records: Vec<Record> =
        (0..N).map(|i| record("org.test/otlp/crash", Severity::Medium, format!("kill {i}\n"))).collect();
    let ids = send_all(&mut c.client(), &records);
    c.kill9();
    c.start();
    let want: BTreeSet<String> = ids.iter().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut at_otlp: BTreeSet<String> = BTreeSet::new();
    while Instant::now() < deadline {
        at_otlp = rotel.record_ids().into_iter().collect();
        if want.is_subset(&at_otlp) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(want.is_subset(&at_otlp), "{} records never reached OTLP", want.difference(&at_otlp).count());
    // The sink keeps bodies (lean): each v2 body is a payload `kill {i}`.
    assert!(
        sink.wait_for(Duration::from_secs(60), |p| {
            p.iter().filter(|p| p.ok()).map(|p| p.body.clone()).collect::<BTreeSet<_>>().len() >= N
        }),
        "every record reaches the server:\n{}",
        c.log_summary(10)
    );
    let s = c.wait_status(Duration::from_secs(20), |s| s["spooled"] == 0);
    assert_eq!(s["spooled"], 0, "{s}");
    assert!(c.stop());
}

/// Destinations follow `telemctl reload`: a server added later gets the
/// records sent after it (and those still spooled); removed again, records
/// no longer wait for it.
#[test]
fn destinations_follow_reload() {
    let Some(rotel) = Rotel::start() else { return };
    let sink = Sink::start();
    let mut c = otlp_collector(&rotel.endpoint(), "");
    c.start();
    let mut client = c.client();
    let first = send_all(&mut client, &[record("org.test/otlp/reload", Severity::Low, "first\n")]);
    rotel.wait_records(Duration::from_secs(20), |g| !g.is_empty());
    assert_eq!(sink.count(), 0);
    c.set(&format!("server={}", sink.url()));
    assert!(c.telemctl(&["reload"]).status.success());
    let second = send_all(&mut client, &[record("org.test/otlp/reload", Severity::Low, "second\n")]);
    assert!(sink.wait_for(Duration::from_secs(20), |p| p.iter().any(|p| p.body == b"second\n")), "{}", c.log());
    let got = rotel.wait_records(Duration::from_secs(20), |g| by_id(g).contains_key(&second[0]));
    assert!(by_id(&got).contains_key(&first[0]) && by_id(&got).contains_key(&second[0]));
    let names: Vec<String> = c.status()["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["name"].as_str().map(String::from))
        .collect();
    assert_eq!(names, ["server", "otlp"]);
    // The server goes away again, while it refuses: its records stop
    // waiting for it once OTLP has them.
    sink.set_mode(Mode::Status(503, String::new()));
    let third = send_all(&mut client, &[record("org.test/otlp/reload", Severity::Low, "third\n")]);
    rotel.wait_records(Duration::from_secs(20), |g| by_id(g).contains_key(&third[0]));
    assert_eq!(c.status()["spooled"], 1, "waits for the server");
    c.set("server=");
    assert!(c.telemctl(&["reload"]).status.success());
    let s = c.wait_status(Duration::from_secs(10), |s| s["spooled"] == 0);
    assert_eq!(s["spooled"], 0, "{s}");
    assert!(c.stop(), "{}", c.log());
}

/// The per-destination state survives a restart: records OTLP took (its
/// fates journaled) are not sent to it again after a kill -9, while the
/// server, which refused them until then, still gets every one.
#[test]
fn a_restart_resends_only_to_the_destination_that_lacks_them() {
    const N: usize = 500;
    let Some(rotel) = Rotel::start() else { return };
    let sink = Sink::start();
    sink.set_mode(Mode::Status(503, String::new()));
    let mut c =
        Collector::new(Some(&sink.url()), &format!("otlp_endpoint={}\nrate_limit_enabled=false", rotel.endpoint()));
    c.start();
    let records: Vec<Record> =
        (0..N).map(|i| record("org.test/otlp/restart", Severity::Medium, format!("restart {i}\n"))).collect();
    let ids = send_all(&mut c.client(), &records);
    let j =
        c.wait_journal(Duration::from_secs(30), |j| j.len() == N && j.iter().all(|e| e["fate"] == "delivered (otlp)"));
    assert!(j.iter().all(|e| e["fate"] == "delivered (otlp)"), "OTLP took every record first");
    assert_eq!(c.status()["spooled"], N as u64);
    c.kill9();
    sink.set_mode(Mode::ok());
    c.start();
    assert!(
        sink.wait_for(Duration::from_secs(30), |p| {
            p.iter().filter(|p| p.ok()).map(|p| p.body.clone()).collect::<BTreeSet<_>>().len() >= N
        }),
        "the server gets every record after the restart:\n{}",
        c.log_summary(10)
    );
    let s = c.wait_status(Duration::from_secs(20), |s| s["spooled"] == 0);
    assert_eq!(s["spooled"], 0, "{s}");
    std::thread::sleep(Duration::from_millis(500));
    let at_otlp = rotel.record_ids();
    assert_eq!(at_otlp.len(), N, "none sent to OTLP again");
    assert_eq!(at_otlp.into_iter().collect::<BTreeSet<_>>(), ids.into_iter().collect::<BTreeSet<_>>());
    assert!(c.stop());
}

/// A real crash: a program's core saved by gdb, read by the real
/// crashprobe (`--core-only`), sent to the real collector, exported to
/// rotel: the exception and process attributes come from crashprobe's own
/// payload, in both payload formats.
#[test]
fn a_real_crashprobe_record_arrives_with_exception_attributes() {
    use std::process::{Command, Stdio};
    let Some(rotel) = Rotel::start() else { return };
    let mut c = otlp_collector(&rotel.endpoint(), "");
    let dir = c.dir.clone();
    let exe = dir.join("segvotlp");
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/crash_programs/segv.c");
    let o = Command::new("gcc").args(["-O2", "-g", "-o"]).arg(&exe).arg(&src).output().expect("gcc");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let core = dir.join("gdb.core");
    let out = Command::new("gdb")
        .args(["-nx", "-q", "-batch", "-ex", "run", "-ex"])
        .arg(format!("generate-core-file {}", core.display()))
        .arg("--args")
        .arg(&exe)
        .output()
        .expect("run gdb (cargo xtask test installs it)");
    assert!(core.exists(), "gdb saved no core: {}", String::from_utf8_lossy(&out.stderr));
    // The program is not a system binary: unwound anyway (as crash_e2e does).
    c.set(&format!(
        "crash_third_party=unwind\ncrash_system_prefixes={}/\nstate_dir={}/state",
        dir.display(),
        dir.display()
    ));
    c.start();
    for version in ["1", "2"] {
        c.set(&format!("crash_payload_version={version}"));
        let out = Command::new(e2e::bin("crashprobe"))
            .args(["--core-only", "-f"])
            .arg(&c.conf)
            .stdin(Stdio::from(std::fs::File::open(&core).expect("open core")))
            .output()
            .expect("run crashprobe --core-only");
        assert!(out.status.success(), "crashprobe: {}", String::from_utf8_lossy(&out.stderr));
    }
    let got = rotel.wait_records(Duration::from_secs(20), |g| g.len() >= 2);
    assert_eq!(got.len(), 2, "{}", c.log());
    for (r, version) in got.iter().zip(["1", "2"]) {
        let a = &r.attributes;
        assert_eq!(r.resource["service.name"], "crashprobe");
        assert_eq!(a["telemetry.payload_format_version"], version);
        assert_eq!(a["exception.type"], "SIGSEGV", "{a:?}");
        assert!(a["exception.message"].starts_with("SIGSEGV (signal 11) in "), "{a:?}");
        assert!(a["exception.stacktrace"].contains("level3"), "{a:?}");
        assert!(a["process.pid"].parse::<u32>().is_ok_and(|p| p > 0), "{a:?}");
        assert_eq!(a["process.executable.name"], "segvotlp", "{a:?}");
        assert_eq!(a["process.executable.path"], exe.display().to_string());
        if version == "2" {
            let b = &a["process.executable.build_id.gnu"];
            assert!(b.len() >= 16 && b.chars().all(|c| c.is_ascii_hexdigit()), "{a:?}");
        }
    }
}

/// Consent and rate windows apply to OTLP as to the original backend: not
/// opted in, nothing is exported (`local-only`); over a record window
/// with `rate_limit_strategy = drop`, the extra records are dropped, not
/// exported.
#[test]
fn consent_and_rate_windows_apply() {
    let Some(rotel) = Rotel::start() else { return };
    let mut c =
        otlp_collector(&rotel.endpoint(), "record_burst_limit=3\nrecord_window_length=59\nrate_limit_strategy=drop");
    std::fs::remove_file(c.dir.join("etc/opt-in")).unwrap();
    c.start();
    let mut client = c.client();
    send_all(&mut client, &[record("org.test/otlp/consent", Severity::Low, "not opted in\n")]);
    assert!(c.telemctl(&["opt-in"]).status.success());
    let recs: Vec<Record> =
        (0..5).map(|i| record("org.test/otlp/consent", Severity::Low, format!("opted in {i}\n"))).collect();
    let ids = send_all(&mut client, &recs);
    rotel.wait_records(Duration::from_secs(20), |g| g.len() >= 3);
    std::thread::sleep(Duration::from_millis(1000));
    let got = by_id(&rotel.records()).into_keys().collect::<BTreeSet<_>>();
    assert_eq!(got, ids[..3].iter().cloned().collect::<BTreeSet<_>>(), "the window's 3 records only");
    let j = c.journal(&[]);
    let fates: Vec<&str> = j.iter().filter_map(|e| e["fate"].as_str()).collect();
    assert_eq!(
        fates,
        [
            "local-only: not opted in",
            "delivered (otlp)",
            "delivered (otlp)",
            "delivered (otlp)",
            "rate-limited: dropped",
            "rate-limited: dropped"
        ],
        "{j:?}"
    );
}
