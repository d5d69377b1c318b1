//! The media clock and the wrapping RTP counters.
//!
//! Owns the one time grid every media deadline lives on: tick `n` is due at `epoch + n × 10 ms`,
//! computed from the tick number each time (never by adding sleeps), so nothing drifts however
//! long the process runs. A packet time (ptime) is a whole number of ticks.
//!
//! Also owns `Seq16` and `Ts32`, the RTP sequence number and timestamp. They start at random
//! values and wrap (every 22 minutes at 50 packets/s; every 6.2 days at an 8 kHz RTP clock,
//! every 24.9 hours at Opus's 48 kHz), so the types offer only wrapping arithmetic and a
//! signed distance; they deliberately do not implement `Ord`, because "greater" has no
//! meaning across the wrap.

use std::time::{Duration, Instant};

/// Sample rate of the media grid (G.711 narrowband).
pub const SAMPLE_RATE: u32 = 8000;
/// One step of the media grid; every ptime is a multiple of it.
pub const TICK: Duration = Duration::from_millis(10);
/// Ticks in one second: an RTP clock of `r` Hz advances `r / TICKS_PER_SECOND` per tick.
pub const TICKS_PER_SECOND: u32 = 100;
/// Samples in one tick at [`SAMPLE_RATE`].
pub const SAMPLES_PER_TICK: u64 = 80;

const TICK_NANOS: u128 = TICK.as_nanos();
const TICK_MILLIS: u64 = 10;

/// Maps tick numbers to absolute deadlines on one monotonic epoch.
#[derive(Clone, Copy, Debug)]
pub struct MediaClock {
    epoch: Instant,
}

impl MediaClock {
    /// A clock whose tick 0 is due at `epoch`.
    pub fn new(epoch: Instant) -> Self {
        Self { epoch }
    }

    /// The instant of tick 0.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// The instant tick `tick` is due: `epoch + tick × 10 ms`, exactly.
    ///
    /// The offset is computed in whole milliseconds from the tick number, so there is no
    /// accumulated rounding; a `u64` of milliseconds spans 584 million years, so the
    /// saturating multiply never saturates for a tick a process can reach.
    pub fn tick_deadline(&self, tick: u64) -> Instant {
        self.epoch + Duration::from_millis(tick.saturating_mul(TICK_MILLIS))
    }

    /// The tick in progress at `now` (floor); 0 before the epoch.
    pub fn tick_at(&self, now: Instant) -> u64 {
        let nanos = now.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(nanos / TICK_NANOS).unwrap_or(u64::MAX)
    }

    /// The first tick whose deadline is at or after `now` (ceiling); 0 before the epoch.
    pub fn tick_at_or_after(&self, now: Instant) -> u64 {
        let tick = self.tick_at(now);
        if self.tick_deadline(tick) < now {
            tick.saturating_add(1)
        } else {
            tick
        }
    }

    /// The sample position (at [`SAMPLE_RATE`]) where tick `tick` begins.
    pub fn tick_sample(tick: u64) -> u64 {
        tick.wrapping_mul(SAMPLES_PER_TICK)
    }
}

/// An RTP sequence number: 16 bits, wrapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Seq16(pub u16);

impl Seq16 {
    /// `self + n`, modulo 2^16.
    #[must_use]
    pub fn wrapping_add(self, n: u16) -> Self {
        Self(self.0.wrapping_add(n))
    }

    /// The next sequence number.
    #[must_use]
    pub fn next(self) -> Self {
        self.wrapping_add(1)
    }

    /// How far `self` is after `earlier`, as the shortest signed distance around the wrap:
    /// `Seq16(1).distance_from(Seq16(65535)) == 2`.
    pub fn distance_from(self, earlier: Seq16) -> i16 {
        self.0.wrapping_sub(earlier.0) as i16
    }

    /// True when `self` comes after `other` (within half the number space).
    pub fn is_after(self, other: Seq16) -> bool {
        self.distance_from(other) > 0
    }

    /// The raw value.
    pub fn get(self) -> u16 {
        self.0
    }
}

/// An RTP timestamp: 32 bits, wrapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Ts32(pub u32);

impl Ts32 {
    /// `self + n`, modulo 2^32.
    #[must_use]
    pub fn wrapping_add(self, n: u32) -> Self {
        Self(self.0.wrapping_add(n))
    }

    /// `self + samples`, modulo 2^32 (a `u64` sample count folds onto the 32-bit wheel).
    #[must_use]
    pub fn add_samples(self, samples: u64) -> Self {
        Self(self.0.wrapping_add(samples as u32))
    }

    /// How far `self` is after `earlier`, as the shortest signed distance around the wrap.
    pub fn distance_from(self, earlier: Ts32) -> i32 {
        self.0.wrapping_sub(earlier.0) as i32
    }

    /// True when `self` comes after `other` (within half the number space).
    pub fn is_after(self, other: Ts32) -> bool {
        self.distance_from(other) > 0
    }

