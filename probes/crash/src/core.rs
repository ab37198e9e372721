//! The ELF core, read once as a stream: headers and notes are kept, the
//! stack bytes around each thread's stack pointer (and the vDSO image) are
//! copied, everything else is discarded as it passes. Memory use is bounded
//! by [`KeepPolicy`] whatever the core's size; nothing is written to disk.
//!
//! Every size, count and offset in the core is checked before use: a
//! truncated or lying core is an error (or a partial result), never a
//! panic or an unbounded allocation.

use std::io::Read;

use thiserror::Error;
use unwind::{Arch, Mapping, Mappings, Regions, Registers};

use crate::stream::{Stream, StreamError};

pub const NT_PRSTATUS: u32 = 1;
pub const NT_PRPSINFO: u32 = 3;
pub const NT_AUXV: u32 = 6;
pub const NT_SIGINFO: u32 = 0x5349_4749;
pub const NT_FILE: u32 = 0x4649_4c45;
pub const AT_SYSINFO_EHDR: u64 = 33;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const EM_X86_64: u16 = 62;
const EM_AARCH64: u16 = 183;

/// How much of the core is kept.
#[derive(Debug, Clone)]
pub struct KeepPolicy {
    /// Bytes kept from a thread's sp upward (the crashing thread).
    pub crashing_stack: u64,
    /// Bytes kept per other thread (lowered when threads are many).
    pub other_stack: u64,
    /// All kept stack bytes together.
    pub total_stack: u64,
    /// Most bytes of notes accepted.
    pub max_notes: u64,
    /// Keep stacks at all (false for a non-dumpable process).
    pub memory: bool,
}

impl Default for KeepPolicy {
    fn default() -> Self {
        KeepPolicy {
            crashing_stack: 1 << 20,
            other_stack: 256 << 10,
            total_stack: 16 << 20,
            max_notes: 16 << 20,
            memory: true,
        }
    }
}

/// Why the core cannot be used at all.
#[derive(Debug, Error)]
pub enum CoreError {
    #[error("not an ELF core: {0}")]
    NotCore(&'static str),
    #[error("core is for machine {0}, which this handler does not unwind")]
    Machine(u16),
    #[error("core has {0} program headers; more than 65534 (PN_XNUM) is not supported")]
    TooManySegments(u64),
    #[error(transparent)]
    Stream(#[from] StreamError),
}

/// One thread of the core.
#[derive(Debug, Clone)]
pub struct Thread {
    pub tid: u32,
    /// The signal that stopped it (`pr_cursig`).
    pub cursig: u16,
    pub regs: Registers,
}

/// `NT_SIGINFO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SigInfo {
    pub signo: i32,
    pub errno: i32,
    pub code: i32,
    /// Faulting address for SIGSEGV, SIGBUS, SIGILL, SIGFPE.
    pub addr: Option<u64>,
}

/// `NT_PRPSINFO`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PsInfo {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Raw bytes (may be anything but NUL).
    pub fname: Vec<u8>,
    pub psargs: Vec<u8>,
}

/// Everything the notes say.
#[derive(Debug, Clone, Default)]
pub struct Notes {
    pub threads: Vec<Thread>,
    pub siginfo: Option<SigInfo>,
    pub psinfo: Option<PsInfo>,
    pub auxv: Vec<(u64, u64)>,
    pub files: Vec<Mapping>,
    /// Notes that were malformed and skipped.
    pub errors: Vec<String>,
}

/// A program header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phdr {
    pub p_type: u32,
    pub offset: u64,
    pub vaddr: u64,
    pub filesz: u64,
    pub memsz: u64,
}

/// The core as far as the handler needs it.
#[derive(Debug)]
pub struct Core {
    pub arch: Arch,
    pub notes: Notes,
    pub memory: Regions<Vec<u8>>,
    /// The vDSO image (address, bytes), when it was in the core.
    pub vdso: Option<(u64, Vec<u8>)>,
    pub mappings: Mappings,
    /// Bytes of the stream consumed (including drained bytes).
    pub bytes_read: u64,
    /// Why the core was not read to its end, if it was not.
    pub incomplete: Option<String>,
}

