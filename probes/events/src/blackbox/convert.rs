//! Kernel events to black-box entries: an exec's executable path, its
//! cgroup's path and unit, the operator mark; an exit's status, signal and
//! run time; fatal signals and OOM kills; the times of each entry.
//!
//! ```text
//!  event::{BlackboxExec, ProcessEnd, FatalSignal, OomKill} ─▶ Converter ─▶ telemetry::blackbox::Entry
//!            cgroup id ─▶ CgroupNames (/proc/PID/cgroup, else a walk of the cgroup2 mount; cached)
//!            boot_ns   ─▶ clock::WallClock
//! ```

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

use telemetry::blackbox::{Entry, Event};

use super::clock::{boot_ns, WallClock};
use crate::cgroup;
use crate::event::{BlackboxExec, FatalSignal, OomKill, ProcessEnd};

/// The executable's path: the exec'd path when absolute, else where
/// `/proc/PID/exe` points while the process lives, else the path as given.
pub fn exe_path(pid: u32, filename: &str) -> String {
    if filename.starts_with('/') {
        return filename.to_string();
    }
    match std::fs::read_link(format!("/proc/{pid}/exe")) {
        Ok(p) => p.to_string_lossy().into_owned(),
        Err(_) => filename.to_string(),
    }
}

/// The cgroup's path relative to the cgroup2 mount, and its unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupName {
    pub path: String,
    pub unit: Option<String>,
}

/// Most cgroup ids remembered (the cache starts over beyond).
const MAX_CGROUPS: usize = 16 * 1024;
/// Least time between two walks of the cgroup2 mount.
const MIN_WALK_INTERVAL_NS: u64 = 100_000_000;

/// The cgroup v2 path in a `/proc/PID/cgroup` text (its `0::` line).
pub fn v2_path(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup.lines().find_map(|l| l.strip_prefix("0::")).filter(|p| p.starts_with('/'))
}

/// Cgroup ids to names. An id not known is looked up in the process's
/// `/proc/PID/cgroup` while it lives (checked against the id), else by
/// walking the cgroup2 mount (every directory is remembered; at most one
/// walk per 100 ms), unless a walk newer than the event already missed
/// it: that cgroup is gone (ids are not reused), and stays unnamed
/// without another walk.
pub struct CgroupNames {
    root: PathBuf,
    names: HashMap<u64, Option<Arc<CgroupName>>>,
    /// `CLOCK_BOOTTIME` of the last walk's start.
    walked_at: u64,
}

impl CgroupNames {
    pub fn new(root: PathBuf) -> CgroupNames {
        CgroupNames { root, names: HashMap::new(), walked_at: 0 }
    }

    /// The name of cgroup `id` of process `pid` for an event at boottime
    /// `at_ns`.
    pub fn get(&mut self, id: u64, pid: u32, at_ns: u64) -> Option<Arc<CgroupName>> {
        if id == 0 {
            return None;
        }
        if let Some(n) = self.names.get(&id) {
            return n.clone();
        }
        if let Some(n) = self.named_by_proc(id, pid) {
            return Some(n);
        }
        if self.walked_at <= at_ns {
            if boot_ns().saturating_sub(self.walked_at) < MIN_WALK_INTERVAL_NS {
                // Walked a moment ago: a later event tries again.
                return None;
            }
            self.walk();
            if let Some(n) = self.names.get(&id) {
                return n.clone();
            }
        }
        self.names.insert(id, None);
        None
    }

    fn remember(&mut self, id: u64, path: String) -> Arc<CgroupName> {
        if self.names.len() > MAX_CGROUPS {
            self.names.clear();
        }
        let unit = cgroup::unit_of(&path).map(str::to_string);
        let n = Arc::new(CgroupName { path, unit });
        self.names.insert(id, Some(n.clone()));
        n
    }

    /// The process's own cgroup, when it still lives in cgroup `id`.
    fn named_by_proc(&mut self, id: u64, pid: u32) -> Option<Arc<CgroupName>> {
        use std::os::unix::fs::MetadataExt;
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let path = v2_path(&text)?;
        let dir = self.root.join(path.trim_start_matches('/'));
        if std::fs::metadata(dir).ok()?.ino() != id {
            return None;
        }
        Some(self.remember(id, path.to_string()))
    }

