//! Crash signatures and the crash-loop governor with real parts: real
//! crashes through the kernel's core_pattern (pipe and socket mode),
//! crashprobe sending to the real collector, read back with `telemctl
//! journal`. core_pattern is global: every test takes `LOCK`, and a guard
//! restores the kernel's settings whatever happens.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use e2e::collector::Collector;
use e2e::kernel::{dumps_core, SysctlGuard, CORE_PATTERN, CORE_PIPE_LIMIT};

static LOCK: Mutex<()> = Mutex::new(());

/// Dropped in field order: the collector, the kernel's settings restored,
/// then the lock released.
struct World {
    collector: Collector,
    tmp: tempfile::TempDir,
    guard: SysctlGuard,
    _lock: std::sync::MutexGuard<'static, ()>,
}

/// Root, the lock, the kernel's settings saved, a collector running with
/// `extra` settings (crashprobe reads the same file), programs under the
/// temp dir counted as the system's.
fn setup(test: &str, extra: &str) -> Option<World> {
    if !e2e::require_root(test) {
        return None;
    }
    let lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let guard = SysctlGuard::save(&[CORE_PATTERN, CORE_PIPE_LIMIT]);
    guard.set(CORE_PIPE_LIMIT, "16");
    let tmp = tempfile::Builder::new().prefix("cs").tempdir_in("/tmp").expect("tempdir");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let extra = format!("crash_system_prefixes={}/\n{extra}", tmp.path().display());
    let mut collector = Collector::in_dir(tmp.path(), None, &extra);
    collector.start();
    Some(World { collector, tmp, guard, _lock: lock })
}

fn pipe_pattern(cfg: &Path) -> String {
    let p = format!("|{} -P %P -F %F -d %d -t %t -s %s -f {}", e2e::bin("crashprobe").display(), cfg.display());
    assert!(p.len() <= 127, "core_pattern too long ({}): {p}", p.len());
    p
}

fn bugs(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/crash_programs/bugs.c");
    let exe = dir.join("bugs");
    let o = Command::new("gcc").args(["-O0", "-g", "-o"]).arg(&exe).arg(&src).output().expect("gcc");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    exe
}

/// Runs bug `i` of `exe`, which must dump core.
fn crash(exe: &Path, i: u32) {
    let mut c = Command::new(exe);
    c.arg(i.to_string()).stdout(Stdio::null()).stderr(Stdio::null());
    let st = dumps_core(&mut c, None).status().expect("run crashing program");
    assert!(st.signal().is_some() && st.core_dumped(), "bug {i}: {st}");
}

