//! The two clocks of an entry: the kernel stamps events with
//! `CLOCK_BOOTTIME` (`bpf_ktime_get_boot_ns`, the entry's `mono_ns`); the
//! wall-clock time is that plus the offset `CLOCK_REALTIME -
//! CLOCK_BOOTTIME`, refreshed every second (so a clock step shows within
//! a second).

pub use telemetry::blackbox::boot_ns;

/// Turns `CLOCK_BOOTTIME` times into wall-clock times.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    /// `CLOCK_REALTIME - CLOCK_BOOTTIME`, ns.
    offset: i128,
}

impl Default for WallClock {
    fn default() -> Self {
        WallClock::new()
    }
}

impl WallClock {
    /// The offset now.
    pub fn new() -> WallClock {
        let mut c = WallClock { offset: 0 };
        c.refresh();
        c
    }

    /// Reads the offset again (the realtime clock between two boottime
    /// readings, so the offset is off by at most half their distance).
    pub fn refresh(&mut self) {
        let a = boot_ns();
        let r = telemetry::blackbox::wall_ns();
        let b = boot_ns();
        self.offset = i128::from(r) - (i128::from(a) + i128::from(b)) / 2;
    }

    /// The wall-clock time (ns since the epoch) of boottime `mono_ns`.
    pub fn wall_ns(&self, mono_ns: u64) -> u64 {
        (i128::from(mono_ns) + self.offset).clamp(0, i128::from(u64::MAX)) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_time_of_now_is_now() {
        let c = WallClock::new();
        let wall = c.wall_ns(boot_ns());
        let real = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
        assert!(wall.abs_diff(real) < 50_000_000, "{wall} vs {real}");
        assert!(c.wall_ns(0) < real, "boot was in the past");
    }
}
