//! RFC 3550 receiver statistics for one RTP source: loss, duplicates, reordering,
//! interarrival jitter and arrival gaps.
//!
//! Used by the `mohd call` test softphone and by tests to judge what a caller would hear.
//! Sequence numbers are extended across the 16-bit wrap with the RFC 3550 A.1 rules
//! (a jump of more than `MAX_DROPOUT` ahead or `MAX_MISORDER` behind is only believed when
//! the next packet confirms it), without A.1's probation period: the softphone knows
//! its source and wants every packet counted. Jitter is the A.8 estimator
//! `J += (|D| - J) / 16`, computed in exact integer arithmetic for `D` so that perfectly
//! paced packets give exactly zero. Timestamp differences are taken modulo 2^32.

use std::time::Instant;

use serde::Serialize;

/// A.1: a forward jump larger than this is a restart or garbage until confirmed.
const MAX_DROPOUT: u16 = 3000;
/// A.1: a packet up to this far behind the highest is late, not a restart.
const MAX_MISORDER: u16 = 100;
/// How many recent sequence numbers are remembered to recognise duplicates.
const WINDOW: i64 = 1024;
const NANOS_PER_SEC: i128 = 1_000_000_000;

/// What a caller's receiver saw; all counts since the first packet.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StatsReport {
    /// Datagrams handed to [`ReceiverStats::on_packet`], duplicates included.
    pub packets: u64,
    /// Packets the sequence numbers say should have arrived (highest − first + 1).
    pub expected: u64,
    /// `expected` minus distinct packets received; never negative, whatever duplicates.
    pub lost: u64,
    /// Packets whose sequence number had already been received.
    pub duplicated: u64,
    /// Packets that arrived after a higher sequence number.
    pub reordered: u64,
    /// Packets whose timestamp did not advance by the usual step per sequence number
    /// (a timestamp jump, or a change of packet duration).
    pub ts_jumps: u64,
    /// Times the sequence number jumped by more than A.1 tolerates and the receiver
    /// re-synchronised (a sender restart).
    pub resyncs: u64,
    /// Mean of the A.8 jitter estimate over all packets, in milliseconds.
    pub jitter_mean_ms: f64,
    /// Largest A.8 jitter estimate seen, in milliseconds.
    pub jitter_max_ms: f64,
    /// Largest time between two consecutive arrivals, in milliseconds.
    pub max_gap_ms: f64,
    /// Sequence number of the first packet.
    pub first_seq: Option<u16>,
    /// Highest extended sequence number (first seq + 65,536 × wraps).
    pub last_ext_seq: Option<u64>,
}

/// Receiver statistics for one RTP source.
#[derive(Debug, Clone)]
pub struct ReceiverStats {
    clock_rate: u32,
    packets: u64,
    state: Option<State>,
}

#[derive(Debug, Clone)]
struct State {
    first_seq: u16,
    /// Extended sequence numbers are i64 so a packet older than the first one (reordered
    /// across the start) still has a place.
    base_ext: i64,
    max_ext: i64,
    max_ts: u32,
    /// Timestamp step per sequence number, learned from consecutive packets.
    ts_step: Option<i64>,
    /// A different step seen once, adopted if the next packet repeats it.
    ts_step_candidate: Option<i64>,
    /// Distinct packets in the current segment (since the start or the last resync).
    unique: u64,
    /// Expected and distinct counts of segments closed by a resync.
    expected_done: u64,
    unique_done: u64,
    bad_seq: Option<u16>,
    duplicated: u64,
    reordered: u64,
    ts_jumps: u64,
    resyncs: u64,
    /// Bit `ext % WINDOW` set when that sequence number arrived (for the last WINDOW).
    seen: [u64; (WINDOW / 64) as usize],
    last_arrival: Instant,
    last_ts: u32,
    /// A.8 jitter in timestamp units.
    jitter: f64,
    jitter_sum: f64,
    jitter_max: f64,
    jitter_samples: u64,
    max_gap_nanos: u128,
}

impl State {
    fn is_seen(&self, ext: i64) -> bool {
        let bit = ext.rem_euclid(WINDOW) as usize;
        self.seen
            .get(bit / 64)
            .is_some_and(|w| w & (1 << (bit % 64)) != 0)
    }

