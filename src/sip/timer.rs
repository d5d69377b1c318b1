//! SIP transaction time (RFC 3261 §17), pure: the named constants T1/T2/T4, the one
//! retransmission schedule every transaction kind uses ([`Retransmit`]: Timers A/B, E/F, G/H
//! and the 2xx retransmission of §13.3.1.4), and a table of one-shot timers ([`TimerTable`],
//! as quinn-proto's) whose earliest entry is the owner's next wake-up.
//!
//! Nothing here reads a clock: every call takes `now`, so tests run the schedule on a virtual
//! clock.

use std::marker::PhantomData;
use std::time::{Duration, Instant};

/// RTT estimate (RFC 3261 §17.1.1.1).
pub const T1: Duration = Duration::from_millis(500);
/// Maximum retransmit interval for non-INVITE requests and INVITE responses.
pub const T2: Duration = Duration::from_secs(4);
/// Maximum duration a message remains in the network.
pub const T4: Duration = Duration::from_secs(5);
/// How long a transaction waits for its answer before giving up (Timers B, F, H): 64 × T1.
pub const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(32);

/// What a [`Retransmit`] schedule says at a timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Step {
    /// Send the message again.
    Fire,
    /// The deadline passed: the transaction has failed (or stops waiting).
    GiveUp,
    /// Nothing is due yet.
    Idle,
}

/// A message sent at T1, 2×T1, 4×T1 … intervals capped at T2, until `deadline`.
///
/// Retransmission may be off (reliable transports, or after a provisional response to an
/// INVITE) while the deadline still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retransmit {
    /// When to send again; `None` once retransmission is off.
    next: Option<Instant>,
    /// The gap before `next`; the one after it is twice this, at most T2.
    interval: Duration,
    /// When to give up.
    deadline: Instant,
}

impl Retransmit {
    /// Just sent at `now`: retransmit at T1 unless the transport is `reliable`, give up after
    /// `timeout` (usually [`TRANSACTION_TIMEOUT`]).
    pub fn new(now: Instant, reliable: bool, timeout: Duration) -> Retransmit {
        Retransmit {
            next: (!reliable).then_some(now + T1),
            interval: T1,
            deadline: now + timeout,
        }
    }

    /// Only the deadline, no retransmission (e.g. a transaction lingering to absorb
    /// retransmissions).
    pub fn deadline_only(deadline: Instant) -> Retransmit {
        Retransmit {
            next: None,
            interval: T1,
            deadline,
        }
    }

    /// Advances the schedule: the deadline wins over a retransmission due at the same time.
    pub fn on_timeout(&mut self, now: Instant) -> Step {
        if self.deadline <= now {
            self.next = None;
            return Step::GiveUp;
        }
        match self.next {
            Some(at) if at <= now => {
                self.interval = (self.interval * 2).min(T2);
                self.next = Some(now + self.interval);
                Step::Fire
            }
            _ => Step::Idle,
        }
    }

    /// Stops retransmitting; the deadline still stands (Timer A after a provisional).
    pub fn stop(&mut self) {
        self.next = None;
    }

    /// From the next retransmission on, every T2 (a non-INVITE client transaction in
    /// Proceeding, §17.1.2.2).
    pub fn slow_to_t2(&mut self) {
        self.interval = T2;
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The earliest of the next retransmission and the deadline.
    pub fn next_timeout(&self) -> Instant {
        self.next.map_or(self.deadline, |n| n.min(self.deadline))
    }
}

/// A kind of one-shot timer: an enum whose variants index a [`TimerTable`].
pub trait TimerKind: Copy + 'static {
    /// Every variant, in index order.
    const ALL: &'static [Self];
    fn index(self) -> usize;
}

/// One deadline per timer kind `K` (`N` = the number of kinds), as quinn-proto's `TimerTable`:
/// the owner's next wake-up is [`TimerTable::next_timeout`], and [`TimerTable::expired`]
/// clears and names the timers that are due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerTable<K, const N: usize> {
    data: [Option<Instant>; N],
    kind: PhantomData<K>,
}

impl<K: TimerKind, const N: usize> Default for TimerTable<K, N> {
    fn default() -> Self {
        debug_assert_eq!(K::ALL.len(), N, "one slot per timer kind");
        TimerTable {
            data: [None; N],
            kind: PhantomData,
        }
    }
}

impl<K: TimerKind, const N: usize> TimerTable<K, N> {
    pub fn set(&mut self, timer: K, at: Instant) {
        if let Some(slot) = self.data.get_mut(timer.index()) {
            *slot = Some(at);
        }
    }

    pub fn stop(&mut self, timer: K) {
        if let Some(slot) = self.data.get_mut(timer.index()) {
            *slot = None;
        }
    }

    pub fn get(&self, timer: K) -> Option<Instant> {
        self.data.get(timer.index()).copied().flatten()
    }

    pub fn is_running(&self, timer: K) -> bool {
        self.get(timer).is_some()
    }

