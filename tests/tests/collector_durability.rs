//! Collector durability end to end: kill -9 with a flapping server, a full
//! disk, expiry, spool_max_size and rate windows.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::collector::Collector;
use e2e::fixtures::Records;
use e2e::sink::{Mode, Sink};
use telemetry::client::{Client, ClientError};
use telemetry::{EventId, Record, Severity};

/// `RECORDS.sized(i, n)`: record `i` with an `n`-byte payload.
const RECORDS: Records = Records::new("org.test/collector/durable", Severity::Medium);

fn delivered_events(sink: &Sink) -> HashSet<EventId> {
    sink.delivered().iter().filter_map(|p| p.decoded.as_ref().ok().map(|(r, _)| r.event_id)).collect()
}

#[test]
fn kill_9_with_a_flapping_server_loses_no_acknowledged_record() {
    kill_9_with_a_flapping_server(None);
}

/// The same under `ulimit -n 256`: descriptors run short (connections,
/// spool files, delivery), and nothing accepted may be lost for it.
#[test]
fn kill_9_with_a_flapping_server_under_ulimit_n_256() {
    kill_9_with_a_flapping_server(Some(256));
}

fn kill_9_with_a_flapping_server(nofile: Option<u64>) {
    const N: usize = 10_000;
    let sink = Arc::new(Sink::start());
    let mut c = Collector::new(Some(&sink.url()), "rate_limit_enabled=false\nspool_max_size=-1\nretry_max_backoff=1");
    c.nofile = nofile;
    c.start();
    let stop = Arc::new(AtomicBool::new(false));
    let flapper = {
        let (sink, stop) = (sink.clone(), stop.clone());
        std::thread::spawn(move || {
            let modes = [
                Mode::Status(201, String::new()),
                Mode::Status(503, "busy".into()),
                Mode::Drop,
                Mode::Status(201, String::new()),
            ];
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                sink.set_mode(modes[i % modes.len()].clone());
                i += 1;
                std::thread::sleep(Duration::from_millis(70));
            }
            sink.set_mode(Mode::Status(201, String::new()));
        })
    };
    // The sender pipelines batches and reconnects when the collector dies;
    // only records it got an Accepted ack for count.
    let progress = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sender = {
        let (path, progress) = (c.socket.clone(), progress.clone());
        std::thread::spawn(move || {
            let records: Vec<Record> = (0..N).map(|i| RECORDS.sized(i, 100)).collect();
            let mut acked: Vec<EventId> = Vec::new();
            let mut sent = 0;
            let deadline = Instant::now() + Duration::from_secs(40);
            while sent < N && Instant::now() < deadline {
                let Ok(mut client) = Client::connect_path(&path, Duration::from_secs(10)) else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                while sent < N {
                    let chunk = &records[sent..(sent + 50).min(N)];
                    let res = client.send_many(chunk);
                    sent += chunk.len();
                    progress.store(sent, Ordering::SeqCst);
                    match res {
                        Ok(results) => {
                            acked.extend(chunk.iter().zip(results).filter(|(_, r)| r.is_ok()).map(|(r, _)| r.event_id))
                        }
                        // Killed mid-batch: these records have no ack.
                        Err(_) => break,
                    }
                }
            }
            acked
        })
    };
    let t = Instant::now();
    while progress.load(Ordering::SeqCst) < N / 3 && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(1));
    }
    // kill -9 at whatever point the collector is in.
    c.kill9();
    c.start();
    let acked = sender.join().unwrap();
    assert!(acked.len() >= N - 500, "most records acknowledged ({} of {N})", acked.len());
    // Let the restarted collector meet the flapping server a little longer.
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::SeqCst);
    flapper.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut missing = acked.len();
    while Instant::now() < deadline {
        let got = delivered_events(&sink);
        missing = acked.iter().filter(|e| !got.contains(e)).count();
        if missing == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("kill -9 run: {} acknowledged, {missing} missing after {:?}", acked.len(), t.elapsed());
    assert_eq!(missing, 0, "every acknowledged record is delivered after kill -9 and restart:\n{}", c.log());
    // And every acknowledged record has its journal entry, even those
    // whose lines were still queued when the process died.
    let want: std::collections::HashSet<String> = acked.iter().map(|e| e.to_string()).collect();
    let unjournaled = |j: &[serde_json::Value]| {
        let have: std::collections::HashSet<&str> = j.iter().filter_map(|e| e["event"].as_str()).collect();
        want.iter().filter(|e| !have.contains(e.as_str())).count()
    };
    let j = c.wait_journal(Duration::from_secs(10), |j| unjournaled(j) == 0);
    assert_eq!(unjournaled(&j), 0, "acknowledged records missing from the journal:\n{}", c.log());
    assert!(!c.log().contains("cannot be read back"), "a spool block was lost:\n{}", c.log());
}

