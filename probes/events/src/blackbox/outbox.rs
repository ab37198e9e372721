//! The feed's outbox: every entry gets the next `seq` and is kept, as the
//! JSON line it is sent as, until the collector acknowledges it, so a
//! broken connection or a collector restart loses nothing.
//!
//! ```text
//!  push(entry) ─▶ [seq 1][seq 2]...[seq n] ─take_batch─▶ socket
//!                  ▲ ack(N) drops seq <= N    ▲ rewind() after a reconnection: resend from N+1
//! ```
//!
//! Bounded by entries and bytes: when full, new entries are dropped and
//! counted, and the first slot that frees holds a `Gap` saying how many
//! were lost, from when, and why. Pure logic: no I/O.

use std::collections::VecDeque;

use telemetry::blackbox::{Entry, Event, Feed};

/// Most entries kept unacknowledged.
pub const MAX_UNACKED: usize = 256 * 1024;
/// Most bytes (of JSON lines) kept unacknowledged.
pub const MAX_UNACKED_BYTES: usize = 64 << 20;

/// What the outbox has done since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// Entries given a `seq` (gaps included).
    pub queued: u64,
    /// Entries the collector acknowledged.
    pub acked: u64,
    /// Entries dropped because the outbox was full (each in a `Gap`).
    pub dropped: u64,
}

/// Entries dropped since the outbox filled, not yet in a `Gap`.
#[derive(Debug, Clone, Copy)]
struct Dropped {
    lost: u64,
    mono_ns: u64,
    wall_ns: u64,
}

/// Entries waiting to be sent and acknowledged.
#[derive(Debug)]
pub struct Outbox {
    source: String,
    next_seq: u64,
    /// (seq, JSON line with its newline), seq ascending without holes.
    unacked: VecDeque<(u64, String)>,
    bytes: usize,
    /// Highest seq written on the current connection.
    sent: u64,
    /// Highest seq acknowledged.
    acked: u64,
    max_entries: usize,
    max_bytes: usize,
    dropped: Option<Dropped>,
    stats: OutboxStats,
}

impl Outbox {
    /// An empty outbox for the stream `source`, bounded by `max_entries`
    /// and `max_bytes`.
    pub fn new(source: String, max_entries: usize, max_bytes: usize) -> Outbox {
        Outbox {
            source,
            next_seq: 1,
            unacked: VecDeque::new(),
            bytes: 0,
            sent: 0,
            acked: 0,
            max_entries: max_entries.max(2),
            max_bytes,
            dropped: None,
            stats: OutboxStats::default(),
        }
    }

    /// This run's stream id.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Queues `entry`, or drops it (counted, reported in a `Gap`) when
    /// the outbox is full. Returns whether it was queued.
    pub fn push(&mut self, entry: Entry) -> bool {
        self.write_gap();
        if self.dropped.is_some() || self.is_full() {
            let d = self.dropped.get_or_insert(Dropped { lost: 0, mono_ns: entry.mono_ns, wall_ns: entry.wall_ns });
            d.lost += 1;
            self.stats.dropped += 1;
            return false;
        }
        self.append(entry)
    }

    fn is_full(&self) -> bool {
        self.unacked.len() >= self.max_entries || self.bytes >= self.max_bytes
    }

    /// The `Gap` of what was dropped, once a slot is free (a gap may use
    /// the last slot before the entry bound, and exceed the byte bound).
    fn write_gap(&mut self) {
        let Some(d) = self.dropped else { return };
        if self.unacked.len() >= self.max_entries {
            return;
        }
        self.dropped = None;
        let reason = format!(
            "eventprobe's buffer of entries not yet acknowledged by the collector was full ({} entries, {} MiB)",
            self.max_entries,
            self.max_bytes >> 20
        );
        self.append(Entry { mono_ns: d.mono_ns, wall_ns: d.wall_ns, event: Event::Gap { lost: d.lost, reason } });
    }

    fn append(&mut self, entry: Entry) -> bool {
        let seq = self.next_seq;
        let feed = Feed { source: self.source.clone(), seq, entry };
        let mut line = match serde_json::to_string(&feed) {
            Ok(l) => l,
            Err(e) => {
                // Not reachable with these types; counted rather than lost silently.
                tracing::error!("blackbox: cannot encode an entry: {e}");
                self.stats.dropped += 1;
                return false;
            }
        };
        line.push('\n');
        self.next_seq += 1;
        self.bytes += line.len();
        self.unacked.push_back((seq, line));
        self.stats.queued += 1;
        true
    }

    /// The collector wrote every entry up to `seq`.
    pub fn ack(&mut self, seq: u64) {
        let seq = seq.min(self.next_seq - 1);
        if seq <= self.acked {
            return;
        }
        while self.unacked.front().is_some_and(|(s, _)| *s <= seq) {
            if let Some((_, line)) = self.unacked.pop_front() {
                self.bytes -= line.len();
            }
        }
        self.stats.acked += seq - self.acked;
        self.acked = seq;
        self.sent = self.sent.max(seq);
        self.write_gap();
    }

    /// A new connection: everything not acknowledged is sent again.
    pub fn rewind(&mut self) {
        self.sent = self.acked;
    }

