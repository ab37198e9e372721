//! Privacy and consent end to end (docs/PRIVACY.md): the real collector,
//! the real HTTP sink on 127.0.0.1, and every probe that can send cheaply
//! (hprobe native and legacy, telem-record-gen, the native client, the
//! legacy framing through `send_legacy`).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::bin;
use e2e::collector::Collector;
use e2e::fixtures::Records;
use e2e::sink::Sink;
use telemetry::client::send_legacy;
use telemetry::posting::V2_HEADER_NAMES;
use telemetry::{HostInfo, Payload, Severity};

const WAIT: Duration = Duration::from_secs(15);

const RECORDS: Records = Records::new("org.test/privacy/record", Severity::Medium);

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run probe");
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Sends one record through each probe path; returns how many.
fn send_every_probe(c: &Collector) -> usize {
    run(Command::new(bin("hprobe")).arg("--socket").arg(&c.socket));
    run(Command::new(bin("hprobe")).args(["--heartbeat", "--legacy"]).env("TELEM_SOCKET", &c.socket));
    run(Command::new(bin("telem-record-gen"))
        .args(["-c", "org.test/privacy/gen", "-s", "2", "-p", "generated payload"])
        .arg("--socket")
        .arg(&c.socket));
    let mut client = c.client();
    client.send(&RECORDS.text("native client")).expect("accepted");
    send_legacy(&c.socket, &RECORDS.text("legacy by hand"), None, Duration::from_secs(10)).expect("legacy send");
    5
}

