//! One parsed ELF module (executable, shared library, vDSO, debug file),
//! and the cache of them.
//!
//! A module keeps its bytes (a read-only memory map, or bytes taken from a
//! core) and only the offsets of what it needs; sections are viewed in place
//! (zero copy) and the expensive parts (symbol table, DWARF line and
//! inline tables) are built on first use.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol};

use crate::elf_names::Elf64;
use crate::opener::FileOpener;
use crate::regs::Arch;

/// Most bytes read from a file that is not a system file.
pub const MAX_READ: u64 = 256 << 20;

/// Where a module's bytes live.
#[derive(Debug)]
pub enum Backing {
    Map(memmap2::Mmap),
    Vec(Vec<u8>),
}

impl std::ops::Deref for Backing {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Backing::Map(m) => m,
            Backing::Vec(v) => v,
        }
    }
}

/// A shared, cheaply cloned view of part of a module's bytes: the storage
/// of the gimli reader used by the DWARF context.
#[derive(Debug, Clone)]
pub struct SharedBytes {
    owner: Arc<Backing>,
    range: Range<usize>,
}

impl std::ops::Deref for SharedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.owner.get(self.range.clone()).unwrap_or(&[])
    }
}

impl SharedBytes {
    /// Bytes owned by the view itself.
    pub fn from_vec(v: Vec<u8>) -> SharedBytes {
        let len = v.len();
        SharedBytes { owner: Arc::new(Backing::Vec(v)), range: 0..len }
    }
}

// SAFETY: the bytes live in an `Arc` that is never mutated, so the
// dereferenced address is stable across moves and clones.
unsafe impl stable_deref_trait::StableDeref for SharedBytes {}
// SAFETY: as above; clones share the same allocation.
unsafe impl stable_deref_trait::CloneStableDeref for SharedBytes {}

/// The gimli reader over module bytes.
pub type Reader = gimli::EndianReader<gimli::RunTimeEndian, SharedBytes>;

/// A PT_LOAD segment of the module.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub vaddr: u64,
    pub memsz: u64,
    pub offset: u64,
    pub filesz: u64,
    pub exec: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Sect {
    pub range: Range<usize>,
    pub addr: u64,
}

/// A symbol of `.symtab` or `.dynsym`.
#[derive(Debug, Clone)]
struct Sym {
    addr: u64,
    size: u64,
    name: Box<str>,
}

/// A parsed module.
pub struct Module {
    pub(crate) data: Arc<Backing>,
    pub(crate) endian: gimli::RunTimeEndian,
    pub arch: Option<Arch>,
    pub build_id: Option<Box<[u8]>>,
    pub loads: Vec<Load>,
    pub(crate) eh_frame: Option<Sect>,
    pub(crate) eh_frame_hdr: Option<Sect>,
    pub(crate) debug_frame: Option<Sect>,
    /// Go's function table (`.gopclntab`), when present.
    gopclntab: Option<Sect>,
    go: OnceLock<Option<crate::gopclntab::GoPcln>>,
    pub(crate) text_addr: u64,
    pub(crate) got_addr: u64,
    debuglink: Option<(String, u32)>,
    has_debug_info: bool,
    /// Where the module file was found (for the debug-link search).
    origin: Option<PathBuf>,
    symbols: OnceLock<Vec<Sym>>,
    dwarf: OnceLock<Option<Mutex<Dwarf>>>,
    /// The separate debug file, parsed (cheap: no DWARF decoded yet).
    debug_file: OnceLock<Option<Box<Module>>>,
}

/// The DWARF source of symbols: this module's own, or a separate file.
struct Dwarf {
    ctx: addr2line::Context<Reader>,
}

/// Why a file is not a usable module.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// The file cannot be mapped or read.
    #[error("cannot map {what}: {source}")]
    Map { what: String, source: std::io::Error },
    /// A file its owner could change is over [`MAX_READ`] bytes.
    #[error("{what} is not a valid ELF file: {size} bytes, more than {MAX_READ} for a user-owned file")]
    TooLarge { what: String, size: u64 },
    /// The bytes are not ELF `object` can read.
    #[error("{what} is not a valid ELF file: {source}")]
    Parse { what: String, source: object::Error },
}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Module")
            .field("len", &self.data.len())
            .field("build_id", &self.build_id_hex())
            .field("loads", &self.loads.len())
            .finish_non_exhaustive()
    }
}

