//! The running probe: the ring-buffer reader (tokio, `AsyncFd`), the rate
//! limiter, the /proc capture, and a worker thread that unwinds, builds
//! records and sends them to the collector.
//!
//! ```text
//!  RingBuf ─AsyncFd─▶ parse ─▶ rate limit ─▶ capture /proc/PID ─▶ queue ─▶ worker: unwind, record, Client::send
//!                      │           │ dropped: counted                 │ full: counted
//!                      └─▶ blackbox::Recorder (exec, exit; fatal signal, OOM while recording) ─▶ blackbox socket
//!  LOST map ─(1 s)─▶ warning when the kernel side lost events (ring buffer full); gaps for the black box
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aya::maps::{MapData, RingBuf};
use event_types::{KIND_EXIT, KIND_FATAL_SIGNAL, KIND_OOM};
use telemetry::client::{Client, ClientError};
use telemetry::Record;
use thiserror::Error;
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{signal, SignalKind};
use unwind::Unwinder;

use crate::blackbox::{Feed, Recorder};
use crate::capture::{capture, unwind, unwind_oom, Capture};
use crate::event::{parse, Event, FatalSignal, OomKill, OomStack};
use crate::exec::HeldExes;
use crate::filters::Filters;
use crate::loader::{object_bytes, LoadError, Lost, Probes};
use crate::ratelimit::{Limit, RateLimiter, Verdict};
use crate::report::{exit_record, fatal_record, oom_record, Classes, OomVictim};

/// How the probe runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The eBPF object to load instead of the embedded one.
    pub object: Option<PathBuf>,
    /// The collector's socket.
    pub socket: PathBuf,
    pub filters: Filters,
    /// Ring buffer bytes (power of two).
    pub ring_bytes: u32,
    pub per_key: Limit,
    pub global: Limit,
    /// Jobs waiting for the worker before new ones are dropped.
    pub queue: usize,
    /// Enable BPF run-time statistics and print them at exit.
    pub bpf_stats: bool,
    /// Stop after this long (benchmarks, tests); else run until SIGTERM/SIGINT.
    pub duration: Option<Duration>,
    /// Timeout of one send to the collector.
    pub send_timeout: Duration,
    /// List the registers beyond ip/sp/bp in fatal-signal records
    /// (`event_registers`, see [`crate::config`]).
    pub registers: bool,
    /// Use only the kernel's module names, never /proc/PID (`--no-proc-maps`).
    pub no_proc_maps: bool,
    /// The collector's blackbox socket to feed (None: no black box).
    pub blackbox: Option<PathBuf>,
}

/// Why the probe stopped with an error.
#[derive(Debug, Error)]
pub enum DaemonError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("cannot watch the ring buffer: {0}")]
    Poll(std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("invalid record classification: {0}")]
    Classification(telemetry::ClassificationError),
    #[error("cannot start the worker thread: {0}")]
    Worker(std::io::Error),
}

/// Counters of what happened, printed at exit (never silent about loss).
#[derive(Debug, Default)]
pub struct Counters {
    pub fatal: AtomicU64,
    pub exit: AtomicU64,
    pub oom: AtomicU64,
    pub bad_records: AtomicU64,
    pub rate_limited: AtomicU64,
    pub queue_dropped: AtomicU64,
    pub maps_missing: AtomicU64,
    pub sent: AtomicU64,
    pub send_failed: AtomicU64,
    /// Fatal-signal records whose unwound backtrace reached `main` (or
    /// Go's `main.main`): symbolized down to main.
    pub unwound_to_main: AtomicU64,
    /// OOM records with the victim's stack.
    pub oom_stacks: AtomicU64,
}

