//! The black box end to end, every part real: the collector records while
//! eventprobe (eBPF) feeds it every exec and exit, crashprobe (the real
//! `core_pattern`) and klogscanner (`/dev/kmsg`) send their records; an
//! operator runs commands from a pseudo-terminal (`script`); the collector
//! is killed and restarted in the middle; the JSON export must hold it all,
//! in time order, with the crash linked to its record.
//!
//! Changes the machine-wide core_pattern (restored by a guard, whatever
//! happens); a test binary of its own so no other test of this crate runs
//! meanwhile. Root only; in CI it must run.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::collector::Collector;
use e2e::kernel::{dumps_core, start_eventprobe, SysctlGuard, CORE_PATTERN, CORE_PIPE_LIMIT};
use e2e::kmsg::{self, tag, Probe};
use e2e::{bin, require_root};
use serde_json::Value;

const CRASH_C: &str = r#"
__attribute__((noinline)) void bb_inner(volatile int *p) { *p = 1; }
__attribute__((noinline)) void bb_outer(volatile int *p) { bb_inner(p); __asm__ volatile(""); }
int main(void) { bb_outer(0); return 0; }
"#;

fn export_json(c: &Collector, id: &str) -> Vec<Value> {
    let file = c.dir.join(format!("export-{id}.jsonl"));
    let _ = std::fs::remove_file(&file);
    let out = c.telemctl(&["blackbox", "export", id, "--json", file.to_str().unwrap()]);
    assert!(out.status.success(), "export failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&file).expect("read export");
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}"))).collect()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn is_exec_of(e: &Value, arg: &str) -> bool {
    e["kind"] == "exec" && e["argv"].as_array().is_some_and(|a| a.iter().any(|x| x.as_str() == Some(arg)))
}

