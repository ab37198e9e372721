//! eventprobe symbolizes fatal signals without `/proc/PID` of the dead
//! process (issue #15): the kernel program names the executable mapping
//! under ip and under every word of the stack copy (`bpf_find_vma`: start,
//! end, file offset, device, inode, dentry path) while the process still
//! exists, and eventprobe opens those very files afterwards.
//!
//! Real parts: the eBPF programs loaded into this kernel, real programs
//! built here with `-O2 -fomit-frame-pointer` crashing with no core
//! handler holding them (RLIMIT_CORE 0, as `ulimit -c 0`), the real
//! collector receiving the records. eventprobe runs with `--no-proc-maps`,
//! so it never reads `/proc/PID` and every record is made the way it is
//! made when the process is already gone (which, without a core handler,
//! it almost always is; a race eventprobe sometimes wins would otherwise
//! hide a failure).
//!
//! Root only; in CI (`CI=true`) it must run.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::collector::Collector;
use e2e::kernel::{eventprobe, KillOnDrop};
use e2e::require_root;

const SYM_C: &str = r#"
#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

__attribute__((noinline)) void sy_inner(volatile int *p) { *p = 42; }
__attribute__((noinline)) void sy_middle(volatile int *p) { sy_inner(p); __asm__ volatile(""); }
__attribute__((noinline)) void sy_outer(volatile int *p) { sy_middle(p); __asm__ volatile(""); }

static pthread_barrier_t barrier;
__attribute__((noinline)) void *sy_thread(void *a) {
    long i = (long)a;
    pthread_barrier_wait(&barrier);
    if (i == 5) sy_outer(0);
    for (;;) pause();
    return 0;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    if (strcmp(mode, "threads") == 0) {
        pthread_t t[8];
        pthread_barrier_init(&barrier, 0, 8);
        for (long i = 0; i < 8; i++) pthread_create(&t[i], 0, sy_thread, (void *)i);
        pthread_join(t[0], 0);
        return 0;
    }
    if (strcmp(mode, "dlopen") == 0 && argc > 2) {
        void *h = dlopen(argv[2], RTLD_NOW);
        if (!h) return 2;
        void (*f)(volatile int *) = (void (*)(volatile int *))dlsym(h, "lib_outer");
        if (!f) return 3;
        f(0);
        return 0;
    }
    if (strcmp(mode, "stdin") == 0) {
        /* crash once a byte arrives (the test deletes the binary first) */
        char c;
        if (read(0, &c, 1) != 1) return 4;
        sy_outer(0);
        return 0;
    }
    sy_outer(0);
    return 0;
}
"#;

const LIB_C: &str = r#"
__attribute__((noinline)) void lib_inner(volatile int *p) { *p = 7; }
__attribute__((noinline)) void lib_outer(volatile int *p) { lib_inner(p); __asm__ volatile(""); }
"#;

const NOFP: &[&str] = &["-O2", "-g", "-fomit-frame-pointer", "-fasynchronous-unwind-tables"];

fn crash_program(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/crash_programs").join(name)
}

/// Compiles `src` (C, or C++ when `cxx`) with `flags` into `dir/out`.
fn build(dir: &Path, out: &str, src: &Path, cxx: bool, flags: &[&str]) -> PathBuf {
    let exe = dir.join(out);
    let st = Command::new(if cxx { "g++" } else { "gcc" })
        .args(flags)
        .arg("-o")
        .arg(&exe)
        .arg(src)
        .args(if cxx { &[][..] } else { &["-pthread", "-ldl"][..] })
        .status()
        .expect("run the compiler (cargo xtask setup installs gcc and g++)");
    assert!(st.success(), "compiling {} failed", src.display());
    exe
}

/// The real collector and an eventprobe sending to it with
/// `--no-proc-maps`, reporting only `comms`.
struct Setup {
    collector: Collector,
    probe: KillOnDrop,
}

impl Setup {
    fn start(comms: &[&str]) -> Setup {
        let mut collector = Collector::new(None, "");
        collector.start();
        let mut cmd = Command::new(eventprobe());
        cmd.arg("-f").arg(&collector.conf).args(["--duration", "120", "--no-proc-maps", "--no-exits"]);
        for c in comms {
            cmd.args(["--comm", c]);
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("start eventprobe");
        let out = child.stdout.take().expect("stdout");
        let probe = KillOnDrop(child);
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line).expect("read eventprobe stdout");
        assert!(line.contains("ready"), "eventprobe did not get ready: {line:?}");
        Setup { collector, probe }
    }

    /// Runs `exe args` with RLIMIT_CORE 0 (no core, nothing holds the
    /// dying process), expects it to die of a signal, and returns the
    /// payload of its `signal/fatal` record as the collector journaled it.
    fn crash(&self, exe: &Path, args: &[&str]) -> String {
        self.crash_after(exe, args, |_| {})
    }

