//! Channel timelines in the fan-out, on a virtual clock: shared and from-start calls, a
//! greeting then a join (shared at an entry mark, from-start at position 0), the next pass
//! queued at the end of the current one, a one-off segment yielding back, a schedule switch
//! (fade-out then the next programme from 0), from-start calls keeping their pieces after
//! the channel moves on; RTP sequence and timestamps continuous through all of it; the send
//! schedule independent of what plays and of the wall clock; no allocation per packet.
//!
//! Sources are fakes whose every 10 ms of payload names itself and its position (`Marked`),
//! so each received packet says exactly what the call heard.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mohd::channel::spec::ChannelMode;
use mohd::clock::MediaClock;
use mohd::codec::Codec;
use mohd::rtp::fanout::{
    CallMedia, Fanout, GREETING_WAIT_TICKS, MIN_BUFFER, PacketKind, PayloadSource, Piece, Playback,
    Transmit,
};
use mohd::rtp::packet::parse_rtp;
use mohd::sip::sdp::{Direction, MediaParams};

/// Counts allocations made on threads that asked to be counted.
struct CountingAlloc;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

const TICK: Duration = Duration::from_millis(10);

/// A source whose every tick of G.711 payload is 80 bytes `[id, position (u16 BE), id, ...]`
/// and whose Opus frames are `[id, position (u16 BE)]` (positions modulo its length); with
/// entry marks every `entry_every` ticks, each entered through `entry`.
#[derive(Debug)]
struct Marked {
    channel: String,
    id: u8,
    len: u64,
    entry_every: u64,
    entry: Option<Arc<Marked>>,
}

fn marked(channel: &str, id: u8, len: u64) -> Arc<Marked> {
    Arc::new(Marked {
        channel: channel.into(),
        id,
        len,
        entry_every: 0,
        entry: None,
    })
}

/// A pass with entry marks every second, entered through a 14-tick fade-in (id 9).
fn marked_with_entries(channel: &str, id: u8, len: u64) -> Arc<Marked> {
    Arc::new(Marked {
        channel: channel.into(),
        id,
        len,
        entry_every: 100,
        entry: Some(marked(channel, 9, 14)),
    })
}

impl PayloadSource for Marked {
    fn name(&self) -> &str {
        &self.channel
    }
    fn len_ticks(&self) -> u64 {
        self.len
    }
    fn fill_packet(&self, codec: Codec, tick: u64, ticks: u64, out: &mut [u8]) -> usize {
        if codec == Codec::Opus {
            assert_eq!((ticks, tick % 2), (2, 0), "Opus frames on even positions");
            let p = (tick % self.len) as u16;
            out[0] = self.id;
            out[1..3].copy_from_slice(&p.to_be_bytes());
            return 3;
        }
        for k in 0..ticks {
            let p = ((tick + k) % self.len) as u16;
            let chunk = &mut out[(k * 80) as usize..((k + 1) * 80) as usize];
            for pair in chunk.chunks_mut(4) {
                pair[0] = self.id;
                pair[1..3].copy_from_slice(&p.to_be_bytes());
                pair[3] = self.id;
            }
        }
        (ticks * 80) as usize
    }
    fn entry_after(&self, position_ticks: u64) -> Option<(u64, Arc<Self>)> {
        let entry = self.entry.as_ref()?;
        let at = position_ticks.next_multiple_of(self.entry_every) % self.len;
        Some((at, Arc::clone(entry)))
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 1], port))
}

fn call_media(
    call: u64,
    codec: Codec,
    ptime_ms: u32,
    channel: &Arc<Marked>,
    playback: Playback<Marked>,
) -> CallMedia<Marked> {
    CallMedia {
        call,
        params: MediaParams {
            codec,
            payload_type: codec.payload_type(),
            ptime_ms,
            remote_rtp: addr(4000 + 2 * call as u16),
            remote_rtcp: None,
            direction: Direction::SendOnly,
            peer_opus: None,
            srtp: None,
        },
        channel: Arc::clone(channel),
        playback,
        cname: format!("mohd-{call}@test"),
        ssrc: None,
    }
}

