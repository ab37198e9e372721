//! # event-types: the layout shared by `probe-ebpf/` and `eventprobe`
//!
//! ```text
//!  kernel: probe-ebpf (tracepoints) ──writes──▶ RingBuf "EVENTS" ──▶ eventprobe (user space)
//!          reads CONFIG / COMM_ALLOW / COMM_DENY, counts losses in LOST
//! ```
//!
//! Every struct here is `#[repr(C)]`, 8-byte aligned, with explicit padding,
//! so both sides (bpfel and x86_64) agree on the bytes. Each ring-buffer
//! record starts with a [`EventHeader`] whose `kind` tells which struct
//! follows. The crate is `no_std` and has no dependencies so the kernel-side
//! build (Debian's rustc, `bpfel-unknown-none`) can use it.
#![no_std]

/// Length of a task's `comm` (TASK_COMM_LEN), NUL-padded.
pub const COMM_LEN: usize = 16;
/// Most frames `bpf_get_stack(.., BPF_F_USER_STACK)` records.
pub const MAX_FP_FRAMES: usize = 64;
/// Most frames of the build-id stack (`BPF_F_USER_BUILD_ID`).
pub const MAX_BUILD_ID_FRAMES: usize = 32;
/// Length of a GNU build id as the kernel reports it (zero-padded).
pub const BUILD_ID_SIZE: usize = 20;
/// `BuildIdFrame::status`: the kernel resolved the frame to a build id
/// and file offset.
pub const BUILD_ID_STATUS_VALID: i32 = 1;
/// `BuildIdFrame::status`: only the address is known.
pub const BUILD_ID_STATUS_IP: i32 = 2;
/// `FatalSignalEvent::dumpable`: the state could not be read (offsets
/// unknown, no mm): treated as not dumpable, nothing withheld is copied.
pub const DUMPABLE_UNKNOWN: u32 = 0xff;
/// `SUID_DUMP_USER`: the only state in which the kernel writes a core the
/// user may read; any other (`SUID_DUMP_DISABLE` 0, `SUID_DUMP_ROOT` 2)
/// means the stack and the registers beyond ip/sp are not copied.
pub const DUMPABLE_USER: u32 = 1;
/// Page size the stack copy works in.
pub const PAGE_SIZE: usize = 4096;
/// Whole pages of user stack copied, from `sp & !4095` upward. Five pages
/// hold at least 16 KiB above `sp` wherever `sp` lies in its page.
pub const STACK_PAGES: usize = 5;
/// Bytes of user stack copied.
pub const STACK_COPY_BYTES: usize = STACK_PAGES * PAGE_SIZE;

/// `EventHeader::kind` of a [`FatalSignalEvent`].
pub const KIND_FATAL_SIGNAL: u32 = 1;
/// `EventHeader::kind` of an [`ExitEvent`].
pub const KIND_EXIT: u32 = 2;
/// `EventHeader::kind` of an [`OomEvent`].
pub const KIND_OOM: u32 = 3;
/// `EventHeader::kind` of a [`ModulesEvent`].
pub const KIND_MODULES: u32 = 4;
/// `EventHeader::kind` of an [`ExecEvent`].
pub const KIND_EXEC: u32 = 5;
/// `EventHeader::kind` of an [`OomStackEvent`].
pub const KIND_OOM_STACK: u32 = 6;
/// `EventHeader::kind` of an [`ExecBlackboxEvent`] (an exec while the
/// black box records: [`FLAG_BLACKBOX`]).
pub const KIND_EXEC_BLACKBOX: u32 = 7;
/// `EventHeader::kind` of a [`ProcessExitEvent`] (a thread group ended
/// while the black box records).
pub const KIND_PROCESS_EXIT: u32 = 8;

/// Index in the `LOST` per-CPU array of each kind's reservation failures
/// (ring buffer full), so index = kind.
pub const LOST_SLOTS: u32 = 9;

/// Bytes of the tty name kept (`tty_struct.name`, e.g. `pts3`, `tty1`).
pub const TTY_LEN: usize = 32;
/// Bytes of the exec'd file name kept (the tracepoint's `filename`).
pub const FILENAME_LEN: usize = 256;
/// Bytes of the argument area kept (`mm->arg_start..arg_end`: the
/// arguments, each NUL-terminated). A power of two.
pub const ARGV_LEN: usize = 2048;

