//! eventprobe beside crashprobe on the same real crash: both records carry
//! the same event id (`unwind::crash_event_id`), and, because the kernel
//! keeps the crashing process alive while crashprobe reads its core from
//! the core_pattern pipe, eventprobe reads the process's mappings in time
//! and symbolizes its frames (the deployment's answer to the race the
//! other eventprobe tests hold off with ptrace).
//!
//! Changes the machine-wide core_pattern (restored by a guard, whatever
//! happens); a test binary of its own so no other test of this crate runs
//! meanwhile. Root only; in CI it must run.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::receiver::{Behaviour, Received, Receiver};
use e2e::{bin, require_root, workspace_root};

const SYSCTLS: [&str; 2] = ["/proc/sys/kernel/core_pattern", "/proc/sys/kernel/core_pipe_limit"];

/// Restores core_pattern and core_pipe_limit on drop (also on panic).
struct KernelGuard {
    saved: Vec<(&'static str, String)>,
}

impl KernelGuard {
    fn new() -> KernelGuard {
        KernelGuard { saved: SYSCTLS.iter().map(|p| (*p, std::fs::read_to_string(p).expect("read sysctl"))).collect() }
    }
}

impl Drop for KernelGuard {
    fn drop(&mut self) {
        for (p, v) in &self.saved {
            if let Err(e) = std::fs::write(p, v) {
                eprintln!("FAILED to restore {p}: {e}");
            }
        }
    }
}

struct Probe(Child);

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const CRASH_C: &str = r#"
__attribute__((noinline)) void both_inner(volatile int *p) { *p = 1; }
__attribute__((noinline)) void both_outer(volatile int *p) { both_inner(p); __asm__ volatile(""); }
int main(void) { both_outer(0); return 0; }
"#;

fn wait_record(rx: &Receiver, what: &str, pred: impl Fn(&Received) -> bool) -> Received {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(r) = rx.records().into_iter().find(|r| pred(r)) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} record within 30 s; got {:#?}; errors {:?}",
            rx.records(),
            rx.errors()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn same_crash_same_event_id_as_crashprobe() {
    if !require_root("same_crash_same_event_id_as_crashprobe") {
        return;
    }
    let obj = workspace_root().join("probe-ebpf/target/bpfel-unknown-none/release/probe-ebpf");
    if !obj.exists() {
        let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["run", "--quiet", "-p", "xtask", "--", "build-ebpf"])
            .current_dir(workspace_root())
            .status()
            .expect("run cargo xtask build-ebpf");
        assert!(st.success(), "cargo xtask build-ebpf failed");
    }
    let eventprobe = bin("eventprobe");
    let crashprobe = bin("crashprobe");

    let dir = tempfile::Builder::new().prefix("evcr").tempdir_in("/tmp").expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let rx = Receiver::start_at(&dir.path().join("telem.sock"), Behaviour::default());
    std::fs::set_permissions(&rx.path, std::fs::Permissions::from_mode(0o666)).expect("chmod socket");
    let config = dir.path().join("c.conf");
    std::fs::write(&config, format!("[settings]\nsocket_path={}\n", rx.path.display())).expect("write config");
    let src = dir.path().join("both.c");
    std::fs::write(&src, CRASH_C).expect("write both.c");
    let exe = dir.path().join("ev-both");
    assert!(Command::new("gcc").args(["-O1", "-g", "-o"]).arg(&exe).arg(&src).status().expect("gcc").success());

    let mut child = Command::new(&eventprobe)
        .arg("--socket")
        .arg(&rx.path)
        .args(["--duration", "55", "--comm", "ev-both"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start eventprobe");
    let out = child.stdout.take().expect("stdout");
    let _probe = Probe(child);
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).expect("read eventprobe stdout");
    assert!(line.contains("ready"), "eventprobe did not get ready: {line:?}");

    let _guard = KernelGuard::new();
    let pattern = format!("|{} -P %P -F %F -d %d -t %t -s %s -c {}", crashprobe.display(), config.display());
    assert!(pattern.len() <= 127, "core_pattern too long: {pattern}");
    std::fs::write("/proc/sys/kernel/core_pattern", format!("{pattern}\n")).expect("set core_pattern");

    let mut c = Command::new(&exe);
    c.stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: only setrlimit between fork and exec.
    unsafe {
        c.pre_exec(|| {
            let r = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
            if libc::setrlimit(libc::RLIMIT_CORE, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut crashing = c.spawn().expect("spawn ev-both");
    let pid = crashing.id();
    let st = crashing.wait().expect("wait ev-both");
    assert_eq!(st.signal(), Some(libc::SIGSEGV), "{st:?}");
    assert!(st.core_dumped(), "ev-both was not dumped to crashprobe: {st:?}");

    let ours = wait_record(&rx, "signal/fatal", |r| r.record.classification.as_str() == "org.clearlinux/signal/fatal");
    let theirs =
        wait_record(&rx, "crashprobe", |r| r.record.classification.as_str().starts_with("org.clearlinux/crash/"));
    let text = ours.record.payload.to_text_lossy().into_owned();
    assert!(text.contains(&format!("PID: {pid}\n")), "{text}");
    assert_eq!(
        ours.record.event_id,
        theirs.record.event_id,
        "eventprobe and crashprobe must give one crash the same event id\neventprobe:\n{text}\ncrashprobe:\n{}",
        theirs.record.payload.to_text_lossy()
    );
    assert!(
        !text.contains("Mappings: unavailable"),
        "the process was alive while dumping; maps must have been read:\n{text}"
    );
    assert!(text.contains("both_outer"), "frames not symbolized:\n{text}");
}
