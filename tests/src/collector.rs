//! Running the real `telem-collector` in collector tests: a configuration
//! whose socket, spool, journal, state and etc folders live in a temporary
//! directory, the process started and killed by the test, and `telemctl`
//! run against the same configuration.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use telemetry::client::Client;

use crate::bin;
use crate::fixtures::ANSWER_TIMEOUT;

/// The proxy environment the daemon reads (blanked unless a test sets it).
const PROXY_VARS: [&str; 8] =
    ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"];

/// A collector process and its folders; killed when dropped.
pub struct Collector {
    pub dir: PathBuf,
    pub conf: PathBuf,
    pub socket: PathBuf,
    pub spool: PathBuf,
    /// Environment variables for the daemon (`DO_NOT_TRACK` and the proxy
    /// variables are removed from what it inherits unless set here).
    pub env: Vec<(String, String)>,
    /// `Some(n)`: the daemon runs with RLIMIT_NOFILE soft and hard limits
    /// of `n` (as under `ulimit -n n`), set between fork and exec.
    pub nofile: Option<u64>,
    child: Option<Child>,
    _tmp: Option<tempfile::TempDir>,
}

impl Collector {
    /// Writes a configuration in a fresh temporary directory. `server`:
    /// the URL to deliver to (the test opts in when it is given). `extra`:
    /// more `key=value` lines.
    pub fn new(server: Option<&str>, extra: &str) -> Collector {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut c = Collector::in_dir(tmp.path(), server, extra);
        c._tmp = Some(tmp);
        c
    }

    /// As [`new`](Self::new), in `dir`.
    pub fn in_dir(dir: &Path, server: Option<&str>, extra: &str) -> Collector {
        let socket = dir.join("telem.sock");
        let spool = dir.join("spool");
        let mut conf = format!(
            "[settings]\nsocket_path={}\nspool_dir={}\njournal_dir={}\nstate_dir={}\netc_dir={}\n",
            socket.display(),
            spool.display(),
            dir.join("journal").display(),
            dir.join("state").display(),
            dir.join("etc").display(),
        );
        if let Some(s) = server {
            conf.push_str(&format!("server={s}\n"));
            std::fs::create_dir_all(dir.join("etc")).expect("etc dir");
            std::fs::write(dir.join("etc/opt-in"), b"").expect("opt in");
        }
        conf.push_str("retry_max_backoff=1\ndelivery_timeout=3\nconnect_timeout=2\n");
        conf.push_str(extra);
        conf.push('\n');
        let path = dir.join("telemetrics.conf");
        std::fs::write(&path, conf).expect("write conf");
        Collector { dir: dir.into(), conf: path, socket, spool, env: Vec::new(), nofile: None, child: None, _tmp: None }
    }

    /// Appends lines to the configuration (later keys override earlier ones).
    pub fn set(&self, lines: &str) {
        let mut c = std::fs::read_to_string(&self.conf).expect("read conf");
        c.push_str(lines);
        c.push('\n');
        std::fs::write(&self.conf, c).expect("write conf");
    }

