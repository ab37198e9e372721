//! `DOMAIN/PROBE/REST`: the record's classification.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Most bytes one segment may have.
pub const MAX_SEGMENT_LEN: usize = 40;
/// Most bytes the whole classification may have.
pub const MAX_CLASSIFICATION_LEN: usize = 122;

/// A classification such as `org.clearlinux/crash/clr`: exactly three
/// non-empty segments of printable ASCII without whitespace or `/`, each at
/// most 40 bytes, the whole at most 122 bytes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct Classification(Box<str>);

/// Why a string is not a classification.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClassificationError {
    /// The string is empty.
    #[error("classification is empty; expected DOMAIN/PROBE/REST")]
    Empty,
    /// The whole is over [`MAX_CLASSIFICATION_LEN`] bytes.
    #[error("classification is {len} bytes; at most {MAX_CLASSIFICATION_LEN} are allowed")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// Not exactly three `/`-separated segments.
    #[error("classification has {found} segment(s); expected exactly 3 as DOMAIN/PROBE/REST")]
    SegmentCount {
        /// How many segments there are.
        found: usize,
    },
    /// A segment is empty.
    #[error("classification segment {index} is empty; expected DOMAIN/PROBE/REST")]
    EmptySegment {
        /// The segment's index (0 = domain).
        index: usize,
    },
    /// A segment is over [`MAX_SEGMENT_LEN`] bytes.
    #[error("classification segment {index} is {len} bytes; at most {MAX_SEGMENT_LEN} are allowed")]
    SegmentTooLong {
        /// The segment's index (0 = domain).
        index: usize,
        /// Its length in bytes.
        len: usize,
    },
    /// A byte is not printable ASCII, or is whitespace.
    #[error("classification byte {position} (0x{byte:02x}) is not printable ASCII without whitespace")]
    InvalidByte {
        /// The byte's offset.
        position: usize,
        /// The byte.
        byte: u8,
    },
}

impl Classification {
    /// Parses `s` as `DOMAIN/PROBE/REST`.
    pub fn parse(s: &str) -> Result<Self, ClassificationError> {
        Self::check(s.as_bytes())?;
        Ok(Classification(s.into()))
    }

    /// Parses raw bytes (from a wire) as a classification.
    pub fn from_bytes(b: &[u8]) -> Result<Self, ClassificationError> {
        Self::check(b)?;
        // check() admits only ASCII, so this cannot fail.
        std::str::from_utf8(b)
            .map(|s| Classification(s.into()))
            .map_err(|e| ClassificationError::InvalidByte { position: e.valid_up_to(), byte: b[e.valid_up_to()] })
    }

    fn check(b: &[u8]) -> Result<(), ClassificationError> {
        if b.is_empty() {
            return Err(ClassificationError::Empty);
        }
        if b.len() > MAX_CLASSIFICATION_LEN {
            return Err(ClassificationError::TooLong { len: b.len() });
        }
        if let Some(position) = b.iter().position(|&c| !(0x21..=0x7e).contains(&c)) {
            return Err(ClassificationError::InvalidByte { position, byte: b[position] });
        }
        let found = b.iter().filter(|&&c| c == b'/').count() + 1;
        if found != 3 {
            return Err(ClassificationError::SegmentCount { found });
        }
        for (index, seg) in b.split(|&c| c == b'/').enumerate() {
            if seg.is_empty() {
                return Err(ClassificationError::EmptySegment { index });
            }
            if seg.len() > MAX_SEGMENT_LEN {
                return Err(ClassificationError::SegmentTooLong { index, len: seg.len() });
            }
        }
        Ok(())
    }

    /// The whole classification.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn segment(&self, i: usize) -> &str {
        self.0.split('/').nth(i).unwrap_or_default()
    }

    /// The first segment, e.g. `org.clearlinux`.
    pub fn domain(&self) -> &str {
        self.segment(0)
    }

    /// The second segment, e.g. `crash`.
    pub fn probe(&self) -> &str {
        self.segment(1)
    }

    /// The third segment, e.g. `clr`.
    pub fn rest(&self) -> &str {
        self.segment(2)
    }

    /// Whether this classification matches a journal filter: an exact
    /// classification, or a prefix ending in `/*` (`org.example/crash/*`).
    pub fn matches(&self, pattern: &str) -> bool {
        match pattern.strip_suffix('*') {
            Some(prefix) if prefix.ends_with('/') || prefix.is_empty() => self.0.starts_with(prefix),
            _ => &*self.0 == pattern,
        }
    }
}

impl FromStr for Classification {
    type Err = ClassificationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Classification {
    type Error = ClassificationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::check(s.as_bytes())?;
        Ok(Classification(s.into_boxed_str()))
    }
}

impl From<Classification> for String {
    fn from(c: Classification) -> String {
        c.0.into()
    }
}

impl fmt::Display for Classification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Classification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Classification({:?})", &*self.0)
    }
}

impl AsRef<str> for Classification {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

// Serialized as a plain string, borrowed: no copy on the way out.
impl Serialize for Classification {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_three_segments() {
        let c = Classification::parse("org.clearlinux/crash/clr").unwrap();
        assert_eq!((c.domain(), c.probe(), c.rest()), ("org.clearlinux", "crash", "clr"));
    }

    #[test]
    fn rejects_each_class_of_bad_input() {
        use ClassificationError::*;
        assert_eq!(Classification::parse(""), Err(Empty));
        assert_eq!(Classification::parse("a/b"), Err(SegmentCount { found: 2 }));
        assert_eq!(Classification::parse("a/b/c/d"), Err(SegmentCount { found: 4 }));
        assert_eq!(Classification::parse("a//c"), Err(EmptySegment { index: 1 }));
        assert_eq!(Classification::parse("/b/c"), Err(EmptySegment { index: 0 }));
        assert_eq!(Classification::parse("a b/c/d"), Err(InvalidByte { position: 1, byte: b' ' }));
        assert_eq!(Classification::parse("a/b/c\n"), Err(InvalidByte { position: 5, byte: b'\n' }));
        assert_eq!(Classification::parse("a/é/c"), Err(InvalidByte { position: 2, byte: 0xc3 }));
        // The original accepted a 41-byte first segment; we do not.
        let s41 = format!("{}/b/c", "a".repeat(41));
        assert_eq!(Classification::parse(&s41), Err(SegmentTooLong { index: 0, len: 41 }));
        let s40 = format!("{}/b/c", "a".repeat(40));
        assert!(Classification::parse(&s40).is_ok());
        let max = format!("{0}/{0}/{0}", "a".repeat(40));
        assert_eq!(max.len(), 122);
        assert!(Classification::parse(&max).is_ok());
        let over = format!("{max}x");
        assert_eq!(Classification::parse(&over), Err(TooLong { len: 123 }));
    }

    #[test]
    fn prefix_matching() {
        let c = Classification::parse("org.x/crash/clr").unwrap();
        assert!(c.matches("org.x/crash/clr"));
        assert!(c.matches("org.x/crash/*"));
        assert!(c.matches("org.x/*"));
        assert!(!c.matches("org.x/cr*"));
        assert!(!c.matches("org.x/crash"));
    }
}
