//! # blackbox-timeline: a recording as one self-contained HTML page
//!
//! Where it sits in the data flow:
//!
//! ```text
//!  state_dir/blackbox/<id>/ segments ──► collector's recorder (reads entries in order)
//!     └─ telemctl blackbox export ID --html FILE ──► write_html (this crate) ──► FILE
//!                                                    one page: inline CSS + JS + data,
//!                                                    no network access
//! ```
//!
//! [`write_html`] streams a recording's [`Entry`] values into one HTML file:
//! the entries are encoded as they arrive (compact numeric rows and a table
//! of distinct strings, in a `<script type="application/json">`), so a
//! million entries are never held twice. The page draws lanes per process
//! tree or systemd unit on a canvas, highlights operator commands, shows
//! crashes and warnings as markers that open their backtrace, gaps and
//! truncation as hatched bands, the instrument readings as a load/memory
//! strip, a zoomable time axis, a text filter, and a virtualized list of
//! the events in view (docs/TIMELINE.md says how to read and use it).
//!
//! Every string from the recording is treated as hostile: in the embedded
//! JSON, `<`, `>` and `&` are written as `\u003c`, `\u003e`, `\u0026`, so no
//! payload can close the script element; the page only ever puts them in
//! the DOM as text (`textContent`) or draws them on the canvas.
//!
//! The smallest working use:
//!
//! ```
//! use blackbox_timeline::{write_html, PageMeta};
//! use telemetry::blackbox::{Entry, Event};
//!
//! let entries = vec![Entry {
//!     mono_ns: 1,
//!     wall_ns: 1_700_000_000_000_000_000,
//!     event: Event::Marker { text: "recording started".into() },
//! }];
//! let meta = PageMeta { recording_id: "r1".into(), ..PageMeta::default() };
//! let mut page = Vec::new(); // or a std::fs::File
//! write_html(entries, &meta, &mut page).unwrap();
//! assert!(String::from_utf8(page).unwrap().starts_with("<!DOCTYPE html>"));
//! ```

mod encode;

use std::io::{self, Write};

use telemetry::blackbox::Entry;

pub use encode::{escape_html, write_json_str};

/// What the page says about the recording as a whole.
#[derive(Debug, Clone, Default)]
pub struct PageMeta {
    /// The page's title (the `<title>` and the heading); `Black box
    /// recording <id>` when empty.
    pub title: String,
    /// The recording's id.
    pub recording_id: String,
    /// The operator's `--label`, when given.
    pub label: Option<String>,
    /// When recording started and stopped, wall clock, nanoseconds since
    /// the Unix epoch (`stopped` is none while it still records).
    pub started_wall_ns: Option<u64>,
    pub stopped_wall_ns: Option<u64>,
}

const CSS: &str = include_str!("assets/timeline.css");
const JS: &str = include_str!("assets/timeline.js");
const BODY: &str = include_str!("assets/body.html");

