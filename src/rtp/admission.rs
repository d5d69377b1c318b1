//! Admission control: how many calls the media threads can carry on time, measured, and the
//! one gate that says whether a new call may come in.
//!
//! The media threads add up the time they spend working (`MediaStats::busy_ns`: sending,
//! reading peers, applying commands; not the time asleep until a deadline). Fed about once a
//! second with that counter, the RTP packets sent and the calls up, [`Admission`] learns the
//! cost of one packet (work time / packets, smoothed: quick to rise, slow to fall) and the
//! packets one call sends per second, and turns them into a capacity:
//!
//! ```text
//! capacity = threads × budget × 1 s / (cost per packet × packets per call per second)
//! ```
//!
//! where `budget` is the share of each media thread's time calls may use (`[calls]
//! media_budget`, 0.7 by default: the rest absorbs bursts, the peer watch and the scheduler).
//!
//! The media threads need not be alone on the box: a PBX or a load generator on the same
//! machine takes CPU the formula above counts as the media threads'. With `[calls]
//! min_idle_cpu` set (FreeSWITCH's `min-idle-cpu`, made a capacity; off by default, since
//! real-time media threads are not slowed by ordinary processes and a dedicated box has none)
//! and `machine` readings (busy time of the CPUs mohd may run on, from `/proc/stat`),
//!
//! ```text
//! machine capacity = calls now + (cores × (1 − min idle) − cores busy) / machine cost of a call
//! machine cost of a call = (cores busy − cores busy with no calls) / calls now
//! ```
//!
//! and the capacity is the smaller of the two. A call's machine cost is everything the box
//! does beyond its idle load, per call: what the PBX or a receiver on the same box spends on
//! each call counts too (never less than mohd's own measured cost; with fewer than
//! [`MIN_CALLS_FOR_MACHINE_COST`] calls, only that). Counting only mohd's own cost, a
//! load generator on a 2-core box admitted 10,000 calls that the box could not carry.
//! Before enough packets have been measured a conservative prior cost stands in. Lateness
//! guards the estimate: when packets left late during the last window the capacity does not
//! grow, whatever the arithmetic says, because late packets are what admission exists to
//! prevent. Time is an input (`now: Instant`); nothing here reads a clock.
//!
//! [`Gate`] is the decision every new INVITE and every OPTIONS goes through (in
//! `sip::endpoint`): draining refuses everything, then `[calls] max_calls`, then the measured
//! capacity. Calls in progress are never touched: admission only ever refuses new ones.

use std::time::{Duration, Instant};

/// The share of each media thread's time calls may use, unless configured.
pub const DEFAULT_MEDIA_BUDGET: f64 = 0.7;
/// Cost of one packet assumed before one is measured: about twice what this project measured
/// on a small 2-core box (4.5 µs of CPU per packet, kernel send included), so a fresh box
/// admits less than it could rather than more.
pub const PRIOR_COST_PER_PACKET: Duration = Duration::from_micros(10);
/// Packets per call per second assumed, and the least ever assumed: 20 ms packets. A call
/// on hold the other way (inactive) sends nothing now but may resume at any moment.
pub const MIN_PACKETS_PER_CALL_PER_SECOND: f64 = 50.0;
/// Fewer packets than this in a window say more about the loop's fixed costs (wake-ups, the
/// peer watch) than about a packet's: the estimate is left as it was.
const MIN_PACKETS_TO_MEASURE: u64 = 500;
/// A window that used at least this share of the budget measures the cost per packet however
/// few packets it sent.
const BUSY_ENOUGH_TO_MEASURE: f64 = 0.5;
/// Smoothing of the cost per packet: a rise is believed at once (half the step), a fall
/// slowly, so one quiet second does not open the doors.
const RISE: f64 = 0.5;
const FALL: f64 = 0.1;
/// Below this many calls the machine's busy time says more about its other work than about
/// calls: a call's machine cost is then mohd's own.
pub const MIN_CALLS_FOR_MACHINE_COST: u64 = 100;
/// Smoothing of the machine's busy time with no calls.
const BASELINE_STEP: f64 = 0.3;
/// A window shorter than this (two samples in the same instant) measures nothing.
const MIN_WINDOW: Duration = Duration::from_millis(100);

