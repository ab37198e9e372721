//! Collector ingest end to end: framings, bounds, and telemctl.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use e2e::collector::Collector;
use e2e::fixtures::{closed, raw_native, read_ack, record, Legacy};
use e2e::sink::Sink;
use telemetry::client::{Client, ClientError};
use telemetry::wire::native::{self, Ack, ServerFrame};
use telemetry::{Classification, Payload, Record, Severity};

#[test]
fn malformed_and_oversize_frames_close_only_their_connection() {
    let mut c = Collector::new(None, "record_max_bytes=1000");
    c.start();
    let mut good = c.client();
    assert_eq!(good.hello().max_payload, 1000);

    // A frame whose body is garbage.
    let mut bad = raw_native(&c.socket);
    bad.write_all(&[3, 0, 0, 0, 9, 9, 9]).unwrap();
    match read_ack(&mut bad) {
        Ack::Rejected { reason } => assert!(reason.contains("not a valid message"), "{reason}"),
        a => panic!("{a:?}"),
    }
    assert!(closed(&mut bad));

    // A frame announcing more than the limit is refused before being read.
    let mut big = raw_native(&c.socket);
    big.write_all(&(100_000_000u32).to_le_bytes()).unwrap();
    match read_ack(&mut big) {
        Ack::Rejected { reason } => assert!(reason.contains("over the limit"), "{reason}"),
        a => panic!("{a:?}"),
    }
    assert!(closed(&mut big));

    // A payload over record_max_bytes in a valid frame: refused, connection kept.
    let mut over = raw_native(&c.socket);
    let frame =
        native::encode(&native::ClientFrame::Record(record("org.t/ingest/big", Severity::Low, "x".repeat(1001))))
            .unwrap();
    over.write_all(&frame).unwrap();
    match read_ack(&mut over) {
        Ack::Rejected { reason } => assert!(reason.contains("at most 1000"), "{reason}"),
        a => panic!("{a:?}"),
    }
    let frame = native::encode(&native::ClientFrame::Record(record("org.t/ingest/ok", Severity::Low, "fine"))).unwrap();
    over.write_all(&frame).unwrap();
    assert!(matches!(read_ack(&mut over), Ack::Accepted { .. }));

    // A bad prefix version.
    let mut v = UnixStream::connect(&c.socket).unwrap();
    v.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    v.write_all(b"\0\0\0\0TLM\x09").unwrap();
    match read_ack(&mut v) {
        Ack::Rejected { reason } => assert!(reason.contains("version 9"), "{reason}"),
        a => panic!("{a:?}"),
    }

    // The first connection was never disturbed.
    good.send(&record("org.t/ingest/good", Severity::Low, "still served")).unwrap();
    // (Spooled records are answered before their journal lines are written.)
    let j = c.wait_journal(Duration::from_secs(10), |j| j.len() >= 2);
    assert_eq!(j.len(), 2, "only valid records are journaled: {j:?}");
    assert_eq!(j[1]["class"], "org.t/ingest/good");
}