/// Unmounts a tmpfs on drop, even when the test fails.
struct Mount(PathBuf);
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount_tmpfs(dir: &Path, size: &str) -> Mount {
    std::fs::create_dir_all(dir).unwrap();
    let st =
        Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir).status().unwrap();
    assert!(st.success(), "mount tmpfs on {}", dir.display());
    Mount(dir.into())
}

#[test]
fn a_full_disk_rejects_with_the_reason_and_keeps_serving() {
    a_full_disk(None);
}

/// The same under `ulimit -n 256`.
#[test]
fn a_full_disk_under_ulimit_n_256() {
    a_full_disk(Some(256));
}

fn a_full_disk(nofile: Option<u64>) {
    if !e2e::require_root("a_full_disk_rejects_with_the_reason_and_keeps_serving") {
        return;
    }
    let mut sink = Sink::start();
    let url = sink.url();
    sink.stop();
    let tmp = tempfile::tempdir().unwrap();
    let _m = mount_tmpfs(&tmp.path().join("spool"), "1m");
    let mut c = Collector::in_dir(tmp.path(), Some(&url), "rate_limit_enabled=false\nspool_max_size=-1");
    c.nofile = nofile;
    c.start();
    let mut client = c.client();
    let mut accepted = 0;
    let mut reason = None;
    for i in 0..400 {
        match client.send(&RECORDS.sized(i, 8000)) {
            Ok(_) => accepted += 1,
            Err(ClientError::Rejected { reason: r }) => {
                reason = Some(r);
                break;
            }
            Err(e) => panic!("connection failed instead of a rejection: {e}\n{}", c.log()),
        }
    }
    let reason = reason.expect("the 1 MiB spool fills up");
    assert!(reason.contains("No space left on device"), "{reason}");
    assert!(accepted > 50, "accepted {accepted}");
    // Still serving: the same connection and a new one get answers.
    assert!(matches!(client.send(&RECORDS.sized(1000, 8000)), Err(ClientError::Rejected { .. })));
    let mut other = c.client();
    match other.send(&RECORDS.sized(1001, 10)) {
        Ok(_) | Err(ClientError::Rejected { .. }) => {}
        Err(e) => panic!("a new connection is not served: {e}"),
    }
    // The server comes back: the spool drains and records are accepted again.
    sink.restart();
    assert!(
        sink.wait_for(Duration::from_secs(30), |p| p.iter().filter(|x| x.answered == Some(201)).count() >= accepted)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match other.send(&RECORDS.sized(2000, 8000)) {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                let files: Vec<String> = std::fs::read_dir(&c.spool)
                    .map(|d| {
                        d.filter_map(|e| e.ok())
                            .map(|e| format!("{:?} {}", e.file_name(), e.metadata().map(|m| m.len()).unwrap_or(0)))
                            .collect()
                    })
                    .unwrap_or_default();
                let fds: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", c.pid()))
                    .map(|d| {
                        d.filter_map(|e| e.ok())
                            .filter_map(|e| std::fs::read_link(e.path()).ok())
                            .map(|p| p.display().to_string())
                            .filter(|p| p.contains("spool"))
                            .collect()
                    })
                    .unwrap_or_default();
                panic!("not accepting after the spool drained: {e}\nspool files: {files:?}\nspool fds: {fds:?}\nstatus: {}\n{}", c.status(), c.log())
            }
        }
    }
    let s = c.status();
    assert!(s["rejected"].as_u64() >= Some(2), "{s}");
    assert!(c.journal(&[]).iter().any(|e| e["fate"].as_str().unwrap_or("").contains("No space left")));
}

