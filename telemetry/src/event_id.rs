//! Identifiers written as 32 lowercase hex characters: the event id that
//! groups the records of one occurrence, the record id the collector gives
//! each record it accepts, this boot's id, and the machine id the collector
//! stamps.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why a string is not a 32-hex-character id.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EventIdError {
    /// The string is not 32 characters long.
    #[error("id is {len} characters; expected 32 lowercase hex characters")]
    Length {
        /// Its length in characters.
        len: usize,
    },
    /// A character is not one of `0-9a-f`.
    #[error("id character {position} ({found:?}) is not a lowercase hex digit")]
    NotHex {
        /// The character's byte offset.
        position: usize,
        /// The character found there.
        found: char,
    },
}

fn parse_hex16(s: &str) -> Result<[u8; 16], EventIdError> {
    let b = s.as_bytes();
    if b.len() != 32 {
        return Err(EventIdError::Length { len: s.chars().count() });
    }
    let mut out = [0u8; 16];
    for (i, slot) in out.iter_mut().enumerate() {
        let nib = |pos: usize| -> Result<u8, EventIdError> {
            match b[pos] {
                c @ b'0'..=b'9' => Ok(c - b'0'),
                c @ b'a'..=b'f' => Ok(c - b'a' + 10),
                _ => Err(EventIdError::NotHex { position: pos, found: s[pos..].chars().next().unwrap_or('\u{fffd}') }),
            }
        };
        *slot = (nib(2 * i)? << 4) | nib(2 * i + 1)?;
    }
    Ok(out)
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8; 16]) -> fmt::Result {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 32];
    for (i, b) in bytes.iter().enumerate() {
        buf[2 * i] = HEX[(b >> 4) as usize];
        buf[2 * i + 1] = HEX[(b & 15) as usize];
    }
    // Only ASCII hex digits were written.
    f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
}

fn random16() -> [u8; 16] {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        // getrandom(2) cannot fail on Linux >= 3.17 once the pool is
        // initialised; mix time and pid rather than panic if it ever does.
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        b[..16].copy_from_slice(&(t ^ ((std::process::id() as u128) << 64)).to_le_bytes());
    }
    b
}

/// Groups the records of one occurrence: 16 bytes, written as 32 lowercase
/// hex characters. Random unless a probe derives it (crashprobe and
/// eventprobe derive it from the crash so that their records group).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EventId([u8; 16]);

impl EventId {
    /// A fresh random event id.
    pub fn random() -> Self {
        EventId(random16())
    }

    /// The event id with these 16 bytes.
    pub fn from_bytes(b: [u8; 16]) -> Self {
        EventId(b)
    }

    /// Its 16 bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl FromStr for EventId {
    type Err = EventIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex16(s).map(EventId)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({self})")
    }
}

/// The id the collector gives a record it accepted: 16 bytes, written as
/// 32 lowercase hex characters (`telemctl journal -r ID`). The native
/// framing's acknowledgement carries it (as its 16 raw bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RecordId([u8; 16]);

impl RecordId {
    /// A fresh random record id.
    pub fn random() -> Self {
        RecordId(random16())
    }

    /// The record id with these 16 bytes.
    pub const fn from_bytes(b: [u8; 16]) -> Self {
        RecordId(b)
    }

    /// Its 16 bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl From<[u8; 16]> for RecordId {
    fn from(b: [u8; 16]) -> Self {
        RecordId(b)
    }
}

impl From<RecordId> for [u8; 16] {
    fn from(id: RecordId) -> Self {
        id.0
    }
}

impl FromStr for RecordId {
    type Err = EventIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex16(s).map(RecordId)
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordId({self})")
    }
}

/// Where the kernel publishes this boot's id.
pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// This boot's id: the kernel's random UUID for the boot
/// (`/proc/sys/kernel/random/boot_id`), 16 bytes. Displayed as 32
/// lowercase hex characters without dashes, as the collector journals it
/// (`telemctl journal -b ID`); parsed from that form or from the kernel's
/// (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BootId([u8; 16]);

/// Why a string is not a boot id.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("boot id is not a UUID (8-4-4-4-12 hex digits) nor 32 hex digits")]
pub struct BootIdError;

impl BootId {
    /// All zeros: what the collector journals when the boot id cannot be
    /// read.
    pub const UNKNOWN: BootId = BootId([0; 16]);

    /// Reads this boot's id from [`BOOT_ID_PATH`].
    pub fn read() -> std::io::Result<BootId> {
        let b = std::fs::read(BOOT_ID_PATH)?;
        BootId::parse_uuid(&b).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// Parses the kernel's form: a UUID, `8-4-4-4-12` hex digits (either
    /// case), one trailing newline allowed.
    pub fn parse_uuid(s: &[u8]) -> Result<BootId, BootIdError> {
        let s = s.strip_suffix(b"\n").unwrap_or(s);
        if s.len() != 36 {
            return Err(BootIdError);
        }
        let mut out = [0u8; 16];
        let mut n = 0;
        let mut hi: Option<u8> = None;
        for (i, &c) in s.iter().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                if c != b'-' {
                    return Err(BootIdError);
                }
                continue;
            }
            let v = (c as char).to_digit(16).ok_or(BootIdError)? as u8;
            match hi.take() {
                None => hi = Some(v),
                Some(h) => {
                    out[n] = (h << 4) | v;
                    n += 1;
                }
            }
        }
        Ok(BootId(out))
    }

    /// The boot id with these 16 bytes.
    pub const fn from_bytes(b: [u8; 16]) -> Self {
        BootId(b)
    }

    /// Its 16 bytes (what [`crash_event_id`](crate::crash_id::crash_event_id)
    /// hashes).
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl FromStr for BootId {
    type Err = BootIdError;
    /// 32 lowercase hex characters (as displayed), or the kernel's UUID form.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match parse_hex16(s) {
            Ok(b) => Ok(BootId(b)),
            Err(_) => BootId::parse_uuid(s.as_bytes()),
        }
    }
}

