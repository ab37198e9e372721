//! The streaming core reader on synthetic cores: what it keeps, that it
//! stays bounded, and that lying cores never panic it.

use std::io::{Cursor, Write};
use std::os::fd::FromRawFd;

use crashprobe::core::{read_core, KeepPolicy, NT_AUXV, NT_FILE, NT_PRPSINFO, NT_PRSTATUS, NT_SIGINFO};
use crashprobe::stream::Stream;
use proptest::prelude::*;
use unwind::Memory;

fn note(out: &mut Vec<u8>, ntype: u32, desc: &[u8]) {
    out.extend_from_slice(&5u32.to_le_bytes());
    out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    out.extend_from_slice(&ntype.to_le_bytes());
    out.extend_from_slice(b"CORE\0\0\0\0");
    out.extend_from_slice(desc);
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

fn prstatus(tid: u32, rip: u64, rsp: u64) -> Vec<u8> {
    let mut d = vec![0u8; 336];
    d[12..14].copy_from_slice(&11u16.to_le_bytes());
    d[32..36].copy_from_slice(&tid.to_le_bytes());
    d[112 + 16 * 8..112 + 17 * 8].copy_from_slice(&rip.to_le_bytes());
    d[112 + 19 * 8..112 + 20 * 8].copy_from_slice(&rsp.to_le_bytes());
    d
}

/// A core with `threads` threads whose stacks live in one PT_LOAD of
/// `stack_len` bytes at 0x7000_0000, plus a big PT_LOAD of `big` bytes.
fn synth(threads: u32, stack_len: u64, big: u64) -> Vec<u8> {
    let mut notes = Vec::new();
    for t in 0..threads {
        note(&mut notes, NT_PRSTATUS, &prstatus(100 + t, 0x401000, 0x7000_0000 + (t as u64 + 1) * 0x1000));
    }
    let mut si = vec![0u8; 128];
    si[0..4].copy_from_slice(&11i32.to_le_bytes());
    si[8..12].copy_from_slice(&1i32.to_le_bytes());
    note(&mut notes, NT_SIGINFO, &si);
    let mut ps = vec![0u8; 136];
    ps[24..28].copy_from_slice(&100u32.to_le_bytes());
    ps[40..44].copy_from_slice(b"prog");
    note(&mut notes, NT_PRPSINFO, &ps);
    let mut auxv = Vec::new();
    for (k, v) in [(9u64, 0x401000u64), (0, 0)] {
        auxv.extend_from_slice(&k.to_le_bytes());
        auxv.extend_from_slice(&v.to_le_bytes());
    }
    note(&mut notes, NT_AUXV, &auxv);
    let mut f = Vec::new();
    for v in [1u64, 4096, 0x400000, 0x402000, 0] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    f.extend_from_slice(b"/a b/)prog\0");
    note(&mut notes, NT_FILE, &f);
    let phnum = 3u64;
    let notes_off = 64 + 56 * phnum;
    let stack_off = (notes_off + notes.len() as u64).next_multiple_of(4096);
    let big_off = stack_off + stack_len;
    let mut out = vec![0u8; 64];
    out[..8].copy_from_slice(b"\x7fELF\x02\x01\x01\0");
    out[16..18].copy_from_slice(&4u16.to_le_bytes());
    out[18..20].copy_from_slice(&62u16.to_le_bytes());
    out[32..40].copy_from_slice(&64u64.to_le_bytes());
    out[54..56].copy_from_slice(&56u16.to_le_bytes());
    out[56..58].copy_from_slice(&(phnum as u16).to_le_bytes());
    let ph = |t: u32, off: u64, vaddr: u64, len: u64| {
        let mut p = vec![0u8; 56];
        p[0..4].copy_from_slice(&t.to_le_bytes());
        p[8..16].copy_from_slice(&off.to_le_bytes());
        p[16..24].copy_from_slice(&vaddr.to_le_bytes());
        p[32..40].copy_from_slice(&len.to_le_bytes());
        p[40..48].copy_from_slice(&len.to_le_bytes());
        p
    };
    out.extend(ph(4, notes_off, 0, notes.len() as u64));
    out.extend(ph(1, stack_off, 0x7000_0000, stack_len));
    out.extend(ph(1, big_off, 0x1_0000_0000, big));
    out.extend_from_slice(&notes);
    out.resize(stack_off as usize, 0);
    out.extend((0..stack_len).map(|i| (i / 8) as u8));
    out.resize((big_off + big) as usize, 0xab);
    out
}

#[test]
fn keeps_notes_and_stacks_only() {
    let core = synth(3, 0x10000, 1 << 20);
    let mut s = Stream::new(Cursor::new(core.clone()), None);
    let c = read_core(&mut s, &KeepPolicy::default(), true).unwrap();
    assert_eq!(c.bytes_read, core.len() as u64);
    assert!(c.incomplete.is_none());
    assert_eq!(c.notes.threads.len(), 3);
    assert_eq!(c.notes.threads[0].tid, 100);
    assert_eq!(c.notes.threads[1].regs.sp(), Some(0x7000_2000));
    assert_eq!(c.notes.siginfo.unwrap().addr, Some(0));
    assert_eq!(c.notes.psinfo.as_ref().unwrap().fname, b"prog");
    assert_eq!(c.mappings.find(0x401000).unwrap().path.as_deref(), Some("/a b/)prog"));
    assert_eq!(c.auxv(9), Some(0x401000));
    // Stack bytes are there; the big segment is not.
    assert_eq!(c.memory.read_u64(0x7000_1008), Some(u64::from_le_bytes([(0x1008u64 / 8) as u8; 8])));
    assert_eq!(c.memory.read_u64(0x1_0000_0000), None);
    assert!(c.memory.total_len() <= 0x10000 + 128);
}

#[test]
fn a_large_core_through_a_pipe_keeps_bounded_memory() {
    // 256 MiB through a real pipe (discarded by splice): memory kept stays
    // within the policy, the stream is read to its end.
    let core = synth(2, 0x40000, 256 << 20);
    let len = core.len();
    let mut fds = [0i32; 2];
    // SAFETY: pipe fills two fds.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: fresh fds we own.
    let (r, mut w) = unsafe { (std::fs::File::from_raw_fd(fds[0]), std::fs::File::from_raw_fd(fds[1])) };
    let writer = std::thread::spawn(move || {
        w.write_all(&core).unwrap();
    });
    let mut s = Stream::from_fd(r, Some(std::time::Instant::now() + std::time::Duration::from_secs(30)));
    let policy = KeepPolicy { crashing_stack: 64 << 10, other_stack: 16 << 10, ..KeepPolicy::default() };
    let c = read_core(&mut s, &policy, true).unwrap();
    writer.join().unwrap();
    assert_eq!(c.bytes_read, len as u64);
    assert!(c.incomplete.is_none(), "{:?}", c.incomplete);
    assert!(c.memory.total_len() <= (64 << 10) + (16 << 10) + 256);
}

#[test]
fn non_dumpable_keeps_no_memory() {
    let core = synth(2, 0x10000, 4096);
    let mut s = Stream::new(Cursor::new(core), None);
    let c = read_core(&mut s, &KeepPolicy { memory: false, ..KeepPolicy::default() }, true).unwrap();
    assert_eq!(c.memory.total_len(), 0);
    assert_eq!(c.notes.threads.len(), 2);
}

#[test]
fn truncated_core_is_partial_not_an_error() {
    let core = synth(2, 0x10000, 4096);
    let cut = core[..core.len() - 6000].to_vec();
    let mut s = Stream::new(Cursor::new(cut), None);
    let c = read_core(&mut s, &KeepPolicy::default(), true).unwrap();
    assert!(c.incomplete.is_some());
    assert_eq!(c.notes.threads.len(), 2);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn lying_cores_never_panic(flips in proptest::collection::vec((0usize..8192, any::<u8>()), 1..32), cut in 0usize..20000) {
        let mut core = synth(2, 0x2000, 4096);
        for (i, v) in flips {
            let n = core.len();
            core[i % n] = v;
        }
        core.truncate(cut.max(1).min(core.len()));
        let mut s = Stream::new(Cursor::new(core), None);
        if let Ok(c) = read_core(&mut s, &KeepPolicy::default(), true) {
            prop_assert!(c.memory.total_len() <= (16 << 20) + 4096);
        }
    }

    #[test]
    fn random_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let mut s = Stream::new(Cursor::new(b), None);
        let _ = read_core(&mut s, &KeepPolicy::default(), true);
    }
}