#[test]
fn spool_max_size_is_counted_in_real_bytes() {
    let mut sink = Sink::start();
    let url = sink.url();
    sink.stop();
    let mut c = Collector::new(Some(&url), "rate_limit_enabled=false\nspool_max_size=16");
    c.start();
    let mut client = c.client();
    let mut accepted = 0;
    let mut reason = String::new();
    for i in 0..100 {
        match client.send(&RECORDS.sized(i, 1000)) {
            Ok(_) => accepted += 1,
            Err(ClientError::Rejected { reason: r }) => {
                reason = r;
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(reason.contains("spool is full"), "{reason}");
    // 16 KiB of ~1.3 KB blocks: about a dozen, never more than the cap.
    assert!((8..=16).contains(&accepted), "accepted {accepted}");
    let on_disk: u64 = std::fs::read_dir(&c.spool).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    assert!(on_disk <= 16 * 1024, "spool holds {on_disk} bytes");
    assert_eq!(c.status()["spool_bytes"].as_u64(), Some(on_disk));
    sink.restart();
    assert!(
        sink.wait_for(Duration::from_secs(20), |p| p.iter().filter(|x| x.answered == Some(201)).count() >= accepted)
    );
}

#[test]
fn expired_records_are_dropped_and_journaled() {
    use telem_collector::spool::{encode_item, Item, Spool};
    let sink = Sink::start();
    let c = Collector::new(Some(&sink.url()), "record_expiry=60");
    // Two records accepted two hours ago, one a minute ago, left in the spool.
    {
        let (spool, _) = Spool::open(&c.spool, 0).unwrap();
        let now = telemetry::record::now_unix();
        for (i, age) in [(0usize, 7200u64), (1, 7200), (2, 60)] {
            let item = Item {
                record_id: telemetry::RecordId::from_bytes([i as u8 + 1; 16]),
                accepted: now - age,
                counted: true,
                uid: 0,
                pid: 0,
                record: RECORDS.sized(i, 10),
            };
            let mut body = Vec::new();
            encode_item(&item, &mut body).unwrap();
            spool.commit(vec![item.into()], &body, 0).unwrap();
        }
    }
    let mut c = c;
    c.start();
    assert!(sink.wait_for(Duration::from_secs(10), |p| !p.is_empty()));
    std::thread::sleep(Duration::from_millis(500));
    let posts = sink.delivered();
    assert_eq!(posts.len(), 1, "only the fresh record is delivered");
    assert!(String::from_utf8_lossy(&posts[0].body).starts_with("record 2"));
    let s = c.status();
    assert_eq!(s["expired"], 2, "{s}");
    let log = c.log();
    assert!(log.contains("expired"), "{log}");
}

#[test]
fn rate_windows_drop_or_spool_counting_real_sizes() {
    // Record window, drop strategy.
    let sink = Sink::start();
    let mut c =
        Collector::new(Some(&sink.url()), "record_burst_limit=3\nrecord_window_length=1\nrate_limit_strategy=drop");
    c.start();
    let mut client = c.client();
    for i in 0..5 {
        client.send(&RECORDS.sized(i, 10)).unwrap();
    }
    assert!(sink.wait_for(Duration::from_secs(10), |p| p.len() >= 3));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sink.posts().len(), 3);
    let fates: Vec<String> = c.journal(&[]).iter().map(|e| e["fate"].as_str().unwrap().to_string()).collect();
    assert_eq!(fates.iter().filter(|f| *f == "rate-limited: dropped").count(), 2, "{fates:?}");
    drop(c);

    // Byte window, spool strategy: a 1500-byte record fits a 2000-byte
    // window once, not twice (the original counted 4 bytes per record).
    let sink = Sink::start();
    let mut c = Collector::new(Some(&sink.url()), "record_burst_limit=-1\nbyte_burst_limit=2000\nbyte_window_length=1");
    c.start();
    let mut client = c.client();
    client.send(&RECORDS.sized(0, 1500)).unwrap();
    client.send(&RECORDS.sized(1, 1500)).unwrap();
    assert!(sink.wait_for(Duration::from_secs(10), |p| !p.is_empty()));
    // A flush does not bypass the window.
    assert!(c.telemctl(&["flush"]).status.success());
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(sink.posts().len(), 1);
    let s = c.status();
    assert_eq!((s["spooled"].as_u64(), s["rate_limited"].as_u64()), (Some(1), Some(1)), "{s}");
    let fates: Vec<String> = c.journal(&[]).iter().map(|e| e["fate"].as_str().unwrap().to_string()).collect();
    assert_eq!(fates, vec!["delivered".to_string(), "rate-limited: spooled".to_string()]);
}

/// A power loss cannot be staged here; what it leaves behind can: the
/// running mark of another boot (a run whose host went down under it) is
/// reported by the next start, in the log and in `telemctl status`; a kill -9
/// in this boot (which loses nothing) is not; a clean stop leaves no mark.
#[test]
fn a_start_after_the_host_went_down_under_the_collector_says_what_may_be_lost() {
    let mut c = Collector::new(None, "");
    c.start();
    let mark = c.dir.join("state/telem-collector.running");
    let this_boot = telemetry::BootId::read().expect("boot id").to_string();
    assert_eq!(std::fs::read_to_string(&mark).expect("a running collector's mark").trim(), this_boot);
    assert!(c.status().get("host_went_down").is_none(), "a first start: {}", c.status());

    c.kill9();
    c.start();
    assert!(c.status().get("host_went_down").is_none(), "a kill -9 in this boot loses nothing: {}", c.status());
    assert!(c.stop(), "clean stop");
    assert!(!mark.exists(), "a clean stop removes the mark");

    let other_boot = "0123456789abcdef0123456789abcdef";
    std::fs::write(&mark, format!("{other_boot}\n")).unwrap();
    c.start();
    let said = c.status()["host_went_down"].as_str().map(str::to_string);
    assert!(said.as_deref().is_some_and(|s| s.contains(other_boot) && s.contains("may be lost")), "status: {said:?}");
    assert!(c.log().contains(&format!("boot {other_boot}")), "logged:\n{}", c.log());
    assert!(c.telemctl_ok(&["status"]).contains("warning:"), "telemctl status shows it");
    assert_eq!(std::fs::read_to_string(&mark).unwrap().trim(), this_boot, "this run's mark replaces it");
    assert!(c.stop(), "clean stop");
}
