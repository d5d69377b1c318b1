//! Which media thread takes a new call, and when calls move between threads **(pure)**.
//!
//! Owns the arithmetic only: the media threads publish what they measured ([`ThreadLoad`]:
//! calls, and work time over the last second), and this module turns that into a choice.
//!
//! **Load** is measured work, not a count of calls: an SRTP call, a 10 ms call or an Opus
//! call costs more than a plain 20 ms G.711 one, and a thread's sockets may cost more than
//! another's. A thread's *estimated* work is its measured work scaled by how its calls
//! changed since the measurement (`busy × calls / measured_calls`), so a burst of new calls
//! counts at once rather than a second later; a thread that had no calls then is charged
//! the average cost of a call on the others. Estimates are compared in steps of
//! [`LOAD_STEP_NS`] (1 % of a core): below that, measurements are noise, and the call count
//! decides.
//!
//! **Placement.** A new call goes to the thread with the least estimated work (ties: fewer
//! calls, then the lower index).
//!
//! **Rebalancing.** Calls leave as they please, so threads drift apart. When the heaviest
//! thread's estimate exceeds the lightest's by more than a margin for a while
//! ([`Rebalance`]), the heaviest moves calls to the lightest: as many as close half the gap
//! at its own cost per call (never so many that the two would swap places), at most
//! [`MAX_MOVES`] at a time, then waits the same while again before the next step. Each
//! thread runs this for itself, on its own measurements' schedule, and acts only when it is
//! the heaviest: no coordinator, and the calls move between the source's packets.

use std::time::{Duration, Instant};

/// Estimates closer than this (ns of work per second: 1 % of a core) count as equal.
pub const LOAD_STEP_NS: u64 = 10_000_000;
/// At most this many calls move in one step: a move costs the source a pass over the
/// calls' state, and the destination's first packets of them.
pub const MAX_MOVES: u64 = 64;

/// What one media thread published.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThreadLoad {
    /// Calls it serves now (or has been given).
    pub calls: u64,
    /// Calls it served when it last measured.
    pub measured_calls: u64,
    /// Work time over the last measurement window, ns per second.
    pub busy_ns_per_s: u64,
}

/// When the threads count as unbalanced enough to move calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rebalance {
    /// Estimated work the heaviest must exceed the lightest by, ns per second.
    pub margin_ns_per_s: u64,
    /// For at least this long.
    pub hold: Duration,
}

impl Default for Rebalance {
    /// 10 % of a core for 3 s: threads that both have room are left alone; a move is worth
    /// it when one thread nears its budget while another idles.
    fn default() -> Self {
        Rebalance {
            margin_ns_per_s: 100_000_000,
            hold: Duration::from_secs(3),
        }
    }
}

/// The average measured cost of a call, ns per second, over the threads that had calls.
fn average_cost(loads: &[ThreadLoad]) -> u64 {
    let (busy, calls) = loads
        .iter()
        .filter(|l| l.measured_calls > 0)
        .fold((0u64, 0u64), |(b, c), l| {
            (b.saturating_add(l.busy_ns_per_s), c + l.measured_calls)
        });
    busy.checked_div(calls).unwrap_or(0)
}

/// A thread's estimated work now, ns per second (see the module docs).
pub fn estimated_work(load: &ThreadLoad, average_cost: u64) -> u64 {
    if load.measured_calls == 0 {
        load.busy_ns_per_s
            .saturating_add(load.calls.saturating_mul(average_cost))
    } else {
        let scaled = u128::from(load.busy_ns_per_s) * u128::from(load.calls)
            / u128::from(load.measured_calls);
        u64::try_from(scaled).unwrap_or(u64::MAX)
    }
}

/// Per thread: (estimate in [`LOAD_STEP_NS`] steps, calls), the order threads compare in.
fn ranks(loads: &[ThreadLoad]) -> impl Iterator<Item = (usize, (u64, u64), u64)> + '_ {
    let average = average_cost(loads);
    loads.iter().enumerate().map(move |(i, l)| {
        let work = estimated_work(l, average);
        (i, (work / LOAD_STEP_NS, l.calls), work)
    })
}

/// The thread a new call goes to; 0 when there are none.
pub fn least_loaded(loads: &[ThreadLoad]) -> usize {
    ranks(loads)
        .min_by_key(|&(i, rank, _)| (rank, i))
        .map_or(0, |(i, ..)| i)
}

/// A step of rebalancing: move `calls` calls to thread `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    pub to: usize,
    pub calls: u64,
}

/// One thread's view of whether to shed calls (its hysteresis).
#[derive(Debug, Clone)]
pub struct Rebalancer {
    policy: Rebalance,
    /// Since when this thread has been the heaviest by more than the margin.
    unbalanced_since: Option<Instant>,
}

impl Rebalancer {
    pub fn new(policy: Rebalance) -> Self {
        Rebalancer {
            policy,
            unbalanced_since: None,
        }
    }

    /// What thread `me` should move now, given every thread's load; `None`: nothing.
    pub fn decide(&mut self, now: Instant, me: usize, loads: &[ThreadLoad]) -> Option<Move> {
        let step = self.step(me, loads);
        let Some(step) = step else {
            self.unbalanced_since = None;
            return None;
        };
        let since = *self.unbalanced_since.get_or_insert(now);
        if now.saturating_duration_since(since) < self.policy.hold {
            return None;
        }
        // The next step waits as long again: the loads it sees must include this one's.
        self.unbalanced_since = Some(now);
        Some(step)
    }

