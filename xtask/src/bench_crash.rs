//! `cargo xtask bench crash`: crashprobe on real cores, against the
//! original's figures (the `original_*` fields of each case below).
//!
//! The cores are made once (real crashes of programs compiled here, with a
//! core_pattern that writes into a private directory; the previous
//! core_pattern is restored whatever happens) and kept in
//! $TMPDIR/telemetrics-bench-crash. Each run pipes a core file into
//! `crashprobe --core-only --print` through a real pipe, as the kernel
//! does, and measures wall time, peak RSS and bytes written to disk
//! (GNU time's %M and %O), beside the pipe floor (the same writer into a
//! reader that only splices to /dev/null). Then real crashes: crashprobe
//! installed as core_pattern, sending to a real collector, timed from the
//! crashing program's last instruction to the moment the kernel lets its
//! parent reap it (which waits for the handler). Then the crash-loop
//! storm and the 16-thread `@@` crash (bench_storm.rs; `--storm-secs N`,
//! default 60; `--storm-only` runs only those). Needs root.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util;

const SEGV: &str = r#"
#include <stdio.h>
__attribute__((noinline)) void level3(int *p) { *p = 42; __asm__ volatile("" ::: "memory"); }
__attribute__((noinline)) void level2(int *p) { level3(p); __asm__ volatile("" ::: "memory"); }
__attribute__((noinline)) void level1(int *p) { level2(p); __asm__ volatile("" ::: "memory"); }
int main(int argc, char **argv) { READY; level1(argc > 5 ? &argc : NULL); (void)argv; return 0; }
"#;

const BIG: &str = r#"
#include <stdlib.h>
#include <string.h>
__attribute__((noinline)) void level3(char *p, int *q) { p[1] = 1; *q = 42; __asm__ volatile("" ::: "memory"); }
__attribute__((noinline)) void level2(char *p, int *q) { level3(p, q); __asm__ volatile("" ::: "memory"); }
__attribute__((noinline)) void level1(char *p, int *q) { level2(p, q); __asm__ volatile("" ::: "memory"); }
int main(int argc, char **argv) {
    size_t n = 500u << 20; char *p = malloc(n); memset(p, 0x5a, n);
    READY; (void)argv; level1(p, argc > 5 ? &argc : NULL); return 0;
}
"#;

const THREADS: &str = r#"
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>
#define N 40
static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t c = PTHREAD_COND_INITIALIZER;
static int ready = 0;
__attribute__((noinline)) void worker_wait(void) { pthread_mutex_lock(&m); ready++; for (;;) pthread_cond_wait(&c, &m); }
void *worker(void *a) { (void)a; worker_wait(); return NULL; }
int main(void) {
    pthread_t t[N];
    for (int i = 0; i < N; i++) pthread_create(&t[i], NULL, worker, NULL);
    for (;;) { pthread_mutex_lock(&m); int r = ready; pthread_mutex_unlock(&m); if (r == N) break; usleep(1000); }
    usleep(20000);
    READY;
    abort();
}
"#;

struct Case {
    name: &'static str,
    core: &'static str,
    runs: usize,
    target_s: f64,
    original_s: f64,
    original_text: &'static str,
    rss_target_kb: Option<u64>,
}

const CASES: &[Case] = &[
    Case {
        name: "~300 KB core, 4-frame crash, piped",
        core: "segv",
        runs: 15,
        target_s: 0.020,
        original_s: 0.080,
        original_text: "70-90 ms",
        rss_target_kb: None,
    },
    Case {
        name: "500 MB core, piped",
        core: "big",
        runs: 5,
        target_s: 0.35,
        original_s: 0.57,
        original_text: "0.57 s + 500 MB temp disk",
        rss_target_kb: Some(32 << 10),
    },
    Case {
        name: "41 threads",
        core: "threads",
        runs: 7,
        target_s: 0.100,
        original_s: 0.62,
        original_text: "0.62 s",
        rss_target_kb: None,
    },
    Case {
        name: "stripped binary",
        core: "stripped",
        runs: 15,
        target_s: 0.030,
        original_s: 10.2,
        original_text: "10.2 s",
        rss_target_kb: None,
    },
];

