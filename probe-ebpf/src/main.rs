//! # probe-ebpf: the kernel side of eventprobe
//!
//! ```text
//!  signal:signal_deliver ─┐  filters from CONFIG, COMM_ALLOW, COMM_DENY
//!  syscalls:sys_enter_exit_group ─┼─▶ RingBuf EVENTS ──▶ eventprobe (user space)
//!  oom:mark_victim ───────┤  ring full: LOST[kind] += 1 (eventprobe reports it)
//!  sched:sched_process_exit ┘ threads marked in PENDING_EXIT (a fatal
//!                           signal: the modules; an OOM victim: its stack)
//!
//!  with FLAG_BLACKBOX (set while a black-box recording runs):
//!  sched:sched_process_exec ── ExecBlackboxEvent (ppid, tty, argv, cgroup, filename)
//!  sched:sched_process_exit ── ProcessExitEvent when the thread group is dead
//!    (no wakeup per event: the reader drains on a timer, or is woken when
//!     the ring is 1/8 full)
//! ```
//!
//! The event layouts live in `probes/event-types` (shared with user space).
//! Filtering happens here, before anything is reserved, so filtered events
//! cost user space nothing. Built by `cargo xtask build-ebpf` with Debian's
//! rustc and bpf-linker (see README.md).
#![no_std]
#![no_main]

use core::ffi::c_void;
use core::ptr::addr_of_mut;

use aya_ebpf::bindings::{
    BPF_F_USER_BUILD_ID, BPF_F_USER_STACK, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE,
};
use aya_ebpf::helpers::generated::{
    bpf_find_vma, bpf_get_current_cgroup_id, bpf_get_current_task, bpf_get_current_task_btf, bpf_get_stack,
    bpf_ktime_get_boot_ns, bpf_loop, bpf_probe_read_kernel, bpf_probe_read_user, bpf_task_pt_regs,
};
use aya_ebpf::helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid};
use aya_ebpf::macros::{map, tracepoint};
use aya_ebpf::maps::{Array, HashMap, PerCpuArray, RingBuf};
use aya_ebpf::programs::TracePointContext;
use aya_ebpf::EbpfContext;
use event_types::{
    BuildIdFrame, Config, EventHeader, ExecBlackboxEvent, ExecEvent, ExitEvent, FatalSignalEvent,
    FatalSignalOuterEvent, ModuleScan, ModulesEvent, OomEvent, OomStackEvent, PendingExit, ProcessExitEvent, UserRegs,
    ARGV_LEN, COMM_LEN, DUMPABLE_UNKNOWN, DUMPABLE_USER, FLAG_BLACKBOX, FLAG_COMM_ALLOW_LIST, FLAG_EXITS,
    FLAG_ONLY_DEFAULT_ACTION, FLAG_OOM, FLAG_SIGNALS, KIND_EXEC, KIND_EXEC_BLACKBOX, KIND_EXIT, KIND_FATAL_SIGNAL,
    KIND_MODULES, KIND_OOM, KIND_OOM_STACK, KIND_PROCESS_EXIT, LOST_SLOTS, MAX_BUILD_ID_FRAMES, MAX_FP_FRAMES,
    MAX_MODULES, MAX_SIGFRAME_WORDS, MAX_VMA_LOOKUPS, OUTER_PAGES, PAGE_SIZE, PATH_DEPTH, STACK_COPY_BYTES,
};

/// Default ring size (user space may change it at load time).
const RING_BYTES: u32 = 16 << 20;

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

#[map(name = "CONFIG")]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map(name = "COMM_ALLOW")]
static COMM_ALLOW: HashMap<[u8; COMM_LEN], u8> = HashMap::with_max_entries(256, 0);

#[map(name = "COMM_DENY")]
static COMM_DENY: HashMap<[u8; COMM_LEN], u8> = HashMap::with_max_entries(256, 0);

#[map(name = "MODULE_SCAN")]
static MODULE_SCAN: PerCpuArray<ModuleScan> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "PENDING_EXIT")]
static PENDING_EXIT: HashMap<u32, PendingExit> = HashMap::with_max_entries(1024, 0);

#[map(name = "LOST")]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOST_SLOTS, 0);

const SIGBUS: i32 = 7;
/// `MMF_DUMPABLE_MASK`: the two low bits of `mm->flags`.
const MMF_DUMPABLE_MASK: u64 = 3;
/// Offsets of ip and sp in `struct pt_regs` (= `UserRegs`).
const REGS_IP_OFFSET: usize = core::mem::offset_of!(UserRegs, ip);
const REGS_SP_OFFSET: usize = core::mem::offset_of!(UserRegs, sp);
const SIGSEGV: i32 = 11;

#[inline(always)]
fn config() -> Option<&'static Config> {
    CONFIG.get(0)
}

#[inline(always)]
fn comm_passes(cfg: &Config, comm: &[u8; COMM_LEN]) -> bool {
    // SAFETY: map lookups with a key on the stack; values are not kept.
    unsafe {
        if COMM_DENY.get(comm).is_some() {
            return false;
        }
        if cfg.flags & FLAG_COMM_ALLOW_LIST != 0 {
            return COMM_ALLOW.get(comm).is_some();
        }
    }
    true
}