/// What the media side reports, read at `at`. Counters are totals since start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub at: Instant,
    /// `MediaStats::busy_ns`: work time summed over the media threads.
    pub busy_ns: u64,
    /// RTP packets sent.
    pub packets_sent: u64,
    /// RTP packets sent more than 5 ms after their deadline.
    pub packets_late: u64,
    /// Calls the media threads serve now.
    pub active_calls: u64,
    /// Media threads.
    pub threads: usize,
    /// The CPUs mohd may run on, when they can be read.
    pub machine: Option<MachineCpu>,
}

/// The CPUs mohd may run on, read at a [`Sample`]'s instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineCpu {
    /// Their busy time (not idle, not waiting for I/O), summed, since boot.
    pub busy_ns: u64,
    /// How many there are.
    pub cores: usize,
}

/// The measured model. `observe` about once a second; read `capacity` and `budget_use`.
#[derive(Debug, Clone)]
pub struct Admission {
    budget: f64,
    /// `1 − min_idle_cpu`: the share of the machine's CPUs all its work may use; `None`: the
    /// machine is not considered.
    machine_budget: Option<f64>,
    last: Option<Sample>,
    /// Smoothed work time per RTP packet, ns; `None` until measured.
    cost_ns: Option<f64>,
    /// Smoothed packets per call per second (never below the minimum).
    packets_per_call: f64,
    capacity: usize,
    /// Work time of the last window over the time the budget allows in it.
    budget_use: f64,
    /// Share of the machine's CPUs busy in the last window; `None` without readings.
    machine_use: Option<f64>,
    /// Calls the machine's idle CPU leaves room for; `None` without readings.
    machine_capacity: Option<usize>,
    /// Cores busy while no call was up (the box's own load), smoothed; `None` until seen.
    machine_baseline: Option<f64>,
    late_in_last_window: bool,
}

impl Admission {
    /// `budget`: the share (0..1] of each media thread's time calls may use.
    pub fn new(budget: f64, threads: usize) -> Admission {
        let mut a = Admission {
            budget,
            machine_budget: None,
            last: None,
            cost_ns: None,
            packets_per_call: MIN_PACKETS_PER_CALL_PER_SECOND,
            capacity: 0,
            budget_use: 0.0,
            machine_use: None,
            machine_capacity: None,
            machine_baseline: None,
            late_in_last_window: false,
        };
        a.capacity = a.estimate(threads);
        a
    }

    /// Also keeps `min_idle` (0..1) of the machine's CPUs idle (`[calls] min_idle_cpu`).
    pub fn with_min_idle_cpu(mut self, min_idle: Option<f64>) -> Admission {
        self.machine_budget = min_idle.map(|idle| (1.0 - idle).clamp(0.0, 1.0));
        self
    }