#[test]
fn crash_signature_in_payload_journal_filter_and_verbose_listing() {
    let Some(w) = setup("crash_signature_in_payload_journal_filter_and_verbose_listing", "") else { return };
    let c = &w.collector;
    let exe = bugs(w.tmp.path());
    w.guard.set(CORE_PATTERN, &pipe_pattern(&c.conf));
    // Payload format 1 (the default): the `Signature:` line.
    crash(&exe, 0);
    crash(&exe, 1);
    // (Other programs crashing on the machine meanwhile go through the same
    // core_pattern: only this test's program's records are looked at.)
    let process = format!("Process: {}\n", exe.display());
    let mine = |args: &[&str], n: usize| -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let j: Vec<serde_json::Value> = c
                .journal(args)
                .into_iter()
                .filter(|e| {
                    let p = e["payload"].as_str().unwrap_or("");
                    p.contains(&process) || p.contains(&format!("\"process\":\"{}\"", exe.display()))
                })
                .collect();
            if j.len() >= n {
                return j;
            }
            assert!(Instant::now() < deadline, "{n} records of {args:?} not journaled (have {j:?}); log:\n{}", c.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let j = mine(&["-c", "org.clearlinux/crash/*", "-i"], 2);
    let sig_of = |e: &serde_json::Value| e["signature"].as_str().map(String::from);
    let sig0 = sig_of(&j[0]).unwrap_or_else(|| panic!("signature of {}", j[0]));
    let sig1 = sig_of(&j[1]).unwrap_or_else(|| panic!("signature of {}", j[1]));
    assert!(sig0.starts_with("bugs!bug0 | bugs!main"), "{sig0}: {}", j[0]);
    assert!(sig1.starts_with("bugs!bug1 | bugs!main"), "{sig1}");
    let p = j[0]["payload"].as_str().expect("payload kept");
    assert!(p.contains(&format!("\nSignal: 11\nSignature: {sig0}\n\nBacktrace (TID ")), "{p}");
    // Payload format 2: the `signature` field, found the same way.
    c.set("crash_payload_version=2");
    crash(&exe, 0);
    let same = mine(&["--signature", &sig0, "-i"], 2);
    assert_eq!(same.len(), 2, "{same:?}");
    assert_eq!(same[1]["payload_format_version"], 2, "{}", same[1]);
    assert_eq!(c.journal(&["--signature", &sig1]).len(), 1);
    assert_eq!(c.journal(&["--signature", "no such signature"]).len(), 0);
    // -V shows it under each crash record.
    let out = c.telemctl(&["journal", "-V", "--signature", &sig0]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches(&format!("\n    signature: {sig0}\n")).count(), 2, "{text}");
    assert!(text.contains("Total records: 2"), "{text}");
}

/// The `Count:` of a `crash/repeated` journal entry, and its signature.
fn repeated_count(e: &serde_json::Value) -> (String, u64) {
    let p = e["payload"].as_str().unwrap_or_else(|| panic!("payload of {e}"));
    let field =
        |k: &str| p.lines().find_map(|l| l.strip_prefix(k)).unwrap_or_else(|| panic!("{k} in {p}")).trim().to_string();
    (field("Signature:"), field("Count:").parse().unwrap_or_else(|_| panic!("count in {p}")))
}

#[test]
fn crash_loop_governor_storm_pipe_then_socket_mode() {
    let Some(w) = setup(
        "crash_loop_governor_storm_pipe_then_socket_mode",
        "crash_signature_burst=3\ncrash_signature_window=30s\nrate_limit_enabled=false\n",
    ) else {
        return;
    };
    let c = &w.collector;
    let exe = bugs(w.tmp.path());
    w.guard.set(CORE_PATTERN, &pipe_pattern(&c.conf));
    // A storm of bug 0 from 8 processes at once; a second bug (4 crashes)
    // in the middle of it.
    const STORM: u32 = 64;
    let workers: Vec<_> = (0..8)
        .map(|k| {
            let exe = exe.clone();
            std::thread::spawn(move || {
                for i in 0..STORM / 8 {
                    crash(&exe, 0);
                    if k == 0 && i == 2 {
                        for _ in 0..4 {
                            crash(&exe, 1);
                        }
                    }
                }
            })
        })
        .collect();
    for t in workers {
        t.join().expect("storm worker");
    }
    // Then through the socket: the same window, the same counts.
    let sock = w.tmp.path().join("crash.sock");
    let server = Command::new(e2e::bin("crashprobe"))
        .arg("--serve")
        .arg(&sock)
        .arg("-f")
        .arg(&c.conf)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("crashprobe --serve");
    let _server = e2e::kernel::KillOnDrop(server);
    let end = Instant::now() + Duration::from_secs(10);
    while !sock.exists() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(sock.exists(), "server socket");
    w.guard.set(CORE_PATTERN, &format!("@{}", sock.display()));
    const SOCKET_STORM: u32 = 16;
    for _ in 0..SOCKET_STORM {
        crash(&exe, 0);
    }
    // Once the window is over the server sends each signature's
    // crash/repeated record; the counts add up to every crash.
    let total0 = u64::from(STORM + SOCKET_STORM);
    let deadline = Instant::now() + Duration::from_secs(120);
    let (full0, full1, rep0, rep1, repeated) = loop {
        let full = c.journal(&["-c", "org.clearlinux/crash/clr", "-i"]);
        let repeated = c.journal(&["-c", "org.clearlinux/crash/repeated", "-i"]);
        let sig = |e: &serde_json::Value| e["signature"].as_str().unwrap_or("").to_string();
        let full0 = full.iter().filter(|e| sig(e).starts_with("bugs!bug0 |")).count() as u64;
        let full1 = full.iter().filter(|e| sig(e).starts_with("bugs!bug1 |")).count() as u64;
        let counts: Vec<(String, u64)> = repeated.iter().map(repeated_count).collect();
        let rep0: u64 = counts.iter().filter(|(s, _)| s.starts_with("bugs!bug0 |")).map(|(_, n)| n).sum();
        let rep1: u64 = counts.iter().filter(|(s, _)| s.starts_with("bugs!bug1 |")).map(|(_, n)| n).sum();
        if full0 + rep0 == total0 && full1 + rep1 == 4 {
            break (full0, full1, rep0, rep1, repeated);
        }
        assert!(
            Instant::now() < deadline,
            "counts do not add up: bug0 {full0} full + {rep0} counted of {total0}, bug1 {full1} + {rep1} of 4; log:\n{}",
            c.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!("storm of {total0}: bug0 {full0} full + {rep0} counted; bug1 {full1} full + {rep1} counted");
    // One crash/repeated record per window and signature; at most 3 full
    // records per window (the storm normally fits in one window).
    let windows0 = repeated.iter().filter(|e| repeated_count(e).0.starts_with("bugs!bug0 |")).count() as u64;
    assert!(windows0 >= 1 && full0 <= 3 * (windows0 + 1), "bug0: {full0} full in {windows0} windows");
    assert!(rep0 >= total0 - 3 * (windows0 + 1), "bug0 counted: {rep0}");
    assert_eq!((full1, rep1), (3, 1), "the second bug gets its full records during the storm");
    for e in &repeated {
        let p = e["payload"].as_str().unwrap();
        assert!(p.contains("\nFirst: ") && p.contains("\nLast: ") && p.contains("\nWindow: 30 s from "), "{p}");
    }
    // The repeated records are found by signature too.
    let sig0 = repeated_count(repeated.iter().find(|e| repeated_count(e).0.starts_with("bugs!bug0 |")).unwrap()).0;
    let by_sig = c.journal(&["--signature", &sig0]);
    assert_eq!(by_sig.len() as u64, full0 + windows0, "{by_sig:?}");
}

/// Removes crashprobe's install state when dropped (a failed test must not
/// leave `telemctl crash install` state behind).
struct RemoveState;
impl Drop for RemoveState {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(INSTALL_STATE);
    }
}
const INSTALL_STATE: &str = "/run/telemetrics/crashprobe.state";

/// Runs bug `i` of `exe`; whether the kernel dumped its core.
fn crash_dumped(exe: &Path, i: u32) -> bool {
    let mut c = Command::new(exe);
    c.arg(i.to_string()).stdout(Stdio::null()).stderr(Stdio::null());
    let st = dumps_core(&mut c, None).status().expect("run crashing program");
    assert!(st.signal().is_some(), "bug {i}: {st}");
    st.core_dumped()
}

#[test]
fn crash_request_socket_mode_install_and_governor_refusing_cores_before_they_are_written() {
    let Some(w) = setup(
        "crash_request_socket_mode_install_and_governor_refusing_cores_before_they_are_written",
        "crash_signature_burst=3\n",
    ) else {
        return;
    };
    assert!(!Path::new(INSTALL_STATE).exists(), "{INSTALL_STATE} exists: a real install is active; not touching it");
    let _rm = RemoveState;
    let c = &w.collector;
    let exe = bugs(w.tmp.path());
    let crashprobe = e2e::bin("crashprobe");
    let sock = w.tmp.path().join("crash.sock");
    let install =
        || c.telemctl(&["crash", "install", "--socket", sock.to_str().unwrap(), "--exe", crashprobe.to_str().unwrap()]);
    // Nothing serves the socket: a clear refusal, core_pattern untouched.
    let before = std::fs::read_to_string(CORE_PATTERN).unwrap();
    let out = install();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("nothing serves {}", sock.display())) && err.contains("--serve"), "{err}");
    assert_eq!(std::fs::read_to_string(CORE_PATTERN).unwrap(), before);
    // With the server: `@@` (this kernel has the request protocol).
    let server = Command::new(&crashprobe)
        .arg("--serve")
        .arg(&sock)
        .arg("-f")
        .arg(&c.conf)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("crashprobe --serve");
    let _server = e2e::kernel::KillOnDrop(server);
    let end = Instant::now() + Duration::from_secs(10);
    while !sock.exists() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = install();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(CORE_PATTERN).unwrap().trim(), format!("@@{}", sock.display()));
    // Three full records; from then on the kernel is told not to dump: no
    // core is written at all (the process's status says so).
    let dumped: Vec<bool> = (0..6).map(|_| crash_dumped(&exe, 0)).collect();
    assert_eq!(dumped, [true, true, true, false, false, false], "cores of bug 0");
    // Another bug is still dumped and recorded in full.
    assert!(crash_dumped(&exe, 1), "bug 1 is dumped");
    // (Only this program's signatures: others may crash on the machine.)
    let count = |sigs: &[String], p: &str| sigs.iter().filter(|s| s.starts_with(p)).count();
    let deadline = Instant::now() + Duration::from_secs(60);
    let sigs = loop {
        let j = c.journal(&["-c", "org.clearlinux/crash/clr"]);
        let sigs: Vec<String> = j.iter().filter_map(|e| e["signature"].as_str().map(String::from)).collect();
        if count(&sigs, "bugs!bug0 | bugs!main") >= 3 && count(&sigs, "bugs!bug1 | bugs!main") >= 1 {
            break sigs;
        }
        assert!(Instant::now() < deadline, "records not journaled: {sigs:?}; log:\n{}", c.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(count(&sigs, "bugs!bug0 | bugs!main"), 3, "{sigs:?}");
    assert_eq!(count(&sigs, "bugs!bug1 | bugs!main"), 1, "{sigs:?}");
    let out = c.telemctl(&["crash", "uninstall", "--exe", crashprobe.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(CORE_PATTERN).unwrap(), before);
}

#[test]
fn crash_request_mode_the_kernel_waits_for_the_answer() {
    // A server of our own speaking the protocol by hand: while it holds the
    // request unanswered, the crashed process cannot finish; refused, it
    // ends without a core.
    let Some(w) = setup("crash_request_mode_the_kernel_waits_for_the_answer", "") else { return };
    use std::io::{Read, Write};
    let exe = bugs(w.tmp.path());
    let sock = w.tmp.path().join("raw.sock");
    let l = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    w.guard.set(CORE_PATTERN, &format!("@@{}", sock.display()));
    let mut cmd = Command::new(&exe);
    cmd.arg("0").stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = e2e::kernel::KillOnDrop(dumps_core(&mut cmd, None).spawn().expect("spawn"));
    let (mut conn, _) = l.accept().expect("the kernel connects");
    conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = [0u8; 16];
    conn.read_exact(&mut req).expect("coredump_req");
    let size = u32::from_le_bytes(req[0..4].try_into().unwrap());
    let size_ack = u32::from_le_bytes(req[4..8].try_into().unwrap());
    let mask = u64::from_le_bytes(req[8..16].try_into().unwrap());
    assert!(size >= 16 && size_ack >= 16, "request {size} / ack {size_ack}");
    assert_eq!(mask & 0b1111, 0b1111, "KERNEL, USERSPACE, REJECT and WAIT offered: {mask:#x}");
    let mut rest = vec![0u8; size as usize - 16];
    conn.read_exact(&mut rest).unwrap();
    // Unanswered: the process is still there.
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.0.try_wait().unwrap().is_none(), "the kernel waits for the answer");
    let mut ack = Vec::new();
    ack.extend_from_slice(&16u32.to_le_bytes());
    ack.extend_from_slice(&0u32.to_le_bytes());
    ack.extend_from_slice(&4u64.to_le_bytes()); // COREDUMP_REJECT
    conn.write_all(&ack).unwrap();
    let mut mark = [0u8; 4];
    conn.read_exact(&mut mark).expect("mark");
    assert_eq!(u32::from_le_bytes(mark), 0, "COREDUMP_MARK_REQACK");
    let mut more = Vec::new();
    let _ = conn.read_to_end(&mut more);
    assert!(more.is_empty(), "a refused dump sends no core bytes ({} came)", more.len());
    let st = child.0.wait().expect("wait");
    assert_eq!(st.signal(), Some(11));
    assert!(!st.core_dumped(), "refused: no core");
}

#[test]
fn crash_loop_governor_pipe_mode_window_reported_by_sweep() {
    // Pipe mode alone (no server): the count of a window that is over is
    // sent by `crashprobe --sweep` (the timer in dist/), or by the next
    // handled crash.
    let Some(w) = setup(
        "crash_loop_governor_pipe_mode_window_reported_by_sweep",
        "crash_signature_burst=1\ncrash_signature_window=2s\n",
    ) else {
        return;
    };
    let c = &w.collector;
    let exe = bugs(w.tmp.path());
    w.guard.set(CORE_PATTERN, &pipe_pattern(&c.conf));
    for _ in 0..4 {
        crash(&exe, 0);
    }
    let crashprobe = e2e::bin("crashprobe");
    let sweep =
        || Command::new(&crashprobe).arg("--sweep").arg("-f").arg(&c.conf).output().expect("crashprobe --sweep");
    // Once the window (2 s from the first crash; a slow machine may need
    // more than one) is over, a sweep sends its count: full records and
    // counts add up to the 4 crashes.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (full, repeated) = loop {
        let out = sweep();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let repeated: Vec<(String, u64)> = c
            .journal(&["-c", "org.clearlinux/crash/repeated", "-i"])
            .iter()
            .map(repeated_count)
            .filter(|(s, _)| s.starts_with("bugs!bug0 |"))
            .collect();
        let full = c
            .journal(&["-c", "org.clearlinux/crash/clr", "-i"])
            .iter()
            .filter(|e| e["signature"].as_str().is_some_and(|s| s.starts_with("bugs!bug0 |")))
            .count() as u64;
        if full + repeated.iter().map(|(_, n)| n).sum::<u64>() == 4 {
            break (full, repeated);
        }
        assert!(Instant::now() < deadline, "counts do not add up: {full} full, {repeated:?}; log:\n{}", c.log());
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(!repeated.is_empty() && full <= repeated.len() as u64 + 1, "{full} full, {repeated:?}");
    // Sent once: a later sweep adds none for this signature.
    assert!(sweep().status.success());
    let again = c
        .journal(&["-c", "org.clearlinux/crash/repeated", "-i"])
        .iter()
        .map(repeated_count)
        .filter(|(s, _)| s.starts_with("bugs!bug0 |"))
        .count();
    assert_eq!(again, repeated.len());
}
