//! The OOM constraint of a kill, from the kernel log.
//!
//! No tracepoint carries `oom_control.constraint` (`oom:mark_victim` has
//! the victim's pid, comm, memory counters, uid and `oom_score_adj`), and
//! this kernel has no kprobes to read it from `oom_kill_process`. The
//! kernel prints it, before it marks the victim, in its one-line summary:
//!
//! ```text
//! oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/x,task_memcg=/x,task=hog,pid=42,uid=0
//! ```
//!
//! eventprobe follows `/dev/kmsg` from its start (non-blocking, only when
//! an OOM kill arrives) and takes the constraint and the OOM's memcg from
//! the line naming the victim's pid. The line is rate-limited by the
//! kernel (with the rest of the OOM report): a kill without it says so.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;

/// What the kernel's summary line says of one kill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OomLine {
    pub pid: u32,
    /// `CONSTRAINT_NONE`, `CONSTRAINT_CPUSET`, `CONSTRAINT_MEMORY_POLICY`
    /// or `CONSTRAINT_MEMCG`.
    pub constraint: String,
    /// `oom_memcg=`: the cgroup whose limit was hit (memcg OOMs).
    pub oom_memcg: Option<String>,
    /// `task_memcg=`: the victim's memory cgroup.
    pub task_memcg: Option<String>,
}

/// Parses the text of a kmsg record (after the `;`), if it is the
/// summary line.
pub fn parse_line(text: &str) -> Option<OomLine> {
    let rest = &text[text.find("oom-kill:")? + "oom-kill:".len()..];
    let rest = rest.lines().next().unwrap_or(rest);
    let mut constraint = None;
    let mut oom_memcg = None;
    let mut task_memcg = None;
    let mut pid = None;
    for kv in rest.split(',') {
        let Some((k, v)) = kv.split_once('=') else { continue };
        match k.trim() {
            "constraint" => constraint = Some(v.trim().to_string()),
            "oom_memcg" => oom_memcg = Some(v.trim().to_string()),
            "task_memcg" => task_memcg = Some(v.trim().to_string()),
            "pid" => pid = v.trim().parse().ok(),
            _ => {}
        }
    }
    Some(OomLine { pid: pid?, constraint: constraint?, oom_memcg, task_memcg })
}

/// `/dev/kmsg` read from where it was when eventprobe started.
pub struct Kmsg {
    file: Option<File>,
    /// Summary lines seen, newest last (bounded).
    seen: VecDeque<OomLine>,
}

const KEEP: usize = 64;

impl Kmsg {
    /// Opens `/dev/kmsg` at its end; without it (not root, no device)
    /// constraints are reported unknown.
    pub fn open() -> Kmsg {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .and_then(|mut f| f.seek(SeekFrom::End(0)).map(|_| f));
        let file = match file {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!("cannot follow /dev/kmsg ({e}): OOM constraints are reported unknown");
                None
            }
        };
        Kmsg { file, seen: VecDeque::new() }
    }

    /// Reads what the kernel logged since the last call.
    fn poll(&mut self) {
        let Some(f) = self.file.as_mut() else { return };
        let mut buf = vec![0u8; 8192];
        // Each read returns one record; a bound whatever the log holds.
        for _ in 0..100_000 {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let rec = String::from_utf8_lossy(&buf[..n]);
                    let text = rec.split_once(';').map_or(&*rec, |(_, t)| t);
                    if let Some(l) = parse_line(text) {
                        if self.seen.len() >= KEEP {
                            self.seen.pop_front();
                        }
                        self.seen.push_back(l);
                    }
                }
                // Overwritten before it was read: go on with the next.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }

    /// The summary line of the kill of `pid`, if the kernel logged it.
    pub fn line_for(&mut self, pid: u32) -> Option<OomLine> {
        self.poll();
        self.seen.iter().rev().find(|l| l.pid == pid).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_summary_line() {
        let l = parse_line("oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/ev-oom-1,task_memcg=/ev-oom-1,task=ev-hog,pid=4242,uid=0\n").unwrap();
        assert_eq!(
            l,
            OomLine {
                pid: 4242,
                constraint: "CONSTRAINT_MEMCG".into(),
                oom_memcg: Some("/ev-oom-1".into()),
                task_memcg: Some("/ev-oom-1".into())
            }
        );
        let l = parse_line("oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom,task_memcg=/u,task=x,pid=7,uid=1000").unwrap();
        assert_eq!((l.pid, l.constraint.as_str(), l.oom_memcg), (7, "CONSTRAINT_NONE", None));
        assert_eq!(parse_line("Out of memory: Killed process 7 (x)"), None);
        assert_eq!(parse_line("oom-kill:constraint=CONSTRAINT_NONE"), None, "no pid");
        assert_eq!(parse_line("oom-kill:"), None);
    }
}
