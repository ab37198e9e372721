//! The oops parser shared by klogscanner and pstoreprobe: finds the start of
//! a kernel report (oops, warning, BUG, panic, BERT block) in a stream of
//! log lines, collects the lines that belong to it, and writes the payload
//! in the original's shape, which the original backend's parsers read:
//!
//! ```text
//! Crash Report:
//! Reason: WARNING: CPU: 0 PID: 1 at drivers/foo.c:12 foo_probe+0x12/0x40 [foo]
//! Kernel Version : 6.1.0-13-amd64
//! Tainted : G           O
//! Modules : foo(O+) bar
//! Backtrace :
//! Register RIP: Non-zero
//! Register RSP: Non-zero
//! #1 do_one_initcall - [kernel]
//! #2 foo_init - [foo]
//! ```
//!
//! Register values are `Zero`/`Non-zero` unless the caller says privacy
//! filters are off (`etc_dir/opt-in-no-privacy-filters`), as the original.
//! Frames come from the `Call Trace:` block in both forms the kernel has
//! printed: modern (` <TASK>`, ` func+0x12/0x34 [module]`, ` ? func...`,
//! ` </TASK>`) and older (` [<ffffffff81234567>] func+0x12/0x34`). Frames
//! marked `?` are stack garbage the unwinder could not vouch for; they are
//! left out, so crash grouping by the first frame is stable.
//!
//! Lines are accepted in any of the forms the kernel writes them: a
//! `/dev/kmsg` message text, a `dmesg` line (`[  12.345678] text`), or a
//! pstore dump line (`<4>[  12.345678] text`). A report ends at
//! `---[ end trace`, at the end of its call trace (and the `Modules linked
//! in:`/`CR2:` lines the kernel prints after it), after [`MAX_LINES`]
//! lines, when another report starts, or when the caller flushes it (end of
//! input, or the log went quiet).

use std::fmt::Write as _;
use std::sync::OnceLock;

use regex::Regex;

/// Most lines one report keeps (the original's limit).
pub const MAX_LINES: usize = 100;

/// How a start line is recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matcher {
    /// The line starts with this text.
    Prefix(&'static str),
    /// This regular expression (case-insensitive, as the original's
    /// `REG_ICASE`) matches somewhere in the line.
    Regex(&'static str),
}

/// What a report is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An oops, BUG or warning with the usual lines.
    Oops,
    /// A `Kernel panic - not syncing:` line and what follows.
    Panic,
    /// A BERT block: `[Hardware Error]:` lines.
    Bert,
}

/// One start pattern of the original's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pattern {
    /// How the start line is recognised.
    pub matcher: Matcher,
    /// The record's classification.
    pub classification: &'static str,
    /// The record's severity (2 medium, 4 critical).
    pub severity: u8,
    /// What kind of report it starts.
    pub kind: Kind,
}

const WARNING: &str = "org.clearlinux/kernel/warning";
const BUG: &str = "org.clearlinux/kernel/bug";

const fn p(prefix: &'static str, classification: &'static str, severity: u8) -> Pattern {
    Pattern { matcher: Matcher::Prefix(prefix), classification, severity, kind: Kind::Oops }
}

