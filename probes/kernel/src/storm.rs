//! The storm governor: identical reports (same signature, see
//! [`crate::oops::Report::signature`]) within a window give one record at
//! once, and, when the window ends, one more carrying how many were held
//! back (with the last of them as its payload), like the crash-loop
//! governor of eventprobe.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Most signatures tracked; beyond it, quiet ones are forgotten.
const MAX_KEYS: usize = 4096;

#[derive(Debug)]
struct Entry {
    since: Instant,
    held: u64,
    last: Option<Held>,
}

/// A report held back, to be sent with its count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Its classification.
    pub classification: &'static str,
    /// Its severity.
    pub severity: u8,
    /// The last held report's payload.
    pub payload: String,
}

/// Per-signature windows.
#[derive(Debug)]
pub struct Storm {
    window: Option<Duration>,
    keys: HashMap<String, Entry>,
}

impl Storm {
    /// A governor with this window (`None`: every report is sent).
    pub fn new(window: Option<Duration>) -> Storm {
        Storm { window, keys: HashMap::new() }
    }

    /// Whether a report of `signature` goes out now; if not, it is counted
    /// and `held` kept for the count record.
    pub fn admit(&mut self, signature: String, held: Held, now: Instant) -> bool {
        let Some(window) = self.window else { return true };
        if self.keys.len() >= MAX_KEYS {
            self.keys.retain(|_, e| e.held > 0 || now.saturating_duration_since(e.since) < window);
        }
        match self.keys.get_mut(&signature) {
            Some(e) if now.saturating_duration_since(e.since) < window => {
                e.held += 1;
                e.last = Some(held);
                false
            }
            _ => {
                self.keys.insert(signature, Entry { since: now, held: 0, last: None });
                true
            }
        }
    }

    /// The count records of windows that ended by `now`: `(report, count)`.
    pub fn expired(&mut self, now: Instant) -> Vec<(Held, u64)> {
        let Some(window) = self.window else { return Vec::new() };
        let mut out = Vec::new();
        self.keys.retain(|_, e| {
            if now.saturating_duration_since(e.since) < window {
                return true;
            }
            if let (n @ 1.., Some(h)) = (e.held, e.last.take()) {
                out.push((h, n));
            }
            false
        });
        out
    }

    /// The count records of every window now, ended or not (when the
    /// scanner stops, so no count is lost).
    pub fn drain(&mut self) -> Vec<(Held, u64)> {
        self.keys.drain().filter_map(|(_, e)| Some((e.last?, e.held)).filter(|(_, n)| *n > 0)).collect()
    }

    /// When the next window with held reports ends.
    pub fn next_deadline(&self) -> Option<Instant> {
        let window = self.window?;
        self.keys.values().filter(|e| e.held > 0).map(|e| e.since + window).min()
    }
}

/// The payload of a count record: the last held report and its count.
pub fn count_payload(held: &Held, count: u64, window: Option<Duration>) -> String {
    let secs = window.map(|w| w.as_secs()).unwrap_or(0);
    let mut p = held.payload.clone();
    if !p.ends_with('\n') {
        p.push('\n');
    }
    p.push_str(&format!("Repeated : {count} more identical reports within {secs} s (one record per window)\n"));
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(p: &str) -> Held {
        Held { classification: "a/b/c", severity: 2, payload: p.into() }
    }

    #[test]
    fn one_per_window_then_count() {
        let t0 = Instant::now();
        let mut s = Storm::new(Some(Duration::from_secs(10)));
        assert!(s.admit("x".into(), h("1"), t0));
        assert!(!s.admit("x".into(), h("2"), t0 + Duration::from_secs(1)));
        assert!(!s.admit("x".into(), h("3"), t0 + Duration::from_secs(2)));
        assert!(s.admit("y".into(), h("other"), t0));
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(10)));
        assert!(s.expired(t0 + Duration::from_secs(5)).is_empty());
        assert_eq!(s.expired(t0 + Duration::from_secs(10)), vec![(h("3"), 2)]);
        assert!(s.admit("x".into(), h("4"), t0 + Duration::from_secs(11)));
        assert!(Storm::new(None).admit("x".into(), h("1"), t0));
        assert!(!s.admit("x".into(), h("5"), t0 + Duration::from_secs(12)));
        assert_eq!(s.drain(), vec![(h("5"), 1)]);
        assert!(s.drain().is_empty());
    }
}