/// Waits until the journal holds `n` records.
fn journal_n(c: &Collector, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let j = c.journal(&["-i"]);
        if j.len() >= n || Instant::now() >= deadline {
            return j;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn not_opted_in_sends_nothing_and_a_later_opt_in_is_not_retroactive() {
    let sink = Sink::start();
    let mut c = Collector::new(Some(&sink.url()), "");
    std::fs::remove_file(c.dir.join("etc/opt-in")).unwrap();
    c.start();
    let n = send_every_probe(&c);
    let j = journal_n(&c, n);
    assert_eq!(j.len(), n, "the journal holds every record");
    for e in &j {
        assert_eq!(e["fate"], "local-only: not opted in", "{e}");
    }
    let s = c.status();
    assert!(
        s["mode"].as_str().unwrap().starts_with("LOCAL ONLY") && s["mode"].as_str().unwrap().contains("not opted in"),
        "{s}"
    );
    // Delivery looks at the opt-in state every second: give it two.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!((sink.posts().len(), sink.connections()), (0, 0), "nothing reached the sink");

    // Opt in: the earlier records stay local; new ones are delivered.
    assert!(c.telemctl(&["opt-in"]).status.success());
    std::thread::sleep(Duration::from_millis(300));
    assert!(c.status()["mode"].as_str().unwrap().starts_with("UPLOAD"));
    let m = send_every_probe(&c);
    assert!(sink.wait_for(WAIT, |p| p.len() >= m), "{}", c.log());
    std::thread::sleep(Duration::from_millis(1500));
    let posts = sink.posts();
    assert_eq!(posts.len(), m, "only the records accepted after the opt-in are sent");
    let j = journal_n(&c, n + m);
    assert!(j[..n].iter().all(|e| e["fate"] == "local-only: not opted in"));
    let s = c.wait_status(WAIT, |s| s["delivered"] == m as u64);
    assert_eq!(s["delivered"], m as u64, "{s}");
    let payloads: Vec<String> = posts.iter().map(|p| String::from_utf8_lossy(&p.body).into_owned()).collect();
    for want in ["hello\n", "generated payload", "native client", "legacy by hand"] {
        assert!(payloads.iter().any(|p| p == want), "{want:?} delivered: {payloads:?}");
    }
}

#[test]
fn do_not_track_airgap_and_debug_send_nothing() {
    let sink = Sink::start();
    let mut dnt = Collector::new(Some(&sink.url()), "");
    dnt.env.push(("DO_NOT_TRACK".into(), "1".into()));
    let mut air = Collector::new(Some(&sink.url()), "airgap=true");
    let mut dbg = Collector::new(Some(&sink.url()), "debug=true");
    for (c, why, said) in [
        (&mut dnt, "local-only: DO_NOT_TRACK=1", "DO_NOT_TRACK"),
        (&mut air, "local-only: airgap", "airgap"),
        (&mut dbg, "local-only: debug", "debug"),
    ] {
        c.start();
        let n = send_every_probe(c);
        let j = journal_n(c, n);
        assert_eq!(j.len(), n);
        assert!(j.iter().all(|e| e["fate"] == why), "{j:?}");
        let s = c.status();
        assert_eq!(s["consent"], why, "{s}");
        let mode = s["mode"].as_str().unwrap();
        assert!(mode.starts_with("LOCAL ONLY") && mode.contains(said), "{mode}");
        // And with a plain-text status.
        let out = String::from_utf8_lossy(&c.telemctl(&["status"]).stdout).into_owned();
        assert!(out.contains("mode:") && out.contains("LOCAL ONLY"), "{out}");
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!((sink.posts().len(), sink.connections()), (0, 0), "nothing reached the sink");
    // debug logged each request instead.
    let log = dbg.log();
    assert!(
        log.contains("would be sent as") && log.contains("POST http://127.0.0.1:") && log.contains("generated payload"),
        "{log}"
    );
}

fn v2_fields(p: &e2e::sink::Post) -> BTreeMap<String, String> {
    V2_HEADER_NAMES.iter().map(|n| (n.to_string(), p.header(n).unwrap_or_default().to_string())).collect()
}

#[test]
fn anonymous_level_shares_only_the_listed_host_facts_across_starts() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let mut runs: Vec<Vec<BTreeMap<String, String>>> = Vec::new();
    for round in 0..2 {
        let mut c = Collector::in_dir(dir.path(), Some(&sink.url()), "privacy_level=anonymous");
        c.start();
        let before = sink.posts().len();
        let n = send_every_probe(&c);
        assert!(sink.wait_for(WAIT, |p| p.len() >= before + n), "{}", c.log());
        assert!(c.stop());
        assert!(!dir.path().join("state/machine_id").exists(), "no id written to disk");
        runs.push(sink.posts()[before..].iter().map(v2_fields).collect());
        if round == 0 {
            // Creation timestamps are whole seconds.
            std::thread::sleep(Duration::from_millis(1100));
        }
    }
    let host = HostInfo::current();
    // Fields that may be equal across starts: the listed host facts, the
    // fixed placeholders, and what the probe itself sets for its kind of
    // record (format versions, classification, severity).
    let may_repeat = [
        "Arch",
        "Build",
        "System-Name",
        "Kernel-Version",
        "Host-Type",
        "Board-Name",
        "Cpu-Model",
        "Bios-Version",
        "Record-Format-Version",
        "Payload-Format-Version",
        "Classification",
        "Severity",
    ];
    for r in runs.iter().flatten() {
        assert_eq!(r["Arch"], host.arch.as_str());
        assert_eq!(r["Build"], host.build.as_str());
        assert_eq!(r["System-Name"], host.system_name.as_str());
        assert_eq!(r["Kernel-Version"], host.kernel_version.as_str());
        for f in ["Host-Type", "Board-Name", "Cpu-Model", "Bios-Version"] {
            assert_eq!(r[f], "anonymous", "{f} is the placeholder");
        }
        assert_eq!(r["Machine-Id"].len(), 32);
    }
    // One machine id per start, the same for every record of that start.
    for run in &runs {
        assert!(run.iter().all(|r| r["Machine-Id"] == run[0]["Machine-Id"]));
    }
    // A record of the first start that is delivered again after the restart
    // (at-least-once: its delivery was not recorded before the stop) keeps
    // its own event id and timestamp; compare only records made in each start.
    let first_events: Vec<&String> = runs[0].iter().map(|r| &r["Event-Id"]).collect();
    let second: Vec<&BTreeMap<String, String>> =
        runs[1].iter().filter(|r| !first_events.contains(&&r["Event-Id"])).collect();
    assert!(!second.is_empty());
    for a in &runs[0] {
        for b in &second {
            for name in V2_HEADER_NAMES {
                if !may_repeat.contains(&name) {
                    assert_ne!(a[name], b[name], "{name} is equal across two collector starts");
                }
            }
        }
    }
}

#[test]
fn scrubbing_corpus_through_the_real_collector() {
    let sink = Sink::start();
    let mut c = Collector::new(Some(&sink.url()), "record_retention_enabled=true");
    c.start();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
    let use_host = host.len() >= 3 && host != "localhost";
    let mut personal = String::from(
        "open /home/alice/.config/app.conf failed\nmail alice.smith@example.org\nfrom 192.168.1.20:8080\neth0 52:54:00:12:34:56\naddr fe80::1ff:fe23:4567:890a\n",
    );
    if use_host {
        personal.push_str(&format!("on {host}: oops\n"));
    }
    let backtrace = "Process: /usr/bin/segv\nPID: 1218\nSignal: 11\n\nBacktrace (TID 1218):\n\
#0 level3() - [/usr/bin/segv] - /src/segv.c:4\n\
#1 std::vector<int, std::allocator<int> >::push_back(int const&) - [/usr/lib/libfoo.so.1.2.3] - /usr/include/c++/12/bits/stl_vector.h:1287\n\
#2 __libc_start_call_main() - [libc.so.6] - ../sysdeps/nptl/libc_start_call_main.h:58\n";
    let mut client = c.client();
    client.send(&RECORDS.text(&personal)).unwrap();
    client.send(&RECORDS.text(backtrace)).unwrap();
    // A bytes payload that is UTF-8 is scrubbed too; one that is not stays as is.
    let mut bytes_rec = RECORDS.text("");
    bytes_rec.payload = Payload::Bytes(b"bytes from /home/bob/x".to_vec());
    client.send(&bytes_rec).unwrap();
    let mut binary = RECORDS.text("");
    binary.payload = Payload::Bytes(vec![0xff, 0xfe, b'/', b'h', b'o', b'm', b'e', b'/', b'b', b'o', b'b']);
    client.send(&binary).unwrap();
    send_legacy(&c.socket, &RECORDS.text("legacy from 10.0.0.7"), None, Duration::from_secs(10)).unwrap();
    assert!(sink.wait_for(WAIT, |p| p.len() >= 5), "{}", c.log());
    let bodies: Vec<Vec<u8>> = sink.posts().iter().map(|p| p.body.clone()).collect();
    let mut want = String::from(
        "open /home/<user>/.config/app.conf failed\nmail <email>\nfrom <ipv4>:8080\neth0 <mac>\naddr <ipv6>\n",
    );
    if use_host {
        want.push_str("on <hostname>: oops\n");
    }
    let wants: [&[u8]; 5] = [
        want.as_bytes(),
        backtrace.as_bytes(),
        b"bytes from /home/<user>/x",
        &[0xff, 0xfe, b'/', b'h', b'o', b'm', b'e', b'/', b'b', b'o', b'b'],
        b"legacy from <ipv4>",
    ];
    for w in wants {
        assert!(bodies.iter().any(|b| b == w), "{:?} not received; got {:?}", String::from_utf8_lossy(w), bodies);
    }
    let raw = bodies.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect::<String>();
    for leaked in ["alice", "192.168.1.20", "52:54:00", "fe80::", "10.0.0.7"] {
        assert!(!raw.contains(leaked), "{leaked} reached the sink");
    }
    // The journal holds the scrubbed payloads too.
    let j = journal_n(&c, 5);
    let journal_text = serde_json::to_string(&j).unwrap();
    assert!(
        journal_text.contains("<email>") && !journal_text.contains("alice") && !journal_text.contains("10.0.0.7"),
        "{journal_text}"
    );

    // The original's opt-in-no-privacy-filters file turns scrubbing off.
    c.privacy_filters_off();
    client.send(&RECORDS.text("unfiltered alice@example.org")).unwrap();
    assert!(sink.wait_for(WAIT, |p| p.iter().any(|p| p.body == b"unfiltered alice@example.org")));
}

/// Header lines as (lower-case name, value), sorted.
fn header_set(h: &[(String, String)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = h.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect();
    v.sort();
    v
}

#[test]
fn preview_equals_what_the_sink_then_receives() {
    for protocol in ["v2", "v3"] {
        let mut sink = Sink::start();
        // Not listening yet: the records wait in the spool.
        sink.stop();
        let mut c =
            Collector::new(Some(&sink.url()), &format!("record_retention_enabled=true\nserver_protocol={protocol}"));
        c.start();
        let n = send_every_probe(&c);
        assert_eq!(journal_n(&c, n).len(), n);
        let out = c.telemctl(&["preview", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let previews: Vec<serde_json::Value> =
            String::from_utf8_lossy(&out.stdout).lines().map(e2e::collector::parse_json).collect();
        assert_eq!(previews.len(), n);
        // The text form shows the same requests.
        let text = String::from_utf8_lossy(&c.telemctl(&["preview"]).stdout).into_owned();
        assert_eq!(text.matches("POST http://127.0.0.1:").count(), n, "{text}");
        assert!(sink.posts().is_empty());

        sink.restart();
        assert!(c.telemctl(&["flush"]).status.success());
        assert!(sink.wait_for(WAIT, |p| p.iter().filter(|p| p.answered.is_some()).count() >= n), "{}", c.log());
        let posts = sink.delivered();
        assert_eq!(posts.len(), n, "{protocol}");
        for pv in &previews {
            let body = pv["body"].as_str().unwrap();
            let url = pv["url"].as_str().unwrap();
            let headers: Vec<(String, String)> = pv["headers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| (h[0].as_str().unwrap().to_string(), h[1].as_str().unwrap().to_string()))
                .collect();
            let same = |p: &&e2e::sink::Post| {
                p.method == pv["method"].as_str().unwrap()
                    && url == format!("http://{}{}", sink.addr, p.path)
                    && header_set(&headers) == header_set(&p.headers)
                    && p.body == body.as_bytes()
            };
            assert!(
                posts.iter().any(|p| same(&p)),
                "{protocol}: preview {pv} was not received as such; received: {:?}",
                posts
                    .iter()
                    .map(|p| (&p.method, &p.path, header_set(&p.headers), String::from_utf8_lossy(&p.body)))
                    .collect::<Vec<_>>()
            );
        }
    }
}

#[test]
fn static_level_requires_its_file_and_fields_prints_the_dictionary() {
    let mut c = Collector::new(None, "privacy_level=static");
    let out = Command::new(bin("telem-collector")).arg("-f").arg(&c.conf).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("opt-in-static-machine-id") && err.contains("privacy_level"), "{err}");
    std::fs::create_dir_all(c.dir.join("etc")).unwrap();
    std::fs::write(c.dir.join("etc/opt-in-static-machine-id"), "c0ffee\n").unwrap();
    c.start();
    assert_eq!(c.status()["privacy_level"], "static");
    let fields = String::from_utf8_lossy(&c.telemctl(&["fields"]).stdout).into_owned();
    for f in telemetry::fields::FIELDS {
        assert!(fields.contains(f.name) && fields.contains(f.why), "{} missing from telemctl fields", f.name);
    }
    let md = c.telemctl(&["fields", "--markdown"]).stdout;
    assert_eq!(String::from_utf8_lossy(&md), telemetry::fields::markdown());
}

#[test]
fn local_retention_prunes_the_journal_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Collector::in_dir(dir.path(), None, "record_retention_enabled=true");
    c.start();
    let mut client = c.client();
    for i in 0..6 {
        client.send(&RECORDS.text(format!("kept or pruned {i}"))).unwrap();
    }
    drop(client);
    assert_eq!(journal_n(&c, 6).len(), 6);
    assert!(c.stop());
    let mut c = Collector::in_dir(dir.path(), None, "record_retention_enabled=true\nlocal_retention_records=4");
    c.start();
    let j = c.journal(&["-i"]);
    let payloads: Vec<&str> = j.iter().map(|e| e["payload"].as_str().unwrap()).collect();
    assert_eq!(payloads, ["kept or pruned 2", "kept or pruned 3", "kept or pruned 4", "kept or pruned 5"]);
    let raw = std::fs::read_to_string(dir.path().join("journal/journal")).unwrap();
    assert!(
        !raw.contains("kept or pruned 0") && !raw.contains("kept or pruned 1"),
        "the oldest payloads are gone from disk"
    );
    assert!(c.log().contains("pruned by local retention"), "{}", c.log());
}

#[test]
fn preview_follow_shows_records_as_they_arrive() {
    use std::io::{BufRead, BufReader};
    let mut c = Collector::new(None, "record_retention_enabled=true\nserver=http://127.0.0.1:9/");
    c.start();
    let mut child = Command::new(bin("telemctl"))
        .arg("-f")
        .arg(&c.conf)
        .args(["preview", "--follow", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let _guard = Kill(child);
    std::thread::sleep(Duration::from_millis(300));
    c.client().send(&RECORDS.text("live one")).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx.recv_timeout(WAIT).expect("a preview line for the live record");
    let v = e2e::collector::parse_json(&line);
    assert_eq!(v["body"], "live one");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["url"], "http://127.0.0.1:9/");
    assert_eq!(v["fate"], "local-only: not opted in");
}