/// Writes the timeline page of `entries` (in recording order) to `out`.
///
/// Streams: each entry is encoded as it is taken from the iterator; only
/// the distinct strings and the per-process lane map are kept until the
/// end. Fails only when `out` does.
pub fn write_html<W: Write>(entries: impl IntoIterator<Item = Entry>, meta: &PageMeta, out: W) -> io::Result<()> {
    let mut w = io::BufWriter::with_capacity(1 << 16, out);
    let title =
        if meta.title.is_empty() { format!("Black box recording {}", meta.recording_id) } else { meta.title.clone() };
    w.write_all(b"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n")?;
    // No network: nothing may be fetched, not even a favicon.
    w.write_all(
        b"<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
          script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:\">\n\
          <link rel=\"icon\" href=\"data:,\">\n<title>",
    )?;
    escape_html(&mut w, &title)?;
    w.write_all(b"</title>\n<style>\n")?;
    w.write_all(CSS.as_bytes())?;
    w.write_all(b"</style></head>\n<body>\n")?;
    w.write_all(BODY.as_bytes())?;
    w.write_all(b"\n<script type=\"application/json\" id=\"tl-data\">")?;
    let mut enc = encode::Encoder::new();
    enc.begin(&mut w, meta, &title)?;
    for entry in entries {
        enc.entry(&mut w, &entry)?;
    }
    enc.finish(&mut w)?;
    w.write_all(b"</script>\n<script>\n")?;
    w.write_all(JS.as_bytes())?;
    w.write_all(b"</script>\n</body></html>\n")?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use telemetry::blackbox::Event;

    fn exec(t: u64, pid: u32, ppid: u32, argv: &[&str], tty: bool) -> Entry {
        Entry {
            mono_ns: t,
            wall_ns: 1_700_000_000_000_000_000 + t,
            event: Event::Exec {
                pid,
                ppid,
                uid: 0,
                tty: tty.then(|| "pts/0".to_string()),
                exe: format!("/usr/bin/{}", argv[0]),
                argv: argv.iter().map(|s| s.to_string()).collect(),
                cgroup: None,
                unit: None,
                operator: tty,
            },
        }
    }

    fn page(entries: Vec<Entry>) -> String {
        let mut out = Vec::new();
        write_html(entries, &PageMeta { recording_id: "r<1>".into(), ..Default::default() }, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// The embedded data object, parsed as the page's JSON.parse would.
    fn data(html: &str) -> serde_json::Value {
        let start = html.find("id=\"tl-data\">").unwrap() + "id=\"tl-data\">".len();
        let end = start + html[start..].find("</script>").unwrap();
        serde_json::from_str(&html[start..end]).unwrap()
    }

    #[test]
    fn hostile_payloads_cannot_leave_the_data_element() {
        let evil = "</script><script>alert(1)</script><!-- & \u{2028} \"quoted\" \\ \u{1}";
        let html = page(vec![Entry {
            mono_ns: 1,
            wall_ns: 2_000,
            event: Event::Record {
                record_id: "rec".into(),
                event_id: "ev".into(),
                classification: "org.clearlinux/crash/segv".into(),
                severity: 2,
                pid: Some(7),
                payload: evil.into(),
            },
        }]);
        // Exactly the page's own two script elements and no more.
        assert_eq!(html.matches("<script").count(), 2, "{html}");
        assert_eq!(html.matches("</script>").count(), 2);
        assert!(!html.contains("<!--"));
        let d = data(&html);
        let strings: Vec<&str> = d["s"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert!(strings.contains(&evil), "the payload round-trips exactly: {strings:?}");
        // The recording id is in the title, HTML-escaped.
        assert!(html.contains("<title>Black box recording r&lt;1&gt;</title>"));
    }

    #[test]
    fn rows_decode_and_processes_join_their_trees_lanes() {
        let html = page(vec![
            exec(1_000, 100, 1, &["sshd"], false),
            exec(2_000, 200, 150, &["make", "-j4"], true), // parent unseen: the tree under 150
            exec(3_000, 201, 200, &["cc", "a b.c"], true),
            exec(4_000, 300, 2, &["kworker"], false),
            Entry {
                mono_ns: 5,
                wall_ns: 1_700_000_000_000_005_000,
                event: Event::Exit {
                    pid: 201,
                    ppid: 200,
                    comm: "cc".into(),
                    status: None,
                    signal: Some(11),
                    core_dumped: true,
                    run_ms: 3,
                },
            },
            Entry {
                mono_ns: 6,
                wall_ns: 1_700_000_000_000_006_000,
                event: Event::Gap { lost: 12, reason: "ring buffer full (exec)".into() },
            },
        ]);
        let d = data(&html);
        assert_eq!(d["n"], 6);
        let ev: Vec<i64> = d["ev"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        let s = d["s"].as_array().unwrap();
        // Walk the rows as timeline.js does.
        let len = [9, 7, 4, 3, 6, 10, 2, 3, 1];
        let mut rows = Vec::new();
        let mut p = 0;
        while p < ev.len() {
            let k = ev[p] as usize;
            rows.push(&ev[p..p + 3 + len[k]]);
            p += 3 + len[k];
        }
        assert_eq!(rows.len(), 6);
        let lanes = d["lanes"].as_array().unwrap();
        // host, sshd's tree, the tree under 150, kworker's tree.
        assert_eq!(lanes.len(), 4, "{lanes:?}");
        assert_eq!(rows[1][1], rows[2][1], "cc joins make's lane");
        assert_eq!(rows[4][1], rows[2][1], "cc's exit is in its lane");
        assert_ne!(rows[0][1], rows[1][1]);
        let make_lane = &lanes[rows[1][1] as usize];
        assert_eq!(make_lane["label"], "under [150]: make");
        assert_eq!(lanes[rows[0][1] as usize]["label"], "sshd [100]");
        assert_eq!(make_lane["op"], 2);
        assert_eq!(make_lane["tty"], "pts/0");
        assert_eq!(s[rows[2][8] as usize], "cc 'a b.c'");
        assert_eq!(rows[2][2], 2, "t is µs since the first entry");
        assert_eq!(rows[4][7], 11, "the exit's signal");
        assert_eq!(rows[5][..3], [6, -1, 5]);
        assert_eq!(d["t0"], 1_700_000_000_000_001_i64);
    }

    #[test]
    fn units_get_their_own_lane_and_records_join_their_process() {
        let mut nginx = exec(1_000, 2000, 1, &["nginx"], false);
        if let Event::Exec { unit, .. } = &mut nginx.event {
            *unit = Some("nginx.service".into());
        }
        let record = |pid| Entry {
            mono_ns: 9,
            wall_ns: 1_700_000_000_000_009_000,
            event: Event::Record {
                record_id: "r".into(),
                event_id: "e".into(),
                classification: "org.clearlinux/crash/segv".into(),
                severity: 4,
                pid,
                payload: "#0 main".into(),
            },
        };
        let html =
            page(vec![nginx, exec(2_000, 2001, 2000, &["nginx-worker"], false), record(Some(2001)), record(None)]);
        let d = data(&html);
        let ev: Vec<i64> = d["ev"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        let lanes = d["lanes"].as_array().unwrap();
        assert_eq!(lanes[1]["label"], "nginx.service");
        assert_eq!(lanes[1]["kind"], "unit");
        // exec, exec (12 numbers each), then the records' lanes.
        assert_eq!((ev[1], ev[13], ev[25], ev[34]), (1, 1, 1, 0), "{ev:?}");
    }

    #[test]
    fn an_empty_recording_is_a_page() {
        let html = page(vec![]);
        assert_eq!(data(&html)["n"], 0);
        assert!(html.ends_with("</html>\n"));
    }
}
