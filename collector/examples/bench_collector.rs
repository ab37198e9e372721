//! The collector benchmark (`cargo xtask bench collector` runs it in
//! release mode). Real collector process, real unix socket, real files with
//! fsync, real HTTP on 127.0.0.1. Prints each figure with its target and
//! the ratio against the original C client's figures (`ORIGINAL_E2E` and
//! the RSS line below; docs/BENCHMARKS.md says where they come from).
//!
//! 1. end to end: 8 concurrent senders -> collector -> HTTP sink (records/s delivered)
//! 2. accepted on one native connection into journal + spool (records/s)
//! 3. p99 acknowledgement latency at 10,000 records/s
//! 4. collector peak RSS (VmHWM) over the runs
//! 5. legacy burst (issue #12): 8 processes x 12,000 one-record legacy
//!    connections of 1 KiB, sent as the C library sends them
//!    (`telem-legacy-burst`: blocking connect, one frame, close), at the
//!    collector's default settings -> HTTP sink: records delivered (must be
//!    all), records/s end to end against the 30,000/s target, and the
//!    collector's peak RSS against 32 MB
//! 6. 2,000 sequential `hprobe` runs at the collector's defaults (rate
//!    windows off, as in 5): wall time per run, and collector CPU
//!    per record against 150 us; then the same with
//!    `spool_sync_severity=1` (each record fdatasync'd before its ack, as a
//!    crash record is)
//! 7. poison round (issue #13): the end-to-end round with one record in
//!    every 1,000 answered 500 by the sink: good records/s as a ratio of the
//!    clean round of the same run (target >= 0.90)
//!
//! 8. OTLP (issue #18): 8 concurrent senders -> collector -> rotel's OTLP/HTTP
//!    receiver with its blackhole exporter (protobuf, gzip, the defaults):
//!    records/s exported end to end (target >= 100,000/s or rotel's own
//!    ceiling) and the collector's CPU per exported record, all stages
//!    (ingest, spool, journal, export); then the export stage alone: the
//!    same records spooled while rotel is down, drained once it is up
//!    (records/s, collector CPU per exported record against 5 us, rotel's
//!    CPU per record), beside the v2 end-to-end figure of the same run
//!
//! `--quick` runs one round at half the load (5-7 at full size);
//! `BENCH_CONFIG="key=value;key=value"` adds settings to the collector's
//! configuration (to measure one setting's cost);
//! `BENCH_ONLY=e2e|one|latency|legacy|hprobe|poison|otlp` runs one phase (to
//! profile it; `poison` runs the clean end-to-end round too, for its ratio). `BENCH_CONCURRENCY` and `BENCH_PIPELINE`
//! set the collector's `delivery_concurrency` and `delivery_pipeline`
//! (default: the collector's defaults); `BENCH_TRACE=1` prints
//! when the worst acknowledgement latencies happened (stalls from the
//! shared disk show up as one burst). Each round prints the share of CPU
//! time the hypervisor gave to other guests (steal), which moves the
//! absolute figures.

use std::io::{BufReader, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use telemetry::client::Client;
use telemetry::wire::native::{self, ClientFrame, ServerFrame};
use telemetry::{Classification, Payload, Record, Severity};

const ORIGINAL_E2E: f64 = 3200.0;

/// Payloads starting with this are answered 500 by a poisoning sink.
const POISON_PREFIX: &[u8] = b"poison-";

fn record(i: u64) -> Record {
    record_with(i, false)
}

/// A bench record; a poison one's payload starts with [`POISON_PREFIX`].
fn record_with(i: u64, poison: bool) -> Record {
    let mut p = if poison { format!("poison-{i}\n") } else { format!("bench record {i}\n") };
    while p.len() < 200 {
        p.push_str("payload line\n");
    }
    Record::builder(Classification::parse("org.bench/collector/load").unwrap(), Severity::Low, Payload::text(p)).build()
}

/// A local HTTP/1.1 sink answering 201 and counting posts: one thread
/// running a single-threaded tokio loop (epoll), as an event-driven server
/// such as nginx serves keep-alive connections. (A thread per connection
/// costs ~25% more CPU per request on this VM, from cross-CPU wake-ups,
/// and that CPU is taken from the collector on the same two cores.)
/// With `poison`, posts whose body (the v2 payload) starts with
/// [`POISON_PREFIX`] are answered 500 and not counted.
fn sink(poison: bool) -> (String, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind sink");
    l.set_nonblocking(true).expect("nonblocking");
    let url = format!("http://{}/", l.local_addr().expect("addr"));
    let count = Arc::new(AtomicU64::new(0));
    let c2 = count.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("sink runtime");
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).expect("sink listener");
            loop {
                let Ok((s, _)) = l.accept().await else { continue };
                tokio::spawn(serve(s, c2.clone(), poison));
            }
        });
    });
    (url, count)
}

/// Serves one keep-alive connection: parses each request's head and
/// Content-Length body, answers every complete request (pipelined ones
/// with one write).
async fn serve(mut s: tokio::net::TcpStream, count: Arc<AtomicU64>, poison: bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = s.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut tmp = vec![0u8; 64 * 1024];
    loop {
        let n = match s.read(&mut tmp).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&tmp[..n]);
        let mut answers = 0usize;
        let mut out: Vec<u8> = Vec::new();
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).unwrap_or("");
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok()).flatten()
                })
                .unwrap_or(0);
            if buf.len() < end + 4 + len {
                break;
            }
            if poison && buf[end + 4..end + 4 + len].starts_with(POISON_PREFIX) {
                out.extend_from_slice(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 13\r\n\r\npoison record");
            } else {
                out.extend_from_slice(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
                answers += 1;
            }
            buf.drain(..end + 4 + len);
        }
        if !out.is_empty() {
            count.fetch_add(answers as u64, Ordering::Relaxed);
            if s.write_all(&out).await.is_err() {
                return;
            }
        }
    }
}

