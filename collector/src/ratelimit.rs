//! Stage: rate windows, with the original daemon's settings and meaning.
//!
//! `record_burst_limit` records per `record_window_length` minutes and
//! `byte_burst_limit` bytes per `byte_window_length` minutes. Unlike the
//! original, the byte window counts each record's real size, and time is a
//! monotonic clock (never local-time minutes, which jump).
//! A window is a ring of one-minute buckets indexed by whole minutes since
//! the limiter started; a record is allowed when both windows, with it
//! added, stay within their limits. The same limiter gates the spool drain.

use std::time::{Duration, Instant};

use crate::config::{Config, Window};

/// A source of monotonic time (faked in tests).
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
}

/// The real monotonic clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct MonotonicClock;

impl Clock for MonotonicClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

#[derive(Debug, Clone)]
struct Ring {
    limit: Option<u64>,
    /// (minute index, amount), one per minute of the window.
    buckets: Vec<(u64, u64)>,
}

impl Ring {
    fn new(w: Window) -> Ring {
        Ring { limit: w.limit, buckets: vec![(u64::MAX, 0); w.minutes.max(1) as usize] }
    }

    /// Sum over the buckets still inside the window ending at `minute`.
    fn used(&self, minute: u64) -> u64 {
        let n = self.buckets.len() as u64;
        self.buckets.iter().filter(|(m, _)| *m != u64::MAX && *m <= minute && minute - *m < n).map(|(_, a)| *a).sum()
    }

    fn allows(&self, minute: u64, amount: u64) -> bool {
        match self.limit {
            None => true,
            Some(limit) => self.used(minute).saturating_add(amount) <= limit,
        }
    }

    fn add(&mut self, minute: u64, amount: u64) {
        let n = self.buckets.len() as u64;
        let slot = &mut self.buckets[(minute % n) as usize];
        if slot.0 != minute {
            *slot = (minute, 0);
        }
        slot.1 = slot.1.saturating_add(amount);
    }

    /// The first minute after `minute` at which `amount` more would fit
    /// (None when never: the amount alone is over the limit).
    fn next_fit(&self, minute: u64, amount: u64) -> Option<u64> {
        let Some(limit) = self.limit else { return Some(minute) };
        if amount > limit {
            return None;
        }
        let n = self.buckets.len() as u64;
        (minute..=minute + n).find(|&m| {
            let used: u64 =
                self.buckets.iter().filter(|(b, _)| *b != u64::MAX && *b <= m && m - *b < n).map(|(_, a)| *a).sum();
            used + amount <= limit
        })
    }
}

/// The verdict for one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Over a window; `retry_in` is when it would fit (None = never, the
    /// record alone is over the byte limit).
    Limited {
        retry_in: Option<Duration>,
    },
}

/// Both windows.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    enabled: bool,
    start: Instant,
    records: Ring,
    bytes: Ring,
}

impl RateLimiter {
    pub fn new(cfg: &Config, now: Instant) -> RateLimiter {
        RateLimiter::with(cfg.rate_limit_enabled, cfg.record_window, cfg.byte_window, now)
    }

    pub fn with(enabled: bool, records: Window, bytes: Window, now: Instant) -> RateLimiter {
        RateLimiter { enabled, start: now, records: Ring::new(records), bytes: Ring::new(bytes) }
    }

    /// Applies a reloaded configuration; counts already made stay when the
    /// window lengths are unchanged.
    pub fn reconfigure(&mut self, cfg: &Config) {
        self.enabled = cfg.rate_limit_enabled;
        if self.records.buckets.len() as u32 != cfg.record_window.minutes.max(1) {
            self.records = Ring::new(cfg.record_window);
        }
        self.records.limit = cfg.record_window.limit;
        if self.bytes.buckets.len() as u32 != cfg.byte_window.minutes.max(1) {
            self.bytes = Ring::new(cfg.byte_window);
        }
        self.bytes.limit = cfg.byte_window.limit;
    }

    fn minute(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_secs() / 60
    }

