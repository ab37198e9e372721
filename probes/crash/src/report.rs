//! Turning unwound threads into the record: payload v1 (the original's
//! text, so the old backend's grouping keeps working) or v2 (JSON with every
//! field of every frame), classification and severity.

use std::fmt::Write;

use serde::Serialize;
use telemetry::{Classification, Severity};
use unwind::{Backtrace, End, Frame};

use crate::config::{Config, ThirdParty};

/// One unwound thread.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadReport {
    pub tid: u32,
    pub crashed: bool,
    #[serde(flatten)]
    pub backtrace: Backtrace,
}

/// Everything the record says about a crash.
#[derive(Debug, Clone, Serialize)]
pub struct CrashReport {
    pub process: String,
    pub pid: u32,
    pub signal: i32,
    pub signal_code: Option<i32>,
    pub fault_address: Option<u64>,
    /// Threads, the crashing one first (empty for a third-party summary).
    pub threads: Vec<ThreadReport>,
    /// Why the report is partial, if it is (budget ran out, core
    /// truncated, memory withheld, unwinding errors).
    pub errors: Vec<String>,
    /// Memory-derived content was withheld (process not dumpable).
    pub memory_withheld: bool,
    /// The crash signature ([`crate::signature`]), once the threads are
    /// unwound.
    pub signature: Option<String>,
}

/// Which class of executable crashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    System,
    Build,
    ThirdParty,
}

pub fn origin(cfg: &Config, exe: &str) -> Origin {
    if cfg.build_prefixes.iter().any(|p| exe.starts_with(p.as_str())) {
        Origin::Build
    } else if cfg.system_prefixes.iter().any(|p| exe.starts_with(p.as_str())) {
        Origin::System
    } else {
        Origin::ThirdParty
    }
}

impl CrashReport {
    /// Partial: an error was met anywhere.
    pub fn is_partial(&self) -> bool {
        !self.errors.is_empty() || self.threads.iter().any(|t| !t.backtrace.is_complete())
    }
}

fn cls(rest: &str) -> Classification {
    // The three fixed names below are valid classifications.
    Classification::parse(&format!("{}/crash/{rest}", telemetry::DEFAULT_DOMAIN))
        .unwrap_or_else(|_| Classification::parse("org.clearlinux/crash/clr").unwrap_or_else(|_| unreachable!()))
}

/// Classification and severity as the original: `clr` 3, `error` 4
/// (partial backtrace), `clr-build` 2, `unknown` 2 (third party).
pub fn classify(origin: Origin, partial: bool) -> (Classification, Severity) {
    match origin {
        Origin::ThirdParty => (cls("unknown"), Severity::Medium),
        Origin::Build => (cls("clr-build"), Severity::Medium),
        Origin::System if partial => (cls("error"), Severity::Critical),
        Origin::System => (cls("clr"), Severity::High),
    }
}

/// Whether to unwind at all for this origin.
pub fn unwinds(cfg: &Config, origin: Origin) -> bool {
    origin != Origin::ThirdParty || cfg.third_party == ThirdParty::Unwind
}

/// The module shown in brackets: the file name for libraries, as the
/// original (`[libc.so.6]`), the full path for the executable.
fn module_label<'a>(f: &'a Frame, exe: &str) -> Option<&'a str> {
    match f.module.as_deref() {
        None => None,
        Some(m) if m == exe => Some(m),
        Some(m) => Some(m.rsplit('/').next().unwrap_or(m)),
    }
}

