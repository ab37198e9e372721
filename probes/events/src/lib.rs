//! # eventprobe (not built yet)
//!
//! Will load the `probe-ebpf/` programs with aya, read their ring buffer,
//! unwind the user-stack snapshots with `probes/unwind` and send
//! `.../signal/fatal`, `.../exit/abnormal` and `.../oom/kill` records.
//! Nothing here works yet; see the eventprobe issue.