    fn walk(&mut self) {
        self.walked_at = boot_ns();
        for (id, path) in cgroup::all_in(&self.root) {
            self.remember(id, path);
        }
    }
}

/// Most recent process exits remembered to drop a second report of the
/// same one (kernels without the tracepoint's `group_dead`: two threads
/// exiting at once may both see the group dead).
const RECENT_EXITS: usize = 64;

/// Makes entries of kernel events.
pub struct Converter {
    clock: WallClock,
    cgroups: CgroupNames,
    recent_exits: VecDeque<(u32, u64)>,
}

impl Converter {
    pub fn new(cgroup_root: PathBuf) -> Converter {
        Converter { clock: WallClock::new(), cgroups: CgroupNames::new(cgroup_root), recent_exits: VecDeque::new() }
    }

    /// Reads the wall-clock offset again.
    pub fn refresh_clock(&mut self) {
        self.clock.refresh();
    }

    fn entry(&self, mono_ns: u64, event: Event) -> Entry {
        Entry { mono_ns, wall_ns: self.clock.wall_ns(mono_ns), event }
    }

    pub fn exec(&mut self, e: BlackboxExec) -> Entry {
        let cg = self.cgroups.get(e.cgroup_id, e.task.pid, e.task.boot_ns);
        let event = Event::Exec {
            pid: e.task.pid,
            ppid: e.ppid,
            uid: e.task.uid,
            operator: e.tty.is_some(),
            tty: e.tty,
            exe: exe_path(e.task.pid, &e.filename),
            argv: e.argv,
            cgroup: cg.as_ref().map(|c| c.path.clone()),
            unit: cg.as_ref().and_then(|c| c.unit.clone()),
        };
        self.entry(e.task.boot_ns, event)
    }

    /// The exit's entry, or None when this process's end was already
    /// reported.
    pub fn exit(&mut self, x: &ProcessEnd) -> Option<Entry> {
        let key = (x.task.pid, x.start_boottime_ns);
        if self.recent_exits.contains(&key) {
            return None;
        }
        if self.recent_exits.len() >= RECENT_EXITS {
            self.recent_exits.pop_front();
        }
        self.recent_exits.push_back(key);
        let run_ms =
            if x.start_boottime_ns != 0 { x.task.boot_ns.saturating_sub(x.start_boottime_ns) / 1_000_000 } else { 0 };
        let event = Event::Exit {
            pid: x.task.pid,
            ppid: x.ppid,
            comm: x.task.comm.clone(),
            status: x.code.status(),
            signal: x.code.signal(),
            core_dumped: x.code.core_dumped(),
            run_ms,
        };
        Some(self.entry(x.task.boot_ns, event))
    }

    pub fn fatal(&self, f: &FatalSignal) -> Entry {
        let event =
            Event::FatalSignal { pid: f.task.pid, tid: f.task.tid, comm: f.task.comm.clone(), signal: f.signal };
        self.entry(f.task.boot_ns, event)
    }

    pub fn oom(&self, o: &OomKill) -> Entry {
        let event = Event::Oom { pid: o.victim.pid, comm: o.victim.comm.clone(), anon_rss_kb: o.anon_rss_kb };
        self.entry(o.victim.boot_ns, event)
    }

