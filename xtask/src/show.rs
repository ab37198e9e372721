//! How `cargo xtask run` shows the journal live: each record as
//! `telemctl journal` prints it (record id, time, class, event id, boot id,
//! fate), later fates as `id time -> fate`, and under each crash
//! (`*/crash/*`) and fatal-signal (`*/signal/fatal`) record the crashing
//! thread's top frames from its payload. Input: the lines of
//! `telemctl journal --follow --json -i`.

use serde_json::Value;

/// Most frame lines shown under a record.
pub const MAX_FRAMES: usize = 8;

/// What to print for one line of `telemctl journal --json -i` (lines that
/// are not JSON are passed on as they are).
pub fn render(line: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(line) else { return line.to_string() };
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("-");
    let time = format_time(v.get("time").and_then(Value::as_u64).unwrap_or(0));
    let Some(class) = v.get("class").and_then(Value::as_str) else {
        return format!("{} {time} -> {}", s("id"), s("fate"));
    };
    let mut out = format!("{} {time} {class} {} {} {}", s("id"), s("event"), s("boot"), s("fate"));
    if shows_frames(class) {
        match v.get("payload").and_then(Value::as_str) {
            Some(p) => {
                let frames = top_frames(p, MAX_FRAMES);
                if frames.is_empty() {
                    out.push_str("\n    (no frames in the payload)");
                }
                for f in frames {
                    out.push_str("\n    ");
                    out.push_str(&f);
                }
            }
            None => out.push_str("\n    (payload not kept: record_retention_enabled=false)"),
        }
    }
    out
}

/// Crash records (`DOMAIN/crash/*`) and fatal signals (`DOMAIN/signal/fatal`).
pub fn shows_frames(class: &str) -> bool {
    let mut seg = class.split('/').skip(1);
    matches!((seg.next(), seg.next()), (Some("crash"), Some(_)) | (Some("signal"), Some("fatal")))
}

/// The crashing thread's first `max` frames, one line each:
/// - crashprobe's format 2 (JSON): the thread marked `crashed` (else the first);
/// - crashprobe's format 1 (text): the first `Backtrace (TID n):` block,
///   which is the crashing thread's;
/// - eventprobe's text: the unwound backtrace, else the frame-pointer stack.
pub fn top_frames(payload: &str, max: usize) -> Vec<String> {
    if payload.trim_start().starts_with('{') {
        if let Ok(v) = serde_json::from_str::<Value>(payload) {
            return json_frames(&v, max);
        }
    }
    // The first header line (`...Backtrace...:` or `...stack...:`) that has
    // frame lines (`#N ...`) under it.
    let lines: Vec<&str> = payload.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        let l = l.trim();
        if !(l.ends_with(':') && (l.contains("Backtrace") || l.contains("stack"))) {
            continue;
        }
        let frames: Vec<String> = lines[i + 1..]
            .iter()
            .map(|f| f.trim())
            .take_while(|f| f.starts_with('#'))
            .take(max)
            .map(str::to_string)
            .collect();
        if !frames.is_empty() {
            return frames;
        }
    }
    Vec::new()
}

fn json_frames(v: &Value, max: usize) -> Vec<String> {
    let Some(threads) = v.get("threads").and_then(Value::as_array) else { return Vec::new() };
    let Some(t) = threads.iter().find(|t| t.get("crashed").and_then(Value::as_bool) == Some(true)).or(threads.first())
    else {
        return Vec::new();
    };
    let frames = t.get("frames").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    frames
        .iter()
        .take(max)
        .enumerate()
        .map(|(i, f)| {
            let s = |k: &str| f.get(k).and_then(Value::as_str);
            let n = f.get("index").and_then(Value::as_u64).unwrap_or(i as u64);
            // As crashprobe's format 1 (the original's text).
            let mut line = match (s("function"), s("module")) {
                (_, None) => format!("#{n} (no symbols)"),
                (None, Some(m)) => format!("#{n} ??? - [{m}]"),
                (Some(func), Some(m)) => format!("#{n} {func}() - [{m}]"),
            };
            if let (Some(file), Some(n)) = (s("file"), f.get("line").and_then(Value::as_u64)) {
                line.push_str(&format!(" - {file}:{n}"));
            }
            line
        })
        .collect()
}