/// Whole pages copied of the stack a signal handler running on its
/// alternate stack interrupted (Go: the goroutine's stack under
/// `runtime.sigtramp`), see [`FatalSignalOuterEvent`].
pub const OUTER_PAGES: usize = 4;
/// Bytes of that copy.
pub const OUTER_COPY_BYTES: usize = OUTER_PAGES * PAGE_SIZE;
/// Most words searched for the kernel's signal frame above sp on the
/// alternate signal stack.
pub const MAX_SIGFRAME_WORDS: u32 = 8192;

/// Name of the ring buffer map.
pub const MAP_EVENTS: &str = "EVENTS";
/// Name of the `Array<Config>` map (one entry, index 0).
pub const MAP_CONFIG: &str = "CONFIG";
/// Name of the `HashMap<[u8; 16], u8>` comm allow list.
pub const MAP_COMM_ALLOW: &str = "COMM_ALLOW";
/// Name of the `HashMap<[u8; 16], u8>` comm deny list.
pub const MAP_COMM_DENY: &str = "COMM_DENY";
/// Name of the `PerCpuArray<u64>` of lost events, indexed by kind.
pub const MAP_LOST: &str = "LOST";
/// Name of the per-CPU `ModuleScan` scratch of the exit program.
pub const MAP_MODULE_SCAN: &str = "MODULE_SCAN";
/// Name of the `HashMap<u32 tid, PendingExit>` of threads dying of a
/// fatal signal whose modules are named at their exit.
pub const MAP_PENDING: &str = "PENDING_EXIT";
/// Program names (the tracepoint functions in probe-ebpf).
pub const PROG_SIGNAL: &str = "signal_deliver";
pub const PROG_EXIT: &str = "exit_group";
pub const PROG_OOM: &str = "mark_victim";
pub const PROG_PROCESS_EXIT: &str = "process_exit";
pub const PROG_PROCESS_EXEC: &str = "process_exec";

/// `Config::flags`: report a fatal signal only when its action is the
/// default (`sa_handler == SIG_DFL`), i.e. the signal kills the process.
pub const FLAG_ONLY_DEFAULT_ACTION: u32 = 1;
/// `Config::flags`: only comms in `COMM_ALLOW` are reported.
pub const FLAG_COMM_ALLOW_LIST: u32 = 2;
/// `Config::flags`: report abnormal exits at all.
pub const FLAG_EXITS: u32 = 4;
/// `Config::flags`: report OOM kills at all.
pub const FLAG_OOM: u32 = 8;
/// `Config::flags`: report fatal signals at all.
pub const FLAG_SIGNALS: u32 = 16;
/// `Config::flags`: the black box records: every exec sends an
/// [`ExecBlackboxEvent`] (instead of an [`ExecEvent`]) and every thread
/// group's end a [`ProcessExitEvent`], whatever the comm filters say.
/// Set and cleared at run time by eventprobe's blackbox feed.
pub const FLAG_BLACKBOX: u32 = 32;

/// Filters and kernel facts that user space writes before attaching.
/// Until it is written (all zero) nothing is reported.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Bit `n` set: signal `n` is reported (1 <= n <= 63).
    pub signal_mask: u64,
    /// Exit codes (`status & 0xff`) below this are not reported; 0 is
    /// never reported.
    pub min_exit_code: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Byte offset of `task_struct.group_leader` (from kernel BTF), or 0.
    pub off_group_leader: u32,
    /// Byte offset of `task_struct.start_boottime`, or 0.
    pub off_start_boottime: u32,
    /// Byte offset of `task_struct.thread.cr2` (the x86 fault address), or 0.
    pub off_thread_cr2: u32,
    /// Byte offset of `task_struct.mm`, or 0.
    pub off_task_mm: u32,
    /// Byte offset of `mm_struct.flags` (its low bits hold the dumpable
    /// state, `MMF_DUMPABLE_MASK`), or 0.
    pub off_mm_flags: u32,
    /// Offsets for the per-module identity recorded at the signal (see
    /// [`ModuleVma`]); all must be known (non-zero where a field cannot be
    /// at 0) or no module is recorded.
    pub vma: VmaOffsets,
    /// Byte offset of `mm_struct.exe_file`, or 0 (no exec events).
    pub off_mm_exe_file: u32,
    /// Byte offsets of `task_struct.sas_ss_sp` and `.sas_ss_size` (the
    /// alternate signal stack), or 0 (no copy of the interrupted stack).
    pub off_sas_ss_sp: u32,
    pub off_sas_ss_size: u32,
    pub _pad: u32,
    /// What the black box's exec and exit events read.
    pub bb: BlackboxOffsets,
}