struct Daemon {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// The control socket's answer to `cmd` (`status`, `flush`) as JSON.
    fn control(&self, cmd: &str) -> serde_json::Value {
        use std::io::BufRead;
        let Ok(mut s) = UnixStream::connect(self._dir.path().join("state/control.sock")) else {
            return serde_json::Value::Null;
        };
        let _ = s.write_all(format!("{cmd}\n").as_bytes());
        let mut line = String::new();
        let _ = BufReader::new(s).read_line(&mut line);
        serde_json::from_str(&line).unwrap_or(serde_json::Value::Null)
    }

    /// Records the OTLP destination took so far.
    fn otlp_delivered(&self) -> u64 {
        let s = self.control("status");
        s["destinations"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["name"] == "otlp"))
            .and_then(|d| d["delivered"].as_u64())
            .unwrap_or(0)
    }

    fn start(server: &str, extra: &str) -> Daemon {
        let dir = tempfile::Builder::new().prefix("bench-collector").tempdir_in(bench_tmp()).expect("tempdir");
        let d = dir.path();
        let socket = d.join("telem.sock");
        std::fs::create_dir_all(d.join("etc")).expect("etc");
        std::fs::write(d.join("etc/opt-in"), b"").expect("opt-in");
        let conf = d.join("telemetrics.conf");
        std::fs::write(
            &conf,
            format!(
                "[settings]\nserver={server}\nsocket_path={}\nspool_dir={}\njournal_dir={}\nstate_dir={}\netc_dir={}\n\
                 rate_limit_enabled=false\nspool_max_size=-1\nretry_max_backoff=600\n{}{extra}\n",
                socket.display(),
                d.join("spool").display(),
                d.join("journal").display(),
                d.join("state").display(),
                d.join("etc").display(),
                // The collector's own defaults unless asked otherwise.
                ["BENCH_CONCURRENCY", "BENCH_PIPELINE"]
                    .iter()
                    .zip(["delivery_concurrency", "delivery_pipeline"])
                    .filter_map(|(var, key)| std::env::var(var).ok().map(|v| format!("{key}={v}\n")))
                    .chain(std::env::var("BENCH_CONFIG").ok().map(|c| format!("{}\n", c.replace(';', "\n"))))
                    .collect::<String>()
            ),
        )
        .expect("conf");
        // BENCH_COLLECTOR: another build to compare against, in the same run.
        let exe =
            std::env::var_os("BENCH_COLLECTOR").map(PathBuf::from).unwrap_or_else(|| bin_dir().join("telem-collector"));
        let child = Command::new(&exe)
            .arg("-f")
            .arg(&conf)
            .env("RUST_LOG", std::env::var("BENCH_LOG").unwrap_or_else(|_| "error".into()))
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "collector did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon { child, socket, _dir: dir }
    }

    /// CPU seconds the collector used so far (user + system).
    fn cpu_secs(&self) -> f64 {
        proc_cpu_secs(self.child.id())
    }

    fn peak_rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        s.lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bin_dir() -> PathBuf {
    // target/release/examples/bench_collector -> target/release
    let exe = std::env::current_exe().expect("current exe");
    exe.parent().and_then(Path::parent).map(Path::to_path_buf).expect("target dir")
}

fn bench_tmp() -> PathBuf {
    // On the same disk as the workspace (fsync cost is real), not tmpfs.
    let p = bin_dir().join("bench-tmp");
    let _ = std::fs::create_dir_all(&p);
    p
}

/// CPU seconds the calling thread used so far.
fn thread_cpu_secs() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
        .unwrap_or(0) as f64
        / 1e9
}

fn proc_cpu_secs(pid: u32) -> f64 {
    // The scheduler's run time of every thread, in ns (schedstat), not the
    // tick-sampled utime/stime of /proc/PID/stat, which misses much of the
    // time of threads that run in short bursts between wake-ups.
    threads_by_name(pid).values().map(|(ns, _)| ns).sum::<u64>() as f64 / 1e9
}

/// Per thread name: (run time in ns, context switches), summed over the
/// threads of that name.
fn threads_by_name(pid: u32) -> std::collections::BTreeMap<String, (u64, u64)> {
    let mut by = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return by };
    for t in tasks.filter_map(|t| t.ok()) {
        let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default().trim().to_string();
        let sched = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
        let mut f = sched.split_whitespace().map(|v| v.parse::<u64>().unwrap_or(0));
        let (ns, _, switches) = (f.next().unwrap_or(0), f.next(), f.next().unwrap_or(0));
        let e: &mut (u64, u64) = by.entry(name).or_default();
        e.0 += ns;
        e.1 += switches;
    }
    by
}

