//! The negotiated payload type end to end, over real loopback sockets. PCMU offered on the
//! dynamic payload type 98 is answered with 98 and streamed as 98 (RFC 3264 §6.1: the answer,
//! and so the stream, uses the offer's number), carrying the same μ-law a PT 0 caller hears;
//! a re-INVITE that moves it to 97 keeps the stream's sequence numbers and timestamps.

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::*;
use mohd::codec::Codec;
use mohd::rtp::packet::parse_rtp;

/// One RTP packet as received.
struct Received {
    seq: u16,
    ts: u32,
    pt: u8,
    payload: Vec<u8>,
}

/// An offer of PCMU on the dynamic payload type `pt` (with telephone-event), SDP version
/// `version`, to RTP port `port`.
fn dynamic_offer(pt: u8, version: u32, port: u16) -> String {
    format!(
        "v=0\r\no=- 1 {version} IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP {pt} 101\r\na=rtpmap:{pt} PCMU/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
    )
}

fn received(datagram: &[u8]) -> Option<Received> {
    let p = parse_rtp(datagram).ok()?;
    Some(Received {
        seq: p.header.seq.get(),
        ts: p.header.timestamp.get(),
        pt: p.header.payload_type,
        payload: p.payload.to_vec(),
    })
}

/// The RTP packets arriving on `sock` during `window` (they wait in its buffer meanwhile).
fn receive(sock: &UdpSocket, window: Duration) -> Vec<Received> {
    std::thread::sleep(window);
    queued(sock)
}

/// Everything already queued on `sock`, without waiting.
fn queued(sock: &UdpSocket) -> Vec<Received> {
    sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 2048];
    let mut out = Vec::new();
    while let Ok((n, _)) = sock.recv_from(&mut buf) {
        out.extend(received(&buf[..n]));
    }
    sock.set_nonblocking(false).unwrap();
    out
}

fn rms_of_mulaw(packets: &[Received]) -> f64 {
    let mut pcm = vec![0i16; 160];
    let (mut sum, mut n) = (0.0, 0usize);
    for p in packets {
        pcm.resize(p.payload.len(), 0);
        Codec::Pcmu.decode(&p.payload, &mut pcm);
        sum += pcm.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>();
        n += pcm.len();
    }
    (sum / n.max(1) as f64).sqrt()
}

#[test]
fn pcmu_on_dynamic_pt_98_is_answered_and_streamed_as_98() {
    let server = Server::start(&[]);
    let mut plain = RawCall::start(server.sip, "");
    let mut dynamic = RawCall::start_with_offer(server.sip, "", |port| dynamic_offer(98, 1, port));
    assert!(
        dynamic
            .ok
            .contains(" RTP/AVP 98 101\r\na=rtpmap:98 PCMU/8000\r\n"),
        "the answer keeps the offer's number: {}",
        dynamic.ok
    );
    let (plain_rtp, dynamic_rtp) = (plain.rtp.take().unwrap(), dynamic.rtp.take().unwrap());
    // The same second of both streams: both sockets queue while we wait.
    queued(&plain_rtp);
    queued(&dynamic_rtp);
    std::thread::sleep(Duration::from_secs(1));
    let (on_0, on_98) = (queued(&plain_rtp), queued(&dynamic_rtp));
    assert!(on_98.len() >= 40, "RTP flows: {} packets", on_98.len());
    assert!(
        on_98.iter().all(|p| p.pt == 98),
        "payload types {:?}",
        on_98.iter().map(|p| p.pt).collect::<Vec<_>>()
    );
    assert!(on_0.iter().all(|p| p.pt == 0));
    let rms = rms_of_mulaw(&on_98);
    assert!(rms > 300.0, "the caller hears (near) silence: RMS {rms:.0}");
    // Both calls are on one channel and one clock: the PT 98 packets carry the very μ-law
    // bytes the PT 0 caller gets.
    let same = on_98
        .iter()
        .filter(|p| on_0.iter().any(|q| q.payload == p.payload))
        .count();
    assert!(
        same * 10 >= on_98.len() * 8,
        "{same} of {} PT 98 payloads match the PT 0 stream",
        on_98.len()
    );
}

#[test]
fn reinvite_to_pt_97_keeps_sequence_and_timestamps() {
    let server = Server::start(&[]);
    let mut call = RawCall::start_with_offer(server.sip, "", |port| dynamic_offer(98, 1, port));
    let rtp = call.rtp.take().unwrap();
    let port = rtp.local_addr().unwrap().port();
    queued(&rtp);
    let mut packets = receive(&rtp, Duration::from_millis(500));
    let r = call
        .request("INVITE", &dynamic_offer(97, 2, port), "")
        .unwrap();
    assert!(
        r.starts_with("SIP/2.0 200") && r.contains(" RTP/AVP 97 101\r\na=rtpmap:97 PCMU/8000\r\n"),
        "{r}"
    );
    // Packets sent while the re-INVITE was answered wait in the socket: nothing is missed.
    packets.extend(receive(&rtp, Duration::from_millis(500)));
    let switch = packets
        .iter()
        .position(|p| p.pt == 97)
        .expect("RTP moves to PT 97");
    assert!(switch >= 10, "PT 98 before the re-INVITE: {switch} packets");
    assert!(packets[..switch].iter().all(|p| p.pt == 98));
    assert!(packets[switch..].iter().all(|p| p.pt == 97));
    assert!(packets.len() - switch >= 10);
    for w in packets.windows(2) {
        assert_eq!(w[1].seq, w[0].seq.wrapping_add(1), "sequence gap");
    }
    let (a, b) = (&packets[switch - 1], &packets[switch]);
    assert_eq!(
        b.ts.wrapping_sub(a.ts),
        160,
        "the timestamp runs on across the change"
    );
    let rms = rms_of_mulaw(&packets[switch..]);
    assert!(rms > 300.0, "still music after the change: RMS {rms:.0}");
}