/// What one RTP packet carried.
#[derive(Debug, Clone)]
struct Heard {
    due: Instant,
    seq: u16,
    ts: u32,
    marker: bool,
    /// (source id, position) for each tick of the packet.
    ticks: Vec<(u8, u64)>,
}

/// A virtual-clock driver doing what the media thread does.
struct Sim {
    f: Fanout<Marked>,
    epoch: Instant,
    now: Instant,
    buf: Vec<u8>,
    sent: Vec<(Transmit, Vec<u8>)>,
}

impl Sim {
    fn new(wall: SystemTime) -> Sim {
        Sim::on_clock(Instant::now(), 7, wall)
    }

    /// Another fan-out on the same media clock (another media thread).
    fn on_clock(epoch: Instant, seed: u64, wall: SystemTime) -> Sim {
        Sim {
            f: Fanout::new(MediaClock::new(epoch), seed, wall),
            epoch,
            now: epoch,
            buf: vec![0; MIN_BUFFER],
            sent: Vec::new(),
        }
    }

    fn at(&self, tick: u64) -> Instant {
        self.epoch + TICK * tick as u32
    }

    /// A call starting now.
    fn add(
        &mut self,
        call: u64,
        codec: Codec,
        ptime_ms: u32,
        channel: &Arc<Marked>,
        playback: Playback<Marked>,
    ) {
        let media = call_media(call, codec, ptime_ms, channel, playback);
        self.f.add_call(self.now, media);
    }

    fn run_until(&mut self, tick: u64) {
        let end = self.at(tick);
        loop {
            let next = self.f.poll_timeout().filter(|&t| t <= end);
            self.now = next.unwrap_or(end).max(self.now);
            self.f.handle_timeout(self.now);
            while let Some(t) = self.f.poll_transmit(self.now, &mut self.buf) {
                self.sent.push((t, self.buf[..t.len].to_vec()));
            }
            if next.is_none() {
                return;
            }
        }
    }

    fn tick_of(&self, at: Instant) -> u64 {
        ((at - self.epoch).as_nanos() / TICK.as_nanos()) as u64
    }

    fn heard(&self, call: u64, codec: Codec) -> Vec<Heard> {
        self.sent
            .iter()
            .filter(|(t, _)| t.call == call && t.kind == PacketKind::Rtp)
            .map(|(t, bytes)| {
                let p = parse_rtp(bytes).unwrap();
                let ticks = if codec == Codec::Opus {
                    let pos = u16::from_be_bytes([p.payload[1], p.payload[2]]);
                    vec![
                        (p.payload[0], u64::from(pos)),
                        (p.payload[0], u64::from(pos) + 1),
                    ]
                } else {
                    p.payload
                        .chunks(80)
                        .map(|c| (c[0], u64::from(u16::from_be_bytes([c[1], c[2]]))))
                        .collect()
                };
                Heard {
                    due: t.due,
                    seq: p.header.seq.get(),
                    ts: p.header.timestamp.get(),
                    marker: p.header.marker,
                    ticks,
                }
            })
            .collect()
    }

    /// Per media-clock tick from the call's first packet: (tick, source id, position).
    fn timeline_of(&self, call: u64, codec: Codec) -> Vec<(u64, u8, u64)> {
        let mut out = Vec::new();
        for h in self.heard(call, codec) {
            let first = self.tick_of(h.due);
            for (k, &(id, pos)) in h.ticks.iter().enumerate() {
                out.push((first + k as u64, id, pos));
            }
        }
        out
    }
}

/// What `call` heard from several fan-outs (it moved between them), in deadline order.
fn heard_across(sims: &[&Sim], call: u64, codec: Codec) -> Vec<Heard> {
    let mut heard: Vec<Heard> = sims.iter().flat_map(|s| s.heard(call, codec)).collect();
    heard.sort_by_key(|h| h.due);
    heard
}

