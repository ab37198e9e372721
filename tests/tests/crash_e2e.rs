//! crashprobe end to end: the real kernel, real core_pattern, real crashing
//! programs compiled here with gcc/g++/rustc, records received on a real
//! unix socket (tests/src/receiver.rs). Root only; in CI they must run.
//!
//! core_pattern is global, so every test takes `LOCK`, and a guard restores
//! core_pattern, core_pipe_limit and suid_dumpable whatever happens.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use e2e::kernel::{dumps_core, KillOnDrop, SysctlGuard, CORE_PATTERN, CORE_PIPE_LIMIT, SUID_DUMPABLE};
use e2e::receiver::{Behaviour, Receiver};
use serde_json::Value;
use telemetry::crash_id::crash_event_id;
use telemetry::BootId;

static LOCK: Mutex<()> = Mutex::new(());

/// A test's world: a temp dir readable by everyone (programs may run as
/// nobody), a receiver, a config file pointing crashprobe at it.
struct World {
    dir: tempfile::TempDir,
    receiver: Receiver,
    config: PathBuf,
}

fn world(extra: &str) -> World {
    world_with(extra, Behaviour::default())
}

fn world_with(extra: &str, behaviour: Behaviour) -> World {
    let dir = tempfile::Builder::new().prefix("cr").tempdir_in("/tmp").expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // Reachable by every user: the handler sends after dropping to the
    // crashed user's credentials, as the collector's socket is.
    let receiver = Receiver::start_at(&dir.path().join("telem.sock"), behaviour);
    std::fs::set_permissions(&receiver.path, std::fs::Permissions::from_mode(0o666)).expect("chmod socket");
    let config = dir.path().join("c.conf");
    std::fs::write(
        &config,
        format!(
            "[settings]\nsocket_path={}\ncrash_third_party=unwind\ncrash_system_prefixes={}/\ncrash_payload_version=2\n\
             state_dir={}/state\n{extra}",
            receiver.path.display(),
            dir.path().display(),
            dir.path().display()
        ),
    )
    .expect("write config");
    World { dir, receiver, config }
}

fn crashprobe() -> PathBuf {
    e2e::bin("crashprobe")
}

fn pipe_pattern(cfg: &Path) -> String {
    let p = format!("|{} -P %P -F %F -d %d -t %t -s %s -c {}", crashprobe().display(), cfg.display());
    assert!(p.len() <= 127, "core_pattern too long ({}): {p}", p.len());
    p
}

fn compile(dir: &Path, src: &str, out: &str, cmd: &[&str]) -> PathBuf {
    let src_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/crash_programs").join(src);
    let exe = dir.join(out);
    let mut c = Command::new(cmd[0]);
    c.args(&cmd[1..]).arg("-o").arg(&exe).arg(&src_path);
    let o = c.output().unwrap_or_else(|e| panic!("run {}: {e}", cmd[0]));
    assert!(o.status.success(), "compiling {src}: {}", String::from_utf8_lossy(&o.stderr));
    exe
}

fn compile_c(dir: &Path, src: &str, out: &str, flags: &[&str]) -> PathBuf {
    let mut cmd = vec!["gcc"];
    cmd.extend_from_slice(flags);
    if src.contains("threads") {
        cmd.push("-pthread");
    }
    compile(dir, src, out, &cmd)
}

/// Runs `exe` with RLIMIT_CORE unlimited (optionally as `uid`), expects it
/// to die by a signal, returns its pid.
fn crash(exe: &Path, uid: Option<u32>) -> u32 {
    let mut c = Command::new(exe);
    c.stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = dumps_core(&mut c, uid).spawn().expect("spawn crashing program");
    let pid = child.id();
    let st = wait_timeout(&mut child, Duration::from_secs(40)).expect("crashing program did not finish");
    assert!(st.signal().is_some(), "{} exited with {st} instead of crashing", exe.display());
    assert!(st.core_dumped(), "{} was not dumped ({st})", exe.display());
    pid
}

/// As [`crash`], with arguments.
fn crash_args(exe: &Path, args: &[&str]) -> u32 {
    let mut c = Command::new(exe);
    c.args(args).stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = dumps_core(&mut c, None).spawn().expect("spawn crashing program");
    let pid = child.id();
    let st = wait_timeout(&mut child, Duration::from_secs(40)).expect("crashing program did not finish");
    assert!(st.core_dumped(), "{} {args:?} was not dumped ({st})", exe.display());
    pid
}

/// Starts `crashprobe --serve SOCK -f CONFIG` and waits for its socket.
fn serve(sock: &Path, config: &Path) -> KillOnDrop {
    let server = Command::new(crashprobe())
        .arg("--serve")
        .arg(sock)
        .arg("-f")
        .arg(config)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start crashprobe --serve");
    let server = KillOnDrop(server);
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while !sock.exists() && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(sock.exists(), "server socket {}", sock.display());
    server
}

