//! The native framing.
//!
//! ```text
//! probe:      PREFIX (8 bytes: 00 00 00 00 'T' 'L' 'M' 0x01)
//! collector:  frame(Hello { protocol, max_payload })
//! probe:      frame(Record) frame(Record) ...       (pipelining allowed)
//! collector:  frame(Ack)    frame(Ack)    ...       (one per record, in order)
//! frame    =  u32 little-endian body length, body = bincode 1.3.3 (varint)
//! ```
//!
//! A frame the collector cannot decode is answered with a rejection that
//! says why, and that connection is closed; other connections go on.

use std::io::{self, Read, Write};

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{Classification, EventId, HeaderText, HostInfo, Payload, Record, Severity};

/// What a native connection starts with. Its first four bytes read as a
/// little-endian u32 are 0, which no legacy record size can be.
pub const PREFIX: [u8; 8] = [0, 0, 0, 0, b'T', b'L', b'M', PROTOCOL_VERSION];
/// The version of this framing.
pub const PROTOCOL_VERSION: u8 = 1;
/// Room for everything in a record frame but the payload.
pub const FRAME_OVERHEAD: usize = 8 * 1024;
/// Most bytes a frame from the collector may have.
pub const MAX_SERVER_FRAME: usize = 64 * 1024;

/// Probe -> collector messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientFrame {
    /// One record, answered by one [`Ack`].
    Record(Record),
}

/// Collector -> probe messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerFrame {
    /// Sent once, right after the prefix is read.
    Hello(Hello),
    /// One per record, in order.
    Ack(Ack),
}

/// What the collector announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The native framing version ([`PROTOCOL_VERSION`]).
    pub protocol: u8,
    /// Largest payload the collector accepts, in bytes.
    pub max_payload: u32,
}

/// The collector's answer to one record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ack {
    /// Durably journaled or spooled; `record_id` names it in the journal.
    Accepted {
        /// The bytes of the [`RecordId`](crate::RecordId) the collector gave it.
        record_id: [u8; 16],
    },
    /// Not accepted, with a reason the probe can print.
    Rejected {
        /// Why, in words the probe can print.
        reason: String,
    },
}

/// Why bytes are not a valid native frame.
#[derive(Debug, Error)]
pub enum FrameError {
    /// The first 8 bytes are not [`PREFIX`].
    #[error("connection does not start with the telemetrics native prefix (got {0:02x?})")]
    BadPrefix([u8; 8]),
    /// The prefix names a version this side does not speak.
    #[error("native framing version {0} is not supported (this side speaks {PROTOCOL_VERSION})")]
    Version(u8),
    /// A frame's length is over the limit.
    #[error("frame of {size} bytes is over the limit of {limit} bytes")]
    TooLarge {
        /// The frame's declared length.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The frame's body does not decode.
    #[error("frame is not a valid message: {0}")]
    Decode(#[from] bincode::Error),
    /// The connection ended inside a frame.
    #[error("connection closed in the middle of a frame")]
    Truncated,
    /// Reading or writing failed.
    #[error(transparent)]
    Io(io::Error),
}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(e)
        }
    }
}

fn options(limit: usize) -> impl Options {
    bincode::DefaultOptions::new().with_limit(limit as u64).reject_trailing_bytes()
}

/// Largest record frame a collector announcing `max_payload` accepts.
pub fn max_record_frame(max_payload: usize) -> usize {
    max_payload.saturating_add(FRAME_OVERHEAD)
}

/// Checks the 8-byte prefix.
pub fn check_prefix(p: [u8; 8]) -> Result<(), FrameError> {
    if p[..7] != PREFIX[..7] {
        return Err(FrameError::BadPrefix(p));
    }
    if p[7] != PROTOCOL_VERSION {
        return Err(FrameError::Version(p[7]));
    }
    Ok(())
}

/// Appends one frame holding `msg` to `out`.
pub fn encode_into<T: Serialize>(msg: &T, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    // No size limit on the way out: a limit makes bincode size the message
    // in a first pass. Frames are checked against the peer's limit on read.
    bincode::DefaultOptions::new().serialize_into(&mut *out, msg)?;
    let len = out.len() - start - 4;
    let len32 = u32::try_from(len).map_err(|_| FrameError::TooLarge { size: len, limit: u32::MAX as usize })?;
    out[start..start + 4].copy_from_slice(&len32.to_le_bytes());
    Ok(())
}

/// One frame holding `msg`.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut v = Vec::new();
    encode_into(msg, &mut v)?;
    Ok(v)
}