pub fn main(args: &[String]) -> Result<(), String> {
    crate::install::ensure_apt(&["gcc", "binutils", "time", "libc6-dbg"])?;
    util::cargo(&["build", "--release", "-p", "crashprobe", "-p", "telem-collector"])?;
    let target_dir =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| util::root().join("target"));
    let probe = target_dir.join("release/crashprobe");
    if !probe.exists() {
        return Err(format!("{} was not built", probe.display()));
    }
    if args.iter().any(|a| a == "--storm-only") {
        return crate::bench_storm::main(&probe, &target_dir.join("release/telem-collector"), args);
    }
    let dir = std::env::temp_dir().join("telemetrics-bench-crash");
    make_cores(&dir)?;
    let conf = dir.join("bench.conf");
    std::fs::write(&conf, "[settings]\ncrash_third_party=unwind\ncrash_payload_version=1\n")
        .map_err(|e| e.to_string())?;
    let lines = dir.join("bench-lines.conf");
    std::fs::write(&lines, "[settings]\ncrash_third_party=unwind\ncrash_payload_version=1\ncrash_debug_lines=true\n")
        .map_err(|e| e.to_string())?;
    println!();
    println!("== real crashes through core_pattern (default settings)");
    live(&probe, &target_dir.join("release/telem-collector"), &dir)?;
    println!();
    crate::bench_storm::main(&probe, &target_dir.join("release/telem-collector"), args)?;
    for (label, conf) in [
        ("default settings (libc named from its /usr/lib/debug symbol table)", &conf),
        ("crash_debug_lines=true (also file:line from libc's compressed DWARF)", &lines),
    ] {
        println!();
        println!("== {label}");
        table(&probe, conf, &dir)?;
    }
    Ok(())
}

/// A reader that only splices its stdin into /dev/null: the floor for
/// moving a core through a pipe on this machine.
const DRAIN: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <unistd.h>
int main(void) {
    fcntl(0, F_SETPIPE_SZ, 4 << 20);
    int n = open("/dev/null", O_WRONLY);
    for (;;) { ssize_t r = splice(0, 0, n, 0, 4 << 20, SPLICE_F_MOVE); if (r <= 0) return 0; }
}
"#;

fn table(probe: &Path, conf: &Path, dir: &Path) -> Result<(), String> {
    let drain = dir.join("drain");
    if !drain.exists() {
        let c = dir.join("drain.c");
        std::fs::write(&c, DRAIN).map_err(|e| e.to_string())?;
        util::run(Command::new("gcc").args(["-O2", "-o"]).arg(&drain).arg(&c))?;
    }
    println!("crashprobe benchmarks (cores in {}; median of N runs; wall includes piping the core)", dir.display());
    println!("(pipe floor: the same writer into a reader that only splices the core to /dev/null, runs interleaved)");
    println!(
        "{:<38} {:>10} {:>9} {:>8} {:>9} {:>7} {:>20} {:>18}",
        "case", "median", "target", "RSS", "disk out", "frames", "vs original", "pipe floor"
    );
    for c in CASES {
        let core = dir.join(format!("core.{}", c.core));
        let mut walls = Vec::new();
        let mut rss = 0u64;
        let mut out_blocks = 0u64;
        let mut frames = 0usize;
        let mut floors = Vec::new();
        for _ in 0..c.runs {
            floors.push(run_once(&drain, conf, &core)?.0);
            let r = run_once(probe, conf, &core)?;
            walls.push(r.0);
            rss = rss.max(r.1);
            out_blocks = out_blocks.max(r.2);
            frames = r.3;
        }
        walls.sort();
        floors.sort();
        let med = walls[walls.len() / 2].as_secs_f64();
        let floor = floors[floors.len() / 2].as_secs_f64();
        let ok = med <= c.target_s && c.rss_target_kb.is_none_or(|t| rss <= t);
        println!(
            "{:<38} {:>8.1}ms {:>7.0}ms {:>6}MB {:>7}B {:>7} {:>8.1}x faster ({}) {:>6.1}ms ({:.2}x) {}",
            c.name,
            med * 1e3,
            c.target_s * 1e3,
            rss / 1024,
            out_blocks * 512,
            frames,
            c.original_s / med,
            c.original_text,
            floor * 1e3,
            med / floor,
            if ok { "OK" } else { "OVER TARGET" },
        );
        if let Some(t) = c.rss_target_kb {
            println!("{:<38} peak RSS {} KB (target <= {} KB), {} bytes written to disk", "", rss, t, out_blocks * 512);
        }
    }
    Ok(())
}