/// rotel-agent (an OpenTelemetry collector) with the blackhole exporter.
struct Rotel {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Rotel {
    /// `BENCH_ROTEL`, else the one `cargo xtask setup` installed under the
    /// target directory.
    fn exe() -> PathBuf {
        std::env::var_os("BENCH_ROTEL")
            .map(PathBuf::from)
            .unwrap_or_else(|| bin_dir().parent().map(|t| t.join("rotel-venv/bin/rotel-agent")).unwrap_or_default())
    }

    fn start(port: u16) -> Rotel {
        let dir = tempfile::tempdir().expect("tempdir");
        let grpc = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
        let child = Command::new(Self::exe())
            .arg("start")
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{port}")])
            .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc}")])
            .args(["--exporter", "blackhole"])
            .arg("--pid-file")
            .arg(dir.path().join("rotel.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} (cargo xtask setup installs it): {e}", Self::exe().display()));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "rotel did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Rotel { child, _dir: dir }
    }

    fn cpu_secs(&self) -> f64 {
        proc_cpu_secs(self.child.id())
    }
}

impl Drop for Rotel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the OTLP rounds measured.
struct Otlp {
    /// End to end: records/s exported, collector CPU us per record (all
    /// stages), rotel CPU us per record.
    e2e_rate: f64,
    e2e_cpu_us: f64,
    /// The export stage alone (draining the spool into rotel).
    drain_rate: f64,
    drain_cpu_us: f64,
    rotel_cpu_us: f64,
}