    fn set_seen(&mut self, ext: i64, on: bool) {
        let bit = ext.rem_euclid(WINDOW) as usize;
        if let Some(w) = self.seen.get_mut(bit / 64) {
            if on {
                *w |= 1 << (bit % 64);
            } else {
                *w &= !(1 << (bit % 64));
            }
        }
    }

    /// Moves the highest sequence number to `ext`, forgetting what the window reused.
    fn advance_to(&mut self, ext: i64) {
        if ext - self.max_ext >= WINDOW {
            self.seen = [0; (WINDOW / 64) as usize];
        } else {
            for e in self.max_ext + 1..=ext {
                self.set_seen(e, false);
            }
        }
        self.max_ext = ext;
    }

    fn first(arrival: Instant, seq: u16, ts: u32) -> State {
        let mut s = State {
            first_seq: seq,
            base_ext: i64::from(seq),
            max_ext: i64::from(seq),
            max_ts: ts,
            ts_step: None,
            ts_step_candidate: None,
            unique: 1,
            expected_done: 0,
            unique_done: 0,
            bad_seq: None,
            duplicated: 0,
            reordered: 0,
            ts_jumps: 0,
            resyncs: 0,
            seen: [0; (WINDOW / 64) as usize],
            last_arrival: arrival,
            last_ts: ts,
            jitter: 0.0,
            jitter_sum: 0.0,
            jitter_max: 0.0,
            jitter_samples: 0,
            max_gap_nanos: 0,
        };
        s.set_seen(i64::from(seq), true);
        s
    }

    /// Places `seq` against the highest sequence number so far (A.1); true when the packet
    /// counts as media (so it enters the jitter estimate), false for a duplicate or an
    /// unconfirmed jump.
    fn place(&mut self, seq: u16, ts: u32) -> bool {
        let max_seq = self.max_ext.rem_euclid(1 << 16) as u16;
        let udelta = seq.wrapping_sub(max_seq);
        if udelta == 0 {
            self.duplicated += 1;
            false
        } else if udelta < MAX_DROPOUT {
            self.ahead(udelta, ts);
            true
        } else if udelta > u16::MAX - MAX_MISORDER {
            self.behind(udelta)
        } else if self.bad_seq == Some(seq) {
            self.resync(udelta, ts);
            true
        } else {
            // An unconfirmed jump: counted as a datagram but not as media (A.1).
            self.bad_seq = Some(seq.wrapping_add(1));
            false
        }
    }

    /// A packet `udelta` ahead of the highest: the new highest.
    fn ahead(&mut self, udelta: u16, ts: u32) {
        let ext = self.max_ext + i64::from(udelta);
        let ts_delta = i64::from(ts.wrapping_sub(self.max_ts) as i32);
        self.learn_ts_step(udelta, ts_delta);
        self.advance_to(ext);
        self.max_ts = ts;
        self.set_seen(ext, true);
        self.unique += 1;
        self.bad_seq = None;
    }

    /// Learns the timestamp step per sequence number and counts departures from it. A new step
    /// is adopted silently when the next packet confirms it (a change of packet duration counts
    /// as one jump, not one per packet).
    fn learn_ts_step(&mut self, udelta: u16, ts_delta: i64) {
        match self.ts_step {
            None if udelta == 1 => self.ts_step = Some(ts_delta),
            Some(step) if ts_delta != step * i64::from(udelta) => {
                if udelta == 1 && self.ts_step_candidate == Some(ts_delta) {
                    self.ts_step = Some(ts_delta);
                } else {
                    self.ts_jumps += 1;
                }
                self.ts_step_candidate = (udelta == 1).then_some(ts_delta);
            }
            _ => self.ts_step_candidate = None,
        }
    }

    /// A packet behind the highest, within MAX_MISORDER: late (reordered) or a duplicate;
    /// true when it is new media.
    fn behind(&mut self, udelta: u16) -> bool {
        let ext = self.max_ext - i64::from(u16::MAX - udelta) - 1;
        if self.max_ext - ext < WINDOW && self.is_seen(ext) {
            self.duplicated += 1;
            return false;
        }
        self.set_seen(ext, true);
        self.unique += 1;
        self.reordered += 1;
        self.base_ext = self.base_ext.min(ext);
        true
    }

