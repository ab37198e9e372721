//! `cargo xtask bench events`: eventprobe's cost (needs root).
//!
//! 1. Overhead: 20,000 short processes (vfork + exec of a static no-op +
//!    wait), timed without and with eventprobe attached, alternating
//!    in four rounds of 5,000 (off/on, on/off, off/on, on/off) in one run; prints both times and the ratio
//!    (target <= 1.03).
//! 2. Fatal-signal events: a program delivers SIGSEGV to its own handler in
//!    a loop (eventprobe runs with `--all-deliveries`, so each delivery is
//!    a full fatal-signal event: registers, frame-pointer stack, 20 KiB
//!    stack copy). Prints the kernel-side cost per event from BPF run-time
//!    statistics, and the events/s that reached user space with the kernel
//!    losses, paced at 10,000/s and unpaced.
//! 3. Crashes: 1,000 short-lived `-O2 -fomit-frame-pointer` programs crash
//!    (SIGSEGV three calls under main) with RLIMIT_CORE 0 and nothing
//!    holding them; eventprobe's summary counts the records whose unwound
//!    backtrace reached `main` (target >= 99%).
//! 4. Memory: eventprobe's peak RSS (VmHWM) with 2,000 live processes of
//!    50 distinct executables exec'd under it (each held open from its
//!    exec; target <= 64 MB).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{cargo_bin, root, run};

const SPAWNS: u32 = 20_000;
/// Off/on alternations (drift on a shared machine hits both sides alike).
const ROUNDS: u32 = 4;
const TARGET_RATIO: f64 = 1.02;
const CRASHES: u32 = 1_000;
const TARGET_TO_MAIN: f64 = 0.99;
const LIVE: u32 = 2_000;
const LIVE_EXES: u32 = 50;
const TARGET_RSS_KB: u64 = 64 * 1024;
const TARGET_EVENTS_PER_SEC: f64 = 10_000.0;
const SIG_EVENTS: u32 = 50_000;

const WORKLOAD_C: &str = r#"
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>

static volatile unsigned long handled;
static void on_segv(int s) { (void)s; handled++; }

int main(int argc, char **argv) {
    if (argc > 3 && strcmp(argv[1], "spawn") == 0) {
        int n = atoi(argv[2]);
        char *args[] = { argv[3], 0 };
        for (int i = 0; i < n; i++) {
            pid_t p = vfork();
            if (p == 0) { execv(argv[3], args); _exit(127); }
            int st;
            if (p < 0 || waitpid(p, &st, 0) != p || !WIFEXITED(st) || WEXITSTATUS(st) != 0) return 2;
        }
        return 0;
    }
    if (argc > 3 && strcmp(argv[1], "crashes") == 0) {
        /* n crashes of argv[3], each with RLIMIT_CORE 0; prints how many died of a signal */
        int n = atoi(argv[2]), died = 0;
        char *args[] = { argv[3], 0 };
        for (int i = 0; i < n; i++) {
            pid_t p = fork();
            if (p == 0) {
                struct rlimit r = { 0, 0 };
                setrlimit(RLIMIT_CORE, &r);
                execv(argv[3], args);
                _exit(127);
            }
            int st;
            if (p < 0 || waitpid(p, &st, 0) != p) return 2;
            if (WIFSIGNALED(st)) died++;
        }
        printf("died=%d\n", died);
        return 0;
    }
    if (argc > 3 && strcmp(argv[1], "live") == 0) {
        /* n processes of the executables argv[3..] blocked on a pipe until
           our stdin closes */
        int n = atoi(argv[2]), nexe = argc - 3, fds[2];
        if (pipe(fds)) return 3;
        for (int i = 0; i < n; i++) {
            char *args[] = { argv[3 + i % nexe], 0 };
            pid_t p = fork();
            if (p == 0) { dup2(fds[0], 0); close(fds[1]); execv(args[0], args); _exit(127); }
            if (p < 0) return 4;
        }
        close(fds[0]);
        printf("ready\n");
        fflush(stdout);
        char c;
        while (read(0, &c, 1) > 0) {}
        close(fds[1]);
        int st;
        while (wait(&st) > 0) {}
        return 0;
    }
    if (argc > 3 && strcmp(argv[1], "signals") == 0) {
        /* n SIGSEGV deliveries to a handler, at `rate` per second (0: unpaced) */
        long n = atol(argv[2]), rate = atol(argv[3]);
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_segv;
        sigaction(SIGSEGV, &sa, 0);
        struct timespec t0, next;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (long i = 0; i < n; i++) {
            if (rate > 0 && i % 100 == 0) {
                long ns = (long)((double)i / rate * 1e9);
                next.tv_sec = t0.tv_sec + (t0.tv_nsec + ns) / 1000000000L;
                next.tv_nsec = (t0.tv_nsec + ns) % 1000000000L;
                clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, 0);
            }
            raise(SIGSEGV);
        }
        return handled == (unsigned long)n ? 0 : 3;
    }
    return 0;
}
"#;

