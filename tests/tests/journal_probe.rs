//! journalprobe end to end: real `.journal` files made by systemd's own
//! tools (Debian's `systemd-journal-remote` turns a journal export stream
//! into a journal file), read through libsystemd, records checked in a real
//! collector's journal; the cursor makes a second run send nothing twice.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::collector::Collector;
use e2e::kmsg::{tag, Probe};
use e2e::{bin, in_ci};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

fn journal_remote() -> Option<PathBuf> {
    let found = ["/lib/systemd/systemd-journal-remote", "/usr/lib/systemd/systemd-journal-remote"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        assert!(!in_ci(), "systemd-journal-remote is missing (cargo xtask setup installs it) and CI=true");
        eprintln!("skipping: systemd-journal-remote is missing (apt-get install systemd-journal-remote)");
    }
    found
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("boot id").trim().replace('-', "")
}

/// Writes `entries` (field lists) as a journal export stream through
/// systemd-journal-remote into `out` (a `.journal` file), timestamps from
/// `start_usec` on.
fn make_journal(remote: &Path, out: &Path, start_usec: u64, entries: &[Vec<(&str, String)>]) {
    let mut stream = String::new();
    for (i, e) in entries.iter().enumerate() {
        stream.push_str(&format!(
            "__REALTIME_TIMESTAMP={}\n__MONOTONIC_TIMESTAMP={}\n",
            start_usec + i as u64,
            monotonic_usec() + i as u64
        ));
        if !e.iter().any(|(k, _)| *k == "_BOOT_ID") {
            stream.push_str(&format!("_BOOT_ID={}\n", boot_id()));
        }
        for (k, v) in e {
            stream.push_str(&format!("{k}={v}\n"));
        }
        stream.push('\n');
    }
    let mut child = Command::new(remote)
        .arg("-o")
        .arg(out)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run systemd-journal-remote");
    child.stdin.take().expect("stdin").write_all(stream.as_bytes()).expect("write export stream");
    let o = child.wait_with_output().expect("systemd-journal-remote");
    assert!(o.status.success(), "systemd-journal-remote: {}", String::from_utf8_lossy(&o.stderr));
}

/// CLOCK_MONOTONIC in microseconds, as journald stamps entries of this boot.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

fn now_usec() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

fn unit_exit(t: &str, unit: &str, code: &str, status: &str, text: &str) -> Vec<(&'static str, String)> {
    vec![
        ("MESSAGE", format!("{t}-{unit}.service: Main process exited, code={code}, status={status}/{text}")),
        ("UNIT", format!("{t}-{unit}.service")),
        ("EXIT_CODE", code.into()),
        ("EXIT_STATUS", status.into()),
        ("PRIORITY", "5".into()),
        ("SYSLOG_IDENTIFIER", "systemd".into()),
    ]
}

