//! Which calls send RTP at which media-clock tick **(pure)**.
//!
//! Owns the fan-out's RTP deadlines. Every one is a tick of the 10 ms grid, and calls with the
//! same ptime send on the same ticks (their first packet is ptime-aligned), so thousands of
//! deadlines fall into a handful of runs: one per tick in the next 60 ms, each listing every
//! call due then. Serving a tick walks its run in order, with no heap pop and no comparison of
//! instants per packet, and each call served is appended to the run of its next tick; the
//! run's deadline is computed once. A run's vector is reused when it has been served, so the
//! steady state allocates nothing.
//!
//! Entries are never searched for: when a call ends, moves or its next tick changes, its old
//! entry stays and the fan-out recognises it as stale when it comes up (the slot's generation
//! and the call's next tick no longer match), as with the binary heap this replaces.

use std::collections::VecDeque;
use std::time::Instant;

/// One call due at a tick: its slot in the fan-out's call table, and the generation the slot
/// had when the entry was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Due {
    pub slot: u32,
    pub generation: u64,
}

#[derive(Debug)]
struct Run {
    tick: u64,
    deadline: Instant,
    due: Vec<Due>,
}

/// The calls due at each tick, earliest tick first.
#[derive(Debug, Default)]
pub(super) struct Calendar {
    /// In tick order, no two for the same tick; the first is served from `served`.
    runs: VecDeque<Run>,
    /// Entries of the first run already handed out.
    served: usize,
    /// Served runs' vectors, kept for the next runs.
    spare: Vec<Vec<Due>>,
}

impl Calendar {
    /// Adds `due` at `tick`, whose deadline is `deadline` (asked only when the tick has no run
    /// yet). A tick being served takes it at the end of its run.
    pub fn push(&mut self, tick: u64, deadline: impl FnOnce() -> Instant, due: Due) {
        // New entries almost always go to the last run or one near it.
        let mut at = 0;
        for i in (0..self.runs.len()).rev() {
            let run = &mut self.runs[i];
            if run.tick == tick {
                run.due.push(due);
                return;
            }
            if run.tick < tick {
                at = i + 1;
                break;
            }
        }
        if at == 0 && self.served > 0 {
            // A tick before the one being served (a call moved in late): the served part of
            // that run goes now, so `served` can apply to the new first run.
            if let Some(first) = self.runs.front_mut() {
                first.due.drain(..self.served);
            }
            self.served = 0;
        }
        let mut entries = self.spare.pop().unwrap_or_default();
        entries.push(due);
        self.runs.insert(
            at,
            Run {
                tick,
                deadline: deadline(),
                due: entries,
            },
        );
    }

    /// The next entry: its tick, that tick's deadline, and the call.
    pub fn peek(&self) -> Option<(u64, Instant, Due)> {
        let run = self.runs.front()?;
        Some((run.tick, run.deadline, run.due[self.served]))
    }

    /// The earliest deadline with an entry (stale or not).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.runs.front().map(|r| r.deadline)
    }

    /// Drops the entry [`Calendar::peek`] returned.
    pub fn pop(&mut self) {
        let Some(first) = self.runs.front() else {
            return;
        };
        self.served += 1;
        if self.served >= first.due.len() {
            self.served = 0;
            if let Some(mut run) = self.runs.pop_front() {
                run.due.clear();
                self.spare.push(run.due);
            }
        }
    }

    /// Entries, stale ones included (for tests).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.runs.iter().map(|r| r.due.len()).sum::<usize>() - self.served
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn due(slot: u32) -> Due {
        Due {
            slot,
            generation: 0,
        }
    }

    fn drain(c: &mut Calendar) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        while let Some((tick, _, d)) = c.peek() {
            out.push((tick, d.slot));
            c.pop();
        }
        out
    }

    #[test]
    fn entries_come_out_by_tick_then_in_the_order_they_came() {
        let epoch = Instant::now();
        let at = |t: u64| move || epoch + Duration::from_millis(10 * t);
        let mut c = Calendar::default();
        for (tick, slot) in [(4, 1), (2, 2), (6, 3), (2, 4), (4, 5), (0, 6), (3, 7)] {
            c.push(tick, at(tick), due(slot));
        }
        assert_eq!(c.next_deadline(), Some(epoch));
        assert_eq!(c.len(), 7);
        assert_eq!(
            drain(&mut c),
            [(0, 6), (2, 2), (2, 4), (3, 7), (4, 1), (4, 5), (6, 3)]
        );
        assert_eq!(c.next_deadline(), None);
    }

    #[test]
    fn a_tick_being_served_takes_new_entries_at_its_end_and_an_earlier_one_goes_first() {
        let epoch = Instant::now();
        let at = |t: u64| move || epoch + Duration::from_millis(10 * t);
        let mut c = Calendar::default();
        for slot in 0..4 {
            c.push(10, at(10), due(slot));
        }
        c.pop();
        c.pop();
        c.push(10, at(10), due(9));
        c.push(8, at(8), due(8));
        assert_eq!(
            c.peek().map(|(t, d, e)| (t, d, e.slot)),
            Some((8, at(8)(), 8))
        );
        assert_eq!(drain(&mut c), [(8, 8), (10, 2), (10, 3), (10, 9)]);
        // The served runs' vectors are reused.
        assert!(!c.spare.is_empty());
        c.push(12, at(12), due(1));
        assert_eq!(drain(&mut c), [(12, 1)]);
    }
}
