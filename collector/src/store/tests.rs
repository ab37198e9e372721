use super::*;
use crate::config::Config;
use crate::consent::Decision;
use crate::journal::Journal;
use crate::spool::Spool;
use telemetry::{Classification, Severity};
use telemetry::{MachineId, Payload};
use tokio::sync::watch;

fn shared(dir: &std::path::Path, cfg: Config) -> (Arc<State>, watch::Sender<Arc<Config>>, std::thread::JoinHandle<()>) {
    let (spool, _) = Spool::open(&dir.join("spool"), 0).unwrap();
    let (journal, h) = Journal::open(&dir.join("journal")).unwrap();
    let (tx, rx) = watch::channel(Arc::new(cfg));
    (Arc::new(State::new(rx, spool, journal, MachineId::random(), MachineId::random())), tx, h)
}

/// A configuration with a server and consent given, in a fresh directory.
fn opted_in() -> (tempfile::TempDir, Config) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        etc_dir: dir.path().join("etc"),
        server: Some("http://127.0.0.1:9/".parse().unwrap()),
        ..Config::default()
    };
    crate::consent::opt_in(&cfg).unwrap();
    (dir, cfg)
}

fn submit(shared: &State, text: &str) -> oneshot::Receiver<Vec<Ack>> {
    submit_severity(shared, text, Severity::Low)
}

fn submit_severity(shared: &State, text: &str, severity: Severity) -> oneshot::Receiver<Vec<Ack>> {
    let record = Record::builder(Classification::parse("org.t/pipe/x").unwrap(), severity, Payload::text(text)).build();
    let (tx, rx) = oneshot::channel();
    let sub = Submission {
        records: vec![Incoming { record, size: 10, uid: 1, pid: 2 }],
        reply: Reply::Acks(tx),
        budget: None,
    };
    commit_batch(shared, vec![sub], &mut Vec::new());
    rx
}

#[test]
fn payloads_are_kept_in_the_journal_by_default() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config { etc_dir: dir.path().join("etc"), ..Config::default() };
    assert!(cfg.record_retention_enabled);
    let (sh, tx, h) = shared(dir.path(), cfg);
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    assert!(matches!(rt.block_on(submit(&sh, "what was collected")).unwrap()[..], [Ack::Accepted { .. }]));
    drop(sh);
    drop(tx);
    h.join().unwrap();
    let j = crate::journal::read(&dir.path().join("journal")).unwrap();
    assert_eq!(j[0].entry.payload.as_deref(), Some("what was collected"));
    let mode =
        std::fs::metadata(dir.path().join("journal").join(crate::journal::FILE_NAME)).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "only its owner reads the journal");
}

#[test]
fn a_consent_change_is_in_force_when_it_returns_and_waits_for_writes() {
    let (dir, cfg) = opted_in();
    let (sh, tx, h) = shared(dir.path(), cfg.clone());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let in_force = sh.config();
    assert_eq!(sh.consent(&in_force), Decision::Deliver);
    // Opted out: the cached decision is dropped at once, not after CONSENT_TTL.
    crate::consent::opt_out(&cfg).unwrap();
    rt.block_on(sh.consent_changed(|| ()));
    assert_eq!(sh.consent(&in_force), Decision::LocalOnly(crate::consent::WHY_NOT_OPTED_IN));
    assert!(rt.block_on(sh.may_post(&in_force)).is_none(), "no post may start");
    crate::consent::opt_in(&cfg).unwrap();
    rt.block_on(sh.consent_changed(|| ()));
    // A write in progress holds the next change off until it is written.
    let guard = rt.block_on(sh.may_post(&in_force)).expect("opted in: posts may start");
    let sh2 = sh.clone();
    let change = rt.spawn(async move { sh2.consent_changed(|| ()).await });
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(!change.is_finished(), "the change waits for the write");
    drop(guard);
    rt.block_on(change).unwrap();
    // A new configuration: writes prepared with the old one do not go.
    rt.block_on(sh.consent_changed(|| drop(tx.send(Arc::new(cfg.clone())))));
    assert!(rt.block_on(sh.may_post(&in_force)).is_none());
    assert!(rt.block_on(sh.may_post(&sh.config())).is_some());
    drop(rt);
    drop(sh);
    drop(tx);
    h.join().unwrap();
}

