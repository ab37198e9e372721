//! Events turned into records: classification, severity, event id and the
//! text payload.
//!
//! | event          | classification                 | severity       | event id |
//! |----------------|--------------------------------|----------------|----------|
//! | fatal signal   | `org.clearlinux/signal/fatal`  | 3 (high)       | [`crash_event_id`] (same as crashprobe) |
//! | OOM kill       | `org.clearlinux/oom/kill`      | 3 (high)       | random |
//! | abnormal exit  | `org.clearlinux/exit/abnormal` | 2 (medium)     | random |
//!
//! A fatal signal kills a program because of a bug and an OOM kill loses
//! work the user did not choose to lose: both are "high". A non-zero exit
//! is often deliberate (a failed `grep`), so it is "medium".

use std::fmt::Write as _;

use telemetry::crash_id::crash_event_id;
use telemetry::{BootId, Classification, ClassificationError, EventId, Payload, Record, Severity, DEFAULT_DOMAIN};
use unwind::Backtrace;

use crate::capture::{frame_line, Capture, Stacks};
use crate::event::{AbnormalExit, Dumpable, FatalSignal, KernelFrame, OomKill, OomStack};
use crate::filters::signal_name;

/// Most frames written per stack (keeps the payload far below 64 KiB).
pub const MAX_FRAMES_SHOWN: usize = 64;

/// What a record of a process that is not dumpable says instead of its
/// stack copy (the kernel copied no stack and no registers beyond ip/sp).
pub const WITHHELD_NOT_DUMPABLE: &str = "memory withheld: the process is not dumpable";
/// The same when the dumpable state could not be read.
pub const WITHHELD_UNKNOWN: &str = "memory withheld: the process's dumpable state could not be read";

pub const CLASS_FATAL: &str = "signal/fatal";
pub const CLASS_EXIT: &str = "exit/abnormal";
pub const CLASS_OOM: &str = "oom/kill";

/// The three classifications, parsed once.
#[derive(Debug, Clone)]
pub struct Classes {
    pub fatal: Classification,
    pub exit: Classification,
    pub oom: Classification,
}

impl Classes {
    /// `<domain>/signal/fatal`, `<domain>/exit/abnormal`, `<domain>/oom/kill`.
    pub fn new(domain: &str) -> Result<Classes, ClassificationError> {
        let c = |tail: &str| Classification::parse(&format!("{domain}/{tail}"));
        Ok(Classes { fatal: c(CLASS_FATAL)?, exit: c(CLASS_EXIT)?, oom: c(CLASS_OOM)? })
    }

    /// The suite's domain (`telemetry::DEFAULT_DOMAIN`).
    pub fn suite() -> Result<Classes, ClassificationError> {
        Classes::new(DEFAULT_DOMAIN)
    }
}

/// The event id of a crash as every probe derives it, or `None` when the
/// boot id or the process start time is unknown.
pub fn fatal_event_id(boot_id: Option<&BootId>, pid: u32, start_ticks: Option<u64>) -> Option<EventId> {
    Some(crash_event_id(boot_id?, pid, start_ticks?))
}

/// `SEGV_MAPERR` for (11, 1), else the number.
pub fn si_code_name(sig: i32, code: i32) -> String {
    let name = match (sig, code) {
        (_, 0) => "SI_USER",
        (_, -6) => "SI_TKILL",
        (_, -1) => "SI_QUEUE",
        (_, 0x80) => "SI_KERNEL",
        (11, 1) => "SEGV_MAPERR",
        (11, 2) => "SEGV_ACCERR",
        (11, 3) => "SEGV_BNDERR",
        (11, 4) => "SEGV_PKUERR",
        (7, 1) => "BUS_ADRALN",
        (7, 2) => "BUS_ADRERR",
        (7, 3) => "BUS_OBJERR",
        (4, 1) => "ILL_ILLOPC",
        (4, 2) => "ILL_ILLOPN",
        (4, 5) => "ILL_PRVOPC",
        (8, 1) => "FPE_INTDIV",
        (8, 2) => "FPE_INTOVF",
        (5, 1) => "TRAP_BRKPT",
        (5, 2) => "TRAP_TRACE",
        (31, 1) => "SYS_SECCOMP",
        _ => return code.to_string(),
    };
    format!("{code} ({name})")
}