/// Per media-clock tick: (tick, source id, position), from what it heard.
fn timeline_from(epoch: Instant, heard: &[Heard]) -> Vec<(u64, u8, u64)> {
    let mut out = Vec::new();
    for h in heard {
        let first = ((h.due - epoch).as_nanos() / TICK.as_nanos()) as u64;
        for (k, &(id, pos)) in h.ticks.iter().enumerate() {
            out.push((first + k as u64, id, pos));
        }
    }
    out
}

/// One sequence, one clock: each packet's seq is the previous + 1 and its timestamp the
/// previous + its ticks at `units` per tick; only the first carries the marker.
fn assert_continuous(heard: &[Heard], units_per_tick: u32) {
    assert!(!heard.is_empty());
    assert!(heard[0].marker);
    for w in heard.windows(2) {
        let ticks = (w[1].due - w[0].due).as_millis() as u32 / 10;
        assert_eq!(w[1].seq, w[0].seq.wrapping_add(1), "{w:?}");
        assert_eq!(
            w[1].ts,
            w[0].ts.wrapping_add(ticks * units_per_tick),
            "{w:?}"
        );
        assert!(!w[1].marker, "{w:?}");
    }
}

/// Asserts that from tick `from` to `to` (exclusive) the call heard source `id` at position
/// `pos0 + (t − from)` (modulo `len`).
fn assert_heard(tl: &[(u64, u8, u64)], from: u64, to: u64, id: u8, pos0: u64, len: u64) {
    let mut n = 0;
    for &(t, got_id, pos) in tl.iter().filter(|(t, ..)| (from..to).contains(t)) {
        assert_eq!(
            (got_id, pos),
            (id, (pos0 + (t - from)) % len),
            "tick {t} (expected source {id} from {from} at {pos0})"
        );
        n += 1;
    }
    assert_eq!(n, to - from, "ticks {from}..{to} all heard");
}

fn wall() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

#[test]
fn from_start_calls_start_at_zero_and_shared_calls_at_the_current_position() {
    let shared = marked("radio", 1, 3000);
    let from_start = marked("story", 2, 3000);
    let mut sim = Sim::new(wall());
    sim.add(1, Codec::Pcmu, 20, &shared, Playback::Shared);
    sim.add(3, Codec::Pcmu, 20, &from_start, Playback::FromStart);
    sim.run_until(700);
    // Seven seconds later a second caller on each channel, and an Opus one, 30 ms later.
    sim.add(2, Codec::Pcmu, 20, &shared, Playback::Shared);
    sim.add(4, Codec::Pcmu, 20, &from_start, Playback::FromStart);
    sim.run_until(703);
    sim.add(5, Codec::Opus, 20, &from_start, Playback::FromStart);
    sim.run_until(1500);
    assert_heard(&sim.timeline_of(1, Codec::Pcmu), 0, 1500, 1, 0, 3000);
    assert_heard(&sim.timeline_of(2, Codec::Pcmu), 700, 1500, 1, 700, 3000);
    assert_heard(&sim.timeline_of(3, Codec::Pcmu), 0, 1500, 2, 0, 3000);
    assert_heard(&sim.timeline_of(4, Codec::Pcmu), 700, 1500, 2, 0, 3000);
    assert_heard(&sim.timeline_of(5, Codec::Opus), 704, 1500, 2, 0, 3000);
    for call in 1..=4 {
        assert_continuous(&sim.heard(call, Codec::Pcmu), 80);
    }
    assert_continuous(&sim.heard(5, Codec::Opus), 480);
    let (source, position) = sim.f.playing(4).unwrap();
    assert_eq!((source.id, position), (2, 802));
}

