//! eventprobe's black-box feed end to end, on the real kernel: the eBPF
//! programs loaded and attached for real, real processes (some run under
//! `script`, so they have a pseudo-terminal), and a small test server on
//! a temporary unix socket speaking the blackbox protocol of
//! `telemetry::blackbox` in place of the collector's recorder (which is
//! tested with the collector).
//!
//! Needs root (CAP_BPF, tracefs); outside CI a non-root run skips, in CI
//! (`CI=true`) it fails instead. Every test marks its own processes with
//! a random token: other processes of the machine are recorded too.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use e2e::kernel::eventprobe;
use e2e::receiver::{Behaviour, Receiver};
use e2e::require_root;
use telemetry::blackbox::{Event, Feed};

/// How long anything expected may take to show up.
const WAIT: Duration = Duration::from_secs(20);

/// A random token naming a test's processes.
fn token() -> String {
    let mut b = [0u8; 6];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .expect("read /dev/urandom");
    format!("bbt{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>())
}

/// One line the server received, with the connection it came on (1, 2, ...).
#[derive(Debug, Clone)]
struct Got {
    conn: usize,
    feed: Feed,
}

#[derive(Default)]
struct State {
    got: Vec<Got>,
    recording: bool,
    id: u32,
    /// Acknowledge what arrives (else hold the acks back).
    acking: bool,
    /// Highest seq acknowledged, and when.
    acked: u64,
    acked_at: Option<Instant>,
    connections: usize,
    /// The live connection (to send state lines and to close).
    conn: Option<UnixStream>,
    errors: Vec<String>,
}

/// The collector's side of the blackbox socket, as the protocol says: a
/// state line at once after each connection and when recording changes,
/// `{"ack": seq}` after each line received (unless held back).
struct Server {
    path: PathBuf,
    shared: Arc<(Mutex<State>, Condvar)>,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(recording: bool) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(telemetry::blackbox::SOCKET_NAME);
        let shared =
            Arc::new((Mutex::new(State { recording, acking: true, id: 1, ..State::default() }), Condvar::new()));
        let s = Server { path, shared, _dir: dir };
        s.listen();
        s
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Listens on the socket (again) and serves every connection.
    fn listen(&self) {
        let _ = std::fs::remove_file(&self.path);
        let listener = UnixListener::bind(&self.path).expect("bind the blackbox socket");
        let shared = self.shared.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let conn = {
                    let mut st = shared.0.lock().unwrap_or_else(|e| e.into_inner());
                    if st.connections == usize::MAX {
                        // Stopped listening (see `stop_listening`).
                        return;
                    }
                    st.connections += 1;
                    let line = state_line(st.recording, st.id);
                    let mut w = stream.try_clone().expect("clone stream");
                    let _ = w.write_all(line.as_bytes());
                    st.conn = Some(w);
                    st.connections
                };
                let shared = shared.clone();
                std::thread::spawn(move || serve(conn, stream, &shared));
            }
        });
    }

    /// Closes the connection (eventprobe reconnects to the same listener).
    fn close_connection(&self) {
        if let Some(c) = self.lock().conn.take() {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Closes the connection and the listener: the socket is gone until
    /// [`Server::listen`] (a collector restarting).
    fn stop_listening(&self) {
        let saved = {
            let mut st = self.lock();
            let n = st.connections;
            st.connections = usize::MAX;
            n
        };
        // Wake the accept loop so it sees the mark and returns.
        let _ = UnixStream::connect(&self.path);
        std::thread::sleep(Duration::from_millis(100));
        let _ = std::fs::remove_file(&self.path);
        self.close_connection();
        self.lock().connections = saved;
    }

    fn set_recording(&self, recording: bool) {
        let mut st = self.lock();
        st.recording = recording;
        st.id += 1;
        let line = state_line(recording, st.id);
        if let Some(c) = st.conn.as_mut() {
            c.write_all(line.as_bytes()).expect("send the state line");
        }
    }

    fn set_acking(&self, acking: bool) {
        self.lock().acking = acking;
    }

    fn got(&self) -> Vec<Got> {
        self.lock().got.clone()
    }

    /// Waits until an entry matches; panics with what arrived otherwise.
    fn wait_for(&self, what: &str, pred: impl Fn(&Got) -> bool) -> Got {
        let deadline = Instant::now() + WAIT;
        let mut st = self.lock();
        loop {
            if let Some(g) = st.got.iter().find(|g| pred(g)) {
                return g.clone();
            }
            let now = Instant::now();
            if now >= deadline {
                let n = st.got.len();
                let errors = st.errors.clone();
                drop(st);
                panic!("no {what} within {WAIT:?} ({n} lines received; server errors: {errors:?})");
            }
            st = self.shared.1.wait_timeout(st, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

fn state_line(recording: bool, id: u32) -> String {
    format!("{{\"recording\":{recording},\"id\":\"rec{id}\"}}\n")
}

fn serve(conn: usize, stream: UnixStream, shared: &(Mutex<State>, Condvar)) {
    let mut w = stream.try_clone().expect("clone stream");
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        let feed: Feed = match serde_json::from_str(&line) {
            Ok(f) => f,
            Err(e) => {
                shared.0.lock().unwrap_or_else(|e| e.into_inner()).errors.push(format!("{e}: {line}"));
                continue;
            }
        };
        let mut st = shared.0.lock().unwrap_or_else(|e| e.into_inner());
        let seq = feed.seq;
        st.got.push(Got { conn, feed });
        if st.acking && seq > st.acked {
            if w.write_all(format!("{{\"ack\":{seq}}}\n").as_bytes()).is_err() {
                return;
            }
            st.acked = seq;
            st.acked_at = Some(Instant::now());
        }
        shared.1.notify_all();
    }
}

/// A running eventprobe; stopped (SIGTERM, then SIGKILL) when dropped.
struct Probe {
    child: Child,
    stderr: PathBuf,
    _rx: Receiver,
    _dir: tempfile::TempDir,
}

impl Probe {
    fn start(blackbox: &Path, args: &[&str]) -> Probe {
        let rx = Receiver::start(Behaviour::default());
        let dir = tempfile::tempdir().expect("tempdir");
        let stderr = dir.path().join("stderr");
        let mut child = Command::new(eventprobe())
            .arg("--socket")
            .arg(&rx.path)
            .arg("--blackbox-socket")
            .arg(blackbox)
            .args(["--duration", "90"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("start eventprobe");
        let out = child.stdout.take().expect("stdout");
        let (tx, ready) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if line.contains("eventprobe: ready") {
                    let _ = tx.send(());
                }
            }
        });
        let mut p = Probe { child, stderr, _rx: rx, _dir: dir };
        if ready.recv_timeout(Duration::from_secs(30)).is_err() {
            let log = p.stop();
            panic!("eventprobe did not get ready:\n{log}");
        }
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until its log has had `n` lines containing `text`.
    fn wait_log(&self, text: &str, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.log().matches(text).count() < n {
            assert!(Instant::now() < deadline, "eventprobe did not log {text:?} {n} times:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it and returns its stderr (with the summary line).
    fn stop(&mut self) -> String {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log()
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `key=value` from the summary line.
fn summary_value(log: &str, key: &str) -> u64 {
    let line =
        log.lines().find(|l| l.contains("eventprobe: summary")).unwrap_or_else(|| panic!("no summary in:\n{log}"));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

/// A command without a controlling terminal (its own session).
fn detached(program: &str, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: setsid(2) only, between fork and exec.
    unsafe {
        c.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c
}

/// `sleep 30` whose `argv[0]` is `name` (bash's `exec -a`: same pid).
fn named_sleep(name: &str) -> Command {
    detached("/bin/bash", &["-c", &format!("exec -a {name} /bin/sleep 30")])
}

fn run(mut c: Command) -> std::process::ExitStatus {
    c.status().expect("run a command")
}

fn argv_has(g: &Got, arg: &str) -> bool {
    matches!(&g.feed.entry.event, Event::Exec { argv, .. } if argv.iter().any(|a| a == arg))
}

fn is_exit_of(g: &Got, p: u32) -> bool {
    matches!(&g.feed.entry.event, Event::Exit { pid, .. } if *pid == p)
}

fn pid_of(g: &Got) -> u32 {
    match &g.feed.entry.event {
        Event::Exec { pid, .. } | Event::Exit { pid, .. } | Event::FatalSignal { pid, .. } => *pid,
        e => panic!("no pid in {e:?}"),
    }
}

/// Runs `true <marker>` until its exec arrives: the feed is connected
/// and the kernel records.
fn armed(server: &Server) {
    let marker = token();
    let deadline = Instant::now() + WAIT;
    loop {
        run(detached("/bin/true", &[&marker]));
        let found = server.got().iter().any(|g| argv_has(g, &marker));
        if found {
            return;
        }
        assert!(Instant::now() < deadline, "the feed never recorded an exec");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn execs_and_exits_of_operator_commands_while_recording_and_none_when_not() {
    if !require_root("execs_and_exits_of_operator_commands_while_recording_and_none_when_not") {
        return;
    }
    let server = Server::start(true);
    let mut probe = Probe::start(&server.path, &[]);
    armed(&server);

    // From a terminal: `script` gives its shell a pseudo-terminal.
    let t = token();
    let st = run({
        let mut c = detached("script", &["-qec", &format!("sh -c 'exit 3' {t}-sh; /bin/echo {t}-echo"), "/dev/null"]);
        c.env("SHELL", "/bin/sh");
        c
    });
    assert_eq!(st.code(), Some(0), "script runs its shell's last status (echo)");
    let sh = server.wait_for("exec of sh -c 'exit 3'", |g| argv_has(g, &format!("{t}-sh")));
    let Event::Exec { pid, ppid, uid, tty, exe, argv, operator, cgroup, unit } = sh.feed.entry.event.clone() else {
        unreachable!()
    };
    // The cgroup is ours (children inherit it), and its unit when it names one.
    let ours = std::fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
    let ours = ours.lines().find_map(|l| l.strip_prefix("0::")).expect("a cgroup v2 line");
    assert_eq!(cgroup.as_deref(), Some(ours));
    let want_unit = ours.rsplit('/').find(|c| c.ends_with(".service") || c.ends_with(".scope"));
    assert_eq!(unit.as_deref(), want_unit);
    assert_eq!(argv, vec!["sh".to_string(), "-c".into(), "exit 3".into(), format!("{t}-sh")]);
    assert!(exe.starts_with('/') && exe.ends_with("sh"), "{exe}");
    assert_eq!(uid, 0);
    let tty = tty.expect("a command under script has a terminal");
    assert!(tty.starts_with("pts/"), "{tty}");
    assert!(operator, "a command from a terminal is an operator's");
    // Its parent: the shell `script` started, on the same terminal, recorded before it.
    let parent = server.wait_for("exec of script's shell", |g| {
        matches!(&g.feed.entry.event, Event::Exec { pid, argv, .. } if *pid == ppid && argv.iter().any(|a| a.contains(&format!("{t}-echo"))))
    });
    let Event::Exec { tty: ptty, operator: pop, .. } = &parent.feed.entry.event else { unreachable!() };
    assert_eq!((ptty.as_deref(), *pop), (Some(tty.as_str()), true));
    assert!(parent.feed.seq < sh.feed.seq && parent.feed.entry.mono_ns < sh.feed.entry.mono_ns);
    let exit = server.wait_for("exit of sh -c 'exit 3'", |g| is_exit_of(g, pid));
    let Event::Exit { ppid: xppid, comm, status, signal, core_dumped, run_ms, .. } = exit.feed.entry.event.clone()
    else {
        unreachable!()
    };
    assert_eq!((xppid, comm.as_str(), status, signal, core_dumped), (ppid, "sh", Some(3), None, false));
    assert!(run_ms < 10_000, "{run_ms}");
    assert!(exit.feed.entry.mono_ns > sh.feed.entry.mono_ns);
    let wall_gap = exit.feed.entry.wall_ns as i128 - sh.feed.entry.wall_ns as i128;
    let mono_gap = exit.feed.entry.mono_ns as i128 - sh.feed.entry.mono_ns as i128;
    assert!((wall_gap - mono_gap).abs() < 50_000_000, "wall and mono agree: {wall_gap} vs {mono_gap}");
    let now_wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i128;
    assert!((now_wall - exit.feed.entry.wall_ns as i128).abs() < 60_000_000_000, "wall clock time");

    // Not from a terminal: no tty, not an operator's; a run time.
    let t2 = token();
    let st = run(detached("/bin/sh", &["-c", "sleep 0.3", &t2]));
    assert!(st.success());
    let e = server.wait_for("exec without a terminal", |g| argv_has(g, &t2));
    assert!(matches!(&e.feed.entry.event, Event::Exec { tty: None, operator: false, .. }), "{e:?}");
    let x = server.wait_for("its exit", |g| is_exit_of(g, pid_of(&e)));
    let Event::Exit { status, run_ms, .. } = x.feed.entry.event else { unreachable!() };
    assert_eq!(status, Some(0));
    assert!((250..10_000).contains(&run_ms), "ran about 300 ms: {run_ms}");

    // Killed: SIGKILL; SIGABRT (a fatal signal the probe reports: while
    // recording it is an entry too). Signals that dump no core reach the
    // kernel's delivery as SIGKILL, so they are not fatal-signal events.
    let t3 = token();
    let mut child = named_sleep(&t3).spawn().expect("spawn sleep");
    let e = server.wait_for("exec of sleep", |g| argv_has(g, &t3));
    child.kill().expect("kill");
    let _ = child.wait();
    let x = server.wait_for("exit of the killed sleep", |g| is_exit_of(g, pid_of(&e)));
    let Event::Exit { status, signal, comm, .. } = &x.feed.entry.event else { unreachable!() };
    assert_eq!((status, signal, comm.as_str()), (&None, &Some(libc::SIGKILL), "sleep"));

    let t4 = token();
    let mut child = named_sleep(&t4);
    // RLIMIT_CORE 1: no core is written, to a file or to a pipe handler.
    // SAFETY: setrlimit(2) only, between fork and exec.
    unsafe {
        child.pre_exec(|| {
            let one = libc::rlimit { rlim_cur: 1, rlim_max: 1 };
            if libc::setrlimit(libc::RLIMIT_CORE, &one) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = child.spawn().expect("spawn sleep");
    let e = server.wait_for("exec of sleep", |g| argv_has(g, &t4));
    // SAFETY: signalling our own child by pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGABRT) }, 0);
    let _ = child.wait();
    let f = server.wait_for("the fatal signal", |g| {
        matches!(&g.feed.entry.event, Event::FatalSignal { pid, signal, .. } if *pid == pid_of(&e) && *signal == libc::SIGABRT)
    });
    let x = server.wait_for("exit of the signalled sleep", |g| is_exit_of(g, pid_of(&e)));
    assert!(
        matches!(&x.feed.entry.event, Event::Exit { signal: Some(s), status: None, core_dumped: false, .. } if *s == libc::SIGABRT),
        "{x:?}"
    );
    assert!(f.feed.seq < x.feed.seq, "the signal before the exit");

    // Recording stops: no exec or exit entries while it is off.
    server.set_recording(false);
    probe.wait_log("blackbox: not recording", 1);
    let off_from = telemetry::blackbox::boot_ns();
    let t5 = token();
    assert!(run(detached("/bin/sh", &["-c", "exit 4", &t5])).code() == Some(4));
    std::thread::sleep(Duration::from_millis(300));
    let off_until = telemetry::blackbox::boot_ns();
    server.set_recording(true);
    probe.wait_log("blackbox: recording rec3", 1);
    armed(&server);
    let got = server.got();
    assert!(!got.iter().any(|g| argv_has(g, &t5)), "an exec while not recording was sent");
    let during: Vec<&Got> = got
        .iter()
        .filter(|g| matches!(g.feed.entry.event, Event::Exec { .. } | Event::Exit { .. }))
        .filter(|g| (off_from..off_until).contains(&g.feed.entry.mono_ns))
        .collect();
    assert!(during.is_empty(), "exec or exit entries while not recording: {during:?}");

    // Every line is a Feed of one source, numbered 1, 2, 3 ... on one connection.
    let got = server.got();
    let seqs: Vec<u64> = got.iter().map(|g| g.feed.seq).collect();
    assert_eq!(seqs, (1..=got.len() as u64).collect::<Vec<_>>());
    assert!(got.iter().all(|g| g.feed.source == got[0].feed.source && g.conn == 1));
    let log = probe.stop();
    assert_eq!(summary_value(&log, "blackbox_dropped"), 0, "{log}");
    assert!(summary_value(&log, "blackbox_acked") >= got.len() as u64, "{log}");
    assert!(server.lock().errors.is_empty(), "{:?}", server.lock().errors);
}

#[test]
fn a_broken_connection_loses_nothing_and_resends_only_what_was_not_acknowledged() {
    if !require_root("a_broken_connection_loses_nothing_and_resends_only_what_was_not_acknowledged") {
        return;
    }
    let server = Server::start(true);
    let mut probe = Probe::start(&server.path, &[]);
    armed(&server);
    let before = token();
    run(detached("/bin/true", &[&before]));
    server.wait_for("an exec before the breaks", |g| argv_has(g, &before));

    // Two breaks with entries not yet acknowledged: the collector closes
    // the connection and accepts again; then the collector goes away
    // (the socket is gone) and comes back on the same path. Processes run
    // while nothing is connected.
    let mut acked_at_break = Vec::new();
    let mut during = Vec::new();
    for (conn, socket_gone) in [(1usize, false), (2, true)] {
        // Acks held back: what arrives now must come again after the break.
        server.set_acking(false);
        let unacked = token();
        run(detached("/bin/true", &[&unacked]));
        let first_unacked =
            server.wait_for("an unacknowledged exec", |g| g.conn == conn && argv_has(g, &unacked)).feed.seq;
        // The last ack reached eventprobe long before the break.
        std::thread::sleep(Duration::from_millis(500));
        let acked = server.lock().acked;
        assert!(acked < first_unacked);
        acked_at_break.push(acked);
        let ts: Vec<String> = (0..3).map(|_| token()).collect();
        if socket_gone {
            server.stop_listening();
            for t in &ts {
                run(detached("/bin/true", &[t]));
            }
            std::thread::sleep(Duration::from_millis(1500));
            server.set_acking(true);
            server.listen();
        } else {
            server.close_connection();
            server.set_acking(true);
            for t in &ts {
                run(detached("/bin/true", &[t]));
            }
        }
        for t in ts.iter().chain([&unacked]) {
            server.wait_for("an exec after the reconnection", |g| g.conn == conn + 1 && argv_has(g, t));
        }
        during.extend(ts);
    }
    probe.wait_log("blackbox: connected to", 3);

    let got = server.got();
    assert!(got.iter().all(|g| g.feed.source == got[0].feed.source), "one source for the whole run");
    let on = |conn: usize| got.iter().filter(|g| g.conn == conn).map(|g| g.feed.seq).collect::<Vec<u64>>();
    let first = on(1);
    assert_eq!(first, (1..=first.len() as u64).collect::<Vec<_>>(), "in order on the first connection");
    let mut highest = *first.last().unwrap();
    for (i, acked) in acked_at_break.iter().enumerate() {
        let conn = i + 2;
        let seqs = on(conn);
        // Each new connection starts right after the last acknowledged
        // entry (none acknowledged is sent again) and goes on without a hole.
        assert_eq!(seqs.first(), Some(&(acked + 1)), "connection {conn} resends from the first unacknowledged");
        assert_eq!(seqs, (acked + 1..acked + 1 + seqs.len() as u64).collect::<Vec<_>>(), "connection {conn}");
        assert!(*seqs.last().unwrap() > highest, "connection {conn} carries new entries too");
        highest = *seqs.last().unwrap();
        // What the connection before carried unacknowledged came again, unchanged.
        for g in got.iter().filter(|g| g.conn == conn - 1 && g.feed.seq > *acked) {
            let again = got.iter().find(|h| h.conn == conn && h.feed.seq == g.feed.seq).expect("resent");
            assert_eq!(again.feed.entry, g.feed.entry);
        }
    }
    for t in &during {
        assert!(got.iter().any(|g| g.conn > 1 && argv_has(g, t)), "run while disconnected, sent after");
    }
    let log = probe.stop();
    assert_eq!(summary_value(&log, "blackbox_dropped"), 0, "{log}");
    assert!(log.matches("blackbox: connection to").count() >= 2, "{log}");
}

#[test]
fn kernel_losses_become_gaps() {
    if !require_root("kernel_losses_become_gaps") {
        return;
    }
    let server = Server::start(true);
    // A one-page ring holds one exec record (2.4 KiB): with eventprobe
    // stopped, the execs after the first cannot be written.
    let mut probe = Probe::start(&server.path, &["--ring-bytes", "4096"]);
    armed(&server);
    let t = token();
    let pid = probe.child.id() as i32;
    // SAFETY: signalling our own child by pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    for _ in 0..50 {
        run(detached("/bin/true", &[&t]));
    }
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    // The gaps come with the next second's look at the loss counters.
    let gap = server.wait_for(
        "a gap",
        |g| matches!(&g.feed.entry.event, Event::Gap { reason, .. } if reason.contains("kernel ring buffer full")),
    );
    let log = probe.stop();
    let got = server.got();
    let gaps: u64 = got
        .iter()
        .filter_map(|g| match &g.feed.entry.event {
            Event::Gap { lost, reason } if reason.contains("(exec)") || reason.contains("(exit)") => Some(*lost),
            _ => None,
        })
        .sum();
    let lost = summary_value(&log, "lost_kernel_blackbox");
    assert!(lost > 0, "{log}");
    assert_eq!(gaps, lost, "every event the kernel side dropped is in a gap: {log}");
    let seen = got.iter().filter(|g| argv_has(g, &t)).count() as u64;
    assert!(seen <= 1 && lost >= 49, "{seen} of the 50 execs seen, {lost} events lost");
    assert!(gap.feed.entry.wall_ns > 0 && gap.feed.entry.mono_ns > 0);
}

const THREADS_C: &str = r#"
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>

static void *last(void *a) { (void)a; usleep(200000); syscall(SYS_exit, 7); return 0; }

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "raw") == 0)
        syscall(SYS_exit, 5); /* exit(2) of the only thread, not exit_group */
    if (argc > 1 && strcmp(argv[1], "leader-first") == 0) {
        pthread_t t;
        pthread_create(&t, 0, last, 0);
        pthread_exit(0); /* the leader leaves first; the group ends with the other thread */
    }
    if (argc > 1 && strcmp(argv[1], "group") == 0) {
        pthread_t t;
        pthread_create(&t, 0, last, 0);
        exit(9); /* exit_group from the leader while a thread runs */
    }
    return 1;
}
"#;

/// The exit entry's status is what wait(2) reports, however the threads
/// of the group left, and there is one per process.
#[test]
fn exit_status_is_what_wait_reports_however_threads_leave() {
    if !require_root("exit_status_is_what_wait_reports_however_threads_leave") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("t.c"), THREADS_C).expect("write t.c");
    let exe = dir.path().join("bb-threads");
    let st = Command::new("gcc")
        .args(["-O1", "-pthread", "-o"])
        .arg(&exe)
        .arg(dir.path().join("t.c"))
        .status()
        .expect("run gcc (install it: cargo xtask setup)");
    assert!(st.success(), "gcc failed");
    let server = Server::start(true);
    let mut probe = Probe::start(&server.path, &[]);
    armed(&server);
    // (Which code wait(2) reports when the leader left first is the
    // kernel's business: the entry must say the same.)
    for (mode, want) in [("raw", Some(5)), ("leader-first", None), ("group", Some(9))] {
        let mut c = detached(exe.to_str().expect("utf-8 path"), &[mode]);
        let child = c.spawn().expect("spawn bb-threads");
        let pid = child.id();
        let out = child.wait_with_output().expect("wait");
        let waited = out.status.code();
        if want.is_some() {
            assert_eq!(waited, want, "{mode}: wait(2)");
        }
        let x = server.wait_for("the exit", |g| is_exit_of(g, pid));
        let Event::Exit { status, signal, comm, .. } = &x.feed.entry.event else { unreachable!() };
        assert_eq!((*status, *signal, comm.as_str()), (waited, None, "bb-threads"), "{mode}");
    }
    // One exit entry per process, whatever its threads did.
    let log = probe.stop();
    let got = server.got();
    let mut pids: Vec<u32> = got
        .iter()
        .filter_map(|g| match &g.feed.entry.event {
            Event::Exit { pid, comm, .. } if comm == "bb-threads" => Some(*pid),
            _ => None,
        })
        .collect();
    let n = pids.len();
    pids.sort_unstable();
    pids.dedup();
    assert_eq!((n, pids.len()), (3, 3), "{log}");
}

const ROGUE_C: &str = r#"
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* Serves argv[1] like a collector that records, for argv[2] seconds;
   prints how many bytes it was sent. */
int main(int argc, char **argv) {
    if (argc < 3) return 2;
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    strncpy(a.sun_path, argv[1], sizeof a.sun_path - 1);
    unlink(argv[1]);
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 8)) return 3;
    printf("listening\n");
    fflush(stdout);
    long total = 0;
    time_t end = time(0) + atoi(argv[2]);
    while (time(0) < end) {
        struct pollfd p = { s, POLLIN, 0 };
        if (poll(&p, 1, 100) <= 0) continue;
        int f = accept(s, 0, 0);
        if (f < 0) continue;
        const char *m = "{\"recording\":true,\"id\":\"rogue\"}\n";
        if (send(f, m, strlen(m), MSG_NOSIGNAL) < 0) { close(f); continue; }
        char b[4096];
        while (time(0) < end) {
            struct pollfd q = { f, POLLIN, 0 };
            if (poll(&q, 1, 100) <= 0) continue;
            ssize_t n = read(f, b, sizeof b);
            if (n <= 0) break;
            total += n;
        }
        close(f);
    }
    printf("received %ld\n", total);
    return 0;
}
"#;

/// Every command line of the machine goes to the blackbox socket: a
/// socket served by another user than root gets nothing, and the kernel
/// side is never told to record.
#[test]
fn a_socket_not_served_by_root_gets_nothing() {
    if !require_root("a_socket_not_served_by_root_gets_nothing") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new().prefix("bbrogue").tempdir_in("/tmp").expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    std::fs::write(dir.path().join("rogue.c"), ROGUE_C).expect("write rogue.c");
    let exe = dir.path().join("bb-rogue");
    let st = Command::new("gcc")
        .args(["-O1", "-o"])
        .arg(&exe)
        .arg(dir.path().join("rogue.c"))
        .status()
        .expect("run gcc (install it: cargo xtask setup)");
    assert!(st.success(), "gcc failed");
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let sock = dir.path().join("blackbox.sock");
    let mut rogue = {
        use std::os::unix::process::CommandExt as _;
        Command::new(&exe)
            .arg(&sock)
            .arg("8")
            .uid(65534)
            .gid(65534)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the server as nobody")
    };
    let mut out = BufReader::new(rogue.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("read the server's first line");
    assert_eq!(line.trim(), "listening");
    let mut probe = Probe::start(&sock, &[]);
    probe.wait_log("served by uid 65534", 1);
    let t = token();
    let deadline = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < deadline {
        run(detached("/bin/true", &[&t]));
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = probe.stop();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).expect("read the server's result");
    let _ = rogue.wait();
    assert_eq!(rest.trim(), "received 0", "{log}");
    assert_eq!(summary_value(&log, "blackbox_entries"), 0, "{log}");
    assert!(!log.contains("blackbox: recording"), "{log}");
}
