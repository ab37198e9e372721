//! hprobe and telem-record-gen against a real unix-socket receiver that
//! speaks both framings with the telemetry crate.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use e2e::bin;
use e2e::receiver::{Behaviour, Receiver};
use telemetry::{Payload, Severity};

const WAIT: Duration = Duration::from_secs(10);

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().expect("run probe");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn hprobe_sends_hello_world_native() {
    let rx = Receiver::start(Behaviour::default());
    let (ok, stdout, stderr) = run(Command::new(bin("hprobe")).arg("--socket").arg(&rx.path).arg("--print-id"));
    assert!(ok, "hprobe failed: {stderr}");
    assert_eq!(stdout.trim().len(), 32, "record id printed: {stdout:?}");
    let got = rx.wait_for(1, WAIT);
    assert_eq!(got.len(), 1);
    let r = &got[0].record;
    assert_eq!(r.classification.as_str(), "org.clearlinux/hello/world");
    assert_eq!(r.severity, Severity::Low);
    assert_eq!(r.payload, Payload::text("hello\n"));
    assert!(!got[0].legacy);
    assert_eq!(*r.host, *telemetry::HostInfo::current(), "host facts of this machine");
}

#[test]
fn hprobe_heartbeat_over_legacy_framing_via_env_socket() {
    let rx = Receiver::start(Behaviour::default());
    let (ok, _, stderr) = run(Command::new(bin("hprobe")).args(["--heartbeat", "--legacy"]).env("TELEM_SOCKET", &rx.path));
    assert!(ok, "hprobe failed: {stderr}");
    let got = rx.wait_for(1, WAIT);
    assert_eq!(got.len(), 1, "errors: {:?}", rx.errors());
    assert!(got[0].legacy);
    assert_eq!(got[0].record.classification.as_str(), "org.clearlinux/heartbeat/ping");
}

#[test]
fn record_gen_sets_every_field() {
    let rx = Receiver::start(Behaviour::default());
    let id = "0123456789abcdef0123456789abcdef";
    let (ok, _, stderr) = run(Command::new(bin("telem-record-gen"))
        .args(["-c", "org.example/test/fields", "-n", "4", "-p", "a payload with spaces", "-e", id, "-V", "7"])
        .arg("--socket")
        .arg(&rx.path));
    assert!(ok, "{stderr}");
    let r = &rx.wait_for(1, WAIT)[0].record;
    assert_eq!(r.classification.as_str(), "org.example/test/fields");
    assert_eq!(r.severity, Severity::Critical);
    assert_eq!(r.event_id.to_string(), id);
    assert_eq!(r.payload_format_version, 7);
    assert_eq!(r.payload, Payload::text("a payload with spaces"));
}

#[test]
fn record_gen_payload_from_file_and_stdin() {
    let rx = Receiver::start(Behaviour::default());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("payload");
    let big = "line\n".repeat(4000); // 20,000 bytes: the original dropped >= 8188
    std::fs::write(&file, &big).unwrap();
    let (ok, _, stderr) = run(Command::new(bin("telem-record-gen"))
        .args(["-c", "a/b/file", "-n", "2", "-P"])
        .arg(&file)
        .arg("--socket")
        .arg(&rx.path));
    assert!(ok, "{stderr}");
    let mut child = Command::new(bin("telem-record-gen"))
        .args(["-c", "a/b/stdin", "-n", "2", "--socket"])
        .arg(&rx.path)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"from stdin\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = rx.wait_for(2, WAIT);
    let by = |c: &str| got.iter().find(|r| r.record.classification.as_str() == c).map(|r| r.record.payload.clone());
    assert_eq!(by("a/b/file"), Some(Payload::text(big)));
    assert_eq!(by("a/b/stdin"), Some(Payload::text("from stdin\n")));
}

