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
use crashprobe::config::Config;
use crashprobe::handle::{handle, Input};
use crashprobe::install::{self, Mode, Paths};
use crashprobe::stream::Stream;

/// Crash handler for core_pattern. Without --serve/--install/--uninstall it
/// reads an ELF core on stdin (as the kernel pipes it), unwinds every
/// thread and sends one crash record to the collector.
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
    /// /usr/share/defaults/telemetrics/telemetrics.conf).
    #[arg(short = 'c', long)]
    config: Option<PathBuf>,
    /// Collector socket (default: TELEM_SOCKET, else the configuration's
    /// socket_path, else /run/telem-0).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Analyse a saved core from stdin without /proc, opening module files
    /// by the core's paths on this system (for debugging and benchmarks;
    /// never use it in core_pattern).
    #[arg(long)]
    core_only: bool,
    /// Print the payload on stdout instead of sending the record.
    #[arg(long)]
    print: bool,
    /// Socket mode: listen on SOCKET for the kernel (core_pattern @SOCKET).
    #[arg(long, value_name = "SOCKET")]
    serve: Option<PathBuf>,
    /// Install crashprobe as core_pattern (pipe mode, or socket mode with
    /// --install-socket), saving the previous values.
    #[arg(long)]
    install: bool,
    /// With --install: use socket mode on this socket instead of a pipe
    /// (run `crashprobe --serve SOCKET` as a service first).
    #[arg(long, value_name = "SOCKET")]
    install_socket: Option<PathBuf>,
    /// Restore the core_pattern and core_pipe_limit saved by --install.
    #[arg(long)]
    uninstall: bool,
    /// State file of --install/--uninstall.
    #[arg(long, default_value = install::DEFAULT_STATE)]
    state_file: PathBuf,
}

fn main() -> ExitCode {
    // First: never dump ourselves, and let no one ptrace us.
    let hardening = crashprobe::security::set_not_dumpable();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("TELEM_LOG").unwrap_or_else(|_| "warn".into()))
        .init();
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

fn run(args: Args) -> Result<(), String> {
    let paths = Paths { state_file: args.state_file.clone(), ..Paths::default() };
    if args.uninstall {
        let s = install::uninstall(&paths).map_err(|e| e.to_string())?;
        println!("restored core_pattern {:?} and core_pipe_limit {}", s.core_pattern, s.core_pipe_limit);
        return Ok(());
    }
    if args.install {
        let mode = match &args.install_socket {
            Some(s) => Mode::Socket { socket: s.clone() },
            None => Mode::Pipe {
                exe: std::env::current_exe().map_err(|e| format!("cannot find my own path: {e}"))?,
                config: args.config.clone(),
            },
        };
        let p = install::install(&mode, &paths).map_err(|e| e.to_string())?;
        println!("core_pattern = {p}");
        return Ok(());
    }
    let cfg = Config::load(args.config.as_deref()).map_err(|e| e.to_string())?;
    if let Some(sock) = &args.serve {
        let l = crashprobe::serve::bind(sock).map_err(|e| e.to_string())?;
        crashprobe::serve::serve(l, cfg, args.socket.clone(), Arc::new(AtomicBool::new(false)));
        return Ok(());
    }
    // Pipe mode.
    let start = Instant::now();
    let deadline = start + cfg.budget;
    if args.pid.is_none() && !args.core_only {
        return Err("pipe mode needs -P PID (core_pattern %P), or --core-only for a saved core".into());
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
    let stdin = std::io::stdin().as_fd().try_clone_to_owned().map_err(|e| format!("cannot use stdin: {e}"))?;
    let mut stream = Stream::from_fd(std::fs::File::from(stdin), Some(deadline));
    let out = handle(&mut stream, &input, &cfg, &unwinder, deadline).map_err(|e| e.to_string())?;
    tracing::info!(bytes = out.bytes_read, ms = start.elapsed().as_millis() as u64, "core handled");
    let Some(record) = &out.record else { return Ok(()) };
    if args.print {
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(record.payload.as_bytes());
        let _ = writeln!(o, "classification: {} severity: {} event_id: {}", record.classification, record.severity, record.event_id);
        return Ok(());
    }
    crashprobe::deliver(&cfg, args.socket.as_deref(), &out).map_err(|e| e.to_string())
}
