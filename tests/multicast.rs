//! Multicast music on hold as a phone that joins the group hears it: with nobody calling, a
//! receiver joined to the group on this machine gets each codec's stream (Cisco-style layout,
//! port +2 per codec) with a stable SSRC, continuous sequence numbers and timestamps, audio
//! that matches the channel's render, DSCP EF, and RTCP sender reports on the port above. The
//! streams are no callers: the call count stays 0.
//!
//! No packet leaves the machine: the streams go out of the loopback interface
//! (`interface = "127.0.0.1"`) with TTL 0, which the kernel delivers to local members only
//! (multicast loopback) and never transmits. Group and port are drawn at random so that test
//! runs side by side on one machine do not hear each other.

mod common;

use std::net::{Ipv4Addr, UdpSocket};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::tos::{self, receive};
use common::*;
use mohd::channel::{ChannelRender, MusicSource};
use mohd::codec::Codec;
use mohd::config::Config;
use mohd::rtp::multicast::stable_ssrc;
use mohd::rtp::packet::{RtcpPacket, parse_rtcp, parse_rtp};
use mohd::web::backend::Backend;

/// A member of `group` on the loopback interface, listening on `port`.
fn join(group: Ipv4Addr, port: u16) -> UdpSocket {
    let s = UdpSocket::bind((group, port)).expect("bind the group's port");
    s.join_multicast_v4(&group, &Ipv4Addr::LOCALHOST)
        .expect("join the group on lo");
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    tos::report_tos(&s);
    s
}

struct Heard {
    payload_type: u8,
    seq: u16,
    timestamp: u32,
    ssrc: u32,
    tos: Option<u8>,
    payload: Vec<u8>,
}

/// The next `n` RTP packets on `s` (panics if the stream stops for 2 s).
fn packets(s: &UdpSocket, n: usize) -> Vec<Heard> {
    let mut buf = [0u8; 2048];
    let mut out = Vec::with_capacity(n);
    let mut silent_since = Instant::now();
    while out.len() < n {
        let Some((len, tos)) = receive(s, &mut buf) else {
            assert!(
                silent_since.elapsed() < Duration::from_secs(2),
                "the stream stopped after {} packets",
                out.len()
            );
            continue;
        };
        silent_since = Instant::now();
        let p = parse_rtp(&buf[..len]).expect("an RTP packet");
        out.push(Heard {
            payload_type: p.header.payload_type,
            seq: p.header.seq.0,
            timestamp: p.header.timestamp.0,
            ssrc: p.header.ssrc,
            tos,
            payload: p.payload.to_vec(),
        });
    }
    out
}

/// Same source, no gap: every sequence number one up, every timestamp `per_packet` up.
fn assert_continuous(heard: &[Heard], ssrc: u32, payload_type: u8, per_packet: u32) {
    for (i, w) in heard.windows(2).enumerate() {
        assert_eq!(
            w[1].seq,
            w[0].seq.wrapping_add(1),
            "sequence gap at packet {i}"
        );
        assert_eq!(
            w[1].timestamp,
            w[0].timestamp.wrapping_add(per_packet),
            "timestamp jump at packet {i}"
        );
    }
    for h in heard {
        assert_eq!(h.ssrc, ssrc, "not the stream's stable SSRC");
        assert_eq!(h.payload_type, payload_type);
        assert_eq!(h.tos, Some(0xB8), "not marked DSCP EF");
    }
}

#[test]
fn a_receiver_joined_to_the_group_hears_the_channel_without_any_call() {
    let dir = tempfile::tempdir().unwrap();
    let music = dir.path().join("music.wav");
    write_test_music(&music, 3.0, 44_100);
    let group = Ipv4Addr::new(239, 255, rand::random(), rand::random::<u8>().max(1));
    let port = 20_000 + 2 * rand::random_range(0..10_000u16);
    let toml = format!(
        "[rtp]\ncodecs = [\"pcmu\", \"pcma\"]\n\
         [channels.default]\nmusic = {music:?}\n\
         [channels.default.multicast]\naddress = \"{group}\"\nport = {port}\n\
         codecs = [\"pcmu\", \"pcma\"]\nttl = 0\ninterface = \"127.0.0.1\"\n\
         [dialplan]\ndefault = \"default\"\n"
    );
    let path = dir.path().join("mohd.toml");
    std::fs::write(&path, &toml).unwrap();
    let mut config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    config.apply_overrides(Some("127.0.0.1:0".parse().unwrap()), None);
    config.web.listen = None;
    // Joined before the server starts: the first packets are heard too.
    let pcmu = join(group, port);
    let pcmu_rtcp = join(group, port + 1);
    let pcma = join(group, port + 2);
    let server = Server::with_config(config);

    // PCMU at the base port: continuous, EF, the channel's audio.
    let heard = packets(&pcmu, 200);
    assert_continuous(&heard, stable_ssrc("default", Codec::Pcmu), 0, 160);
    let mut pcm = Vec::new();
    for h in &heard {
        let mut out = vec![0i16; h.payload.len()];
        Codec::Pcmu.decode(&h.payload, &mut out);
        pcm.extend(out);
    }
    let render = ChannelRender::render("default", &MusicSource::Files(vec![music]), -18.0);
    let chunk = &pcm[8000..8000 + 2000];
    let (corr, _) = best_circular_correlation(chunk, &render.pcm);
    assert!(
        corr > 0.95,
        "the stream does not play the render: correlation {corr}"
    );

    // PCMA two ports up, its own stable SSRC.
    let heard = packets(&pcma, 50);
    assert_continuous(&heard, stable_ssrc("default", Codec::Pcma), 8, 160);

    // Sender reports on the port above the RTP's (the first within about 2.5 s of the start).
    let mut buf = [0u8; 1500];
    let deadline = Instant::now() + Duration::from_secs(12);
    let report = loop {
        assert!(
            Instant::now() < deadline,
            "no RTCP sender report on port {}",
            port + 1
        );
        let Some((len, tos)) = receive(&pcmu_rtcp, &mut buf) else {
            continue;
        };
        let sr = parse_rtcp(&buf[..len]).find_map(|p| match p {
            Ok(RtcpPacket::SenderReport { sr, .. }) => Some(sr),
            _ => None,
        });
        if let Some(sr) = sr {
            assert_eq!(tos, Some(0xB8), "RTCP not marked DSCP EF");
            break sr;
        }
    };
    assert_eq!(report.ssrc, stable_ssrc("default", Codec::Pcmu));
    assert!(report.packet_count > 0, "{report:?}");

    // Streams, not callers: the status page lists no call, the metrics count none.
    let control = server.control();
    assert_eq!(
        control
            .media_stats
            .multicast_streams
            .load(Ordering::Relaxed),
        2
    );
    assert!(
        control.status().calls.is_empty(),
        "a stream listed as a call"
    );
    let metrics = control.metrics_text();
    assert!(metrics.contains("\nmohd_calls_active 0\n"), "{metrics}");
    assert!(
        metrics.contains("\nmohd_rtp_multicast_streams 2\n"),
        "{metrics}"
    );
}
