//! What the root-only tests change on the machine, and put back: the
//! kernel's crash settings (`core_pattern` is global), processes that must
//! not outlive a test, crashing programs that dump core, and eventprobe
//! with its eBPF object.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::{bin, workspace_root};

/// The kernel's core handler.
pub const CORE_PATTERN: &str = "/proc/sys/kernel/core_pattern";
/// How many core_pattern handlers the kernel waits for.
pub const CORE_PIPE_LIMIT: &str = "/proc/sys/kernel/core_pipe_limit";
/// Whether set-id programs dump core.
pub const SUID_DUMPABLE: &str = "/proc/sys/fs/suid_dumpable";

/// Restores the sysctl files it saved when dropped (also on panic), and
/// removes the files it was told to.
pub struct SysctlGuard {
    saved: Vec<(&'static str, String)>,
    remove: Vec<PathBuf>,
}

impl SysctlGuard {
    /// Saves the current values of `paths`.
    pub fn save(paths: &[&'static str]) -> SysctlGuard {
        let saved = paths
            .iter()
            .map(|p| (*p, std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read sysctl {p}: {e}"))))
            .collect();
        SysctlGuard { saved, remove: Vec::new() }
    }

    /// Also removes `path` when dropped.
    pub fn and_remove(mut self, path: impl Into<PathBuf>) -> SysctlGuard {
        self.remove.push(path.into());
        self
    }

    /// The values saved, as read (with their newline).
    pub fn saved(&self) -> &[(&'static str, String)] {
        &self.saved
    }

    /// Writes `value` (and a newline) to the sysctl `path`.
    pub fn set(&self, path: &str, value: &str) {
        std::fs::write(path, format!("{value}\n")).unwrap_or_else(|e| panic!("write {path}: {e}"));
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        for (p, v) in &self.saved {
            if let Err(e) = std::fs::write(p, v) {
                eprintln!("FAILED to restore {p}: {e}");
            }
        }
        for p in &self.remove {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A child process killed and reaped when dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Makes `cmd` dump core when it crashes (RLIMIT_CORE unlimited), and run
/// as `uid` (user and group) when given.
pub fn dumps_core(cmd: &mut Command, uid: Option<u32>) -> &mut Command {
    // SAFETY: only async-signal-safe calls (setrlimit, setgid, setuid)
    // between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let r = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
            if libc::setrlimit(libc::RLIMIT_CORE, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(u) = uid {
                if libc::setgid(u) != 0 || libc::setuid(u) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        })
    }
}

/// The eventprobe binary, its eBPF object built first (`cargo xtask
/// build-ebpf`, which installs the toolchain when missing) so that it is
/// embedded.
pub fn eventprobe() -> PathBuf {
    let obj = workspace_root().join("probe-ebpf/target/bpfel-unknown-none/release/probe-ebpf");
    if !obj.exists() {
        let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["run", "--quiet", "-p", "xtask", "--", "build-ebpf"])
            .current_dir(workspace_root())
            .status()
            .expect("run cargo xtask build-ebpf");
        assert!(st.success(), "cargo xtask build-ebpf failed");
    }
    bin("eventprobe")
}

/// Starts eventprobe sending to `socket` for at most 55 s, with `args`,
/// and waits until it says it is ready (its first line on stdout).
pub fn start_eventprobe(socket: &Path, args: &[&str]) -> KillOnDrop {
    let mut child = Command::new(eventprobe())
        .arg("--socket")
        .arg(socket)
        .args(["--duration", "55"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start eventprobe");
    let out = child.stdout.take().expect("stdout");
    let probe = KillOnDrop(child);
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).expect("read eventprobe stdout");
    assert!(line.contains("ready"), "eventprobe did not get ready: {line:?}");
    probe
}

/// Builds `tests/crash_programs/gonil.go` into `dir/out` with the Go
/// toolchain (`cargo xtask setup` installs golang-go), statically (no
/// cgo), as Go builds by default; caches stay under `dir`.
pub fn build_go(dir: &Path, out: &str) -> PathBuf {
    let src = dir.join("gosrc");
    std::fs::create_dir_all(&src).expect("create the Go source dir");
    let prog = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/crash_programs/gonil.go");
    std::fs::copy(&prog, src.join("main.go")).expect("copy gonil.go");
    std::fs::write(src.join("go.mod"), "module gonil\n\ngo 1.19\n").expect("write go.mod");
    let exe = dir.join(out);
    let st = Command::new("go")
        .args(["build", "-o"])
        .arg(&exe)
        .arg(".")
        .current_dir(&src)
        .env("GOCACHE", dir.join("gocache"))
        .env("GOPATH", dir.join("gopath"))
        .env("HOME", dir)
        .env("CGO_ENABLED", "0")
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .status()
        .expect("run go (cargo xtask setup installs golang-go)");
    assert!(st.success(), "go build failed");
    exe
}
