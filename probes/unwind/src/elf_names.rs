//! Names in an ELF64 file (sections, symbols, `.gnu_debuglink`) read from
//! the raw string tables, for [`crate::Module`].
//!
//! `object`'s own name lookups end each name with the `memchr` crate,
//! whose first call runs the standard library's CPU feature detection: a
//! dozen `CPUID` instructions, each a trap to the hypervisor on a virtual
//! machine. A crash handler is a new process per crash, and on the VMs we
//! measured that detection was a quarter of the CPU of a repeated crash
//! (`cargo xtask bench crash --storm-only`, docs/BENCHMARKS.md). Names are
//! short; a plain scan for the NUL costs nothing next to it. Files that
//! are not ELF64 go through `object` as before (the callers fall back).

use object::elf::{FileHeader64, SHN_UNDEF, SHT_DYNSYM, SHT_SYMTAB, STT_FUNC, STT_GNU_IFUNC};
use object::read::elf::{FileHeader, SectionHeader, Sym};
use object::Endianness;

/// The NUL-terminated string at `off` in `table` (without the NUL).
fn c_str(table: &[u8], off: usize) -> Option<&[u8]> {
    let rest = table.get(off..)?;
    let end = rest.iter().position(|&b| b == 0)?;
    Some(&rest[..end])
}

/// An ELF64 file's headers, parsed once.
pub struct Elf64<'d> {
    data: &'d [u8],
    endian: Endianness,
    sections: &'d [object::elf::SectionHeader64<Endianness>],
    shstrtab: &'d [u8],
}

/// A text symbol: address, size, name.
pub struct TextSymbol<'d> {
    pub addr: u64,
    pub size: u64,
    pub name: &'d str,
}

impl<'d> Elf64<'d> {
    /// `None` when `data` is not an ELF64 file whose section headers and
    /// section-name table can be read (callers then use `object`).
    pub fn parse(data: &'d [u8]) -> Option<Elf64<'d>> {
        let hdr = FileHeader64::<Endianness>::parse(data).ok()?;
        let endian = hdr.endian().ok()?;
        let sections = hdr.section_headers(endian, data).ok()?;
        let shstrndx = hdr.shstrndx(endian, data).ok()? as usize;
        let shstrtab = sections.get(shstrndx)?.data(endian, data).ok()?;
        Some(Elf64 { data, endian, sections, shstrtab })
    }

    /// The index (as `object::SectionIndex` counts) of the first section
    /// named `name`.
    pub fn section_index(&self, name: &str) -> Option<object::SectionIndex> {
        self.sections
            .iter()
            .position(|s| c_str(self.shstrtab, s.sh_name(self.endian) as usize) == Some(name.as_bytes()))
            .map(object::SectionIndex)
    }

    /// The file bytes of section `i` (none for `SHT_NOBITS`).
    fn section_data(&self, i: usize) -> Option<&'d [u8]> {
        self.sections.get(i)?.data(self.endian, self.data).ok()
    }