/// Sends `senders` x `per_sender` records to the daemon (8 threads).
fn send_load(d: &Daemon, senders: usize, per_sender: u64) {
    let handles: Vec<_> = (0..senders)
        .map(|s| {
            let path = d.socket.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect_path(&path, Duration::from_secs(30)).expect("connect");
                let recs: Vec<Record> = (0..256).map(|i| record(s as u64 * 1_000_000 + i)).collect();
                let mut sent = 0;
                while sent < per_sender {
                    let n = (per_sender - sent).min(256) as usize;
                    let acks = c.send_many(&recs[..n]).expect("send");
                    assert!(acks.iter().all(|a| a.is_ok()), "all accepted");
                    sent += n as u64;
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("sender");
    }
}

/// Waits until the OTLP destination took `n` records (or `wait`); when.
fn wait_exported(d: &Daemon, n: u64, wait: Duration) -> (u64, Instant) {
    let deadline = Instant::now() + wait;
    loop {
        let got = d.otlp_delivered();
        if got >= n || Instant::now() >= deadline {
            return (got, Instant::now());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The OTLP rounds: end to end into a running rotel, then the export stage
/// alone (spooled while rotel is down, drained once it is up).
fn otlp_rounds(senders: usize, per_sender: u64) -> Otlp {
    let total = senders as u64 * per_sender;
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let otlp = format!("otlp_endpoint=http://127.0.0.1:{port}\n");
    // End to end.
    let rotel = Rotel::start(port);
    let d = Daemon::start("", &otlp);
    let (c0, r0) = (d.cpu_secs(), rotel.cpu_secs());
    let t = Instant::now();
    send_load(&d, senders, per_sender);
    let acked = t.elapsed().as_secs_f64();
    let (got, at) = wait_exported(&d, total, Duration::from_secs(120));
    let el = at.duration_since(t).as_secs_f64();
    let e2e_cpu_us = (d.cpu_secs() - c0) * 1e6 / got.max(1) as f64;
    let e2e_rotel = (rotel.cpu_secs() - r0) * 1e6 / got.max(1) as f64;
    println!(
        "  (otlp end to end: {got} of {total} exported after {el:.2} s (all acknowledged after {acked:.2} s); \
         collector CPU {e2e_cpu_us:.1} us per record, rotel {e2e_rotel:.1} us)"
    );
    drop(d);
    drop(rotel);
    // The export stage alone.
    let d = Daemon::start("", &otlp);
    send_load(&d, senders, per_sender);
    std::thread::sleep(Duration::from_millis(300));
    let rotel = Rotel::start(port);
    let (c0, r0) = (d.cpu_secs(), rotel.cpu_secs());
    let t = Instant::now();
    d.control("flush");
    let (got2, at) = wait_exported(&d, total, Duration::from_secs(120));
    let el2 = at.duration_since(t).as_secs_f64();
    let drain_cpu_us = (d.cpu_secs() - c0) * 1e6 / got2.max(1) as f64;
    let rotel_cpu_us = (rotel.cpu_secs() - r0) * 1e6 / got2.max(1) as f64;
    println!(
        "  (otlp export stage alone: {got2} of {total} spooled records exported in {el2:.2} s; \
         collector CPU {drain_cpu_us:.1} us per record, rotel {rotel_cpu_us:.1} us per record)"
    );
    Otlp {
        e2e_rate: got.min(total) as f64 / el.max(1e-9),
        e2e_cpu_us,
        drain_rate: got2.min(total) as f64 / el2.max(1e-9),
        drain_cpu_us,
        rotel_cpu_us,
    }
}

fn end_to_end(senders: usize, per_sender: u64) -> (f64, u64) {
    let r = end_to_end_with(senders, per_sender, 0, Duration::from_secs(120));
    assert!(r.delivered >= r.good, "only {} of {} delivered", r.delivered, r.good);
    (r.rate, r.rss_kib)
}

/// What one end-to-end round measured.
struct E2e {
    /// Good records delivered per second (all of them, or those delivered
    /// by the deadline).
    rate: f64,
    rss_kib: u64,
    /// Good records sent, and delivered.
    good: u64,
    delivered: u64,
}

/// The end-to-end round; with `poison_every` > 0, one record in every
/// `poison_every` is a poison record the sink answers 500 (and the rate
/// counts only the good ones). Gives up waiting at `wait`.
fn end_to_end_with(senders: usize, per_sender: u64, poison_every: u64, wait: Duration) -> E2e {
    let (url, count) = sink(poison_every > 0);
    let d = Daemon::start(&url, "");
    let own0 = proc_cpu_secs(std::process::id());
    let t = Instant::now();
    // The records each sender cycles through (one poison record at the end
    // of each cycle when poisoning).
    let cycle = if poison_every > 0 { poison_every } else { 256 };
    let handles: Vec<_> = (0..senders)
        .map(|s| {
            let path = d.socket.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect_path(&path, Duration::from_secs(30)).expect("connect");
                let recs: Vec<Record> = (0..cycle)
                    .map(|i| record_with(s as u64 * 1_000_000 + i, poison_every > 0 && i == cycle - 1))
                    .collect();
                let mut sent = 0;
                let mut poisoned = 0;
                while sent < per_sender {
                    let at = (sent % cycle) as usize;
                    let n = (per_sender - sent).min(256).min(cycle - at as u64) as usize;
                    let acks = c.send_many(&recs[at..at + n]).expect("send");
                    assert!(acks.iter().all(|a| a.is_ok()), "all accepted");
                    if poison_every > 0 && at + n == cycle as usize {
                        poisoned += 1;
                    }
                    sent += n as u64;
                }
                (thread_cpu_secs(), poisoned)
            })
        })
        .collect();
    let (mut senders_cpu, mut poisoned) = (0.0, 0u64);
    for h in handles {
        let (cpu, p) = h.join().expect("sender");
        senders_cpu += cpu;
        poisoned += p;
    }
    let ingest_s = t.elapsed().as_secs_f64();
    let delivered_then = count.load(Ordering::Relaxed);
    let total = senders as u64 * per_sender;
    let good = total - poisoned;
    let deadline = Instant::now() + wait;
    let mut last = (count.load(Ordering::Relaxed), t.elapsed());
    while count.load(Ordering::Relaxed) < good && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        let n = count.load(Ordering::Relaxed);
        if n != last.0 {
            last = (n, t.elapsed());
        }
    }
    let got = count.load(Ordering::Relaxed);
    // Up to the last delivery seen (the deadline when some never came).
    let el = if got >= good { t.elapsed() } else { last.1 }.as_secs_f64();
    let poison_note =
        if poisoned > 0 { format!(" good ({poisoned} poison records sent beside them)") } else { String::new() };
    if got >= good {
        println!(
            "  (all {total} acknowledged after {ingest_s:.2} s, {delivered_then} delivered by then; all {good}{poison_note} delivered after {el:.2} s)"
        );
    } else {
        println!(
            "  (all {total} acknowledged after {ingest_s:.2} s, {delivered_then} delivered by then; only {got} of {good}{poison_note} \
             delivered after {:.0} s, the last at {el:.2} s)",
            t.elapsed().as_secs_f64()
        );
    }
    println!(
        "  (CPU per record delivered: collector {:.1} us; bench senders {:.1} us, sink {:.1} us)",
        d.cpu_secs() * 1e6 / got.max(1) as f64,
        senders_cpu * 1e6 / got.max(1) as f64,
        // The sink's thread (the senders have ended: their time is above).
        (proc_cpu_secs(std::process::id()) - own0) * 1e6 / got.max(1) as f64
    );
    E2e { rate: got.min(good) as f64 / el.max(1e-9), rss_kib: d.peak_rss_kib(), good, delivered: got }
}

/// What the legacy burst measured.
struct Legacy {
    sent: u64,
    total: u64,
    delivered: u64,
    /// Delivered records per second, from the burst's start to the last
    /// delivery.
    rate: f64,
    rss_kib: u64,
    cpu_per_record_us: f64,
}

/// Issue #12's burst: `procs` x `records` one-record legacy connections of
/// `size` payload bytes from `telem-legacy-burst` (the C library's way:
/// blocking connect, one frame, close), into a collector at its default
/// settings except the rate window, delivering to the local sink.
/// The bench's base configuration lifts the spool cap and the retry
/// backoff; this puts the defaults back (later keys win). The rate window
/// stays off: its default (1,000 records per 15 minutes) would hold back
/// all but 1,000 records of a round by design.
const DEFAULTS: &str = "spool_max_size=5120\nretry_max_backoff=30\n";

fn legacy_burst(procs: usize, records: u64, size: usize) -> Legacy {
    let (url, count) = sink(false);
    let d = Daemon::start(&url, DEFAULTS);
    let gen = bin_dir().join("telem-legacy-burst");
    let t = Instant::now();
    let out = Command::new(&gen)
        .arg("--socket")
        .arg(&d.socket)
        .args(["--procs", &procs.to_string(), "--records", &records.to_string(), "--size", &size.to_string()])
        .args(["--timeout", "100"])
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} (cargo xtask bench collector builds it): {e}", gen.display()));
    let sent_s = t.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = text.lines().rev().find(|l| l.starts_with("telem-legacy-burst:")).unwrap_or("");
    let field = |k: &str| -> u64 {
        summary.split_whitespace().find_map(|w| w.strip_prefix(k)?.strip_prefix('=')?.parse().ok()).unwrap_or(0)
    };
    let (total, sent) = (procs as u64 * records, field("sent"));
    if summary.is_empty() {
        println!("  (telem-legacy-burst gave no summary: {}\n{text})", out.status);
    }
    let delivered_then = count.load(Ordering::Relaxed);
    // Wait for delivery: all of them, or nothing new for 10 s.
    let deadline = t + Duration::from_secs(160);
    let mut last = (count.load(Ordering::Relaxed), t.elapsed());
    while count.load(Ordering::Relaxed) < sent
        && Instant::now() < deadline
        && (t.elapsed() - last.1) < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(5));
        let n = count.load(Ordering::Relaxed);
        if n != last.0 {
            last = (n, t.elapsed());
        }
    }
    let got = count.load(Ordering::Relaxed);
    let el = if got >= sent { t.elapsed() } else { last.1 }.as_secs_f64();
    println!(
        "  (legacy burst: {sent} of {total} sent in {sent_s:.2} s ({} connect errors, {} write errors), {delivered_then} delivered by then; \
         {got} delivered, the last at {el:.2} s)",
        field("connect_errors"),
        field("write_errors")
    );
    let cpu = d.cpu_secs() * 1e6 / got.max(1) as f64;
    println!("  (legacy burst: collector CPU {cpu:.1} us per record delivered)");
    Legacy {
        sent,
        total,
        delivered: got,
        rate: got as f64 / el.max(1e-9),
        rss_kib: d.peak_rss_kib(),
        cpu_per_record_us: cpu,
    }
}

