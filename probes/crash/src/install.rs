//! Installing crashprobe as the kernel's core handler, and restoring what
//! was there before: `crashprobe --install [--crash-socket [SOCKET]]`
//! (socket mode: `@@SOCKET` where the kernel has it, else `@SOCKET`, and
//! only when something serves the socket),
//! `--uninstall` and `--status` call these (`telemctl crash install`,
//! `uninstall` and `status` run those commands).
//!
//! The previous `core_pattern` and `core_pipe_limit` are saved in a state
//! file (written atomically, never through a symlink) the first time; a
//! second install keeps the first saved values, so uninstall always brings
//! back what the administrator had.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The kernel's limit on core_pattern (CORENAME_MAX_SIZE - 1).
pub const MAX_PATTERN: usize = 127;
/// Where the state is kept by default.
pub const DEFAULT_STATE: &str = "/run/telemetrics/crashprobe.state";
/// Where socket mode listens by default.
pub const DEFAULT_CRASH_SOCKET: &str = "/run/telemetrics/crash.sock";
/// `core_pipe_limit` set while installed: the kernel waits for up to this
/// many concurrent handlers, so `/proc/PID` stays readable while they run.
pub const PIPE_LIMIT: u32 = 16;

/// How the kernel hands cores to crashprobe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// `|EXE -P %P ... [-f CONFIG]`: the kernel runs EXE per crash.
    Pipe {
        /// The crashprobe executable (an absolute path without spaces).
        exe: PathBuf,
        /// The configuration file the handler reads (absolute).
        config: Option<PathBuf>,
    },
    /// `@@SOCKET` (request/ack, kernel 6.17+) or `@SOCKET` (kernel 6.16),
    /// served by `crashprobe --serve SOCKET`.
    Socket {
        /// The socket `crashprobe --serve` listens on.
        socket: PathBuf,
        /// `@@`: the kernel asks before it dumps (see [`crate::serve`]).
        request: bool,
    },
}

/// Whether this kernel takes `@@SOCKET` (Linux 6.17 and later).
pub fn kernel_has_request_mode() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    release_at_least(&release, 6, 17)
}

fn release_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let num = |p: Option<&str>| p.and_then(|s| s.parse::<u32>().ok());
    match (num(parts.next()), num(parts.next())) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}

/// Checks that something accepts connections on `socket` (socket mode
/// without a server loses every crash's core without a word).
pub fn check_served(socket: &Path) -> Result<(), InstallError> {
    match std::os::unix::net::UnixStream::connect(socket) {
        // The server reads a connection that closes at once as no crash.
        Ok(_) => Ok(()),
        Err(source) => Err(InstallError::NotServed { socket: socket.into(), source }),
    }
}

/// The files install and uninstall touch.
#[derive(Debug, Clone)]
pub struct Paths {
    /// `/proc/sys/kernel` (a temporary directory in unit tests).
    pub sysctl_dir: PathBuf,
    /// Where the previous values are saved.
    pub state_file: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths { sysctl_dir: "/proc/sys/kernel".into(), state_file: DEFAULT_STATE.into() }
    }
}

/// Why install, uninstall or status failed.
#[derive(Debug, Error)]
pub enum InstallError {
    #[error(
        "core_pattern would be {len} bytes; the kernel allows {MAX_PATTERN}: install crashprobe at a shorter path"
    )]
    TooLong { len: usize },
    #[error("path {0:?} has whitespace or is not absolute; the kernel splits core_pattern at spaces")]
    BadPath(PathBuf),
    #[error("cannot {what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("state file {path} is malformed: {reason}; restore core_pattern by hand")]
    State { path: PathBuf, reason: String },
    #[error("crashprobe is not installed (no state file at {0})")]
    NotInstalled(PathBuf),
    #[error(
        "nothing serves {} ({source}): the kernel would lose every crash's core; start `crashprobe --serve {}` \
         as root first (dist/telem-crashprobe.service), then install",
        socket.display(),
        socket.display()
    )]
    NotServed { socket: PathBuf, source: std::io::Error },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> InstallError + 'a {
    move |source| InstallError::Io { what, path: path.into(), source }
}

