//! Collector delivery end to end: real collector, real HTTP on 127.0.0.1.

use std::time::Duration;

use e2e::collector::Collector;
use e2e::fixtures::Records;
use e2e::sink::{Mode, Sink};
use telemetry::posting::{V2_HEADER_NAMES, V3_PATH};
use telemetry::{Record, Severity};

/// Record `i`: every field fixed but the event id (see `Records::numbered`).
const RECORDS: Records = Records::new("org.test/collector/delivery", Severity::High);

fn check_delivery(protocol: &str) {
    let sink = Sink::start();
    let mut c = Collector::new(Some(&sink.url()), &format!("server_protocol={protocol}"));
    c.start();
    let mut client = c.client();
    assert_eq!(client.hello().max_payload, 65536);
    let sent: Vec<Record> = (0..5).map(|i| RECORDS.numbered(i)).collect();
    let ids: Vec<String> = sent.iter().map(|r| client.send(r).expect("accepted").to_string()).collect();
    assert!(sink.wait_for(Duration::from_secs(15), |p| p.len() >= 5), "5 posts expected:\n{}", c.log());
    let posts = sink.posts();
    assert_eq!(posts.len(), 5, "each record posted once");
    let machine_id = std::fs::read_to_string(c.dir.join("state/machine_id")).unwrap().trim().to_string();
    assert_eq!(machine_id.len(), 32);
    for post in &posts {
        let (got, mid) = post.decoded.clone().expect("post decodes");
        let want = sent.iter().find(|r| r.event_id == got.event_id).expect("a record that was sent");
        assert_eq!(&got, want, "every field arrives unchanged");
        assert_eq!(mid.as_str(), machine_id, "machine id stamped");
        assert_eq!(post.header("X-Telemetry-TID"), Some("6907c830-eed9-4ce9-81ae-76daf8d88f0f"));
        if protocol == "v3" {
            assert_eq!(post.path, V3_PATH);
            assert_eq!(post.header("Content-Type"), Some("application/json"));
        } else {
            assert_eq!(post.path, "/");
            for name in V2_HEADER_NAMES {
                assert!(post.header(name).is_some(), "header {name} present");
            }
            assert_eq!(post.header("Cpu-Model"), Some("Intel(R) Xeon(R) CPU @ 2.20GHz"));
            assert_eq!(post.header("Build"), Some("41230"));
            assert_eq!(post.body, want.payload.as_bytes(), "payload unchanged (no added newline)");
        }
    }
    // Connections are reused: five more posts, one at a time, open none.
    let before = sink.connections();
    // (Each waits until the collector has the answer to the one before:
    // the connection is back in its pool only then.)
    for i in 5..10 {
        let s = c.wait_status(Duration::from_secs(10), |s| s["delivered"] == i);
        assert_eq!(s["delivered"], i, "{s}");
        client.send(&RECORDS.numbered(i)).unwrap();
        assert!(sink.wait_for(Duration::from_secs(10), |p| p.len() > i));
    }
    assert_eq!(sink.connections(), before, "no new connection for later posts");
    // The journal says delivered for each, with uid and boot id.
    let s = c.wait_status(Duration::from_secs(10), |s| s["delivered"] == 10);
    assert_eq!(s["delivered"], 10, "{s}");
    let j = c.wait_journal(Duration::from_secs(10), |j| j.len() == 10 && j.iter().all(|e| e["fate"] == "delivered"));
    assert_eq!(j.len(), 10);
    for (e, id) in j.iter().zip(&ids) {
        assert_eq!(e["id"], id.as_str());
        assert_eq!(e["fate"], "delivered", "{e}");
        // SAFETY: geteuid has no preconditions.
        assert_eq!(e["uid"].as_u64(), Some(unsafe { libc::geteuid() } as u64));
        assert_eq!(e["boot"].as_str().map(str::len), Some(32));
        assert_eq!(e["class"], "org.test/collector/delivery");
    }
    assert!(c.stop(), "clean exit on SIGTERM:\n{}", c.log());
}

#[test]
fn delivers_v2_with_every_header() {
    check_delivery("v2");
}

#[test]
fn delivers_v3_json() {
    check_delivery("v3");
}