/// Kernel structure offsets (from the kernel BTF) and a tracepoint field
/// offset that the black box's exec and exit programs need. Nothing is
/// sent for the black box unless `ok` is 1.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlackboxOffsets {
    /// 1 when every offset below (but `tp_exit_group_dead`) was found.
    pub ok: u32,
    pub task_real_parent: u32,
    pub task_tgid: u32,
    pub task_signal: u32,
    pub task_comm: u32,
    pub task_exit_code: u32,
    pub signal_tty: u32,
    pub signal_flags: u32,
    pub signal_group_exit_code: u32,
    pub signal_live: u32,
    pub tty_name: u32,
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    /// Offset of `group_dead` in the `sched:sched_process_exit` record
    /// (newer kernels have it; 6.18 does), or 0: then `signal->live == 0`
    /// after the exiting thread's decrement tells (two threads of a group
    /// exiting at once may then both see 0; user space keeps one).
    pub tp_exit_group_dead: u32,
    /// `task_struct.flags` (kernel threads, `PF_KTHREAD`, are no processes
    /// to record).
    pub task_flags: u32,
    pub _pad: u32,
}

/// Kernel structure offsets (from the kernel BTF) the fatal-signal program
/// needs to name the file behind each code address (`bpf_find_vma`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmaOffsets {
    /// 1 when every offset below was found.
    pub ok: u32,
    pub vma_start: u32,
    pub vma_end: u32,
    pub vma_pgoff: u32,
    pub vma_file: u32,
    pub vma_flags: u32,
    pub file_inode: u32,
    pub file_dentry: u32,
    pub inode_ino: u32,
    pub inode_sb: u32,
    pub sb_dev: u32,
    pub dentry_parent: u32,
    pub dentry_name: u32,
}

/// Most executable file mappings recorded per fatal signal.
pub const MAX_MODULES: usize = 16;
/// Most path components recorded per module (innermost first).
pub const PATH_DEPTH: usize = 8;
/// Bytes per recorded path component (NUL-terminated, truncated).
pub const NAME_LEN: usize = 48;
/// Most `bpf_find_vma` lookups per fatal signal (bounds the kernel-side
/// cost whatever the stack holds).
pub const MAX_VMA_LOOKUPS: u32 = 128;

/// An executable file mapping of the crashing process, found by
/// `bpf_find_vma` for the instruction pointer or a stack word that points
/// into it, recorded while the process still exists: enough to unwind and
/// symbolize after it is gone.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModuleVma {
    pub start: u64,
    pub end: u64,
    /// File offset of `start` (`vm_pgoff << PAGE_SHIFT`).
    pub offset: u64,
    /// `inode->i_ino`.
    pub ino: u64,
    /// `inode->i_sb->s_dev` (kernel encoding: major << 20 | minor).
    pub dev: u32,
    /// Components filled in `names`.
    pub depth: u16,
    /// 1 when `names` reaches the root of the file system (else the path
    /// was deeper than [`PATH_DEPTH`]).
    pub rooted: u16,
    /// The dentry names from the file up to its file system's root
    /// (innermost first; the root's own name is `/`).
    pub names: [[u8; NAME_LEN]; PATH_DEPTH],
}

impl Default for ModuleVma {
    fn default() -> Self {
        ModuleVma {
            start: 0,
            end: 0,
            offset: 0,
            ino: 0,
            dev: 0,
            depth: 0,
            rooted: 0,
            names: [[0; NAME_LEN]; PATH_DEPTH],
        }
    }
}

