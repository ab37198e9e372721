//! The page's data: entries encoded as compact numeric rows, a table of
//! distinct strings, and the lanes (process trees, units), as one JSON
//! object written while the entries stream by.
//!
//! ```text
//! {"v":1,"meta":{..},"ev":[kind,lane,t,...fields, kind,lane,t,...],
//!  "lanes":[{..}],"s":["string 0","string 1",..],"t0":µs,"n":entries}
//! ```
//!
//! `t` is microseconds of wall clock since `t0` (the first entry's);
//! string fields are indices into `s` (-1: none). The fields after
//! `kind, lane, t` per kind (the page's `timeline.js` decodes the same):
//!
//! | kind | fields |
//! |---|---|
//! | 0 exec | pid, ppid, uid, tty, exe, argv, cgroup, unit, operator |
//! | 1 exit | pid, ppid, comm, status (-1), signal (-1), core_dumped, run_ms |
//! | 2 fatal_signal | pid, tid, comm, signal |
//! | 3 oom | pid, comm, anon_rss_kb |
//! | 4 record | pid (-1), record_id, event_id, classification, severity, payload |
//! | 5 reading | load1, load5, load15, mem_total_kb, mem_available_kb, swap_total_kb, swap_free_kb, disk_used_bytes, disk_total_bytes, top |
//! | 6 gap | lost, reason |
//! | 7 truncated | segments, entries, until (µs since t0) |
//! | 8 marker | text |
//!
//! Lanes: an exec joins its parent's lane when the parent was seen;
//! otherwise it starts the lane of the tree under its parent (the root
//! below pid 1: a parent of 0, 1 or 2 makes the process itself the root).
//! An exec with a systemd unit goes to that unit's lane. Exits, fatal
//! signals, OOM kills and records go to their process's lane, else to lane
//! 0 (host). Readings, gaps, truncation and markers have lane -1 (the whole
//! host).

use std::collections::HashMap;
use std::io::{self, Write};

use indexmap::IndexSet;
use telemetry::blackbox::{Entry, Event};

use crate::PageMeta;

/// Writes `s` as a JSON string literal that is also safe inside an HTML
/// `<script>` element: `<`, `>`, `&`, U+2028 and U+2029 become `\u` escapes,
/// so no `</script>` or `<!--` can appear.
pub fn write_json_str<W: Write + ?Sized>(w: &mut W, s: &str) -> io::Result<()> {
    w.write_all(b"\"")?;
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, ch) in s.char_indices() {
        let esc: Option<&[u8]> = match ch {
            '"' => Some(b"\\\""),
            '\\' => Some(b"\\\\"),
            '\n' => Some(b"\\n"),
            '\r' => Some(b"\\r"),
            '\t' => Some(b"\\t"),
            '<' => Some(b"\\u003c"),
            '>' => Some(b"\\u003e"),
            '&' => Some(b"\\u0026"),
            '\u{2028}' => Some(b"\\u2028"),
            '\u{2029}' => Some(b"\\u2029"),
            c if (c as u32) < 0x20 => None,
            _ => continue,
        };
        w.write_all(&bytes[start..i])?;
        match esc {
            Some(e) => w.write_all(e)?,
            None => write!(w, "\\u{:04x}", ch as u32)?,
        }
        start = i + ch.len_utf8();
    }
    w.write_all(&bytes[start..])?;
    w.write_all(b"\"")
}

/// Writes `s` as HTML text (element content or a quoted attribute value).
pub fn escape_html<W: Write + ?Sized>(w: &mut W, s: &str) -> io::Result<()> {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'<' => b"&lt;",
            b'>' => b"&gt;",
            b'&' => b"&amp;",
            b'"' => b"&quot;",
            b'\'' => b"&#39;",
            _ => continue,
        };
        w.write_all(&bytes[start..i])?;
        w.write_all(esc)?;
        start = i + 1;
    }
    w.write_all(&bytes[start..])
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum LaneKey {
    Host,
    Tree(u32),
    Unit(usize),
}

struct Lane {
    key: LaneKey,
    /// The root process's name (argv[0] or the executable's file name),
    /// else the first process seen in the lane.
    name: Option<String>,
    /// `name` is the root's own.
    root_seen: bool,
    tty: Option<String>,
    operator_cmds: u64,
    events: u64,
}

/// Streams entries into the page's JSON object.
pub struct Encoder {
    strings: IndexSet<String>,
    units: IndexSet<String>,
    lanes: Vec<Lane>,
    lane_of_key: HashMap<LaneKey, u32>,
    /// The lane each process seen (by exec) belongs to.
    lane_of_pid: HashMap<u32, u32>,
    t0_us: Option<i64>,
    count: u64,
    first: bool,
    itoa: itoa::Buffer,
    meta_start: Option<u64>,
}

impl Encoder {
    pub fn new() -> Self {
        let mut enc = Encoder {
            strings: IndexSet::new(),
            units: IndexSet::new(),
            lanes: Vec::new(),
            lane_of_key: HashMap::new(),
            lane_of_pid: HashMap::new(),
            t0_us: None,
            count: 0,
            first: true,
            itoa: itoa::Buffer::new(),
            meta_start: None,
        };
        enc.lane(LaneKey::Host);
        enc
    }

