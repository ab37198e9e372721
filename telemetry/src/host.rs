//! Host metadata, read once per process from the same sources, with the same
//! fallbacks, as the original libtelemetry (the host header lines of the
//! legacy framing, docs/WIRE.md).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

use crate::text::HeaderText;

/// The host facts every record carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    /// `uname -m`, e.g. `x86_64`.
    pub arch: HeaderText,
    /// `sys_vendor|product_name|product_version` from `/sys/class/dmi/id`.
    pub host_type: HeaderText,
    /// `VERSION_ID` of os-release, quotes removed.
    pub build: HeaderText,
    /// `uname -r`.
    pub kernel_version: HeaderText,
    /// `ID` of os-release.
    pub system_name: HeaderText,
    /// `board_name|board_vendor` from `/sys/class/dmi/id`.
    pub board_name: HeaderText,
    /// The first `model name` of `/proc/cpuinfo`.
    pub cpu_model: HeaderText,
    /// `bios_version` from `/sys/class/dmi/id`.
    pub bios_version: HeaderText,
}

static CURRENT: OnceLock<Arc<HostInfo>> = OnceLock::new();

impl HostInfo {
    /// This machine's facts, read on first use and kept for the process.
    pub fn current() -> &'static HostInfo {
        Self::cell()
    }

    /// [`current`](Self::current), shared (what records built here carry).
    pub fn shared() -> Arc<HostInfo> {
        Self::cell().clone()
    }

    fn cell() -> &'static Arc<HostInfo> {
        CURRENT.get_or_init(|| Arc::new(HostInfo::read(&HostSources::system())))
    }

    /// Reads the facts from `sources` (a root other than `/` in tests).
    pub fn read(sources: &HostSources) -> HostInfo {
        let dmi = |name: &str, missing: &str| dmi_value(&sources.dmi_dir.join(name), missing);
        let host_type = format!(
            "{}|{}|{}",
            dmi("sys_vendor", "no_sv_file"),
            dmi("product_name", "no_pn_file"),
            dmi("product_version", "no_pvr_file")
        );
        let board_name = format!("{}|{}", dmi("board_name", "no_bn_file"), dmi("board_vendor", "no_bv_file"));
        let bios_version = dmi("bios_version", "no_bv_file");
        let os_release = sources.os_release.iter().find_map(|p| std::fs::read_to_string(p).ok()).unwrap_or_default();
        let build = os_release_value(&os_release, "VERSION_ID").unwrap_or_else(|| "unknown".into());
        let system_name = os_release_value(&os_release, "ID")
            .or_else(|| os_release_value(&os_release, "ID_VARIANT_ID"))
            .unwrap_or_else(|| "unknown".into());
        let cpu_model = std::fs::read_to_string(&sources.cpuinfo)
            .ok()
            .and_then(|s| first_model_name(&s))
            .unwrap_or_else(|| "no_cpu_model".into());
        let (arch, kernel_version) = sources.uname.clone().unwrap_or_else(uname);
        HostInfo {
            arch: HeaderText::sanitize(&arch),
            host_type: HeaderText::sanitize(&host_type),
            build: HeaderText::sanitize(&build),
            kernel_version: HeaderText::sanitize(&kernel_version),
            system_name: HeaderText::sanitize(&system_name),
            board_name: HeaderText::sanitize(&board_name),
            cpu_model: HeaderText::sanitize(&cpu_model),
            bios_version: HeaderText::sanitize(&bios_version),
        }
    }
}

/// Where host facts are read from.
#[derive(Debug, Clone)]
pub struct HostSources {
    /// `/sys/class/dmi/id` (board, BIOS and product names).
    pub dmi_dir: PathBuf,
    /// Tried in order; the first readable one is used.
    pub os_release: Vec<PathBuf>,
    /// `/proc/cpuinfo` (the CPU model).
    pub cpuinfo: PathBuf,
    /// `(machine, release)`; `None` asks uname(2).
    pub uname: Option<(String, String)>,
}

impl HostSources {
    /// This machine's files under `/`.
    pub fn system() -> Self {
        Self::under(Path::new("/"))
    }

    /// The usual files under another root (for tests).
    pub fn under(root: &Path) -> Self {
        HostSources {
            dmi_dir: root.join("sys/class/dmi/id"),
            os_release: vec![root.join("etc/os-release"), root.join("usr/lib/os-release")],
            cpuinfo: root.join("proc/cpuinfo"),
            uname: None,
        }
    }
}

fn dmi_value(path: &Path, missing: &str) -> String {
    match std::fs::read(path) {
        Err(_) => missing.to_string(),
        Ok(bytes) => {
            let s = String::from_utf8_lossy(&bytes);
            let t = s.trim();
            if t.is_empty() {
                "blank".to_string()
            } else {
                t.to_string()
            }
        }
    }
}

/// The value of `key=` in an os-release file, quotes removed.
pub fn os_release_value(content: &str, key: &str) -> Option<String> {
    content.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        if k.trim() != key {
            return None;
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|x| x.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')))
            .unwrap_or(v);
        Some(v.to_string())
    })
}

fn first_model_name(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k.trim() == "model name").then(|| v.trim().to_string())
    })
}

fn uname() -> (String, String) {
    // SAFETY: utsname is plain data; all zeros is a valid value.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname fills the struct; its fields are NUL-terminated.
    if unsafe { libc::uname(&mut u) } != 0 {
        return ("unknown".into(), "unknown".into());
    }
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    (field(&u.machine), field(&u.release))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, content: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    #[test]
    fn reads_sources_with_fallbacks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "sys/class/dmi/id/sys_vendor", "QEMU\n");
        write(root, "sys/class/dmi/id/product_name", "\n");
        write(root, "sys/class/dmi/id/board_vendor", "ACME\n");
        write(root, "usr/lib/os-release", "ID=clear-linux-os\nVERSION_ID=\"41230\"\n");
        write(
            root,
            "proc/cpuinfo",
            "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n\nmodel name: other\n",
        );
        let mut src = HostSources::under(root);
        src.uname = Some(("x86_64".into(), "6.18.0".into()));
        let h = HostInfo::read(&src);
        assert_eq!(h.host_type.as_str(), "QEMU|blank|no_pvr_file");
        assert_eq!(h.board_name.as_str(), "no_bn_file|ACME");
        assert_eq!(h.bios_version.as_str(), "no_bv_file");
        assert_eq!(h.build.as_str(), "41230");
        assert_eq!(h.system_name.as_str(), "clear-linux-os");
        assert_eq!(h.cpu_model.as_str(), "Intel(R) Xeon(R) CPU @ 2.20GHz");
        assert_eq!(h.arch.as_str(), "x86_64");
    }

    #[test]
    fn etc_os_release_wins() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "etc/os-release", "ID=debian\nVERSION_ID='12'\n");
        write(dir.path(), "usr/lib/os-release", "ID=other\nVERSION_ID=1\n");
        let h = HostInfo::read(&HostSources::under(dir.path()));
        assert_eq!((h.system_name.as_str(), h.build.as_str()), ("debian", "12"));
        assert_eq!(h.cpu_model.as_str(), "no_cpu_model");
    }

    #[test]
    fn current_reads_this_machine_once() {
        let a = HostInfo::current() as *const _;
        let b = HostInfo::current() as *const _;
        assert_eq!(a, b);
        assert!(!HostInfo::current().kernel_version.as_str().is_empty());
    }
}
