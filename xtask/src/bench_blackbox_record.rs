//! `cargo xtask bench blackbox record`: the black box recording under
//! 1,000 exec/s for 60 s (`--quick`: 15 s), against the same load not
//! recording, in one run: the real collector and the real eventprobe
//! (eBPF), `/bin/true` spawned at a steady 1,000 per second.
//!
//! Prints: execs made and recorded (every one must be: no event lost, no
//! gap), and the CPU (user + system) of eventprobe + collector in each
//! phase; the added CPU as a percentage of one vCPU, against the target of
//! 5%.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{cargo_bin, proc_cpu, root, run};

/// Execs per second of the load.
const RATE: u64 = 1_000;
/// Target: added CPU of eventprobe + collector while recording, % of one vCPU.
const TARGET_PCT: f64 = 5.0;

struct Daemons {
    collector: Child,
    eventprobe: Child,
    conf: PathBuf,
    telemctl: PathBuf,
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for c in [&mut self.eventprobe, &mut self.collector] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Daemons {
    fn start(dir: &Path, release: &Path) -> Result<Daemons, String> {
        let socket = dir.join("telem.sock");
        let conf = dir.join("telemetrics.conf");
        std::fs::write(
            &conf,
            format!(
                "[settings]\nsocket_path={}\nspool_dir={}\njournal_dir={}\nstate_dir={}\netc_dir={}\n",
                socket.display(),
                dir.join("spool").display(),
                dir.join("journal").display(),
                dir.join("state").display(),
                dir.join("etc").display()
            ),
        )
        .map_err(|e| format!("write {}: {e}", conf.display()))?;
        let log = std::fs::File::create(dir.join("collector.log")).map_err(|e| e.to_string())?;
        let collector = Command::new(release.join("telem-collector"))
            .arg("-f")
            .arg(&conf)
            .env("RUST_LOG", "warn")
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start telem-collector: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if Instant::now() > deadline {
                return Err("the collector did not listen within 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let elog = std::fs::File::create(dir.join("eventprobe.log")).map_err(|e| e.to_string())?;
        let mut eventprobe = Command::new(release.join("eventprobe"))
            .arg("--socket")
            .arg(&socket)
            .arg("-f")
            .arg(&conf)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(elog)
            .spawn()
            .map_err(|e| format!("start eventprobe: {e}"))?;
        let out = eventprobe.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line).map_err(|e| e.to_string())?;
        let d = Daemons { collector, eventprobe, conf, telemctl: release.join("telemctl") };
        if !line.contains("ready") {
            let log = std::fs::read_to_string(dir.join("eventprobe.log")).unwrap_or_default();
            return Err(format!("eventprobe did not start: {log}"));
        }
        Ok(d)
    }

    fn telemctl(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.telemctl)
            .arg("-f")
            .arg(&self.conf)
            .args(args)
            .output()
            .map_err(|e| format!("telemctl: {e}"))?;
        if !out.status.success() {
            return Err(format!("telemctl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn cpu(&self) -> Duration {
        proc_cpu(self.collector.id()) + proc_cpu(self.eventprobe.id())
    }
}

/// Spawns `/bin/true ARG` at [`RATE`] per second for `secs`; the pids.
fn load(secs: u64, arg: &str) -> Result<Vec<u32>, String> {
    let n = secs * RATE;
    let mut pids = Vec::with_capacity(n as usize);
    let mut live: Vec<Child> = Vec::new();
    let t0 = Instant::now();
    for i in 0..n {
        let at = t0 + Duration::from_micros(i * 1_000_000 / RATE);
        if let Some(d) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        let c = Command::new("/bin/true")
            .arg(arg)
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn /bin/true: {e}"))?;
        pids.push(c.id());
        live.push(c);
        live.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
    }
    for mut c in live {
        let _ = c.wait();
    }
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    println!("  load: {n} execs in {:.1} s ({rate:.0}/s)", t0.elapsed().as_secs_f64());
    Ok(pids)
}

/// CPU of the daemons over one phase of `secs` (and 2 s to drain).
fn phase(d: &Daemons, secs: u64, arg: &str) -> Result<(Vec<u32>, f64), String> {
    let (c0, t0) = (d.cpu(), Instant::now());
    let pids = load(secs, arg)?;
    std::thread::sleep(Duration::from_secs(2));
    let pct = (d.cpu() - c0).as_secs_f64() / t0.elapsed().as_secs_f64() * 100.0;
    Ok((pids, pct))
}

pub fn main(quick: bool) -> Result<(), String> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("bench blackbox record needs root (eventprobe loads eBPF programs)".into());
    }
    crate::ebpf::build()?;
    run(Command::new(cargo_bin())
        .args(["build", "--quiet", "--release", "-p", "eventprobe", "-p", "telem-collector", "--bins"])
        .current_dir(root()))?;
    let release = crate::install::target_dir().join("release");
    let secs = if quick { 15 } else { 60 };
    let dir = std::env::temp_dir().join(format!("telem-bench-blackbox-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let result = bench(&dir, &release, secs);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn bench(dir: &Path, release: &Path, secs: u64) -> Result<(), String> {
    let d = Daemons::start(dir, release)?;
    println!("blackbox record: {RATE} execs/s of /bin/true for {secs} s, not recording then recording");
    let (_, off) = phase(&d, secs, "bb-off")?;
    d.telemctl(&["blackbox", "start", "--label", "bench"])?;
    std::thread::sleep(Duration::from_secs(1));
    let (pids, on) = phase(&d, secs, "bb-on")?;
    d.telemctl(&["blackbox", "stop"])?;
    // `list --json`: one object per line.
    let list = d.telemctl(&["blackbox", "list", "--json"])?;
    let id = list
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|r| r["label"] == "bench")
        .and_then(|r| r["id"].as_str().map(String::from))
        .ok_or_else(|| format!("the recording is not listed: {list}"))?;
    let file = dir.join("export.jsonl");
    d.telemctl(&["blackbox", "export", &id, "--json", &file.to_string_lossy()])?;
    let text = std::fs::read_to_string(&file).map_err(|e| format!("read {}: {e}", file.display()))?;
    // Pids are reused within a minute at 1,000 execs/s: count the entries,
    // and match them to the load by pid as a multiset.
    let mut spawned: std::collections::HashMap<u32, i64> = std::collections::HashMap::new();
    for p in &pids {
        *spawned.entry(*p).or_default() += 1;
    }
    let (mut execs, mut exits, mut gaps, mut lost_in_gaps) = (0u64, 0u64, 0u64, 0u64);
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("export line {line:?}: {e}"))?;
        match v["kind"].as_str() {
            Some("exec") if v["argv"].as_array().is_some_and(|a| a.iter().any(|x| x == "bb-on")) => {
                execs += 1;
                *spawned.entry(v["pid"].as_u64().unwrap_or(0) as u32).or_default() -= 1;
            }
            Some("exit") if v["comm"] == "true" => exits += 1,
            Some("gap") => {
                gaps += 1;
                lost_in_gaps += v["lost"].as_u64().unwrap_or(0);
            }
            _ => {}
        }
    }
    // Execs of the load with no entry (a pid seen fewer times than spawned).
    let missing: i64 = spawned.values().filter(|&&n| n > 0).sum();
    println!(
        "  recorded: {} of {} execs of the load ({missing} missing), {exits} exits of `true`, {gaps} gap entries ({lost_in_gaps} events lost); {} entries, {} bytes exported",
        execs,
        pids.len(),
        text.lines().count(),
        text.len()
    );
    let added = on - off;
    println!(
        "  CPU of eventprobe + collector: not recording {off:.2}% of one vCPU, recording {on:.2}%; added {added:.2}% (target <= {TARGET_PCT}%: ratio {:.2}) {}",
        added / TARGET_PCT,
        if added <= TARGET_PCT && missing == 0 && gaps == 0 { "met" } else { "NOT MET" }
    );
    if missing > 0 || gaps > 0 {
        return Err(format!("{missing} execs missing and {gaps} gaps in the recording"));
    }
    Ok(())
}
