//! `cargo xtask bench crash`, the crash-loop part (issue #16):
//!
//! - **Storm**: one bug crashing 50 times a second for `--storm-secs`
//!   (default 60) seconds, in pipe mode and in request/ack socket mode
//!   (`@@`), crashprobe sending to a real collector with the default
//!   governor (3 full records per signature per 60 minutes). Reported: full
//!   records, crashes counted by the governor (full + counted must be every
//!   crash), crashprobe's CPU over the storm (pipe mode: every handler's
//!   user+system time, measured by a tiny wrapper that runs it and adds up
//!   `wait4`'s rusage, in a second pipe-mode storm; socket mode: the
//!   server's), and the time from the crash (the program's last write
//!   before its fault) to the moment its parent reaps it, for the repeated
//!   crashes (all but the first 3; in pipe mode from the storm without the
//!   wrapper, which delays crashprobe's start and holds the pipe).
//! - **16 threads, `@@`**: 100 crashes of a 16-thread program, governor
//!   off, from the crash to the record in the collector's journal.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::util;

const BUG: &str = r#"
#include <unistd.h>
int *volatile nullp;
__attribute__((noinline)) void storm_bug(void) { *nullp = 1; __asm__ volatile("" ::: "memory"); }
int main(void) { char r = 'r'; (void)!write(1, &r, 1); storm_bug(); return 0; }
"#;

const THREADS16: &str = r#"
#include <pthread.h>
#include <unistd.h>
#define N 15
static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static int ready = 0;
void *worker(void *a) { (void)a; pthread_mutex_lock(&m); ready++; pthread_mutex_unlock(&m); for (;;) pause(); return 0; }
int *volatile nullp;
__attribute__((noinline)) void crash16(void) { *nullp = 1; __asm__ volatile("" ::: "memory"); }
int main(void) {
    pthread_t t[N];
    for (int i = 0; i < N; i++) pthread_create(&t[i], NULL, worker, NULL);
    for (;;) { pthread_mutex_lock(&m); int r = ready; pthread_mutex_unlock(&m); if (r == N) break; usleep(1000); }
    char r = 'r'; (void)!write(1, &r, 1);
    crash16();
    return 0;
}
"#;

/// Runs crashprobe (argv[1..] after the probe path compiled in) and adds
/// its user+system microseconds to CPU_FILE (one line per handler).
const CPUWRAP: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {
    (void)argc;
    pid_t p = fork();
    if (p == 0) { argv[0] = PROBE; execv(PROBE, argv); _exit(127); }
    int st; struct rusage ru;
    if (wait4(p, &st, 0, &ru) < 0) return 1;
    long us = ru.ru_utime.tv_sec * 1000000L + ru.ru_utime.tv_usec + ru.ru_stime.tv_sec * 1000000L + ru.ru_stime.tv_usec;
    char line[64]; int n = snprintf(line, sizeof line, "%ld\n", us);
    int fd = open(CPU_FILE, O_WRONLY | O_APPEND | O_CREAT, 0600);
    if (fd >= 0) { (void)!write(fd, line, n); close(fd); }
    return WIFEXITED(st) ? WEXITSTATUS(st) : 1;
}
"#;

struct Sysctl(&'static str, String);
impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0, &self.1);
    }
}

struct KillChild(Child);
impl Drop for KillChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn gcc(dir: &Path, name: &str, src: &str, extra: &[&str]) -> Result<PathBuf, String> {
    let c = dir.join(format!("{name}.c"));
    std::fs::write(&c, src).map_err(|e| e.to_string())?;
    let exe = dir.join(name);
    util::run(Command::new("gcc").args(["-O2", "-g", "-pthread"]).args(extra).arg("-o").arg(&exe).arg(&c))?;
    Ok(exe)
}

