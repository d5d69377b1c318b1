//! The media threads on real sockets, under a global counting allocator: once warm, the send
//! path of several threads (fan-out, socket or a shared port's `sendmmsg` batch, thread-local
//! counters flushed once per turn) allocates nothing per packet, in either port model. What remains is the call snapshot for the web page, made
//! once a second per thread (a `Vec` and a few strings per call), which is what the bound
//! below leaves room for: a per-packet allocation would be ten times over it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mohd::channel::{ChannelRender, MusicSource};
use mohd::clock::MediaClock;
use mohd::codec::Codec;
use mohd::rtp::fanout::{CallMedia, Playback};
use mohd::rtp::shell::{self, CallInfo, MediaCommand, MediaOptions};
use mohd::sip::sdp::{Direction, MediaParams};

/// Counts every allocation of the process (the media threads cannot be told to count).
struct CountingAlloc;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Both models in one test: the allocation counter is the whole process's, so they must not
/// run at the same time.
#[test]
fn media_threads_allocate_nothing_per_packet() {
    allocate_nothing_per_packet(false);
    allocate_nothing_per_packet(true);
}

fn allocate_nothing_per_packet(shared: bool) {
    let options = MediaOptions {
        realtime: false,
        threads: 2,
        ..MediaOptions::default()
    };
    let media = shell::spawn(MediaClock::new(Instant::now()), 3, options, None).unwrap();
    let render = Arc::new(ChannelRender::render(
        "default",
        &MusicSource::Files(Vec::new()),
        -16.0,
    ));
    // One sink for every call's RTP, never read: the kernel drops what overflows it, each
    // send still succeeds.
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let calls = 100u64;
    // Shared model: each thread's port pair, given when its first call is placed there.
    let sender = media.sender();
    let mut shared_ports: HashMap<usize, SocketAddr> = HashMap::new();
    for call in 0..calls {
        let codec = [Codec::Pcmu, Codec::Pcma, Codec::G722][call as usize % 3];
        let call_media = CallMedia {
            call,
            params: MediaParams {
                codec,
                payload_type: codec.payload_type(),
                ptime_ms: 20,
                remote_rtp: sink.local_addr().unwrap(),
                remote_rtcp: None,
                direction: Direction::SendOnly,
                peer_opus: None,
                srtp: None,
            },
            channel: Arc::clone(&render),
            playback: Playback::Shared,
            cname: format!("mohd-{call}@test"),
            ssrc: None,
        };
        let info = CallInfo {
            peer: "192.0.2.9:5060".parse().unwrap(),
            channel: "default".into(),
            started: Instant::now(),
        };
        if shared {
            let thread = sender.place(call);
            let local = *shared_ports.entry(thread).or_insert_with(|| {
                let (rtp, rtcp) = (
                    UdpSocket::bind("127.0.0.1:0").unwrap(),
                    UdpSocket::bind("127.0.0.1:0").unwrap(),
                );
                let local = rtp.local_addr().unwrap();
                sender.add_shared_port(thread, rtp, rtcp).unwrap();
                local
            });
            media.send(MediaCommand::AddShared {
                media: call_media,
                local,
                info,
            });
        } else {
            let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
            rtp.set_nonblocking(true).unwrap();
            media.send(MediaCommand::Add {
                media: call_media,
                rtp,
                rtcp: None,
                info,
            });
        }
    }
    // Warm: heaps grown, first snapshots and load windows done.
    std::thread::sleep(Duration::from_millis(2500));
    let stats = Arc::clone(&media.stats);
    assert_eq!(stats.active_calls.load(Ordering::Relaxed), calls);
    let packets_before = stats.packets_sent.load(Ordering::Relaxed);
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(2));
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    let packets = stats.packets_sent.load(Ordering::Relaxed) - packets_before;
    media.shutdown();
    assert!(
        packets > calls * 50,
        "{packets} packets in 2 s (shared: {shared})"
    );
    assert_eq!(
        stats.send_errors.load(Ordering::Relaxed),
        0,
        "shared: {shared}"
    );
    // The snapshots: ≤ 3 a second per thread, each a few allocations per call.
    let snapshot_budget = 2 * 3 * (4 * calls + 4);
    assert!(
        allocations <= snapshot_budget && allocations * 10 < packets,
        "{allocations} allocations over {packets} packets (shared: {shared})"
    );
    assert!(
        stats
            .threads()
            .iter()
            .all(|t| t.calls.load(Ordering::Relaxed) > 0),
        "both threads served calls"
    );
}
