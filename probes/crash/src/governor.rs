//! The crash-loop governor: per crash signature ([`crate::signature`]) at
//! most `crash_signature_burst` full records per `crash_signature_window`;
//! beyond that a crash is only counted (crashprobe stops reading its core at
//! once), and each window in which crashes were counted gives one
//! `org.clearlinux/crash/repeated` record with the signature, the count and
//! the first and last time.
//!
//! State: one small table, `STATE_DIR/crash-signatures` (0600, root's), one
//! line per signature, read and rewritten under an exclusive `flock` (and a
//! mutex between the threads of `crashprobe --serve`), so up to
//! `core_pipe_limit` (16) handlers at once count correctly. Times are wall
//! clock unix seconds, so windows carry across reboots. The file is opened
//! while the handler is still root, before it drops privileges.
//!
//! Crash sites (`STATE_DIR/crash-sites`, same lock): the signature each
//! early key ([`crate::request::early_key`]: the top frames' modules and
//! offsets, unwound from the live process) turned out to have, so a
//! repeated crash of a known site is decided before its core is read (pipe
//! mode) or written (`@@` mode).
//!
//! A window's `crash/repeated` record is sent once the window is over, by
//! the next crashprobe that handles a crash of any signature, by
//! `crashprobe --serve` (which looks every few seconds), and by
//! `crashprobe --sweep` (dist/telem-crashprobe-sweep.timer).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::signature;

/// The table's file name in `state_dir`.
pub const FILE_NAME: &str = "crash-signatures";
/// Crash sites: which signature each early key (the top frames' modules
/// and offsets, unwound from the live process before its core) turned out
/// to have; written under the table's lock.
pub const SITES_FILE_NAME: &str = "crash-sites";
/// Most crash sites kept (the file is emptied beyond).
pub const MAX_SITES: usize = 4096;
/// Most signatures the table keeps (the oldest windows go first).
pub const MAX_ENTRIES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum GovernorError {
    #[error("cannot {what} the crash governor's state {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
}

/// What the governor decided for one crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Within the burst: send the full record.
    Full,
    /// Beyond it: counted; no record now.
    Repeated,
}

/// The crashes of one signature counted in one window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repeated {
    pub signature: String,
    pub count: u64,
    /// Unix seconds of the first and last counted crash.
    pub first: u64,
    pub last: u64,
    /// The window: its start (unix seconds) and length (seconds).
    pub window_start: u64,
    pub window_secs: u64,
}

impl Repeated {
    /// The `crash/repeated` record's payload (format 1, text).
    pub fn payload(&self) -> String {
        let t = telemetry::record::format_utc;
        format!(
            "Signature: {}\nCount: {}\nFirst: {} ({} UTC)\nLast: {} ({} UTC)\nWindow: {} s from {} ({} UTC)\n",
            self.signature,
            self.count,
            self.first,
            t(self.first),
            self.last,
            t(self.last),
            self.window_secs,
            self.window_start,
            t(self.window_start)
        )
    }
}

/// One line of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    window_start: u64,
    full: u64,
    repeated: u64,
    first: u64,
    last: u64,
    signature: String,
}

fn parse(text: &str) -> Vec<Entry> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.splitn(7, '\t');
            let _hash = f.next()?;
            let n = |f: &mut std::str::SplitN<'_, char>| f.next()?.parse::<u64>().ok();
            let e = Entry {
                window_start: n(&mut f)?,
                full: n(&mut f)?,
                repeated: n(&mut f)?,
                first: n(&mut f)?,
                last: n(&mut f)?,
                signature: f.next()?.to_string(),
            };
            (!e.signature.is_empty()).then_some(e)
        })
        .collect()
}

fn render(entries: &[Entry]) -> String {
    let mut s = String::new();
    for e in entries {
        s.push_str(&format!(
            "{:016x}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            signature::hash(&e.signature),
            e.window_start,
            e.full,
            e.repeated,
            e.first,
            e.last,
            e.signature.replace(['\n', '\t'], " ")
        ));
    }
    s
}

/// The governor `cfg` asks for (`None` when `crash_signature_burst = -1`,
/// or when its state cannot be opened: then every crash is recorded in
/// full, and the reason logged).
pub fn open_for(cfg: &crate::config::Config) -> Option<Governor> {
    let burst = cfg.signature_burst?;
    match Governor::open(&cfg.state_dir, burst, cfg.signature_window.as_secs()) {
        Ok(g) => Some(g),
        Err(e) => {
            tracing::warn!(error = %e, "no crash-loop governor");
            None
        }
    }
}

/// The governor's table, open, with its limits.
#[derive(Debug)]
pub struct Governor {
    file: Mutex<File>,
    sites: File,
    path: PathBuf,
    burst: u64,
    window_secs: u64,
}

/// Holds the table's exclusive `flock` until dropped.
struct Flock<'a>(&'a File);

