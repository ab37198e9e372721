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

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{cargo_bin, root, run};

const SPAWNS: u32 = 20_000;
/// Off/on alternations (drift on a shared machine hits both sides alike).
const ROUNDS: u32 = 4;
const TARGET_RATIO: f64 = 1.03;
const TARGET_EVENTS_PER_SEC: f64 = 10_000.0;
const SIG_EVENTS: u32 = 50_000;

const WORKLOAD_C: &str = r#"
#include <signal.h>
#include <stdlib.h>
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

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"))
}

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

pub fn main(_args: &[String]) -> Result<(), String> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("bench events needs root (it loads eBPF programs)".into());
    }
    crate::ebpf::build()?;
    run(Command::new(cargo_bin()).args(["build", "--quiet", "--release", "-p", "eventprobe"]).current_dir(root()))?;
    let bin = target_dir().join("release/eventprobe");
    let dir = std::env::temp_dir().join(format!("telem-bench-events-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let result = bench(&bin, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn bench(bin: &Path, dir: &Path) -> Result<(), String> {
    let (workload, noop) = compile(dir)?;

    // 1. Spawn overhead, alternating off/on twice.
    println!("events: {SPAWNS} process spawns+exits each without and with eventprobe attached, alternating in {ROUNDS} rounds (off/on, on/off, ...)");
    let _ = spawn_run(&workload, &noop, 2_000)?; // warm-up
    let part = SPAWNS / ROUNDS;
    let (mut off, mut on) = (Duration::ZERO, Duration::ZERO);
    let mut ratios = Vec::new();
    let (mut exit_runs, mut exit_ns) = (0u64, 0u64);
    let (mut cpu_off, mut cpu_on) = (Duration::ZERO, Duration::ZERO);
    for round in 0..ROUNDS {
        // Off first in even rounds, on first in odd ones: order effects cancel.
        let mut without = None;
        if round % 2 == 0 {
            without = Some(spawn_run(&workload, &noop, part)?);
        }
        let p = Probe::start(bin, dir, &["--bpf-stats"])?;
        let (b, cb) = spawn_run(&workload, &noop, part)?;
        let log = p.stop()?;
        let (a, ca) = match without {
            Some(w) => w,
            None => spawn_run(&workload, &noop, part)?,
        };
        cpu_off += ca;
        cpu_on += cb;
        exit_runs += value(&log, "prog=exit_group", "runs").unwrap_or(0);
        exit_ns += value(&log, "prog=exit_group", "run_time_ns").unwrap_or(0);
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
        "events: per-round ratios {}; median {median:.4}; kernel-side exit_group program {:.0} ns/run over {exit_runs} runs",
        ratios.iter().map(|r| format!("{r:.3}")).collect::<Vec<_>>().join(" "),
        if exit_runs > 0 { exit_ns as f64 / exit_runs as f64 } else { f64::NAN }
    );
    println!(
        "events: CPU time (user+sys) of the spawning processes: without {:.3} s, with {:.3} s; ratio {:.4} (less sensitive to other load than wall time)",
        cpu_off.as_secs_f64(),
        cpu_on.as_secs_f64(),
        cpu_on.as_secs_f64() / cpu_off.as_secs_f64().max(1e-9)
    );

    // 2. Fatal-signal events: paced at the target, then unpaced.
    for (label, rate) in [("paced 10000/s", TARGET_EVENTS_PER_SEC as u64), ("unpaced", 0)] {
        let p = Probe::start(
            bin,
            dir,
            &["--all-deliveries", "--signals", "SEGV", "--comm", "ev-bench", "--no-exits", "--no-oom", "--bpf-stats"],
        )?;
        let t = Instant::now();
        run(Command::new(&workload).arg("signals").arg(SIG_EVENTS.to_string()).arg(rate.to_string()))?;
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
