//! `HeaderText`: a value that fits on one header line.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Most bytes a header value may have (the backend takes `host_type` under
/// 250 characters and the board, CPU and BIOS fields under 200).
pub const MAX_HEADER_TEXT: usize = 249;

/// One header value of a record (`arch`, `build`, `cpu_model`, ...): UTF-8
/// without control characters, so it can be written as a `name: value` line
/// of the legacy framing and as an HTTP header value without escaping, and
/// at most [`MAX_HEADER_TEXT`] bytes. Spaces are kept: values are never cut
/// at a space (the original's v3 defect).
#[derive(Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct HeaderText(Box<str>);

/// Why a string cannot be a header value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HeaderTextError {
    /// Over [`MAX_HEADER_TEXT`] bytes.
    #[error("value is {len} bytes; at most {MAX_HEADER_TEXT} are allowed")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// A control character.
    #[error("value has a control character (0x{byte:02x}) at byte {position}")]
    Control {
        /// Its byte offset.
        position: usize,
        /// The control character (its last byte for C1 controls).
        byte: u8,
    },
    /// Not UTF-8.
    #[error("value is not UTF-8 (invalid at byte {position})")]
    NotUtf8 {
        /// Where the invalid sequence starts.
        position: usize,
    },
}

impl HeaderText {
    /// Checks `s`: at most [`MAX_HEADER_TEXT`] bytes, no control character.
    pub fn new(s: &str) -> Result<Self, HeaderTextError> {
        Self::check(s)?;
        Ok(HeaderText(s.into()))
    }

    /// As [`new`](Self::new), from bytes that must be UTF-8.
    pub fn from_bytes(b: &[u8]) -> Result<Self, HeaderTextError> {
        let s = std::str::from_utf8(b).map_err(|e| HeaderTextError::NotUtf8 { position: e.valid_up_to() })?;
        Self::new(s)
    }

    fn check(s: &str) -> Result<(), HeaderTextError> {
        if s.len() > MAX_HEADER_TEXT {
            return Err(HeaderTextError::TooLong { len: s.len() });
        }
        // Control characters are C0 (< 0x20), DEL, and C1 (U+0080..U+009F,
        // encoded 0xC2 0x80..=0x9F): a byte scan finds them in valid UTF-8.
        let b = s.as_bytes();
        // Fast path without early exit, so it vectorizes: no byte that can
        // start a control character at all.
        if !b.iter().fold(false, |acc, &c| acc | (c < 0x20) | (c == 0x7f) | (c == 0xc2)) {
            return Ok(());
        }
        for (position, &byte) in b.iter().enumerate() {
            let c1 = byte == 0xc2 && b.get(position + 1).is_some_and(|n| (0x80..=0x9f).contains(n));
            if byte < 0x20 || byte == 0x7f || c1 {
                let byte = if c1 { b[position + 1] } else { byte };
                return Err(HeaderTextError::Control { position, byte });
            }
        }
        Ok(())
    }

    /// Makes a header value from text read off the machine (sysfs, os-release,
    /// cpuinfo): control characters become spaces, surrounding whitespace is
    /// trimmed, and text past the limit is cut at a character boundary. Used
    /// only for host facts, never for what a probe sends.
    pub fn sanitize(s: &str) -> Self {
        let cleaned: String = s.trim().chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
        let mut end = cleaned.len().min(MAX_HEADER_TEXT);
        while !cleaned.is_char_boundary(end) {
            end -= 1;
        }
        HeaderText(cleaned[..end].into())
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for HeaderText {
    type Error = HeaderTextError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::check(&s)?;
        Ok(HeaderText(s.into_boxed_str()))
    }
}

impl From<HeaderText> for String {
    fn from(h: HeaderText) -> String {
        h.0.into()
    }
}

impl fmt::Display for HeaderText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for HeaderText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

// Serialized as a plain string, borrowed: no copy on the way out.
impl Serialize for HeaderText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_spaces_rejects_controls() {
        assert_eq!(
            HeaderText::new("Intel(R) Xeon(R) CPU @ 2.20GHz").unwrap().as_str(),
            "Intel(R) Xeon(R) CPU @ 2.20GHz"
        );
        assert_eq!(HeaderText::new("a\nb"), Err(HeaderTextError::Control { position: 1, byte: b'\n' }));
        assert_eq!(HeaderText::new("a\0"), Err(HeaderTextError::Control { position: 1, byte: 0 }));
        assert_eq!(HeaderText::new(&"x".repeat(250)), Err(HeaderTextError::TooLong { len: 250 }));
        assert_eq!(HeaderText::from_bytes(b"a\xffb"), Err(HeaderTextError::NotUtf8 { position: 1 }));
        assert_eq!(HeaderText::new("a\u{85}"), Err(HeaderTextError::Control { position: 1, byte: 0x85 }));
        assert_eq!(HeaderText::new("a\u{7f}"), Err(HeaderTextError::Control { position: 1, byte: 0x7f }));
        assert!(HeaderText::new("é ü ß 東京").is_ok());
    }

    #[test]
    fn sanitize_makes_valid_text() {
        let h = HeaderText::sanitize("  a\tb\n");
        assert_eq!(h.as_str(), "a b");
        let long = "é".repeat(200);
        assert!(HeaderText::sanitize(&long).as_str().len() <= MAX_HEADER_TEXT);
    }
}