/// The start patterns, in the order they are tried (the first that matches
/// a line starts a report): the original's table, with the
/// `org.clearlinux/` prefix the original forgot on its two regular
/// expressions.
pub const PATTERNS: &[Pattern] = &[
    p("NETDEV WATCHDOG: ", WARNING, 2),
    p("sysctl table check failed: ", WARNING, 2),
    p("IRQ handler type mismatch for IRQ", WARNING, 2),
    Pattern { matcher: Matcher::Regex("^ALSA (.*): BUG(.*)"), classification: BUG, severity: 2, kind: Kind::Oops },
    Pattern {
        matcher: Matcher::Regex("irq [[:digit:]]+: nobody cared"),
        classification: WARNING,
        severity: 2,
        kind: Kind::Oops,
    },
    p("WARNING: ", WARNING, 2),
    p("general protection fault: ", BUG, 4),
    p("BUG: unable to handle kernel ", BUG, 4),
    p("BUG:", BUG, 4),
    p("kernel BUG at", BUG, 4),
    p("general protection fault:", BUG, 4),
    p("do_IRQ: stack overflow:", "org.clearlinux/kernel/stackoverflow", 4),
    p("RTNL: assertion failed", WARNING, 2),
    p("Eeek! page_mapcount(page) went negative!", BUG, 4),
    p("near stack overflow (cur:", BUG, 4),
    p("double fault", BUG, 4),
    p("Badness", BUG, 4),
    p("list_del corruption.", WARNING, 2),
    p("list_add corruption.", WARNING, 2),
    p("ACPI Error:", WARNING, 2),
    Pattern {
        matcher: Matcher::Prefix("Kernel panic - not syncing:"),
        classification: "org.clearlinux/kernel/panic",
        severity: 4,
        kind: Kind::Panic,
    },
    Pattern {
        matcher: Matcher::Prefix("BERT: Error records from previous boot:"),
        classification: "org.clearlinux/bert/debug",
        severity: 2,
        kind: Kind::Bert,
    },
];

fn regexes() -> &'static Vec<Option<Regex>> {
    static R: OnceLock<Vec<Option<Regex>>> = OnceLock::new();
    R.get_or_init(|| {
        PATTERNS
            .iter()
            .map(|p| match p.matcher {
                // The POSIX class is spelled the same in Rust's regex; the
                // table is fixed, so a failure here is a programming error
                // caught by the unit tests, and such a pattern never matches.
                Matcher::Regex(re) => Regex::new(&format!("(?i){re}")).ok(),
                Matcher::Prefix(_) => None,
            })
            .collect()
    })
}

/// The first pattern that starts a report at `line` (a normalized line).
pub fn match_start(line: &str) -> Option<&'static Pattern> {
    let res = regexes();
    PATTERNS.iter().enumerate().find_map(|(i, p)| {
        let hit = match p.matcher {
            Matcher::Prefix(s) => line.starts_with(s),
            Matcher::Regex(_) => res.get(i).and_then(Option::as_ref).is_some_and(|re| re.is_match(line)),
        };
        hit.then_some(p)
    })
}

/// `line` without the prefixes the kernel's log forms add: a syslog level
/// `<N>`, a timestamp `[  12.345678]`, and the one space after it. Leading
/// spaces of the text itself are kept (they mark call-trace frames).
pub fn normalize(line: &str) -> &str {
    let mut s = line.trim_end_matches(['\r', '\n']);
    if let Some(rest) = s.strip_prefix('<') {
        if let Some(end) = rest.find('>') {
            if end <= 4 && rest[..end].bytes().all(|b| b.is_ascii_digit()) {
                s = &rest[end + 1..];
            }
        }
    }
    if let Some(rest) = s.strip_prefix('[') {
        if let Some(end) = rest.find(']') {
            let ts = rest[..end].trim();
            if !ts.is_empty() && ts.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                s = &rest[end + 1..];
                s = s.strip_prefix(' ').unwrap_or(s);
            }
        }
    }
    s
}

/// One report: its pattern and its lines (normalized), the first being the
/// start line. `first`/`last` are the positions the caller gave with the
/// first and last line (klogscanner: `/dev/kmsg` sequence numbers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The pattern that started it.
    pub pattern: &'static Pattern,
    /// Its lines, the start line first.
    pub lines: Vec<String>,
    /// Position of the first line.
    pub first: u64,
    /// Position of the last line.
    pub last: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Before `Call Trace:`.
    Body,
    /// In the call trace; `in_task`: inside ` <TASK>` .. ` </TASK>`.
    Trace { in_task: bool },
    /// After the call trace: only its epilogue lines belong here.
    Epilogue,
}

