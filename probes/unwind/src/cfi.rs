//! One unwinding step with DWARF call frame information.

use gimli::{
    BaseAddresses, CfaRule, DebugFrame, EhFrame, EhFrameHdr, EndianSlice, Evaluation, EvaluationResult, Location,
    Register, RegisterRule, RunTimeEndian, UnwindContext, UnwindSection, UnwindTableRow, Value,
};

use crate::memory::Memory;
use crate::module::Module;
use crate::regs::Registers;

type Slice<'a> = EndianSlice<'a, RunTimeEndian>;

/// What one CFI step produced.
#[allow(clippy::large_enum_variant)] // one per step, never stored
pub(crate) enum Step {
    /// The caller's registers; `signal` when the frame just unwound was a
    /// signal trampoline (the caller's pc is then exact, not a return
    /// address).
    Caller { regs: Registers, signal: bool },
    /// The CFI says this is the outermost frame (return address undefined).
    Outermost,
}

/// Why CFI could not unwind a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CfiError {
    NoInfo,
    Bad(String),
    Memory(u64),
    Register(u16),
}

impl std::fmt::Display for CfiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CfiError::NoInfo => f.write_str("no call frame information for the address"),
            CfiError::Bad(e) => write!(f, "malformed call frame information: {e}"),
            CfiError::Memory(a) => write!(f, "memory at {a:#x} was not captured"),
            CfiError::Register(r) => write!(f, "register {r} is unknown in this frame"),
        }
    }
}

/// Size of a fixed-size DWARF pointer encoding (low nibble), or None.
fn enc_size(enc: u8) -> Option<usize> {
    match enc & 0x0f {
        0x00 | 0x04 | 0x0c => Some(8),
        0x02 | 0x0a => Some(2),
        0x03 | 0x0b => Some(4),
        _ => None,
    }
}

/// Whether the `.eh_frame_hdr` search table holds the `fde_count` rows its
/// header claims (gimli's binary search multiplies that count unchecked, so
/// a lying header must not reach it). Unusual encodings count as not sane:
/// the caller then scans `.eh_frame` instead.
pub(crate) fn hdr_table_fits(b: &[u8], big_endian: bool) -> bool {
    let (Some(&1), Some(&ptr_enc), Some(&count_enc), Some(&table_enc)) = (b.first(), b.get(1), b.get(2), b.get(3))
    else {
        return false;
    };
    let (Some(ptr), Some(cnt), Some(row)) = (enc_size(ptr_enc), enc_size(count_enc), enc_size(table_enc)) else {
        return false;
    };
    let Some(raw) = b.get(4 + ptr..4 + ptr + cnt) else { return false };
    let mut v = [0u8; 8];
    if big_endian {
        v[8 - cnt..].copy_from_slice(raw);
    } else {
        v[..cnt].copy_from_slice(raw);
    }
    let count = if big_endian { u64::from_be_bytes(v) } else { u64::from_le_bytes(v) };
    let table_len = (b.len() - 4 - ptr - cnt) as u64;
    count.checked_mul(2 * row as u64).is_some_and(|need| need <= table_len)
}

fn bad(e: gimli::Error) -> CfiError {
    match e {
        gimli::Error::NoUnwindInfoForAddress => CfiError::NoInfo,
        e => CfiError::Bad(e.to_string()),
    }
}

