//! `cargo xtask run [--server URL]`: the main job.
//!
//! Builds every binary, then runs the collector in the foreground on a
//! local default kept in `.run/` of the checkout (socket, spool, journal,
//! state, etc; made on start), sends one `hprobe` record, and shows each
//! record live as it is journaled (under each crash and fatal-signal
//! record, the crashing thread's top frames: [`crate::show`]). Without
//! `--server` nothing leaves the
//! machine (records are journaled `local-only`); with it the run opts in and
//! delivers to that URL. As root it also installs crashprobe as the
//! kernel's core handler for the duration of the run (the previous
//! core_pattern comes back on exit) and starts eventprobe beside the
//! collector. klogscanner always runs beside it (kernel oops, warnings,
//! panics and BERT blocks from `/dev/kmsg`; its position in `.run/state`).
//! Ctrl-C stops everything cleanly.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::util;

const USAGE: &str = "usage: cargo xtask run [--server URL]

  --server URL   deliver records to URL (the run opts in); default: keep them local";

fn parse(args: &[String]) -> Result<Option<String>, String> {
    let mut server = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--server" => server = Some(it.next().ok_or("--server needs a URL")?.clone()),
            s if s.starts_with("--server=") => server = Some(s["--server=".len()..].to_string()),
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
        }
    }
    Ok(server)
}

fn bin_dir() -> Result<PathBuf, String> {
    // xtask itself is built into the same target dir: <target>/debug/xtask.
    let exe = std::env::current_exe().map_err(|e| format!("cannot find xtask's own path: {e}"))?;
    exe.parent().map(Path::to_path_buf).ok_or_else(|| "xtask has no parent dir".into())
}

