use super::*;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use telemetry::Record;
use telemetry::RecordId;
use telemetry::{Classification, Payload, Severity};

fn item(n: u8, accepted: u64) -> Item {
    let record = Record::builder(
        Classification::parse("org.t/spool/test").unwrap(),
        Severity::Low,
        Payload::text(format!("r{n}")),
    )
    .build();
    Item { record_id: RecordId::from_bytes([n; 16]), accepted, counted: true, uid: 1, pid: 2, record }
}

fn commit(s: &Spool, items: Vec<Item>) -> u64 {
    let mut body = Vec::new();
    for i in &items {
        encode_item(i, &mut body).unwrap();
    }
    s.commit(items.into_iter().map(Arc::new).collect(), &body, 0).unwrap()
}

/// A block written but not yet published is durable (it comes back after
/// a restart) and invisible to delivery until published.
#[test]
fn a_written_block_reaches_delivery_only_once_published() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (s, _) = Spool::open(dir.path(), 0).unwrap();
        let mut body = Vec::new();
        encode_item(&item(7, 100), &mut body).unwrap();
        let w = s.write(vec![Arc::new(item(7, 100))], &body, 0, Fsync::Now).unwrap();
        assert!(s.next().is_none(), "not visible before publish");
        s.publish(w);
        assert_eq!(s.next().map(|t| t.item.record_id), Some(RecordId::from_bytes([7; 16])));
        assert_eq!(s.records(), 1);
        let mut body = Vec::new();
        encode_item(&item(8, 100), &mut body).unwrap();
        let unpublished = s.write(vec![Arc::new(item(8, 100))], &body, 0, Fsync::Lazy).unwrap();
        std::mem::forget(unpublished);
    }
    // Both were written (the second lazily: in the page cache, so a killed
    // process loses it no more than the first): both come back.
    let (s, rec) = Spool::open(dir.path(), 0).unwrap();
    assert_eq!(rec.records, 2);
    assert_eq!(s.next().map(|t| t.item.record_id), Some(RecordId::from_bytes([7; 16])));
    assert_eq!(s.next().map(|t| t.item.record_id), Some(RecordId::from_bytes([8; 16])));
}

/// A block written lazily is synced by the housekeeper once LAZY_SYNC has
/// passed (not before), or at once with a durable block of the same file.
#[test]
fn a_lazy_block_is_synced_within_lazy_sync() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Spool::open(dir.path(), 0).unwrap();
    let write = |n: u8, fsync: Fsync| {
        let mut body = Vec::new();
        encode_item(&item(n, 100), &mut body).unwrap();
        let w = s.write(vec![Arc::new(item(n, 100))], &body, 0, fsync).unwrap();
        s.publish(w);
    };
    let t = std::time::Instant::now();
    write(1, Fsync::Lazy);
    write(2, Fsync::Lazy);
    assert_eq!(s.lazy.len(), 1, "one file waits for its sync");
    while s.lazy.len() > 0 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(s.lazy.len(), 0, "synced by the housekeeper");
    assert!(t.elapsed() >= LAZY_SYNC - Duration::from_millis(5), "not before its deadline: {:?}", t.elapsed());
    write(3, Fsync::Lazy);
    assert_eq!(s.lazy.len(), 1);
    write(4, Fsync::Now);
    assert_eq!(s.lazy.len(), 0, "a durable block's fdatasync covers the file");
    write(5, Fsync::Lazy);
    s.settle(Duration::from_secs(5));
    assert_eq!(s.lazy.len(), 0, "settle (at stop) syncs what waits");
}

#[test]
fn fifo_done_and_recovery() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (s, rec) = Spool::open(dir.path(), 0).unwrap();
        assert_eq!(rec.records, 0);
        commit(&s, vec![item(1, 100), item(2, 100)]);
        commit(&s, vec![item(3, 100)]);
        assert_eq!(s.records(), 3);
        let t = s.next().unwrap();
        assert_eq!(t.item.record_id, RecordId::from_bytes([1; 16]));
        s.done(&t);
        // Record 2 handed out but not done: it must come back after a restart.
        let t2 = s.next().unwrap();
        assert_eq!(t2.item.record_id, RecordId::from_bytes([2; 16]));
    }
    // A torn write left in a free file is removed on start.
    std::fs::write(dir.path().join("free-999"), b"TSPOOL01garbage").unwrap();
    let (s, rec) = Spool::open(dir.path(), 0).unwrap();
    assert_eq!(rec.torn, 1);
    assert_eq!(rec.records, 3, "the first segment had one record not done");
    let ids: Vec<u8> = std::iter::from_fn(|| s.next()).map(|t| t.item.record_id.as_bytes()[0]).collect();
    assert_eq!(ids, vec![1, 2, 3]);
}