#[inline(always)]
fn count_lost(kind: u32) {
    if let Some(p) = LOST.get_ptr_mut(kind) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn header(kind: u32, comm: [u8; COMM_LEN]) -> EventHeader {
    let pid_tgid = bpf_get_current_pid_tgid();
    EventHeader {
        kind,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        uid: bpf_get_current_uid_gid() as u32,
        // SAFETY: helper without arguments.
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        comm,
    }
}

/// Reads a u64 at a kernel address (0 when unreadable).
#[inline(always)]
unsafe fn read_kernel_u64(addr: u64) -> u64 {
    let mut v: u64 = 0;
    let r = unsafe { bpf_probe_read_kernel(addr_of_mut!(v).cast(), 8, addr as *const c_void) };
    if r == 0 {
        v
    } else {
        0
    }
}

/// `VM_EXEC` of `vm_area_struct.vm_flags`.
const VM_EXEC: u64 = 0x4;
/// -EBUSY: `bpf_find_vma` could not take the mmap lock.
const EBUSY: i64 = -16;

/// What the `bpf_find_vma` callback copies out of the vma.
#[repr(C)]
struct Found {
    ok: u64,
    start: u64,
    end: u64,
    pgoff: u64,
    flags: u64,
    file: u64,
}

/// `bpf_find_vma` callback: copies the raw fields of the vma.
#[inline(never)]
extern "C" fn vma_cb(_task: *mut c_void, vma: *mut c_void, ctx: *mut c_void) -> i64 {
    let Some(cfg) = config() else { return 0 };
    let o = &cfg.vma;
    let f = ctx as *mut Found;
    let v = vma as u64;
    // SAFETY: `ctx` is the caller's `Found`; kernel reads are checked by
    // the helper.
    unsafe {
        (*f).start = read_kernel_u64(v + o.vma_start as u64);
        (*f).end = read_kernel_u64(v + o.vma_end as u64);
        (*f).pgoff = read_kernel_u64(v + o.vma_pgoff as u64);
        (*f).flags = read_kernel_u64(v + o.vma_flags as u64);
        (*f).file = read_kernel_u64(v + o.vma_file as u64);
        (*f).ok = 1;
    }
    0
}

/// Records the executable file mapping holding `w`, if `w` points into
/// one not yet recorded.
#[inline(always)]
fn consider(scan: &mut ModuleScan, w: u64, busy: &mut u32) {
    if !(0x10000..0x0000_8000_0000_0000).contains(&w) {
        return;
    }
    for j in 0..MAX_MODULES {
        if (j as u32) < scan.n && scan.mods[j].start <= w && w < scan.mods[j].end {
            return;
        }
    }
    for j in 0..8 {
        if scan.neg[j][0] <= w && w < scan.neg[j][1] {
            return;
        }
    }
    if scan.n as usize >= MAX_MODULES || scan.lookups >= MAX_VMA_LOOKUPS {
        return;
    }
    scan.lookups += 1;
    let Some(cfg) = config() else { return };
    let o = &cfg.vma;
    let mut found = Found { ok: 0, start: 0, end: 0, pgoff: 0, flags: 0, file: 0 };
    // SAFETY: BTF task of the current thread, a callback of the expected
    // signature, a context on this stack.
    let r = unsafe {
        bpf_find_vma(bpf_get_current_task_btf() as *mut _, w, vma_cb as *mut c_void, addr_of_mut!(found).cast(), 0)
    };
    if r == EBUSY {
        *busy += 1;
    }
    if found.ok == 0 {
        return;
    }
    if found.flags & VM_EXEC == 0 || found.file == 0 {
        let k = (scan.neg_next & 7) as usize;
        scan.neg[k] = [found.start, found.end];
        scan.neg_next = scan.neg_next.wrapping_add(1);
        return;
    }
    let i = scan.n as usize;
    if i >= MAX_MODULES {
        return;
    }
    let m = &mut scan.mods[i];
    m.start = found.start;
    m.end = found.end;
    m.offset = found.pgoff << 12;
    // SAFETY: kernel reads through the helper (0 when unreadable).
    unsafe {
        let inode = read_kernel_u64(found.file + o.file_inode as u64);
        m.ino = read_kernel_u64(inode + o.inode_ino as u64);
        let sb = read_kernel_u64(inode + o.inode_sb as u64);
        let mut dev: u32 = 0;
        let _ = bpf_probe_read_kernel(addr_of_mut!(dev).cast(), 4, (sb + o.sb_dev as u64) as *const c_void);
        m.dev = dev;
        let mut dentry = read_kernel_u64(found.file + o.file_dentry as u64);
        m.depth = 0;
        m.rooted = 0;
        for d in 0..PATH_DEPTH {
            if dentry == 0 {
                break;
            }
            let name = read_kernel_u64(dentry + o.dentry_name as u64);
            let _ = aya_ebpf::helpers::bpf_probe_read_kernel_str_bytes(name as *const u8, &mut m.names[d]);
            m.depth = d as u16 + 1;
            let parent = read_kernel_u64(dentry + o.dentry_parent as u64);
            if parent == dentry {
                m.rooted = 1;
                break;
            }
            dentry = parent;
        }
    }
    scan.n += 1;
}

/// `bpf_loop` callback: word `i` of the user stack from `scan.words`.
#[inline(never)]
extern "C" fn scan_word(i: u32, ctx: *mut c_void) -> i64 {
    let Some(scan) = MODULE_SCAN.get_ptr_mut(0) else { return 1 };
    // SAFETY: per-CPU scratch; `ctx` is the caller's busy counter.
    unsafe {
        let scan = &mut *scan;
        if scan.n as usize >= MAX_MODULES || scan.lookups >= MAX_VMA_LOOKUPS {
            return 1;
        }
        let mut w: u64 = 0;
        if bpf_probe_read_user(addr_of_mut!(w).cast(), 8, (scan.words + (i as u64) * 8) as *const c_void) != 0 {
            return 1;
        }
        consider(scan, w, &mut *(ctx as *mut u32));
    }
    0
}

#[tracepoint]
pub fn signal_deliver(ctx: TracePointContext) -> u32 {
    let _ = try_signal_deliver(&ctx);
    0
}

/// The dumpable state of the current task's mm (`MMF_DUMPABLE_MASK`
/// bits of `mm->flags`), or [`DUMPABLE_UNKNOWN`].
#[inline(always)]
unsafe fn dumpable_of(cfg: &Config, task: u64) -> u32 {
    if cfg.off_task_mm == 0 || cfg.off_mm_flags == 0 {
        return DUMPABLE_UNKNOWN;
    }
    let mm = unsafe { read_kernel_u64(task + cfg.off_task_mm as u64) };
    if mm == 0 {
        return DUMPABLE_UNKNOWN;
    }
    let mut flags: u64 = 0;
    if unsafe { bpf_probe_read_kernel(addr_of_mut!(flags).cast(), 8, (mm + cfg.off_mm_flags as u64) as *const c_void) }
        == 0
    {
        (flags & MMF_DUMPABLE_MASK) as u32
    } else {
        DUMPABLE_UNKNOWN
    }
}

/// Reads the user registers into `dst` (all of them when `may_copy`,
/// else only ip and sp); 0 on success.
#[inline(always)]
unsafe fn read_regs(dst: *mut UserRegs, may_copy: bool) -> i64 {
    unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const c_void;
        if may_copy {
            bpf_probe_read_kernel(dst.cast(), core::mem::size_of::<UserRegs>() as u32, regs)
        } else {
            // Only ip and sp, read one by one; every other register is 0.
            *dst = UserRegs::default();
            let a = bpf_probe_read_kernel(
                addr_of_mut!((*dst).ip).cast(),
                8,
                (regs as *const u8).add(REGS_IP_OFFSET) as *const c_void,
            );
            let b = bpf_probe_read_kernel(
                addr_of_mut!((*dst).sp).cast(),
                8,
                (regs as *const u8).add(REGS_SP_OFFSET) as *const c_void,
            );
            a | b
        }
    }
}