/// Lines the kernel prints after a call trace that still belong to the
/// report (the old x86 form prints `RIP`/`RSP` after the trace too).
const EPILOGUE: &[&str] = &["Modules linked in:", "CR2:", "Code:", "RIP", " RSP", "RSP", "Kernel Offset:"];

/// The line-by-line parser. Feed it lines with [`Parser::push`]; finished
/// reports come back from it (and from [`Parser::flush`]).
#[derive(Debug, Default)]
pub struct Parser {
    open: Option<(Report, Stage)>,
}

impl Parser {
    /// A parser with no report open.
    pub fn new() -> Parser {
        Parser::default()
    }

    /// Whether a report is being collected, and the position of its first
    /// line.
    pub fn open_since(&self) -> Option<u64> {
        self.open.as_ref().map(|(r, _)| r.first)
    }

    /// Takes one line (any of the forms [`normalize`] knows) at position
    /// `pos`; returns the report it finished, if any. At most one report
    /// finishes per line: a line that ends one report and starts the next
    /// is kept as the next one's first line.
    pub fn push(&mut self, pos: u64, raw: &str) -> Option<Report> {
        let line = normalize(raw);
        let Some((mut report, stage)) = self.open.take() else {
            self.start(pos, line);
            return None;
        };
        match step(&report, stage, line) {
            Step::Keep(stage) => {
                report.lines.push(line.to_string());
                report.last = pos;
                if report.lines.len() >= MAX_LINES {
                    return Some(report);
                }
                self.open = Some((report, stage));
                None
            }
            Step::EndConsumed => {
                report.last = pos;
                Some(report)
            }
            Step::EndHere => {
                self.start(pos, line);
                Some(report)
            }
        }
    }

    /// Ends the open report, if any (end of input, or the log went quiet).
    pub fn flush(&mut self) -> Option<Report> {
        self.open.take().map(|(r, _)| r)
    }

    fn start(&mut self, pos: u64, line: &str) {
        if let Some(pattern) = match_start(line) {
            let report = Report { pattern, lines: vec![line.to_string()], first: pos, last: pos };
            self.open = Some((report, Stage::Body));
        }
    }
}

enum Step {
    /// The line belongs to the report; the stage it is in after it.
    Keep(Stage),
    /// The report ends with this line, which is not part of it.
    EndConsumed,
    /// The report ended before this line; the line may start another.
    EndHere,
}

fn step(report: &Report, stage: Stage, line: &str) -> Step {
    if line.contains("[ end trace") || line.starts_with("---[ end Kernel panic") {
        return Step::EndConsumed;
    }
    if report.pattern.kind == Kind::Bert {
        return if line.starts_with("[Hardware Error]") { Step::Keep(Stage::Body) } else { Step::EndHere };
    }
    // Another report starting ends this one (the ALSA pattern's own BUG
    // lines excepted, as in the original).
    let alsa = matches!(report.pattern.matcher, Matcher::Regex(r) if r.starts_with("^ALSA"));
    if !alsa && match_start(line).is_some() {
        return Step::EndHere;
    }
    match stage {
        Stage::Body if line.starts_with("Call Trace:") => Step::Keep(Stage::Trace { in_task: false }),
        Stage::Body => Step::Keep(Stage::Body),
        Stage::Trace { in_task } => {
            let t = line.trim();
            if line.starts_with(' ') || line.starts_with('\t') {
                if t == "</TASK>" {
                    Step::Keep(Stage::Epilogue)
                } else if t.starts_with("<TASK>") {
                    Step::Keep(Stage::Trace { in_task: true })
                } else {
                    Step::Keep(Stage::Trace { in_task })
                }
            } else if line.starts_with("Call Trace:") || in_task {
                // Inside <TASK> the kernel prints the user-space registers
                // (`RIP: 0033:...`) before `</TASK>`.
                Step::Keep(stage)
            } else if EPILOGUE.iter().any(|e| line.starts_with(e)) {
                Step::Keep(Stage::Epilogue)
            } else {
                Step::EndHere
            }
        }
        Stage::Epilogue => {
            if EPILOGUE.iter().any(|e| line.starts_with(e)) || is_register_line(line) {
                Step::Keep(Stage::Epilogue)
            } else {
                Step::EndHere
            }
        }
    }
}