/// A collector in `dir` with `extra` settings; its config file.
fn collector(bin: &Path, dir: &Path, extra: &str) -> Result<(KillChild, PathBuf), String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let conf = dir.join("c.conf");
    let sock = dir.join("sock");
    std::fs::write(
        &conf,
        format!(
            "[settings]\nsocket_path={}\nspool_dir={}\njournal_dir={}\nstate_dir={}\netc_dir={}\n\
             record_retention_enabled=true\nrate_limit_enabled=false\ncrash_third_party=unwind\n{extra}",
            sock.display(),
            dir.join("spool").display(),
            dir.join("journal").display(),
            dir.join("state").display(),
            dir.join("etc").display(),
        ),
    )
    .map_err(|e| e.to_string())?;
    let child = Command::new(bin)
        .arg("-f")
        .arg(&conf)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("start {}: {e}", bin.display()))?;
    let child = KillChild(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        if Instant::now() > deadline {
            return Err("the collector did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((child, conf))
}

/// Starts `exe` with no core size limit and waits for its ready byte (its
/// last write before it crashes): the child and that moment.
fn start_crasher(exe: &Path) -> Result<(Child, Instant), String> {
    let mut cmd = Command::new(exe);
    cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    // SAFETY: only setrlimit between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let r = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
            if libc::setrlimit(libc::RLIMIT_CORE, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    let mut out = child.stdout.take().ok_or("no stdout")?;
    let mut b = [0u8; 1];
    out.read_exact(&mut b).map_err(|e| format!("no ready byte: {e}"))?;
    Ok((child, Instant::now()))
}

/// One crash of `exe`: the time from its ready byte to being reaped.
fn crash_once(exe: &Path) -> Result<Duration, String> {
    let (mut child, t0) = start_crasher(exe)?;
    child.wait().map_err(|e| e.to_string())?;
    Ok(t0.elapsed())
}

fn percentile(v: &mut [Duration], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)].as_secs_f64() * 1e3
}

/// Records in the journal whose line holds `needle`.
fn journal_count(journal: &Path, needle: &str) -> usize {
    let text = std::fs::read_to_string(journal).unwrap_or_default();
    text.lines().filter(|l| l.contains(needle)).count()
}

/// The governor's counts of the storm's signature in `state_dir`: (full,
/// counted). (Crashes of other programs on the machine go through the same
/// core_pattern meanwhile: they are not the storm's.)
fn governor_counts(state_dir: &Path) -> (u64, u64) {
    let text = std::fs::read_to_string(state_dir.join("crash-signatures")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            f.get(6)?.starts_with(STORM_SIGNATURE).then_some(())?;
            Some((f.get(2)?.parse::<u64>().ok()?, f.get(3)?.parse::<u64>().ok()?))
        })
        .fold((0, 0), |(a, b), (x, y)| (a + x, b + y))
}

/// How the storm's signature begins.
const STORM_SIGNATURE: &str = "bug!storm_bug |";

/// Full records of the storm's signature in the journal.
fn journal_storm_records(journal: &Path) -> usize {
    let text = std::fs::read_to_string(journal).unwrap_or_default();
    text.lines().filter(|l| l.contains(&format!("Signature: {STORM_SIGNATURE}"))).count()
}

