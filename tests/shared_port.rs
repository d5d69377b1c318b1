//! `[rtp] port_model = "shared"` over real sockets on 127.0.0.1: every call of a media thread
//! is answered with that thread's one RTP/RTCP port pair, and still hears its own channel,
//! unbroken; what the peers send back reaches the right call (told apart by source address,
//! then learned SSRC, a NAT's rewritten port latched only when unambiguous); a peer that
//! vanishes (ICMP port unreachable) ends its own call and no other, and every call that sends
//! to a port that closes ends; SRTP works there too.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use mohd::channel::{ChannelRender, MusicSource};
use mohd::config::Config;

/// One media thread (so that every call shares one port), G.711 only, the shared model, and
/// `extra` lines in `[calls]`.
fn shared_config(dir: &Path, channels: &str, calls: &str) -> Config {
    let mut config = Config::from_str(
        &format!(
            "[sip]\nlisten = [\"udp:127.0.0.1:0\"]\n\
             [rtp]\ncodecs = [\"pcmu\", \"pcma\"]\nmedia_threads = 1\nport_model = \"shared\"\n\
             [calls]\n{calls}\n{channels}"
        ),
        &dir.join("mohd.toml"),
    )
    .expect("config");
    config.web.listen = None;
    config
}

fn demo_server(dir: &Path, calls: &str) -> Server {
    Server::with_config(shared_config(
        dir,
        "[channels.default]\nmusic = \"demo\"\n[dialplan]\ndefault = \"default\"\n",
        calls,
    ))
}

/// The RTP address mohd's answer names.
fn answered_rtp(ok: &str) -> SocketAddr {
    let port = ok
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|m| m.split(' ').next())
        .and_then(|p| p.parse::<u16>().ok())
        .expect("m=audio in the answer");
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A minimal RTP packet (PCMU, 20 ms of silence) with `ssrc`.
fn rtp_packet(seq: u16, ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&[0xff; 160]);
    p
}

/// An empty RTCP receiver report from `ssrc`.
fn rtcp_rr(ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, 201, 0, 1];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p
}

/// How well what a caller heard matches `reference`: the best of three 250 ms chunks (a
/// thread that skipped ahead on a loaded test machine breaks one chunk, not the stream).
fn match_with(audio: &[i16], reference: &[i16]) -> f64 {
    [8000, 16_000, 24_000]
        .iter()
        .filter_map(|&at| audio.get(at..at + 2000))
        .map(|chunk| best_circular_correlation(chunk, reference).0)
        .fold(f64::MIN, f64::max)
}

/// Whether `socket` receives RTP within a second (after draining what is queued).
fn hears_rtp(socket: &UdpSocket) -> bool {
    let mut buf = [0u8; 2048];
    socket.set_nonblocking(true).unwrap();
    while socket.recv_from(&mut buf).is_ok() {}
    socket.set_nonblocking(false).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(1000)))
        .unwrap();
    socket
        .recv_from(&mut buf)
        .is_ok_and(|(n, _)| n >= 12 && buf[1] & 0x7f == 0)
}

/// Four callers on two channels, all answered with the one port of the one media thread:
/// each hears its own channel (the decoded audio correlates with that channel's render and
/// not with the other's), every packet in sequence (nothing lost, nothing twice) and the
/// RTCP sender reports from the shared RTCP port.
#[test]
fn calls_on_one_shared_port_each_hear_their_own_channel_unbroken() {
    let dir = tempfile::tempdir().unwrap();
    let (tone, melody) = (dir.path().join("tone.wav"), dir.path().join("melody.wav"));
    write_tone(&tone, 1500.0, 2.0);
    write_test_music(&melody, 2.0, 44_100);
    let server = Server::with_config(shared_config(
        dir.path(),
        &format!(
            "[channels.tone]\nmusic = {tone:?}\n[channels.melody]\nmusic = {melody:?}\n\
             [[dialplan.route]]\nuser = \"tone\"\nchannel = \"tone\"\n\
             [dialplan]\ndefault = \"melody\"\n"
        ),
        "",
    ));
    let calls: Vec<_> = ["tone", "melody", "tone", "melody"]
        .iter()
        .enumerate()
        .map(|(n, channel)| {
            let uri = server.uri(channel);
            let record = dir.path().join(format!("heard{n}.wav"));
            std::thread::spawn(move || {
                let report = mohd_call(
                    &uri,
                    &["--seconds", "5", "--record", record.to_str().unwrap()],
                );
                (report, read_wav_mono(&record))
            })
        })
        .collect();
    let heard: Vec<_> = calls.into_iter().map(|c| c.join().unwrap()).collect();
    let renders = [&tone, &melody]
        .map(|m| ChannelRender::render("x", &MusicSource::Files(vec![m.clone()]), -18.0));
    let port = &heard[0].0["remote_rtp"];
    for (n, (report, audio)) in heard.iter().enumerate() {
        assert_eq!(&report["remote_rtp"], port, "one port for all: {report}");
        let stats = &report["stats"];
        assert!(stats["packets"].as_u64().unwrap() >= 200, "{report}");
        assert_eq!(stats["lost"], 0, "call {n}: {report}");
        assert_eq!(stats["duplicated"], 0, "call {n}: {report}");
        assert!(report["rtcp_received"].as_u64().unwrap() >= 1, "{report}");
        let (own, other) = (&renders[n % 2].pcm, &renders[1 - n % 2].pcm);
        let (corr_own, corr_other) = (match_with(audio, own), match_with(audio, other));
        assert!(
            corr_own > 0.95 && corr_other < 0.5,
            "call {n} heard its channel at {corr_own:.3}, the other at {corr_other:.3}"
        );
    }
}

