use super::*;
use crate::spool::Item;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use telemetry::RecordId;

fn entry(id: &str, class: &str) -> Entry {
    Entry {
        id: id.into(),
        time: 1,
        class: Some(class.into()),
        event: Some("e".repeat(32)),
        boot: Some("b".repeat(32)),
        uid: Some(0),
        pid: Some(1),
        severity: Some(1),
        fate: Fate::Spooled.to_string(),
        payload: None,
        creation_timestamp: Some(5),
        payload_format_version: Some(1),
        host: Some(telemetry::HostInfo::current().clone()),
    }
}

fn first(id: u8, class: &str, payload: &str) -> Line {
    let record = telemetry::Record::builder(
        telemetry::Classification::parse(class).unwrap(),
        telemetry::Severity::High,
        telemetry::Payload::text(payload),
    )
    .creation_timestamp(5)
    .build();
    let item = Item { record_id: RecordId::from_bytes([id; 16]), accepted: 1, counted: true, uid: 7, pid: 8, record };
    Line::First { item: Arc::new(item), time: 1, boot: "b".repeat(32).into(), fate: Fate::Spooled, payload: true }
}

#[test]
fn a_line_reads_back_as_the_entry_it_describes() {
    let l = first(0xab, "org.x/crash/clr", "text \"quoted\" \u{1}");
    let Line::First { item, .. } = &l else { unreachable!() };
    let mut json = Vec::new();
    l.write_json(&mut json).unwrap();
    let e: Entry = serde_json::from_slice(&json).unwrap();
    let r = &item.record;
    assert_eq!(
        e,
        Entry {
            id: "ab".repeat(16),
            time: 1,
            class: Some("org.x/crash/clr".into()),
            event: Some(r.event_id.to_string()),
            boot: Some("b".repeat(32)),
            uid: Some(7),
            pid: Some(8),
            severity: Some(3),
            fate: "spooled".into(),
            payload: Some("text \"quoted\" \u{1}".into()),
            creation_timestamp: Some(5),
            payload_format_version: Some(1),
            host: Some((*r.host).clone()),
        }
    );
    let mut json = Vec::new();
    Line::fate(
        RecordId::from_bytes([0xab; 16]),
        Fate::RejectedByServer { status: 400, body: "bad".into(), attempts: None },
    )
    .write_json(&mut json)
    .unwrap();
    let u: Entry = serde_json::from_slice(&json).unwrap();
    assert_eq!(
        (u.id.as_str(), u.fate.as_str(), u.class),
        ("ab".repeat(16).as_str(), "rejected-by-server: 400 bad", None)
    );
}

#[test]
fn write_merge_filter() {
    let dir = tempfile::tempdir().unwrap();
    let (j, h) = Journal::open(dir.path()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        j.append_durable(vec![first(0xa, "org.x/crash/clr", "a"), first(0xb, "org.x/hello/world", "b")]).await.unwrap();
        j.append_durable(vec![Line::fate(RecordId::from_bytes([0xa; 16]), Fate::Delivered)]).await.unwrap();
    });
    // Lazy lines are written too (within GATHER), without anyone waiting.
    j.append(vec![first(0xc, "org.x/hello/world", "c")], None);
    let deadline = Instant::now() + Duration::from_secs(5);
    while read(dir.path()).unwrap().len() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(j);
    h.join().unwrap();
    // A torn line at the end is ignored.
    std::fs::OpenOptions::new().append(true).open(dir.path().join(FILE_NAME)).unwrap().write_all(b"{\"id\":").unwrap();
    let all = read(dir.path()).unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].entry.fate, "delivered");
    assert_eq!(all[1].entry.fate, "spooled");
    let f = Filter { classification: Some("org.x/crash/*".into()), ..Default::default() };
    assert_eq!(all.iter().filter(|m| f.matches(m)).count(), 1);
    let f = Filter { classification: Some("org.x/*".into()), ..Default::default() };
    assert_eq!(all.iter().filter(|m| f.matches(m)).count(), 3);
    let f = Filter { classification: Some("org.x/cr/*".into()), ..Default::default() };
    assert_eq!(all.iter().filter(|m| f.matches(m)).count(), 0);
    let f = Filter { record_id: Some("0b".repeat(16)), ..Default::default() };
    assert_eq!(all.iter().filter(|m| f.matches(m)).count(), 1);
}

/// A line torn by a crash mid-write is cut off when the journal is opened
/// again: the next line starts a line of its own instead of being glued to
/// the fragment (and lost with it).
#[test]
fn a_torn_last_line_is_cut_before_appending() {
    let dir = tempfile::tempdir().unwrap();
    let write = |lines: Vec<Line>| {
        let (j, h) = Journal::open(dir.path()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(j.append_durable(lines)).unwrap();
        drop(j);
        h.join().unwrap();
    };
    write(vec![first(0xa, "org.x/crash/clr", "a")]);
    let path = dir.path().join(FILE_NAME);
    let whole = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"id\":\"0b0b").unwrap();
    write(vec![first(0xc, "org.x/hello/world", "c")]);
    let ids: Vec<String> = read(dir.path()).unwrap().into_iter().map(|m| m.entry.id).collect();
    assert_eq!(ids, vec!["0a".repeat(16), "0c".repeat(16)]);
    let text = std::fs::read(&path).unwrap();
    assert!(!text.windows(4).any(|w| w == b"0b0b"), "the fragment is gone");
    assert!(text.len() as u64 > whole && text.ends_with(b"\n"));
}

