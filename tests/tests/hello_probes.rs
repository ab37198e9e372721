//! hprobe and telem-record-gen against a real unix-socket receiver that
//! speaks both framings with the telemetry crate, and the original C
//! probes' command lines against a real collector.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use e2e::bin;
use e2e::collector::Collector;
use e2e::fixtures::record;
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
    let (ok, _, stderr) =
        run(Command::new(bin("hprobe")).args(["--heartbeat", "--legacy"]).env("TELEM_SOCKET", &rx.path));
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
        .args(["-c", "org.example/test/fields", "-s", "4", "-p", "a payload with spaces", "-e", id, "-R", "7"])
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
        .args(["-c", "a/b/file", "-s", "2", "-P"])
        .arg(&file)
        .arg("--socket")
        .arg(&rx.path));
    assert!(ok, "{stderr}");
    let mut child = Command::new(bin("telem-record-gen"))
        .args(["-c", "a/b/stdin", "-s", "2", "--socket"])
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
        .args(["-c", "a/b/cfg", "-s", "1", "-p", "x", "--legacy", "-f"])
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
        .args(["-c", "a/b/c", "-s", "1", "-p", &"x".repeat(101), "--socket"])
        .arg(&rx.path));
    assert!(!ok);
    assert!(stderr.contains("payload is 101 bytes; the collector accepts at most 100"), "{stderr}");
    assert!(rx.records().is_empty());
}