    /// The lines not yet written on this connection, at most about
    /// `max_bytes` (at least one line), or None.
    pub fn take_batch(&mut self, max_bytes: usize) -> Option<Vec<u8>> {
        let front = self.unacked.front()?.0;
        let from = (self.sent + 1).saturating_sub(front) as usize;
        let mut out = Vec::new();
        for (seq, line) in self.unacked.iter().skip(from) {
            if !out.is_empty() && out.len() + line.len() > max_bytes {
                break;
            }
            out.extend_from_slice(line.as_bytes());
            self.sent = *seq;
        }
        (!out.is_empty()).then_some(out)
    }

    /// Nothing left to send or to be acknowledged.
    pub fn is_drained(&self) -> bool {
        self.unacked.is_empty() && self.dropped.is_none()
    }

    /// Entries waiting for their acknowledgement.
    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }

    pub fn stats(&self) -> OutboxStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(i: u64) -> Entry {
        Entry { mono_ns: i, wall_ns: 1_000 + i, event: Event::Marker { text: format!("m{i}") } }
    }

    fn feeds(batch: &[u8]) -> Vec<Feed> {
        std::str::from_utf8(batch).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[test]
    fn numbers_from_one_and_resends_only_what_is_unacknowledged() {
        let mut o = Outbox::new("ab12".into(), 100, 1 << 20);
        for i in 0..5 {
            assert!(o.push(marker(i)));
        }
        let b = feeds(&o.take_batch(1 << 20).unwrap());
        assert_eq!(b.iter().map(|f| f.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
        assert!(b.iter().all(|f| f.source == "ab12"));
        assert_eq!(b[2].entry, marker(2));
        assert!(o.take_batch(1 << 20).is_none(), "sent once per connection");
        o.ack(3);
        assert_eq!(o.unacked(), 2);
        // Reconnected: 4 and 5 again, never 1-3.
        o.rewind();
        o.push(marker(5));
        let b = feeds(&o.take_batch(1 << 20).unwrap());
        assert_eq!(b.iter().map(|f| f.seq).collect::<Vec<_>>(), vec![4, 5, 6]);
        o.ack(6);
        assert!(o.is_drained());
        assert_eq!(o.stats(), OutboxStats { queued: 6, acked: 6, dropped: 0 });
        // Stale and future acks change nothing.
        o.ack(2);
        o.ack(99);
        assert_eq!(o.stats().acked, 6);
    }

    #[test]
    fn batches_are_bounded_but_never_empty() {
        let mut o = Outbox::new("s".into(), 100, 1 << 20);
        for i in 0..10 {
            o.push(marker(i));
        }
        let one = o.take_batch(1).unwrap();
        assert_eq!(feeds(&one).len(), 1, "at least one line");
        let line = one.len();
        let b = o.take_batch(line * 3).unwrap();
        assert_eq!(feeds(&b).iter().map(|f| f.seq).collect::<Vec<_>>(), vec![2, 3, 4]);
    }

    #[test]
    fn a_full_outbox_drops_new_entries_into_one_gap() {
        let mut o = Outbox::new("s".into(), 4, 1 << 20);
        for i in 0..4 {
            assert!(o.push(marker(i)));
        }
        for i in 4..10 {
            assert!(!o.push(marker(i)), "full");
        }
        assert_eq!(o.stats().dropped, 6);
        let _ = o.take_batch(1 << 20);
        // Two acknowledged: the gap takes the first free slot, then new
        // entries come after it.
        o.ack(2);
        assert!(o.push(marker(10)));
        let b = feeds(&o.take_batch(1 << 20).unwrap());
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].seq, 5);
        match &b[0].entry.event {
            Event::Gap { lost, reason } => {
                assert_eq!(*lost, 6);
                assert!(reason.contains("not yet acknowledged") && reason.contains("4 entries"), "{reason}");
            }
            e => panic!("not a gap: {e:?}"),
        }
        assert_eq!((b[0].entry.mono_ns, b[0].entry.wall_ns), (4, 1_004), "the time of the first dropped entry");
        assert_eq!((b[1].seq, &b[1].entry), (6, &marker(10)));
        assert!(!o.is_drained());
    }

    #[test]
    fn the_gap_is_written_at_the_ack_even_without_new_entries() {
        let mut o = Outbox::new("s".into(), 2, 1 << 20);
        o.push(marker(0));
        o.push(marker(1));
        assert!(!o.push(marker(2)));
        assert!(!o.is_drained());
        o.ack(2);
        let b = feeds(&o.take_batch(1 << 20).unwrap());
        assert!(matches!(b[0].entry.event, Event::Gap { lost: 1, .. }), "{b:?}");
    }

    #[test]
    fn the_byte_bound_holds_too() {
        let line = {
            let mut o = Outbox::new("s".into(), 100, 1 << 20);
            o.push(marker(0));
            o.take_batch(1 << 20).unwrap().len()
        };
        let mut o = Outbox::new("s".into(), 100, line * 3);
        assert!(o.push(marker(0)) && o.push(marker(1)) && o.push(marker(2)));
        assert!(!o.push(marker(3)));
        assert_eq!(o.unacked(), 3);
    }
}