    /// Takes a new reading; the window is from the previous one.
    pub fn observe(&mut self, s: Sample) {
        let Some(prev) = self.last.replace(s) else {
            self.capacity = self.estimate(s.threads);
            return;
        };
        let window = s.at.saturating_duration_since(prev.at);
        if window < MIN_WINDOW {
            // Keep the earlier reading as the window's start.
            self.last = Some(prev);
            return;
        }
        let busy = s.busy_ns.saturating_sub(prev.busy_ns) as f64;
        let packets = s.packets_sent.saturating_sub(prev.packets_sent);
        let allowed = s.threads.max(1) as f64 * self.budget * window.as_nanos() as f64;
        self.budget_use = busy / allowed;
        self.late_in_last_window = s.packets_late > prev.packets_late;
        // Few packets measure the loop's fixed costs, not a packet's: trusted only when the
        // thread is busy all the same (then whatever costs, it is real).
        let measurable = packets >= MIN_PACKETS_TO_MEASURE
            || (packets > 0 && self.budget_use >= BUSY_ENOUGH_TO_MEASURE);
        if !measurable {
            // No evidence: an estimate above the prior drifts back to it, so a capacity that
            // fell while the box was slow cannot stay low for want of calls to measure.
            let prior = PRIOR_COST_PER_PACKET.as_nanos() as f64;
            if let Some(old) = self.cost_ns.filter(|&c| c > prior) {
                self.cost_ns = Some(old + FALL * (prior - old));
            }
        } else {
            let cost = busy / packets as f64;
            self.cost_ns = Some(match self.cost_ns {
                None => cost,
                Some(old) => {
                    let k = if cost > old { RISE } else { FALL };
                    old + k * (cost - old)
                }
            });
            // Calls come and go within a window: dividing by the larger count can only
            // under-read, and the floor below takes care of that.
            let calls = s.active_calls.max(prev.active_calls).max(1) as f64;
            let per_call = packets as f64 / window.as_secs_f64() / calls;
            self.packets_per_call = per_call.max(MIN_PACKETS_PER_CALL_PER_SECOND);
        }
        self.machine_capacity = None;
        self.machine_use = None;
        if let (Some(m), Some(p)) = (s.machine, prev.machine)
            && m.cores > 0
        {
            let window_ns = window.as_nanos() as f64;
            let busy_cores = m.busy_ns.saturating_sub(p.busy_ns) as f64 / window_ns;
            let cores = m.cores as f64;
            self.machine_use = Some((busy_cores / cores).min(1.0));
            if s.active_calls == 0 && prev.active_calls == 0 {
                self.machine_baseline = Some(match self.machine_baseline {
                    None => busy_cores,
                    Some(b) => b + BASELINE_STEP * (busy_cores - b),
                });
            }
            if let Some(share) = self.machine_budget {
                // Cores one call keeps busy: mohd's own cost, or what the box spends per call
                // beyond its idle load when there are enough calls to tell.
                let own = self.cost() * self.packets_per_call / 1e9;
                let per_call = if s.active_calls >= MIN_CALLS_FOR_MACHINE_COST {
                    let beyond_idle = busy_cores - self.machine_baseline.unwrap_or(0.0);
                    (beyond_idle / s.active_calls as f64).max(own)
                } else {
                    own
                };
                let calls = s.active_calls as f64 + (cores * share - busy_cores) / per_call;
                self.machine_capacity = Some(calls.max(0.0).round() as usize);
            }
        }
        let estimate = self.estimate(s.threads);
        self.capacity = if self.late_in_last_window {
            estimate.min(self.capacity)
        } else {
            estimate
        };
    }

    /// The media threads' capacity, and the machine's when it is known: the smaller.
    fn estimate(&self, threads: usize) -> usize {
        let per_second = threads.max(1) as f64 * self.budget * 1e9;
        let media = (per_second / (self.cost() * self.packets_per_call)) as usize;
        self.machine_capacity.map_or(media, |m| m.min(media))
    }

    /// Cost of one packet, ns: measured, or the prior.
    fn cost(&self) -> f64 {
        self.cost_ns
            .unwrap_or(PRIOR_COST_PER_PACKET.as_nanos() as f64)
            .max(1.0)
    }

    /// Calls the media threads can carry within the budget (not bounded by `max_calls`).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The last window's work time as a share of the budget (1.0: the budget is used up).
    pub fn budget_use(&self) -> f64 {
        self.budget_use
    }

    /// The last window's busy share of the CPUs mohd may run on; `None` without readings.
    pub fn machine_use(&self) -> Option<f64> {
        self.machine_use
    }

    /// Calls the machine's idle CPU leaves room for (keeping `min_idle_cpu` idle); `None`
    /// without readings or when off. Already part of [`Admission::capacity`].
    pub fn machine_capacity(&self) -> Option<usize> {
        self.machine_capacity
    }

    /// The smoothed cost of one packet; `None` until measured (the prior stands in).
    pub fn cost_per_packet(&self) -> Option<Duration> {
        self.cost_ns.map(|ns| Duration::from_nanos(ns as u64))
    }