#[test]
fn journal_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    // Made private, whatever the umask.
    let (j, h) = Journal::open(dir.path()).unwrap();
    drop(j);
    h.join().unwrap();
    assert_eq!(mode(&dir.path().join(FILE_NAME)), 0o600);
    // Files an older version left readable are made private at open.
    std::fs::set_permissions(dir.path().join(FILE_NAME), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(dir.path().join(OLD_FILE_NAME), "").unwrap();
    std::fs::set_permissions(dir.path().join(OLD_FILE_NAME), std::fs::Permissions::from_mode(0o644)).unwrap();
    let (j, h) = Journal::open(dir.path()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(j.append_durable(vec![first(1, "a/b/c", "x")])).unwrap();
    drop(j);
    h.join().unwrap();
    assert_eq!((mode(&dir.path().join(FILE_NAME)), mode(&dir.path().join(OLD_FILE_NAME))), (0o600, 0o600));
    // The file pruning writes (and renames over the journal) too.
    std::fs::write(dir.path().join("journal.tmp"), "").unwrap();
    std::fs::set_permissions(dir.path().join("journal.tmp"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = Retention { max_age_secs: 1, max_records: 10 };
    assert_eq!(prune(dir.path(), 1 << 40, &r).unwrap().removed, 1);
    assert_eq!(mode(&dir.path().join(FILE_NAME)), 0o600);
}

#[test]
fn the_writer_lives_while_a_handle_does() {
    let dir = tempfile::tempdir().unwrap();
    let (j, h) = Journal::open(dir.path()).unwrap();
    let j2 = j.clone();
    drop(j);
    // One handle is still alive: the writer goes on.
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(j2.append_durable(vec![first(1, "a/b/c", "x")])).unwrap();
    drop(j2);
    h.join().unwrap();
    assert_eq!(read(dir.path()).unwrap().len(), 1);
}

#[test]
fn retention_prunes_old_and_excess_records_with_their_fates() {
    let dir = tempfile::tempdir().unwrap();
    let day = 86_400;
    let now = 100 * day;
    let mut old = entry("old", "org.x/a/b");
    old.time = now - 15 * day;
    old.payload = Some("secret old payload".into());
    let mut lines = vec![old, Entry { time: now - 15 * day + 5, ..Entry::update("old", &Fate::Delivered) }];
    for i in 0..5u64 {
        let mut e = entry(&format!("r{i}"), "org.x/a/b");
        e.time = now - 13 * day + i;
        lines.push(e);
        lines.push(Entry { time: now, ..Entry::update(&format!("r{i}"), &Fate::Delivered) });
    }
    let text: String = lines.iter().map(|e| serde_json::to_string(e).unwrap() + "\n").collect();
    // Half in the rotated file.
    let (a, b) = text.split_at(text.match_indices('\n').nth(3).unwrap().0 + 1);
    std::fs::write(dir.path().join(OLD_FILE_NAME), a).unwrap();
    std::fs::write(dir.path().join(FILE_NAME), b).unwrap();
    let r = Retention { max_age_secs: 14 * day, max_records: 3 };
    assert_eq!(prune(dir.path(), now, &r).unwrap(), Pruned { kept: 3, removed: 3 });
    let all = read(dir.path()).unwrap();
    let ids: Vec<&str> = all.iter().map(|m| m.entry.id.as_str()).collect();
    assert_eq!(ids, ["r2", "r3", "r4"]);
    assert!(all.iter().all(|m| m.entry.fate == "delivered"));
    let raw = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
    assert!(!raw.contains("secret old payload") && !raw.contains("\"r0\""));
    assert!(!dir.path().join(OLD_FILE_NAME).exists());
    // Nothing more to prune: the file is left alone.
    assert_eq!(prune(dir.path(), now, &r).unwrap(), Pruned { kept: 3, removed: 0 });
    // Everything ages out.
    assert_eq!(prune(dir.path(), now + 20 * day, &r).unwrap(), Pruned { kept: 0, removed: 3 });
    assert!(read(dir.path()).unwrap().is_empty());
}

#[test]
fn every_journal_key_is_in_the_data_dictionary() {
    let mut e = entry("a", "org.x/a/b");
    e.payload = Some("p".into());
    let m = Merged { entry: e, fate_time: 1 };
    let v = serde_json::to_value(&m).unwrap();
    for key in v.as_object().unwrap().keys() {
        let f = telemetry::fields::field(key)
            .unwrap_or_else(|| panic!("journal key {key} is missing from telemetry::fields::FIELDS"));
        assert!(matches!(f.scope, telemetry::fields::Scope::Local | telemetry::fields::Scope::Sent), "{key}");
    }
}

#[test]
fn time_format() {
    assert_eq!(format_time(0), "1970-01-01 00:00:00");
    assert_eq!(format_time(1_700_000_000), "2023-11-14 22:13:20");
    assert_eq!(format_time(951_782_400), "2000-02-29 00:00:00");
}

#[test]
fn final_fates_per_destination() {
    use crate::spool::Dest;
    let s = Dest::Server.bit();
    let o = Dest::Otlp.bit();
    for (fate, bits) in [
        ("delivered", s),
        ("rejected-by-server: 400 bad", s),
        ("rejected-by-server: 500 after 10 attempts: x", s),
        ("delivered (otlp)", o),
        ("delivered (otlp): partial success, 1 of 2 log records in its request rejected: old", o),
        ("rejected-by-server (otlp): 400 bad", o),
        ("dropped (otlp): expired", o),
        ("dropped: expired", u8::MAX),
        ("spooled", 0),
        ("rate-limited: spooled", 0),
        ("local-only: not opted in", 0),
    ] {
        assert_eq!(final_at(fate), bits, "{fate}");
    }
}
