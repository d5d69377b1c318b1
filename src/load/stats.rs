//! What `mohd load` measures, pure: per RTP stream, how late each packet came against the
//! stream's own RTP clock, loss, reordering, duplicates and timestamp gaps; over all streams,
//! the share of packets more than 5 ms late and the lateness percentiles; call setup times.
//!
//! Arrival times come in as nanoseconds on any clock that does not step during a run (the
//! receiver passes the kernel's receive timestamps), so tests feed synthetic streams.
//!
//! Lateness of packet k: `arrival_k − (anchor + (ts_k − ts_0) / clock rate)`, where the anchor
//! is the stream's earliest packet against its own schedule (the smallest `arrival − media
//! time` seen), so a late first packet does not make every later one look early. Each
//! stream's offsets are kept until the stream ends (4 bytes a packet) because a new earliest
//! packet moves every earlier packet's lateness; a finished stream folds into a [`Summary`]
//! (a fixed histogram), so a run of any length holds only its live streams.

use std::time::Duration;

use serde::Serialize;

use crate::clock::{Seq16, Ts32};

/// The bar: a packet more than this late counts as late (issue 18: 99.9 % within 5 ms).
pub const LATE_US: u64 = 5_000;
/// A second bar, for packets late enough that a jitter buffer would have dropped them.
pub const VERY_LATE_US: u64 = 20_000;
/// Lateness histogram range, in 1 µs bins; later packets count in one overflow bin (their
/// maximum stays exact).
const HISTOGRAM_US: usize = 1_000_000;
/// Sequence numbers remembered behind the highest, to tell a duplicate from a late packet.
const SEQ_WINDOW: i64 = 1024;

/// One RTP stream (one SSRC from one source address) as received.
#[derive(Debug, Clone)]
pub struct StreamStats {
    clock_rate: u32,
    samples_per_packet: i64,
    /// The first counted packet: its arrival (ns) and where the unwrapped numbers start.
    first_arrival_ns: Option<i64>,
    last_arrival_ns: i64,
    /// Extended sequence numbers, relative to the first packet's (0).
    highest_ext: i64,
    lowest_ext: i64,
    highest_seq: Seq16,
    /// The unwrapped timestamp of the highest-numbered packet.
    highest_ts_ext: i64,
    /// The last packet's timestamp, raw and unwrapped (unwrapping follows arrival order).
    last_ts: Ts32,
    last_ts_ext: i64,
    /// Bit `ext % SEQ_WINDOW` is set when `ext` (within the window behind the highest) came.
    seen: [u64; SEQ_WINDOW as usize / 64],
    packets: u64,
    duplicates: u64,
    reordered: u64,
    ts_gaps: u64,
    frames_not_sent: u64,
    payload_bytes: u64,
    /// `arrival − media time` per counted packet, in µs from the first packet's.
    offsets_us: Vec<i32>,
}

impl StreamStats {
    /// A stream on a `clock_rate` Hz RTP clock whose packets each carry `samples_per_packet`.
    pub fn new(clock_rate: u32, samples_per_packet: u32) -> StreamStats {
        StreamStats {
            clock_rate: clock_rate.max(1),
            samples_per_packet: i64::from(samples_per_packet.max(1)),
            first_arrival_ns: None,
            last_arrival_ns: 0,
            highest_ext: 0,
            lowest_ext: 0,
            highest_seq: Seq16(0),
            highest_ts_ext: 0,
            last_ts: Ts32(0),
            last_ts_ext: 0,
            seen: [0; SEQ_WINDOW as usize / 64],
            packets: 0,
            duplicates: 0,
            reordered: 0,
            ts_gaps: 0,
            frames_not_sent: 0,
            payload_bytes: 0,
            offsets_us: Vec::new(),
        }
    }