/// The fatal-signal record.
pub fn fatal_record(
    classes: &Classes,
    f: &FatalSignal,
    cap: &Capture,
    stacks: &Stacks,
    boot_id: Option<&BootId>,
    suppressed: u64,
    all_registers: bool,
) -> Record {
    let start = f.start_ticks.or(cap.start_ticks);
    let mut p = String::new();
    let _ = writeln!(p, "Process: {}", cap.exe.as_deref().unwrap_or(&f.task.comm));
    let _ = writeln!(p, "PID: {}", f.task.pid);
    let _ = writeln!(p, "TID: {}", f.task.tid);
    let _ = writeln!(p, "Comm: {}", f.task.comm);
    let _ = writeln!(p, "UID: {}", f.task.uid);
    let _ = writeln!(p, "Signal: {} ({})", f.signal, signal_name(f.signal));
    let _ = writeln!(p, "si_code: {}", si_code_name(f.signal, f.si_code));
    if let Some(a) = f.fault_addr {
        let _ = writeln!(p, "Fault address: {a:#x}");
    }
    if let Some(t) = start {
        let _ = writeln!(p, "Start time (ticks since boot): {t}");
    }
    if let Some(r) = &f.regs {
        let _ = write!(p, "Registers: ip={:#x} sp={:#x}", r.ip, r.sp);
        if f.dumpable.allows_memory() {
            let _ = write!(p, " bp={:#x}", r.bp);
            if all_registers {
                let _ = write!(
                    p,
                    " ax={:#x} bx={:#x} cx={:#x} dx={:#x} si={:#x} di={:#x} r8={:#x} r9={:#x} r10={:#x} r11={:#x} r12={:#x} r13={:#x} r14={:#x} r15={:#x}",
                    r.ax, r.bx, r.cx, r.dx, r.si, r.di, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15
                );
            }
        }
        p.push('\n');
    }
    match f.dumpable {
        Dumpable::User => {
            let _ = writeln!(p, "Stack copy: {} bytes from {:#x}", f.stack.len(), f.stack_base);
        }
        Dumpable::No(_) => {
            let _ = writeln!(p, "{WITHHELD_NOT_DUMPABLE}");
        }
        Dumpable::Unknown => {
            let _ = writeln!(p, "{WITHHELD_UNKNOWN}");
        }
    }
    match (&cap.missing, cap.kernel_modules) {
        (Some(why), Some((n, opened))) => {
            let _ = writeln!(
                p,
                "Mappings: named by the kernel at the signal ({n} executable mappings, {opened} files opened; {} lookups, {} with the mmap lock busy; /proc/PID/maps: {why})",
                f.modules.as_ref().map_or(0, |m| m.lookups),
                f.modules.as_ref().map_or(0, |m| m.busy)
            );
        }
        (Some(why), None) => {
            let _ = writeln!(p, "Mappings: unavailable ({why}); frames are unsymbolized addresses");
        }
        (None, _) => {}
    }
    if suppressed > 0 {
        let _ = writeln!(p, "Suppressed before this one (rate limit): {suppressed}");
    }
    match &stacks.unwound {
        Some(bt) => {
            let _ = writeln!(p, "Backtrace (unwound: cfi, then frame pointers, then scan; end: {:?}):", bt.end);
            for (i, fr) in bt.frames.iter().take(MAX_FRAMES_SHOWN).enumerate() {
                let _ = writeln!(p, "{}", frame_line(i, fr));
            }
        }
        None => {
            let _ = writeln!(p, "Backtrace (unwound): unavailable (no user registers)");
        }
    }
    let _ = writeln!(p, "Frame-pointer stack (bpf_get_stack):");
    for (i, fr) in stacks.frame_pointer.frames.iter().take(MAX_FRAMES_SHOWN).enumerate() {
        let _ = writeln!(p, "{}", frame_line(i, fr));
    }
    if (cap.missing.is_some() || !f.dumpable.allows_memory()) && !f.build_id_frames.is_empty() {
        // The only symbolizable form left: what the kernel resolved while
        // the process existed.
        let _ = writeln!(p, "Frame-pointer stack by build id (resolved in the kernel):");
        for (i, k) in f.build_id_frames.iter().enumerate() {
            let _ = match k {
                KernelFrame::Resolved { build_id, file_offset } => {
                    writeln!(p, "#{i:<2} build-id {build_id} file-offset {file_offset:#x}")
                }
                KernelFrame::Address(a) => writeln!(p, "#{i:<2} {a:#018x}"),
            };
        }
    }
    let mut b = Record::builder(classes.fatal.clone(), Severity::High, Payload::text(p));
    if let Some(id) = fatal_event_id(boot_id, f.task.pid, start) {
        b = b.event_id(id);
    }
    b.build()
}