#[test]
fn invalid_input_names_the_problem() {
    let cases: &[(&[&str], &str)] = &[
        (&["-c", "a/b", "-s", "1", "-p", "x"], "expected exactly 3"),
        (&["-c", "a/b/c", "-s", "5", "-p", "x"], "severity \"5\""),
        (&["-c", "a/b/c", "-s", "1", "-p", "x", "-e", "XYZ"], "32 lowercase hex"),
        (&["-c", "a b/c/d", "-s", "1", "-p", "x"], "not printable ASCII"),
        (&["-s", "1", "-p", "x"], "a classification is required"),
        (&["-c", "a/b/c", "-R", "v2", "-p", "x"], "--record-version"),
        (&["-c", "a/b/c", "--bogus", "-p", "x"], "'--bogus'"),
    ];
    for (args, msg) in cases {
        let (ok, _, stderr) = run(Command::new(bin("telem-record-gen")).args(*args).args(["--socket", "/nonexistent"]));
        assert!(!ok, "{args:?}");
        assert!(stderr.starts_with("telem-record-gen: "), "{args:?}: {stderr}");
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
    use telemetry::Record;
    let rx = Receiver::start(Behaviour { max_payload: 1000, ..Default::default() });
    let mut c = Client::connect_path(&rx.path, WAIT).unwrap();
    assert_eq!(c.hello().max_payload, 1000);
    let mut records: Vec<Record> = (0..200).map(|i| record("a/b/many", Severity::Medium, format!("{i}"))).collect();
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

// The original C probes' command lines, unchanged, against a real
// collector (journal read back with `telemctl journal --json`).

/// Runs a probe; returns its exit code, stdout and stderr.
fn run_code(cmd: &mut Command) -> (Option<i32>, String, String) {
    let out = cmd.output().expect("run probe");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn gen_to(c: &Collector, args: &[&str]) -> (Option<i32>, String, String) {
    run_code(Command::new(bin("telem-record-gen")).args(args).env("TELEM_SOCKET", &c.socket))
}

/// The journal's records of `class`.
fn of_class<'a>(j: &'a [serde_json::Value], class: &str) -> Vec<&'a serde_json::Value> {
    j.iter().filter(|r| r["class"] == class).collect()
}

#[test]
fn record_gen_original_command_line_sends_its_severity() {
    let mut c = Collector::new(None, "");
    c.start();
    let (code, stdout, stderr) = gen_to(&c, &["-s", "3", "-c", "a/b/c", "-p", "x"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "", "nothing printed without -o");
    // -f FILE names the socket (no TELEM_SOCKET); long options; -R.
    let (code, _, stderr) = run_code(
        Command::new(bin("telem-record-gen"))
            .args(["--class", "a/b/conf", "--severity", "2", "--record-version", "5", "--payload", "y", "-f"])
            .arg(&c.conf)
            .env_remove("TELEM_SOCKET"),
    );
    assert_eq!(code, Some(0), "{stderr}");
    let j = c.wait_journal(WAIT, |j| !of_class(j, "a/b/c").is_empty() && !of_class(j, "a/b/conf").is_empty());
    let r = of_class(&j, "a/b/c");
    assert_eq!(r.len(), 1, "{j:?}");
    assert_eq!(r[0]["severity"], 3);
    assert_eq!(r[0]["payload_format_version"], 1, "default -R");
    let r = of_class(&j, "a/b/conf");
    assert_eq!(r.len(), 1, "{j:?}");
    assert_eq!(r[0]["severity"], 2);
    assert_eq!(r[0]["payload_format_version"], 5);
    // Severity defaults to 1, as the original's.
    let (code, _, stderr) = gen_to(&c, &["-c", "a/b/default", "-p", "z"]);
    assert_eq!(code, Some(0), "{stderr}");
    let j = c.wait_journal(WAIT, |j| !of_class(j, "a/b/default").is_empty());
    assert_eq!(of_class(&j, "a/b/default")[0]["severity"], 1);
}

#[test]
fn record_gen_no_post_sends_nothing_and_echo_prints() {
    let mut c = Collector::new(None, "");
    c.start();
    // -n: the record is made, nothing is sent, exit 0, nothing printed.
    let (code, stdout, stderr) = gen_to(&c, &["-n", "-c", "a/b/nopost", "-s", "2", "-p", "x"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "");
    // -n needs no collector at all.
    let (code, _, stderr) = run_code(Command::new(bin("telem-record-gen")).args([
        "-n",
        "-c",
        "a/b/nopost",
        "-p",
        "x",
        "--socket",
        "/nonexistent/sock",
    ]));
    assert_eq!(code, Some(0), "{stderr}");
    // -n -o: printed, not sent.
    let (code, stdout, stderr) = gen_to(&c, &["-n", "-o", "-c", "a/b/nopost-echo", "-s", "4", "-p", "printed only"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.starts_with("record_format_version: 4\nclassification: a/b/nopost-echo\nseverity: 4\n"), "{stdout}");
    assert!(stdout.ends_with("\nprinted only\n"), "{stdout}");
    // -o alone: printed and sent, the same record.
    let (code, stdout, stderr) = gen_to(&c, &["-o", "-c", "a/b/echo", "-s", "3", "-R", "2", "-p", "echo body"]);
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 16, "15 header lines and the payload: {stdout}");
    let names = telemetry::record::HEADER_NAMES;
    for (line, name) in lines.iter().zip(names) {
        assert!(line.starts_with(&format!("{name}: ")), "{line} should be {name}");
    }
    assert_eq!(lines[1], "classification: a/b/echo");
    assert_eq!(lines[2], "severity: 3");
    assert_eq!(lines[3], "machine_id: FFFFFFFF");
    assert_eq!(lines[9], "payload_format_version: 2");
    assert_eq!(lines[15], "echo body");
    let event = lines[14].strip_prefix("event_id: ").expect("event_id line");
    let j = c.wait_journal(WAIT, |j| !of_class(j, "a/b/echo").is_empty());
    let sent = of_class(&j, "a/b/echo");
    assert_eq!(sent.len(), 1, "{j:?}");
    assert_eq!(sent[0]["event"], event, "the printed record is the one sent");
    assert_eq!(sent[0]["severity"], 3);
    // The journal holds the echoed record, never the -n ones (they came
    // first on the same collector, so they would be there by now).
    let j = c.journal(&[]);
    assert!(of_class(&j, "a/b/nopost").is_empty(), "{j:?}");
    assert!(of_class(&j, "a/b/nopost-echo").is_empty(), "{j:?}");
    assert_eq!(j.len(), 1, "{j:?}");
}

#[test]
fn record_gen_bad_command_lines_exit_1_with_one_line() {
    let c = Collector::new(None, "");
    for args in [
        &["-p", "x"][..],
        &["-c", "a/b/c", "-s", "9", "-p", "x"],
        &["-c", "a/b/c", "-x"],
        &["-c", "a/b/c", "-R", "one"],
    ] {
        let (code, stdout, stderr) = gen_to(&c, args);
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        assert_eq!(stdout, "", "{args:?}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr:?}");
    }
    // -f naming a file that is not there is refused, even with -n.
    let (code, _, stderr) = gen_to(&c, &["-n", "-c", "a/b/c", "-p", "x", "-f", "/nonexistent/telemetrics.conf"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("cannot read configuration file /nonexistent/telemetrics.conf"), "{stderr}");
    // -h and -V exit 0.
    let (code, stdout, _) = gen_to(&c, &["-h"]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("--no-post") && stdout.contains("--record-version"), "{stdout}");
    let (code, stdout, _) = gen_to(&c, &["-V"]);
    assert_eq!(code, Some(0));
    assert_eq!(stdout.trim(), env!("CARGO_PKG_VERSION"), "the bare version, as the original prints it");
}

#[test]
fn hprobe_original_command_lines_against_a_collector() {
    let mut c = Collector::new(None, "");
    c.start();
    let (code, _, stderr) = run_code(Command::new(bin("hprobe")).arg("-H").env("TELEM_SOCKET", &c.socket));
    assert_eq!(code, Some(0), "{stderr}");
    let j = c.wait_journal(WAIT, |j| !of_class(j, "org.clearlinux/heartbeat/ping").is_empty());
    let r = of_class(&j, "org.clearlinux/heartbeat/ping");
    assert_eq!(r.len(), 1, "{j:?}");
    assert_eq!(r[0]["severity"], 1);
    // -f FILE / --config_file FILE / --config-file FILE: the socket named
    // in FILE (no TELEM_SOCKET, no --socket).
    for args in [&["-f"][..], &["--config_file"], &["--heartbeat", "--config-file"]] {
        let (code, _, stderr) =
            run_code(Command::new(bin("hprobe")).args(args).arg(&c.conf).env_remove("TELEM_SOCKET"));
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
    }
    let j = c.wait_journal(WAIT, |j| j.len() >= 4);
    assert_eq!(of_class(&j, "org.clearlinux/hello/world").len(), 2, "{j:?}");
    assert_eq!(of_class(&j, "org.clearlinux/heartbeat/ping").len(), 2, "{j:?}");
    // A -f FILE naming another socket is followed: nothing listens there.
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.conf");
    std::fs::write(&other, format!("[settings]\nsocket_path={}\n", dir.path().join("none.sock").display())).unwrap();
    let (code, _, stderr) = run_code(Command::new(bin("hprobe")).arg("-f").arg(&other).env_remove("TELEM_SOCKET"));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("none.sock"), "{stderr}");
    // -V prints the bare version; -x is refused with exit 1.
    let (code, stdout, _) = run_code(Command::new(bin("hprobe")).arg("-V"));
    assert_eq!((code, stdout.trim()), (Some(0), env!("CARGO_PKG_VERSION")));
    let (code, _, stderr) = run_code(Command::new(bin("hprobe")).arg("-x"));
    assert_eq!(code, Some(1));
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
}