/// Files holding at least one valid block.
fn with_blocks(d: &Path) -> Vec<PathBuf> {
    // A file the housekeeper renames between the listing and the open is
    // listed again under its new name.
    for _ in 0..100 {
        let paths: Vec<PathBuf> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().path()).collect();
        let opened: Vec<Option<(PathBuf, File)>> =
            paths.into_iter().map(|p| File::open(&p).ok().map(|f| (p, f))).collect();
        if opened.iter().any(Option::is_none) {
            std::thread::sleep(std::time::Duration::from_millis(5));
            continue;
        }
        let mut v: Vec<PathBuf> = opened
            .into_iter()
            .flatten()
            .filter(|(_, f)| !read_file(f.try_clone().unwrap()).0.is_empty())
            .map(|(p, _)| p)
            .collect();
        v.sort();
        return v;
    }
    panic!("the spool directory kept changing under the test");
}

fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn a_record_that_waits_holds_only_its_share_and_commits_wait_for_room() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Spool::open(dir.path(), 0).unwrap();
    let items: Vec<Item> = (0..10).map(|i| item(i, 10)).collect();
    commit(&s, items);
    let full = s.bytes();
    // Nine of ten delivered; one (a retry) still out: it holds a tenth.
    let tickets: Vec<Ticket> = std::iter::from_fn(|| s.next()).collect();
    assert_eq!(tickets.len(), 10);
    for t in &tickets[1..] {
        s.done(t);
    }
    assert!(s.bytes() <= full / 10 + 10, "{} of {full}", s.bytes());
    assert_eq!(s.records(), 1);
    // A cap the spool is at: a commit that may wait gets room as soon
    // as the last record leaves; one that may not is left out.
    let cap = Some(s.bytes() + 10);
    let (poll, long) = (Duration::from_millis(10), Duration::from_secs(30));
    let (fits, reserved, _) = s.reserve_wait(&[100], cap, poll, long, &|| false);
    assert_eq!((fits, reserved), (vec![false], 0));
    // Nothing leaves: waiting stops after `stall`.
    let (fits, _, waited) = s.reserve_wait(&[100], cap, poll, Duration::from_millis(300), &|| true);
    assert_eq!(fits, vec![false]);
    assert!(waited >= Duration::from_millis(250) && waited < Duration::from_secs(10), "{waited:?}");
    let s2 = s.clone();
    let first = tickets[0].clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        s2.done(&first);
    });
    let (fits, reserved, waited) = s.reserve_wait(&[100], cap, Duration::from_secs(5), long, &|| true);
    assert_eq!(fits, vec![true]);
    assert!(reserved > 0);
    assert!(waited >= Duration::from_millis(150) && waited < Duration::from_secs(4), "{waited:?}");
    t.join().unwrap();
    assert_eq!((s.bytes(), s.records()), (0, 0));
}

#[test]
fn an_idle_file_whose_blocks_are_all_final_is_started_over_in_place() {
    for cap in [None, Some(5 << 20)] {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = Spool::open(dir.path(), 0).unwrap();
        s.set_cap(cap);
        s.settle(std::time::Duration::from_secs(5));
        // Lone records, each delivered before the next arrives.
        for i in 0..20 {
            commit(&s, vec![item(i, 10)]);
            let t = s.next().unwrap();
            s.done(&t);
        }
        s.settle(std::time::Duration::from_secs(5));
        assert_eq!(with_blocks(dir.path()), Vec::<PathBuf>::new(), "no dead block is valid ({cap:?})");
        // One more, not delivered: the only block a restart finds.
        commit(&s, vec![item(99, 10)]);
        s.settle(std::time::Duration::from_secs(5));
        let segs: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("seg-"))
            .collect();
        assert_eq!(segs.len(), 1, "one file took every block: {segs:?} ({cap:?})");
        drop(s);
        let (s, rec) = Spool::open(dir.path(), 0).unwrap();
        assert_eq!(rec.records, 1, "{cap:?}");
        assert_eq!(s.next().map(|t| t.item.record_id), Some(RecordId::from_bytes([99; 16])));
    }
}

