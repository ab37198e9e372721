//! eventprobe beside crashprobe on the same real crash: both records carry
//! the same event id (`telemetry::crash_id::crash_event_id`), and, because the kernel
//! keeps the crashing process alive while crashprobe reads its core from
//! the core_pattern pipe, eventprobe reads the process's mappings in time
//! and symbolizes its frames (the deployment's answer to the race the
//! other eventprobe tests hold off with ptrace).
//!
//! Changes the machine-wide core_pattern (restored by a guard, whatever
//! happens); a test binary of its own so no other test of this crate runs
//! meanwhile. Root only; in CI it must run.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use e2e::kernel::{dumps_core, start_eventprobe, SysctlGuard, CORE_PATTERN, CORE_PIPE_LIMIT};
use e2e::receiver::{Behaviour, Receiver};
use e2e::{bin, require_root};

const CRASH_C: &str = r#"
__attribute__((noinline)) void both_inner(volatile int *p) { *p = 1; }
__attribute__((noinline)) void both_outer(volatile int *p) { both_inner(p); __asm__ volatile(""); }
int main(void) { both_outer(0); return 0; }
"#;

#[test]
fn same_crash_same_event_id_as_crashprobe() {
    if !require_root("same_crash_same_event_id_as_crashprobe") {
        return;
    }
    let crashprobe = bin("crashprobe");

    let dir = tempfile::Builder::new().prefix("evcr").tempdir_in("/tmp").expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let rx = Receiver::start_at(&dir.path().join("telem.sock"), Behaviour::default());
    std::fs::set_permissions(&rx.path, std::fs::Permissions::from_mode(0o666)).expect("chmod socket");
    let config = dir.path().join("c.conf");
    std::fs::write(
        &config,
        format!("[settings]\nsocket_path={}\nstate_dir={}\n", rx.path.display(), dir.path().join("state").display()),
    )
    .expect("write config");
    let src = dir.path().join("both.c");
    std::fs::write(&src, CRASH_C).expect("write both.c");
    let exe = dir.path().join("ev-both");
    assert!(Command::new("gcc").args(["-O1", "-g", "-o"]).arg(&exe).arg(&src).status().expect("gcc").success());

    let _probe = start_eventprobe(&rx.path, &["--comm", "ev-both"]);

    let guard = SysctlGuard::save(&[CORE_PATTERN, CORE_PIPE_LIMIT]);
    let pattern = format!("|{} -P %P -F %F -d %d -t %t -s %s -f {}", crashprobe.display(), config.display());
    assert!(pattern.len() <= 127, "core_pattern too long: {pattern}");
    guard.set(CORE_PATTERN, &pattern);

    let mut c = Command::new(&exe);
    c.stdout(Stdio::null()).stderr(Stdio::null());
    let mut crashing = dumps_core(&mut c, None).spawn().expect("spawn ev-both");
    let pid = crashing.id();
    let st = crashing.wait().expect("wait ev-both");
    assert_eq!(st.signal(), Some(libc::SIGSEGV), "{st:?}");
    assert!(st.core_dumped(), "ev-both was not dumped to crashprobe: {st:?}");

    let ours = rx.wait_record("signal/fatal", |r| r.record.classification.as_str() == "org.clearlinux/signal/fatal");
    let theirs =
        rx.wait_record("crashprobe", |r| r.record.classification.as_str().starts_with("org.clearlinux/crash/"));
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