    fn step(&self, me: usize, loads: &[ThreadLoad]) -> Option<Move> {
        let heaviest = ranks(loads).max_by_key(|&(i, rank, _)| (rank, std::cmp::Reverse(i)))?;
        let lightest = ranks(loads).min_by_key(|&(i, rank, _)| (rank, i))?;
        let ((h, _, work_h), (l, _, work_l)) = (heaviest, lightest);
        if h != me || h == l {
            return None;
        }
        let gap = work_h.saturating_sub(work_l);
        if gap <= self.policy.margin_ns_per_s {
            return None;
        }
        let calls = loads.get(h)?.calls;
        let cost = (work_h / calls.max(1)).max(1);
        let n = (gap / 2 / cost).min(MAX_MOVES).min(calls);
        (n > 0).then_some(Move { to: l, calls: n })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(calls: u64, busy_ms: u64) -> ThreadLoad {
        ThreadLoad {
            calls,
            measured_calls: calls,
            busy_ns_per_s: busy_ms * 1_000_000,
        }
    }

    #[test]
    fn new_calls_go_to_the_least_work_then_the_fewest_calls() {
        // Idle threads: the call count decides, then the index.
        assert_eq!(least_loaded(&[load(0, 0), load(0, 0)]), 0);
        assert_eq!(least_loaded(&[load(3, 1), load(2, 1)]), 1);
        // Noise below a step does not override the count.
        assert_eq!(least_loaded(&[load(100, 304), load(101, 301)]), 0);
        // Fewer calls but more work (SRTP, 10 ms ptime): the other thread.
        assert_eq!(least_loaded(&[load(100, 500), load(150, 300)]), 1);
        // No threads (never in mohd): the first index.
        assert_eq!(least_loaded(&[]), 0);
    }

    #[test]
    fn a_burst_of_new_calls_counts_before_it_is_measured() {
        // Thread 0 measured 100 calls at 200 ms/s, then was given 100 more (400 ms/s by
        // estimate): the next call goes to thread 1 (300 ms/s).
        let mut loads = [load(100, 200), load(150, 300)];
        loads[0].calls = 200;
        assert_eq!(least_loaded(&loads), 1);
        // A thread with no calls when it measured is charged the others' average per call.
        let loads = [
            ThreadLoad {
                calls: 50,
                measured_calls: 0,
                busy_ns_per_s: 1_000_000,
            },
            load(40, 80),
        ];
        // 1 ms + 50 × 2 ms = 101 ms/s against 80 ms/s.
        assert_eq!(estimated_work(&loads[0], average_cost(&loads)), 101_000_000);
        assert_eq!(least_loaded(&loads), 1);
    }

    #[test]
    fn the_heaviest_sheds_half_the_gap_after_the_hold_and_only_it() {
        let t0 = Instant::now();
        let policy = Rebalance {
            margin_ns_per_s: 100_000_000,
            hold: Duration::from_secs(3),
        };
        let loads = [load(400, 800), load(100, 200)];
        let mut heavy = Rebalancer::new(policy);
        let mut light = Rebalancer::new(policy);
        assert_eq!(heavy.decide(t0, 0, &loads), None, "not for long enough yet");
        assert_eq!(light.decide(t0, 1, &loads), None, "never the lighter one");
        assert_eq!(heavy.decide(t0 + Duration::from_secs(2), 0, &loads), None);
        // Gap 600 ms/s at 2 ms/s a call: 150 calls would even it out, capped per step.
        assert_eq!(
            heavy.decide(t0 + Duration::from_secs(3), 0, &loads),
            Some(Move {
                to: 1,
                calls: MAX_MOVES
            })
        );
        // The next step waits a hold again.
        assert_eq!(heavy.decide(t0 + Duration::from_secs(4), 0, &loads), None);
        assert!(
            heavy
                .decide(t0 + Duration::from_secs(6), 0, &loads)
                .is_some()
        );
        // A small gap: half of it, in calls.
        let mut heavy = Rebalancer::new(policy);
        let loads = [load(60, 180), load(0, 0)];
        heavy.decide(t0, 0, &loads);
        assert_eq!(
            heavy.decide(t0 + Duration::from_secs(3), 0, &loads),
            Some(Move { to: 1, calls: 30 })
        );
    }

    #[test]
    fn balance_within_the_margin_or_a_broken_streak_moves_nothing() {
        let t0 = Instant::now();
        let mut r = Rebalancer::new(Rebalance::default());
        let close = [load(300, 600), load(260, 520)];
        for s in 0..10 {
            assert_eq!(r.decide(t0 + Duration::from_secs(s), 0, &close), None);
        }
        // Unbalanced, then balanced for a moment: the hold starts again.
        let far = [load(400, 800), load(100, 200)];
        r.decide(t0, 0, &far);
        r.decide(t0 + Duration::from_secs(2), 0, &close);
        assert_eq!(r.decide(t0 + Duration::from_secs(4), 0, &far), None);
        assert!(r.decide(t0 + Duration::from_secs(7), 0, &far).is_some());
        // A margin of zero still never moves a single call back and forth.
        let mut r = Rebalancer::new(Rebalance {
            margin_ns_per_s: 0,
            hold: Duration::ZERO,
        });
        assert_eq!(r.decide(t0, 0, &[load(3, 3), load(2, 2)]), None);
        assert_eq!(
            r.decide(t0, 0, &[load(4, 4), load(0, 0)]),
            Some(Move { to: 1, calls: 2 })
        );
    }
}
