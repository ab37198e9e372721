//! The block format: header, checksum (CRC-32; FNV-1a in the first format),
//! entry encoding, and reading blocks back (both formats).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;

use bincode::Options;
use thiserror::Error;

use super::*;

/// Blocks written now: epoch, CRC-32 (IEEE) of header and body.
pub(super) const MAGIC: &[u8; 8] = b"TSPOOL02";
/// Blocks of the first format (no epoch, FNV-1a of the body), still read.
pub(super) const MAGIC_V1: &[u8; 8] = b"TSPOOL01";
/// Bytes of a block header.
pub const HEADER_LEN: usize = 8 + 8 + 8 + 4 + 8 + 8 + 8;
pub(super) const HEADER_LEN_V1: usize = 8 + 8 + 4 + 8 + 8 + 8;
/// Largest segment file read back (a sanity bound on a corrupt header).
pub(super) const MAX_SEGMENT: u64 = 1 << 30;

pub(super) fn opts() -> impl Options {
    bincode::DefaultOptions::new().with_limit(MAX_SEGMENT)
}

/// The encoded size of one entry (what it adds to the spool).
pub fn encode_item(item: &Item, out: &mut Vec<u8>) -> Result<usize, SpoolError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    // No limit on the way in (a limit makes bincode size the entry in a
    // first pass); blocks are bounded on the way out by `opts()`.
    bincode::DefaultOptions::new().serialize_into(&mut *out, item).map_err(|e| SpoolError::Encode(e.to_string()))?;
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    Ok(out.len() - start)
}

pub(super) fn fnv1a(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h ^= x as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// CRC-32 (crc32fast: the CPU's carry-less multiply, gigabytes per
/// second, where byte-at-a-time FNV-1a is a large share of a committer's
/// CPU) of the header fields and the body.
pub(super) fn crc(fields: &[u8], body: &[u8]) -> u64 {
    let mut h = crc32fast::Hasher::new();
    h.update(fields);
    h.update(body);
    u64::from(h.finalize())
}

pub(super) fn header(seq: u64, epoch: u64, count: u32, accepted: u64, body: &[u8]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    h[16..24].copy_from_slice(&epoch.to_le_bytes());
    h[24..28].copy_from_slice(&count.to_le_bytes());
    h[28..36].copy_from_slice(&accepted.to_le_bytes());
    h[36..44].copy_from_slice(&(body.len() as u64).to_le_bytes());
    let sum = crc(&h[8..44], body);
    h[44..52].copy_from_slice(&sum.to_le_bytes());
    h
}

/// A block header, either format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Head {
    pub(super) seq: u64,
    /// `None`: the first format.
    pub(super) epoch: Option<u64>,
    pub(super) count: u32,
    pub(super) accepted: u64,
    pub(super) body_len: u64,
    pub(super) sum: u64,
    pub(super) len: usize,
}

/// Why there is no valid block at a place.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum NoBlock {
    /// No block starts here (zeros, or other data).
    None,
    /// A block of this format starts here but is incomplete or damaged.
    Torn(String),
}

pub(super) fn parse_head(b: &[u8]) -> Result<Head, NoBlock> {
    let u64at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]));
    let u32at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or([0; 4]));
    match b.get(..8) {
        Some(m) if m == MAGIC => {
            if b.len() < HEADER_LEN {
                return Err(NoBlock::Torn("torn block header".into()));
            }
            Ok(Head {
                seq: u64at(8),
                epoch: Some(u64at(16)),
                count: u32at(24),
                accepted: u64at(28),
                body_len: u64at(36),
                sum: u64at(44),
                len: HEADER_LEN,
            })
        }
        Some(m) if m == MAGIC_V1 => {
            if b.len() < HEADER_LEN_V1 {
                return Err(NoBlock::Torn("torn block header".into()));
            }
            Ok(Head {
                seq: u64at(8),
                epoch: None,
                count: u32at(16),
                accepted: u64at(20),
                body_len: u64at(28),
                sum: u64at(36),
                len: HEADER_LEN_V1,
            })
        }
        _ => Err(NoBlock::None),
    }
}

/// A block read back from disk.
#[derive(Debug)]
pub struct ReadSegment {
    pub seq: u64,
    /// The epoch of the file's use it belongs to (`None`: first format).
    pub epoch: Option<u64>,
    pub accepted: u64,
    pub items: Vec<Item>,
    /// Bytes of the block (header and body).
    pub bytes: u64,
}

