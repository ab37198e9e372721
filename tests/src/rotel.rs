//! rotel, a real OpenTelemetry collector (PyPI `rotel`, its `rotel-agent`
//! binary), as the OTLP receiver of collector tests: an OTLP/HTTP receiver
//! on a free loopback port, the blackhole exporter, and its debug log of
//! every log record (`--debug-log logs --debug-log-verbosity detailed`),
//! which [`Rotel::records`] parses back. `cargo xtask test` (and `cargo
//! xtask setup`) install it under the target directory; a test finds it
//! with [`Rotel::find`], and fails in CI (`CI=true`) rather than skip when
//! it is missing.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{bin_dir, in_ci};

/// One log record as rotel's debug log shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogRecord {
    /// The resource's attributes (`key` -> the value as shown, e.g. `Str(x)`
    /// is `x`, `Int(3)` is `3`).
    pub resource: BTreeMap<String, String>,
    pub attributes: BTreeMap<String, String>,
    pub timestamp: String,
    pub observed: String,
    pub severity_text: String,
    /// `SEVERITY_NUMBER_ERROR(17)` and so on.
    pub severity_number: String,
    pub body: String,
}

/// A running rotel-agent; killed when dropped.
pub struct Rotel {
    exe: PathBuf,
    pub http_port: u16,
    grpc_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// How many times it was started (one log file per run).
    runs: usize,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

impl Rotel {
    /// The rotel-agent installed by `cargo xtask setup`; `None` (after
    /// saying why) when it is missing outside CI; a failure in CI.
    pub fn find() -> Option<PathBuf> {
        let target = bin_dir().parent().map(PathBuf::from).unwrap_or_default();
        let p = target.join("rotel-venv/bin/rotel-agent");
        if p.exists() {
            return Some(p);
        }
        let why = format!("rotel-agent is not installed at {} (run `cargo xtask setup`)", p.display());
        assert!(!in_ci(), "{why}; CI=true: failing rather than skipping");
        eprintln!("skipping: {why}");
        None
    }

    /// Starts rotel on free ports; `None` when it is not installed (outside CI).
    pub fn start() -> Option<Rotel> {
        let exe = Rotel::find()?;
        let mut r = Rotel {
            exe,
            http_port: free_port(),
            grpc_port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
            runs: 0,
        };
        r.spawn();
        Some(r)
    }

    /// The base URL (`otlp_endpoint`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    fn log_path(&self, run: usize) -> PathBuf {
        self.dir.path().join(format!("rotel-{run}.log"))
    }

