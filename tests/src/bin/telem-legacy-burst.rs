//! `telem-legacy-burst`: a load generator that sends records the way the
//! original C libtelemetry does, from several processes at once.
//!
//! ```text
//! telem-legacy-burst --socket PATH [--procs 8] [--records 12000] [--size 1024]
//!                    [--prefix burst] [--class org.test/burst/legacy] [--timeout 100]
//! ```
//!
//! It starts `--procs` copies of itself; each sends `--records` records, and
//! for each record: a blocking `connect()` to the unix socket, one write of
//! one legacy frame (`telemetry::wire::legacy`, the library's byte format),
//! close, never reading a reply. A connect or write that fails loses that
//! record, as it does for a C probe; it is counted, not retried.
//!
//! Payloads are unique and checkable: `<prefix>-<proc>-<n>-` padded with
//! `x` to `--size` bytes.
//!
//! Bounded: each process stops at `--timeout` seconds (a watchdog reports its
//! counts and exits even if a `connect()` blocks). The last line of the
//! output is the summary, `key=value` words:
//!
//! ```text
//! telem-legacy-burst: procs=8 records=96000 sent=96000 failed=0 connect_errors=0 write_errors=0 not_attempted=0 elapsed=3.512 rate=27335
//! ```
//!
//! Exit status 0 when every record was sent, 2 when some were not (the
//! summary says which), 1 on a usage error or a child that did not report.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::burst::payload;
use telemetry::wire::legacy;
use telemetry::{Classification, Payload, Record, Severity};

struct Args {
    socket: PathBuf,
    procs: usize,
    records: u64,
    size: usize,
    prefix: String,
    class: String,
    timeout: Duration,
    child: Option<usize>,
}

const USAGE: &str = "usage: telem-legacy-burst --socket PATH [--procs N] [--records M] [--size BYTES] \
                     [--prefix TEXT] [--class CLASSIFICATION] [--timeout SECONDS]";

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        socket: std::env::var_os("TELEM_SOCKET").map(PathBuf::from).unwrap_or_default(),
        procs: 8,
        records: 12_000,
        size: 1024,
        prefix: "burst".into(),
        class: "org.test/burst/legacy".into(),
        timeout: Duration::from_secs(100),
        child: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        if k == "-h" || k == "--help" {
            return Err(USAGE.into());
        }
        let v = it.next().ok_or_else(|| format!("{k} needs a value\n{USAGE}"))?;
        let num = |v: &str| v.parse::<u64>().map_err(|e| format!("{k} {v:?}: {e}"));
        match k.as_str() {
            "--socket" => a.socket = v.into(),
            "--procs" => a.procs = num(&v)?.max(1) as usize,
            "--records" => a.records = num(&v)?,
            "--size" => a.size = num(&v)? as usize,
            "--prefix" => a.prefix = v,
            "--class" => a.class = v,
            "--timeout" => a.timeout = Duration::from_secs(num(&v)?),
            "--child" => a.child = Some(num(&v)? as usize),
            _ => return Err(format!("unknown argument {k}\n{USAGE}")),
        }
    }
    if a.socket.as_os_str().is_empty() {
        return Err(format!("no socket: --socket PATH or TELEM_SOCKET\n{USAGE}"));
    }
    Ok(a)
}

#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    connect_errors: AtomicU64,
    write_errors: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Counts {
    fn line(&self, k: usize, attempted: u64, records: u64, timed_out: bool) -> String {
        format!(
            "child={k} sent={} connect_errors={} write_errors={} not_attempted={} timed_out={} last_error={:?}",
            self.sent.load(Ordering::SeqCst),
            self.connect_errors.load(Ordering::SeqCst),
            self.write_errors.load(Ordering::SeqCst),
            records.saturating_sub(attempted),
            timed_out as u8,
            self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_default()
        )
    }
}

