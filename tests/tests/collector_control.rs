//! telemctl's commands in force when they return (issue #13): consent
//! (`opt-in`, `opt-out`) and `reload` applied by the running collector
//! before telemctl exits; every refusal at ingest counted per reason in
//! `telemctl status`; payloads kept in the local journal by default.
//! Real collector, real telemctl, real HTTP sink on 127.0.0.1.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use e2e::collector::Collector;
use e2e::fixtures::{raw_native, read_ack, Legacy, Records};
use e2e::sink::{Mode, Sink};
use telemetry::client::send_legacy;
use telemetry::wire::native::{self, Ack};
use telemetry::{Record, Severity};

const WAIT: Duration = Duration::from_secs(30);

const RECORDS: Records = Records::new("org.test/control/record", Severity::Low);

fn bodies(sink: &Sink) -> BTreeSet<String> {
    sink.posts().iter().map(|p| String::from_utf8_lossy(&p.body).into_owned()).collect()
}

#[test]
fn opt_out_and_opt_in_are_in_force_when_telemctl_returns() {
    let sink = Sink::start();
    let mut c = Collector::new(Some(&sink.url()), "");
    c.start();
    let mut client = c.client();
    const ROUNDS: usize = 100;
    for i in 0..ROUNDS {
        // No sleep anywhere: each record is sent as soon as telemctl returned.
        c.telemctl_ok(&["opt-out"]);
        if i % 2 == 0 {
            client.send(&RECORDS.text(format!("after opt-out {i}"))).expect("accepted");
        } else {
            send_legacy(&c.socket, &RECORDS.text(format!("after opt-out {i}")), None, Duration::from_secs(10))
                .expect("legacy");
        }
        c.telemctl_ok(&["opt-in"]);
        if i % 2 == 0 {
            client.send(&RECORDS.text(format!("after opt-in {i}"))).expect("accepted");
        } else {
            send_legacy(&c.socket, &RECORDS.text(format!("after opt-in {i}")), None, Duration::from_secs(10))
                .expect("legacy");
        }
    }
    let want: BTreeSet<String> = (0..ROUNDS).map(|i| format!("after opt-in {i}")).collect();
    assert!(
        sink.wait_for(WAIT, |p| {
            let got: BTreeSet<String> = p.iter().map(|p| String::from_utf8_lossy(&p.body).into_owned()).collect();
            want.is_subset(&got)
        }),
        "every record sent after opt-in returned is delivered; missing: {:?}\n{}",
        want.difference(&bodies(&sink)).collect::<Vec<_>>(),
        c.log()
    );
    // Anything still on its way would have arrived by now.
    std::thread::sleep(Duration::from_millis(500));
    let got = bodies(&sink);
    let leaked: Vec<&String> = got.iter().filter(|b| b.starts_with("after opt-out")).collect();
    assert!(leaked.is_empty(), "sent after opt-out returned, yet posted: {leaked:?}");
    let j = c.wait_journal(Duration::from_secs(10), |j| j.len() >= 2 * ROUNDS);
    assert_eq!(j.len(), 2 * ROUNDS);
    for (n, e) in j.iter().enumerate() {
        if n % 2 == 0 {
            assert_eq!(e["fate"], "local-only: not opted in", "{e}");
        } else {
            assert_ne!(e["fate"].as_str().unwrap_or_default(), "local-only: not opted in", "{e}");
        }
    }
    // Without a running collector the file alone says it.
    assert!(c.stop());
    let out = c.telemctl_ok(&["opt-out"]);
    assert!(out.contains("not running"), "{out}");
    assert!(!c.dir.join("etc/opt-in").exists());
}

