//! Ring-buffer records parsed into owned events (parse once: the rest of
//! eventprobe only sees [`Event`]).

use event_types::{
    comm_str, BuildIdFrame, EventHeader, ExecBlackboxEvent, ExecEvent, ExitEvent, FatalSignalEvent,
    FatalSignalOuterEvent, ModuleVma, ModulesEvent, OomEvent, OomStackEvent, ProcessExitEvent, UserRegs, ARGV_LEN,
    BUILD_ID_STATUS_IP, BUILD_ID_STATUS_VALID, DUMPABLE_UNKNOWN, DUMPABLE_USER, KIND_EXEC, KIND_EXEC_BLACKBOX,
    KIND_EXIT, KIND_FATAL_SIGNAL, KIND_MODULES, KIND_OOM, KIND_OOM_STACK, KIND_PROCESS_EXIT, MAX_FP_FRAMES,
    MAX_MODULES, OUTER_PAGES, PAGE_SIZE, PATH_DEPTH, STACK_PAGES,
};
use thiserror::Error;

/// Why ring-buffer bytes are not an event.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EventError {
    #[error("ring-buffer record of {len} bytes is too short for {what} ({need} bytes): kernel and user side disagree; rebuild both (`cargo xtask build-ebpf`, then eventprobe)")]
    Short { what: &'static str, len: usize, need: usize },
    #[error("ring-buffer record has unknown kind {0}")]
    Kind(u32),
}

/// Who an event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub comm: String,
    pub boot_ns: u64,
}

impl From<&EventHeader> for Task {
    fn from(h: &EventHeader) -> Task {
        Task { pid: h.pid, tid: h.tid, uid: h.uid, comm: comm_str(&h.comm).to_string(), boot_ns: h.boot_ns }
    }
}

/// A fatal signal, with what is needed to unwind the crashing thread.
#[derive(Clone)]
pub struct FatalSignal {
    pub task: Task,
    pub signal: i32,
    pub si_code: i32,
    pub errno: i32,
    pub sa_handler: u64,
    pub fault_addr: Option<u64>,
    /// Start of the process in clock ticks since boot (/proc/PID/stat
    /// field 22), when the kernel side could read it.
    pub start_ticks: Option<u64>,
    pub regs: Option<UserRegs>,
    /// `bpf_get_stack` frame-pointer addresses (empty when it failed).
    pub fp_frames: Vec<u64>,
    /// The same walk as the kernel resolved it, while the process existed.
    pub build_id_frames: Vec<KernelFrame>,
    /// Copied stack: base address and bytes (only up to the last page that
    /// was readable from the base; pages after a hole are dropped).
    pub stack_base: u64,
    pub stack: Vec<u8>,
    /// Whether the kernel would dump this process's core for its user
    /// (`SUID_DUMP_USER`). When not, the kernel side copied no stack and
    /// no registers beyond ip/sp.
    pub dumpable: Dumpable,
    /// A [`ModulesInfo`] of this thread follows (from its exit).
    pub modules_follow: bool,
    /// The executable file mappings under ip and the stack's words, named
    /// by the kernel as the thread exited (see `crate::modules`); filled
    /// from the [`ModulesInfo`] that follows.
    pub modules: Option<ModulesInfo>,
    /// The stack a handler on the alternate signal stack interrupted (Go
    /// re-raises a fatal signal from its handler): base and bytes.
    pub outer_stack: Option<(u64, Vec<u8>)>,
}

/// The executable mappings of a thread that died of a fatal signal, named
/// by the kernel at its exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModulesInfo {
    pub task: Task,
    pub modules: Vec<KernelModule>,
    /// `bpf_find_vma` lookups made, and how many found the mmap lock busy.
    pub lookups: u32,
    pub busy: u32,
}

/// An executable file mapping as the kernel named it at the signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelModule {
    pub start: u64,
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    /// Device (major, minor) and inode of the file.
    pub dev: (u32, u32),
    pub ino: u64,
    /// The path inside its file system (`/`-rooted), when the dentry walk
    /// reached the root.
    pub fs_path: Option<String>,
    /// The file's own name.
    pub name: String,
}

impl KernelModule {
    fn from_raw(m: &ModuleVma) -> Option<KernelModule> {
        if m.start >= m.end || m.depth == 0 {
            return None;
        }
        let depth = usize::from(m.depth).min(PATH_DEPTH);
        let names: Vec<String> = m.names[..depth].iter().map(|n| c_str(n)).collect();
        let name = names.first().cloned().unwrap_or_default();
        let fs_path = (m.rooted == 1).then(|| {
            let parts: Vec<&str> =
                names.iter().rev().map(String::as_str).filter(|n| *n != "/" && !n.is_empty()).collect();
            format!("/{}", parts.join("/"))
        });
        Some(KernelModule {
            start: m.start,
            end: m.end,
            offset: m.offset,
            // The kernel's dev_t: major << 20 | minor.
            dev: (m.dev >> 20, m.dev & 0xf_ffff),
            ino: m.ino,
            fs_path,
            name,
        })
    }
}