fn check_path(p: &Path) -> Result<&str, InstallError> {
    match p.to_str() {
        Some(s) if p.is_absolute() && !s.chars().any(|c| c.is_whitespace() || c == '%') => Ok(s),
        _ => Err(InstallError::BadPath(p.into())),
    }
}

/// The core_pattern for `mode`, checked against the kernel's limit.
pub fn pattern(mode: &Mode) -> Result<String, InstallError> {
    let p = match mode {
        Mode::Pipe { exe, config } => {
            let mut s = format!("|{} -P %P -F %F -d %d -t %t -s %s", check_path(exe)?);
            if let Some(c) = config {
                s.push_str(" -f ");
                s.push_str(check_path(c)?);
            }
            s
        }
        Mode::Socket { socket, request: true } => format!("@@{}", check_path(socket)?),
        Mode::Socket { socket, request: false } => format!("@{}", check_path(socket)?),
    };
    if p.len() > MAX_PATTERN {
        return Err(InstallError::TooLong { len: p.len() });
    }
    Ok(p)
}

fn read_trim(p: &Path) -> Result<String, InstallError> {
    Ok(std::fs::read_to_string(p).map_err(io("read", p))?.trim_end_matches('\n').to_string())
}

fn write_sysctl(p: &Path, v: &str) -> Result<(), InstallError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(p)
        .map_err(io("open", p))?;
    f.write_all(format!("{v}\n").as_bytes()).map_err(io("write", p))
}

/// The saved values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    /// `core_pattern` before the first install.
    pub core_pattern: String,
    /// `core_pipe_limit` before the first install.
    pub core_pipe_limit: String,
}

fn encode(s: &Saved) -> String {
    // core_pattern can hold any byte but newline; it is the rest of its line.
    format!("core_pipe_limit={}\ncore_pattern={}\n", s.core_pipe_limit, s.core_pattern)
}

fn decode(path: &Path, text: &str) -> Result<Saved, InstallError> {
    let bad = |reason: &str| InstallError::State { path: path.into(), reason: reason.into() };
    let mut limit = None;
    let mut pat = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("core_pipe_limit=") {
            v.parse::<u32>().map_err(|_| bad("core_pipe_limit is not a number"))?;
            limit = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("core_pattern=") {
            pat = Some(v.to_string());
        } else if !line.is_empty() {
            return Err(bad("unknown line"));
        }
    }
    Ok(Saved {
        core_pattern: pat.ok_or_else(|| bad("no core_pattern"))?,
        core_pipe_limit: limit.ok_or_else(|| bad("no core_pipe_limit"))?,
    })
}

fn write_state(path: &Path, s: &Saved) -> Result<(), InstallError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    f.write_all(encode(s).as_bytes()).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("sync", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("rename", path))
}

/// Reads the saved state, if installed.
pub fn saved(paths: &Paths) -> Result<Option<Saved>, InstallError> {
    match std::fs::read_to_string(&paths.state_file) {
        Ok(t) => decode(&paths.state_file, &t).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(InstallError::Io { what: "read", path: paths.state_file.clone(), source: e }),
    }
}

/// The current core_pattern, and what install saved (if installed).
pub fn status(paths: &Paths) -> Result<(String, Option<Saved>), InstallError> {
    Ok((read_trim(&paths.sysctl_dir.join("core_pattern"))?, saved(paths)?))
}

/// Writes core_pattern (and core_pipe_limit for pipe mode), saving the
/// previous values unless already saved. Returns the pattern written.
pub fn install(mode: &Mode, paths: &Paths) -> Result<String, InstallError> {
    let pat = pattern(mode)?;
    let cp = paths.sysctl_dir.join("core_pattern");
    let cl = paths.sysctl_dir.join("core_pipe_limit");
    if saved(paths)?.is_none() {
        let prev = Saved { core_pattern: read_trim(&cp)?, core_pipe_limit: read_trim(&cl)? };
        write_state(&paths.state_file, &prev)?;
    }
    if matches!(mode, Mode::Pipe { .. }) {
        let cur: u32 = read_trim(&cl)?.parse().unwrap_or(0);
        if cur == 0 || cur < PIPE_LIMIT {
            write_sysctl(&cl, &PIPE_LIMIT.to_string())?;
        }
    }
    write_sysctl(&cp, &pat)?;
    Ok(pat)
}