#[test]
fn done_frees_files_and_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Spool::open(dir.path(), 0).unwrap();
    commit(&s, vec![item(1, 10)]);
    commit(&s, vec![item(2, 1000)]);
    assert!(s.bytes() > 0);
    let expired = s.expire(500);
    assert_eq!(expired.items.len(), 1);
    assert_eq!(expired.items[0].record_id, RecordId::from_bytes([1; 16]));
    s.recycle(expired.files);
    let t = s.next().unwrap();
    assert_eq!(t.item.record_id, RecordId::from_bytes([2; 16]));
    s.done(&t);
    assert_eq!((s.bytes(), s.records()), (0, 0));
    // The housekeeper makes the finished file free: no valid block is left.
    s.settle(std::time::Duration::from_secs(5));
    assert_eq!(with_blocks(dir.path()), Vec::<PathBuf>::new());
    // Expiry on open too, and its file is left alone until recycled.
    commit(&s, vec![item(3, 10)]);
    drop(s);
    let (s, rec) = Spool::open(dir.path(), 500).unwrap();
    assert_eq!(rec.expired.len(), 1);
    assert_eq!(rec.expired_files.len(), 1);
    assert_eq!(with_blocks(dir.path()).len(), 1, "still on disk until its fate is journaled");
    recycled_leave_no_block(&s, dir.path(), rec.expired_files);
}

/// Expiry takes the records out of the spool at once (nothing hands them
/// out any more) but changes nothing on disk until their files are
/// recycled, which the collector does once their fates are journaled.
#[test]
fn expiry_changes_nothing_on_disk_until_its_files_are_recycled() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Spool::open(dir.path(), 0).unwrap();
    commit(&s, vec![item(1, 10)]);
    let e = s.expire(500);
    assert_eq!(e.items.len(), 1);
    assert_eq!((s.bytes(), s.records()), (0, 0));
    assert!(s.next().is_none());
    s.settle(std::time::Duration::from_secs(5));
    assert_eq!(with_blocks(dir.path()).len(), 1, "the expired block is still on disk");
    assert_eq!(e.files.len(), 1, "its file is handed back for recycling");
    recycled_leave_no_block(&s, dir.path(), e.files);
}

/// Recycles `files` and checks that no valid block is left in `dir`.
fn recycled_leave_no_block(s: &Spool, dir: &Path, files: Vec<PathBuf>) {
    s.recycle(files);
    s.settle(std::time::Duration::from_secs(5));
    assert_eq!(with_blocks(dir), Vec::<PathBuf>::new());
}

#[test]
fn commits_write_over_preallocated_files_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Spool::open(dir.path(), 0).unwrap();
    let sizes = || -> Vec<u64> {
        let mut v: Vec<u64> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).collect();
        v.sort();
        v
    };
    if free_space(dir.path()).is_some_and(|f| f >= PREALLOC_MIN_FREE) {
        wait_until("the free files are made", || sizes() == vec![MAX_FILE; POOL]);
        s.settle(std::time::Duration::from_secs(5));
        for i in 0..20 {
            commit(&s, vec![item(i, 100), item(i, 100)]);
        }
        // No file grew or shrank: the blocks went over the zeros.
        assert_eq!(sizes().iter().filter(|&&n| n == MAX_FILE).count(), sizes().len(), "{:?}", sizes());
        assert_eq!(with_blocks(dir.path()).len(), 1);
    }
}

#[test]
fn blocks_of_a_files_earlier_use_are_not_taken_for_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (s, _) = Spool::open(dir.path(), 0).unwrap();
        // First use of a file: three blocks of the same size, delivered.
        for i in 1..=3 {
            commit(&s, vec![item(i, 100)]);
        }
        s.settle(std::time::Duration::from_secs(5));
        let file = with_blocks(dir.path()).remove(0);
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
        let first_use = inode(&file);
        for _ in 1..=3 {
            let t = s.next().unwrap();
            s.done(&t);
        }
        s.settle(std::time::Duration::from_secs(5));
        assert!(with_blocks(dir.path()).is_empty());
        // Its second use: one block exactly the size of the old first,
        // so the old second block lies right behind it.
        commit(&s, vec![item(9, 100)]);
        s.settle(std::time::Duration::from_secs(5));
        let reused = with_blocks(dir.path());
        assert_eq!(reused.len(), 1);
        let (blocks, _) = read_file(File::open(&reused[0]).unwrap());
        assert_eq!(blocks.len(), 1);
        assert_eq!(inode(&reused[0]), first_use, "the finished file was used again");
    }
    let (s, rec) = Spool::open(dir.path(), 0).unwrap();
    assert_eq!((rec.records, rec.torn), (1, 0));
    assert_eq!(s.next().unwrap().item.record_id, RecordId::from_bytes([9; 16]));
    assert!(s.next().is_none());
}

