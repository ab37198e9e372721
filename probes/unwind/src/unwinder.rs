//! The unwinding loop: CFI, then frame pointers, then a marked stack scan.

use std::collections::HashMap;
use std::sync::Arc;

use gimli::UnwindContext;

use crate::cfi::{self, Step};
use crate::maps::Mappings;
use crate::memory::Memory;
use crate::module::{Module, ModuleCache};
use crate::opener::FileOpener;
use crate::regs::{Arch, Registers};
use crate::{Backtrace, End, Frame, FrameSource};

/// Unwinding options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Most frames per thread (default 128).
    pub max_frames: usize,
    /// Most stack words examined by one stack scan (default 2048 = 16 KiB).
    pub scan_words: usize,
    /// Most frames found by scanning in one backtrace (default 16).
    pub max_scanned: usize,
    /// Take file:line from separate debug files (`/usr/lib/debug`); false
    /// uses only their symbol tables, which is much faster for large,
    /// compressed debug files such as libc's (default true).
    pub separate_debug_lines: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { max_frames: 128, scan_words: 2048, max_scanned: 16, separate_debug_lines: true }
    }
}

/// Owns the module cache; cheap to share between threads.
#[derive(Default)]
pub struct Unwinder {
    cache: ModuleCache,
    pub options: Options,
}

/// A module as loaded in one process.
#[derive(Clone)]
pub struct Loaded {
    pub module: Arc<Module>,
    pub bias: u64,
    pub path: String,
}

/// One process being unwound: its memory, mappings and file access, and
/// the modules found so far.
pub struct Session<'u, 'a, M: Memory + ?Sized> {
    unwinder: &'u Unwinder,
    memory: &'a M,
    maps: &'a Mappings,
    opener: &'a dyn FileOpener,
    /// By the start of the mapping holding the address.
    loaded: HashMap<u64, Option<Loaded>>,
    /// Modules taken from memory (e.g. the vDSO), by mapping start.
    in_memory: HashMap<u64, Arc<Module>>,
    ctx: Box<UnwindContext<usize>>,
}

impl Unwinder {
    pub fn new(options: Options) -> Unwinder {
        Unwinder { cache: ModuleCache::new(), options }
    }

    pub fn cache(&self) -> &ModuleCache {
        &self.cache
    }

    /// Parses (once) the module mapped by `m` and loads its symbols and
    /// debug info, so later sessions symbolize without waiting. Safe to
    /// call from another thread while a session unwinds.
    pub fn warm(&self, m: &crate::Mapping, opener: &dyn FileOpener) -> Option<Arc<Module>> {
        if !m.is_file() {
            return None;
        }
        let f = opener.open_mapping(m)?;
        let module = self.cache.get_or_parse(&f, m.display_path())?;
        module.warm(opener, self.options.separate_debug_lines);
        Some(module)
    }

    /// Starts unwinding one process.
    pub fn session<'u, 'a, M: Memory + ?Sized>(
        &'u self,
        memory: &'a M,
        maps: &'a Mappings,
        opener: &'a dyn FileOpener,
    ) -> Session<'u, 'a, M> {
        Session {
            unwinder: self,
            memory,
            maps,
            opener,
            loaded: HashMap::new(),
            in_memory: HashMap::new(),
            ctx: Box::new(UnwindContext::new()),
        }
    }
}

impl<M: Memory + ?Sized> Session<'_, '_, M> {
    /// Registers a module whose bytes come from memory (the vDSO image of a
    /// core), mapped at `start`.
    pub fn add_memory_module(&mut self, start: u64, module: Module) {
        self.in_memory.insert(start, Arc::new(module));
        self.loaded.remove(&start);
    }

    /// The module holding `addr`, if any.
    pub fn module_at(&mut self, addr: u64) -> Option<Loaded> {
        let m = self.maps.find(addr)?;
        if let Some(l) = self.loaded.get(&m.start) {
            return l.clone();
        }
        let found = if let Some(module) = self.in_memory.get(&m.start) {
            let bias = module.bias_for(m.start, 0).unwrap_or(m.start);
            Some(Loaded { module: module.clone(), bias, path: m.display_path().to_string() })
        } else if m.is_file() {
            self.opener.open_mapping(m).and_then(|f| {
                let module = self.unwinder.cache.get_or_parse(&f, m.display_path())?;
                let bias = module.bias_for(m.start, m.offset)?;
                Some(Loaded { module, bias, path: m.display_path().to_string() })
            })
        } else {
            None
        };
        self.loaded.insert(m.start, found.clone());
        found
    }

