//! Memory under call churn, through the pure cores on a virtual clock: many one-second calls
//! (INVITE, 200, ACK, BYE, 200) through `sip::endpoint`, each call's media through
//! `rtp::fanout` and the media budget through `rtp::admission`, then past RFC 3261's 32 s
//! transaction timers. A global allocator here counts live bytes and blocks: once the calls
//! and their transactions are gone, what stays must not depend on how many calls there were
//! (no log of past calls, no stats keyed by call id, no per-source entries that never expire)
//! nor on how many there were at once (tables give their room back).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use mohd::clock::MediaClock;
use mohd::codec::Codec;
use mohd::config::Config;
use mohd::rtp::admission::{Admission, Sample};
use mohd::rtp::fanout::{CallMedia, Fanout, MIN_BUFFER, PayloadSource, Playback};
use mohd::sip::endpoint::{Endpoint, EndpointConfig, Event, Output};
use mohd::sip::msg::{self, Message};

/// Live heap bytes and blocks of the whole test binary.
struct LiveCounting;

static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);
static LIVE_BLOCKS: AtomicI64 = AtomicI64::new(0);

fn grew(bytes: usize, blocks: i64) {
    LIVE_BYTES.fetch_add(bytes as i64, Ordering::Relaxed);
    LIVE_BLOCKS.fetch_add(blocks, Ordering::Relaxed);
}

fn shrank(bytes: usize, blocks: i64) {
    LIVE_BYTES.fetch_sub(bytes as i64, Ordering::Relaxed);
    LIVE_BLOCKS.fetch_sub(blocks, Ordering::Relaxed);
}

// SAFETY: every call is passed to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for LiveCounting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed through.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size(), 1);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed through.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size(), 1);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        shrank(layout.size(), 1);
        // SAFETY: the caller's contract is passed through.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract is passed through.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            shrank(layout.size(), 0);
            grew(new_size, 0);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: LiveCounting = LiveCounting;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Live {
    bytes: i64,
    blocks: i64,
}

fn live() -> Live {
    Live {
        bytes: LIVE_BYTES.load(Ordering::Relaxed),
        blocks: LIVE_BLOCKS.load(Ordering::Relaxed),
    }
}

/// The counters are process-wide: the tests here measure one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A channel whose every packet is the same G.711 silence.
#[derive(Debug)]
struct Silence;

impl PayloadSource for Silence {
    fn name(&self) -> &str {
        "default"
    }
    fn len_ticks(&self) -> u64 {
        6_000
    }
    fn fill_packet(&self, _codec: Codec, _tick: u64, ticks: u64, out: &mut [u8]) -> usize {
        let len = (ticks * 80) as usize;
        out[..len].fill(0xff);
        len
    }
}

const LOCAL: &str = "192.0.2.10:5060";
const LOCAL_RTP: &str = "192.0.2.10:40000";
const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.50\r\ns=-\r\nc=IN IP4 192.0.2.50\r\nt=0 0\r\nm=audio 30000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=ptime:20\r\na=sendrecv\r\n";

/// Calls a second, as in the churn (`benches/churn.sh`).
const RATE: u64 = 250;
/// How long each call lasts.
const HOLD: Duration = Duration::from_secs(1);
/// The endpoint's timers are run this often (the fan-out's every 10 ms tick).
const SIP_TIMER_STEP: Duration = Duration::from_millis(100);
const TICK: Duration = Duration::from_millis(10);

/// Where each call's INVITE comes from.
#[derive(Debug, Clone, Copy)]
enum Sources {
    /// One PBX.
    OnePbx,
    /// Every call from a different address (a large trunk fleet, or a spoofing flood).
    EveryCallNew,
}

/// A call waiting for its BYE.
struct Held {
    hang_up_at: Instant,
    call_id: String,
    to_tag: String,
    peer: SocketAddr,
}

/// The pure cores of a server, driven as the shells drive them.
struct Churn {
    endpoint: Endpoint,
    fanout: Fanout<Silence>,
    admission: Admission,
    channel: Arc<Silence>,
    now: Instant,
    next_sip_timers: Instant,
    next_admission: Instant,
    packets_sent: u64,
    buf: Vec<u8>,
    held: VecDeque<Held>,
    /// The last 200 OK's To tag, by the INVITE's Call-ID.
    answered: Option<(String, String)>,
    calls_placed: u64,
    calls_started: u64,
    calls_ended: u64,
}

impl Churn {
    fn new() -> Churn {
        Churn::with(EndpointConfig::default())
    }

    fn with(config: EndpointConfig) -> Churn {
        let now = Instant::now();
        let dialplan = Config::embedded_default().dialplan;
        Churn {
            endpoint: Endpoint::new(config, dialplan, 18),
            fanout: Fanout::new(MediaClock::new(now), 18, SystemTime::UNIX_EPOCH),
            admission: Admission::new(0.7, 1),
            channel: Arc::new(Silence),
            now,
            next_sip_timers: now,
            next_admission: now,
            packets_sent: 0,
            buf: vec![0; MIN_BUFFER.max(1500)],
            held: VecDeque::new(),
            answered: None,
            calls_placed: 0,
            calls_started: 0,
            calls_ended: 0,
        }
    }