impl Core {
    /// The auxv value for `key`.
    pub fn auxv(&self, key: u64) -> Option<u64> {
        self.notes.auxv.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}
fn cstr(b: &[u8]) -> Vec<u8> {
    b.iter().take_while(|&&c| c != 0).copied().collect()
}

/// The ELF header's fields the reader uses: (arch, phoff, phnum).
pub fn parse_ehdr(h: &[u8; 64]) -> Result<(Arch, u64, u64), CoreError> {
    if &h[..4] != b"\x7fELF" {
        return Err(CoreError::NotCore("no ELF magic"));
    }
    if h[4] != 2 || h[5] != 1 {
        return Err(CoreError::NotCore("not a 64-bit little-endian ELF"));
    }
    let e_type = u16_at(h, 16).unwrap_or(0);
    if e_type != 4 {
        return Err(CoreError::NotCore("ELF type is not ET_CORE"));
    }
    let machine = u16_at(h, 18).unwrap_or(0);
    let arch = match machine {
        EM_X86_64 => Arch::X86_64,
        EM_AARCH64 => Arch::Aarch64,
        m => return Err(CoreError::Machine(m)),
    };
    let phoff = u64_at(h, 32).unwrap_or(0);
    let phentsize = u16_at(h, 54).unwrap_or(0);
    let phnum = u16_at(h, 56).unwrap_or(0) as u64;
    if phentsize != 56 {
        return Err(CoreError::NotCore("program header size is not 56"));
    }
    if phnum == 0xffff {
        return Err(CoreError::TooManySegments(phnum));
    }
    if phoff < 64 {
        return Err(CoreError::NotCore("program headers overlap the ELF header"));
    }
    Ok((arch, phoff, phnum))
}

pub fn parse_phdrs(b: &[u8]) -> Vec<Phdr> {
    b.chunks_exact(56)
        .map(|p| Phdr {
            p_type: u32_at(p, 0).unwrap_or(0),
            offset: u64_at(p, 8).unwrap_or(0),
            vaddr: u64_at(p, 16).unwrap_or(0),
            filesz: u64_at(p, 32).unwrap_or(0),
            memsz: u64_at(p, 40).unwrap_or(0),
        })
        .collect()
}

/// Parses a PT_NOTE segment's bytes. Malformed notes are skipped and
/// listed in `errors`; a malformed header ends the parse.
pub fn parse_notes(arch: Arch, b: &[u8], out: &mut Notes) {
    let mut off = 0usize;
    let align4 = |x: usize| x.checked_add(3).map(|v| v & !3);
    while off + 12 <= b.len() {
        let (Some(namesz), Some(descsz), Some(ntype)) = (u32_at(b, off), u32_at(b, off + 4), u32_at(b, off + 8)) else {
            break;
        };
        let name_start = off + 12;
        let Some(desc_start) = align4(namesz as usize).and_then(|n| name_start.checked_add(n)) else { break };
        let Some(desc_end) = desc_start.checked_add(descsz as usize) else { break };
        if desc_end > b.len() {
            out.errors.push(format!("note at {off} claims {descsz} bytes past the segment's end"));
            break;
        }
        let name = cstr(b.get(name_start..name_start + namesz as usize).unwrap_or(&[]));
        let desc = &b[desc_start..desc_end];
        if name == b"CORE" {
            if let Err(e) = parse_note(arch, ntype, desc, out) {
                out.errors.push(format!("note type {ntype:#x}: {e}"));
            }
        }
        let Some(next) = align4(desc_end) else { break };
        off = next;
    }
}

fn parse_note(arch: Arch, ntype: u32, d: &[u8], out: &mut Notes) -> Result<(), &'static str> {
    match ntype {
        NT_PRSTATUS => {
            let tid = u32_at(d, 32).ok_or("prstatus too short")?;
            let cursig = u16_at(d, 12).ok_or("prstatus too short")?;
            let regs = match arch {
                Arch::X86_64 => {
                    let mut w = [0u64; 27];
                    for (i, x) in w.iter_mut().enumerate() {
                        *x = u64_at(d, 112 + 8 * i).ok_or("prstatus registers truncated")?;
                    }
                    Registers::from_x86_64_user_regs(&w)
                }
                Arch::Aarch64 => {
                    let mut w = [0u64; 34];
                    for (i, x) in w.iter_mut().enumerate() {
                        *x = u64_at(d, 112 + 8 * i).ok_or("prstatus registers truncated")?;
                    }
                    Registers::from_aarch64_user_regs(&w)
                }
            };
            if out.threads.len() >= 1 << 16 {
                return Err("more than 65536 threads");
            }
            out.threads.push(Thread { tid, cursig, regs });
        }
        NT_SIGINFO => {
            let signo = u32_at(d, 0).ok_or("siginfo too short")? as i32;
            let errno = u32_at(d, 4).ok_or("siginfo too short")? as i32;
            let code = u32_at(d, 8).ok_or("siginfo too short")? as i32;
            let addr = if matches!(signo, 4 | 7 | 8 | 11) && code > 0 { u64_at(d, 16) } else { None };
            out.siginfo = Some(SigInfo { signo, errno, code, addr });
        }
        NT_PRPSINFO => {
            if d.len() < 136 {
                return Err("prpsinfo too short");
            }
            out.psinfo = Some(PsInfo {
                uid: u32_at(d, 16).unwrap_or(0),
                gid: u32_at(d, 20).unwrap_or(0),
                pid: u32_at(d, 24).unwrap_or(0),
                fname: cstr(&d[40..56]),
                psargs: cstr(&d[56..136]),
            });
        }
        NT_AUXV => {
            out.auxv = d
                .chunks_exact(16)
                .map(|c| (u64_at(c, 0).unwrap_or(0), u64_at(c, 8).unwrap_or(0)))
                .take_while(|(k, _)| *k != 0)
                .take(1024)
                .collect();
        }
        NT_FILE => {
            let count = u64_at(d, 0).ok_or("NT_FILE too short")?;
            let page = u64_at(d, 8).ok_or("NT_FILE too short")?;
            let table_len = count.checked_mul(24).and_then(|n| n.checked_add(16)).ok_or("NT_FILE count overflows")?;
            if table_len > d.len() as u64 {
                return Err("NT_FILE count exceeds the note");
            }
            if page == 0 || !page.is_power_of_two() {
                return Err("NT_FILE page size is not a power of two");
            }
            let mut names = d[table_len as usize..].split(|&c| c == 0);
            for i in 0..count as usize {
                let e = 16 + 24 * i;
                let (Some(start), Some(end), Some(pgoff)) = (u64_at(d, e), u64_at(d, e + 8), u64_at(d, e + 16)) else {
                    return Err("NT_FILE entry truncated");
                };
                let name = names.next().ok_or("NT_FILE has fewer names than entries")?;
                out.files.push(Mapping {
                    start,
                    end,
                    offset: pgoff.saturating_mul(page),
                    path: Some(String::from_utf8_lossy(name).into_owned()),
                    exec: None,
                    inode: None,
                });
            }
        }
        _ => {}
    }
    Ok(())
}