/// `runs` sequential `hprobe --socket` runs into a collector at its
/// defaults (as the legacy round: [`DEFAULTS`]) plus `extra`, delivering
/// to the local sink: (wall ms per run, collector CPU us per record).
fn hprobe_runs(runs: u64, extra: &str) -> (f64, f64) {
    let (url, count) = sink(false);
    let d = Daemon::start(&url, &format!("{DEFAULTS}{extra}"));
    let hprobe = bin_dir().join("hprobe");
    // What the collector spends doing nothing, for comparison.
    std::thread::sleep(Duration::from_millis(200));
    let (idle0, idle_t) = (d.cpu_secs(), Instant::now());
    std::thread::sleep(Duration::from_secs(1));
    let idle_per_s = (d.cpu_secs() - idle0) / idle_t.elapsed().as_secs_f64();
    let cpu0 = d.cpu_secs();
    let threads0 = threads_by_name(d.child.id());
    let t = Instant::now();
    let mut failed = 0;
    for _ in 0..runs {
        let st =
            Command::new(&hprobe).arg("--socket").arg(&d.socket).stdout(Stdio::null()).status().unwrap_or_else(|e| {
                panic!("cannot run {} (cargo xtask bench collector builds it): {e}", hprobe.display())
            });
        if !st.success() {
            failed += 1;
        }
    }
    let per_run_ms = t.elapsed().as_secs_f64() * 1000.0 / runs as f64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while count.load(Ordering::Relaxed) < runs - failed && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let got = count.load(Ordering::Relaxed);
    let cpu_us = (d.cpu_secs() - cpu0) * 1e6 / runs as f64;
    let by: Vec<String> = threads_by_name(d.child.id())
        .into_iter()
        .map(|(name, (ns, sw))| {
            let (ns0, sw0) = threads0.get(&name).copied().unwrap_or((0, 0));
            let per = |v: u64, v0: u64| v.saturating_sub(v0) as f64 / runs as f64;
            format!("{name} {:.1} us / {:.1} switches", per(ns, ns0) / 1e3, per(sw, sw0))
        })
        .collect();
    println!("  (hprobe: collector threads per record: {})", by.join(", "));
    let idle_us = idle_per_s * t.elapsed().as_secs_f64() * 1e6 / runs as f64;
    println!(
        "  (hprobe: {runs} runs, {failed} failed, {got} delivered; {per_run_ms:.2} ms per run; collector CPU {cpu_us:.1} us per record, \
         of which {idle_us:.1} us is what it spends idle over the same time ({:.1} ms/s))",
        idle_per_s * 1e3
    );
    (per_run_ms, cpu_us)
}

/// Raw pipelined native connection: returns (writer, reader).
fn raw(path: &Path) -> (UnixStream, BufReader<UnixStream>) {
    let mut s = UnixStream::connect(path).expect("connect");
    s.write_all(&native::PREFIX).expect("prefix");
    let mut r = BufReader::with_capacity(256 * 1024, s.try_clone().expect("clone"));
    let mut buf = Vec::new();
    native::read_frame(&mut r, native::MAX_SERVER_FRAME, &mut buf).expect("hello");
    (s, r)
}

fn read_ack(r: &mut BufReader<UnixStream>, buf: &mut Vec<u8>) {
    native::read_frame(r, native::MAX_SERVER_FRAME, buf).expect("ack");
    match native::decode_body::<ServerFrame>(buf) {
        Ok(ServerFrame::Ack(native::Ack::Accepted { .. })) => {}
        other => panic!("not accepted: {other:?}"),
    }
}

