//! Kernel-log tests: lines written to `/dev/kmsg` (as root), tags that make
//! a test's lines its own (the log is shared by everything on the machine),
//! and a long-running probe process the test stops, kills and restarts.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Held while a test writes a multi-line report, so the reports of tests
/// running in parallel in one test binary do not interleave in the log.
pub static WRITER: Mutex<()> = Mutex::new(());

/// A random tag of lowercase letters only (the storm governor blanks
/// digits when it compares reports, so letters keep tags apart).
pub fn tag() -> String {
    let mut b = [0u8; 12];
    getrandom_fill(&mut b);
    b.iter().map(|x| (b'a' + x % 26) as char).collect()
}

/// `n` as letters (`a`, `b`, ..., `ba`, ...): an index that survives the
/// storm governor's blanking of digits.
pub fn letters(mut n: usize) -> String {
    let mut s = Vec::new();
    loop {
        s.push(b'a' + (n % 26) as u8);
        n /= 26;
        if n == 0 {
            break;
        }
    }
    s.reverse();
    String::from_utf8(s).unwrap_or_default()
}

fn getrandom_fill(b: &mut [u8]) {
    let f = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, b));
    assert!(f.is_ok(), "read /dev/urandom: {f:?}");
}

/// Fails with a clear message when the kernel ignores writes to /dev/kmsg
/// (`kernel.printk_devkmsg = off`).
pub fn check_writable() {
    let mode = std::fs::read_to_string("/proc/sys/kernel/printk_devkmsg").unwrap_or_default();
    assert_ne!(mode.trim(), "off", "kernel.printk_devkmsg is off: writes to /dev/kmsg are dropped");
}

/// Writes each line as its own kernel-log message (user facility, level
/// debug, so nothing reaches the console). One open per line: the kernel
/// rate-limits each open file to 10 messages per 5 s.
pub fn write_lines<S: AsRef<str>>(lines: &[S]) {
    for l in lines {
        let mut f = std::fs::OpenOptions::new().write(true).open("/dev/kmsg").expect("open /dev/kmsg for writing");
        let msg = format!("<15>{}\n", l.as_ref());
        f.write_all(msg.as_bytes()).unwrap_or_else(|e| panic!("write to /dev/kmsg: {e}: {msg:?}"));
    }
}

/// A kernel WARNING report of function `fn_NAME` in `drivers/TAG/NAME.c`,
/// as the kernel logs one (modern `<TASK>` call trace).
pub fn warning_report(tag: &str, name: &str) -> Vec<String> {
    vec![
        format!("WARNING: CPU: 0 PID: 7 at drivers/{tag}/{name}.c:1 fn_{name}+0x1/0x2"),
        "CPU: 0 PID: 7 Comm: kworker Not tainted 6.18.44 #1".into(),
        "Call Trace:".into(),
        " <TASK>".into(),
        format!(" fn_{name}+0x1/0x2"),
        " worker_thread+0x1/0x2".into(),
        " </TASK>".into(),
        format!("---[ end trace {tag} ]---"),
    ]
}

/// As [`write_lines`], holding [`WRITER`].
pub fn write_report<S: AsRef<str>>(lines: &[S]) {
    let _g = WRITER.lock().unwrap_or_else(|e| e.into_inner());
    write_lines(lines);
}

/// A probe that runs until stopped; its stderr goes to a log file.
pub struct Probe {
    exe: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Probe {
    /// A probe `exe args...`, logging to `log` (appended across restarts).
    pub fn new(exe: PathBuf, args: &[&str], log: &Path) -> Probe {
        Probe { exe, args: args.iter().map(|s| s.to_string()).collect(), log: log.into(), child: None }
    }

    /// Starts it.
    pub fn start(&mut self) -> &mut Self {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("probe log");
        let child = Command::new(&self.exe)
            .args(&self.args)
            .env("RUST_LOG", std::env::var("TELEM_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.exe.display()));
        self.child = Some(child);
        self
    }

    /// Sends `sig`.
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as libc::pid_t, sig) };
        }
    }

    /// Sends `sig` and waits up to 20 s for the exit; returns its status.
    pub fn stop_with(&mut self, sig: i32) -> Option<std::process::ExitStatus> {
        self.signal(sig);
        let mut c = self.child.take()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
