//! The black box (issue #19), collector side: the real collector and
//! telemctl, and a fake eventprobe written here that speaks the blackbox
//! socket's protocol (`telemetry::blackbox`, the contract the real one
//! follows): recordings started, stopped, listed, exported and deleted;
//! feed entries with argv scrubbed, records linked by record and event
//! id, crash breadcrumbs, instrument readings; a kill -9 and a torn tail
//! that lose and double nothing; `--max-size` and retention.
//!
//! Instrument readings come every 10 s; these tests shorten the interval
//! with the test-only environment variable `TELEM_BLACKBOX_READING_MS`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::bin;
use e2e::collector::{parse_json, Collector};
use e2e::fixtures::Records;
use telemetry::blackbox::{Control, Entry, Event, Feed};
use telemetry::Severity;

const WAIT: Duration = Duration::from_secs(30);
const NOTES: Records = Records::new("org.test/blackbox/note", Severity::Low);

fn collector() -> Collector {
    let mut c = Collector::new(None, "");
    c.env.push(("TELEM_BLACKBOX_READING_MS".into(), "300".into()));
    c.start();
    c
}

fn telemctl_err(c: &Collector, args: &[&str]) -> String {
    let out = c.telemctl(args);
    assert!(!out.status.success(), "telemctl {args:?} should fail: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn bb_status(c: &Collector) -> serde_json::Value {
    parse_json(&c.telemctl_ok(&["blackbox", "status", "--json"]))
}

/// `telemctl blackbox start ARGS`; the recording's id.
fn start(c: &Collector, args: &[&str]) -> String {
    let mut a = vec!["blackbox", "start"];
    a.extend_from_slice(args);
    let out = c.telemctl_ok(&a);
    out.trim().strip_prefix("recording ").unwrap_or_else(|| panic!("start said {out:?}")).to_string()
}

/// `telemctl blackbox export ID --json FILE`, parsed (and the file's mode checked).
fn export(c: &Collector, id: &str) -> Vec<Entry> {
    let out = c.dir.join(format!("export-{id}.jsonl"));
    c.telemctl_ok(&["blackbox", "export", id, "--json", out.to_str().unwrap()]);
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the export is the operator's alone");
    let text = std::fs::read_to_string(&out).unwrap();
    let entries: Vec<Entry> =
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    for w in entries.windows(2) {
        assert!(
            (w[0].wall_ns, w[0].mono_ns) <= (w[1].wall_ns, w[1].mono_ns),
            "export not in time order: {:?} then {:?}",
            w[0],
            w[1]
        );
    }
    entries
}

fn exec(pid: u32, ppid: u32, argv: &[&str]) -> Entry {
    let t = telemetry::blackbox::wall_ns();
    Entry {
        mono_ns: t,
        wall_ns: t,
        event: Event::Exec {
            pid,
            ppid,
            uid: 1000,
            tty: Some("pts/0".into()),
            exe: format!("/usr/bin/{}", argv[0]),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            cgroup: Some("/user.slice/user-1000.slice/session-1.scope".into()),
            unit: Some("session-1.scope".into()),
            operator: true,
        },
    }
}

fn exit(pid: u32, ppid: u32, comm: &str, status: i32) -> Entry {
    let t = telemetry::blackbox::wall_ns();
    Entry {
        mono_ns: t,
        wall_ns: t,
        event: Event::Exit {
            pid,
            ppid,
            comm: comm.into(),
            status: Some(status),
            signal: None,
            core_dumped: false,
            run_ms: 5,
        },
    }
}

/// A fake eventprobe: a client of the blackbox socket speaking the Feed
/// protocol, keeping what it sent until acknowledged (as eventprobe does).
struct FakeFeed {
    rd: BufReader<UnixStream>,
    wr: UnixStream,
    source: String,
    /// The last Control state received.
    state: Control,
    acked: u64,
    /// Sent, by seq.
    sent: BTreeMap<u64, Entry>,
    next: u64,
}

impl FakeFeed {
    fn connect(state_dir: &Path, source: &str) -> FakeFeed {
        let path = state_dir.join(telemetry::blackbox::SOCKET_NAME);
        let deadline = Instant::now() + WAIT;
        let s = loop {
            match UnixStream::connect(&path) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("connect {}: {e}", path.display()),
            }
        };
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut f = FakeFeed {
            rd: BufReader::new(s.try_clone().unwrap()),
            wr: s,
            source: source.into(),
            state: Control::State { recording: false, id: None },
            acked: 0,
            sent: BTreeMap::new(),
            next: 1,
        };
        // The collector speaks first: the recording state.
        match f.read() {
            c @ Control::State { .. } => f.state = c,
            other => panic!("expected the state first, got {other:?}"),
        }
        f
    }

    /// Reconnects (after a collector restart), keeping what was not acknowledged.
    fn reconnect(self, state_dir: &Path) -> FakeFeed {
        let mut f = FakeFeed::connect(state_dir, &self.source);
        f.acked = self.acked;
        f.sent = self.sent;
        f.next = self.next;
        f
    }

    fn read(&mut self) -> Control {
        let mut line = String::new();
        let n = self.rd.read_line(&mut line).expect("read from the blackbox socket");
        assert!(n > 0, "the collector closed the blackbox socket");
        serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    fn recording(&self) -> Option<String> {
        match &self.state {
            Control::State { recording: true, id } => id.clone(),
            _ => None,
        }
    }

    fn write_seq(&mut self, seq: u64) {
        let f = Feed { source: self.source.clone(), seq, entry: self.sent[&seq].clone() };
        let mut line = serde_json::to_string(&f).unwrap();
        line.push('\n');
        self.wr.write_all(line.as_bytes()).expect("write to the blackbox socket");
    }

    fn send(&mut self, e: Entry) -> u64 {
        let seq = self.next;
        self.next += 1;
        self.sent.insert(seq, e);
        self.write_seq(seq);
        seq
    }

    /// Sends again what is not acknowledged, from `from` (a resend after
    /// a reconnection).
    fn resend_from(&mut self, from: u64) {
        let seqs: Vec<u64> = self.sent.range(from..).map(|(s, _)| *s).collect();
        for s in seqs {
            self.write_seq(s);
        }
    }

    /// Reads until `seq` is acknowledged.
    fn wait_ack(&mut self, seq: u64) {
        while self.acked < seq {
            match self.read() {
                Control::Ack { ack } => {
                    assert!(ack >= self.acked, "acks go forward: {ack} after {}", self.acked);
                    self.acked = ack;
                    self.sent.retain(|s, _| *s > ack);
                }
                c => self.state = c,
            }
        }
    }

    /// Reads until the state says `recording`.
    fn wait_state(&mut self, recording: bool) {
        loop {
            if matches!(self.state, Control::State { recording: r, .. } if r == recording) {
                return;
            }
            match self.read() {
                Control::Ack { ack } => self.acked = self.acked.max(ack),
                c => self.state = c,
            }
        }
    }
}

fn state_dir(c: &Collector) -> PathBuf {
    c.dir.join("state")
}

/// Sends `payload` with telem-record-gen; the event id it was given.
fn record_gen(c: &Collector, class: &str, payload: &str) -> String {
    let event = telemetry::EventId::random().to_string();
    let out = Command::new(bin("telem-record-gen"))
        .args(["-c", class, "-s", "3", "-p", payload, "-e", &event, "--socket"])
        .arg(&c.socket)
        .output()
        .expect("run telem-record-gen");
    assert!(out.status.success(), "telem-record-gen: {}", String::from_utf8_lossy(&out.stderr));
    event
}

#[test]
fn a_recording_holds_the_feed_records_breadcrumbs_and_readings_in_time_order() {
    let c = collector();
    let mut client = c.client();
    assert_eq!(bb_status(&c)["recording"], false);
    let before = client.send(&NOTES.text("before the recording")).expect("accepted");
    let mut feed = FakeFeed::connect(&state_dir(&c), "feedsrc1");
    assert_eq!(feed.recording(), None, "not recording yet");

    let id = start(&c, &["--label", "incident 42", "--max-age", "2h"]);
    let st = bb_status(&c);
    assert_eq!(
        (st["recording"].as_bool(), st["id"].as_str(), st["label"].as_str()),
        (Some(true), Some(id.as_str()), Some("incident 42"))
    );
    assert!(st["since_wall_ns"].as_u64().unwrap() > 0);
    assert_eq!(st["feeds"], 1, "the fake eventprobe is connected: {st}");
    assert!(c.telemctl_ok(&["blackbox", "status"]).contains("feeds:     1 connected"));
    assert!(telemctl_err(&c, &["blackbox", "start"]).contains("already running"), "one recording at a time");
    feed.wait_state(true);
    assert_eq!(feed.recording().as_deref(), Some(id.as_str()), "eventprobe is told which recording");

    // An operator's shell, a command with an e-mail address in its argv,
    // the program that will crash; and an unrelated daemon.
    feed.send(exec(5000, 1, &["bash"]));
    feed.send(exec(5001, 5000, &["mail", "-s", "report", "alice.smith@example.com"]));
    feed.send(exit(5001, 5000, "mail", 0));
    feed.send(exec(6000, 1, &["unrelated-daemon", "--serve"]));
    let last = feed.send(exec(5002, 5000, &["segv", "--now"]));
    feed.wait_ack(last);
    // What the kernel side had to drop is counted, never silently missing.
    let t = telemetry::blackbox::wall_ns();
    let gap = feed.send(Entry {
        mono_ns: t,
        wall_ns: t,
        event: Event::Gap { lost: 7, reason: "ring buffer full (exec)".into() },
    });
    feed.wait_ack(gap);
    let st = bb_status(&c);
    assert_eq!((st["gaps"].as_u64(), st["lost"].as_u64()), (Some(1), Some(7)), "{st}");
    assert!(c.telemctl_ok(&["blackbox", "status"]).contains("gaps:      1 (7 events lost)"));

    let during = client.send(&NOTES.text("during the recording")).expect("accepted");
    let crash_event = record_gen(
        &c,
        "org.clearlinux/crash/clr",
        "Process: /usr/bin/segv\nPID: 5002\nSignal: 11\nSignature: segv!main @ segv+0x1139\n\nBacktrace (TID 5002):\n#0 main() - [segv] - segv.c:3\n",
    );
    // The crash record's payload got its tree's recent activity, before it
    // was journaled.
    c.wait_journal(WAIT, |j| j.iter().any(|e| e["class"] == "org.clearlinux/crash/clr"));
    let j = c.journal(&["-i", "-c", "org.clearlinux/crash/clr"]);
    let crash = &j[0];
    let payload = crash["payload"].as_str().expect("payload kept");
    let section = payload.split("Recent activity:\n").nth(1).unwrap_or_else(|| panic!("no breadcrumbs: {payload}"));
    let lines: Vec<&str> = section.lines().collect();
    assert_eq!(lines.len(), 4, "bash, mail, its exit, segv (not the unrelated daemon): {section}");
    assert!(lines[0].contains("exec pid 5000") && lines[0].ends_with("bash"), "{section}");
    assert!(lines[1].contains("mail -s report <email>"), "argv scrubbed in breadcrumbs too: {section}");
    assert!(lines[2].contains("exit pid 5001 (mail): status 0"), "{section}");
    assert!(lines[3].contains("exec pid 5002") && lines[3].ends_with("segv --now"), "{section}");
    assert!(!payload.contains("unrelated-daemon") && !payload.contains("alice"), "{payload}");

    // Instrument readings (every 300 ms here).
    let deadline = Instant::now() + WAIT;
    while !export(&c, &id).iter().any(|e| matches!(&e.event, Event::Reading { top, .. } if !top.is_empty())) {
        assert!(Instant::now() < deadline, "no instrument reading with a top list");
        std::thread::sleep(Duration::from_millis(200));
    }

    let out = c.telemctl_ok(&["blackbox", "stop"]);
    assert!(out.contains(&id), "{out}");
    feed.wait_state(false);
    assert_eq!(bb_status(&c)["recording"], false);
    let after = client.send(&NOTES.text("after the recording")).expect("accepted");
    assert!(telemctl_err(&c, &["blackbox", "stop"]).contains("no recording is running"));

    let entries = export(&c, &id);
    let ids: Vec<String> = entries
        .iter()
        .filter_map(|e| match &e.event {
            Event::Record { record_id, .. } => Some(record_id.clone()),
            _ => None,
        })
        .collect();
    assert!(ids.contains(&during.to_string()), "the record accepted while recording: {ids:?}");
    assert!(!ids.contains(&before.to_string()) && !ids.contains(&after.to_string()), "only while recording: {ids:?}");
    let rec = entries
        .iter()
        .find_map(|e| match &e.event {
            Event::Record { event_id, classification, pid, payload, severity, record_id }
                if *event_id == crash_event =>
            {
                Some((classification.clone(), *pid, payload.clone(), *severity, record_id.clone()))
            }
            _ => None,
        })
        .expect("the crash record, linked by its event id");
    assert_eq!((rec.0.as_str(), rec.1, rec.3), ("org.clearlinux/crash/clr", Some(5002), 3));
    assert!(rec.2.contains("Recent activity:"));
    assert_eq!(crash["id"].as_str(), Some(rec.4.as_str()), "linked by the journal's record id");
    let argvs: Vec<&Vec<String>> = entries
        .iter()
        .filter_map(|e| match &e.event {
            Event::Exec { argv, .. } => Some(argv),
            _ => None,
        })
        .collect();
    assert_eq!(argvs.len(), 4);
    assert!(argvs.iter().any(|a| a.as_slice() == ["mail", "-s", "report", "<email>"]), "{argvs:?}");
    let text = std::fs::read_to_string(c.dir.join(format!("export-{id}.jsonl"))).unwrap();
    assert!(!text.contains("alice"), "no e-mail address anywhere in the export");
    let exec_5002 = entries.iter().position(|e| matches!(e.event, Event::Exec { pid: 5002, .. })).unwrap();
    let crash_at = entries
        .iter()
        .position(|e| matches!(&e.event, Event::Record { event_id, .. } if *event_id == crash_event))
        .unwrap();
    assert!(exec_5002 < crash_at, "the exec before the crash");
    let markers: Vec<&str> = entries
        .iter()
        .filter_map(|e| match &e.event {
            Event::Marker { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert!(markers.first().is_some_and(|m| m.starts_with("recording started (incident 42)")), "{markers:?}");
    assert_eq!(markers.last(), Some(&"recording stopped"), "{markers:?}");

    let list = c.telemctl_ok(&["blackbox", "list", "--json"]);
    let list: Vec<serde_json::Value> = list.lines().map(parse_json).collect();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["label"], "incident 42");
    assert_eq!(list[0]["events"].as_u64(), Some(entries.len() as u64));
    assert!(list[0]["bytes"].as_u64().unwrap() > 0 && list[0]["stopped_wall_ns"].as_u64().is_some());
    assert_eq!(list[0]["lost"].as_u64(), Some(7));
    let plain = c.telemctl_ok(&["blackbox", "list"]);
    assert!(plain.contains(&id) && plain.contains("incident 42"), "{plain}");

    // The recording is on disk, root's alone.
    let dir = state_dir(&c).join("blackbox").join(&id);
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
    let sock = state_dir(&c).join("blackbox.sock");
    assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o600);

    c.telemctl_ok(&["blackbox", "delete", &id]);
    assert!(!dir.exists());
    assert_eq!(c.telemctl_ok(&["blackbox", "list"]).trim(), "no recordings");
    assert!(telemctl_err(&c, &["blackbox", "export", &id, "--json", "/tmp/x.jsonl"]).contains("no recording"));
    assert!(telemctl_err(&c, &["blackbox", "delete", "../etc"]).contains("not a recording id"));
}

/// Exec entries of pids `base + seq` for the given seqs.
fn pids_of(entries: &[Entry]) -> Vec<u32> {
    entries
        .iter()
        .filter_map(|e| match e.event {
            Event::Exec { pid, .. } => Some(pid),
            _ => None,
        })
        .collect()
}

#[test]
fn a_kill_9_mid_recording_loses_and_doubles_nothing() {
    let mut c = collector();
    let id = start(&c, &[]);
    let mut feed = FakeFeed::connect(&state_dir(&c), "feedsrc2");
    feed.wait_state(true);
    for i in 1..=50 {
        feed.send(exec(10_000 + i, 1, &["step", &i.to_string()]));
    }
    feed.wait_ack(50);
    // More, then the collector dies without a chance to answer them all.
    for i in 51..=100 {
        feed.send(exec(10_000 + i, 1, &["step", &i.to_string()]));
    }
    c.kill9();
    c.start();
    let mut feed = feed.reconnect(&state_dir(&c));
    assert_eq!(feed.recording().as_deref(), Some(id.as_str()), "the recording continues after the restart");
    // eventprobe resends what was not acknowledged, here from further back
    // than needed: the collector skips what it wrote.
    let from = feed.acked.saturating_sub(10).max(1);
    let mut resend = feed.sent.clone();
    for s in from..=50 {
        resend.entry(s).or_insert_with(|| exec(10_000 + s as u32, 1, &["step", &s.to_string()]));
    }
    feed.sent = resend;
    feed.resend_from(from);
    for i in 101..=120 {
        feed.send(exec(10_000 + i, 1, &["step", &i.to_string()]));
    }
    feed.wait_ack(120);
    c.telemctl_ok(&["blackbox", "stop"]);
    let entries = export(&c, &id);
    let pids = pids_of(&entries);
    assert_eq!(pids.len(), 120, "each exec exactly once");
    let mut sorted = pids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, (10_001..=10_120).collect::<Vec<u32>>());
    assert!(
        entries
            .iter()
            .any(|e| matches!(&e.event, Event::Marker { text } if text.starts_with("collector started (boot "))),
        "a marker says the collector restarted"
    );
}

#[test]
fn a_torn_tail_is_cut_at_restart() {
    // Readings every 10 s: the 20th exec is the last entry written.
    let mut c = Collector::new(None, "");
    c.start();
    let id = start(&c, &[]);
    let mut feed = FakeFeed::connect(&state_dir(&c), "feedsrc3");
    feed.wait_state(true);
    for i in 1..=20 {
        feed.send(exec(20_000 + i, 1, &["torn", &i.to_string()]));
    }
    feed.wait_ack(20);
    assert!(c.stop(), "clean stop");
    // The last segment loses its last bytes, mid-entry (as a power cut would).
    let dir = state_dir(&c).join("blackbox").join(&id);
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("seg-"))
        .collect();
    segs.sort();
    let last = segs.last().unwrap();
    let len = std::fs::metadata(last).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(last).unwrap().set_len(len - 9).unwrap();
    c.start();
    let deadline = Instant::now() + WAIT;
    while !c.log().contains("cut a torn tail") {
        assert!(Instant::now() < deadline, "no torn tail cut:\n{}", c.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // The cut entry (the newest: the 20th exec, unless a reading came
    // after it) is gone; eventprobe's resend of its recent entries puts
    // the execs back, each once.
    let mut feed = feed.reconnect(&state_dir(&c));
    let from = 15;
    // The cut took back what was acknowledged: the collector's acks now
    // start from what the recording holds (19, or 20 when a reading came
    // after the 20th exec), as eventprobe's outbox allows.
    feed.acked = from - 1;
    for s in from..=20 {
        feed.sent.insert(s, exec(20_000 + s as u32, 1, &["torn", &s.to_string()]));
    }
    feed.resend_from(from);
    let s = feed.send(exec(20_021, 1, &["torn", "21"]));
    feed.wait_ack(s);
    c.telemctl_ok(&["blackbox", "stop"]);
    let entries = export(&c, &id);
    let mut pids = pids_of(&entries);
    assert_eq!(pids.len(), 21, "{pids:?}");
    pids.sort();
    assert_eq!(pids, (20_001..=20_021).collect::<Vec<u32>>());
}

#[test]
fn max_size_drops_the_oldest_segments_and_says_so() {
    let c = collector();
    let id = start(&c, &["--max-size", "64K"]);
    assert!(telemctl_err(&c, &["blackbox", "stop", "--bogus"]).contains("bogus"));
    let mut feed = FakeFeed::connect(&state_dir(&c), "feedsrc4");
    feed.wait_state(true);
    let long = "x".repeat(200);
    for i in 1..=1500u32 {
        feed.send(exec(30_000 + i, 1, &["fill", &i.to_string(), &long]));
        if i % 100 == 0 {
            feed.wait_ack(u64::from(i));
        }
    }
    feed.wait_ack(1500);
    let st = bb_status(&c);
    assert!(st["bytes"].as_u64().unwrap() <= 64 << 10, "{st}");
    assert!(st["truncated_segments"].as_u64().unwrap() > 0, "{st}");
    c.telemctl_ok(&["blackbox", "stop"]);
    let entries = export(&c, &id);
    let pids = pids_of(&entries);
    assert!(pids.contains(&31_500), "the newest is kept");
    assert!(!pids.contains(&30_001), "the oldest went");
    let (segments, dropped) = entries
        .iter()
        .filter_map(|e| match e.event {
            Event::Truncated { segments, entries, until_wall_ns } => {
                assert!(until_wall_ns > 0);
                Some((segments, entries))
            }
            _ => None,
        })
        .fold((0, 0), |(s, n), (a, b)| (s + a, n + b));
    assert!(segments > 0 && dropped > 0, "a truncated entry says what went");
    assert!(telemctl_err(&c, &["blackbox", "start", "--max-size", "1K"]).contains("too small"));
}

#[test]
fn retention_deletes_old_finished_recordings_at_start() {
    let mut c = collector();
    let old = start(&c, &["--label", "old"]);
    c.telemctl_ok(&["blackbox", "stop"]);
    let recent = start(&c, &["--label", "recent"]);
    c.telemctl_ok(&["blackbox", "stop"]);
    let running = start(&c, &["--label", "running"]);
    assert!(c.stop());
    // The old one stopped 15 days ago (the default keeps 14).
    let meta_path = state_dir(&c).join("blackbox").join(&old).join("meta.json");
    let mut meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
    meta["stopped_wall_ns"] = (telemetry::blackbox::wall_ns() - 15 * 86_400 * 1_000_000_000).into();
    std::fs::write(&meta_path, serde_json::to_vec(&meta).unwrap()).unwrap();
    // Offline, list reads the files.
    assert!(c.telemctl_ok(&["blackbox", "list"]).contains(&old));
    c.start();
    let list = c.telemctl_ok(&["blackbox", "list"]);
    assert!(!list.contains(&old), "deleted by retention: {list}");
    assert!(list.contains(&recent) && list.contains(&running), "{list}");
    assert_eq!(bb_status(&c)["id"], running.as_str(), "the running one continues");
    assert!(telemctl_err(&c, &["blackbox", "delete", &running]).contains("stop it"));
}

#[test]
fn only_root_starts_reads_or_exports() {
    use std::os::unix::process::CommandExt;
    let c = collector();
    let id = start(&c, &["--label", "root's"]);
    c.telemctl_ok(&["blackbox", "stop"]);
    // Let another user read the configuration (and nothing else).
    for p in [&c.dir, &c.conf] {
        let mode = if p.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let out_file = std::env::temp_dir().join(format!("bb-nobody-{}.jsonl", std::process::id()));
    let export_to = out_file.to_str().unwrap().to_string();
    for args in [
        vec!["blackbox", "start"],
        vec!["blackbox", "status"],
        vec!["blackbox", "list"],
        vec!["blackbox", "export", &id, "--json", &export_to],
    ] {
        let out = Command::new(bin("telemctl"))
            .arg("-f")
            .arg(&c.conf)
            .args(&args)
            .uid(65534)
            .gid(65534)
            .output()
            .expect("run telemctl as nobody");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "nobody ran telemctl {args:?}: {}", String::from_utf8_lossy(&out.stdout));
        assert!(err.contains("ermission denied"), "telemctl {args:?} as nobody: {err}");
    }
    assert!(!out_file.exists(), "nothing exported");
    assert_eq!(bb_status(&c)["recording"], false, "nobody started nothing");
}

#[test]
fn a_recording_stops_by_itself_at_max_age() {
    let c = collector();
    let id = start(&c, &["--max-age", "2s"]);
    assert_eq!(bb_status(&c)["max_age_secs"], 2);
    let deadline = Instant::now() + WAIT;
    while bb_status(&c)["recording"] == true {
        assert!(Instant::now() < deadline, "still recording long after --max-age");
        std::thread::sleep(Duration::from_millis(100));
    }
    let list: Vec<serde_json::Value> = c.telemctl_ok(&["blackbox", "list", "--json"]).lines().map(parse_json).collect();
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["stop_reason"], "stopped: max-age reached");
    let entries = export(&c, &id);
    assert!(entries
        .iter()
        .any(|e| matches!(&e.event, Event::Marker { text } if text == "recording stopped: max-age reached")));
    assert!(telemctl_err(&c, &["blackbox", "start", "--max-age", "soon"]).contains("--max-age"));
}

#[test]
fn argv_is_kept_whole_with_opt_in_no_privacy_filters_as_payloads_are() {
    let c = collector();
    let id = start(&c, &[]);
    let mut feed = FakeFeed::connect(&state_dir(&c), "feedsrc5");
    feed.wait_state(true);
    let s = feed.send(exec(7001, 1, &["mail", "bob@example.org"]));
    feed.wait_ack(s);
    c.privacy_filters_off();
    let s = feed.send(exec(7002, 1, &["mail", "carol@example.org"]));
    feed.wait_ack(s);
    c.telemctl_ok(&["blackbox", "stop"]);
    let argvs: Vec<Vec<String>> = export(&c, &id)
        .into_iter()
        .filter_map(|e| match e.event {
            Event::Exec { argv, .. } => Some(argv),
            _ => None,
        })
        .collect();
    assert_eq!(
        argvs,
        vec![vec!["mail".to_string(), "<email>".into()], vec!["mail".into(), "carol@example.org".into()]]
    );
}