fn sect_of(data: &[u8], s: &object::Section<'_, '_>) -> Option<Sect> {
    let (off, len) = s.file_range()?;
    let start = usize::try_from(off).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    (end <= data.len()).then(|| Sect { range: start..end, addr: s.address() })
}

impl Module {
    /// Parses a file: memory-mapped when only root can change it (system
    /// files), else read into memory (at most [`MAX_READ`] bytes), because
    /// a file its owner truncates while mapped would kill the reader with
    /// SIGBUS; a long-running probe must not be killable that way.
    pub fn from_file(file: &File, origin: Option<PathBuf>) -> Result<Module, ModuleError> {
        use std::os::unix::fs::MetadataExt;
        let what = origin.as_ref().map_or_else(|| "module".to_string(), |p| p.display().to_string());
        let md = file.metadata().map_err(|source| ModuleError::Map { what: what.clone(), source })?;
        let system = md.uid() == 0 && md.mode() & 0o022 == 0;
        let backing = if system {
            // SAFETY: a read-only private mapping of a regular file that only
            // root can modify.
            let map = unsafe { memmap2::Mmap::map(file) }
                .map_err(|source| ModuleError::Map { what: what.clone(), source })?;
            Backing::Map(map)
        } else {
            if md.len() > MAX_READ {
                return Err(ModuleError::TooLarge { what, size: md.len() });
            }
            // Positional reads: descriptors dup'ed from one open share
            // their offset, and another thread may read the same file.
            use std::os::unix::fs::FileExt;
            let mut v = vec![0u8; md.len() as usize];
            let mut done = 0;
            while done < v.len() {
                match file.read_at(&mut v[done..], done as u64) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(source) => return Err(ModuleError::Map { what, source }),
                }
            }
            v.truncate(done);
            Backing::Vec(v)
        };
        Module::parse(backing, origin).map_err(|source| ModuleError::Parse { what, source })
    }

    /// Parses bytes (e.g. the vDSO taken from a core).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Module, ModuleError> {
        Module::parse(Backing::Vec(bytes), None)
            .map_err(|source| ModuleError::Parse { what: "in-memory module".into(), source })
    }

    fn parse(backing: Backing, origin: Option<PathBuf>) -> Result<Module, object::Error> {
        let data = Arc::new(backing);
        let obj = object::File::parse(&**data)?;
        let endian = if obj.is_little_endian() { gimli::RunTimeEndian::Little } else { gimli::RunTimeEndian::Big };
        let arch = match obj.architecture() {
            object::Architecture::X86_64 => Some(Arch::X86_64),
            object::Architecture::Aarch64 => Some(Arch::Aarch64),
            _ => None,
        };
        let mut loads = Vec::new();
        for seg in obj.segments() {
            let (offset, filesz) = seg.file_range();
            let exec = match seg.flags() {
                object::SegmentFlags::Elf { p_flags } => p_flags & object::elf::PF_X != 0,
                _ => false,
            };
            loads.push(Load { vaddr: seg.address(), memsz: seg.size(), offset, filesz, exec });
        }
        // Section names without `object`'s string tables (see `elf_names`).
        let elf = Elf64::parse(&data);
        let by_name = |name: &str| section_named(&obj, elf.as_ref(), name);
        let find = |name: &str| by_name(name).and_then(|s| sect_of(&data, &s));
        let eh_frame = find(".eh_frame");
        let eh_frame_hdr = find(".eh_frame_hdr");
        let debug_frame = by_name(".debug_frame")
            .filter(|s| {
                !matches!(
                    s.compressed_file_range().map(|c| c.format),
                    Ok(object::CompressionFormat::Zlib | object::CompressionFormat::Zstandard)
                )
            })
            .and_then(|s| sect_of(&data, &s));
        let text_addr = by_name(".text").map_or(0, |s| s.address());
        let gopclntab = find(".gopclntab").or_else(|| find(".data.rel.ro.gopclntab"));
        let got_addr = by_name(".got").map_or(0, |s| s.address());
        let build_id = obj.build_id().ok().flatten().map(Into::into);
        let debuglink = match &elf {
            Some(e) => e.gnu_debuglink(),
            None => obj.gnu_debuglink().ok().flatten(),
        }
        .and_then(|(n, crc)| std::str::from_utf8(n).ok().map(|n| (n.to_string(), crc)));
        let has_debug_info = by_name(".debug_info").is_some_and(|s| s.size() > 0);
        drop(obj);
        Ok(Module {
            data,
            endian,
            arch,
            build_id,
            loads,
            eh_frame,
            eh_frame_hdr,
            debug_frame,
            gopclntab,
            go: OnceLock::new(),
            text_addr,
            got_addr,
            debuglink,
            has_debug_info,
            origin,
            symbols: OnceLock::new(),
            dwarf: OnceLock::new(),
            debug_file: OnceLock::new(),
        })
    }

    /// The GNU build-id as lowercase hex.
    pub fn build_id_hex(&self) -> Option<String> {
        self.build_id.as_ref().map(|b| b.iter().map(|x| format!("{x:02x}")).collect())
    }

    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    pub(crate) fn section(&self, s: &Sect) -> &[u8] {
        self.data.get(s.range.clone()).unwrap_or(&[])
    }

    /// The load bias of a mapping of this module: runtime address minus
    /// ELF virtual address. Found from the PT_LOAD that holds the mapping's
    /// file offset.
    pub fn bias_for(&self, map_start: u64, map_offset: u64) -> Option<u64> {
        const PAGE: u64 = 0xfff;
        // A segment is mapped from its page-aligned offset at its
        // page-aligned address (segments need not start on a page).
        if let Some(l) = self.loads.iter().find(|l| l.offset & !PAGE == map_offset) {
            return Some(map_start.wrapping_sub(l.vaddr & !PAGE));
        }
        let l = self
            .loads
            .iter()
            .find(|l| l.offset & !PAGE <= map_offset && map_offset < l.offset.saturating_add(l.filesz.max(1)))?;
        let vaddr_at = (l.vaddr & !PAGE).wrapping_add(map_offset.wrapping_sub(l.offset & !PAGE));
        Some(map_start.wrapping_sub(vaddr_at))
    }

    /// Go's function table, parsed on first use (None for other modules).
    pub fn go_pcln(&self) -> Option<&crate::gopclntab::GoPcln> {
        self.go
            .get_or_init(|| {
                let s = self.gopclntab.as_ref()?;
                let bytes = SharedBytes { owner: self.data.clone(), range: s.range.clone() };
                crate::gopclntab::GoPcln::parse_shared(bytes, self.text_addr)
            })
            .as_ref()
    }

    /// The name of the function at `svma` (raw: mangled as in the symbol
    /// table), from the symbol tables or Go's function table.
    pub fn function_name(&self, svma: u64) -> Option<String> {
        if let Some((n, _)) = self.symbol_for(svma) {
            return Some(n.to_string());
        }
        self.go_pcln()?.func_for(svma).map(|f| f.name).filter(|n| !n.is_empty())
    }

    /// Whether the ELF address `svma` lies in an executable segment.
    pub fn is_exec(&self, svma: u64) -> bool {
        self.loads.iter().any(|l| l.exec && l.vaddr <= svma && svma < l.vaddr.saturating_add(l.memsz))
    }

    /// The file bytes at ELF address `svma` (for instruction checks).
    pub fn bytes_at(&self, svma: u64, len: usize) -> Option<&[u8]> {
        let l = self.loads.iter().find(|l| l.vaddr <= svma && svma < l.vaddr.saturating_add(l.filesz))?;
        let off = usize::try_from(l.offset.checked_add(svma - l.vaddr)?).ok()?;
        self.data.get(off..off.checked_add(len)?)
    }

    fn symbols(&self) -> &[Sym] {
        self.symbols.get_or_init(|| {
            let mut syms: Vec<Sym> = Vec::new();
            if let Some(e) = Elf64::parse(&self.data) {
                syms = e
                    .text_symbols()
                    .into_iter()
                    .map(|s| Sym { addr: s.addr, size: s.size, name: s.name.into() })
                    .collect();
            } else if let Ok(obj) = object::File::parse(&**self.data) {
                let mut take = |it: object::SymbolIterator<'_, '_>| {
                    for s in it {
                        if s.kind() != object::SymbolKind::Text || s.address() == 0 || s.is_undefined() {
                            continue;
                        }
                        if let Ok(n) = s.name() {
                            if !n.is_empty() {
                                syms.push(Sym { addr: s.address(), size: s.size(), name: n.into() });
                            }
                        }
                    }
                };
                take(obj.symbols());
                take(obj.dynamic_symbols());
            }
            // Prefer sized, global names at the same address.
            syms.sort_by(|a, b| a.addr.cmp(&b.addr).then(b.size.cmp(&a.size)));
            syms.dedup_by_key(|s| s.addr);
            syms
        })
    }

    /// The symbol-table name (raw, mangled) covering `svma`, and the offset
    /// into it.
    pub fn symbol_for(&self, svma: u64) -> Option<(&str, u64)> {
        let syms = self.symbols();
        let i = syms.partition_point(|s| s.addr <= svma).checked_sub(1)?;
        let s = &syms[i];
        let off = svma - s.addr;
        // A sized symbol must cover the address; an unsized one is accepted
        // up to the next symbol (the partition point guarantees that).
        if s.size != 0 && off >= s.size {
            return None;
        }
        Some((&s.name, off))
    }

    fn section_bytes(&self, obj: &object::File<'_>, elf: Option<&Elf64<'_>>, name: &str) -> SharedBytes {
        let empty = SharedBytes { owner: self.data.clone(), range: 0..0 };
        let Some(s) = section_named(obj, elf, name) else { return empty };
        let Ok(c) = s.compressed_data() else { return empty };
        if !plausible_size(&c) {
            tracing::debug!(
                section = name,
                size = c.uncompressed_size,
                "compressed section claims an implausible size; ignored"
            );
            return empty;
        }
        match c.decompress() {
            Ok(std::borrow::Cow::Borrowed(b)) => {
                let start = (b.as_ptr() as usize).wrapping_sub(self.data.as_ptr() as usize);
                if start.checked_add(b.len()).is_some_and(|e| e <= self.data.len()) {
                    SharedBytes { owner: self.data.clone(), range: start..start + b.len() }
                } else {
                    empty
                }
            }
            Ok(std::borrow::Cow::Owned(v)) => SharedBytes::from_vec(v),
            Err(_) => empty,
        }
    }

    fn dwarf_of(&self) -> Option<addr2line::Context<Reader>> {
        if !self.has_debug_info {
            return None;
        }
        let obj = object::File::parse(&**self.data).ok()?;
        let elf = Elf64::parse(&self.data);
        // Location lists and macros are not needed to symbolize; not
        // decompressing them saves much time on large debug files. The
        // largest section (.debug_info) is decompressed on a second thread
        // while this one does the others.
        let (info, mut rest) = std::thread::scope(|sc| {
            let (obj, elf) = (&obj, elf.as_ref());
            let h = sc.spawn(move || self.section_bytes(obj, elf, ".debug_info"));
            let mut rest: HashMap<&'static str, SharedBytes> = HashMap::new();
            for name in [
                ".debug_abbrev",
                ".debug_addr",
                ".debug_aranges",
                ".debug_line",
                ".debug_line_str",
                ".debug_str",
                ".debug_str_offsets",
                ".debug_ranges",
                ".debug_rnglists",
                ".debug_types",
            ] {
                rest.insert(name, self.section_bytes(obj, elf, name));
            }
            let info = h.join().unwrap_or_else(|_| SharedBytes { owner: self.data.clone(), range: 0..0 });
            (info, rest)
        });
        rest.insert(".debug_info", info);
        let load = |id: gimli::SectionId| -> Result<Reader, gimli::Error> {
            let bytes = rest.remove(id.name()).unwrap_or_else(|| SharedBytes { owner: self.data.clone(), range: 0..0 });
            Ok(gimli::EndianReader::new(bytes, self.endian))
        };
        let dwarf = gimli::Dwarf::load(load).ok()?;
        addr2line::Context::from_dwarf(dwarf).ok()
    }

    /// Finds separate debug info: `/usr/lib/debug/.build-id/xx/rest.debug`,
    /// then `.gnu_debuglink` beside the module, in its `.debug/`, and under
    /// `/usr/lib/debug/DIR/`. A candidate is used only if its build-id
    /// matches (or, with no build-id, its CRC32 matches the link's).
    fn separate_debug(&self, opener: &dyn FileOpener) -> Option<Module> {
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Some(hex) = self.build_id_hex().filter(|h| h.len() > 2) {
            candidates.push(PathBuf::from(format!("/usr/lib/debug/.build-id/{}/{}.debug", &hex[..2], &hex[2..])));
        }
        if let (Some((name, _)), Some(dir)) = (&self.debuglink, self.origin.as_deref().and_then(Path::parent)) {
            if !name.contains('/') {
                candidates.push(dir.join(name));
                candidates.push(dir.join(".debug").join(name));
                let rel = dir.strip_prefix("/").unwrap_or(dir);
                candidates.push(Path::new("/usr/lib/debug").join(rel).join(name));
            }
        }
        for c in candidates {
            let Some(f) = opener.open_path(&c) else { continue };
            let Ok(m) = Module::from_file(&f, Some(c.clone())) else { continue };
            let ok = match (&self.build_id, &m.build_id) {
                (Some(a), Some(b)) => a == b,
                (None, _) => self.debuglink.as_ref().is_some_and(|(_, crc)| crc32(m.bytes()) == *crc),
                (Some(_), None) => false,
            };
            if ok && m.has_debug_info {
                tracing::debug!(path = %c.display(), "using separate debug info");
                return Some(m);
            }
        }
        None
    }

    fn debug_file(&self, opener: &dyn FileOpener) -> Option<&Module> {
        self.debug_file
            .get_or_init(|| if self.has_debug_info { None } else { self.separate_debug(opener).map(Box::new) })
            .as_deref()
    }

    fn dwarf(&self, opener: &dyn FileOpener) -> Option<&Mutex<Dwarf>> {
        self.dwarf
            .get_or_init(|| {
                let ctx = match self.dwarf_of() {
                    Some(ctx) => ctx,
                    None => self.debug_file(opener)?.dwarf_of()?,
                };
                Some(Mutex::new(Dwarf { ctx }))
            })
            .as_ref()
    }

    /// Loads what symbolization needs (symbol tables; with `lines`, DWARF
    /// or separate debug info) now, e.g. on another thread while the core
    /// is read.
    pub fn warm(&self, opener: &dyn FileOpener, lines: bool) {
        let _ = self.symbols();
        if let Some(d) = self.debug_file(opener) {
            let _ = d.symbols();
        }
        if lines {
            let _ = self.dwarf(opener);
        }
    }

    /// Symbolizes the ELF address `svma`: inlined frames first (innermost),
    /// then the function itself, with file:line from DWARF (this file's,
    /// or with `separate_lines` a separate debug file's); names fall back
    /// to the symbol tables (this file's, then the debug file's).
    pub fn symbolize(&self, svma: u64, opener: &dyn FileOpener, separate_lines: bool) -> Vec<crate::Symbol> {
        let mut out = Vec::new();
        let guard =
            if self.has_debug_info || separate_lines { self.dwarf(opener).and_then(|m| m.lock().ok()) } else { None };
        if let Some(d) = guard.as_deref() {
            if let Ok(mut frames) = d.ctx.find_frames(svma).skip_all_loads() {
                use fallible_iterator_shim::Next;
                while let Some(f) = frames.next_frame() {
                    let name = f.function.as_ref().and_then(|n| n.raw_name().ok()).map(|n| crate::demangle(&n));
                    let (file, line) = f.location.map_or((None, None), |l| (l.file.map(str::to_string), l.line));
                    out.push(crate::Symbol { function: name, file, line, inlined: true });
                    if out.len() >= 64 {
                        break;
                    }
                }
            }
        }
        drop(guard);
        if let Some(last) = out.last_mut() {
            last.inlined = false;
        }
        let table = |m: &Module| m.symbol_for(svma).map(|(n, _)| crate::demangle(n));
        let go = || self.go_pcln()?.func_for(svma).map(|f| f.name).filter(|n| !n.is_empty());
        let from_table = || table(self).or_else(|| self.debug_file(opener).and_then(table)).or_else(go);
        match out.last_mut() {
            Some(outer) if outer.function.is_none() => outer.function = from_table(),
            Some(_) => {}
            None => {
                if let Some(name) = from_table() {
                    out.push(crate::Symbol { function: Some(name), file: None, line: None, inlined: false });
                }
            }
        }
        out
    }
}