    /// One RTP packet of the stream, arrived at `arrival_ns`.
    pub fn on_packet(&mut self, arrival_ns: i64, seq: Seq16, ts: Ts32, payload_len: usize) {
        let Some(first_arrival) = self.first_arrival_ns else {
            self.first_arrival_ns = Some(arrival_ns);
            self.highest_seq = seq;
            self.last_ts = ts;
            self.mark(0);
            self.count(arrival_ns, 0, payload_len);
            return;
        };
        let ts_ext = self.last_ts_ext + i64::from(ts.distance_from(self.last_ts));
        self.last_ts = ts;
        self.last_ts_ext = ts_ext;
        let ahead = i64::from(seq.distance_from(self.highest_seq));
        let ext = self.highest_ext + ahead;
        if ahead > 0 {
            // A timestamp step that is not the packets' worth: the sender skipped (or
            // repeated) media time without a sequence gap to show for it.
            let expected = ahead * self.samples_per_packet;
            let step = ts_ext - self.highest_ts_ext;
            if step != expected {
                self.ts_gaps += 1;
                self.frames_not_sent += ((step - expected).max(0) / self.samples_per_packet) as u64;
            }
            self.advance(ext);
            self.highest_seq = seq;
            self.highest_ts_ext = ts_ext;
        } else if self.is_marked(ext) {
            self.duplicates += 1;
            return;
        } else {
            self.reordered += 1;
            self.lowest_ext = self.lowest_ext.min(ext);
        }
        self.mark(ext);
        let media_ns = i128::from(ts_ext) * 1_000_000_000 / i128::from(self.clock_rate);
        let offset_ns = i128::from(arrival_ns - first_arrival) - media_ns;
        self.count(arrival_ns, offset_ns, payload_len);
    }

    fn count(&mut self, arrival_ns: i64, offset_ns: i128, payload_len: usize) {
        let offset_us = offset_ns.div_euclid(1000);
        let offset_us = offset_us.clamp(i128::from(i32::MIN), i128::from(i32::MAX)) as i32;
        self.offsets_us.push(offset_us);
        self.packets += 1;
        self.payload_bytes += payload_len as u64;
        self.last_arrival_ns = self.last_arrival_ns.max(arrival_ns);
    }

    /// Moves the highest sequence number to `ext`, forgetting what falls out of the window.
    fn advance(&mut self, ext: i64) {
        if ext - self.highest_ext >= SEQ_WINDOW {
            self.seen = [0; SEQ_WINDOW as usize / 64];
        } else {
            for e in self.highest_ext + 1..=ext {
                let bit = e.rem_euclid(SEQ_WINDOW) as usize;
                self.seen[bit / 64] &= !(1 << (bit % 64));
            }
        }
        self.highest_ext = ext;
    }

    fn mark(&mut self, ext: i64) {
        let bit = ext.rem_euclid(SEQ_WINDOW) as usize;
        self.seen[bit / 64] |= 1 << (bit % 64);
    }

    /// Whether `ext` came already; older than the window counts as not (a late packet).
    fn is_marked(&self, ext: i64) -> bool {
        if ext <= self.highest_ext - SEQ_WINDOW {
            return false;
        }
        let bit = ext.rem_euclid(SEQ_WINDOW) as usize;
        self.seen[bit / 64] & (1 << (bit % 64)) != 0
    }

    /// Packets counted (duplicates excluded).
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// Packets missing between the lowest and the highest sequence number seen.
    pub fn lost(&self) -> u64 {
        let expected = self.highest_ext - self.lowest_ext + 1;
        u64::try_from(expected - self.packets as i64).unwrap_or(0)
    }

    /// When the last packet came (ns), to end streams that went quiet.
    pub fn last_arrival_ns(&self) -> i64 {
        self.last_arrival_ns
    }

    /// Each counted packet's lateness in µs, against the anchor (the earliest packet).
    fn lateness_us(&self) -> impl Iterator<Item = u64> + '_ {
        let anchor = self.offsets_us.iter().copied().min().unwrap_or(0);
        self.offsets_us
            .iter()
            .map(move |&o| (i64::from(o) - i64::from(anchor)) as u64)
    }
}

/// Every stream's figures, folded; streams fold in as they end.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    streams: u64,
    packets: u64,
    payload_bytes: u64,
    lost: u64,
    duplicates: u64,
    reordered: u64,
    ts_gaps: u64,
    frames_not_sent: u64,
    late: u64,
    very_late: u64,
    max_lateness_us: u64,
    /// Packets per µs of lateness; allocated on the first packet.
    histogram: Vec<u64>,
    /// Packets later than the histogram's range.
    overflow: u64,
}

