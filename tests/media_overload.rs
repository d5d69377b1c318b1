//! A media thread given far more calls than it can serve: it skips ahead instead of falling
//! ever further behind (frames skipped and counted, no backlog), rests by the rule rather
//! than working without end (forced rests counted), keeps answering commands, and stops at
//! once when told, whatever it holds.

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mohd::channel::{ChannelRender, MusicSource};
use mohd::clock::MediaClock;
use mohd::codec::Codec;
use mohd::rtp::fanout::{CallMedia, Playback};
use mohd::rtp::shell::{self, CallInfo, MediaCommand, MediaOptions};
use mohd::sip::sdp::{Direction, MediaParams};

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

#[test]
fn an_overloaded_media_thread_skips_ahead_rests_and_stops_at_once() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let options = MediaOptions {
        realtime: false,
        threads: 1,
        ..MediaOptions::default()
    };
    let media = shell::spawn(MediaClock::new(Instant::now()), 4, options, None).unwrap();
    let stats = Arc::clone(&media.stats);
    let render = Arc::new(ChannelRender::render(
        "default",
        &MusicSource::Files(Vec::new()),
        -16.0,
    ));
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    // 12,000 calls at 10 ms: 1.2 million packets a second for one thread. The kernel's own
    // cost of a UDP send (1–3 µs here) puts that beyond any core, however cheap the fan-out
    // gets: 3,000 calls were enough until the fan-out's per-packet work fell to ~50 ns, after
    // which one thread nearly kept up and never fell three frames behind.
    let mut calls = 0u64;
    for call in 0..12_000u64 {
        let Ok(rtp) = UdpSocket::bind("127.0.0.1:0") else {
            break;
        };
        rtp.set_nonblocking(true).unwrap();
        media.send(MediaCommand::Add {
            media: CallMedia {
                call,
                params: MediaParams {
                    codec: Codec::Pcmu,
                    payload_type: 0,
                    ptime_ms: 10,
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
            },
            rtp,
            rtcp: None,
            info: CallInfo {
                peer: "192.0.2.9:5060".parse().unwrap(),
                channel: "default".into(),
                started: Instant::now(),
            },
        });
        calls += 1;
    }
    assert!(calls >= 1000, "only {calls} sockets");
    assert!(
        wait_until(Duration::from_secs(30), || {
            stats.forced_rests.load(Ordering::Relaxed) >= 3
                && stats.frames_skipped.load(Ordering::Relaxed) > calls
        }),
        "forced rests {}, frames skipped {}",
        stats.forced_rests.load(Ordering::Relaxed),
        stats.frames_skipped.load(Ordering::Relaxed)
    );
    // Commands still get through: every call is in, and one can end.
    assert!(wait_until(Duration::from_secs(20), || stats
        .active_calls
        .load(Ordering::Relaxed)
        == calls));
    // No backlog: a packet goes out at most a few frames after its deadline, or is skipped;
    // what is sent keeps flowing.
    let sent = stats.packets_sent.load(Ordering::Relaxed);
    assert!(wait_until(Duration::from_secs(10), || stats
        .packets_sent
        .load(Ordering::Relaxed)
        > sent + calls));
    media.send(MediaCommand::Remove {
        call: 0,
        reason: "test".into(),
    });
    assert!(wait_until(Duration::from_secs(10), || stats
        .active_calls
        .load(Ordering::Relaxed)
        == calls - 1));
    let started = Instant::now();
    media.shutdown();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "shutdown with {calls} calls took {took:?}"
    );
}