#[test]
fn legacy_mode_sends_cfg_path_like_the_c_library() {
    let rx = Receiver::start(Behaviour::default());
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("telemetrics.conf");
    std::fs::write(&conf, format!("[settings]\nsocket_path={}\n", rx.path.display())).unwrap();
    let (ok, _, stderr) = run(Command::new(bin("telem-record-gen"))
        .args(["-c", "a/b/cfg", "-n", "1", "-p", "x", "--legacy", "-f"])
        .arg(&conf)
        .env_remove("TELEM_SOCKET"));
    assert!(ok, "{stderr}");
    let got = rx.wait_for(1, WAIT);
    assert_eq!(got[0].config_path.as_deref(), conf.to_str());
}

#[test]
fn rejection_is_a_one_line_failure() {
    let rx = Receiver::start(Behaviour { reject: Some("spool is full (disk full)".into()), ..Default::default() });
    let (ok, _, stderr) = run(Command::new(bin("hprobe")).arg("--socket").arg(&rx.path));
    assert!(!ok);
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(stderr.contains("rejected the record: spool is full (disk full)"), "{stderr}");
}

#[test]
fn oversize_payload_is_refused_not_truncated() {
    let rx = Receiver::start(Behaviour { max_payload: 100, ..Default::default() });
    let (ok, _, stderr) = run(Command::new(bin("telem-record-gen"))
        .args(["-c", "a/b/c", "-n", "1", "-p", &"x".repeat(101), "--socket"])
        .arg(&rx.path));
    assert!(!ok);
    assert!(stderr.contains("payload is 101 bytes; the collector accepts at most 100"), "{stderr}");
    assert!(rx.records().is_empty());
}

#[test]
fn invalid_input_names_the_problem() {
    let cases: &[(&[&str], &str)] = &[
        (&["-c", "a/b", "-n", "1", "-p", "x"], "expected exactly 3"),
        (&["-c", "a/b/c", "-n", "5", "-p", "x"], "severity \"5\""),
        (&["-c", "a/b/c", "-n", "1", "-p", "x", "-e", "XYZ"], "32 lowercase hex"),
        (&["-c", "a b/c/d", "-n", "1", "-p", "x"], "not printable ASCII"),
    ];
    for (args, msg) in cases {
        let (ok, _, stderr) = run(Command::new(bin("telem-record-gen")).args(*args).args(["--socket", "/nonexistent"]));
        assert!(!ok, "{args:?}");
        assert!(stderr.contains(msg), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}

#[test]
fn no_collector_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = run(Command::new(bin("hprobe")).arg("--socket").arg(dir.path().join("absent.sock")));
    assert!(!ok);
    assert!(stderr.contains("no collector is listening on"), "{stderr}");
}

#[test]
fn client_pipelines_many_records_on_one_connection() {
    use telemetry::client::Client;
    use telemetry::{Classification, Record};
    let rx = Receiver::start(Behaviour { max_payload: 1000, ..Default::default() });
    let mut c = Client::connect_path(&rx.path, WAIT).unwrap();
    assert_eq!(c.hello().max_payload, 1000);
    let mut records: Vec<Record> = (0..200)
        .map(|i| {
            Record::builder(Classification::parse("a/b/many").unwrap(), Severity::Medium, Payload::text(format!("{i}")))
                .build()
        })
        .collect();
    // One record over the announced limit fails alone; the rest go through.
    records[50].payload = Payload::text("y".repeat(1001));
    let acks = c.send_many(&records).unwrap();
    assert_eq!(acks.len(), 200);
    assert!(acks[50].is_err());
    assert_eq!(acks.iter().filter(|a| a.is_ok()).count(), 199);
    let got = rx.wait_for(199, WAIT);
    assert_eq!(got.len(), 199);
    // In order, none lost, none duplicated.
    let payloads: Vec<String> = got.iter().map(|r| r.record.payload.to_text_lossy().into_owned()).collect();
    let expect: Vec<String> = (0..200).filter(|&i| i != 50).map(|i| i.to_string()).collect();
    assert_eq!(payloads, expect);
}