    /// Every defined, non-zero function symbol (`STT_FUNC`, `STT_GNU_IFUNC`)
    /// of `.symtab` and `.dynsym` with a valid UTF-8 name: what
    /// `object`'s `symbols()` and `dynamic_symbols()` give with
    /// `SymbolKind::Text`.
    pub fn text_symbols(&self) -> Vec<TextSymbol<'d>> {
        let mut out = Vec::new();
        for kind in [SHT_SYMTAB, SHT_DYNSYM] {
            let Some((i, sh)) = self.sections.iter().enumerate().find(|(_, s)| s.sh_type(self.endian) == kind) else {
                continue;
            };
            let Some(bytes) = self.section_data(i) else { continue };
            let Some(strings) = self.section_data(sh.sh_link(self.endian) as usize) else { continue };
            let Ok((syms, _)) = object::pod::slice_from_bytes::<object::elf::Sym64<Endianness>>(
                bytes,
                bytes.len() / std::mem::size_of::<object::elf::Sym64<Endianness>>(),
            ) else {
                continue;
            };
            for s in syms {
                let t = s.st_type();
                if (t != STT_FUNC && t != STT_GNU_IFUNC) || s.st_shndx(self.endian) == SHN_UNDEF {
                    continue;
                }
                let addr = s.st_value(self.endian);
                if addr == 0 {
                    continue;
                }
                let Some(name) = c_str(strings, s.st_name(self.endian) as usize) else { continue };
                let Ok(name) = std::str::from_utf8(name) else { continue };
                if !name.is_empty() {
                    out.push(TextSymbol { addr, size: s.st_size(self.endian), name });
                }
            }
        }
        out
    }

    /// `.gnu_debuglink`: the debug file's name and its CRC-32.
    pub fn gnu_debuglink(&self) -> Option<(&'d [u8], u32)> {
        let data = self.section_data(self.section_index(".gnu_debuglink")?.0)?;
        let name = c_str(data, 0)?;
        let crc_at = (name.len() + 1).next_multiple_of(4);
        let crc: [u8; 4] = data.get(crc_at..crc_at + 4)?.try_into().ok()?;
        let crc = match self.endian {
            Endianness::Little => u32::from_le_bytes(crc),
            Endianness::Big => u32::from_be_bytes(crc),
        };
        Some((name, crc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::{Object, ObjectSection, ObjectSymbol};

    fn me() -> Vec<u8> {
        std::fs::read(std::env::current_exe().unwrap()).unwrap()
    }

    #[test]
    fn section_indices_match_objects() {
        let data = me();
        let obj = object::File::parse(&*data).unwrap();
        let elf = Elf64::parse(&data).unwrap();
        for s in obj.sections() {
            let name = s.name().unwrap();
            if name.is_empty() {
                continue;
            }
            assert_eq!(elf.section_index(name), obj.section_by_name(name).map(|s| s.index()), "{name}");
        }
        assert_eq!(elf.section_index(".no-such-section"), None);
    }

    #[test]
    fn text_symbols_match_objects() {
        let data = me();
        let obj = object::File::parse(&*data).unwrap();
        let mut want: Vec<(u64, u64, String)> = obj
            .symbols()
            .chain(obj.dynamic_symbols())
            .filter(|s| s.kind() == object::SymbolKind::Text && s.address() != 0 && !s.is_undefined())
            .filter_map(|s| s.name().ok().filter(|n| !n.is_empty()).map(|n| (s.address(), s.size(), n.to_string())))
            .collect();
        let mut got: Vec<(u64, u64, String)> =
            Elf64::parse(&data).unwrap().text_symbols().into_iter().map(|s| (s.addr, s.size, s.name.into())).collect();
        want.sort();
        got.sort();
        assert!(got.len() > 100, "{}", got.len());
        assert_eq!(got, want);
    }

    #[test]
    fn debuglink_matches_objects_and_bad_input_is_none() {
        // A test binary has no .gnu_debuglink; both say so.
        let data = me();
        let obj = object::File::parse(&*data).unwrap();
        let elf = Elf64::parse(&data).unwrap();
        assert_eq!(elf.gnu_debuglink(), obj.gnu_debuglink().unwrap());
        // The C library has one (Debian strips it with a link to its debug file).
        let libc = std::fs::read("/usr/lib/x86_64-linux-gnu/libc.so.6").or_else(|_| std::fs::read("/lib64/libc.so.6"));
        if let Ok(libc) = libc {
            let obj = object::File::parse(&*libc).unwrap();
            let link = Elf64::parse(&libc).unwrap().gnu_debuglink();
            assert_eq!(link, obj.gnu_debuglink().unwrap());
            let symbols = Elf64::parse(&libc).unwrap().text_symbols().len();
            assert!(symbols > 1000, "{symbols}");
        }
        // Hostile input: not ELF, or truncated anywhere: no panic, no name.
        assert!(Elf64::parse(b"not an elf").is_none());
        for cut in [16, 64, 100, 1000, data.len() / 2] {
            if let Some(e) = Elf64::parse(&data[..cut]) {
                let _ = e.text_symbols();
                let _ = e.section_index(".text");
                let _ = e.gnu_debuglink();
            }
        }
    }

    #[test]
    fn c_str_stops_at_the_nul_and_refuses_an_unterminated_tail() {
        assert_eq!(c_str(b"\0.text\0.data", 1), Some(&b".text"[..]));
        assert_eq!(c_str(b"\0.text\0.data", 7), None);
        assert_eq!(c_str(b"abc", 9), None);
    }
}
