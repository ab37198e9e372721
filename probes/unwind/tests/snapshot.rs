//! The eBPF probe's path, on this very process: registers and a copy of
//! the stack from sp, /proc/self/maps, module files opened through
//! /proc/self (map_files when privileged, else the process's root).

#![cfg(target_arch = "x86_64")]

use unwind::{open_dir, parse_proc_maps, FrameSource, Options, ProcOpener, Registers, StackSnapshot, Unwinder};

#[inline(never)]
fn capture() -> (u64, u64, u64, Vec<u8>) {
    let (rip, rsp, rbp): (u64, u64, u64);
    // SAFETY: reads three registers.
    unsafe {
        std::arch::asm!("lea {0}, [rip]", "mov {1}, rsp", "mov {2}, rbp", out(reg) rip, out(reg) rsp, out(reg) rbp);
    }
    // Copy the stack from sp up to the end of its mapping (at most 64 KiB),
    // as the eBPF probe copies >= 16 KiB from sp.
    let maps = parse_proc_maps(&std::fs::read("/proc/self/maps").unwrap()).unwrap();
    let m = maps.find(rsp).expect("stack mapping");
    let len = (m.end - rsp).min(64 << 10) as usize;
    // SAFETY: [rsp, rsp+len) is inside this thread's mapped stack.
    let bytes = unsafe { std::slice::from_raw_parts(rsp as *const u8, len) }.to_vec();
    (rip, rsp, rbp, bytes)
}

#[inline(never)]
fn outer_marker_function() -> (u64, u64, u64, Vec<u8>) {
    let r = capture();
    std::hint::black_box(r)
}

#[test]
fn unwinds_this_process_from_a_stack_snapshot() {
    let (rip, rsp, rbp, stack) = outer_marker_function();
    let maps = parse_proc_maps(&std::fs::read("/proc/self/maps").unwrap()).unwrap();
    let opener = ProcOpener::new(open_dir(None, format!("/proc/{}", std::process::id()).as_ref()).unwrap());
    opener.preopen(&maps);
    let unwinder = Unwinder::new(Options::default());
    let mem = StackSnapshot::new(rsp, &stack);
    let mut s = unwinder.session(&mem, &maps, &opener);
    let mut bt = s.unwind(&Registers::x86_64(rip, rsp, rbp));
    s.symbolize(&mut bt);
    let names: Vec<&str> = bt.frames.iter().map(|f| f.function().unwrap_or("???")).collect();
    assert_eq!(bt.frames[0].source, FrameSource::Context);
    assert!(names[0].ends_with("capture"), "{names:?}");
    assert!(names.iter().any(|n| n.ends_with("outer_marker_function")), "{names:?}");
    assert!(names.iter().any(|n| n.ends_with("unwinds_this_process_from_a_stack_snapshot")), "{names:?}");
    let me = std::env::current_exe().unwrap();
    assert_eq!(bt.frames[0].module.as_deref(), me.to_str());
    assert!(bt.frames[0].build_id.is_some() || bt.frames[0].module_offset.is_some());
    assert!(bt.frames.iter().skip(1).take(3).all(|f| f.source == FrameSource::Cfi), "{:?}", bt.frames);
    // Modules are cached: a second unwind parses nothing new.
    let n = unwinder.cache().len();
    let mut s2 = unwinder.session(&mem, &maps, &opener);
    let bt2 = s2.unwind(&Registers::x86_64(rip, rsp, rbp));
    assert_eq!(bt2.frames.len(), bt.frames.len());
    assert_eq!(unwinder.cache().len(), n);
}

#[test]
fn a_short_snapshot_ends_with_an_error_not_a_panic() {
    let (rip, rsp, rbp, stack) = outer_marker_function();
    let maps = parse_proc_maps(&std::fs::read("/proc/self/maps").unwrap()).unwrap();
    let opener = unwind::HostOpener;
    let unwinder = Unwinder::new(Options::default());
    let mem = StackSnapshot::new(rsp, &stack[..16]);
    let mut s = unwinder.session(&mem, &maps, &opener);
    let bt = s.unwind(&Registers::x86_64(rip, rsp, rbp));
    assert!(!bt.is_complete(), "{bt:?}");
}
