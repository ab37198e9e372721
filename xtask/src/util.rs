//! Running commands from the workspace root.

use std::path::PathBuf;
use std::process::Command;

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// Runs `cmd`, failing with its command line when it fails.
pub fn run(cmd: &mut Command) -> Result<(), String> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().map_err(|e| format!("cannot start {shown}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed with {status}"))
    }
}

/// Runs `cmd` quietly; its stdout when it succeeds, else the last line of
/// its stderr (or how it failed to start).
pub fn output(cmd: &mut Command) -> Result<String, String> {
    match cmd.output() {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            Err(err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("failed").trim().to_string())
        }
        Err(e) => Err(format!("cannot start {cmd:?}: {e}")),
    }
}

/// Whether `cmd` runs and succeeds, quietly.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).status().is_ok_and(|s| s.success())
}

pub fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// `cargo ARGS` in the workspace root.
pub fn cargo(args: &[&str]) -> Result<(), String> {
    run(Command::new(cargo_bin()).args(args).current_dir(root()))
}

/// Runs one cargo-fuzz target for `secs` seconds on the stable toolchain
/// (cargo-fuzz's -Z flags are allowed through RUSTC_BOOTSTRAP).
pub fn fuzz(dir: &str, target: &str, secs: u64) -> Result<(), String> {
    let fuzz_dir = root().join(dir);
    let corpus = fuzz_dir.join("fuzz/corpus").join(target);
    std::fs::create_dir_all(&corpus).map_err(|e| format!("create {}: {e}", corpus.display()))?;
    let seeds = fuzz_dir.join("fuzz/seeds").join(target);
    let mut cmd = Command::new(cargo_bin());
    cmd.current_dir(&fuzz_dir).env("RUSTC_BOOTSTRAP", "1").args(["fuzz", "run", target, "--"]).arg(&corpus);
    if seeds.is_dir() {
        cmd.arg(&seeds);
    }
    cmd.arg(format!("-max_total_time={secs}")).arg("-rss_limit_mb=2048").arg("-max_len=70000");
    // libFuzzer is chatty: keep its output in a log, show the end of it.
    let logs = root().join("target/fuzz-logs");
    std::fs::create_dir_all(&logs).map_err(|e| format!("create {}: {e}", logs.display()))?;
    let log = logs.join(format!("{}-{target}.log", dir.replace('/', "_")));
    let file = std::fs::File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
    let err = file.try_clone().map_err(|e| e.to_string())?;
    cmd.stdout(file).stderr(err);
    let result = run(&mut cmd);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let keep = if result.is_ok() { 2 } else { 60 };
    for l in &lines[lines.len().saturating_sub(keep)..] {
        println!("  {l}");
    }
    result.map_err(|e| format!("{e} (full log: {})", log.display()))
}

/// Runs `cargo ARGS` (a `cargo test`), echoing its output, and adds up the
/// `test result:` lines: (passed, failed).
pub fn cargo_test_counted(args: &[&str]) -> Result<(u64, u64), String> {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(cargo_bin())
        .args(args)
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start cargo {args:?}: {e}"))?;
    let (mut passed, mut failed) = (0u64, 0u64);
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            println!("{line}");
            if let Some(rest) = line.trim().strip_prefix("test result: ") {
                passed += count_before(rest, " passed");
                failed += count_before(rest, " failed");
            }
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("cargo {} failed ({passed} passed, {failed} failed)", args.join(" ")));
    }
    Ok((passed, failed))
}

/// The number just before `label` in `text` ("ok. 12 passed; 0 failed").
fn count_before(text: &str, label: &str) -> u64 {
    text.find(label)
        .and_then(|i| text[..i].rsplit(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU time of a live process (`/proc/PID/stat`; zero when
/// it cannot be read).
pub fn proc_cpu(pid: u32) -> std::time::Duration {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (the 12th and 13th after the comm).
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    std::time::Duration::from_secs_f64((ticks(11) + ticks(12)) as f64 / hz)
}
