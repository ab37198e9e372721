//! `eventprobe`: see the crate documentation (`src/lib.rs`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use eventprobe::daemon::{run, Options};
use eventprobe::filters::{parse_comm, parse_signal, Filters, DEFAULT_SIGNALS};
use eventprobe::ratelimit::Limit;
use telemetry::client::SocketPath;

/// Reports fatal signals (with user stacks), abnormal exits and OOM kills
/// seen by eBPF tracepoints to the telemetrics collector. Needs root.
///
/// It also feeds the collector's black box (`telemctl blackbox start`):
/// connected to the collector's blackbox socket (`state_dir/blackbox.sock`,
/// retried every second), it streams every exec (pid, ppid, uid, tty,
/// executable, argv, cgroup and unit) and every process exit (status or
/// signal, run time), fatal signals and OOM kills while a recording runs,
/// and nothing otherwise. Entries wait (at most 256 Ki) until the collector
/// acknowledges them; what is lost arrives as a gap.
///
/// Logs go to stderr at level `info`; RUST_LOG sets the level.
#[derive(Debug, Parser)]
#[command(name = "eventprobe", version)]
struct Args {
    /// Configuration file to take socket_path, event_registers,
    /// privacy_level and state_dir from (default:
    /// /etc/telemetrics/telemetrics.conf, then
    /// /usr/share/defaults/telemetrics/telemetrics.conf).
    #[arg(short = 'f', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Collector socket (default: TELEM_SOCKET, then the configuration
    /// file's socket_path, then /run/telem-0).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Signals reported as fatal (names or numbers, comma-separated).
    /// Default: SIGSEGV,SIGBUS,SIGILL,SIGFPE,SIGABRT,SIGTRAP,SIGSYS.
    #[arg(long, value_delimiter = ',', value_parser = parse_signal)]
    signals: Option<Vec<i32>>,
    /// Do not report fatal signals.
    #[arg(long)]
    no_signals: bool,
    /// Also report deliveries to a handler (by default only signals whose
    /// default action kills the process are reported).
    #[arg(long)]
    all_deliveries: bool,
    /// Smallest exit status (1-255) reported as abnormal.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..))]
    min_exit_code: u8,
    /// Do not report abnormal exits.
    #[arg(long)]
    no_exits: bool,
    /// Do not report OOM kills.
    #[arg(long)]
    no_oom: bool,
    /// Report only these commands (comm, at most 15 bytes; repeatable).
    #[arg(long = "comm", value_parser = parse_comm)]
    comm_allow: Vec<[u8; 16]>,
    /// Never report these commands (repeatable).
    #[arg(long = "ignore-comm", value_parser = parse_comm)]
    comm_deny: Vec<[u8; 16]>,
    /// Kernel ring buffer size in bytes (a power of two; one fatal-signal
    /// event takes about 22 KiB).
    #[arg(long, default_value_t = 16 << 20)]
    ring_bytes: u32,
    /// Records per second allowed per (kind, command) after the burst.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Records allowed at once per (kind, command).
    #[arg(long, default_value_t = 10.0)]
    burst: f64,
    /// Records per second allowed in all.
    #[arg(long, default_value_t = 20.0)]
    global_rate: f64,
    /// Records allowed at once in all.
    #[arg(long, default_value_t = 100.0)]
    global_burst: f64,
    /// Events waiting for unwinding and sending before new ones are dropped (counted).
    #[arg(long, default_value_t = 256)]
    queue: usize,
    /// Load this eBPF object instead of the embedded one.
    #[arg(long)]
    object: Option<PathBuf>,
    /// Turn on BPF run-time statistics and print them at exit.
    #[arg(long)]
    bpf_stats: bool,
    /// Stop after this many seconds (default: run until SIGTERM or SIGINT).
    #[arg(long)]
    duration: Option<f64>,
    /// Never read /proc/PID of a crashing process: unwind and symbolize
    /// with the executable mappings the kernel named at the signal only
    /// (as when the process is already gone; for tests and measurements).
    #[arg(long)]
    no_proc_maps: bool,
    /// The collector's blackbox socket (default: blackbox.sock in the
    /// configuration file's state_dir, /var/lib/telemetry).
    #[arg(long, value_name = "PATH")]
    blackbox_socket: Option<PathBuf>,
    /// Do not feed the black box (its exec and exit programs are then not
    /// attached).
    #[arg(long, conflicts_with = "blackbox_socket")]
    no_blackbox: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let a = Args::parse();
    let env = std::env::var_os(telemetry::client::SOCKET_ENV).map(PathBuf::from);
    let socket = match SocketPath::resolve_with(a.socket.as_deref(), env, a.config.as_deref()) {
        Ok(s) => s.path,
        Err(e) => {
            eprintln!("eventprobe: {e}");
            return ExitCode::from(2);
        }
    };
    let config = match eventprobe::config::Config::load(a.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("eventprobe: {e}");
            return ExitCode::from(2);
        }
    };
    let filters = Filters {
        signals: if a.no_signals { Vec::new() } else { a.signals.unwrap_or_else(|| DEFAULT_SIGNALS.to_vec()) },
        only_default_action: !a.all_deliveries,
        min_exit_code: a.min_exit_code,
        exits: !a.no_exits,
        oom: !a.no_oom,
        comm_allow: a.comm_allow,
        comm_deny: a.comm_deny,
    };
    for (name, v) in
        [("--rate", a.rate), ("--burst", a.burst), ("--global-rate", a.global_rate), ("--global-burst", a.global_burst)]
    {
        if !(v.is_finite() && v > 0.0) {
            eprintln!("eventprobe: {name} must be a positive number (got {v})");
            return ExitCode::from(2);
        }
    }
    let duration = match a.duration {
        Some(s) if s.is_finite() && s > 0.0 => Some(Duration::from_secs_f64(s)),
        Some(s) => {
            eprintln!("eventprobe: --duration must be a positive number of seconds (got {s})");
            return ExitCode::from(2);
        }
        None => None,
    };
    let opts = Options {
        object: a.object,
        socket,
        filters,
        ring_bytes: a.ring_bytes,
        per_key: Limit { per_sec: a.rate, burst: a.burst },
        global: Limit { per_sec: a.global_rate, burst: a.global_burst },
        queue: a.queue,
        bpf_stats: a.bpf_stats,
        duration,
        send_timeout: Duration::from_secs(5),
        registers: config.registers,
        no_proc_maps: a.no_proc_maps,
        blackbox: if a.no_blackbox {
            None
        } else {
            Some(a.blackbox_socket.unwrap_or_else(|| eventprobe::blackbox::socket_in(&config.state_dir)))
        },
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("eventprobe: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(opts)) {
        Ok(summary) => {
            eprintln!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("eventprobe: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_well_formed_and_config_is_f() {
        use clap::CommandFactory;
        Args::command().debug_assert();
        let a = Args::try_parse_from(["eventprobe", "-f", "/etc/t.conf", "--socket", "/run/s"]).unwrap();
        assert_eq!(a.config.as_deref(), Some(std::path::Path::new("/etc/t.conf")));
        assert_eq!(a.socket.as_deref(), Some(std::path::Path::new("/run/s")));
        let a = Args::try_parse_from(["eventprobe", "--config", "/etc/u.conf"]).unwrap();
        assert_eq!(a.config.as_deref(), Some(std::path::Path::new("/etc/u.conf")));
        let a = Args::try_parse_from(["eventprobe", "--blackbox-socket", "/tmp/bb.sock"]).unwrap();
        assert_eq!(a.blackbox_socket.as_deref(), Some(std::path::Path::new("/tmp/bb.sock")));
        assert!(Args::try_parse_from(["eventprobe", "--blackbox-socket", "/x", "--no-blackbox"]).is_err());
    }
}
