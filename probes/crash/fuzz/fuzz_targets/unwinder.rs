//! Arbitrary bytes as an ELF module (the first part) and a stack (the
//! rest): parsing, CFI unwinding, frame pointers, scanning, symbolization.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 24 {
        return;
    }
    let pc = u64::from_le_bytes(data[0..8].try_into().unwrap_or_default());
    let split = (u16::from_le_bytes([data[8], data[9]]) as usize).min(data.len());
    let (elf, stack) = data[10..].split_at(split.saturating_sub(10).min(data.len() - 10));
    let Ok(module) = unwind::Module::from_bytes(elf.to_vec()) else { return };
    let maps = unwind::Mappings::new(vec![unwind::Mapping {
        start: 0x10000,
        end: 0x10000 + (elf.len() as u64).max(0x1000),
        offset: 0,
        path: Some("[fuzz]".into()),
        exec: Some(true),
        inode: None,
    }]);
    let unwinder = unwind::Unwinder::new(unwind::Options { max_frames: 64, ..Default::default() });
    let mem = unwind::StackSnapshot::new(0x7000_0000, stack);
    let opener = unwind::HostOpener;
    let mut s = unwinder.session(&mem, &maps, &opener);
    s.add_memory_module(0x10000, module);
    let mut bt = s.unwind(&unwind::Registers::x86_64(0x10000 + pc % 0x2000, 0x7000_0000, 0x7000_0000 + (pc >> 48)));
    s.symbolize(&mut bt);
});