/// One sending process: the C library's loop.
fn child(a: &Args, k: usize) -> ExitCode {
    let class = match Classification::parse(&a.class) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("telem-legacy-burst: --class {:?}: {e}", a.class);
            return ExitCode::from(1);
        }
    };
    let counts = Arc::new(Counts::default());
    let attempted = Arc::new(AtomicU64::new(0));
    {
        // The watchdog: report what was done and leave at the deadline,
        // even from inside a blocking connect().
        let (counts, attempted, timeout, records) = (counts.clone(), attempted.clone(), a.timeout, a.records);
        std::thread::spawn(move || {
            std::thread::sleep(timeout);
            let n = attempted.load(Ordering::SeqCst);
            // The record in hand when time ran out was not sent.
            println!("{}", counts.line(k, n.saturating_sub(1), records, true));
            let _ = std::io::stdout().flush();
            std::process::exit(0);
        });
    }
    let mut frame = Vec::with_capacity(a.size + 1024);
    for n in 0..a.records {
        attempted.store(n + 1, Ordering::SeqCst);
        let record =
            Record::builder(class.clone(), Severity::Low, Payload::text(payload(&a.prefix, k, n, a.size))).build();
        frame.clear();
        if let Err(e) = legacy::encode_into(&record, None, &mut frame) {
            eprintln!("telem-legacy-burst: cannot encode: {e}");
            return ExitCode::from(1);
        }
        // As tm_send_record: connect (blocking), one write, close.
        match UnixStream::connect(&a.socket) {
            Err(e) => {
                counts.connect_errors.fetch_add(1, Ordering::SeqCst);
                *counts.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("connect: {e}"));
            }
            Ok(mut s) => match s.write_all(&frame) {
                Ok(()) => {
                    counts.sent.fetch_add(1, Ordering::SeqCst);
                }
                Err(e) => {
                    counts.write_errors.fetch_add(1, Ordering::SeqCst);
                    *counts.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("write: {e}"));
                }
            },
        }
    }
    println!("{}", counts.line(k, a.records, a.records, false));
    ExitCode::SUCCESS
}

fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

fn main() -> ExitCode {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    if let Some(k) = a.child {
        return child(&a, k);
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("telem-legacy-burst: current_exe: {e}");
            return ExitCode::from(1);
        }
    };
    let t = Instant::now();
    let mut children = Vec::new();
    for k in 0..a.procs {
        let c = Command::new(&exe)
            .arg("--socket")
            .arg(&a.socket)
            .args(["--records", &a.records.to_string(), "--size", &a.size.to_string()])
            .args(["--prefix", &a.prefix, "--class", &a.class, "--timeout", &a.timeout.as_secs().to_string()])
            .args(["--child", &k.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn();
        match c {
            Ok(c) => children.push(c),
            Err(e) => {
                eprintln!("telem-legacy-burst: cannot start a sender: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let (mut sent, mut connect_errors, mut write_errors, mut not_attempted, mut unreported) = (0, 0, 0, 0, 0);
    for (k, mut c) in children.into_iter().enumerate() {
        let out = c.stdout.take().map(BufReader::new);
        let report = out.and_then(|o| o.lines().map_while(Result::ok).find(|l| l.starts_with("child=")));
        let _ = c.wait();
        match report {
            Some(l) => {
                println!("{l}");
                sent += field(&l, "sent").unwrap_or(0);
                connect_errors += field(&l, "connect_errors").unwrap_or(0);
                write_errors += field(&l, "write_errors").unwrap_or(0);
                not_attempted += field(&l, "not_attempted").unwrap_or(0);
            }
            None => {
                println!("child={k} did not report");
                unreported += 1;
            }
        }
    }
    let el = t.elapsed().as_secs_f64();
    let total = a.procs as u64 * a.records;
    let failed = total - sent.min(total);
    println!(
        "telem-legacy-burst: procs={} records={total} sent={sent} failed={failed} connect_errors={connect_errors} \
         write_errors={write_errors} not_attempted={not_attempted} unreported_procs={unreported} elapsed={el:.3} rate={:.0}",
        a.procs,
        sent as f64 / el.max(1e-9)
    );
    if unreported > 0 {
        ExitCode::from(1)
    } else if failed > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}