/// Unwinds the frame whose CFI lookup address is `svma` (an ELF virtual
/// address of `module`, loaded with `bias`).
pub(crate) fn step<M: Memory + ?Sized>(
    module: &Module,
    bias: u64,
    svma: u64,
    regs: &Registers,
    mem: &M,
    ctx: &mut UnwindContext<usize>,
) -> Result<Step, CfiError> {
    let endian = module.endian;
    let mut bases = BaseAddresses::default().set_text(module.text_addr).set_got(module.got_addr);
    if let Some(eh) = &module.eh_frame {
        let frame = EhFrame::new(module.section(eh), endian);
        bases = bases.set_eh_frame(eh.addr);
        let found = match &module.eh_frame_hdr {
            Some(hdr) => {
                bases = bases.set_eh_frame_hdr(hdr.addr);
                let bytes = module.section(hdr);
                let parsed = EhFrameHdr::new(bytes, endian).parse(&bases, 8);
                let sane = hdr_table_fits(bytes, gimli::Endianity::is_big_endian(endian));
                match parsed.as_ref().ok().filter(|_| sane).and_then(|p| p.table().map(|t| (p, t))) {
                    // Binary search of the table; the pointer-to-offset step
                    // is done here with checked arithmetic (gimli's
                    // subtracts unchecked, which a lying header overflows).
                    Some((p, table)) => (|| {
                        let ptr = table.lookup(svma, &bases)?.direct()?;
                        let base = p.eh_frame_ptr().direct()?;
                        let off = ptr.checked_sub(base).ok_or(gimli::Error::NoUnwindInfoForAddress)?;
                        let off = usize::try_from(off).map_err(|_| gimli::Error::NoUnwindInfoForAddress)?;
                        let fde = frame.fde_from_offset(&bases, gimli::EhFrameOffset(off), EhFrame::cie_from_offset)?;
                        if fde.contains(svma) {
                            Ok(fde)
                        } else {
                            Err(gimli::Error::NoUnwindInfoForAddress)
                        }
                    })(),
                    None => frame.fde_for_address(&bases, svma, EhFrame::cie_from_offset),
                }
            }
            None => frame.fde_for_address(&bases, svma, EhFrame::cie_from_offset),
        };
        match found {
            Ok(fde) => {
                let row = fde.unwind_info_for_address(&frame, &bases, ctx, svma).map_err(bad)?;
                return apply(row, &frame, fde.is_signal_trampoline(), bias, regs, mem);
            }
            Err(gimli::Error::NoUnwindInfoForAddress) => {}
            Err(e) if module.debug_frame.is_none() => return Err(bad(e)),
            Err(_) => {}
        }
    }
    if let Some(df) = &module.debug_frame {
        let mut frame = DebugFrame::new(module.section(df), endian);
        frame.set_address_size(8);
        let fde = frame.fde_for_address(&bases, svma, DebugFrame::cie_from_offset).map_err(bad)?;
        let row = fde.unwind_info_for_address(&frame, &bases, ctx, svma).map_err(bad)?;
        return apply(row, &frame, fde.is_signal_trampoline(), bias, regs, mem);
    }
    Err(CfiError::NoInfo)
}

fn apply<'a, S: UnwindSection<Slice<'a>>, M: Memory + ?Sized>(
    row: &UnwindTableRow<usize>,
    section: &S,
    signal: bool,
    bias: u64,
    regs: &Registers,
    mem: &M,
) -> Result<Step, CfiError> {
    let arch = regs.arch;
    let cfa = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => {
            let base = regs.get(register.0).ok_or(CfiError::Register(register.0))?;
            base.wrapping_add(*offset as u64)
        }
        CfaRule::Expression(e) => {
            let expr = e.get(section).map_err(bad)?;
            eval(expr, None, bias, regs, mem)?.address()
        }
    };
    // Registers without a rule keep their value (callee-saved convention).
    let mut next = regs.clone();
    next.set(arch.sp(), cfa);
    let ra = arch.ra();
    let mut ra_set = false;
    for (reg, rule) in row.registers() {
        let Register(n) = *reg;
        let v = match rule {
            RegisterRule::Undefined => {
                if n == ra {
                    return Ok(Step::Outermost);
                }
                None
            }
            RegisterRule::SameValue => regs.get(n),
            RegisterRule::Offset(o) => {
                let a = cfa.wrapping_add(*o as u64);
                Some(mem.read_u64(a).ok_or(CfiError::Memory(a))?)
            }
            RegisterRule::ValOffset(o) => Some(cfa.wrapping_add(*o as u64)),
            RegisterRule::Register(r) => regs.get(r.0),
            RegisterRule::Expression(e) => {
                let expr = e.get(section).map_err(bad)?;
                let a = eval(expr, Some(cfa), bias, regs, mem)?.address();
                Some(mem.read_u64(a).ok_or(CfiError::Memory(a))?)
            }
            RegisterRule::ValExpression(e) => {
                let expr = e.get(section).map_err(bad)?;
                Some(eval(expr, Some(cfa), bias, regs, mem)?.value())
            }
            RegisterRule::Constant(c) => Some(*c),
            _ => None,
        };
        if n == ra {
            ra_set = true;
        }
        match v {
            Some(v) if n != arch.sp() => next.set(n, v),
            Some(_) => {}
            None => next.clear(n),
        }
    }
    // gimli keeps no entry for an undefined rule. On x86_64 every CIE gives
    // the return address a rule, so none means undefined: the outermost
    // frame (`_start`, `clone3`). On aarch64 no rule means the return
    // address is still in the link register.
    if !ra_set && arch == crate::regs::Arch::X86_64 {
        return Ok(Step::Outermost);
    }
    let ret = if ra_set { next.get(ra) } else { regs.get(ra) };
    match ret {
        Some(pc) => next.set_pc(pc),
        None => return Err(CfiError::Register(ra)),
    }
    Ok(Step::Caller { regs: next, signal })
}

