//! The journal's other lines, all written from here: final fates of
//! spooled records (delivered, refused, given up, unsendable, expired,
//! lost) and the first entries recovery finds missing. A record leaves the
//! spool and its fate is queued for the journal in one call
//! ([`Settle::finish`]), so the two never disagree; a round's lines go to
//! the journal's one writer thread together ([`Settle::commit`]).

use std::sync::Arc;

use crate::journal::{Fate, Line};
use crate::spool::{Dest, Item, Ticket};
use crate::state::State;
use crate::stats::bump;

/// Final fates gathered over one round of delivery.
#[derive(Debug, Default)]
pub struct Settle {
    lines: Vec<Line>,
}

impl Settle {
    /// The spooled record of ticket `t` has its final fate at the ticket's
    /// destination: the fate is queued for the journal (marked with the
    /// destination unless it is the original backend), and the record
    /// leaves the spool once it is final at every destination.
    pub fn finish(&mut self, state: &State, t: &Ticket, fate: Fate) {
        state.spool.done(t);
        self.lines.push(Line::fate(t.item.record_id, at(t.dest, fate)));
    }

    /// Queues the gathered lines for the journal's writer.
    pub fn commit(self, state: &State) {
        if !self.lines.is_empty() {
            state.journal.append(self.lines, None);
        }
    }
}

/// `fate` as journaled for destination `dest`.
pub fn at(dest: Dest, fate: Fate) -> Fate {
    match dest {
        Dest::Server => fate,
        other => Fate::At(other, Box::new(fate)),
    }
}

/// Counts and journals records the spool already let go for age.
pub fn expired(state: &State, items: &[Item]) {
    if items.is_empty() {
        return;
    }
    bump(&state.stats.expired, items.len() as u64);
    bump(&state.stats.dropped, items.len() as u64);
    tracing::info!("{} spooled record(s) expired (older than record_expiry)", items.len());
    let fate = Fate::Dropped("expired".into());
    state.journal.append(items.iter().map(|i| Line::fate(i.record_id, fate.clone())).collect(), None);
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