impl Summary {
    /// Folds in a stream (one without packets is not a stream measured).
    pub fn add_stream(&mut self, stream: &StreamStats) {
        if stream.packets == 0 {
            return;
        }
        if self.histogram.is_empty() {
            self.histogram = vec![0; HISTOGRAM_US];
        }
        self.streams += 1;
        self.packets += stream.packets;
        self.payload_bytes += stream.payload_bytes;
        self.lost += stream.lost();
        self.duplicates += stream.duplicates;
        self.reordered += stream.reordered;
        self.ts_gaps += stream.ts_gaps;
        self.frames_not_sent += stream.frames_not_sent;
        for lateness in stream.lateness_us() {
            self.late += u64::from(lateness > LATE_US);
            self.very_late += u64::from(lateness > VERY_LATE_US);
            self.max_lateness_us = self.max_lateness_us.max(lateness);
            match self.histogram.get_mut(lateness as usize) {
                Some(bin) => *bin += 1,
                None => self.overflow += 1,
            }
        }
    }

    /// Adds another summary's streams (one per receiver thread).
    pub fn merge(&mut self, other: &Summary) {
        if self.histogram.is_empty() {
            self.histogram = vec![0; HISTOGRAM_US];
        }
        for (bin, n) in self.histogram.iter_mut().zip(&other.histogram) {
            *bin += n;
        }
        self.streams += other.streams;
        self.packets += other.packets;
        self.payload_bytes += other.payload_bytes;
        self.lost += other.lost;
        self.duplicates += other.duplicates;
        self.reordered += other.reordered;
        self.ts_gaps += other.ts_gaps;
        self.frames_not_sent += other.frames_not_sent;
        self.late += other.late;
        self.very_late += other.very_late;
        self.max_lateness_us = self.max_lateness_us.max(other.max_lateness_us);
        self.overflow += other.overflow;
    }

    /// The lateness at or below which `permille` ‰ of packets fell (nearest rank), in µs.
    fn lateness_quantile_us(&self, permille: u64) -> u64 {
        if self.packets == 0 {
            return 0;
        }
        let rank = nearest_rank(permille, self.packets);
        let mut seen = 0;
        for (us, n) in self.histogram.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return us as u64;
            }
        }
        self.max_lateness_us
    }

    pub fn report(&self) -> MediaReport {
        let pct = |n: u64| percent(n, self.packets);
        let ms = |us: u64| us as f64 / 1000.0;
        MediaReport {
            streams: self.streams,
            packets: self.packets,
            payload_bytes: self.payload_bytes,
            lost: self.lost,
            loss_pct: percent(self.lost, self.packets + self.lost),
            duplicates: self.duplicates,
            reordered: self.reordered,
            timestamp_gaps: self.ts_gaps,
            frames_not_sent: self.frames_not_sent,
            late_over_5ms: self.late,
            late_over_5ms_pct: pct(self.late),
            late_over_20ms_pct: pct(self.very_late),
            lateness_ms: Percentiles {
                p50: ms(self.lateness_quantile_us(500)),
                p99: ms(self.lateness_quantile_us(990)),
                p99_9: ms(self.lateness_quantile_us(999)),
                max: ms(self.max_lateness_us),
            },
        }
    }
}

/// The 1-based rank of the `permille` ‰ quantile among `n` values (nearest rank, in integers
/// so 99.9 % of 1,000 is exactly the 999th).
fn nearest_rank(permille: u64, n: u64) -> u64 {
    (permille * n).div_ceil(1000).clamp(1, n)
}

fn percent(n: u64, of: u64) -> f64 {
    match of {
        0 => 0.0,
        _ => n as f64 * 100.0 / of as f64,
    }
}

