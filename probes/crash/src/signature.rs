//! The crash signature: a short, stable text naming where a crash happened,
//! computed on the host from the crashing thread's backtrace, so that the
//! records of one bug group together (and the crash-loop governor can count
//! them) whatever the process id, the address-space layout (ASLR) or the
//! number of restarts.
//!
//! Form: `FRAME | FRAME | FRAME @ LOCATION`, for example
//! `segv!level3 | segv!level2 | segv!level1 @ segv+0x1139`:
//!
//! - each `FRAME` is one of the top [`FRAMES`] meaningful frames of the
//!   crashing thread, innermost first (a function inlined into a frame is a
//!   frame of its own, innermost first): `MODULE!FUNCTION` when the frame is
//!   symbolized (without the compiler's clone suffixes such as `.cold` or
//!   `.constprop.0`), `MODULE+0xOFFSET` when it is not, `???` outside any module
//!   (a wild jump). `MODULE` is the module's file name (no directory),
//!   `OFFSET` the ELF virtual address of the pc in it (what
//!   `addr2line -e MODULE` takes), neither of which ASLR changes;
//! - `LOCATION` is `MODULE+0xOFFSET` of the first meaningful frame, so a
//!   stripped and an unstripped build of the same program give signatures
//!   that share it.
//!
//! Frames are skipped from the top of the stack while they are crash
//! plumbing rather than the bug (the skip list, [`is_plumbing`]):
//!
//! - signal trampolines: `__restore_rt`, `__kernel_rt_sigreturn`,
//!   `__vdso_rt_sigreturn`, `__sigreturn`, `__kernel_sigreturn`;
//! - abort, raise and assert: `abort`, `raise`, `gsignal`, `pthread_kill`,
//!   `__pthread_kill`, `__pthread_kill_implementation`,
//!   `__pthread_kill_internal`, `__GI_*` aliases of these, `__assert_fail`,
//!   `__assert_fail_base`, `__assert_perror_fail`, `__assert`;
//! - the C library's fatal-error plumbing: `__libc_message`,
//!   `__libc_message_impl`, `__libc_fatal`, `__fortify_fail`, `__chk_fail`,
//!   `__stack_chk_fail`, `malloc_printerr`, `__malloc_assert`;
//! - C++ runtime: `__cxa_throw`, `__cxa_rethrow`, `__cxa_call_terminate`,
//!   `__cxa_call_unexpected`, `std::terminate`, `std::__terminate`,
//!   `__gnu_cxx::__verbose_terminate_handler`, and names beginning
//!   `__cxxabiv1::`, `_Unwind_`, `std::__throw_`;
//! - Rust panic plumbing: names beginning `std::panicking::`,
//!   `core::panicking::`, `std::sys::backtrace::`,
//!   `std::sys_common::backtrace::`, `panic_abort::`, `__rustc::`,
//!   `__rust_`, `rust_begin_unwind`, `rust_panic`, `std::process::abort`,
//!   `std::sys::pal::unix::abort_internal`, `std::sys::abort_internal`,
//!   `core::result::unwrap_failed`, `core::option::unwrap_failed`,
//!   `core::option::expect_failed`, and `expect`/`unwrap` (and their `_err`
//!   forms) of `core::result::Result` and `core::option::Option`;
//! - unsymbolized frames of the C and C++ runtime libraries (`libc.so.*`,
//!   `libstdc++.so.*`, `libgcc_s.so.*`) and of the vDSO, while still on the
//!   top of the stack (the plumbing above, when their symbols are missing).
//!
//! When every frame is plumbing, the top frames are used as they are.

use std::fmt::Write;

use unwind::Frame;

use crate::report::CrashReport;

/// How many meaningful frames name a crash.
pub const FRAMES: usize = 3;
/// Longest function name kept in a signature (longer ones are cut).
const MAX_FUNCTION: usize = 120;

