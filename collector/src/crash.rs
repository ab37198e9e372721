//! `telemctl crash install|uninstall|status`: makes crashprobe the kernel's
//! core handler, and restores what was there before. The work is done by
//! `crashprobe::install`; this module only picks the paths.

use std::path::{Path, PathBuf};

use crashprobe::install::{self, InstallError, Mode, Paths};

/// Where crashprobe is: beside this program (an installed suite, or a
/// cargo target dir), else `/usr/bin/crashprobe`.
pub fn default_exe() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|me| me.parent().map(|d| d.join("crashprobe")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("/usr/bin/crashprobe"))
}

/// Installs pipe mode (`|crashprobe -P %P ...`, with `-c CONFIG` so the
/// handler finds the collector) or socket mode (`@SOCKET`).
pub fn install(socket: Option<&Path>, exe: &Path, config: Option<&Path>) -> Result<String, InstallError> {
    let mode = match socket {
        Some(s) => Mode::Socket { socket: s.to_path_buf() },
        None => Mode::Pipe {
            exe: exe.to_path_buf(),
            config: config.map(|c| std::path::absolute(c).unwrap_or_else(|_| c.to_path_buf())),
        },
    };
    install::install(&mode, &Paths::default())
}

/// Restores the saved core_pattern and core_pipe_limit.
pub fn uninstall() -> Result<install::Saved, InstallError> {
    install::uninstall(&Paths::default())
}

/// The current core_pattern, and what install saved (if installed).
pub fn status() -> Result<(String, Option<install::Saved>), InstallError> {
    let p = Paths::default();
    let cur = std::fs::read_to_string(p.sysctl_dir.join("core_pattern"))
        .map_err(|source| InstallError::Io { what: "read", path: p.sysctl_dir.join("core_pattern"), source })?;
    Ok((cur.trim_end().to_string(), install::saved(&p)?))
}