enum Out {
    Addr(u64),
    Val(u64),
}
impl Out {
    fn address(self) -> u64 {
        match self {
            Out::Addr(a) | Out::Val(a) => a,
        }
    }
    fn value(self) -> u64 {
        self.address()
    }
}

fn eval<M: Memory + ?Sized>(
    expr: gimli::Expression<Slice<'_>>,
    initial: Option<u64>,
    bias: u64,
    regs: &Registers,
    mem: &M,
) -> Result<Out, CfiError> {
    let enc = gimli::Encoding { address_size: 8, format: gimli::Format::Dwarf32, version: 4 };
    let mut ev: Evaluation<Slice<'_>> = expr.evaluation(enc);
    ev.set_max_iterations(1000);
    if let Some(v) = initial {
        ev.set_initial_value(v);
    }
    let mut r = ev.evaluate().map_err(bad)?;
    loop {
        r = match r {
            EvaluationResult::Complete => break,
            EvaluationResult::RequiresMemory { address, size, .. } => {
                let mut b = [0u8; 8];
                let n = (size as usize).min(8);
                if !mem.read(address, &mut b[..n]) {
                    return Err(CfiError::Memory(address));
                }
                ev.resume_with_memory(Value::Generic(u64::from_le_bytes(b))).map_err(bad)?
            }
            EvaluationResult::RequiresRegister { register, .. } => {
                let v = regs.get(register.0).ok_or(CfiError::Register(register.0))?;
                ev.resume_with_register(Value::Generic(v)).map_err(bad)?
            }
            EvaluationResult::RequiresRelocatedAddress(a) => {
                ev.resume_with_relocated_address(a.wrapping_add(bias)).map_err(bad)?
            }
            _ => return Err(CfiError::Bad("unsupported operation in a CFI expression".into())),
        };
    }
    let pieces = ev.result();
    match pieces.first().map(|p| &p.location) {
        Some(Location::Address { address }) => Ok(Out::Addr(*address)),
        Some(Location::Value { value }) => value.to_u64(!0).map(Out::Val).map_err(bad),
        _ => Err(CfiError::Bad("CFI expression has no address result".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::hdr_table_fits;
    use object::{Object, ObjectSection};

    #[test]
    fn eh_frame_hdr_count_must_fit_its_table() {
        let exe = std::fs::read("/proc/self/exe").unwrap();
        let obj = object::File::parse(&*exe).unwrap();
        let hdr = obj.section_by_name(".eh_frame_hdr").unwrap().data().unwrap().to_vec();
        assert!(hdr_table_fits(&hdr, false), "this test binary's own table fits");
        // A header claiming more rows than the table holds (here: what made
        // gimli's search overflow) is refused; so is a truncated header.
        let mut lying = hdr.clone();
        let at = 4 + super::enc_size(hdr[1]).unwrap();
        lying[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(!hdr_table_fits(&lying, false));
        assert!(!hdr_table_fits(&hdr[..hdr.len() - 1], false));
        assert!(!hdr_table_fits(&hdr[..6], false));
        assert!(!hdr_table_fits(&[], false));
    }
}