    /// Two packets agree on a jump: the sender restarted its sequence. Closes the current
    /// segment and starts a new one here, keeping the extended number growing so
    /// `last_ext_seq` stays monotonic.
    fn resync(&mut self, udelta: u16, ts: u32) {
        self.expected_done += (self.max_ext - self.base_ext + 1) as u64;
        self.unique_done += self.unique;
        let ext = self.max_ext + i64::from(udelta);
        self.seen = [0; (WINDOW / 64) as usize];
        self.base_ext = ext;
        self.max_ext = ext;
        self.max_ts = ts;
        self.ts_step = None;
        self.ts_step_candidate = None;
        self.unique = 1;
        self.set_seen(ext, true);
        self.resyncs += 1;
        self.bad_seq = None;
    }

    /// A.8: D = (R_j - R_i) - (S_j - S_i), in timestamp units; scaled by 1e9 so the
    /// arithmetic is exact.
    fn update_jitter(&mut self, arrival: Instant, ts: u32, clock_rate: u32) {
        let arrival_delta = arrival
            .saturating_duration_since(self.last_arrival)
            .as_nanos() as i128
            - self
                .last_arrival
                .saturating_duration_since(arrival)
                .as_nanos() as i128;
        let ts_delta = i128::from(ts.wrapping_sub(self.last_ts) as i32);
        let d_scaled = arrival_delta * i128::from(clock_rate) - ts_delta * NANOS_PER_SEC;
        let d = d_scaled.unsigned_abs() as f64 / NANOS_PER_SEC as f64;
        self.jitter += (d - self.jitter) / 16.0;
        self.jitter_sum += self.jitter;
        self.jitter_max = self.jitter_max.max(self.jitter);
        self.jitter_samples += 1;
    }
}

impl ReceiverStats {
    /// Statistics for a source with the given RTP clock rate (Hz).
    pub fn new(clock_rate: u32) -> Self {
        Self {
            clock_rate: clock_rate.max(1),
            packets: 0,
            state: None,
        }
    }

    /// Accounts for one received RTP packet.
    pub fn on_packet(&mut self, arrival: Instant, seq: u16, ts: u32) {
        self.packets += 1;
        let Some(s) = self.state.as_mut() else {
            self.state = Some(State::first(arrival, seq, ts));
            return;
        };
        let gap = arrival.saturating_duration_since(s.last_arrival).as_nanos();
        s.max_gap_nanos = s.max_gap_nanos.max(gap);
        if s.place(seq, ts) {
            s.update_jitter(arrival, ts, self.clock_rate);
            s.last_ts = ts;
        }
        s.last_arrival = arrival;
    }