    /// Clears `timer` and returns true if it was due at `now`.
    pub fn take_expired(&mut self, timer: K, now: Instant) -> bool {
        let due = self.get(timer).is_some_and(|at| at <= now);
        if due {
            self.stop(timer);
        }
        due
    }

    /// Clears every timer due at `now` and returns them, in [`TimerKind::ALL`] order.
    pub fn expired(&mut self, now: Instant) -> impl Iterator<Item = K> + use<K, N> {
        let due: Vec<K> = K::ALL
            .iter()
            .copied()
            .filter(|&t| self.take_expired(t, now))
            .collect();
        due.into_iter()
    }

    /// The earliest running timer.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.data.iter().flatten().min().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Steps a schedule on a virtual clock from one wake-up to the next, recording when it
    /// fires, until it gives up.
    fn run(mut r: Retransmit, t0: Instant) -> (Vec<Duration>, Duration) {
        let mut fired = Vec::new();
        for _ in 0..100 {
            let now = r.next_timeout();
            match r.on_timeout(now) {
                Step::Fire => fired.push(now - t0),
                Step::GiveUp => return (fired, now - t0),
                Step::Idle => panic!("woken at {:?} for nothing", now - t0),
            }
        }
        panic!("never gave up");
    }

    #[test]
    fn schedule_doubles_from_t1_caps_at_t2_and_gives_up_at_64_t1() {
        let t0 = Instant::now();
        let (fired, gave_up) = run(Retransmit::new(t0, false, TRANSACTION_TIMEOUT), t0);
        // Gaps of 0.5, 1, 2, 4, 4, 4 … s after the first send at 0.
        let ms = |v: &[u64]| {
            v.iter()
                .map(|&m| Duration::from_millis(m))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            fired,
            ms(&[
                500, 1500, 3500, 7500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500
            ])
        );
        assert_eq!(gave_up, Duration::from_secs(32));
        assert_eq!(64 * T1, TRANSACTION_TIMEOUT);
    }

    #[test]
    fn reliable_transports_only_wait() {
        let t0 = Instant::now();
        let (fired, gave_up) = run(Retransmit::new(t0, true, TRANSACTION_TIMEOUT), t0);
        assert!(fired.is_empty());
        assert_eq!(gave_up, 64 * T1);
    }

    #[test]
    fn stop_and_slow_to_t2() {
        let t0 = Instant::now();
        let mut r = Retransmit::new(t0, false, TRANSACTION_TIMEOUT);
        assert_eq!(r.on_timeout(t0 + Duration::from_millis(499)), Step::Idle);
        // A provisional at 0.2 s to a non-INVITE: the 0.5 s retransmission stands, then T2.
        r.slow_to_t2();
        let (fired, _) = run(r, t0);
        assert_eq!(&fired[..3], &[T1, T1 + T2, T1 + 2 * T2]);
        // A provisional to an INVITE: no more retransmissions, the deadline stays.
        let mut r = Retransmit::new(t0, false, Duration::from_secs(10));
        r.stop();
        assert_eq!(r.next_timeout(), t0 + Duration::from_secs(10));
        assert_eq!(r.on_timeout(t0 + Duration::from_secs(9)), Step::Idle);
        assert_eq!(r.on_timeout(t0 + Duration::from_secs(10)), Step::GiveUp);
    }

    #[test]
    fn a_late_wake_up_gives_up_rather_than_fires() {
        let t0 = Instant::now();
        let mut r = Retransmit::new(t0, false, TRANSACTION_TIMEOUT);
        assert_eq!(r.on_timeout(t0 + Duration::from_secs(40)), Step::GiveUp);
        let mut r = Retransmit::deadline_only(t0 + T4);
        assert_eq!(r.next_timeout(), t0 + T4);
        assert_eq!(r.on_timeout(t0 + T4), Step::GiveUp);
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Kind {
        A,
        B,
        C,
    }

    impl TimerKind for Kind {
        const ALL: &'static [Kind] = &[Kind::A, Kind::B, Kind::C];
        fn index(self) -> usize {
            self as usize
        }
    }

    #[test]
    fn table_wakes_at_the_earliest_and_clears_what_expired() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut t = TimerTable::<Kind, 3>::default();
        assert_eq!(t.next_timeout(), None);
        t.set(Kind::C, t0 + 3 * s);
        t.set(Kind::A, t0 + 2 * s);
        t.set(Kind::B, t0 + 2 * s);
        assert_eq!(t.next_timeout(), Some(t0 + 2 * s));
        assert_eq!(t.expired(t0 + s).count(), 0);
        assert_eq!(
            t.expired(t0 + 2 * s).collect::<Vec<_>>(),
            vec![Kind::A, Kind::B]
        );
        assert_eq!(t.next_timeout(), Some(t0 + 3 * s));
        t.stop(Kind::C);
        assert!(!t.is_running(Kind::C));
        assert_eq!(t.next_timeout(), None);
        t.set(Kind::B, t0);
        assert!(t.take_expired(Kind::B, t0));
        assert!(!t.take_expired(Kind::B, t0));
    }
}