#[test]
fn a_recording_holds_commands_exits_a_crash_and_a_kernel_warning_in_time_order() {
    if !require_root("a_recording_holds_commands_exits_a_crash_and_a_kernel_warning_in_time_order") {
        return;
    }
    kmsg::check_writable();
    let dir = tempfile::Builder::new().prefix("bbe2e").tempdir_in("/tmp").expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // The crasher lives in /tmp: unwind it although it is a third party's.
    let mut c = Collector::in_dir(dir.path(), None, "klog_facilities = kern,user\ncrash_third_party = unwind\n");
    c.start();
    let conf = c.conf.to_string_lossy().into_owned();

    // eventprobe feeding the collector's blackbox socket (found through the
    // configuration's state_dir, as installed).
    let _events = start_eventprobe(&c.socket, &["-f", &conf]);
    let mut klog = Probe::new(bin("klogscanner"), &["-f", &conf], &c.dir.join("klogscanner.log"));
    klog.start();

    let src = dir.path().join("bb.c");
    std::fs::write(&src, CRASH_C).expect("write bb.c");
    let crasher = dir.path().join("bb-crash");
    assert!(Command::new("gcc").args(["-O1", "-g", "-o"]).arg(&crasher).arg(&src).status().expect("gcc").success());
    let guard = SysctlGuard::save(&[CORE_PATTERN, CORE_PIPE_LIMIT]);
    let pattern = format!("|{} -P %P -F %F -d %d -t %t -s %s -f {}", bin("crashprobe").display(), conf);
    assert!(pattern.len() <= 127, "core_pattern too long: {pattern}");
    guard.set(CORE_PATTERN, &pattern);

    let out = c.telemctl(&["blackbox", "start", "--label", "e2e incident"]);
    assert!(out.status.success(), "start: {}", String::from_utf8_lossy(&out.stderr));
    // "recording ID"
    let id = String::from_utf8_lossy(&out.stdout).split_whitespace().nth(1).map(String::from);
    let t = tag();
    let st: Value =
        serde_json::from_slice(&c.telemctl(&["blackbox", "status", "--json"]).stdout).expect("status --json");
    assert_eq!(st["feeds"], 1, "eventprobe is connected to the blackbox socket: {st}");
    let id = id.or_else(|| st["id"].as_str().map(String::from)).expect("the recording's id");
    // eventprobe turns the kernel side on when the collector tells it:
    // wait until a command run now is in the recording.
    wait_for("eventprobe to record execs", Duration::from_secs(15), || {
        let st = Command::new("/bin/true").arg(format!("{t}-ready")).status().expect("true");
        assert!(st.success());
        std::thread::sleep(Duration::from_millis(300));
        export_json(&c, &id).iter().any(|e| is_exec_of(e, &format!("{t}-ready")))
    });

    // An operator at a terminal: three commands, one with an address to scrub.
    let script = format!("echo {t}-first alice@example.org; /bin/true {t}-second; sh -c 'exit 3' {t}-third; sleep 0.1");
    let st =
        Command::new("script").args(["-qec", &script, "/dev/null"]).stdout(Stdio::null()).status().expect("script");
    assert!(st.success(), "{st:?}");

    // A crash, through crashprobe.
    let mut cmd = Command::new(&crasher);
    cmd.arg(format!("{t}-crash")).stdout(Stdio::null()).stderr(Stdio::null());
    let mut crashing = dumps_core(&mut cmd, None).spawn().expect("spawn crasher");
    let crash_pid = crashing.id();
    let st = crashing.wait().expect("wait crasher");
    assert_eq!(st.signal(), Some(libc::SIGSEGV), "{st:?}");

    // The collector dies and comes back in the middle of the recording.
    wait_for("the crash record", Duration::from_secs(30), || {
        c.journal(&[]).iter().any(|e| e["class"].as_str().is_some_and(|k| k.starts_with("org.clearlinux/crash/")))
    });
    c.kill9();
    // Commands while the collector is down are kept by eventprobe.
    let st = Command::new("/bin/true").arg(format!("{t}-while-down")).status().expect("true");
    assert!(st.success());
    c.start();
    // eventprobe reconnects (every second) and sends what it kept.
    wait_for("eventprobe to send what it kept while the collector was down", Duration::from_secs(15), || {
        export_json(&c, &id).iter().any(|e| is_exec_of(e, &format!("{t}-while-down")))
    });

    // A kernel warning, through klogscanner.
    kmsg::write_report(&kmsg::warning_report(&t, &format!("bbw{}", &t[..4])));
    wait_for("the warning record", Duration::from_secs(30), || {
        c.journal(&["-i"]).iter().any(|e| {
            e["class"] == "org.clearlinux/kernel/warning" && e["payload"].as_str().is_some_and(|p| p.contains(&t))
        })
    });

    let out = c.telemctl(&["blackbox", "stop"]);
    assert!(out.status.success(), "stop: {}", String::from_utf8_lossy(&out.stderr));
    drop(guard);
    klog.stop_with(libc::SIGTERM);

    // `list --json`: one object per line.
    let list = String::from_utf8_lossy(&c.telemctl(&["blackbox", "list", "--json"]).stdout).into_owned();
    let listed = list.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).find(|r| r["id"] == id.as_str());
    let listed = listed.unwrap_or_else(|| panic!("recording {id} not listed: {list}"));
    assert_eq!(listed["recording"], false, "{listed}");
    assert_eq!(listed["label"], "e2e incident", "{listed}");
    let entries = export_json(&c, &id);
    let dump =
        || entries.iter().filter(|e| e.to_string().contains(&t)).map(|e| e.to_string()).collect::<Vec<_>>().join("\n");

    // Time order: wall clock never goes back within the export.
    let walls: Vec<u64> = entries.iter().map(|e| e["wall_ns"].as_u64().expect("wall_ns")).collect();
    assert!(walls.windows(2).all(|w| w[0] <= w[1]), "export not in time order");

    // Each command with its argv, marked as the operator's, scrubbed.
    let first = entries
        .iter()
        .find(|e| is_exec_of(e, &format!("{t}-second")))
        .unwrap_or_else(|| panic!("no /bin/true exec:\n{}", dump()));
    assert_eq!(first["operator"], true, "{first}");
    assert!(first["tty"].as_str().is_some_and(|t| t.starts_with("pts")), "{first}");
    let third = entries
        .iter()
        .find(|e| is_exec_of(e, &format!("{t}-third")))
        .unwrap_or_else(|| panic!("no sh exec:\n{}", dump()));
    let third_pid = third["pid"].as_u64().unwrap();
    let exit = entries
        .iter()
        .find(|e| e["kind"] == "exit" && e["pid"].as_u64() == Some(third_pid))
        .unwrap_or_else(|| panic!("no exit of sh {third_pid}:\n{}", dump()));
    assert_eq!(exit["status"], 3, "{exit}");
    let text = serde_json::to_string(&entries).unwrap();
    assert!(!text.contains("alice@example.org"), "argv not scrubbed");

    // The crash: its exec, its fatal signal or exit by SIGSEGV, and its record, linked by pid.
    let pid = u64::from(crash_pid);
    assert!(
        entries.iter().any(|e| e["kind"] == "exec" && e["pid"].as_u64() == Some(pid)),
        "no exec of the crasher:\n{}",
        dump()
    );
    assert!(
        entries.iter().any(|e| e["pid"].as_u64() == Some(pid)
            && (e["kind"] == "fatal_signal" || (e["kind"] == "exit" && e["signal"] == 11))),
        "no fatal signal of the crasher"
    );
    let rec = entries
        .iter()
        .find(|e| {
            e["kind"] == "record"
                && e["classification"].as_str().is_some_and(|k| k.starts_with("org.clearlinux/crash/"))
        })
        .unwrap_or_else(|| panic!("no crash record in the recording"));
    assert_eq!(rec["pid"].as_u64(), Some(pid), "{rec}");
    assert!(rec["payload"].as_str().is_some_and(|p| p.contains("bb_outer")), "{rec}");
    let journaled = c.journal(&[]);
    assert!(
        journaled.iter().any(|j| j["id"] == rec["record_id"] && j["event"] == rec["event_id"]),
        "the recorded crash is not the journaled record: {rec}"
    );
    // The breadcrumbs: the crash record's payload lists recent activity.
    assert!(rec["payload"].as_str().is_some_and(|p| p.contains("Recent activity:")), "{rec}");

    // The kernel warning's record.
    let records_and_markers = || {
        entries
            .iter()
            .filter(|e| e["kind"] == "record" || e["kind"] == "marker")
            .map(|e| format!("{} {} {}", e["wall_ns"], e["classification"], e["text"]))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        entries.iter().any(|e| e["kind"] == "record"
            && e["classification"] == "org.clearlinux/kernel/warning"
            && e["payload"].as_str().is_some_and(|p| p.contains(&t))),
        "no kernel warning record in the recording:\n{}\njournal: {:?}",
        records_and_markers(),
        c.journal(&[]).iter().map(|j| format!("{} {}", j["time"], j["class"])).collect::<Vec<_>>()
    );
    // Nothing lost over the restart: the command run while it was down, and a marker of the restart.
    assert!(
        entries.iter().any(|e| is_exec_of(e, &format!("{t}-while-down"))),
        "exec while the collector was down lost"
    );
    assert!(!entries.iter().any(|e| e["kind"] == "gap"), "gaps in a quiet recording: {}", dump());
    let seqs: BTreeSet<String> = entries.iter().filter(|e| e["kind"] == "exec").map(|e| e.to_string()).collect();
    assert_eq!(seqs.len(), entries.iter().filter(|e| e["kind"] == "exec").count(), "an exec recorded twice");

    // The same recording as the timeline page, opened in headless Chromium:
    // every event is listed, and the crash's marker opens its backtrace.
    let page = c.dir.join("timeline.html");
    let out = c.telemctl(&["blackbox", "export", &id, "--html", page.to_str().unwrap()]);
    assert!(out.status.success(), "export --html: {}", String::from_utf8_lossy(&out.stderr));
    let mode = std::fs::metadata(&page).expect("the page").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "exports are private");
    if e2e::chromium::find().is_none() {
        assert!(!e2e::in_ci(), "chromium is missing and CI=true: `cargo xtask setup` installs it");
        eprintln!("the page is not opened: chromium not installed (`cargo xtask setup` installs it)");
        return;
    }
    let url = format!("file://{}", page.display());
    let mut b = e2e::chromium::Chromium::launch(1400, 900).expect("launch chromium");
    b.navigate(&url).unwrap();
    b.wait_for("document.documentElement.dataset.ready === '1' && window.timelineReady", Duration::from_secs(30))
        .expect("the page becomes interactive");
    let count = b.eval("document.getElementById('list-count').textContent").unwrap();
    assert_eq!(count.as_str(), Some(format!("({} events in view)", entries.len()).as_str()), "list count");
    b.click_on(".marker.crash[aria-label*=\"crash/unknown\"]").expect("the crash record's marker");
    let shown = b
        .wait_for(
            "!document.getElementById('detail').hidden && document.getElementById('detail-payload').textContent",
            Duration::from_secs(5),
        )
        .expect("clicking the crash marker opens its backtrace");
    assert!(shown.as_str().is_some_and(|p| p.contains("bb_outer")), "{shown}");
    let target = e2e::bin_dir().parent().map(std::path::Path::to_path_buf).expect("target dir");
    let _ = std::fs::write(target.join("blackbox-e2e.png"), b.screenshot().expect("screenshot"));
}
