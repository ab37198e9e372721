//! Identifiers written as 32 lowercase hex characters: the event id that
//! groups the records of one occurrence, and the machine id the collector
//! stamps.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why a string is not a 32-hex-character id.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EventIdError {
    #[error("id is {len} characters; expected 32 lowercase hex characters")]
    Length { len: usize },
    #[error("id character {position} ({found:?}) is not a lowercase hex digit")]
    NotHex { position: usize, found: char },
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
                _ => Err(EventIdError::NotHex {
                    position: pos,
                    found: s[pos..].chars().next().unwrap_or('\u{fffd}'),
                }),
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
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
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

    pub fn from_bytes(b: [u8; 16]) -> Self {
        EventId(b)
    }

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

/// The machine id a record carries on the wire to the backend.
///
/// Probes do not know it: the legacy library sends [`MachineId::UNSET`]
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
    #[error("machine id is empty")]
    Empty,
    #[error("machine id is {len} characters; at most 32 are allowed")]
    TooLong { len: usize },
    #[error("machine id character {position} is not an ASCII letter or digit")]
    Invalid { position: usize },
}

impl MachineId {
    /// What a probe sends before the collector stamps the record.
    pub const UNSET_STR: &'static str = "FFFFFFFF";

    pub fn unset() -> Self {
        MachineId(Self::UNSET_STR.into())
    }

    /// A fresh random 32-hex machine id.
    pub fn random() -> Self {
        MachineId(EventId::random().to_string().into_boxed_str())
    }

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
    fn machine_id_limits() {
        assert!(MachineId::parse("FFFFFFFF").is_ok());
        assert_eq!(MachineId::random().as_str().len(), 32);
        assert_eq!(MachineId::parse(&"a".repeat(33)), Err(MachineIdError::TooLong { len: 33 }));
        assert_eq!(MachineId::parse("ab-c"), Err(MachineIdError::Invalid { position: 2 }));
        assert_eq!(MachineId::parse(""), Err(MachineIdError::Empty));
    }
}