#[test]
fn a_greeting_then_the_shared_programme_through_an_entry_mark() {
    let channel = marked_with_entries("radio", 1, 3000);
    // 2.5 s of greeting, then the wait in its silence.
    let greeting = marked("radio", 5, 250 + GREETING_WAIT_TICKS);
    let mut sim = Sim::new(wall());
    sim.add(1, Codec::Pcmu, 20, &channel, Playback::Shared);
    sim.run_until(123);
    let playback = Playback::Greeting {
        greeting: Arc::clone(&greeting),
        then: ChannelMode::Shared,
    };
    sim.add(2, Codec::Pcmu, 30, &channel, playback);
    sim.run_until(1000);
    // First packet at tick 123 (on the 30 ms grid); the wait starts at 123 + 250 = 373, the
    // next entry mark is position 400, reached at tick 400 (shared positions are absolute):
    // mid-packet, for the packet covering ticks 399..402.
    let tl = sim.timeline_of(2, Codec::Pcmu);
    assert_eq!(tl[0].0, 123);
    assert_heard(&tl, 123, 400, 5, 0, 3000);
    assert_heard(&tl, 400, 414, 9, 0, 14);
    assert_heard(&tl, 414, 1000, 1, 414, 3000);
    assert_continuous(&sim.heard(2, Codec::Pcmu), 80);
    assert_heard(&sim.timeline_of(1, Codec::Pcmu), 0, 1000, 1, 0, 3000);
}

#[test]
fn a_greeting_then_the_programme_from_its_start() {
    let channel = marked("story", 1, 3000);
    let greeting = marked("story", 5, 350);
    let mut sim = Sim::new(wall());
    sim.run_until(1234);
    let playback = Playback::Greeting {
        greeting,
        then: ChannelMode::FromStart,
    };
    sim.add(1, Codec::Opus, 20, &channel, playback);
    sim.run_until(2500);
    let tl = sim.timeline_of(1, Codec::Opus);
    assert_eq!(tl[0].0, 1234);
    assert_heard(&tl, 1234, 1584, 5, 0, 350);
    assert_heard(&tl, 1584, 2500, 1, 0, 3000);
    assert_continuous(&sim.heard(1, Codec::Opus), 480);
}

#[test]
fn a_greeting_without_entry_marks_joins_at_its_end() {
    let channel = marked("radio", 1, 3000);
    let greeting = marked("radio", 5, 333);
    let mut sim = Sim::new(wall());
    let playback = Playback::Greeting {
        greeting,
        then: ChannelMode::Shared,
    };
    sim.add(1, Codec::Pcmu, 40, &channel, playback);
    sim.run_until(800);
    // 333 ticks of greeting, then the programme at once, mid-packet (40 ms packets).
    let tl = sim.timeline_of(1, Codec::Pcmu);
    assert_heard(&tl, 0, 333, 5, 0, 333);
    assert_heard(&tl, 333, 800, 1, 333, 3000);
    assert_continuous(&sim.heard(1, Codec::Pcmu), 80);
}

#[test]
fn the_next_pass_plays_at_the_end_of_the_current_one_and_a_segment_yields_back() {
    let pass1 = marked("mix", 1, 1000);
    let pass2 = marked("mix", 2, 1200);
    let jingle = marked("mix", 3, 50);
    let mut sim = Sim::new(wall());
    sim.add(1, Codec::Pcmu, 30, &pass1, Playback::Shared);
    sim.add(2, Codec::Opus, 20, &pass1, Playback::Shared);
    sim.run_until(500);
    sim.f
        .queue("mix", Piece::looping(1000, Arc::clone(&pass2), 0));
    sim.f.queue("mix", Piece::once(1500, jingle, 0));
    sim.run_until(2500);
    for (call, codec, units) in [(1, Codec::Pcmu, 80), (2, Codec::Opus, 480)] {
        let tl = sim.timeline_of(call, codec);
        assert_heard(&tl, 0, 1000, 1, 0, 1000);
        assert_heard(&tl, 1000, 1500, 2, 0, 1200);
        assert_heard(&tl, 1500, 1550, 3, 0, 50);
        // The pass's own clock ran on underneath.
        assert_heard(&tl, 1550, 2500, 2, 550, 1200);
        assert_continuous(&sim.heard(call, codec), units);
    }
    // Only what can still be heard is kept: the pass playing (the jingle is over).
    assert_eq!(sim.f.pieces("mix").len(), 1);
}

