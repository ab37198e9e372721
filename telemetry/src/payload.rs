//! The record's payload: text or bytes, never truncated.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The payload limit a collector announces unless configured otherwise
/// (`record_max_bytes`, 64 KiB).
pub const DEFAULT_MAX_PAYLOAD: usize = 64 * 1024;

/// The payload of a record. Text is what the original carried; bytes are
/// allowed on the native framing (the legacy framing ends the payload with a
/// NUL, so it cannot carry one).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// UTF-8 text (what every original probe sends).
    Text(String),
    /// Any bytes (native framing only).
    Bytes(Vec<u8>),
}

/// Why a payload cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PayloadError {
    /// Over the collector's limit.
    #[error("payload is {size} bytes; the collector accepts at most {limit} (it is never truncated: shorten it)")]
    TooLarge {
        /// The payload's size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// A NUL byte, which the legacy framing cannot carry.
    #[error("payload has a NUL byte at {position}; the legacy framing cannot carry it (use the native framing)")]
    HasNul {
        /// The NUL's offset.
        position: usize,
    },
}

impl Payload {
    /// A text payload.
    pub fn text(s: impl Into<String>) -> Self {
        Payload::Text(s.into())
    }

    /// Text when the bytes are UTF-8, bytes otherwise.
    pub fn from_vec(v: Vec<u8>) -> Self {
        match String::from_utf8(v) {
            Ok(s) => Payload::Text(s),
            Err(e) => Payload::Bytes(e.into_bytes()),
        }
    }

    /// The payload's bytes (text as UTF-8).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Payload::Text(s) => s.as_bytes(),
            Payload::Bytes(b) => b,
        }
    }

    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Text, with invalid UTF-8 shown as U+FFFD (for display only).
    pub fn to_text_lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(self.as_bytes())
    }

    /// Errors when the payload is over `limit` bytes.
    pub fn check_limit(&self, limit: usize) -> Result<(), PayloadError> {
        let size = self.len();
        if size > limit {
            return Err(PayloadError::TooLarge { size, limit });
        }
        Ok(())
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Payload::Text(s) if s.len() <= 64 => write!(f, "Text({s:?})"),
            Payload::Text(s) => write!(f, "Text({} bytes)", s.len()),
            Payload::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn limit_is_an_error_not_a_cut() {
        let p = Payload::text("x".repeat(10));
        assert_eq!(p.check_limit(9), Err(PayloadError::TooLarge { size: 10, limit: 9 }));
        assert!(p.check_limit(10).is_ok());
        assert_eq!(p.len(), 10);
    }
    #[test]
    fn from_vec_picks_kind() {
        assert!(matches!(Payload::from_vec(b"hi".to_vec()), Payload::Text(_)));
        assert!(matches!(Payload::from_vec(vec![0xff]), Payload::Bytes(_)));
    }
}
