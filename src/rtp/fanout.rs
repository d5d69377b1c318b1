//! The RTP fan-out: per-call RTP/RTCP state and pacing, sans-IO.
//!
//! Owns, for every call, the SSRC, sequence number, timestamp origin, packet deadlines and
//! RTCP schedule, and writes each due packet into a caller-owned buffer. It does no I/O and
//! reads no clock: time comes in as `now`, randomness from a seed (str0m / quinn-proto
//! style), so tests run months of media on a virtual clock.
//!
//! # Driving it
//!
//! ```text
//! loop {
//!     let now = Instant::now();
//!     fanout.handle_timeout(now);
//!     while let Some(t) = fanout.poll_transmit(now, &mut buf) {
//!         socket_for(t.call, t.kind).send_to(&buf[..t.len], t.dest);
//!     }
//!     sleep_until(fanout.poll_timeout());        // or until a command arrives
//!     // commands: add_call / update_call / remove_call / set_channel, then loop
//! }
//! ```
//!
//! After any mutation, drain `poll_transmit` until it returns `None`, then ask
//! `poll_timeout` for the next wake-up (it can be early, never late).
//!
//! # Timing
//!
//! Everything sits on the [`MediaClock`] grid of 10 ms ticks. A call with ptime `p` sends the
//! packet for tick `t` at `clock.tick_deadline(t)`, then the one for `t + p/10`, and so on:
//! deadlines are computed from tick numbers, never by adding sleeps. The RTP timestamp of
//! the packet for tick `t` is `ts0 + (t − start_tick) × r/100` (wrapping), `r` the codec's
//! RTP clock (`Codec::clock_rate`: 80 per tick for G.711 and G.722, 480 for Opus), so it
//! follows the clock even across ptime changes, inactive periods and skipped packets.
//! RTCP reports (every 5 s on average, randomised, RFC 3550 §6.3.1) fall on the call's own RTP
//! deadlines, after that tick's packet, so a driver wakes once per tick for both.
//!
//! **Opus** is always sent as 20 ms frames (RFC 7587 lets the sender choose; our answer says
//! `a=ptime:20`), whatever ptime was negotiated, and its packets fall on even ticks: the
//! channel's Opus frames are 20 ms from tick 0, so packet `t` carries frame `t / 2`.
//!
//! **Codec switch** (a re-INVITE, RFC 7160 §4.3 with the same SSRC): the sequence numbers
//! continue; the timestamp continues from the value the next packet would have had on the old
//! clock, at that packet's tick, and advances at the new clock from there (`ts0`/`start_tick`
//! are rebased to that tick); the first packet after the switch carries the marker bit (an
//! Opus packet waits for the next even tick). RTCP SRs from then on speak the new clock from
//! the rebased origin. A ptime change alone keeps the schedule's phase and the timestamps.
//!
//! **Nothing to send.** A channel may have no payload for a packet yet (its wideband
//! encodings are still being made at start-up, or one codec's encoder failed): the fan-out
//! then sends nothing for that tick but keeps time, counts it in
//! [`CallCounters::unfilled_packets`], and the next packet sent takes the next sequence number
//! (no loss is reported) with the clock's timestamp and the marker bit, as after a skip.
//!
//! **Shared mode** (like a radio): the payload of the packet for tick `t` is the channel's
//! loop from sample `t × 80`, so every caller on a channel hears the same position and a
//! caller who joins mid-loop starts at the current position. A new call's first packet is
//! at the first tick at or after `now` that is a multiple of its ptime in ticks, so calls
//! with the same ptime send on the same ticks with the same payload bytes.
//!
//! **Timelines** (`timeline`): each channel plays a sequence of [`Piece`]s on the media clock
//! (its first render as a loop from tick 0, then whatever [`Fanout::queue`] adds: the next
//! shuffled pass at the current one's end, a fade-out segment and the next programme at a
//! schedule switch). Each call listens through its [`Playback`]: shared (the timeline at
//! `t`), from the start (the timeline at `t − δ`, δ fixed at its first packet so that it
//! begins at position 0 of the loop playing then; the pieces it still needs are kept after
//! the channel has moved on, so it hears a switch when its own time reaches it), or a
//! greeting first and then either of those (a shared caller joins at the programme's next
//! entry mark, [`PayloadSource::entry_after`], through its fade-in segment, waiting in the
//! greeting's trailing silence; a from-start caller at position 0 right after the greeting).
//! The source and position of each packet are chosen when it is written, from integers;
//! the RTP sequence and timestamps are the call's own and never move with the payload, and
//! the packet schedule does not depend on what plays.
//!
//! **Catch-up and skip-ahead.** If the driver is late (a stalled or overloaded thread, a
//! suspended VM), a call may have several packets due at once. Up to [`MAX_CATCHUP`] (3) due
//! packets are sent back to back, oldest first, each with its own deadline in
//! [`Transmit::due`]; receivers' jitter buffers absorb that. If more are due, the call skips
//! ahead to the current frame: only the packet of the latest due tick goes out, the sequence
//! number stays contiguous (no loss is reported), the timestamp jumps with the clock, and it
//! carries the marker bit so the receiver re-syncs its playout instead of dropping audio. The
//! skipped frames are counted ([`CallCounters::skipped_packets`],
//! [`Fanout::frames_skipped`]). A 500 ms stall at 20 ms ptime therefore costs one packet per
//! call, not 25: a driver that fell behind does less work, not more, so it cannot spiral.
//!
//! **RTCP.** Each call sends a compound SR + SDES CNAME (an empty RR before its first RTP
//! packet) first after U[0.5, 1.5] × 2.5 s, then every U[0.5, 1.5] × 5 s (RFC 3550 §6.2:
//! half the minimum interval at first, randomised). RTCP keeps flowing while the call is
//! inactive (RFC 3264 §5.1: direction does not affect RTCP). The SR's NTP time and RTP
//! timestamp are both computed from the report's deadline, so they describe one instant.
//! `remove_call` queues SR + SDES + BYE to go out at once.
//!
//! **Drift accounting.** The RTP timestamps of a call must stay on the monotonic clock for
//! months. For every RTP packet the fan-out takes `now` as its send instant and computes the
//! offset `(sent − first packet's sent) − (timestamp advance since the first packet / r)`,
//! the advance unwrapped to 64 bits from the tick (see [`Ts32::unwrap_after`]), exactly: kept
//! as `elapsed_ns × r − advance × 10⁹` in an `i128` (at 48 kHz a sample is not a whole number
//! of nanoseconds) and divided by `r` only when reported. A codec switch that changes the
//! clock restarts the meter (its history was on the other clock; the maximum stays). That offset is the packet's lateness relative to the first packet's, plus any
//! error in the timestamps or deadlines. Scheduling delays come and go; drift stays. So the
//! offsets are min-filtered over [`DRIFT_WINDOW`] (1 s, ≥ 16 packets) of send time: the
//! call's drift ([`CallCounters::drift_ns`]) is the latest closed window's minimum minus the
//! first window's. A one-off stall and its catch-up do not move it (other packets of the
//! window were on time); timestamps that run fast or slow, or a driver that is late every
//! time from some point on, do. The driver should pass a fresh `now` to each
//! `poll_transmit`, so that `now` is the instant the datagram leaves.
//!
//! # Scale
//!
//! Calls live in numbered slots (`table`; the call-id index serves the API only). RTP
//! deadlines are ticks, and calls with the same ptime share them, so they sit in a calendar
//! of per-tick runs (`calendar`): a packet costs taking the next entry of the run being
//! served and appending it to the run of its next tick, a 12-byte header and a payload copy
//! straight into the caller's buffer, with no heap operation, no hashing and no time
//! conversion per packet (the tick of `now` is remembered for the tick it is in). RTCP
//! deadlines (any instant, one per call every few seconds) stay in a binary heap. Nothing is
//! allocated per packet once the runs have grown. Removed or rescheduled calls leave stale
//! entries that are discarded when they surface (recognised by a per-call generation number
//! and the call's next tick). The SRTP sender, most of a call's size, is boxed so that a tick
//! walks less memory.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::channel::ChannelRender;
use crate::clock::{MediaClock, Seq16, TICKS_PER_SECOND, Ts32};
use crate::codec::{Codec, opus};
use crate::rtp::packet::{
    MAX_CNAME_LEN, MAX_RTCP_COMPOUND_LEN, NtpTime, RTP_HEADER_LEN, Report, RtpHeader, SenderReport,
    write_rtcp_compound, write_rtp_header,
};
use crate::rtp::srtp::{self, SrtpSender};
use crate::sip::sdp::MediaParams;

mod calendar;
mod table;
mod timeline;
use calendar::{Calendar, Due};
use table::CallTable;
pub use timeline::{GREETING_WAIT_TICKS, Piece, PieceKind, Playback};
use timeline::{Listening, Timeline};

/// Up to this many overdue packets of a call are sent in a burst; with more due, the call
/// skips ahead to the current frame (see the module docs).
pub const MAX_CATCHUP: u64 = 3;
/// A packet sent more than this after its deadline counts in [`CallCounters::late_packets`].
pub const LATE_AFTER: Duration = Duration::from_millis(5);
/// Shortest ptime, in ms.
pub const MIN_PTIME_MS: u32 = 10;
/// Longest ptime, in ms.
pub const MAX_PTIME_MS: u32 = 60;
/// The Opus packet time, whatever was negotiated (see the module docs).
pub const OPUS_PTIME_MS: u32 = 20;
/// The longest RTP payload a channel writes: one Opus frame (RFC 6716 §3.2.1's 1,275 bytes),
/// or 60 ms of G.711 or G.722 (one byte per 8 kHz clock unit).
pub const MAX_PAYLOAD_LEN: usize = {
    let narrow = (MAX_PTIME_MS as usize) * 8;
    if narrow > opus::MAX_FRAME_BYTES {
        narrow
    } else {
        opus::MAX_FRAME_BYTES
    }
};
/// Bytes kept free after every datagram in the buffer for what SRTP/SRTCP protection
/// appends (authentication tag, SRTCP index); `rtp::srtp`'s overhead must fit in it.
pub const PROTECTION_RESERVE: usize = 64;
const _: () = assert!(srtp::MAX_OVERHEAD <= PROTECTION_RESERVE);
/// The smallest buffer [`Fanout::poll_transmit`] accepts: the longest RTP packet or RTCP
/// compound it can write, plus [`PROTECTION_RESERVE`].
pub const MIN_BUFFER: usize = {
    let rtp = RTP_HEADER_LEN + MAX_PAYLOAD_LEN;
    let longest = if rtp > MAX_RTCP_COMPOUND_LEN {
        rtp
    } else {
        MAX_RTCP_COMPOUND_LEN
    };
    longest + PROTECTION_RESERVE
};
/// Nominal interval between RTCP reports (RFC 3550's 5 s minimum).
pub const RTCP_INTERVAL: Duration = Duration::from_secs(5);
/// Send-time window over which drift offsets are min-filtered (see the module docs).
pub const DRIFT_WINDOW: Duration = Duration::from_secs(1);
const NANOS_PER_SEC: i128 = 1_000_000_000;

/// RTP timestamp units per 10 ms tick at `codec`'s clock: 80 at 8 kHz, 480 for Opus.
fn units_per_tick(codec: Codec) -> u64 {
    u64::from(codec.clock_rate() / TICKS_PER_SECOND)
}

/// The ticks a codec's packets are aligned to: Opus frames are 20 ms from tick 0.
fn frame_ticks(codec: Codec) -> u64 {
    if codec == Codec::Opus { 2 } else { 1 }
}

/// The deadline of a call's first RTP tick at or after `t` (its RTP ticks are `next_tick`
/// plus whole ptimes). Reports are scheduled there so that they ride with the call's packets:
/// a media thread then wakes once per tick, not once more for each report. With a thousand
/// calls, reports at their own instants woke each thread about 100 more times a second than
/// its 50 ticks (`voluntary_ctxt_switches`), each wake-up dearer than a packet. Moving a report
/// up to one ptime later changes nothing a peer can see: RFC 3550 §6.3.1 randomises the
/// interval over seconds, and the report is stamped with the instant it is scheduled for.
fn on_rtp_schedule(clock: MediaClock, next_tick: u64, ptime_ticks: u64, t: Instant) -> Instant {
    let tick = clock.tick_at_or_after(t);
    let ahead = tick
        .saturating_sub(next_tick)
        .next_multiple_of(ptime_ticks.max(1));
    clock.tick_deadline(next_tick.saturating_add(ahead))
}

/// Where a call's payload comes from. [`ChannelRender`] is the real one; tests use fakes.
pub trait PayloadSource {
    /// The channel name (calls are re-pointed by name in [`Fanout::set_channel`]).
    fn name(&self) -> &str;
    /// The source's length in 10 ms ticks (a loop's period; a segment's end).
    fn len_ticks(&self) -> u64;
    /// Writes the payload of the packet that covers ticks `tick .. tick + ticks` (10 ms
    /// each) of the source, encoded with `codec`, into `out`; returns its length, 0 when
    /// there is nothing to send. Positions past the end wrap (a loop). Every caller asking
    /// for the same position gets the same bytes.
    fn fill_packet(&self, codec: Codec, tick: u64, ticks: u64, out: &mut [u8]) -> usize;
    /// The first entry mark at or after `position_ticks` (modulo the length): where a caller
    /// whose greeting has ended may join, and the fade-in segment to play from there (after
    /// which the source itself goes on at the entry position plus the segment's length).
    /// `None`: join at once, without a segment.
    fn entry_after(&self, position_ticks: u64) -> Option<(u64, Arc<Self>)>
    where
        Self: Sized,
    {
        let _ = position_ticks;
        None
    }
}

impl PayloadSource for ChannelRender {
    fn name(&self) -> &str {
        &self.name
    }

    fn len_ticks(&self) -> u64 {
        // An RTP render is a whole number of 20 ms frames.
        self.frames() * 2
    }

    fn fill_packet(&self, codec: Codec, tick: u64, ticks: u64, out: &mut [u8]) -> usize {
        ChannelRender::fill_packet(self, codec, tick, ticks, out)
    }

    fn entry_after(&self, position_ticks: u64) -> Option<(u64, Arc<Self>)> {
        ChannelRender::entry_after(self, position_ticks)
    }
}

// A greeted shared caller waits in the greeting's trailing silence for the next entry.
const _: () = assert!(
    crate::channel::segment::GREETING_SILENCE_MS as u64 / 10 >= GREETING_WAIT_TICKS
        && crate::channel::segment::ENTRY_EVERY_MS as u64 / 10 <= GREETING_WAIT_TICKS
);

