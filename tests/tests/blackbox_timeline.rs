//! The black box's HTML timeline in a real headless Chromium (Debian's
//! `chromium`, installed by `cargo xtask setup`): a recording with a few
//! process trees, operator commands, a crash with its backtrace, a kernel
//! warning, a gap, truncation and readings is rendered by
//! `blackbox_timeline::write_html`, opened from a file:// URL and used as a
//! person would (real clicks, wheel turns and key presses over the DevTools
//! protocol). A screenshot is kept at `<target dir>/blackbox-timeline.png`
//! (`target/blackbox-timeline.png` unless CARGO_TARGET_DIR moves it).

use std::time::Duration;

use blackbox_timeline::{write_html, PageMeta};
use e2e::chromium::Chromium;
use telemetry::blackbox::{Entry, Event, TopProcess};

const W0: u64 = 1_764_000_000 * 1_000_000_000;
const BACKTRACE: &str =
    "#0  0x0000555555555139 in explode () at crashy.c:12\n#1  0x0000555555555150 in main () at crashy.c:20";
const HOSTILE: &str = "</script><script>window.pwned=1</script><img src=x onerror=\"window.pwned=2\">";

fn at(secs: f64, event: Event) -> Entry {
    let ns = (secs * 1e9) as u64;
    Entry { mono_ns: 5_000_000_000 + ns, wall_ns: W0 + ns, event }
}

fn exec(secs: f64, pid: u32, ppid: u32, argv: &[&str], tty: Option<&str>, unit: Option<&str>) -> Entry {
    at(
        secs,
        Event::Exec {
            pid,
            ppid,
            uid: if tty.is_some() { 1000 } else { 0 },
            tty: tty.map(String::from),
            exe: format!("/usr/bin/{}", argv[0].trim_start_matches("./")),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            cgroup: unit.map(|u| format!("/system.slice/{u}")),
            unit: unit.map(String::from),
            operator: tty.is_some(),
        },
    )
}

fn exit(secs: f64, pid: u32, ppid: u32, comm: &str, status: Option<i32>, signal: Option<i32>, run_ms: u64) -> Entry {
    at(secs, Event::Exit { pid, ppid, comm: comm.into(), status, signal, core_dumped: signal == Some(11), run_ms })
}

fn recording() -> Vec<Entry> {
    let pts = Some("pts/1");
    let mut v = vec![
        at(0.0, Event::Marker { text: "recording started".into() }),
        exec(5.0, 1000, 999, &["bash"], pts, None),
        exec(20.0, 1001, 1000, &["systemctl", "status", "nginx"], pts, None),
        exit(20.4, 1001, 1000, "systemctl", Some(3), None, 400),
        exec(30.0, 2000, 1, &["nginx", "-g", "daemon off;"], None, Some("nginx.service")),
        exec(30.5, 2001, 2000, &["nginx"], None, Some("nginx.service")),
        exec(40.0, 1002, 1000, &["grep", "needle-xyz", "/var/log/syslog"], pts, None),
        exit(40.2, 1002, 1000, "grep", Some(1), None, 200),
        exec(60.0, 1003, 1000, &["make", "-j4"], pts, None),
        exec(61.0, 1004, 1003, &["cc", "-c", "main.c"], pts, None),
        exit(64.0, 1004, 1003, "cc", Some(0), None, 3000),
        exit(65.0, 1003, 1000, "make", Some(0), None, 5000),
        exec(100.0, 3000, 1, &["/bin/sh", "-c", "run-parts /etc/cron.hourly"], None, None),
        exec(100.1, 3001, 3000, &["run-parts", "/etc/cron.hourly"], None, None),
        exit(102.0, 3001, 3000, "run-parts", Some(0), None, 1900),
        exit(102.1, 3000, 1, "sh", Some(0), None, 2100),
        exec(150.0, 1010, 1000, &["./crashy", "--boom"], pts, None),
        at(151.0, Event::FatalSignal { pid: 1010, tid: 1010, comm: "crashy".into(), signal: 11 }),
        exit(151.1, 1010, 1000, "crashy", None, Some(11), 1100),
        at(
            158.0,
            Event::Record {
                record_id: "rec-crash-1".into(),
                event_id: "ev-1".into(),
                classification: "org.clearlinux/crash/segv".into(),
                severity: 4,
                pid: Some(1010),
                payload: format!("Process crashy (pid 1010) died of signal 11\n{BACKTRACE}\n{HOSTILE}"),
            },
        ),
        at(
            200.0,
            Event::Record {
                record_id: "rec-warn-1".into(),
                event_id: "ev-2".into(),
                classification: "org.clearlinux/kernel/warning".into(),
                severity: 2,
                pid: None,
                payload: "WARNING: CPU: 1 PID: 0 at drivers/net/foo.c:42 foo_tx+0x1/0x2\nCall Trace:\n foo_tx+0x1/0x2"
                    .into(),
            },
        ),
        at(220.0, Event::Gap { lost: 42, reason: "ring buffer full (exec)".into() }),
        at(250.0, Event::Truncated { segments: 2, entries: 5000, until_wall_ns: W0 - 1_000_000_000 }),
        at(300.0, Event::Marker { text: "recording stopped".into() }),
    ];
    for i in 0..=30 {
        let s = i as f64 * 10.0;
        v.push(at(
            s + 0.5,
            Event::Reading {
                load1: 0.5 + (i % 7) as f64 * 0.3,
                load5: 0.6,
                load15: 0.4,
                mem_total_kb: 8_000_000,
                mem_available_kb: 5_000_000 - i * 50_000,
                swap_total_kb: 1_000_000,
                swap_free_kb: 1_000_000,
                disk_used_bytes: 10 << 30,
                disk_total_bytes: 100 << 30,
                top: vec![TopProcess { pid: 2001, comm: "nginx".into(), cpu_pct: 12.5 }],
            },
        ));
    }
    v.sort_by_key(|e| e.wall_ns);
    v
}