    fn peer(&self, sources: Sources) -> SocketAddr {
        let ip = match sources {
            Sources::OnePbx => Ipv4Addr::new(192, 0, 2, 50),
            Sources::EveryCallNew => Ipv4Addr::from(0x0a00_0000 + self.calls_placed as u32),
        };
        SocketAddr::new(IpAddr::V4(ip), 5070)
    }

    fn receive(&mut self, peer: SocketAddr, text: &str) {
        let local: SocketAddr = LOCAL.parse().expect("address");
        self.endpoint
            .handle_receive(self.now, peer, local, text.as_bytes());
        self.drain_endpoint();
    }

    /// The shells' half: answer every call, hand started calls to the fan-out, free ended
    /// ones; note the To tag of each 200 OK to the INVITE for the ACK and BYE.
    fn drain_endpoint(&mut self) {
        while let Some(out) = self.endpoint.poll_output() {
            match out {
                Output::Transmit(t) => {
                    if let Ok(Message::Response(r)) = msg::parse(&t.data)
                        && r.code == 200
                        && r.cseq().is_some_and(|(_, m)| m.as_str() == "INVITE")
                        && let (Some(tag), Some(call_id)) = (
                            r.to().and_then(|to| to.tag().map(str::to_owned)),
                            r.call_id(),
                        )
                    {
                        self.answered = Some((call_id.to_owned(), tag));
                    }
                }
                Output::Event(Event::IncomingCall { call, .. }) => {
                    let rtp = LOCAL_RTP.parse().expect("address");
                    self.endpoint.accept(self.now, call, rtp);
                }
                Output::Event(Event::CallStarted { call, media, .. }) => {
                    self.calls_started += 1;
                    self.fanout.add_call(
                        self.now,
                        CallMedia {
                            call: call.0,
                            params: media,
                            channel: Arc::clone(&self.channel),
                            playback: Playback::Shared,
                            cname: format!("mohd-{}", call.0),
                            ssrc: None,
                        },
                    );
                }
                Output::Event(Event::CallUpdated { .. }) => {}
                Output::Event(Event::CallEnded { call, .. }) => {
                    self.calls_ended += 1;
                    let _ = self.fanout.remove_call(call.0);
                }
            }
        }
    }

    fn place_call(&mut self, sources: Sources) {
        let n = self.calls_placed;
        let peer = self.peer(sources);
        self.calls_placed += 1;
        let call_id = format!("churn-{n}@pbx");
        let invite = format!(
            "INVITE sip:moh@192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP {peer};branch=z9hG4bKinv{n};rport\r\nMax-Forwards: 70\r\nFrom: <sip:pbx@{peer}>;tag=pbx{n}\r\nTo: <sip:moh@192.0.2.10>\r\nCall-ID: {call_id}\r\nCSeq: 10 INVITE\r\nContact: <sip:pbx@{peer}>\r\nContent-Type: application/sdp\r\nContent-Length: {len}\r\n\r\n{OFFER}",
            len = OFFER.len()
        );
        self.receive(peer, &invite);
        let Some((answered, to_tag)) = self.answered.take() else {
            panic!("call {n} was not answered at once");
        };
        assert_eq!(answered, call_id);
        let ack = self.in_dialog("ACK", 10, &format!("ack{n}"), peer, &call_id, &to_tag);
        self.receive(peer, &ack);
        self.held.push_back(Held {
            hang_up_at: self.now + HOLD,
            call_id,
            to_tag,
            peer,
        });
    }

    fn in_dialog(
        &self,
        method: &str,
        cseq: u32,
        branch: &str,
        peer: SocketAddr,
        call_id: &str,
        to_tag: &str,
    ) -> String {
        let from_tag = call_id
            .strip_prefix("churn-")
            .and_then(|s| s.strip_suffix("@pbx"))
            .unwrap_or_default();
        format!(
            "{method} sip:moh@192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP {peer};branch=z9hG4bK{branch};rport\r\nMax-Forwards: 70\r\nFrom: <sip:pbx@{peer}>;tag=pbx{from_tag}\r\nTo: <sip:moh@192.0.2.10>;tag={to_tag}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
        )
    }

    fn hang_up_due(&mut self) {
        while self.held.front().is_some_and(|h| h.hang_up_at <= self.now) {
            let Some(h) = self.held.pop_front() else {
                break;
            };
            let bye = self.in_dialog(
                "BYE",
                11,
                &format!("bye{}", h.call_id),
                h.peer,
                &h.call_id,
                &h.to_tag,
            );
            self.receive(h.peer, &bye);
        }
    }

