//! Issue #13, item 1: delivery never stalls on one record.
//!
//! A failed post puts that record back with its own next-attempt time
//! (exponential backoff with jitter, 1 s up to `delivery_retry_max`) while
//! other records keep flowing. A record answered 5xx while other records to
//! the same server succeed is suspect; after `delivery_max_attempts` such
//! attempts it leaves the spool as `rejected-by-server: <status> after <n>
//! attempts: <answer>`. Server-wide conditions (refused connections, 429 and
//! 503 with `Retry-After`) pause the whole server and count against no
//! record; an outage never makes a record poison.
//!
//! Every collector here runs with `rate_limit_enabled=false`: the default
//! window (1,000 records per 15 minutes) would hold back the 1,001st record
//! of the poison tests by design.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::collector::Collector;
use e2e::fixtures::count;
use e2e::fixtures::Records;
use e2e::sink::{Mode, Post, Sink, POISON_PREFIX};
use telemetry::client::Client;
use telemetry::{Record, Severity};

const NO_RATE_LIMIT: &str = "rate_limit_enabled=false";

/// The counters of a status, on one line.
fn counters(s: &serde_json::Value) -> String {
    let mut out: Vec<String> =
        ["delivered", "spooled", "rejected_by_server", "dropped", "rate_limited", "delivery_failures"]
            .iter()
            .map(|k| format!("{k}={}", count(s, k)))
            .collect();
    out.push(format!("retry_in_secs={}", s["retry_in_secs"]));
    out.push(format!("last_delivery_error={}", s["last_delivery_error"]));
    out.join(" ")
}

const RECORDS: Records = Records::new("org.test/collector/retry", Severity::Medium);

fn good(i: usize) -> Record {
    RECORDS.text(format!("good-{i}\nan ordinary record\n"))
}

fn poison(i: usize) -> Record {
    RECORDS.text(format!("{POISON_PREFIX}{i}\nthe server answers 500 to this one\n"))
}

/// Sends records, all of which must be accepted; their record ids.
fn send_all(client: &mut Client, records: &[Record]) -> Vec<String> {
    let mut ids = Vec::new();
    for chunk in records.chunks(100) {
        let acks = client.send_many(chunk).expect("sent");
        for a in acks {
            ids.push(a.expect("accepted").to_string());
        }
    }
    ids
}

fn is_poison(p: &Post) -> bool {
    p.payload().starts_with(POISON_PREFIX.as_bytes())
}

