//! # unwind: stack unwinding and symbolization for the telemetrics probes
//!
//! Where it sits in the data flow:
//!
//! ```text
//!  crashprobe: ELF core (stream) ─┐ registers per thread, kept stack bytes,
//!                                 │ NT_FILE mappings
//!  eventprobe: eBPF sample ───────┤ rip/rsp/rbp + >= 16 KiB of stack from sp,
//!                                 │ /proc/PID/maps
//!                                 ▼
//!              unwind::Session::unwind   CFI (.eh_frame via .eh_frame_hdr
//!                                        binary search, .debug_frame), then
//!                                        Go's .gopclntab, signal frames of
//!                                        trampolines without CFI, then
//!                                        frame pointers, then a stack scan
//!                                 ▼
//!              unwind::Session::symbolize  addr2line (inlined frames,
//!                                        file:line), .symtab/.dynsym, debug
//!                                        files by build-id / .gnu_debuglink,
//!                                        Rust and C++ demangling
//!                                 ▼
//!              Backtrace { frames: [Frame { pc, module, build_id,
//!                          module_offset, source, symbols }], end }
//! ```
//!
//! ## API for a stack snapshot (the eBPF probe)
//!
//! ```no_run
//! use unwind::{Registers, StackSnapshot, Unwinder, Options, parse_proc_maps, ProcOpener, open_dir};
//! # fn f(pid: u32, rip: u64, rsp: u64, rbp: u64, stack: &[u8]) -> std::io::Result<()> {
//! let unwinder = Unwinder::new(Options::default());          // keep one: it caches modules
//! let proc_dir = open_dir(None, format!("/proc/{pid}").as_ref())?;
//! let maps = parse_proc_maps(&std::fs::read(format!("/proc/{pid}/maps"))?)
//!     .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
//! let opener = ProcOpener::new(proc_dir);                    // map_files / root, no bare paths
//! let memory = StackSnapshot::new(rsp, stack);               // bytes copied from rsp upward
//! let mut session = unwinder.session(&memory, &maps, &opener);
//! let mut bt = session.unwind(&Registers::x86_64(rip, rsp, rbp));
//! session.symbolize(&mut bt);                                // optional: frames already carry
//! for f in &bt.frames {                                      // module, build-id, offset
//!     println!("{:#x} {:?} {:?} {:?}", f.pc, f.source, f.module, f.function());
//! }
//! # Ok(()) }
//! ```
//!
//! * [`Memory`] is the trait for reading the process's memory;
//!   [`StackSnapshot`] (one region) and [`Regions`] (a core's kept
//!   segments) implement it.
//! * [`FileOpener`] says how module and debug files are opened:
//!   [`ProcOpener`] (through `/proc/PID/map_files` and `/proc/PID/root`
//!   without following symlinks) or [`HostOpener`].
//! * Every [`Frame`] says how it was found ([`FrameSource`]) and carries
//!   the module path, GNU build-id and module offset (the ELF virtual
//!   address: what `addr2line -e MODULE` takes), so a server can symbolize
//!   later. `exact == false` means `pc` is a return address (symbolization
//!   looks up `pc - 1`).
//! * Go: the frame a Go signal handler made look like a caller of
//!   `runtime.sigpanic` (`sigctxt.preparePanic` pushes the faulting pc as
//!   a return address) is exact; Go code is unwound with `.gopclntab`
//!   where it has no usable CFI (Go compresses `.debug_frame` and writes
//!   no `.eh_frame`), and through Go's `runtime.sigreturn` trampoline by
//!   the kernel's signal frame.
//!
//! The event id all probes give a crash (boot id, pid, start time) is
//! `telemetry::crash_id::crash_event_id`: it needs no unwinding.
//!
//! Nothing here panics on malformed ELF, DWARF, maps or memory: bad input
//! ends a backtrace with [`End::Error`] saying why.