    /// One 10 ms tick: the media thread's packets, the SIP task's timers now and then, the
    /// admission model's reading once a second.
    fn tick(&mut self) {
        self.now += TICK;
        self.hang_up_due();
        if self.now >= self.next_sip_timers {
            self.endpoint.handle_timeout(self.now);
            self.drain_endpoint();
            self.next_sip_timers = self.now + SIP_TIMER_STEP;
        }
        self.fanout.handle_timeout(self.now);
        while let Some(t) = self.fanout.poll_transmit(self.now, &mut self.buf) {
            assert!(t.len > 0);
            self.packets_sent += 1;
        }
        if self.now >= self.next_admission {
            self.admission.observe(Sample {
                at: self.now,
                busy_ns: self.packets_sent * 3_000,
                packets_sent: self.packets_sent,
                packets_late: 0,
                active_calls: self.fanout.call_count() as u64,
                threads: 1,
                machine: None,
            });
            self.next_admission = self.now + Duration::from_secs(1);
        }
    }

    /// `calls` calls at `RATE` a second, each held for `HOLD`.
    fn churn(&mut self, calls: u64, sources: Sources) {
        let start = self.now;
        let target = self.calls_placed + calls;
        while self.calls_placed < target {
            self.tick();
            let due = ((self.now - start).as_millis() as u64 * RATE / 1000).min(calls);
            while self.calls_placed < target - calls + due {
                self.place_call(sources);
            }
        }
    }

    /// `calls` calls all at once, held until every one is set up.
    fn burst(&mut self, calls: u64) {
        for _ in 0..calls {
            self.place_call(Sources::OnePbx);
        }
        for h in &mut self.held {
            h.hang_up_at = self.now;
        }
    }

    /// No new calls: the held ones end, the transactions' timers run out.
    fn settle(&mut self) {
        let until = self.now + HOLD + Duration::from_secs(40);
        while self.now < until {
            self.tick();
        }
        assert_eq!(self.endpoint.active_calls(), 0);
        assert_eq!(self.endpoint.open_transactions(), 0);
        assert_eq!(self.fanout.call_count(), 0);
        assert_eq!(self.calls_started, self.calls_placed);
        assert_eq!(self.calls_ended, self.calls_placed);
    }
}

fn kib(bytes: i64) -> f64 {
    bytes as f64 / 1024.0
}

#[test]
fn after_many_calls_nothing_per_call_is_left() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut churn = Churn::new();
    churn.churn(1_000, Sources::OnePbx);
    churn.settle();
    let after_first = live();
    churn.churn(4_000, Sources::OnePbx);
    churn.settle();
    let after_more = live();
    eprintln!(
        "after 1,000 calls: {:.1} KiB in {} blocks; after 5,000: {:.1} KiB in {} blocks",
        kib(after_first.bytes),
        after_first.blocks,
        kib(after_more.bytes),
        after_more.blocks
    );
    assert!(
        churn.packets_sent > churn.calls_placed * 40,
        "the calls streamed"
    );
    // 4,000 more calls: a retained byte per call would show as 4 KB.
    assert!(
        after_more.bytes - after_first.bytes < 1024,
        "{} bytes more after 4,000 more calls",
        after_more.bytes - after_first.bytes
    );
    assert!(after_more.blocks - after_first.blocks < 16);
}

#[test]
fn a_burst_of_calls_gives_its_memory_back() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // One PBX's burst, beyond its per-source rate: an admin's load test, a trunk failing over.
    let mut config = EndpointConfig::default();
    config.access.rate_per_source = 0;
    let mut churn = Churn::with(config);
    churn.churn(500, Sources::OnePbx);
    churn.settle();
    let before = live();
    churn.burst(4_000);
    let during = live();
    churn.settle();
    let after = live();
    eprintln!(
        "before a burst of 4,000 calls: {:.1} KiB; with them: {:.1} KiB; after: {:.1} KiB",
        kib(before.bytes),
        kib(during.bytes),
        kib(after.bytes)
    );
    let held = during.bytes - before.bytes;
    assert!(held > 4_000 * 1_000, "the burst was held ({held} bytes)");
    assert!(
        after.bytes - before.bytes < held / 40,
        "{} of the burst's {held} bytes kept after it ended",
        after.bytes - before.bytes
    );
}

#[test]
fn calls_from_ever_new_addresses_leave_a_bounded_trace() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut churn = Churn::new();
    churn.churn(500, Sources::OnePbx);
    churn.settle();
    let before = live();
    churn.churn(10_000, Sources::EveryCallNew);
    churn.settle();
    let after = live();
    eprintln!(
        "before 10,000 calls from as many addresses: {:.1} KiB; after: {:.1} KiB",
        kib(before.bytes),
        kib(after.bytes)
    );
    assert!(
        after.bytes - before.bytes < 64 * 1024,
        "{} bytes kept for 10,000 past sources",
        after.bytes - before.bytes
    );
}