    /// Starts the daemon and waits until its socket answers.
    pub fn start(&mut self) -> &mut Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("collector.log"))
            .expect("log file");
        let mut cmd = Command::new(bin("telem-collector"));
        if let Some(n) = self.nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs
            // between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit { rlim_cur: n as libc::rlim_t, rlim_max: n as libc::rlim_t };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .arg("-f")
            .arg(&self.conf)
            .env("RUST_LOG", std::env::var("TELEM_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .env_remove("DO_NOT_TRACK")
            .envs(PROXY_VARS.iter().map(|v| (v, "")))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("spawn telem-collector");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
                && self.dir.join("state/control.sock").exists()
            {
                return self;
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("telem-collector exited at start ({st}):\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("telem-collector did not start:\n{}", self.log());
    }

    /// A native-framing client of the daemon (answers within 10 s).
    pub fn client(&self) -> Client {
        Client::connect_path(&self.socket, ANSWER_TIMEOUT).expect("connect to the collector")
    }

    /// The daemon's process id (0 when not running).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The daemon's RLIMIT_NOFILE (soft, hard), from /proc/PID/limits.
    pub fn open_files_limit(&self) -> Option<(String, String)> {
        let l = std::fs::read_to_string(format!("/proc/{}/limits", self.pid())).ok()?;
        let line = l.lines().find(|l| l.starts_with("Max open files"))?;
        let mut w = line["Max open files".len()..].split_whitespace();
        Some((w.next()?.to_string(), w.next()?.to_string()))
    }

    /// How many journal entries have each fate, by the fate's text up to
    /// its first `:` (`delivered`, `dropped`, `rejected-by-server`, ...),
    /// and the number of entries.
    pub fn journal_fate_counts(&self) -> (std::collections::BTreeMap<String, u64>, u64) {
        let j = self.journal(&[]);
        let mut m = std::collections::BTreeMap::new();
        for e in &j {
            let f = e["fate"].as_str().unwrap_or("<none>");
            let key = f.split(':').next().unwrap_or(f).to_string();
            *m.entry(key).or_insert(0) += 1;
        }
        (m, j.len() as u64)
    }

    /// The files of the journal folder and their sizes (rotation shows
    /// here: `journal` and `journal.1`).
    pub fn journal_files(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = std::fs::read_dir(self.dir.join("journal"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().map(|m| m.len()).unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, waiting for a clean exit; returns whether it exited 0.
    pub fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else { return true };
        // SAFETY: signalling our own child.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = c.try_wait() {
                return st.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as libc::pid_t, sig) };
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("collector.log")).unwrap_or_default()
    }

    /// The warnings and errors of the daemon's log, grouped: each distinct
    /// message (digits shown as `#`) with how often it appeared, most
    /// frequent first, at most `max` of them. For failure messages of
    /// tests whose logs are too long to print.
    pub fn log_summary(&self, max: usize) -> String {
        let log = self.log();
        let mut groups: std::collections::HashMap<String, (u64, String)> = std::collections::HashMap::new();
        for l in log.lines() {
            let l = &strip_ansi(l);
            let Some(at) = ["ERROR", "WARN"].iter().find_map(|lvl| l.find(&format!(" {lvl} ")).map(|i| i + 1)) else {
                continue;
            };
            let msg = &l[at..];
            let key: String = msg.chars().map(|c| if c.is_ascii_digit() { '#' } else { c }).collect();
            let e = groups.entry(key).or_insert((0, msg.to_string()));
            e.0 += 1;
        }
        let mut v: Vec<(u64, String)> = groups.into_values().collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.0));
        let mut out = format!("{} log lines; warnings and errors:\n", log.lines().count());
        for (n, example) in v.iter().take(max) {
            out.push_str(&format!("  {n:>7} x {example}\n"));
        }
        if v.is_empty() {
            out.push_str("  (none)\n");
        }
        out
    }

    /// Runs `telemctl -f CONF ARGS`.
    pub fn telemctl(&self, args: &[&str]) -> Output {
        let mut tries = 0;
        loop {
            match Command::new(bin("telemctl")).arg("-f").arg(&self.conf).args(args).output() {
                Ok(o) => return o,
                // Another cargo in the same target directory may be
                // replacing the binary right now.
                Err(e)
                    if tries < 50
                        && matches!(
                            e.kind(),
                            std::io::ErrorKind::NotFound | std::io::ErrorKind::ExecutableFileBusy
                        ) =>
                {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("run telemctl: {e}"),
            }
        }
    }

    /// `telemctl ARGS`, which must succeed: its stdout (the failure
    /// message shows its output and the daemon's log).
    pub fn telemctl_ok(&self, args: &[&str]) -> String {
        let out = self.telemctl(args);
        assert!(
            out.status.success(),
            "telemctl {args:?} failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `telemctl status --json`.
    pub fn status(&self) -> serde_json::Value {
        let out = self.telemctl(&["status", "--json"]);
        assert!(out.status.success(), "telemctl status failed: {}", String::from_utf8_lossy(&out.stderr));
        parse_json(&String::from_utf8_lossy(&out.stdout))
    }

    /// Creates the original's `opt-in-no-privacy-filters` file and waits
    /// until the running daemon says scrubbing is off: it re-reads the file
    /// at most every 200 ms, so a record sent at once could still be scrubbed.
    pub fn privacy_filters_off(&self) {
        std::fs::create_dir_all(self.dir.join("etc")).expect("etc dir");
        std::fs::write(self.dir.join("etc/opt-in-no-privacy-filters"), b"").expect("write opt-in-no-privacy-filters");
        let s = self.wait_status(Duration::from_secs(10), |s| s["scrubbing"] == false);
        assert_eq!(s["scrubbing"], false, "scrubbing still on 10 s after opt-in-no-privacy-filters");
    }

    /// `telemctl journal --json`, one parsed object per record.
    pub fn journal(&self, extra: &[&str]) -> Vec<serde_json::Value> {
        let mut args = vec!["journal", "--json"];
        args.extend_from_slice(extra);
        let out = self.telemctl(&args);
        assert!(out.status.success(), "telemctl journal failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(parse_json).collect()
    }

    /// Waits until the journal (as `telemctl journal --json` shows it)
    /// satisfies `pred`: fates are written a few milliseconds after the
    /// counters of `status` move.
    pub fn wait_journal(
        &self,
        timeout: Duration,
        pred: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let j = self.journal(&[]);
            if pred(&j) || Instant::now() >= deadline {
                return j;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the status satisfies `pred`.
    pub fn wait_status(&self, timeout: Duration, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status();
            if pred(&s) || Instant::now() >= deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `s` without ANSI colour sequences (`ESC [ ... letter`), as the daemon's
/// log has them.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\u{1b}' && it.peek() == Some(&'[') {
            it.next();
            for c in it.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Parses one line of JSON printed by `telemctl`.
pub fn parse_json(s: &str) -> serde_json::Value {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}
