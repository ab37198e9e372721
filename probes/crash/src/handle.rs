//! One crash, from the core stream to the record. Shared by pipe mode and
//! socket mode; I/O is limited to the stream, `/proc/PID` (through fds
//! opened once) and the mapped files (through [`unwind::ProcOpener`]).

use std::fs::File;
use std::io::Read;
use std::os::fd::RawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use telemetry::crash_id::crash_event_id;
use telemetry::{BootId, EventId, Payload, Record};
use unwind::{FileOpener, HostOpener, Mapping, Module, ProcOpener, Unwinder};

use crate::config::{Config, ThirdParty};
use crate::core::{read_core_with, CoreError, KeepPolicy, AT_SYSINFO_EHDR};
use crate::governor::{Decision, Governor, Repeated};
use crate::procfs::{self, Process};
use crate::report::{self, CrashReport, Origin, ThreadReport};
use crate::security;
use crate::stream::Stream;

/// What the kernel (or the socket peer) told about the crash.
#[derive(Debug, Clone, Default)]
pub struct Input {
    /// PID in the initial namespace (`%P`, or the socket peer's).
    pub pid: Option<u32>,
    /// A pidfd of the crashed process (`%F`, or the socket peer's).
    pub pidfd: Option<RawFd>,
    /// `%d`: 1 dumpable, 0 or 2 not (memory withheld).
    pub dumpable: Option<u8>,
    /// `%t`: dump time, unix seconds.
    pub dump_time: Option<u64>,
    /// `%s`.
    pub signal: Option<i32>,
    /// Analyse a saved core without `/proc` (module files opened by the
    /// paths in the core, on this file system). Never used by the kernel.
    pub core_only: bool,
    /// Drop to the crashed user's credentials (the calling thread only)
    /// after opening what needs root.
    pub drop_privileges: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    #[error("the core cannot be read: {0}")]
    Core(#[from] CoreError),
    #[error(transparent)]
    Security(#[from] security::SecurityError),
}

/// The result of handling one crash.
#[derive(Debug)]
pub struct Outcome {
    /// `None` when policy says not to report (`crash_third_party = ignore`),
    /// or the governor counted the crash instead.
    /// Its payload is the full report; [`crate::deliver`] refits it to the
    /// limit the collector announces.
    pub record: Option<Record>,
    /// Whether the record carries a backtrace (false: third-party summary).
    pub unwound: bool,
    pub report: CrashReport,
    pub bytes_read: u64,
    /// What the crash-loop governor decided (`None`: not governed).
    pub governed: Option<Decision>,
    /// `crash/repeated` reports of governor windows now over, to send.
    pub repeated: Vec<Repeated>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

struct NoFiles;
impl FileOpener for NoFiles {
    fn open_mapping(&self, _: &Mapping) -> Option<File> {
        None
    }
    fn open_path(&self, _: &Path) -> Option<File> {
        None
    }
}

/// Handles one crash: binds to the process, drops privileges, reads the
/// core from `stream`, unwinds every thread (the crashing one first),
/// symbolizes, and builds the record. Never fails after the core's
/// headers were read: what went wrong is in the report's errors.
///
/// With a `governor`, the rest of the core (after the stacks) is read only
/// once the crashing thread's signature is admitted: a repeated crash is
/// counted and its core left unread (closing the stream ends the dump).
pub fn handle<R: Read>(
    stream: &mut Stream<R>,
    input: &Input,
    cfg: &Config,
    unwinder: &Arc<Unwinder>,
    deadline: Instant,
    governor: Option<&Governor>,
) -> Result<Outcome, HandleError> {
    let mut errors = Vec::new();
    // 1. The process, bound by pidfd or start time, while we are root.
    let process: Option<Process> = match (input.core_only, input.pid) {
        (true, _) | (false, None) => None,
        (false, Some(pid)) => match procfs::open(pid, input.pidfd, input.dump_time) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(error = %e, "no /proc access to the crashed process");
                errors.push(e.to_string());
                None
            }
        },
    };
    let memory_ok = match (input.dumpable, &process) {
        (Some(d), _) => d == 1,
        // Socket mode: /proc/PID of a non-dumpable process belongs to root.
        (None, Some(p)) => p.proc_owner == p.uid,
        (None, None) => input.core_only,
    };
    let opener: Arc<dyn FileOpener> = match (&process, input.core_only) {
        (_, true) => Arc::new(HostOpener),
        (Some(p), false) => match p.dir.try_clone() {
            Ok(dir) => {
                let o = ProcOpener::new(dir);
                if let Some(maps) = &p.maps {
                    o.preopen(maps);
                }
                Arc::new(o)
            }
            Err(_) => Arc::new(NoFiles),
        },
        (None, false) => Arc::new(NoFiles),
    };
    // Only now may the kernel write the rest of the core at once: with
    // `core_pipe_limit` 0, a core that fits in the enlarged pipe lets the
    // process exit, and its memory map, `map_files` and root go with it
    // (every module would be "in no known module").
    stream.grow_pipe();
    // 2. Nothing the user controls is read as root from here on.
    if input.drop_privileges {
        if let Some(p) = &process {
            security::drop_thread_privileges(p.uid, p.gid)?;
        } else {
            security::drop_thread_privileges(65534, 65534)?;
        }
    }
    // 3. The core.
    let policy = KeepPolicy {
        crashing_stack: cfg.stack_bytes,
        other_stack: (cfg.stack_bytes / 4).max(16 << 10),
        memory: memory_ok,
        ..KeepPolicy::default()
    };
    // Once the notes are in, load the symbols of the modules the backtraces
    // will surely show (each thread's pc, the executable, libc) on another
    // thread, while the rest of the core streams by and threads unwind.
    let mut warmer: Option<std::sync::mpsc::Receiver<()>> = None;
    let mut on_notes = |notes: &crate::core::Notes| {
        let maps = unwind::Mappings::new(notes.files.clone());
        let mut paths: Vec<String> = Vec::new();
        let mut want = |addr: u64| {
            if let Some(m) = maps.find(addr) {
                if let Some(p) = &m.path {
                    if !paths.contains(p) {
                        paths.push(p.clone());
                    }
                }
            }
        };
        for t in &notes.threads {
            if let Some(pc) = t.regs.pc() {
                want(pc);
            }
        }
        if let Some((_, entry)) = notes.auxv.iter().find(|(k, _)| *k == 9) {
            want(*entry);
        }
        for m in maps.iter() {
            if m.path.as_deref().is_some_and(|p| p.contains("/libc.so")) {
                want(m.start);
            }
        }
        let todo: Vec<Mapping> = paths.iter().filter_map(|p| maps.of_path(p).next().cloned()).collect();
        let (unwinder, opener) = (unwinder.clone(), opener.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new().name("warm-symbols".into()).spawn(move || {
            for m in &todo {
                unwinder.warm(m, opener.as_ref());
            }
            let _ = tx.send(());
        });
        warmer = spawned.ok().map(|_| rx);
    };
    // A non-dumpable process's memory is never read: after the notes the
    // stream is closed, which ends the kernel's dump.
    let core = read_core_with(stream, &policy, governor.is_none() && memory_ok, &mut on_notes)?;
    if let Some(why) = &core.incomplete {
        errors.push(format!("core incomplete: {why}"));
    }
    for e in &core.notes.errors {
        errors.push(format!("core note: {e}"));
    }
    if !memory_ok {
        errors.push("the process was not dumpable: memory-derived content withheld".into());
    }
    let exe = process
        .as_ref()
        .and_then(|p| p.exe.clone())
        .map(|e| e.strip_suffix(" (deleted)").map(String::from).unwrap_or(e))
        .or_else(|| {
            // The file mapped at the entry point (AT_ENTRY = 9).
            let entry = core.auxv(9)?;
            core.mappings.find(entry).and_then(|m| m.is_file().then(|| m.display_path().to_string()))
        })
        .or_else(|| core.notes.psinfo.as_ref().map(|p| String::from_utf8_lossy(&p.fname).into_owned()))
        .unwrap_or_else(|| "???".into());
    let pid = input.pid.or(core.notes.psinfo.as_ref().map(|p| p.pid)).unwrap_or(0);
    let signal = core
        .notes
        .siginfo
        .map(|s| s.signo)
        .or(input.signal)
        .or(core.notes.threads.first().map(|t| t.cursig as i32))
        .unwrap_or(0);
    let origin = report::origin(cfg, &exe);
    let mut report = CrashReport {
        process: exe,
        pid,
        signal,
        signal_code: core.notes.siginfo.map(|s| s.code),
        fault_address: core.notes.siginfo.and_then(|s| s.addr),
        threads: Vec::new(),
        errors,
        memory_withheld: !memory_ok,
        signature: None,
    };
    // 4. Unwind.
    let do_unwind = report::unwinds(cfg, origin);
    if do_unwind {
        let mut maps = core.mappings.clone();
        let mut session_maps_vdso = None;
        if let (Some(base), Some((addr, bytes))) = (core.auxv(AT_SYSINFO_EHDR), &core.vdso) {
            if base == *addr && maps.find(base).is_none() {
                maps.push_unchecked(Mapping {
                    start: base,
                    end: base + bytes.len() as u64,
                    offset: 0,
                    path: Some("[vdso]".into()),
                    exec: Some(true),
                    inode: None,
                });
                session_maps_vdso = Module::from_bytes(bytes.clone()).ok().map(|m| (base, m));
            }
        }
        let mut session = unwinder.session(&core.memory, &maps, opener.as_ref());
        // Unwinding needs only CFI; symbolize after the warmer is done.
        let mut bts = Vec::new();
        if let Some((base, m)) = session_maps_vdso {
            session.add_memory_module(base, m);
        }
        let total = core.notes.threads.len();
        for (i, t) in core.notes.threads.iter().enumerate() {
            if Instant::now() >= deadline {
                report.errors.push(format!("wall-clock budget ran out: {} of {total} threads not unwound", total - i));
                break;
            }
            bts.push((t.tid, i == 0, session.unwind(&t.regs)));
        }
        // Symbols are loaded by the warmer; if it outlives the budget, the
        // frames go unsymbolized (module, build-id and offset are there).
        let warmed =
            warmer.take().is_none_or(|rx| rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).is_ok());
        if !warmed {
            report.errors.push("wall-clock budget ran out while loading symbols: frames not symbolized".into());
        }
        for (tid, crashed, mut bt) in bts {
            if warmed && Instant::now() < deadline {
                session.symbolize(&mut bt);
            }
            report.threads.push(ThreadReport { tid, crashed, backtrace: bt });
        }
    }
    report.signature = crate::signature::compute(&report);
    // 5. The governor: count, and stop here when the crash is a repeat.
    let mut governed = None;
    let mut repeated = Vec::new();
    let mut bytes_read = core.bytes_read;
    if let Some(g) = governor {
        let now = unix_now();
        let counted = match &report.signature {
            Some(sig) => g.admit(sig, now).map(|(d, r)| (Some(d), r)),
            None => g.sweep(now).map(|r| (None, r)),
        };
        match counted {
            Ok((d, r)) => {
                governed = d;
                repeated = r;
            }
            // Never lose a crash to the governor's state.
            Err(e) => tracing::warn!(error = %e, "crash governor unavailable; sending the full record"),
        }
        if governed == Some(Decision::Repeated) {
            tracing::info!(signature = ?report.signature, "repeated crash counted; core not read further");
            return Ok(Outcome { record: None, report, unwound: do_unwind, bytes_read, governed, repeated });
        }
        if core.incomplete.is_none() && memory_ok {
            if let Err(e) = stream.drain() {
                report.errors.push(format!("core incomplete: {e}"));
            }
        }
        bytes_read = stream.pos();
    }
    // 6. The record.
    let (class, severity) = report::classify(origin, report.is_partial());
    let payload = if !do_unwind {
        report::THIRD_PARTY_PAYLOAD.to_string()
    } else {
        report::payload_fitting(&report, cfg.payload_version, usize::MAX)
    };
    let event_id = process
        .as_ref()
        .and_then(|p| BootId::read().ok().map(|b| crash_event_id(&b, p.pid, p.stat.start_time)))
        .unwrap_or_else(EventId::random);
    let skip = origin == Origin::ThirdParty && cfg.third_party == ThirdParty::Ignore;
    let record = (!skip).then(|| {
        Record::builder(class, severity, Payload::text(payload))
            .event_id(event_id)
            .payload_format_version(if do_unwind { cfg.payload_version } else { 1 })
            .build()
    });
    Ok(Outcome { record, report, unwound: do_unwind, bytes_read, governed, repeated })
}