const CRASH_C: &str = r#"
__attribute__((noinline)) void cb_inner(volatile int *p) { *p = 42; }
__attribute__((noinline)) void cb_middle(volatile int *p) { cb_inner(p); __asm__ volatile(""); }
__attribute__((noinline)) void cb_outer(volatile int *p) { cb_middle(p); __asm__ volatile(""); }
int main(void) { cb_outer(0); return 0; }
"#;

const SLEEPER_C: &str = "#include <unistd.h>\nint main(void) { char c; return read(0, &c, 1) < 0; }\n";

fn compile(dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let src = dir.join("ev-bench.c");
    std::fs::write(&src, WORKLOAD_C).map_err(|e| format!("write {}: {e}", src.display()))?;
    let workload = dir.join("ev-bench");
    run(Command::new("gcc").args(["-O2", "-o"]).arg(&workload).arg(&src))?;
    let noop_src = dir.join("noop.c");
    std::fs::write(&noop_src, "int main(void) { return 0; }\n").map_err(|e| format!("write noop.c: {e}"))?;
    let noop = dir.join("ev-noop");
    // Static when libc.a is there (faster exec, less noise), else dynamic.
    let static_ok = Command::new("gcc")
        .args(["-O2", "-static", "-o"])
        .arg(&noop)
        .arg(&noop_src)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !static_ok {
        run(Command::new("gcc").args(["-O2", "-o"]).arg(&noop).arg(&noop_src))?;
    }
    Ok((workload, noop))
}

/// A running eventprobe, stopped with SIGTERM; returns its stderr.
struct Probe {
    child: Child,
    stderr: PathBuf,
}

impl Probe {
    fn start(bin: &Path, dir: &Path, args: &[&str]) -> Result<Probe, String> {
        let stderr = dir.join("eventprobe.stderr");
        let f = std::fs::File::create(&stderr).map_err(|e| format!("create {}: {e}", stderr.display()))?;
        let mut child = Command::new(bin)
            .arg("--socket")
            .arg(dir.join("no-collector.sock"))
            .args(["--duration", "300"])
            .args(args)
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(f)
            .spawn()
            .map_err(|e| format!("start {}: {e}", bin.display()))?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        let mut r = BufReader::new(out);
        let got = r.read_line(&mut line).map_err(|e| e.to_string())?;
        if got == 0 || !line.contains("ready") {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(&stderr).unwrap_or_default();
            return Err(format!("eventprobe did not start: {log}"));
        }
        Ok(Probe { child, stderr })
    }

    fn stop(mut self) -> Result<String, String> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.child.try_wait().map_err(|e| e.to_string())?.is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err("eventprobe did not stop within 60 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::fs::read_to_string(&self.stderr).map_err(|e| e.to_string())
    }
}

/// User + system CPU time of all reaped children so far.
fn children_cpu() -> Duration {
    // SAFETY: rusage is plain data; all zeros is a valid value.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one struct rusage into `r`.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut r) } != 0 {
        return Duration::ZERO;
    }
    let tv =
        |t: libc::timeval| Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64);
    tv(r.ru_utime) + tv(r.ru_stime)
}

fn value(log: &str, prefix: &str, key: &str) -> Option<u64> {
    log.lines().filter(|l| l.contains(prefix)).find_map(|l| {
        l.split_whitespace().find_map(|w| w.strip_prefix(&format!("{key}="))).and_then(|v| v.parse().ok())
    })
}

/// Wall time and CPU time (of the workload and its processes) of `n` spawns.
fn spawn_run(workload: &Path, noop: &Path, n: u32) -> Result<(Duration, Duration), String> {
    let cpu = children_cpu();
    let t = Instant::now();
    run(Command::new(workload).arg("spawn").arg(n.to_string()).arg(noop))?;
    Ok((t.elapsed(), children_cpu().saturating_sub(cpu)))
}