/// Per-CPU scratch of the fatal-signal program's module search.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleScan {
    /// Kernel address of the event's stack copy (read word by word).
    pub words: u64,
    pub n: u32,
    pub lookups: u32,
    pub neg_next: u32,
    pub _pad: u32,
    /// Ranges known not to be executable file mappings (stack, heap).
    pub neg: [[u64; 2]; 8],
    pub mods: [ModuleVma; MAX_MODULES],
}

/// What every ring-buffer record starts with.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// `KIND_*`.
    pub kind: u32,
    /// Thread group id (the "pid" users see).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    pub uid: u32,
    /// `bpf_ktime_get_boot_ns()` at the event.
    pub boot_ns: u64,
    /// `comm` of the task (NUL-padded).
    pub comm: [u8; COMM_LEN],
}

/// The user registers of x86_64, laid out as the kernel's `struct pt_regs`
/// so the kernel side copies it in one read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserRegs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub bp: u64,
    pub bx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub ax: u64,
    pub cx: u64,
    pub dx: u64,
    pub si: u64,
    pub di: u64,
    pub orig_ax: u64,
    pub ip: u64,
    pub cs: u64,
    pub flags: u64,
    pub sp: u64,
    pub ss: u64,
}

/// One frame of `bpf_get_stack(.., BPF_F_USER_STACK | BPF_F_USER_BUILD_ID)`
/// (the kernel's `struct bpf_stack_build_id`): resolved while the process
/// still exists, so it stays useful when /proc/PID/maps is gone by the
/// time user space reads the event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BuildIdFrame {
    /// `BUILD_ID_STATUS_*` (0: empty).
    pub status: i32,
    pub build_id: [u8; BUILD_ID_SIZE],
    /// File offset in the module when valid, else the address.
    pub offset_or_ip: u64,
}

/// A fatal signal being delivered (`signal:signal_deliver`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FatalSignalEvent {
    pub header: EventHeader,
    pub signal: i32,
    pub si_code: i32,
    pub errno: i32,
    /// 1 when `regs` holds the user registers.
    pub regs_ok: u32,
    /// `sa_handler` of the signal's action (0 = SIG_DFL).
    pub sa_handler: u64,
    /// The fault address (x86 `thread.cr2`) for SIGSEGV/SIGBUS raised by
    /// the kernel (si_code > 0), when the kernel offset is known (see
    /// `fault_addr_ok`).
    pub fault_addr: u64,
    /// `start_boottime` of the thread group leader in ns (what
    /// /proc/PID/stat field 22 shows in clock ticks), or 0 when unknown.
    pub start_boottime_ns: u64,
    pub regs: UserRegs,
    /// Bytes `bpf_get_stack` wrote into `fp_frames` (negative: error).
    pub fp_bytes: i64,
    /// Frame-pointer stack from `bpf_get_stack(BPF_F_USER_STACK)`.
    pub fp_frames: [u64; MAX_FP_FRAMES],
    /// Bytes `bpf_get_stack(BPF_F_USER_BUILD_ID)` wrote (negative: error).
    pub bid_bytes: i64,
    /// The same walk resolved by the kernel to (build id, file offset).
    pub bid_frames: [BuildIdFrame; MAX_BUILD_ID_FRAMES],
    /// User address of `stack[0]` (`regs.sp & !4095`).
    pub stack_base: u64,
    /// Bit `i` set: page `i` of `stack` was copied; unset pages are zero.
    pub stack_pages_ok: u32,
    /// 1 when `fault_addr` holds the fault address (which may be 0).
    pub fault_addr_ok: u32,
    /// The process's dumpable state (`mm->flags & MMF_DUMPABLE_MASK`), or
    /// [`DUMPABLE_UNKNOWN`]. Unless it is [`DUMPABLE_USER`], `stack` is not
    /// copied (`stack_pages_ok` is 0) and `regs` holds only ip and sp.
    pub dumpable: u32,
    /// 1 when a [`ModulesEvent`] of this thread follows (from its exit).
    pub modules_follow: u32,
    /// Copy of the user stack from `stack_base`.
    pub stack: [u8; STACK_COPY_BYTES],
}

