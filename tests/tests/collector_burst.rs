//! Issue #12: the collector as a drop-in for unmodified C probes under load.
//!
//! A burst of 8 processes x 12,000 records of 1 KiB, each sent as the C
//! library sends it (`telem-legacy-burst`: blocking connect, one legacy
//! frame, close, no reply read) into a collector at its default settings
//! (only server, socket and folders set, plus the test helper's short
//! delivery timeouts). Every record must be accounted for: delivered, or
//! counted in `dropped` with a reason in the journal; none lost silently.
//!
//! One setting differs from the defaults: `rate_limit_enabled=false`. The
//! default rate window (`record_burst_limit=1000` per 15 minutes, as in the
//! original) lets 1,000 of the burst's 96,000 records through in 15
//! minutes by design; these tests are about connections, file descriptors
//! and the spool, not the rate window. `TELEM_BURST_SETTINGS` replaces that
//! line (e.g. `TELEM_BURST_SETTINGS= cargo test ...` runs at the full
//! defaults).
//!
//! The tests of this file run one at a time (each burst takes both cores).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use e2e::burst::{self, Burst, BurstReport, Tally};
use e2e::collector::Collector;
use e2e::fixtures::count;
use e2e::sink::Sink;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn settings() -> String {
    std::env::var("TELEM_BURST_SETTINGS").unwrap_or_else(|_| "rate_limit_enabled=false".into())
}

/// The counters that say where records went.
fn counters(s: &serde_json::Value) -> String {
    [
        "received",
        "accepted",
        "rejected",
        "delivered",
        "spooled",
        "dropped",
        "rate_limited",
        "rejected_by_server",
        "expired",
        "local_only",
        "delivery_failures",
    ]
    .iter()
    .map(|k| format!("{k}={}", count(s, k)))
    .collect::<Vec<_>>()
    .join(" ")
}

fn describe_burst(r: &BurstReport) -> String {
    format!(
        "sender: {} of {} records sent in {:.1} s ({:.0}/s); lost at the sender: {} \
         (connect failed {}, write failed {}, not attempted before the sender's timeout {}, senders without a report {})",
        r.sent,
        r.total,
        r.elapsed,
        r.rate,
        r.failed,
        r.connect_errors,
        r.write_errors,
        r.not_attempted,
        r.unreported_procs
    )
}

fn describe_tally(t: &Tally, b: &Burst, delivered_posts: usize) -> String {
    let missing: u64 = b.total().saturating_sub(t.distinct);
    let per_proc = t.missing_per_proc(b);
    format!(
        "sink: {delivered_posts} posts answered 2xx, {} distinct records of the burst, {} records delivered more than once, \
         {} foreign bodies; {missing} of the burst's records never delivered (per sending process: {per_proc:?})",
        t.distinct, t.duplicated, t.foreign
    )
}

/// The sink's 2xx posts, tallied by burst record.
fn sink_tally(sink: &Sink, prefix: &str) -> (Tally, usize) {
    sink.with_posts(|p| {
        let ok: Vec<&[u8]> = p.iter().filter(|p| p.ok()).map(|p| p.body.as_slice()).collect();
        (burst::tally(prefix, ok.iter().copied()), ok.len())
    })
}

