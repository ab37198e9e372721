//! Bursts of records sent the way the original C library sends them, by
//! the `telem-legacy-burst` binary of this package (N processes x M
//! one-record connections: blocking connect, one legacy frame, close, no
//! reply read), and reading its report.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::bin;

/// The payload of record `n` of sending process `proc`:
/// `<prefix>-<proc>-<n>-` padded with `x` to `size` bytes.
pub fn payload(prefix: &str, proc: usize, n: u64, size: usize) -> String {
    let mut p = format!("{prefix}-{proc}-{n}-");
    if p.len() < size {
        p.extend(std::iter::repeat_n('x', size - p.len()));
    }
    p
}

/// The `(proc, n)` of a payload made by [`payload`] with `prefix`.
pub fn parse_payload(prefix: &str, body: &[u8]) -> Option<(usize, u64)> {
    let head = body.get(..body.len().min(64))?;
    let s = String::from_utf8_lossy(head);
    let rest = s.strip_prefix(prefix)?.strip_prefix('-')?;
    let mut it = rest.splitn(3, '-');
    let proc = it.next()?.parse().ok()?;
    let n = it.next()?.parse().ok()?;
    it.next()?;
    Some((proc, n))
}

/// What to send.
#[derive(Debug, Clone)]
pub struct Burst {
    pub procs: usize,
    pub records: u64,
    /// Payload bytes per record.
    pub size: usize,
    pub prefix: String,
    pub class: String,
    /// Each sending process stops after this long.
    pub timeout: Duration,
}

impl Default for Burst {
    /// Issue #12's burst: 8 processes x 12,000 records of 1 KiB.
    fn default() -> Self {
        Burst {
            procs: 8,
            records: 12_000,
            size: 1024,
            prefix: "burst".into(),
            class: "org.test/burst/legacy".into(),
            timeout: Duration::from_secs(90),
        }
    }
}

impl Burst {
    pub fn total(&self) -> u64 {
        self.procs as u64 * self.records
    }
}

/// The generator's summary line, parsed.
#[derive(Debug, Clone, Default)]
pub struct BurstReport {
    /// Records the burst was to send (procs x records).
    pub total: u64,
    /// Records fully written to a connection (what a C probe counts as sent).
    pub sent: u64,
    /// `total - sent`: lost at the sender (connect or write failed, or
    /// not attempted before the timeout).
    pub failed: u64,
    pub connect_errors: u64,
    pub write_errors: u64,
    pub not_attempted: u64,
    pub unreported_procs: u64,
    /// Seconds from the first process started to the last one done.
    pub elapsed: f64,
    /// Records sent per second.
    pub rate: f64,
    /// Everything the generator printed (a line per process, the summary).
    pub output: String,
}

/// Parses `key=value` from the generator's summary line.
pub fn parse_report(output: &str) -> Option<BurstReport> {
    let line = output.lines().rev().find(|l| l.starts_with("telem-legacy-burst:"))?;
    let f = |k: &str| -> Option<f64> {
        line.split_whitespace().find_map(|w| w.strip_prefix(k)?.strip_prefix('=')?.parse().ok())
    };
    Some(BurstReport {
        total: f("records")? as u64,
        sent: f("sent")? as u64,
        failed: f("failed")? as u64,
        connect_errors: f("connect_errors")? as u64,
        write_errors: f("write_errors")? as u64,
        not_attempted: f("not_attempted")? as u64,
        unreported_procs: f("unreported_procs").unwrap_or(0.0) as u64,
        elapsed: f("elapsed")?,
        rate: f("rate")?,
        output: output.to_string(),
    })
}

/// Runs `telem-legacy-burst` against `socket` and waits for it.
pub fn run(socket: &Path, b: &Burst) -> BurstReport {
    let out = Command::new(bin("telem-legacy-burst"))
        .arg("--socket")
        .arg(socket)
        .args(["--procs", &b.procs.to_string(), "--records", &b.records.to_string(), "--size", &b.size.to_string()])
        .args(["--prefix", &b.prefix, "--class", &b.class, "--timeout", &b.timeout.as_secs().max(1).to_string()])
        .output()
        .expect("run telem-legacy-burst");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    parse_report(&text).unwrap_or_else(|| {
        panic!("telem-legacy-burst gave no summary ({}):\n{text}\n{}", out.status, String::from_utf8_lossy(&out.stderr))
    })
}

/// How often each record of a burst arrived in `bodies` (payloads made by
/// [`payload`] with `prefix`): (distinct records seen, records seen more
/// than once, bodies that are not from the burst).
pub fn tally<'a>(prefix: &str, bodies: impl IntoIterator<Item = &'a [u8]>) -> Tally {
    let mut seen: HashMap<(usize, u64), u32> = HashMap::new();
    let mut foreign = 0;
    for b in bodies {
        match parse_payload(prefix, b) {
            Some(k) => *seen.entry(k).or_default() += 1,
            None => foreign += 1,
        }
    }
    let duplicated = seen.values().filter(|&&c| c > 1).count() as u64;
    Tally { distinct: seen.len() as u64, duplicated, foreign, seen }
}

/// See [`tally`].
#[derive(Debug, Default)]
pub struct Tally {
    pub distinct: u64,
    /// Records that arrived more than once.
    pub duplicated: u64,
    /// Bodies that are not payloads of this burst.
    pub foreign: u64,
    pub seen: HashMap<(usize, u64), u32>,
}

impl Tally {
    /// Which of the burst's records never arrived, per sending process
    /// (counts), for failure messages.
    pub fn missing_per_proc(&self, b: &Burst) -> Vec<(usize, u64)> {
        (0..b.procs)
            .map(|p| (p, (0..b.records).filter(|n| !self.seen.contains_key(&(p, *n))).count() as u64))
            .filter(|(_, m)| *m > 0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse_back() {
        let p = payload("burst", 7, 11_999, 1024);
        assert_eq!(p.len(), 1024);
        assert_eq!(parse_payload("burst", p.as_bytes()), Some((7, 11_999)));
        assert_eq!(parse_payload("poison", p.as_bytes()), None);
        let r = parse_report("child=0 sent=1\ntelem-legacy-burst: procs=1 records=2 sent=1 failed=1 connect_errors=1 write_errors=0 not_attempted=0 unreported_procs=0 elapsed=0.5 rate=2\n").unwrap();
        assert_eq!((r.total, r.sent, r.failed, r.connect_errors), (2, 1, 1, 1));
    }
}