    /// Unwinds one thread from its registers (frames are not symbolized:
    /// see [`Session::symbolize`]).
    pub fn unwind(&mut self, regs: &Registers) -> Backtrace {
        let opts = self.unwinder.options.clone();
        let mut frames: Vec<Frame> = Vec::new();
        let Some(pc0) = regs.pc() else {
            return Backtrace { frames, end: End::Error("no program counter".into()) };
        };
        let mut regs = regs.clone();
        let mut exact = true;
        let mut source = FrameSource::Context;
        let mut scanned = 0usize;
        let mut pc = pc0;
        let end = loop {
            let sp = regs.sp().unwrap_or(0);
            frames.push(self.frame(pc, sp, source, exact));
            if frames.len() >= opts.max_frames.max(1) {
                break End::Limit;
            }
            let lookup = if exact { pc } else { pc.wrapping_sub(1) };
            let mut why = String::new();
            let mut next = None;
            // 0. Frame 0 outside any module (a call through a bad pointer):
            //    the return address is on top of the stack.
            if frames.len() == 1 && self.module_at(pc).is_none() && scanned < opts.max_scanned {
                if let Some(r) = self.scan(&regs, 1) {
                    scanned += 1;
                    next = Some((r, false, FrameSource::Scan));
                }
            }
            // 1. CFI.
            let mut cfi_missing = false;
            match (&next, self.module_at(lookup)) {
                (Some(_), _) => {}
                (None, l) => match l {
                    Some(l) if l.module.arch.is_none_or(|a| a == regs.arch) => {
                        match cfi::step(
                            &l.module,
                            l.bias,
                            lookup.wrapping_sub(l.bias),
                            &regs,
                            self.memory,
                            &mut self.ctx,
                        ) {
                            Ok(Step::Outermost) => break End::Outermost,
                            Ok(Step::Caller { regs: r, signal }) => next = Some((r, signal, FrameSource::Cfi)),
                            Err(e) => {
                                cfi_missing = e == cfi::CfiError::NoInfo;
                                why = format!("CFI at {pc:#x}: {e}");
                            }
                        }
                    }
                    Some(_) => why = format!("{pc:#x} is in a module of another architecture"),
                    None => why = format!("{pc:#x} is in no known module"),
                },
            }
            if let Some((r, _, FrameSource::Cfi)) = &next {
                if !self.plausible(&regs, r, false) {
                    why = format!("CFI at {pc:#x} gave an implausible caller");
                    next = None;
                }
            }
            // 1b. Without CFI: a signal trampoline (the kernel's frame),
            //     then Go's function table.
            if next.is_none() && (cfi_missing || self.module_at(lookup).is_none()) {
                if let Some(r) = self.sigreturn_step(pc, &regs) {
                    next = Some((r, true, FrameSource::SignalFrame));
                }
            }
            if next.is_none() && cfi_missing {
                match self.go_step(lookup, exact, &regs) {
                    Some(GoStep::Outermost) => break End::Outermost,
                    Some(GoStep::Caller(r)) if self.plausible(&regs, &r, false) => {
                        next = Some((r, false, FrameSource::GoPclntab));
                    }
                    _ => {}
                }
            }
            // 2. Frame pointers.
            if next.is_none() {
                if let Some(r) = self.fp_step(&regs) {
                    if r.pc() == Some(0) {
                        break End::Outermost;
                    }
                    if self.plausible(&regs, &r, false) {
                        next = Some((r, false, FrameSource::FramePointer));
                    }
                }
            }
            // 3. A marked stack scan.
            if next.is_none() && scanned < opts.max_scanned {
                if let Some(r) = self.scan(&regs, opts.scan_words) {
                    scanned += 1;
                    next = Some((r, false, FrameSource::Scan));
                }
            }
            let Some((r, signal, src)) = next else {
                if why.is_empty() {
                    why = format!("no way to unwind past {pc:#x}");
                }
                break End::Error(why);
            };
            let Some(npc) = r.pc() else { break End::Error("caller has no program counter".into()) };
            if npc == 0 {
                break End::Outermost;
            }
            if frames.iter().rev().take(4).any(|f| f.pc == npc && Some(f.sp) == r.sp()) {
                break End::Error(format!("unwinding loops at {npc:#x}"));
            }
            // Go's signal handling makes the faulting pc look like the
            // return address of a call to runtime.sigpanic: it is exact.
            exact = signal || self.is_go_sigpanic(lookup) || self.is_sigreturn(npc);
            source = src;
            regs = r;
            pc = npc;
        };
        Backtrace { frames, end }
    }

