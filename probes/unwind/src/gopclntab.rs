//! Go's `.gopclntab`: the function table every Go binary carries (also
//! stripped ones), used where CFI is missing. Go's linker writes no
//! `.eh_frame` and compresses `.debug_frame`; the pc-value table `pcsp`
//! of each function gives the stack-pointer delta at every pc, which is
//! all a frame-pointer-free unwind of Go code on amd64 needs (the return
//! address is at `sp + delta`). The unwinder uses it on x86_64 only: on
//! arm64 Go keeps the return address in the link register of a leaf and
//! at `0(sp)` of a frame, which this table alone does not tell apart.
//!
//! Formats read: Go 1.18 and 1.19 (magic `0xfffffff0`) and Go 1.20 and
//! later (`0xfffffff1`); older tables are ignored. Layout (all
//! little-endian here, pointer-sized where marked):
//!
//! ```text
//! pcHeader   magic u32, pad u8 u8, minLC u8, ptrSize u8, nfunc ptr, nfiles ptr,
//!            textStart ptr, funcnameOffset ptr, cuOffset ptr, filetabOffset ptr,
//!            pctabOffset ptr, pclnOffset ptr
//! functab    at pclnOffset: nfunc+1 x {entryoff u32, funcoff u32} (the last
//!            entryoff is the end of the text)
//! _func      at pclnOffset+funcoff: entryoff u32, nameoff i32, args i32,
//!            deferreturn u32, pcsp u32, pcfile u32, pcln u32, npcdata u32,
//!            cuOffset u32, [1.20+: startLine i32], funcID u8, flag u8, ...
//!            (flag at byte 37, or 41 from 1.20 on)
//! pc-value   at pctabOffset+off: pairs (zig-zag uvarint value delta,
//!            uvarint pc delta x minLC) from value -1 at the entry; a zero
//!            value delta after the first pair ends the table
//! ```
//!
//! Every read is bounds-checked: a hostile table gives `None`, never a
//! panic or an unbounded loop.

use crate::module::SharedBytes;

/// `funcFlag_TOPFRAME`: the outermost frame of a stack (`runtime.goexit`,
/// `runtime.mstart`, `runtime.sigtramp`).
pub const FLAG_TOPFRAME: u8 = 1;

/// Header values of a parsed table.
#[derive(Debug, Clone)]
pub struct GoPcln {
    data: SharedBytes,
    /// 1.20+ (`_func` has `startLine`).
    v120: bool,
    quantum: u64,
    nfunc: usize,
    text_start: u64,
    funcname: usize,
    pctab: usize,
    functab: usize,
}

/// A function of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoFunc {
    /// Entry address (link-time, as ELF virtual addresses).
    pub entry: u64,
    /// End (the next function's entry).
    pub end: u64,
    pub name: String,
    pub flag: u8,
    /// Offset of the `pcsp` table in `pctab`.
    pcsp: u32,
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn ptr_at(b: &[u8], off: usize, size: usize) -> Option<u64> {
    match size {
        8 => {
            let s = b.get(off..off.checked_add(8)?)?;
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            Some(u64::from_le_bytes(a))
        }
        4 => u32_at(b, off).map(u64::from),
        _ => None,
    }
}

