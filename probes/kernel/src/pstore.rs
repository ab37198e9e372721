//! pstore: the kernel log the kernel saved at a crash, read after the
//! reboot.
//!
//! Files are named `TYPE-BACKEND-ID[.enc.z]` (`dmesg-efi-…`,
//! `dmesg-efi_pstore-…`, `dmesg-ramoops-0`, `dmesg-erst-…`,
//! `console-ramoops-0`, `pmsg-ramoops-0`); `.enc.z` marks a part the kernel
//! could not decompress (deflate, raw or with a zlib header). A dmesg part
//! starts with the kernel's header `REASON#COUNT PartN` (`Panic#1 Part1`),
//! older ramoops ones with `====SEC.NSEC-C|D` before it; its lines are
//! `<LEVEL>[TIME] text`. A dump larger than one backend record is split in
//! parts, Part1 holding the newest lines: the parts are joined from the
//! highest part number down. EFI ids encode `(time * 100 + part) * 1000 +
//! count`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// One file of the pstore directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    /// Its path.
    pub path: PathBuf,
    /// `dmesg`, `console`, `pmsg`, ...
    pub kind: String,
    /// `efi`, `ramoops`, `erst`, ...
    pub backend: String,
    /// The id in its name.
    pub id: u64,
    /// Whether the name ends in `.enc.z`.
    pub compressed: bool,
}

/// Parses a pstore file name.
pub fn parse_name(name: &str) -> Option<(String, String, u64, bool)> {
    let (base, compressed) = match name.strip_suffix(".enc.z") {
        Some(b) => (b, true),
        None => (name, false),
    };
    let (kind, rest) = base.split_once('-')?;
    let (backend, id) = rest.rsplit_once('-')?;
    if kind.is_empty() || backend.is_empty() {
        return None;
    }
    Some((kind.to_string(), backend.to_string(), id.parse().ok()?, compressed))
}

/// The files of `dir` that look like pstore records, sorted by name.
pub fn list(dir: &Path) -> std::io::Result<Vec<File>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if !e.file_type()?.is_file() {
            continue;
        }
        let name = e.file_name();
        let Some((kind, backend, id, compressed)) = name.to_str().and_then(parse_name) else { continue };
        out.push(File { path: e.path(), kind, backend, id, compressed });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Why a file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum PstoreError {
    /// Reading failed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A compressed part does not decompress.
    #[error("cannot decompress {path}: neither raw deflate nor zlib ({reason})")]
    Decompress {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        reason: String,
    },
}

/// Most bytes one decompressed part may have (a backend record is at most
/// a few hundred KiB; this bounds a corrupt or hostile file).
const MAX_PART: u64 = 16 << 20;

