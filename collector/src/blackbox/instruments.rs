//! Instrument readings, every 10 s while recording: load averages
//! (/proc/loadavg), memory and swap (/proc/meminfo), disk use of the file
//! system of `state_dir` (statvfs), and the five processes that used the
//! most CPU since the last reading (utime + stime deltas of /proc/*/stat).
//! A file that cannot be read gives zeros, never a missing reading.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use telemetry::blackbox::{Event, TopProcess};

/// Processes in a reading's top list.
pub const TOP: usize = 5;

/// The previous CPU totals, for the deltas.
pub struct Instruments {
    prev: HashMap<u32, u64>,
    at: Instant,
    ticks_per_sec: f64,
}

impl Default for Instruments {
    fn default() -> Self {
        Self::new()
    }
}

impl Instruments {
    /// Takes the CPU baseline now.
    pub fn new() -> Instruments {
        // SAFETY: sysconf has no memory effects.
        let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let mut i = Instruments {
            prev: HashMap::new(),
            at: Instant::now(),
            ticks_per_sec: if tck > 0 { tck as f64 } else { 100.0 },
        };
        i.baseline();
        i
    }

    /// Takes the CPU baseline again (the next reading's top list covers
    /// the time from now).
    fn baseline(&mut self) {
        self.prev = cpu_ticks().into_iter().map(|(pid, (t, _))| (pid, t)).collect();
        self.at = Instant::now();
    }

    /// A reading now.
    pub fn read(&mut self, state_dir: &Path) -> Event {
        let (load1, load5, load15) = loadavg(&std::fs::read_to_string("/proc/loadavg").unwrap_or_default());
        let meminfo_text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem = meminfo(&meminfo_text);
        let (disk_used_bytes, disk_total_bytes) = disk(state_dir);
        let now = cpu_ticks();
        let secs = self.at.elapsed().as_secs_f64().max(1e-3);
        let mut top: Vec<TopProcess> = now
            .iter()
            .filter_map(|(pid, (t, comm))| {
                let d = t.saturating_sub(self.prev.get(pid).copied().unwrap_or(0));
                (d > 0).then(|| TopProcess {
                    pid: *pid,
                    comm: comm.clone(),
                    cpu_pct: (d as f64 / self.ticks_per_sec / secs * 1000.0).round() / 10.0,
                })
            })
            .collect();
        top.sort_by(|a, b| b.cpu_pct.total_cmp(&a.cpu_pct).then(a.pid.cmp(&b.pid)));
        top.truncate(TOP);
        self.prev = now.into_iter().map(|(pid, (t, _))| (pid, t)).collect();
        self.at = Instant::now();
        Event::Reading {
            load1,
            load5,
            load15,
            mem_total_kb: mem.get("MemTotal").copied().unwrap_or(0),
            mem_available_kb: mem.get("MemAvailable").copied().unwrap_or(0),
            swap_total_kb: mem.get("SwapTotal").copied().unwrap_or(0),
            swap_free_kb: mem.get("SwapFree").copied().unwrap_or(0),
            disk_used_bytes,
            disk_total_bytes,
            top,
        }
    }
}

/// The three load averages of /proc/loadavg.
pub fn loadavg(text: &str) -> (f64, f64, f64) {
    let mut w = text.split_whitespace().map(|v| v.parse::<f64>().unwrap_or(0.0));
    (w.next().unwrap_or(0.0), w.next().unwrap_or(0.0), w.next().unwrap_or(0.0))
}

/// The `kB` values of /proc/meminfo by name.
pub fn meminfo(text: &str) -> HashMap<&str, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim(), v.split_whitespace().next()?.parse().ok()?))
        })
        .collect()
}

/// Bytes used and total of the file system holding `path`.
fn disk(path: &Path) -> (u64, u64) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return (0, 0) };
    // SAFETY: statvfs writes the zeroed local struct; `c` is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return (0, 0);
    }
    let f = st.f_frsize as u64;
    let total = st.f_blocks as u64 * f;
    (total.saturating_sub(st.f_bfree as u64 * f), total)
}

/// utime + stime (clock ticks) and comm of a /proc/PID/stat line.
pub fn parse_stat(line: &str) -> Option<(u64, String)> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let comm = line.get(open + 1..close)?.to_string();
    let mut rest = line.get(close + 1..)?.split_whitespace();
    // Fields after comm: state (3) ... utime (14), stime (15).
    let utime: u64 = rest.nth(11)?.parse().ok()?;
    let stime: u64 = rest.next()?.parse().ok()?;
    Some((utime + stime, comm))
}

/// Every process's CPU ticks and comm.
fn cpu_ticks() -> HashMap<u32, (u64, String)> {
    let mut out = HashMap::new();
    let Ok(rd) = std::fs::read_dir("/proc") else { return out };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if let Some(v) = std::fs::read_to_string(e.path().join("stat")).ok().as_deref().and_then(parse_stat) {
            out.insert(pid, v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse() {
        assert_eq!(loadavg("0.52 0.58 0.59 2/345 6789\n"), (0.52, 0.58, 0.59));
        let m = meminfo("MemTotal:       16314124 kB\nMemAvailable:    9000000 kB\nSwapTotal: 0 kB\n");
        assert_eq!(m.get("MemTotal"), Some(&16_314_124));
        assert_eq!(m.get("SwapTotal"), Some(&0));
        let stat = "1234 (my (odd) prog) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 100 0 0";
        assert_eq!(parse_stat(stat), Some((300, "my (odd) prog".into())));
    }

    #[test]
    fn a_reading_of_this_host_has_memory_and_disk() {
        let mut i = Instruments::new();
        // Burn a little CPU so this process shows up.
        let mut x = 0u64;
        let t = Instant::now();
        while t.elapsed().as_millis() < 200 {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let Event::Reading { mem_total_kb, disk_total_bytes, top, .. } = i.read(Path::new("/")) else { panic!() };
        assert!(mem_total_kb > 0 && disk_total_bytes > 0);
        // This process burned CPU, so the list is not empty (whether it is
        // among the top 5 depends on what else runs on the machine).
        assert!(!top.is_empty() && top.len() <= TOP, "{top:?}");
        assert!(top.windows(2).all(|w| w[0].cpu_pct >= w[1].cpu_pct), "{top:?}");
    }
}