/// Parses the block at the start of `b`.
pub(super) fn parse_block(b: &[u8]) -> Result<ReadSegment, NoBlock> {
    let h = parse_head(b)?;
    let torn = |why: &str| NoBlock::Torn(why.to_string());
    let body_len = usize::try_from(h.body_len).map_err(|_| torn("block length does not fit"))?;
    let end = h.len.checked_add(body_len).ok_or_else(|| torn("block length overflows"))?;
    let body = b.get(h.len..end).ok_or_else(|| torn("torn block (body shorter than its header says)"))?;
    let sum = match h.epoch {
        Some(_) => crc(&b[8..44], body),
        None => fnv1a(body),
    };
    if sum != h.sum {
        return Err(torn("torn block (checksum mismatch)"));
    }
    let mut items = Vec::with_capacity((h.count as usize).min(body_len / 4 + 1));
    let mut at = 0;
    for _ in 0..h.count {
        let l = body.get(at..at + 4).ok_or_else(|| torn("block entry header missing"))?;
        let l = u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize;
        let e = body.get(at + 4..at + 4 + l).ok_or_else(|| torn("block entry truncated"))?;
        items.push(
            opts().deserialize::<Item>(e).map_err(|e| NoBlock::Torn(format!("block entry does not decode: {e}")))?,
        );
        at += 4 + l;
    }
    Ok(ReadSegment { seq: h.seq, epoch: h.epoch, accepted: h.accepted, items, bytes: end as u64 })
}

/// Reads the valid blocks of a spool file, in file order: the run from
/// offset 0 sharing the first block's epoch. The error says why a block
/// of that run was found incomplete (a torn write, never acknowledged).
pub fn read_file(mut f: File) -> (Vec<(u64, ReadSegment)>, Option<String>) {
    let mut buf = Vec::new();
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len > MAX_SEGMENT {
        return (Vec::new(), Some(format!("{len} bytes is too large for a spool file")));
    }
    if let Err(e) = f.read_to_end(&mut buf) {
        return (Vec::new(), Some(e.to_string()));
    }
    let mut out: Vec<(u64, ReadSegment)> = Vec::new();
    let mut at = 0usize;
    while at < buf.len() {
        match parse_block(&buf[at..]) {
            // Blocks of an earlier use of the file end this one's.
            Ok(s) if out.first().is_some_and(|(_, f)| f.epoch != s.epoch) => break,
            Ok(s) => {
                let n = s.bytes as usize;
                out.push((at as u64, s));
                at += n;
            }
            Err(NoBlock::None) => break,
            Err(NoBlock::Torn(why)) => {
                // After blocks of the current use, a damaged header of the
                // same format may be an earlier use's: only a torn block
                // that is the file's first, or follows first-format blocks,
                // or claims this epoch, is reported.
                let ours = match (out.first(), parse_head(&buf[at..])) {
                    (None, _) => true,
                    (Some((_, f)), Ok(h)) => f.epoch == h.epoch,
                    (Some((_, f)), Err(_)) => f.epoch.is_none(),
                };
                return (out, ours.then_some(why));
            }
        }
    }
    (out, None)
}

/// Why a block could not be read back.
#[derive(Debug, Error)]
pub(super) enum ReadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Bad(String),
}

/// Reads the block at `offset` of an open spool file.
pub(super) fn read_block_at(f: &File, offset: u64) -> Result<ReadSegment, ReadError> {
    let mut h = [0u8; HEADER_LEN];
    f.read_exact_at(&mut h[..HEADER_LEN_V1], offset)?;
    if &h[..8] == MAGIC {
        f.read_exact_at(&mut h[HEADER_LEN_V1..], offset + HEADER_LEN_V1 as u64)?;
    }
    let head = parse_head(&h).map_err(|_| ReadError::Bad("not a spool block (bad magic)".into()))?;
    if head.body_len > MAX_SEGMENT {
        return Err(ReadError::Bad(format!("a {}-byte block is too large", head.body_len)));
    }
    let mut b = vec![0u8; head.len + head.body_len as usize];
    f.read_exact_at(&mut b, offset)?;
    parse_block(&b).map_err(|e| match e {
        NoBlock::None => ReadError::Bad("not a spool block".to_string()),
        NoBlock::Torn(why) => ReadError::Bad(why),
    })
}