/// Everything the fan-out needs to stream to one call: the negotiated media, and what we
/// chose for it.
#[derive(Debug)]
pub struct CallMedia<S = ChannelRender> {
    /// The caller's id for this call.
    pub call: u64,
    /// As SDP negotiated it. Its ptime is rounded to a multiple of 10 within 10..=60; while
    /// its direction is inactive timing goes on and no RTP is sent.
    pub params: MediaParams,
    /// The channel the call listens to (its render starts the channel's timeline when no
    /// other call has).
    pub channel: Arc<S>,
    /// How the call listens to the channel: shared, from the start, greeting first.
    pub playback: Playback<S>,
    /// RTCP CNAME (truncated to 255 bytes).
    pub cname: String,
    /// The SSRC to send with; `None` picks a random one. A multicast stream fixes it (derived
    /// from its channel and codec) so that receivers see the same source across restarts.
    pub ssrc: Option<u32>,
}

/// Which socket a [`Transmit`] belongs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    /// An RTP packet.
    Rtp,
    /// An RTCP compound packet.
    Rtcp,
}

/// A datagram written into the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Transmit {
    /// The call it belongs to.
    pub call: u64,
    /// RTP or RTCP.
    pub kind: PacketKind,
    /// Destination address.
    pub dest: SocketAddr,
    /// Bytes written at the start of the buffer.
    pub len: usize,
    /// The deadline it was due at (the shell measures lateness against it).
    pub due: Instant,
    /// The call's route ([`Fanout::set_route`]): which socket, without a lookup per packet.
    pub route: u32,
}

/// Per-call counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CallCounters {
    /// RTP packets written.
    pub packets_sent: u64,
    /// RTP payload octets written (RTCP's "sender's octet count").
    pub octets_sent: u64,
    /// RTP packets written more than [`LATE_AFTER`] after their deadline.
    pub late_packets: u64,
    /// Packets skipped by the skip-ahead rule.
    pub skipped_packets: u64,
    /// Packets not sent because the channel had no payload for them (its encoding for the
    /// call's codec not ready yet); time and sequence carry on.
    pub unfilled_packets: u64,
    /// RTCP reports written (the final BYE, written after removal, is not counted).
    pub rtcp_sent: u64,
    /// Drift of the RTP timestamps from the monotonic clock, in ns (positive: the packets
    /// leave later than their timestamps say), as of the last closed [`DRIFT_WINDOW`]; 0
    /// until the second window closes.
    pub drift_ns: i64,
    /// Largest `|drift_ns|` of the call so far.
    pub max_abs_drift_ns: u64,
}

/// Per-call drift accounting (see the module docs), from the first RTP packet on (or the
/// first after a clock change).
///
/// Offsets are kept scaled by the clock rate (`elapsed_ns × rate − units × 10⁹`, units of
/// 1/rate ns) so they are exact at any rate; the min-filter commutes with that scaling.
#[derive(Debug, Clone, Copy)]
struct DriftMeter {
    /// The RTP clock rate the timestamps run at.
    rate: i128,
    units_per_tick: u64,
    first_sent: Instant,
    last_tick: u64,
    last_ts: Ts32,
    /// Timestamp units advanced since the first packet, unwrapped.
    ts_advanced: i64,
    window_start: Instant,
    window_min: i128,
    /// The first window's minimum: the drift's zero.
    anchor: Option<i128>,
}

impl DriftMeter {
    fn new(sent: Instant, tick: u64, ts: Ts32, clock_rate: u32) -> Self {
        DriftMeter {
            rate: i128::from(clock_rate.max(1)),
            units_per_tick: u64::from(clock_rate / TICKS_PER_SECOND),
            first_sent: sent,
            last_tick: tick,
            last_ts: ts,
            ts_advanced: 0,
            window_start: sent,
            window_min: 0,
            anchor: None,
        }
    }

    /// Accounts one packet; returns the call's new drift (ns) when this packet closes a
    /// window.
    fn on_sent(&mut self, sent: Instant, tick: u64, ts: Ts32) -> Option<i64> {
        let expected = tick
            .saturating_sub(self.last_tick)
            .saturating_mul(self.units_per_tick);
        self.ts_advanced = self
            .ts_advanced
            .saturating_add(ts.unwrap_after(self.last_ts, expected));
        self.last_tick = tick;
        self.last_ts = ts;
        let elapsed = sent.saturating_duration_since(self.first_sent).as_nanos() as i128;
        let offset = elapsed * self.rate - i128::from(self.ts_advanced) * NANOS_PER_SEC;
        if sent.saturating_duration_since(self.window_start) < DRIFT_WINDOW {
            self.window_min = self.window_min.min(offset);
            return None;
        }
        let closed = self.window_min;
        self.window_start = sent;
        self.window_min = offset;
        let anchor = *self.anchor.get_or_insert(closed);
        let drift = (closed - anchor) / self.rate;
        Some(i64::try_from(drift).unwrap_or(if drift < 0 { i64::MIN } else { i64::MAX }))
    }
}

/// Rounds a negotiated ptime to the grid: nearest multiple of 10 ms, within 10..=60.
pub fn normalize_ptime(ptime_ms: u32) -> u32 {
    (ptime_ms.saturating_add(5) / 10 * 10).clamp(MIN_PTIME_MS, MAX_PTIME_MS)
}

/// The ptime the fan-out sends `codec` with: [`OPUS_PTIME_MS`] for Opus, else the negotiated
/// one rounded to the grid ([`normalize_ptime`]).
pub fn packet_ptime_ms(codec: Codec, negotiated_ms: u32) -> u32 {
    if codec == Codec::Opus {
        OPUS_PTIME_MS
    } else {
        normalize_ptime(negotiated_ms)
    }
}

#[derive(Debug)]
struct CallState<S> {
    media: CallMedia<S>,
    /// Index of its channel's timeline in [`Fanout::timelines`].
    timeline: usize,
    /// How it listens to the timeline (`media.playback` as it goes).
    listening: Listening<S>,
    /// Tick of its first packet: where a greeting starts.
    first_tick: u64,
    generation: u64,
    ssrc: u32,
    /// Sequence number of the next RTP packet.
    seq: Seq16,
    /// Tick of the first packet (or of the first after a codec switch), where the timestamp
    /// is `ts0`.
    start_tick: u64,
    ts0: Ts32,
    /// Tick of the next RTP packet.
    next_tick: u64,
    ptime_ticks: u64,
    /// Set the marker bit on the next RTP packet (first packet, after a skip, a resume, a
    /// codec switch or unfilled packets).
    marker: bool,
    next_rtcp: Instant,
    counters: CallCounters,
    /// `None` until the first RTP packet.
    drift: Option<DriftMeter>,
    /// Protects every RTP packet and RTCP compound when the call negotiated SRTP; kept while
    /// the keys stay the same (its ROC and SRTCP index must carry on). Boxed: inline, its
    /// 1.9 KiB would sit in every slot of the calls table, SRTP or not, and a tick walks
    /// the slots.
    srtp: Option<Box<SrtpSender>>,
    /// The shell's tag for the call's socket ([`Fanout::set_route`]), on every transmit.
    route: u32,
}

impl<S> CallState<S> {
    /// The RTP timestamp of the packet for `tick` (at or after `start_tick`) on the call's
    /// current clock.
    fn timestamp_at(&self, tick: u64) -> Ts32 {
        let units = tick.saturating_sub(self.start_tick);
        self.ts0
            .add_samples(units.wrapping_mul(units_per_tick(self.media.params.codec)))
    }
}

impl<S: PayloadSource> CallState<S> {
    /// Writes the RTP packet for `tick`, due at `due`, (header and payload) into `buf` and
    /// accounts it as sent at `now`: counters and drift. Returns its length; `None` when the
    /// channel had nothing for it (counted; time and sequence carry on, see the module docs).
    fn write_rtp(
        &mut self,
        timeline: &Timeline<S>,
        tick: u64,
        due: Instant,
        now: Instant,
        buf: &mut [u8],
    ) -> Option<usize> {
        let params = self.media.params;
        let timestamp = self.timestamp_at(tick);
        let header = RtpHeader {
            marker: self.marker,
            payload_type: params.payload_type,
            seq: self.seq,
            timestamp,
            ssrc: self.ssrc,
        };
        write_rtp_header(&header, buf).ok()?;
        let end = buf.len().saturating_sub(PROTECTION_RESERVE);
        let payload = buf.get_mut(RTP_HEADER_LEN..end)?;
        let payload_len = self.fill_payload(timeline, tick, payload);
        if payload_len == 0 {
            self.counters.unfilled_packets += 1;
            self.marker = true;
            return None;
        }
        let len = RTP_HEADER_LEN + payload_len;
        self.seq = self.seq.next();
        self.marker = false;
        self.counters.packets_sent += 1;
        self.counters.octets_sent += payload_len as u64;
        if now.saturating_duration_since(due) > LATE_AFTER {
            self.counters.late_packets += 1;
        }
        let closed = match &mut self.drift {
            Some(m) => m.on_sent(now, tick, timestamp),
            None => {
                let rate = params.codec.clock_rate();
                self.drift = Some(DriftMeter::new(now, tick, timestamp, rate));
                None
            }
        };
        if let Some(drift) = closed {
            self.counters.drift_ns = drift;
            self.counters.max_abs_drift_ns =
                self.counters.max_abs_drift_ns.max(drift.unsigned_abs());
        }
        Some(len)
    }

    /// Writes the payload for the packet at `tick` from what the call hears then; a packet
    /// across a piece boundary in parts (never an Opus frame, see `timeline`). 0: nothing.
    fn fill_payload(&mut self, timeline: &Timeline<S>, tick: u64, out: &mut [u8]) -> usize {
        let codec = self.media.params.codec;
        let ticks = self.ptime_ticks;
        self.listening
            .prepare(timeline, self.first_tick, tick, ticks);
        let (mut done, mut written) = (0, 0);
        while done < ticks {
            let slot = self.listening.slot(timeline, self.first_tick, tick + done);
            let (n, position) = if codec == Codec::Opus {
                (ticks - done, slot.position & !1)
            } else {
                ((ticks - done).min(slot.run.max(1)), slot.position)
            };
            let Some(rest) = out.get_mut(written..) else {
                return 0;
            };
            let w = slot.source.fill_packet(codec, position, n, rest);
            if w == 0 {
                return 0;
            }
            written += w;
            done += n;
        }
        written
    }

    /// What the call's next packet plays: the source and the position in it (modulo its
    /// length), for the page's "now playing".
    fn playing(&self, timeline: &Timeline<S>) -> (Arc<S>, u64) {
        let slot = self
            .listening
            .slot(timeline, self.first_tick, self.next_tick);
        let len = slot.source.len_ticks().max(1);
        (Arc::clone(slot.source), slot.position % len)
    }
}

/// An RTCP deadline; ordered by deadline, then slot, so equal deadlines come out in a
/// deterministic order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct RtcpDue {
    due: Instant,
    slot: u32,
    generation: u64,
}

/// The tick `now` falls in, remembered with its bounds: most instants a fan-out sees fall in
/// the tick of the one before, and a tick from an instant is a 128-bit division.
#[derive(Debug, Clone, Copy)]
struct TickCache {
    tick: u64,
    from: Instant,
    until: Instant,
}

#[derive(Debug)]
struct PendingBye {
    call: u64,
    dest: SocketAddr,
    report: Report,
    cname: String,
    due: Instant,
    /// The call's sender context: the BYE is protected like the rest of its RTCP.
    srtp: Option<Box<SrtpSender>>,
    route: u32,
}

/// The RTP fan-out for all calls of the process.
///
/// Method groups follow quinn-proto: getters (`counters`, `call_count`), `handle_timeout`
/// for time, mutators (`add_call`, `update_call`, `remove_call`, `set_channel`) and
/// `poll_transmit` then `poll_timeout` for output.
#[derive(Debug)]
pub struct Fanout<S = ChannelRender> {
    clock: MediaClock,
    wall_epoch: SystemTime,
    rng: StdRng,
    calls: CallTable<CallState<S>>,
    /// Channels' timelines; a call holds its index. A slot is freed (`None`) when its
    /// channel has no calls and nothing queued.
    timelines: Vec<Option<Timeline<S>>>,
    /// Per timeline slot, the earliest tick any of its calls may still read (reused by
    /// `prune`, so pruning allocates only when the slots grow).
    earliest_reads: Vec<u64>,
    /// Tick at or after which `handle_timeout` prunes the timelines again.
    next_prune_tick: u64,
    /// RTP deadlines, by tick.
    rtp: Calendar,
    /// RTCP deadlines (one per call every few seconds, at any instant).
    rtcp: BinaryHeap<Reverse<RtcpDue>>,
    ticks: TickCache,
    byes: VecDeque<PendingBye>,
    next_generation: u64,
    /// The latest time seen through any entry point; BYEs are due at it.
    now: Instant,
    /// Largest `|drift|` of any call since the start, removed calls included.
    max_abs_drift_ns: u64,
    /// Frames skipped by the skip-ahead rule since the start, every call's.
    frames_skipped: u64,
}

/// A call between two fan-outs (see [`Fanout::take_call`]): its whole RTP state, and the
/// pieces of its channel's timeline it may still read.
#[derive(Debug)]
pub struct MovingCall<S = ChannelRender> {
    state: CallState<S>,
    base: Arc<S>,
    pieces: Vec<Piece<S>>,
}

impl<S> MovingCall<S> {
    /// The call's id.
    pub fn call(&self) -> u64 {
        self.state.media.call
    }
}

impl<S: PayloadSource> Fanout<S> {
    /// A fan-out on `clock`; `wall_epoch` is the wall-clock time at the clock's epoch, used
    /// only for RTCP NTP timestamps, never for pacing.
    pub fn new(clock: MediaClock, seed: u64, wall_epoch: SystemTime) -> Self {
        Fanout {
            clock,
            wall_epoch,
            rng: StdRng::seed_from_u64(seed),
            calls: CallTable::default(),
            timelines: Vec::new(),
            earliest_reads: Vec::new(),
            next_prune_tick: 0,
            rtp: Calendar::default(),
            rtcp: BinaryHeap::new(),
            ticks: TickCache {
                tick: 0,
                from: clock.epoch(),
                until: clock.tick_deadline(1),
            },
            byes: VecDeque::new(),
            next_generation: 0,
            now: clock.epoch(),
            max_abs_drift_ns: 0,
            frames_skipped: 0,
        }
    }