impl fmt::Display for BootId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for BootId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BootId({self})")
    }
}

/// The machine id a record carries on the wire to the backend.
///
/// Probes do not know it: the legacy library sends [`MachineId::UNSET_STR`]
/// (`FFFFFFFF`) and the collector replaces it with its own, a random 32-hex
/// id rotated every three days, or a static or per-session one depending
/// on the privacy level. At most 32 characters of `[0-9A-Za-z]`, as the
/// backend requires.
#[derive(Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct MachineId(Box<str>);

/// Why a string is not a machine id.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MachineIdError {
    /// The string is empty.
    #[error("machine id is empty")]
    Empty,
    /// The string is longer than 32 characters.
    #[error("machine id is {len} characters; at most 32 are allowed")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// A character is not an ASCII letter or digit.
    #[error("machine id character {position} is not an ASCII letter or digit")]
    Invalid {
        /// The character's byte offset.
        position: usize,
    },
}

impl MachineId {
    /// What a probe sends before the collector stamps the record.
    pub const UNSET_STR: &'static str = "FFFFFFFF";

    /// [`UNSET_STR`](Self::UNSET_STR) as a machine id.
    pub fn unset() -> Self {
        MachineId(Self::UNSET_STR.into())
    }

    /// A fresh random 32-hex machine id.
    pub fn random() -> Self {
        MachineId(EventId::random().to_string().into_boxed_str())
    }

    /// Checks `s`: 1 to 32 ASCII letters and digits.
    pub fn parse(s: &str) -> Result<Self, MachineIdError> {
        if s.is_empty() {
            return Err(MachineIdError::Empty);
        }
        if s.len() > 32 {
            return Err(MachineIdError::TooLong { len: s.len() });
        }
        if let Some(position) = s.bytes().position(|c| !c.is_ascii_alphanumeric()) {
            return Err(MachineIdError::Invalid { position });
        }
        Ok(MachineId(s.into()))
    }

    /// The id as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for MachineId {
    type Error = MachineIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        MachineId::parse(&s)
    }
}

impl From<MachineId> for String {
    fn from(m: MachineId) -> String {
        m.0.into()
    }
}

impl FromStr for MachineId {
    type Err = MachineIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MachineId::parse(s)
    }
}

impl fmt::Display for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MachineId({})", self.0)
    }
}

// Serialized as a plain string, borrowed: no copy on the way out.
impl Serialize for MachineId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_id_round_trips_and_is_strict() {
        let id = EventId::random();
        let s = id.to_string();
        assert_eq!(s.len(), 32);
        assert!(s.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        assert_eq!(s.parse::<EventId>(), Ok(id));
        assert_ne!(EventId::random(), EventId::random());
        assert_eq!("abc".parse::<EventId>(), Err(EventIdError::Length { len: 3 }));
        let upper = "ABCDEF0123456789abcdef0123456789";
        assert_eq!(upper.parse::<EventId>(), Err(EventIdError::NotHex { position: 0, found: 'A' }));
        let bad = "0123456789abcdef0123456789abcdeg";
        assert_eq!(bad.parse::<EventId>(), Err(EventIdError::NotHex { position: 31, found: 'g' }));
    }

    #[test]
    fn record_id_round_trips() {
        let id = RecordId::random();
        assert_eq!(id.to_string().parse::<RecordId>(), Ok(id));
        assert_eq!(RecordId::from_bytes([0xab; 16]).to_string(), "ab".repeat(16));
        assert_eq!(<[u8; 16]>::from(RecordId::from([7; 16])), [7; 16]);
        assert!("xyz".parse::<RecordId>().is_err());
        // On the wire (bincode) exactly its 16 bytes, as the raw array was.
        assert_eq!(bincode::serialize(&id).unwrap(), bincode::serialize(id.as_bytes()).unwrap());
    }

    #[test]
    fn boot_id_forms() {
        let b = BootId::parse_uuid(b"0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0\n").unwrap();
        assert_eq!(b.as_bytes()[0], 0x0f);
        assert_eq!(b.as_bytes()[15], 0xf0);
        assert_eq!(b.to_string(), "0f1e2d3c4b5a69788796a5b4c3d2e1f0");
        assert_eq!("0f1e2d3c4b5a69788796a5b4c3d2e1f0".parse::<BootId>(), Ok(b));
        assert_eq!("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0".parse::<BootId>(), Ok(b));
        assert!(BootId::parse_uuid(b"0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1fg").is_err());
        assert!(BootId::parse_uuid(b"0f1e2d3c4b5a-6978-8796-a5b4c3d2e1f0-").is_err());
        assert_eq!(BootId::UNKNOWN.to_string(), "0".repeat(32));
        let now = BootId::read().unwrap();
        assert_eq!(now.to_string(), std::fs::read_to_string(BOOT_ID_PATH).unwrap().trim().replace('-', ""));
    }

    #[test]
    fn machine_id_limits() {
        assert!(MachineId::parse("FFFFFFFF").is_ok());
        assert_eq!(MachineId::random().as_str().len(), 32);
        assert_eq!(MachineId::parse(&"a".repeat(33)), Err(MachineIdError::TooLong { len: 33 }));
        assert_eq!(MachineId::parse("ab-c"), Err(MachineIdError::Invalid { position: 2 }));
        assert_eq!(MachineId::parse(""), Err(MachineIdError::Empty));
    }
}
