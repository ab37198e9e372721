//! Every probe, real parts end to end: `telemctl crash install` writes
//! core_pattern, eventprobe is attached, hprobe sends, a real program
//! crashes; crashprobe (through the kernel's pipe) and eventprobe send their
//! records to the real collector, which has a real HTTP sink configured.
//! Not opted in: the sink gets nothing while the journal holds every
//! record. Opted in: the next crash's records reach the sink, the earlier
//! ones stay local (consent is not retroactive). `telemctl crash uninstall`
//! restores the kernel's settings (a guard restores them on failure too).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::collector::Collector;
use e2e::kernel::{dumps_core, start_eventprobe, SysctlGuard, CORE_PATTERN, CORE_PIPE_LIMIT};
use e2e::sink::Sink;

const STATE: &str = "/run/telemetrics/crashprobe.state";
const SYSCTLS: [&str; 2] = [CORE_PATTERN, CORE_PIPE_LIMIT];

fn crash_program(dir: &Path) -> PathBuf {
    let src = dir.join("boom.c");
    std::fs::write(&src, "int *volatile p;\nint main(void) { return *p; }\n").unwrap();
    let exe = dir.join("boom");
    let o = Command::new("gcc").args(["-O0", "-g", "-o"]).arg(&exe).arg(&src).output().expect("gcc");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    exe
}

fn crash(exe: &Path) {
    let mut cmd = Command::new(exe);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let st = dumps_core(&mut cmd, None).status().unwrap();
    assert_eq!(st.signal(), Some(11), "{st}");
}

/// Waits until the journal holds `n` entries of classification `class`
/// (a `/*` prefix allowed); returns them.
fn wait_journal(c: &Collector, class: &str, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let j = c.journal(&["-c", class]);
        if j.len() >= n {
            return j;
        }
        assert!(Instant::now() < deadline, "{n} {class} record(s) not journaled (have {j:?}); log:\n{}", c.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn every_probe_through_the_real_collector_and_consent() {
    if !e2e::require_root("every_probe_through_the_real_collector_and_consent") {
        return;
    }
    assert!(!Path::new(STATE).exists(), "{STATE} exists: a real install is active; not touching it");
    let guard = SysctlGuard::save(&SYSCTLS).and_remove(STATE);
    let sink = Sink::start();
    let tmp = tempfile::Builder::new().prefix("cc").tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // A server is configured, but the machine is not opted in.
    let extra =
        format!("server={}\ncrash_third_party=unwind\ncrash_system_prefixes={}/\n", sink.url(), tmp.path().display());
    let mut c = Collector::in_dir(tmp.path(), None, &extra);
    c.start();
    let telemctl = e2e::bin("telemctl");
    let crashprobe = e2e::bin("crashprobe");
    let out = Command::new(&telemctl)
        .arg("-f")
        .arg(&c.conf)
        .args(["crash", "install", "--exe"])
        .arg(&crashprobe)
        .output()
        .unwrap();
    assert!(out.status.success(), "install: {}", String::from_utf8_lossy(&out.stderr));
    let pattern = std::fs::read_to_string(SYSCTLS[0]).unwrap();
    assert!(pattern.starts_with(&format!("|{}", crashprobe.display())), "{pattern}");
    assert!(pattern.contains(&format!("-f {}", c.conf.display())), "{pattern}");
    assert_eq!(std::fs::read_to_string(SYSCTLS[1]).unwrap().trim(), "16");
    let _events = start_eventprobe(&c.socket, &["--comm", "boom", "--no-exits"]);
    let exe = crash_program(tmp.path());

    // Not opted in: everything journaled, nothing sent.
    let st = Command::new(e2e::bin("hprobe")).arg("--socket").arg(&c.socket).status().unwrap();
    assert!(st.success());
    crash(&exe);
    let crashes = wait_journal(&c, "org.clearlinux/crash/*", 1);
    let fatal = wait_journal(&c, "org.clearlinux/signal/fatal", 1);
    let hello = wait_journal(&c, "org.clearlinux/hello/world", 1);
    for e in crashes.iter().chain(&fatal).chain(&hello) {
        assert_eq!(e["fate"], "local-only: not opted in", "{e}");
    }
    assert_eq!(crashes[0]["event"], fatal[0]["event"], "crashprobe and eventprobe share the event id");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sink.posts().len(), 0, "nothing may leave the machine before opt-in");

    // Opted in: the next crash is delivered; the first stays local.
    let out = Command::new(&telemctl).arg("-f").arg(&c.conf).arg("opt-in").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::thread::sleep(Duration::from_millis(400)); // the collector re-checks opt-in every 200 ms
    crash(&exe);
    let classes = |posts: &[e2e::sink::Post]| -> Vec<String> {
        posts.iter().filter_map(|p| p.decoded.as_ref().ok()).map(|(r, _)| r.classification.to_string()).collect()
    };
    let ok = sink.wait_for(Duration::from_secs(30), |p| {
        let cl = classes(p);
        cl.iter().any(|c| c.starts_with("org.clearlinux/crash/"))
            && cl.iter().any(|c| c == "org.clearlinux/signal/fatal")
    });
    assert!(ok, "second crash not delivered: {:?}; log:\n{}", classes(&sink.posts()), c.log());
    std::thread::sleep(Duration::from_millis(500));
    let cl = classes(&sink.posts());
    assert_eq!(cl.iter().filter(|c| c.starts_with("org.clearlinux/crash/")).count(), 1, "{cl:?}");
    assert!(!cl.iter().any(|c| c.contains("hello/world")), "records from before the opt-in stay local: {cl:?}");

    let out = Command::new(&telemctl).arg("-f").arg(&c.conf).args(["crash", "uninstall"]).output().unwrap();
    assert!(out.status.success(), "uninstall: {}", String::from_utf8_lossy(&out.stderr));
    for (p, v) in guard.saved() {
        assert_eq!(&std::fs::read_to_string(p).unwrap(), v, "{p} restored");
    }
    assert!(!Path::new(STATE).exists());
}