/// One call-trace frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The function (without `+0x../0x..`).
    pub function: String,
    /// The module in brackets after it, `kernel` when none.
    pub module: String,
}

/// Parses a call-trace line (modern or older form); `None` for markers
/// (`<TASK>`, `</IRQ>`, ...), unreliable frames (`? func`), and lines that
/// are not frames.
pub fn parse_frame(line: &str) -> Option<Frame> {
    let mut s = line.trim();
    // Context markers, alone or before an older-form frame.
    while let Some(rest) = s.strip_prefix('<') {
        let end = rest.find('>')?;
        let marker = &rest[..end];
        if !marker.trim_start_matches(['/', '<']).bytes().all(|b| b.is_ascii_uppercase()) {
            return None;
        }
        s = rest[end + 1..].trim_start_matches('>').trim_start();
    }
    // Older form: `[<ffffffff81234567>] func+0x12/0x34`.
    if let Some(rest) = s.strip_prefix("[<") {
        let end = rest.find(">]")?;
        s = rest[end + 2..].trim_start();
    }
    if s.is_empty() || s.starts_with('?') {
        return None;
    }
    let (sym, rest) = s.split_once(char::is_whitespace).unwrap_or((s, ""));
    let function = sym.split('+').next().unwrap_or(sym);
    if function.is_empty() || !function.bytes().all(|b| b.is_ascii_graphic()) || function.contains(':') {
        return None;
    }
    let module = rest
        .trim()
        .strip_prefix('[')
        .and_then(|m| m.split(']').next())
        .map(|m| m.trim())
        .filter(|m| !m.is_empty())
        .unwrap_or("kernel");
    Some(Frame { function: function.to_string(), module: module.to_string() })
}

/// The registers the original reports, in its spelling.
const REGISTERS: &[&str] = &[
    "RIP", "RSP", "CR0", "CR2", "CR3", "CR4", "DR0", "DR1", "DR2", "DR3", "DR6", "DR7", "EFLAGS", "RAX", "RBX", "RCX",
    "RDX", "RSI", "RDI", "RBP", "R08", "R09", "R10", "R11", "R12", "R13", "R14", "R15", "FS", "GS", "knlGS", "CS",
    "ES",
];

fn is_register_line(line: &str) -> bool {
    let first = line.trim_start().split([':', ' ']).next().unwrap_or("");
    REGISTERS.contains(&first)
}

/// The registers of one line: `(name, value text)` for each `NAME: value`
/// whose name is in the original's list, on lines that start with one.
fn registers(line: &str) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if !is_register_line(line) {
        return out;
    }
    let tokens: Vec<&str> = line.split_whitespace().collect();
    let mut i = 0;
    while i < tokens.len() {
        let tok = tokens[i];
        let (name, attached) = match tok.split_once(':') {
            Some((n, v)) => (n, v),
            None => (tok, ""),
        };
        let Some(&reg) = REGISTERS.iter().find(|r| **r == name) else {
            i += 1;
            continue;
        };
        let value = if attached.is_empty() {
            i += 1;
            tokens.get(i).copied().unwrap_or("")
        } else {
            attached
        };
        // `0010:ffffb4a1c06dfc38` (segment:value), `ffff...(0000)`.
        let value = value.rsplit_once(':').map(|(_, v)| v).unwrap_or(value);
        let value = value.split('(').next().unwrap_or(value);
        if !value.is_empty() {
            out.push((reg, value.to_string()));
        }
        i += 1;
    }
    out
}