    /// A snapshot of the statistics.
    pub fn report(&self) -> StatsReport {
        let Some(s) = &self.state else {
            return StatsReport {
                packets: self.packets,
                expected: 0,
                lost: 0,
                duplicated: 0,
                reordered: 0,
                ts_jumps: 0,
                resyncs: 0,
                jitter_mean_ms: 0.0,
                jitter_max_ms: 0.0,
                max_gap_ms: 0.0,
                first_seq: None,
                last_ext_seq: None,
            };
        };
        let expected = s.expected_done + (s.max_ext - s.base_ext + 1) as u64;
        let unique = s.unique_done + s.unique;
        let to_ms = 1000.0 / f64::from(self.clock_rate);
        let mean = if s.jitter_samples == 0 {
            0.0
        } else {
            s.jitter_sum / s.jitter_samples as f64
        };
        StatsReport {
            packets: self.packets,
            expected,
            lost: expected.saturating_sub(unique),
            duplicated: s.duplicated,
            reordered: s.reordered,
            ts_jumps: s.ts_jumps,
            resyncs: s.resyncs,
            jitter_mean_ms: mean * to_ms,
            jitter_max_ms: s.jitter_max * to_ms,
            max_gap_ms: s.max_gap_nanos as f64 / 1e6,
            first_seq: Some(s.first_seq),
            last_ext_seq: Some(s.max_ext.max(0) as u64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Seq16, Ts32};
    use crate::rtp::packet::{RtpHeader, parse_rtp, write_rtp};
    use std::time::Duration;

    const PTIME: Duration = Duration::from_millis(20);

    /// A sender building real packets with `packet.rs`, and a receiver parsing them.
    struct Link {
        seq: Seq16,
        ts: Ts32,
        t0: Instant,
        stats: ReceiverStats,
        buf: [u8; 200],
    }

    impl Link {
        fn new(seq: u16, ts: u32) -> Self {
            Link {
                seq: Seq16(seq),
                ts: Ts32(ts),
                t0: Instant::now(),
                stats: ReceiverStats::new(8000),
                buf: [0; 200],
            }
        }

        /// Builds packet `k` (seq and ts advanced `k` steps from the start).
        fn packet(&mut self, k: u16) -> usize {
            let h = RtpHeader {
                marker: k == 0,
                payload_type: 0,
                seq: self.seq.wrapping_add(k),
                timestamp: self.ts.wrapping_add(u32::from(k) * 160),
                ssrc: 1,
            };
            write_rtp(&h, &[0xFF; 160], &mut self.buf).unwrap()
        }

        /// Sends packet `k`, arriving at `t0 + arrival_ms`.
        fn deliver(&mut self, k: u16, arrival: Duration) {
            let n = self.packet(k);
            let p = parse_rtp(&self.buf[..n]).unwrap();
            let (seq, ts) = (p.header.seq.get(), p.header.timestamp.get());
            self.stats.on_packet(self.t0 + arrival, seq, ts);
        }
    }

    #[test]
    fn crossing_both_wraps_with_perfect_pacing_is_clean() {
        // Starts 5 packets before the 16-bit seq wrap and 3 packets before the 32-bit ts
        // wrap; 200 packets cross both.
        let mut link = Link::new(65_531, u32::MAX - 3 * 160 + 1);
        for k in 0..200u16 {
            link.deliver(k, PTIME * u32::from(k));
        }
        let r = link.stats.report();
        assert_eq!(r.packets, 200);
        assert_eq!(r.expected, 200);
        assert_eq!(r.lost, 0);
        assert_eq!(r.duplicated, 0);
        assert_eq!(r.reordered, 0);
        assert_eq!(r.ts_jumps, 0);
        assert_eq!(r.resyncs, 0);
        assert_eq!(r.jitter_mean_ms, 0.0);
        assert_eq!(r.jitter_max_ms, 0.0);
        assert_eq!(r.max_gap_ms, 20.0);
        assert_eq!(r.first_seq, Some(65_531));
        // One wrap: the extended number went past 65,535.
        assert_eq!(r.last_ext_seq, Some(65_531 + 199));
    }

    #[test]
    fn a_timestamp_jump_at_the_wrap_is_seen() {
        // The classic bug: ts computed wrongly at the 32-bit wrap. Pacing is perfect except
        // packet 3's timestamp, which is off by one frame.
        let mut link = Link::new(100, u32::MAX - 160 * 2 + 1);
        for k in 0..10u16 {
            let n = link.packet(k);
            let mut p = parse_rtp(&link.buf[..n]).unwrap().header;
            if k >= 3 {
                p.timestamp = p.timestamp.wrapping_add(160);
            }
            link.stats.on_packet(
                link.t0 + PTIME * u32::from(k),
                p.seq.get(),
                p.timestamp.get(),
            );
        }
        let r = link.stats.report();
        assert_eq!(r.ts_jumps, 1);
        assert_eq!(r.lost, 0);
        assert!(r.jitter_max_ms > 0.0);
    }

    #[test]
    fn a_ptime_change_is_one_jump() {
        let mut s = ReceiverStats::new(8000);
        let t0 = Instant::now();
        let mut ts = 0u32;
        for k in 0..20u16 {
            s.on_packet(t0 + PTIME * u32::from(k), k, ts);
            ts = ts.wrapping_add(if k < 10 { 160 } else { 240 });
        }
        assert_eq!(s.report().ts_jumps, 1);
    }

    #[test]
    fn loss_is_counted_and_gap_measured() {
        let mut link = Link::new(65_530, 0);
        for k in 0..20u16 {
            if k == 4 || k == 5 || k == 6 {
                continue;
            }
            link.deliver(k, PTIME * u32::from(k));
        }
        let r = link.stats.report();
        assert_eq!(r.packets, 17);
        assert_eq!(r.expected, 20);
        assert_eq!(r.lost, 3);
        assert_eq!(r.max_gap_ms, 80.0);
        // The timestamps advanced with the sequence numbers: no jump, no jitter.
        assert_eq!(r.ts_jumps, 0);
        assert_eq!(r.jitter_max_ms, 0.0);
    }

    #[test]
    fn duplicates_do_not_make_loss_negative() {
        let mut link = Link::new(65_534, 0);
        for k in 0..10u16 {
            link.deliver(k, PTIME * u32::from(k));
            link.deliver(k, PTIME * u32::from(k) + Duration::from_millis(1));
        }
        // And an old duplicate after the wrap.
        link.deliver(1, Duration::from_millis(500));
        let r = link.stats.report();
        assert_eq!(r.packets, 21);
        assert_eq!(r.expected, 10);
        assert_eq!(r.lost, 0);
        assert_eq!(r.duplicated, 11);
        assert_eq!(r.reordered, 0);
    }

    #[test]
    fn reordering_across_the_wrap() {
        // Packets 0..10 with 3 and 4 swapped; seq 65533.. so the swap straddles the wrap.
        let mut link = Link::new(65_533, 1000);
        let order = [0u16, 1, 2, 4, 3, 5, 6, 7, 8, 9];
        for (i, &k) in order.iter().enumerate() {
            link.deliver(k, PTIME * i as u32);
        }
        let r = link.stats.report();
        assert_eq!(r.expected, 10);
        assert_eq!(r.lost, 0);
        assert_eq!(r.reordered, 1);
        assert_eq!(r.duplicated, 0);
        assert_eq!(r.last_ext_seq, Some(65_533 + 9));
        // Swapped packets are "jitter" of one packet time in each direction.
        assert!(r.jitter_max_ms > 0.0);
        // A packet from before the first one also counts, without inflating loss.
        let mut link = Link::new(10, 0);
        link.deliver(1, Duration::ZERO);
        link.deliver(0, Duration::from_millis(5));
        link.deliver(2, PTIME * 2);
        let r = link.stats.report();
        assert_eq!((r.expected, r.lost, r.reordered), (3, 0, 1));
    }

    #[test]
    fn jitter_follows_rfc3550_a8() {
        // One packet 8 ms late: D = 64 units for it, then -64 back for the next.
        let mut link = Link::new(0, 0);
        link.deliver(0, Duration::ZERO);
        link.deliver(1, PTIME + Duration::from_millis(8));
        link.deliver(2, PTIME * 2);
        let j1 = 64.0 / 16.0;
        let j2 = j1 + (64.0 - j1) / 16.0;
        let r = link.stats.report();
        assert!((r.jitter_max_ms - j2 / 8.0).abs() < 1e-9, "{r:?}");
        assert!(
            (r.jitter_mean_ms - (j1 + j2) / 2.0 / 8.0).abs() < 1e-9,
            "{r:?}"
        );
        assert_eq!(r.max_gap_ms, 28.0);
    }

    #[test]
    fn a_sender_restart_resyncs_after_confirmation() {
        let mut link = Link::new(1000, 0);
        for k in 0..5u16 {
            link.deliver(k, PTIME * u32::from(k));
        }
        // One stray packet far away is ignored...
        link.stats.on_packet(link.t0 + PTIME * 5, 40_000, 0);
        // ...and the stream carries on.
        link.deliver(5, PTIME * 6);
        // Then the sender restarts at 30000: the second packet confirms it.
        for (i, seq) in (30_000u16..30_010).enumerate() {
            link.stats
                .on_packet(link.t0 + PTIME * (7 + i as u32), seq, 160 * i as u32);
        }
        let r = link.stats.report();
        assert_eq!(r.resyncs, 1);
        assert_eq!(r.packets, 17);
        // 6 before the restart and 9 after it (the first restarted packet is A.1's probe).
        assert_eq!(r.expected, 15);
        assert_eq!(r.lost, 0);
    }

    #[test]
    fn empty_report_and_serialises() {
        let s = ReceiverStats::new(8000);
        let r = s.report();
        assert_eq!(r.packets, 0);
        assert_eq!(r.first_seq, None);
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"lost\":0"), "{json}");
        assert!(json.contains("\"first_seq\":null"), "{json}");
    }
}