#[test]
fn a_switch_fades_out_then_plays_the_next_programme_and_from_start_calls_follow_later() {
    let day = marked("office", 1, 3000);
    let fade = marked("office", 4, 100);
    let night = marked("office", 5, 2000);
    let mut sim = Sim::new(wall());
    sim.add(1, Codec::Pcmu, 20, &day, Playback::Shared);
    sim.run_until(700);
    sim.add(2, Codec::Pcmu, 20, &day, Playback::FromStart);
    sim.add(3, Codec::Opus, 20, &day, Playback::FromStart);
    sim.run_until(900);
    // The schedule says night from tick 1100: fade out the day from 1000, then night from 0.
    sim.f.queue("office", Piece::once(1000, fade, 0));
    sim.f.queue("office", Piece::looping(1100, night, 0));
    sim.run_until(3000);
    let tl = sim.timeline_of(1, Codec::Pcmu);
    assert_heard(&tl, 0, 1000, 1, 0, 3000);
    assert_heard(&tl, 1000, 1100, 4, 0, 100);
    assert_heard(&tl, 1100, 3000, 5, 0, 2000);
    // The from-start callers, 7 s behind, hear the switch when their own time reaches it:
    // the pieces they need were kept while the channel moved on.
    for (call, codec, units) in [(2, Codec::Pcmu, 80), (3, Codec::Opus, 480)] {
        let tl = sim.timeline_of(call, codec);
        assert_heard(&tl, 700, 1700, 1, 0, 3000);
        assert_heard(&tl, 1700, 1800, 4, 0, 100);
        assert_heard(&tl, 1800, 3000, 5, 0, 2000);
        assert_continuous(&sim.heard(call, codec), units);
    }
    assert_continuous(&sim.heard(1, Codec::Pcmu), 80);
    // Once every call is past the switch, only the night loop is kept.
    assert_eq!(sim.f.pieces("office").len(), 1);
}

#[test]
fn set_channel_keeps_its_meaning_for_shared_and_from_start_calls() {
    let old = marked("radio", 1, 3000);
    let new = marked("radio", 2, 3000);
    let mut sim = Sim::new(wall());
    sim.add(1, Codec::Pcmu, 20, &old, Playback::Shared);
    sim.run_until(500);
    sim.add(2, Codec::Pcmu, 20, &old, Playback::FromStart);
    // Packets up to the one for tick 798 have gone.
    sim.run_until(799);
    sim.f.set_channel(Arc::clone(&new));
    sim.run_until(1200);
    let tl = sim.timeline_of(1, Codec::Pcmu);
    assert_heard(&tl, 0, 800, 1, 0, 3000);
    assert_heard(&tl, 800, 1200, 2, 800, 3000);
    let tl = sim.timeline_of(2, Codec::Pcmu);
    assert_heard(&tl, 500, 800, 1, 0, 3000);
    assert_heard(&tl, 800, 1200, 2, 300, 3000);
}

/// The media clock is the only time the fan-out reads: the same `now`s give the same send
/// instants whatever plays (pieces, greetings, modes) and whatever the wall clock said at
/// the start (a wall clock an hour off, as after an NTP step).
#[test]
fn send_instants_depend_only_on_the_monotonic_clock() {
    let run = |wall: SystemTime, with_pieces: bool| -> Vec<(u64, u64, PacketKind)> {
        let channel = marked_with_entries("radio", 1, 3000);
        let mut sim = Sim::new(wall);
        let playback = |k: u64| match (with_pieces, k % 3) {
            (false, _) => Playback::Shared,
            (true, 0) => Playback::FromStart,
            (true, 1) => Playback::Greeting {
                greeting: marked("radio", 5, 300),
                then: ChannelMode::Shared,
            },
            (true, _) => Playback::Shared,
        };
        for k in 0..9u64 {
            sim.run_until(k * 37);
            let codec = [Codec::Pcmu, Codec::Opus, Codec::G722][k as usize % 3];
            sim.add(k, codec, 20 + 10 * (k as u32 % 3), &channel, playback(k));
        }
        if with_pieces {
            sim.f
                .queue("radio", Piece::once(900, marked("radio", 4, 100), 0));
            sim.f
                .queue("radio", Piece::looping(1000, marked("radio", 6, 2000), 0));
        }
        sim.run_until(3000);
        let epoch = sim.epoch;
        sim.sent
            .iter()
            .map(|(t, _)| {
                let due = (t.due - epoch).as_nanos() as u64;
                (t.call, due, t.kind)
            })
            .collect()
    };
    let plain = run(wall(), false);
    assert!(plain.len() > 2000);
    assert_eq!(run(wall() + Duration::from_secs(3600), true), plain);
    assert_eq!(run(wall() - Duration::from_secs(3600), true), plain);
}