/// A byte range of the address space to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Want {
    start: u64,
    end: u64,
}

/// Which address ranges to keep: the stack above each thread's sp (the
/// crashing thread first and largest), and the vDSO.
fn plan(notes: &Notes, crashing: usize, policy: &KeepPolicy, vdso: Option<u64>, loads: &[Phdr]) -> Vec<Want> {
    let mut wants = Vec::new();
    if policy.memory {
        let n = notes.threads.len().max(1) as u64;
        let mut budget = policy.total_stack;
        let first = policy.crashing_stack.min(budget);
        let per_other = policy.other_stack.min(budget.saturating_sub(first) / n.saturating_sub(1).max(1));
        for (i, t) in notes.threads.iter().enumerate() {
            let Some(sp) = t.regs.sp() else { continue };
            let len = if i == crashing { first } else { per_other };
            if len == 0 || budget == 0 {
                continue;
            }
            let len = len.min(budget);
            budget -= len;
            // 128 bytes below sp: the x86_64 red zone of a leaf function.
            wants.push(Want { start: sp.saturating_sub(128), end: sp.saturating_add(len) });
        }
        if let Some(v) = vdso {
            if let Some(p) = loads.iter().find(|p| p.vaddr == v && p.filesz <= 64 << 10) {
                wants.push(Want { start: v, end: v.saturating_add(p.filesz) });
            }
        }
    }
    // Sorted and merged, so one forward pass over the core reads them all.
    wants.sort_by_key(|w| w.start);
    let mut merged: Vec<Want> = Vec::with_capacity(wants.len());
    for w in wants {
        match merged.last_mut() {
            Some(l) if w.start <= l.end => l.end = l.end.max(w.end),
            _ => merged.push(w),
        }
    }
    merged
}

/// Reads a core from `stream` under `policy`. `crashing_tid` picks the
/// thread whose stack is kept largest (default: the first NT_PRSTATUS,
/// which the kernel writes for the dumping thread). Errors in the middle
/// of the memory leave a partial core with `incomplete` set.
pub fn read_core<R: Read>(stream: &mut Stream<R>, policy: &KeepPolicy, drain: bool) -> Result<Core, CoreError> {
    read_core_with(stream, policy, drain, &mut |_| {})
}