/// Restores the saved values and removes the state file.
pub fn uninstall(paths: &Paths) -> Result<Saved, InstallError> {
    let s = saved(paths)?.ok_or_else(|| InstallError::NotInstalled(paths.state_file.clone()))?;
    write_sysctl(&paths.sysctl_dir.join("core_pattern"), &s.core_pattern)?;
    write_sysctl(&paths.sysctl_dir.join("core_pipe_limit"), &s.core_pipe_limit)?;
    std::fs::remove_file(&paths.state_file).map_err(io("remove", &paths.state_file))?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake() -> (tempfile::TempDir, Paths) {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("core_pattern"), "core\n").unwrap();
        std::fs::write(d.path().join("core_pipe_limit"), "0\n").unwrap();
        let p = Paths { sysctl_dir: d.path().into(), state_file: d.path().join("st/state") };
        (d, p)
    }

    #[test]
    fn install_twice_then_uninstall_restores_the_first() {
        let (d, p) = fake();
        let m = Mode::Pipe { exe: "/usr/bin/crashprobe".into(), config: None };
        let pat = install(&m, &p).unwrap();
        assert_eq!(pat, "|/usr/bin/crashprobe -P %P -F %F -d %d -t %t -s %s");
        let (current, saved) = status(&p).unwrap();
        assert_eq!((current.as_str(), saved.unwrap().core_pattern.as_str()), (pat.as_str(), "core"));
        let with_config = Mode::Pipe { exe: "/usr/bin/crashprobe".into(), config: Some("/etc/t.conf".into()) };
        assert_eq!(pattern(&with_config).unwrap(), "|/usr/bin/crashprobe -P %P -F %F -d %d -t %t -s %s -f /etc/t.conf");
        assert_eq!(std::fs::read_to_string(d.path().join("core_pattern")).unwrap(), format!("{pat}\n"));
        assert_eq!(std::fs::read_to_string(d.path().join("core_pipe_limit")).unwrap(), "16\n");
        install(&Mode::Socket { socket: "/run/x.sock".into(), request: false }, &p).unwrap();
        let s = uninstall(&p).unwrap();
        assert_eq!(s.core_pattern, "core");
        assert_eq!(std::fs::read_to_string(d.path().join("core_pattern")).unwrap(), "core\n");
        assert_eq!(std::fs::read_to_string(d.path().join("core_pipe_limit")).unwrap(), "0\n");
        assert!(matches!(uninstall(&p), Err(InstallError::NotInstalled(_))));
    }

    #[test]
    fn refuses_long_or_spaced_paths() {
        let long = PathBuf::from(format!("/{}", "a".repeat(100)));
        assert!(matches!(pattern(&Mode::Pipe { exe: long, config: None }), Err(InstallError::TooLong { .. })));
        assert!(matches!(pattern(&Mode::Pipe { exe: "/a b/c".into(), config: None }), Err(InstallError::BadPath(_))));
        assert!(matches!(
            pattern(&Mode::Socket { socket: "rel.sock".into(), request: true }),
            Err(InstallError::BadPath(_))
        ));
    }

    #[test]
    fn request_mode_pattern_and_kernel_versions() {
        let m = Mode::Socket { socket: "/run/x.sock".into(), request: true };
        assert_eq!(pattern(&m).unwrap(), "@@/run/x.sock");
        assert!(release_at_least("6.18.44-fc-v769\n", 6, 17));
        assert!(release_at_least("7.0.1", 6, 17));
        assert!(!release_at_least("6.16.2", 6, 17));
        assert!(!release_at_least("garbage", 6, 17));
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(check_served(&d.path().join("none.sock")), Err(InstallError::NotServed { .. })));
        let l = std::os::unix::net::UnixListener::bind(d.path().join("s.sock")).unwrap();
        check_served(&d.path().join("s.sock")).unwrap();
        drop(l);
    }

    #[test]
    fn state_file_is_not_followed_through_a_symlink() {
        let (d, p) = fake();
        std::fs::create_dir_all(d.path().join("st")).unwrap();
        std::os::unix::fs::symlink(d.path().join("victim"), d.path().join("st/state.tmp")).unwrap();
        install(&Mode::Socket { socket: "/run/x.sock".into(), request: false }, &p).unwrap();
        assert!(!d.path().join("victim").exists());
    }
}