/// The process's dumpable state at the signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dumpable {
    /// `SUID_DUMP_USER`: its core would be written for its user.
    User,
    /// `SUID_DUMP_DISABLE` (0) or `SUID_DUMP_ROOT` (2): the kernel
    /// withholds its core from its user.
    No(u32),
    /// The state could not be read (treated as not dumpable).
    Unknown,
}

impl Dumpable {
    fn from_raw(v: u32) -> Dumpable {
        match v {
            DUMPABLE_USER => Dumpable::User,
            DUMPABLE_UNKNOWN => Dumpable::Unknown,
            v => Dumpable::No(v),
        }
    }

    /// Whether the process's memory and registers may be reported.
    pub fn allows_memory(self) -> bool {
        self == Dumpable::User
    }
}

impl std::fmt::Debug for FatalSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FatalSignal")
            .field("task", &self.task)
            .field("signal", &self.signal)
            .field("si_code", &self.si_code)
            .field("fp_frames", &self.fp_frames.len())
            .field("stack", &self.stack.len())
            .finish()
    }
}

/// A frame the kernel resolved (or not) to a module's build id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelFrame {
    /// GNU build id (hex) and file offset in that module.
    Resolved { build_id: String, file_offset: u64 },
    /// Only the address.
    Address(u64),
}

fn kernel_frames(frames: &[BuildIdFrame], bytes: i64) -> Vec<KernelFrame> {
    let n = if bytes > 0 { (bytes as usize / std::mem::size_of::<BuildIdFrame>()).min(frames.len()) } else { 0 };
    frames[..n]
        .iter()
        .filter_map(|f| match f.status {
            BUILD_ID_STATUS_VALID => {
                // The kernel zero-pads build ids shorter than 20 bytes (rare);
                // trailing zeros are kept, as tools print the full 20 bytes.
                let hex: String = f.build_id.iter().map(|b| format!("{b:02x}")).collect();
                Some(KernelFrame::Resolved { build_id: hex, file_offset: f.offset_or_ip })
            }
            BUILD_ID_STATUS_IP if f.offset_or_ip != 0 => Some(KernelFrame::Address(f.offset_or_ip)),
            _ => None,
        })
        .collect()
}

/// An `exit_group` with a non-zero code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbnormalExit {
    pub task: Task,
    pub code: i64,
}

impl AbnormalExit {
    /// The status a parent sees (`code & 0xff`).
    pub fn status(&self) -> u8 {
        (self.code & 0xff) as u8
    }
}

/// An OOM kill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OomKill {
    pub victim: Task,
    pub total_vm_kb: u64,
    pub anon_rss_kb: u64,
    pub file_rss_kb: u64,
    pub shmem_rss_kb: u64,
    pub pgtables_kb: u64,
    pub oom_score_adj: i32,
    /// The kernel's one-line summary of the kill (constraint, OOM memcg),
    /// from its log (see `crate::kmsg`); filled by the reader.
    pub kernel_line: Option<crate::kmsg::OomLine>,
}

/// An OOM victim's user stack where the kill found it, taken at its exit.
#[derive(Debug, Clone)]
pub struct OomStack {
    pub task: Task,
    pub regs: Option<UserRegs>,
    pub dumpable: Dumpable,
    /// The victim's cgroup v2 id (inode of its directory).
    pub cgroup_id: u64,
    pub stack_base: u64,
    pub stack: Vec<u8>,
    /// The executable mappings under ip and the stack's words.
    pub modules: ModulesInfo,
}

/// An exec seen while the black box records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlackboxExec {
    pub task: Task,
    /// The executable's (device (major, minor), inode) to hold open, when
    /// it passed the comm filters (as an [`Event::Exec`]).
    pub hold: Option<((u32, u32), u64)>,
    pub ppid: u32,
    pub cgroup_id: u64,
    /// The controlling terminal's name (`pts/3`), when there is one.
    pub tty: Option<String>,
    /// The path exec'd as the caller gave it (the tracepoint's filename).
    pub filename: String,
    /// The arguments as the kernel laid them out (see [`split_argv`]).
    pub argv: Vec<String>,
}

/// A thread group's end, seen while the black box records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessEnd {
    /// pid (the group), tid (its last thread), comm (the leader's).
    pub task: Task,
    pub ppid: u32,
    /// The wait status code (see [`ExitCode`]).
    pub code: ExitCode,
    /// The leader's start in `CLOCK_BOOTTIME` ns, or 0 when unknown.
    pub start_boottime_ns: u64,
}