fn accept_one_connection(n: u64) -> (f64, u64) {
    // A server that refuses connections: everything stays in the spool.
    let d = Daemon::start("http://127.0.0.1:9/", "");
    let (mut w, mut r) = raw(&d.socket);
    let mut frames = Vec::new();
    for i in 0..1024 {
        native::encode_into(&ClientFrame::Record(record(i)), &mut frames).expect("encode");
    }
    let t = Instant::now();
    let writer = std::thread::spawn(move || {
        let mut sent = 0;
        while sent < n {
            w.write_all(&frames).expect("write");
            sent += 1024;
        }
        sent
    });
    let mut buf = Vec::new();
    let mut got = 0;
    let total = n.div_ceil(1024) * 1024;
    while got < total {
        read_ack(&mut r, &mut buf);
        got += 1;
    }
    let el = t.elapsed().as_secs_f64();
    writer.join().expect("writer");
    println!("  (collector CPU {:.1} us per record accepted)", d.cpu_secs() * 1e6 / got as f64);
    (got as f64 / el, d.peak_rss_kib())
}

fn ack_latency(rate: u64, secs: u64) -> (f64, f64, u64) {
    let d = Daemon::start("http://127.0.0.1:9/", "");
    let (mut w, mut r) = raw(&d.socket);
    let n = rate * secs;
    let frame = native::encode(&ClientFrame::Record(record(1))).expect("encode");
    let start = Instant::now();
    let writer = std::thread::spawn(move || {
        let mut sent_at = Vec::with_capacity(n as usize);
        // 1 ms ticks, rate/1000 records each.
        let per_tick = (rate / 1000).max(1);
        let mut i = 0;
        let mut tick = 0u64;
        while i < n {
            let due = start + Duration::from_millis(tick);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let mut batch = Vec::with_capacity(frame.len() * per_tick as usize);
            for _ in 0..per_tick.min(n - i) {
                batch.extend_from_slice(&frame);
            }
            let t = Instant::now();
            w.write_all(&batch).expect("write");
            for _ in 0..per_tick.min(n - i) {
                sent_at.push(t);
                i += 1;
            }
            tick += 1;
        }
        sent_at
    });
    let mut buf = Vec::new();
    let mut acked_at = Vec::with_capacity(n as usize);
    for _ in 0..n {
        read_ack(&mut r, &mut buf);
        acked_at.push(Instant::now());
    }
    let sent_at = writer.join().expect("writer");
    let mut lat: Vec<f64> =
        sent_at.iter().zip(&acked_at).map(|(s, a)| a.duration_since(*s).as_secs_f64() * 1000.0).collect();
    if std::env::var("BENCH_TRACE").is_ok() {
        let mut worst: Vec<(f64, f64)> =
            sent_at.iter().zip(&lat).map(|(s, l)| (s.duration_since(start).as_secs_f64() * 1000.0, *l)).collect();
        worst.sort_by(|a, b| b.1.total_cmp(&a.1));
        let mut shown: Vec<(f64, f64)> = Vec::new();
        for w in worst {
            if shown.iter().all(|s| (s.0 - w.0).abs() > 50.0) {
                shown.push(w);
            }
            if shown.len() >= 15 {
                break;
            }
        }
        shown.sort_by(|a, b| a.0.total_cmp(&b.0));
        eprintln!(
            "worst (sent at ms, latency ms): {:?}",
            shown.iter().map(|(a, b)| (*a as u64, (*b * 10.0).round() / 10.0)).collect::<Vec<_>>()
        );
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    (p(0.5), p(0.99), d.peak_rss_kib())
}

/// Best and median of `runs` values (higher is better unless `lower`).
fn best_median(mut v: Vec<f64>, lower: bool) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    if !lower {
        v.reverse();
    }
    (v[0], v[v.len() / 2])
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (scale, runs) = if quick { (1, 1) } else { (2, 3) };
    println!(
        "collector benchmark (release build; disk fsync ~{:.1} ms here; best and median of {runs} run(s): \
         the 2 vCPUs are shared, so neighbours' load shows in the median)",
        fsync_ms()
    );
    let mut rss = 0;
    let (mut e2e, mut acc, mut p99s, mut p50s) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // Issue #12 and #13 rounds.
    let (mut legacy, mut legacy_rss, mut legacy_all) = (Vec::new(), 0u64, true);
    let (mut hprobe_ms, mut hprobe_cpu) = (Vec::new(), Vec::new());
    let mut poison_ratio = Vec::new();
    let mut otlp: Vec<Otlp> = Vec::new();
    // BENCH_ONLY=e2e|one|latency|legacy|hprobe|poison: run one phase (to
    // profile it; poison runs the clean end-to-end round too).
    let only = std::env::var("BENCH_ONLY").ok();
    let run = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let steal_at_start = cpu_steal();
    for _ in 0..runs {
        let round_start = cpu_steal();
        let (mut m1, mut m2, mut m3) = (0, 0, 0);
        let mut clean = None;
        if run("e2e") || run("poison") {
            let (r, m) = end_to_end(8, 2_500 * scale);
            e2e.push(r);
            clean = Some(r);
            m1 = m;
        }
        if run("poison") {
            // The same round with one record in every 1,000 refused (500).
            let p = end_to_end_with(8, 2_500 * scale, 1_000, Duration::from_secs(60));
            let ratio = p.rate / clean.unwrap_or(f64::NAN);
            println!(
                "  (poison round: {} of {} good records delivered, {:.0} good records/s; {ratio:.3}x the clean round's {:.0}/s)",
                p.delivered.min(p.good),
                p.good,
                p.rate,
                clean.unwrap_or(f64::NAN)
            );
            poison_ratio.push(ratio);
            m1 = m1.max(p.rss_kib);
        }
        if run("one") {
            let (r, m) = accept_one_connection(50_000 * scale);
            acc.push(r);
            m2 = m;
        }
        if run("latency") {
            let st = cpu_steal();
            let (p50, p99, m) = ack_latency(10_000, if quick { 2 } else { 4 });
            // A vCPU the hypervisor takes away for milliseconds shows up
            // directly in the tail: the steal of this phase goes with it.
            println!(
                "  (ack latency at 10000/s: p50 {p50:.2} ms, p99 {p99:.2} ms; steal during it {:.0}%)",
                steal_pct(st, cpu_steal())
            );
            p50s.push(p50);
            p99s.push(p99);
            m3 = m;
        }
        if run("legacy") {
            let l = legacy_burst(8, 12_000, 1024);
            println!(
                "  (legacy burst: {} of {} records delivered, {:.0} records/s end to end, collector peak RSS {:.1} MB)",
                l.delivered,
                l.total,
                l.rate,
                l.rss_kib as f64 / 1024.0
            );
            legacy_all &= l.delivered >= l.total && l.sent == l.total;
            legacy.push((l.rate, l.delivered, l.total, l.cpu_per_record_us));
            legacy_rss = legacy_rss.max(l.rss_kib);
        }
        if run("hprobe") {
            let (ms, cpu) = hprobe_runs(2_000, "");
            hprobe_ms.push(ms);
            hprobe_cpu.push(cpu);
            // The same with every record fdatasync'd before its ack (what a
            // lone crash record costs: severity >= spool_sync_severity).
            let (sync_ms, sync_cpu) = hprobe_runs(2_000, "spool_sync_severity=1");
            println!(
                "  (hprobe with spool_sync_severity=1, each record fdatasync'd before its ack: {sync_ms:.2} ms per run, \
                 collector CPU {sync_cpu:.1} us per record, {:.2}x the default's {cpu:.1})",
                sync_cpu / cpu
            );
        }
        if run("otlp") {
            otlp.push(otlp_rounds(8, 12_500 * scale));
        }
        println!(
            "  (collector peak RSS: end to end {:.1} MB, one connection {:.1} MB, latency {:.1} MB)",
            m1 as f64 / 1024.0,
            m2 as f64 / 1024.0,
            m3 as f64 / 1024.0
        );
        rss = rss.max(m1).max(m2).max(m3);
        println!("  (CPU time stolen by the hypervisor this round: {:.0}%)", steal_pct(round_start, cpu_steal()));
    }
    let steal = steal_pct(steal_at_start, cpu_steal());
    let legacy_rates: Vec<f64> = legacy.iter().map(|l| l.0).collect();
    if only.is_some() {
        for (name, v) in [
            ("end to end records/s", &e2e),
            ("one connection records/s", &acc),
            ("p99 ms", &p99s),
            ("legacy burst records/s", &legacy_rates),
        ] {
            if !v.is_empty() {
                println!("{name}: {v:.0?}");
            }
        }
        for (name, v) in [
            ("hprobe ms per run", &hprobe_ms),
            ("hprobe collector CPU us per record", &hprobe_cpu),
            ("poison round / clean round", &poison_ratio),
        ] {
            if !v.is_empty() {
                println!("{name}: {v:.2?}");
            }
        }
        print_new_rounds(&legacy, legacy_rss, legacy_all, &hprobe_ms, &hprobe_cpu, &poison_ratio);
        print_otlp(&otlp, &e2e);
        return;
    }
    print_otlp(&otlp, &e2e);
    let (e_best, e_med) = best_median(e2e, false);
    println!(
        "end to end, 8 senders -> collector -> HTTP sink: {e_best:>9.0} records/s (median {e_med:.0})  \
         (target >= 30000: {}; {:.1}x the original's {ORIGINAL_E2E:.0}/s)",
        verdict(e_best >= 30_000.0),
        e_best / ORIGINAL_E2E
    );
    let (a_best, a_med) = best_median(acc, false);
    println!(
        "accepted on one connection into journal+spool: {a_best:>9.0} records/s (median {a_med:.0})  \
         (target >= 200000: {}; {:.2}x target)",
        verdict(a_best >= 200_000.0),
        a_best / 200_000.0
    );
    let (l_best, l_med) = best_median(p99s, true);
    let (p50, _) = best_median(p50s, true);
    println!(
        "ack latency at 10000 records/s: p99 {l_best:.2} ms (median of runs {l_med:.2} ms; p50 {p50:.2} ms)  \
         (target p99 < 5 ms: {}; {:.2}x target)",
        verdict(l_best < 5.0),
        l_best / 5.0
    );
    println!(
        "collector peak RSS over all runs: {:.1} MB  (target < 20 MB: {}; original daemons 2.8 + 10.3 MB)",
        rss as f64 / 1024.0,
        verdict(rss < 20 * 1024)
    );
    print_new_rounds(&legacy, legacy_rss, legacy_all, &hprobe_ms, &hprobe_cpu, &poison_ratio);
    println!(
        "CPU time stolen by the hypervisor over the run: {steal:.0}% (other guests on this host; \
         absolute figures fall with it, compare builds within one run with BENCH_COLLECTOR)"
    );
}

