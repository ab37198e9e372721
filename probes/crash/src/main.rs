//! `crashprobe`: the kernel's core handler (pipe mode), the socket-mode
//! service (`--serve`), and install/uninstall of the core_pattern.

use std::io::Write;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use crashprobe::config::{Config, CrashConfigError};
use crashprobe::governor::Decision;
use crashprobe::handle::{handle, HandleError, Input};
use crashprobe::install::{self, InstallError, Mode, Paths};
use crashprobe::serve::ServeError;
use crashprobe::stream::Stream;
use crashprobe::SendError;

/// Crash handler for core_pattern. Without --serve, --install, --uninstall
/// or --status it reads an ELF core on stdin (as the kernel pipes it),
/// unwinds every thread and sends one crash record to the collector.
///
/// Logs go to stderr at level `warn`; RUST_LOG sets the level (TELEM_LOG,
/// the earlier name, is read when RUST_LOG is not set).
#[derive(Parser, Debug)]
#[command(name = "crashprobe", version)]
struct Args {
    /// PID of the crashed process in the initial namespace (core_pattern %P).
    #[arg(short = 'P', long)]
    pid: Option<u32>,
    /// pidfd of the crashed process (core_pattern %F).
    #[arg(short = 'F', long)]
    pidfd: Option<i32>,
    /// Dump mode (core_pattern %d): 1 dumpable; 0 or 2 withhold memory.
    #[arg(short = 'd', long)]
    dumpable: Option<u8>,
    /// Time of the dump, unix seconds (core_pattern %t).
    #[arg(short = 't', long)]
    time: Option<u64>,
    /// Signal number (core_pattern %s).
    #[arg(short = 's', long)]
    signal: Option<i32>,
    /// Configuration file (default: /etc/telemetrics/telemetrics.conf, then
    /// /usr/share/defaults/telemetrics/telemetrics.conf). `-c` is its
    /// earlier spelling.
    #[arg(short = 'f', long = "config", visible_short_alias = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Collector socket (default: TELEM_SOCKET, else the configuration's
    /// socket_path, else /run/telem-0).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Analyse a saved core from stdin without /proc, opening module files
    /// by the core's paths on this system (for debugging and benchmarks;
    /// never use it in core_pattern). Cores saved by gdb (notes after the
    /// memory) need stdin to be the file (`< CORE`), not a pipe.
    #[arg(long)]
    core_only: bool,
    /// Print the payload on stdout instead of sending the record.
    #[arg(long)]
    print: bool,
    /// Socket mode: listen on SOCKET for the kernel (core_pattern @@SOCKET
    /// or @SOCKET).
    #[arg(long, value_name = "SOCKET", conflicts_with_all = ["install", "uninstall", "status"])]
    serve: Option<PathBuf>,
    /// Install crashprobe as core_pattern (pipe mode, or socket mode with
    /// --crash-socket), saving the previous values. The pattern names this
    /// executable, and the configuration file given with -f.
    #[arg(long, conflicts_with_all = ["uninstall", "status"])]
    install: bool,
    /// With --install: socket mode, core_pattern `@@SOCKET` (the kernel asks
    /// before it dumps; kernel 6.17+) or `@SOCKET` (6.16), served by
    /// `crashprobe --serve SOCKET`, which must be running: without a server
    /// install refuses. Without a value: /run/telemetrics/crash.sock.
    #[arg(
        long = "crash-socket",
        alias = "install-socket",
        value_name = "SOCKET",
        num_args = 0..=1,
        default_missing_value = install::DEFAULT_CRASH_SOCKET,
        requires = "install"
    )]
    crash_socket: Option<PathBuf>,
    /// Restore the core_pattern and core_pipe_limit saved by --install.
    #[arg(long, conflicts_with = "status")]
    uninstall: bool,
    /// Show the current core_pattern and whether --install set it.
    #[arg(long)]
    status: bool,
    /// Send the `crash/repeated` records of crash-loop governor windows that
    /// are over, then exit (pipe mode sends them only when a later crash is
    /// handled; dist/telem-crashprobe-sweep.timer runs this).
    #[arg(long, conflicts_with_all = ["serve", "install", "uninstall", "status"])]
    sweep: bool,
    /// State file of --install, --uninstall and --status.
    #[arg(long, value_name = "FILE", default_value = install::DEFAULT_STATE)]
    state_file: PathBuf,
}