/// Copies `STACK_PAGES` whole pages of user memory from `base` to `dst`
/// (pages of a process that is not dumpable are zeroed, not read);
/// returns the bits of the pages copied.
#[inline(always)]
unsafe fn copy_stack(dst: *mut u8, base: u64, may_copy: bool) -> u32 {
    let mut ok = 0u32;
    // Whole pages at fixed offsets, so the verifier keeps each bound.
    macro_rules! page {
        ($i:literal) => {
            if !may_copy {
                // Not dumpable: nothing of its memory leaves the kernel.
                // A read of address 0 fails and zeroes the page.
                let _ =
                    unsafe { bpf_probe_read_user(dst.add($i * PAGE_SIZE).cast(), PAGE_SIZE as u32, core::ptr::null()) };
            } else if unsafe {
                bpf_probe_read_user(
                    dst.add($i * PAGE_SIZE).cast(),
                    PAGE_SIZE as u32,
                    (base + ($i * PAGE_SIZE) as u64) as *const c_void,
                )
            } == 0
            {
                ok |= 1 << $i;
            }
        };
    }
    page!(0);
    page!(1);
    page!(2);
    page!(3);
    page!(4);
    ok
}

/// The search for the kernel's signal frame on the alternate stack.
#[repr(C)]
struct SigframeSearch {
    from: u64,
    top: u64,
    ss_sp: u64,
    ss_size: u64,
    found_sp: u64,
}

/// `bpf_loop` callback: is word `i` above `from` the `uc_stack` of a
/// `ucontext` (equal to the alternate stack) whose `uc_mcontext.sp` lies
/// outside it?
#[inline(never)]
extern "C" fn sigframe_word(i: u32, ctx: *mut c_void) -> i64 {
    let s = ctx as *mut SigframeSearch;
    // SAFETY: `ctx` is the caller's `SigframeSearch`; user reads are
    // checked by the helper.
    unsafe {
        let a = (*s).from + (i as u64) * 8;
        if a + 240 > (*s).top {
            return 1;
        }
        let mut w = [0u64; 3];
        if bpf_probe_read_user(w.as_mut_ptr().cast(), 24, a as *const c_void) != 0 {
            return 1;
        }
        if w[0] != (*s).ss_sp || w[2] != (*s).ss_size {
            return 0;
        }
        // uc_mcontext follows uc_stack: sp is its 16th word, the fpstate
        // pointer its 27th (above the frame, inside the stack, or 0).
        let mut sp: u64 = 0;
        let mut fpstate: u64 = 0;
        let _ = bpf_probe_read_user(addr_of_mut!(sp).cast(), 8, (a + 24 + 15 * 8) as *const c_void);
        let _ = bpf_probe_read_user(addr_of_mut!(fpstate).cast(), 8, (a + 24 + 26 * 8) as *const c_void);
        if sp == 0 || (fpstate != 0 && (fpstate <= a || fpstate >= (*s).top)) {
            return 0;
        }
        if sp < (*s).ss_sp || sp >= (*s).ss_sp + (*s).ss_size {
            (*s).found_sp = sp;
        }
        1
    }
}