/// The abnormal-exit record.
pub fn exit_record(classes: &Classes, e: &AbnormalExit, suppressed: u64) -> Record {
    let mut p = String::new();
    let _ = writeln!(p, "PID: {}", e.task.pid);
    let _ = writeln!(p, "TID: {}", e.task.tid);
    let _ = writeln!(p, "Comm: {}", e.task.comm);
    let _ = writeln!(p, "UID: {}", e.task.uid);
    let _ = writeln!(p, "Exit code: {}", e.status());
    if suppressed > 0 {
        let _ = writeln!(p, "Suppressed before this one (rate limit): {suppressed}");
    }
    Record::builder(classes.exit.clone(), Severity::Medium, Payload::text(p)).build()
}

/// What the victim's exit gave an OOM-kill record.
pub struct OomVictim {
    pub stack: Box<OomStack>,
    pub backtrace: Backtrace,
    /// (executable mappings named by the kernel, files opened).
    pub kernel_modules: Option<(usize, usize)>,
    /// The cgroup's path under the cgroup2 root, when it still existed.
    pub cgroup: Option<String>,
}

/// What an OOM-kill record says when the kernel's summary line is missing.
pub const CONSTRAINT_UNKNOWN: &str = "unknown (no tracepoint carries it and the kernel's oom-kill summary line naming this pid was not in its log: rate-limited, or /dev/kmsg unreadable)";

