//! # journalprobe: service failures from the systemd journal
//!
//! Reads the journal of the current boot through libsystemd's sd-journal
//! (the `systemd` crate) and sends one record per entry that says a unit's
//! process failed, and, only when privacy filters are off
//! (`etc_dir/opt-in-no-privacy-filters`, as the original), per entry of
//! priority 0-3 (emerg .. err):
//!
//! ```text
//! systemd journal ──(sd-journal: _BOOT_ID, EXIT_CODE, PRIORITY matches)──▶ journalprobe
//!    ──(native framing, acknowledged)──▶ telem-collector (scrubs payloads)
//! ```
//!
//! Records are `org.clearlinux/journal/error`, severity 2, payload the
//! entry's `MESSAGE` and a newline, as the original's. The cursor of the
//! last entry sent is kept in `state_dir/journalprobe.cursor`, so a
//! restart sends nothing twice; `-t` follows the journal.

use std::collections::BTreeMap;

/// The classification of every journalprobe record.
pub const CLASSIFICATION: &str = "org.clearlinux/journal/error";
/// Their severity.
pub const SEVERITY: u8 = 2;
/// The cursor file in `state_dir`.
pub const CURSOR_FILE: &str = "journalprobe.cursor";

/// The fields of one entry that journalprobe looks at.
pub const FIELDS: [&str; 6] = ["_BOOT_ID", "MESSAGE", "EXIT_CODE", "EXIT_STATUS", "PRIORITY", "UNIT"];

/// Why an entry is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// A unit's process exited with a failure status, was killed by a
    /// signal other than the clean ones (HUP, INT, TERM, PIPE), or dumped
    /// core.
    FailedUnit,
    /// Priority 0-3 (privacy filters off only).
    ErrorPriority,
}

/// Signals after which systemd counts a process's end as clean.
const CLEAN_SIGNALS: [&str; 8] = ["1", "2", "13", "15", "HUP", "INT", "PIPE", "TERM"];

/// Whether the entry with `fields` is reported, and why. `boot`: the
/// current boot id as the journal spells it (32 hex digits).
pub fn select(fields: &BTreeMap<String, String>, boot: &str, error_priorities: bool) -> Option<Why> {
    let get = |k: &str| fields.get(k).map(String::as_str);
    if get("_BOOT_ID") != Some(boot) {
        return None;
    }
    let status = get("EXIT_STATUS").unwrap_or("");
    let failed = match get("EXIT_CODE") {
        Some("exited") => !matches!(status, "" | "0"),
        Some("killed") => !CLEAN_SIGNALS.contains(&status),
        Some("dumped") => true,
        _ => false,
    };
    if failed {
        return Some(Why::FailedUnit);
    }
    let prio = get("PRIORITY").and_then(|p| p.parse::<u8>().ok());
    (error_priorities && prio.is_some_and(|p| p <= 3)).then_some(Why::ErrorPriority)
}

/// The payload of a reported entry: its message and a newline.
pub fn payload(fields: &BTreeMap<String, String>) -> String {
    let mut p = fields.get("MESSAGE").cloned().unwrap_or_default();
    p.push('\n');
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        let mut m: BTreeMap<String, String> = kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        m.entry("_BOOT_ID".into()).or_insert_with(|| "b".into());
        m
    }

    #[test]
    fn failures_and_priorities() {
        let s = |kv: &[(&str, &str)], e| select(&entry(kv), "b", e);
        assert_eq!(s(&[("EXIT_CODE", "exited"), ("EXIT_STATUS", "1")], false), Some(Why::FailedUnit));
        assert_eq!(s(&[("EXIT_CODE", "exited"), ("EXIT_STATUS", "0")], false), None);
        assert_eq!(s(&[("EXIT_CODE", "killed"), ("EXIT_STATUS", "9")], false), Some(Why::FailedUnit));
        assert_eq!(s(&[("EXIT_CODE", "killed"), ("EXIT_STATUS", "15")], false), None);
        assert_eq!(s(&[("EXIT_CODE", "dumped"), ("EXIT_STATUS", "11")], false), Some(Why::FailedUnit));
        assert_eq!(s(&[("PRIORITY", "3")], false), None);
        assert_eq!(s(&[("PRIORITY", "3")], true), Some(Why::ErrorPriority));
        assert_eq!(s(&[("PRIORITY", "4")], true), None);
        assert_eq!(select(&entry(&[("EXIT_CODE", "dumped")]), "other", true), None);
        assert_eq!(payload(&entry(&[("MESSAGE", "x failed")])), "x failed\n");
    }
}