/// Why crashprobe failed.
#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error(transparent)]
    Install(#[from] InstallError),
    #[error(transparent)]
    Config(#[from] CrashConfigError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Handle(#[from] HandleError),
    #[error(transparent)]
    Send(#[from] SendError),
    #[error(transparent)]
    Governor(#[from] crashprobe::governor::GovernorError),
    #[error("pipe mode needs -P PID (core_pattern %P), or --core-only for a saved core")]
    NoPid,
    #[error("cannot {what}: {source}")]
    Io { what: &'static str, source: std::io::Error },
}

/// The log filter: RUST_LOG, else TELEM_LOG (the earlier name), else `warn`.
fn log_filter() -> tracing_subscriber::EnvFilter {
    use tracing_subscriber::EnvFilter;
    EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_from_env("TELEM_LOG"))
        .unwrap_or_else(|_| EnvFilter::new("warn"))
}

fn main() -> ExitCode {
    // First: never dump ourselves, and let no one ptrace us.
    let hardening = crashprobe::security::set_not_dumpable();
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(false).with_env_filter(log_filter()).init();
    if let Err(e) = hardening {
        tracing::error!(error = %e, "cannot harden the handler");
        return ExitCode::FAILURE;
    }
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("crashprobe: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), RunError> {
    let paths = Paths { state_file: args.state_file.clone(), ..Paths::default() };
    if args.status {
        let (current, saved) = install::status(&paths)?;
        println!("core_pattern: {current}");
        match saved {
            Some(s) => println!("installed by crashprobe --install; uninstall restores {:?}", s.core_pattern),
            None => println!("not installed by crashprobe (no state file {})", paths.state_file.display()),
        }
        return Ok(());
    }
    if args.uninstall {
        let s = install::uninstall(&paths)?;
        println!("restored core_pattern {:?} and core_pipe_limit {}", s.core_pattern, s.core_pipe_limit);
        return Ok(());
    }
    if args.install {
        let mode = match &args.crash_socket {
            Some(s) => {
                install::check_served(s)?;
                Mode::Socket { socket: s.clone(), request: install::kernel_has_request_mode() }
            }
            None => Mode::Pipe {
                exe: std::env::current_exe().map_err(|source| RunError::Io { what: "find my own path", source })?,
                // The kernel runs the handler from `/`: the file must be named absolutely.
                config: args.config.as_deref().map(|c| std::path::absolute(c).unwrap_or_else(|_| c.to_path_buf())),
            },
        };
        let p = install::install(&mode, &paths)?;
        println!("core_pattern = {p}");
        if let Some(s) = &args.crash_socket {
            println!("served by `crashprobe --serve {}`: keep it running (dist/telem-crashprobe.service)", s.display());
        }
        return Ok(());
    }
    let cfg = Config::load(args.config.as_deref())?;
    if args.sweep {
        let Some(g) = crashprobe::governor::open_for(&cfg) else {
            println!("no crash-loop governor (crash_signature_burst = -1, or its state cannot be opened)");
            return Ok(());
        };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let reports = g.sweep(now)?;
        crashprobe::deliver_repeated(&cfg, args.socket.as_deref(), &reports)?;
        println!("{} crash/repeated record(s) sent", reports.len());
        return Ok(());
    }
    if let Some(sock) = &args.serve {
        let l = crashprobe::serve::bind(sock)?;
        crashprobe::serve::serve(l, cfg, args.socket.clone(), Arc::new(AtomicBool::new(false)));
        return Ok(());
    }
    // Pipe mode.
    let start = Instant::now();
    let deadline = start + cfg.budget;
    if args.pid.is_none() && !args.core_only {
        return Err(RunError::NoPid);
    }
    let input = Input {
        pid: args.pid,
        pidfd: args.pidfd,
        dumpable: args.dumpable,
        dump_time: args.time,
        signal: args.signal,
        core_only: args.core_only,
        // SAFETY: geteuid has no preconditions.
        drop_privileges: !args.core_only && unsafe { libc::geteuid() } == 0,
    };
    let unwinder = Arc::new(unwind::Unwinder::new(cfg.unwind_options()));
    // Unbuffered: discarding splices the pipe directly, so no reader may
    // hold bytes back in a buffer.
    let stdin =
        std::io::stdin().as_fd().try_clone_to_owned().map_err(|source| RunError::Io { what: "use stdin", source })?;
    let mut stream = Stream::from_fd(std::fs::File::from(stdin), Some(deadline));
    // Opened while still root (handle drops privileges); not for a saved
    // core or a printed payload.
    let governor = (!args.core_only && !args.print).then(|| crashprobe::governor::open_for(&cfg)).flatten();
    // A crash site the governor knows (its early key, unwound from the live
    // process) is decided before the core is read: a repeat ends here, and
    // the kernel's dump with it as stdin closes unread.
    let mut early = None;
    let mut counted = false;
    let mut early_reports = Vec::new();
    if let (Some(g), Some(pid)) = (&governor, args.pid) {
        early = crashprobe::request::early_key(pid, args.pidfd, args.time, args.dumpable, &unwinder);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        match early.as_deref().map(|k| g.admit_site(k, now)) {
            Some(Ok(Some((sig, Decision::Repeated, reports)))) => {
                tracing::info!(pid, signature = %sig, "repeated crash counted; core not read");
                crashprobe::deliver_repeated(&cfg, args.socket.as_deref(), &reports)?;
                return Ok(());
            }
            Some(Ok(Some((_, Decision::Full, reports)))) => {
                counted = true;
                early_reports = reports;
            }
            Some(Err(e)) => tracing::warn!(error = %e, "crash governor unavailable; the core decides"),
            Some(Ok(None)) | None => {}
        }
    }
    let in_core_governor = if counted { None } else { governor.as_ref() };
    let mut out = handle(&mut stream, &input, &cfg, &unwinder, deadline, in_core_governor)?;
    out.repeated.extend(early_reports);
    if let (Some(g), Some(key), Some(sig)) = (&governor, &early, &out.report.signature) {
        if let Err(e) = g.learn_site(key, sig) {
            tracing::warn!(error = %e, "crash site not remembered");
        }
    }
    tracing::info!(bytes = out.bytes_read, ms = start.elapsed().as_millis() as u64, "core handled");
    let Some(record) = &out.record else { return Ok(()) };
    if args.print {
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(record.payload.as_bytes());
        if !record.payload.as_bytes().ends_with(b"\n") {
            let _ = writeln!(o);
        }
        let _ = writeln!(
            o,
            "classification: {} severity: {} event_id: {}",
            record.classification, record.severity, record.event_id
        );
        return Ok(());
    }
    Ok(crashprobe::deliver(&cfg, args.socket.as_deref(), &out)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("crashprobe").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn cli_is_well_formed() {
        Args::command().debug_assert();
    }

    #[test]
    fn config_is_f_and_c_still_works() {
        assert_eq!(parse(&["-f", "/a.conf"]).config.as_deref(), Some(std::path::Path::new("/a.conf")));
        assert_eq!(parse(&["--config", "/b.conf"]).config.as_deref(), Some(std::path::Path::new("/b.conf")));
        // Installed core_patterns carry `-c FILE`.
        let a = parse(&["-P", "1", "-F", "3", "-d", "1", "-t", "2", "-s", "11", "-c", "/c.conf"]);
        assert_eq!(a.config.as_deref(), Some(std::path::Path::new("/c.conf")));
    }

    #[test]
    fn crash_socket_and_its_old_name() {
        let a = parse(&["--install", "--crash-socket", "/run/x.sock"]);
        assert_eq!(a.crash_socket.as_deref(), Some(std::path::Path::new("/run/x.sock")));
        let a = parse(&["--install", "--crash-socket"]);
        assert_eq!(a.crash_socket.as_deref(), Some(std::path::Path::new(install::DEFAULT_CRASH_SOCKET)));
        let a = parse(&["--install", "--install-socket", "/run/y.sock"]);
        assert_eq!(a.crash_socket.as_deref(), Some(std::path::Path::new("/run/y.sock")));
        // --socket stays the collector's.
        let a = parse(&["--install", "--socket", "/run/telem-9"]);
        assert_eq!((a.socket.as_deref(), a.crash_socket), (Some(std::path::Path::new("/run/telem-9")), None));
        assert!(
            Args::try_parse_from(["crashprobe", "--crash-socket", "/x"]).is_err(),
            "--crash-socket needs --install"
        );
        assert!(Args::try_parse_from(["crashprobe", "--install", "--uninstall"]).is_err());
    }
}
