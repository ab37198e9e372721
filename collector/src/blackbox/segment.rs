//! The on-disk form of a recording's entries: segment files of frames,
//! each with its own CRC-32, so a torn tail (a write cut by a crash or a
//! power loss) is found and cut at the next start.
//!
//! ```text
//!  segment file  = MAGIC (8 bytes) frame*
//!  frame         = len: u32 LE | crc32(body): u32 LE | body (len bytes)
//!  body          = kind: u8 | wall_ns: u64 LE | mono_ns: u64 LE
//!                  | source_len: u8 [source bytes | seq: u64 LE]   (feed entries: eventprobe's stream)
//!                  | the entry as JSON (telemetry::blackbox::Entry)
//! ```
//!
//! The times and the kind are outside the JSON so an export orders
//! entries and a restart counts them without parsing every one.

use telemetry::blackbox::Event;

/// The first bytes of every segment file.
pub const MAGIC: &[u8; 8] = b"TBBSEG1\n";
/// A frame's length and checksum.
pub const FRAME_HEAD: usize = 8;
/// The longest body a frame may have (a record's payload is cut at 64 KiB;
/// its JSON escapes can grow it, never to this).
pub const MAX_BODY: usize = 4 << 20;
/// The longest `source` (eventprobe's random hex id).
pub const MAX_SOURCE: usize = 64;

/// The kind byte of an event (`0` is never written).
pub fn kind_code(e: &Event) -> u8 {
    match e {
        Event::Exec { .. } => 1,
        Event::Exit { .. } => 2,
        Event::FatalSignal { .. } => 3,
        Event::Oom { .. } => 4,
        Event::Record { .. } => 5,
        Event::Reading { .. } => 6,
        Event::Gap { .. } => 7,
        Event::Truncated { .. } => 8,
        Event::Marker { .. } => 9,
    }
}

/// The kind byte of [`Event::Gap`].
pub const GAP: u8 = 7;

/// One decoded frame, borrowing the segment's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    pub kind: u8,
    pub wall_ns: u64,
    pub mono_ns: u64,
    /// eventprobe's stream id and sequence number, for feed entries.
    pub source: Option<(&'a str, u64)>,
    /// The entry as JSON.
    pub json: &'a [u8],
}

/// Appends one frame to `out`; its length.
pub fn encode(f: &Frame<'_>, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEAD]);
    out.push(f.kind);
    out.extend_from_slice(&f.wall_ns.to_le_bytes());
    out.extend_from_slice(&f.mono_ns.to_le_bytes());
    match f.source {
        Some((src, seq)) => {
            let src = &src.as_bytes()[..src.len().min(MAX_SOURCE)];
            out.push(src.len() as u8);
            out.extend_from_slice(src);
            out.extend_from_slice(&seq.to_le_bytes());
        }
        None => out.push(0),
    }
    out.extend_from_slice(f.json);
    let body_len = out.len() - start - FRAME_HEAD;
    let crc = crc32fast::hash(&out[start + FRAME_HEAD..]);
    out[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    out.len() - start
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Decodes a frame's body (its checksum already checked).
pub fn decode_body(body: &[u8]) -> Option<Frame<'_>> {
    let kind = *body.first()?;
    let wall_ns = u64_at(body, 1)?;
    let mono_ns = u64_at(body, 9)?;
    let src_len = *body.get(17)? as usize;
    let mut at = 18;
    let source = if src_len > 0 {
        let src = std::str::from_utf8(body.get(at..at + src_len)?).ok()?;
        let seq = u64_at(body, at + src_len)?;
        at += src_len + 8;
        Some((src, seq))
    } else {
        None
    };
    Some(Frame { kind, wall_ns, mono_ns, source, json: body.get(at..)? })
}

/// What reading a segment found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scanned {
    /// Bytes of the file up to the end of its last whole, valid frame.
    pub good_len: u64,
    /// Frames read.
    pub frames: u64,
    /// Bytes after `good_len` (a torn or corrupt tail).
    pub torn_bytes: u64,
}

/// Reads the frames of a segment's bytes in order, calling `each` for
/// every valid one; stops at the first frame that is cut short or whose
/// checksum or layout is wrong (what follows it is the torn tail). A file
/// too short for its magic has no frames (`good_len` 0: rewrite it).
pub fn scan<'a>(bytes: &'a [u8], mut each: impl FnMut(Frame<'a>)) -> Scanned {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Scanned { good_len: 0, frames: 0, torn_bytes: bytes.len() as u64 };
    }
    let mut at = MAGIC.len();
    let mut frames = 0;
    while let Some(head) = bytes.get(at..at + FRAME_HEAD) {
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len > MAX_BODY {
            break;
        }
        let Some(body) = bytes.get(at + FRAME_HEAD..at + FRAME_HEAD + len) else { break };
        if crc32fast::hash(body) != crc {
            break;
        }
        let Some(f) = decode_body(body) else { break };
        each(f);
        frames += 1;
        at += FRAME_HEAD + len;
    }
    Scanned { good_len: at as u64, frames, torn_bytes: (bytes.len() - at) as u64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(frames: &[Frame<'_>]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        for f in frames {
            encode(f, &mut out);
        }
        out
    }

    const A: Frame<'static> =
        Frame { kind: 1, wall_ns: 10, mono_ns: 20, source: Some(("ab12", 7)), json: b"{\"a\":1}" };
    const B: Frame<'static> = Frame { kind: 9, wall_ns: 11, mono_ns: 21, source: None, json: b"{\"kind\":\"marker\"}" };

    #[test]
    fn frames_round_trip() {
        let bytes = seg(&[A.clone(), B.clone()]);
        let mut got = Vec::new();
        let s = scan(&bytes, |f| got.push(f));
        assert_eq!(got, vec![A, B]);
        assert_eq!(s, Scanned { good_len: bytes.len() as u64, frames: 2, torn_bytes: 0 });
    }

    #[test]
    fn a_torn_tail_is_found_at_every_cut() {
        let whole = seg(&[A.clone(), B.clone()]);
        let first_end = seg(std::slice::from_ref(&A)).len();
        for cut in MAGIC.len()..whole.len() {
            let mut got = Vec::new();
            let s = scan(&whole[..cut], |f| got.push(f));
            let want = if cut >= first_end { 1 } else { 0 };
            assert_eq!(s.frames, want, "cut at {cut}");
            assert_eq!(s.good_len, if want == 1 { first_end as u64 } else { MAGIC.len() as u64 });
            assert_eq!(s.good_len + s.torn_bytes, cut as u64);
        }
    }

    #[test]
    fn a_flipped_bit_ends_the_valid_frames() {
        let mut bytes = seg(&[A.clone(), B.clone()]);
        let first_end = seg(std::slice::from_ref(&A)).len();
        // A bit of the second frame's JSON.
        let last = bytes.len() - 2;
        bytes[last] ^= 0x20;
        let mut got = Vec::new();
        let s = scan(&bytes, |f| got.push(f));
        assert_eq!(got, vec![A.clone()]);
        assert_eq!(s.good_len, first_end as u64);
        // A bit of the first frame's header: nothing is valid.
        let mut bytes = seg(&[A, B]);
        bytes[MAGIC.len() + 5] ^= 1;
        assert_eq!(scan(&bytes, |_| ()).frames, 0);
    }

    #[test]
    fn a_bad_magic_or_a_huge_length_is_not_read() {
        assert_eq!(scan(b"nonsense", |_| ()).good_len, 0);
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(&[0; 12]);
        let s = scan(&bytes, |_| ());
        assert_eq!((s.frames, s.good_len), (0, MAGIC.len() as u64));
    }
}