/// addr2line's frame iterator, driven without the fallible-iterator trait.
mod fallible_iterator_shim {
    pub trait Next<'a> {
        fn next_frame(&mut self) -> Option<addr2line::Frame<'a, super::Reader>>;
    }
    impl<'a> Next<'a> for addr2line::FrameIter<'a, super::Reader> {
        fn next_frame(&mut self) -> Option<addr2line::Frame<'a, super::Reader>> {
            self.next().ok().flatten()
        }
    }
}

/// Largest section decompressed (libc's whole `.debug_info` is ~10 MiB).
pub const MAX_DECOMPRESSED: u64 = 256 << 20;

/// The section named `name`: through the raw section-name table when
/// the file is ELF64 (see `elf_names`), else through `object`.
fn section_named<'d, 'f>(
    obj: &'f object::File<'d>,
    elf: Option<&Elf64<'d>>,
    name: &str,
) -> Option<object::Section<'d, 'f>> {
    match elf {
        Some(e) => e.section_index(name).and_then(|i| obj.section_by_index(i).ok()),
        None => obj.section_by_name(name),
    }
}

/// Whether a compressed section's claimed size is worth allocating: at
/// most [`MAX_DECOMPRESSED`], and for zlib at most what deflate can expand
/// to (1032:1), so a hostile header cannot make us reserve terabytes.
fn plausible_size(c: &object::CompressedData<'_>) -> bool {
    match c.format {
        object::CompressionFormat::None => true,
        object::CompressionFormat::Zlib => {
            c.uncompressed_size <= MAX_DECOMPRESSED
                && c.uncompressed_size <= (c.data.len() as u64).saturating_mul(1032) + 64
        }
        _ => c.uncompressed_size <= MAX_DECOMPRESSED,
    }
}