    /// Whether `addr` is in Go's `runtime.sigpanic` (or its ABI0 entry):
    /// the caller of such a frame is the faulting pc itself, which Go's
    /// signal handler pushed as if it were a return address.
    pub fn is_go_sigpanic(&mut self, addr: u64) -> bool {
        let Some(l) = self.module_at(addr) else { return false };
        if l.module.go_pcln().is_none() {
            return false;
        }
        l.module.function_name(addr.wrapping_sub(l.bias)).is_some_and(|n| {
            let n = n.strip_suffix(".abi0").unwrap_or(&n);
            n == "runtime.sigpanic" || n == "runtime.sigpanic0"
        })
    }

    /// Whether `pc` is the first instruction of an x86_64 `rt_sigreturn`
    /// trampoline (`mov $15, %rax; syscall`: glibc's `__restore_rt`, Go's
    /// `runtime.sigreturn`).
    fn is_sigreturn(&mut self, pc: u64) -> bool {
        const RT_SIGRETURN: [u8; 9] = [0x48, 0xc7, 0xc0, 0x0f, 0, 0, 0, 0x0f, 0x05];
        let Some(l) = self.module_at(pc) else { return false };
        if l.module.arch != Some(Arch::X86_64) {
            return false;
        }
        let svma = pc.wrapping_sub(l.bias);
        l.module.is_exec(svma) && l.module.bytes_at(svma, RT_SIGRETURN.len()) == Some(&RT_SIGRETURN[..])
    }

    /// At an x86_64 `rt_sigreturn` trampoline, sp points at the `ucontext`
    /// the kernel saved (`struct rt_sigframe` past its return address):
    /// the interrupted registers are in its `uc_mcontext`.
    fn sigreturn_step(&mut self, pc: u64, regs: &Registers) -> Option<Registers> {
        if regs.arch != Arch::X86_64 || !self.is_sigreturn(pc) {
            return None;
        }
        // uc_flags, uc_link, uc_stack (24 bytes), then the sigcontext:
        // r8..r15, rdi, rsi, rbp, rbx, rdx, rax, rcx, rsp, rip.
        let mc = regs.sp()?.checked_add(40)?;
        let word = |i: u64| self.memory.read_u64(mc.checked_add(i * 8)?);
        // DWARF numbers of x86_64: rax 0, rdx 1, rcx 2, rbx 3, rsi 4, rdi 5,
        // rbp 6, rsp 7, r8..r15 8..15.
        const ORDER: [u16; 16] = [8, 9, 10, 11, 12, 13, 14, 15, 5, 4, 6, 3, 1, 0, 2, 7];
        let mut r = Registers::new(regs.arch);
        for (i, dw) in ORDER.iter().enumerate() {
            r.set(*dw, word(i as u64)?);
        }
        r.set_pc(word(16)?);
        Some(r)
    }

    /// One step with Go's function table: the return address is at
    /// `sp + delta(pc)`.
    fn go_step(&mut self, lookup: u64, exact: bool, regs: &Registers) -> Option<GoStep> {
        if regs.arch != Arch::X86_64 {
            return None;
        }
        let l = self.module_at(lookup)?;
        let pcln = l.module.go_pcln()?;
        let svma = lookup.wrapping_sub(l.bias);
        let f = pcln.func_for(svma)?;
        let delta = pcln.sp_delta(&f, svma)?;
        let sp = regs.sp()?;
        let slot = sp.checked_add(delta)?;
        let ra = self.memory.read_u64(slot);
        if f.flag & crate::gopclntab::FLAG_TOPFRAME != 0 && !ra.is_some_and(|ra| self.is_sigreturn(ra)) {
            // runtime.goexit, runtime.mstart: nothing called them (the
            // slot may lie past the stack); runtime.sigtramp returns to
            // the kernel's signal frame and goes on.
            return Some(GoStep::Outermost);
        }
        let ra = ra?;
        let mut r = Registers::new(regs.arch);
        r.set(regs.arch.sp(), slot.checked_add(8)?);
        // A frame with locals saved the caller's frame pointer below the
        // return address (known at a call site, not inside a prologue).
        let fp = match (delta >= 8 && !exact, regs.arch) {
            (true, Arch::X86_64) => self.memory.read_u64(slot - 8),
            _ => regs.fp(),
        };
        if let Some(fp) = fp {
            r.set(regs.arch.fp(), fp);
        }
        r.set_pc(ra);
        Some(GoStep::Caller(r))
    }

