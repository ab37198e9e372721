//! Severity 1 (low) .. 4 (critical).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// How bad the event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
#[repr(u8)]
pub enum Severity {
    /// 1: informational (`hello/world`, heartbeats).
    Low = 1,
    /// 2.
    Medium = 2,
    /// 3: crashes and fatal signals.
    High = 3,
    /// 4.
    Critical = 4,
}

/// Why a value is not a severity.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("severity {0:?} is not one of 1 (low), 2 (medium), 3 (high), 4 (critical)")]
pub struct SeverityError(pub String);

impl Severity {
    /// Its number, 1 to 4.
    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

impl TryFrom<u8> for Severity {
    type Error = SeverityError;
    fn try_from(v: u8) -> Result<Self, Self::Error> {
        match v {
            1 => Ok(Severity::Low),
            2 => Ok(Severity::Medium),
            3 => Ok(Severity::High),
            4 => Ok(Severity::Critical),
            _ => Err(SeverityError(v.to_string())),
        }
    }
}

impl From<Severity> for u8 {
    fn from(s: Severity) -> u8 {
        s as u8
    }
}

impl FromStr for Severity {
    type Err = SeverityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "1" | "low" => Ok(Severity::Low),
            "2" | "medium" => Ok(Severity::Medium),
            "3" | "high" => Ok(Severity::High),
            "4" | "critical" => Ok(Severity::Critical),
            _ => Err(SeverityError(s.to_string())),
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", *self as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn parses_only_one_to_four() {
        assert_eq!("1".parse::<Severity>(), Ok(Severity::Low));
        assert_eq!("critical".parse::<Severity>(), Ok(Severity::Critical));
        assert!("0".parse::<Severity>().is_err());
        assert!("5".parse::<Severity>().is_err());
        assert!(" 1".parse::<Severity>().is_err());
        assert!(Severity::try_from(0u8).is_err());
        assert_eq!(Severity::try_from(3u8), Ok(Severity::High));
    }
}