    /// A gap now.
    pub fn gap(&self, lost: u64, reason: String) -> Entry {
        self.entry(boot_ns(), Event::Gap { lost, reason })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{ExitCode, Task};

    fn task(pid: u32, boot_ns: u64) -> Task {
        Task { pid, tid: pid, uid: 1000, comm: "sh".into(), boot_ns }
    }

    #[test]
    fn exec_entries_mark_terminal_commands_as_an_operators() {
        let mut c = Converter::new(PathBuf::from("/nonexistent"));
        let mut e = BlackboxExec {
            task: task(42, 5_000),
            hold: None,
            ppid: 7,
            cgroup_id: 0,
            tty: Some("pts/1".into()),
            filename: "/usr/bin/ls".into(),
            argv: vec!["ls".into(), "-l".into()],
        };
        let x = c.exec(e.clone());
        assert_eq!(x.mono_ns, 5_000);
        assert!(x.wall_ns > 1_600_000_000_000_000_000, "{}", x.wall_ns);
        let Event::Exec { pid, ppid, uid, tty, exe, argv, cgroup, unit, operator } = x.event else { panic!() };
        assert_eq!((pid, ppid, uid, exe.as_str(), operator), (42, 7, 1000, "/usr/bin/ls", true));
        assert_eq!((tty.as_deref(), argv.len(), cgroup, unit), (Some("pts/1"), 2, None, None));
        e.tty = None;
        let Event::Exec { operator, tty, .. } = c.exec(e).event else { panic!() };
        assert!(!operator && tty.is_none());
    }

    #[test]
    fn relative_paths_are_resolved_while_the_process_lives() {
        let me = std::process::id();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        assert_eq!(exe_path(me, "./x"), exe.to_string_lossy());
        assert_eq!(exe_path(me, "/bin/true"), "/bin/true");
        assert_eq!(exe_path(u32::MAX, "./gone"), "./gone");
    }

    #[test]
    fn exits_carry_status_signal_and_run_time_once() {
        let mut c = Converter::new(PathBuf::from("/nonexistent"));
        let x = ProcessEnd {
            task: task(9, 3_500_000_000),
            ppid: 1,
            code: ExitCode(2 << 8),
            start_boottime_ns: 1_000_000_000,
        };
        let e = c.exit(&x).unwrap();
        let Event::Exit { pid, status, signal, core_dumped, run_ms, .. } = e.event else { panic!() };
        assert_eq!((pid, status, signal, core_dumped, run_ms), (9, Some(2), None, false, 2_500));
        assert!(c.exit(&x).is_none(), "the same process's end once");
        let k = ProcessEnd { code: ExitCode(15), start_boottime_ns: 0, ..x.clone() };
        let Event::Exit { status, signal, run_ms, .. } = c.exit(&k).unwrap().event else { panic!() };
        assert_eq!((status, signal, run_ms), (None, Some(15), 0));
    }

    #[test]
    fn cgroups_are_named_by_one_walk_and_gone_ones_are_not_walked_again() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let svc = d.path().join("system.slice/nginx.service");
        std::fs::create_dir_all(&svc).unwrap();
        let id = std::fs::metadata(&svc).unwrap().ino();
        let mut n = CgroupNames::new(d.path().to_path_buf());
        let name = n.get(id, u32::MAX, boot_ns()).unwrap();
        assert_eq!((name.path.as_str(), name.unit.as_deref()), ("/system.slice/nginx.service", Some("nginx.service")));
        // A cgroup made after the last walk is found by a new one (walks
        // are at least 100 ms apart).
        let later = d.path().join("user.slice/session-2.scope");
        std::fs::create_dir_all(&later).unwrap();
        let id2 = std::fs::metadata(&later).unwrap().ino();
        assert!(n.get(id2, u32::MAX, boot_ns()).is_none(), "too soon for another walk");
        std::thread::sleep(std::time::Duration::from_millis(120));
        assert_eq!(n.get(id2, u32::MAX, boot_ns()).unwrap().unit.as_deref(), Some("session-2.scope"));
        // An id missing from a walk newer than its event: not walked for again.
        let walked = n.walked_at;
        assert!(n.get(u64::MAX - 1, u32::MAX, 0).is_none());
        assert_eq!(n.walked_at, walked);
        assert!(n.get(0, u32::MAX, boot_ns()).is_none());
    }

    #[test]
    fn a_live_process_names_its_own_cgroup() {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(v2_path("1:cpu:/\n0::/system.slice/a.service\n"), Some("/system.slice/a.service"));
        assert_eq!(v2_path("4:memory:/x\n"), None);
        let root = cgroup::root();
        let Some(path) =
            std::fs::read_to_string("/proc/self/cgroup").ok().and_then(|t| v2_path(&t).map(str::to_string))
        else {
            eprintln!("no cgroup v2 here; skipping");
            return;
        };
        let id = std::fs::metadata(root.join(path.trim_start_matches('/'))).unwrap().ino();
        // A root that is not walked: the name comes from /proc/self/cgroup.
        let mut n = CgroupNames::new(root);
        n.walked_at = u64::MAX;
        let got = n.get(id, std::process::id(), 0).expect("named from /proc");
        assert_eq!(got.path, path);
        assert!(n.get(id + 1_000_000_007, std::process::id(), 0).is_none(), "another id is not taken for it");
    }
}