/// The first journal: three failures, two err-priority lines, and entries
/// that must not give records.
/// One journal entry: its fields.
type Entry = Vec<(&'static str, String)>;

fn first_journal(t: &str) -> (Vec<Entry>, Vec<String>, Vec<String>) {
    let err = |p: &str, m: &str| vec![("MESSAGE", format!("{t} {m}")), ("PRIORITY", p.to_string())];
    let mut other_boot = unit_exit(t, "elsewhere", "exited", "1", "FAILURE");
    other_boot.push(("_BOOT_ID", "0123456789abcdef0123456789abcdef".into()));
    let entries = vec![
        vec![("MESSAGE", format!("{t} started")), ("PRIORITY", "6".into())],
        unit_exit(t, "failing", "exited", "1", "FAILURE"),
        unit_exit(t, "fine", "exited", "0", "SUCCESS"),
        unit_exit(t, "killed", "killed", "9", "KILL"),
        unit_exit(t, "stopped", "killed", "15", "TERM"),
        // The collector scrubs journalprobe's payloads as every probe's.
        {
            let mut e = unit_exit(t, "dumped", "dumped", "11", "SEGV");
            e[0].1.push_str(" (owner alice@example.org)");
            e
        },
        err("3", "disk error on sda"),
        err("2", "critical temperature"),
        other_boot,
    ];
    let failures = vec![
        format!("{t}-failing.service: Main process exited, code=exited, status=1/FAILURE\n"),
        format!("{t}-killed.service: Main process exited, code=killed, status=9/KILL\n"),
        format!("{t}-dumped.service: Main process exited, code=dumped, status=11/SEGV (owner <email>)\n"),
    ];
    let errors = vec![format!("{t} disk error on sda\n"), format!("{t} critical temperature\n")];
    (entries, failures, errors)
}

fn tagged(c: &Collector, t: &str) -> Vec<Value> {
    c.journal(&["-i"]).into_iter().filter(|e| e["payload"].as_str().is_some_and(|p| p.contains(t))).collect()
}

fn payloads(j: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = j.iter().map(|e| e["payload"].as_str().unwrap_or("").to_string()).collect();
    v.sort();
    v
}

fn journalprobe(c: &Collector, dir: &Path) -> (bool, String) {
    let o = Command::new(bin("journalprobe"))
        .arg("-f")
        .arg(&c.conf)
        .arg("--directory")
        .arg(dir)
        .output()
        .expect("run journalprobe");
    (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn failed_units_give_records_and_a_second_run_resumes_at_the_cursor() {
    let Some(remote) = journal_remote() else { return };
    let mut c = Collector::new(None, "");
    c.start();
    let t = tag();
    let dir = c.dir.join("journal-in");
    std::fs::create_dir_all(&dir).unwrap();
    let (entries, failures, _) = first_journal(&t);
    make_journal(&remote, &dir.join("first.journal"), now_usec(), &entries);

    let (ok, log) = journalprobe(&c, &dir);
    assert!(ok, "{log}");
    let j = tagged(&c, &t);
    let mut want = failures.clone();
    want.sort();
    assert_eq!(payloads(&j), want, "{log}");
    for e in &j {
        assert_eq!(e["class"], "org.clearlinux/journal/error");
        assert_eq!(e["severity"], 2);
    }

    // Again: nothing new, nothing sent twice.
    let (ok, log) = journalprobe(&c, &dir);
    assert!(ok, "{log}");
    assert_eq!(tagged(&c, &t).len(), 3, "{log}");

    // A newer file with one more failure: only that one is sent.
    make_journal(
        &remote,
        &dir.join("second.journal"),
        now_usec() + 1_000_000,
        &[unit_exit(&t, "later", "exited", "2", "INVALIDARGUMENT")],
    );
    let (ok, log) = journalprobe(&c, &dir);
    assert!(ok, "{log}");
    let mut want = failures;
    want.push(format!("{t}-later.service: Main process exited, code=exited, status=2/INVALIDARGUMENT\n"));
    want.sort();
    assert_eq!(payloads(&tagged(&c, &t)), want, "{log}");
}

#[test]
fn without_privacy_filters_error_priority_entries_are_sent_too() {
    let Some(remote) = journal_remote() else { return };
    let mut c = Collector::new(None, "");
    c.start();
    c.privacy_filters_off();
    let t = tag();
    let dir = c.dir.join("journal-in");
    std::fs::create_dir_all(&dir).unwrap();
    let (entries, failures, errors) = first_journal(&t);
    let file = dir.join("first.journal");
    make_journal(&remote, &file, now_usec(), &entries);
    // --file: the files named, not a directory.
    let o = Command::new(bin("journalprobe")).arg("-f").arg(&c.conf).arg("--file").arg(&file).output().unwrap();
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{log}");
    // Privacy filters off: not scrubbed either.
    let mut want: Vec<String> =
        failures.into_iter().chain(errors).map(|p| p.replace("<email>", "alice@example.org")).collect();
    want.sort();
    assert_eq!(payloads(&tagged(&c, &t)), want, "{log}");
}

#[test]
fn follow_mode_sends_new_entries_and_stops_on_sigterm() {
    let Some(remote) = journal_remote() else { return };
    let mut c = Collector::new(None, "");
    c.start();
    let t = tag();
    let dir = c.dir.join("journal-in");
    std::fs::create_dir_all(&dir).unwrap();
    make_journal(&remote, &dir.join("first.journal"), now_usec(), &[unit_exit(&t, "one", "exited", "1", "FAILURE")]);
    let conf = c.conf.to_string_lossy().into_owned();
    let d = dir.to_string_lossy().into_owned();
    let mut probe = Probe::new(bin("journalprobe"), &["-f", &conf, "-t", "--directory", &d], &c.dir.join("jp.log"));
    probe.start();
    let wait = |n: usize| {
        let deadline = Instant::now() + WAIT;
        loop {
            let j = tagged(&c, &t);
            if j.len() >= n || Instant::now() >= deadline {
                return j;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert_eq!(wait(1).len(), 1, "{}", probe.log());
    make_journal(
        &remote,
        &dir.join("second.journal"),
        now_usec() + 1_000_000,
        &[unit_exit(&t, "two", "dumped", "6", "ABRT")],
    );
    let j = wait(2);
    assert_eq!(j.len(), 2, "{}", probe.log());
    assert!(payloads(&j)[1].starts_with(&format!("{t}-two.service")), "{j:#?}");
    assert_eq!(probe.stop_with(libc::SIGTERM).map(|s| s.success()), Some(true), "{}", probe.log());
}