/// Three callers behind one address (as behind one NAT), told apart by their source ports,
/// with RTP inactivity detection on: the one that sends RTP and the one that sends only RTCP
/// (to the shared RTCP port, from the RTCP port its SDP named) keep their calls; the silent
/// one is hung up.
#[test]
fn peers_on_one_address_are_heard_by_their_source_ports_rtcp_included() {
    let dir = tempfile::tempdir().unwrap();
    let server = demo_server(dir.path(), "rtp_timeout_s = 2");
    let sends_rtp = RawCall::start(server.sip, "");
    let rtcp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rtcp_port = rtcp.local_addr().unwrap().port();
    let sends_rtcp = RawCall::start_with_offer(server.sip, "", |rp| {
        format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio {rp} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=rtcp:{rtcp_port}\r\n"
        )
    });
    let silent = RawCall::start(server.sip, "");
    let ours = answered_rtp(&sends_rtp.ok);
    for call in [&sends_rtcp, &silent] {
        assert_eq!(answered_rtp(&call.ok), ours, "one shared port");
    }
    let ours_rtcp = SocketAddr::new(ours.ip(), ours.port() + 1);
    let until = Instant::now() + Duration::from_secs(5);
    let mut seq = 0u16;
    while Instant::now() < until {
        let rtp = sends_rtp.rtp.as_ref().unwrap();
        rtp.send_to(&rtp_packet(seq, 0x1111), ours).unwrap();
        rtcp.send_to(&rtcp_rr(0x2222), ours_rtcp).unwrap();
        seq = seq.wrapping_add(1);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        silent.wait_bye(Duration::from_secs(3)).is_some(),
        "the silent peer is hung up"
    );
    for (name, call) in [("RTP", &sends_rtp), ("RTCP", &sends_rtcp)] {
        assert!(
            call.wait_bye(Duration::from_millis(500)).is_none(),
            "the peer sending {name} was hung up"
        );
        assert!(
            call.rtp_flows(),
            "the peer sending {name} still hears music"
        );
    }
}

/// A NAT in front of the one peer not heard from yet rewrote its port: its RTP, from another
/// port of the address its SDP named, is latched (the music follows it there). Two such
/// peers at once are ambiguous: neither is followed, each keeps hearing at its SDP address.
#[test]
fn a_rewritten_port_is_latched_only_when_one_call_could_be_its() {
    let dir = tempfile::tempdir().unwrap();
    let server = demo_server(dir.path(), "");
    // `sdp` is where the SDP says the phone is; `nat` is where its packets come from.
    let behind_nat = || {
        let (sdp, nat) = (
            UdpSocket::bind("127.0.0.1:0").unwrap(),
            UdpSocket::bind("127.0.0.1:0").unwrap(),
        );
        let port = sdp.local_addr().unwrap().port();
        let call = RawCall::start_with_offer(server.sip, "", |_| RawCall::offer(port, "sendrecv"));
        (call, sdp, nat)
    };
    let (one, one_sdp, one_nat) = behind_nat();
    let ours = answered_rtp(&one.ok);
    assert!(hears_rtp(&one_sdp), "music goes to the SDP's address first");
    for seq in 0..5 {
        one_nat.send_to(&rtp_packet(seq, 0x3333), ours).unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(3), || hears_rtp(&one_nat)),
        "the music follows the rewritten port"
    );

    let (_two, two_sdp, two_nat) = behind_nat();
    let (_three, three_sdp, three_nat) = behind_nat();
    for seq in 0..10 {
        two_nat.send_to(&rtp_packet(seq, 0x4444), ours).unwrap();
        three_nat.send_to(&rtp_packet(seq, 0x5555), ours).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    for (n, sdp, nat) in [(2, &two_sdp, &two_nat), (3, &three_sdp, &three_nat)] {
        assert!(hears_rtp(sdp), "call {n} still hears at its SDP address");
        assert!(!hears_rtp(nat), "call {n} was re-targeted on a guess");
    }
    assert!(hears_rtp(&one_nat), "the latched call stays latched");
}