/// The summary lines of the legacy burst, hprobe and poison rounds (those
/// that ran). `legacy`: (records/s, delivered, total, collector CPU us per
/// record) per round.
fn print_new_rounds(
    legacy: &[(f64, u64, u64, f64)],
    legacy_rss: u64,
    legacy_all: bool,
    hprobe_ms: &[f64],
    hprobe_cpu: &[f64],
    poison_ratio: &[f64],
) {
    if !legacy.is_empty() {
        let (best, med) = best_median(legacy.iter().map(|l| l.0).collect(), false);
        let delivered: Vec<String> = legacy.iter().map(|l| format!("{}/{}", l.1, l.2)).collect();
        let (cpu, _) = best_median(legacy.iter().map(|l| l.3).collect(), true);
        println!(
            "legacy burst, 8 processes x 12000 one-record connections of 1 KiB -> collector (defaults) -> HTTP sink: \
             delivered {} ({}); {best:>9.0} records/s end to end (median {med:.0})  (target >= 30000: {}; {:.2}x target); \
             collector CPU {cpu:.1} us per record",
            delivered.join(", "),
            if legacy_all { "all" } else { "NOT all: records lost" },
            verdict(best >= 30_000.0),
            best / 30_000.0
        );
        println!(
            "legacy burst collector peak RSS: {:.1} MB  (target < 32 MB: {}; {:.2}x target)",
            legacy_rss as f64 / 1024.0,
            verdict(legacy_rss < 32 * 1024),
            legacy_rss as f64 / (32.0 * 1024.0)
        );
    }
    if !hprobe_ms.is_empty() {
        let (ms, ms_med) = best_median(hprobe_ms.to_vec(), true);
        let (cpu, cpu_med) = best_median(hprobe_cpu.to_vec(), true);
        println!(
            "2000 sequential hprobe runs: {ms:.2} ms per run (median {ms_med:.2}; {:.2}x the C hprobe's 1.41 ms, the \
             issue's figure); collector CPU {cpu:.1} us per record (median {cpu_med:.1})  (target <= 150 us: {}; {:.2}x target)",
            ms / 1.41,
            verdict(cpu <= 150.0),
            cpu / 150.0
        );
    }
    if !poison_ratio.is_empty() {
        let (best, med) = best_median(poison_ratio.to_vec(), false);
        println!(
            "poison round (1 in 1000 records answered 500): good records/s {best:.3}x the clean round's (median {med:.3}x)  \
             (target >= 0.90: {})",
            verdict(best >= 0.90)
        );
    }
}

