//! klogscanner end to end: lines written to the real `/dev/kmsg` (as root;
//! they carry the user facility, so the test configuration reads
//! `klog_facilities = kern,user`), a real collector, records read back from
//! its journal. Every line a test writes carries a random tag, and only
//! records with that tag are looked at: the kernel log is shared.

use std::time::{Duration, Instant};

use e2e::collector::Collector;
use e2e::kmsg::{self, letters, tag, Probe};
use e2e::{bin, require_root};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// One test of this file at a time: the overrun test overwrites the whole
/// kernel log, and the others' reports must not interleave.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn collector(extra: &str) -> Collector {
    let mut c = Collector::new(None, &format!("klog_facilities = kern,user\n{extra}"));
    c.start();
    c
}

fn scanner(c: &Collector) -> Probe {
    let conf = c.conf.to_string_lossy().into_owned();
    Probe::new(bin("klogscanner"), &["-f", &conf], &c.dir.join("klogscanner.log"))
}

/// The journal entries (with payloads) whose payload contains `tag`.
fn tagged(c: &Collector, tag: &str) -> Vec<Value> {
    c.journal(&["-i"]).into_iter().filter(|e| e["payload"].as_str().is_some_and(|p| p.contains(tag))).collect()
}

/// Waits until `pred` holds for the tagged entries (or the timeout).
fn wait_tagged(c: &Collector, tag: &str, timeout: Duration, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let j = tagged(c, tag);
        if pred(&j) || Instant::now() >= deadline {
            return j;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn payload(e: &Value) -> &str {
    e["payload"].as_str().unwrap_or("")
}

/// The reference table (the original's patterns, in its order, with the
/// `org.clearlinux/` prefix its two regular expressions lacked): a start
/// line for each, written by hand, and the record it must give.
fn table(t: &str) -> Vec<(String, &'static str, u64)> {
    let w = "org.clearlinux/kernel/warning";
    let b = "org.clearlinux/kernel/bug";
    vec![
        (format!("NETDEV WATCHDOG: eth0 (e1000): transmit queue 0 timed out {t}a"), w, 2),
        (format!("sysctl table check failed: /kernel/{t}b .1.2 Unknown sysctl binary path"), w, 2),
        (format!("IRQ handler type mismatch for IRQ 11 {t}c"), w, 2),
        (format!("ALSA sound/core/pcm_lib.c:1234: BUG? ({t}d)"), b, 2),
        (format!("irq 16: nobody cared (try booting with the \"irqpoll\" option) {t}e"), w, 2),
        (format!("WARNING: CPU: 0 PID: 1 at drivers/{t}f.c:10 probe+0x1/0x2"), w, 2),
        (format!("general protection fault: 0000 [#1] SMP {t}g"), b, 4),
        (format!("BUG: unable to handle kernel NULL pointer dereference at 0000000000000008 {t}h"), b, 4),
        (format!("BUG: scheduling while atomic: {t}i/1/0x00000002"), b, 4),
        (format!("kernel BUG at mm/{t}j.c:100!"), b, 4),
        (format!("general protection fault:{t}k"), b, 4),
        (format!("do_IRQ: stack overflow: 1234 {t}l"), "org.clearlinux/kernel/stackoverflow", 4),
        (format!("RTNL: assertion failed at net/core/{t}m.c (10)"), w, 2),
        (format!("Eeek! page_mapcount(page) went negative! (-1) {t}n"), b, 4),
        (format!("near stack overflow (cur:ffff8800 sp:ffff8801) {t}o"), b, 4),
        (format!("double fault: 0000 [#1] SMP {t}p"), b, 4),
        (format!("Badness at kernel/{t}q.c:10"), b, 4),
        (format!("list_del corruption. next->prev should be ffff8800, but was ffff8801 {t}r"), w, 2),
        (format!("list_add corruption. prev->next should be next (ffff8800) {t}s"), w, 2),
        (format!("ACPI Error: {t}t AE_NOT_FOUND, While resolving a named reference"), w, 2),
        (format!("Kernel panic - not syncing: {t}u Attempted to kill init!"), "org.clearlinux/kernel/panic", 4),
    ]
}

#[test]
fn every_pattern_of_the_table_gives_its_record() {
    if !require_root("every_pattern_of_the_table_gives_its_record") {
        return;
    }
    kmsg::check_writable();
    let _serial = serial();
    let c = collector("");
    let mut probe = scanner(&c);
    probe.start();
    let t = tag();
    let rows = table(&t);
    for (line, _, _) in &rows {
        kmsg::write_report(&[line.clone(), format!("---[ end trace {t} ]---")]);
    }
    let hw = [
        "[Hardware Error]: event severity: fatal".to_string(),
        format!("[Hardware Error]:  Error 0, type: fatal {t}v"),
        "[Hardware Error]:   section_type: memory error".to_string(),
    ];
    let mut bert = vec!["BERT: Error records from previous boot:".to_string()];
    bert.extend(hw.iter().cloned());
    bert.push(format!("after the block {t}"));
    kmsg::write_report(&bert);

    let want = rows.len() + 1;
    let j = wait_tagged(&c, &t, WAIT, |j| j.len() >= want);
    assert_eq!(j.len(), want, "records: {j:#?}\nklogscanner log:\n{}", probe.log());
    for (line, class, sev) in &rows {
        let hits: Vec<&Value> = j.iter().filter(|e| payload(e).contains(&format!("Reason: {line}\n"))).collect();
        assert_eq!(hits.len(), 1, "one record for {line:?}: {j:#?}");
        assert_eq!(hits[0]["class"], *class, "{line}");
        assert_eq!(hits[0]["severity"], *sev, "{line}");
        assert_eq!(payload(hits[0]), format!("Crash Report:\nReason: {line}\n"), "{line}");
    }
    let b: Vec<&Value> = j.iter().filter(|e| e["class"] == "org.clearlinux/bert/debug").collect();
    assert_eq!(b.len(), 1, "{j:#?}");
    assert_eq!(b[0]["severity"], 2);
    assert_eq!(payload(b[0]), format!("{}\n", hw.join("\n")));
    assert_eq!(probe.stop_with(libc::SIGTERM).map(|s| s.success()), Some(true), "{}", probe.log());
}

#[test]
fn multi_line_reports_modern_and_older_call_traces() {
    if !require_root("multi_line_reports_modern_and_older_call_traces") {
        return;
    }
    kmsg::check_writable();
    let _serial = serial();
    let c = collector("");
    let mut probe = scanner(&c);
    probe.start();
    let t = tag();
    let modern: Vec<String> = [
        "------------[ cut here ]------------",
        &format!("WARNING: CPU: 1 PID: 4242 at drivers/gpu/{t}.c:321 tagged_probe+0x1c/0x40 [tagmod]"),
        "Modules linked in: tagmod(O+) xfs libcrc32c",
        "CPU: 1 UID: 0 PID: 4242 Comm: modprobe Tainted: G           O       6.12.9-amd64 #1 PREEMPT(voluntary)",
        "Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.3 04/01/2014",
        "RIP: 0010:tagged_probe+0x1c/0x40 [tagmod]",
        "Code: 90 90 90 90 0f 0b c3 cc cc cc cc",
        "RSP: 0018:ffffb4a1c06dfc38 EFLAGS: 00010246",
        "RAX: 0000000000000000 RBX: ffff8a0e4258f3a0 RCX: 0000000000000000",
        "Call Trace:",
        " <TASK>",
        " ? __warn+0x7d/0x130",
        " ? tagged_probe+0x1c/0x40 [tagmod]",
        " tagged_probe+0x1c/0x40 [tagmod]",
        " do_one_initcall+0x5b/0x320",
        " do_init_module+0x60/0x240",
        "RIP: 0033:0x7f0c6e6ee719",
        "RSP: 002b:00007ffd42f5e7e8 EFLAGS: 00000246 ORIG_RAX: 0000000000000139",
        " </TASK>",
        "---[ end trace 0000000000000000 ]---",
    ]
    .map(String::from)
    .to_vec();
    let older: Vec<String> = [
        &format!("BUG: unable to handle kernel NULL pointer dereference at 0000000000000008 {t}"),
        "IP: [<ffffffffa0012345>] tagged_open+0x15/0x30 [tagold]",
        "PGD 7a0e9067 PUD 7a0ea067 PMD 0",
        "Oops: 0000 [#1] SMP",
        "Modules linked in: tagold(OE) ext4 jbd2",
        "CPU: 0 PID: 2345 Comm: cat Tainted: P           OE  3.19.0-18-generic #18-Ubuntu",
        "RIP: 0010:[<ffffffffa0012345>]  [<ffffffffa0012345>] tagged_open+0x15/0x30 [tagold]",
        "RSP: 0018:ffff88007a0f7d18  EFLAGS: 00010292",
        "RAX: 0000000000000000 RBX: ffff88007b123400 RCX: 0000000000000000",
        "Stack:",
        " ffff88007a0f7d48 ffffffff811e2a1f ffff88007b123400 ffff880036a1c000",
        "Call Trace:",
        " [<ffffffffa0012345>] tagged_open+0x15/0x30 [tagold]",
        " [<ffffffff811e2a1f>] chrdev_open+0x9f/0x1d0",
        " [<ffffffff811dba97>] ? do_dentry_open+0x1f7/0x330",
        " [<ffffffff811dbd1a>] vfs_open+0x5a/0x70",
        "Code: 48 8b 47 08 c3 0f 1f 00",
        "RIP  [<ffffffffa0012345>] tagged_open+0x15/0x30 [tagold]",
        " RSP <ffff88007a0f7d18>",
        "CR2: 0000000000000008",
        "---[ end trace 4f2a9cf0c2d5ef81 ]---",
    ]
    .map(String::from)
    .to_vec();
    let panic: Vec<String> = [
        &format!("Kernel panic - not syncing: {t} Attempted to kill init! exitcode=0x00000009"),
        "CPU: 0 PID: 1 Comm: init Not tainted 6.18.44 #1",
        "Call Trace:",
        " <TASK>",
        " dump_stack_lvl+0x5d/0x80",
        " panic+0x118/0x2f0",
        " do_exit+0x9a5/0xb00",
        " </TASK>",
        "Kernel Offset: disabled",
        &format!("---[ end Kernel panic - not syncing: {t} Attempted to kill init! exitcode=0x00000009 ]---"),
    ]
    .map(String::from)
    .to_vec();
    for r in [&modern, &older, &panic] {
        kmsg::write_report(r);
    }
    let j = wait_tagged(&c, &t, WAIT, |j| j.len() >= 3);
    assert_eq!(j.len(), 3, "{j:#?}\n{}", probe.log());
    let by = |class: &str| {
        j.iter()
            .find(|e| e["class"] == class)
            .map(|e| payload(e).to_string())
            .unwrap_or_else(|| panic!("{class}: {j:#?}"))
    };
    assert_eq!(
        by("org.clearlinux/kernel/warning"),
        format!(
            "Crash Report:\nReason: {}\nKernel Version : 6.12.9-amd64\nTainted : G           O\n\
             Modules : tagmod(O+) xfs libcrc32c\nBacktrace :\nRegister RIP: Non-zero\nRegister RSP: Non-zero\n\
             Register EFLAGS: Non-zero\nRegister RAX: Zero\nRegister RBX: Non-zero\nRegister RCX: Zero\n\
             #1 tagged_probe - [tagmod]\n#2 do_one_initcall - [kernel]\n#3 do_init_module - [kernel]\n",
            modern[1]
        )
    );
    assert_eq!(
        by("org.clearlinux/kernel/bug"),
        format!(
            "Crash Report:\nReason: {}\nKernel Version : 3.19.0-18-generic\nTainted : P           OE\n\
             Modules : tagold(OE) ext4 jbd2\nBacktrace :\nRegister RIP: Non-zero\nRegister RSP: Non-zero\n\
             Register EFLAGS: Non-zero\nRegister RAX: Zero\nRegister RBX: Non-zero\nRegister RCX: Zero\n\
             #1 tagged_open - [tagold]\n#2 chrdev_open - [kernel]\n#3 vfs_open - [kernel]\n",
            older[0]
        )
    );
    assert_eq!(
        by("org.clearlinux/kernel/panic"),
        format!(
            "Crash Report:\nReason: {}\nKernel Version : 6.18.44\nTainted : Not tainted\nBacktrace :\n\
             #1 dump_stack_lvl - [kernel]\n#2 panic - [kernel]\n#3 do_exit - [kernel]\n",
            panic[0]
        )
    );

    // Without privacy filters the register values themselves are sent.
    c.privacy_filters_off();
    let t2 = tag();
    let mut second = modern.clone();
    second[1] = second[1].replace(&t, &t2);
    kmsg::write_report(&second);
    let j = wait_tagged(&c, &t2, WAIT, |j| !j.is_empty());
    assert_eq!(j.len(), 1, "{j:#?}");
    assert!(payload(&j[0]).contains("Register RSP: ffffb4a1c06dfc38\nRegister EFLAGS: 00010246\n"), "{j:#?}");
}

fn warning(t: &str, i: usize) -> Vec<String> {
    kmsg::warning_report(t, &letters(i))
}

/// How often each report `0..n` was recorded: the missing ones, and the
/// repeated ones with their counts.
fn tally(j: &[Value], t: &str, n: usize) -> (Vec<usize>, Vec<(usize, usize)>) {
    let mut missing = Vec::new();
    let mut repeated = Vec::new();
    for i in 0..n {
        let needle = format!("at drivers/{t}/{}.c:1 ", letters(i));
        match j.iter().filter(|e| payload(e).contains(&needle)).count() {
            0 => missing.push(i),
            1 => {}
            k => repeated.push((i, k)),
        }
    }
    (missing, repeated)
}

/// Whether every report `0..n` was recorded exactly once (`Err` lists the
/// missing and repeated ones).
fn each_once(j: &[Value], t: &str, n: usize) -> Result<(), String> {
    match tally(j, t, n) {
        (m, r) if m.is_empty() && r.is_empty() => Ok(()),
        (m, r) => Err(format!("missing {m:?}, repeated (report, times) {r:?}")),
    }
}

/// Writes reports `from..to` of tag `t` in a thread, one every 15 ms.
fn burst(t: &str, from: usize, to: usize) -> std::thread::JoinHandle<()> {
    let t = t.to_string();
    std::thread::spawn(move || {
        for i in from..to {
            kmsg::write_report(&warning(&t, i));
            std::thread::sleep(Duration::from_millis(15));
        }
    })
}

#[test]
fn stopped_mid_burst_and_restarted_no_report_missed_or_repeated() {
    if !require_root("stopped_mid_burst_and_restarted_no_report_missed_or_repeated") {
        return;
    }
    kmsg::check_writable();
    let _serial = serial();
    let c = collector("");
    let mut probe = scanner(&c);
    probe.start();
    let t = tag();
    let n = 60;
    let writer = burst(&t, 0, n);
    // Stop it (SIGTERM, as systemd does) once some reports are in, while
    // the writer goes on; restart it a moment later, twice.
    for k in 1..=2 {
        let j = wait_tagged(&c, &t, WAIT, |j| j.len() >= 12 * k);
        assert!(j.len() >= 12 * k, "{j:#?}\n{}", probe.log());
        assert_eq!(probe.stop_with(libc::SIGTERM).map(|s| s.success()), Some(true), "{}", probe.log());
        std::thread::sleep(Duration::from_millis(200));
        probe.start();
    }
    writer.join().expect("writer");
    let j = wait_tagged(&c, &t, WAIT, |j| each_once(j, &t, n).is_ok());
    let log = probe.log();
    assert!(each_once(&j, &t, n).is_ok(), "{}\nklogscanner log:\n{log}", each_once(&j, &t, n).unwrap_err());
    assert!(!j.iter().any(|e| e["class"] == "org.clearlinux/kernel/overrun"), "{j:#?}");
    assert!(probe.running(), "{log}");
}

#[test]
fn killed_mid_burst_and_restarted_no_report_missed() {
    if !require_root("killed_mid_burst_and_restarted_no_report_missed") {
        return;
    }
    kmsg::check_writable();
    let _serial = serial();
    let c = collector("");
    let mut probe = scanner(&c);
    probe.start();
    let t = tag();
    let n = 60;
    let writer = burst(&t, 0, n);
    let j = wait_tagged(&c, &t, WAIT, |j| j.len() >= 15);
    assert!(j.len() >= 15, "{j:#?}\n{}", probe.log());
    // kill -9: no chance to write the position after the last
    // acknowledged batch. Nothing may be missed; only a batch acknowledged
    // in the microseconds before the kill may come again (once).
    assert!(probe.stop_with(libc::SIGKILL).is_some());
    std::thread::sleep(Duration::from_millis(200));
    probe.start();
    writer.join().expect("writer");
    let j = wait_tagged(&c, &t, WAIT, |j| tally(j, &t, n).0.is_empty());
    let (missing, repeated) = tally(&j, &t, n);
    let log = probe.log();
    assert!(missing.is_empty(), "missing {missing:?}\nklogscanner log:\n{log}");
    assert!(repeated.iter().all(|(_, k)| *k == 2), "repeated more than once: {repeated:?}");
    // Every report has its own event id, and one sent again carries the
    // same one as its first sending (a backend can tell the two apart).
    let mut ids = std::collections::HashMap::new();
    for i in 0..n {
        let needle = format!("at drivers/{t}/{}.c:1 ", letters(i));
        let events: std::collections::BTreeSet<&str> =
            j.iter().filter(|e| payload(e).contains(&needle)).filter_map(|e| e["event"].as_str()).collect();
        assert_eq!(events.len(), 1, "report {i}: event ids {events:?}");
        let id = events.into_iter().next().unwrap_or_default();
        assert!(ids.insert(id, i).is_none(), "reports {i} and {:?} share event id {id}", ids.get(id));
    }
    if let (Some(first), Some(last)) = (repeated.first(), repeated.last()) {
        assert!(last.0 - first.0 < 15, "repeats beyond the batch in flight at the kill: {repeated:?}");
    }
}

#[test]
fn identical_warnings_in_a_storm_give_one_record_then_a_count() {
    if !require_root("identical_warnings_in_a_storm_give_one_record_then_a_count") {
        return;
    }
    kmsg::check_writable();
    let _serial = serial();
    let c = collector("klog_storm_window = 3\n");
    let mut probe = scanner(&c);
    probe.start();
    let t = tag();
    for _ in 0..5 {
        // Same report: only CPU and PID numbers differ.
        let mut w = warning(&t, 0);
        w[0] = w[0].replace("PID: 7", &format!("PID: {}", 100 + std::process::id() % 100));
        kmsg::write_report(&w);
    }
    let j = wait_tagged(&c, &t, WAIT, |j| j.len() >= 2);
    assert_eq!(j.len(), 2, "{j:#?}\n{}", probe.log());
    assert!(!payload(&j[0]).contains("Repeated"), "{j:#?}");
    assert!(
        payload(&j[1]).ends_with("Repeated : 4 more identical reports within 3 s (one record per window)\n"),
        "{j:#?}"
    );
    assert_eq!(j[1]["class"], "org.clearlinux/kernel/warning");

    // A new window: one record at once; stopped before the window ends,
    // klogscanner sends the count of what it held back instead of losing it.
    for _ in 0..3 {
        kmsg::write_report(&warning(&t, 0));
    }
    let j = wait_tagged(&c, &t, WAIT, |j| j.len() >= 3);
    assert_eq!(j.len(), 3, "{j:#?}");
    assert_eq!(probe.stop_with(libc::SIGTERM).map(|s| s.success()), Some(true), "{}", probe.log());
    let j = wait_tagged(&c, &t, WAIT, |j| j.len() >= 4);
    assert_eq!(j.len(), 4, "{j:#?}\n{}", probe.log());
    assert!(!payload(&j[2]).contains("Repeated"), "{j:#?}");
    assert!(payload(&j[3]).contains("Repeated : 2 more identical reports within 3 s"), "{j:#?}");
}

#[test]
fn overrun_gives_a_record_of_lost_messages() {
    if !require_root("overrun_gives_a_record_of_lost_messages") {
        return;
    }
    kmsg::check_writable();
    let _serial = serial();
    let c = collector("");
    let mut probe = scanner(&c);
    probe.start();
    let t = tag();
    kmsg::write_report(&warning(&t, 0));
    wait_tagged(&c, &t, WAIT, |j| !j.is_empty());
    // Stopped, it cannot read; twice the ring buffer's size in messages of
    // 900 bytes overwrites all of it.
    // SAFETY: SYSLOG_ACTION_SIZE_BUFFER (10) reads no buffer.
    let size = unsafe { libc::klogctl(10, std::ptr::null_mut(), 0) };
    assert!(size > 0, "cannot read the kernel log size: {}", std::io::Error::last_os_error());
    let buf = 2 * size as usize / 900 + 50;
    probe.signal(libc::SIGSTOP);
    let filler = format!("{t} {}", "x".repeat(900));
    {
        let _g = kmsg::WRITER.lock().unwrap_or_else(|e| e.into_inner());
        kmsg::write_lines(&vec![filler; buf]);
    }
    kmsg::write_report(&warning(&t, 1));
    probe.signal(libc::SIGCONT);
    let j = wait_tagged(&c, &t, WAIT, |j| j.len() >= 2);
    let all = c.journal(&["-i"]);
    let lost: Vec<&Value> = all.iter().filter(|e| e["class"] == "org.clearlinux/kernel/overrun").collect();
    assert!(!lost.is_empty(), "no overrun record: {all:#?}\n{}", probe.log());
    let p = payload(lost[lost.len() - 1]);
    let n: u64 =
        p.lines().find_map(|l| l.strip_prefix("Kernel log messages lost : ")).and_then(|v| v.parse().ok()).unwrap_or(0);
    assert!(n > 0, "{p}");
    assert!(p.contains("EPIPE"), "{p}");
    assert!(each_once(&j, &t, 2).is_ok(), "{j:#?}");
}