    /// Frames skipped by the skip-ahead rule since the fan-out started, every call's (removed
    /// and moved-away ones included).
    pub fn frames_skipped(&self) -> u64 {
        self.frames_skipped
    }

    /// Largest absolute drift (ns) of any call since the fan-out started, removed calls
    /// included (see the module docs).
    pub fn max_abs_drift_ns(&self) -> u64 {
        self.max_abs_drift_ns
    }

    /// The ids of the calls being served, in no particular order.
    pub fn call_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.calls.ids()
    }

    /// Counters of a call.
    pub fn counters(&self, call: u64) -> Option<CallCounters> {
        self.calls.get(call).map(|c| c.counters)
    }

    /// Number of calls being served.
    pub fn call_count(&self) -> usize {
        self.calls.len()
    }

    /// A call's media as the fan-out streams it (ptime normalised, peer followed).
    pub fn params(&self, call: u64) -> Option<MediaParams> {
        self.calls.get(call).map(|c| c.media.params)
    }

    /// The SSRC of a call.
    pub fn ssrc(&self, call: u64) -> Option<u32> {
        self.calls.get(call).map(|c| c.ssrc)
    }

    /// Starts streaming to a call with a random sequence number and timestamp and its fixed
    /// SSRC or a random one; the first packet (with the marker bit) is due at the first
    /// ptime-aligned tick at or after `now`. A call id already present is replaced.
    pub fn add_call(&mut self, now: Instant, media: CallMedia<S>) {
        let random_ssrc = self.rng.random();
        let ssrc = media.ssrc.unwrap_or(random_ssrc);
        let seq = self.rng.random();
        let ts = self.rng.random();
        self.add_call_with_start(now, media, ssrc, seq, ts);
    }

    /// [`Fanout::add_call`] with a chosen SSRC, first sequence number and first timestamp
    /// (for wrap tests).
    pub fn add_call_with_start(
        &mut self,
        now: Instant,
        mut media: CallMedia<S>,
        ssrc: u32,
        seq: u16,
        ts: u32,
    ) {
        self.observe(now);
        media.params.ptime_ms = packet_ptime_ms(media.params.codec, media.params.ptime_ms);
        truncate_cname(&mut media.cname);
        let ptime_ticks = u64::from(media.params.ptime_ms / 10);
        let start_tick = self
            .clock
            .tick_at_or_after(now)
            .div_ceil(ptime_ticks)
            .saturating_mul(ptime_ticks);
        let first_report =
            self.clock.tick_deadline(start_tick) + self.rtcp_delay(RTCP_INTERVAL / 2);
        let next_rtcp = on_rtp_schedule(self.clock, start_tick, ptime_ticks, first_report);
        let generation = self.next_generation;
        self.next_generation += 1;
        let call = media.call;
        let srtp = media.params.srtp.map(|keys| Box::new(keys.sender()));
        let listening = Listening::new(std::mem::take(&mut media.playback));
        if let Some(old) = self.calls.remove(call) {
            self.leave_timeline(old.timeline);
        }
        let timeline = self.join_timeline(&media.channel);
        let slot = self.calls.insert(
            call,
            CallState {
                media,
                timeline,
                listening,
                first_tick: start_tick,
                generation,
                ssrc,
                seq: Seq16(seq),
                start_tick,
                ts0: Ts32(ts),
                next_tick: start_tick,
                ptime_ticks,
                marker: true,
                next_rtcp,
                counters: CallCounters::default(),
                drift: None,
                srtp,
                route: 0,
            },
        );
        self.schedule_rtp(start_tick, slot, generation);
        self.schedule_rtcp(next_rtcp, slot, generation);
    }

    /// Tags `call` with `route`, given back on each of its transmits (0 until set; it moves
    /// with the call). The shell says with it which socket the call's packets leave from, so
    /// that sending needs no lookup of the call: at thousands of calls that lookup is a cache
    /// miss per packet. False for an unknown call.
    pub fn set_route(&mut self, call: u64, route: u32) -> bool {
        let Some(slot) = self.calls.slot_of(call) else {
            return false;
        };
        self.calls.at_mut(slot).map(|c| c.route = route).is_some()
    }

    /// Re-targets a call (re-INVITE) without a gap in its sequence numbers. A codec or
    /// ptime change applies from the next packet; resuming after inactivity sets the marker
    /// bit. A codec change rebases the timestamp onto the new clock (see the module docs).
    /// Returns false for an unknown call.
    pub fn update_call(&mut self, call: u64, mut params: MediaParams) -> bool {
        let Some(slot) = self.calls.slot_of(call) else {
            return false;
        };
        let Some(c) = self.calls.at_mut(slot) else {
            return false;
        };
        if params.sending() && !c.media.params.sending() {
            c.marker = true;
        }
        params.ptime_ms = packet_ptime_ms(params.codec, params.ptime_ms);
        c.ptime_ticks = u64::from(params.ptime_ms / 10);
        if params.srtp != c.media.params.srtp {
            // New keys (a re-INVITE's new a=crypto): a new context, ROC and index from 0.
            c.srtp = params.srtp.map(|keys| Box::new(keys.sender()));
        }
        let old = c.media.params.codec;
        let mut moved = None;
        if params.codec != old {
            // RFC 7160 §4.3: continue from the timestamp the next packet would have had on
            // the old clock, at its tick, and count at the new clock from there.
            c.ts0 = c.timestamp_at(c.next_tick);
            c.start_tick = c.next_tick;
            c.marker = true;
            if params.codec.clock_rate() != old.clock_rate() {
                c.drift = None;
            }
            let aligned = c.next_tick.next_multiple_of(frame_ticks(params.codec));
            if aligned != c.next_tick {
                c.next_tick = aligned;
                moved = Some((aligned, c.generation));
            }
        }
        c.media.params = params;
        if let Some((tick, generation)) = moved {
            self.schedule_rtp(tick, slot, generation);
        }
        true
    }

    /// Stops a call at once: no further RTP, and one SR + SDES + BYE queued to go out on
    /// the next `poll_transmit`. Returns its final counters (the BYE not yet counted).
    pub fn remove_call(&mut self, call: u64) -> Option<CallCounters> {
        let c = self.calls.remove(call)?;
        self.leave_timeline(c.timeline);
        let due = self.now;
        let report = self.report_at(&c, due);
        let dest = c.media.params.rtcp_destination();
        self.byes.push_back(PendingBye {
            call,
            dest,
            report,
            cname: c.media.cname,
            due,
            srtp: c.srtp,
            route: c.route,
        });
        Some(c.counters)
    }

    /// Takes a call out to move it to another fan-out on the same clock
    /// ([`Fanout::adopt_call`]): between two packets, with everything its stream depends on
    /// (SSRC, next sequence number, timestamp origin, schedule, counters, drift meter, SRTP
    /// sender context, RTCP schedule, how far it is through its greeting or programme), so the
    /// receiver sees one unbroken stream. No BYE: the call goes on elsewhere.
    pub fn take_call(&mut self, call: u64) -> Option<MovingCall<S>> {
        let state = self.calls.remove(call)?;
        let (base, pieces) = match self.timelines.get(state.timeline).and_then(Option::as_ref) {
            Some(tl) => (Arc::clone(tl.base()), tl.pieces().iter().cloned().collect()),
            None => (Arc::clone(&state.media.channel), Vec::new()),
        };
        self.leave_timeline(state.timeline);
        Some(MovingCall {
            state,
            base,
            pieces,
        })
    }

    /// Takes over a call [`Fanout::take_call`] gave up: its next packet is the one it would
    /// have sent where it was (skip-ahead applies if the move took that long). Pieces of its
    /// channel this fan-out has already dropped (a from-start caller may still be in them)
    /// are put back. A call id already present is replaced.
    pub fn adopt_call(&mut self, now: Instant, moving: MovingCall<S>) {
        self.observe(now);
        let MovingCall {
            mut state,
            base,
            pieces,
        } = moving;
        let call = state.media.call;
        if let Some(old) = self.calls.remove(call) {
            self.leave_timeline(old.timeline);
        }
        let slot = match self.timeline_slot(state.media.channel.name()) {
            Some(slot) => slot,
            None => self.new_timeline(state.media.channel.name(), base),
        };
        if let Some(tl) = self.timelines[slot].as_mut() {
            tl.restore_history(pieces);
            tl.calls += 1;
        }
        state.timeline = slot;
        state.generation = self.next_generation;
        self.next_generation += 1;
        let (rtp_tick, rtcp_due, generation) = (state.next_tick, state.next_rtcp, state.generation);
        self.max_abs_drift_ns = self.max_abs_drift_ns.max(state.counters.max_abs_drift_ns);
        let slot = self.calls.insert(call, state);
        self.schedule_rtp(rtp_tick, slot, generation);
        self.schedule_rtcp(rtcp_due, slot, generation);
    }

    /// Puts `render` in place of what channel `render.name()` plays now (its first render,
    /// or the loop piece playing), from every call's next packet on (a frame boundary), at
    /// the same position: the music carries on at the same sample of the new render, for
    /// shared and from-start calls alike. Pieces queued for later stay (queue again to
    /// change them).
    pub fn set_channel(&mut self, render: Arc<S>) {
        for c in self.calls.values_mut() {
            if c.media.channel.name() == render.name() {
                c.media.channel = Arc::clone(&render);
            }
        }
        let tick = self.clock.tick_at(self.now);
        if let Some(tl) = self
            .timelines
            .iter_mut()
            .flatten()
            .find(|t| t.name == render.name())
        {
            tl.replace_current(&render, tick);
        }
    }

    /// Adds `piece` to `channel`'s timeline, replacing any piece queued at or after its
    /// tick. A tick already due (packets for it may have gone) becomes the next one; ticks
    /// and offsets are rounded up to even (Opus frames). A channel without calls keeps its
    /// timeline while pieces are queued, so a call that comes later hears the plan.
    pub fn queue(&mut self, channel: &str, piece: Piece<S>) {
        let earliest = self.clock.tick_at(self.now) + 1;
        let slot = match self.timeline_slot(channel) {
            Some(slot) => slot,
            None => self.new_timeline(channel, Arc::clone(&piece.source)),
        };
        if let Some(tl) = self.timelines[slot].as_mut() {
            tl.queue(piece, earliest);
        }
    }

    /// What a call's next packet plays: the source (channel render, pass, greeting or
    /// segment) and the position in it in ticks.
    pub fn playing(&self, call: u64) -> Option<(Arc<S>, u64)> {
        let c = self.calls.get(call)?;
        let tl = self.timelines.get(c.timeline)?.as_ref()?;
        Some(c.playing(tl))
    }

    /// The pieces queued on `channel`'s timeline (tick, kind, offset), oldest first.
    pub fn pieces(&self, channel: &str) -> Vec<(u64, PieceKind, u64)> {
        self.timeline_slot(channel)
            .and_then(|slot| self.timelines[slot].as_ref())
            .map(|tl| {
                tl.pieces()
                    .iter()
                    .map(|p| (p.at_tick, p.kind, p.offset_ticks))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn timeline_slot(&self, channel: &str) -> Option<usize> {
        self.timelines
            .iter()
            .position(|t| t.as_ref().is_some_and(|t| t.name == channel))
    }

    fn new_timeline(&mut self, channel: &str, base: Arc<S>) -> usize {
        let tl = Some(Timeline::new(channel, base));
        match self.timelines.iter().position(Option::is_none) {
            Some(free) => {
                self.timelines[free] = tl;
                free
            }
            None => {
                self.timelines.push(tl);
                self.timelines.len() - 1
            }
        }
    }

    /// The slot of the timeline of `channel`'s name (started from it when none), counted.
    fn join_timeline(&mut self, channel: &Arc<S>) -> usize {
        let slot = match self.timeline_slot(channel.name()) {
            Some(slot) => slot,
            None => self.new_timeline(channel.name(), Arc::clone(channel)),
        };
        if let Some(tl) = self.timelines[slot].as_mut() {
            tl.calls += 1;
        }
        slot
    }

    /// A call leaves timeline `slot`. Its pieces are pruned within a second
    /// (`handle_timeout`), not here: that is a pass over every call, and thousands of calls
    /// can end at once.
    fn leave_timeline(&mut self, slot: usize) {
        if let Some(entry) = self.timelines.get_mut(slot)
            && let Some(tl) = entry
        {
            tl.calls = tl.calls.saturating_sub(1);
            if tl.calls == 0 && tl.pieces().is_empty() {
                *entry = None;
            }
        }
    }

    /// Drops the pieces no call can reach any more, and the timelines with no calls and
    /// nothing queued.
    fn prune(&mut self) {
        let now_tick = self.clock.tick_at(self.now);
        self.next_prune_tick = now_tick + TICKS_PER_SECOND as u64;
        self.earliest_reads.clear();
        self.earliest_reads.resize(self.timelines.len(), now_tick);
        for c in self.calls.values() {
            if let Some(e) = self.earliest_reads.get_mut(c.timeline) {
                *e = (*e).min(c.listening.earliest_read(c.first_tick, c.next_tick));
            }
        }
        for (slot, earliest) in self.timelines.iter_mut().zip(&self.earliest_reads) {
            let Some(tl) = slot else {
                continue;
            };
            tl.prune(*earliest);
            if tl.calls == 0 && tl.pieces().is_empty() {
                *slot = None;
            }
        }
    }

    /// Tells the fan-out the time is `now`: discards stale deadlines so that
    /// `poll_timeout` does not wake the driver for calls that are gone.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.observe(now);
        if self.tick_of(self.now) >= self.next_prune_tick {
            self.prune();
            // After a burst of calls (or of BYEs), the queues give its room back, as the
            // calls table does (`table::give_back_room`).
            const SMALL: usize = 64;
            if self.rtcp.capacity() > SMALL && self.rtcp.len() < self.rtcp.capacity() / 4 {
                self.rtcp.shrink_to((self.rtcp.len() * 2).max(SMALL));
            }
            if self.byes.capacity() > SMALL && self.byes.len() < self.byes.capacity() / 4 {
                self.byes.shrink_to((self.byes.len() * 2).max(SMALL));
            }
        }
        while let Some((tick, _, due)) = self.rtp.peek() {
            if self.rtp_is_live(tick, due) {
                break;
            }
            self.rtp.pop();
        }
        while let Some(Reverse(e)) = self.rtcp.peek() {
            if self.rtcp_is_live(e) {
                break;
            }
            self.rtcp.pop();
        }
    }

    /// Writes the next datagram due at or before `now` into `buf`, earliest deadline
    /// first (queued BYEs before everything), and says where it goes. Call until `None`.
    ///
    /// # Panics
    ///
    /// If `buf` is shorter than [`MIN_BUFFER`] (a programming error).
    #[must_use]
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        assert!(buf.len() >= MIN_BUFFER, "poll_transmit buffer too small");
        self.observe(now);
        if let Some(bye) = self.poll_bye(buf) {
            return Some(bye);
        }
        loop {
            // Earliest deadline first; RTP before RTCP at the same instant.
            let rtp = self.rtp.peek().filter(|&(_, due, _)| due <= now);
            let rtcp = self
                .rtcp
                .peek()
                .map(|&Reverse(e)| e)
                .filter(|e| e.due <= now && rtp.is_none_or(|(_, due, _)| e.due < due));
            let t = if let Some(e) = rtcp {
                self.rtcp.pop();
                if !self.rtcp_is_live(&e) {
                    continue;
                }
                self.emit_rtcp(e.slot, e.due, now, buf)
            } else if let Some((tick, due, entry)) = rtp {
                self.rtp.pop();
                if !self.rtp_is_live(tick, entry) {
                    continue;
                }
                self.emit_rtp(entry.slot, due, now, buf)
            } else {
                return None;
            };
            if t.is_some() {
                return t;
            }
        }
    }

    /// Writes the next queued BYE (of a removed call) into `buf`, and nothing else: for a
    /// driver that closes the call's sockets right after [`Fanout::remove_call`].
    ///
    /// # Panics
    ///
    /// If `buf` is shorter than [`MIN_BUFFER`] (a programming error).
    #[must_use]
    pub fn poll_bye(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        assert!(buf.len() >= MIN_BUFFER, "poll_bye buffer too small");
        while let Some(mut bye) = self.byes.pop_front() {
            if let Ok(len) = write_rtcp_compound(&bye.report, &bye.cname, true, buf)
                && let Some(len) = protect(bye.srtp.as_deref_mut(), PacketKind::Rtcp, buf, len)
            {
                return Some(Transmit {
                    call: bye.call,
                    kind: PacketKind::Rtcp,
                    dest: bye.dest,
                    len,
                    due: bye.due,
                    route: bye.route,
                });
            }
        }
        None
    }

    /// The next time `poll_transmit` will have something (possibly early, never late).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.byes.is_empty() {
            return Some(self.now);
        }
        let rtp = self.rtp.next_deadline();
        let rtcp = self.rtcp.peek().map(|Reverse(e)| e.due);
        match (rtp, rtcp) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn observe(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    /// The tick `now` is in.
    fn tick_of(&mut self, now: Instant) -> u64 {
        if now >= self.ticks.until || now < self.ticks.from {
            let tick = self.clock.tick_at(now);
            self.ticks = TickCache {
                tick,
                from: self.clock.tick_deadline(tick),
                until: self.clock.tick_deadline(tick + 1),
            };
        }
        self.ticks.tick
    }

    fn schedule_rtp(&mut self, tick: u64, slot: u32, generation: u64) {
        let clock = self.clock;
        self.rtp
            .push(tick, || clock.tick_deadline(tick), Due { slot, generation });
    }

    fn schedule_rtcp(&mut self, due: Instant, slot: u32, generation: u64) {
        self.rtcp.push(Reverse(RtcpDue {
            due,
            slot,
            generation,
        }));
    }

    /// True when the entry is the next RTP packet of a current call.
    fn rtp_is_live(&self, tick: u64, e: Due) -> bool {
        self.calls
            .at(e.slot)
            .is_some_and(|c| c.generation == e.generation && c.next_tick == tick)
    }

    /// True when the entry is the next RTCP report of a current call.
    fn rtcp_is_live(&self, e: &RtcpDue) -> bool {
        self.calls
            .at(e.slot)
            .is_some_and(|c| c.generation == e.generation && c.next_rtcp == e.due)
    }

    fn rtcp_delay(&mut self, interval: Duration) -> Duration {
        interval.mul_f64(self.rng.random_range(0.5..1.5))
    }

    /// The RTP packet of the call in `slot` whose next tick is due at `due`.
    fn emit_rtp(
        &mut self,
        slot: u32,
        mut due: Instant,
        now: Instant,
        buf: &mut [u8],
    ) -> Option<Transmit> {
        let clock = self.clock;
        let now_tick = self.tick_of(now);
        let c = self.calls.at_mut(slot)?;
        let timeline = self.timelines.get(c.timeline)?.as_ref()?;
        let pt = c.ptime_ticks;
        let behind = now_tick.saturating_sub(c.next_tick);
        if behind >= MAX_CATCHUP * pt {
            let skip = behind / pt;
            c.next_tick += skip * pt;
            c.counters.skipped_packets += skip;
            c.marker = true;
            self.frames_skipped += skip;
            due = clock.tick_deadline(c.next_tick);
        }
        let tick = c.next_tick;
        c.next_tick += pt;
        let (call, next_tick, generation) = (c.media.call, c.next_tick, c.generation);
        let route = c.route;
        let transmit = if c.media.params.sending() {
            c.write_rtp(timeline, tick, due, now, buf)
                .and_then(|len| protect(c.srtp.as_deref_mut(), PacketKind::Rtp, buf, len))
                .map(|len| Transmit {
                    call,
                    kind: PacketKind::Rtp,
                    dest: c.media.params.remote_rtp,
                    len,
                    due,
                    route,
                })
        } else {
            None
        };
        self.max_abs_drift_ns = self.max_abs_drift_ns.max(c.counters.max_abs_drift_ns);
        self.schedule_rtp(next_tick, slot, generation);
        transmit
    }

    fn emit_rtcp(
        &mut self,
        slot: u32,
        due: Instant,
        now: Instant,
        buf: &mut [u8],
    ) -> Option<Transmit> {
        let mut next = due + self.rtcp_delay(RTCP_INTERVAL);
        if next <= now {
            // After a long stall, one report now and the schedule restarts from here.
            next = now + self.rtcp_delay(RTCP_INTERVAL);
        }
        let c = self.calls.at(slot)?;
        let next = on_rtp_schedule(self.clock, c.next_tick, c.ptime_ticks, next);
        let report = self.report_at(c, due);
        let written = write_rtcp_compound(&report, &c.media.cname, false, buf);
        let dest = c.media.params.rtcp_destination();
        let c = self.calls.at_mut(slot)?;
        let written = written
            .ok()
            .and_then(|len| protect(c.srtp.as_deref_mut(), PacketKind::Rtcp, buf, len));
        c.next_rtcp = next;
        let (call, generation, route) = (c.media.call, c.generation, c.route);
        if written.is_some() {
            c.counters.rtcp_sent += 1;
        }
        self.schedule_rtcp(next, slot, generation);
        Some(Transmit {
            call,
            kind: PacketKind::Rtcp,
            dest,
            len: written?,
            due,
            route,
        })
    }

    /// The report a call would send at `at`: SR once it has sent RTP, else an empty RR.
    fn report_at(&self, c: &CallState<S>, at: Instant) -> Report {
        if c.counters.packets_sent == 0 {
            return Report::EmptyReceiver { ssrc: c.ssrc };
        }
        let since_epoch = at.saturating_duration_since(self.clock.epoch());
        let ntp = NtpTime::from_system_time(self.wall_epoch + since_epoch);
        let start = self.clock.tick_deadline(c.start_tick);
        // Clock units from the timestamp origin's deadline to `at`, signed (a report can be
        // due before the first packet, or before the first after a codec switch).
        let nanos = at.saturating_duration_since(start).as_nanos() as i128
            - start.saturating_duration_since(at).as_nanos() as i128;
        let rate = i128::from(c.media.params.codec.clock_rate());
        let samples = (nanos * rate).div_euclid(NANOS_PER_SEC);
        Report::Sender(SenderReport {
            ssrc: c.ssrc,
            ntp,
            rtp_ts: c.ts0.wrapping_add(samples as u32),
            packet_count: c.counters.packets_sent as u32,
            octet_count: c.counters.octets_sent as u32,
        })
    }
}

