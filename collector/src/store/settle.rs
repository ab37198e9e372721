//! The journal's other lines, all written from here: final fates of
//! spooled records (delivered, refused, given up, unsendable, expired,
//! lost) and the first entries recovery finds missing. A record's final
//! fate is gathered in one call ([`Settle::finish`]); a round's lines go to
//! the journal's one writer thread together ([`Settle::commit`]), and the
//! records leave the spool only once those lines are written: a process
//! killed in between finds them still spooled (and their fates in the
//! journal, so they are not sent again), never gone from both.

use std::sync::Arc;

use crate::journal::{Fate, Line};
use crate::spool::{Dest, Item, Ticket};
use crate::state::State;
use crate::stats::bump;

/// Final fates gathered over one round of delivery.
#[derive(Debug, Default)]
#[must_use = "the records leave the spool only at Settle::commit"]
pub struct Settle {
    lines: Vec<Line>,
    /// Their tickets, given back to the spool once the lines are written.
    tickets: Vec<Ticket>,
}

impl Settle {
    /// The spooled record of ticket `t` has its final fate at the ticket's
    /// destination: the fate is queued for the journal (marked with the
    /// destination unless it is the original backend), and the record
    /// leaves the spool once it is final at every destination (after
    /// [`commit`](Self::commit)).
    pub fn finish(&mut self, t: &Ticket, fate: Fate) {
        self.lines.push(Line::fate(t.item.record_id, at(t.dest, fate)));
        self.tickets.push(t.clone());
    }

    /// Queues the gathered lines for the journal's writer; their records
    /// are given back to the spool once the lines are written (a journal
    /// that cannot write them is logged by it, and they are given back
    /// all the same: the spool does not keep delivered records for it).
    pub fn commit(self, state: &State) {
        if self.lines.is_empty() {
            return;
        }
        let tickets = self.tickets;
        then_spool(state, self.lines, move |spool| {
            for t in &tickets {
                spool.done(t);
            }
        });
    }
}

/// `fate` as journaled for destination `dest`.
pub fn at(dest: Dest, fate: Fate) -> Fate {
    match dest {
        Dest::Server => fate,
        other => Fate::At(other, Box::new(fate)),
    }
}

/// Counts and journals records the spool let go for age; their files go
/// back to the free pool once the lines are written (see
/// [`crate::spool::Spool::expire`]).
pub fn expired(state: &State, expired: crate::spool::Expired) {
    let crate::spool::Expired { items, files } = expired;
    if items.is_empty() {
        state.spool.recycle(files);
        return;
    }
    bump(&state.stats.expired, items.len() as u64);
    bump(&state.stats.dropped, items.len() as u64);
    tracing::info!("{} spooled record(s) expired (older than record_expiry)", items.len());
    let fate = Fate::Dropped("expired".into());
    let lines = items.iter().map(|i| Line::fate(i.record_id, fate.clone())).collect();
    then_spool(state, lines, move |spool| spool.recycle(files));
}

/// Queues `lines` for the journal and runs `then` on the spool once they
/// are written (whether or not the journal could write them: a failed
/// write is logged by it, and the spool does not keep records for it).
fn then_spool(state: &State, lines: Vec<Line>, then: impl FnOnce(&crate::spool::Spool) + Send + 'static) {
    let spool = state.spool.clone();
    state.journal.append_after_write(lines, Box::new(move |_written| then(&spool)));
}

/// Counts and journals the records of spool blocks that could not be read
/// back.
pub fn lost(state: &State) {
    let lost = state.spool.take_lost();
    if lost.is_empty() {
        return;
    }
    let mut lines = Vec::new();
    for l in lost {
        bump(&state.stats.dropped, l.ids.len() as u64);
        lines.extend(l.ids.iter().map(|id| Line::fate(*id, Fate::Dropped(l.why.clone()))));
    }
    state.journal.append(lines, None);
}

/// Journals first entries for spooled records recovery found without one
/// (cut off by a crash between the spool's fdatasync and the journal's).
pub fn recovered(state: &State, items: Vec<(Item, Fate)>, payload: bool) {
    if items.is_empty() {
        return;
    }
    tracing::info!("journal: {} spooled record(s) had no entry (cut off by a crash); journaled them now", items.len());
    let lines = items
        .into_iter()
        .map(|(item, fate)| Line::First {
            time: item.accepted,
            item: Arc::new(item),
            boot: state.boot_id.clone(),
            fate,
            payload,
        })
        .collect();
    state.journal.append(lines, None);
}
