//! # eventprobe: fatal signals, abnormal exits and OOM kills from eBPF
//!
//! Where it sits in the data flow:
//!
//! ```text
//!  kernel: probe-ebpf/ (tracepoints signal:signal_deliver,
//!          syscalls:sys_enter_exit_group, oom:mark_victim; filters in maps)
//!    │  RingBuf of event_types::{FatalSignalEvent, ExitEvent, OomEvent}
//!    ▼
//!  eventprobe (this crate)
//!    loader   loads the embedded object with aya, writes the filter maps, attaches
//!    event    parses ring records into owned events
//!    daemon   tokio AsyncFd reader, rate limiter, /proc capture, worker thread
//!    capture  /proc/PID/maps at once; unwinding with the shared `unwind` crate
//!             (DWARF CFI first, frame pointers second) over the stack snapshot
//!    report   records `org.clearlinux/{signal/fatal, exit/abnormal, oom/kill}`
//!    │  telemetry::client::Client (native framing, acknowledged)
//!    ▼
//!  telem-collector
//! ```
//!
//! ## Reading the crashed process in time
//! A fatal signal's registers, frame-pointer stack and stack copy are taken
//! in the kernel, but the mappings needed to unwind and symbolize them are
//! read from `/proc/PID/maps` (and the mapped files pre-opened through
//! `/proc/PID/map_files`) when the event reaches user space. That works
//! while the process still exists: the kernel keeps a crashing process
//! alive while its core is dumped, so with a core_pattern handler
//! (crashprobe, systemd-coredump) or a core file being written the read
//! succeeds (see `tests/tests/events_crashprobe.rs`). Without a core dump
//! the process is usually gone within microseconds; the record then says
//! `Mappings: unavailable`, and lists the frame-pointer walk as the kernel
//! resolved it while the process existed (`BPF_F_USER_BUILD_ID`: GNU build
//! id and file offset per frame), which a server can symbolize.
//!
//! ## Kernel facts without CO-RE
//! aya-ebpf has no CO-RE relocations, so `kernel_btf` reads the offsets of
//! `task_struct.group_leader`, `.start_boottime` and `.thread.cr2` from
//! `/sys/kernel/btf/vmlinux` and hands them to the kernel side in `CONFIG`
//! (process start time for the crash event id, fault address).
//!
//! ## Loss is never silent
//! Ring-buffer reservation failures are counted per kind in the `LOST` map
//! (warned about every second when they grow); events dropped by the rate
//! limiter or a full work queue are counted too; the counts are printed in
//! the `eventprobe: summary ...` line at exit, and a record that follows
//! rate-limited ones says how many were suppressed.
//!
//! ## The eBPF object
//! `build.rs` embeds `probe-ebpf/target/bpfel-unknown-none/release/probe-ebpf`
//! (built by `cargo xtask build-ebpf`; `EVENTPROBE_OBJECT=PATH` overrides
//! the path). When it has not been built, the workspace still compiles and
//! `eventprobe` refuses to start with a message saying to run
//! `cargo xtask build-ebpf` and rebuild; `--object PATH` loads another one.

pub mod capture;
pub mod config;
pub mod daemon;
pub mod event;
pub mod filters;
pub mod kernel_btf;
pub mod loader;
pub mod ratelimit;
pub mod report;
