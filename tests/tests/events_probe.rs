//! eventprobe end to end, on the real kernel: the eBPF programs are loaded
//! and attached for real, real C programs (compiled here with gcc) crash or
//! exit, and the records reach a real unix-socket receiver speaking the
//! native framing.
//!
//! Needs root (CAP_BPF, tracefs); outside CI a non-root run skips, in CI
//! (`CI=true`) it fails instead.
//!
//! Holding the crashed process: eventprobe reads /proc/PID/maps when the
//! event arrives, which only works while the process still exists. In a
//! deployment the kernel keeps a crashing process alive while its core is
//! dumped to the core_pattern handler (crashprobe); these tests must not
//! change the machine-wide core_pattern, so they hold the process the same
//! way locally: the crash program runs under ptrace with
//! PTRACE_O_TRACEEXIT, which stops it in do_exit before its memory is
//! released, and it is let go once its record arrived.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use e2e::kernel::eventprobe;
use e2e::receiver::{Behaviour, Received, Receiver};
use e2e::require_root;
use telemetry::crash_id::crash_event_id;
use telemetry::BootId;

const CRASH_C: &str = r#"
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>

__attribute__((noinline)) void ev_inner(volatile int *p) { *p = 42; }
__attribute__((noinline)) void ev_middle(volatile int *p) { ev_inner(p); __asm__ volatile(""); }
__attribute__((noinline)) void ev_outer(volatile int *p) { ev_middle(p); __asm__ volatile(""); }
__attribute__((noinline)) void *ev_thread_main(void *a) { ev_outer((volatile int *)a); __asm__ volatile(""); return 0; }

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "thread") == 0) {
        pthread_t t;
        pthread_create(&t, 0, ev_thread_main, 0);
        pthread_join(t, 0);
        return 0;
    }
    if (argc > 2 && strcmp(argv[1], "burst") == 0) {
        /* n children crash together when the pipe closes */
        int n = atoi(argv[2]), fds[2];
        if (pipe(fds)) return 90;
        for (int i = 0; i < n; i++) {
            if (fork() == 0) {
                char c;
                close(fds[1]);
                if (read(fds[0], &c, 1) < 0) _exit(91);
                ev_outer(0);
                _exit(92);
            }
        }
        close(fds[0]);
        usleep(200000);
        close(fds[1]);
        int crashed = 0, st;
        while (wait(&st) > 0)
            if (WIFSIGNALED(st) && WTERMSIG(st) == 11) crashed++;
        return crashed == n ? 0 : 93;
    }
    if (argc > 1) return atoi(argv[1]);
    ev_outer(0);
    return 0;
}
"#;

/// The crash program, compiled once per flavour into a temp dir that lives
/// for the whole test process.
fn program(name: &str, flags: &[&str]) -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::write(d.path().join("crash.c"), CRASH_C).expect("write crash.c");
        d
    });
    let out = dir.path().join(name);
    if !out.exists() {
        let st = Command::new("gcc")
            .args(flags)
            .args(["-g", "-pthread", "-o"])
            .arg(&out)
            .arg(dir.path().join("crash.c"))
            .status()
            .expect("run gcc (install it: cargo xtask setup)");
        assert!(st.success(), "gcc failed for {name}");
    }
    out
}

const FP: &[&str] = &["-O1", "-fno-omit-frame-pointer"];
const NOFP: &[&str] = &["-O2", "-fomit-frame-pointer", "-fasynchronous-unwind-tables"];

