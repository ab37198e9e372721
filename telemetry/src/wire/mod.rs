//! Probe -> collector framings.
//!
//! - [`native`]: this suite's framing: a prefix that can never be a legacy
//!   size, then length-prefixed bincode frames, many records per connection,
//!   each acknowledged.
//! - [`legacy`]: the original libtelemetry framing, one record per
//!   connection, byte-exact, so unmodified C probes can send to our
//!   collector and our probes can send to an old daemon.
//!
//! A collector tells the two apart by the first four bytes: zero is the
//! native prefix, anything else is a legacy total size (which counts its own
//! four bytes, so it is never zero).

pub mod legacy;
pub mod native;

/// Which framing a connection uses, from its first four bytes.
pub fn sniff(first4: [u8; 4]) -> Framing {
    if first4 == [0, 0, 0, 0] {
        Framing::Native
    } else {
        Framing::Legacy { total_size: u32::from_le_bytes(first4) }
    }
}

/// The framing a connection was found to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// The native framing (the connection starts with [`native::PREFIX`]).
    Native,
    /// The legacy framing: one record, no acknowledgement.
    Legacy {
        /// The record's size as its first four bytes declare it.
        total_size: u32,
    },
}
