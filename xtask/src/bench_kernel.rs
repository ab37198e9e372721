//! `cargo xtask bench kernel`: klogscanner and the oops parser.
//!
//! 1. The oops parser's rate on one core (`probes/kernel/examples/bench_parse.rs`).
//! 2. As root: a real collector and klogscanner (release builds); 1,000
//!    distinct WARNING reports (16 lines each, written to `/dev/kmsg` one
//!    message per line, as the kernel prints them) at 1 kHz; how many reached
//!    the collector's journal (target: all), klogscanner's CPU for the burst,
//!    and its CPU while following an idle log for 10 s (target: under 0.5 %
//!    of a vCPU).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util;

const REPORTS: usize = 1000;

pub fn main(_args: &[String]) -> Result<(), String> {
    crate::install::ensure_apt(crate::install::BUILD_PACKAGES)?;
    util::cargo(&["build", "--release", "-p", "kernel-probes", "-p", "telem-collector", "--bins"])?;
    println!("== oops parser, one core");
    util::cargo(&["run", "--quiet", "--release", "-p", "kernel-probes", "--example", "bench_parse"])?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("klogscanner burst and idle CPU: need root (writes to /dev/kmsg); skipped");
        return Ok(());
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| util::root().join("target"));
    live(&target.join("release"))
}

/// A child killed (SIGTERM, then waited for) when dropped.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    let after = stat.rsplit_once(')').map(|(_, a)| a).ok_or("bad stat")?;
    let f: Vec<&str> = after.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).ok_or("bad stat field");
    Ok(n(11)? + n(12)?)
}

fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as f64
}

fn letters(mut n: usize) -> String {
    let mut s = Vec::new();
    loop {
        s.push(b'a' + (n % 26) as u8);
        n /= 26;
        if n == 0 {
            break;
        }
    }
    s.reverse();
    String::from_utf8(s).unwrap_or_default()
}

fn report(tag: &str, i: usize) -> Vec<String> {
    let f = letters(i);
    let mut v = vec![
        format!("WARNING: CPU: 0 PID: 7 at drivers/{tag}/{f}.c:1 fn_{f}+0x1/0x2 [benchmod]"),
        "Modules linked in: benchmod(O) xfs".into(),
        "CPU: 0 UID: 0 PID: 7 Comm: kworker/0:1 Tainted: G O 6.18.44 #1".into(),
        format!("RIP: 0010:fn_{f}+0x1/0x2 [benchmod]"),
        "RSP: 0018:ffffb4a1c06dfc38 EFLAGS: 00010246".into(),
        "RAX: 0000000000000000 RBX: ffff8a0e4258f3a0 RCX: 0000000000000000".into(),
        "Call Trace:".into(),
        " <TASK>".into(),
        " ? __warn+0x7d/0x130".into(),
        format!(" fn_{f}+0x1/0x2 [benchmod]"),
        " process_one_work+0x1/0x2".into(),
        " worker_thread+0x1/0x2".into(),
        " kthread+0x1/0x2".into(),
        " ret_from_fork+0x1/0x2".into(),
        " </TASK>".into(),
    ];
    v.push(format!("---[ end trace {tag} ]---"));
    v
}

fn live(bins: &Path) -> Result<(), String> {
    let dir = std::env::temp_dir().join("telemetrics-bench-kernel");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let sock = dir.join("sock");
    let conf = dir.join("t.conf");
    std::fs::write(
        &conf,
        format!(
            "[settings]\nsocket_path={}\nspool_dir={}\njournal_dir={}\nstate_dir={}\netc_dir={}\n\
             record_retention_enabled=true\nrate_limit_enabled=false\nklog_facilities=kern,user\n",
            sock.display(),
            dir.join("spool").display(),
            dir.join("journal").display(),
            dir.join("state").display(),
            dir.join("etc").display(),
        ),
    )
    .map_err(|e| e.to_string())?;
    let spawn = |exe: &str| {
        Command::new(bins.join(exe))
            .arg("-f")
            .arg(&conf)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .map(Proc)
            .map_err(|e| format!("start {exe}: {e}"))
    };
    let _collector = spawn("telem-collector")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        if Instant::now() > deadline {
            return Err("the collector did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let scanner = spawn("klogscanner")?;
    let pid = scanner.0.id();
    // Let it read what the log holds now, then measure.
    std::thread::sleep(Duration::from_secs(2));
    let mut tag_bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut tag_bytes))
        .map_err(|e| e.to_string())?;
    let tag: String = tag_bytes.iter().map(|b| (b'a' + b % 26) as char).collect();
    let reports: Vec<Vec<String>> = (0..REPORTS).map(|i| report(&tag, i)).collect();
    let lines = reports[0].len();
    let c0 = cpu_ticks(pid)?;
    let t0 = Instant::now();
    for (i, r) in reports.iter().enumerate() {
        // One report per millisecond.
        let due = t0 + Duration::from_micros(1000 * i as u64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        for l in r {
            // One open per message: the kernel rate-limits each open file.
            let mut f = std::fs::OpenOptions::new().write(true).open("/dev/kmsg").map_err(|e| e.to_string())?;
            f.write_all(format!("<15>{l}\n").as_bytes()).map_err(|e| format!("write /dev/kmsg: {e}"))?;
        }
    }
    let written = t0.elapsed();
    let journal = dir.join("journal/journal");
    let needle = format!("at drivers/{tag}/");
    let deadline = Instant::now() + Duration::from_secs(60);
    let count = |text: &str| text.lines().filter(|l| l.contains(&needle)).count();
    let got = loop {
        let n = count(&std::fs::read_to_string(&journal).unwrap_or_default());
        if n >= REPORTS || Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let all_in = t0.elapsed();
    let burst_cpu = (cpu_ticks(pid)? - c0) as f64 / ticks_per_sec();
    let text = std::fs::read_to_string(&journal).unwrap_or_default();
    let overruns = text.lines().filter(|l| l.contains("org.clearlinux/kernel/overrun")).count();
    println!("== klogscanner, {REPORTS} WARNING reports of {lines} lines written to /dev/kmsg at 1 kHz");
    println!(
        "written in {:.2} s; {got} of {REPORTS} recorded ({} missed; target 0), all in after {:.2} s; \
         overrun records: {overruns}; klogscanner CPU for the burst: {burst_cpu:.2} s ({:.0} µs per report)",
        written.as_secs_f64(),
        REPORTS.saturating_sub(got),
        all_in.as_secs_f64(),
        burst_cpu * 1e6 / REPORTS as f64
    );
    let idle_secs = 10;
    let c1 = cpu_ticks(pid)?;
    std::thread::sleep(Duration::from_secs(idle_secs));
    let idle = (cpu_ticks(pid)? - c1) as f64 / ticks_per_sec();
    println!(
        "klogscanner following an idle log: {:.3} % of a vCPU over {idle_secs} s (target < 0.5 %)",
        idle * 100.0 / idle_secs as f64
    );
    if got < REPORTS {
        return Err(format!("{} reports missed", REPORTS - got));
    }
    Ok(())
}