/// Of three callers on one shared port, one vanishes (its RTP port closes: ICMP port
/// unreachable, reported on the shared socket with the refused destination): that call is
/// hung up, the others are not and keep hearing music.
#[test]
fn a_vanished_peer_ends_its_own_call_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = demo_server(dir.path(), "unreachable_timeout_s = 2");
    let mut calls: Vec<RawCall> = (0..3).map(|_| RawCall::start(server.sip, "")).collect();
    let ours = answered_rtp(&calls[0].ok);
    assert!(calls.iter().all(|c| answered_rtp(&c.ok) == ours));
    assert!(calls.iter().all(RawCall::rtp_flows), "music flows at first");
    calls[1].rtp = None;
    let took = calls[1]
        .wait_bye(Duration::from_secs(10))
        .expect("BYE after ICMP unreachable");
    assert!(
        took >= Duration::from_secs(1),
        "not before its time: {took:?}"
    );
    for n in [0, 2] {
        assert!(
            calls[n].wait_bye(Duration::from_millis(500)).is_none(),
            "call {n} was hung up with the vanished one"
        );
        assert!(calls[n].rtp_flows(), "call {n} still hears music");
    }
}

/// Three calls whose PBX side names one RTP port (a PBX or SBC that reuses it) and a fourth
/// elsewhere: when that port closes, the ICMP errors name only its address, and all three
/// calls sending there end (not just the newest, which owns the address inbound); the fourth
/// plays on.
#[test]
fn a_vanished_peer_port_ends_every_call_sending_there() {
    let dir = tempfile::tempdir().unwrap();
    let server = demo_server(dir.path(), "unreachable_timeout_s = 2");
    let reused = UdpSocket::bind("127.0.0.1:0").unwrap();
    let reused_port = reused.local_addr().unwrap().port();
    let offer = move |_own: u16| {
        format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {reused_port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
        )
    };
    let sharing: Vec<RawCall> = (0..3)
        .map(|_| RawCall::start_with_offer(server.sip, "", offer))
        .collect();
    let other = RawCall::start(server.sip, "");
    assert!(
        hears_rtp(&reused),
        "music flows to the reused port at first"
    );
    assert!(other.rtp_flows());
    drop(reused);
    for (n, call) in sharing.iter().enumerate() {
        let took = call
            .wait_bye(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("call {n} to the closed port got no BYE"));
        assert!(
            n > 0 || took >= Duration::from_secs(1),
            "not before its time: {took:?}"
        );
    }
    assert!(
        other.wait_bye(Duration::from_millis(500)).is_none(),
        "the call elsewhere was hung up too"
    );
    assert!(other.rtp_flows(), "the call elsewhere still hears music");
}

/// Two SRTP callers on the one shared port: each authenticates and decrypts every packet and
/// RTCP compound, loses none, and hears the channel's render.
#[test]
fn srtp_calls_on_a_shared_port_authenticate_and_decrypt() {
    let dir = tempfile::tempdir().unwrap();
    let music = dir.path().join("music.wav");
    write_test_music(&music, 2.0, 44_100);
    let mut config = shared_config(
        dir.path(),
        &format!("[channels.default]\nmusic = {music:?}\n[dialplan]\ndefault = \"default\"\n"),
        "",
    );
    config.rtp.srtp_over_plain_transports = true;
    let server = Server::with_config(config);
    let calls: Vec<_> = (0..2)
        .map(|n| {
            let uri = server.uri("moh");
            let record = dir.path().join(format!("srtp{n}.wav"));
            std::thread::spawn(move || {
                let report = mohd_call(
                    &uri,
                    &[
                        "--srtp",
                        "--seconds",
                        "5",
                        "--record",
                        record.to_str().unwrap(),
                    ],
                );
                (report, read_wav_mono(&record))
            })
        })
        .collect();
    let heard: Vec<_> = calls.into_iter().map(|c| c.join().unwrap()).collect();
    let render = ChannelRender::render("default", &MusicSource::Files(vec![music]), -18.0);
    assert_eq!(heard[0].0["remote_rtp"], heard[1].0["remote_rtp"]);
    for (report, audio) in &heard {
        let srtp = &report["srtp"];
        for rejected in [
            "rtp_auth_failures",
            "rtp_replays",
            "rtp_malformed",
            "rtcp_rejected",
        ] {
            assert_eq!(srtp[rejected], 0, "{rejected}: {report}");
        }
        assert_eq!(report["stats"]["lost"], 0, "{report}");
        assert!(report["rtcp_received"].as_u64().unwrap() >= 1, "{report}");
        let corr = match_with(audio, &render.pcm);
        assert!(corr > 0.95, "the decrypted audio is not the render: {corr}");
    }
}