#[test]
fn recycled_files_carry_new_segments_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Spool::open(dir.path(), 0).unwrap();
    for i in 0..200u8 {
        commit(&s, vec![item(i, 1000)]);
        let t = s.next().unwrap();
        assert_eq!(t.item.record_id, RecordId::from_bytes([i; 16]));
        s.done(&t);
    }
    s.settle(std::time::Duration::from_secs(5));
    commit(&s, vec![item(250, 1000)]);
    commit(&s, vec![item(251, 1000)]);
    drop(s);
    let (s, rec) = Spool::open(dir.path(), 0).unwrap();
    assert_eq!(rec.records, 2, "exactly the two undelivered records come back");
    assert_eq!(s.next().unwrap().item.record_id, RecordId::from_bytes([250; 16]));
    assert_eq!(s.next().unwrap().item.record_id, RecordId::from_bytes([251; 16]));
    assert!(s.next().is_none());
}

#[test]
fn blocks_share_a_file_and_a_torn_last_block_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (s, _) = Spool::open(dir.path(), 0).unwrap();
        commit(&s, vec![item(1, 100), item(2, 100)]);
        commit(&s, vec![item(3, 100)]);
        // One committer, one open file: both group commits went into it.
        assert_eq!(with_blocks(dir.path()).len(), 1);
    }
    // A crash in the middle of writing a third block: its header and
    // half its body reached the disk.
    let file = with_blocks(dir.path()).remove(0);
    let (blocks, _) = read_file(File::open(&file).unwrap());
    let (last_at, last) = blocks.last().unwrap();
    let end = last_at + last.bytes;
    let mut body = Vec::new();
    encode_item(&item(4, 100), &mut body).unwrap();
    let mut torn = header(last.seq + 1, last.epoch.unwrap(), 1, 100, &body).to_vec();
    torn.extend_from_slice(&body[..body.len() / 2]);
    File::options().write(true).open(&file).unwrap().write_all_at(&torn, end).unwrap();
    let (s, rec) = Spool::open(dir.path(), 0).unwrap();
    assert_eq!((rec.segments, rec.records, rec.torn), (2, 3, 1));
    let ids: Vec<u8> = std::iter::from_fn(|| s.next()).map(|t| t.item.record_id.as_bytes()[0]).collect();
    assert_eq!(ids, vec![1, 2, 3]);
}

#[test]
fn first_format_blocks_are_read() {
    let dir = tempfile::tempdir().unwrap();
    // A block as the first format wrote it.
    let mut body = Vec::new();
    encode_item(&item(5, 100), &mut body).unwrap();
    let mut b = MAGIC_V1.to_vec();
    b.extend_from_slice(&7u64.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&100u64.to_le_bytes());
    b.extend_from_slice(&(body.len() as u64).to_le_bytes());
    b.extend_from_slice(&fnv1a(&body).to_le_bytes());
    b.extend_from_slice(&body);
    std::fs::write(dir.path().join("seg-0000000000000007"), &b).unwrap();
    let (s, rec) = Spool::open(dir.path(), 0).unwrap();
    assert_eq!((rec.records, rec.torn), (1, 0));
    let t = s.next().unwrap();
    assert_eq!((t.seq, t.item.record_id), (7, RecordId::from_bytes([5; 16])));
    // New blocks number on from it.
    assert!(commit(&s, vec![item(6, 100)]) > 7);
}

fn take(s: &Spool, dest: Dest) -> Option<Ticket> {
    match s.next_ticket(dest) {
        Next::Ready(t) => Some(t),
        _ => None,
    }
}