#[test]
fn pipelined_posts_survive_servers_that_end_connections() {
    let sink = Sink::start();
    // As nginx with keepalive_requests = 5: every fifth answer closes its
    // connection, with pipelined requests still unanswered behind it.
    sink.set_keepalive_requests(5);
    let mut c = Collector::new(Some(&sink.url()), "delivery_pipeline=8\ndelivery_concurrency=16");
    c.start();
    let mut client = c.client();
    let sent: Vec<Record> = (0..300).map(|i| RECORDS.numbered(i)).collect();
    for chunk in sent.chunks(50) {
        let acks = client.send_many(chunk).expect("sent");
        assert!(acks.iter().all(|a| a.is_ok()), "{acks:?}");
    }
    let s = c.wait_status(Duration::from_secs(20), |s| s["delivered"] == 300);
    assert_eq!(s["delivered"], 300, "{s}\n{}", c.log());
    // Unanswered requests were sent again on new connections, and only
    // those: each record reached the server exactly once.
    let mut got: Vec<u64> = sink.delivered().iter().map(|p| p.decoded.as_ref().unwrap().0.creation_timestamp).collect();
    got.sort();
    assert_eq!(got, (0..300).map(|i| 1_700_000_000 + i as u64).collect::<Vec<_>>());
    assert!(sink.pipelined() > 0, "no request was pipelined");
    assert!(sink.connections() >= 60, "{} connections for 300 posts at 5 per connection", sink.connections());
    assert!(!c.log().contains("pipelining"), "ending a connection is not mishandling pipelining:\n{}", c.log());
    assert!(c.stop());
}

#[test]
fn server_down_then_back() {
    let mut sink = Sink::start();
    let url = sink.url();
    sink.stop();
    // One post at a time, so the order of arrival is the order of dispatch.
    let mut c = Collector::new(Some(&url), "delivery_concurrency=1");
    c.start();
    let mut client = c.client();
    for i in 0..20 {
        client.send(&RECORDS.numbered(i)).expect("accepted while the server is down");
    }
    let s = c.wait_status(Duration::from_secs(10), |s| s["delivery_failures"].as_u64() > Some(0));
    assert_eq!(s["spooled"], 20, "{s}");
    assert!(s["last_delivery_error"].as_str().unwrap_or("").contains("connect"), "{s}");
    sink.restart();
    assert!(
        sink.wait_for(Duration::from_secs(15), |p| p.len() >= 20),
        "delivered after the server came back:\n{}",
        c.log()
    );
    let s = c.wait_status(Duration::from_secs(10), |s| s["spooled"] == 0);
    assert_eq!((s["delivered"].as_u64(), s["spooled"].as_u64()), (Some(20), Some(0)), "{s}");
    // FIFO: delivered in the order sent.
    let ts: Vec<u64> = sink.delivered().iter().map(|p| p.decoded.as_ref().unwrap().0.creation_timestamp).collect();
    let mut sorted = ts.clone();
    sorted.sort();
    assert_eq!(ts, sorted);
}

#[test]
fn errors_500_and_hangs_are_retried() {
    let sink = Sink::start();
    sink.set_mode(Mode::Status(500, "boom".into()));
    let mut c = Collector::new(Some(&sink.url()), "delivery_timeout=1");
    c.start();
    let mut client = c.client();
    client.send(&RECORDS.numbered(1)).unwrap();
    assert!(sink.wait_for(Duration::from_secs(10), |p| p.len() >= 2), "retried after 500");
    sink.set_mode(Mode::Hang);
    let n = sink.posts().len();
    assert!(sink.wait_for(Duration::from_secs(10), |p| p.len() >= n + 2), "retried after a hang (timeout)");
    let s = c.status();
    assert!(s["last_delivery_error"].as_str().unwrap().contains("timed out"), "{s}");
    sink.set_mode(Mode::TooMany(1));
    let n = sink.posts().len();
    assert!(sink.wait_for(Duration::from_secs(10), |p| p.len() > n));
    sink.set_mode(Mode::Status(201, String::new()));
    assert!(sink.wait_for(Duration::from_secs(10), |p| !p.iter().all(|x| x.answered != Some(201))));
    let s = c.wait_status(Duration::from_secs(10), |s| s["delivered"] == 1);
    assert_eq!((s["delivered"].as_u64(), s["spooled"].as_u64()), (Some(1), Some(0)), "{s}");
    let j = c.wait_journal(Duration::from_secs(10), |j| j.first().is_some_and(|e| e["fate"] == "delivered"));
    assert_eq!(j[0]["fate"], "delivered");
}

