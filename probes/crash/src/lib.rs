//! # crashprobe (not built yet)
//!
//! Will be the kernel's `core_pattern` handler: read an ELF core as a stream,
//! unwind every thread with `probes/unwind`, and send a
//! `.../crash/...` record through the collector. Nothing here works yet;
//! see the crashprobe issue.