/// Waits for `n` records of programs under the test's directory (other
/// programs may crash on the machine meanwhile, through the same
/// core_pattern), in arrival order.
fn records_of_mine(w: &World, n: usize) -> Vec<e2e::receiver::Received> {
    let dir = w.dir.path().display().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mine: Vec<_> = w
            .receiver
            .records()
            .into_iter()
            .filter(|r| {
                serde_json::from_str::<Value>(&r.record.payload.to_text_lossy())
                    .is_ok_and(|v| v["process"].as_str().is_some_and(|p| p.starts_with(&dir)))
            })
            .collect();
        if mine.len() >= n || std::time::Instant::now() > deadline {
            return mine;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `signature` of a v2 payload.
fn signature_of(r: &e2e::receiver::Received) -> String {
    let v: Value = serde_json::from_str(&r.record.payload.to_text_lossy()).expect("json payload");
    v["signature"].as_str().unwrap_or_else(|| panic!("no signature in {v}")).to_string()
}

fn wait_timeout(c: &mut Child, t: Duration) -> Option<std::process::ExitStatus> {
    let end = std::time::Instant::now() + t;
    loop {
        if let Ok(Some(s)) = c.try_wait() {
            return Some(s);
        }
        if std::time::Instant::now() > end {
            let _ = c.kill();
            let _ = c.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The one crash record the receiver got, with its v2 JSON payload.
fn one_record(w: &World) -> (e2e::receiver::Received, Value) {
    let got = w.receiver.wait_for(1, Duration::from_secs(30));
    assert_eq!(got.len(), 1, "expected one crash record; receiver errors: {:?}", w.receiver.errors());
    let r = got[0].clone();
    let text = r.record.payload.to_text_lossy().into_owned();
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("payload is not JSON ({e}): {text}"));
    (r, v)
}

fn functions(thread: &Value) -> Vec<String> {
    thread["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .map(|f| f["function"].as_str().unwrap_or("???").to_string())
        .collect()
}

fn crashed_thread(v: &Value) -> &Value {
    let t = &v["threads"][0];
    assert_eq!(t["crashed"], true, "first thread is the crashing one: {v}");
    t
}

fn setup(extra: &str) -> Option<(std::sync::MutexGuard<'static, ()>, SysctlGuard, World)> {
    if !e2e::require_root("crash e2e") {
        return None;
    }
    let lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let guard = SysctlGuard::save(&[CORE_PATTERN, CORE_PIPE_LIMIT, SUID_DUMPABLE]);
    // As `crashprobe --install` sets it: the kernel keeps the crashed
    // process (and its /proc/PID) until the handler is done.
    guard.set(CORE_PIPE_LIMIT, "16");
    let w = world(extra);
    Some((lock, guard, w))
}

fn assert_levels(v: &Value, exe: &Path, with_lines: bool) {
    let t = crashed_thread(v);
    let f = functions(t);
    assert_eq!(f.get(..4), Some(&["level3", "level2", "level1", "main"].map(String::from)[..]), "frames: {t}");
    assert!(f.iter().any(|n| n == "_start"), "unwound to _start: {f:?}");
    assert_eq!(t["end"], "outermost", "{t}");
    let f0 = &t["frames"][0];
    assert_eq!(f0["module"], exe.display().to_string());
    assert_eq!(f0["source"], "context");
    assert!(f0["build_id"].as_str().is_some_and(|b| b.len() == 40), "build-id: {f0}");
    assert!(f0["module_offset"].as_str().is_some_and(|o| o.starts_with("0x")));
    for fr in t["frames"].as_array().unwrap().iter().skip(1).take(3) {
        assert_eq!(fr["source"], "cfi", "{fr}");
    }
    if with_lines {
        assert!(f0["file"].as_str().is_some_and(|f| f.ends_with("segv.c")), "{f0}");
        assert_eq!(f0["line"], 3);
    } else {
        assert!(f0["file"].is_null(), "{f0}");
    }
    assert_eq!(v["signal"], 11);
    assert_eq!(v["fault_address"], "0x0");
}

#[test]
fn crash_c_o0_frame_pointers_pipe_mode_v1_and_event_id() {
    // Also file:line from libc's separate debug info (build-id lookup).
    let Some((_l, g, w)) = setup("crash_payload_version=1\ncrash_debug_lines=true\n") else { return };
    let exe = compile_c(w.dir.path(), "segv.c", "segv", &["-O0", "-g", "-fno-omit-frame-pointer"]);
    g.set(CORE_PATTERN, &pipe_pattern(&w.config));
    let pid = crash(&exe, None);
    let got = w.receiver.wait_for(1, Duration::from_secs(30));
    assert_eq!(got.len(), 1, "errors: {:?}", w.receiver.errors());
    let r = &got[0].record;
    assert_eq!(r.classification.as_str(), "org.clearlinux/crash/clr");
    assert_eq!(r.severity.as_u8(), 3);
    assert_eq!(r.payload_format_version, 1);
    let text = r.payload.to_text_lossy();
    let expected_head = format!(
        "Process: {}\nPID: {pid}\nSignal: 11\nSignature: segv!level3 | segv!level2 | segv!level1 @ segv+0x",
        exe.display()
    );
    assert!(text.starts_with(&expected_head), "payload:\n{text}");
    assert!(text.contains(&format!("\n\nBacktrace (TID {pid}):\n#0 level3() - [")), "{text}");
    let segv = exe.display().to_string();
    assert!(text.contains(&format!("#0 level3() - [{segv}] - ")), "{text}");
    assert!(text.contains(&format!("#3 main() - [{segv}] - ")), "{text}");
    assert!(text.contains("() - [libc.so.6]"), "{text}");
    // libc is stripped: its frame is named and placed from
    // /usr/lib/debug/.build-id/xx/rest.debug (package libc6-dbg).
    assert!(
        text.contains("__libc_start_call_main() - [libc.so.6] - ") && text.contains("libc_start_call_main.h:"),
        "{text}"
    );
    assert!(text.ends_with(&format!("_start() - [{segv}]\n\n")), "{text}");
    assert!(!text.contains("Error:"), "{text}");
    // The event id is crash_event_id(boot id, pid, start time); the
    // process is gone, so check it is not random: a second crash differs,
    // and the id is the documented function of this boot's id and the pid
    // for some start time no later than now.
    let boot = BootId::read().expect("boot id");
    let now_ticks = {
        let up: f64 = std::fs::read_to_string("/proc/uptime").unwrap().split(' ').next().unwrap().parse().unwrap();
        (up * 100.0) as u64 + 1
    };
    let id = r.event_id;
    let found = (now_ticks.saturating_sub(6000)..=now_ticks).rev().any(|t| crash_event_id(&boot, pid, t) == id);
    assert!(found, "event id is crash_event_id(boot, pid, start)");
}

#[test]
fn crash_c_o0_without_eh_frame_uses_debug_frame_then_frame_pointers() {
    let Some((_l, g, w)) = setup("") else { return };
    // No .eh_frame for the program's code: -g leaves only .debug_frame.
    let exe = compile_c(
        w.dir.path(),
        "segv.c",
        "segvdf",
        &["-O0", "-g", "-fno-omit-frame-pointer", "-fno-asynchronous-unwind-tables", "-fno-unwind-tables"],
    );
    // And a copy without .debug_frame either: frame pointers only.
    let nocfi = w.dir.path().join("segvfp");
    let st =
        Command::new("objcopy").arg("--remove-section=.debug_frame").arg(&exe).arg(&nocfi).status().expect("objcopy");
    assert!(st.success());
    g.set(CORE_PATTERN, &pipe_pattern(&w.config));
    for (exe, source) in [(&exe, "cfi"), (&nocfi, "frame_pointer")] {
        crash(exe, None);
        let got = w.receiver.wait_for(if source == "cfi" { 1 } else { 2 }, Duration::from_secs(30));
        let r = got.last().expect("record");
        let v: Value = serde_json::from_str(&r.record.payload.to_text_lossy()).expect("json");
        let t = crashed_thread(&v);
        let f = functions(t);
        assert_eq!(f.get(..4), Some(&["level3", "level2", "level1", "main"].map(String::from)[..]), "{t}");
        for fr in t["frames"].as_array().unwrap().iter().skip(1).take(3) {
            assert_eq!(fr["source"], source, "{fr}");
        }
        assert!(f.iter().any(|x| x == "__libc_start_call_main"), "{f:?}");
    }
}

#[test]
fn crash_bad_function_pointer_recovered_by_stack_scan() {
    let Some((_l, g, w)) = setup("") else { return };
    let exe = compile_c(w.dir.path(), "badcall.c", "badcall", &["-O2", "-g"]);
    g.set(CORE_PATTERN, &pipe_pattern(&w.config));
    crash(&exe, None);
    let (_, v) = one_record(&w);
    let t = crashed_thread(&v);
    let frames = t["frames"].as_array().unwrap();
    assert_eq!(frames[0]["pc"], "0x0");
    assert!(frames[0]["module"].is_null());
    assert_eq!(frames[1]["source"], "scan", "{t}");
    assert_eq!(frames[1]["function"], "level2", "{t}");
    let f = functions(t);
    assert_eq!(f.get(1..4), Some(&["level2", "level1", "main"].map(String::from)[..]), "{t}");
    assert_eq!(frames[2]["source"], "cfi");
    assert_eq!(t["end"], "outermost");
}

#[test]
fn crash_c_o2_omit_frame_pointer() {
    let Some((_l, g, w)) = setup("") else { return };
    let exe = compile_c(w.dir.path(), "segv.c", "segv2", &["-O2", "-g", "-fomit-frame-pointer"]);
    g.set(CORE_PATTERN, &pipe_pattern(&w.config));
    crash(&exe, None);
    let (r, v) = one_record(&w);
    assert_eq!(r.record.payload_format_version, 2);
    assert_levels(&v, &exe, true);
}

/// A core_pattern set by hand leaves core_pipe_limit at the kernel's 0:
/// nothing keeps the crashed process (its memory map, its mapped files
/// under /proc/PID/map_files, its root) once the kernel has written the
/// whole core into the pipe. The handler enlarged the pipe before opening
/// the mapped files, so a core smaller than the enlarged pipe went in at
/// once, the process exited, and about half the crashes of a small, freshly
/// compiled program came out as `0x... is in no known module` without a
/// backtrace. Every crash here must be unwound from its own executable.
#[test]
fn crash_pipe_mode_core_pipe_limit_0_small_fresh_programs_all_unwound() {
    let Some((_l, g, w)) = setup("crash_signature_burst=-1\n") else { return };
    g.set(CORE_PIPE_LIMIT, "0");
    g.set(CORE_PATTERN, &pipe_pattern(&w.config));
    const N: usize = 12;
    for i in 0..N {
        let d = w.dir.path().join(format!("fresh{i}"));
        std::fs::create_dir(&d).expect("mkdir");
        let exe = compile_c(&d, "segv.c", "segv", &["-O1", "-g"]);
        crash(&exe, None);
    }
    let got = records_of_mine(&w, N);
    assert_eq!(got.len(), N, "errors: {:?}", w.receiver.errors());
    let mut bad = Vec::new();
    for r in &got {
        let v: Value = serde_json::from_str(&r.record.payload.to_text_lossy()).expect("json payload");
        let t = crashed_thread(&v);
        let f = functions(t);
        let f0 = &t["frames"][0];
        let ok = f.get(..4) == Some(&["level3", "level2", "level1", "main"].map(String::from)[..])
            && f0["module"] == v["process"]
            && t["end"] == "outermost";
        if !ok {
            bad.push(format!("{}: frames {f:?}, end {}, errors {}", v["process"], t["end"], v["errors"]));
        }
    }
    assert!(bad.is_empty(), "{} of {N} crashes not unwound:\n{}", bad.len(), bad.join("\n"));
}

#[test]
fn crash_stripped_pie_named_from_symbol_table() {
    let Some((_l, g, w)) = setup("") else { return };
    let exe = compile_c(w.dir.path(), "segv.c", "stripped", &["-O2", "-fPIE", "-pie", "-rdynamic", "-g"]);
    let st = Command::new("strip").arg(&exe).status().expect("strip");
    assert!(st.success());
    let out = Command::new("readelf").arg("-S").arg(&exe).output().expect("readelf");
    let sections = String::from_utf8_lossy(&out.stdout);
    assert!(!sections.contains(".symtab") && !sections.contains(".debug_info"), "stripped");
    g.set(CORE_PATTERN, &pipe_pattern(&w.config));
    crash(&exe, None);
    let (_, v) = one_record(&w);
    assert_levels(&v, &exe, false);
}

#[test]
fn crash_41_threads_every_thread_unwound() {
    let Some((_l, g, _)) = setup("") else { return };
    // 41 threads' JSON frames need more than the default 64 KiB.
    let w = world_with("", Behaviour { max_payload: 1 << 20, reject: None });
    let exe = compile_c(w.dir.path(), "threads.c", "threads", &["-O2", "-g"]);
    g.set(CORE_PATTERN, &pipe_pattern(&w.config));
    let pid = crash(&exe, None);
    let (r, v) = one_record(&w);
    let threads = v["threads"].as_array().expect("threads");
    assert_eq!(threads.len(), 41, "41 threads");
    let t0 = crashed_thread(&v);
    assert_eq!(t0["tid"], pid);
    let f0 = functions(t0);
    assert!(f0.iter().any(|f| f.ends_with("abort")), "{f0:?}");
    let i = f0.iter().position(|f| f == "crash_now").expect("crash_now");
    assert_eq!(f0[i + 1], "main");
    for t in &threads[1..] {
        let f = functions(t);
        assert_eq!(t["crashed"], false);
        assert_eq!(t["end"], "outermost", "thread {t}");
        let k = f.iter().position(|x| x == "worker_wait").unwrap_or_else(|| panic!("worker_wait in {f:?}"));
        assert_eq!(f[k + 1], "worker", "{f:?}");
        assert!(f.iter().any(|x| x.contains("clone")), "thread start: {f:?}");
    }
    assert_eq!(r.record.classification.as_str(), "org.clearlinux/crash/clr");
}

#[test]
fn crash_cpp_uncaught_exception_with_inlined_function() {
    let Some((_l, g, w)) = setup("") else { return };
    let exe = compile(w.dir.path(), "throw.cpp", "thrower", &["g++", "-O2", "-g"]);
    g.set(CORE_PATTERN, &pipe_pattern(&w.config));
    crash(&exe, None);
    let (_, v) = one_record(&w);
    let t = crashed_thread(&v);
    let f = functions(t);
    assert_eq!(v["signal"], 6);
    for want in ["abort", "__cxa_throw", "app::process", "main"] {
        assert!(f.iter().any(|x| x.ends_with(want)), "{want} in {f:?}");
    }
    let p = t["frames"].as_array().unwrap().iter().find(|fr| fr["function"] == "app::process").unwrap();
    let inl = p["inlined"].as_array().expect("inlined");
    assert!(inl.iter().any(|s| s["function"] == "app::validate"), "inlined app::validate: {p}");
    assert!(f.iter().position(|x| x == "__cxa_throw") < f.iter().position(|x| x == "app::process"));
    // The signature skips abort, std::terminate and __cxa_throw.
    let sig = v["signature"].as_str().expect("signature");
    assert!(sig.starts_with("thrower!app::validate | thrower!app::process | "), "{sig}");
    assert_eq!(t["end"], "outermost", "{t}");
}

#[test]
fn crash_rust_panic_abort() {
    let Some((_l, g, w)) = setup("") else { return };
    let exe =
        compile(w.dir.path(), "panic.rs", "rustpanic", &["rustc", "-C", "panic=abort", "-g", "-C", "opt-level=1"]);
    g.set(CORE_PATTERN, &pipe_pattern(&w.config));
    crash(&exe, None);
    let (_, v) = one_record(&w);
    let t = crashed_thread(&v);
    let f = functions(t);
    assert_eq!(v["signal"], 6);
    assert!(f.iter().any(|x| x.ends_with("abort")), "{f:?}");
    let i = f.iter().position(|x| x == "panic::parse_config").unwrap_or_else(|| panic!("parse_config in {f:?}"));
    assert!(f[i + 1..].iter().any(|x| x == "panic::main"), "{f:?}");
    assert!(f.iter().any(|x| x.starts_with("core::panicking::")), "{f:?}");
    // The signature skips abort and the panic runtime.
    let sig = v["signature"].as_str().expect("signature");
    assert!(sig.starts_with("rustpanic!panic::parse_config | "), "{sig}");
}

#[test]
fn crash_stack_overflow_hits_frame_limit() {
    let Some((_l, g, w)) = setup("") else { return };
    let exe = compile_c(w.dir.path(), "recurse.c", "recurse", &["-O0", "-g"]);
    g.set(CORE_PATTERN, &pipe_pattern(&w.config));
    crash(&exe, None);
    let (_, v) = one_record(&w);
    let t = crashed_thread(&v);
    let f = functions(t);
    assert_eq!(f.len(), 128, "default frame limit");
    assert!(f.iter().all(|x| x == "recurse"), "{f:?}");
    assert_eq!(t["end"], "limit");
}

#[test]
fn crash_socket_mode() {
    let Some((_l, g, w)) = setup("") else { return };
    let exe = compile_c(w.dir.path(), "segv.c", "segvsock", &["-O2", "-g"]);
    let sock = w.dir.path().join("crash.sock");
    let mut server = Command::new(crashprobe())
        .arg("--serve")
        .arg(&sock)
        .arg("-f")
        .arg(&w.config)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start crashprobe --serve");
    let server = KillOnDrop({
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while !sock.exists() && std::time::Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(sock.exists(), "server socket");
        let _ = server.try_wait();
        server
    });
    g.set(CORE_PATTERN, &format!("@{}", sock.display()));
    crash(&exe, None);
    crash(&exe, None);
    let got = w.receiver.wait_for(2, Duration::from_secs(30));
    assert_eq!(got.len(), 2, "two crashes through one server: {:?}", w.receiver.errors());
    for r in got {
        let v: Value = serde_json::from_str(&r.record.payload.to_text_lossy()).expect("json");
        assert_levels(&v, &exe, true);
    }
    // Recursion: the handler itself crashing is not dumped (it made itself
    // non-dumpable), so it does not feed its own crash back to itself.
    let mut server = server;
    // SAFETY: signalling our own child.
    // (SIGABRT: Rust's runtime handles a SIGSEGV sent by kill() itself.)
    unsafe { libc::kill(server.0.id() as i32, libc::SIGABRT) };
    let st = wait_timeout(&mut server.0, Duration::from_secs(10)).expect("server ends on SIGABRT");
    assert_eq!(st.signal(), Some(libc::SIGABRT));
    assert!(!st.core_dumped(), "crashprobe must not dump itself");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(w.receiver.records().len(), 2, "no record about the handler's own crash");
}

#[test]
fn crash_as_unprivileged_user_after_privilege_drop() {
    let Some((_l, g, w)) = setup("") else { return };
    let exe = compile_c(w.dir.path(), "segv.c", "segvnobody", &["-O2", "-g"]);
    g.set(CORE_PATTERN, &pipe_pattern(&w.config));
    crash(&exe, Some(65534));
    let (_, v) = one_record(&w);
    assert_levels(&v, &exe, true);
}

#[test]
fn crash_non_dumpable_process_gets_no_memory_content() {
    let Some((_l, g, w)) = setup("") else { return };
    let exe = compile_c(w.dir.path(), "nodump.c", "nodump", &["-O0", "-g"]);
    g.set(CORE_PATTERN, &pipe_pattern(&w.config));
    g.set(SUID_DUMPABLE, "2");
    crash(&exe, None);
    let (r, v) = one_record(&w);
    assert_eq!(v["memory_withheld"], true, "{v}");
    let t = crashed_thread(&v);
    let frames = t["frames"].as_array().unwrap();
    assert_eq!(frames.len(), 1, "only the register-derived frame: {t}");
    assert_eq!(frames[0]["source"], "context");
    assert!(v["errors"].to_string().contains("not dumpable"), "{v}");
    assert_eq!(r.record.classification.as_str(), "org.clearlinux/crash/error");
    // The same through the socket, request/ack (`@@`) and plain (`@`): the
    // kernel says through the peer's pidfd that it dumps as root; notes
    // only, no memory.
    let sock = w.dir.path().join("nd.sock");
    let _server = serve(&sock, &w.config);
    for (n, prefix) in [(2, "@@"), (3, "@")] {
        g.set(CORE_PATTERN, &format!("{prefix}{}", sock.display()));
        crash(&exe, None);
        let got = w.receiver.wait_for(n, Duration::from_secs(30));
        assert_eq!(got.len(), n, "{prefix}: errors: {:?}", w.receiver.errors());
        let v: Value = serde_json::from_str(&got[n - 1].record.payload.to_text_lossy()).expect("json");
        assert_eq!(v["memory_withheld"], true, "{prefix}: {v}");
        assert_eq!(crashed_thread(&v)["frames"].as_array().map(Vec::len), Some(1), "{prefix}: {v}");
    }
}

#[test]
fn crash_install_and_uninstall_restore_core_pattern() {
    let Some((_l, g, w)) = setup("") else { return };
    g.set(CORE_PATTERN, "core.%p.before");
    g.set(CORE_PIPE_LIMIT, "0");
    let state = w.dir.path().join("state/crashprobe.state");
    let out = Command::new(crashprobe())
        .args(["--install", "-f"])
        .arg(&w.config)
        .arg("--state-file")
        .arg(&state)
        .output()
        .expect("run --install");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pat = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    assert!(pat.starts_with(&format!("|{} -P %P", crashprobe().display())), "{pat}");
    assert_eq!(std::fs::read_to_string("/proc/sys/kernel/core_pipe_limit").unwrap().trim(), "16");
    // It works as installed.
    let exe = compile_c(w.dir.path(), "segv.c", "segvinst", &["-O0", "-g"]);
    crash(&exe, None);
    let (_, v) = one_record(&w);
    assert_levels(&v, &exe, true);
    let out = Command::new(crashprobe())
        .arg("--uninstall")
        .arg("--state-file")
        .arg(&state)
        .output()
        .expect("run --uninstall");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap(), "core.%p.before\n");
    assert_eq!(std::fs::read_to_string("/proc/sys/kernel/core_pipe_limit").unwrap(), "0\n");
}

#[test]
fn crash_pid_reuse_is_refused() {
    // The kernel names the crashed process by PID and pidfd; when the PID
    // now belongs to another process (reuse), the pidfd is dead: the
    // handler must not read that other process's /proc.
    let Some((_l, _g, _w)) = setup("") else { return };
    let mut dead = Command::new("true").spawn().expect("spawn");
    // SAFETY: plain syscall.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, dead.id() as libc::pid_t, 0) } as i32;
    assert!(pidfd >= 0);
    dead.wait().unwrap();
    // The "reused" PID: a live, unrelated process.
    let mut other = Command::new("sleep").arg("30").spawn().expect("spawn sleep");
    let mut c = Command::new(crashprobe());
    c.args(["-P", &other.id().to_string(), "-F", "3", "--print"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: dup2 between fork and exec.
    unsafe {
        c.pre_exec(move || if libc::dup2(pidfd, 3) < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) });
    }
    let out = c.output().expect("run crashprobe");
    let _ = other.kill();
    let _ = other.wait();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no longer names the crashed process"), "{err}");
    // SAFETY: closing our copy.
    unsafe { libc::close(pidfd) };
}

#[test]
fn crash_budget_runs_out_and_partial_record_is_sent() {
    // Socket mode, a peer that sends the start of a real core and stalls:
    // after the budget (1 s) the handler sends what it has, marked partial.
    let Some((_l, g, w)) = setup("crash_budget_secs=1\n") else { return };
    // A real core, captured to a file.
    let exe = compile_c(w.dir.path(), "segv.c", "segvcore", &["-O0", "-g"]);
    let cores = w.dir.path().join("cores");
    std::fs::create_dir(&cores).unwrap();
    g.set(CORE_PATTERN, &format!("{}/core.%p", cores.display()));
    let pid = crash(&exe, None);
    let core = std::fs::read(cores.join(format!("core.{pid}"))).expect("core file");
    let sock = w.dir.path().join("b.sock");
    let mut server =
        Command::new(crashprobe()).arg("--serve").arg(&sock).arg("-c").arg(&w.config).spawn().expect("serve");
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while !sock.exists() && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut s = std::os::unix::net::UnixStream::connect(&sock).expect("connect");
    use std::io::Write;
    s.write_all(&core[..8192]).expect("send core start");
    let t0 = std::time::Instant::now();
    let got = w.receiver.wait_for(1, Duration::from_secs(15));
    let took = t0.elapsed();
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(got.len(), 1, "partial record: {:?}", w.receiver.errors());
    assert!(took < Duration::from_secs(10), "sent after the budget, not at the end of the stream");
    let v: Value = serde_json::from_str(&got[0].record.payload.to_text_lossy()).expect("json");
    assert_eq!(v["partial"], true);
    assert!(v["errors"].to_string().contains("budget"), "{v}");
}

#[test]
fn crash_unsymbolized_frames_written_as_the_original_v1() {
    // A stripped program without exported symbols: its frames have a
    // module and an offset but no function; the original writes them
    // `#N ??? - [module]`, which the original backend's grouping skips.
    let Some((_l, g, w)) = setup("crash_payload_version=1\n") else { return };
    let exe = compile_c(w.dir.path(), "segv.c", "segvstrip", &["-O2"]);
    let st = Command::new("strip").arg("--strip-all").arg(&exe).status().expect("strip");
    assert!(st.success());
    g.set(CORE_PATTERN, &pipe_pattern(&w.config));
    crash(&exe, None);
    let got = w.receiver.wait_for(1, Duration::from_secs(30));
    assert_eq!(got.len(), 1, "errors: {:?}", w.receiver.errors());
    let text = got[0].record.payload.to_text_lossy().into_owned();
    let segv = exe.display().to_string();
    assert!(text.contains(&format!("\n#0 ??? - [{segv}]\n")), "{text}");
    assert!(text.contains(&format!("\n#1 ??? - [{segv}]\n")), "{text}");
    assert!(!text.contains("???()"), "no `???()` frames: {text}");
    // libc's exported functions are still named.
    assert!(text.contains("() - [libc.so.6]"), "{text}");
}

#[test]
fn crash_signatures_stable_under_aslr_distinct_per_bug_shared_by_stripped_build() {
    let Some((_l, g, w)) = setup("crash_signature_burst=1000\n") else { return };
    assert_eq!(std::fs::read_to_string("/proc/sys/kernel/randomize_va_space").unwrap().trim(), "2", "ASLR on");
    std::fs::create_dir(w.dir.path().join("a")).unwrap();
    std::fs::create_dir(w.dir.path().join("b")).unwrap();
    let exe = compile_c(&w.dir.path().join("a"), "bugs.c", "bugs", &["-O0", "-g", "-fPIE", "-pie"]);
    let stripped = w.dir.path().join("b/bugs");
    let st = Command::new("strip").arg("--strip-all").arg("-o").arg(&stripped).arg(&exe).status().expect("strip");
    assert!(st.success());
    // 100 runs of one bug: 50 through the pipe, 50 through the socket.
    g.set(CORE_PATTERN, &pipe_pattern(&w.config));
    for _ in 0..50 {
        crash_args(&exe, &["0"]);
    }
    let sock = w.dir.path().join("crash.sock");
    let _server = serve(&sock, &w.config);
    g.set(CORE_PATTERN, &format!("@{}", sock.display()));
    for _ in 0..50 {
        crash_args(&exe, &["0"]);
    }
    let got = records_of_mine(&w, 100);
    assert_eq!(got.len(), 100, "errors: {:?}", w.receiver.errors());
    let sigs: std::collections::BTreeSet<String> = got.iter().map(signature_of).collect();
    assert_eq!(sigs.len(), 1, "one bug, one signature: {sigs:?}");
    let sig0 = sigs.into_iter().next().unwrap();
    assert!(sig0.starts_with("bugs!bug0 | bugs!main | libc.so.6!"), "{sig0}");
    // ASLR did move the program: the crashing pc differs between runs.
    let pcs: std::collections::BTreeSet<String> = got
        .iter()
        .map(|r| {
            let v: Value = serde_json::from_str(&r.record.payload.to_text_lossy()).unwrap();
            v["threads"][0]["frames"][0]["pc"].as_str().unwrap().to_string()
        })
        .collect();
    assert!(pcs.len() > 1, "ASLR moved the program between runs: {pcs:?}");
    // Ten bugs, ten signatures (socket mode still installed).
    for i in 1..10 {
        crash_args(&exe, &[&i.to_string()]);
    }
    let got = records_of_mine(&w, 109);
    assert_eq!(got.len(), 109, "errors: {:?}", w.receiver.errors());
    let ten: Vec<String> = std::iter::once(sig0.clone()).chain(got[100..].iter().map(signature_of)).collect();
    let distinct: std::collections::BTreeSet<&String> = ten.iter().collect();
    assert_eq!(distinct.len(), 10, "ten bugs, ten signatures: {ten:#?}");
    for (i, s) in ten.iter().enumerate() {
        assert!(s.contains(&format!("bugs!bug{i}")), "bug {i}: {s}");
        assert!(!s.contains("abort") && !s.contains("raise") && !s.contains("assert"), "plumbing skipped: {s}");
    }
    // The stripped build of the same bug: no names, the same location.
    crash_args(&stripped, &["0"]);
    let got = records_of_mine(&w, 110);
    assert_eq!(got.len(), 110, "errors: {:?}", w.receiver.errors());
    let s = signature_of(&got[109]);
    assert!(s.starts_with("bugs+0x"), "stripped: {s}");
    let loc = |s: &str| s.rsplit_once(" @ ").map(|(_, l)| l.to_string()).unwrap_or_else(|| panic!("location in {s}"));
    assert_eq!(loc(&s), loc(&sig0), "stripped {s} and unstripped {sig0} share module+offset");
    assert!(s.starts_with(&format!("{} |", loc(&sig0))), "{s}");
}

#[test]
fn core_only_reads_a_core_saved_by_gdb() {
    // gdb writes the notes after the memory; `--core-only < FILE` reads
    // them first. (No core_pattern here: gdb catches the crash.)
    let w = world("");
    let exe = compile_c(w.dir.path(), "segv.c", "segvgdb", &["-O2", "-g"]);
    let core = w.dir.path().join("gdb.core");
    let out = Command::new("gdb")
        .args(["-nx", "-q", "-batch", "-ex", "run", "-ex"])
        .arg(format!("generate-core-file {}", core.display()))
        .arg("--args")
        .arg(&exe)
        .output()
        .expect("run gdb (cargo xtask test installs it)");
    assert!(core.exists(), "gdb saved no core: {}", String::from_utf8_lossy(&out.stderr));
    // The notes really come after the memory.
    let elf = std::fs::read(&core).expect("read core");
    let phoff = u64::from_le_bytes(elf[32..40].try_into().unwrap()) as usize;
    let phnum = u16::from_le_bytes(elf[56..58].try_into().unwrap()) as usize;
    let (mut note_off, mut first_load) = (0u64, u64::MAX);
    for i in 0..phnum {
        let ph = &elf[phoff + 56 * i..phoff + 56 * (i + 1)];
        let off = u64::from_le_bytes(ph[8..16].try_into().unwrap());
        match u32::from_le_bytes(ph[0..4].try_into().unwrap()) {
            4 => note_off = off,
            1 => first_load = first_load.min(off),
            _ => {}
        }
    }
    assert!(note_off > first_load, "gdb's notes at {note_off:#x}, memory from {first_load:#x}");
    let run = |stdin: Stdio| {
        Command::new(crashprobe())
            .args(["--core-only", "--print", "-f"])
            .arg(&w.config)
            .stdin(stdin)
            .output()
            .expect("run crashprobe --core-only")
    };
    let out = run(Stdio::from(std::fs::File::open(&core).expect("open core")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = stdout.lines().next().expect("payload line");
    let v: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_levels(&v, &exe, true);
    assert_eq!(v["partial"], false, "{v}");
    assert!(stdout.contains("classification: org.clearlinux/crash/clr "), "{stdout}");
    // Through a pipe the notes cannot be read first: said, not guessed.
    let mut child = Command::new(crashprobe())
        .args(["--core-only", "--print", "-f"])
        .arg(&w.config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn crashprobe");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(&elf);
    });
    let out = child.wait_with_output().expect("crashprobe output");
    let _ = writer.join();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("give the core as a file"), "{stdout}");
}

#[test]
fn crash_go_nil_dereference() {
    let Some((_l, g, w)) = setup("") else { return };
    let exe = e2e::kernel::build_go(w.dir.path(), "gonil");
    g.set(CORE_PATTERN, &pipe_pattern(&w.config));
    let mut c = Command::new(&exe);
    c.env("GOTRACEBACK", "crash").stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = dumps_core(&mut c, None).spawn().expect("spawn the Go program");
    let st = wait_timeout(&mut child, Duration::from_secs(40)).expect("the Go program did not finish");
    assert!(st.core_dumped(), "not dumped ({st})");
    let (_, v) = one_record(&w);
    assert_eq!(v["signal"], 6);
    let t = crashed_thread(&v);
    let f = functions(t);
    // Through Go's signal frame to the goroutine's stack: the faulting
    // function right after runtime.sigpanic, then its callers.
    let i = f.iter().position(|x| x == "runtime.sigpanic").unwrap_or_else(|| panic!("no runtime.sigpanic in {f:?}"));
    assert_eq!(f.get(i + 1..i + 4), Some(&["main.goCrash", "main.goMiddle", "main.main"].map(String::from)[..]), "{t}");
    assert_eq!(t["frames"][i + 1]["source"], "gopclntab", "{t}");
    // runtime.goexit (TOPFRAME) ends the goroutine's stack.
    assert_eq!(f.last().map(String::as_str), Some("runtime.goexit"), "{t}");
    assert_eq!(t["end"], "outermost", "{t}");
}