fn is_zero(value: &str) -> bool {
    let v = value.trim_start_matches("0x");
    !v.is_empty() && v.bytes().all(|b| b == b'0')
}

/// What the report says about the kernel: the `CPU:` line's version and
/// taint flags, and the modules line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The kernel release (`6.1.0-13-amd64`).
    pub kernel_version: Option<String>,
    /// `Not tainted`, or the taint flags (`G           O`).
    pub tainted: Option<String>,
    /// The `Modules linked in:` list.
    pub modules: Option<String>,
}

fn parse_cpu_line(line: &str, facts: &mut Facts) {
    let tail = if let Some(i) = line.find(" Not tainted ") {
        facts.tainted = Some("Not tainted".into());
        &line[i + " Not tainted ".len()..]
    } else if let Some(i) = line.find("Tainted: ") {
        &line[i + "Tainted: ".len()..]
    } else {
        return;
    };
    // The version is the word before ` #N`.
    let words: Vec<&str> = tail.split_whitespace().collect();
    let Some(hash) = words.iter().position(|w| w.starts_with('#')) else { return };
    if hash == 0 {
        return;
    }
    facts.kernel_version = Some(words[hash - 1].to_string());
    if facts.tainted.is_none() {
        // Flags are everything before the version.
        if let Some(at) = tail.find(words[hash - 1]) {
            facts.tainted = Some(tail[..at].trim().to_string());
        }
    }
}

impl Report {
    /// The frames of its call trace, in order.
    pub fn frames(&self) -> Vec<Frame> {
        let mut out = Vec::new();
        let (mut in_trace, mut in_task) = (false, false);
        for line in &self.lines[1..] {
            if line.starts_with("Call Trace:") {
                in_trace = true;
                continue;
            }
            if !in_trace {
                continue;
            }
            if line.starts_with(' ') || line.starts_with('\t') {
                match line.trim() {
                    "<TASK>" => in_task = true,
                    "</TASK>" => in_task = false,
                    _ => out.extend(parse_frame(line).filter(|f| !REGISTERS.contains(&f.function.as_str()))),
                }
            } else if !in_task {
                in_trace = false;
            }
        }
        out
    }

    /// The version, taint and modules lines.
    pub fn facts(&self) -> Facts {
        let mut f = Facts::default();
        for line in &self.lines[1..] {
            if let Some(m) = line.strip_prefix("Modules linked in:") {
                if f.modules.is_none() && !m.trim().is_empty() {
                    f.modules = Some(m.trim().to_string());
                }
            } else if (line.starts_with("CPU: ") || line.starts_with("PID: ")) && f.kernel_version.is_none() {
                parse_cpu_line(line, &mut f);
            }
        }
        f
    }

    /// The payload in the original's shape; `register_values`: actual
    /// register values instead of `Zero`/`Non-zero` (only when privacy
    /// filters are off).
    pub fn payload(&self, register_values: bool) -> String {
        let mut out = String::new();
        if self.pattern.kind == Kind::Bert {
            let hw: Vec<&String> = self.lines.iter().filter(|l| l.starts_with("[Hardware Error]")).collect();
            if hw.is_empty() {
                let _ = writeln!(out, "{}", self.lines[0]);
            }
            for l in hw {
                let _ = writeln!(out, "{l}");
            }
            return out;
        }
        let _ = writeln!(out, "Crash Report:\nReason: {}", self.lines[0]);
        let facts = self.facts();
        if let Some(v) = &facts.kernel_version {
            let _ = writeln!(out, "Kernel Version : {v}");
        }
        if let Some(t) = &facts.tainted {
            let _ = writeln!(out, "Tainted : {t}");
        }
        if let Some(m) = &facts.modules {
            let _ = writeln!(out, "Modules : {m}");
        }
        let frames = self.frames();
        if !frames.is_empty() {
            out.push_str("Backtrace :\n");
        }
        let mut seen: Vec<&str> = Vec::new();
        let mut in_trace = false;
        for line in &self.lines[1..] {
            // Registers of the kernel context: those before the call trace
            // (modern) or anywhere outside it (older forms); the first of
            // each name only.
            if line.starts_with("Call Trace:") {
                in_trace = true;
            }
            if in_trace && !seen.is_empty() {
                continue;
            }
            for (name, value) in registers(line) {
                if seen.contains(&name) {
                    continue;
                }
                seen.push(name);
                let shown = if register_values {
                    value.as_str()
                } else if is_zero(&value) {
                    "Zero"
                } else {
                    "Non-zero"
                };
                let _ = writeln!(out, "Register {name}: {shown}");
            }
        }
        for (i, f) in frames.iter().enumerate() {
            let _ = writeln!(out, "#{} {} - [{}]", i + 1, f.function, f.module);
        }
        out
    }

