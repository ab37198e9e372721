//! # unwind (not built yet)
//!
//! Will unwind a thread from registers, readable memory and the process's
//! mappings (DWARF CFI through gimli, then frame pointers, then a marked
//! stack scan) and symbolize frames with addr2line. Shared by crashprobe
//! (memory from a core) and eventprobe (a stack snapshot from eBPF).