pub use telemetry::record::format_utc as format_time;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_text_shows_the_crashing_threads_first_frames() {
        // crashprobe format 1: the crashing thread comes first.
        let mut p = String::from("Process: /usr/bin/segv\nPID: 1218\nSignal: 11\n\nBacktrace (TID 1218):\n");
        for i in 0..12 {
            p.push_str(&format!("#{i} f{i}() - [/usr/bin/segv] - /src/segv.c:{i}\n"));
        }
        p.push_str("\nBacktrace (TID 1219):\n#0 other() - [libc.so.6]\n\n");
        let f = top_frames(&p, MAX_FRAMES);
        assert_eq!(f.len(), 8);
        assert_eq!(f[0], "#0 f0() - [/usr/bin/segv] - /src/segv.c:0");
        assert_eq!(f[7], "#7 f7() - [/usr/bin/segv] - /src/segv.c:7");
    }

    #[test]
    fn crash_json_shows_the_thread_marked_crashed() {
        let p = r#"{"payload_format":2,"process":"/x","threads":[
            {"tid":2,"crashed":false,"frames":[{"index":0,"function":"idle","module":"/x"}]},
            {"tid":1,"crashed":true,"frames":[{"index":0,"function":"boom","module":"/x","file":"x.c","line":4},{"index":1,"module":"libc.so.6"}]}]}"#;
        assert_eq!(top_frames(p, MAX_FRAMES), ["#0 boom() - [/x] - x.c:4", "#1 ??? - [libc.so.6]"]);
    }

    #[test]
    fn fatal_signal_text_uses_the_unwound_stack_else_the_frame_pointer_one() {
        let unwound = "Process: /x\nSignal: 11 (SIGSEGV)\nBacktrace (unwound: cfi, then frame pointers, then scan; end: Outermost):\n\
#0  0x0000000000401136 level3 (/src/x.c:4) [/x+0x1136]\n#1  0x0000000000401150 main [/x+0x1150]\nFrame-pointer stack (bpf_get_stack):\n#0  0x1 fp\n";
        assert_eq!(
            top_frames(unwound, 8),
            ["#0  0x0000000000401136 level3 (/src/x.c:4) [/x+0x1136]", "#1  0x0000000000401150 main [/x+0x1150]"]
        );
        let fp =
            "Backtrace (unwound): unavailable (no user registers)\nFrame-pointer stack (bpf_get_stack):\n#0  0x1 fp\n";
        assert_eq!(top_frames(fp, 8), ["#0  0x1 fp"]);
    }

    #[test]
    fn records_and_fates_render_as_telemctl_prints_them() {
        assert!(shows_frames("org.clearlinux/crash/clr") && shows_frames("org.clearlinux/signal/fatal"));
        assert!(!shows_frames("org.clearlinux/hello/world") && !shows_frames("org.clearlinux/signal/other"));
        let line = r#"{"id":"ab","time":0,"class":"org.clearlinux/crash/clr","event":"e","boot":"b","fate":"spooled","payload":"Backtrace (TID 1):\n#0 f() - [/x]\n"}"#;
        assert_eq!(render(line), "ab 1970-01-01 00:00:00 org.clearlinux/crash/clr e b spooled\n    #0 f() - [/x]");
        let hello = r#"{"id":"cd","time":86400,"class":"org.clearlinux/hello/world","event":"e","boot":"b","fate":"local-only: not opted in","payload":"hello\n"}"#;
        assert_eq!(render(hello), "cd 1970-01-02 00:00:00 org.clearlinux/hello/world e b local-only: not opted in");
        assert_eq!(render(r#"{"id":"ab","time":0,"fate":"delivered"}"#), "ab 1970-01-01 00:00:00 -> delivered");
        assert_eq!(render("not json"), "not json");
    }
}