/// A running eventprobe; stopped (SIGTERM, then SIGKILL) when dropped.
struct Probe {
    child: Child,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Probe {
    fn start(socket: &Path, args: &[&str]) -> Probe {
        let dir = tempfile::tempdir().expect("tempdir");
        let stderr = dir.path().join("stderr");
        let mut child = Command::new(eventprobe())
            .arg("--socket")
            .arg(socket)
            .args(["--duration", "55"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("start eventprobe");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if line.contains("eventprobe: ready") {
                    let _ = tx.send(());
                }
            }
        });
        let mut p = Probe { child, stderr, _dir: dir };
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let log = p.stop();
            panic!("eventprobe did not get ready:\n{log}");
        }
        p
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
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
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

/// A process stopped in do_exit (memory still there) until released.
struct Held {
    pid: i32,
    start_ticks: u64,
    released: bool,
}

fn waitpid(pid: i32) -> i32 {
    let mut st = 0;
    // SAFETY: waiting for our own traced child.
    let r = unsafe { libc::waitpid(pid, &mut st, libc::__WALL) };
    assert_eq!(r, pid, "waitpid: {}", std::io::Error::last_os_error());
    st
}

/// Runs `path args` under ptrace until it stops at exit (see the module
/// documentation).
fn run_held(path: &Path, args: &[&str]) -> Held {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(path);
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: only async-signal-safe ptrace(2) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawn traced program");
    let pid = child.id() as i32;
    std::mem::forget(child); // reaped with waitpid below
    let st = waitpid(pid);
    assert!(libc::WIFSTOPPED(st), "traced program did not stop at exec: {st:#x}");
    // SAFETY: ptrace requests on our stopped tracee.
    unsafe {
        libc::ptrace(libc::PTRACE_SETOPTIONS, pid, 0, libc::PTRACE_O_TRACEEXIT | libc::PTRACE_O_EXITKILL);
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let start_ticks: u64 = after.split(' ').nth(19).and_then(|v| v.parse().ok()).expect("starttime");
    // SAFETY: as above.
    unsafe { libc::ptrace(libc::PTRACE_CONT, pid, 0, 0) };
    loop {
        let st = waitpid(pid);
        assert!(libc::WIFSTOPPED(st), "program ended without the exit stop: {st:#x}");
        if st >> 8 == (libc::SIGTRAP | (libc::PTRACE_EVENT_EXIT << 8)) {
            return Held { pid, start_ticks, released: false };
        }
        // A signal-delivery stop: deliver it.
        // SAFETY: as above.
        unsafe { libc::ptrace(libc::PTRACE_CONT, pid, 0, libc::WSTOPSIG(st)) };
    }
}

impl Held {
    fn release(&mut self) {
        if !self.released {
            self.released = true;
            // SAFETY: continuing and reaping our tracee.
            unsafe { libc::ptrace(libc::PTRACE_CONT, self.pid, 0, 0) };
            let _ = waitpid(self.pid);
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if !self.released {
            // SAFETY: killing our own tracee.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            self.release();
        }
    }
}

fn payload(r: &Received) -> String {
    r.record.payload.to_text_lossy().into_owned()
}

fn section<'a>(text: &'a str, start: &str, end: Option<&str>) -> &'a str {
    let s = text.find(start).unwrap_or_else(|| panic!("no {start:?} in:\n{text}"));
    let rest = &text[s..];
    match end.and_then(|e| rest.find(e)) {
        Some(e) => &rest[..e],
        None => rest,
    }
}

fn boot_id() -> BootId {
    BootId::read().expect("boot id")
}

/// Crashes `name` under the hold and returns its record and (pid, start).
fn crash_and_get(rx: &Receiver, exe: &Path, args: &[&str]) -> (Received, Held) {
    let held = run_held(exe, args);
    let pid = held.pid;
    let rec = rx.wait_record("signal/fatal", |r| {
        r.record.classification.as_str() == "org.clearlinux/signal/fatal"
            && payload(r).contains(&format!("PID: {pid}\n"))
    });
    (rec, held)
}

#[test]
fn fatal_signals_with_and_without_frame_pointers() {
    if !require_root("fatal_signals_with_and_without_frame_pointers") {
        return;
    }
    let fp = program("ev-fp", FP);
    let nofp = program("ev-nofp", NOFP);
    let rx = Receiver::start(Behaviour::default());
    let mut probe = Probe::start(&rx.path, &["--comm", "ev-fp", "--comm", "ev-nofp"]);

    // With frame pointers: the kernel's frame-pointer walk names the
    // callers, except the caller of the leaf function that crashed (a leaf
    // sets up no frame: its return address is only at sp); the CFI unwind
    // of the stack copy recovers it.
    let (rec, mut held) = crash_and_get(&rx, &fp, &[]);
    held.release();
    let text = payload(&rec);
    assert_eq!(rec.record.severity, telemetry::Severity::High);
    assert!(text.contains(&format!("TID: {}\n", held.pid)), "{text}");
    assert!(text.contains("Signal: 11 (SIGSEGV)"), "{text}");
    assert!(text.contains("si_code: 1 (SEGV_MAPERR)"), "{text}");
    assert!(text.contains("Fault address: 0x0\n"), "{text}");
    assert!(!text.contains("Mappings: unavailable"), "{text}");
    let unwound = section(&text, "Backtrace (unwound", Some("Frame-pointer stack"));
    let fpstack = section(&text, "Frame-pointer stack", None);
    for f in ["ev_inner", "ev_middle", "ev_outer", "main"] {
        assert!(unwound.contains(f), "unwound stack lacks {f}:\n{text}");
    }
    for f in ["ev_inner", "ev_outer", "main"] {
        assert!(fpstack.contains(f), "frame-pointer stack lacks {f}:\n{text}");
    }
    assert!(!fpstack.contains("ev_middle"), "expected the frame-pointer walk to skip the leaf's caller:\n{text}");
    let middle = unwound.lines().find(|l| l.contains("ev_middle")).expect("ev_middle line");
    assert!(middle.ends_with(" cfi"), "ev_middle not recovered by CFI: {middle}");
    assert!(unwound.contains("crash.c:"), "no file:line in:\n{text}");
    // Same event id as crashprobe derives for this crash.
    let want = crash_event_id(&boot_id(), held.pid as u32, held.start_ticks);
    assert_eq!(rec.record.event_id.as_bytes(), want.as_bytes(), "event id differs from the shared derivation");

    // Without frame pointers: the kernel's walk stops at the crashing
    // function; DWARF CFI over the stack copy recovers the callers.
    let (rec, mut held) = crash_and_get(&rx, &nofp, &[]);
    held.release();
    let text = payload(&rec);
    let unwound = section(&text, "Backtrace (unwound", Some("Frame-pointer stack"));
    let fpstack = section(&text, "Frame-pointer stack", None);
    assert!(!fpstack.contains("ev_outer"), "expected the frame-pointer stack to miss ev_outer:\n{text}");
    for f in ["ev_inner", "ev_middle", "ev_outer", "main"] {
        assert!(unwound.contains(f), "unwound stack lacks {f}:\n{text}");
    }
    let outer_line = unwound.lines().find(|l| l.contains("ev_outer")).expect("ev_outer line");
    assert!(outer_line.ends_with(" cfi"), "ev_outer not recovered by CFI: {outer_line}");
    let log = probe.stop();
    assert_eq!(summary_value(&log, "fatal"), 2, "{log}");
    assert_eq!(summary_value(&log, "lost_kernel"), 0, "{log}");
    assert_eq!(summary_value(&log, "maps_missing"), 0, "{log}");
}

#[test]
fn fatal_signal_in_a_second_thread() {
    if !require_root("fatal_signal_in_a_second_thread") {
        return;
    }
    let mt = program("ev-mt", NOFP);
    let rx = Receiver::start(Behaviour::default());
    let _probe = Probe::start(&rx.path, &["--comm", "ev-mt"]);
    let (rec, mut held) = crash_and_get(&rx, &mt, &["thread"]);
    held.release();
    let text = payload(&rec);
    let tid: i32 = text
        .lines()
        .find_map(|l| l.strip_prefix("TID: "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no TID in {text}"));
    assert_ne!(tid, held.pid, "the crash was in the second thread:\n{text}");
    let unwound = section(&text, "Backtrace (unwound", Some("Frame-pointer stack"));
    for f in ["ev_inner", "ev_middle", "ev_outer", "ev_thread_main"] {
        assert!(unwound.contains(f), "unwound stack lacks {f}:\n{text}");
    }
    assert!(!unwound.contains(" main ("), "a thread's stack does not reach main:\n{text}");
}

#[test]
fn abnormal_exit_code_and_filtered_comm() {
    if !require_root("abnormal_exit_code_and_filtered_comm") {
        return;
    }
    let ok = program("ev-exit", FP);
    let denied = program("ev-denied", FP);
    let rx = Receiver::start(Behaviour::default());
    let mut probe = Probe::start(
        &rx.path,
        &["--comm", "ev-exit", "--comm", "ev-denied", "--ignore-comm", "ev-denied", "--min-exit-code", "2"],
    );
    // Filtered: a denied comm's crash and exit, an exit code under the minimum.
    let mut c = Command::new(&denied).stderr(Stdio::null()).spawn().expect("spawn");
    assert!(c.wait().expect("wait").code().is_none(), "ev-denied should crash");
    assert_eq!(Command::new(&denied).arg("4").status().expect("run").code(), Some(4));
    assert_eq!(Command::new(&ok).arg("1").status().expect("run").code(), Some(1));
    assert_eq!(Command::new(&ok).arg("0").status().expect("run").code(), Some(0));
    // Reported: exit code 3.
    let mut c = Command::new(&ok).arg("3").spawn().expect("spawn");
    let pid = c.id();
    assert_eq!(c.wait().expect("wait").code(), Some(3));
    let rec = rx.wait_record("exit/abnormal", |r| r.record.classification.as_str() == "org.clearlinux/exit/abnormal");
    let text = payload(&rec);
    assert!(
        text.contains(&format!("PID: {pid}\n")) && text.contains("Exit code: 3\n") && text.contains("Comm: ev-exit\n"),
        "{text}"
    );
    assert_eq!(rec.record.severity, telemetry::Severity::Medium);
    // Records arrive in order, so nothing filtered can come after this one.
    std::thread::sleep(Duration::from_millis(300));
    let all = rx.records();
    assert_eq!(
        all.len(),
        1,
        "only the exit code 3 must be reported: {:#?}",
        all.iter().map(payload).collect::<Vec<_>>()
    );
    let log = probe.stop();
    assert_eq!(summary_value(&log, "exit"), 1, "{log}");
    assert_eq!(summary_value(&log, "fatal"), 0, "{log}");
}

#[test]
fn kernel_losses_are_counted_under_a_burst() {
    if !require_root("kernel_losses_are_counted_under_a_burst") {
        return;
    }
    let burst = program("ev-burst", NOFP);
    let rx = Receiver::start(Behaviour::default());
    // A ring that holds one fatal-signal event.
    let mut probe = Probe::start(&rx.path, &["--comm", "ev-burst", "--ring-bytes", "32768", "--no-exits"]);
    const N: u64 = 64;
    let st = Command::new(&burst).args(["burst", &N.to_string()]).status().expect("run burst");
    assert_eq!(st.code(), Some(0), "not all {N} children crashed");
    std::thread::sleep(Duration::from_millis(500));
    let log = probe.stop();
    let (seen, lost) = (summary_value(&log, "fatal"), summary_value(&log, "lost_kernel_fatal"));
    assert!(lost > 0, "a one-event ring under {N} simultaneous crashes must lose some: {log}");
    assert_eq!(seen + lost, N, "every crash is either reported or counted as lost: {log}");
    // lost_kernel also counts the module names of a crash lost in the ring.
    assert!(log.contains("kernel ring buffer full") || summary_value(&log, "lost_kernel") >= lost, "{log}");
}

const HOG_C: &str = r#"
#include <stdlib.h>
__attribute__((noinline)) void hog_touch(volatile char *p, size_t n) {
    for (size_t i = 0; i < n; i += 4096) p[i] = 1;
    __asm__ volatile("");
}
__attribute__((noinline)) void hog_grow(void) {
    for (;;) {
        char *p = malloc(1 << 20);
        if (!p) exit(4);
        hog_touch(p, 1 << 20);
    }
}
int main(void) { hog_grow(); return 0; }
"#;

/// A memory cgroup of our own with a small limit; removed when dropped.
struct MemCgroup {
    dir: PathBuf,
}

impl MemCgroup {
    fn create(name: &str, limit: u64) -> MemCgroup {
        let own = std::fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
        // cgroup v1: the memory hierarchy; else the unified (v2) one.
        if let Some(path) =
            own.lines().find_map(|l| l.split(':').nth(1).filter(|c| *c == "memory").and(l.split(':').nth(2)))
        {
            let dir = Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/')).join(name);
            let _ = std::fs::remove_dir(&dir);
            std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
            std::fs::write(dir.join("memory.limit_in_bytes"), limit.to_string()).expect("set memory limit");
            return MemCgroup { dir };
        }
        let path = own.lines().find_map(|l| l.strip_prefix("0::")).expect("no cgroup v1 memory or v2 hierarchy");
        let base = Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
        let dir = base.join(name);
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let cg = MemCgroup { dir };
        std::fs::write(cg.dir.join("memory.max"), limit.to_string()).unwrap_or_else(|e| {
            panic!("set memory.max in {} (memory controller not enabled for it?): {e}", cg.dir.display())
        });
        let _ = std::fs::write(cg.dir.join("memory.swap.max"), "0");
        cg
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn oom_kill_in_a_memory_cgroup() {
    if !require_root("oom_kill_in_a_memory_cgroup") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("hog.c");
    std::fs::write(&src, HOG_C).expect("write hog.c");
    let hog = dir.path().join("ev-hog");
    // No frame pointers: the victim's frames come from CFI over its stack.
    assert!(Command::new("gcc")
        .args(["-O2", "-g", "-fomit-frame-pointer", "-fasynchronous-unwind-tables", "-o"])
        .arg(&hog)
        .arg(&src)
        .status()
        .expect("gcc")
        .success());
    let rx = Receiver::start(Behaviour::default());
    let mut probe = Probe::start(&rx.path, &["--comm", "ev-hog"]);
    let cg = MemCgroup::create(&format!("ev-oom-{}", std::process::id()), 32 << 20);
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("echo $$ > {}/cgroup.procs && exec {}", cg.dir.display(), hog.display()))
        .spawn()
        .expect("spawn hog");
    let pid = child.id();
    let st = child.wait().expect("wait hog");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(libc::SIGKILL), "the hog must be OOM-killed: {st:?}");
    let rec = rx.wait_record("oom/kill", |r| r.record.classification.as_str() == "org.clearlinux/oom/kill");
    let text = payload(&rec);
    assert!(text.contains(&format!("PID: {pid}\n")) && text.contains("Comm: ev-hog\n"), "{text}");
    assert_eq!(rec.record.severity, telemetry::Severity::High);
    let anon: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Anon RSS: "))
        .and_then(|v| v.trim_end_matches(" kB").parse().ok())
        .expect("anon rss");
    assert!(anon > 16 * 1024, "the victim held most of its 32 MiB limit: {text}");
    // Its cgroup, its RSS and the constraint (from the kernel's summary).
    let cg_name = cg.dir.file_name().and_then(|n| n.to_str()).expect("cgroup name").to_string();
    // The cgroup (v2) by the id the kernel gave, and the memory cgroup
    // (v1 or v2) the kernel's summary names: the one the test made.
    assert!(text.lines().any(|l| l.starts_with("Cgroup: ") && l.contains("(id ")), "{text}");
    let memcg = text.lines().find_map(|l| l.strip_prefix("Memory cgroup: "));
    assert!(memcg.is_some_and(|m| m.ends_with(&format!("/{cg_name}"))), "{text}");
    assert!(text.contains("\nRSS: "), "{text}");
    assert!(text.contains("OOM constraint: CONSTRAINT_MEMCG\n"), "{text}");
    // The victim's user stack at the kill, symbolized: hog_grow under main
    // (hog_touch, or malloc in libc, above them).
    let bt = section(&text, "Backtrace at the kill (unwound", None);
    assert!(text.contains("Mappings: named by the kernel at the victim's exit"), "{text}");
    let grow = bt.lines().position(|l| l.split_whitespace().any(|w| w == "hog_grow"));
    let main = bt.lines().position(|l| l.split_whitespace().any(|w| w == "main"));
    assert!(
        matches!((grow, main), (Some(g), Some(m)) if g < m),
        "no hog_grow then main in the victim's stack:\n{text}"
    );
    drop(cg);
    let log = probe.stop();
    assert_eq!(summary_value(&log, "oom"), 1, "{log}");
}

/// The GNU build id of an ELF file, as `readelf -n` prints it.
fn build_id_of(path: &Path) -> String {
    let out = Command::new("readelf").arg("-n").arg(path).output().expect("run readelf (binutils)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no build id in {text}"))
}

/// The address of `sym` in `path` (`nm`).
fn symbol_addr(path: &Path, sym: &str) -> u64 {
    let out = Command::new("nm").arg(path).output().expect("run nm (binutils)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            let (a, _, n) = (w.next()?, w.next()?, w.next()?);
            (n == sym).then(|| u64::from_str_radix(a, 16).ok()).flatten()
        })
        .unwrap_or_else(|| panic!("no {sym} in {}", path.display()))
}

#[test]
fn process_gone_before_its_maps_are_read_still_gives_build_id_frames() {
    if !require_root("process_gone_before_its_maps_are_read_still_gives_build_id_frames") {
        return;
    }
    // Without the hold (and without a core dump to keep it alive) the
    // process is gone by the time eventprobe reads /proc/PID/maps; the
    // kernel-resolved (build id, file offset) frames still identify the
    // crash site. If the read happens to win the race the record has full
    // frames instead, which the other tests check; retry a few times.
    let exe = program("ev-gone", FP);
    let rx = Receiver::start(Behaviour::default());
    let mut probe = Probe::start(&rx.path, &["--comm", "ev-gone"]);
    let want_id = build_id_of(&exe);
    let inner = symbol_addr(&exe, "ev_inner");
    let mut checked = false;
    for _ in 0..5 {
        let mut c = Command::new(&exe).stderr(Stdio::null()).spawn().expect("spawn");
        let pid = c.id();
        // Keep no core: RLIMIT_CORE of the child is inherited (0 by default).
        assert!(c.wait().expect("wait").code().is_none(), "ev-gone should crash");
        let rec = rx.wait_record("signal/fatal", |r| payload(r).contains(&format!("PID: {pid}\n")));
        let text = payload(&rec);
        if !text.contains("Frame-pointer stack by build id") {
            continue;
        }
        // The kernel named the executable mappings as the thread exited.
        assert!(text.contains("Mappings: named by the kernel at the signal"), "{text}");
        assert!(section(&text, "Backtrace (unwound", None).contains("ev_inner"), "{text}");
        let kernel = section(&text, "Frame-pointer stack by build id", None);
        let first = kernel.lines().nth(1).unwrap_or_else(|| panic!("no build-id frames:\n{text}"));
        assert!(first.contains(&format!("build-id {want_id}")), "frame 0 is not in ev-gone ({want_id}):\n{text}");
        let off = first
            .rsplit("file-offset 0x")
            .next()
            .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
            .unwrap_or_else(|| panic!("no file offset in {first}"));
        // Text segment file offsets equal addresses in gcc's PIE layout.
        assert!(
            (inner..inner + 0x20).contains(&off),
            "frame 0 at file offset {off:#x}, ev_inner at {inner:#x}:\n{text}"
        );
        checked = true;
        break;
    }
    assert!(checked, "eventprobe read the maps of all five crashes before the processes were gone; nothing to check");
    let log = probe.stop();
    assert!(summary_value(&log, "maps_missing") >= 1, "{log}");
}

const NODUMP_C: &str = r#"
#include <sys/prctl.h>
#include <string.h>
__attribute__((noinline)) void nd_inner(volatile int *p) { *p = 42; }
__attribute__((noinline)) void nd_outer(volatile int *p) { nd_inner(p); __asm__ volatile(""); }
int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "nodump") == 0 && prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) return 3;
    nd_outer(0);
    return 0;
}
"#;

