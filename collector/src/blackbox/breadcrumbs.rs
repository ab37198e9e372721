//! Crash breadcrumbs: while recording, a crash (`.../crash/*`) or
//! fatal-signal (`.../signal/fatal`) record's payload gets a `Recent
//! activity:` section, the last [`RECENT`] events of the crashing
//! process's tree, before it is journaled or spooled.
//!
//! Fed by the blackbox socket (exec, exit, fatal signal, OOM entries as
//! they are written), kept in memory: a pid -> parent map and the last
//! [`KEEP`] events. The tree of a pid: its topmost known ancestor below
//! pid 1 (a login shell, a service's main process) and everything
//! descended from it.
//!
//! The section never makes a record invalid: it is cut (oldest lines
//! first) to fit the payload limit (`record_max_bytes`, and never beyond
//! the backend's 64 KiB), and a JSON payload (crashprobe's format 2) gets
//! a `recent_activity` array instead of text after it.

use std::collections::{HashMap, VecDeque};

use telemetry::blackbox::{Entry, Event};

/// Events in a `Recent activity:` section.
pub const RECENT: usize = 20;
/// Events kept in memory.
pub const KEEP: usize = 4096;
/// Processes kept in the parent map (beyond it, those no kept event names go).
const MAX_PROCS: usize = 65_536;
/// A line is cut at this many bytes.
const MAX_LINE: usize = 300;
/// The text section's heading.
pub const HEADING: &str = "Recent activity:";

struct Note {
    wall_ns: u64,
    pid: u32,
    text: String,
}

/// The in-memory index.
#[derive(Default)]
pub struct Breadcrumbs {
    parent: HashMap<u32, u32>,
    recent: VecDeque<Note>,
}

fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
        s.push('…');
    }
    s
}

impl Breadcrumbs {
    /// Takes note of an entry written to the recording.
    pub fn note(&mut self, e: &Entry) {
        let (pid, text) = match &e.event {
            Event::Exec { pid, ppid, argv, exe, tty, operator, .. } => {
                self.parent.insert(*pid, *ppid);
                let args = if argv.is_empty() { exe.clone() } else { argv.join(" ") };
                let tty = tty.as_deref().map(|t| format!(" on {t}")).unwrap_or_default();
                let op = if *operator { " (operator)" } else { "" };
                (*pid, format!("exec pid {pid} ppid {ppid}{tty}{op}: {args}"))
            }
            Event::Exit { pid, ppid, comm, status, signal, core_dumped, run_ms } => {
                self.parent.entry(*pid).or_insert(*ppid);
                let how = match (status, signal) {
                    (_, Some(s)) => format!("killed by signal {s}{}", if *core_dumped { " (core dumped)" } else { "" }),
                    (Some(st), None) => format!("status {st}"),
                    (None, None) => "ended".to_string(),
                };
                (*pid, format!("exit pid {pid} ({comm}): {how} after {run_ms} ms"))
            }
            Event::FatalSignal { pid, tid, comm, signal } => {
                (*pid, format!("fatal signal {signal} to pid {pid} tid {tid} ({comm})"))
            }
            Event::Oom { pid, comm, anon_rss_kb } => {
                (*pid, format!("OOM kill of pid {pid} ({comm}), anon RSS {anon_rss_kb} kB"))
            }
            _ => return,
        };
        self.recent.push_back(Note { wall_ns: e.wall_ns, pid, text: cut(text, MAX_LINE) });
        if self.recent.len() > KEEP {
            self.recent.pop_front();
        }
        if self.parent.len() > MAX_PROCS {
            let named: std::collections::HashSet<u32> = self.recent.iter().map(|n| n.pid).collect();
            self.parent.retain(|p, _| named.contains(p));
        }
    }

    /// The topmost known ancestor of `pid` below pid 1.
    fn root_of(&self, pid: u32) -> u32 {
        let mut p = pid;
        for _ in 0..256 {
            match self.parent.get(&p) {
                Some(&pp) if pp > 1 && pp != p => p = pp,
                _ => break,
            }
        }
        p
    }

    fn in_tree(&self, pid: u32, root: u32, memo: &mut HashMap<u32, bool>) -> bool {
        if let Some(&b) = memo.get(&pid) {
            return b;
        }
        let mut p = pid;
        let mut found = false;
        for _ in 0..256 {
            if p == root {
                found = true;
                break;
            }
            match self.parent.get(&p) {
                Some(&pp) if pp > 1 && pp != p => p = pp,
                _ => break,
            }
        }
        memo.insert(pid, found);
        found
    }

    /// The last `n` events of `pid`'s tree, oldest first, one line each
    /// (time, what, pid, argv or status).
    pub fn recent(&self, pid: u32, n: usize) -> Vec<String> {
        let root = self.root_of(pid);
        let mut memo = HashMap::new();
        let mut out: Vec<String> = Vec::new();
        for note in self.recent.iter().rev() {
            if out.len() >= n {
                break;
            }
            if self.in_tree(note.pid, root, &mut memo) {
                out.push(format!("{} {}", super::format_wall(note.wall_ns), note.text));
            }
        }
        out.reverse();
        out
    }
}

