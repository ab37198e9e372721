//! pstoreprobe end to end: a directory of dump files written in the
//! kernel's formats (a ramoops dump with its header, an EFI dump in three
//! parts whose middle part is compressed, a console log), a real collector,
//! and the files moved only after the collector acknowledged the record.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use e2e::bin;
use e2e::collector::Collector;
use e2e::kmsg::tag;
use e2e::receiver::{Behaviour, Receiver};
use serde_json::Value;

/// EFI's record id: `(time * 100 + part) * 1000 + count`.
fn efi_id(time: u64, part: u64, count: u64) -> u64 {
    (time * 100 + part) * 1000 + count
}

/// Lines as pstore saves them: `<level>[time] text`.
fn kmsg_lines(lines: &[String]) -> String {
    lines.iter().enumerate().map(|(i, l)| format!("<4>[  100.{:06}] {l}\n", i)).collect()
}

struct Dumps {
    dir: PathBuf,
    ramoops_bug: String,
    efi_warning: String,
    console: String,
}

fn write_dumps(dir: &Path, t: &str) -> Dumps {
    std::fs::create_dir_all(dir).unwrap();
    // ramoops: one file per dump, the kernel's `Panic#1 Part1` header first.
    let ramoops_bug = format!("BUG: kernel NULL pointer dereference, address: 0000000000000000 {t}");
    let ramoops = [
        ramoops_bug.clone(),
        "#PF: supervisor read access in kernel mode".into(),
        "Oops: 0000 [#1] PREEMPT SMP NOPTI".into(),
        "CPU: 0 UID: 0 PID: 1 Comm: init Not tainted 6.18.44 #1".into(),
        "RIP: 0010:bad_read+0x5/0x10".into(),
        "RSP: 0018:ffffb4a1c06dfc38 EFLAGS: 00010246".into(),
        "Call Trace:".into(),
        " <TASK>".into(),
        " bad_read+0x5/0x10".into(),
        " kernel_init+0x1a/0x130".into(),
        " </TASK>".into(),
        "Modules linked in:".into(),
        "CR2: 0000000000000000".into(),
        "---[ end trace 0000000000000000 ]---".into(),
        format!("Kernel panic - not syncing: Attempted to kill init! {t}"),
        "Kernel Offset: disabled".into(),
    ];
    std::fs::write(dir.join("dmesg-ramoops-0"), format!("Panic#1 Part1\n{}", kmsg_lines(&ramoops))).unwrap();
    let console = format!("[    0.000000] Linux version 6.18.44 {t}-console\n[  100.0] last words\n");
    std::fs::write(dir.join("console-ramoops-0"), &console).unwrap();

    // EFI: one dump in three parts; Part1 holds the newest lines, Part3 the
    // oldest. Part2 is compressed (raw deflate, as the kernel's pstore).
    let efi_warning = format!("WARNING: CPU: 1 PID: 77 at fs/{t}.c:9 write_thing+0x1/0x2 [thingfs]");
    let lines: Vec<String> = [
        efi_warning.as_str(),
        "Modules linked in: thingfs(O)",
        "CPU: 1 UID: 0 PID: 77 Comm: writer Tainted: G O 6.18.44 #1",
        "RIP: 0010:write_thing+0x1/0x2 [thingfs]",
        "Call Trace:",
        " <TASK>",
        " write_thing+0x1/0x2 [thingfs]",
        " vfs_write+0x1/0x2",
        " ksys_write+0x1/0x2",
        " do_syscall_64+0x1/0x2",
        " </TASK>",
        "---[ end trace 0000000000000000 ]---",
    ]
    .map(String::from)
    .to_vec();
    let (oldest, rest) = lines.split_at(4);
    let (middle, newest) = rest.split_at(4);
    let time = 1_764_700_000;
    let part = |n: u64, body: &[String]| format!("Oops#1 Part{n}\n{}", kmsg_lines(body));
    std::fs::write(dir.join(format!("dmesg-efi-{}", efi_id(time, 3, 1))), part(3, oldest)).unwrap();
    let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(part(2, middle).as_bytes()).unwrap();
    std::fs::write(dir.join(format!("dmesg-efi-{}.enc.z", efi_id(time, 2, 1))), z.finish().unwrap()).unwrap();
    std::fs::write(dir.join(format!("dmesg-efi-{}", efi_id(time, 1, 1))), part(1, newest)).unwrap();
    std::fs::write(dir.join("README"), "not a pstore record\n").unwrap();
    Dumps { dir: dir.into(), ramoops_bug, efi_warning, console }
}