impl<'a> Flock<'a> {
    fn take(f: &'a File) -> std::io::Result<Flock<'a>> {
        loop {
            // SAFETY: flock on an fd we hold.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(Flock(f));
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

impl Drop for Flock<'_> {
    fn drop(&mut self) {
        // SAFETY: unlocking an fd we hold.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

impl Governor {
    /// Opens (creating) `state_dir/crash-signatures`, never through a
    /// symlink. `burst` full records per `window_secs`.
    pub fn open(state_dir: &Path, burst: u64, window_secs: u64) -> Result<Governor, GovernorError> {
        let path = state_dir.join(FILE_NAME);
        let io = |what: &'static str, p: &Path| {
            let p = p.to_path_buf();
            move |source| GovernorError::Io { what, path: p, source }
        };
        std::fs::create_dir_all(state_dir).map_err(io("create the folder of", &path))?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(io("open", &path))?;
        let sites_path = state_dir.join(SITES_FILE_NAME);
        let sites = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&sites_path)
            .map_err(io("open", &sites_path))?;
        Ok(Governor { file: Mutex::new(file), sites, path, burst, window_secs: window_secs.max(1) })
    }

    /// The signature learned for crash site `key`, if any (under the
    /// table's lock: call from [`Governor::update`] only).
    fn site(&self, key: &str) -> Option<String> {
        let mut raw = Vec::new();
        let mut r: &File = &self.sites;
        r.seek(SeekFrom::Start(0)).ok()?;
        r.take(4 << 20).read_to_end(&mut raw).ok()?;
        String::from_utf8_lossy(&raw)
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .find(|(k, _)| *k == key)
            .map(|(_, sig)| sig.to_string())
    }

    /// Remembers that crash site `key` has signature `sig`.
    pub fn learn_site(&self, key: &str, sig: &str) -> Result<(), GovernorError> {
        let clean = |t: &str| t.replace(['\n', '\t'], " ");
        self.update(|_| {
            if self.site(key).as_deref() == Some(sig) {
                return Ok(());
            }
            let mut raw = Vec::new();
            let mut r: &File = &self.sites;
            r.seek(SeekFrom::Start(0))?;
            r.take(4 << 20).read_to_end(&mut raw)?;
            let text = String::from_utf8_lossy(&raw).into_owned();
            let mut lines: Vec<&str> =
                text.lines().filter(|l| l.split_once('\t').is_some_and(|(k, _)| k != key)).collect();
            if lines.len() >= MAX_SITES {
                lines.clear();
            }
            let new_line = format!("{}\t{}", clean(key), clean(sig));
            lines.push(&new_line);
            let mut out = lines.join("\n");
            out.push('\n');
            let mut w: &File = &self.sites;
            w.seek(SeekFrom::Start(0))?;
            w.write_all(out.as_bytes())?;
            self.sites.set_len(out.len() as u64)
        })?
        .map_err(self.io("write the crash sites of"))
    }

    /// Counts a crash of a known crash site (`key`, unwound before the
    /// core): `None` when the site is not known yet (the core will tell).
    pub fn admit_site(&self, key: &str, now: u64) -> Result<Option<(String, Decision, Vec<Repeated>)>, GovernorError> {
        let found = self.update(|entries| {
            let sig = self.site(key)?;
            let (d, r) = self.admit_in(entries, &sig, now);
            Some((sig, d, r))
        })?;
        Ok(found)
    }

    fn io(&self, what: &'static str) -> impl FnOnce(std::io::Error) -> GovernorError + '_ {
        move |source| GovernorError::Io { what, path: self.path.clone(), source }
    }

    /// Under the locks: reads the table, lets `f` change it, writes it back.
    fn update<T>(&self, f: impl FnOnce(&mut Vec<Entry>) -> T) -> Result<T, GovernorError> {
        let file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let _lock = Flock::take(&file).map_err(self.io("lock"))?;
        let mut text = String::new();
        let mut r: &File = &file;
        r.seek(SeekFrom::Start(0)).map_err(self.io("read"))?;
        // A torn or foreign file is read as far as its lines make sense.
        let mut raw = Vec::new();
        r.take(4 << 20).read_to_end(&mut raw).map_err(self.io("read"))?;
        text.push_str(&String::from_utf8_lossy(&raw));
        let mut entries = parse(&text);
        let out = f(&mut entries);
        let new = render(&entries);
        if new.as_bytes() == raw.as_slice() {
            // Nothing changed: no write (each costs the file system's
            // journal an inode update).
            return Ok(out);
        }
        let mut w: &File = &file;
        w.seek(SeekFrom::Start(0)).map_err(self.io("write"))?;
        w.write_all(new.as_bytes()).map_err(self.io("write"))?;
        file.set_len(new.len() as u64).map_err(self.io("truncate"))?;
        Ok(out)
    }

    /// Takes the counts of the windows that are over (at `now`) out of the
    /// table, to be reported; drops entries with nothing left to count.
    fn take_expired(&self, entries: &mut Vec<Entry>, now: u64) -> Vec<Repeated> {
        let mut out = Vec::new();
        for e in entries.iter_mut() {
            if now >= e.window_start.saturating_add(self.window_secs) && e.repeated > 0 {
                out.push(Repeated {
                    signature: e.signature.clone(),
                    count: e.repeated,
                    first: e.first,
                    last: e.last,
                    window_start: e.window_start,
                    window_secs: self.window_secs,
                });
                e.repeated = 0;
            }
        }
        // Windows over and reported: forgotten.
        entries.retain(|e| now < e.window_start.saturating_add(self.window_secs) || e.repeated > 0);
        out
    }

    /// Counts a crash of `sig` at `now` (unix seconds): whether to send its
    /// full record, and the `crash/repeated` reports of windows now over.
    pub fn admit(&self, sig: &str, now: u64) -> Result<(Decision, Vec<Repeated>), GovernorError> {
        self.update(|entries| self.admit_in(entries, sig, now))
    }

    fn admit_in(&self, entries: &mut Vec<Entry>, sig: &str, now: u64) -> (Decision, Vec<Repeated>) {
        {
            let reports = self.take_expired(entries, now);
            let decision = match entries.iter_mut().find(|e| e.signature == sig) {
                Some(e) if e.full < self.burst => {
                    e.full += 1;
                    Decision::Full
                }
                Some(e) => {
                    if e.repeated == 0 {
                        e.first = now;
                    }
                    e.repeated += 1;
                    e.last = now.max(e.last);
                    Decision::Repeated
                }
                None => {
                    if entries.len() >= MAX_ENTRIES {
                        if let Some(i) = (0..entries.len()).min_by_key(|&i| entries[i].window_start) {
                            entries.remove(i);
                        }
                    }
                    let full = u64::from(self.burst > 0);
                    entries.push(Entry {
                        window_start: now,
                        full,
                        repeated: 1 - full,
                        first: now,
                        last: now,
                        signature: sig.replace(['\n', '\t'], " "),
                    });
                    if full == 1 {
                        Decision::Full
                    } else {
                        Decision::Repeated
                    }
                }
            };
            (decision, reports)
        }
    }

    /// The `crash/repeated` reports of windows over at `now`.
    pub fn sweep(&self, now: u64) -> Result<Vec<Repeated>, GovernorError> {
        self.update(|entries| self.take_expired(entries, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_count_then_report_once_the_window_is_over() {
        let d = tempfile::tempdir().unwrap();
        let g = Governor::open(d.path(), 3, 60).unwrap();
        for i in 0..3 {
            assert_eq!(g.admit("a | b", 1000 + i).unwrap(), (Decision::Full, vec![]));
        }
        for i in 0..5 {
            assert_eq!(g.admit("a | b", 1010 + i).unwrap().0, Decision::Repeated);
        }
        // Another signature during the storm: full.
        assert_eq!(g.admit("c", 1020).unwrap().0, Decision::Full);
        assert_eq!(g.sweep(1059).unwrap(), vec![]);
        // Reopened (another process, or after a reboot): the same state.
        let g = Governor::open(d.path(), 3, 60).unwrap();
        let r = g.sweep(1060).unwrap();
        assert_eq!(
            r,
            vec![Repeated {
                signature: "a | b".into(),
                count: 5,
                first: 1010,
                last: 1014,
                window_start: 1000,
                window_secs: 60
            }]
        );
        assert!(r[0].payload().starts_with("Signature: a | b\nCount: 5\nFirst: 1010 (1970-01-01 00:16:50 UTC)\n"));
        assert_eq!(g.sweep(1061).unwrap(), vec![]);
        // A new window.
        assert_eq!(g.admit("a | b", 1100).unwrap(), (Decision::Full, vec![]));
        // Garbage in the file is skipped.
        std::fs::write(d.path().join(FILE_NAME), "junk\n1\t2\n").unwrap();
        assert_eq!(g.admit("a | b", 1200).unwrap().0, Decision::Full);
    }

    #[test]
    fn crash_sites_admit_by_their_learned_signature() {
        let d = tempfile::tempdir().unwrap();
        let g = Governor::open(d.path(), 1, 60).unwrap();
        assert_eq!(g.admit_site("x+0x10 x+0x20", 100).unwrap(), None);
        assert_eq!(g.admit("sig a", 100).unwrap().0, Decision::Full);
        g.learn_site("x+0x10 x+0x20", "sig a").unwrap();
        g.learn_site("y+0x1", "sig b").unwrap();
        let g = Governor::open(d.path(), 1, 60).unwrap();
        let (sig, decision, _) = g.admit_site("x+0x10 x+0x20", 101).unwrap().unwrap();
        assert_eq!((sig.as_str(), decision), ("sig a", Decision::Repeated));
        assert_eq!(g.admit_site("y+0x1", 101).unwrap().unwrap().1, Decision::Full);
        assert_eq!(g.sweep(200).unwrap()[0].count, 1);
    }

    #[test]
    fn concurrent_handlers_count_every_crash() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().to_path_buf();
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let path = path.clone();
                // Each its own open file, as separate processes.
                std::thread::spawn(move || {
                    let g = Governor::open(&path, 3, 3600).unwrap();
                    (0..50).filter(|_| g.admit("s", 5000).unwrap().0 == Decision::Full).count()
                })
            })
            .collect();
        let full: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(full, 3);
        let g = Governor::open(&path, 3, 3600).unwrap();
        assert_eq!(g.sweep(8600).unwrap()[0].count, 16 * 50 - 3);
    }
}