#[test]
fn consent_is_not_retroactive_and_payloads_are_scrubbed_first() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        etc_dir: dir.path().join("etc"),
        server: Some("http://127.0.0.1:9/".parse().unwrap()),
        record_retention_enabled: true,
        privacy_level: crate::config::PrivacyLevel::Anonymous,
        ..Config::default()
    };
    let (sh, tx, h) = shared(dir.path(), cfg.clone());
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    // Not opted in: journaled, acknowledged, never spooled.
    let acks = rt.block_on(submit(&sh, "user alice@example.org at 10.1.2.3 in /home/alice/x")).unwrap();
    assert!(matches!(acks[..], [Ack::Accepted { .. }]));
    assert_eq!(sh.spool.records(), 0);
    // A later opt-in (and a new configuration, so the cache is gone).
    crate::consent::opt_in(&cfg).unwrap();
    tx.send(Arc::new(cfg.clone())).unwrap();
    assert_eq!(sh.consent(&sh.config()), Decision::Deliver);
    assert_eq!(sh.spool.next().map(|t| t.item.record_id), None, "the earlier record is not in the spool");
    drop(rt.block_on(submit(&sh, "plain")));
    let t = sh.spool.next().expect("the record after the opt-in is spooled");
    assert_eq!(t.item.record.host.cpu_model.as_str(), crate::identity::PLACEHOLDER);
    assert!(sh.spool.next().is_none());
    drop(sh);
    drop(tx);
    h.join().unwrap();
    let j = crate::journal::read(&dir.path().join("journal")).unwrap();
    assert_eq!(j.len(), 2);
    assert_eq!(j[0].entry.fate, "local-only: not opted in");
    assert_eq!(j[0].entry.payload.as_deref(), Some("user <email> at <ipv4> in /home/<user>/x"));
    assert_eq!(j[1].entry.fate, "spooled");
}

/// A delivered record leaves the spool only once its fate line is written
/// to the journal: a collector killed between the two finds the record
/// still spooled (it used to find it gone from the spool with its first
/// entry and fate still queued in the dead process).
#[test]
fn a_settled_record_leaves_the_spool_only_after_its_journal_lines_are_written() {
    let (dir, cfg) = opted_in();
    let (sh, tx, h) = shared(dir.path(), cfg);
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    assert!(matches!(rt.block_on(submit(&sh, "one")).unwrap()[..], [Ack::Accepted { .. }]));
    let t = sh.spool.next().expect("spooled");
    let id = t.item.record_id_hex();
    let journal_file = dir.path().join("journal").join(crate::journal::FILE_NAME);
    let delivered_line = || {
        std::fs::read_to_string(&journal_file)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains(&id) && l.contains("\"delivered\""))
    };
    let mut settle = settle::Settle::default();
    settle.finish(&t, Fate::Delivered);
    assert_eq!(sh.spool.records(), 1, "still spooled before its fate is committed");
    settle.commit(&sh);
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while sh.spool.records() > 0 {
        assert!(Instant::now() < deadline, "the record never left the spool");
        std::thread::yield_now();
    }
    assert!(delivered_line(), "the record left the spool before its fate was written to the journal");
    drop(sh);
    drop(tx);
    h.join().unwrap();
}

/// Records of `spool_sync_severity` or higher are synced before their ack;
/// the others are left to the lazy sync.
#[test]
fn the_ack_waits_for_fdatasync_from_spool_sync_severity_up() {
    let (dir, cfg) = opted_in();
    assert_eq!(cfg.spool_sync_severity, 3);
    let (sh, tx, h) = shared(dir.path(), cfg);
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    for (severity, lazy) in [(Severity::Medium, 1), (Severity::High, 0), (Severity::Low, 1), (Severity::Critical, 0)] {
        let acks = rt.block_on(submit_severity(&sh, "x", severity)).unwrap();
        assert!(matches!(acks[..], [Ack::Accepted { .. }]));
        assert_eq!(sh.spool.lazy_pending(), lazy, "{severity:?}");
    }
    drop(sh);
    drop(tx);
    h.join().unwrap();
}