/// When `sp` is on the task's alternate signal stack: the sp the running
/// handler interrupted, if that lies outside it (else 0).
#[inline(always)]
unsafe fn interrupted_sp(cfg: &Config, task: u64, sp: u64) -> u64 {
    if cfg.off_sas_ss_sp == 0 || cfg.off_sas_ss_size == 0 {
        return 0;
    }
    let ss_sp = unsafe { read_kernel_u64(task + cfg.off_sas_ss_sp as u64) };
    let ss_size = unsafe { read_kernel_u64(task + cfg.off_sas_ss_size as u64) };
    if ss_size == 0 || ss_size > (64 << 20) || sp < ss_sp || sp >= ss_sp + ss_size {
        return 0;
    }
    let top = ss_sp + ss_size;
    let mut search = SigframeSearch { from: sp & !7, top, ss_sp, ss_size, found_sp: 0 };
    let words = ((top - (sp & !7)) / 8) as u32;
    let n = if words > MAX_SIGFRAME_WORDS { MAX_SIGFRAME_WORDS } else { words };
    // SAFETY: a callback of the expected signature, a context on this stack.
    let _ = unsafe { bpf_loop(n, sigframe_word as *mut c_void, addr_of_mut!(search).cast(), 0) };
    search.found_sp
}

fn try_signal_deliver(ctx: &TracePointContext) -> Result<(), i64> {
    let cfg = config().ok_or(1i64)?;
    if cfg.flags & FLAG_SIGNALS == 0 {
        return Ok(());
    }
    // signal_deliver format: sig@8 errno@12 code@16 sa_handler@24 sa_flags@32.
    // SAFETY: offsets of this tracepoint's format.
    let sig: i32 = unsafe { ctx.read_at(8) }.map_err(|e| e as i64)?;
    if !(1..=63).contains(&sig) || cfg.signal_mask & (1u64 << sig) == 0 {
        return Ok(());
    }
    let sa_handler: u64 = unsafe { ctx.read_at(24) }.map_err(|e| e as i64)?;
    if cfg.flags & FLAG_ONLY_DEFAULT_ACTION != 0 && sa_handler != 0 {
        return Ok(());
    }
    let errno: i32 = unsafe { ctx.read_at(12) }.map_err(|e| e as i64)?;
    let code: i32 = unsafe { ctx.read_at(16) }.map_err(|e| e as i64)?;
    let comm = bpf_get_current_comm().map_err(|e| e as i64)?;
    if !comm_passes(cfg, &comm) {
        return Ok(());
    }
    // SAFETY: helper without arguments; kernel reads through the helper.
    let task = unsafe { bpf_get_current_task() };
    // The dumpable state (mm->flags & MMF_DUMPABLE_MASK): a process
    // the kernel would not dump for its user gets no stack copy and no
    // registers beyond ip/sp.
    let dumpable = unsafe { dumpable_of(cfg, task) };
    let may_copy = dumpable == DUMPABLE_USER;
    // A handler on the alternate stack re-raising the signal (Go): the
    // stack it interrupted is copied too.
    let outer_sp = if may_copy {
        let mut sp: u64 = 0;
        // SAFETY: the current task's saved user registers.
        unsafe {
            let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const u8;
            let _ = bpf_probe_read_kernel(addr_of_mut!(sp).cast(), 8, regs.add(REGS_SP_OFFSET) as *const c_void);
            if sp != 0 {
                interrupted_sp(cfg, task, sp)
            } else {
                0
            }
        }
    } else {
        0
    };
    let a = Args { sig, code, errno, sa_handler, comm, task, dumpable, may_copy };
    if outer_sp != 0 {
        let Some(mut entry) = EVENTS.reserve::<FatalSignalOuterEvent>(0) else {
            count_lost(KIND_FATAL_SIGNAL);
            return Ok(());
        };
        let ev: *mut FatalSignalOuterEvent = entry.as_mut_ptr();
        // SAFETY: a reserved record of the right size; every field written.
        unsafe {
            fill_fatal(ctx, cfg, addr_of_mut!((*ev).ev), &a);
            let base = outer_sp & !(PAGE_SIZE as u64 - 1);
            (*ev).outer_sp = outer_sp;
            (*ev).outer_base = base;
            (*ev)._pad = 0;
            let dst = addr_of_mut!((*ev).outer) as *mut u8;
            let mut ok = 0u32;
            macro_rules! page {
                ($i:literal) => {
                    if bpf_probe_read_user(
                        dst.add($i * PAGE_SIZE).cast(),
                        PAGE_SIZE as u32,
                        (base + ($i * PAGE_SIZE) as u64) as *const c_void,
                    ) == 0
                    {
                        ok |= 1 << $i;
                    }
                };
            }
            page!(0);
            page!(1);
            page!(2);
            page!(3);
            const _: () = assert!(OUTER_PAGES == 4);
            (*ev).outer_pages_ok = ok;
        }
        entry.submit(BPF_RB_FORCE_WAKEUP as u64);
    } else {
        let Some(mut entry) = EVENTS.reserve::<FatalSignalEvent>(0) else {
            count_lost(KIND_FATAL_SIGNAL);
            return Ok(());
        };
        let ev: *mut FatalSignalEvent = entry.as_mut_ptr();
        // SAFETY: a reserved record of the right size; every field written.
        unsafe { fill_fatal(ctx, cfg, ev, &a) };
        entry.submit(BPF_RB_FORCE_WAKEUP as u64);
    }
    Ok(())
}

/// What the fatal-signal program found before reserving its record.
struct Args {
    sig: i32,
    code: i32,
    errno: i32,
    sa_handler: u64,
    comm: [u8; COMM_LEN],
    task: u64,
    dumpable: u32,
    may_copy: bool,
}