/// The `i` of a good record's post.
fn good_index(p: &Post) -> Option<usize> {
    let rest = p.payload().strip_prefix(b"good-")?;
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// How many of the good records `0..n` are among `posts` answered 2xx.
fn good_in(posts: &[Post], n: usize) -> usize {
    let mut seen: Vec<usize> = posts.iter().filter(|p| p.ok()).filter_map(good_index).filter(|&i| i < n).collect();
    seen.sort_unstable();
    seen.dedup();
    seen.len()
}

/// How many of the good records `0..n` the sink took. (Not from inside a
/// `wait_for` predicate, which holds the sink's lock: use [`good_in`]
/// there.)
fn good_delivered(sink: &Sink, n: usize) -> usize {
    sink.with_posts(|p| good_in(p, n))
}

/// Arrival times of the poison record's posts, in seconds after `t0`.
fn poison_attempts(sink: &Sink, t0: Instant) -> Vec<f64> {
    sink.with_posts(|p| p.iter().filter(|p| is_poison(p)).map(|p| p.at.duration_since(t0).as_secs_f64()).collect())
}

fn gaps(at: &[f64]) -> Vec<f64> {
    at.windows(2).map(|w| w[1] - w[0]).collect()
}

/// The journal fate of the record with id `id`.
fn fate_of(c: &Collector, id: &str) -> String {
    c.journal(&["-r", id])
        .iter()
        .find(|e| e["id"] == id)
        .and_then(|e| e["fate"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Keeps good records flowing (one every 100 ms) on their own connection,
/// so that the poison record's failures happen while others succeed.
struct Trickle {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Trickle {
    fn start(c: &Collector, from: usize) -> Trickle {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let mut client = c.client();
        let (s2, n2) = (stop.clone(), sent.clone());
        let handle = std::thread::spawn(move || {
            let t = Instant::now();
            let mut i = from;
            while !s2.load(Ordering::SeqCst) && t.elapsed() < Duration::from_secs(60) {
                client.send(&good(i)).expect("trickle record accepted");
                n2.fetch_add(1, Ordering::SeqCst);
                i += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Trickle { stop, sent, handle: Some(handle) }
    }

    /// Stops; the number of records it sent.
    fn stop(&mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.join().expect("trickle");
        }
        self.sent.load(Ordering::SeqCst)
    }
}

impl Drop for Trickle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[test]
fn a_poison_record_holds_back_nothing_and_is_rejected_after_max_attempts() {
    let sink = Sink::start();
    sink.set_mode(Mode::poison());
    let mut c =
        Collector::new(Some(&sink.url()), &format!("{NO_RATE_LIMIT}\ndelivery_max_attempts=3\ndelivery_retry_max=4"));
    c.start();
    let mut client = c.client();
    let t0 = Instant::now();
    let poison_id = send_all(&mut client, &[poison(0)]).remove(0);
    let goods: Vec<Record> = (0..1000).map(good).collect();
    send_all(&mut client, &goods);
    let mut trickle = Trickle::start(&c, 1000);
    let all_good = sink.wait_for(Duration::from_secs(10), |p| good_in(p, 1000) >= 1000);
    let good_secs = t0.elapsed().as_secs_f64();
    let good_then = good_delivered(&sink, 1000);
    // The verdict: three suspect attempts, spaced by the backoff.
    let s = c.wait_status(Duration::from_secs(30), |s| count(s, "rejected_by_server") >= 1);
    let sent_trickle = trickle.stop();
    // No attempt after the verdict.
    std::thread::sleep(Duration::from_millis(1500));
    let attempts = poison_attempts(&sink, t0);
    let fate = fate_of(&c, &poison_id);
    // (A delivered record leaves the spool once its journal line is written.)
    let s_end = c.wait_status(Duration::from_secs(10), |s| {
        count(s, "delivered") as usize >= 1000 + sent_trickle && count(s, "spooled") == 0
    });
    let report = format!(
        "good records: {good_then} of 1000 delivered {good_secs:.1} s after the first was sent (trickle sent {sent_trickle} more)\n\
         poison record: {} attempts at {attempts:.2?} s, gaps {:.2?} s; journal fate {fate:?}\n\
         status at the verdict: {}\nstatus at the end: {}\n{}",
        attempts.len(),
        gaps(&attempts),
        counters(&s),
        counters(&s_end),
        c.log_summary(8)
    );
    eprintln!("{report}");
    assert!(all_good, "good records held back behind the poison record (want all 1000 within 10 s):\n{report}");
    assert_eq!(
        count(&s, "rejected_by_server"),
        1,
        "the poison record was not rejected after 3 suspect attempts:\n{report}"
    );
    assert_eq!(
        attempts.len(),
        3,
        "the poison record was posted {} times, want delivery_max_attempts = 3:\n{report}",
        attempts.len()
    );
    let g = gaps(&attempts);
    assert!(
        g.iter().all(|&d| d >= 0.5),
        "attempts closer than 0.5 s (want the record's own backoff, from 1 s):\n{report}"
    );
    assert!(g.windows(2).all(|w| w[1] >= w[0] * 0.9), "the backoff does not grow between attempts:\n{report}");
    assert!(
        fate.starts_with("rejected-by-server: 500 after 3 attempts: poison record refused"),
        "journal fate of the poison record:\n{report}"
    );
    assert_eq!(count(&s_end, "delivered") as usize, 1000 + sent_trickle, "every good record delivered:\n{report}");
    assert_eq!(count(&s_end, "spooled"), 0, "nothing left in the spool:\n{report}");
}

#[test]
fn a_suspect_record_is_delivered_once_the_server_takes_it() {
    let sink = Sink::start();
    sink.set_mode(Mode::poison());
    let mut c =
        Collector::new(Some(&sink.url()), &format!("{NO_RATE_LIMIT}\ndelivery_max_attempts=8\ndelivery_retry_max=4"));
    c.start();
    let mut client = c.client();
    let t0 = Instant::now();
    let poison_id = send_all(&mut client, &[poison(0)]).remove(0);
    send_all(&mut client, &(0..1000).map(good).collect::<Vec<_>>());
    let mut trickle = Trickle::start(&c, 1000);
    let all_good = sink.wait_for(Duration::from_secs(10), |p| good_in(p, 1000) >= 1000);
    // Two refusals, then the server is fixed.
    let two = sink.wait_for(Duration::from_secs(20), |p| p.iter().filter(|p| is_poison(p)).count() >= 2);
    sink.set_mode(Mode::ok());
    let fixed_at = t0.elapsed().as_secs_f64();
    let delivered = sink.wait_for(Duration::from_secs(20), |p| p.iter().any(|p| is_poison(p) && p.ok()));
    let sent_trickle = trickle.stop();
    let attempts = poison_attempts(&sink, t0);
    let s = c.wait_status(Duration::from_secs(10), |s| count(s, "delivered") as usize >= 1001 + sent_trickle);
    let fate = c.wait_journal(Duration::from_secs(5), |j| {
        j.iter().any(|e| e["id"] == poison_id.as_str() && e["fate"] == "delivered")
    });
    let fate = fate.iter().find(|e| e["id"] == poison_id.as_str()).map(|e| e["fate"].to_string()).unwrap_or_default();
    let report = format!(
        "good records all delivered within 10 s: {all_good}; poison attempts at {attempts:.2?} s (server fixed at {fixed_at:.2} s); \
         journal fate {fate}\nstatus: {} (want delivered {})\n{}",
        counters(&s),
        1001 + sent_trickle,
        c.log_summary(8)
    );
    eprintln!("{report}");
    assert!(all_good, "good records held back behind the poison record:\n{report}");
    assert!(two, "the poison record was not retried twice within 20 s:\n{report}");
    assert!(delivered, "the record was not delivered after the server was fixed:\n{report}");
    assert_eq!(count(&s, "rejected_by_server"), 0, "{report}");
    assert_eq!(fate, "\"delivered\"", "{report}");
    assert_eq!(count(&s, "delivered") as usize, 1001 + sent_trickle, "{report}");
}

#[test]
fn an_outage_of_30_s_rejects_no_record() {
    let mut sink = Sink::start();
    let mut c = Collector::new(
        Some(&sink.url()),
        &format!("{NO_RATE_LIMIT}\ndelivery_max_attempts=3\ndelivery_retry_max=4\nretry_max_backoff=2"),
    );
    c.start();
    let mut client = c.client();
    send_all(&mut client, &(0..10).map(good).collect::<Vec<_>>());
    assert!(sink.wait_for(Duration::from_secs(10), |p| good_in(p, 10) >= 10), "{}", c.log_summary(8));
    // Down for 30 s; records keep coming.
    sink.stop();
    let down = Instant::now();
    let mut i = 10;
    send_all(&mut client, &(i..i + 100).map(good).collect::<Vec<_>>());
    i += 100;
    while down.elapsed() < Duration::from_secs(30) {
        send_all(&mut client, &[good(i)]);
        i += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    let during = c.status();
    sink.restart();
    let back = Instant::now();
    let all = sink.wait_for(Duration::from_secs(20), |p| good_in(p, i) >= i);
    let back_secs = back.elapsed().as_secs_f64();
    // (A delivered record leaves the spool once its journal line is written.)
    let s = c.wait_status(Duration::from_secs(10), |s| count(s, "delivered") as usize >= i && count(s, "spooled") == 0);
    let (fates, _) = c.journal_fate_counts();
    let report = format!(
        "{i} records sent, {} delivered distinct ({back_secs:.1} s after the server came back)\n\
         status during the outage: {}\nstatus at the end: {}\njournal fates {fates:?}\n{}",
        good_delivered(&sink, i),
        counters(&during),
        counters(&s),
        c.log_summary(8)
    );
    eprintln!("{report}");
    assert_eq!(count(&s, "rejected_by_server"), 0, "an outage made records poison:\n{report}");
    assert!(!fates.contains_key("rejected-by-server"), "{report}");
    assert!(all, "not every record delivered within 20 s of the server's return:\n{report}");
    assert_eq!(count(&s, "delivered") as usize, i, "{report}");
    assert_eq!(count(&s, "spooled"), 0, "{report}");
}

#[test]
fn an_outage_of_500s_for_every_record_rejects_no_record() {
    // 500 to everything, with no success in between, is the server's
    // trouble, not the records'.
    let sink = Sink::start();
    sink.set_mode(Mode::Status(500, "down for maintenance".into()));
    let mut c = Collector::new(
        Some(&sink.url()),
        &format!("{NO_RATE_LIMIT}\ndelivery_max_attempts=3\ndelivery_retry_max=2\nretry_max_backoff=1"),
    );
    c.start();
    let mut client = c.client();
    send_all(&mut client, &(0..20).map(good).collect::<Vec<_>>());
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let refused = sink.with_posts(|p| p.len());
    let during = c.status();
    sink.set_mode(Mode::ok());
    let all = sink.wait_for(Duration::from_secs(15), |p| good_in(p, 20) >= 20);
    let s = c.wait_status(Duration::from_secs(10), |s| count(s, "delivered") >= 20);
    let report = format!(
        "{refused} posts answered 500 in 10 s; status then: {}\nat the end: {}\n{}",
        counters(&during),
        counters(&s),
        c.log_summary(8)
    );
    eprintln!("{report}");
    assert!(refused >= 3, "the records were not retried during the outage:\n{report}");
    assert_eq!(count(&s, "rejected_by_server"), 0, "an outage of 500s made records poison:\n{report}");
    assert!(all, "not every record delivered after the outage:\n{report}");
    assert_eq!(count(&s, "delivered"), 20, "{report}");
}

/// The first post of a record answered with `answer()` (a Retry-After,
/// made just before it is used: HTTP-dates are absolute), then nothing may
/// reach the server for `quiet` seconds (the pause is server-wide), and
/// everything is delivered after it.
fn check_retry_after(answer: impl FnOnce() -> Mode, quiet: f64) {
    let sink = Sink::start();
    let mut c = Collector::new(Some(&sink.url()), NO_RATE_LIMIT);
    c.start();
    let mut client = c.client();
    send_all(&mut client, &[good(0)]);
    assert!(sink.wait_for(Duration::from_secs(10), |p| good_in(p, 1) >= 1), "{}", c.log_summary(8));
    let answer = answer();
    let want_status = match &answer {
        Mode::RetryAfter { status, .. } => *status,
        Mode::TooMany(_) => 429,
        other => panic!("not a Retry-After answer: {other:?}"),
    };
    let shown = format!("{answer:?}");
    sink.answer_next([answer]);
    let n0 = sink.count();
    send_all(&mut client, &[good(1)]);
    assert!(sink.wait_for(Duration::from_secs(10), |p| p.len() > n0), "{}", c.log_summary(8));
    let (paused_at, status) = sink.with_posts(|p| (p[n0].at, p[n0].answered));
    assert_eq!(status, Some(want_status));
    // More records while the server asked to wait.
    std::thread::sleep(Duration::from_millis(200));
    send_all(&mut client, &(2..22).map(good).collect::<Vec<_>>());
    let all = sink.wait_for(Duration::from_secs(15), |p| good_in(p, 22) >= 22);
    let after: Vec<f64> =
        sink.with_posts(|p| p[n0 + 1..].iter().map(|p| p.at.duration_since(paused_at).as_secs_f64()).collect());
    let first = after.first().copied().unwrap_or(f64::NAN);
    let s = c.status();
    let report = format!(
        "answered {shown} to the post of record 1; the posts after it arrived at {:.2?} s after that answer \
         (want none before {quiet} s); all 22 delivered: {all}\nstatus: {}\n{}",
        &after[..after.len().min(12)],
        counters(&s),
        c.log_summary(8)
    );
    eprintln!("{report}");
    assert!(first >= quiet, "a post reached the server {first:.2} s after it asked to wait:\n{report}");
    assert!(all, "{report}");
    let s = c.wait_status(Duration::from_secs(5), |s| count(s, "delivered") >= 22);
    assert_eq!((count(&s, "delivered"), count(&s, "rejected_by_server")), (22, 0), "{report}");
}

#[test]
fn retry_after_seconds_on_429_pauses_the_server() {
    check_retry_after(|| Mode::retry_after_secs(429, 2), 1.8);
}

#[test]
fn retry_after_seconds_on_503_pauses_the_server() {
    check_retry_after(|| Mode::retry_after_secs(503, 2), 1.8);
}

#[test]
fn retry_after_http_date_pauses_the_server() {
    // now + 3 s, at one-second resolution: a wait of 2 to 3 s.
    check_retry_after(|| Mode::retry_after_date(503, 3), 1.8);
    check_retry_after(|| Mode::retry_after_date(429, 3), 1.8);
}