#[test]
fn client_errors_are_not_retried() {
    let sink = Sink::start();
    sink.set_mode(Mode::Status(400, "bad severity".into()));
    let mut c = Collector::new(Some(&sink.url()), "");
    c.start();
    let mut client = c.client();
    client.send(&RECORDS.numbered(1)).unwrap();
    let s = c.wait_status(Duration::from_secs(10), |s| s["rejected_by_server"] == 1);
    assert_eq!(s["rejected_by_server"], 1, "{s}");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(sink.posts().len(), 1, "a 4xx is not retried");
    assert_eq!(c.status()["spooled"], 0);
    let j = c.wait_journal(Duration::from_secs(10), |j| j.first().is_some_and(|e| e["fate"] != "spooled"));
    assert_eq!(j[0]["fate"], "rejected-by-server: 400 bad severity");
}

#[test]
fn nothing_leaves_without_opt_in_and_flush_works() {
    let sink = Sink::start();
    let mut c = Collector::new(Some(&sink.url()), "");
    std::fs::remove_file(c.dir.join("etc/opt-in")).unwrap();
    c.start();
    let mut client = c.client();
    client.send(&RECORDS.numbered(1)).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(sink.posts().is_empty());
    assert_eq!(c.journal(&[])[0]["fate"], "local-only: not opted in");
    assert!(c.telemctl(&["opt-in"]).status.success());
    // The daemon re-reads the opt-in state within 200 ms.
    std::thread::sleep(Duration::from_millis(300));
    client.send(&RECORDS.numbered(2)).unwrap();
    assert!(sink.wait_for(Duration::from_secs(10), |p| p.len() == 1));
    let out = c.telemctl(&["flush"]);
    assert!(out.status.success());
    assert!(c.telemctl(&["opt-out"]).status.success());
    std::thread::sleep(Duration::from_millis(300));
    client.send(&RECORDS.numbered(3)).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sink.posts().len(), 1, "opted out again");
}

#[test]
fn static_machine_id_file_overrides_the_rotating_one() {
    let sink = Sink::start();
    let mut c = Collector::new(Some(&sink.url()), "");
    std::fs::write(c.dir.join("etc/opt-in-static-machine-id"), "00000000000000000000000000c0ffee-and-more\n").unwrap();
    c.start();
    c.client().send(&RECORDS.numbered(1)).unwrap();
    assert!(sink.wait_for(Duration::from_secs(10), |p| !p.is_empty()));
    let (_, mid) = sink.posts()[0].decoded.clone().unwrap();
    assert_eq!(mid.as_str(), "00000000000000000000000000c0ffee");
    assert_eq!(sink.posts()[0].header("Machine-Id"), Some("00000000000000000000000000c0ffee"));
}

#[test]
fn graceful_stop_finishes_posts_on_the_wire() {
    // The server has the posts but answers slowly; a clean stop waits for
    // the answers, so nothing is sent twice after the restart.
    let sink = Sink::start();
    sink.set_mode(e2e::sink::Mode::Slow(800));
    let dir = tempfile::tempdir().unwrap();
    let mut c = Collector::in_dir(dir.path(), Some(&sink.url()), "delivery_concurrency=4");
    c.start();
    let mut client = c.client();
    for i in 0..4 {
        client.send(&RECORDS.numbered(i)).expect("accepted");
    }
    assert!(sink.wait_for(Duration::from_secs(10), |p| p.len() >= 4), "{}", c.log());
    assert!(c.stop(), "clean stop");
    sink.set_mode(e2e::sink::Mode::Status(201, String::new()));
    c.start();
    std::thread::sleep(Duration::from_secs(2));
    let s = c.status();
    assert_eq!(s["spooled"], 0, "{s}");
    let payloads: Vec<Vec<u8>> = sink.posts().into_iter().map(|p| p.body).collect();
    assert_eq!(payloads.len(), 4, "each record posted once, none again after the restart");
}