    /// The opening of the object: version and metadata.
    pub fn begin<W: Write>(&mut self, w: &mut W, meta: &PageMeta, title: &str) -> io::Result<()> {
        self.meta_start = meta.started_wall_ns;
        w.write_all(b"{\"v\":1,\"meta\":{\"title\":")?;
        write_json_str(w, title)?;
        w.write_all(b",\"id\":")?;
        write_json_str(w, &meta.recording_id)?;
        w.write_all(b",\"label\":")?;
        match &meta.label {
            Some(l) => write_json_str(w, l)?,
            None => w.write_all(b"null")?,
        }
        for (name, v) in [("start", meta.started_wall_ns), ("stop", meta.stopped_wall_ns)] {
            write!(w, ",\"{name}\":")?;
            match v {
                Some(ns) => self.int(w, (ns / 1000) as i64)?,
                None => w.write_all(b"null")?,
            }
        }
        w.write_all(b"},\"ev\":[")
    }

    fn lane(&mut self, key: LaneKey) -> u32 {
        if let Some(&l) = self.lane_of_key.get(&key) {
            return l;
        }
        let l = self.lanes.len() as u32;
        self.lanes.push(Lane { key, name: None, root_seen: false, tty: None, operator_cmds: 0, events: 0 });
        self.lane_of_key.insert(key, l);
        l
    }

    fn intern(&mut self, s: &str) -> i64 {
        if let Some(i) = self.strings.get_index_of(s) {
            return i as i64;
        }
        self.strings.insert_full(s.to_string()).0 as i64
    }

    fn opt_intern(&mut self, s: Option<&str>) -> i64 {
        s.map_or(-1, |s| self.intern(s))
    }

    fn int<W: Write>(&mut self, w: &mut W, v: i64) -> io::Result<()> {
        w.write_all(self.itoa.format(v).as_bytes())
    }

    fn row<W: Write>(&mut self, w: &mut W, fields: &[i64]) -> io::Result<()> {
        for f in fields {
            if self.first {
                self.first = false;
            } else {
                w.write_all(b",")?;
            }
            self.int(w, *f)?;
        }
        Ok(())
    }

    /// The lane of a process that is not an exec: its own, else its
    /// parent's, else the host's.
    fn lane_of(&self, pid: Option<u32>, ppid: Option<u32>) -> u32 {
        pid.and_then(|p| self.lane_of_pid.get(&p))
            .or_else(|| ppid.and_then(|p| self.lane_of_pid.get(&p)))
            .copied()
            .unwrap_or(0)
    }

