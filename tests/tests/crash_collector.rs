//! The whole crash path with real parts: `telemctl crash install` writes
//! core_pattern, a real program crashes, the kernel pipes its core to
//! crashprobe, crashprobe sends the record to the real collector, and the
//! collector journals it; `telemctl crash uninstall` restores the kernel's
//! settings (a guard restores them too if the test fails).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::collector::Collector;

const STATE: &str = "/run/telemetrics/crashprobe.state";
const SYSCTLS: [&str; 2] = ["/proc/sys/kernel/core_pattern", "/proc/sys/kernel/core_pipe_limit"];

struct KernelGuard(Vec<(&'static str, String)>);

impl Drop for KernelGuard {
    fn drop(&mut self) {
        for (p, v) in &self.0 {
            if let Err(e) = std::fs::write(p, v) {
                eprintln!("FAILED to restore {p}: {e}");
            }
        }
        let _ = std::fs::remove_file(STATE);
    }
}

fn crash_program(dir: &Path) -> std::path::PathBuf {
    let src = dir.join("boom.c");
    std::fs::write(&src, "int *volatile p;\nint main(void) { return *p; }\n").unwrap();
    let exe = dir.join("boom");
    let o = Command::new("gcc").args(["-O0", "-g", "-o"]).arg(&exe).arg(&src).output().expect("gcc");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    exe
}

#[test]
fn telemctl_crash_install_delivers_crashes_to_the_collector() {
    if !e2e::require_root("telemctl_crash_install_delivers_crashes_to_the_collector") {
        return;
    }
    assert!(!Path::new(STATE).exists(), "{STATE} exists: a real install is active; not touching it");
    let guard = KernelGuard(SYSCTLS.iter().map(|p| (*p, std::fs::read_to_string(p).unwrap())).collect());
    let tmp = tempfile::Builder::new().prefix("cc").tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // Short paths: core_pattern holds at most 127 bytes.
    let mut c = Collector::in_dir(tmp.path(), None, &format!("crash_third_party=unwind\ncrash_system_prefixes={}/\n", tmp.path().display()));
    c.start();
    let telemctl = e2e::bin("telemctl");
    let crashprobe = e2e::bin("crashprobe");
    let out = Command::new(&telemctl).arg("-f").arg(&c.conf).args(["crash", "install", "--exe"]).arg(&crashprobe).output().unwrap();
    assert!(out.status.success(), "install: {}", String::from_utf8_lossy(&out.stderr));
    let pattern = std::fs::read_to_string(SYSCTLS[0]).unwrap();
    assert!(pattern.starts_with(&format!("|{}", crashprobe.display())), "{pattern}");
    assert!(pattern.contains(&format!("-c {}", c.conf.display())), "{pattern}");
    assert_eq!(std::fs::read_to_string(SYSCTLS[1]).unwrap().trim(), "16");

    let exe = crash_program(tmp.path());
    let mut cmd = Command::new(&exe);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: setrlimit is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let r = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
            libc::setrlimit(libc::RLIMIT_CORE, &r);
            Ok(())
        });
    }
    let st = cmd.status().unwrap();
    assert_eq!(st.signal(), Some(11), "{st}");

    let deadline = Instant::now() + Duration::from_secs(30);
    let entry = loop {
        let j = c.journal(&["-c", "org.clearlinux/crash/*"]);
        if let Some(e) = j.into_iter().next() {
            break e;
        }
        assert!(Instant::now() < deadline, "no crash record journaled; collector log:\n{}", c.log());
        std::thread::sleep(Duration::from_millis(200));
    };
    let class = entry["class"].as_str().unwrap_or_default().to_string();
    assert!(class.starts_with("org.clearlinux/crash/"), "{entry}");

    let out = Command::new(&telemctl).arg("-f").arg(&c.conf).args(["crash", "uninstall"]).output().unwrap();
    assert!(out.status.success(), "uninstall: {}", String::from_utf8_lossy(&out.stderr));
    for (p, v) in &guard.0 {
        assert_eq!(&std::fs::read_to_string(p).unwrap(), v, "{p} restored");
    }
    assert!(!Path::new(STATE).exists());
}