const PLUMBING: &[&str] = &[
    // signal trampolines
    "__restore_rt",
    "__kernel_rt_sigreturn",
    "__vdso_rt_sigreturn",
    "__sigreturn",
    "__kernel_sigreturn",
    // abort, raise, assert
    "abort",
    "raise",
    "gsignal",
    "pthread_kill",
    "__pthread_kill",
    "__pthread_kill_implementation",
    "__pthread_kill_internal",
    "__assert_fail",
    "__assert_fail_base",
    "__assert_perror_fail",
    "__assert",
    // libc fatal errors
    "__libc_message",
    "__libc_message_impl",
    "__libc_fatal",
    "__fortify_fail",
    "__chk_fail",
    "__stack_chk_fail",
    "malloc_printerr",
    "__malloc_assert",
    // C++ runtime
    "__cxa_throw",
    "__cxa_rethrow",
    "__cxa_call_terminate",
    "__cxa_call_unexpected",
    "std::terminate",
    "std::__terminate",
    "__gnu_cxx::__verbose_terminate_handler",
    // Rust runtime
    "rust_begin_unwind",
    "rust_panic",
    "std::process::abort",
    "std::sys::pal::unix::abort_internal",
    "std::sys::abort_internal",
    "core::result::unwrap_failed",
    "core::option::unwrap_failed",
    "core::option::expect_failed",
];

const PLUMBING_PREFIXES: &[&str] = &[
    "__GI_",
    "__cxxabiv1::",
    "_Unwind_",
    "std::__throw_",
    "std::panicking::",
    "core::panicking::",
    "std::sys::backtrace::",
    "std::sys_common::backtrace::",
    "panic_abort::",
    "__rustc::",
    "__rust_",
];

/// `name` without the compiler's clone suffixes (`.cold`, `.part.N`,
/// `.isra.N`, `.constprop.N`, `.lto_priv.N`, `.localalias`, `.llvm.N`),
/// which change with compiler flags, not with the bug.
pub fn base_name(name: &str) -> &str {
    const CLONES: &[&str] = &["cold", "part.", "isra.", "constprop.", "lto_priv.", "localalias", "llvm."];
    let mut end = name.len();
    for (i, _) in name.match_indices('.') {
        if CLONES.iter().any(|c| name[i + 1..].starts_with(c)) {
            end = i;
            break;
        }
    }
    &name[..end]
}

/// Whether the function `name` is crash plumbing (the skip list; compiler
/// clone suffixes ignored).
pub fn is_plumbing(name: &str) -> bool {
    let name = base_name(name);
    if PLUMBING.contains(&name) {
        return true;
    }
    if let Some(rest) = name.strip_prefix("__GI_") {
        return PLUMBING.contains(&rest) || is_plumbing(rest);
    }
    if PLUMBING_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return true;
    }
    // `core::result::Result<T,E>::expect`, `<core::option::Option<u32>>::unwrap`, ...
    let unwrapping = ["::expect", "::unwrap", "::expect_err", "::unwrap_err"].iter().any(|s| name.ends_with(s));
    unwrapping && (name.contains("core::result::Result<") || name.contains("core::option::Option<"))
}