#[test]
fn no_post_starts_after_opt_out_returned_and_spooled_records_wait_for_opt_in() {
    // A slow server (50 ms a post, 2 connections, up to 8 posts pipelined
    // on each): delivery is still busy when the opt-out comes.
    let sink = Sink::start();
    sink.set_mode(Mode::Slow(50));
    let mut c = Collector::new(Some(&sink.url()), "delivery_concurrency=2\ndelivery_pipeline=8\ndelivery_timeout=20");
    c.start();
    c.telemctl_ok(&["status"]);
    let mut client = c.client();
    const N: usize = 300;
    for i in 0..N {
        client.send(&RECORDS.text(format!("spooled {i}"))).expect("accepted");
    }
    assert!(sink.wait_for(WAIT, |p| !p.is_empty()), "{}", c.log());
    c.telemctl_ok(&["opt-out"]);
    // Posts written before the opt-out returned may still be read and
    // answered (at most 2 x 8 of them, 50 ms each).
    std::thread::sleep(Duration::from_millis(1500));
    let before = sink.posts().len();
    assert!(before < N, "{before}: delivery was done before the opt-out; nothing to check");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(sink.posts().len(), before, "no post starts after opt-out returned");
    let s = c.wait_status(WAIT, |s| s["delivered"] == before as u64);
    assert_eq!(
        (s["delivered"].as_u64(), s["spooled"].as_u64()),
        (Some(before as u64), Some((N - before) as u64)),
        "the rest stay spooled: {s}"
    );
    assert!(s["consent"].as_str().unwrap().starts_with("local-only"), "{s}");
    // Posts held back by the opt-out are no failure of the server's.
    assert_eq!(
        (s["delivery_failures"].as_u64(), &s["last_delivery_error"]),
        (Some(0), &serde_json::Value::Null),
        "{s}"
    );
    // Opted in again: they go.
    sink.set_mode(Mode::Status(201, String::new()));
    c.telemctl_ok(&["opt-in"]);
    let want: BTreeSet<String> = (0..N).map(|i| format!("spooled {i}")).collect();
    assert!(
        sink.wait_for(WAIT, |p| {
            let got: BTreeSet<String> = p.iter().map(|p| String::from_utf8_lossy(&p.body).into_owned()).collect();
            want.is_subset(&got)
        }),
        "{}",
        c.log()
    );
    let s = c.wait_status(WAIT, |s| s["spooled"] == 0);
    assert_eq!(s["spooled"], 0, "{s}");
}