/// The executable file mappings under the crashing thread's ip and the
/// words of its stack, named by `bpf_find_vma` when the thread that took
/// a fatal signal exits (`sched:sched_process_exit`, before its mm is
/// released). Not at the signal itself: `signal_deliver` runs with
/// interrupts off, where `bpf_find_vma` can take the mmap lock only once.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModulesEvent {
    pub header: EventHeader,
    /// Entries of `modules` filled.
    pub n_modules: u32,
    /// `bpf_find_vma` lookups made (at most [`MAX_VMA_LOOKUPS`]).
    pub vma_lookups: u32,
    /// Lookups refused because the mmap lock was busy.
    pub vma_busy: u32,
    pub _pad: u32,
    pub modules: [ModuleVma; MAX_MODULES],
}

/// A process ran `execve` (`sched:sched_process_exec`): eventprobe holds
/// its executable open, so a binary deleted or replaced before it crashes
/// still unwinds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecEvent {
    pub header: EventHeader,
    /// `mm->exe_file->f_inode->i_ino`.
    pub ino: u64,
    /// `...->i_sb->s_dev` (kernel encoding: major << 20 | minor).
    pub dev: u32,
    pub _pad: u32,
}

/// An exec while the black box records (`sched:sched_process_exec` with
/// [`FLAG_BLACKBOX`]): what [`ExecEvent`] holds, and what a black-box
/// exec entry needs. The header's pid, uid and comm are the new program's.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecBlackboxEvent {
    pub header: EventHeader,
    /// As [`ExecEvent`] (0 when `hold` is 0).
    pub ino: u64,
    pub dev: u32,
    /// 1: the executable passes the comm filters and `ino`/`dev` are set:
    /// user space holds it open as for an [`ExecEvent`].
    pub hold: u32,
    /// `real_parent->tgid`.
    pub ppid: u32,
    /// Bytes of `argv` filled (`arg_end - arg_start`, at most [`ARGV_LEN`]).
    pub argv_len: u32,
    /// `arg_end - arg_start`: more than `argv_len` when it was cut.
    pub argv_total: u64,
    /// `bpf_get_current_cgroup_id()`: the cgroup v2 id.
    pub cgroup_id: u64,
    /// `signal->tty->name`, NUL-terminated; empty without a controlling
    /// terminal.
    pub tty: [u8; TTY_LEN],
    /// The tracepoint's `filename`: the path exec'd as given (absolute
    /// when a shell searched `PATH`), NUL-terminated, cut at
    /// [`FILENAME_LEN`] - 1 bytes.
    pub filename: [u8; FILENAME_LEN],
    /// The argument area: `argv[0]`, NUL, `argv[1]`, NUL, ...
    pub argv: [u8; ARGV_LEN],
}

/// A thread group ended while the black box records
/// (`sched:sched_process_exit` of its last thread). The header's pid is
/// the process's, tid the last thread's, comm the group leader's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessExitEvent {
    pub header: EventHeader,
    /// `real_parent->tgid`.
    pub ppid: u32,
    /// The wait status's code as the parent sees it (`signal->group_exit_code`
    /// after a group exit, else the leader's `exit_code`): exit status
    /// `(code >> 8) & 0xff`, killing signal `code & 0x7f`, core dumped
    /// `code & 0x80`.
    pub code: u32,
    /// `start_boottime` of the group leader (ns since boot, the clock of
    /// `boot_ns`), or 0 when unknown.
    pub start_boottime_ns: u64,
}

/// What the fatal-signal program (or `oom:mark_victim`) leaves for the
/// thread's exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingExit {
    pub ip: u64,
    pub sp: u64,
    /// 1 when the stack may be read (the process is dumpable).
    pub scan_stack: u32,
    /// 1: an OOM victim; its exit sends an [`OomStackEvent`] (ip and sp
    /// are then read at the exit).
    pub oom: u32,
}

/// A fatal signal delivered while the thread ran a handler on its
/// alternate signal stack (Go re-raises a fatal signal from its handler,
/// on the signal stack): the event, and a copy of the stack the handler
/// interrupted, found through the kernel's signal frame (`uc_stack` equal
/// to the thread's alternate stack, `uc_mcontext.sp` outside it).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FatalSignalOuterEvent {
    pub ev: FatalSignalEvent,
    /// The interrupted sp (from the signal frame).
    pub outer_sp: u64,
    /// User address of `outer[0]` (`outer_sp & !4095`).
    pub outer_base: u64,
    /// Bit `i` set: page `i` of `outer` was copied.
    pub outer_pages_ok: u32,
    pub _pad: u32,
    pub outer: [u8; OUTER_COPY_BYTES],
}