/// (wall, peak RSS KB, 512-byte blocks written, frames printed).
fn run_once(probe: &Path, conf: &Path, core: &Path) -> Result<(Duration, u64, u64, usize), String> {
    let data = std::fs::read(core).map_err(|e| format!("read {}: {e}", core.display()))?;
    let stats = std::env::temp_dir().join(format!("crash-bench-time.{}", std::process::id()));
    let start = Instant::now();
    let mut child = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%M %O")
        .arg("-o")
        .arg(&stats)
        .arg(probe)
        .args(["--core-only", "--print", "-f"])
        .arg(conf)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("run /usr/bin/time {}: {e}", probe.display()))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let wall = start.elapsed();
    let _ = writer.join();
    if !out.status.success() {
        return Err(format!("crashprobe failed on {}", core.display()));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let frames = text.lines().filter(|l| l.starts_with('#')).count();
    let s = std::fs::read_to_string(&stats).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&stats);
    let mut it = s.split_whitespace();
    let rss = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
    let blocks = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
    Ok((wall, rss, blocks, frames))
}

/// Restores core_pattern on drop.
struct PatternGuard(String);
impl Drop for PatternGuard {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/core_pattern", &self.0);
    }
}

fn make_cores(dir: &Path) -> Result<(), String> {
    let names = ["segv", "big", "threads", "stripped"];
    if names.iter().all(|n| dir.join(format!("core.{n}")).exists()) {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let build = |name: &str, src: &str, flags: &[&str]| -> Result<PathBuf, String> {
        let c = dir.join(format!("{name}.c"));
        std::fs::write(&c, src.replace("READY;", "")).map_err(|e| e.to_string())?;
        let exe = dir.join(name);
        util::run(Command::new("gcc").args(flags).arg("-o").arg(&exe).arg(&c))?;
        Ok(exe)
    };
    let segv = build("segv", SEGV, &["-O2", "-g"])?;
    let big = build("big", BIG, &["-O2", "-g"])?;
    let threads = build("threads", THREADS, &["-O2", "-g", "-pthread"])?;
    let stripped = build("stripped", SEGV, &["-O2", "-fPIE", "-pie", "-rdynamic"])?;
    util::run(Command::new("strip").arg(&stripped))?;
    let prev = std::fs::read_to_string("/proc/sys/kernel/core_pattern").map_err(|e| e.to_string())?;
    let _guard = PatternGuard(prev);
    std::fs::write("/proc/sys/kernel/core_pattern", format!("{}/core.%e", dir.display()))
        .map_err(|e| format!("set core_pattern (needs root): {e}"))?;
    for exe in [&segv, &big, &threads, &stripped] {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!("ulimit -c unlimited; exec {}", exe.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = c.status();
    }
    for n in names {
        if !dir.join(format!("core.{n}")).exists() {
            return Err(format!("no core was written for {n} in {}", dir.display()));
        }
    }
    Ok(())
}

/// Live cases: (label, source, runs, target, original seconds, original text).
const LIVE: &[(&str, &str, usize, f64, f64, &str)] = &[
    ("4-frame crash", SEGV, 9, 0.020, 0.080, "70-90 ms"),
    ("500 MB process", BIG, 3, 0.35, 0.57, "0.57 s"),
    ("41 threads", THREADS, 7, 0.100, 0.62, "0.62 s"),
];

/// Restores a sysctl file on drop.
struct SysctlGuard(&'static str, String);
impl Drop for SysctlGuard {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0, &self.1);
    }
}

/// Real crashes: crashprobe installed as core_pattern (pipe mode, the
/// pattern `crashprobe --install` writes, core_pipe_limit set so the kernel
/// waits for the handler), sending to a real collector. The program writes
/// one byte to a pipe just before it crashes; the time runs from reading
/// that byte to the parent's waitpid returning, which the kernel delays
/// until the handler has finished (record acknowledged by the collector)
/// and closed the pipe. So it covers the kernel writing the core, the
/// handler reading, unwinding, symbolizing and sending.
fn live(probe: &Path, collector: &Path, dir: &Path) -> Result<(), String> {
    let live = dir.join("live");
    let _ = std::fs::remove_dir_all(&live);
    std::fs::create_dir_all(&live).map_err(|e| e.to_string())?;
    let conf = live.join("t.conf");
    let sock = live.join("sock");
    std::fs::write(
        &conf,
        format!(
            "[settings]\nsocket_path={}\nspool_dir={}\njournal_dir={}\nstate_dir={}\netc_dir={}\n\
             record_retention_enabled=true\nrate_limit_enabled=false\ncrash_third_party=unwind\ncrash_payload_version=1\n\
             crash_signature_burst=-1\n",
            sock.display(),
            live.join("spool").display(),
            live.join("journal").display(),
            live.join("state").display(),
            live.join("etc").display(),
        ),
    )
    .map_err(|e| e.to_string())?;
    let mut daemon = Command::new(collector)
        .arg("-f")
        .arg(&conf)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("start {}: {e}", collector.display()))?;
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _kill = Kill(&mut daemon);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        if Instant::now() > deadline {
            return Err("the collector did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let pattern = format!("|{} -P %P -F %F -d %d -t %t -s %s -f {}", probe.display(), conf.display());
    if pattern.len() > 127 {
        return Err(format!(
            "core_pattern would be {} bytes (kernel limit 127): use a shorter checkout path",
            pattern.len()
        ));
    }
    let read =
        |p: &str| std::fs::read_to_string(p).map(|s| s.trim_end().to_string()).map_err(|e| format!("read {p}: {e}"));
    let _pat = SysctlGuard("/proc/sys/kernel/core_pattern", read("/proc/sys/kernel/core_pattern")?);
    let _lim = SysctlGuard("/proc/sys/kernel/core_pipe_limit", read("/proc/sys/kernel/core_pipe_limit")?);
    std::fs::write("/proc/sys/kernel/core_pipe_limit", "16")
        .map_err(|e| format!("set core_pipe_limit (needs root): {e}"))?;
    std::fs::write("/proc/sys/kernel/core_pattern", &pattern)
        .map_err(|e| format!("set core_pattern (needs root): {e}"))?;
    println!(
        "{:<38} {:>10} {:>9} {:>7} {:>20}",
        "crash, abort() -> record acknowledged", "median", "target", "frames", "vs original"
    );
    let journal = live.join("journal/journal");
    let mut seen = 0usize;
    for (i, (name, src, runs, target, orig, orig_text)) in LIVE.iter().enumerate() {
        let c = live.join(format!("prog{i}.c"));
        let exe = live.join(format!("prog{i}"));
        std::fs::write(
            &c,
            format!("#include <unistd.h>\n{}", src.replace("READY;", "{ char r = 'r'; (void)!write(1, &r, 1); }")),
        )
        .map_err(|e| e.to_string())?;
        util::run(Command::new("gcc").args(["-O2", "-g", "-pthread", "-o"]).arg(&exe).arg(&c))?;
        let mut walls = Vec::new();
        for _ in 0..*runs {
            let mut child = Command::new("sh")
                .arg("-c")
                .arg(format!("ulimit -c unlimited; exec {}", exe.display()))
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| e.to_string())?;
            let mut out = child.stdout.take().ok_or("no stdout")?;
            let mut b = [0u8; 1];
            std::io::Read::read_exact(&mut out, &mut b).map_err(|e| format!("{name}: no ready byte: {e}"))?;
            let t0 = Instant::now();
            child.wait().map_err(|e| e.to_string())?;
            walls.push(t0.elapsed());
        }
        seen += runs;
        // Every crash must have reached the journal with its frames.
        let deadline = Instant::now() + Duration::from_secs(10);
        let (n, frames) = loop {
            let text = std::fs::read_to_string(&journal).unwrap_or_default();
            let crashes: Vec<&str> = text.lines().filter(|l| l.contains("\"class\":\"org.clearlinux/crash/")).collect();
            if crashes.len() >= seen || Instant::now() > deadline {
                let frames = crashes.last().map_or(0, |l| l.matches("\\n#").count());
                break (crashes.len(), frames);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if n < seen {
            return Err(format!(
                "{name}: only {n} of {seen} crash records reached the collector's journal ({})",
                journal.display()
            ));
        }
        walls.sort();
        let med = walls[walls.len() / 2].as_secs_f64();
        println!(
            "{:<38} {:>8.1}ms {:>7.0}ms {:>7} {:>8.1}x faster ({orig_text}) {}",
            name,
            med * 1e3,
            target * 1e3,
            frames,
            orig / med,
            if med <= *target { "OK" } else { "OVER TARGET" }
        );
    }
    Ok(())
}