#[test]
fn reload_returns_once_the_new_configuration_is_in_force() {
    let sink = Sink::start();
    let mut c = Collector::new(Some(&sink.url()), "");
    c.start();
    c.set("airgap=true");
    let out = c.telemctl_ok(&["reload"]);
    assert!(out.contains("reload: done"), "{out}");
    assert_eq!(c.status()["consent"], "local-only: airgap");
    c.client().send(&RECORDS.text("after reload")).unwrap();
    assert_eq!(c.journal(&[])[0]["fate"], "local-only: airgap");
    // A configuration that does not parse: refused (telemctl reads it too,
    // and says so first), the old one kept.
    c.set("rate_limit_strategy=bogus");
    let out = c.telemctl(&["reload"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rate_limit_strategy") && err.contains("bogus"), "{err}");
    let conf = std::fs::read_to_string(&c.conf).unwrap().replace("rate_limit_strategy=bogus", "");
    std::fs::write(&c.conf, conf).unwrap();
    assert_eq!(c.status()["consent"], "local-only: airgap");
    std::thread::sleep(Duration::from_millis(300));
    assert!(sink.posts().is_empty());
}

fn rejected(s: &mut UnixStream) -> String {
    match read_ack(s) {
        Ack::Rejected { reason } => reason,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// Reads until the collector closes the connection.
fn wait_closed(s: &mut UnixStream) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
}

fn send_raw(c: &Collector, bytes: &[u8], then_close_write: bool) {
    let mut s = UnixStream::connect(&c.socket).unwrap();
    s.write_all(bytes).unwrap();
    if then_close_write {
        s.shutdown(std::net::Shutdown::Write).unwrap();
    }
    wait_closed(&mut s);
}

#[test]
fn every_ingest_refusal_is_counted_with_its_reason() {
    let mut c = Collector::new(None, "record_max_bytes=1000");
    c.start();
    let frame = |r: &Record| native::encode(&native::ClientFrame::Record(r.clone())).unwrap();

    // Native framing.
    let mut v = UnixStream::connect(&c.socket).unwrap();
    v.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    v.write_all(b"\0\0\0\0TLM\x09").unwrap();
    assert!(rejected(&mut v).contains("version 9"));
    let mut big = raw_native(&c.socket);
    big.write_all(&(100_000_000u32).to_le_bytes()).unwrap();
    assert!(rejected(&mut big).contains("over the limit"));
    let mut bad = raw_native(&c.socket);
    bad.write_all(&[3, 0, 0, 0, 9, 9, 9]).unwrap();
    assert!(rejected(&mut bad).contains("not a valid message"));
    // A classification with a space in it, in an otherwise valid frame.
    let mut f = frame(&RECORDS.text("x"));
    let at = f.windows(6).position(|w| w == b"record").unwrap();
    f[at] = b' ';
    let mut field = raw_native(&c.socket);
    field.write_all(&f).unwrap();
    let why = rejected(&mut field);
    assert!(why.contains("classification"), "{why}");
    let mut over = raw_native(&c.socket);
    over.write_all(&frame(&RECORDS.text("x".repeat(1001)))).unwrap();
    assert!(rejected(&mut over).contains("at most 1000"));
    let mut cut = raw_native(&c.socket);
    let f = frame(&RECORDS.text("cut short"));
    cut.write_all(&f[..f.len() / 2]).unwrap();
    cut.shutdown(std::net::Shutdown::Write).unwrap();
    wait_closed(&mut cut);
    for s in [&mut v, &mut big, &mut bad, &mut field] {
        wait_closed(s);
    }

    // Legacy framing (no reply: the collector closes the connection).
    let mut huge = (50_000_000u32).to_le_bytes().to_vec();
    huge.extend_from_slice(&[0; 64]);
    send_raw(&c, &huge, false);
    send_raw(&c, &Legacy { payload: "no NUL", terminated: false, ..Legacy::default() }.bytes(), false);
    let long_host = "h".repeat(260);
    send_raw(&c, &Legacy { host_type: &long_host, payload: "host type too long", ..Legacy::default() }.bytes(), false);
    let long_payload = "p".repeat(1001);
    send_raw(&c, &Legacy { payload: &long_payload, ..Legacy::default() }.bytes(), false);
    let whole = Legacy { payload: "cut short", ..Legacy::default() }.bytes();
    send_raw(&c, &whole[..whole.len() - 5], true);

    // And a good one still goes through.
    c.client().send(&RECORDS.text("fine")).unwrap();
    let want = [
        ("bad-prefix", 1),
        ("frame-too-large", 2),
        ("malformed", 2),
        ("invalid-field", 2),
        ("payload-too-large", 2),
        ("truncated", 2),
        ("spool-full", 0),
        ("store-failed", 0),
        ("journal-failed", 0),
    ];
    let total: u64 = want.iter().map(|(_, n)| n).sum();
    let s = c.wait_status(WAIT, |s| s["rejected"] == total);
    assert_eq!(s["rejected"], total, "{s}\n{}", c.log());
    for (why, n) in want {
        assert_eq!(s["rejected_by_reason"][why], n, "{why}: {s}");
    }
    assert_eq!(s["accepted"], 1, "{s}");
    // The text status: the total and a line per reason seen.
    let text = c.telemctl_ok(&["status"]);
    assert!(text.contains(&format!("rejected:            {total}")), "{text}");
    for (why, n) in want {
        let line = text.lines().find(|l| l.trim_start().starts_with(&format!("{why}:")));
        match n {
            0 => assert!(line.is_none(), "{text}"),
            n => assert!(line.is_some_and(|l| l.trim_end().ends_with(&format!(" {n}"))), "{why}: {text}"),
        }
    }
}

#[test]
fn payloads_are_kept_by_default_in_a_private_journal() {
    use std::os::unix::fs::PermissionsExt;
    let mut c = Collector::new(None, "");
    c.start();
    let payload: String = (0..40).map(|i| format!("#{i} frame_{i}() - [/usr/bin/x] - /src/x.c:{i}\n")).collect();
    c.client().send(&RECORDS.text(payload.as_str())).unwrap();
    let j = c.journal(&["-i"]);
    assert_eq!(j[0]["payload"], payload.as_str(), "kept without asking");
    let id = j[0]["id"].as_str().unwrap().to_string();
    let text = c.telemctl_ok(&["journal", "-i", "-r", &id]);
    assert!(text.contains(&payload), "the whole payload: {text}");
    assert!(!text.contains("payload not kept"), "{text}");
    let mode = std::fs::metadata(c.dir.join("journal/journal")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // record_retention_enabled=false still turns it off.
    assert!(c.stop());
    c.set("record_retention_enabled=false");
    c.start();
    c.client().send(&RECORDS.text("not kept")).unwrap();
    let j = c.journal(&["-i"]);
    assert_eq!(j.len(), 2);
    assert!(j[1].get("payload").is_none(), "{}", j[1]);
    let text = c.telemctl_ok(&["journal", "-i", "-r", j[1]["id"].as_str().unwrap()]);
    assert!(text.contains("payload not kept"), "{text}");
}