    fn spawn(&mut self) {
        self.runs += 1;
        let log = std::fs::File::create(self.log_path(self.runs)).expect("rotel log");
        let child = Command::new(&self.exe)
            .arg("start")
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{}", self.http_port)])
            .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{}", self.grpc_port)])
            .args(["--exporter", "blackhole", "--debug-log", "logs", "--debug-log-verbosity", "detailed"])
            .arg("--pid-file")
            .arg(self.dir.path().join("rotel.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("spawn rotel-agent");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.http_port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("rotel-agent did not start:\n{}", self.output());
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports (after [`kill9`](Self::kill9)).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Every run's output, in order.
    pub fn output(&self) -> String {
        (1..=self.runs).map(|r| std::fs::read_to_string(self.log_path(r)).unwrap_or_default()).collect()
    }

    /// Every log record received so far (all runs).
    pub fn records(&self) -> Vec<LogRecord> {
        parse_debug_log(&self.output())
    }

    /// Waits until `pred` holds of the records received, or `timeout`.
    pub fn wait_records(&self, timeout: Duration, pred: impl Fn(&[LogRecord]) -> bool) -> Vec<LogRecord> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.records();
            if pred(&r) || Instant::now() >= deadline {
                return r;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The `telemetry.record_id` of every record received.
    pub fn record_ids(&self) -> Vec<String> {
        record_ids(&self.output())
    }
}

impl Drop for Rotel {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The record ids in a debug log, without parsing the rest (fast, for
/// thousands of records).
pub fn record_ids(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.trim_start().strip_prefix("-> telemetry.record_id: Str("))
        .map(|v| v.trim_end_matches(')').to_string())
        .collect()
}

/// A value as shown (`Str(x)` -> `x`, `Int(3)` -> `3`).
fn shown(v: &str) -> String {
    match v.find('(') {
        Some(i) if v.ends_with(')') => v[i + 1..v.len() - 1].to_string(),
        _ => v.to_string(),
    }
}

/// Parses rotel's detailed debug log of log records.
pub fn parse_debug_log(log: &str) -> Vec<LogRecord> {
    #[derive(PartialEq)]
    enum In {
        None,
        Resource,
        Record,
        Attributes,
        Body,
    }
    let mut out: Vec<LogRecord> = Vec::new();
    let mut resource = BTreeMap::new();
    let mut state = In::None;
    // The attribute (or body) a multi-line value continues.
    let mut last: Option<String> = None;
    let section = |l: &str| {
        [
            "ResourceLog #",
            "Resource SchemaURL",
            "ScopeLogs #",
            "ScopeLogs SchemaURL",
            "InstrumentationScope",
            "LogRecord #",
        ]
        .iter()
        .any(|p| l.starts_with(p))
            || l.starts_with("    Trace ID")
            || l.starts_with("    Span ID")
            || l.starts_with("Flags:")
    };
    for l in log.lines() {
        if l.starts_with("ResourceLog #") {
            resource = BTreeMap::new();
            state = In::None;
            continue;
        }
        if l.starts_with("Resource attributes:") {
            state = In::Resource;
            continue;
        }
        if l.starts_with("LogRecord #") {
            out.push(LogRecord { resource: resource.clone(), ..LogRecord::default() });
            state = In::Record;
            last = None;
            continue;
        }
        if section(l) {
            state = if l.starts_with("LogRecord") { In::Record } else { In::None };
            last = None;
            continue;
        }
        let Some(rec) = out.last_mut() else {
            if state == In::Resource {
                if let Some((k, v)) = l.trim_start().strip_prefix("-> ").and_then(|a| a.split_once(": ")) {
                    resource.insert(k.to_string(), shown(v));
                }
            }
            continue;
        };
        if let Some(a) = l.strip_prefix("     -> ") {
            if let Some((k, v)) = a.split_once(": ") {
                match state {
                    In::Resource => {
                        resource.insert(k.to_string(), shown(v));
                    }
                    _ => {
                        state = In::Attributes;
                        rec.attributes.insert(k.to_string(), v.to_string());
                        last = Some(k.to_string());
                    }
                }
            }
            continue;
        }
        if state == In::Record || state == In::Body || state == In::Attributes {
            if let Some(v) = l.strip_prefix("ObservedTimestamp: ") {
                rec.observed = v.to_string();
            } else if let Some(v) = l.strip_prefix("Timestamp: ") {
                rec.timestamp = v.to_string();
            } else if let Some(v) = l.strip_prefix("SeverityText: ") {
                rec.severity_text = v.to_string();
            } else if let Some(v) = l.strip_prefix("SeverityNumber: ") {
                rec.severity_number = v.to_string();
            } else if let Some(v) = l.strip_prefix("Body: ") {
                rec.body = v.to_string();
                state = In::Body;
            } else if l.starts_with("Attributes:") || l.starts_with("EventName:") {
                state = In::Record;
            } else if state == In::Body {
                rec.body.push('\n');
                rec.body.push_str(l);
            } else if let (In::Attributes, Some(k)) = (&state, &last) {
                if let Some(v) = rec.attributes.get_mut(k) {
                    v.push('\n');
                    v.push_str(l);
                }
            }
        }
    }
    for r in &mut out {
        r.body = shown(&r.body);
        for v in r.attributes.values_mut() {
            *v = shown(v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_detailed_debug_log() {
        let log = "\u{1b}[2m2026\u{1b}[0m INFO Starting Rotel.\nResourceLog #0\nResource SchemaURL: \nResource attributes:\n     -> service.name: Str(hprobe)\n     -> host.id: Str(abc)\nScopeLogs #0\nScopeLogs SchemaURL: \nInstrumentationScope telemetrics \nLogRecord #0\nObservedTimestamp: 2\nTimestamp: 1\nSeverityText: INFO\nSeverityNumber: SEVERITY_NUMBER_INFO(9)\nEventName: x\nBody: Str(hello\nworld)\nAttributes:\n     -> telemetry.record_id: Str(0011)\n     -> exception.stacktrace: Str(#0 a\n#1 b)\n     -> process.pid: Int(12)\n    Trace ID       : \n    Span ID        : \nFlags: 0\n";
        let r = parse_debug_log(log);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].resource["service.name"], "hprobe");
        assert_eq!(r[0].body, "hello\nworld");
        assert_eq!(r[0].attributes["exception.stacktrace"], "#0 a\n#1 b");
        assert_eq!(r[0].attributes["process.pid"], "12");
        assert_eq!((r[0].timestamp.as_str(), r[0].observed.as_str()), ("1", "2"));
        assert_eq!(record_ids(log), vec!["0011".to_string()]);
    }
}