fn pstoreprobe(conf: &Path, dir: &Path, socket: Option<&Path>) -> (bool, String) {
    let mut cmd = Command::new(bin("pstoreprobe"));
    cmd.arg("-f").arg(conf).arg("--pstore-dir").arg(dir).env_remove("TELEM_SOCKET");
    if let Some(s) = socket {
        cmd.arg("--socket").arg(s);
    }
    let out = cmd.output().expect("run pstoreprobe");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Every file under `dir`, recursively, by name.
fn names_deep(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(names_deep(&e.path()));
        } else {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    out
}

#[test]
fn one_record_per_dump_parts_in_order_files_moved_after_the_ack() {
    let mut c = Collector::new(None, "");
    c.start();
    let t = tag();
    let d = write_dumps(&c.dir.join("pstore-in"), &t);
    let before = names(&d.dir);
    let (ok, log) = pstoreprobe(&c.conf, &d.dir, None);
    assert!(ok, "pstoreprobe failed:\n{log}");

    let j: Vec<Value> =
        c.journal(&["-i"]).into_iter().filter(|e| e["payload"].as_str().is_some_and(|p| p.contains(&t))).collect();
    assert_eq!(j.len(), 2, "one record per dump: {j:#?}\n{log}");
    let panic = j.iter().find(|e| e["class"] == "org.clearlinux/kernel/panic").expect("panic record");
    assert_eq!(panic["severity"], 4);
    let p = panic["payload"].as_str().unwrap_or("");
    let want = format!(
        "Crash Report:\nReason: {}\nKernel Version : 6.18.44\nTainted : Not tainted\nBacktrace :\n\
         Register RIP: Non-zero\nRegister RSP: Non-zero\nRegister EFLAGS: Non-zero\n\
         #1 bad_read - [kernel]\n#2 kernel_init - [kernel]\n\
         Panic : Kernel panic - not syncing: Attempted to kill init! {t}\n\
         Boot : previous\nPstore : ramoops Panic#1 (1 part: dmesg-ramoops-0)\n\
         \nConsole log ramoops (previous boot):\n{}",
        d.ramoops_bug, d.console
    );
    assert_eq!(p, want);

    let w = j.iter().find(|e| e["class"] == "org.clearlinux/kernel/warning").expect("warning record");
    assert_eq!(w["severity"], 2);
    let p = w["payload"].as_str().unwrap_or("");
    let (report, tail) = p.split_once("Boot : previous\n").expect("marked as the previous boot");
    assert_eq!(
        report,
        format!(
            "Crash Report:\nReason: {}\nKernel Version : 6.18.44\nTainted : G O\nModules : thingfs(O)\nBacktrace :\n\
             Register RIP: Non-zero\n#1 write_thing - [thingfs]\n#2 vfs_write - [kernel]\n#3 ksys_write - [kernel]\n\
             #4 do_syscall_64 - [kernel]\n",
            d.efi_warning
        ),
        "the three parts joined oldest first, the compressed one included"
    );
    assert!(tail.starts_with("Pstore : efi Oops#1 (3 parts: "), "{tail}");

    // The dump files left pstore for state_dir/pstore/; the rest stayed.
    assert_eq!(names(&d.dir), vec!["README".to_string()]);
    let mut moved: Vec<String> = before.into_iter().filter(|n| n != "README").collect();
    moved.sort();
    assert_eq!(names_deep(&c.dir.join("state/pstore")), moved);
}

#[test]
fn a_refused_or_unsent_record_leaves_the_dump_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let t = tag();
    let d = write_dumps(&dir.path().join("pstore-in"), &t);
    let before = names(&d.dir);
    let conf = dir.path().join("telemetrics.conf");
    std::fs::write(&conf, format!("[settings]\nstate_dir={}\n", dir.path().join("state").display())).unwrap();

    // No collector.
    let (ok, log) = pstoreprobe(&conf, &d.dir, Some(&dir.path().join("none.sock")));
    assert!(!ok, "{log}");
    assert!(log.contains("stays in pstore"), "{log}");
    assert_eq!(names(&d.dir), before);

    // A collector that refuses.
    let rx = Receiver::start(Behaviour { reject: Some("spool is full (disk full)".into()), ..Default::default() });
    let (ok, log) = pstoreprobe(&conf, &d.dir, Some(&rx.path));
    assert!(!ok, "{log}");
    assert!(log.contains("spool is full"), "{log}");
    assert_eq!(names(&d.dir), before);
    assert!(names_deep(&dir.path().join("state")).is_empty());

    // The next run, with a collector that accepts, sends and moves them.
    let rx = Receiver::start(Behaviour::default());
    let (ok, log) = pstoreprobe(&conf, &d.dir, Some(&rx.path));
    assert!(ok, "{log}");
    let got = rx.records();
    assert_eq!(got.len(), 2);
    // The EFI dump's time (in its ids) is its record's creation time.
    let efi = got.iter().find(|r| r.record.classification.as_str() == "org.clearlinux/kernel/warning").expect("efi");
    assert_eq!(efi.record.creation_timestamp, 1_764_700_000);
    assert_eq!(names(&d.dir), vec!["README".to_string()]);
}

/// Whether `dir` is a pstore mount point (from /proc/self/mountinfo).
fn pstore_mounted_at(dir: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines().any(|l| {
        l.split(' ').nth(4).is_some_and(|m| Path::new(m) == dir)
            && l.split(" - ").nth(1).is_some_and(|t| t.starts_with("pstore "))
    })
}

/// Unmounts `dir` when dropped.
struct Unmount(PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn mounts_pstore_when_it_is_not_mounted() {
    if !e2e::require_root("mounts_pstore_when_it_is_not_mounted") {
        return;
    }
    let mut c = Collector::new(None, "");
    c.start();
    // This machine's own dumps, if pstore holds any, must not be taken by a
    // test: look first, on a mount of our own.
    let look = c.dir.join("pstore-look");
    std::fs::create_dir_all(&look).unwrap();
    let st = Command::new("mount").args(["-t", "pstore", "pstore"]).arg(&look).status().expect("run mount");
    assert!(st.success(), "cannot mount pstore (CONFIG_PSTORE)");
    let held = names(&look);
    drop(Unmount(look));
    if !held.is_empty() {
        eprintln!("pstore holds this machine's dumps {held:?}: not running pstoreprobe on them");
        return;
    }
    let dir = c.dir.join("pstore-mnt");
    c.set(&format!("pstore_dir={}", dir.display()));
    assert!(!pstore_mounted_at(&dir));
    let o = Command::new(bin("pstoreprobe")).arg("-f").arg(&c.conf).output().expect("run pstoreprobe");
    let _unmount = Unmount(dir.clone());
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{log}");
    assert!(pstore_mounted_at(&dir), "pstore not mounted on {}: {log}", dir.display());
    assert!(log.contains("no crash dump in pstore"), "{log}");
}