/// As [`read_core`], calling `on_notes` once the notes are complete (before
/// the memory segments stream by), so work that needs only the notes, such
/// as loading the modules' symbols, can overlap with reading the rest.
pub fn read_core_with<R: Read>(
    stream: &mut Stream<R>,
    policy: &KeepPolicy,
    drain: bool,
    on_notes: &mut dyn FnMut(&Notes),
) -> Result<Core, CoreError> {
    let mut h = [0u8; 64];
    stream.read_exact(&mut h)?;
    let (arch, phoff, phnum) = parse_ehdr(&h)?;
    stream.skip_to(phoff)?;
    let ph = stream.read_vec((phnum * 56) as usize)?;
    let mut phdrs = parse_phdrs(&ph);
    phdrs.retain(|p| p.filesz > 0 && (p.p_type == PT_LOAD || p.p_type == PT_NOTE));
    phdrs.sort_by_key(|p| p.offset);
    let mut notes = Notes::default();
    let mut memory = Regions::new();
    let mut vdso_bytes = None;
    let mut incomplete = None;
    let loads: Vec<Phdr> = phdrs.iter().copied().filter(|p| p.p_type == PT_LOAD).collect();
    let mut wants: Option<Vec<Want>> = None;
    let mut notes_total = 0u64;
    // The kernel writes the notes before the memory; gdb (`gcore`,
    // `generate-core-file`) and other tools after it. A saved core given as
    // a file is read notes first; a stream cannot go back for them.
    let first_load = loads.first().map(|l| l.offset);
    let notes_late = phdrs.iter().any(|p| p.p_type == PT_NOTE && first_load.is_some_and(|l| p.offset > l));
    let mut notes_read_first = false;
    let mut early: Result<(), StreamError> = Ok(());
    if notes_late && stream.can_seek() {
        early = (|| {
            for p in phdrs.iter().filter(|p| p.p_type == PT_NOTE) {
                notes_total = notes_total.saturating_add(p.filesz);
                if notes_total > policy.max_notes {
                    notes.errors.push(format!("notes exceed {} bytes; the rest skipped", policy.max_notes));
                    continue;
                }
                stream.seek_to(p.offset)?;
                let b = stream.read_vec(p.filesz as usize)?;
                parse_notes(arch, &b, &mut notes);
            }
            stream.seek_to(first_load.unwrap_or(0).min(stream.pos()))
        })();
        notes_read_first = true;
    } else if notes_late {
        notes.errors.push(
            "the core's notes come after its memory (a core saved by gdb?) and a stream cannot go back: \
             give the core as a file (crashprobe --core-only < CORE)"
                .into(),
        );
    }
    if notes_read_first {
        phdrs.retain(|p| p.p_type != PT_NOTE);
    }
    let result: Result<(), StreamError> = early.and_then(|()| {
        (|| {
            for p in &phdrs {
                if p.offset < stream.pos() {
                    // Overlapping or out-of-order segment: skip what is behind us.
                    notes.errors.push(format!("segment at offset {:#x} overlaps an earlier one; skipped", p.offset));
                    continue;
                }
                if p.p_type == PT_NOTE {
                    notes_total = notes_total.saturating_add(p.filesz);
                    if notes_total > policy.max_notes {
                        notes.errors.push(format!("notes exceed {} bytes; the rest skipped", policy.max_notes));
                        continue;
                    }
                    stream.skip_to(p.offset)?;
                    let b = stream.read_vec(p.filesz as usize)?;
                    parse_notes(arch, &b, &mut notes);
                    continue;
                }
                // First load segment: the notes are complete; plan what to keep.
                if wants.is_none() {
                    on_notes(&notes);
                }
                let w = wants.get_or_insert_with(|| {
                    let vdso = notes.auxv.iter().find(|(k, _)| *k == AT_SYSINFO_EHDR).map(|(_, v)| *v);
                    plan(&notes, 0, policy, vdso, &loads)
                });
                let seg_end = p.vaddr.saturating_add(p.filesz);
                for want in w.iter() {
                    let s = want.start.max(p.vaddr);
                    let e = want.end.min(seg_end);
                    if s >= e {
                        continue;
                    }
                    let Some(file_off) = p.offset.checked_add(s - p.vaddr) else {
                        notes
                            .errors
                            .push(format!("segment at offset {:#x} lies past any file size; skipped", p.offset));
                        break;
                    };
                    stream.skip_to(file_off)?;
                    let bytes = stream.read_vec((e - s) as usize)?;
                    let vdso = notes.auxv.iter().find(|(k, _)| *k == AT_SYSINFO_EHDR).map(|(_, v)| *v);
                    if vdso == Some(s) && s == p.vaddr && vdso_bytes.is_none() {
                        vdso_bytes = Some((s, bytes));
                    } else {
                        memory.insert(s, bytes);
                    }
                }
            }
            Ok(())
        })()
    });
    if let Err(e) = result {
        incomplete = Some(e.to_string());
    }
    if drain && incomplete.is_none() {
        if let Err(e) = stream.drain() {
            incomplete = Some(e.to_string());
        }
    }
    let mappings = Mappings::new(notes.files.clone());
    Ok(Core { arch, notes, memory, vdso: vdso_bytes, mappings, bytes_read: stream.pos(), incomplete })
}