/// An OOM victim exiting (`sched:sched_process_exit` of the task
/// `oom:mark_victim` named): its user registers and stack where the kill
/// found it, and the executable mappings under them, so its frames are
/// symbolized like a fatal signal's.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct OomStackEvent {
    pub header: EventHeader,
    pub regs: UserRegs,
    /// 1 when `regs` holds the user registers.
    pub regs_ok: u32,
    /// As [`FatalSignalEvent::dumpable`].
    pub dumpable: u32,
    /// `bpf_get_current_cgroup_id()`: the victim's cgroup v2 id (the
    /// inode number of its directory).
    pub cgroup_id: u64,
    pub stack_base: u64,
    pub stack_pages_ok: u32,
    pub n_modules: u32,
    pub vma_lookups: u32,
    pub vma_busy: u32,
    pub modules: [ModuleVma; MAX_MODULES],
    pub stack: [u8; STACK_COPY_BYTES],
}

/// A process calling `exit_group` with a non-zero code
/// (`syscalls:sys_enter_exit_group`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitEvent {
    pub header: EventHeader,
    /// The code passed to exit_group (the status is `code & 0xff`).
    pub code: i64,
}

/// The OOM killer choosing a victim (`oom:mark_victim`). The header's pid,
/// uid and comm are the victim's; tid is the task that ran the OOM killer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OomEvent {
    pub header: EventHeader,
    /// Pages in kB as the tracepoint reports them.
    pub total_vm_kb: u64,
    pub anon_rss_kb: u64,
    pub file_rss_kb: u64,
    pub shmem_rss_kb: u64,
    pub pgtables_kb: u64,
    pub oom_score_adj: i32,
    pub _pad: u32,
}

/// The comm as text (up to the first NUL).
pub fn comm_str(comm: &[u8; COMM_LEN]) -> &str {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
    match core::str::from_utf8(&comm[..end]) {
        Ok(s) => s,
        Err(e) => core::str::from_utf8(&comm[..e.valid_up_to()]).unwrap_or(""),
    }
}

/// A comm as the kernel stores it: at most 15 bytes and NUL padding.
pub fn comm_key(name: &str) -> [u8; COMM_LEN] {
    let mut k = [0u8; COMM_LEN];
    let b = name.as_bytes();
    let n = b.len().min(COMM_LEN - 1);
    k[..n].copy_from_slice(&b[..n]);
    k
}

const _: () = {
    assert!(core::mem::size_of::<EventHeader>() == 40);
    assert!(core::mem::size_of::<UserRegs>() == 21 * 8);
    assert!(core::mem::size_of::<FatalSignalEvent>() % 8 == 0);
    assert!(core::mem::size_of::<Config>() == 40 + 52 + 12 + 64);
    assert!(core::mem::size_of::<ExecBlackboxEvent>() % 8 == 0);
    assert!(core::mem::size_of::<ProcessExitEvent>() == 56);
    assert!(core::mem::size_of::<FatalSignalOuterEvent>() % 8 == 0);
    assert!(core::mem::size_of::<OomStackEvent>() % 8 == 0);
    assert!(core::mem::size_of::<ModuleVma>() == 424);
    assert!(core::mem::size_of::<BuildIdFrame>() == 32);
    assert!(core::mem::align_of::<FatalSignalEvent>() == 8);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_round_trip_and_truncation() {
        assert_eq!(comm_str(&comm_key("crash-fp")), "crash-fp");
        assert_eq!(comm_str(&comm_key("a-very-long-command-name")), "a-very-long-com");
        let mut k = comm_key("ok");
        k[2] = 0xff;
        assert_eq!(comm_str(&k), "ok");
    }

    #[test]
    fn stack_copy_covers_16k_above_any_sp() {
        // Worst case: sp at the last byte of its page.
        let sp = 0x7fff_0000_0fffu64;
        let base = sp & !(PAGE_SIZE as u64 - 1);
        assert!(base + STACK_COPY_BYTES as u64 - sp >= 16 * 1024);
    }
}