/// A wait status code as the kernel keeps it (`exit_code`,
/// `group_exit_code`): what `WIFEXITED` and friends decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitCode(pub u32);

impl ExitCode {
    /// The exit status (0-255) when the process exited; None when killed.
    pub fn status(self) -> Option<i32> {
        (self.signal().is_none()).then_some(((self.0 >> 8) & 0xff) as i32)
    }

    /// The signal that killed it.
    pub fn signal(self) -> Option<i32> {
        let s = (self.0 & 0x7f) as i32;
        (s != 0).then_some(s)
    }

    /// The kernel dumped (or piped) its core.
    pub fn core_dumped(self) -> bool {
        self.signal().is_some() && self.0 & 0x80 != 0
    }
}

/// A terminal as people name it: the kernel calls pseudo-terminal 3
/// `pts3` (`tty_struct.name`), its device is `/dev/pts/3`, and `ps`, `who`
/// and `tty` say `pts/3`; other names (`tty1`, `ttyS0`) are kept.
pub fn tty_name(kernel: &str) -> String {
    match kernel.strip_prefix("pts") {
        Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => format!("pts/{n}"),
        _ => kernel.to_string(),
    }
}

/// The kernel's argument area (`argv[0]`, NUL, `argv[1]`, NUL, ...) as
/// strings; `cut` when the area was longer than what was copied (the last
/// argument is then partial and ends with `…`). Bytes that are not UTF-8
/// are replaced (U+FFFD).
pub fn split_argv(area: &[u8], cut: bool) -> Vec<String> {
    if area.is_empty() {
        return Vec::new();
    }
    let body = if !cut && area.last() == Some(&0) { &area[..area.len() - 1] } else { area };
    let mut args: Vec<String> = body.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    if cut {
        if let Some(last) = args.last_mut() {
            last.push('…');
        }
    }
    args
}

/// One event from the kernel side.
#[derive(Debug, Clone)]
pub enum Event {
    Fatal(Box<FatalSignal>),
    Exit(AbnormalExit),
    Oom(OomKill),
    OomStack(Box<OomStack>),
    Modules(ModulesInfo),
    /// A process exec'd the file (device (major, minor), inode).
    Exec {
        task: Task,
        dev: (u32, u32),
        ino: u64,
    },
    /// An exec while the black box records.
    ExecBlackbox(Box<BlackboxExec>),
    /// A thread group ended while the black box records.
    ProcessExit(ProcessEnd),
}

impl Event {
    pub fn kind_name(&self) -> &'static str {
        match self {
            Event::Fatal(_) => "fatal signal",
            Event::Exit(_) => "abnormal exit",
            Event::Oom(_) => "oom kill",
            Event::OomStack(_) => "oom victim stack",
            Event::Modules(_) => "modules",
            Event::Exec { .. } => "exec",
            Event::ExecBlackbox(_) => "exec (black box)",
            Event::ProcessExit(_) => "process exit (black box)",
        }
    }
}

/// Clock ticks per second of /proc/PID/stat (USER_HZ, 100 on Linux).
pub const USER_HZ: u64 = 100;