/// The body length a frame header announces, checked against `limit`.
pub fn body_len(header: [u8; 4], limit: usize) -> Result<usize, FrameError> {
    let size = u32::from_le_bytes(header) as usize;
    if size > limit {
        return Err(FrameError::TooLarge { size, limit });
    }
    Ok(size)
}

/// Decodes a frame body (without its length header).
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    Ok(options(body.len()).deserialize(body)?)
}

/// A record frame's fields as they lie in the frame: the same layout as
/// `ClientFrame::Record(Record)`, strings borrowed, so decoding copies only
/// what the record keeps.
#[derive(Deserialize)]
enum ClientFrameRef<'a> {
    Record(#[serde(borrow)] RecordRef<'a>),
}

#[derive(Deserialize)]
struct RecordRef<'a> {
    classification: &'a str,
    severity: Severity,
    event_id: EventId,
    payload_format_version: u32,
    creation_timestamp: u64,
    #[serde(borrow)]
    host: HostRef<'a>,
    #[serde(borrow)]
    payload: PayloadRef<'a>,
}

#[derive(Deserialize)]
struct HostRef<'a> {
    arch: &'a str,
    host_type: &'a str,
    build: &'a str,
    kernel_version: &'a str,
    system_name: &'a str,
    board_name: &'a str,
    cpu_model: &'a str,
    bios_version: &'a str,
}

#[derive(Deserialize)]
enum PayloadRef<'a> {
    Text(&'a str),
    Bytes(&'a [u8]),
}

impl HostRef<'_> {
    fn fields(&self) -> [&str; 8] {
        [
            self.arch,
            self.host_type,
            self.build,
            self.kernel_version,
            self.system_name,
            self.board_name,
            self.cpu_model,
            self.bios_version,
        ]
    }

    fn is(&self, h: &HostInfo) -> bool {
        let have = [
            &h.arch,
            &h.host_type,
            &h.build,
            &h.kernel_version,
            &h.system_name,
            &h.board_name,
            &h.cpu_model,
            &h.bios_version,
        ];
        self.fields().iter().zip(have).all(|(a, b)| *a == b.as_str())
    }

    fn to_owned(&self) -> Result<HostInfo, crate::text::HeaderTextError> {
        let t = HeaderText::new;
        Ok(HostInfo {
            arch: t(self.arch)?,
            host_type: t(self.host_type)?,
            build: t(self.build)?,
            kernel_version: t(self.kernel_version)?,
            system_name: t(self.system_name)?,
            board_name: t(self.board_name)?,
            cpu_model: t(self.cpu_model)?,
            bios_version: t(self.bios_version)?,
        })
    }
}

/// The host facts a reader saw last, shared by the records that repeat
/// them (every record of one machine does): [`decode_record`] then keeps
/// one copy instead of one per record.
#[derive(Debug, Clone, Default)]
pub struct HostCache(Option<std::sync::Arc<HostInfo>>);

/// Decodes the body of a `ClientFrame::Record` frame as
/// [`decode_body`]`::<ClientFrame>` does (it accepts the same frames and
/// gives the same records; of several faults it may name another), but
/// reading strings where they lie in `body` and sharing host facts through
/// `hosts`: two allocations per record (classification and payload) where
/// the derived decoder makes eleven.
///
/// ```
/// # use telemetry::{Classification, Payload, Record, Severity};
/// use telemetry::wire::native::{self, ClientFrame, HostCache};
/// let r = Record::builder(Classification::parse("org.x/a/b").unwrap(), Severity::Low, Payload::text("hi")).build();
/// let frame = native::encode(&ClientFrame::Record(r.clone())).unwrap();
/// let mut hosts = HostCache::default();
/// assert_eq!(native::decode_record(&frame[4..], &mut hosts).unwrap(), r);
/// ```
pub fn decode_record(body: &[u8], hosts: &mut HostCache) -> Result<Record, FrameError> {
    let custom = |e: &dyn std::fmt::Display| FrameError::Decode(Box::new(bincode::ErrorKind::Custom(e.to_string())));
    let ClientFrameRef::Record(r) = options(body.len()).deserialize::<ClientFrameRef<'_>>(body)?;
    let classification = Classification::parse(r.classification).map_err(|e| custom(&e))?;
    let host = match &hosts.0 {
        Some(h) if r.host.is(h) => h.clone(),
        _ => {
            let h = std::sync::Arc::new(r.host.to_owned().map_err(|e| custom(&e))?);
            hosts.0 = Some(h.clone());
            h
        }
    };
    let payload = match r.payload {
        PayloadRef::Text(t) => Payload::Text(t.to_string()),
        PayloadRef::Bytes(b) => Payload::Bytes(b.to_vec()),
    };
    Ok(Record {
        classification,
        severity: r.severity,
        event_id: r.event_id,
        payload_format_version: r.payload_format_version,
        creation_timestamp: r.creation_timestamp,
        host,
        payload,
    })
}