    /// What makes two reports "the same" for the storm governor: the
    /// classification, the start line with its numbers blanked (CPU, PID,
    /// addresses), and the first frames.
    pub fn signature(&self) -> String {
        let mut s = String::from(self.pattern.classification);
        s.push('\n');
        let mut last_digit = false;
        for c in self.lines[0].chars() {
            let d = c.is_ascii_digit();
            if !(d && last_digit) {
                s.push(if d { '#' } else { c });
            }
            last_digit = d;
        }
        for f in self.frames().iter().take(4) {
            let _ = write!(s, "\n{} [{}]", f.function, f.module);
        }
        s
    }
}

/// Parses a whole text (a pstore dump, a saved dmesg) into its reports.
pub fn parse_text(text: &str) -> Vec<Report> {
    let mut p = Parser::new();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        out.extend(p.push(i as u64, line));
    }
    out.extend(p.flush());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_regex_compiles() {
        for (p, re) in PATTERNS.iter().zip(regexes()) {
            assert_eq!(matches!(p.matcher, Matcher::Regex(_)), re.is_some(), "{p:?}");
        }
    }

    #[test]
    fn normalize_strips_level_timestamp_and_one_space() {
        assert_eq!(normalize("<4>[   12.345678] WARNING: x"), "WARNING: x");
        assert_eq!(normalize("[   12.345678]  func+0x1/0x2"), " func+0x1/0x2");
        assert_eq!(normalize("[Hardware Error]: event severity: fatal"), "[Hardware Error]: event severity: fatal");
        assert_eq!(normalize(" func+0x1/0x2"), " func+0x1/0x2");
    }

    #[test]
    fn frames_in_both_forms() {
        let f = |l| parse_frame(l).map(|f| (f.function, f.module));
        assert_eq!(f(" do_one_initcall+0x5b/0x320"), Some(("do_one_initcall".into(), "kernel".into())));
        assert_eq!(f(" oops_init+0x15/0x1000 [oops]"), Some(("oops_init".into(), "oops".into())));
        assert_eq!(f(" ? __die+0x23/0x70"), None);
        assert_eq!(f(" <TASK>"), None);
        assert_eq!(f(" </IRQ>"), None);
        assert_eq!(
            f(" [<ffffffffa1002128>] do_one_initcall+0xb8/0x1e0"),
            Some(("do_one_initcall".into(), "kernel".into()))
        );
        assert_eq!(f(" [<ffffffffa118784a>] ? __vunmap+0x9a/0x100"), None);
        assert_eq!(
            f(" <IRQ>  [<ffffffff816606a8>] dump_stack+0x19/0x1b"),
            Some(("dump_stack".into(), "kernel".into()))
        );
    }

    const MODERN_OOPS: &str = "\
BUG: kernel NULL pointer dereference, address: 0000000000000000
#PF: supervisor write access in kernel mode
Oops: 0002 [#1] PREEMPT SMP NOPTI
CPU: 1 PID: 1234 Comm: insmod Tainted: G           O       6.1.0-13-amd64 #1  Debian 6.1.55-1
Hardware name: QEMU Standard PC (i440FX + PIIX, 1996)
RIP: 0010:oops_init+0x15/0x1000 [oops]
Code: Unable to access opcode bytes at 0xffffffffc0a1bfeb.
RSP: 0018:ffffb4a1c06dfc38 EFLAGS: 00010246
RAX: 0000000000000000 RBX: 0000000000000000 RCX: 0000000000000001
Call Trace:
 <TASK>
 ? __die+0x23/0x70
 ? oops_init+0x15/0x1000 [oops]
 do_one_initcall+0x5b/0x320
 do_init_module+0x60/0x240
RIP: 0033:0x7f0c6e6ee719
RSP: 002b:00007ffd42f5e7e8 EFLAGS: 00000246 ORIG_RAX: 0000000000000139
 </TASK>
Modules linked in: oops(O+) xfs
CR2: 0000000000000000
---[ end trace 0000000000000000 ]---
RIP: 0010:oops_init+0x15/0x1000 [oops]
unrelated line
";

    #[test]
    fn modern_oops_payload() {
        let r = parse_text(MODERN_OOPS);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].pattern.classification, BUG);
        let p = r[0].payload(false);
        assert_eq!(
            p,
            "Crash Report:\nReason: BUG: kernel NULL pointer dereference, address: 0000000000000000\n\
             Kernel Version : 6.1.0-13-amd64\nTainted : G           O\nModules : oops(O+) xfs\nBacktrace :\n\
             Register RIP: Non-zero\nRegister RSP: Non-zero\nRegister EFLAGS: Non-zero\nRegister RAX: Zero\n\
             Register RBX: Zero\nRegister RCX: Non-zero\n\
             #1 do_one_initcall - [kernel]\n#2 do_init_module - [kernel]\n"
        );
        let v = r[0].payload(true);
        assert!(v.contains("Register RSP: ffffb4a1c06dfc38\n"), "{v}");
        assert!(v.contains("Register RIP: oops_init+0x15/0x1000\n"), "{v}");
    }

    #[test]
    fn dump_stack_report_ends_after_task_block() {
        let text = "BUG: sleeping function called from invalid context at mm/slab.c:1\n\
                    CPU: 0 PID: 1 Comm: x Not tainted 6.18.1 #1\nCall Trace:\n <TASK>\n dump_stack_lvl+0x1/0x2\n \
                    </TASK>\nsome other message\nWARNING: CPU: 0 PID: 1 at a.c:1 f+0x1/0x2\n";
        let r = parse_text(text);
        assert_eq!(r.len(), 2, "{r:#?}");
        assert_eq!(r[0].lines.len(), 6);
        assert!(r[0].payload(false).contains("Kernel Version : 6.18.1\nTainted : Not tainted\n"));
        assert_eq!(r[1].pattern.classification, WARNING);
    }

    #[test]
    fn signature_ignores_numbers() {
        let a = parse_text("WARNING: CPU: 0 PID: 12 at a.c:1 f+0x1/0x2\nCall Trace:\n g+0x1/0x2\n");
        let b = parse_text("WARNING: CPU: 1 PID: 345 at a.c:1 f+0x1/0x2\nCall Trace:\n g+0x1/0x2\n");
        let c = parse_text("WARNING: CPU: 1 PID: 345 at b.c:1 f+0x1/0x2\nCall Trace:\n g+0x1/0x2\n");
        assert_eq!(a[0].signature(), b[0].signature());
        assert_ne!(a[0].signature(), c[0].signature());
    }

    #[test]
    fn long_report_is_cut_at_max_lines() {
        let mut t = String::from("WARNING: x\n");
        for i in 0..150 {
            t.push_str(&format!("line {i}\n"));
        }
        let r = parse_text(&t);
        assert_eq!(r[0].lines.len(), MAX_LINES);
    }
}