#[test]
fn legacy_records_written_by_hand_are_delivered() {
    let sink = Sink::start();
    let mut c = Collector::new(Some(&sink.url()), "");
    c.start();
    for (i, cfg) in [None, Some("/etc/telemetrics/telemetrics.conf")].into_iter().enumerate() {
        let mut s = UnixStream::connect(&c.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let payload = format!("legacy payload {i}\n");
        s.write_all(&Legacy { payload: &payload, cfg, ..Legacy::default() }.bytes()).unwrap();
        // No reply; the daemon closes once the record is stored.
        assert!(closed(&mut s));
    }
    assert!(sink.wait_for(Duration::from_secs(10), |p| p.len() == 2));
    for p in sink.posts() {
        let (r, mid) = p.decoded.unwrap();
        assert_eq!(r.classification.as_str(), "org.c/legacy/probe");
        assert_eq!(r.host.cpu_model.as_str(), "Intel(R) Xeon(R) CPU @ 2.20GHz");
        assert_ne!(mid.as_str(), "FFFFFFFF", "the machine id is stamped");
        assert!(String::from_utf8_lossy(&p.body).starts_with("legacy payload"));
    }
    // A broken legacy record is dropped and only its connection closed.
    let mut s = UnixStream::connect(&c.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = Legacy { payload: "x", ..Legacy::default() }.bytes();
    let n = b.len();
    b[n - 1] = b'x'; // payload not NUL-terminated
    s.write_all(&b).unwrap();
    assert!(closed(&mut s));
    // (Spooled records are answered before their journal lines are written.)
    let j = c.wait_journal(Duration::from_secs(10), |j| j.len() >= 2);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(c.journal(&[]).len(), 2, "{j:?}");
}

#[test]
fn slow_client_and_500_idle_connections_do_not_stop_others() {
    // 500 sockets here too: lift a low soft limit on open files.
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < 4096 {
            r.rlim_cur = r.rlim_max.min(4096);
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
    let mut c = Collector::new(None, "idle_timeout=2");
    c.start();
    let idle: Vec<UnixStream> = (0..500).map(|_| UnixStream::connect(&c.socket).expect("idle connection")).collect();
    // A slow client dribbles a record one byte at a time.
    let frame =
        native::encode(&native::ClientFrame::Record(record("org.t/ingest/slow", Severity::Low, "slow"))).unwrap();
    let path = c.socket.clone();
    let slow = std::thread::spawn(move || {
        let mut s = UnixStream::connect(&path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&native::PREFIX).unwrap();
        let mut buf = Vec::new();
        native::read_frame(&mut s, native::MAX_SERVER_FRAME, &mut buf).unwrap();
        for b in &frame {
            s.write_all(&[*b]).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        native::read_frame(&mut s, native::MAX_SERVER_FRAME, &mut buf).unwrap();
        native::decode_body::<ServerFrame>(&buf).unwrap()
    });
    // Others keep being served, quickly.
    let t = Instant::now();
    let mut client = c.client();
    for i in 0..200 {
        client.send(&record("org.t/ingest/fast", Severity::Low, format!("r{i}"))).unwrap();
    }
    assert!(t.elapsed() < Duration::from_secs(20));
    assert!(matches!(slow.join().unwrap(), ServerFrame::Ack(Ack::Accepted { .. })));
    // Idle connections are closed after idle_timeout.
    std::thread::sleep(Duration::from_millis(2500));
    let mut closed_n = 0;
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        if closed(&mut s) {
            closed_n += 1;
        }
    }
    assert_eq!(closed_n, 500);
    assert_eq!(c.status()["accepted"], 201);
}

#[test]
fn bad_config_is_a_startup_error_naming_file_key_value() {
    let c = Collector::new(None, "record_burst_limit=many");
    let out = std::process::Command::new(e2e::bin("telem-collector")).arg("-f").arg(&c.conf).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&c.conf.display().to_string()) && err.contains("record_burst_limit") && err.contains("many"),
        "{err}"
    );
    let out = c.telemctl(&["status"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("record_burst_limit"));
}

#[test]
fn sighup_reloads_and_journal_filters() {
    let mut c = Collector::new(None, "record_retention_enabled=false");
    c.start();
    let mut client = c.client();
    client.send(&record("org.a/crash/clr", Severity::Low, "one")).unwrap();
    c.set("record_retention_enabled=true");
    c.signal(1); // SIGHUP
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.log().contains("configuration reloaded") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let ev = "0123456789abcdef0123456789abcdef".parse().unwrap();
    let r = Record::builder(
        Classification::parse("org.a/crash/error").unwrap(),
        Severity::High,
        Payload::text("two; $(touch /tmp/x)"),
    )
    .event_id(ev)
    .build();
    client.send(&r).unwrap();
    client.send(&record("org.b/hello/world", Severity::Low, "three")).unwrap();

    let j = c.journal(&["-c", "org.a/crash/*"]);
    assert_eq!(j.len(), 2);
    assert!(j[0].get("payload").is_none());
    let j = c.journal(&["-e", "0123456789abcdef0123456789abcdef", "-i"]);
    assert_eq!(j.len(), 1);
    assert_eq!(j[0]["payload"], "two; $(touch /tmp/x)", "retention on after SIGHUP; no shell involved");
    let id = j[0]["id"].as_str().unwrap().to_string();
    assert_eq!(c.journal(&["-r", &id]).len(), 1);
    let boot = j[0]["boot"].as_str().unwrap().to_string();
    assert_eq!(c.journal(&["-b", &boot]).len(), 3);
    assert_eq!(c.journal(&["-b", &"0".repeat(32)]).len(), 0);
    // The text form with -V: header, one line per record, total.
    let out = c.telemctl(&["journal", "-V", "-c", "org.b/hello/world"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("Record ID"), "{text}");
    assert!(lines[1].contains("org.b/hello/world") && lines[1].contains("local-only: no"), "{text}");
    assert_eq!(lines.last().copied(), Some("Total records: 1"));
    // A bad value on reload keeps the running configuration.
    c.set("rate_limit_strategy=bogus");
    c.signal(1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.log().contains("reload refused") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(c.log().contains("reload refused"));
    client.send(&record("org.b/hello/world", Severity::Low, "four")).unwrap();
}

#[test]
fn telemctl_start_stop_is_active_with_a_pid_file() {
    let c = Collector::new(None, "");
    let ctl = |a: &str| {
        std::process::Command::new(e2e::bin("telemctl"))
            .env("TELEMCTL_NO_SYSTEMD", "1")
            .arg("-f")
            .arg(&c.conf)
            .arg(a)
            .output()
            .unwrap()
    };
    assert_eq!(ctl("is-active").status.code(), Some(3));
    // Whatever happens, the detached daemon does not outlive the test.
    struct KillPidFile(std::path::PathBuf);
    impl Drop for KillPidFile {
        fn drop(&mut self) {
            if let Some(pid) = std::fs::read_to_string(&self.0).ok().and_then(|s| s.trim().parse::<i32>().ok()) {
                // SAFETY: signalling the daemon this test started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    let _guard = KillPidFile(c.dir.join("state/telem-collector.pid"));
    let out = ctl("start");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(ctl("is-active").status.code(), Some(0));
    let pid: i32 = std::fs::read_to_string(c.dir.join("state/telem-collector.pid")).unwrap().trim().parse().unwrap();
    let mut client = c.client();
    client.send(&record("org.t/ctl/x", Severity::Low, "y")).unwrap();
    let out = ctl("restart");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pid2: i32 = std::fs::read_to_string(c.dir.join("state/telem-collector.pid")).unwrap().trim().parse().unwrap();
    assert_ne!(pid, pid2);
    let s = c.status();
    assert_eq!(s["pid"].as_i64(), Some(pid2 as i64));
    assert!(matches!(
        client.send(&record("org.t/ctl/x", Severity::Low, "y")),
        Err(ClientError::Closed | ClientError::Io(_))
    ));
    assert!(ctl("stop").status.success());
    assert_eq!(ctl("is-active").status.code(), Some(3));
    assert!(!c.dir.join("state/telem-collector.pid").exists());
}

#[test]
fn systemd_socket_activation_listen_fds() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let c = Collector::new(None, "");
    // systemd binds the socket; the config names another path, unused.
    let activated = c.dir.join("activated.sock");
    let listener = std::os::unix::net::UnixListener::bind(&activated).unwrap();
    let fd = listener.as_raw_fd();
    let mut cmd = std::process::Command::new("sh");
    // `$$` is the shell's pid, which `exec` hands to the collector.
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" -f \"$1\"")
        .arg(e2e::bin("telem-collector"))
        .arg(&c.conf)
        .stderr(std::fs::File::create(c.dir.join("collector.log")).unwrap());
    // SAFETY: dup2 is async-signal-safe; it puts the listener on fd 3.
    unsafe {
        cmd.pre_exec(move || {
            // (dup2 onto itself keeps close-on-exec: clear it either way.)
            if libc::dup2(fd, 3) < 0 || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(listener);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut client = loop {
        match Client::connect_path(&activated, Duration::from_secs(5)) {
            Ok(cl) => break cl,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                let _ = child.kill();
                panic!("no collector on the activated socket: {e}\n{}", c.log());
            }
        }
    };
    let r = client.send(&record("org.t/ingest/activated", Severity::Low, "via LISTEN_FDS"));
    let _ = child.kill();
    let _ = child.wait();
    r.unwrap();
    assert!(!c.socket.exists(), "the configured socket_path is not bound when activated");
}

/// A native sender that writes its prefix and records and shuts its side
/// (`client::send_once`, as hprobe and telem-record-gen send) is answered
/// by the accept loop: a hello, then one ack per record, then the end.
/// Anything wrong in such an exchange is answered as on any connection.
#[test]
fn whole_native_exchanges_are_answered_with_acks() {
    let mut c = Collector::new(None, "record_max_bytes=1000");
    c.start();
    let id = telemetry::client::send_once(
        &c.socket,
        &record("org.t/whole/one", Severity::Low, "one"),
        Duration::from_secs(10),
    )
    .unwrap();
    match telemetry::client::send_once(
        &c.socket,
        &record("org.t/whole/big", Severity::Low, "x".repeat(1001)),
        Duration::from_secs(10),
    ) {
        Err(ClientError::Rejected { reason }) => assert!(reason.contains("at most 1000"), "{reason}"),
        r => panic!("{r:?}"),
    }

    // Three records in one write, then the writing side shut.
    let mut s = UnixStream::connect(&c.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut bytes = native::PREFIX.to_vec();
    for i in 0..3 {
        let r = record("org.t/whole/three", Severity::Low, format!("three {i}"));
        native::encode_into(&native::ClientFrame::Record(r), &mut bytes).unwrap();
    }
    s.write_all(&bytes).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut buf = Vec::new();
    assert!(native::read_frame(&mut s, native::MAX_SERVER_FRAME, &mut buf).unwrap());
    assert!(matches!(native::decode_body::<ServerFrame>(&buf).unwrap(), ServerFrame::Hello(_)));
    let ids: Vec<_> = (0..3)
        .map(|_| match read_ack(&mut s) {
            Ack::Accepted { record_id } => record_id,
            a => panic!("{a:?}"),
        })
        .collect();
    assert!(closed(&mut s));

    // A whole exchange with a broken frame: refused with the reason.
    let mut bad = UnixStream::connect(&c.socket).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut bytes = native::PREFIX.to_vec();
    bytes.extend_from_slice(&[3, 0, 0, 0, 9, 9, 9]);
    bad.write_all(&bytes).unwrap();
    bad.shutdown(std::net::Shutdown::Write).unwrap();
    let mut buf = Vec::new();
    assert!(native::read_frame(&mut bad, native::MAX_SERVER_FRAME, &mut buf).unwrap());
    assert!(matches!(native::decode_body::<ServerFrame>(&buf).unwrap(), ServerFrame::Hello(_)));
    match read_ack(&mut bad) {
        Ack::Rejected { reason } => assert!(reason.contains("not a valid message"), "{reason}"),
        a => panic!("{a:?}"),
    }

    let j = c.wait_journal(Duration::from_secs(10), |j| j.len() >= 4);
    let classes: Vec<_> = j.iter().map(|e| e["class"].as_str().unwrap_or("").to_string()).collect();
    assert_eq!(classes, ["org.t/whole/one", "org.t/whole/three", "org.t/whole/three", "org.t/whole/three"], "{j:?}");
    let journaled: Vec<_> = j.iter().map(|e| e["id"].as_str().unwrap_or("").to_string()).collect();
    assert_eq!(journaled[0], id.to_string());
    for (k, rid) in ids.iter().enumerate() {
        assert_eq!(journaled[k + 1], telemetry::client::record_id_hex(rid));
    }
}

/// Records written by legacy senders still waiting in the listen backlog
/// when the collector is stopped are taken before it exits (the C library
/// reported them sent). Every connection slot is held by an idle client,
/// so they are all in the backlog at the stop.
#[test]
fn a_stop_takes_the_records_waiting_in_the_backlog() {
    let mut c = Collector::new(None, "max_connections=1");
    c.start();
    let idle = c.client();
    let waiting: Vec<UnixStream> = (0..5)
        .map(|i| {
            let mut s = UnixStream::connect(&c.socket).unwrap();
            let payload = format!("waiting {i}\n");
            s.write_all(&Legacy { payload: &payload, ..Legacy::default() }.bytes()).unwrap();
            s
        })
        .collect();
    // Nothing of theirs is taken while the slot is held.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(c.journal(&[]).len(), 0, "the cap holds them in the backlog");
    assert!(c.stop(), "clean exit:\n{}", c.log());
    drop(idle);
    drop(waiting);
    let j = c.journal(&[]);
    assert_eq!(j.len(), 5, "every waiting record taken at the stop: {j:?}\n{}", c.log());
    assert!(c.log().contains("took 5 record(s)"), "{}", c.log());
}