/// Fills a reserved fatal-signal record.
#[inline(always)]
unsafe fn fill_fatal(ctx: &TracePointContext, cfg: &Config, ev: *mut FatalSignalEvent, a: &Args) {
    // SAFETY: `ev` points at a reserved ring-buffer record of the right
    // size; every field is written before submit (the stack pages by the
    // read helper, which zeroes its destination on failure).
    unsafe {
        (*ev).header = header(KIND_FATAL_SIGNAL, a.comm);
        (*ev).signal = a.sig;
        (*ev).si_code = a.code;
        (*ev).errno = a.errno;
        (*ev).sa_handler = a.sa_handler;
        (*ev).fault_addr_ok = 0;
        let task = a.task;
        (*ev).start_boottime_ns = 0;
        if cfg.off_group_leader != 0 && cfg.off_start_boottime != 0 {
            let leader = read_kernel_u64(task + cfg.off_group_leader as u64);
            if leader != 0 {
                (*ev).start_boottime_ns = read_kernel_u64(leader + cfg.off_start_boottime as u64);
            }
        }
        (*ev).fault_addr = 0;
        if cfg.off_thread_cr2 != 0 && (a.sig == SIGSEGV || a.sig == SIGBUS) && a.code > 0 {
            let mut v: u64 = 0;
            if bpf_probe_read_kernel(addr_of_mut!(v).cast(), 8, (task + cfg.off_thread_cr2 as u64) as *const c_void)
                == 0
            {
                (*ev).fault_addr = v;
                (*ev).fault_addr_ok = 1;
            }
        }
        (*ev).dumpable = a.dumpable;
        let may_copy = a.may_copy;
        let r = read_regs(addr_of_mut!((*ev).regs), may_copy);
        (*ev).regs_ok = (r == 0) as u32;

        (*ev).fp_bytes = bpf_get_stack(
            ctx.as_ptr(),
            addr_of_mut!((*ev).fp_frames).cast(),
            (MAX_FP_FRAMES * 8) as u32,
            BPF_F_USER_STACK as u64,
        );

        (*ev).bid_bytes = bpf_get_stack(
            ctx.as_ptr(),
            addr_of_mut!((*ev).bid_frames).cast(),
            (MAX_BUILD_ID_FRAMES * core::mem::size_of::<BuildIdFrame>()) as u32,
            (BPF_F_USER_STACK | BPF_F_USER_BUILD_ID) as u64,
        );

        let sp = if r == 0 { (*ev).regs.sp } else { 0 };
        let base = sp & !(PAGE_SIZE as u64 - 1);
        (*ev).stack_base = base;
        (*ev).stack_pages_ok = copy_stack(addr_of_mut!((*ev).stack) as *mut u8, base, may_copy);

        // The thread dies: its exit names the executable mappings under ip
        // and the stack's words (see `process_exit`).
        (*ev).modules_follow = 0;
        if cfg.vma.ok == 1 && r == 0 && a.sa_handler == 0 {
            let p = PendingExit { ip: (*ev).regs.ip, sp: (*ev).regs.sp, scan_stack: may_copy as u32, oom: 0 };
            if PENDING_EXIT.insert(&(bpf_get_current_pid_tgid() as u32), &p, 0).is_ok() {
                (*ev).modules_follow = 1;
            }
        }
    }
}