/// Reads a uvarint of at most 5 bytes (32 bits) at `*pos`.
fn uvarint(b: &[u8], pos: &mut usize) -> Option<u32> {
    let mut v: u32 = 0;
    for shift in (0..35).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v |= u32::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

impl GoPcln {
    /// Parses the header of a `.gopclntab` section's bytes; `text_addr` is
    /// the `.text` address, used when the header's text start is 0 (a
    /// position-independent binary, whose header is relocated at run time).
    pub fn parse(data: &[u8], text_addr: u64) -> Option<GoPcln> {
        GoPcln::parse_shared(SharedBytes::from_vec(data.to_vec()), text_addr)
    }

    /// As [`GoPcln::parse`], over a module's bytes without copying them.
    pub fn parse_shared(bytes: SharedBytes, text_addr: u64) -> Option<GoPcln> {
        let data: &[u8] = &bytes;
        let magic = u32_at(data, 0)?;
        let v120 = match magic {
            0xffff_fff0 => false,
            0xffff_fff1 => true,
            _ => return None,
        };
        let (quantum, ptr) = (*data.get(6)?, *data.get(7)?);
        let ptr = usize::from(ptr);
        if !matches!(quantum, 1 | 2 | 4) || !matches!(ptr, 4 | 8) {
            return None;
        }
        let field = |i: usize| ptr_at(data, 8 + i * ptr, ptr);
        let nfunc = usize::try_from(field(0)?).ok()?;
        let text_start = match field(2)? {
            0 => text_addr,
            t => t,
        };
        let off = |i: usize| usize::try_from(field(i)?).ok().filter(|&o| o < data.len());
        let funcname = off(3)?;
        let pctab = off(6)?;
        let functab = off(7)?;
        // The function table must hold nfunc+1 entries.
        let need = nfunc.checked_add(1)?.checked_mul(8)?;
        if functab.checked_add(need)? > data.len() {
            return None;
        }
        Some(GoPcln {
            data: bytes.clone(),
            v120,
            quantum: u64::from(quantum),
            nfunc,
            text_start,
            funcname,
            pctab,
            functab,
        })
    }

    /// Number of functions.
    pub fn len(&self) -> usize {
        self.nfunc
    }

    pub fn is_empty(&self) -> bool {
        self.nfunc == 0
    }

    fn entry_off(&self, i: usize) -> Option<u32> {
        u32_at(&self.data, self.functab.checked_add(i.checked_mul(8)?)?)
    }

    /// The function holding the address `pc` (a link-time address).
    pub fn func_for(&self, pc: u64) -> Option<GoFunc> {
        let rel = u32::try_from(pc.checked_sub(self.text_start)?).ok()?;
        let last = self.entry_off(self.nfunc)?;
        if self.nfunc == 0 || rel >= last {
            return None;
        }
        // Largest i with entryoff(i) <= rel.
        let (mut lo, mut hi) = (0usize, self.nfunc);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.entry_off(mid)? <= rel {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let start = self.entry_off(lo)?;
        let end = self.entry_off(lo + 1)?;
        if rel < start || rel >= end {
            return None;
        }
        let funcoff = usize::try_from(u32_at(&self.data, self.functab + lo * 8 + 4)?).ok()?;
        let f = self.functab.checked_add(funcoff)?;
        // The _func names the same entry as the table.
        if u32_at(&self.data, f)? != start {
            return None;
        }
        let nameoff = usize::try_from(u32_at(&self.data, f + 4)?).ok()?;
        let pcsp = u32_at(&self.data, f + 16)?;
        let flag_at = if self.v120 { f + 41 } else { f + 37 };
        let flag = *self.data.get(flag_at)?;
        let name = self.name_at(self.funcname.checked_add(nameoff)?).unwrap_or_default();
        Some(GoFunc {
            entry: self.text_start + u64::from(start),
            end: self.text_start + u64::from(end),
            name,
            flag,
            pcsp,
        })
    }

    fn name_at(&self, off: usize) -> Option<String> {
        let s = self.data.get(off..)?;
        let end = s.iter().take(4096).position(|&b| b == 0)?;
        Some(String::from_utf8_lossy(&s[..end]).into_owned())
    }

    /// The value of the pc-value table at `table` (an offset in `pctab`)
    /// for `pc` in `f`.
    fn pcvalue(&self, f: &GoFunc, table: u32, pc: u64) -> Option<i64> {
        if table == 0 || pc < f.entry || pc >= f.end {
            return None;
        }
        let b = &self.data;
        let mut pos = self.pctab.checked_add(usize::try_from(table).ok()?)?;
        let mut val: i64 = -1;
        let mut at = f.entry;
        let mut first = true;
        // Each pair takes at least two bytes, so this ends.
        loop {
            let uv = *b.get(pos)?;
            if uv == 0 && !first {
                return None;
            }
            let uv = uvarint(b, &mut pos)?;
            let delta = if uv & 1 != 0 { -i64::from(uv >> 1) - 1 } else { i64::from(uv >> 1) };
            val = val.checked_add(delta)?;
            let pcd = uvarint(b, &mut pos)?;
            at = at.checked_add(u64::from(pcd).checked_mul(self.quantum)?)?;
            first = false;
            if pc < at {
                return Some(val);
            }
            if at >= f.end {
                return None;
            }
        }
    }

    /// The stack-pointer delta (frame size above sp, not counting the
    /// return address) at `pc` in `f`.
    pub fn sp_delta(&self, f: &GoFunc, pc: u64) -> Option<u64> {
        let v = self.pcvalue(f, f.pcsp, pc)?;
        u64::try_from(v).ok().filter(|&v| v < (1 << 30))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1.20-style table of two functions: `a` at text+0 (16 bytes, sp
    /// delta 0 for 4 bytes, then 24), `b` at text+16 (8 bytes, delta 0).
    pub(crate) fn sample(v120: bool) -> Vec<u8> {
        let mut d = Vec::new();
        d.extend_from_slice(&(if v120 { 0xffff_fff1u32 } else { 0xffff_fff0 }).to_le_bytes());
        d.extend_from_slice(&[0, 0, 1, 8]);
        let hdr_len = 8 + 8 * 8;
        // Offsets filled below.
        let names = b"main.a\0main.b\0";
        let funcname = hdr_len;
        let pctab = funcname + names.len();
        // pcsp of a: value +1 (from -1 to 0) for 4 bytes, +24 for 12 bytes.
        let pcsp_a = [2u8, 4, 48, 12, 0];
        // pcsp of b: value 0 for 8 bytes.
        let pcsp_b = [2u8, 8, 0];
        let functab = pctab + 1 + pcsp_a.len() + pcsp_b.len();
        for v in [2u64, 0, 0x1000, funcname as u64, 0, 0, pctab as u64, functab as u64] {
            d.extend_from_slice(&v.to_le_bytes());
        }
        d.extend_from_slice(names);
        d.push(0); // pctab offset 0 is "no table"
        d.extend_from_slice(&pcsp_a);
        d.extend_from_slice(&pcsp_b);
        let fsize = if v120 { 44 } else { 40 };
        let ftab_len = 3 * 8;
        for (entry, funcoff) in [(0u32, ftab_len), (16, ftab_len + fsize), (24, 0)] {
            d.extend_from_slice(&entry.to_le_bytes());
            d.extend_from_slice(&(funcoff as u32).to_le_bytes());
        }
        for (entry, nameoff, pcsp, flag) in [(0u32, 0u32, 1u32, 0u8), (16, 7, 1 + pcsp_a.len() as u32, FLAG_TOPFRAME)] {
            let mut f = Vec::new();
            for v in [entry, nameoff, 0, 0, pcsp, 0, 0, 0, 0] {
                f.extend_from_slice(&v.to_le_bytes());
            }
            if v120 {
                f.extend_from_slice(&0u32.to_le_bytes());
            }
            f.extend_from_slice(&[0, flag, 0, 0]);
            f.resize(fsize, 0);
            d.extend_from_slice(&f);
        }
        d
    }

    #[test]
    fn reads_functions_and_sp_deltas() {
        for v120 in [false, true] {
            let p = GoPcln::parse(&sample(v120), 0).expect("parse");
            assert_eq!(p.len(), 2);
            let a = p.func_for(0x1005).expect("a");
            assert_eq!((a.name.as_str(), a.entry, a.end, a.flag), ("main.a", 0x1000, 0x1010, 0));
            assert_eq!(p.sp_delta(&a, 0x1000), Some(0));
            assert_eq!(p.sp_delta(&a, 0x1003), Some(0));
            assert_eq!(p.sp_delta(&a, 0x1004), Some(24));
            assert_eq!(p.sp_delta(&a, 0x100f), Some(24));
            let b = p.func_for(0x1017).expect("b");
            assert_eq!((b.name.as_str(), b.flag), ("main.b", FLAG_TOPFRAME));
            assert_eq!(p.sp_delta(&b, 0x1010), Some(0));
            assert!(p.func_for(0x1018).is_none() && p.func_for(0xfff).is_none());
        }
    }

    #[test]
    fn refuses_other_magics_and_short_tables() {
        let mut d = sample(true);
        assert!(GoPcln::parse(&d[..40], 0).is_none());
        d[0] = 0xfa;
        assert!(GoPcln::parse(&d, 0).is_none());
        // nfunc larger than the table can hold.
        let mut d = sample(true);
        d[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(GoPcln::parse(&d, 0).is_none());
    }

    proptest::proptest! {
        #[test]
        fn hostile_tables_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400),
                                      at in 0usize..400, pcs in proptest::collection::vec(0u64..0x2000, 1..8)) {
            // Random bytes, and a valid table with some bytes replaced.
            let _ = GoPcln::parse(&bytes, 0x1000);
            let mut d = sample(true);
            for (i, b) in bytes.iter().enumerate().take(8) {
                let k = (at + i * 37) % d.len();
                d[k] = *b;
            }
            if let Some(p) = GoPcln::parse(&d, 0x1000) {
                for pc in pcs {
                    if let Some(f) = p.func_for(pc) {
                        let _ = p.sp_delta(&f, pc);
                    }
                }
            }
        }
    }
}