/// Payload format 1: the original's layout (with a `Signature:` line after
/// `Signal:` when there is one), one line per function
/// (inlined functions get their own line), an `Error:` line per thread
/// whose backtrace is partial, and a blank line at the end. As the
/// original: a frame whose function is unknown is `#N ??? - [module]`, a
/// frame outside any module `#N (no symbols)`.
pub fn payload_v1(r: &CrashReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Process: {}", r.process);
    let _ = writeln!(s, "PID: {}", r.pid);
    let _ = writeln!(s, "Signal: {}", r.signal);
    if let Some(sig) = &r.signature {
        let _ = writeln!(s, "Signature: {sig}");
    }
    for t in &r.threads {
        let _ = write!(s, "\nBacktrace (TID {}):\n", t.tid);
        let mut n = 0usize;
        for f in &t.backtrace.frames {
            let Some(module) = module_label(f, &r.process) else {
                // No module at all (a wild pc): as the original.
                let _ = writeln!(s, "#{n} (no symbols)");
                n += 1;
                continue;
            };
            if f.symbols.iter().all(|sym| sym.function.is_none()) {
                // Unsymbolized: the original's `??? - [module]` (no
                // parentheses), which the original backend's grouping skips.
                let _ = write!(s, "#{n} ??? - [{module}]");
                if let Some(sym) = f.symbols.last() {
                    if let (Some(file), Some(line)) = (&sym.file, sym.line) {
                        let _ = write!(s, " - {file}:{line}");
                    }
                }
                s.push('\n');
                n += 1;
                continue;
            }
            for sym in &f.symbols {
                let name = sym.function.as_deref().unwrap_or("???");
                let _ = write!(s, "#{n} {name}() - [{module}]");
                if let (Some(file), Some(line)) = (&sym.file, sym.line) {
                    let _ = write!(s, " - {file}:{line}");
                }
                s.push('\n');
                n += 1;
            }
        }
        if let End::Error(e) = &t.backtrace.end {
            let _ = writeln!(s, "Error: {e}");
        }
    }
    for e in &r.errors {
        let _ = writeln!(s, "Error: {e}");
    }
    s.push('\n');
    s
}

/// The payload in format `version`, made to fit `limit` bytes: when the
/// full report is larger, the other threads' frames are cut (to 32, 16, 8,
/// 4, 2, 1 frames, then those threads are left out), then the crashing
/// thread's; what was cut is said in an `Error:` line / `errors` entry.
/// Payloads are never truncated mid-text.
pub fn payload_fitting(r: &CrashReport, version: u32, limit: usize) -> String {
    let render = |r: &CrashReport| if version == 2 { payload_v2(r) } else { payload_v1(r) };
    let p = render(r);
    if p.len() <= limit {
        return p;
    }
    let mut last = p;
    for keep in [32usize, 16, 8, 4, 2, 1, 0] {
        let mut r2 = r.clone();
        for t in r2.threads.iter_mut().skip(1) {
            if t.backtrace.frames.len() > keep {
                t.backtrace.frames.truncate(keep);
                t.backtrace.end = End::Limit;
            }
        }
        let total = r2.threads.len();
        if keep == 0 {
            r2.threads.truncate(1);
            r2.errors.push(format!("payload limit {limit} bytes: {} other threads left out", total.saturating_sub(1)));
        } else {
            r2.errors.push(format!("payload limit {limit} bytes: other threads cut to {keep} frames"));
        }
        last = render(&r2);
        if last.len() <= limit {
            return last;
        }
    }
    for keep in [64usize, 32, 16, 8, 4, 1] {
        let mut r2 = r.clone();
        r2.threads.truncate(1);
        if let Some(t) = r2.threads.first_mut() {
            t.backtrace.frames.truncate(keep);
            t.backtrace.end = End::Limit;
        }
        r2.errors
            .push(format!("payload limit {limit} bytes: crashing thread cut to {keep} frames, other threads left out"));
        last = render(&r2);
        if last.len() <= limit {
            return last;
        }
    }
    last
}

/// The summary payload of a third-party crash (no unwinding).
pub const THIRD_PARTY_PAYLOAD: &str = "Crash from third party\n";