fn start_server(probe: &Path, sock: &Path, conf: &Path) -> Result<KillChild, String> {
    let child = Command::new(probe)
        .arg("--serve")
        .arg(sock)
        .arg("-f")
        .arg(conf)
        .env("RUST_LOG", "error")
        .spawn()
        .map_err(|e| e.to_string())?;
    let child = KillChild(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        if Instant::now() > deadline {
            return Err("crashprobe --serve did not start".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(child)
}

pub fn main(probe: &Path, collector_bin: &Path, args: &[String]) -> Result<(), String> {
    let secs: u64 = args.windows(2).find(|w| w[0] == "--storm-secs").and_then(|w| w[1].parse().ok()).unwrap_or(60);
    // Short paths: core_pattern holds at most 127 bytes.
    let dir = PathBuf::from("/tmp/tbs");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let bug = gcc(&dir, "bug", BUG, &[])?;
    let cpu_file = dir.join("cpu.txt");
    let probe_def = format!("-DPROBE=\"{}\"", probe.display());
    let cpu_def = format!("-DCPU_FILE=\"{}\"", cpu_file.display());
    let wrap = gcc(&dir, "w", CPUWRAP, &[&probe_def, &cpu_def])?;
    let threads = gcc(&dir, "t16", THREADS16, &[])?;
    let read = |p: &str| std::fs::read_to_string(p).map_err(|e| format!("read {p}: {e}"));
    let _pat = Sysctl("/proc/sys/kernel/core_pattern", read("/proc/sys/kernel/core_pattern")?);
    let _lim = Sysctl("/proc/sys/kernel/core_pipe_limit", read("/proc/sys/kernel/core_pipe_limit")?);
    std::fs::write("/proc/sys/kernel/core_pipe_limit", "16").map_err(|e| format!("core_pipe_limit (root?): {e}"))?;
    println!(
        "== crash storm: one bug, 50 crashes/s for {secs} s, default governor (3 full records per signature per hour)"
    );
    println!(
        "{:<22} {:>7} {:>6} {:>8} {:>14} {:>16} {:>16}",
        "mode", "crashes", "full", "counted", "crashprobe CPU", "repeat p50 (ms)", "repeat p99 (ms)"
    );
    // Pipe mode runs twice: the CPU wrapper is a process between the kernel
    // and crashprobe (one more exec before crashprobe starts, and it holds
    // the pipe until crashprobe exits), so the latencies come from a run
    // with crashprobe alone in the pattern and its CPU from a wrapped one.
    for mode in ["pipe", "pipe, CPU wrapper", "socket @@"] {
        let (_c, conf) = collector(collector_bin, &dir.join("live"), "crash_payload_version=1\n")?;
        let _ = std::fs::remove_file(&cpu_file);
        let mut server = None;
        if mode.starts_with("pipe") {
            let handler = if mode == "pipe" { probe } else { wrap.as_path() };
            let pattern = format!("|{} -P %P -F %F -d %d -t %t -s %s -f {}", handler.display(), conf.display());
            if pattern.len() > 127 {
                return Err(format!("core_pattern too long: {pattern}"));
            }
            std::fs::write("/proc/sys/kernel/core_pattern", &pattern).map_err(|e| e.to_string())?;
        } else {
            let sock = dir.join("live/crash.sock");
            server = Some(start_server(probe, &sock, &conf)?);
            std::fs::write("/proc/sys/kernel/core_pattern", format!("@@{}", sock.display()))
                .map_err(|e| e.to_string())?;
        }
        let cpu0 = server.as_ref().map_or(0.0, |s| crate::util::proc_cpu(s.0.id()).as_secs_f64());
        let (tx, rx) = mpsc::channel();
        let start = Instant::now();
        let mut n = 0usize;
        let mut handles = Vec::new();
        while start.elapsed() < Duration::from_secs(secs) {
            let (tx, bug) = (tx.clone(), bug.clone());
            let i = n;
            handles.push(std::thread::spawn(move || {
                let _ = tx.send((i, crash_once(&bug)));
            }));
            n += 1;
            // Finished crash threads are joined as the storm goes (3,000
            // unjoined threads' stacks made the bench itself slow to reap
            // its children late in a 60 s storm).
            let (done, live): (Vec<_>, Vec<_>) = handles.into_iter().partition(|h| h.is_finished());
            for h in done {
                let _ = h.join();
            }
            handles = live;
            let next = start + Duration::from_millis(20 * n as u64);
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        for h in handles {
            let _ = h.join();
        }
        drop(tx);
        let storm = start.elapsed().as_secs_f64();
        let mut repeats = Vec::new();
        for (i, r) in rx.iter() {
            let d = r?;
            if i >= 3 {
                repeats.push(d);
            }
        }
        let cpu = match &server {
            Some(s) => crate::util::proc_cpu(s.0.id()).as_secs_f64() - cpu0,
            None => {
                std::fs::read_to_string(&cpu_file)
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.trim().parse::<f64>().ok())
                    .sum::<f64>()
                    / 1e6
            }
        };
        // Every full record reaches the journal; the rest are counted.
        let journal = dir.join("live/journal/journal");
        let (mut full, mut counted) = governor_counts(&dir.join("live/state"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while (journal_storm_records(&journal) as u64) < full && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            (full, counted) = governor_counts(&dir.join("live/state"));
        }
        let journaled = journal_storm_records(&journal);
        let cpu_text = if mode == "pipe" { "(next row)".to_string() } else { format!("{:.1}%", cpu / storm * 100.0) };
        println!(
            "{:<22} {:>7} {:>6} {:>8} {:>14} {:>16.2} {:>16.2}{}",
            mode,
            n,
            journaled,
            counted,
            cpu_text,
            percentile(&mut repeats.clone(), 0.5),
            percentile(&mut repeats, 0.99),
            if full + counted == n as u64 { "" } else { "  (NOT every crash counted)" }
        );
        drop(server);
    }
    // 16 threads through @@, governor off: crash -> journaled record.
    let (_c, conf) =
        collector(collector_bin, &dir.join("live16"), "crash_signature_burst=-1\ncrash_payload_version=2\n")?;
    let sock = dir.join("live16/crash.sock");
    let _server = start_server(probe, &sock, &conf)?;
    std::fs::write("/proc/sys/kernel/core_pattern", format!("@@{}", sock.display())).map_err(|e| e.to_string())?;
    let journal = dir.join("live16/journal/journal");
    let mut lat = Vec::new();
    for i in 0..100usize {
        let (mut child, t0) = start_crasher(&threads)?;
        let deadline = t0 + Duration::from_secs(30);
        while journal_count(&journal, "t16!crash16 |") <= i {
            if Instant::now() > deadline {
                return Err(format!("crash {i} of the 16-thread program never reached the journal"));
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        lat.push(t0.elapsed());
        child.wait().map_err(|e| e.to_string())?;
    }
    println!();
    println!(
        "16-thread crash, @@ mode, crash -> journaled record over 100 crashes: p50 {:.1} ms, p99 {:.1} ms",
        percentile(&mut lat.clone(), 0.5),
        percentile(&mut lat, 0.99)
    );
    let _ = std::io::stdout().flush();
    Ok(())
}