/// With two destinations each takes every record at its own pace, and a
/// record leaves the spool only once both gave it a final fate; a
/// restart before that hands it to both again (at least once).
#[test]
fn two_destinations_each_take_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let both = Dest::Server.bit() | Dest::Otlp.bit();
    {
        let (s, _) = Spool::open(dir.path(), 0).unwrap();
        s.set_destinations(both);
        commit(&s, vec![item(1, 100), item(2, 100), item(3, 100)]);
        // The server takes all three; OTLP only the first so far.
        let server: Vec<Ticket> = std::iter::from_fn(|| take(&s, Dest::Server)).collect();
        assert_eq!(server.len(), 3);
        let o1 = take(&s, Dest::Otlp).unwrap();
        assert_eq!(o1.item.record_id, RecordId::from_bytes([1; 16]));
        for t in &server {
            s.done(t);
        }
        assert_eq!(s.records(), 3, "no record is final at OTLP yet");
        s.done(&o1);
        assert_eq!(s.records(), 2, "record 1 is final at both");
        // Done twice at one destination changes nothing.
        s.done(&o1);
        assert_eq!(s.records(), 2);
        let o2 = take(&s, Dest::Otlp).unwrap();
        assert_eq!(o2.item.record_id, RecordId::from_bytes([2; 16]));
        s.done(&o2);
        assert_eq!(s.records(), 1);
    }
    // Record 3 was final at the server only: after a restart its block
    // is there again, for both (blocks are kept whole and fates are not in
    // the spool: at least once, as with one destination).
    let (s, rec) = Spool::open(dir.path(), 0).unwrap();
    assert_eq!(rec.records, 3);
    s.set_destinations(both);
    let a: Vec<Ticket> = std::iter::from_fn(|| take(&s, Dest::Server)).collect();
    let b: Vec<Ticket> = std::iter::from_fn(|| take(&s, Dest::Otlp)).collect();
    assert_eq!((a.len(), b.len()), (3, 3));
    assert_eq!(b[2].item.record_id, RecordId::from_bytes([3; 16]));
    for t in &a {
        s.done(t);
    }
    assert_eq!(s.records(), 3);
    // OTLP removed from the configuration: the record is final at every
    // destination left, so it leaves.
    s.set_destinations(Dest::Server.bit());
    assert_eq!((s.records(), s.bytes()), (0, 0));
    // A held record is released over the rate windows once.
    commit(&s, vec![item(4, 100)]);
    s.set_destinations(both);
    let a = take(&s, Dest::Server).unwrap();
    let b = take(&s, Dest::Otlp).unwrap();
    assert!(!s.released(&a) && !s.released(&b));
    s.mark_released(&a);
    assert!(s.released(&b), "released once for both destinations");
}

/// A destination far ahead of the other does not keep the blocks it is
/// done with in memory (beyond the cache): the one behind reads them again.
#[test]
fn a_destination_ahead_keeps_no_backlog_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Spool::open(dir.path(), 0).unwrap();
    s.set_destinations(Dest::Server.bit() | Dest::Otlp.bit());
    for b in 0..200u32 {
        let items: Vec<Item> = (0..10).map(|i| item(((b * 10 + i) % 250) as u8, 100)).collect();
        commit(&s, items);
    }
    let server: Vec<Ticket> = std::iter::from_fn(|| take(&s, Dest::Server)).collect();
    assert_eq!(server.len(), 2000);
    for t in &server {
        s.done(t);
    }
    let cached = s.lock().cached;
    assert!(cached <= CACHE_BYTES + 8192, "{cached} bytes of blocks kept in memory");
    let otlp: Vec<Ticket> = std::iter::from_fn(|| take(&s, Dest::Otlp)).collect();
    assert_eq!(otlp.len(), 2000, "the destination behind gets every record");
    for t in &otlp {
        s.done(t);
    }
    assert_eq!((s.records(), s.lock().cached), (0, 0));
}

/// Fates journaled before a restart: a record final at one destination is
/// not handed to it again; final at all, it leaves the spool.
#[test]
fn journaled_fates_apply_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let both = Dest::Server.bit() | Dest::Otlp.bit();
    {
        let (s, _) = Spool::open(dir.path(), 0).unwrap();
        commit(&s, vec![item(1, 100), item(2, 100), item(3, 100)]);
    }
    let (s, rec) = Spool::open(dir.path(), 0).unwrap();
    assert_eq!(rec.records, 3);
    s.set_destinations(both);
    let finals: std::collections::HashMap<RecordId, u8> = [
        (RecordId::from_bytes([1; 16]), both),
        (RecordId::from_bytes([2; 16]), Dest::Otlp.bit()),
        (RecordId::from_bytes([9; 16]), both),
    ]
    .into_iter()
    .collect();
    assert_eq!(s.apply_finals(&finals), 1);
    assert_eq!(s.records(), 2);
    let server: Vec<u8> =
        std::iter::from_fn(|| take(&s, Dest::Server)).map(|t| t.item.record_id.as_bytes()[0]).collect();
    let otlp: Vec<u8> = std::iter::from_fn(|| take(&s, Dest::Otlp)).map(|t| t.item.record_id.as_bytes()[0]).collect();
    assert_eq!((server, otlp), (vec![2, 3], vec![3]));
}