/// The media figures over every stream measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MediaReport {
    pub streams: u64,
    pub packets: u64,
    pub payload_bytes: u64,
    /// Sequence numbers never received (between each stream's lowest and highest).
    pub lost: u64,
    pub loss_pct: f64,
    pub duplicates: u64,
    /// Packets that came after a higher-numbered one.
    pub reordered: u64,
    /// Timestamp steps that were not the packets' worth of samples.
    pub timestamp_gaps: u64,
    /// Frames the sender skipped: media time jumped ahead with no sequence gap.
    pub frames_not_sent: u64,
    pub late_over_5ms: u64,
    pub late_over_5ms_pct: f64,
    pub late_over_20ms_pct: f64,
    /// Lateness against each stream's own RTP clock (µs resolution).
    pub lateness_ms: Percentiles,
}

/// Nearest-rank percentiles and the maximum, in ms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
}

impl Percentiles {
    /// Of a set of durations (setup times); `None` when there are none.
    pub fn of_durations(durations: &[Duration]) -> Option<Percentiles> {
        let mut us: Vec<u64> = durations.iter().map(|d| d.as_micros() as u64).collect();
        us.sort_unstable();
        let max = *us.last()?;
        let at = |permille: u64| {
            let rank = nearest_rank(permille, us.len() as u64) as usize;
            us[rank - 1] as f64 / 1000.0
        };
        Some(Percentiles {
            p50: at(500),
            p99: at(990),
            p99_9: at(999),
            max: max as f64 / 1000.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_000_000;

    /// A 20 ms PCMU stream: packet k (k from 0) carries sequence `seq0 + k` and timestamp
    /// `ts0 + 160 k`, and is due at `k × 20 ms`.
    struct Synthetic {
        seq0: u16,
        ts0: u32,
    }

    impl Synthetic {
        fn feed(&self, s: &mut StreamStats, k: i64, late_ns: i64) {
            self.feed_ts(s, k, k, late_ns);
        }

        /// Packet number `k` carrying the timestamp of frame `frame`, due with that frame.
        fn feed_ts(&self, s: &mut StreamStats, k: i64, frame: i64, late_ns: i64) {
            let seq = Seq16(self.seq0.wrapping_add(k as u16));
            let ts = Ts32(self.ts0).add_samples(160 * frame as u64);
            s.on_packet(frame * 20 * MS + late_ns, seq, ts, 160);
        }
    }

    #[test]
    fn a_perfect_stream_across_both_wraps_is_on_time() {
        let sender = Synthetic {
            seq0: 65_500,
            ts0: u32::MAX - 1000,
        };
        let mut s = StreamStats::new(8000, 160);
        for k in 0..500 {
            sender.feed(&mut s, k, 0);
        }
        let mut sum = Summary::default();
        sum.add_stream(&s);
        let r = sum.report();
        assert_eq!((r.streams, r.packets, r.payload_bytes), (1, 500, 80_000));
        assert_eq!(
            (r.lost, r.duplicates, r.reordered, r.timestamp_gaps),
            (0, 0, 0, 0)
        );
        assert_eq!(r.late_over_5ms, 0);
        assert_eq!(r.lateness_ms.max, 0.0);
    }

    /// 100 packets: 10, 11 and 50 lost; 21 before 20 (20 a millisecond after 21's slot);
    /// 30 twice; 40 7 ms late, 60 3 ms late; the first packet 2 ms late; after 70 the sender
    /// skipped two frames (sequence contiguous, timestamp three frames on).
    fn eventful() -> StreamStats {
        let sender = Synthetic {
            seq0: 65_530,
            ts0: 4_000_000_000,
        };
        let mut s = StreamStats::new(8000, 160);
        for k in 0..100 {
            let frame = if k > 70 { k + 2 } else { k };
            match k {
                10 | 11 | 50 | 20 => continue,
                0 => sender.feed(&mut s, 0, 2 * MS),
                21 => {
                    sender.feed(&mut s, 21, 0);
                    sender.feed(&mut s, 20, 21 * MS);
                }
                30 => {
                    sender.feed(&mut s, 30, 0);
                    sender.feed(&mut s, 30, 0);
                }
                40 => sender.feed(&mut s, 40, 7 * MS),
                60 => sender.feed(&mut s, 60, 3 * MS),
                _ => sender.feed_ts(&mut s, k, frame, 0),
            }
        }
        s
    }

    #[test]
    fn loss_reordering_duplicates_lateness_and_a_timestamp_gap_are_exact() {
        let s = eventful();
        assert_eq!(s.packets(), 97);
        assert_eq!(s.lost(), 3);
        let mut sum = Summary::default();
        sum.add_stream(&s);
        let r = sum.report();
        assert_eq!(r.packets, 97);
        assert_eq!(r.lost, 3);
        assert_eq!(r.loss_pct, 3.0);
        assert_eq!(r.duplicates, 1);
        assert_eq!(r.reordered, 1);
        assert_eq!((r.timestamp_gaps, r.frames_not_sent), (1, 2));
        // Re-anchored on the earliest packet: the late first packet is 2 ms late, the others
        // on time, 40 at 7 ms, 60 at 3 ms, 20 at 21 ms (it came 1 ms after 21's slot): of 97
        // packets the 49th is on time, the 97th (p99 and p99.9) is the latest.
        assert_eq!(r.late_over_5ms, 2);
        assert_eq!(r.late_over_5ms_pct, 2.0 * 100.0 / 97.0);
        assert_eq!(r.late_over_20ms_pct, 100.0 / 97.0);
        assert_eq!(
            r.lateness_ms,
            Percentiles {
                p50: 0.0,
                p99: 21.0,
                p99_9: 21.0,
                max: 21.0
            }
        );
    }

    #[test]
    fn streams_fold_and_summaries_merge() {
        let sender = Synthetic { seq0: 1, ts0: 0 };
        // 1,000 packets in two streams; 1 in 100 of the second 6 ms late.
        let mut a = StreamStats::new(8000, 160);
        let mut b = StreamStats::new(8000, 160);
        for k in 0..500 {
            sender.feed(&mut a, k, 0);
            sender.feed(&mut b, k, if k % 100 == 99 { 6 * MS } else { 0 });
        }
        let (mut one, mut two) = (Summary::default(), Summary::default());
        one.add_stream(&a);
        two.add_stream(&b);
        two.add_stream(&StreamStats::new(8000, 160));
        one.merge(&two);
        let r = one.report();
        assert_eq!((r.streams, r.packets, r.late_over_5ms), (2, 1000, 5));
        assert_eq!(r.late_over_5ms_pct, 0.5);
        // 995 on time: the 990th packet (p99) is on time, the 999th (p99.9) one of the five.
        assert_eq!(r.lateness_ms.p99, 0.0);
        assert_eq!((r.lateness_ms.p99_9, r.lateness_ms.max), (6.0, 6.0));
    }

    #[test]
    fn a_stream_at_48_khz_and_a_late_packet_older_than_the_window() {
        // Opus: 960 per 20 ms packet.
        let mut s = StreamStats::new(48_000, 960);
        for k in 0..2000u16 {
            if k != 5 {
                s.on_packet(
                    i64::from(k) * 20 * MS,
                    Seq16(k),
                    Ts32(960 * u32::from(k)),
                    80,
                );
            }
        }
        // Packet 5 arrives 1,995 packets late: counted as reordered (too old to be known
        // as a duplicate), not lost.
        s.on_packet(2000 * 20 * MS, Seq16(5), Ts32(960 * 5), 80);
        assert_eq!((s.packets(), s.lost()), (2000, 0));
        let mut sum = Summary::default();
        sum.add_stream(&s);
        let r = sum.report();
        assert_eq!((r.reordered, r.duplicates, r.timestamp_gaps), (1, 0, 0));
        assert_eq!(r.lateness_ms.max, 39_900.0);
        assert_eq!(r.late_over_5ms, 1);
    }

    #[test]
    fn setup_percentiles_are_nearest_rank() {
        let times: Vec<Duration> = (1..=1000).map(Duration::from_micros).collect();
        let p = Percentiles::of_durations(&times).unwrap();
        assert_eq!(
            p,
            Percentiles {
                p50: 0.5,
                p99: 0.99,
                p99_9: 0.999,
                max: 1.0
            }
        );
        assert_eq!(Percentiles::of_durations(&[]), None);
    }
}