    /// As [`crash`](Self::crash), calling `before` with the running child
    /// (its stdin piped) first.
    fn crash_after(&self, exe: &Path, args: &[&str], before: impl FnOnce(&mut std::process::Child)) -> String {
        self.crash_with(exe, args, &[], before)
    }

    /// As [`crash_after`](Self::crash_after), with `env` set.
    fn crash_with(
        &self,
        exe: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        before: impl FnOnce(&mut std::process::Child),
    ) -> String {
        let mut cmd = Command::new(exe);
        cmd.args(args).envs(env.iter().copied()).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null());
        // SAFETY: only setrlimit between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                let r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                if libc::setrlimit(libc::RLIMIT_CORE, &r) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawn crash program");
        let pid = child.id();
        before(&mut child);
        drop(child.stdin.take());
        use std::os::unix::process::ExitStatusExt;
        let st = child.wait().expect("wait");
        assert!(st.signal().is_some(), "{} {args:?} should die of a signal: {st:?}", exe.display());
        let want = format!("PID: {pid}\n");
        let has = |e: &serde_json::Value| {
            e["class"].as_str() == Some("org.clearlinux/signal/fatal")
                && e["payload"].as_str().is_some_and(|p| p.contains(&want))
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let j = loop {
            let j = self.collector.journal(&["-i"]);
            if j.iter().any(has) || Instant::now() >= deadline {
                break j;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let Some(e) = j.iter().find(|e| has(e)) else {
            panic!(
                "no signal/fatal record of pid {pid} ({}) in 60 s; journal: {j:#?}\ncollector log:\n{}",
                exe.display(),
                self.collector.log()
            )
        };
        e["payload"].as_str().unwrap_or_default().to_string()
    }
}

/// The unwound backtrace of a payload.
fn unwound(text: &str) -> &str {
    let s = text.find("Backtrace (unwound").unwrap_or_else(|| panic!("no unwound backtrace in:\n{text}"));
    let rest = &text[s..];
    &rest[..rest.find("Frame-pointer stack").unwrap_or(rest.len())]
}

/// Asserts the payload was made from the kernel's module names, and that
/// its unwound backtrace has `funcs` in this order, each after the first
/// found by DWARF CFI.
fn assert_symbolized(text: &str, funcs: &[&str]) {
    assert!(text.contains("Mappings: named by the kernel at the signal"), "{text}");
    let bt = unwound(text);
    let mut lines = bt.lines().skip(1);
    for (i, f) in funcs.iter().enumerate() {
        let named = |l: &str| l.split_whitespace().any(|w| w == *f || w.strip_prefix("__GI_") == Some(*f));
        let Some(line) = lines.by_ref().find(|l| named(l)) else {
            panic!("unwound stack lacks {f} (in order {funcs:?}):\n{text}")
        };
        if i > 0 {
            assert!(line.ends_with(" cfi"), "{f} not found by CFI: {line}\n{text}");
        }
    }
}

const SY: &[&str] = &["sy_inner", "sy_middle", "sy_outer"];

#[test]
fn short_lived_threads_dlopen_static_without_proc() {
    if !require_root("short_lived_threads_dlopen_static_without_proc") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("sym.c");
    std::fs::write(&src, SYM_C).expect("write sym.c");
    let lib_src = dir.path().join("lib.c");
    std::fs::write(&lib_src, LIB_C).expect("write lib.c");
    let exe = build(dir.path(), "ev-sym", &src, false, NOFP);
    let stat = build(dir.path(), "ev-sym-static", &src, false, &[NOFP, &["-static"]].concat());
    let lib = build(dir.path(), "libsy.so", &lib_src, false, &[NOFP, &["-shared", "-fPIC"]].concat());
    let setup = Setup::start(&["ev-sym", "ev-sym-static"]);

    // Crashes within a millisecond of start, a few times over.
    for _ in 0..3 {
        let text = setup.crash(&exe, &[]);
        assert_symbolized(&text, &[SY, &["main"]].concat());
    }
    // One of eight threads.
    let text = setup.crash(&exe, &["threads"]);
    assert_symbolized(&text, &[SY, &["sy_thread", "start_thread"]].concat());
    // Inside a library loaded with dlopen.
    let text = setup.crash(&exe, &["dlopen", lib.to_str().expect("utf-8 path")]);
    assert_symbolized(&text, &["lib_inner", "lib_outer", "main"]);
    assert!(text.contains("libsy.so+0x"), "{text}");
    // A static binary.
    let text = setup.crash(&stat, &[]);
    assert_symbolized(&text, &[SY, &["main"]].concat());
}

#[test]
fn cxx_exception_and_stack_overflow_without_proc() {
    if !require_root("cxx_exception_and_stack_overflow_without_proc") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let throw = build(dir.path(), "ev-throw", &crash_program("throw.cpp"), true, NOFP);
    let recurse = build(dir.path(), "ev-recurse", &crash_program("recurse.c"), false, NOFP);
    let setup = Setup::start(&["ev-throw", "ev-recurse"]);

    // abort() in glibc under std::terminate in libstdc++: the modules of
    // three files, all named by the kernel. (main tail-calls app::process
    // at -O2, so main's own caller follows it.)
    let text = setup.crash(&throw, &[]);
    assert!(text.contains("Signal: 6 (SIGABRT)"), "{text}");
    assert_symbolized(&text, &["abort", "std::terminate", "__cxa_throw", "app::process", "__libc_start_call_main"]);

    // A stack overflow: the 16 KiB above sp hold only `recurse` frames,
    // each found by CFI (main is megabytes further up).
    let text = setup.crash(&recurse, &[]);
    assert!(text.contains("Signal: 11 (SIGSEGV)"), "{text}");
    assert_symbolized(&text, &["recurse", "recurse", "recurse"]);
    let n = unwound(&text).lines().filter(|l| l.split_whitespace().nth(2) == Some("recurse")).count();
    assert!(n >= 20, "only {n} recurse frames:\n{text}");
}

/// Whether process `pid` has a descriptor open on `path` (deleted or not).
fn holds_open(pid: u32, path: &Path) -> bool {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    let want = path.display().to_string();
    dir.filter_map(Result::ok).filter_map(|e| std::fs::read_link(e.path()).ok()).any(|t| {
        let t = t.display().to_string();
        t == want || t.strip_suffix(" (deleted)") == Some(want.as_str())
    })
}

#[test]
fn binary_deleted_before_it_crashes_without_proc() {
    if !require_root("binary_deleted_before_it_crashes_without_proc") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("sym.c");
    std::fs::write(&src, SYM_C).expect("write sym.c");
    let exe = build(dir.path(), "ev-sym-del", &src, false, NOFP);
    let setup = Setup::start(&["ev-sym-del"]);
    let probe_pid = setup.probe.0.id();
    let text = setup.crash_after(&exe, &["stdin"], |_child| {
        // eventprobe holds the executable from its exec event on ...
        let deadline = Instant::now() + Duration::from_secs(30);
        while !holds_open(probe_pid, &exe) {
            assert!(Instant::now() < deadline, "eventprobe did not open {} after its exec", exe.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        // ... so it can be deleted (as by an upgrade) before it crashes.
        std::fs::remove_file(&exe).expect("delete the running binary");
        let _ = _child.stdin.as_mut().map(|s| std::io::Write::write_all(s, b"x"));
    });
    assert_symbolized(&text, &[SY, &["main"]].concat());
}

#[test]
fn go_nil_dereference_without_proc() {
    if !require_root("go_nil_dereference_without_proc") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = e2e::kernel::build_go(dir.path(), "ev-go-nil");
    let setup = Setup::start(&["ev-go-nil"]);
    // GOTRACEBACK=crash: Go prints its traceback, then re-raises SIGABRT
    // with the default action from its handler, on the signal stack; the
    // goroutine's frames are on the stack that handler interrupted.
    let text = setup.crash_with(&exe, &[], &[("GOTRACEBACK", "crash")], |_| {});
    assert!(text.contains("Signal: 6 (SIGABRT)"), "{text}");
    assert!(text.contains("Mappings: named by the kernel at the signal"), "{text}");
    let bt = unwound(text.as_str());
    let lines: Vec<&str> = bt.lines().skip(1).collect();
    // A frame names its own function last (after inlined ones).
    let at = |f: &str| {
        lines.iter().position(|l| {
            let before_module = l.split(" [/").next().unwrap_or(l);
            before_module.rsplit(" <- ").next().unwrap_or(before_module).split_whitespace().any(|w| w == f)
        })
    };
    let Some(sigpanic) = at("runtime.sigpanic") else { panic!("no runtime.sigpanic frame:\n{text}") };
    // The faulting function comes right after sigpanic (its pc is the
    // faulting instruction, not a return address), then its caller and
    // main.main.
    assert_eq!(at("main.goCrash"), Some(sigpanic + 1), "the faulting function must follow sigpanic:\n{text}");
    assert_eq!(at("main.goMiddle"), Some(sigpanic + 2), "{text}");
    assert_eq!(at("main.main"), Some(sigpanic + 3), "{text}");
    assert!(lines[sigpanic + 1].contains("ev-go-nil+0x"), "{text}");
    // runtime.goexit (TOPFRAME) ends the goroutine's stack.
    assert!(bt.lines().next().is_some_and(|l| l.contains("end: Outermost")), "{text}");
    assert!(lines.last().is_some_and(|l| l.contains(" runtime.goexit ")), "{text}");
}
