//! # eventprobe: fatal signals, abnormal exits and OOM kills from eBPF; the black box's process feed
//!
//! Where it sits in the data flow:
//!
//! ```text
//!  kernel: probe-ebpf/ (tracepoints signal:signal_deliver,
//!          sched:sched_process_exit, sched:sched_process_exec,
//!          syscalls:sys_enter_exit_group,
//!          oom:mark_victim; filters in maps; FLAG_BLACKBOX while recording)
//!    │  RingBuf of event_types::{FatalSignalEvent, ModulesEvent, ExecEvent, ExitEvent, OomEvent,
//!    │                           ExecBlackboxEvent, ProcessExitEvent}
//!    ▼
//!  eventprobe (this crate)
//!    loader    loads the embedded object with aya, writes the filter maps, attaches;
//!              the black box's switch (FLAG_BLACKBOX in CONFIG)
//!    kernel_btf, tp_format  struct offsets from BTF, tracepoint fields from tracefs
//!    event     parses ring records into owned events
//!    daemon    tokio AsyncFd reader, rate limiter, /proc capture, worker thread
//!    capture   /proc/PID/maps at once; unwinding with the shared `unwind` crate
//!              (DWARF CFI first, frame pointers second) over the stack snapshot
//!    modules   the kernel's names of the executable mappings (process gone)
//!    exec      executables held open while their processes live
//!    cgroup    cgroup v2 ids to paths (and systemd units)
//!    config    event_registers, privacy_level, state_dir
//!    report    records `org.clearlinux/{signal/fatal, exit/abnormal, oom/kill}`
//!    │  telemetry::client::Client (native framing, acknowledged)
//!    ▼
//!  telem-collector
//!    ▲  blackbox socket (state_dir/blackbox.sock, telemetry::blackbox JSON lines)
//!    │  {"recording":..} / {"ack":N} in; Feed lines (exec, exit, fatal_signal, oom, gap) out
//!  blackbox   the feed: convert (entries, cgroup names, clocks), outbox (seq, acks,
//!             bounded, gaps), reconnection every second
//! ```
//!
//! ## The black box's feed
//! While the collector records (`telemctl blackbox start`), it says so on
//! the blackbox socket and eventprobe sets `FLAG_BLACKBOX` in the kernel
//! side's `CONFIG`: then every exec sends an `ExecBlackboxEvent` (pid,
//! ppid, uid, controlling tty, the exec'd path, up to 2 KiB of argv, the
//! cgroup v2 id) and the end of every thread group a `ProcessExitEvent`
//! (its wait status code and start time), whatever the comm filters say.
//! `blackbox` turns them, and fatal signals and OOM kills seen meanwhile,
//! into `telemetry::blackbox::Entry` (`mono_ns` = the kernel's boot-time
//! stamp, `wall_ns` from a realtime-boottime offset read every second;
//! `operator` when a tty is set; argv raw: the collector scrubs it) and
//! streams them with a sequence number, keeping each until the collector
//! acknowledges it (at most 256 Ki entries or 64 MiB; what must be dropped,
//! and every kernel-side ring-buffer loss, becomes a `gap` entry). Flag
//! off, the exec and exit programs cost what they did (one test of a
//! flag). `--blackbox-socket` names another socket, `--no-blackbox` turns
//! the feed off (and does not attach the programs only it needs).
//!
//! ## Reading the crashed process in time
//! A fatal signal's registers, frame-pointer stack and stack copy are taken
//! in the kernel. The mappings needed to unwind and symbolize them come
//! from `/proc/PID/maps` (files pre-opened through `/proc/PID/map_files`)
//! when the process still exists as the event reaches user space (a
//! core_pattern handler such as crashprobe holds it while its core is
//! dumped). Without a core dump the process is usually gone within
//! microseconds, so the kernel names them itself: when the thread that
//! took the fatal signal exits (`sched:sched_process_exit`, before its mm
//! is released), `process_exit` calls `bpf_find_vma` for ip and for every
//! word of the user stack (16 KiB from sp; at most 128 lookups, stack and
//! heap ranges remembered so each is looked up once) and sends a
//! `ModulesEvent`: start, end, file offset, device, inode and the dentry
//! names up to the file system's root of each executable file mapping
//! (at most 16). `modules` opens those very files (path under each mount
//! of the device, device and inode checked; an executable held open since
//! its `exec`, see `exec`, when the path no longer names it: deleted or
//! replaced) and the unwinder runs over them. Not at the signal itself: `signal:signal_deliver` runs with
//! interrupts off, where `bpf_find_vma` can take the mmap lock only once
//! per program run. `--no-proc-maps` uses only the kernel's names (tests,
//! measurements). The record then says `Mappings: named by the kernel at
//! the signal (...)`, and also lists the frame-pointer walk as the kernel
//! resolved it (`BPF_F_USER_BUILD_ID`: GNU build id and file offset per
//! frame).
//!
//! ## Kernel facts without CO-RE
//! aya-ebpf has no CO-RE relocations, so `kernel_btf` reads the offsets of
//! `task_struct.group_leader`, `.start_boottime` and `.thread.cr2` from
//! `/sys/kernel/btf/vmlinux` and hands them to the kernel side in `CONFIG`
//! (process start time for the crash event id, fault address), and those
//! the black box reads (`real_parent`, `tgid`, `signal->tty->name`,
//! `mm->arg_start`/`arg_end`, `exit_code`, `signal->{flags,
//! group_exit_code, live}`); `tp_format` reads the offset of
//! `sched_process_exit`'s `group_dead` (newer kernels; else `signal->live`
//! tells) from tracefs.
//!
//! ## Loss is never silent
//! Ring-buffer reservation failures are counted per kind in the `LOST` map
//! (warned about every second when they grow); events dropped by the rate
//! limiter or a full work queue are counted too; the counts are printed in
//! the `eventprobe: summary ...` line at exit, and a record that follows
//! rate-limited ones says how many were suppressed. For the black box,
//! the growth of the `LOST` counts of its kinds becomes `gap` entries
//! (`kernel ring buffer full (exec)`, ...), as do entries its bounded
//! outbox had to drop while the collector did not acknowledge them.
//!
//! ## The eBPF object
//! `build.rs` embeds `probe-ebpf/target/bpfel-unknown-none/release/probe-ebpf`
//! (built by `cargo xtask build-ebpf`; `EVENTPROBE_OBJECT=PATH` overrides
//! the path). When it has not been built, the workspace still compiles and
//! `eventprobe` refuses to start with a message saying to run
//! `cargo xtask build-ebpf` and rebuild; `--object PATH` loads another one.

pub mod blackbox;
pub mod capture;
pub mod cgroup;
pub mod config;
pub mod daemon;
pub mod event;
pub mod exec;
pub mod filters;
pub mod kernel_btf;
pub mod kmsg;
pub mod loader;
pub mod modules;
pub mod ratelimit;
pub mod report;
pub mod tp_format;
