//! What must be read from `/proc/PID` at once, while the crashing process
//! still exists (its mappings, its files, its start time), and the
//! unwinding of the kernel's stack snapshot with the shared `unwind` crate
//! afterwards, off the ring-buffer reader.

use std::sync::Arc;

use event_types::UserRegs;
use unwind::{Backtrace, End, Frame, FrameSource, Mappings, ProcOpener, Regions, Registers, Unwinder};

use crate::event::{FatalSignal, OomStack};

/// The process as read from /proc right after its event arrived (or, when
/// it is gone, as the kernel named its executable mappings at the signal).
pub struct Capture {
    pub maps: Mappings,
    /// Opens the process's files; its mappings were pre-opened.
    pub opener: Option<Box<dyn unwind::FileOpener>>,
    /// When the mappings are the kernel's (the process was gone): how many
    /// executable mappings it named, and how many of their files were
    /// opened.
    pub kernel_modules: Option<(usize, usize)>,
    /// /proc/PID/stat field 22 (clock ticks since boot).
    pub start_ticks: Option<u64>,
    pub exe: Option<String>,
    /// Why the mappings could not be read (the process was already gone).
    pub missing: Option<String>,
}

/// Reads what can be read of `/proc/PID` now (nothing with `no_proc`).
pub fn capture(f: &FatalSignal, no_proc: bool) -> Capture {
    let pid = f.task.pid;
    if no_proc {
        return Capture {
            kernel_modules: None,
            maps: Mappings::new(Vec::new()),
            opener: None,
            start_ticks: None,
            exe: None,
            missing: Some("not read (--no-proc-maps)".into()),
        };
    }
    let dir = format!("/proc/{pid}");
    let proc_dir = unwind::open_dir(None, dir.as_ref());
    let exe = std::fs::read_link(format!("{dir}/exe")).ok().map(|p| p.display().to_string());
    let start_ticks = std::fs::read(format!("{dir}/stat"))
        .ok()
        .and_then(|b| telemetry::crash_id::parse_stat(&b).ok())
        .map(|s| s.start_time);
    let (maps, missing) = match std::fs::read(format!("{dir}/maps")) {
        Ok(b) if b.is_empty() => (
            Mappings::new(Vec::new()),
            Some("the process had released its memory before /proc/PID/maps was read".into()),
        ),
        Ok(b) => match unwind::parse_proc_maps(&b) {
            Ok(m) => (m, None),
            Err(e) => (Mappings::new(Vec::new()), Some(format!("/proc/{pid}/maps is unreadable: {e}"))),
        },
        Err(e) => (Mappings::new(Vec::new()), Some(format!("/proc/{pid}/maps: {e} (the process exited first)"))),
    };
    let opener = proc_dir.ok().map(ProcOpener::new);
    let mut missing = missing;
    if let Some(o) = &opener {
        // The code's files first (through map_files: the very files).
        let code = Mappings::new(maps.iter().filter(|m| m.is_file() && m.exec == Some(true)).cloned().collect());
        let opened = o.preopen(&code);
        o.preopen(&maps);
        // The maps were read, but the process exited before its code's
        // files were opened (nothing holds a dying process without a core
        // handler): the kernel's names (they follow) are used instead.
        let mut paths: Vec<&str> = code.iter().filter_map(|m| m.path.as_deref()).collect();
        paths.sort_unstable();
        paths.dedup();
        // A process releasing its memory while its maps are read shows
        // only part of them: the mapping under ip must be there.
        let ip = f.regs.map_or(0, |r| r.ip);
        if missing.is_none() && ip != 0 && !maps.is_empty() && maps.find(ip).is_none() {
            missing = Some(format!("/proc/{pid}/maps lacked the code under ip (the process was releasing its memory)"));
        }
        if missing.is_none() && opened < paths.len() {
            missing = Some(format!(
                "the process exited while its code's files were opened through /proc/{pid}/map_files ({opened} of {})",
                paths.len()
            ));
        }
    }
    Capture {
        maps,
        opener: opener.map(|o| Box::new(o) as Box<dyn unwind::FileOpener>),
        kernel_modules: None,
        start_ticks,
        exe,
        missing,
    }
}

impl Capture {
    /// An OOM victim is exiting: nothing is read from /proc; the mappings
    /// the kernel named at its exit are used (`held` as in
    /// [`Capture::use_kernel_modules`]).
    pub fn of_oom_victim(s: &OomStack, held: &dyn Fn((u64, u64)) -> Option<std::fs::File>) -> Capture {
        let mut cap = Capture {
            maps: Mappings::new(Vec::new()),
            opener: None,
            kernel_modules: None,
            start_ticks: None,
            exe: None,
            missing: Some("not read: the OOM victim was exiting".into()),
        };
        cap.use_kernel_modules(&s.modules, held);
        cap
    }

    /// When /proc/PID was gone (or not read): takes the mappings the
    /// kernel named at the thread's exit instead, opening their files
    /// (`held` gives files already open by (device, inode)).
    pub fn use_kernel_modules(
        &mut self,
        m: &crate::event::ModulesInfo,
        held: &dyn Fn((u64, u64)) -> Option<std::fs::File>,
    ) {
        if self.missing.is_none() || m.modules.is_empty() {
            return;
        }
        let r = crate::modules::resolve(&m.modules, held);
        self.kernel_modules = Some((m.modules.len(), r.opened));
        self.maps = r.maps;
        self.opener = Some(Box::new(r.opener));
    }
}