#[test]
fn a_fanout_tick_allocates_nothing_per_packet() {
    let channel = marked_with_entries("radio", 1, 3000);
    let mut sim = Sim::new(wall());
    for k in 0..30u64 {
        let playback = match k % 3 {
            0 => Playback::FromStart,
            1 => Playback::Greeting {
                greeting: marked("radio", 5, 200),
                then: if k % 2 == 0 {
                    ChannelMode::Shared
                } else {
                    ChannelMode::FromStart
                },
            },
            _ => Playback::Shared,
        };
        let codec = [Codec::Pcmu, Codec::Opus, Codec::G722][k as usize % 3];
        sim.add(k, codec, 20 + 10 * (k as u32 % 4), &channel, playback);
    }
    sim.f
        .queue("radio", Piece::looping(400, marked("radio", 2, 1000), 0));
    sim.f
        .queue("radio", Piece::once(700, marked("radio", 3, 60), 0));
    sim.f
        .queue("radio", Piece::looping(900, marked("radio", 6, 1000), 0));
    // Warm up: the heap and the prune scratch reach their size.
    let mut buf = vec![0u8; MIN_BUFFER];
    let drive = |sim: &mut Sim, buf: &mut [u8], until: u64| {
        let mut packets = 0u64;
        while sim.now < sim.at(until) {
            sim.now = sim.f.poll_timeout().unwrap().max(sim.now);
            sim.f.handle_timeout(sim.now);
            while let Some(t) = sim.f.poll_transmit(sim.now, buf) {
                packets += u64::from(t.kind == PacketKind::Rtp);
            }
        }
        packets
    };
    drive(&mut sim, &mut buf, 150);
    COUNTING.with(|c| c.set(true));
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let packets = drive(&mut sim, &mut buf, 1500);
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    COUNTING.with(|c| c.set(false));
    assert!(packets > 30 * 50 * 10, "{packets} packets");
    assert_eq!(
        allocations, 0,
        "{allocations} allocations over {packets} packets (greetings joined, passes queued)"
    );
}