    /// Counts one record of `size` bytes if both windows allow it.
    pub fn try_acquire(&mut self, now: Instant, size: u64) -> Verdict {
        if !self.enabled {
            return Verdict::Allowed;
        }
        let m = self.minute(now);
        if self.records.allows(m, 1) && self.bytes.allows(m, size) {
            self.records.add(m, 1);
            self.bytes.add(m, size);
            return Verdict::Allowed;
        }
        let fit = match (self.records.next_fit(m, 1), self.bytes.next_fit(m, size)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
        let retry_in = fit.map(|fm| {
            let at = self.start + Duration::from_secs(fm * 60);
            at.saturating_duration_since(now).max(Duration::from_millis(10))
        });
        Verdict::Limited { retry_in }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A clock the test moves by hand.
    struct FakeClock(Mutex<Instant>);
    impl FakeClock {
        fn advance(&self, d: Duration) {
            *self.0.lock().unwrap() += d;
        }
    }
    impl Clock for FakeClock {
        fn now(&self) -> Instant {
            *self.0.lock().unwrap()
        }
    }

    fn w(limit: i64, minutes: u32) -> Window {
        Window { limit: if limit < 0 { None } else { Some(limit as u64) }, minutes }
    }

    #[test]
    fn record_window_edges() {
        let clock = FakeClock(Mutex::new(Instant::now()));
        let mut rl = RateLimiter::with(true, w(3, 2), w(-1, 1), clock.now());
        for _ in 0..3 {
            assert_eq!(rl.try_acquire(clock.now(), 10), Verdict::Allowed);
        }
        // The 4th in the same window is refused, and told to come back at
        // the end of the 2-minute window.
        match rl.try_acquire(clock.now(), 10) {
            Verdict::Limited { retry_in: Some(d) } => assert_eq!(d, Duration::from_secs(120)),
            v => panic!("{v:?}"),
        }
        // One second before the window ends: still refused.
        clock.advance(Duration::from_secs(119));
        assert!(matches!(rl.try_acquire(clock.now(), 10), Verdict::Limited { .. }));
        // Exactly at the end: the first minute's bucket left the window.
        clock.advance(Duration::from_secs(1));
        assert_eq!(rl.try_acquire(clock.now(), 10), Verdict::Allowed);
        assert_eq!(rl.try_acquire(clock.now(), 10), Verdict::Allowed);
        assert_eq!(rl.try_acquire(clock.now(), 10), Verdict::Allowed);
        assert!(matches!(rl.try_acquire(clock.now(), 10), Verdict::Limited { .. }));
    }

    #[test]
    fn sliding_over_minutes() {
        let clock = FakeClock(Mutex::new(Instant::now()));
        let mut rl = RateLimiter::with(true, w(2, 2), w(-1, 1), clock.now());
        assert_eq!(rl.try_acquire(clock.now(), 1), Verdict::Allowed); // minute 0
        clock.advance(Duration::from_secs(60));
        assert_eq!(rl.try_acquire(clock.now(), 1), Verdict::Allowed); // minute 1
        assert!(matches!(rl.try_acquire(clock.now(), 1), Verdict::Limited { .. }));
        clock.advance(Duration::from_secs(60)); // minute 2: minute 0 left
        assert_eq!(rl.try_acquire(clock.now(), 1), Verdict::Allowed);
        assert!(matches!(rl.try_acquire(clock.now(), 1), Verdict::Limited { .. }));
    }

    #[test]
    fn byte_window_counts_real_sizes() {
        let clock = FakeClock(Mutex::new(Instant::now()));
        let mut rl = RateLimiter::with(true, w(-1, 1), w(1000, 1), clock.now());
        assert_eq!(rl.try_acquire(clock.now(), 600), Verdict::Allowed);
        assert_eq!(rl.try_acquire(clock.now(), 400), Verdict::Allowed); // exactly the limit
        assert!(matches!(rl.try_acquire(clock.now(), 1), Verdict::Limited { retry_in: Some(_) }));
        // A record larger than the whole limit never fits.
        assert_eq!(rl.try_acquire(clock.now(), 1001), Verdict::Limited { retry_in: None });
        clock.advance(Duration::from_secs(59));
        assert!(matches!(rl.try_acquire(clock.now(), 1), Verdict::Limited { .. }));
        clock.advance(Duration::from_secs(1));
        assert_eq!(rl.try_acquire(clock.now(), 1000), Verdict::Allowed);
    }

    #[test]
    fn disabled_and_unlimited() {
        let t = Instant::now();
        let mut off = RateLimiter::with(false, w(0, 1), w(0, 1), t);
        assert_eq!(off.try_acquire(t, 5), Verdict::Allowed);
        let mut none = RateLimiter::with(true, w(-1, 1), w(-1, 1), t);
        for _ in 0..10_000 {
            assert_eq!(none.try_acquire(t, 1 << 20), Verdict::Allowed);
        }
        let mut zero = RateLimiter::with(true, w(0, 1), w(-1, 1), t);
        assert_eq!(zero.try_acquire(t, 1), Verdict::Limited { retry_in: None });
    }

    #[test]
    fn a_long_pause_clears_everything() {
        let clock = FakeClock(Mutex::new(Instant::now()));
        let mut rl = RateLimiter::with(true, w(1, 3), w(-1, 1), clock.now());
        assert_eq!(rl.try_acquire(clock.now(), 1), Verdict::Allowed);
        clock.advance(Duration::from_secs(3600 * 24));
        assert_eq!(rl.try_acquire(clock.now(), 1), Verdict::Allowed);
        assert!(matches!(rl.try_acquire(clock.now(), 1), Verdict::Limited { .. }));
    }
}
