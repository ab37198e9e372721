//! `telemctl start|stop|restart|is-active`: through systemd when it runs
//! (`/run/systemd/system` exists), otherwise by managing the daemon with
//! its pid file (`state_dir/telem-collector.pid`).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::Config;

pub const UNITS: [&str; 2] = ["telem-collector.socket", "telem-collector.service"];

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("systemctl {args}: {why}")]
    Systemctl { args: String, why: String },
    #[error("cannot start {exe}: {source}")]
    Spawn { exe: String, source: std::io::Error },
    #[error("the collector exited during start ({status}); see {log}")]
    Died { status: String, log: String },
    #[error("the collector did not come up within {0:?}; see {1}")]
    Timeout(Duration, String),
    #[error("the collector (pid {0}) did not stop within 10 s")]
    NoStop(i32),
}

/// Whether systemd manages services here.
pub fn systemd_running() -> bool {
    std::env::var_os("TELEMCTL_NO_SYSTEMD").is_none() && Path::new("/run/systemd/system").is_dir()
}

fn systemctl(args: &[&str]) -> Result<bool, ServiceError> {
    let st = Command::new("systemctl")
        .args(args)
        .status()
        .map_err(|e| ServiceError::Systemctl { args: args.join(" "), why: e.to_string() })?;
    Ok(st.success())
}

/// The pid in the pid file, when that process is alive.
pub fn running_pid(cfg: &Config) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(cfg.pid_file()).ok()?.trim().parse().ok()?;
    // SAFETY: signal 0 only checks that the process exists.
    (pid > 0 && unsafe { libc::kill(pid, 0) } == 0).then_some(pid)
}

pub fn is_active(cfg: &Config) -> Result<bool, ServiceError> {
    if systemd_running() {
        return systemctl(&["is-active", "--quiet", UNITS[1]]);
    }
    Ok(running_pid(cfg).is_some() && crate::control::request(&cfg.control_socket(), "status").is_ok())
}

/// The daemon binary: next to this one, else from PATH.
pub fn collector_exe() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("telem-collector")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("telem-collector"))
}

pub fn start(cfg: &Config) -> Result<(), ServiceError> {
    if systemd_running() {
        systemctl(&["start", UNITS[0], UNITS[1]])?;
        return Ok(());
    }
    if is_active(cfg)? {
        println!("telem-collector is already running (pid {})", running_pid(cfg).unwrap_or(0));
        return Ok(());
    }
    let exe = collector_exe();
    let log = cfg.state_dir.join("telem-collector.log");
    let _ = std::fs::create_dir_all(&cfg.state_dir);
    let out = std::fs::OpenOptions::new().create(true).append(true).open(&log);
    let mut cmd = Command::new(&exe);
    if let Some(f) = &cfg.file {
        cmd.arg("-f").arg(f);
    }
    cmd.stdin(Stdio::null());
    match out {
        Ok(f) => {
            let f2 = f.try_clone().map_err(|source| ServiceError::Spawn { exe: exe.display().to_string(), source })?;
            cmd.stdout(f).stderr(f2);
        }
        Err(_) => {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }
    // SAFETY: setsid is async-signal-safe; it detaches from our terminal.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| ServiceError::Spawn { exe: exe.display().to_string(), source })?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            return Err(ServiceError::Died { status: st.to_string(), log: log.display().to_string() });
        }
        if crate::control::request(&cfg.control_socket(), "status").is_ok() {
            println!("telem-collector started (pid {})", child.id());
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(ServiceError::Timeout(Duration::from_secs(10), log.display().to_string()))
}

pub fn stop(cfg: &Config) -> Result<(), ServiceError> {
    if systemd_running() {
        systemctl(&["stop", UNITS[0], UNITS[1]])?;
        return Ok(());
    }
    let Some(pid) = running_pid(cfg) else {
        println!("telem-collector is not running");
        return Ok(());
    };
    // SAFETY: signalling the pid the daemon wrote.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        // SAFETY: existence check.
        if unsafe { libc::kill(pid, 0) } != 0 {
            println!("telem-collector stopped");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(ServiceError::NoStop(pid))
}

pub fn restart(cfg: &Config) -> Result<(), ServiceError> {
    if systemd_running() {
        systemctl(&["restart", UNITS[0], UNITS[1]])?;
        return Ok(());
    }
    stop(cfg)?;
    start(cfg)
}