/// Runs `exe args` (it crashes; no core: RLIMIT_CORE stays 0) and returns
/// its fatal-signal record.
fn crash_unheld(rx: &Receiver, exe: &Path, args: &[&str]) -> String {
    let mut c = Command::new(exe).args(args).stderr(Stdio::null()).spawn().expect("spawn");
    let pid = c.id();
    assert!(c.wait().expect("wait").code().is_none(), "{} should crash", exe.display());
    payload(&rx.wait_record("signal/fatal", |r| payload(r).contains(&format!("PID: {pid}\n"))))
}

/// The `Registers:` line of a fatal-signal payload.
fn registers_line(text: &str) -> &str {
    text.lines().find(|l| l.starts_with("Registers: ")).unwrap_or_else(|| panic!("no Registers line in:\n{text}"))
}

#[test]
fn not_dumpable_process_gives_no_memory_and_registers_need_the_key() {
    if !require_root("not_dumpable_process_gives_no_memory_and_registers_need_the_key") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("nodump.c");
    std::fs::write(&src, NODUMP_C).expect("write nodump.c");
    let exe = dir.path().join("ev-nodump");
    assert!(Command::new("gcc").args(["-O1", "-g", "-o"]).arg(&exe).arg(&src).status().expect("gcc").success());
    let want_id = build_id_of(&exe);
    let rx = Receiver::start(Behaviour::default());

    // Default configuration: ip, sp and bp only; a process that made itself
    // non-dumpable gets no stack copy and ip/sp only, and says why.
    let mut probe = Probe::start(&rx.path, &["--comm", "ev-nodump"]);
    let text = crash_unheld(&rx, &exe, &[]);
    let regs = registers_line(&text);
    assert!(regs.contains(" bp=0x") && !regs.contains(" ax=") && !regs.contains(" di="), "{text}");
    assert!(text.contains("Stack copy: ") && !text.contains("Stack copy: 0 bytes"), "{text}");
    assert!(!text.contains("memory withheld"), "{text}");

    let text = crash_unheld(&rx, &exe, &["nodump"]);
    assert!(text.contains("memory withheld: the process is not dumpable\n"), "{text}");
    let regs = registers_line(&text);
    assert!(regs.starts_with("Registers: ip=0x") && regs.contains(" sp=0x"), "{text}");
    assert!(!regs.contains(" bp=") && !regs.contains(" ax="), "only ip and sp of a non-dumpable process:\n{text}");
    assert!(!text.contains("Stack copy:"), "{text}");
    // The kernel-walked frames (build id + file offset) stay.
    let kernel = section(&text, "Frame-pointer stack by build id", None);
    assert!(kernel.contains(&format!("build-id {want_id}")), "{text}");
    probe.stop();

    // event_registers = true: every general-purpose register of a dumpable
    // process; still ip and sp only for a non-dumpable one.
    let conf = dir.path().join("t.conf");
    std::fs::write(&conf, "[settings]\nevent_registers = true\n").expect("write config");
    let mut probe = Probe::start(&rx.path, &["--comm", "ev-nodump", "-f", conf.to_str().expect("utf-8 path")]);
    let text = crash_unheld(&rx, &exe, &[]);
    let regs = registers_line(&text);
    for r in [" bp=", " ax=", " bx=", " di=", " r8=", " r15="] {
        assert!(regs.contains(r), "{r} missing with event_registers = true:\n{text}");
    }
    let text = crash_unheld(&rx, &exe, &["nodump"]);
    assert!(text.contains("memory withheld: the process is not dumpable\n"), "{text}");
    assert!(!registers_line(&text).contains(" ax="), "{text}");
    probe.stop();

    // privacy_level = anonymous wins over event_registers.
    std::fs::write(&conf, "[settings]\nevent_registers = true\nprivacy_level = anonymous\n").expect("write config");
    let mut probe = Probe::start(&rx.path, &["--comm", "ev-nodump", "-f", conf.to_str().expect("utf-8 path")]);
    let text = crash_unheld(&rx, &exe, &[]);
    let regs = registers_line(&text);
    assert!(regs.contains(" bp=") && !regs.contains(" ax="), "{text}");
    probe.stop();
}
