//! Crash-loop protection: token buckets per (kind, comm) and one for all,
//! so a program crashing in a loop cannot flood the collector while other
//! programs' events still get through. Suppressed events are counted and
//! the count is written into the next record of the same key.

use std::collections::HashMap;
use std::time::Instant;

/// Rate and burst of one bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    /// Tokens added per second.
    pub per_sec: f64,
    /// Most tokens held (the burst allowed after a quiet period).
    pub burst: f64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
    suppressed: u64,
}

impl Bucket {
    fn new(limit: Limit, now: Instant) -> Bucket {
        Bucket { tokens: limit.burst, last: now, suppressed: 0 }
    }
    fn refill(&mut self, limit: Limit, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * limit.per_sec).min(limit.burst);
        self.last = now;
    }
}

/// The decision for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it; `suppressed` events of this key were dropped since the last
    /// one sent.
    Pass {
        suppressed: u64,
    },
    Drop,
}

/// Most keys tracked; beyond it, idle full buckets are forgotten.
const MAX_KEYS: usize = 4096;

/// Per-key and global token buckets.
pub struct RateLimiter {
    per_key: Limit,
    global: Limit,
    keys: HashMap<(u32, String), Bucket>,
    all: Bucket,
}

impl RateLimiter {
    pub fn new(per_key: Limit, global: Limit, now: Instant) -> RateLimiter {
        RateLimiter { per_key, global, keys: HashMap::new(), all: Bucket::new(global, now) }
    }

    /// Whether an event of `kind` from `comm` may be sent at `now`.
    pub fn check(&mut self, kind: u32, comm: &str, now: Instant) -> Verdict {
        if self.keys.len() >= MAX_KEYS {
            let pk = self.per_key;
            self.keys.retain(|_, b| {
                b.refill(pk, now);
                b.tokens < pk.burst || b.suppressed > 0
            });
        }
        let pk = self.per_key;
        let b = self.keys.entry((kind, comm.to_string())).or_insert_with(|| Bucket::new(pk, now));
        b.refill(pk, now);
        self.all.refill(self.global, now);
        if b.tokens >= 1.0 && self.all.tokens >= 1.0 {
            b.tokens -= 1.0;
            self.all.tokens -= 1.0;
            let suppressed = std::mem::take(&mut b.suppressed);
            Verdict::Pass { suppressed }
        } else {
            b.suppressed += 1;
            Verdict::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_rate_per_key() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(Limit { per_sec: 2.0, burst: 3.0 }, Limit { per_sec: 1000.0, burst: 1000.0 }, t0);
        for _ in 0..3 {
            assert!(matches!(r.check(1, "loop", t0), Verdict::Pass { .. }));
        }
        assert_eq!(r.check(1, "loop", t0), Verdict::Drop);
        assert_eq!(r.check(1, "loop", t0), Verdict::Drop);
        // Another program is not affected.
        assert_eq!(r.check(1, "other", t0), Verdict::Pass { suppressed: 0 });
        // Half a second later one token is back, and the count of dropped ones comes with it.
        assert_eq!(r.check(1, "loop", t0 + Duration::from_millis(500)), Verdict::Pass { suppressed: 2 });
        assert_eq!(r.check(1, "loop", t0 + Duration::from_millis(500)), Verdict::Drop);
    }

    #[test]
    fn global_bucket_caps_everything() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(Limit { per_sec: 100.0, burst: 100.0 }, Limit { per_sec: 1.0, burst: 2.0 }, t0);
        assert!(matches!(r.check(1, "a", t0), Verdict::Pass { .. }));
        assert!(matches!(r.check(2, "b", t0), Verdict::Pass { .. }));
        assert_eq!(r.check(3, "c", t0), Verdict::Drop);
    }
}