    /// Whether packets left late in the last window (the capacity is then held, not raised).
    pub fn late_in_last_window(&self) -> bool {
        self.late_in_last_window
    }
}

/// Why a new call is refused (503). The labels are `/metrics`' `reason` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The box is being drained (`mohd drain`, SIGTERM): no new calls at all.
    Draining,
    /// `[calls] max_calls` reached.
    MaxCalls,
    /// The media threads' measured capacity reached.
    Capacity,
}

impl Refusal {
    pub const ALL: [Refusal; 3] = [Refusal::Capacity, Refusal::MaxCalls, Refusal::Draining];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Draining => "draining",
            Refusal::MaxCalls => "max_calls",
            Refusal::Capacity => "capacity",
        }
    }

    /// `Retry-After`, seconds: a full box frees up as calls end; a draining one is going
    /// away (a proxy should route elsewhere well beyond that).
    pub fn retry_after_s(self) -> u32 {
        match self {
            Refusal::Draining => 60,
            Refusal::MaxCalls | Refusal::Capacity => 5,
        }
    }

    /// The text of the `Warning` header (399 mohd "...").
    pub fn warning(self) -> &'static str {
        match self {
            Refusal::Draining => "draining: no new calls",
            Refusal::MaxCalls => "call limit reached (max_calls)",
            Refusal::Capacity => "media capacity reached",
        }
    }
}

/// The one decision "may a new call come in".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gate {
    /// `[calls] max_calls`.
    pub max_calls: usize,
    /// The measured capacity; `usize::MAX` when not measured (no admission control).
    pub capacity: usize,
    pub draining: bool,
}

impl Gate {
    /// Open: only `max_calls` limits.
    pub fn new(max_calls: usize) -> Gate {
        Gate {
            max_calls,
            capacity: usize::MAX,
            draining: false,
        }
    }