/// Splits one whole frame off the front of `buf`: `Ok(None)` when more bytes
/// are needed, else the body and the bytes consumed.
pub fn split_frame(buf: &[u8], limit: usize) -> Result<Option<(&[u8], usize)>, FrameError> {
    let Some(header) = buf.get(..4) else { return Ok(None) };
    let mut h = [0u8; 4];
    h.copy_from_slice(header);
    let len = body_len(h, limit)?;
    Ok(buf.get(4..4 + len).map(|body| (body, 4 + len)))
}

/// Reads one frame body into `buf` from a blocking reader; `Ok(false)` on a
/// clean end of stream before the first byte.
pub fn read_frame<R: Read>(r: &mut R, limit: usize, buf: &mut Vec<u8>) -> Result<bool, FrameError> {
    let mut header = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = body_len(header, limit)?;
    buf.clear();
    buf.resize(len, 0);
    r.read_exact(buf)?;
    Ok(true)
}

/// Writes one frame holding `msg` to a blocking writer.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), FrameError> {
    let bytes = encode(msg)?;
    w.write_all(&bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Classification, Payload, Severity};

    fn record() -> Record {
        Record::builder(Classification::parse("org.test/hello/world").unwrap(), Severity::Low, Payload::text("hello\n"))
            .build()
    }

    #[test]
    fn prefix_is_never_a_legacy_size() {
        assert_eq!(u32::from_le_bytes([PREFIX[0], PREFIX[1], PREFIX[2], PREFIX[3]]), 0);
        assert_eq!(crate::wire::sniff([0, 0, 0, 0]), crate::wire::Framing::Native);
        check_prefix(PREFIX).unwrap();
        assert!(matches!(check_prefix(*b"\0\0\0\0TLM\x09"), Err(FrameError::Version(9))));
        assert!(matches!(check_prefix(*b"GET / HT"), Err(FrameError::BadPrefix(_))));
    }

    #[test]
    fn frame_round_trip() {
        let r = ClientFrame::Record(record());
        let bytes = encode(&r).unwrap();
        let (body, used) = split_frame(&bytes, 1 << 20).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(decode_body::<ClientFrame>(body).unwrap(), r);
        assert!(split_frame(&bytes[..bytes.len() - 1], 1 << 20).unwrap().is_none());
    }

    #[test]
    fn oversize_frame_is_refused_before_reading_it() {
        let header = (10_000u32).to_le_bytes();
        assert!(matches!(split_frame(&header, 100), Err(FrameError::TooLarge { size: 10_000, limit: 100 })));
    }

    #[test]
    fn invalid_fields_are_rejected_on_decode() {
        // Encode a record, then corrupt the classification inside the body.
        let r = ClientFrame::Record(record());
        let mut bytes = encode(&r).unwrap();
        let pos = bytes.windows(5).position(|w| w == b"hello").unwrap();
        bytes[pos] = b' ';
        let (body, _) = split_frame(&bytes, 1 << 20).unwrap().unwrap();
        let err = decode_body::<ClientFrame>(body).unwrap_err();
        assert!(err.to_string().contains("not printable ASCII"), "{err}");
        // Trailing garbage is refused too.
        let mut body2 = encode(&r).unwrap()[4..].to_vec();
        body2.push(0);
        assert!(decode_body::<ClientFrame>(&body2).is_err());
        // A bad severity.
        assert!(decode_body::<ServerFrame>(&[7]).is_err());
    }

    #[test]
    fn huge_length_prefix_inside_body_does_not_allocate() {
        // Variant 0 (Record), then a string length of u64::MAX (varint 0xff + 8 bytes).
        let mut body = vec![0u8, 0xff];
        body.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_body::<ClientFrame>(&body).is_err());
    }

    #[test]
    fn blocking_read_write() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &ServerFrame::Hello(Hello { protocol: 1, max_payload: 65536 })).unwrap();
        let mut cur = std::io::Cursor::new(buf);
        let mut body = Vec::new();
        assert!(read_frame(&mut cur, MAX_SERVER_FRAME, &mut body).unwrap());
        assert_eq!(
            decode_body::<ServerFrame>(&body).unwrap(),
            ServerFrame::Hello(Hello { protocol: 1, max_payload: 65536 })
        );
        assert!(!read_frame(&mut cur, MAX_SERVER_FRAME, &mut body).unwrap());
    }
}