/// Final figures.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub fatal: u64,
    pub exit: u64,
    pub oom: u64,
    pub bad_records: u64,
    pub lost_kernel: Lost,
    pub rate_limited: u64,
    pub queue_dropped: u64,
    pub maps_missing: u64,
    pub sent: u64,
    pub send_failed: u64,
    pub unwound_to_main: u64,
    pub oom_stacks: u64,
    pub elapsed: Duration,
    /// (program, runs, run time ns) when BPF statistics were on.
    pub bpf_stats: Vec<(&'static str, u64, u64)>,
    /// The black box's feed: entries queued, acknowledged, dropped.
    pub blackbox: crate::blackbox::outbox::OutboxStats,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "eventprobe: summary fatal={} exit={} oom={} lost_kernel={} lost_kernel_fatal={} rate_limited={} queue_dropped={} bad_records={} maps_missing={} sent={} send_failed={} unwound_to_main={} oom_stacks={} lost_kernel_blackbox={} blackbox_entries={} blackbox_acked={} blackbox_dropped={} elapsed_ms={}",
            self.fatal,
            self.exit,
            self.oom,
            self.lost_kernel.total(),
            self.lost_kernel.fatal,
            self.rate_limited,
            self.queue_dropped,
            self.bad_records,
            self.maps_missing,
            self.sent,
            self.send_failed,
            self.unwound_to_main,
            self.oom_stacks,
            self.lost_kernel.bb_exec + self.lost_kernel.bb_exit,
            self.blackbox.queued,
            self.blackbox.acked,
            self.blackbox.dropped,
            self.elapsed.as_millis()
        )?;
        for (name, runs, ns) in &self.bpf_stats {
            write!(f, "\neventprobe: bpf-stats prog={name} runs={runs} run_time_ns={ns}")?;
        }
        Ok(())
    }
}

enum Job {
    Fatal(Box<FatalSignal>, Box<Capture>, u64),
    /// An OOM kill, with the victim's stack (and its capture, its cgroup's
    /// path) when its exit sent it.
    Oom(Box<OomKill>, Option<(Box<OomStack>, Box<Capture>, Option<String>)>, u64),
    Record(Record),
}

/// How often the ring is read without a wakeup (exec events do not wake
/// the reader).
const EXEC_DRAIN: Duration = Duration::from_millis(100);

/// How long an OOM kill waits for its victim's exit (and stack).
const OOM_STACK_WAIT: Duration = Duration::from_secs(5);

struct Reader {
    classes: Classes,
    limiter: RateLimiter,
    tx: SyncSender<Job>,
    counters: Arc<Counters>,
    no_proc_maps: bool,
    /// Fatal signals of processes already gone, waiting for the modules
    /// named at the thread's exit, by tid.
    waiting: HashMap<u32, (Box<FatalSignal>, Box<Capture>, u64, Instant)>,
    /// Executables held open while their processes live.
    held: HeldExes,
    /// OOM kills waiting for their victim's stack, by the victim's tid.
    waiting_oom: HashMap<u32, (Box<OomKill>, u64, Instant)>,
    /// Whether a victim's exit sends its stack (the exit program runs).
    oom_stacks: bool,
    /// The kernel log, for the constraint of OOM kills.
    kmsg: Option<crate::kmsg::Kmsg>,
    /// The black box's entries (None: no feed).
    blackbox: Option<Recorder>,
}

