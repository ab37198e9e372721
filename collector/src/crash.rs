//! `telemctl crash install|uninstall|status`: runs `crashprobe --install`,
//! `--uninstall` or `--status`. Installing the core handler is crashprobe's
//! own work (`probes/crash/src/install.rs`); the collector does not link
//! crashprobe (nor its unwinder), it runs the executable.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

/// The executable's name.
pub const CRASHPROBE: &str = "crashprobe";

/// What to ask crashprobe for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `--install`: pipe mode (`-f CONFIG` passed on, so the handler finds
    /// the collector), or socket mode: `Some(None)` for crashprobe's default
    /// crash socket, `Some(Some(path))` for another.
    Install {
        /// Socket mode, and on which socket.
        crash_socket: Option<Option<PathBuf>>,
        /// The configuration file the handler is to read.
        config: Option<PathBuf>,
    },
    /// `--uninstall`: restore the saved core_pattern and core_pipe_limit.
    Uninstall,
    /// `--status`: the current core_pattern and whether crashprobe set it.
    Status,
}

/// Why crashprobe could not be run.
#[derive(Debug, thiserror::Error)]
pub enum CrashError {
    /// Not beside telemctl, not on PATH.
    #[error(
        "crashprobe was not found {where_}; install it beside telemctl (the suite ships them together; \
         in a checkout, `cargo build -p crashprobe` builds it into the same target directory), \
         or name it with --exe PATH"
    )]
    NotFound {
        /// Where it was looked for, in words.
        where_: String,
    },
    /// `--exe PATH` names no file.
    #[error("--exe {0}: no such file")]
    NoSuchExe(PathBuf),
    /// It could not be started.
    #[error("cannot run {exe}: {source}")]
    Run {
        /// The executable.
        exe: PathBuf,
        /// Why it could not be started.
        source: std::io::Error,
    },
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Finds crashprobe: `explicit` (`--exe`), else beside this program (an
/// installed suite, or a cargo target directory), else on `PATH`.
pub fn find(explicit: Option<&Path>) -> Result<PathBuf, CrashError> {
    find_in(explicit, std::env::current_exe().ok().as_deref(), std::env::var_os("PATH"))
}

fn find_in(explicit: Option<&Path>, me: Option<&Path>, path: Option<OsString>) -> Result<PathBuf, CrashError> {
    if let Some(p) = explicit {
        return if p.is_file() { Ok(p.to_path_buf()) } else { Err(CrashError::NoSuchExe(p.to_path_buf())) };
    }
    let beside = me.and_then(Path::parent).map(|d| d.join(CRASHPROBE));
    if let Some(p) = beside.as_ref().filter(|p| is_executable(p)) {
        return Ok(p.clone());
    }
    if let Some(p) = path.iter().flat_map(std::env::split_paths).map(|d| d.join(CRASHPROBE)).find(|p| is_executable(p))
    {
        return Ok(p);
    }
    let where_ = match beside {
        Some(b) => format!("at {} nor on PATH", b.display()),
        None => "on PATH".into(),
    };
    Err(CrashError::NotFound { where_ })
}

/// crashprobe's arguments for `action`.
pub fn args(action: &Action) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    match action {
        Action::Install { crash_socket, config } => {
            a.push("--install".into());
            if let Some(c) = config {
                a.push("-f".into());
                a.push(std::path::absolute(c).unwrap_or_else(|_| c.clone()).into());
            }
            match crash_socket {
                None => {}
                Some(None) => a.push("--crash-socket".into()),
                Some(Some(s)) => {
                    a.push("--crash-socket".into());
                    a.push(s.into());
                }
            }
        }
        Action::Uninstall => a.push("--uninstall".into()),
        Action::Status => a.push("--status".into()),
    }
    a
}

/// Runs `exe` for `action`, its output going to ours; its exit status.
pub fn run(exe: &Path, action: &Action) -> Result<ExitStatus, CrashError> {
    Command::new(exe).args(args(action)).status().map_err(|source| CrashError::Run { exe: exe.into(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_beside_then_on_path_and_says_what_to_do() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let (bin, other) = (d.path().join("bin"), d.path().join("other"));
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        let me = bin.join("telemctl");
        let e = find_in(None, Some(&me), Some(other.clone().into_os_string())).unwrap_err().to_string();
        assert!(e.contains("not found") && e.contains("--exe PATH") && e.contains(&bin.display().to_string()), "{e}");
        let on_path = other.join(CRASHPROBE);
        std::fs::write(&on_path, "").unwrap();
        std::fs::set_permissions(&on_path, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find_in(None, Some(&me), Some(other.clone().into_os_string())).unwrap(), on_path);
        let beside = bin.join(CRASHPROBE);
        std::fs::write(&beside, "").unwrap();
        std::fs::set_permissions(&beside, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find_in(None, Some(&me), Some(other.into_os_string())).unwrap(), beside);
        assert!(matches!(find_in(Some(&d.path().join("none")), None, None), Err(CrashError::NoSuchExe(_))));
    }

    #[test]
    fn arguments() {
        let s = |v: Vec<OsString>| v.into_iter().map(|a| a.into_string().unwrap()).collect::<Vec<_>>().join(" ");
        assert_eq!(
            s(args(&Action::Install { crash_socket: None, config: Some("/etc/t.conf".into()) })),
            "--install -f /etc/t.conf"
        );
        assert_eq!(s(args(&Action::Install { crash_socket: Some(None), config: None })), "--install --crash-socket");
        assert_eq!(
            s(args(&Action::Install { crash_socket: Some(Some("/run/c.sock".into())), config: None })),
            "--install --crash-socket /run/c.sock"
        );
        assert_eq!(s(args(&Action::Uninstall)), "--uninstall");
        assert_eq!(s(args(&Action::Status)), "--status");
    }
}