/// CRC-32 (IEEE) as used by `.gnu_debuglink`.
pub fn crc32(data: &[u8]) -> u32 {
    static TABLE: OnceLock<[u32; 256]> = OnceLock::new();
    let t = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            }
            *e = c;
        }
        t
    });
    let mut c = !0u32;
    for &b in data {
        c = t[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// Identity of an opened module file: (device, inode, size, mtime).
pub type FileKey = (u64, u64, u64, i64);

/// Parsed modules shared across unwinds (and, in a long-running probe,
/// across processes): keyed by the identity of the opened file, never by
/// path, so a replaced file is parsed anew.
#[derive(Default)]
pub struct ModuleCache {
    by_file: Mutex<HashMap<FileKey, Option<Arc<Module>>>>,
    /// Per unwind target: path -> module, filled by `module_for`.
    max_entries: usize,
}

impl ModuleCache {
    pub fn new() -> ModuleCache {
        ModuleCache { by_file: Mutex::new(HashMap::new()), max_entries: 512 }
    }

    /// The module in `file` (parsed once per file identity).
    pub fn get_or_parse(&self, file: &File, origin: &str) -> Option<Arc<Module>> {
        let md = file.metadata().ok()?;
        let key = (md.dev(), md.ino(), md.size(), md.mtime());
        if let Some(m) = self.by_file.lock().ok()?.get(&key) {
            return m.clone();
        }
        let m = match Module::from_file(file, Some(PathBuf::from(origin))) {
            Ok(m) => Some(Arc::new(m)),
            Err(e) => {
                tracing::debug!(error = %e, "module not usable");
                None
            }
        };
        let mut g = self.by_file.lock().ok()?;
        if g.len() >= self.max_entries.max(1) {
            g.clear();
        }
        // Another thread may have parsed the same file meanwhile: keep the
        // first result so every caller shares one module.
        g.entry(key).or_insert(m).clone()
    }

    pub fn len(&self) -> usize {
        self.by_file.lock().map(|g| g.len()).unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