/// Calls spread over two fan-outs on one clock (two media threads: channel commands go to
/// both) and moved between them while they play, through a switch: a shared caller, two
/// from-start callers 7 s behind (the fan-out they move to had already dropped the pieces
/// they are still in), a greeted caller mid-greeting. Each hears exactly what its twin on a
/// third fan-out that never moves hears, in one unbroken RTP stream (seq + 1, timestamps at
/// the clock, one SSRC, no gap, no duplicate, a marker on the first packet only).
#[test]
fn calls_moved_between_fanouts_hear_what_they_would_have_and_keep_their_stream() {
    let day = marked("office", 1, 3000);
    let fade = marked("office", 4, 100);
    let night = marked("office", 5, 2000);
    let greeting = marked("office", 7, 200);
    let epoch = Instant::now();
    let mut a = Sim::on_clock(epoch, 1, wall());
    let mut b = Sim::on_clock(epoch, 2, wall());
    let mut twin = Sim::on_clock(epoch, 3, wall());
    let greeted = || Playback::Greeting {
        greeting: Arc::clone(&greeting),
        then: ChannelMode::FromStart,
    };
    let run_all = |sims: &mut [&mut Sim], tick: u64| {
        for s in sims.iter_mut() {
            s.run_until(tick);
        }
    };
    let moves = |from: &mut Sim, to: &mut Sim, call: u64| {
        let moving = from.f.take_call(call).expect("the call is there");
        assert_eq!(moving.call(), call);
        to.f.adopt_call(to.now, moving);
    };
    for s in [&mut a, &mut twin] {
        s.add(1, Codec::Pcmu, 20, &day, Playback::Shared);
    }
    b.add(10, Codec::Pcmu, 20, &day, Playback::Shared);
    run_all(&mut [&mut a, &mut b, &mut twin], 650);
    for s in [&mut a, &mut twin] {
        s.add(4, Codec::Pcmu, 30, &day, greeted());
    }
    run_all(&mut [&mut a, &mut b, &mut twin], 700);
    for s in [&mut a, &mut twin] {
        s.add(2, Codec::Pcmu, 20, &day, Playback::FromStart);
        s.add(3, Codec::Opus, 20, &day, Playback::FromStart);
    }
    run_all(&mut [&mut a, &mut b, &mut twin], 761);
    // Mid-greeting, between two packets.
    moves(&mut a, &mut b, 4);
    run_all(&mut [&mut a, &mut b, &mut twin], 900);
    // The schedule says night from tick 1100, faded out from 1000: every fan-out is told.
    for s in [&mut a, &mut b, &mut twin] {
        s.f.queue("office", Piece::once(1000, Arc::clone(&fade), 0));
        s.f.queue("office", Piece::looping(1100, Arc::clone(&night), 0));
    }
    run_all(&mut [&mut a, &mut b, &mut twin], 1200);
    moves(&mut b, &mut a, 4);
    run_all(&mut [&mut a, &mut b, &mut twin], 1333);
    // b, with only shared callers, has dropped the day and the fade by now.
    assert_eq!(b.f.pieces("office").len(), 1);
    for call in [1, 2, 3] {
        moves(&mut a, &mut b, call);
    }
    run_all(&mut [&mut a, &mut b, &mut twin], 2000);
    moves(&mut b, &mut a, 2);
    run_all(&mut [&mut a, &mut b, &mut twin], 3000);
    assert_eq!((a.f.call_count(), b.f.call_count()), (2, 3));
    for (call, codec, units) in [
        (1, Codec::Pcmu, 80),
        (2, Codec::Pcmu, 80),
        (3, Codec::Opus, 480),
        (4, Codec::Pcmu, 80),
    ] {
        let heard = heard_across(&[&a, &b], call, codec);
        assert_continuous(&heard, units);
        assert!(
            heard.windows(2).all(|w| w[0].due < w[1].due),
            "no duplicate"
        );
        assert_eq!(
            timeline_from(epoch, &heard),
            twin.timeline_of(call, codec),
            "call {call} heard what it would have without moving"
        );
        let ssrcs: std::collections::HashSet<u32> = [&a, &b]
            .iter()
            .flat_map(|s| s.sent.iter())
            .filter(|(t, _)| t.call == call && t.kind == PacketKind::Rtp)
            .map(|(_, bytes)| parse_rtp(bytes).unwrap().header.ssrc)
            .collect();
        assert_eq!(ssrcs.len(), 1, "call {call}: one SSRC");
    }
    // What the twins heard is the switch itself (so the comparison above means something).
    let tl = twin.timeline_of(2, Codec::Pcmu);
    assert_heard(&tl, 700, 1700, 1, 0, 3000);
    assert_heard(&tl, 1700, 1800, 4, 0, 100);
    assert_heard(&tl, 1800, 3000, 5, 0, 2000);
    // Counters and the RTCP schedule moved with the calls: reports kept coming, and the
    // packet count each says is what the call sent, wherever it sent from.
    let c = a.f.counters(2).unwrap();
    assert_eq!(
        c.packets_sent as usize,
        heard_across(&[&a, &b], 2, Codec::Pcmu).len()
    );
    assert!(c.rtcp_sent >= 4, "{c:?}");
    assert_eq!((c.skipped_packets, c.late_packets, c.drift_ns), (0, 0, 0));
}