/// A thread that took a fatal signal exits (its mm still held): names the
/// executable mappings under its ip and its stack's words. An OOM victim
/// exiting: its registers, stack and mappings.
#[tracepoint]
pub fn process_exit(ctx: TracePointContext) -> u32 {
    if let Some(cfg) = config() {
        if cfg.flags & FLAG_BLACKBOX != 0 && cfg.bb.ok == 1 {
            let _ = try_blackbox_exit(&ctx, cfg);
        }
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: lookup with a key on the stack; the value is copied.
    let Some(p) = (unsafe { PENDING_EXIT.get(&tid) }).copied() else { return 0 };
    let _ = PENDING_EXIT.remove(&tid);
    if p.oom == 1 {
        let _ = try_oom_exit();
    } else {
        let _ = try_process_exit(&p);
    }
    0
}

/// Names the executable mappings under `ip` and (with `scan_stack`) the
/// words of the stack from `sp`, into the per-CPU `MODULE_SCAN`; returns
/// the lookups refused because the mmap lock was busy.
#[inline(always)]
unsafe fn scan_modules(scan: &mut ModuleScan, ip: u64, sp: u64, scan_stack: bool) -> u32 {
    scan.words = sp;
    let mut probe: u64 = 0;
    if unsafe { bpf_probe_read_user(addr_of_mut!(probe).cast(), 8, sp as *const c_void) } != 0 {
        // sp of a stack overflow is below the stack: start at the next page.
        scan.words = (sp & !(PAGE_SIZE as u64 - 1)) + PAGE_SIZE as u64;
    }
    scan.n = 0;
    scan.lookups = 0;
    scan.neg_next = 0;
    scan.neg = [[0; 2]; 8];
    let mut busy: u32 = 0;
    consider(scan, ip, &mut busy);
    if scan_stack {
        // SAFETY: a callback of the expected signature, a context on this stack.
        let _ =
            unsafe { bpf_loop((STACK_COPY_BYTES / 8) as u32, scan_word as *mut c_void, addr_of_mut!(busy).cast(), 0) };
    }
    busy
}

fn try_process_exit(p: &PendingExit) -> Result<(), i64> {
    let comm = bpf_get_current_comm().map_err(|e| e as i64)?;
    let Some(scan) = MODULE_SCAN.get_ptr_mut(0) else { return Ok(()) };
    let Some(mut entry) = EVENTS.reserve::<ModulesEvent>(0) else {
        count_lost(KIND_MODULES);
        return Ok(());
    };
    let ev: *mut ModulesEvent = entry.as_mut_ptr();
    // SAFETY: a reserved record of the right size, every field written
    // before submit; per-CPU scratch.
    unsafe {
        (*ev).header = header(KIND_MODULES, comm);
        let scan = &mut *scan;
        let busy = scan_modules(scan, p.ip, p.sp, p.scan_stack == 1);
        (*ev).n_modules = scan.n;
        (*ev).vma_lookups = scan.lookups;
        (*ev).vma_busy = busy;
        (*ev)._pad = 0;
        let _ = bpf_probe_read_kernel(
            addr_of_mut!((*ev).modules).cast(),
            core::mem::size_of::<[event_types::ModuleVma; MAX_MODULES]>() as u32,
            addr_of_mut!(scan.mods) as *const c_void,
        );
    }
    entry.submit(BPF_RB_FORCE_WAKEUP as u64);
    Ok(())
}

/// An OOM victim exits (killed): its user registers where the kill found
/// it, its stack copy and the mappings under them, and its cgroup.
fn try_oom_exit() -> Result<(), i64> {
    let cfg = config().ok_or(1i64)?;
    let comm = bpf_get_current_comm().map_err(|e| e as i64)?;
    let Some(scan) = MODULE_SCAN.get_ptr_mut(0) else { return Ok(()) };
    let Some(mut entry) = EVENTS.reserve::<OomStackEvent>(0) else {
        count_lost(KIND_OOM_STACK);
        return Ok(());
    };
    let ev: *mut OomStackEvent = entry.as_mut_ptr();
    // SAFETY: a reserved record of the right size, every field written
    // before submit; per-CPU scratch.
    unsafe {
        (*ev).header = header(KIND_OOM_STACK, comm);
        (*ev).cgroup_id = bpf_get_current_cgroup_id();
        let dumpable = dumpable_of(cfg, bpf_get_current_task());
        (*ev).dumpable = dumpable;
        let may_copy = dumpable == DUMPABLE_USER;
        let r = read_regs(addr_of_mut!((*ev).regs), may_copy);
        (*ev).regs_ok = (r == 0) as u32;
        let (ip, sp) = if r == 0 { ((*ev).regs.ip, (*ev).regs.sp) } else { (0, 0) };
        let base = sp & !(PAGE_SIZE as u64 - 1);
        (*ev).stack_base = base;
        (*ev).stack_pages_ok = copy_stack(addr_of_mut!((*ev).stack) as *mut u8, base, may_copy);
        let scan = &mut *scan;
        let busy = if r == 0 && cfg.vma.ok == 1 { scan_modules(scan, ip, sp, may_copy) } else { 0 };
        if r != 0 || cfg.vma.ok != 1 {
            scan.n = 0;
            scan.lookups = 0;
        }
        (*ev).n_modules = scan.n;
        (*ev).vma_lookups = scan.lookups;
        (*ev).vma_busy = busy;
        let _ = bpf_probe_read_kernel(
            addr_of_mut!((*ev).modules).cast(),
            core::mem::size_of::<[event_types::ModuleVma; MAX_MODULES]>() as u32,
            addr_of_mut!(scan.mods) as *const c_void,
        );
    }
    entry.submit(BPF_RB_FORCE_WAKEUP as u64);
    Ok(())
}

/// A process ran `execve`: its executable's identity, so eventprobe can
/// hold the file open while the process lives; while the black box
/// records, also what its exec entry needs.
#[tracepoint]
pub fn process_exec(ctx: TracePointContext) -> u32 {
    let _ = try_process_exec(&ctx);
    0
}

/// Whether an exec's executable is held open (fatal signals reported,
/// the offsets known).
#[inline(always)]
fn holds_exes(cfg: &Config) -> bool {
    cfg.flags & FLAG_SIGNALS != 0 && cfg.off_mm_exe_file != 0 && cfg.off_task_mm != 0 && cfg.vma.ok == 1
}

/// `mm->exe_file`'s (inode number, device) of `task`, or None.
#[inline(always)]
unsafe fn exe_identity(cfg: &Config, task: u64) -> Option<(u64, u32)> {
    let o = &cfg.vma;
    // SAFETY: kernel reads through the helper (0 when unreadable).
    unsafe {
        let mm = read_kernel_u64(task + cfg.off_task_mm as u64);
        let file = if mm != 0 { read_kernel_u64(mm + cfg.off_mm_exe_file as u64) } else { 0 };
        if file == 0 {
            return None;
        }
        let inode = read_kernel_u64(file + o.file_inode as u64);
        let sb = read_kernel_u64(inode + o.inode_sb as u64);
        let mut dev: u32 = 0;
        let _ = bpf_probe_read_kernel(addr_of_mut!(dev).cast(), 4, (sb + o.sb_dev as u64) as *const c_void);
        Some((read_kernel_u64(inode + o.inode_ino as u64), dev))
    }
}

fn try_process_exec(ctx: &TracePointContext) -> Result<(), i64> {
    let cfg = config().ok_or(1i64)?;
    if cfg.flags & FLAG_BLACKBOX != 0 && cfg.bb.ok == 1 {
        return try_blackbox_exec(ctx, cfg);
    }
    if !holds_exes(cfg) {
        return Ok(());
    }
    let comm = bpf_get_current_comm().map_err(|e| e as i64)?;
    if !comm_passes(cfg, &comm) {
        return Ok(());
    }
    // SAFETY: the current task; kernel reads through the helper.
    let Some((ino, dev)) = (unsafe { exe_identity(cfg, bpf_get_current_task()) }) else { return Ok(()) };
    let ev = ExecEvent { header: header(KIND_EXEC, comm), ino, dev, _pad: 0 };
    if EVENTS.output::<ExecEvent>(&ev, BPF_RB_NO_WAKEUP as u64).is_err() {
        count_lost(KIND_EXEC);
    }
    Ok(())
}

/// The black box's events do not wake the reader one by one (a wakeup
/// per exec is an inter-processor interrupt): it drains the ring on a
/// timer, and is woken when the ring is an eighth full.
#[inline(always)]
fn blackbox_wakeup() -> u64 {
    let avail = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let size = EVENTS.query(BPF_RB_RING_SIZE as u64);
    if avail >= size / 8 {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Reads a u32 at a kernel address (0 when unreadable).
#[inline(always)]
unsafe fn read_kernel_u32(addr: u64) -> u32 {
    let mut v: u32 = 0;
    // SAFETY: the helper checks the address.
    let r = unsafe { bpf_probe_read_kernel(addr_of_mut!(v).cast(), 4, addr as *const c_void) };
    if r == 0 {
        v
    } else {
        0
    }
}

/// An exec while the black box records: everything its entry needs, in
/// one record (which also carries the executable's identity to hold).
fn try_blackbox_exec(ctx: &TracePointContext, cfg: &Config) -> Result<(), i64> {
    let comm = bpf_get_current_comm().map_err(|e| e as i64)?;
    let hold = holds_exes(cfg) && comm_passes(cfg, &comm);
    let Some(mut entry) = EVENTS.reserve::<ExecBlackboxEvent>(0) else {
        count_lost(KIND_EXEC_BLACKBOX);
        return Ok(());
    };
    let ev: *mut ExecBlackboxEvent = entry.as_mut_ptr();
    let b = &cfg.bb;
    // SAFETY: a reserved record of the right size; every field is written
    // (the byte arrays up to what user space reads: the strings by the
    // read helpers, which zero them on failure, argv up to argv_len).
    unsafe {
        (*ev).header = header(KIND_EXEC_BLACKBOX, comm);
        let task = bpf_get_current_task();
        let id = if hold { exe_identity(cfg, task) } else { None };
        match id {
            Some((ino, dev)) => {
                (*ev).ino = ino;
                (*ev).dev = dev;
                (*ev).hold = 1;
            }
            None => {
                (*ev).ino = 0;
                (*ev).dev = 0;
                (*ev).hold = 0;
            }
        }
        let parent = read_kernel_u64(task + b.task_real_parent as u64);
        (*ev).ppid = if parent != 0 { read_kernel_u32(parent + b.task_tgid as u64) } else { 0 };
        (*ev).cgroup_id = bpf_get_current_cgroup_id();
        let signal = read_kernel_u64(task + b.task_signal as u64);
        let tty = if signal != 0 { read_kernel_u64(signal + b.signal_tty as u64) } else { 0 };
        (*ev).tty[0] = 0;
        if tty != 0 {
            let _ = aya_ebpf::helpers::bpf_probe_read_kernel_str_bytes(
                (tty + b.tty_name as u64) as *const u8,
                &mut (*ev).tty,
            );
        }
        // sched_process_exec format: __data_loc char[] filename@8.
        (*ev).filename[0] = 0;
        if let Ok(loc) = ctx.read_at::<u32>(8) {
            let off = (loc & 0xffff) as usize;
            let _ = aya_ebpf::helpers::bpf_probe_read_kernel_str_bytes(
                (ctx.as_ptr() as *const u8).add(off),
                &mut (*ev).filename,
            );
        }
        let mm = read_kernel_u64(task + cfg.off_task_mm as u64);
        let (start, end) = if mm != 0 {
            (read_kernel_u64(mm + b.mm_arg_start as u64), read_kernel_u64(mm + b.mm_arg_end as u64))
        } else {
            (0, 0)
        };
        let total = if end > start { end - start } else { 0 };
        (*ev).argv_total = total;
        let n = if total > ARGV_LEN as u64 { ARGV_LEN as u32 } else { total as u32 };
        (*ev).argv_len = 0;
        if n > 0 && bpf_probe_read_user(addr_of_mut!((*ev).argv).cast(), n, start as *const c_void) == 0 {
            (*ev).argv_len = n;
        }
    }
    entry.submit(blackbox_wakeup());
    Ok(())
}

/// `PF_KTHREAD` of `task_struct.flags`: a kernel thread.
const PF_KTHREAD: u32 = 0x0020_0000;

/// `SIGNAL_GROUP_EXIT` of `signal_struct.flags`: the group exits with
/// `group_exit_code` (exit_group, a fatal signal).
const SIGNAL_GROUP_EXIT: u32 = 0x4;

/// A thread exits while the black box records: when its thread group is
/// now dead, the process's end (every process, not only abnormal ones;
/// kernel threads are not processes of anyone's).
fn try_blackbox_exit(ctx: &TracePointContext, cfg: &Config) -> Result<(), i64> {
    let b = &cfg.bb;
    // SAFETY: kernel reads through the helper (0 when unreadable); the
    // tracepoint field offset comes from its format.
    unsafe {
        let task = bpf_get_current_task();
        if read_kernel_u32(task + b.task_flags as u64) & PF_KTHREAD != 0 {
            return Ok(());
        }
        let signal = read_kernel_u64(task + b.task_signal as u64);
        if signal == 0 {
            return Ok(());
        }
        // The exiting thread has already decremented `signal->live`.
        let dead = if b.tp_exit_group_dead != 0 {
            ctx.read_at::<u8>(b.tp_exit_group_dead as usize).map_err(|e| e as i64)? != 0
        } else {
            read_kernel_u32(signal + b.signal_live as u64) == 0
        };
        if !dead {
            return Ok(());
        }
        let leader = read_kernel_u64(task + cfg.off_group_leader as u64);
        let flags = read_kernel_u32(signal + b.signal_flags as u64);
        let code = if flags & SIGNAL_GROUP_EXIT != 0 {
            read_kernel_u32(signal + b.signal_group_exit_code as u64)
        } else if leader != 0 {
            // Every thread left by exit(2): the leader's code is the
            // group's (what wait(2) reports).
            read_kernel_u32(leader + b.task_exit_code as u64)
        } else {
            read_kernel_u32(task + b.task_exit_code as u64)
        };
        let parent = read_kernel_u64(task + b.task_real_parent as u64);
        let ppid = if parent != 0 { read_kernel_u32(parent + b.task_tgid as u64) } else { 0 };
        let mut comm = [0u8; COMM_LEN];
        if leader == 0
            || bpf_probe_read_kernel(
                comm.as_mut_ptr().cast(),
                COMM_LEN as u32,
                (leader + b.task_comm as u64) as *const c_void,
            ) != 0
        {
            comm = bpf_get_current_comm().map_err(|e| e as i64)?;
        }
        let start = if leader != 0 && cfg.off_start_boottime != 0 {
            read_kernel_u64(leader + cfg.off_start_boottime as u64)
        } else {
            0
        };
        let ev = ProcessExitEvent { header: header(KIND_PROCESS_EXIT, comm), ppid, code, start_boottime_ns: start };
        if EVENTS.output::<ProcessExitEvent>(&ev, blackbox_wakeup()).is_err() {
            count_lost(KIND_PROCESS_EXIT);
        }
    }
    Ok(())
}

#[tracepoint]
pub fn exit_group(ctx: TracePointContext) -> u32 {
    let _ = try_exit_group(&ctx);
    0
}

fn try_exit_group(ctx: &TracePointContext) -> Result<(), i64> {
    let cfg = config().ok_or(1i64)?;
    if cfg.flags & FLAG_EXITS == 0 {
        return Ok(());
    }
    // sys_enter_exit_group format: __syscall_nr@8, error_code@16 (the code).
    // SAFETY: offset of this tracepoint's format.
    let code: i64 = unsafe { ctx.read_at(16) }.map_err(|e| e as i64)?;
    let status = (code & 0xff) as u32;
    if status == 0 || status < cfg.min_exit_code {
        return Ok(());
    }
    let comm = bpf_get_current_comm().map_err(|e| e as i64)?;
    if !comm_passes(cfg, &comm) {
        return Ok(());
    }
    let ev = ExitEvent { header: header(KIND_EXIT, comm), code };
    if EVENTS.output::<ExitEvent>(&ev, 0).is_err() {
        count_lost(KIND_EXIT);
    }
    Ok(())
}

#[tracepoint]
pub fn mark_victim(ctx: TracePointContext) -> u32 {
    let _ = try_mark_victim(&ctx);
    0
}

fn try_mark_victim(ctx: &TracePointContext) -> Result<(), i64> {
    let cfg = config().ok_or(1i64)?;
    if cfg.flags & FLAG_OOM == 0 {
        return Ok(());
    }
    // mark_victim format: pid@8 __data_loc comm@12 total_vm@16 anon_rss@24
    // file_rss@32 shmem_rss@40 uid@48 pgtables@56 oom_score_adj@64.
    // SAFETY: offsets of this tracepoint's format.
    unsafe {
        let pid: i32 = ctx.read_at(8).map_err(|e| e as i64)?;
        let loc: u32 = ctx.read_at(12).map_err(|e| e as i64)?;
        let mut comm = [0u8; COMM_LEN];
        let off = (loc & 0xffff) as usize;
        let _ = aya_ebpf::helpers::bpf_probe_read_kernel_str_bytes((ctx.as_ptr() as *const u8).add(off), &mut comm);
        if !comm_passes(cfg, &comm) {
            return Ok(());
        }
        let mut h = header(KIND_OOM, comm);
        h.pid = pid as u32;
        h.uid = ctx.read_at(48).map_err(|e| e as i64)?;
        let ev = OomEvent {
            header: h,
            total_vm_kb: ctx.read_at(16).map_err(|e| e as i64)?,
            anon_rss_kb: ctx.read_at(24).map_err(|e| e as i64)?,
            file_rss_kb: ctx.read_at(32).map_err(|e| e as i64)?,
            shmem_rss_kb: ctx.read_at(40).map_err(|e| e as i64)?,
            pgtables_kb: ctx.read_at(56).map_err(|e| e as i64)?,
            oom_score_adj: ctx.read_at::<i16>(64).map_err(|e| e as i64)? as i32,
            _pad: 0,
        };
        if EVENTS.output::<OomEvent>(&ev, 0).is_err() {
            count_lost(KIND_OOM);
        }
        // The victim's own exit sends its stack (see `process_exit`).
        let p = PendingExit { ip: 0, sp: 0, scan_stack: 0, oom: 1 };
        let _ = PENDING_EXIT.insert(&(pid as u32), &p, 0);
    }
    Ok(())
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects programs that could reach a panic.
    unsafe { core::hint::unreachable_unchecked() }
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