    /// With `in_progress` calls up or being set up, whether one more is refused, and why.
    pub fn refusal(&self, in_progress: usize) -> Option<Refusal> {
        if self.draining {
            Some(Refusal::Draining)
        } else if in_progress >= self.max_calls {
            Some(Refusal::MaxCalls)
        } else if in_progress >= self.capacity {
            Some(Refusal::Capacity)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A media side on a virtual clock: `calls` each sending 50 packets a second at `cost`
    /// per packet, on `threads` threads.
    struct MediaSide {
        now: Instant,
        sample: Sample,
    }

    impl MediaSide {
        fn new(threads: usize) -> MediaSide {
            let now = Instant::now();
            MediaSide {
                now,
                sample: Sample {
                    at: now,
                    busy_ns: 0,
                    packets_sent: 0,
                    packets_late: 0,
                    active_calls: 0,
                    threads,
                    machine: None,
                },
            }
        }

        /// One second with `calls` calls at `cost` per packet, `late` of them late.
        fn second(&mut self, calls: u64, cost: Duration, late: u64) -> Sample {
            self.now += Duration::from_secs(1);
            let packets = calls * 50;
            let s = &mut self.sample;
            s.at = self.now;
            s.busy_ns += packets * cost.as_nanos() as u64;
            s.packets_sent += packets;
            s.packets_late += late;
            s.active_calls = calls;
            *s
        }
    }

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn before_anything_is_measured_the_prior_gives_a_conservative_capacity() {
        let a = Admission::new(0.7, 1);
        // 0.7 s of work a second / (10 µs × 50 packets a call).
        assert_eq!(a.capacity(), 1_400);
        assert_eq!(Admission::new(0.7, 2).capacity(), 2_800);
        assert_eq!(a.cost_per_packet(), None);
        // A few calls measure nothing: their cost is the loop's fixed cost, not a packet's.
        let mut a = Admission::new(0.7, 1);
        let mut b = MediaSide::new(1);
        a.observe(b.second(0, us(0), 0));
        a.observe(b.second(3, us(40), 0));
        assert_eq!(a.capacity(), 1_400);
        assert_eq!(a.cost_per_packet(), None);
    }

    #[test]
    fn capacity_follows_the_measured_cost_per_packet() {
        let mut a = Admission::new(0.7, 2);
        let mut b = MediaSide::new(2);
        a.observe(b.sample);
        a.observe(b.second(100, us(4), 0));
        // 2 × 0.7 s / (4 µs × 50) = 7,000 calls.
        assert_eq!(a.cost_per_packet(), Some(us(4)));
        assert_eq!(a.capacity(), 7_000);
        // 100 calls × 50 × 4 µs = 20 ms of the 1.4 s allowed.
        assert!((a.budget_use() - 0.02 / 1.4).abs() < 1e-9);
    }

    #[test]
    fn a_budget_exceeded_refuses_new_calls_and_a_lighter_load_admits_them_again() {
        let mut a = Admission::new(0.7, 1);
        let mut b = MediaSide::new(1);
        a.observe(b.sample);
        // 1,000 calls at 12 µs a packet: 0.6 s of work a second, within 0.7.
        for _ in 0..3 {
            a.observe(b.second(1_000, us(12), 0));
        }
        let gate = |a: &Admission| Gate {
            max_calls: 4096,
            capacity: a.capacity(),
            draining: false,
        };
        assert_eq!(gate(&a).refusal(1_000), None, "{a:?}");
        // The box slows down (another process, a thermal limit): 20 µs a packet, 1.0 s of
        // work a second, over the budget. The rise is believed within a few seconds.
        for _ in 0..5 {
            a.observe(b.second(1_000, us(20), 0));
        }
        assert!(a.budget_use() > 1.0, "{a:?}");
        assert_eq!(gate(&a).refusal(1_000), Some(Refusal::Capacity), "{a:?}");
        assert!(a.capacity() < 1_000, "{a:?}");
        // The calls in progress are not touched; as they end the load falls and the cost
        // per packet comes back down: new calls are admitted again.
        for _ in 0..30 {
            a.observe(b.second(500, us(12), 0));
        }
        assert!(a.budget_use() < 0.5, "{a:?}");
        assert_eq!(gate(&a).refusal(600), None, "{a:?}");
        assert_eq!(gate(&a).refusal(1_000), None, "{a:?}");
    }

    #[test]
    fn a_busy_machine_lowers_the_capacity_and_an_idle_one_gives_it_back() {
        let mut a = Admission::new(0.7, 2).with_min_idle_cpu(Some(0.3));
        let mut b = MediaSide::new(2);
        b.sample.machine = Some(MachineCpu {
            busy_ns: 0,
            cores: 2,
        });
        a.observe(b.sample);
        let second = |b: &mut MediaSide, calls: u64, busy_cores: f64| {
            let mut s = b.second(calls, us(4), 0);
            if let Some(m) = &mut s.machine {
                m.busy_ns += (busy_cores * 1e9) as u64;
            }
            b.sample = s;
            s
        };
        // Idle, the box keeps 0.1 of a core busy (its own work).
        a.observe(second(&mut b, 0, 0.1));
        a.observe(second(&mut b, 0, 0.1));
        // 1,000 calls at 4 µs a packet: the media threads use 0.2 of a core, and a receiver on
        // the same box as much again: 0.5 cores busy, 0.4 of them for the calls, 0.4 ms of a
        // core per call. The spare 0.9 core (of the 1.4 allowed) carries 2,250 more calls; the
        // media threads alone would say 7,000.
        a.observe(second(&mut b, 1_000, 0.5));
        assert_eq!(a.machine_capacity(), Some(3_250));
        assert_eq!(a.capacity(), 3_250);
        assert!((a.machine_use().unwrap_or_default() - 0.25).abs() < 1e-9);
        // At 3,000 calls the box is near its share: room for about 250 more.
        a.observe(second(&mut b, 3_000, 1.3));
        assert_eq!(a.machine_capacity(), Some(3_250));
        // With few calls, the box's other work is not charged to them: mohd's own cost.
        a.observe(second(&mut b, 50, 0.8));
        assert_eq!(a.machine_capacity(), Some(50 + 3_000));
        // Another process takes a core and a half: no room left, new calls refused while the
        // calls in progress go on.
        a.observe(second(&mut b, 1_000, 1.9));
        assert!(a.capacity() < 1_000, "{a:?}");
        let gate = Gate {
            max_calls: 20_000,
            capacity: a.capacity(),
            draining: false,
        };
        assert_eq!(gate.refusal(1_000), Some(Refusal::Capacity));
        // It stops: the room comes back at once.
        a.observe(second(&mut b, 1_000, 0.5));
        assert_eq!(a.capacity(), 3_250);
        // Without `min_idle_cpu`, or without readings, the media threads' capacity alone;
        // the machine's use is shown all the same.
        let mut c = Admission::new(0.7, 2);
        let mut d = MediaSide::new(2);
        d.sample.machine = b.sample.machine;
        c.observe(d.sample);
        let mut busy = d.second(1_000, us(4), 0);
        if let Some(m) = &mut busy.machine {
            m.busy_ns += 1_900_000_000;
        }
        c.observe(busy);
        assert_eq!((c.capacity(), c.machine_capacity()), (7_000, None));
        assert!((c.machine_use().unwrap_or_default() - 0.95).abs() < 1e-9);
        let mut e = Admission::new(0.7, 2).with_min_idle_cpu(Some(0.3));
        let mut f = MediaSide::new(2);
        e.observe(f.sample);
        e.observe(f.second(1_000, us(4), 0));
        assert_eq!((e.capacity(), e.machine_capacity()), (7_000, None));
    }

    #[test]
    fn late_packets_hold_the_capacity_where_it_is() {
        let mut a = Admission::new(0.7, 1);
        let mut b = MediaSide::new(1);
        a.observe(b.sample);
        a.observe(b.second(1_000, us(10), 0));
        let before = a.capacity();
        // Cheaper packets would raise the estimate, but packets were late: hold.
        a.observe(b.second(1_000, us(5), 20));
        assert!(a.late_in_last_window());
        assert_eq!(a.capacity(), before);
        // A dearer window may still lower it while late.
        a.observe(b.second(1_000, us(30), 20));
        assert!(a.capacity() < before);
        let lowered = a.capacity();
        // On time again: it grows back.
        a.observe(b.second(1_000, us(5), 0));
        assert!(a.capacity() > lowered);
    }

    #[test]
    fn inactive_calls_count_as_sending_and_short_windows_measure_nothing() {
        let mut a = Admission::new(0.7, 1);
        let mut b = MediaSide::new(1);
        a.observe(b.sample);
        // 2,000 calls of which only a tenth send: per call 5 packets a second, but an
        // inactive call may resume, so 50 is assumed.
        b.now += Duration::from_secs(1);
        b.sample.at = b.now;
        b.sample.packets_sent += 10_000;
        b.sample.busy_ns += 10_000 * 10_000;
        b.sample.active_calls = 2_000;
        a.observe(b.sample);
        assert_eq!(a.capacity(), 1_400);
        // Two readings in the same instant: nothing changes.
        let mut same = b.sample;
        same.busy_ns += 1_000_000_000;
        same.packets_sent += 1_000;
        a.observe(same);
        assert_eq!(a.capacity(), 1_400);
    }

    #[test]
    fn the_gate_refuses_draining_first_then_max_calls_then_capacity() {
        let g = Gate {
            max_calls: 10,
            capacity: 5,
            draining: false,
        };
        assert_eq!(g.refusal(4), None);
        assert_eq!(g.refusal(5), Some(Refusal::Capacity));
        assert_eq!(g.refusal(10), Some(Refusal::MaxCalls));
        let g = Gate {
            draining: true,
            ..g
        };
        assert_eq!(g.refusal(0), Some(Refusal::Draining));
        assert_eq!(Gate::new(3).refusal(2), None);
        assert_eq!(Gate::new(3).refusal(3), Some(Refusal::MaxCalls));
    }
}