    /// A caller must have a larger stack pointer (the stack grows down),
    /// except across a signal frame.
    fn plausible(&self, cur: &Registers, next: &Registers, signal: bool) -> bool {
        match (cur.sp(), next.sp()) {
            (Some(a), Some(b)) => signal || b > a,
            _ => false,
        }
    }

    fn fp_step(&self, regs: &Registers) -> Option<Registers> {
        let fp = regs.fp()?;
        let sp = regs.sp()?;
        if fp % 8 != 0 || fp < sp || fp - sp > (64 << 20) {
            return None;
        }
        let saved_fp = self.memory.read_u64(fp)?;
        let ra = self.memory.read_u64(fp.checked_add(8)?)?;
        let mut r = Registers::new(regs.arch);
        r.set(regs.arch.sp(), fp + 16);
        r.set(regs.arch.fp(), saved_fp);
        r.set_pc(ra);
        Some(r)
    }

    /// Looks upward from sp for a word that is a return address: it points
    /// into executable code of a known module, right after a call.
    fn scan(&mut self, regs: &Registers, words: usize) -> Option<Registers> {
        let sp = regs.sp()?;
        for i in 0..words as u64 {
            let slot = sp.checked_add(i * 8)?;
            let Some(w) = self.memory.read_u64(slot) else { break };
            if w < 0x1000 {
                continue;
            }
            let Some(l) = self.module_at(w) else { continue };
            let svma = w.wrapping_sub(l.bias);
            if !l.module.is_exec(svma) || !after_call(&l.module, svma, regs.arch) {
                continue;
            }
            let mut r = Registers::new(regs.arch);
            r.set(regs.arch.sp(), slot + 8);
            if let Some(fp) = regs.fp() {
                r.set(regs.arch.fp(), fp);
            }
            r.set_pc(w);
            return Some(r);
        }
        None
    }

    fn frame(&mut self, pc: u64, sp: u64, source: FrameSource, exact: bool) -> Frame {
        let lookup = if exact { pc } else { pc.wrapping_sub(1) };
        let l = self.module_at(lookup);
        Frame {
            pc,
            sp,
            source,
            exact,
            module: l.as_ref().map(|l| l.path.clone()),
            build_id: l.as_ref().and_then(|l| l.module.build_id_hex()),
            module_offset: l.as_ref().map(|l| pc.wrapping_sub(l.bias)),
            symbols: Vec::new(),
        }
    }

    /// Fills every frame's symbols (inlined functions, file:line, symbol
    /// tables), reusing parsed modules.
    pub fn symbolize(&mut self, bt: &mut Backtrace) {
        for f in &mut bt.frames {
            let lookup = if f.exact { f.pc } else { f.pc.wrapping_sub(1) };
            if let Some(l) = self.module_at(lookup) {
                f.symbols = l.module.symbolize(
                    lookup.wrapping_sub(l.bias),
                    self.opener,
                    self.unwinder.options.separate_debug_lines,
                );
            }
        }
    }
}

#[allow(clippy::large_enum_variant)] // one per step, never stored
enum GoStep {
    Caller(Registers),
    Outermost,
}

/// Whether the instruction just before `svma` is a call.
fn after_call(m: &Module, svma: u64, arch: Arch) -> bool {
    match arch {
        Arch::X86_64 => {
            let Some(b) = svma.checked_sub(7).and_then(|a| m.bytes_at(a, 7)) else { return false };
            // e8 rel32
            if b[2] == 0xe8 {
                return true;
            }
            // ff /2 with modrm forms of 2, 3, 6 and 7 bytes (with optional REX handled loosely).
            let is_ff2 = |op: u8, modrm: u8| op == 0xff && (modrm >> 3) & 7 == 2;
            is_ff2(b[5], b[6]) && b[6] >> 6 == 3
                || is_ff2(b[4], b[5]) && b[5] >> 6 == 1
                || is_ff2(b[5], b[6]) && b[6] >> 6 == 0
                || is_ff2(b[1], b[2]) && (b[2] >> 6 == 2 || b[2] & 0xc7 == 0x05)
                || is_ff2(b[0], b[1]) && b[1] >> 6 == 2
                || is_ff2(b[3], b[4]) && b[4] >> 6 == 1
        }
        Arch::Aarch64 => {
            let Some(b) = svma.checked_sub(4).and_then(|a| m.bytes_at(a, 4)) else { return false };
            let insn = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            insn & 0xfc00_0000 == 0x9400_0000 || insn & 0xffff_fc1f == 0xd63f_0000
        }
    }
}
