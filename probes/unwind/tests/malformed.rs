//! Malformed ELF, DWARF, CFI and memory never panic.

use proptest::prelude::*;
use unwind::{Mapping, Mappings, Module, Options, Registers, StackSnapshot, Unwinder};

fn this_exe() -> Vec<u8> {
    std::fs::read(std::env::current_exe().unwrap()).unwrap()
}

fn exercise(bytes: Vec<u8>, regs: (u64, u64, u64), stack: &[u8]) {
    let Ok(m) = Module::from_bytes(bytes) else { return };
    let _ = m.build_id_hex();
    let maps = Mappings::new(vec![Mapping {
        start: 0x400000,
        end: 0x400000 + 0x100000,
        offset: 0,
        path: Some("[mem]".into()),
        exec: Some(true),
        inode: None,
    }]);
    let unwinder = Unwinder::new(Options { max_frames: 32, ..Options::default() });
    let mem = StackSnapshot::new(regs.1, stack);
    let opener = unwind::HostOpener;
    let mut s = unwinder.session(&mem, &maps, &opener);
    s.add_memory_module(0x400000, m);
    let mut bt = s.unwind(&Registers::x86_64(regs.0, regs.1, regs.2));
    s.symbolize(&mut bt);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn mutated_elf_never_panics(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..64),
        pc in 0x400000u64..0x500000,
        stack in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut b = this_exe();
        // Mutate the headers and the section table most (where lies hurt).
        let len = b.len();
        for (i, v) in flips {
            let at = if v % 2 == 0 { i.index(4096.min(len)) } else { i.index(len) };
            b[at] = v;
        }
        exercise(b, (pc, 0x7000_0000, 0x7000_0010), &stack);
    }

    #[test]
    fn random_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..2048), pc in any::<u64>()) {
        let mut with_magic = b"\x7fELF\x02\x01\x01".to_vec();
        with_magic.extend_from_slice(&b);
        exercise(with_magic, (pc, 0x1000, 0), &b);
        exercise(b.clone(), (pc, 0x1000, 0), &b);
    }
}

#[test]
fn real_module_with_garbage_stack_terminates() {
    // The real executable, random registers: the unwinder must end (frame
    // limit or error) without panicking.
    for seed in 0..32u64 {
        let stack: Vec<u8> = (0..4096u64).map(|i| (i.wrapping_mul(seed.wrapping_add(7)) >> 3) as u8).collect();
        exercise(this_exe(), (0x401000 + seed * 0x40, 0x7000_0000, 0x7000_0000 + seed * 8), &stack);
    }
}