/// Polls the status until every sent record is delivered or dropped and
/// nothing is spooled, until `deadline`, or until nothing moved for
/// `quiet`. The last status.
fn wait_settled(c: &Collector, sent: u64, deadline: Instant, quiet: Duration) -> serde_json::Value {
    let mut last = (u64::MAX, u64::MAX, u64::MAX);
    let mut last_change = Instant::now();
    loop {
        let s = c.status();
        let now = (count(&s, "delivered"), count(&s, "dropped"), count(&s, "spooled"));
        if now.0 + now.1 >= sent && now.2 == 0 {
            return s;
        }
        if now != last {
            last = now;
            last_change = Instant::now();
        }
        if Instant::now() >= deadline || last_change.elapsed() >= quiet {
            return s;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The journal's `dropped:` entries, once they match `want` (fates are
/// written shortly after the counters move) or after 15 s; with the number
/// of entries and the count of each fate kind.
fn journal_dropped(c: &Collector, want: u64) -> (u64, u64, String) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (fates, entries) = c.journal_fate_counts();
        let dropped = fates.get("dropped").copied().unwrap_or(0);
        if dropped == want || Instant::now() >= deadline {
            return (dropped, entries, format!("{fates:?}; journal files (name, bytes) {:?}", c.journal_files()));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Why the journal may hold fewer `dropped:` entries than were counted.
fn rotation_hint(c: &Collector, journaled: u64, counted: u64) -> String {
    let rotated = c.journal_files().iter().any(|(n, _)| n == "journal.1");
    if rotated && journaled < counted {
        format!(
            " ({} dropped records have no journal entry; journal.1 exists: the journal rotated past 32 MiB, \
             and rotation keeps two files, so the oldest entries are gone)",
            counted - journaled
        )
    } else {
        String::new()
    }
}

#[test]
fn burst_into_a_healthy_server_is_delivered_exactly_once() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let t = Instant::now();
    let sink = Sink::start();
    sink.set_lean(true);
    let mut c = Collector::new(Some(&sink.url()), &settings());
    c.start();
    let b = Burst::default();
    let total = b.total();
    let r = burst::run(&c.socket, &b);
    eprintln!("{}", describe_burst(&r));
    // Delivery catches up: all of them, or no progress for 15 s.
    let deadline = t + Duration::from_secs(110);
    let mut last = (0, Instant::now());
    while sink.delivered_count() < total as usize && Instant::now() < deadline {
        let n = sink.delivered_count();
        if n != last.0 {
            last = (n, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(15) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Duplicates would show up a moment later.
    std::thread::sleep(Duration::from_millis(500));
    let s = c.status();
    let (tally, ok_posts) = sink_tally(&sink, &b.prefix);
    let report = format!(
        "{}\n{}\ncollector status: {}\n{}",
        describe_burst(&r),
        describe_tally(&tally, &b, ok_posts),
        counters(&s),
        c.log_summary(12)
    );
    eprintln!("healthy-server burst after {:.1} s:\n{report}", t.elapsed().as_secs_f64());
    assert_eq!(r.failed, 0, "records lost at the sender (the C library would report these as not sent):\n{report}");
    assert_eq!(tally.distinct, total, "records of the burst not delivered:\n{report}");
    assert_eq!(tally.duplicated, 0, "records delivered more than once:\n{report}");
    assert_eq!(ok_posts as u64, total, "posts answered 2xx != records of the burst:\n{report}");
    assert_eq!(count(&s, "dropped"), 0, "the collector dropped records although the server was healthy:\n{report}");
    assert_eq!(count(&s, "delivered"), total, "status delivered:\n{report}");
    assert!(t.elapsed() < Duration::from_secs(120), "took {:?}", t.elapsed());
}

#[test]
fn burst_while_the_server_is_down_is_delivered_or_counted_as_dropped() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let t = Instant::now();
    let mut sink = Sink::start();
    sink.set_lean(true);
    let url = sink.url();
    // Nothing listens on the port while the burst is sent.
    sink.stop();
    let mut c = Collector::new(Some(&url), &settings());
    c.start();
    // Bounded: the collector may hold senders back while it cannot store.
    // 8 x 2,000 (the issue saw the same loss at 16,000): every record then
    // has its journal entry. At 96,000 dropped records of 1 KiB (payloads
    // are kept in the journal) the journal rotates past its 2 x 32 MiB
    // bound and the oldest entries are gone by design.
    let b = Burst { records: 2_000, timeout: Duration::from_secs(60), ..Burst::default() };
    let r = burst::run(&c.socket, &b);
    let during = c.status();
    eprintln!("{}\nwhile the server was down: {}", describe_burst(&r), counters(&during));
    sink.restart();
    let s = wait_settled(&c, r.sent, t + Duration::from_secs(105), Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    let s2 = c.status();
    let s = if count(&s2, "delivered") + count(&s2, "dropped") > count(&s, "delivered") + count(&s, "dropped") {
        s2
    } else {
        s
    };
    let (delivered, dropped) = (count(&s, "delivered"), count(&s, "dropped"));
    let (jdropped, jentries, fates) = journal_dropped(&c, dropped);
    let (tally, ok_posts) = sink_tally(&sink, &b.prefix);
    let report = format!(
        "{}\n{}\ncollector status: {}\njournal: {jentries} entries, {jdropped} with a `dropped:` fate; fates {fates}\n\
         accounted for: delivered {delivered} + dropped {dropped} = {} of {} sent ({} unaccounted)\n{}",
        describe_burst(&r),
        describe_tally(&tally, &b, ok_posts),
        counters(&s),
        delivered + dropped,
        r.sent,
        r.sent as i64 - (delivered + dropped) as i64,
        c.log_summary(12)
    );
    eprintln!("server-down burst after {:.1} s:\n{report}", t.elapsed().as_secs_f64());
    assert_eq!(
        r.connect_errors + r.write_errors,
        0,
        "connections failed at the sender (records lost uncounted):\n{report}"
    );
    assert_eq!(delivered + dropped, r.sent, "records neither delivered nor counted as dropped:\n{report}");
    assert_eq!(tally.distinct, delivered, "the sink's distinct records != status delivered:\n{report}");
    assert_eq!(tally.duplicated, 0, "records delivered more than once:\n{report}");
    assert_eq!(
        jdropped,
        dropped,
        "status dropped != journal entries with a `dropped:` fate{}:\n{report}",
        rotation_hint(&c, jdropped, dropped)
    );
    assert!(t.elapsed() < Duration::from_secs(120), "took {:?}", t.elapsed());
}

#[test]
fn burst_with_256_file_descriptors_loses_nothing_accepted() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let t = Instant::now();
    let sink = Sink::start();
    sink.set_lean(true);
    let mut c = Collector::new(Some(&sink.url()), &settings());
    c.nofile = Some(256);
    c.start();
    assert_eq!(c.open_files_limit(), Some(("256".into(), "256".into())), "ulimit -n 256 for the collector");
    let b = Burst::default();
    let r = burst::run(&c.socket, &b);
    eprintln!("{}", describe_burst(&r));
    let s = wait_settled(&c, r.sent, t + Duration::from_secs(105), Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    let s = {
        let s2 = c.status();
        if count(&s2, "delivered") + count(&s2, "dropped") > count(&s, "delivered") + count(&s, "dropped") {
            s2
        } else {
            s
        }
    };
    let (delivered, dropped) = (count(&s, "delivered"), count(&s, "dropped"));
    let (jdropped, jentries, fates) = journal_dropped(&c, dropped);
    let (tally, ok_posts) = sink_tally(&sink, &b.prefix);
    let log = c.log();
    let unreadable = log.lines().filter(|l| l.contains("cannot be read back")).count();
    let report = format!(
        "{}\n{}\ncollector status: {}\njournal: {jentries} entries, {jdropped} with a `dropped:` fate; fates {fates}\n\
         accounted for: delivered {delivered} + dropped {dropped} = {} of {} sent ({} unaccounted)\n\
         log lines \"cannot be read back\": {unreadable}\n{}",
        describe_burst(&r),
        describe_tally(&tally, &b, ok_posts),
        counters(&s),
        delivered + dropped,
        r.sent,
        r.sent as i64 - (delivered + dropped) as i64,
        c.log_summary(12)
    );
    eprintln!("ulimit -n 256 burst after {:.1} s:\n{report}", t.elapsed().as_secs_f64());
    assert_eq!(
        r.connect_errors + r.write_errors,
        0,
        "connections failed at the sender (records lost uncounted):\n{report}"
    );
    assert_eq!(unreadable, 0, "spooled records that cannot be read back:\n{report}");
    assert_eq!(delivered + dropped, r.sent, "records neither delivered nor counted as dropped:\n{report}");
    assert_eq!(tally.distinct, delivered, "the sink's distinct records != status delivered:\n{report}");
    assert_eq!(tally.duplicated, 0, "records delivered more than once:\n{report}");
    assert_eq!(
        jdropped,
        dropped,
        "status dropped != journal entries with a `dropped:` fate{}:\n{report}",
        rotation_hint(&c, jdropped, dropped)
    );
    assert!(t.elapsed() < Duration::from_secs(120), "took {:?}", t.elapsed());
}
