//! The black box benchmark (`cargo xtask bench blackbox`), run in release
//! mode. Phases, each printed with its target and ratio:
//!
//! - `export`: 1,000,000 synthetic entries (a realistic mix: an hour of
//!   process trees of services, cron jobs and operator shells, their exits,
//!   readings every 10 s, crash and warning records, fatal signals, an OOM
//!   kill, gaps, markers) turned into the HTML timeline by
//!   `blackbox_timeline::write_html` into a file (target <= 10 s), then
//!   that page opened in headless Chromium: navigation start to
//!   `window.timelineReady` (target <= 3 s). Median and best of 3 rounds.
//!
//! Usage: `bench_blackbox [PHASE...]` (all phases when none is named;
//! `BENCH_ONLY=PHASE` does the same as naming one).

use std::time::{Duration, Instant};

use blackbox_timeline::{write_html, PageMeta};
use telemetry::blackbox::{Entry, Event, TopProcess};

const PHASES: &[&str] = &["export"];
const ENTRIES: usize = 1_000_000;
const ROUNDS: usize = 3;
const WRITE_TARGET_S: f64 = 10.0;
const READY_TARGET_S: f64 = 3.0;

fn main() {
    let mut wanted: Vec<String> = std::env::args().skip(1).collect();
    if let Ok(only) = std::env::var("BENCH_ONLY") {
        wanted.extend(only.split(',').map(String::from));
    }
    if wanted.is_empty() {
        wanted = PHASES.iter().map(|p| p.to_string()).collect();
    }
    for phase in &wanted {
        let result = match phase.as_str() {
            "export" => export(),
            other => Err(format!("unknown phase {other:?}; known: {}", PHASES.join(", "))),
        };
        if let Err(e) = result {
            eprintln!("bench blackbox {phase}: {e}");
            std::process::exit(1);
        }
    }
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const COMMANDS: &[&[&str]] = &[
    &["/usr/bin/ls", "-la", "/var/log"],
    &["/usr/bin/grep", "-r", "timeout", "/etc/nginx"],
    &["/usr/bin/systemctl", "status", "nginx.service"],
    &["/usr/bin/journalctl", "-u", "nginx", "--since", "-10min"],
    &["/usr/bin/curl", "-s", "http://127.0.0.1:8080/health"],
    &["/usr/bin/ps", "aux"],
    &["/usr/bin/top", "-b", "-n", "1"],
    &["/usr/bin/tail", "-n", "200", "/var/log/syslog"],
    &["/usr/bin/df", "-h"],
    &["/usr/bin/ss", "-tlnp"],
    &["/usr/bin/cat", "/proc/meminfo"],
    &["/usr/bin/git", "log", "--oneline", "-n", "20"],
];
const SERVICE_CHILDREN: &[&[&str]] = &[
    &["/bin/sh", "-c", "/usr/lib/nginx/logrotate-hook"],
    &["/usr/bin/python3", "/opt/app/worker.py", "--queue", "jobs"],
    &["/usr/bin/gzip", "-9", "/var/log/app/access.log.1"],
    &["/usr/sbin/sendmail", "-t", "-oi"],
    &["/usr/bin/stat", "-c", "%s", "/srv/data/blob"],
];
const UNITS: &[&str] = &[
    "nginx.service",
    "postgresql.service",
    "cron.service",
    "app-worker@1.service",
    "app-worker@2.service",
    "telem-collector.service",
    "systemd-journald.service",
    "sshd.service",
];

/// `n` entries over an hour, in time order.
fn synthetic(n: usize) -> Vec<Entry> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let start: u64 = 1_764_000_000 * 1_000_000_000;
    let span: u64 = 3_600 * 1_000_000_000;
    let step = span / n as u64;
    let mut out = Vec::with_capacity(n);
    let mut next_pid: u32 = 10_000;
    // Running processes: (pid, ppid, comm, started ns, operator tty).
    let mut running: Vec<(u32, u32, String, u64, Option<String>)> = Vec::new();
    let shells: Vec<(u32, String)> = (0..6).map(|i| (5_000 + i, format!("pts/{i}"))).collect();
    let mut next_reading = 0u64;
    let mut recs = 0u64;
    for i in 0..n {
        let t = i as u64 * step + rng.below(step);
        let wall = start + t;
        let at = |event| Entry { mono_ns: 1_000_000_000_000 + t, wall_ns: wall, event };
        if t >= next_reading {
            next_reading += 10_000_000_000;
            let top = (0..5)
                .map(|k| TopProcess {
                    pid: 1000 + k,
                    comm: format!("worker{k}"),
                    cpu_pct: rng.below(1000) as f64 / 10.0,
                })
                .collect();
            out.push(at(Event::Reading {
                load1: rng.below(800) as f64 / 100.0,
                load5: 2.5,
                load15: 2.0,
                mem_total_kb: 16_000_000,
                mem_available_kb: 4_000_000 + rng.below(8_000_000),
                swap_total_kb: 2_000_000,
                swap_free_kb: 1_500_000,
                disk_used_bytes: 40 << 30,
                disk_total_bytes: 100 << 30,
                top,
            }));
            continue;
        }
        let r = rng.below(10_000);
        let event = if r < 5 {
            recs += 1;
            let crash = recs % 3 != 0;
            Event::Record {
                record_id: format!("{:032x}", rng.next()),
                event_id: format!("{:032x}", rng.next()),
                classification: if crash {
                    "org.clearlinux/crash/segv".into()
                } else {
                    "org.clearlinux/kernel/warning".into()
                },
                severity: if crash { 4 } else { 2 },
                pid: running.last().map(|p| p.0),
                payload: (0..30)
                    .map(|f| format!("#{f}  0x{:016x} in frame_{f} () at src/x.c:{}\n", rng.next(), f * 7))
                    .collect(),
            }
        } else if r < 7 {
            Event::FatalSignal { pid: next_pid - 1, tid: next_pid - 1, comm: "worker.py".into(), signal: 11 }
        } else if r < 8 {
            Event::Gap { lost: 1 + rng.below(500), reason: "ring buffer full (exec)".into() }
        } else if r < 5_000 || running.len() < 50 {
            // An exec: an operator command, a service's child, or a cron job.
            let pid = next_pid;
            next_pid += 1;
            let kind = rng.below(10);
            let (ppid, argv, tty, unit): (u32, Vec<String>, Option<String>, Option<String>) = if kind < 3 {
                let (sh, tty) = &shells[rng.below(shells.len() as u64) as usize];
                let c = COMMANDS[rng.below(COMMANDS.len() as u64) as usize];
                let mut a: Vec<String> = c.iter().map(|s| s.to_string()).collect();
                if rng.below(2) == 0 {
                    a.push(format!("/tmp/file{}", rng.below(5_000)));
                }
                (*sh, a, Some(tty.clone()), None)
            } else if kind < 8 {
                let c = SERVICE_CHILDREN[rng.below(SERVICE_CHILDREN.len() as u64) as usize];
                let mut a: Vec<String> = c.iter().map(|s| s.to_string()).collect();
                a.push(format!("--id={}", rng.below(100_000)));
                (2_000, a, None, Some(UNITS[rng.below(UNITS.len() as u64) as usize].to_string()))
            } else {
                // A tree under pid 1: a cron job, its children join it.
                let parent = running.iter().rev().take(8).find(|p| p.4.is_none()).map(|p| p.0).unwrap_or(1);
                let ppid = if rng.below(3) == 0 { 1 } else { parent };
                (
                    ppid,
                    vec!["/bin/sh".into(), "-c".into(), format!("run-parts /etc/cron.hourly/job{}", rng.below(50))],
                    None,
                    None,
                )
            };
            let exe = argv[0].clone();
            let comm = exe.rsplit('/').next().unwrap_or("?").to_string();
            running.push((pid, ppid, comm, t, tty.clone()));
            Event::Exec {
                pid,
                ppid,
                uid: if tty.is_some() { 1000 } else { 0 },
                operator: tty.is_some(),
                tty,
                exe,
                argv,
                cgroup: unit.as_ref().map(|u| format!("/system.slice/{u}")),
                unit,
            }
        } else {
            let k = rng.below(running.len().min(64) as u64) as usize;
            let idx = running.len() - 1 - k;
            let (pid, ppid, comm, started, _) = running.swap_remove(idx);
            let signal = (rng.below(200) == 0).then_some(9);
            Event::Exit {
                pid,
                ppid,
                comm,
                status: if signal.is_some() { None } else { Some((rng.below(20) == 0) as i32) },
                signal,
                core_dumped: false,
                run_ms: t.saturating_sub(started) / 1_000_000,
            }
        };
        out.push(at(event));
    }
    if let Some(e) = out.get_mut(n / 2) {
        e.event = Event::Oom { pid: 4242, comm: "java".into(), anon_rss_kb: 6_000_000 };
    }
    if let Some(e) = out.first_mut() {
        e.event = Event::Marker { text: "recording started".into() };
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn export() -> Result<(), String> {
    println!("== black box export: {ENTRIES} entries to one HTML page, then opened in headless Chromium");
    let t = Instant::now();
    let entries = synthetic(ENTRIES);
    let count = |f: fn(&Event) -> bool| entries.iter().filter(|e| f(&e.event)).count();
    println!(
        "generated {} entries in {:.2} s: {} exec ({} operator), {} exit, {} record, {} reading, {} gap",
        entries.len(),
        t.elapsed().as_secs_f64(),
        count(|e| matches!(e, Event::Exec { .. })),
        count(|e| matches!(e, Event::Exec { operator: true, .. })),
        count(|e| matches!(e, Event::Exit { .. })),
        count(|e| matches!(e, Event::Record { .. })),
        count(|e| matches!(e, Event::Reading { .. })),
        count(|e| matches!(e, Event::Gap { .. })),
    );
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let page = dir.path().join("timeline.html");
    let meta = PageMeta {
        recording_id: "bench".into(),
        label: Some("bench blackbox".into()),
        started_wall_ns: entries.first().map(|e| e.wall_ns),
        stopped_wall_ns: entries.last().map(|e| e.wall_ns),
        ..PageMeta::default()
    };
    let mut writes = Vec::new();
    for _ in 0..ROUNDS {
        let copy = entries.clone();
        let file = std::fs::File::create(&page).map_err(|e| format!("{}: {e}", page.display()))?;
        let t = Instant::now();
        write_html(copy, &meta, file).map_err(|e| format!("write_html: {e}"))?;
        writes.push(t.elapsed().as_secs_f64());
    }
    drop(entries);
    let size = std::fs::metadata(&page).map(|m| m.len()).unwrap_or(0);
    let (med, best) = (median(writes.clone()), writes.iter().copied().fold(f64::INFINITY, f64::min));
    println!(
        "write_html, {ENTRIES} entries -> {:.1} MB page: median {med:.2} s, best {best:.2} s of {ROUNDS} \
         (target <= {WRITE_TARGET_S} s; ratio {:.3})",
        size as f64 / 1e6,
        med / WRITE_TARGET_S
    );

    let mut chrome = e2e::chromium::Chromium::launch(1400, 900)?;
    let url = format!("file://{}", page.display());
    let mut ready = Vec::new();
    let mut wall = Vec::new();
    for round in 0..ROUNDS {
        // A fresh navigation each round (a query string defeats any cache).
        let t = Instant::now();
        chrome.navigate(&format!("{url}?round={round}"))?;
        let v = chrome.wait_for("window.timelineReady", Duration::from_secs(120))?;
        wall.push(t.elapsed().as_secs_f64());
        ready.push(v.as_f64().ok_or("timelineReady is not a number")? / 1000.0);
    }
    let rows = chrome.eval("document.querySelectorAll('#list-rows .row').length")?;
    let lanes = chrome.eval("document.getElementById('lane-count').textContent")?;
    let errors = chrome.errors();
    if !errors.is_empty() {
        return Err(format!("the page reported errors: {errors:?}"));
    }
    let med = median(ready.clone());
    println!(
        "page interactive (navigation start -> timelineReady): median {med:.2} s, best {:.2} s of {ROUNDS} \
         (target <= {READY_TARGET_S} s; ratio {:.3}); seen from the driver {:.2} s; {lanes}, {rows} rows in the DOM",
        ready.iter().copied().fold(f64::INFINITY, f64::min),
        med / READY_TARGET_S,
        median(wall),
    );
    // What it looks like, beside the test's screenshot.
    let shot = chrome.screenshot()?;
    let target = std::env::current_exe()
        .ok()
        .and_then(|p| p.ancestors().nth(3).map(std::path::Path::to_path_buf))
        .ok_or("no target dir")?;
    let png = target.join("blackbox-bench.png");
    std::fs::write(&png, shot).map_err(|e| format!("{}: {e}", png.display()))?;
    println!("screenshot: {}", png.display());
    // A filter over all million events, as a person types it.
    chrome.click_on("#filter")?;
    let t = Instant::now();
    chrome.type_text("cron.hourly/job7")?;
    chrome.wait_for("document.getElementById('lane-count').textContent.includes('match')", Duration::from_secs(60))?;
    println!(
        "filter typed and applied over {ENTRIES} events: {:.2} s (16 key presses, 120 ms debounce)",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