impl Reader {
    fn handle(&mut self, bytes: &[u8]) {
        let ev = match parse(bytes) {
            Ok(e) => e,
            Err(e) => {
                self.counters.bad_records.fetch_add(1, Ordering::Relaxed);
                tracing::error!("{e}");
                return;
            }
        };
        // Events that make no record of their own.
        let ev = match ev {
            Event::ExecBlackbox(e) => {
                if let Some((dev, ino)) = e.hold {
                    self.held.exec(e.task.pid, dev, ino);
                }
                if let Some(bb) = self.blackbox.as_mut() {
                    bb.exec(*e);
                }
                return;
            }
            Event::ProcessExit(x) => {
                if let Some(bb) = self.blackbox.as_mut() {
                    bb.exit(&x);
                }
                return;
            }
            Event::Exec { task, dev, ino } => {
                self.held.exec(task.pid, dev, ino);
                return;
            }
            Event::OomStack(s) => {
                if let Some((o, suppressed, _)) = self.waiting_oom.remove(&s.task.tid) {
                    let held = &self.held;
                    let cap = Capture::of_oom_victim(&s, &|k| held.get(k));
                    // Now, while the victim's cgroup still exists.
                    let cgroup = crate::cgroup::path_of(s.cgroup_id);
                    self.queue(Job::Oom(o, Some((s, Box::new(cap), cgroup)), suppressed));
                }
                return;
            }
            Event::Modules(m) => {
                // The modules of a fatal signal waiting for them.
                if let Some((mut f, mut cap, suppressed, _)) = self.waiting.remove(&m.task.tid) {
                    let held = &self.held;
                    cap.use_kernel_modules(&m, &|k| held.get(k));
                    f.modules = Some(m);
                    self.queue(Job::Fatal(f, cap, suppressed));
                }
                return;
            }
            ev => ev,
        };
        if let Some(bb) = self.blackbox.as_mut() {
            bb.event(&ev);
        }
        let (kind, comm) = match &ev {
            Event::Fatal(f) => (KIND_FATAL_SIGNAL, f.task.comm.as_str()),
            Event::Exit(e) => (KIND_EXIT, e.task.comm.as_str()),
            Event::Oom(o) => (KIND_OOM, o.victim.comm.as_str()),
            _ => return,
        };
        let c = match kind {
            KIND_FATAL_SIGNAL => &self.counters.fatal,
            KIND_EXIT => &self.counters.exit,
            _ => &self.counters.oom,
        };
        c.fetch_add(1, Ordering::Relaxed);
        let suppressed = match self.limiter.check(kind, comm, Instant::now()) {
            Verdict::Pass { suppressed } => suppressed,
            Verdict::Drop => {
                self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let job = match ev {
            Event::Fatal(f) => {
                // At once, while the process may still exist.
                let cap = capture(&f, self.no_proc_maps);
                if cap.missing.is_some() {
                    self.counters.maps_missing.fetch_add(1, Ordering::Relaxed);
                    if f.modules_follow {
                        // Gone: wait for the modules the kernel names at
                        // the thread's exit (it follows in the ring).
                        self.waiting.insert(f.task.tid, (f, Box::new(cap), suppressed, Instant::now()));
                        return;
                    }
                }
                Job::Fatal(f, Box::new(cap), suppressed)
            }
            Event::Exit(e) => Job::Record(exit_record(&self.classes, &e, suppressed)),
            Event::Oom(mut o) => {
                o.kernel_line = self.kmsg.as_mut().and_then(|k| k.line_for(o.victim.pid));
                if self.oom_stacks {
                    // The victim's exit sends its stack (it follows).
                    self.waiting_oom.insert(o.victim.pid, (Box::new(o), suppressed, Instant::now()));
                    return;
                }
                Job::Oom(Box::new(o), None, suppressed)
            }
            _ => return,
        };
        self.queue(job);
    }

    /// Fatal signals whose modules did not come (the exit event was lost)
    /// go on without them.
    fn flush_waiting(&mut self, older_than: Duration) {
        let now = Instant::now();
        let stale: Vec<u32> =
            self.waiting.iter().filter(|(_, w)| now.duration_since(w.3) >= older_than).map(|(t, _)| *t).collect();
        for tid in stale {
            if let Some((f, cap, suppressed, _)) = self.waiting.remove(&tid) {
                self.queue(Job::Fatal(f, cap, suppressed));
            }
        }
        // OOM victims that did not exit in time (or whose stack was lost).
        let oom_wait = if older_than.is_zero() { Duration::ZERO } else { OOM_STACK_WAIT };
        let stale: Vec<u32> =
            self.waiting_oom.iter().filter(|(_, w)| now.duration_since(w.2) >= oom_wait).map(|(t, _)| *t).collect();
        for tid in stale {
            if let Some((o, suppressed, _)) = self.waiting_oom.remove(&tid) {
                self.queue(Job::Oom(o, None, suppressed));
            }
        }
    }

    fn queue(&mut self, job: Job) {
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.counters.queue_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> usize {
        let mut n = 0;
        while let Some(item) = ring.next() {
            self.handle(&item);
            n += 1;
        }
        n
    }
}

/// Sends records, reconnecting when the connection breaks.
struct Sender {
    socket: PathBuf,
    timeout: Duration,
    client: Option<Client>,
    warned: bool,
}

impl Sender {
    fn send(&mut self, record: &Record) -> Result<(), ClientError> {
        for attempt in 0..2 {
            if self.client.is_none() {
                self.client = Some(Client::connect_path(&self.socket, self.timeout)?);
            }
            let Some(client) = self.client.as_mut() else { continue };
            match client.send(record) {
                Ok(_) => return Ok(()),
                Err(e @ ClientError::Rejected { .. }) | Err(e @ ClientError::Payload(_)) => return Err(e),
                Err(e) => {
                    self.client = None;
                    if attempt == 1 {
                        return Err(e);
                    }
                }
            }
        }
        Err(ClientError::Closed)
    }
}

fn worker(
    rx: Receiver<Job>,
    classes: Classes,
    socket: PathBuf,
    timeout: Duration,
    counters: Arc<Counters>,
    registers: bool,
) {
    let unwinder = Arc::new(Unwinder::new(unwind::Options::default()));
    let boot_id = match telemetry::BootId::read() {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::warn!("cannot read the boot id ({e}): fatal-signal records get random event ids");
            None
        }
    };
    let mut sender = Sender { socket, timeout, client: None, warned: false };
    for job in rx {
        let record = match job {
            Job::Fatal(f, cap, suppressed) => {
                let stacks = unwind(&unwinder, &f, &cap);
                let to_main = stacks
                    .unwound
                    .as_ref()
                    .is_some_and(|bt| bt.frames.iter().any(|fr| matches!(fr.function(), Some("main" | "main.main"))));
                if to_main {
                    counters.unwound_to_main.fetch_add(1, Ordering::Relaxed);
                }
                fatal_record(&classes, &f, &cap, &stacks, boot_id.as_ref(), suppressed, registers)
            }
            Job::Oom(o, victim, suppressed) => {
                if victim.is_some() {
                    counters.oom_stacks.fetch_add(1, Ordering::Relaxed);
                }
                let v = victim.map(|(s, cap, cgroup)| {
                    let bt = unwind_oom(&unwinder, &s, &cap);
                    OomVictim { stack: s, backtrace: bt, kernel_modules: cap.kernel_modules, cgroup }
                });
                oom_record(&classes, &o, v.as_ref(), suppressed)
            }
            Job::Record(r) => r,
        };
        match sender.send(&record) {
            Ok(()) => {
                counters.sent.fetch_add(1, Ordering::Relaxed);
                sender.warned = false;
            }
            Err(e) => {
                counters.send_failed.fetch_add(1, Ordering::Relaxed);
                if !sender.warned {
                    tracing::warn!("cannot send a {} record: {e}", record.classification.as_str());
                    sender.warned = true;
                }
            }
        }
    }
}

/// Loads, attaches and runs until SIGTERM/SIGINT (or `duration`).
pub async fn run(opts: Options) -> Result<Summary, DaemonError> {
    let classes = Classes::suite().map_err(DaemonError::Classification)?;
    let object = object_bytes(opts.object.as_deref())?;
    let mut probes = Probes::load(&object, &opts.filters, opts.ring_bytes, opts.bpf_stats, opts.blackbox.is_some())?;
    let ring = probes.take_ring()?;
    let feed = match &opts.blackbox {
        Some(path) if probes.blackbox_supported() => Some(Feed::start(path.clone(), probes.take_blackbox_switch()?)),
        Some(_) => {
            tracing::warn!("the kernel lacks what the black box reads (see the warning above): no blackbox feed");
            None
        }
        None => None,
    };
    // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged, for
    // as long as the AsyncFd holds it.
    let mut afd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| DaemonError::Poll(e.into()))?;
    let counters = Arc::new(Counters::default());
    let (tx, rx) = sync_channel::<Job>(opts.queue.max(1));
    let wc = counters.clone();
    let (socket, timeout, wclasses, registers) =
        (opts.socket.clone(), opts.send_timeout, classes.clone(), opts.registers);
    let worker = std::thread::Builder::new()
        .name("eventprobe-worker".into())
        .spawn(move || worker(rx, wclasses, socket, timeout, wc, registers))
        .map_err(DaemonError::Worker)?;
    let mut reader = Reader {
        classes,
        limiter: RateLimiter::new(opts.per_key, opts.global, Instant::now()),
        tx,
        counters: counters.clone(),
        no_proc_maps: opts.no_proc_maps,
        waiting: HashMap::new(),
        held: HeldExes::default(),
        waiting_oom: HashMap::new(),
        oom_stacks: opts.filters.oom,
        kmsg: opts.filters.oom.then(crate::kmsg::Kmsg::open),
        blackbox: feed.clone().map(|f| Recorder::new(f, crate::cgroup::root())),
    };
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // Exec events are written without waking the reader (a wakeup per
    // exec is an inter-processor interrupt, the most of their cost on a
    // VM): they are read at the next wakeup, or at the latest here.
    let mut exec_drain = tokio::time::interval(EXEC_DRAIN);
    let started = Instant::now();
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let mut last_lost = Lost::default();
    tracing::info!("attached; sending to {}", opts.socket.display());
    println!("eventprobe: ready");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    loop {
        tokio::select! {
            guard = afd.readable_mut() => {
                let mut guard = guard.map_err(DaemonError::Poll)?;
                reader.drain(guard.get_inner_mut());
                guard.clear_ready();
            }
            _ = exec_drain.tick() => {
                reader.drain(afd.get_mut());
            }
            _ = tick.tick() => {
                reader.flush_waiting(Duration::from_secs(2));
                reader.held.sweep();
                if let Ok(l) = probes.lost() {
                    if let Some(bb) = reader.blackbox.as_mut() {
                        bb.tick(&l);
                    }
                    if l.total() > last_lost.total() {
                        tracing::warn!(
                            "kernel ring buffer full: {} events lost in the last second ({} in all: fatal {}, exit {}, oom {}); raise --ring-bytes",
                            l.total() - last_lost.total(), l.total(), l.fatal, l.exit, l.oom
                        );
                        last_lost = l;
                    }
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break,
        }
    }
    // What is already in the ring is still reported.
    reader.drain(afd.get_mut());
    reader.flush_waiting(Duration::ZERO);
    if let Some(f) = &feed {
        if let (Ok(l), Some(bb)) = (probes.lost(), reader.blackbox.as_mut()) {
            bb.tick(&l);
        }
        if !f.flush(Duration::from_secs(2)).await {
            tracing::warn!("blackbox: the collector did not acknowledge every entry before exit");
        }
    }
    let elapsed = started.elapsed();
    drop(reader);
    if worker.join().is_err() {
        tracing::error!("the worker thread panicked");
    }
    let lost = probes.lost().unwrap_or_default();
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    Ok(Summary {
        fatal: get(&counters.fatal),
        exit: get(&counters.exit),
        oom: get(&counters.oom),
        bad_records: get(&counters.bad_records),
        lost_kernel: lost,
        rate_limited: get(&counters.rate_limited),
        queue_dropped: get(&counters.queue_dropped),
        maps_missing: get(&counters.maps_missing),
        sent: get(&counters.sent),
        send_failed: get(&counters.send_failed),
        unwound_to_main: get(&counters.unwound_to_main),
        oom_stacks: get(&counters.oom_stacks),
        elapsed,
        blackbox: feed.as_ref().map(Feed::stats).unwrap_or_default(),
        bpf_stats: if opts.bpf_stats {
            probes.prog_stats().into_iter().map(|(n, s)| (n, s.runs, s.run_time_ns)).collect()
        } else {
            Vec::new()
        },
    })
}