/// The file's text, decompressed when needed.
pub fn read_text(f: &File) -> Result<String, PstoreError> {
    let raw = std::fs::read(&f.path).map_err(|source| PstoreError::Read { path: f.path.clone(), source })?;
    let bytes = if f.compressed {
        inflate(&raw).map_err(|reason| PstoreError::Decompress { path: f.path.clone(), reason })?
    } else {
        raw
    };
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn inflate(raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let raw_try = flate2::read::DeflateDecoder::new(raw).take(MAX_PART).read_to_end(&mut out);
    if raw_try.is_ok() && !out.is_empty() {
        return Ok(out);
    }
    out.clear();
    flate2::read::ZlibDecoder::new(raw).take(MAX_PART).read_to_end(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// The kernel's header of a dmesg part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// `Panic`, `Oops`, `Emergency`, ...
    pub reason: String,
    /// The dump's count.
    pub count: u32,
    /// The part number (1 = newest lines).
    pub part: u32,
}

/// Splits a dmesg part into its header (if any), its time (older ramoops
/// header, if any) and its text.
pub fn split_header(text: &str) -> (Option<Header>, Option<u64>, &str) {
    let mut rest = text;
    let mut time = None;
    if let Some(r) = rest.strip_prefix("====") {
        let (line, after) = r.split_once('\n').unwrap_or((r, ""));
        time = line.split(['.', '-']).next().and_then(|s| s.parse().ok());
        rest = after;
    }
    let (line, after) = rest.split_once('\n').unwrap_or((rest, ""));
    let header = (|| {
        let (reason, tail) = line.split_once('#')?;
        let (count, part) = tail.split_once(" Part")?;
        Some(Header { reason: reason.to_string(), count: count.trim().parse().ok()?, part: part.trim().parse().ok()? })
    })();
    match header {
        Some(h) if !h.reason.is_empty() && h.reason.bytes().all(|b| b.is_ascii_alphabetic()) => (Some(h), time, after),
        _ => (None, time, rest),
    }
}

/// One dump: its parts in order (oldest text first) and its files.
#[derive(Debug, Clone)]
pub struct Dump {
    /// The backend it came from.
    pub backend: String,
    /// The kernel's reason (`Panic`, `Oops`, ...), when a header said.
    pub reason: Option<String>,
    /// The dump count.
    pub count: u32,
    /// When the dump was written (unix seconds), when known.
    pub time: Option<u64>,
    /// The dump's text, parts joined.
    pub text: String,
    /// Part numbers missing between 1 and the highest.
    pub missing: Vec<u32>,
    /// The files it was read from.
    pub files: Vec<PathBuf>,
}

/// Reads the dmesg files into dumps: EFI and ERST parts grouped by their
/// dump count, each ramoops file a dump of its own. Files that cannot be
/// read are returned apart (they stay in place).
pub fn dumps(files: &[File]) -> (Vec<Dump>, Vec<PstoreError>) {
    struct Part {
        part: u32,
        text: String,
        reason: Option<String>,
        time: Option<u64>,
        path: PathBuf,
    }
    let mut groups: BTreeMap<(String, String), Vec<Part>> = BTreeMap::new();
    let mut errors = Vec::new();
    for f in files.iter().filter(|f| f.kind == "dmesg") {
        let text = match read_text(f) {
            Ok(t) => t,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let (header, ramoops_time, body) = split_header(&text);
        let efi = f.backend.starts_with("efi");
        // EFI ids: (time * 100 + part) * 1000 + count.
        let (id_count, id_part, id_time) =
            if efi { ((f.id % 1000) as u32, ((f.id / 1000) % 100) as u32, Some(f.id / 100_000)) } else { (0, 1, None) };
        let count = header.as_ref().map(|h| h.count).unwrap_or(id_count);
        let part = header.as_ref().map(|h| h.part).unwrap_or(id_part);
        let key = if f.backend == "ramoops" {
            (f.backend.clone(), format!("file {}", f.id))
        } else {
            (f.backend.clone(), format!("count {count}"))
        };
        groups.entry(key).or_default().push(Part {
            part,
            text: body.to_string(),
            reason: header.map(|h| h.reason),
            time: ramoops_time.or(id_time).filter(|t| *t > 0),
            path: f.path.clone(),
        });
    }
    let mut out = Vec::new();
    for ((backend, key), mut parts) in groups {
        parts.sort_by_key(|p| std::cmp::Reverse(p.part));
        let max = parts.first().map(|p| p.part).unwrap_or(1);
        let missing = (1..=max).filter(|n| !parts.iter().any(|p| p.part == *n)).collect();
        let mut text = String::new();
        for p in &parts {
            text.push_str(&p.text);
            if !text.ends_with('\n') {
                text.push('\n');
            }
        }
        let count = key.strip_prefix("count ").and_then(|c| c.parse().ok()).unwrap_or(1);
        out.push(Dump {
            backend,
            reason: parts.iter().find_map(|p| p.reason.clone()),
            count,
            time: parts.iter().filter_map(|p| p.time).max(),
            text,
            missing,
            files: parts.into_iter().map(|p| p.path).collect(),
        });
    }
    (out, errors)
}

/// Whether `dir` is a mount point of the pstore file system.
pub fn is_mounted(dir: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    info.lines().any(|l| {
        let mut f = l.split(' ');
        let mount_point = f.nth(4);
        let fstype = l.split(" - ").nth(1).and_then(|t| t.split(' ').next());
        mount_point.is_some_and(|m| Path::new(m) == dir) && fstype == Some("pstore")
    })
}

/// Mounts pstore on `dir`.
pub fn mount(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    std::fs::create_dir_all(dir)?;
    let target = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    let fs = c"pstore";
    // SAFETY: every pointer is a NUL-terminated string that outlives the
    // call; no data argument.
    let rc = unsafe {
        libc::mount(
            fs.as_ptr(),
            target.as_ptr(),
            fs.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Moves `file` into `dest_dir` (rename, or copy and remove across file
/// systems: pstore is one of its own), removing it from pstore.
pub fn archive(file: &Path, dest_dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dest_dir)?;
    let name = file.file_name().ok_or_else(|| std::io::Error::other("no file name"))?;
    let dest = dest_dir.join(name);
    if std::fs::rename(file, &dest).is_err() {
        std::fs::copy(file, &dest)?;
        std::fs::File::open(&dest)?.sync_all()?;
        std::fs::remove_file(file)?;
    }
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            parse_name("dmesg-efi-176470000001001"),
            Some(("dmesg".into(), "efi".into(), 176470000001001, false))
        );
        assert_eq!(parse_name("dmesg-efi_pstore-17.enc.z"), Some(("dmesg".into(), "efi_pstore".into(), 17, true)));
        assert_eq!(parse_name("console-ramoops-0"), Some(("console".into(), "ramoops".into(), 0, false)));
        assert_eq!(parse_name("readme"), None);
    }

    #[test]
    fn headers() {
        let (h, t, body) = split_header("Panic#2 Part3\n<4>[ 1.0] x\n");
        assert_eq!(h, Some(Header { reason: "Panic".into(), count: 2, part: 3 }));
        assert_eq!((t, body), (None, "<4>[ 1.0] x\n"));
        let (h, t, body) = split_header("====1764700000.123456-D\nOops#1 Part1\ntext\n");
        assert_eq!(h.map(|h| h.reason), Some("Oops".into()));
        assert_eq!((t, body), (Some(1764700000), "text\n"));
        let (h, _, body) = split_header("no header\n");
        assert_eq!((h, body), (None, "no header\n"));
    }

    fn dump(reason: Option<&str>, text: &str, missing: Vec<u32>) -> Dump {
        Dump {
            backend: "efi".into(),
            reason: reason.map(String::from),
            count: 3,
            time: None,
            text: text.into(),
            missing,
            files: vec!["/p/dmesg-efi-1".into(), "/p/dmesg-efi-2".into()],
        }
    }

    #[test]
    fn the_record_of_a_dump() {
        // A warning alone keeps its class; the kernel's Panic reason makes it a panic.
        let w = "<4>[ 1.0] WARNING: CPU: 0 PID: 1 at a.c:1 f+0x1/0x2\n";
        let r = dump_report(&dump(Some("Oops"), w, vec![]), false, &[]).unwrap();
        assert_eq!((r.classification, r.severity), ("org.clearlinux/kernel/warning", 2));
        assert!(r.payload.ends_with("Boot : previous\nPstore : efi Oops#3 (2 parts: dmesg-efi-1 dmesg-efi-2)\n"));
        let r = dump_report(&dump(Some("Panic"), w, vec![2]), false, &[]).unwrap();
        assert_eq!((r.classification, r.severity), ("org.clearlinux/kernel/panic", 4));
        assert!(r.payload.contains("Missing parts : 2\n"), "{}", r.payload);
        // No report: by the reason, or no record.
        let r = dump_report(&dump(Some("Panic"), "nothing known\n", vec![]), false, &[]).unwrap();
        assert!(r.payload.starts_with("Crash Report:\nReason: Panic#3 saved by pstore\n"), "{}", r.payload);
        assert_eq!(dump_report(&dump(Some("Emergency"), "nothing\n", vec![]), false, &[]), None);
        // Attachments keep their end.
        let long = format!("{}END\n", "x".repeat(ATTACH_MAX));
        let r = dump_report(&dump(Some("Oops"), w, vec![]), false, &[("Console log ramoops".into(), long)]).unwrap();
        assert!(r.payload.contains("\nConsole log ramoops (previous boot, end):\n"), "{}", r.payload);
        assert!(r.payload.ends_with("xEND\n"));
    }

    #[test]
    fn raw_deflate_and_zlib() {
        use std::io::Write;
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b"hello raw").unwrap();
        assert_eq!(inflate(&e.finish().unwrap()).unwrap(), b"hello raw");
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(b"hello zlib").unwrap();
        assert_eq!(inflate(&z.finish().unwrap()).unwrap(), b"hello zlib");
        assert!(inflate(b"not compressed at all").is_err());
    }
}

/// What a dump is reported as: classification, severity, payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpReport {
    /// The classification.
    pub classification: &'static str,
    /// The severity.
    pub severity: u8,
    /// The payload: the original's shape for the dump's first report, then
    /// where it came from (marked as the previous boot) and the attached
    /// console and pmsg logs.
    pub payload: String,
}

/// Most bytes of a console or pmsg log attached (its end is kept).
pub const ATTACH_MAX: usize = 16 * 1024;

/// The record for one dump: one per dump, whatever it holds. A panic
/// anywhere in it (or the kernel's `Panic` reason) makes it
/// `org.clearlinux/kernel/panic`; the payload is that of the report that
/// came first (the cause), with the panic line added. A dump with no report
/// is sent as a panic or bug by its reason (`Panic`, `Oops`); one of
/// another reason (`Emergency`, `Restart`, ...) with no report gives none.
pub fn dump_report(dump: &Dump, register_values: bool, attachments: &[(String, String)]) -> Option<DumpReport> {
    use crate::oops::{parse_text, Kind};
    let reports = parse_text(&dump.text);
    let panic = reports.iter().find(|r| r.pattern.kind == Kind::Panic);
    let first = reports.first();
    let reason_panic = dump.reason.as_deref() == Some("Panic");
    let (classification, severity, mut payload) = match (first, panic) {
        (Some(f), Some(p)) => {
            let mut body = f.payload(register_values);
            if !std::ptr::eq(f, p) {
                body.push_str(&format!("Panic : {}\n", p.lines[0]));
            }
            ("org.clearlinux/kernel/panic", 4, body)
        }
        (Some(f), None) if reason_panic => ("org.clearlinux/kernel/panic", 4, f.payload(register_values)),
        (Some(f), None) => (f.pattern.classification, f.pattern.severity, f.payload(register_values)),
        (None, _) => {
            let class = match dump.reason.as_deref() {
                Some("Panic") => "org.clearlinux/kernel/panic",
                Some("Oops") => "org.clearlinux/kernel/bug",
                _ => return None,
            };
            let reason = dump.reason.as_deref().unwrap_or("Panic");
            (class, 4, format!("Crash Report:\nReason: {reason}#{} saved by pstore\n", dump.count))
        }
    };
    payload.push_str("Boot : previous\n");
    let files: Vec<String> =
        dump.files.iter().filter_map(|f| f.file_name()).map(|f| f.to_string_lossy().into_owned()).collect();
    payload.push_str(&format!(
        "Pstore : {} {}#{} ({} part{}: {})\n",
        dump.backend,
        dump.reason.as_deref().unwrap_or("dump"),
        dump.count,
        files.len(),
        if files.len() == 1 { "" } else { "s" },
        files.join(" ")
    ));
    if !dump.missing.is_empty() {
        let m: Vec<String> = dump.missing.iter().map(u32::to_string).collect();
        payload.push_str(&format!("Missing parts : {}\n", m.join(" ")));
    }
    for (name, text) in attachments {
        let start = text.len().saturating_sub(ATTACH_MAX);
        let start = (start..text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
        payload.push_str(&format!("\n{name} (previous boot{}):\n", if start > 0 { ", end" } else { "" }));
        payload.push_str(&text[start..]);
        if !payload.ends_with('\n') {
            payload.push('\n');
        }
    }
    Some(DumpReport { classification, severity, payload })
}