/// The unwound and symbolized stacks of one fatal signal.
pub struct Stacks {
    /// From registers and the stack copy: CFI first, frame pointers second.
    pub unwound: Option<Backtrace>,
    /// The kernel's frame-pointer walk (`bpf_get_stack`), symbolized.
    pub frame_pointer: Backtrace,
}

fn user_regs(r: Option<UserRegs>) -> Option<Registers> {
    let r = r?;
    let words: [u64; 27] = {
        let mut w = [0u64; 27];
        let src = [
            r.r15, r.r14, r.r13, r.r12, r.bp, r.bx, r.r11, r.r10, r.r9, r.r8, r.ax, r.cx, r.dx, r.si, r.di, r.orig_ax,
            r.ip, r.cs, r.flags, r.sp, r.ss,
        ];
        w[..21].copy_from_slice(&src);
        w
    };
    Some(Registers::from_x86_64_user_regs(&words))
}

/// Unwinds and symbolizes (CPU work: run it off the reader).
pub fn unwind(unwinder: &Arc<Unwinder>, f: &FatalSignal, cap: &Capture) -> Stacks {
    let mut regions: Vec<(u64, &[u8])> = vec![(f.stack_base, &f.stack)];
    if let Some((base, bytes)) = &f.outer_stack {
        regions.push((*base, bytes));
    }
    unwind_snapshot(unwinder, f.regs, &regions, &f.fp_frames, cap)
}

/// Unwinds and symbolizes an OOM victim's stack.
pub fn unwind_oom(unwinder: &Arc<Unwinder>, s: &OomStack, cap: &Capture) -> Backtrace {
    let st = unwind_snapshot(unwinder, s.regs, &[(s.stack_base, &s.stack)], &[], cap);
    st.unwound.unwrap_or(Backtrace { frames: Vec::new(), end: End::Error("no user registers".into()) })
}

/// Unwinds from `regs` over the copied memory `regions` (base, bytes)
/// and symbolizes the kernel's frame-pointer walk `fp_frames`.
pub fn unwind_snapshot(
    unwinder: &Arc<Unwinder>,
    regs: Option<UserRegs>,
    regions: &[(u64, &[u8])],
    fp_frames: &[u64],
    cap: &Capture,
) -> Stacks {
    let opener: &dyn unwind::FileOpener = match &cap.opener {
        Some(o) => o.as_ref(),
        None => &unwind::HostOpener,
    };
    let mut memory: Regions<&[u8]> = Regions::new();
    let end = |b: u64, v: &[u8]| b.saturating_add(v.len() as u64);
    for (i, (base, bytes)) in regions.iter().enumerate() {
        // A copy inside another (the interrupted stack's pages inside the
        // signal stack's copy) would hide the rest of the larger one from
        // the lookup by base; the larger one holds the same bytes.
        let inside = regions.iter().enumerate().any(|(j, (b, v))| {
            j != i && *b <= *base && end(*base, bytes) <= end(*b, v) && (v.len() > bytes.len() || j < i)
        });
        if !bytes.is_empty() && !inside {
            memory.insert(*base, bytes);
        }
    }
    let mut session = unwinder.session(&memory, &cap.maps, opener);
    let unwound = user_regs(regs).map(|regs| {
        let mut bt = session.unwind(&regs);
        session.symbolize(&mut bt);
        bt
    });
    let mut fp = Backtrace {
        frames: fp_frames
            .iter()
            .enumerate()
            .map(|(i, &pc)| {
                // Exact: frame 0, and a Go faulting pc (a frame under
                // runtime.sigpanic).
                let exact = i == 0
                    || i.checked_sub(1).and_then(|j| fp_frames.get(j)).is_some_and(|&callee| {
                        let lookup = if j_is_zero(i) { callee } else { callee.wrapping_sub(1) };
                        session.is_go_sigpanic(lookup)
                    });
                let loaded = session.module_at(if exact { pc } else { pc.wrapping_sub(1) });
                Frame {
                    pc,
                    sp: 0,
                    source: if i == 0 { FrameSource::Context } else { FrameSource::FramePointer },
                    exact,
                    module: loaded.as_ref().map(|l| l.path.clone()),
                    build_id: loaded.as_ref().and_then(|l| l.module.build_id_hex()),
                    module_offset: loaded.as_ref().map(|l| pc.wrapping_sub(l.bias)),
                    symbols: Vec::new(),
                }
            })
            .collect(),
        end: End::Outermost,
    };
    session.symbolize(&mut fp);
    Stacks { unwound, frame_pointer: fp }
}

/// Whether the frame before frame `i` is frame 0 (whose pc is exact).
fn j_is_zero(i: usize) -> bool {
    i == 1
}

/// One frame as a text line: `#3 0x... function (file:line) [module+0xoff] cfi`.
pub fn frame_line(i: usize, f: &Frame) -> String {
    let mut s = format!("#{i:<2} {:#018x}", f.pc);
    let names: Vec<String> = f
        .symbols
        .iter()
        .map(|sym| {
            let mut n = sym.function.clone().unwrap_or_else(|| "??".into());
            if let (Some(file), Some(line)) = (&sym.file, sym.line) {
                n.push_str(&format!(" ({file}:{line})"));
            }
            if sym.inlined {
                n.push_str(" [inlined]");
            }
            n
        })
        .collect();
    if names.is_empty() {
        s.push_str(" ??");
    } else {
        s.push(' ');
        s.push_str(&names.join(" <- "));
    }
    match (&f.module, f.module_offset) {
        (Some(m), Some(off)) => s.push_str(&format!(" [{m}+{off:#x}]")),
        (Some(m), None) => s.push_str(&format!(" [{m}]")),
        _ => {}
    }
    s.push(' ');
    s.push_str(f.source.as_str());
    s
}