    /// One entry's row.
    pub fn entry<W: Write>(&mut self, w: &mut W, e: &Entry) -> io::Result<()> {
        let us = (e.wall_ns / 1000) as i64;
        let t0 = *self.t0_us.get_or_insert(us);
        let t = us - t0;
        self.count += 1;
        match &e.event {
            Event::Exec { pid, ppid, uid, tty, exe, argv, cgroup, unit, operator } => {
                let lane = match unit {
                    Some(u) => {
                        let (i, _) = self.units.insert_full(u.clone());
                        self.lane(LaneKey::Unit(i))
                    }
                    None => match self.lane_of_pid.get(ppid) {
                        Some(&l) => l,
                        None if *ppid <= 2 => self.lane(LaneKey::Tree(*pid)),
                        None => self.lane(LaneKey::Tree(*ppid)),
                    },
                };
                self.lane_of_pid.insert(*pid, lane);
                let name = argv.first().filter(|a| !a.is_empty()).cloned().unwrap_or_else(|| basename(exe).to_string());
                let l = &mut self.lanes[lane as usize];
                l.events += 1;
                if l.key == LaneKey::Tree(*pid) {
                    l.name = Some(name);
                    l.root_seen = true;
                } else if l.name.is_none() {
                    l.name = Some(name);
                }
                if *operator {
                    l.operator_cmds += 1;
                    if l.tty.is_none() {
                        l.tty.clone_from(tty);
                    }
                }
                let argv_s = self.intern(&join_argv(argv));
                let fields = [
                    0,
                    lane as i64,
                    t,
                    *pid as i64,
                    *ppid as i64,
                    *uid as i64,
                    self.opt_intern(tty.as_deref()),
                    self.intern(exe),
                    argv_s,
                    self.opt_intern(cgroup.as_deref()),
                    self.opt_intern(unit.as_deref()),
                    *operator as i64,
                ];
                self.row(w, &fields)
            }
            Event::Exit { pid, ppid, comm, status, signal, core_dumped, run_ms } => {
                let lane = self.lane_of(Some(*pid), Some(*ppid));
                self.lanes[lane as usize].events += 1;
                let fields = [
                    1,
                    lane as i64,
                    t,
                    *pid as i64,
                    *ppid as i64,
                    self.intern(comm),
                    status.map_or(-1, i64::from),
                    signal.map_or(-1, i64::from),
                    *core_dumped as i64,
                    (*run_ms).min(i64::MAX as u64) as i64,
                ];
                self.row(w, &fields)
            }
            Event::FatalSignal { pid, tid, comm, signal } => {
                let lane = self.lane_of(Some(*pid), None);
                self.lanes[lane as usize].events += 1;
                let fields = [2, lane as i64, t, *pid as i64, *tid as i64, self.intern(comm), *signal as i64];
                self.row(w, &fields)
            }
            Event::Oom { pid, comm, anon_rss_kb } => {
                let lane = self.lane_of(Some(*pid), None);
                self.lanes[lane as usize].events += 1;
                let fields = [3, lane as i64, t, *pid as i64, self.intern(comm), clamp(*anon_rss_kb)];
                self.row(w, &fields)
            }
            Event::Record { record_id, event_id, classification, severity, pid, payload } => {
                let lane = self.lane_of(*pid, None);
                self.lanes[lane as usize].events += 1;
                let fields = [
                    4,
                    lane as i64,
                    t,
                    pid.map_or(-1, i64::from),
                    self.intern(record_id),
                    self.intern(event_id),
                    self.intern(classification),
                    *severity as i64,
                    self.intern(payload),
                ];
                self.row(w, &fields)
            }
            Event::Reading {
                load1,
                load5,
                load15,
                mem_total_kb,
                mem_available_kb,
                swap_total_kb,
                swap_free_kb,
                disk_used_bytes,
                disk_total_bytes,
                top,
            } => {
                self.row(w, &[5, -1, t])?;
                for load in [load1, load5, load15] {
                    // Hundredths: the array stays integers.
                    let v = if load.is_finite() { (load * 100.0).round().clamp(0.0, 1e15) as i64 } else { 0 };
                    w.write_all(b",")?;
                    self.int(w, v)?;
                }
                let tops: Vec<String> =
                    top.iter().map(|p| format!("{} [{}] {:.1}%", p.comm, p.pid, p.cpu_pct)).collect();
                let top_s = self.intern(&tops.join(", "));
                let rest = [
                    clamp(*mem_total_kb),
                    clamp(*mem_available_kb),
                    clamp(*swap_total_kb),
                    clamp(*swap_free_kb),
                    clamp(*disk_used_bytes),
                    clamp(*disk_total_bytes),
                    top_s,
                ];
                for v in rest {
                    w.write_all(b",")?;
                    self.int(w, v)?;
                }
                Ok(())
            }
            Event::Gap { lost, reason } => {
                let fields = [6, -1, t, clamp(*lost), self.intern(reason)];
                self.row(w, &fields)
            }
            Event::Truncated { segments, entries, until_wall_ns } => {
                let until = (*until_wall_ns / 1000) as i64 - t0;
                self.row(w, &[7, -1, t, clamp(*segments), clamp(*entries), until])
            }
            Event::Marker { text } => {
                let fields = [8, -1, t, self.intern(text)];
                self.row(w, &fields)
            }
        }
    }

    /// The lanes, the string table and the closing of the object.
    pub fn finish<W: Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b"],\"lanes\":[")?;
        let lanes = std::mem::take(&mut self.lanes);
        for (i, l) in lanes.iter().enumerate() {
            if i > 0 {
                w.write_all(b",")?;
            }
            let (kind, label) = match l.key {
                LaneKey::Host => ("host", "host: records, earlier processes".to_string()),
                LaneKey::Tree(root) if l.root_seen => {
                    ("tree", format!("{} [{root}]", l.name.as_deref().unwrap_or("?")))
                }
                // The root started before the recording: named by its first child seen.
                LaneKey::Tree(root) => ("tree", format!("under [{root}]: {}", l.name.as_deref().unwrap_or("?"))),
                LaneKey::Unit(u) => ("unit", self.units.get_index(u).cloned().unwrap_or_default()),
            };
            write!(w, "{{\"kind\":\"{kind}\",\"label\":")?;
            write_json_str(w, &label)?;
            w.write_all(b",\"tty\":")?;
            match &l.tty {
                Some(t) => write_json_str(w, t)?,
                None => w.write_all(b"null")?,
            }
            write!(w, ",\"op\":{},\"n\":{}}}", l.operator_cmds, l.events)?;
        }
        w.write_all(b"],\"s\":[")?;
        for (i, s) in self.strings.iter().enumerate() {
            if i > 0 {
                w.write_all(b",")?;
            }
            write_json_str(w, s)?;
        }
        let t0 = self.t0_us.or(self.meta_start.map(|ns| (ns / 1000) as i64)).unwrap_or(0);
        write!(w, "],\"t0\":{t0},\"n\":{}}}", self.count)
    }
}

fn clamp(v: u64) -> i64 {
    // JSON numbers are exact in JavaScript up to 2^53.
    v.min(1 << 53) as i64
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// argv as one line, an argument with a space or quote in single quotes.
fn join_argv(argv: &[String]) -> String {
    let mut out = String::new();
    for (i, a) in argv.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        if a.is_empty() || a.contains([' ', '\'', '"', '\t', '\n']) {
            out.push('\'');
            out.push_str(&a.replace('\'', "'\\''"));
            out.push('\'');
        } else {
            out.push_str(a);
        }
    }
    out
}