    /// How many samples lie from `earlier` to `self` on an unwrapped 64-bit count, when about
    /// `expected` samples should have: the 32-bit difference is read relative to the
    /// expectation. So a gap of any length (days of an inactive call, longer than the ±2^31
    /// a plain [`Ts32::distance_from`] can tell) unwraps right, and a timestamp that is off
    /// shows as the signed difference from `expected`, up to ±2^31 samples (±3.1 days).
    pub fn unwrap_after(self, earlier: Ts32, expected: u64) -> i64 {
        let expected = i64::try_from(expected).unwrap_or(i64::MAX);
        expected.saturating_add(i64::from(
            self.distance_from(earlier.add_samples(expected as u64)),
        ))
    }

    /// The raw value.
    pub fn get(self) -> u32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_are_exact_multiples_of_ten_ms() {
        let epoch = Instant::now();
        let c = MediaClock::new(epoch);
        assert_eq!(c.tick_deadline(0), epoch);
        assert_eq!(c.tick_deadline(1), epoch + Duration::from_millis(10));
        // 30 days of ticks: exact, no accumulated rounding.
        let month = 30 * 24 * 3600 * 100;
        assert_eq!(
            c.tick_deadline(month),
            epoch + Duration::from_secs(30 * 24 * 3600)
        );
        // Years ahead: 10 years of ticks.
        let ten_years: u64 = 10 * 365 * 24 * 3600 * 100;
        assert_eq!(
            c.tick_deadline(ten_years) - epoch,
            Duration::from_secs(10 * 365 * 24 * 3600)
        );
    }

    #[test]
    fn tick_at_floors_and_is_zero_before_epoch() {
        let epoch = Instant::now() + Duration::from_secs(1);
        let c = MediaClock::new(epoch);
        assert_eq!(c.tick_at(epoch - Duration::from_millis(500)), 0);
        assert_eq!(c.tick_at(epoch), 0);
        assert_eq!(c.tick_at(epoch + Duration::from_nanos(9_999_999)), 0);
        assert_eq!(c.tick_at(epoch + Duration::from_millis(10)), 1);
        assert_eq!(c.tick_at(epoch + Duration::from_millis(25)), 2);
        for t in [0u64, 1, 7, 1_000_000, 300_000_000] {
            assert_eq!(c.tick_at(c.tick_deadline(t)), t);
            assert_eq!(
                c.tick_at(c.tick_deadline(t) - Duration::from_nanos(1)),
                t.saturating_sub(1)
            );
        }
    }

    #[test]
    fn tick_at_or_after_rounds_up() {
        let epoch = Instant::now();
        let c = MediaClock::new(epoch);
        assert_eq!(c.tick_at_or_after(epoch), 0);
        assert_eq!(c.tick_at_or_after(epoch + Duration::from_nanos(1)), 1);
        assert_eq!(c.tick_at_or_after(epoch + Duration::from_millis(10)), 1);
        assert_eq!(c.tick_at_or_after(epoch + Duration::from_millis(11)), 2);
    }

    #[test]
    fn seq16_wraps() {
        assert_eq!(Seq16(65535).next(), Seq16(0));
        assert_eq!(Seq16(65534).wrapping_add(3), Seq16(1));
        assert_eq!(Seq16(1).distance_from(Seq16(65535)), 2);
        assert_eq!(Seq16(65535).distance_from(Seq16(1)), -2);
        assert!(Seq16(0).is_after(Seq16(65535)));
        assert!(!Seq16(65535).is_after(Seq16(0)));
        assert!(!Seq16(7).is_after(Seq16(7)));
        // Half the space away is the ambiguous edge: reads as "before".
        assert_eq!(Seq16(32768).distance_from(Seq16(0)), -32768);
        assert_eq!(Seq16(32767).distance_from(Seq16(0)), 32767);
    }

    #[test]
    fn ts32_wraps() {
        assert_eq!(Ts32(u32::MAX).wrapping_add(1), Ts32(0));
        assert_eq!(Ts32(u32::MAX - 79).wrapping_add(160), Ts32(80));
        assert_eq!(Ts32(80).distance_from(Ts32(u32::MAX - 79)), 160);
        assert_eq!(Ts32(u32::MAX - 79).distance_from(Ts32(80)), -160);
        assert!(Ts32(5).is_after(Ts32(u32::MAX)));
        // A u64 sample count folds modulo 2^32.
        assert_eq!(Ts32(10).add_samples((1u64 << 32) + 5), Ts32(15));
    }

    #[test]
    fn unwrap_after_reads_long_gaps_and_shows_errors() {
        let a = Ts32(u32::MAX - 79);
        // One packet across the wrap.
        assert_eq!(Ts32(80).unwrap_after(a, 160), 160);
        // A four-day gap (2.76e9 samples, more than a plain distance can tell).
        let four_days = 4 * 86_400 * 8000u64;
        let b = a.add_samples(four_days);
        assert_eq!(b.unwrap_after(a, four_days), four_days as i64);
        assert!(
            b.distance_from(a) < 0,
            "a plain distance reads it backwards"
        );
        // Ten samples too many or too few show as such.
        assert_eq!(
            b.wrapping_add(10).unwrap_after(a, four_days),
            four_days as i64 + 10
        );
        assert_eq!(b.unwrap_after(a, four_days + 10), four_days as i64);
        assert_eq!(a.unwrap_after(a, 0), 0);
    }
}