#[derive(Serialize)]
struct V2Frame<'a> {
    index: usize,
    pc: String,
    sp: String,
    source: &'static str,
    exact: bool,
    module: Option<&'a str>,
    build_id: Option<&'a str>,
    module_offset: Option<String>,
    function: Option<&'a str>,
    file: Option<&'a str>,
    line: Option<u32>,
    inlined: Vec<V2Inline<'a>>,
}

#[derive(Serialize)]
struct V2Inline<'a> {
    function: Option<&'a str>,
    file: Option<&'a str>,
    line: Option<u32>,
}

#[derive(Serialize)]
struct V2Thread<'a> {
    tid: u32,
    crashed: bool,
    end: &'static str,
    error: Option<&'a str>,
    frames: Vec<V2Frame<'a>>,
}

#[derive(Serialize)]
struct V2<'a> {
    payload_format: u32,
    process: &'a str,
    pid: u32,
    signal: i32,
    signal_code: Option<i32>,
    fault_address: Option<String>,
    partial: bool,
    memory_withheld: bool,
    signature: Option<&'a str>,
    errors: &'a [String],
    threads: Vec<V2Thread<'a>>,
}

/// Payload format 2: JSON with every frame's fields.
pub fn payload_v2(r: &CrashReport) -> String {
    let hex = |v: u64| format!("{v:#x}");
    let threads = r
        .threads
        .iter()
        .map(|t| V2Thread {
            tid: t.tid,
            crashed: t.crashed,
            end: match t.backtrace.end {
                End::Outermost => "outermost",
                End::Limit => "limit",
                End::Error(_) => "error",
            },
            error: match &t.backtrace.end {
                End::Error(e) => Some(e),
                _ => None,
            },
            frames: t
                .backtrace
                .frames
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    let own = f.symbols.last();
                    V2Frame {
                        index: i,
                        pc: hex(f.pc),
                        sp: hex(f.sp),
                        source: f.source.as_str(),
                        exact: f.exact,
                        module: f.module.as_deref(),
                        build_id: f.build_id.as_deref(),
                        module_offset: f.module_offset.map(hex),
                        function: own.and_then(|s| s.function.as_deref()),
                        file: own.and_then(|s| s.file.as_deref()),
                        line: own.and_then(|s| s.line),
                        inlined: f.symbols[..f.symbols.len().saturating_sub(1)]
                            .iter()
                            .map(|s| V2Inline {
                                function: s.function.as_deref(),
                                file: s.file.as_deref(),
                                line: s.line,
                            })
                            .collect(),
                    }
                })
                .collect(),
        })
        .collect();
    let v = V2 {
        payload_format: 2,
        process: &r.process,
        pid: r.pid,
        signal: r.signal,
        signal_code: r.signal_code,
        fault_address: r.fault_address.map(hex),
        partial: r.is_partial(),
        memory_withheld: r.memory_withheld,
        signature: r.signature.as_deref(),
        errors: &r.errors,
        threads,
    };
    serde_json::to_string(&v).unwrap_or_else(|e| format!("{{\"payload_format\":2,\"error\":\"{e}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use unwind::{FrameSource, Symbol};

    fn frame(name: Option<&str>, module: &str, file: Option<(&str, u32)>) -> Frame {
        Frame {
            pc: 0x1000,
            sp: 0x2000,
            source: FrameSource::Cfi,
            exact: false,
            module: Some(module.into()),
            build_id: Some("abcd".into()),
            module_offset: Some(0x10),
            symbols: vec![Symbol {
                function: name.map(String::from),
                file: file.map(|f| f.0.to_string()),
                line: file.map(|f| f.1),
                inlined: false,
            }],
        }
    }

    #[test]
    fn v1_matches_the_original_layout() {
        let r = CrashReport {
            process: "/usr/bin/segv".into(),
            pid: 1218,
            signal: 11,
            signal_code: Some(1),
            fault_address: Some(0),
            threads: vec![ThreadReport {
                tid: 1218,
                crashed: true,
                backtrace: Backtrace {
                    frames: vec![
                        frame(Some("level3"), "/usr/bin/segv", Some(("/src/segv.c", 4))),
                        frame(
                            Some("__libc_start_call_main"),
                            "/usr/lib/x86_64-linux-gnu/libc.so.6",
                            Some(("../sysdeps/nptl/libc_start_call_main.h", 58)),
                        ),
                        frame(Some("_start"), "/usr/bin/segv", None),
                    ],
                    end: End::Outermost,
                },
            }],
            errors: vec![],
            memory_withheld: false,
            signature: None,
        };
        assert_eq!(
            payload_v1(&r),
            "Process: /usr/bin/segv\nPID: 1218\nSignal: 11\n\nBacktrace (TID 1218):\n\
             #0 level3() - [/usr/bin/segv] - /src/segv.c:4\n\
             #1 __libc_start_call_main() - [libc.so.6] - ../sysdeps/nptl/libc_start_call_main.h:58\n\
             #2 _start() - [/usr/bin/segv]\n\n"
        );
        assert!(!r.is_partial());
        let mut signed = r.clone();
        signed.signature = Some("segv!level3 | libc.so.6!__libc_start_call_main @ segv+0x10".into());
        assert!(payload_v1(&signed).starts_with(
            "Process: /usr/bin/segv\nPID: 1218\nSignal: 11\n\
             Signature: segv!level3 | libc.so.6!__libc_start_call_main @ segv+0x10\n\nBacktrace (TID 1218):\n"
        ));
        let v: serde_json::Value = serde_json::from_str(&payload_v2(&signed)).unwrap();
        assert_eq!(v["signature"], "segv!level3 | libc.so.6!__libc_start_call_main @ segv+0x10");
        let v: serde_json::Value = serde_json::from_str(&payload_v2(&r)).unwrap();
        assert_eq!(v["threads"][0]["frames"][0]["function"], "level3");
        assert_eq!(v["threads"][0]["frames"][0]["build_id"], "abcd");
        assert_eq!(v["threads"][0]["frames"][0]["module_offset"], "0x10");
    }

    #[test]
    fn v1_unsymbolized_frames_as_the_original() {
        let mut unnamed = frame(None, "/usr/lib/libfoo.so.1", None);
        unnamed.symbols.clear();
        let mut no_function_but_line = frame(None, "/usr/bin/segv", Some(("/src/segv.c", 9)));
        no_function_but_line.module_offset = Some(0x20);
        let mut wild = frame(None, "x", None);
        wild.module = None;
        let r = CrashReport {
            process: "/usr/bin/segv".into(),
            pid: 1,
            signal: 11,
            signal_code: None,
            fault_address: None,
            threads: vec![ThreadReport {
                tid: 1,
                crashed: true,
                backtrace: Backtrace { frames: vec![wild, unnamed, no_function_but_line], end: End::Outermost },
            }],
            errors: vec![],
            memory_withheld: false,
            signature: None,
        };
        let p = payload_v1(&r);
        assert!(
            p.ends_with("#0 (no symbols)\n#1 ??? - [libfoo.so.1]\n#2 ??? - [/usr/bin/segv] - /src/segv.c:9\n\n"),
            "{p}"
        );
        assert!(!p.contains("???()"), "{p}");
    }

    #[test]
    fn classification_per_origin() {
        let c = Config::default();
        assert_eq!(origin(&c, "/usr/bin/x"), Origin::System);
        assert_eq!(origin(&c, "/builddir/x"), Origin::Build);
        assert_eq!(origin(&c, "/home/u/x"), Origin::ThirdParty);
        assert_eq!(classify(Origin::System, false).0.as_str(), "org.clearlinux/crash/clr");
        assert_eq!(classify(Origin::System, true).1, Severity::Critical);
        assert_eq!(classify(Origin::System, true).0.rest(), "error");
        assert_eq!(classify(Origin::ThirdParty, false).1, Severity::Medium);
        assert!(!unwinds(&c, Origin::ThirdParty));
    }
}