#[test]
fn the_timeline_page_lists_events_opens_backtraces_filters_lanes_and_fetches_nothing() {
    if e2e::chromium::find().is_none() {
        assert!(!e2e::in_ci(), "chromium is missing and CI=true: `cargo xtask setup` installs it");
        eprintln!("skipping: chromium not installed (`cargo xtask setup` installs it)");
        return;
    }
    let entries = recording();
    let total = entries.len();
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("timeline.html");
    let meta = PageMeta {
        recording_id: "bb-test-1".into(),
        label: Some("incident <42>".into()),
        started_wall_ns: Some(W0),
        stopped_wall_ns: Some(W0 + 300_000_000_000),
        ..PageMeta::default()
    };
    write_html(entries, &meta, std::fs::File::create(&page).unwrap()).unwrap();
    let url = format!("file://{}", page.display());

    let mut b = Chromium::launch(1400, 900).expect("launch chromium");
    b.navigate(&url).unwrap();
    b.wait_for("document.documentElement.dataset.ready === '1' && window.timelineReady", Duration::from_secs(30))
        .expect("the page becomes interactive");

    // The DOM lists the events in view (the whole recording at first).
    let count = b.eval("document.getElementById('list-count').textContent").unwrap();
    assert_eq!(count.as_str(), Some(format!("({total} events in view)").as_str()), "list count");
    let rows = b.eval("[...document.querySelectorAll('#list-rows .row')].map(r => r.textContent)").unwrap();
    let rows: Vec<&str> = rows.as_array().unwrap().iter().filter_map(|r| r.as_str()).collect();
    assert!(rows.len() >= 8, "rows in the DOM: {rows:?}");
    assert!(rows[0].contains("recording started"), "{rows:?}");
    assert!(rows.iter().any(|r| r.contains("operator") && r.contains("systemctl status nginx")), "{rows:?}");
    assert!(rows.len() < total, "the list is virtualized: only the rows in view are in the DOM");
    let lanes_before = b.eval("Number(document.getElementById('lane-count').dataset.shown)").unwrap();
    assert_eq!(lanes_before, 4, "host, bash's tree, nginx.service, the cron job's tree");
    let notices = b.eval("document.getElementById('notices').textContent").unwrap();
    let notices = notices.as_str().unwrap_or_default();
    assert!(notices.contains("42 events were lost in 1 gap"), "{notices}");
    assert!(notices.contains("5,000 older entries"), "{notices}");

    // Zoom in with the wheel over the crash marker, then click it.
    let crash = ".marker.crash[aria-label*=\"crash/segv\"]";
    let view_before = b.eval("document.getElementById('view-range').textContent").unwrap();
    let (x, y) = b.center_of(crash).expect("a crash marker");
    for _ in 0..3 {
        b.wheel(x, y, -300.0).unwrap();
    }
    b.wait_for(&format!("document.getElementById('view-range').textContent !== {view_before}"), Duration::from_secs(5))
        .expect("the wheel zooms");
    let (x2, _) = b.center_of(crash).expect("the crash marker is still in view after zooming at it");
    assert!((x2 - x).abs() < 20.0, "zoom is anchored at the pointer ({x} -> {x2})");
    b.wait_for("document.getElementById('detail').hidden", Duration::from_secs(1)).unwrap();
    b.click_on(crash).unwrap();
    let shown = b
        .wait_for(
            "!document.getElementById('detail').hidden && document.getElementById('detail-payload').textContent",
            Duration::from_secs(5),
        )
        .expect("clicking the crash marker opens its backtrace");
    let shown = shown.as_str().unwrap_or_default();
    assert!(shown.contains(BACKTRACE), "the backtrace: {shown}");
    assert!(shown.contains(HOSTILE), "the hostile payload is shown as text: {shown}");
    let title = b.eval("document.getElementById('detail-title').textContent").unwrap();
    assert!(title.as_str().unwrap_or_default().starts_with("record at "), "{title}");
    let pwned = b.eval("[typeof window.pwned, document.images.length, document.scripts.length]").unwrap();
    assert_eq!(pwned, serde_json::json!(["undefined", 0, 2]), "no payload ran or became an element");
    let shot = b.screenshot().unwrap();
    let target = e2e::bin_dir().parent().map(std::path::Path::to_path_buf).unwrap();
    std::fs::write(target.join("blackbox-timeline.png"), &shot).unwrap();
    let _ = std::fs::copy(&page, target.join("blackbox-timeline.html"));
    assert!(shot.starts_with(b"\x89PNG"));

    // Reset the zoom (button), then filter: typing narrows the lanes.
    b.click_on("#zoom-reset").unwrap();
    b.wait_for(&format!("document.getElementById('view-range').textContent === {view_before}"), Duration::from_secs(5))
        .expect("reset shows the whole recording again");
    // The fatal signal's marker opens the backtrace of the record its process gave.
    b.click_on(".marker.crash[aria-label*=\"fatal signal\"]").expect("the fatal signal's marker");
    let shown = b
        .wait_for(
            "document.getElementById('detail-title').textContent.startsWith('fatal signal') \
             && document.getElementById('detail-payload').textContent",
            Duration::from_secs(5),
        )
        .expect("the fatal signal's marker opens its process's record");
    let shown = shown.as_str().unwrap_or_default();
    assert!(shown.starts_with("org.clearlinux/crash/segv (record rec-crash-1):\n"), "{shown}");
    assert!(shown.contains(BACKTRACE), "{shown}");
    b.click_on("#filter").unwrap();
    b.type_text("needle-xyz").unwrap();
    let after = b
        .wait_for(
            "(() => { const n = Number(document.getElementById('lane-count').dataset.shown); return n < 4 ? String(n) : null; })()",
            Duration::from_secs(5),
        )
        .expect("the filter narrows the lanes");
    assert_eq!(after, "1");
    let label = b.eval("document.getElementById('lane-count').textContent").unwrap();
    assert_eq!(label, "1 of 4 lanes match");
    let rows = b.eval("[...document.querySelectorAll('#list-rows .row')].map(r => r.textContent)").unwrap();
    let rows: Vec<&str> = rows.as_array().unwrap().iter().filter_map(|r| r.as_str()).collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].contains("grep needle-xyz /var/log/syslog"), "{rows:?}");

    // No network: the page itself is the only request (data: URLs aside).
    let requests = b.requests();
    assert!(requests.contains(&url), "the request log works and has the page: {requests:?}");
    let others: Vec<&String> = requests.iter().filter(|u| **u != url && !u.starts_with("data:")).collect();
    assert!(others.is_empty(), "the page fetched {others:?}");
    let errors = b.errors();
    assert!(errors.is_empty(), "the page reported errors: {errors:?}");

    // An empty recording, and one whose entries are out of time order,
    // are pages too.
    let empty = dir.path().join("empty.html");
    write_html(Vec::new(), &PageMeta::default(), std::fs::File::create(&empty).unwrap()).unwrap();
    b.navigate(&format!("file://{}", empty.display())).unwrap();
    b.wait_for("document.documentElement.dataset.ready === '1'", Duration::from_secs(30)).expect("empty page ready");
    assert_eq!(b.eval("document.getElementById('lane-count').textContent").unwrap(), "0 lanes");
    let mut shuffled = recording();
    shuffled.reverse();
    let unsorted = dir.path().join("unsorted.html");
    write_html(shuffled, &meta, std::fs::File::create(&unsorted).unwrap()).unwrap();
    b.navigate(&format!("file://{}", unsorted.display())).unwrap();
    b.wait_for("document.documentElement.dataset.ready === '1'", Duration::from_secs(30)).expect("unsorted page ready");
    let first = b.eval("document.querySelector('#list-rows .row').textContent").unwrap();
    assert!(first.as_str().unwrap_or_default().contains("recording started"), "sorted by time: {first}");
    let errors = b.errors();
    assert!(errors.is_empty(), "the pages reported errors: {errors:?}");
}