/// `cargo xtask bench events [crashes|memory|spawn|signals]...`: all phases
/// unless some are named.
pub fn main(args: &[String]) -> Result<(), String> {
    for a in args {
        if !["crashes", "memory", "spawn", "signals"].contains(&a.as_str()) {
            return Err(format!("bench events: unknown phase {a:?} (crashes, memory, spawn, signals)"));
        }
    }
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("bench events needs root (it loads eBPF programs)".into());
    }
    crate::ebpf::build()?;
    run(Command::new(cargo_bin()).args(["build", "--quiet", "--release", "-p", "eventprobe"]).current_dir(root()))?;
    let bin = crate::install::target_dir().join("release/eventprobe");
    let dir = std::env::temp_dir().join(format!("telem-bench-events-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let phases: Vec<&str> = if args.is_empty() {
        vec!["crashes", "memory", "spawn", "signals"]
    } else {
        args.iter().map(String::as_str).collect()
    };
    let result = bench(&bin, &dir, &phases);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn bench(bin: &Path, dir: &Path, phases: &[&str]) -> Result<(), String> {
    let (workload, noop) = compile(dir)?;
    if phases.contains(&"crashes") {
        crashes(bin, dir, &workload)?;
    }
    if phases.contains(&"memory") {
        live_rss(bin, dir, &workload)?;
    }
    if phases.contains(&"spawn") {
        spawn_overhead(bin, dir, &workload, &noop)?;
    }
    if phases.contains(&"signals") {
        signal_events(bin, dir, &workload)?;
    }
    Ok(())
}

/// Phase 1: spawn overhead, alternating off/on.
fn spawn_overhead(bin: &Path, dir: &Path, workload: &Path, noop: &Path) -> Result<(), String> {
    let (workload, noop) = (workload.to_path_buf(), noop.to_path_buf());

    // 1. Spawn overhead, alternating off/on twice.
    println!("events: {SPAWNS} process spawns+exits each without and with eventprobe attached, alternating in {ROUNDS} rounds (off/on, on/off, ...)");
    let _ = spawn_run(&workload, &noop, 2_000)?; // warm-up
    let part = SPAWNS / ROUNDS;
    let (mut off, mut on) = (Duration::ZERO, Duration::ZERO);
    let mut ratios = Vec::new();
    let (mut exit_runs, mut exit_ns) = (0u64, 0u64);
    let (mut exec_runs, mut exec_ns) = (0u64, 0u64);
    let mut probe_cpu = Duration::ZERO;
    let (mut cpu_off, mut cpu_on) = (Duration::ZERO, Duration::ZERO);
    for round in 0..ROUNDS {
        // Off first in even rounds, on first in odd ones: order effects cancel.
        let mut without = None;
        if round % 2 == 0 {
            without = Some(spawn_run(&workload, &noop, part)?);
        }
        let p = Probe::start(bin, dir, &["--bpf-stats"])?;
        let probe_cpu0 = crate::util::proc_cpu(p.child.id());
        let (b, cb) = spawn_run(&workload, &noop, part)?;
        probe_cpu += crate::util::proc_cpu(p.child.id()).saturating_sub(probe_cpu0);
        let log = p.stop()?;
        let (a, ca) = match without {
            Some(w) => w,
            None => spawn_run(&workload, &noop, part)?,
        };
        cpu_off += ca;
        cpu_on += cb;
        exit_runs += value(&log, "prog=exit_group", "runs").unwrap_or(0);
        exit_ns += value(&log, "prog=exit_group", "run_time_ns").unwrap_or(0);
        exec_runs += value(&log, "prog=process_exec", "runs").unwrap_or(0);
        exec_ns += value(&log, "prog=process_exec", "run_time_ns").unwrap_or(0);
        ratios.push(b.as_secs_f64() / a.as_secs_f64());
        off += a;
        on += b;
    }
    ratios.sort_by(f64::total_cmp);
    let median = (ratios[ratios.len() / 2 - 1] + ratios[ratios.len() / 2]) / 2.0;
    let ratio = on.as_secs_f64() / off.as_secs_f64();
    println!(
        "events: spawn+exit x{SPAWNS}: without {:.3} s ({:.1} us/process), with {:.3} s ({:.1} us/process); ratio {:.4} (target <= {TARGET_RATIO}) {}",
        off.as_secs_f64(),
        off.as_secs_f64() * 1e6 / SPAWNS as f64,
        on.as_secs_f64(),
        on.as_secs_f64() * 1e6 / SPAWNS as f64,
        ratio,
        if ratio <= TARGET_RATIO { "OK" } else { "OVER TARGET" }
    );
    println!(
        "events: per-round ratios {}; median {median:.4}; kernel-side exit_group program {:.0} ns/run over {exit_runs} runs, process_exec {:.0} ns/run over {exec_runs} runs",
        ratios.iter().map(|r| format!("{r:.3}")).collect::<Vec<_>>().join(" "),
        if exit_runs > 0 { exit_ns as f64 / exit_runs as f64 } else { f64::NAN },
        if exec_runs > 0 { exec_ns as f64 / exec_runs as f64 } else { f64::NAN }
    );
    println!(
        "events: CPU time (user+sys) of the spawning processes: without {:.3} s, with {:.3} s; ratio {:.4} (less sensitive to other load than wall time); eventprobe's own CPU while they ran {:.3} s ({:.1} us per process)",
        cpu_off.as_secs_f64(),
        cpu_on.as_secs_f64(),
        cpu_on.as_secs_f64() / cpu_off.as_secs_f64().max(1e-9),
        probe_cpu.as_secs_f64(),
        probe_cpu.as_secs_f64() * 1e6 / SPAWNS as f64
    );

    Ok(())
}

/// Phase 2: fatal-signal events, paced at the target, then unpaced.
fn signal_events(bin: &Path, dir: &Path, workload: &Path) -> Result<(), String> {
    for (label, rate) in [("paced 10000/s", TARGET_EVENTS_PER_SEC as u64), ("unpaced", 0)] {
        let p = Probe::start(
            bin,
            dir,
            &["--all-deliveries", "--signals", "SEGV", "--comm", "ev-bench", "--no-exits", "--no-oom", "--bpf-stats"],
        )?;
        let t = Instant::now();
        run(Command::new(workload).arg("signals").arg(SIG_EVENTS.to_string()).arg(rate.to_string()))?;
        let gen = t.elapsed();
        std::thread::sleep(Duration::from_millis(300));
        let log = p.stop()?;
        let seen = value(&log, "summary", "fatal").ok_or_else(|| format!("no summary from eventprobe: {log}"))?;
        let lost = value(&log, "summary", "lost_kernel_fatal").unwrap_or(0);
        let runs = value(&log, "prog=signal_deliver", "runs").unwrap_or(0);
        let ns = value(&log, "prog=signal_deliver", "run_time_ns").unwrap_or(0);
        let per_event = if runs > 0 { ns as f64 / runs as f64 } else { f64::NAN };
        let rate_done = SIG_EVENTS as f64 / gen.as_secs_f64();
        println!(
            "events: fatal-signal events {label}: {SIG_EVENTS} generated in {:.3} s ({:.0}/s); reached user space {seen}, lost in kernel {lost} ({}); kernel-side cost {:.0} ns/event over {runs} program runs",
            gen.as_secs_f64(),
            rate_done,
            if lost == 0 && seen == SIG_EVENTS as u64 { "no loss" } else { "LOSS" },
            per_event
        );
        if rate > 0 {
            println!(
                "events: end-to-end {:.0} fatal events/s without loss: ratio {:.3} of the {TARGET_EVENTS_PER_SEC:.0}/s target{}",
                if lost == 0 { rate_done } else { 0.0 },
                if lost == 0 { rate_done / TARGET_EVENTS_PER_SEC } else { 0.0 },
                if lost == 0 { "" } else { " (events were lost)" }
            );
        }
    }
    Ok(())
}

/// Phase 3: crashes of short-lived programs without frame pointers, no
/// core handler holding them; the share symbolized down to `main`.
fn crashes(bin: &Path, dir: &Path, workload: &Path) -> Result<(), String> {
    let src = dir.join("crashbench.c");
    std::fs::write(&src, CRASH_C).map_err(|e| format!("write {}: {e}", src.display()))?;
    let exe = dir.join("ev-crashbench");
    run(Command::new("gcc")
        .args(["-O2", "-g", "-fomit-frame-pointer", "-fasynchronous-unwind-tables", "-o"])
        .arg(&exe)
        .arg(&src))?;
    // No rate limit: every crash is unwound (the default limit keeps 10
    // per command, then 1/s).
    let unlimited = ["--rate", "1e9", "--burst", "1e9", "--global-rate", "1e9", "--global-burst", "1e9"];
    let p = Probe::start(
        bin,
        dir,
        &[&["--comm", "ev-crashbench", "--no-exits", "--no-oom", "--queue", "4096"], &unlimited[..]].concat(),
    )?;
    let t = Instant::now();
    let out = Command::new(workload)
        .arg("crashes")
        .arg(CRASHES.to_string())
        .arg(&exe)
        .output()
        .map_err(|e| format!("run the crashes: {e}"))?;
    let gen = t.elapsed();
    std::thread::sleep(Duration::from_millis(2_500));
    let log = p.stop()?;
    let died = value(&String::from_utf8_lossy(&out.stdout), "died", "died").unwrap_or(0);
    let seen = value(&log, "summary", "fatal").ok_or_else(|| format!("no summary from eventprobe: {log}"))?;
    let to_main = value(&log, "summary", "unwound_to_main").unwrap_or(0);
    let missing = value(&log, "summary", "maps_missing").unwrap_or(0);
    let lost = value(&log, "summary", "lost_kernel").unwrap_or(0);
    let limited = value(&log, "summary", "rate_limited").unwrap_or(0);
    let dropped = value(&log, "summary", "queue_dropped").unwrap_or(0);
    let share = to_main as f64 / f64::from(CRASHES);
    println!(
        "events: {CRASHES} crashes of -O2 programs without frame pointers, no core handler ({died} died of a signal in {:.1} s): {seen} fatal records, {to_main} unwound to main ({:.1}%, target >= {:.0}%: ratio {:.3}) {}; /proc/PID maps or files gone first for {missing} (named by the kernel instead); lost in kernel {lost}, rate-limited {limited}, queue-dropped {dropped}",
        gen.as_secs_f64(),
        share * 100.0,
        TARGET_TO_MAIN * 100.0,
        share / TARGET_TO_MAIN,
        if share >= TARGET_TO_MAIN { "OK" } else { "UNDER TARGET" }
    );
    Ok(())
}

/// `VmHWM` and `VmRSS` (kB) of a process.
fn rss_kb(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let get = |k: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (get("VmHWM:"), get("VmRSS:"))
}

/// Phase 4: eventprobe's memory with many live processes (each exec seen,
/// its executable held open while it lives).
fn live_rss(bin: &Path, dir: &Path, workload: &Path) -> Result<(), String> {
    let src = dir.join("sleeper.c");
    std::fs::write(&src, SLEEPER_C).map_err(|e| format!("write {}: {e}", src.display()))?;
    let first = dir.join("ev-sleeper-0");
    run(Command::new("gcc").args(["-O2", "-o"]).arg(&first).arg(&src))?;
    let mut exes = vec![first.clone()];
    for i in 1..LIVE_EXES {
        let e = dir.join(format!("ev-sleeper-{i}"));
        std::fs::copy(&first, &e).map_err(|e| format!("copy the sleeper: {e}"))?;
        exes.push(e);
    }
    let p = Probe::start(bin, dir, &[])?;
    let pid = p.child.id();
    let (hwm0, _) = rss_kb(pid);
    let mut live = Command::new(workload)
        .arg("live")
        .arg(LIVE.to_string())
        .args(&exes)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("start the live processes: {e}"))?;
    let mut line = String::new();
    if let Some(out) = live.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    // Let eventprobe take every exec in.
    std::thread::sleep(Duration::from_secs(3));
    let (hwm, rss) = rss_kb(pid);
    let held = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
    drop(live.stdin.take());
    let _ = live.wait();
    let _ = p.stop()?;
    println!(
        "events: eventprobe memory with {LIVE} live processes of {LIVE_EXES} executables ({}): VmHWM {:.1} MB (before them {:.1} MB), VmRSS {:.1} MB, {held} descriptors open; target <= {} MB: ratio {:.3} {}",
        line.trim(),
        hwm as f64 / 1024.0,
        hwm0 as f64 / 1024.0,
        rss as f64 / 1024.0,
        TARGET_RSS_KB / 1024,
        hwm as f64 / TARGET_RSS_KB as f64,
        if hwm <= TARGET_RSS_KB { "OK" } else { "OVER TARGET" }
    );
    Ok(())
}
