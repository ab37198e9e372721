//! # event-types (not built yet)
//!
//! The `#[repr(C)]` structs that `probe-ebpf/` writes into its ring buffer
//! and `eventprobe` reads, shared so both sides agree on the layout.
#![no_std]