/// The OOM-kill record.
pub fn oom_record(classes: &Classes, o: &OomKill, victim: Option<&OomVictim>, suppressed: u64) -> Record {
    let mut p = String::new();
    let _ = writeln!(p, "PID: {}", o.victim.pid);
    let _ = writeln!(p, "Comm: {}", o.victim.comm);
    let _ = writeln!(p, "UID: {}", o.victim.uid);
    let _ = writeln!(p, "RSS: {} kB", o.anon_rss_kb.saturating_add(o.file_rss_kb).saturating_add(o.shmem_rss_kb));
    let _ = writeln!(p, "Total VM: {} kB", o.total_vm_kb);
    let _ = writeln!(p, "Anon RSS: {} kB", o.anon_rss_kb);
    let _ = writeln!(p, "File RSS: {} kB", o.file_rss_kb);
    let _ = writeln!(p, "Shmem RSS: {} kB", o.shmem_rss_kb);
    let _ = writeln!(p, "Page tables: {} kB", o.pgtables_kb);
    let _ = writeln!(p, "oom_score_adj: {}", o.oom_score_adj);
    match &o.kernel_line {
        Some(l) => {
            let _ = writeln!(p, "OOM constraint: {}", l.constraint);
            if let Some(m) = &l.oom_memcg {
                let _ = writeln!(p, "OOM memcg: {m}");
            }
            if let Some(m) = &l.task_memcg {
                let _ = writeln!(p, "Memory cgroup: {m}");
            }
        }
        None => {
            let _ = writeln!(p, "OOM constraint: {CONSTRAINT_UNKNOWN}");
        }
    }
    match victim {
        Some(v) => {
            let s = &v.stack;
            match &v.cgroup {
                Some(c) => {
                    let _ = writeln!(p, "Cgroup: {c} (id {})", s.cgroup_id);
                }
                None => {
                    let _ = writeln!(p, "Cgroup: id {} (its directory was gone)", s.cgroup_id);
                }
            }
            match s.dumpable {
                Dumpable::User => {
                    let _ = writeln!(p, "Stack copy: {} bytes from {:#x}", s.stack.len(), s.stack_base);
                }
                Dumpable::No(_) => {
                    let _ = writeln!(p, "{WITHHELD_NOT_DUMPABLE}");
                }
                Dumpable::Unknown => {
                    let _ = writeln!(p, "{WITHHELD_UNKNOWN}");
                }
            }
            if let Some((n, opened)) = v.kernel_modules {
                let _ = writeln!(
                    p,
                    "Mappings: named by the kernel at the victim's exit ({n} executable mappings, {opened} files opened; {} lookups, {} with the mmap lock busy)",
                    s.modules.lookups, s.modules.busy
                );
            }
            if let Some(r) = &s.regs {
                let _ = writeln!(p, "Registers: ip={:#x} sp={:#x}", r.ip, r.sp);
            }
            let _ = writeln!(
                p,
                "Backtrace at the kill (unwound: cfi, then frame pointers, then scan; end: {:?}):",
                v.backtrace.end
            );
            for (i, fr) in v.backtrace.frames.iter().take(MAX_FRAMES_SHOWN).enumerate() {
                let _ = writeln!(p, "{}", frame_line(i, fr));
            }
        }
        None => {
            let _ = writeln!(p, "Backtrace at the kill: unavailable (the victim's exit sent no stack)");
        }
    }
    if suppressed > 0 {
        let _ = writeln!(p, "Suppressed before this one (rate limit): {suppressed}");
    }
    Record::builder(classes.oom.clone(), Severity::High, Payload::text(p)).build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Task;

    fn task() -> Task {
        Task { pid: 10, tid: 11, uid: 0, comm: "x".into(), boot_ns: 0 }
    }

    #[test]
    fn classes_and_severities() {
        let classes = Classes::suite().unwrap();
        let r = exit_record(&classes, &AbnormalExit { task: task(), code: 3 }, 0);
        assert_eq!(r.classification.as_str(), "org.clearlinux/exit/abnormal");
        assert_eq!(r.severity, Severity::Medium);
        assert!(r.payload.to_text_lossy().contains("Exit code: 3"));
        let o = oom_record(
            &classes,
            &OomKill {
                victim: task(),
                total_vm_kb: 1,
                anon_rss_kb: 2,
                file_rss_kb: 3,
                shmem_rss_kb: 4,
                pgtables_kb: 5,
                oom_score_adj: 0,
                kernel_line: None,
            },
            None,
            7,
        );
        let t = o.payload.to_text_lossy();
        assert!(t.contains("RSS: 9 kB\n") && t.contains("OOM constraint: unknown"), "{t}");
        assert!(t.contains("Backtrace at the kill: unavailable"), "{t}");
        assert_eq!((o.classification.as_str(), o.severity), ("org.clearlinux/oom/kill", Severity::High));
        assert!(o.payload.to_text_lossy().contains("Suppressed before this one (rate limit): 7"));
    }

    #[test]
    fn event_id_matches_shared_derivation() {
        let boot = BootId::from_bytes([7u8; 16]);
        let id = fatal_event_id(Some(&boot), 42, Some(1234)).unwrap();
        assert_eq!(id, crash_event_id(&boot, 42, 1234));
        assert!(fatal_event_id(None, 42, Some(1)).is_none());
        assert!(fatal_event_id(Some(&boot), 42, None).is_none());
    }

    #[test]
    fn si_codes() {
        assert_eq!(si_code_name(11, 1), "1 (SEGV_MAPERR)");
        assert_eq!(si_code_name(6, -6), "-6 (SI_TKILL)");
        assert_eq!(si_code_name(6, 77), "77");
    }
}
