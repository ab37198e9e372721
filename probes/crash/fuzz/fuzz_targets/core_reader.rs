//! Arbitrary bytes as an ELF core: the streaming reader, then unwinding
//! every thread it found over the memory it kept, and both payloads.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut s = crashprobe::stream::Stream::new(std::io::Cursor::new(data), None);
    let policy = crashprobe::core::KeepPolicy { total_stack: 1 << 20, crashing_stack: 1 << 18, other_stack: 1 << 16, ..Default::default() };
    let Ok(core) = crashprobe::core::read_core(&mut s, &policy, true) else { return };
    let unwinder = unwind::Unwinder::new(unwind::Options { max_frames: 64, ..Default::default() });
    // No files: only in-memory modules (a vDSO image in the core) are used.
    struct NoFiles;
    impl unwind::FileOpener for NoFiles {
        fn open_mapping(&self, _: &unwind::Mapping) -> Option<std::fs::File> {
            None
        }
        fn open_path(&self, _: &std::path::Path) -> Option<std::fs::File> {
            None
        }
    }
    let mut session = unwinder.session(&core.memory, &core.mappings, &NoFiles);
    if let Some((base, bytes)) = &core.vdso {
        if let Ok(m) = unwind::Module::from_bytes(bytes.clone()) {
            session.add_memory_module(*base, m);
        }
    }
    for t in core.notes.threads.iter().take(8) {
        let mut bt = session.unwind(&t.regs);
        session.symbolize(&mut bt);
    }
});