pub mod cfi;
mod elf_names;
pub mod gopclntab;
pub mod maps;
pub mod memory;
pub mod module;
pub mod opener;
pub mod regs;
pub mod unwinder;

use serde::{Deserialize, Serialize};

pub use maps::{parse_proc_maps, Mapping, Mappings};
pub use memory::{Memory, Regions, StackSnapshot};
pub use module::{Module, ModuleCache};
pub use opener::{open_dir, FileOpener, HostOpener, ProcOpener};
pub use regs::{Arch, Registers};
pub use unwinder::{Loaded, Options, Session, Unwinder};

/// How a frame was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FrameSource {
    /// The thread's registers (frame 0).
    Context,
    /// DWARF call frame information.
    Cfi,
    /// The frame-pointer chain.
    FramePointer,
    /// A stack scan: a word that looks like a return address (less sure).
    Scan,
    /// Go's function table (`.gopclntab`: the sp delta at the pc), for Go
    /// code without usable CFI.
    GoPclntab,
    /// The registers the kernel saved in a signal frame (`rt_sigreturn`
    /// trampoline without CFI, e.g. Go's `runtime.sigreturn`).
    SignalFrame,
}

impl FrameSource {
    pub fn as_str(self) -> &'static str {
        match self {
            FrameSource::Context => "context",
            FrameSource::Cfi => "cfi",
            FrameSource::FramePointer => "frame_pointer",
            FrameSource::Scan => "scan",
            FrameSource::GoPclntab => "gopclntab",
            FrameSource::SignalFrame => "signal_frame",
        }
    }
}

/// A function at a frame: the outer one, or one inlined into it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Symbol {
    /// Demangled name, without parameters.
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// Inlined into the next symbol of the frame.
    pub inlined: bool,
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    pub pc: u64,
    pub sp: u64,
    pub source: FrameSource,
    /// `pc` is exact (frame 0, or a frame interrupted by a signal); else it
    /// is a return address.
    pub exact: bool,
    pub module: Option<String>,
    pub build_id: Option<String>,
    /// `pc` as an ELF virtual address of the module.
    pub module_offset: Option<u64>,
    /// Innermost (inlined) first; the last is the frame's own function.
    pub symbols: Vec<Symbol>,
}

impl Frame {
    /// The frame's own (outermost) function name.
    pub fn function(&self) -> Option<&str> {
        self.symbols.last().and_then(|s| s.function.as_deref())
    }
}

/// Why a backtrace ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum End {
    /// The outermost frame (CFI marks the return address undefined, or the
    /// frame-pointer chain ends with 0).
    Outermost,
    /// The frame limit was reached.
    Limit,
    /// Unwinding could not go on; the reason.
    Error(String),
}

/// The frames of one thread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backtrace {
    pub frames: Vec<Frame>,
    pub end: End,
}

impl Backtrace {
    /// Unwound to the end (or to the limit) without an error.
    pub fn is_complete(&self) -> bool {
        !matches!(self.end, End::Error(_))
    }
}

/// Demangles a Rust (legacy or v0) or C++ (Itanium) symbol, dropping the
/// Rust hash and C++ parameters; other names are returned as they are.
pub fn demangle(name: &str) -> String {
    if let Ok(d) = rustc_demangle::try_demangle(name) {
        return format!("{d:#}");
    }
    if name.starts_with("_Z") {
        if let Ok(sym) = cpp_demangle::Symbol::new(name) {
            let opts = cpp_demangle::DemangleOptions::new().no_params().no_return_type();
            if let Ok(s) = sym.demangle(&opts) {
                return s;
            }
        }
    }
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn demangles_rust_and_cpp() {
        assert_eq!(demangle("_ZN4core9panicking5panic17h0123456789abcdefE"), "core::panicking::panic");
        assert_eq!(demangle("_ZN2ns5innerEi"), "ns::inner");
        assert_eq!(demangle("main"), "main");
        assert_eq!(demangle("_Z"), "_Z");
    }
}