fn read<T: Copy>(bytes: &[u8], what: &'static str) -> Result<T, EventError> {
    let need = std::mem::size_of::<T>();
    if bytes.len() < need {
        return Err(EventError::Short { what, len: bytes.len(), need });
    }
    // SAFETY: length checked; T is a plain #[repr(C)] struct of integers
    // (any bit pattern valid); read_unaligned copes with any alignment.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Parses one ring-buffer record.
pub fn parse(bytes: &[u8]) -> Result<Event, EventError> {
    let header: EventHeader = read(bytes, "an event header")?;
    match header.kind {
        KIND_FATAL_SIGNAL => parse_fatal(bytes).map(|f| Event::Fatal(Box::new(f))),
        KIND_MODULES => parse_modules(bytes).map(Event::Modules),
        KIND_OOM_STACK => parse_oom_stack(bytes).map(|o| Event::OomStack(Box::new(o))),
        KIND_EXEC => {
            let e: ExecEvent = read(bytes, "an exec event")?;
            Ok(Event::Exec { task: Task::from(&e.header), dev: (e.dev >> 20, e.dev & 0xf_ffff), ino: e.ino })
        }
        KIND_EXEC_BLACKBOX => parse_blackbox_exec(bytes).map(|e| Event::ExecBlackbox(Box::new(e))),
        KIND_PROCESS_EXIT => {
            let e: ProcessExitEvent = read(bytes, "a process exit event")?;
            Ok(Event::ProcessExit(ProcessEnd {
                task: Task::from(&e.header),
                ppid: e.ppid,
                code: ExitCode(e.code),
                start_boottime_ns: e.start_boottime_ns,
            }))
        }
        KIND_EXIT => {
            let e: ExitEvent = read(bytes, "an exit event")?;
            Ok(Event::Exit(AbnormalExit { task: Task::from(&e.header), code: e.code }))
        }
        KIND_OOM => {
            let e: OomEvent = read(bytes, "an oom event")?;
            Ok(Event::Oom(OomKill {
                victim: Task::from(&e.header),
                total_vm_kb: e.total_vm_kb,
                anon_rss_kb: e.anon_rss_kb,
                file_rss_kb: e.file_rss_kb,
                shmem_rss_kb: e.shmem_rss_kb,
                pgtables_kb: e.pgtables_kb,
                oom_score_adj: e.oom_score_adj,
                kernel_line: None,
            }))
        }
        k => Err(EventError::Kind(k)),
    }
}

/// Text up to the first NUL of a fixed-size kernel string.
fn c_str(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn parse_blackbox_exec(bytes: &[u8]) -> Result<BlackboxExec, EventError> {
    let need = std::mem::size_of::<ExecBlackboxEvent>();
    if bytes.len() < need {
        return Err(EventError::Short { what: "a black-box exec event", len: bytes.len(), need });
    }
    let base = bytes.as_ptr().cast::<ExecBlackboxEvent>();
    // SAFETY: length checked; unaligned reads of plain integer fields (the
    // 2 KiB argument area is sliced from `bytes`, not copied).
    let (header, ino, dev, hold, ppid, argv_len, argv_total, cgroup_id, tty, filename) = unsafe {
        use std::ptr::{addr_of, read_unaligned as r};
        (
            r(addr_of!((*base).header)),
            r(addr_of!((*base).ino)),
            r(addr_of!((*base).dev)),
            r(addr_of!((*base).hold)),
            r(addr_of!((*base).ppid)),
            r(addr_of!((*base).argv_len)),
            r(addr_of!((*base).argv_total)),
            r(addr_of!((*base).cgroup_id)),
            r(addr_of!((*base).tty)),
            r(addr_of!((*base).filename)),
        )
    };
    let off = std::mem::offset_of!(ExecBlackboxEvent, argv);
    let n = (argv_len as usize).min(ARGV_LEN);
    let area = bytes.get(off..off + n).unwrap_or(&[]);
    let tty = c_str(&tty);
    Ok(BlackboxExec {
        task: Task::from(&header),
        hold: (hold == 1).then_some(((dev >> 20, dev & 0xf_ffff), ino)),
        ppid,
        cgroup_id,
        tty: (!tty.is_empty()).then(|| tty_name(&tty)),
        filename: c_str(&filename),
        argv: split_argv(area, argv_total > n as u64),
    })
}

fn parse_fatal(bytes: &[u8]) -> Result<FatalSignal, EventError> {
    let need = std::mem::size_of::<FatalSignalEvent>();
    if bytes.len() < need {
        return Err(EventError::Short { what: "a fatal-signal event", len: bytes.len(), need });
    }
    // Read the fixed part field by field from the record rather than copying
    // the whole 22 KiB struct onto the stack.
    let base = bytes.as_ptr().cast::<FatalSignalEvent>();
    // SAFETY: length checked above; addr_of! reads do not require alignment
    // when followed by read_unaligned.
    let (
        header,
        signal,
        si_code,
        errno,
        regs_ok,
        sa_handler,
        fault_addr,
        start_ns,
        regs,
        fp_bytes,
        fp,
        stack_base,
        ok,
        fault_ok,
        bid_bytes,
        bid,
        dumpable,
        modules_follow,
    ) = unsafe {
        use std::ptr::{addr_of, read_unaligned as r};
        (
            r(addr_of!((*base).header)),
            r(addr_of!((*base).signal)),
            r(addr_of!((*base).si_code)),
            r(addr_of!((*base).errno)),
            r(addr_of!((*base).regs_ok)),
            r(addr_of!((*base).sa_handler)),
            r(addr_of!((*base).fault_addr)),
            r(addr_of!((*base).start_boottime_ns)),
            r(addr_of!((*base).regs)),
            r(addr_of!((*base).fp_bytes)),
            r(addr_of!((*base).fp_frames)),
            r(addr_of!((*base).stack_base)),
            r(addr_of!((*base).stack_pages_ok)),
            r(addr_of!((*base).fault_addr_ok)),
            r(addr_of!((*base).bid_bytes)),
            r(addr_of!((*base).bid_frames)),
            r(addr_of!((*base).dumpable)),
            r(addr_of!((*base).modules_follow)),
        )
    };
    let dumpable = Dumpable::from_raw(dumpable);
    let nframes = if fp_bytes > 0 { (fp_bytes as usize / 8).min(MAX_FP_FRAMES) } else { 0 };
    let stack_off = std::mem::offset_of!(FatalSignalEvent, stack);
    let (stack_base, stack) = page_run(bytes, stack_off, STACK_PAGES, stack_base, ok, dumpable.allows_memory());
    // A record with the interrupted stack of a handler on the alternate
    // stack is longer.
    let outer = if bytes.len() >= std::mem::size_of::<FatalSignalOuterEvent>() {
        let b = bytes.as_ptr().cast::<FatalSignalOuterEvent>();
        // SAFETY: length checked; unaligned reads of plain integers.
        let (base, ok) = unsafe {
            use std::ptr::{addr_of, read_unaligned as r};
            (r(addr_of!((*b).outer_base)), r(addr_of!((*b).outer_pages_ok)))
        };
        let off = std::mem::offset_of!(FatalSignalOuterEvent, outer);
        let (base, run) = page_run(bytes, off, OUTER_PAGES, base, ok, dumpable.allows_memory());
        (!run.is_empty()).then_some((base, run))
    } else {
        None
    };
    Ok(FatalSignal {
        task: Task::from(&header),
        signal,
        si_code,
        errno,
        sa_handler,
        fault_addr: (fault_ok == 1).then_some(fault_addr),
        start_ticks: (start_ns != 0).then_some(start_ns / (1_000_000_000 / USER_HZ)),
        regs: (regs_ok == 1).then_some(regs),
        fp_frames: fp[..nframes].iter().copied().take_while(|&a| a != 0).collect(),
        build_id_frames: kernel_frames(&bid, bid_bytes),
        stack_base,
        stack,
        dumpable,
        modules_follow: modules_follow == 1,
        modules: None,
        outer_stack: outer,
    })
}

/// The contiguous readable pages of a copy of `pages` pages at byte `off`
/// of the record (none unless `allowed`: a process that is not dumpable),
/// with the address of the first. The run starts at the first readable
/// page: sp of a stack overflow lies in the unmapped page below the stack.
fn page_run(bytes: &[u8], off: usize, pages: usize, base: u64, ok: u32, allowed: bool) -> (u64, Vec<u8>) {
    let first = (0..pages).find(|i| ok & (1 << i) != 0).unwrap_or(pages);
    let n = if allowed { (first..pages).take_while(|i| ok & (1 << i) != 0).count() } else { 0 };
    let from = off + first * PAGE_SIZE;
    let run = bytes.get(from..from + n * PAGE_SIZE).map(<[u8]>::to_vec).unwrap_or_default();
    let base = if run.is_empty() { base } else { base + (first * PAGE_SIZE) as u64 };
    (base, run)
}

fn parse_oom_stack(bytes: &[u8]) -> Result<OomStack, EventError> {
    let need = std::mem::size_of::<OomStackEvent>();
    if bytes.len() < need {
        return Err(EventError::Short { what: "an oom victim's stack", len: bytes.len(), need });
    }
    let base = bytes.as_ptr().cast::<OomStackEvent>();
    // SAFETY: length checked; unaligned reads of plain integer fields.
    let (header, regs, regs_ok, dumpable, cgroup_id, stack_base, ok, n, lookups, busy, modules) = unsafe {
        use std::ptr::{addr_of, read_unaligned as r};
        (
            r(addr_of!((*base).header)),
            r(addr_of!((*base).regs)),
            r(addr_of!((*base).regs_ok)),
            r(addr_of!((*base).dumpable)),
            r(addr_of!((*base).cgroup_id)),
            r(addr_of!((*base).stack_base)),
            r(addr_of!((*base).stack_pages_ok)),
            r(addr_of!((*base).n_modules)),
            r(addr_of!((*base).vma_lookups)),
            r(addr_of!((*base).vma_busy)),
            r(addr_of!((*base).modules)),
        )
    };
    let dumpable = Dumpable::from_raw(dumpable);
    let off = std::mem::offset_of!(OomStackEvent, stack);
    let (stack_base, stack) = page_run(bytes, off, STACK_PAGES, stack_base, ok, dumpable.allows_memory());
    let task = Task::from(&header);
    Ok(OomStack {
        task: task.clone(),
        regs: (regs_ok == 1).then_some(regs),
        dumpable,
        cgroup_id,
        stack_base,
        stack,
        modules: ModulesInfo {
            task,
            modules: modules.iter().take((n as usize).min(MAX_MODULES)).filter_map(KernelModule::from_raw).collect(),
            lookups,
            busy,
        },
    })
}

fn parse_modules(bytes: &[u8]) -> Result<ModulesInfo, EventError> {
    let need = std::mem::size_of::<ModulesEvent>();
    if bytes.len() < need {
        return Err(EventError::Short { what: "a modules event", len: bytes.len(), need });
    }
    let base = bytes.as_ptr().cast::<ModulesEvent>();
    // SAFETY: length checked; unaligned reads of plain integer fields.
    let (header, n, lookups, busy, modules) = unsafe {
        use std::ptr::{addr_of, read_unaligned as r};
        (
            r(addr_of!((*base).header)),
            r(addr_of!((*base).n_modules)),
            r(addr_of!((*base).vma_lookups)),
            r(addr_of!((*base).vma_busy)),
            r(addr_of!((*base).modules)),
        )
    };
    Ok(ModulesInfo {
        task: Task::from(&header),
        modules: modules.iter().take((n as usize).min(MAX_MODULES)).filter_map(KernelModule::from_raw).collect(),
        lookups,
        busy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_types::comm_key;

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: test helper over plain #[repr(C)] structs.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()).to_vec() }
    }

    #[test]
    fn parses_exit() {
        let e = ExitEvent {
            header: EventHeader { kind: KIND_EXIT, pid: 5, tid: 6, uid: 7, boot_ns: 8, comm: comm_key("x") },
            code: 0x103,
        };
        let Event::Exit(x) = parse(&bytes_of(&e)).unwrap() else { panic!("not an exit") };
        assert_eq!((x.task.pid, x.task.tid, x.task.comm.as_str(), x.status()), (5, 6, "x", 3));
    }

    #[test]
    fn exit_codes_decode_as_wait_does() {
        // exit(3): status 3.
        let c = ExitCode(3 << 8);
        assert_eq!((c.status(), c.signal(), c.core_dumped()), (Some(3), None, false));
        assert_eq!(ExitCode(0).status(), Some(0));
        assert_eq!(ExitCode(255 << 8).status(), Some(255));
        // Killed by SIGKILL; by SIGSEGV with a core.
        let c = ExitCode(9);
        assert_eq!((c.status(), c.signal(), c.core_dumped()), (None, Some(9), false));
        let c = ExitCode(11 | 0x80);
        assert_eq!((c.status(), c.signal(), c.core_dumped()), (None, Some(11), true));
    }

    #[test]
    fn ttys_are_named_as_ps_names_them() {
        assert_eq!(tty_name("pts0"), "pts/0");
        assert_eq!(tty_name("pts12"), "pts/12");
        assert_eq!(tty_name("tty1"), "tty1");
        assert_eq!(tty_name("ttyS0"), "ttyS0");
        assert_eq!(tty_name("pts"), "pts");
        assert_eq!(tty_name("ptsx"), "ptsx");
    }

    #[test]
    fn argv_splits_on_nul_and_marks_a_cut() {
        assert_eq!(split_argv(b"ls\0-l\0/tmp\0", false), vec!["ls", "-l", "/tmp"]);
        assert_eq!(split_argv(b"sh\0-c\0\0x\0", false), vec!["sh", "-c", "", "x"], "empty arguments stay");
        assert_eq!(split_argv(b"echo\0abc", true), vec!["echo", "abc…"]);
        assert_eq!(split_argv(b"echo\0", true), vec!["echo", "…"]);
        assert!(split_argv(b"", false).is_empty());
        assert_eq!(split_argv(b"a\xff\0", false), vec!["a\u{fffd}"]);
    }

    #[test]
    fn parses_blackbox_exec_and_exit() {
        let mut buf = vec![0u8; std::mem::size_of::<ExecBlackboxEvent>()];
        let base = buf.as_mut_ptr().cast::<ExecBlackboxEvent>();
        let mut tty = [0u8; event_types::TTY_LEN];
        tty[..4].copy_from_slice(b"pts4");
        let mut filename = [0u8; event_types::FILENAME_LEN];
        filename[..8].copy_from_slice(b"/bin/ls\0");
        // SAFETY: buf has the struct's size; unaligned writes.
        unsafe {
            use std::ptr::{addr_of_mut, write_unaligned as w};
            w(
                addr_of_mut!((*base).header),
                EventHeader { kind: KIND_EXEC_BLACKBOX, pid: 10, tid: 10, uid: 1000, boot_ns: 5, comm: comm_key("ls") },
            );
            w(addr_of_mut!((*base).ppid), 9);
            w(addr_of_mut!((*base).hold), 1);
            w(addr_of_mut!((*base).dev), (8 << 20) | 2);
            w(addr_of_mut!((*base).ino), 77);
            w(addr_of_mut!((*base).cgroup_id), 1234);
            w(addr_of_mut!((*base).tty), tty);
            w(addr_of_mut!((*base).filename), filename);
            w(addr_of_mut!((*base).argv_len), 6);
            w(addr_of_mut!((*base).argv_total), 6);
        }
        let off = std::mem::offset_of!(ExecBlackboxEvent, argv);
        buf[off..off + 6].copy_from_slice(b"ls\0-l\0");
        // Stale bytes after argv_len are never read.
        buf[off + 6..off + 10].copy_from_slice(b"ENV=");
        let Event::ExecBlackbox(e) = parse(&buf).unwrap() else { panic!("not a black-box exec") };
        assert_eq!((e.task.pid, e.task.uid, e.ppid, e.cgroup_id), (10, 1000, 9, 1234));
        assert_eq!(e.hold, Some(((8, 2), 77)));
        assert_eq!(e.tty.as_deref(), Some("pts/4"));
        assert_eq!(e.filename, "/bin/ls");
        assert_eq!(e.argv, vec!["ls", "-l"]);
        assert!(matches!(parse(&buf[..200]), Err(EventError::Short { .. })));

        let x = ProcessExitEvent {
            header: EventHeader { kind: KIND_PROCESS_EXIT, pid: 10, tid: 11, uid: 0, boot_ns: 9, comm: comm_key("ls") },
            ppid: 9,
            code: 2 << 8,
            start_boottime_ns: 4,
        };
        let Event::ProcessExit(p) = parse(&bytes_of(&x)).unwrap() else { panic!("not an exit") };
        assert_eq!((p.task.pid, p.ppid, p.code.status(), p.start_boottime_ns), (10, 9, Some(2), 4));
    }

    #[test]
    fn rejects_short_and_unknown() {
        assert!(matches!(parse(&[1, 0, 0]), Err(EventError::Short { .. })));
        let mut h = bytes_of(&EventHeader { kind: 99, ..Default::default() });
        assert!(matches!(parse(&h), Err(EventError::Kind(99))));
        h[0] = KIND_FATAL_SIGNAL as u8;
        assert!(matches!(parse(&h), Err(EventError::Short { what: "a fatal-signal event", .. })));
    }

    #[test]
    fn parses_fatal_stack_pages_up_to_first_hole() {
        let mut buf = vec![0u8; std::mem::size_of::<FatalSignalEvent>()];
        let base = buf.as_mut_ptr().cast::<FatalSignalEvent>();
        // SAFETY: buf has the struct's size; unaligned writes.
        unsafe {
            use std::ptr::{addr_of_mut, write_unaligned as w};
            w(
                addr_of_mut!((*base).header),
                EventHeader { kind: KIND_FATAL_SIGNAL, pid: 1, tid: 2, uid: 0, boot_ns: 0, comm: comm_key("c") },
            );
            w(addr_of_mut!((*base).signal), 11);
            w(addr_of_mut!((*base).regs_ok), 1);
            w(addr_of_mut!((*base).fp_bytes), 16);
            w(addr_of_mut!((*base).fp_frames), {
                let mut f = [0u64; MAX_FP_FRAMES];
                f[0] = 0x1000;
                f[1] = 0x2000;
                f
            });
            w(addr_of_mut!((*base).stack_pages_ok), 0b01011);
            w(addr_of_mut!((*base).dumpable), DUMPABLE_USER);
            w(addr_of_mut!((*base).start_boottime_ns), 12_340_000_000);
        }
        // SAFETY: as above.
        unsafe {
            use std::ptr::{addr_of_mut, write_unaligned as w};
            let mut b = [BuildIdFrame::default(); event_types::MAX_BUILD_ID_FRAMES];
            b[0] = BuildIdFrame { status: BUILD_ID_STATUS_VALID, build_id: [0xab; 20], offset_or_ip: 0x1234 };
            b[1] = BuildIdFrame { status: BUILD_ID_STATUS_IP, build_id: [0; 20], offset_or_ip: 0x7000 };
            w(addr_of_mut!((*base).bid_frames), b);
            w(addr_of_mut!((*base).bid_bytes), 3 * 32);
        }
        let Event::Fatal(f) = parse(&buf).unwrap() else { panic!("not fatal") };
        assert_eq!(f.fp_frames, vec![0x1000, 0x2000]);
        assert_eq!(
            f.build_id_frames,
            vec![
                KernelFrame::Resolved { build_id: "ab".repeat(20), file_offset: 0x1234 },
                KernelFrame::Address(0x7000)
            ]
        );
        assert_eq!(f.stack.len(), 2 * PAGE_SIZE);
        assert_eq!(f.start_ticks, Some(1234));
        assert!(f.regs.is_some() && f.fault_addr.is_none());
        assert_eq!(f.dumpable, Dumpable::User);
        // Not dumpable: no stack bytes are taken, whatever the page bits say.
        // SAFETY: as above.
        unsafe { std::ptr::write_unaligned(std::ptr::addr_of_mut!((*base).dumpable), 0) };
        let Event::Fatal(f) = parse(&buf).unwrap() else { panic!("not fatal") };
        assert_eq!((f.dumpable, f.stack.len()), (Dumpable::No(0), 0));
    }

    #[test]
    fn parses_the_outer_stack_of_a_handler_on_the_signal_stack() {
        let mut buf = vec![0u8; std::mem::size_of::<FatalSignalOuterEvent>()];
        let base = buf.as_mut_ptr().cast::<FatalSignalOuterEvent>();
        // SAFETY: buf has the struct's size; unaligned writes.
        unsafe {
            use std::ptr::{addr_of_mut, write_unaligned as w};
            w(
                addr_of_mut!((*base).ev.header),
                EventHeader { kind: KIND_FATAL_SIGNAL, pid: 1, tid: 1, uid: 0, boot_ns: 0, comm: comm_key("go") },
            );
            w(addr_of_mut!((*base).ev.dumpable), DUMPABLE_USER);
            w(addr_of_mut!((*base).ev.stack_pages_ok), 0b1);
            w(addr_of_mut!((*base).ev.stack_base), 0x1000);
            w(addr_of_mut!((*base).outer_base), 0xc000_0000);
            w(addr_of_mut!((*base).outer_pages_ok), 0b0110);
        }
        let Event::Fatal(f) = parse(&buf).unwrap() else { panic!("not fatal") };
        assert_eq!((f.stack_base, f.stack.len()), (0x1000, PAGE_SIZE));
        let (b, bytes) = f.outer_stack.expect("the interrupted stack");
        assert_eq!((b, bytes.len()), (0xc000_0000 + PAGE_SIZE as u64, 2 * PAGE_SIZE));
        // A plain fatal-signal record (shorter) has none.
        let Event::Fatal(f) = parse(&buf[..std::mem::size_of::<FatalSignalEvent>()]).unwrap() else { panic!() };
        assert!(f.outer_stack.is_none());
        // Not dumpable: nothing of either copy.
        // SAFETY: as above.
        unsafe { std::ptr::write_unaligned(std::ptr::addr_of_mut!((*base).ev.dumpable), 0) };
        let Event::Fatal(f) = parse(&buf).unwrap() else { panic!() };
        assert!(f.outer_stack.is_none() && f.stack.is_empty());
    }

    #[test]
    fn parses_an_oom_victims_stack() {
        let mut buf = vec![0u8; std::mem::size_of::<OomStackEvent>()];
        let base = buf.as_mut_ptr().cast::<OomStackEvent>();
        let mut m = ModuleVma {
            start: 0x1000,
            end: 0x2000,
            offset: 0,
            ino: 5,
            dev: (8 << 20) | 1,
            depth: 2,
            rooted: 1,
            ..Default::default()
        };
        m.names[0][..3].copy_from_slice(b"hog");
        m.names[1][0] = b'/';
        let mut mods = [ModuleVma::default(); MAX_MODULES];
        mods[0] = m;
        // SAFETY: buf has the struct's size; unaligned writes.
        unsafe {
            use std::ptr::{addr_of_mut, write_unaligned as w};
            w(
                addr_of_mut!((*base).header),
                EventHeader { kind: KIND_OOM_STACK, pid: 9, tid: 9, uid: 0, boot_ns: 0, comm: comm_key("hog") },
            );
            w(addr_of_mut!((*base).regs_ok), 1);
            w(addr_of_mut!((*base).dumpable), DUMPABLE_USER);
            w(addr_of_mut!((*base).cgroup_id), 77);
            w(addr_of_mut!((*base).stack_base), 0x7000);
            w(addr_of_mut!((*base).stack_pages_ok), 0b11);
            w(addr_of_mut!((*base).n_modules), 1);
            w(addr_of_mut!((*base).modules), mods);
        }
        let Event::OomStack(o) = parse(&buf).unwrap() else { panic!("not an oom stack") };
        assert_eq!((o.task.tid, o.cgroup_id, o.stack_base, o.stack.len()), (9, 77, 0x7000, 2 * PAGE_SIZE));
        assert!(o.regs.is_some());
        assert_eq!(o.modules.modules.len(), 1);
        assert_eq!(o.modules.modules[0].fs_path.as_deref(), Some("/hog"));
        assert!(matches!(parse(&buf[..100]), Err(EventError::Short { .. })));
    }
}