/// Protects the `len`-byte datagram at the start of `buf` in place when the call has SRTP;
/// the new length. `None` drops the datagram: our own packets always fit and parse (the
/// buffer keeps [`PROTECTION_RESERVE`]), so this happens only when a key is exhausted.
fn protect(
    srtp: Option<&mut SrtpSender>,
    kind: PacketKind,
    buf: &mut [u8],
    len: usize,
) -> Option<usize> {
    let Some(sender) = srtp else {
        return Some(len);
    };
    match kind {
        PacketKind::Rtp => sender.protect_rtp(buf, len),
        PacketKind::Rtcp => sender.protect_rtcp(buf, len),
    }
    .ok()
}

fn truncate_cname(cname: &mut String) {
    if cname.len() > MAX_CNAME_LEN {
        let mut end = MAX_CNAME_LEN;
        while !cname.is_char_boundary(end) {
            end -= 1;
        }
        cname.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SAMPLES_PER_TICK;
    use crate::rtp::packet::{RtcpPacket, parse_rtcp, parse_rtp};
    use crate::rtp::srtp::{SrtpKeyMaterial, SrtpParams, SrtpReceiver, SrtpSuite};
    use crate::rtp::stats::ReceiverStats;
    use crate::sip::sdp::Direction;
    use std::collections::HashMap;
    use std::net::{Ipv4Addr, SocketAddrV4};

    /// A fake channel whose byte at each loop position is known, so a payload tells where
    /// in the loop it came from. G.711 and G.722 are one byte per 8 kHz sample; Opus is one
    /// frame of varying length per 20 ms, asked for only on frame boundaries.
    struct Ramp {
        name: String,
        len: u64,
        salt: u8,
        /// A codec this channel has no encoding for yet (`fill_packet` returns 0).
        missing: Option<Codec>,
    }

    impl Ramp {
        fn new(name: &str, salt: u8) -> Arc<Ramp> {
            Arc::new(Ramp {
                name: name.into(),
                len: 8000 * 7 + 13,
                salt,
                missing: None,
            })
        }

        fn without(name: &str, codec: Codec) -> Arc<Ramp> {
            Arc::new(Ramp {
                name: name.into(),
                len: 8000 * 7 + 13,
                salt: 0,
                missing: Some(codec),
            })
        }

        fn byte(&self, codec: Codec, pos: u64) -> u8 {
            let p = pos % self.len;
            let law = match codec {
                Codec::Pcma => 0x55,
                Codec::G722 => 0x22,
                _ => 0,
            };
            ((p * 31 + p / 256) as u8) ^ law ^ self.salt
        }

        /// The Opus frame for media-clock tick `tick` (20 ms frames from tick 0): its index in
        /// the first two bytes, then a length that varies as a VBR encoder's does.
        fn opus_frame(&self, tick: u64) -> Vec<u8> {
            let frame = tick / 2;
            let len = 60 + (frame % 53) as usize;
            let mut out = vec![self.salt ^ 0x0F; len];
            out[..2].copy_from_slice(&(frame as u16).to_be_bytes());
            out
        }

        fn expected(&self, codec: Codec, start: u64, len: usize) -> Vec<u8> {
            (0..len as u64)
                .map(|i| self.byte(codec, start + i))
                .collect()
        }
    }

    impl PayloadSource for Ramp {
        fn name(&self) -> &str {
            &self.name
        }
        fn len_ticks(&self) -> u64 {
            self.len / SAMPLES_PER_TICK
        }
        fn fill_packet(&self, codec: Codec, tick: u64, ticks: u64, out: &mut [u8]) -> usize {
            if self.missing == Some(codec) {
                return 0;
            }
            if codec == Codec::Opus {
                assert_eq!(
                    (ticks, tick % 2),
                    (2, 0),
                    "Opus: 20 ms frames on frame boundaries"
                );
                let frame = self.opus_frame(tick);
                out[..frame.len()].copy_from_slice(&frame);
                return frame.len();
            }
            let start_sample = MediaClock::tick_sample(tick);
            let len = (ticks * SAMPLES_PER_TICK) as usize;
            for (i, o) in out[..len].iter_mut().enumerate() {
                *o = self.byte(codec, start_sample + i as u64);
            }
            len
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), port))
    }

    /// Media on the codec's static payload type, sending unless `sending` is false.
    fn params(
        remote_rtp: SocketAddr,
        remote_rtcp: Option<SocketAddr>,
        sending: bool,
        codec: Codec,
        ptime_ms: u32,
    ) -> MediaParams {
        MediaParams {
            codec,
            payload_type: codec.payload_type(),
            ptime_ms,
            remote_rtp,
            remote_rtcp,
            direction: if sending {
                Direction::SendOnly
            } else {
                Direction::Inactive
            },
            peer_opus: None,
            srtp: None,
        }
    }

    fn media(call: u64, ptime_ms: u32, channel: &Arc<Ramp>) -> CallMedia<Ramp> {
        CallMedia {
            call,
            params: params(
                addr(10_000 + 2 * call as u16),
                Some(addr(10_001 + 2 * call as u16)),
                true,
                Codec::Pcmu,
                ptime_ms,
            ),
            channel: Arc::clone(channel),
            playback: Playback::Shared,
            cname: format!("mohd-{call}@test"),
            ssrc: None,
        }
    }

    const MS: Duration = Duration::from_millis(1);
    const TICK_TEST: Duration = Duration::from_millis(10);

    #[derive(Debug, Clone)]
    struct Sent {
        t: Transmit,
        at: Instant,
        bytes: Vec<u8>,
    }

    impl Sent {
        fn rtp(&self) -> crate::rtp::packet::RtpPacket<'_> {
            parse_rtp(&self.bytes).unwrap()
        }
    }

    /// A virtual-clock driver doing what the media thread does.
    struct Sim {
        f: Fanout<Ramp>,
        epoch: Instant,
        now: Instant,
        wall: SystemTime,
        buf: Vec<u8>,
        out: Vec<Sent>,
    }

    impl Sim {
        fn new(seed: u64) -> Sim {
            let epoch = Instant::now();
            let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
            Sim {
                f: Fanout::new(MediaClock::new(epoch), seed, wall),
                epoch,
                now: epoch,
                wall,
                buf: vec![0; MIN_BUFFER],
                out: Vec::new(),
            }
        }

        fn at(&self, ms: u64) -> Instant {
            self.epoch + MS * ms as u32
        }

        fn drain(&mut self) {
            while let Some(t) = self.f.poll_transmit(self.now, &mut self.buf) {
                assert!(t.due <= self.now);
                self.out.push(Sent {
                    t,
                    at: self.now,
                    bytes: self.buf[..t.len].to_vec(),
                });
            }
        }

        /// Wakes at every deadline up to and including `end`, then sits at `end`.
        fn run_until(&mut self, end: Instant) {
            for _ in 0..10_000_000 {
                match self.f.poll_timeout() {
                    Some(next) if next <= end => {
                        self.now = self.now.max(next);
                        self.f.handle_timeout(self.now);
                        self.drain();
                    }
                    _ => {
                        self.now = end;
                        self.f.handle_timeout(end);
                        self.drain();
                        return;
                    }
                }
            }
            panic!("simulation did not settle");
        }

        /// Jumps straight to `t` (a late driver) and drains.
        fn jump_to(&mut self, t: Instant) {
            self.now = t;
            self.f.handle_timeout(t);
            self.drain();
        }

        fn rtp_of(&self, call: u64) -> Vec<&Sent> {
            self.out
                .iter()
                .filter(|s| s.t.call == call && s.t.kind == PacketKind::Rtp)
                .collect()
        }

        fn rtcp_of(&self, call: u64) -> Vec<&Sent> {
            self.out
                .iter()
                .filter(|s| s.t.call == call && s.t.kind == PacketKind::Rtcp)
                .collect()
        }

        /// A re-INVITE that changes only the codec (on its static payload type) and ptime.
        fn switch_codec(&mut self, call: u64, codec: Codec, ptime_ms: u32) -> bool {
            let Some(mut p) = self.f.params(call) else {
                return false;
            };
            p.codec = codec;
            p.payload_type = codec.payload_type();
            p.ptime_ms = ptime_ms;
            self.f.update_call(call, p)
        }

        fn tick_of(&self, due: Instant) -> u64 {
            MediaClock::new(self.epoch).tick_at(due)
        }
    }

    #[test]
    fn fifty_packets_per_second_at_exact_deadlines() {
        let ch = Ramp::new("default", 0);
        let mut sim = Sim::new(1);
        // Joining 3 ms in: the first 20 ms-aligned tick at or after that is 20 ms.
        sim.f.add_call(sim.at(3), media(1, 20, &ch));
        sim.run_until(sim.at(1019));
        let rtp = sim.rtp_of(1);
        assert_eq!(rtp.len(), 50);
        let first = rtp[0].rtp().header;
        for (k, s) in rtp.iter().enumerate() {
            let due = sim.at(20 + 20 * k as u64);
            assert_eq!(s.t.due, due);
            assert_eq!(s.at, due, "sent exactly at its deadline");
            assert_eq!(s.t.dest, addr(10_002));
            assert_eq!(s.t.len, 12 + 160);
            let p = s.rtp();
            assert_eq!(p.header.payload_type, 0);
            assert_eq!(p.header.marker, k == 0);
            assert_eq!(p.header.ssrc, first.ssrc);
            assert_eq!(p.header.seq, first.seq.wrapping_add(k as u16));
            assert_eq!(
                p.header.timestamp,
                first.timestamp.wrapping_add(160 * k as u32)
            );
            let tick = 2 + 2 * k as u64;
            assert_eq!(p.payload, ch.expected(Codec::Pcmu, tick * 80, 160));
        }
        let c = sim.f.counters(1).unwrap();
        assert_eq!(c.packets_sent, 50);
        assert_eq!(c.octets_sent, 50 * 160);
        assert_eq!(c.late_packets, 0);
        assert_eq!(c.skipped_packets, 0);
    }

    #[test]
    fn seq_and_ts_cross_their_wraps_cleanly() {
        let ch = Ramp::new("default", 0);
        let mut sim = Sim::new(2);
        // 10 ms packets: 5 before the seq wrap, 4 before the ts wrap.
        sim.f
            .add_call_with_start(sim.at(0), media(1, 10, &ch), 77, 65_531, u32::MAX - 319);
        sim.run_until(sim.at(999));
        let rtp = sim.rtp_of(1);
        assert_eq!(rtp.len(), 100);
        let mut stats = ReceiverStats::new(8000);
        let mut prev: Option<RtpHeader> = None;
        for s in &rtp {
            let h = s.rtp().header;
            stats.on_packet(s.at, h.seq.get(), h.timestamp.get());
            if let Some(p) = prev {
                assert_eq!(h.seq.distance_from(p.seq), 1);
                assert_eq!(h.timestamp.distance_from(p.timestamp), 80);
            }
            prev = Some(h);
        }
        assert_eq!(rtp[0].rtp().header.seq, Seq16(65_531));
        assert_eq!(rtp[5].rtp().header.seq, Seq16(0));
        assert_eq!(rtp[4].rtp().header.timestamp, Ts32(0));
        let r = stats.report();
        assert_eq!(
            (r.lost, r.duplicated, r.reordered, r.ts_jumps),
            (0, 0, 0, 0)
        );
        assert_eq!(r.jitter_max_ms, 0.0);
        assert_eq!(r.max_gap_ms, 10.0);
        assert_eq!(r.last_ext_seq, Some(65_531 + 99));
    }

    #[test]
    fn shared_mode_same_tick_same_bytes_and_late_joiner_hears_current_position() {
        let ch = Ramp::new("default", 0);
        let mut sim = Sim::new(3);
        sim.f.add_call(sim.at(0), media(1, 20, &ch));
        sim.f.add_call(sim.at(0), media(2, 20, &ch));
        sim.run_until(sim.at(1234));
        // Call 3 joins 1.234 s in: its first packet is for tick 124 (1.24 s).
        sim.f.add_call(sim.now, media(3, 20, &ch));
        sim.f.add_call(sim.now, media(4, 30, &ch));
        sim.run_until(sim.at(3000));
        let first3 = sim.rtp_of(3)[0].clone();
        assert_eq!(first3.t.due, sim.at(1240));
        assert_eq!(
            first3.rtp().payload,
            ch.expected(Codec::Pcmu, 124 * 80, 160)
        );
        // Every packet of every call carries the loop at its own tick: same tick, same bytes.
        let mut by_tick: HashMap<u64, Vec<u8>> = HashMap::new();
        let mut shared = 0;
        for s in sim.out.iter().filter(|s| s.t.kind == PacketKind::Rtp) {
            let tick = sim.tick_of(s.t.due);
            let payload = s.rtp().payload.to_vec();
            assert_eq!(payload, ch.expected(Codec::Pcmu, tick * 80, payload.len()));
            if let Some(other) = by_tick.get(&tick) {
                let n = other.len().min(payload.len());
                assert_eq!(other[..n], payload[..n]);
                shared += 1;
            }
            by_tick.insert(tick, payload);
        }
        assert!(
            shared > 150,
            "calls 1, 2 and 3 overlap on many ticks: {shared}"
        );
        // The 30 ms call starts on a 30 ms-aligned tick (1.26 s).
        assert_eq!(sim.rtp_of(4)[0].t.due, sim.at(1260));
    }

    #[test]
    fn reports_ride_with_their_calls_packets_so_a_driver_wakes_once_per_tick() {
        let ch = Ramp::new("default", 0);
        let mut sim = Sim::new(9);
        // 200 calls joining at scattered instants, 20 ms and 30 ms ptimes.
        for call in 0..200u64 {
            let ptime = if call % 4 == 0 { 30 } else { 20 };
            sim.f
                .add_call(sim.at(call * 37 % 1000), media(call, ptime, &ch));
        }
        let end = sim.at(60_000);
        let mut wakes = 0u32;
        while let Some(next) = sim.f.poll_timeout().filter(|&t| t <= end) {
            sim.now = sim.now.max(next);
            sim.f.handle_timeout(sim.now);
            sim.drain();
            wakes += 1;
        }
        let mut reports = 0;
        for call in 0..200u64 {
            let rtp: std::collections::HashSet<Instant> =
                sim.rtp_of(call).iter().map(|s| s.t.due).collect();
            for r in sim.rtcp_of(call) {
                assert!(
                    rtp.contains(&r.t.due),
                    "call {call}: a report off its RTP ticks"
                );
                reports += 1;
            }
        }
        // About 12 reports a call in 60 s; none of them cost a wake-up of its own: the ticks
        // where a 20 ms or a 30 ms call sends are 4 in every 6 of the 10 ms grid.
        assert!(reports > 200 * 8, "{reports}");
        assert!(
            wakes <= 6_000 * 4 / 6 + 1,
            "{wakes} wake-ups for {reports} reports"
        );
    }

    #[test]
    fn rtcp_sender_reports_every_five_seconds() {
        let ch = Ramp::new("default", 0);
        let mut sim = Sim::new(4);
        sim.f.add_call(sim.at(0), media(1, 20, &ch));
        sim.run_until(sim.at(120_000));
        let rtcp = sim.rtcp_of(1);
        let first = rtcp[0].t.due - sim.at(0);
        assert!(first >= MS * 1250 && first <= MS * 3750, "{first:?}");
        for w in rtcp.windows(2) {
            let gap = w[1].t.due - w[0].t.due;
            assert!(gap >= MS * 2500 && gap <= MS * 7500, "{gap:?}");
        }
        // 120 s at a mean of 5 s, after a first report at ~2.5 s.
        assert!((17..=30).contains(&rtcp.len()), "{}", rtcp.len());
        let ssrc = sim.f.ssrc(1).unwrap();
        for r in &rtcp {
            assert_eq!(r.t.dest, addr(10_003));
            let packets: Vec<_> = parse_rtcp(&r.bytes).collect::<Result<_, _>>().unwrap();
            let RtcpPacket::SenderReport { sr, .. } = packets[0] else {
                panic!("{packets:?}")
            };
            assert!(matches!(
                packets[1],
                RtcpPacket::SourceDescription {
                    cname: Some(b"mohd-1@test"),
                    ..
                }
            ));
            assert_eq!(sr.ssrc, ssrc);
            // Counts cover exactly the RTP packets that went out before the report.
            let before: Vec<_> = sim
                .out
                .iter()
                .take_while(|s| !std::ptr::eq(*s, *r))
                .filter(|s| s.t.call == 1 && s.t.kind == PacketKind::Rtp)
                .collect();
            assert_eq!(sr.packet_count as usize, before.len());
            assert_eq!(sr.octet_count as usize, before.len() * 160);
            // The RTP timestamp and NTP time describe the same instant, the report's due.
            let last = before.last().unwrap();
            let since_last = r.t.due - last.t.due;
            let samples = (since_last.as_nanos() * 8000 / 1_000_000_000) as i32;
            assert_eq!(
                sr.rtp_ts.distance_from(last.rtp().header.timestamp),
                samples
            );
            let wall = sim.wall + (r.t.due - sim.epoch);
            assert_eq!(sr.ntp, NtpTime::from_system_time(wall));
        }
        assert_eq!(sim.f.counters(1).unwrap().rtcp_sent, rtcp.len() as u64);
    }

    #[test]
    fn a_calls_route_comes_back_on_its_rtp_rtcp_and_bye() {
        let ch = Ramp::new("default", 0);
        let mut sim = Sim::new(8);
        sim.f.add_call(sim.at(0), media(1, 20, &ch));
        sim.f.add_call(sim.at(0), media(2, 20, &ch));
        assert!(sim.f.set_route(1, 0xABC));
        assert!(!sim.f.set_route(99, 1), "unknown call");
        sim.run_until(sim.at(6_000));
        for call in [1, 2] {
            let want = if call == 1 { 0xABC } else { 0 };
            let mine: Vec<_> = sim.out.iter().filter(|s| s.t.call == call).collect();
            assert!(
                mine.iter().any(|s| s.t.kind == PacketKind::Rtcp),
                "an SR in 6 s"
            );
            assert!(mine.iter().all(|s| s.t.route == want), "call {call}");
        }
        // It moves with the call, and its BYE carries it too.
        let moving = sim.f.take_call(1).unwrap();
        sim.f.adopt_call(sim.now, moving);
        sim.f.remove_call(1);
        let bye = sim.f.poll_transmit(sim.now, &mut sim.buf).unwrap();
        assert_eq!(
            (bye.call, bye.kind, bye.route),
            (1, PacketKind::Rtcp, 0xABC)
        );
    }

    #[test]
    fn remove_call_stops_at_once_and_says_bye() {
        let ch = Ramp::new("default", 0);
        let mut sim = Sim::new(5);
        sim.f.add_call(sim.at(0), media(1, 20, &ch));
        let mut mux = media(2, 20, &ch);
        mux.params.remote_rtcp = None;
        sim.f.add_call(sim.at(0), mux);
        sim.run_until(sim.at(10_000));
        let ssrc = sim.f.ssrc(1).unwrap();
        let sent_before = sim.rtp_of(1).len() as u64;
        let counters = sim.f.remove_call(1).unwrap();
        assert_eq!(counters.packets_sent, sent_before);
        assert_eq!(sim.f.call_count(), 1);
        assert_eq!(sim.f.remove_call(1), None);
        // The BYE is due right away and comes out first.
        assert_eq!(sim.f.poll_timeout(), Some(sim.now));
        let bye = sim.f.poll_transmit(sim.now, &mut sim.buf).unwrap();
        assert_eq!(
            (bye.call, bye.kind, bye.dest),
            (1, PacketKind::Rtcp, addr(10_003))
        );
        let packets: Vec<_> = parse_rtcp(&sim.buf[..bye.len])
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            matches!(packets[0], RtcpPacket::SenderReport { sr, .. } if sr.packet_count as u64 == sent_before)
        );
        assert_eq!(
            packets[2],
            RtcpPacket::Bye {
                source_count: 1,
                first_ssrc: Some(ssrc)
            }
        );
        let n = sim.out.len();
        sim.run_until(sim.at(20_000));
        assert!(sim.out[n..].iter().all(|s| s.t.call == 2));
        assert_eq!(sim.rtp_of(2).len(), 1001);
        // rtcp-mux: the BYE of call 2 goes to its RTP address.
        sim.f.remove_call(2);
        sim.drain();
        let last = sim.out.last().unwrap();
        assert_eq!((last.t.kind, last.t.dest), (PacketKind::Rtcp, addr(10_004)));
        // Nothing left to do, and no wake-ups for the calls that are gone.
        sim.f.handle_timeout(sim.now);
        assert_eq!(sim.f.poll_timeout(), None);
    }

    #[test]
    fn inactive_sends_no_rtp_but_keeps_time() {
        let ch = Ramp::new("default", 0);
        let mut sim = Sim::new(6);
        let mut m = media(1, 20, &ch);
        m.params.direction = Direction::Inactive;
        sim.f.add_call_with_start(sim.at(0), m, 9, 1000, 50_000);
        sim.run_until(sim.at(10_000));
        assert!(sim.rtp_of(1).is_empty());
        // RTCP keeps flowing (RFC 3264 §5.1); with nothing sent it is an empty RR.
        let rtcp = sim.rtcp_of(1);
        assert!(!rtcp.is_empty());
        assert!(matches!(
            parse_rtcp(&rtcp[0].bytes).next(),
            Some(Ok(RtcpPacket::ReceiverReport { ssrc: 9, .. }))
        ));
        // Resume: the first packet has the next sequence number, a clock-derived timestamp
        // and the marker bit.
        assert!(
            sim.f
                .update_call(1, params(addr(5000), None, true, Codec::Pcmu, 20))
        );
        sim.run_until(sim.at(11_000));
        let rtp = sim.rtp_of(1);
        let p = rtp[0].rtp().header;
        assert_eq!(rtp[0].t.due, sim.at(10_020));
        assert_eq!(rtp[0].t.dest, addr(5000));
        assert!(p.marker);
        assert_eq!(p.seq, Seq16(1000));
        assert_eq!(p.timestamp, Ts32(50_000 + 1002 * 80));
        assert_eq!(rtp.len(), 50);
        // Inactive again for a second, then active: seq contiguous, ts jumped, marker.
        sim.f
            .update_call(1, params(addr(5000), None, false, Codec::Pcmu, 20));
        sim.run_until(sim.at(12_000));
        assert_eq!(sim.rtp_of(1).len(), 50);
        sim.f
            .update_call(1, params(addr(5000), None, true, Codec::Pcmu, 20));
        sim.run_until(sim.at(12_100));
        let rtp = sim.rtp_of(1);
        let (a, b) = (rtp[49].rtp().header, rtp[50].rtp().header);
        assert_eq!(b.seq.distance_from(a.seq), 1);
        assert_eq!(b.timestamp.distance_from(a.timestamp), 8000 + 160);
        assert!(b.marker);
    }

    #[test]
    fn a_late_driver_catches_up_three_and_skips_ahead_past_that() {
        let ch = Ramp::new("default", 0);
        let mut sim = Sim::new(7);
        sim.f.add_call(sim.at(0), media(1, 20, &ch));
        sim.run_until(sim.at(1000));
        let n = sim.rtp_of(1).len();
        assert_eq!(n, 51);
        let last = sim.rtp_of(1)[n - 1].rtp().header;
        // Slightly late (45 ms: 2 packets due): both go out, nothing skipped.
        sim.jump_to(sim.at(1045));
        let rtp = sim.rtp_of(1);
        assert_eq!(rtp.len(), n + 2);
        assert_eq!(sim.f.counters(1).unwrap().skipped_packets, 0);
        // 25 ms and exactly 5 ms late: only the first counts as late.
        assert_eq!(sim.f.counters(1).unwrap().late_packets, 1);
        assert_eq!(rtp[n].t.due, sim.at(1020));
        assert_eq!(rtp[n + 1].t.due, sim.at(1040));
        assert!(!rtp[n].rtp().header.marker);
        // A 500 ms stall: packets for 1060..=1500 are due (23); the call skips ahead to the
        // current frame and only that one goes out.
        sim.jump_to(sim.at(1507));
        let rtp = sim.rtp_of(1);
        assert_eq!(rtp.len(), n + 3);
        assert_eq!(rtp[n + 2].t.due, sim.at(1500));
        assert_eq!(sim.f.counters(1).unwrap().skipped_packets, 22);
        assert_eq!(sim.f.frames_skipped(), 22);
        let h: Vec<_> = rtp[n + 1..].iter().map(|s| s.rtp().header).collect();
        // Seq contiguous; ts follows the clock (jumps over the 22 skipped packets); marker
        // on the first packet after the jump only.
        assert_eq!(h[0].seq.distance_from(last.seq), 2);
        assert_eq!(h[1].seq.distance_from(h[0].seq), 1);
        assert_eq!(h[1].timestamp.distance_from(h[0].timestamp), 23 * 160);
        assert_eq!(
            h.iter().map(|h| h.marker).collect::<Vec<_>>(),
            vec![false, true]
        );
        // Payloads are still those of their ticks.
        assert_eq!(
            rtp[n + 2].rtp().payload,
            ch.expected(Codec::Pcmu, 150 * 80, 160)
        );
        // Back on time afterwards, without a marker.
        sim.run_until(sim.at(2000));
        let rtp = sim.rtp_of(1);
        assert_eq!(rtp[n + 3].t.due, sim.at(1520));
        assert_eq!(rtp[n + 3].at, sim.at(1520));
        assert!(!rtp[n + 3].rtp().header.marker);
    }

    /// A 200 ms stall of a loaded driver: every call skips the frames it missed (counted) and
    /// sends one packet for the current frame, not a burst of ten late ones; sequence numbers
    /// run on without a gap, timestamps jump by the time skipped.
    #[test]
    fn a_200_ms_stall_skips_ahead_without_a_burst() {
        let ch = Ramp::new("default", 0);
        let mut sim = Sim::new(71);
        for call in 0..100 {
            sim.f.add_call(sim.at(0), media(call, 20, &ch));
        }
        sim.run_until(sim.at(1000));
        let before = sim.out.len();
        sim.jump_to(sim.at(1203));
        let burst: Vec<&Sent> = sim.out[before..]
            .iter()
            .filter(|s| s.t.kind == PacketKind::Rtp)
            .collect();
        assert_eq!(burst.len(), 100, "one packet per call");
        assert!(burst.iter().all(|s| s.t.due == sim.at(1200)));
        assert_eq!(sim.f.frames_skipped(), 100 * 9);
        sim.run_until(sim.at(2000));
        for call in 0..100 {
            let rtp = sim.rtp_of(call);
            assert_eq!(sim.f.counters(call).unwrap().skipped_packets, 9);
            for w in rtp.windows(2) {
                let (a, b) = (w[0].rtp().header, w[1].rtp().header);
                assert_eq!(b.seq.distance_from(a.seq), 1, "call {call}: no gap");
                assert_eq!(b.ssrc, a.ssrc);
                let ticks = sim.tick_of(w[1].t.due) - sim.tick_of(w[0].t.due);
                assert_eq!(b.timestamp.distance_from(a.timestamp), 80 * ticks as i32);
                assert_eq!(b.marker, ticks > 2);
            }
            let late = rtp.iter().filter(|s| s.at > s.t.due + LATE_AFTER).count();
            assert_eq!(late, 0, "call {call}: 3 ms late is not late");
        }
    }

    #[test]
    fn drift_stays_zero_on_time_through_a_stall_and_catch_up() {
        let ch = Ramp::new("default", 0);
        let mut sim = Sim::new(20);
        sim.f.add_call(sim.at(0), media(1, 20, &ch));
        // Call 2's first packet leaves 3 ms late (the driver woke late once).
        sim.f.add_call(sim.at(0), media(2, 20, &ch));
        sim.run_until(sim.at(1));
        sim.jump_to(sim.at(3));
        sim.run_until(sim.at(10_000));
        // A 500 ms stall: one packet goes out 7 ms late, twenty-two are skipped.
        sim.jump_to(sim.at(10_507));
        // A 3 s stall (longer than a drift window).
        sim.run_until(sim.at(20_000));
        sim.jump_to(sim.at(23_013));
        sim.run_until(sim.at(60_000));
        for call in [1, 2] {
            let c = sim.f.counters(call).unwrap();
            assert!(c.skipped_packets > 150, "{c:?}");
            assert!(c.late_packets >= 2, "{c:?}");
            assert_eq!(
                (c.drift_ns, c.max_abs_drift_ns),
                (0, 0),
                "call {call}: {c:?}"
            );
        }
        assert_eq!(sim.f.max_abs_drift_ns(), 0);
    }

    #[test]
    fn a_driver_late_every_time_shows_as_drift() {
        let ch = Ramp::new("default", 0);
        let mut sim = Sim::new(21);
        sim.f.add_call(sim.at(0), media(1, 20, &ch));
        sim.run_until(sim.at(10_000));
        // From 10 s on, every packet leaves 3 ms after its deadline.
        while sim.now < sim.at(20_000) {
            let next = sim.f.poll_timeout().unwrap();
            sim.jump_to(next + MS * 3);
        }
        let c = sim.f.counters(1).unwrap();
        assert_eq!(c.drift_ns, 3_000_000, "{c:?}");
        assert_eq!(c.max_abs_drift_ns, 3_000_000);
        assert_eq!(sim.f.max_abs_drift_ns(), 3_000_000);
        // Back on time: the drift returns to zero, the maximum stays.
        sim.run_until(sim.at(25_000));
        let c = sim.f.counters(1).unwrap();
        assert_eq!(c.drift_ns, 0);
        // A removed call's maximum stays in the fan-out's.
        sim.f.remove_call(1);
        assert_eq!(sim.f.max_abs_drift_ns(), 3_000_000);
    }

    #[test]
    fn drift_meter_sees_timestamps_that_run_fast_and_unwraps_long_gaps() {
        let t0 = Instant::now();
        // One sample too many per 20 ms packet: 125 µs of drift per packet.
        let mut m = DriftMeter::new(t0, 0, Ts32(u32::MAX - 1000), 8000);
        let mut last = None;
        for k in 1..=500u64 {
            let ts = Ts32(u32::MAX - 1000).add_samples(k * 161);
            if let Some(d) = m.on_sent(t0 + MS * (20 * k) as u32, 2 * k, ts) {
                last = Some(d);
            }
        }
        // Nine windows after the first: about 9 × 50 × 125 µs early.
        let d = last.unwrap();
        assert!((-57_000_000..=-55_000_000).contains(&d), "{d}");
        // A four-day gap (an inactive call), timestamps on the clock: no drift.
        let mut m = DriftMeter::new(t0, 0, Ts32(7), 8000);
        let days = 4 * 86_400 * 100u64;
        for (k, tick) in [
            (1u64, 2u64),
            (2, 4),
            (3, 4 + days),
            (4, 6 + days),
            (5, 106 + days),
        ] {
            let d = m.on_sent(
                t0 + TICK_TEST * tick as u32,
                tick,
                Ts32(7).add_samples(tick * 80),
            );
            match k {
                3 => assert_eq!(d, Some(0), "the first window closes at the gap"),
                5 => assert_eq!(d, Some(0), "{d:?}"),
                _ => assert_eq!(d, None),
            }
        }
    }

    #[test]
    fn thousand_calls_come_out_in_deadline_order() {
        let ch = Ramp::new("default", 0);
        let mut sim = Sim::new(8);
        let mut rng = StdRng::seed_from_u64(99);
        let ptimes = [10, 20, 30, 40, 60];
        let mut joins = HashMap::new();
        for call in 0..1000u64 {
            let join = sim.at(rng.random_range(0..100));
            joins.insert(call, join);
            sim.f
                .add_call(join, media(call, ptimes[call as usize % 5], &ch));
        }
        assert_eq!(sim.f.call_count(), 1000);
        sim.run_until(sim.at(2000));
        let mut prev = sim.epoch;
        for s in &sim.out {
            assert!(s.t.due >= prev, "out of order");
            assert_eq!(s.at, s.t.due);
            prev = s.t.due;
        }
        for call in 0..1000u64 {
            let ptime = ptimes[call as usize % 5] as u64;
            let rtp = sim.rtp_of(call);
            let first_tick = sim.tick_of(rtp[0].t.due);
            assert_eq!(first_tick % (ptime / 10), 0, "aligned start");
            assert!(rtp[0].t.due >= joins[&call]);
            assert!(rtp[0].t.due < joins[&call] + MS * ptime as u32);
            for (k, w) in rtp.windows(2).enumerate() {
                assert_eq!(
                    w[1].t.due - w[0].t.due,
                    MS * ptime as u32,
                    "call {call} #{k}"
                );
                let (a, b) = (w[0].rtp().header, w[1].rtp().header);
                assert_eq!(b.seq.distance_from(a.seq), 1);
                assert_eq!(b.timestamp.distance_from(a.timestamp), 8 * ptime as i32);
            }
            let expected = (sim.at(2000) - rtp[0].t.due).as_millis() as u64 / ptime + 1;
            assert_eq!(rtp.len() as u64, expected, "call {call}");
        }
    }

    #[test]
    fn update_switches_codec_and_ptime_without_a_gap() {
        let ch = Ramp::new("default", 0);
        let mut sim = Sim::new(9);
        sim.f.add_call(sim.at(0), media(1, 20, &ch));
        sim.run_until(sim.at(100));
        sim.f.update_call(
            1,
            params(addr(6000), Some(addr(6001)), true, Codec::Pcma, 40),
        );
        sim.run_until(sim.at(300));
        let rtp = sim.rtp_of(1);
        let i = rtp.iter().position(|s| s.t.dest == addr(6000)).unwrap();
        let (a, b) = (rtp[i - 1].rtp(), rtp[i].rtp());
        assert_eq!((a.header.payload_type, b.header.payload_type), (0, 8));
        assert_eq!(b.header.seq.distance_from(a.header.seq), 1);
        assert_eq!(b.header.timestamp.distance_from(a.header.timestamp), 160);
        // A codec switch starts a new talkspurt for the receiver's decoder.
        assert!(b.header.marker);
        assert!(!rtp[i + 1].rtp().header.marker);
        assert_eq!(b.payload.len(), 320);
        let tick = sim.tick_of(rtp[i].t.due);
        assert_eq!(b.payload, ch.expected(Codec::Pcma, tick * 80, 320));
        assert_eq!(rtp[i + 1].t.due - rtp[i].t.due, MS * 40);
        assert_eq!(
            rtp[i + 1]
                .rtp()
                .header
                .timestamp
                .distance_from(b.header.timestamp),
            320
        );
        assert!(
            !sim.f
                .update_call(42, params(addr(1), None, true, Codec::Pcmu, 20))
        );
    }

    #[test]
    fn rtp_carries_the_negotiated_payload_type_across_an_update() {
        // PCMU offered as PT 98 (RFC 3264 §6.1: the stream uses the offer's number); a
        // re-INVITE moves it to PT 97 without a gap in sequence or timestamp.
        let ch = Ramp::new("default", 0);
        let mut sim = Sim::new(11);
        let mut m = media(1, 20, &ch);
        m.params.payload_type = 98;
        sim.f.add_call(sim.at(0), m);
        sim.run_until(sim.at(100));
        let mut dynamic = params(addr(6000), None, true, Codec::Pcmu, 20);
        dynamic.payload_type = 97;
        assert!(sim.f.update_call(1, dynamic));
        sim.run_until(sim.at(200));
        let rtp = sim.rtp_of(1);
        let i = rtp.iter().position(|s| s.t.dest == addr(6000)).unwrap();
        assert!(rtp[..i].iter().all(|s| s.rtp().header.payload_type == 98));
        assert!(rtp[i..].iter().all(|s| s.rtp().header.payload_type == 97));
        let (a, b) = (rtp[i - 1].rtp(), rtp[i].rtp());
        assert_eq!(b.header.seq.distance_from(a.header.seq), 1);
        assert_eq!(b.header.timestamp.distance_from(a.header.timestamp), 160);
        let tick = sim.tick_of(rtp[i].t.due);
        assert_eq!(b.payload, ch.expected(Codec::Pcmu, tick * 80, 160));
    }

    #[test]
    fn set_channel_swaps_at_the_next_packet_for_that_channel_only() {
        let a = Ramp::new("a", 0);
        let b = Ramp::new("b", 0);
        let mut sim = Sim::new(10);
        sim.f.add_call(sim.at(0), media(1, 20, &a));
        sim.f.add_call(sim.at(0), media(2, 20, &b));
        sim.run_until(sim.at(500));
        let a2 = Ramp::new("a", 0xAA);
        sim.f.set_channel(Arc::clone(&a2));
        sim.run_until(sim.at(1000));
        for s in sim.out.iter().filter(|s| s.t.kind == PacketKind::Rtp) {
            let tick = sim.tick_of(s.t.due);
            let want = match (s.t.call, s.t.due > sim.at(500)) {
                (1, false) => a.expected(Codec::Pcmu, tick * 80, 160),
                (1, true) => a2.expected(Codec::Pcmu, tick * 80, 160),
                _ => b.expected(Codec::Pcmu, tick * 80, 160),
            };
            assert_eq!(s.rtp().payload, want);
        }
    }

    #[test]
    fn ptime_is_normalised_and_seeds_are_deterministic() {
        assert_eq!(
            [0, 9, 10, 14, 15, 25, 29, 44, 60, 61, 1000].map(normalize_ptime),
            [10, 10, 10, 10, 20, 30, 30, 40, 60, 60, 60]
        );
        let ch = Ramp::new("default", 0);
        let start = |seed| {
            let mut sim = Sim::new(seed);
            sim.f.add_call(sim.at(0), media(1, 20, &ch));
            sim.run_until(sim.at(0));
            sim.out[0].rtp().header
        };
        assert_eq!(start(11), start(11));
        assert_ne!(start(11).ssrc, start(12).ssrc);
        // A fixed SSRC (a multicast stream's) is sent whatever the seed.
        for seed in [11, 12] {
            let mut sim = Sim::new(seed);
            let mut m = media(1, 20, &ch);
            m.ssrc = Some(0x5EED_0001);
            sim.f.add_call(sim.at(0), m);
            sim.run_until(sim.at(0));
            assert_eq!(sim.out[0].rtp().header.ssrc, 0x5EED_0001);
        }
        // A CNAME too long for SDES is cut at a character boundary, not refused.
        let mut sim = Sim::new(13);
        let mut m = media(1, 20, &ch);
        m.cname = "é".repeat(200);
        sim.f.add_call(sim.at(0), m);
        sim.f.remove_call(1);
        sim.drain();
        let bye = sim.out.last().unwrap();
        let packets: Vec<_> = parse_rtcp(&bye.bytes).collect::<Result<_, _>>().unwrap();
        assert!(matches!(
            packets[1],
            RtcpPacket::SourceDescription { cname: Some(c), .. } if c.len() == 254
        ));
    }

    fn codec_media(call: u64, codec: Codec, ptime_ms: u32, channel: &Arc<Ramp>) -> CallMedia<Ramp> {
        let mut m = media(call, ptime_ms, channel);
        m.params.codec = codec;
        m.params.payload_type = codec.payload_type();
        m
    }

    /// Where `update_call` switched a call's codec: index of the first packet of `codec`.
    fn first_of(rtp: &[&Sent], codec: Codec) -> usize {
        rtp.iter()
            .position(|s| s.rtp().header.payload_type == codec.payload_type())
            .unwrap()
    }

    #[test]
    fn timestamps_advance_at_each_codecs_clock() {
        let ch = Ramp::new("default", 0);
        let mut sim = Sim::new(30);
        sim.f
            .add_call(sim.at(0), codec_media(1, Codec::G722, 20, &ch));
        // Opus goes out in 20 ms frames whatever the offer's ptime (RFC 7587 lets the
        // sender choose; the answer says 20).
        sim.f
            .add_call(sim.at(5), codec_media(2, Codec::Opus, 60, &ch));
        sim.f
            .add_call(sim.at(11), codec_media(3, Codec::Opus, 10, &ch));
        sim.f
            .add_call(sim.at(0), codec_media(4, Codec::G722, 30, &ch));
        assert_eq!(sim.f.params(2).unwrap().ptime_ms, 20);
        assert_eq!(sim.f.params(3).unwrap().ptime_ms, 20);
        sim.run_until(sim.at(2000));
        for (call, codec, step_ms, units) in [
            (1, Codec::G722, 20, 160),
            (2, Codec::Opus, 20, 960),
            (3, Codec::Opus, 20, 960),
            (4, Codec::G722, 30, 240),
        ] {
            let rtp = sim.rtp_of(call);
            assert!(rtp.len() >= 66, "call {call}: {}", rtp.len());
            for w in rtp.windows(2) {
                let (a, b) = (w[0].rtp().header, w[1].rtp().header);
                assert_eq!(w[1].t.due - w[0].t.due, MS * step_ms);
                assert_eq!(b.seq.distance_from(a.seq), 1);
                assert_eq!(b.timestamp.distance_from(a.timestamp), units, "call {call}");
                assert_eq!(b.payload_type, codec.payload_type());
            }
            for s in &rtp {
                let tick = sim.tick_of(s.t.due);
                let want = match codec {
                    Codec::Opus => ch.opus_frame(tick),
                    _ => ch.expected(codec, tick * 80, step_ms as usize * 8),
                };
                assert_eq!(s.rtp().payload, want, "call {call} tick {tick}");
            }
        }
        // Opus frames fall on even ticks (20 ms boundaries from tick 0): call 3 joined at
        // 11 ms and starts at 20 ms; octets count the variable frame lengths.
        assert_eq!(sim.rtp_of(2)[0].t.due, sim.at(20));
        assert_eq!(sim.rtp_of(3)[0].t.due, sim.at(20));
        let octets: usize = sim.rtp_of(3).iter().map(|s| s.rtp().payload.len()).sum();
        assert_eq!(sim.f.counters(3).unwrap().octets_sent, octets as u64);
        for call in 1..=4 {
            let c = sim.f.counters(call).unwrap();
            assert_eq!((c.drift_ns, c.max_abs_drift_ns), (0, 0), "call {call}");
        }
    }

    /// Checks one switch at packet `i` of `rtp`: the sequence continues, the timestamp
    /// continues to the old clock's next packet (`old_next_tick`) and then runs at the new
    /// clock, the marker is on that packet only.
    fn assert_switch(
        sim: &Sim,
        rtp: &[&Sent],
        i: usize,
        old: Codec,
        old_next_tick: u64,
        new: Codec,
    ) {
        let (a, b) = (rtp[i - 1].rtp().header, rtp[i].rtp().header);
        let (tick_a, tick_b) = (sim.tick_of(rtp[i - 1].t.due), sim.tick_of(rtp[i].t.due));
        assert_eq!(b.seq.distance_from(a.seq), 1);
        let want = (old_next_tick - tick_a) * units_per_tick(old)
            + (tick_b - old_next_tick) * units_per_tick(new);
        assert_eq!(b.timestamp.distance_from(a.timestamp), want as i32);
        assert_eq!(
            (a.payload_type, b.payload_type),
            (old.payload_type(), new.payload_type())
        );
        assert!(b.marker, "marker on the first packet after the switch");
        assert!(!rtp[i + 1].rtp().header.marker);
    }

    #[test]
    fn a_codec_switch_keeps_seq_continues_ts_at_the_new_clock_and_marks_it() {
        let ch = Ramp::new("default", 0);
        let mut sim = Sim::new(31);
        // Near the timestamp wrap, so the rebase crosses it too.
        let ts_start = u32::MAX - 100_000;
        sim.f.add_call_with_start(
            sim.at(0),
            codec_media(1, Codec::G722, 20, &ch),
            5,
            65_500,
            ts_start,
        );
        sim.run_until(sim.at(10_005));
        // G.722 → Opus between packets: the next G.722 packet would have been for tick 1002.
        assert!(sim.switch_codec(1, Codec::Opus, 30));
        sim.run_until(sim.at(20_013));
        // Opus → PCMU 30 ms: the next Opus packet would have been for tick 2002.
        assert!(sim.switch_codec(1, Codec::Pcmu, 30));
        sim.run_until(sim.at(30_000));
        let rtp = sim.rtp_of(1);
        let to_opus = first_of(&rtp, Codec::Opus);
        let to_pcmu = first_of(&rtp, Codec::Pcmu);
        assert_eq!(rtp[to_opus].t.due, sim.at(10_020));
        assert_eq!(rtp[to_pcmu].t.due, sim.at(20_020));
        assert_switch(&sim, &rtp, to_opus, Codec::G722, 1002, Codec::Opus);
        assert_switch(&sim, &rtp, to_pcmu, Codec::Opus, 2002, Codec::Pcmu);
        // All along: one SSRC, one contiguous sequence (across its wrap), and each packet's
        // timestamp is exactly where the three clocks put it.
        let ts_at = |tick: u64| {
            let g722 = tick.min(1002) * 80;
            let opus = tick.clamp(1002, 2002) - 1002;
            let pcmu = tick.saturating_sub(2002);
            Ts32(ts_start).add_samples(g722 + opus * 480 + pcmu * 80)
        };
        for (k, s) in rtp.iter().enumerate() {
            let h = s.rtp().header;
            assert_eq!(h.ssrc, 5);
            assert_eq!(h.seq, Seq16(65_500).wrapping_add(k as u16));
            assert_eq!(h.timestamp, ts_at(sim.tick_of(s.t.due)), "packet {k}");
            assert_eq!(h.marker, [0, to_opus, to_pcmu].contains(&k), "packet {k}");
        }
        assert_eq!(rtp[to_opus + 1].t.due - rtp[to_opus].t.due, MS * 20);
        assert_eq!(rtp[to_pcmu + 1].t.due - rtp[to_pcmu].t.due, MS * 30);
        // No gap in the music: every switch packet is due one ptime after the last.
        assert_eq!(rtp[to_opus].t.due - rtp[to_opus - 1].t.due, MS * 20);
        assert_eq!(rtp[to_pcmu].t.due - rtp[to_pcmu - 1].t.due, MS * 20);
        // On time throughout, so no drift on either side of either switch.
        let c = sim.f.counters(1).unwrap();
        assert_eq!((c.drift_ns, c.max_abs_drift_ns), (0, 0), "{c:?}");
        assert_eq!(c.packets_sent, rtp.len() as u64);
        // Every SR speaks the clock of the packets around it: its rtp_ts is the timestamp
        // of the RTP packets' time line at its instant.
        let mut srs = 0;
        for r in sim.rtcp_of(1) {
            let Some(Ok(RtcpPacket::SenderReport { sr, .. })) = parse_rtcp(&r.bytes).next() else {
                continue;
            };
            let nanos = (r.t.due - sim.epoch).as_nanos() as u64;
            let tick = nanos / 10_000_000;
            let rate = if (1002..2002).contains(&tick) { 48 } else { 8 };
            let frac = (nanos % 10_000_000) * rate / 1_000_000;
            assert_eq!(sr.rtp_ts, ts_at(tick).add_samples(frac), "SR at {nanos} ns");
            srs += 1;
        }
        assert!(srs >= 5, "{srs}");
        // Opus ignores the negotiated ptime on a switch too.
        assert!(sim.switch_codec(1, Codec::Opus, 60));
        assert_eq!(sim.f.params(1).unwrap().ptime_ms, 20);
    }

    #[test]
    fn opus_after_a_thirty_ms_call_waits_for_the_next_frame_boundary() {
        let ch = Ramp::new("default", 0);
        let mut sim = Sim::new(32);
        sim.f
            .add_call_with_start(sim.at(0), media(1, 30, &ch), 1, 100, 1_000);
        // Packets for ticks 0, 3, 6 have gone; the next would be tick 9, odd.
        sim.run_until(sim.at(65));
        assert!(sim.switch_codec(1, Codec::Opus, 30));
        sim.run_until(sim.at(1000));
        let rtp = sim.rtp_of(1);
        let i = first_of(&rtp, Codec::Opus);
        assert_eq!(i, 3);
        assert_switch(&sim, &rtp, i, Codec::Pcmu, 9, Codec::Opus);
        assert_eq!(rtp[i].t.due, sim.at(100));
        // ts: 1000 + 9 × 80 at the switch, + 480 to tick 10.
        assert_eq!(rtp[i].rtp().header.timestamp, Ts32(1000 + 720 + 480));
        for s in &rtp[i..] {
            assert_eq!(sim.tick_of(s.t.due) % 2, 0, "Opus packets on even ticks");
        }
        assert_eq!(rtp.len() - i, 46);
        // No double packet: the stale tick-9 deadline went nowhere.
        assert_eq!(sim.f.counters(1).unwrap().packets_sent, rtp.len() as u64);
    }

    #[test]
    fn a_channel_with_nothing_for_the_codec_yet_keeps_time_and_sequence() {
        // Start-up: the Opus encoding is not ready; then the render with it is swapped in.
        let early = Ramp::without("default", Codec::Opus);
        let mut sim = Sim::new(33);
        sim.f.add_call_with_start(
            sim.at(0),
            codec_media(1, Codec::Opus, 20, &early),
            9,
            700,
            4_000,
        );
        sim.f.add_call_with_start(
            sim.at(0),
            codec_media(2, Codec::G722, 20, &early),
            10,
            800,
            8_000,
        );
        sim.run_until(sim.at(1000));
        assert!(sim.rtp_of(1).is_empty());
        assert_eq!(sim.rtp_of(2).len(), 51, "other codecs play");
        let c = sim.f.counters(1).unwrap();
        assert_eq!((c.unfilled_packets, c.packets_sent), (51, 0));
        // Call 2 switches to Opus while it is still missing: it goes quiet, time goes on.
        assert!(sim.switch_codec(2, Codec::Opus, 20));
        sim.run_until(sim.at(1500));
        assert_eq!(sim.rtp_of(2).len(), 51);
        let ready = Ramp::new("default", 0);
        sim.f.set_channel(Arc::clone(&ready));
        sim.run_until(sim.at(2000));
        let rtp = sim.rtp_of(1);
        assert_eq!(rtp.len(), 25);
        let h = rtp[0].rtp().header;
        // The first packet takes the first sequence number, the clock's timestamp (tick 152)
        // and the marker, and carries the frame of its tick.
        assert_eq!(rtp[0].t.due, sim.at(1520));
        assert_eq!(
            (h.seq, h.timestamp, h.marker),
            (Seq16(700), Ts32(4000 + 152 * 480), true)
        );
        assert_eq!(rtp[0].rtp().payload, ready.opus_frame(152));
        assert!(!rtp[1].rtp().header.marker);
        let rtp2 = sim.rtp_of(2);
        let (a, b) = (rtp2[50].rtp().header, rtp2[51].rtp().header);
        assert_eq!(b.seq.distance_from(a.seq), 1, "no loss reported");
        assert!(b.marker);
        // G.722 up to its next packet (tick 102), then Opus to tick 152.
        assert_eq!(b.timestamp.distance_from(a.timestamp), 2 * 80 + 50 * 480);
        let c = sim.f.counters(1).unwrap();
        assert_eq!((c.unfilled_packets, c.packets_sent), (76, 25));
        assert_eq!(c.max_abs_drift_ns, 0);
        assert_eq!(sim.f.counters(2).unwrap().unfilled_packets, 25);
    }

    #[test]
    fn drift_is_exact_at_the_opus_clock_and_restarts_at_a_clock_change() {
        // 48 kHz is not a whole number of ns per sample: a driver 3 ms late every time reads
        // exactly 3 ms, and an on-time one exactly 0, for days.
        let ch = Ramp::new("default", 0);
        let mut sim = Sim::new(34);
        sim.f
            .add_call(sim.at(0), codec_media(1, Codec::Opus, 20, &ch));
        sim.run_until(sim.at(10_000));
        while sim.now < sim.at(20_000) {
            let next = sim.f.poll_timeout().unwrap();
            sim.jump_to(next + MS * 3);
        }
        let c = sim.f.counters(1).unwrap();
        assert_eq!((c.drift_ns, c.max_abs_drift_ns), (3_000_000, 3_000_000));
        sim.run_until(sim.at(25_000));
        assert_eq!(sim.f.counters(1).unwrap().drift_ns, 0);
        // Switch to G.722: the meter restarts on the 8 kHz clock, the maximum stays.
        assert!(sim.switch_codec(1, Codec::G722, 20));
        sim.run_until(sim.at(40_000));
        let c = sim.f.counters(1).unwrap();
        assert_eq!((c.drift_ns, c.max_abs_drift_ns), (0, 3_000_000));
        // The meter alone, across a four-day inactive gap at 48 kHz: still exactly 0.
        let t0 = Instant::now();
        let mut m = DriftMeter::new(t0, 0, Ts32(u32::MAX - 5), 48_000);
        let days = 4 * 86_400 * 100u64;
        for tick in [2u64, 4, 6 + days, 8 + days, 208 + days] {
            let d = m.on_sent(
                t0 + TICK_TEST * tick as u32,
                tick,
                Ts32(u32::MAX - 5).add_samples(tick * 480),
            );
            assert!(d.is_none() || d == Some(0), "{d:?}");
        }
        // One unit fast per 20 ms packet at 48 kHz: 20,833.3 ns per packet, truncated once.
        let mut m = DriftMeter::new(t0, 0, Ts32(0), 48_000);
        let mut last = None;
        for k in 1..=200u64 {
            if let Some(d) = m.on_sent(
                t0 + MS * (20 * k) as u32,
                2 * k,
                Ts32(0).add_samples(k * 961),
            ) {
                last = Some(d);
            }
        }
        // Windows close at packets 50, 100, 150, 200: 150 packets after the anchor.
        assert_eq!(last, Some(-(150 * 1_000_000_000 / 48_000)));
    }

    fn srtp_keys(fill: u8) -> SrtpParams {
        let suite = SrtpSuite::AesCm128HmacSha1_80;
        let key = |f: u8| {
            let bytes: Vec<u8> = (0..30).map(|i| f.wrapping_add(i)).collect();
            SrtpKeyMaterial::from_bytes(suite, &bytes).unwrap()
        };
        SrtpParams {
            suite,
            ours: key(fill),
            theirs: key(fill ^ 0xFF),
        }
    }

    /// What the peer's receiver context makes of `sent`, in order: each datagram decrypted.
    fn unprotect_all(receiver: &mut SrtpReceiver, sent: &[&Sent]) -> Vec<Vec<u8>> {
        sent.iter()
            .map(|s| {
                let mut bytes = s.bytes.clone();
                let len = match s.t.kind {
                    PacketKind::Rtp => receiver.unprotect_rtp(&mut bytes),
                    PacketKind::Rtcp => receiver.unprotect_rtcp(&mut bytes),
                }
                .unwrap_or_else(|e| panic!("{:?} due {:?}: {e}", s.t.kind, s.t.due));
                bytes.truncate(len);
                bytes
            })
            .collect()
    }

    /// An SRTP call: every RTP packet and RTCP compound (the BYE too) decrypts with the
    /// peer's receiver context, across the sequence wrap (ROC 0 → 1), with the payload the
    /// channel gave; a re-INVITE with the same keys keeps the context, new keys start anew.
    #[test]
    fn srtp_call_protects_rtp_and_rtcp_across_the_wrap() {
        let ch = Ramp::new("default", 0);
        let mut sim = Sim::new(5);
        let keys = srtp_keys(1);
        let mut m = media(1, 20, &ch);
        m.params.srtp = Some(keys);
        sim.f
            .add_call_with_start(sim.at(0), m, 0x5EC0_0001, 65_530, 1_000);
        sim.run_until(sim.at(6_000));
        let peer_view = SrtpParams {
            suite: keys.suite,
            ours: keys.theirs,
            theirs: keys.ours,
        };
        let mut receiver = peer_view.receiver();
        let rtp = sim.rtp_of(1);
        assert!(rtp.len() >= 290, "{} packets", rtp.len());
        assert_eq!(rtp[0].bytes.len(), 12 + 160 + 10, "tag appended");
        let plain = unprotect_all(&mut receiver, &rtp);
        for (k, bytes) in plain.iter().enumerate() {
            let p = parse_rtp(bytes).unwrap();
            assert_eq!(p.header.seq.0, 65_530u16.wrapping_add(k as u16));
            let tick = sim.tick_of(rtp[k].t.due);
            assert_eq!(p.payload, ch.expected(Codec::Pcmu, tick * 80, 160));
        }
        let rtcp = sim.rtcp_of(1);
        assert!(!rtcp.is_empty());
        for bytes in unprotect_all(&mut receiver, &rtcp) {
            assert!(matches!(
                parse_rtcp(&bytes).next(),
                Some(Ok(RtcpPacket::SenderReport { .. }))
            ));
        }

        // Same keys (a hold re-INVITE): the ROC carries on, the same receiver still reads it.
        let mut p = sim.f.params(1).unwrap();
        p.direction = Direction::SendOnly;
        assert!(sim.f.update_call(1, p));
        let before = sim.out.len();
        sim.run_until(sim.at(6_400));
        let later: Vec<&Sent> = sim.out[before..].iter().collect();
        unprotect_all(&mut receiver, &later);

        // New keys: a new context, which only a receiver with the new keys reads.
        let new_keys = srtp_keys(9);
        p.srtp = Some(new_keys);
        assert!(sim.f.update_call(1, p));
        let before = sim.out.len();
        sim.run_until(sim.at(6_800));
        sim.f.remove_call(1);
        sim.drain();
        let later: Vec<&Sent> = sim.out[before..].iter().collect();
        let mut stale = receiver.clone();
        let mut first = later[0].bytes.clone();
        assert!(
            stale.unprotect_rtp(&mut first).is_err(),
            "old keys do not read it"
        );
        let mut renewed = SrtpParams {
            suite: new_keys.suite,
            ours: new_keys.theirs,
            theirs: new_keys.ours,
        }
        .receiver();
        let plain = unprotect_all(&mut renewed, &later);
        let bye = plain.last().unwrap();
        assert!(
            parse_rtcp(bye).any(|p| matches!(p, Ok(RtcpPacket::Bye { .. }))),
            "the last datagram is the protected BYE"
        );
    }

    /// Several fan-outs on one clock, as the media threads drive them: each its own
    /// deadlines, calls moved between them with `take_call`/`adopt_call` between packets.
    struct Threads {
        fs: Vec<Fanout<Ramp>>,
        epoch: Instant,
        now: Instant,
        buf: Vec<u8>,
        out: Vec<Sent>,
    }

    impl Threads {
        fn new(n: u64) -> Threads {
            let epoch = Instant::now();
            let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
            let clock = MediaClock::new(epoch);
            Threads {
                fs: (0..n).map(|k| Fanout::new(clock, 100 + k, wall)).collect(),
                epoch,
                now: epoch,
                buf: vec![0; MIN_BUFFER],
                out: Vec::new(),
            }
        }

        fn at(&self, ms: u64) -> Instant {
            self.epoch + MS * ms as u32
        }

        /// Every fan-out wakes at its own deadlines up to `end` (the earliest first).
        fn run_until(&mut self, end: Instant) {
            loop {
                let next = self.fs.iter().filter_map(Fanout::poll_timeout).min();
                let Some(next) = next.filter(|&t| t <= end) else {
                    self.now = end;
                    return;
                };
                self.now = self.now.max(next);
                for f in &mut self.fs {
                    f.handle_timeout(self.now);
                    while let Some(t) = f.poll_transmit(self.now, &mut self.buf) {
                        self.out.push(Sent {
                            t,
                            at: self.now,
                            bytes: self.buf[..t.len].to_vec(),
                        });
                    }
                }
            }
        }

        fn owner(&self, call: u64) -> Option<usize> {
            self.fs.iter().position(|f| f.params(call).is_some())
        }
    }

    /// Calls spread over three fan-outs (a new call on the one with fewest calls) as they
    /// come and go, and moved between them every 100 ms: every call keeps its schedule (a
    /// packet exactly every ptime from its first to its last, on time) and one RTP stream
    /// (one SSRC, seq + 1, timestamp + 8 × ptime, payload of its tick, no duplicate, the
    /// marker on the first packet only); an SRTP call's packets all decrypt in order with one
    /// receiver context, RTCP included; its last RTCP report counts every packet it sent.
    #[test]
    fn calls_spread_over_fanouts_keep_schedule_and_stream_as_they_come_go_and_move() {
        let ch = Ramp::new("default", 0);
        let mut th = Threads::new(3);
        let mut rng = StdRng::seed_from_u64(42);
        let ptimes = [10, 20, 30, 40, 60];
        let mut live: Vec<u64> = Vec::new();
        let mut ended = HashMap::new();
        let mut moves = 0;
        let srtp_call = 7u64;
        for step in 0..60u64 {
            let t = th.at(step * 100 + rng.random_range(0..100));
            th.run_until(t);
            // Two calls arrive, on the fan-out with the fewest.
            for k in 0..2 {
                let call = step * 2 + k;
                let mut m = media(call, ptimes[call as usize % 5], &ch);
                if call == srtp_call {
                    m.params.srtp = Some(srtp_keys(3));
                }
                let f = th.fs.iter_mut().min_by_key(|f| f.call_count()).unwrap();
                f.add_call(t, m);
                live.push(call);
            }
            // One ends now and then.
            if step % 3 == 2 {
                let call = live.remove(rng.random_range(0..live.len()));
                if call != srtp_call {
                    let owner = th.owner(call).unwrap();
                    th.fs[owner].remove_call(call);
                    ended.insert(call, t);
                } else {
                    live.push(call);
                }
            }
            // A few move, between packets.
            for _ in 0..3 {
                let call = live[rng.random_range(0..live.len())];
                let from = th.owner(call).unwrap();
                let to = (from + 1 + rng.random_range(0..2)) % 3;
                let moving = th.fs[from].take_call(call).unwrap();
                assert!(th.fs[from].params(call).is_none());
                th.fs[to].adopt_call(th.now, moving);
                moves += 1;
            }
        }
        th.run_until(th.at(7_000));
        assert!(moves >= 180);
        assert_eq!(
            th.fs.iter().map(Fanout::call_count).sum::<usize>(),
            live.len()
        );
        for call in 0..120u64 {
            let ptime = u64::from(ptimes[call as usize % 5]);
            let rtp: Vec<&Sent> = th
                .out
                .iter()
                .filter(|s| s.t.call == call && s.t.kind == PacketKind::Rtp)
                .collect();
            assert!(rtp.len() > 1, "call {call}");
            if call == srtp_call {
                let keys = srtp_keys(3);
                let mut peer = SrtpParams {
                    suite: keys.suite,
                    ours: keys.theirs,
                    theirs: keys.ours,
                }
                .receiver();
                let all: Vec<&Sent> = th.out.iter().filter(|s| s.t.call == call).collect();
                let plain = unprotect_all(&mut peer, &all);
                assert!(plain.len() > rtp.len());
                continue;
            }
            assert!(rtp[0].rtp().header.marker);
            for w in rtp.windows(2) {
                assert_eq!(w[1].t.due - w[0].t.due, MS * ptime as u32, "call {call}");
                assert_eq!(w[1].at, w[1].t.due, "call {call}: on time");
                let (a, b) = (w[0].rtp(), w[1].rtp());
                assert_eq!(b.header.ssrc, a.header.ssrc, "call {call}");
                assert_eq!(b.header.seq.distance_from(a.header.seq), 1, "call {call}");
                assert_eq!(
                    b.header.timestamp.distance_from(a.header.timestamp),
                    8 * ptime as i32
                );
                assert!(!b.header.marker, "call {call}");
                let tick = th.epoch + (w[1].t.due - th.epoch);
                let tick = MediaClock::new(th.epoch).tick_at(tick);
                assert_eq!(
                    b.payload,
                    ch.expected(Codec::Pcmu, tick * 80, 8 * ptime as usize)
                );
            }
            // It ran until it ended (or until now): no packet missing at the end either.
            let end = ended.get(&call).copied().unwrap_or(th.now);
            let last = rtp[rtp.len() - 1].t.due;
            assert!(
                end.saturating_duration_since(last) < MS * ptime as u32,
                "call {call}"
            );
        }
    }
}