/// Runtime libraries whose unsymbolized frames on the top of the stack are
/// taken for plumbing.
fn is_runtime_module(module: &str) -> bool {
    ["libc.so", "libstdc++.so", "libgcc_s.so"].iter().any(|l| module.starts_with(l)) || module == "[vdso]"
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// One element per function of a frame (inlined ones first), or one for
/// an unsymbolized frame: (text, plumbing).
fn elements(f: &Frame) -> Vec<(String, bool)> {
    let module = f.module.as_deref().map(file_name);
    let named: Vec<&str> = f.symbols.iter().filter_map(|s| s.function.as_deref()).collect();
    match module {
        None => vec![("???".to_string(), false)],
        Some(m) if named.is_empty() => {
            let text = match f.module_offset {
                Some(o) => format!("{m}+{o:#x}"),
                None => format!("{m}+?"),
            };
            vec![(text, is_runtime_module(m))]
        }
        Some(m) => named
            .into_iter()
            .map(|n| {
                let n = base_name(n);
                let mut cut = n.len().min(MAX_FUNCTION);
                while !n.is_char_boundary(cut) {
                    cut -= 1;
                }
                (format!("{m}!{}", &n[..cut]), is_plumbing(n))
            })
            .collect(),
    }
}

fn location(f: &Frame) -> Option<String> {
    Some(format!("{}+{:#x}", file_name(f.module.as_deref()?), f.module_offset?))
}

/// The signature of the crash: from the thread marked crashed (else the
/// first). `None` when there is no frame (no unwinding was done).
pub fn compute(r: &CrashReport) -> Option<String> {
    let t = r.threads.iter().find(|t| t.crashed).or(r.threads.first())?;
    let frames = &t.backtrace.frames;
    if frames.is_empty() {
        return None;
    }
    // (frame index, element text, plumbing), innermost first.
    let all: Vec<(usize, String, bool)> =
        frames.iter().enumerate().flat_map(|(i, f)| elements(f).into_iter().map(move |(e, p)| (i, e, p))).collect();
    let first = all.iter().position(|(_, _, plumbing)| !plumbing).unwrap_or(0);
    let chosen: Vec<&(usize, String, bool)> = all[first..].iter().take(FRAMES).collect();
    let mut s = String::new();
    for (k, (_, text, _)) in chosen.iter().enumerate() {
        if k > 0 {
            s.push_str(" | ");
        }
        s.push_str(text);
    }
    let start = chosen.first().map(|(i, _, _)| *i).unwrap_or(0);
    if let Some(loc) = frames[start..].iter().find_map(location) {
        let _ = write!(s, " @ {loc}");
    }
    Some(s)
}

/// A stable 64-bit hash of a signature (FNV-1a), for file names.
pub fn hash(sig: &str) -> u64 {
    sig.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::ThreadReport;
    use unwind::{Backtrace, End, FrameSource, Symbol};

    fn f(module: Option<&str>, off: u64, names: &[&str]) -> Frame {
        Frame {
            pc: 0x7f00_0000_0000 + off,
            sp: 0,
            source: FrameSource::Cfi,
            exact: false,
            module: module.map(String::from),
            build_id: None,
            module_offset: module.map(|_| off),
            symbols: names
                .iter()
                .enumerate()
                .map(|(i, n)| Symbol {
                    function: Some(n.to_string()),
                    file: None,
                    line: None,
                    inlined: i + 1 < names.len(),
                })
                .collect(),
        }
    }

    fn report(frames: Vec<Frame>) -> CrashReport {
        CrashReport {
            process: "/usr/bin/x".into(),
            pid: 1,
            signal: 6,
            signal_code: None,
            fault_address: None,
            threads: vec![ThreadReport { tid: 1, crashed: true, backtrace: Backtrace { frames, end: End::Outermost } }],
            errors: vec![],
            memory_withheld: false,
            signature: None,
        }
    }

    const LIBC: Option<&str> = Some("/usr/lib/x86_64-linux-gnu/libc.so.6");

    #[test]
    fn skips_abort_and_assert_plumbing() {
        let r = report(vec![
            f(LIBC, 0x8aebc, &["__pthread_kill_implementation"]),
            f(LIBC, 0x3c0f2, &["raise"]),
            f(LIBC, 0x26472, &["abort"]),
            f(LIBC, 0x26395, &["__assert_fail_base"]),
            f(LIBC, 0x35ea2, &["__assert_fail"]),
            f(Some("/usr/bin/x"), 0x1151, &["check", "parse"]),
            f(Some("/usr/bin/x"), 0x1180, &["main"]),
            f(LIBC, 0x2724a, &["__libc_start_call_main"]),
        ]);
        assert_eq!(compute(&r).unwrap(), "x!check | x!parse | x!main @ x+0x1151");
    }

    #[test]
    fn unsymbolized_runtime_frames_on_top_are_skipped_and_others_give_offsets() {
        let r = report(vec![
            f(LIBC, 0x8aebc, &[]),
            f(Some("/opt/a/bin/x"), 0x1139, &[]),
            f(Some("/opt/a/bin/x"), 0x1150, &[]),
            f(None, 0, &[]),
        ]);
        assert_eq!(compute(&r).unwrap(), "x+0x1139 | x+0x1150 | ??? @ x+0x1139");
    }

    #[test]
    fn rust_panic_plumbing() {
        for n in [
            "core::panicking::panic_fmt",
            "core::result::Result<T,E>::expect",
            "<core::option::Option<u32>>::unwrap",
            "std::panicking::rust_panic_with_hook",
            "__rustc::rust_begin_unwind",
            "__GI_raise",
            "__GI___assert_fail",
            "__assert_fail_base.cold",
        ] {
            assert!(is_plumbing(n), "{n}");
        }
        for n in ["main", "panic::parse_config", "strlen", "app::Result<T>::expect_more"] {
            assert!(!is_plumbing(n), "{n}");
        }
    }

    #[test]
    fn all_plumbing_uses_the_top() {
        let r = report(vec![f(LIBC, 0x26472, &["abort"])]);
        assert_eq!(compute(&r).unwrap(), "libc.so.6!abort @ libc.so.6+0x26472");
        assert_eq!(compute(&report(vec![])), None);
        assert_ne!(hash("a"), hash("b"));
        assert_eq!(hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(base_name("f.constprop.0.isra.0"), "f");
        assert_eq!(base_name("app::run.llvm.123"), "app::run");
        assert_eq!(base_name("a.b"), "a.b");
    }
}