/// The OTLP summary lines, beside the v2 end-to-end figure of the run.
fn print_otlp(otlp: &[Otlp], v2: &[f64]) {
    if otlp.is_empty() {
        return;
    }
    let (rate, rate_med) = best_median(otlp.iter().map(|o| o.e2e_rate).collect(), false);
    let (cpu, cpu_med) = best_median(otlp.iter().map(|o| o.e2e_cpu_us).collect(), true);
    let (drain, drain_med) = best_median(otlp.iter().map(|o| o.drain_rate).collect(), false);
    let (dcpu, dcpu_med) = best_median(otlp.iter().map(|o| o.drain_cpu_us).collect(), true);
    let (rcpu, _) = best_median(otlp.iter().map(|o| o.rotel_cpu_us).collect(), true);
    let beside = if v2.is_empty() {
        "v2 not run (BENCH_ONLY)".to_string()
    } else {
        let (b, _) = best_median(v2.to_vec(), false);
        format!("{:.2}x the v2 end-to-end {b:.0}/s of this run", rate / b)
    };
    println!(
        "otlp end to end, 8 senders -> collector -> rotel (blackhole): {rate:>9.0} records/s (median {rate_med:.0})  \
         (target >= 100000: {}; {:.2}x target; {beside}); collector CPU {cpu:.1} us per record, all stages (median {cpu_med:.1})",
        verdict(rate >= 100_000.0),
        rate / 100_000.0
    );
    println!(
        "otlp export stage alone (spool -> rotel): {drain:>9.0} records/s (median {drain_med:.0}); collector CPU \
         {dcpu:.2} us per exported record (median {dcpu_med:.2})  (target <= 5 us: {}; {:.2}x target); rotel CPU {rcpu:.2} us per record",
        verdict(dcpu <= 5.0),
        dcpu / 5.0
    );
}

/// (steal, total) jiffies of all CPUs, from the first line of /proc/stat.
fn cpu_steal() -> (u64, u64) {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else { return (0, 0) };
    let Some(line) = stat.lines().next() else { return (0, 0) };
    // cpu user nice system idle iowait irq softirq steal guest guest_nice
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total = v.iter().take(8).sum();
    (v.get(7).copied().unwrap_or(0), total)
}

fn steal_pct(a: (u64, u64), b: (u64, u64)) -> f64 {
    let total = b.1.saturating_sub(a.1);
    if total == 0 {
        return 0.0;
    }
    100.0 * b.0.saturating_sub(a.0) as f64 / total as f64
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

fn fsync_ms() -> f64 {
    let p = bench_tmp().join("fsync-probe");
    let Ok(mut f) = std::fs::File::create(&p) else { return f64::NAN };
    let t = Instant::now();
    for _ in 0..20 {
        let _ = f.write_all(&[0u8; 4096]);
        let _ = f.sync_data();
    }
    let _ = std::fs::remove_file(&p);
    t.elapsed().as_secs_f64() * 1000.0 / 20.0
}