/// The pid a crash or fatal-signal payload names: the `PID:` line
/// (crashprobe format 1, eventprobe) or the `pid` field (crashprobe
/// format 2, JSON).
pub fn payload_pid(text: &str) -> Option<u32> {
    if text.trim_start().starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        return v.get("pid")?.as_u64().and_then(|p| u32::try_from(p).ok());
    }
    text.lines().find_map(|l| l.strip_prefix("PID:")).and_then(|v| v.trim().parse().ok())
}

/// Appends the section to a payload, newest lines kept, so the payload
/// stays within `limit` bytes (nothing when not even one line fits).
pub fn append(payload: &mut String, lines: &[String], limit: usize) {
    let budget = limit.saturating_sub(payload.len());
    let json = payload.trim_start().starts_with('{')
        && serde_json::from_str::<serde_json::Value>(payload)
            .is_ok_and(|v| v.as_object().is_some_and(|o| !o.is_empty()));
    if json {
        let quoted: Vec<String> = lines.iter().map(|l| serde_json::Value::from(l.as_str()).to_string()).collect();
        let head = ",\"recent_activity\":[]".len();
        let mut used = head;
        let mut take = 0;
        for q in quoted.iter().rev() {
            if used + q.len() + 1 > budget {
                break;
            }
            used += q.len() + 1;
            take += 1;
        }
        if take == 0 {
            return;
        }
        let trimmed = payload.trim_end();
        let Some(body) = trimmed.strip_suffix('}') else { return };
        let mut s = body.to_string();
        s.push_str(",\"recent_activity\":[");
        s.push_str(&quoted[quoted.len() - take..].join(","));
        s.push_str("]}");
        *payload = s;
        return;
    }
    let sep = if payload.is_empty() || payload.ends_with("\n\n") {
        ""
    } else if payload.ends_with('\n') {
        "\n"
    } else {
        "\n\n"
    };
    let head = sep.len() + HEADING.len() + 1;
    let mut used = head;
    let mut take = 0;
    for l in lines.iter().rev() {
        if used + l.len() + 1 > budget {
            break;
        }
        used += l.len() + 1;
        take += 1;
    }
    if take == 0 {
        return;
    }
    payload.push_str(sep);
    payload.push_str(HEADING);
    payload.push('\n');
    for l in &lines[lines.len() - take..] {
        payload.push_str(l);
        payload.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(wall: u64, pid: u32, ppid: u32, argv: &str) -> Entry {
        Entry {
            mono_ns: wall,
            wall_ns: wall,
            event: Event::Exec {
                pid,
                ppid,
                uid: 0,
                tty: None,
                exe: "/bin/x".into(),
                argv: argv.split(' ').map(String::from).collect(),
                cgroup: None,
                unit: None,
                operator: false,
            },
        }
    }

    #[test]
    fn the_tree_is_the_top_ancestor_below_pid_1_and_its_descendants() {
        let mut b = Breadcrumbs::default();
        b.note(&exec(1, 100, 1, "bash"));
        b.note(&exec(2, 101, 100, "make"));
        b.note(&exec(3, 200, 1, "other-daemon"));
        b.note(&exec(4, 102, 101, "cc -c a.c"));
        b.note(&exec(5, 103, 100, "ls"));
        let got = b.recent(102, RECENT);
        assert_eq!(got.len(), 4, "{got:?}");
        assert!(got[0].ends_with("bash") && got[3].ends_with("ls"), "{got:?}");
        assert!(!got.iter().any(|l| l.contains("other-daemon")));
        assert_eq!(b.recent(102, 2).len(), 2);
        assert!(b.recent(102, 2)[1].ends_with("ls"), "the newest are kept");
    }

    #[test]
    fn the_section_fits_the_limit_and_keeps_json_valid() {
        let lines: Vec<String> = (0..20).map(|i| format!("line {i:02} {}", "x".repeat(40))).collect();
        let mut p = "Process: /bin/x\nPID: 5\n".to_string();
        append(&mut p, &lines, 10_000);
        assert!(p.contains("\n\nRecent activity:\nline 00"), "{p}");
        let mut p = "PID: 5".to_string();
        append(&mut p, &lines, 200);
        assert!(p.len() <= 200 && p.contains("line 19") && !p.contains("line 00"), "{p}");
        let mut p = "PID: 5".to_string();
        append(&mut p, &lines, 20);
        assert_eq!(p, "PID: 5", "nothing fits");
        let mut j = r#"{"pid":5,"signal":11}"#.to_string();
        append(&mut j, &lines, 10_000);
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["recent_activity"].as_array().unwrap().len(), 20);
        assert_eq!(payload_pid(&j), Some(5));
        assert_eq!(payload_pid("Process: /x\nPID: 77\nTID: 78\n"), Some(77));
        assert_eq!(payload_pid("hello"), None);
    }
}