/// Writes `.run/telemetrics.conf` and the folders; returns the config path.
fn prepare(run: &Path, server: Option<&str>) -> Result<PathBuf, String> {
    for d in ["spool", "journal", "state", "etc"] {
        let p = run.join(d);
        std::fs::create_dir_all(&p).map_err(|e| format!("cannot create {}: {e}", p.display()))?;
    }
    let mut conf = format!(
        "# Written by `cargo xtask run`; rewritten on every run.\n[settings]\nsocket_path={}\nspool_dir={}\njournal_dir={}\nstate_dir={}\netc_dir={}\n",
        run.join("telem.sock").display(),
        run.join("spool").display(),
        run.join("journal").display(),
        run.join("state").display(),
        run.join("etc").display(),
    );
    let opt_in = run.join("etc/opt-in");
    match server {
        Some(url) => {
            conf.push_str(&format!("server={url}\n"));
            std::fs::write(&opt_in, b"").map_err(|e| format!("cannot opt in ({}): {e}", opt_in.display()))?;
        }
        None => {
            let _ = std::fs::remove_file(&opt_in);
        }
    }
    let path = run.join("telemetrics.conf");
    std::fs::write(&path, conf).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

pub fn main(args: &[String]) -> Result<(), String> {
    let server = parse(args)?;
    // eventprobe embeds the eBPF object: build it (installing the toolchain
    // when missing) before the binaries. Without it the run goes on without
    // eventprobe.
    let ebpf_ok = match crate::ebpf::build() {
        Ok(_) => true,
        Err(e) => {
            eprintln!("xtask run: eBPF object not built ({e}); running without eventprobe");
            false
        }
    };
    // journalprobe links libsystemd.
    crate::install::ensure_apt(crate::install::BUILD_PACKAGES)?;
    util::cargo(&["build", "--workspace", "--bins"])?;
    let bins = bin_dir()?;
    let run = util::root().join(".run");
    let conf = prepare(&run, server.as_deref())?;
    let socket = run.join("telem.sock");

    // Ctrl-C reaches every process of the terminal's group: the collector
    // stops cleanly on it; xtask ignores it to wait for that and tidy up.
    // SAFETY: installing SIG_IGN for SIGINT has no preconditions.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };

    println!(
        "xtask run: collector on {} ({}), state in {}; Ctrl-C stops it",
        socket.display(),
        match &server {
            Some(u) => format!("delivering to {u}"),
            None => "local only: no server; pass --server URL to deliver".into(),
        },
        run.display()
    );
    let mut collector = Command::new(bins.join("telem-collector"))
        .arg("-f")
        .arg(&conf)
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .spawn()
        .map_err(|e| format!("cannot start telem-collector: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        if let Ok(Some(st)) = collector.try_wait() {
            return Err(format!("telem-collector exited at start: {st}"));
        }
        if Instant::now() > deadline {
            let _ = collector.kill();
            return Err("telem-collector did not start within 20 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "xtask run: records are shown below as they are journaled (record id, time, class, event id, boot id, fate; \
         crashes and fatal signals with their top {} frames; `telemctl -f {} journal -i -r ID` shows a whole payload)",
        crate::show::MAX_FRAMES,
        conf.display()
    );
    let mut follower: Option<Child> = Command::new(bins.join("telemctl"))
        .arg("-f")
        .arg(&conf)
        .args(["journal", "--follow", "--json", "-i"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| eprintln!("xtask run: cannot show the journal live: {e}"))
        .ok();
    if let Some(out) = follower.as_mut().and_then(|c| c.stdout.take()) {
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                println!("{}", crate::show::render(&line));
            }
        });
    }
    let root = is_root();
    let _crash = if root {
        CrashHandler::install(&bins, &conf, &run.join("state/crashprobe.state"))
    } else {
        println!("xtask run: not root: crashprobe is not installed as the core handler, eventprobe not started");
        None
    };
    let mut events = if root && ebpf_ok { start_eventprobe(&bins, &socket, &conf) } else { None };
    let mut klog = start_klogscanner(&bins, &conf);
    send_hello(&bins, &socket);
    let status = collector.wait().map_err(|e| format!("waiting for telem-collector: {e}"))?;
    for child in [follower.as_mut(), events.as_mut(), klog.as_mut()].into_iter().flatten() {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = child.wait();
    }
    println!("xtask run: collector stopped ({status}); journal and spool are kept in {}", run.display());
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// crashprobe installed as core_pattern for the run; the previous
/// core_pattern and core_pipe_limit come back when it is dropped.
struct CrashHandler {
    crashprobe: PathBuf,
    state: PathBuf,
}

impl CrashHandler {
    fn install(bins: &Path, conf: &Path, state: &Path) -> Option<CrashHandler> {
        let crashprobe = bins.join("crashprobe");
        let out = Command::new(&crashprobe).args(["--install", "-f"]).arg(conf).arg("--state-file").arg(state).output();
        match out {
            Ok(o) if o.status.success() => {
                println!(
                    "xtask run: crash handler installed ({}); restored on exit",
                    String::from_utf8_lossy(&o.stdout).trim()
                );
                Some(CrashHandler { crashprobe, state: state.to_path_buf() })
            }
            Ok(o) => {
                eprintln!("xtask run: crashprobe not installed: {}", String::from_utf8_lossy(&o.stderr).trim());
                None
            }
            Err(e) => {
                eprintln!("xtask run: cannot run {}: {e}", crashprobe.display());
                None
            }
        }
    }
}

impl Drop for CrashHandler {
    fn drop(&mut self) {
        match Command::new(&self.crashprobe).arg("--uninstall").arg("--state-file").arg(&self.state).output() {
            Ok(o) if o.status.success() => println!("xtask run: {}", String::from_utf8_lossy(&o.stdout).trim()),
            Ok(o) => {
                eprintln!("xtask run: FAILED to restore core_pattern: {}", String::from_utf8_lossy(&o.stderr).trim())
            }
            Err(e) => eprintln!("xtask run: FAILED to restore core_pattern: {e}"),
        }
    }
}

/// Starts eventprobe beside the collector, with the run's configuration
/// (its state_dir holds the collector's blackbox socket).
fn start_eventprobe(bins: &Path, socket: &Path, conf: &Path) -> Option<Child> {
    match Command::new(bins.join("eventprobe")).arg("-f").arg(conf).arg("--socket").arg(socket).spawn() {
        Ok(c) => {
            println!("xtask run: eventprobe attached (fatal signals, abnormal exits, OOM kills; the black box's feed)");
            Some(c)
        }
        Err(e) => {
            eprintln!("xtask run: cannot start eventprobe: {e}");
            None
        }
    }
}

/// Starts klogscanner beside the collector: kernel oops, warnings, panics
/// and BERT blocks from /dev/kmsg (its position in .run/state, so a second
/// run goes on where the first stopped).
fn start_klogscanner(bins: &Path, conf: &Path) -> Option<Child> {
    match Command::new(bins.join("klogscanner"))
        .arg("-f")
        .arg(conf)
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .spawn()
    {
        Ok(c) => {
            println!("xtask run: klogscanner follows the kernel log (oops, warnings, panics, BERT)");
            Some(c)
        }
        Err(e) => {
            eprintln!("xtask run: cannot start klogscanner: {e}");
            None
        }
    }
}

/// Sends one hello record with hprobe (or telem-record-gen).
fn send_hello(bins: &Path, socket: &Path) {
    let hprobe = bins.join("hprobe");
    let gen = bins.join("telem-record-gen");
    let mut cmd = if hprobe.is_file() {
        let mut c = Command::new(hprobe);
        c.arg("--socket").arg(socket);
        c
    } else if gen.is_file() {
        let mut c = Command::new(gen);
        c.arg("--socket").arg(socket).args([
            "--class",
            "org.clearlinux/hello/world",
            "--severity",
            "1",
            "--payload",
            "hello\n",
        ]);
        c
    } else {
        println!("xtask run: no hprobe binary yet; send records with any probe to {}", socket.display());
        return;
    };
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(s) => eprintln!("xtask run: hprobe failed ({s})"),
        Err(e) => eprintln!("xtask run: cannot run hprobe: {e}"),
    }
}
