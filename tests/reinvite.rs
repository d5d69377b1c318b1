//! Mid-call changes over real loopback sockets, checked where the RTP lands: hold (sendonly,
//! inactive) pauses the stream, unhold resumes it, a new port re-targets it, and the RTP
//! sequence numbers continue across all of it. UPDATE does the same without a re-INVITE.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::*;
use mohd::rtp::packet::parse_rtp;

/// Packets (seq, payload type) arriving on `sock` during `window`.
fn collect(sock: &UdpSocket, window: Duration) -> Vec<(u16, u8)> {
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let end = Instant::now() + window;
    let mut buf = [0u8; 2048];
    let mut out = Vec::new();
    while Instant::now() < end {
        if let Ok((n, _)) = sock.recv_from(&mut buf)
            && let Ok(p) = parse_rtp(&buf[..n])
        {
            out.push((p.header.seq.get(), p.header.payload_type));
        }
    }
    out
}

fn drain(sock: &UdpSocket) {
    sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 2048];
    while sock.recv_from(&mut buf).is_ok() {}
    sock.set_nonblocking(false).unwrap();
}

fn assert_contiguous(seqs: &[(u16, u8)]) {
    for w in seqs.windows(2) {
        assert_eq!(w[1].0, w[0].0.wrapping_add(1), "sequence gap: {:?}", w);
    }
}

#[test]
fn hold_unhold_and_retarget_with_reinvite() {
    let server = Server::start(&[]);
    let mut call = RawCall::start(server.sip, "");
    let a = call.rtp.take().unwrap();
    let a_port = a.local_addr().unwrap().port();

    let before = collect(&a, Duration::from_millis(500));
    assert!(before.len() >= 20, "music flows: {}", before.len());
    assert_contiguous(&before);

    // Hold: the PBX goes sendonly; we answer inactive and stop sending.
    let r = call
        .request("INVITE", &RawCall::offer(a_port, "sendonly"), "")
        .unwrap();
    assert!(
        r.starts_with("SIP/2.0 200") && r.contains("a=inactive"),
        "{r}"
    );
    std::thread::sleep(Duration::from_millis(100));
    drain(&a);
    let held = collect(&a, Duration::from_millis(500));
    assert!(held.is_empty(), "no RTP while held: {} packets", held.len());

    // Unhold: sendrecv again; the stream resumes with the next sequence number.
    let r = call
        .request("INVITE", &RawCall::offer(a_port, "sendrecv"), "")
        .unwrap();
    assert!(
        r.starts_with("SIP/2.0 200") && r.contains("a=sendonly"),
        "{r}"
    );
    let resumed = collect(&a, Duration::from_millis(500));
    assert!(resumed.len() >= 20);
    assert_contiguous(&resumed);
    let last_before = before.last().unwrap().0;
    assert!(
        resumed[0].0.wrapping_sub(last_before) < 100,
        "sequence continues after hold ({last_before} -> {})",
        resumed[0].0
    );

    // Re-target to a new port: RTP moves there, sequence numbers continue without a gap.
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b_port = b.local_addr().unwrap().port();
    let r = call
        .request("INVITE", &RawCall::offer(b_port, "sendrecv"), "")
        .unwrap();
    assert!(r.starts_with("SIP/2.0 200"), "{r}");
    let on_b = collect(&b, Duration::from_millis(500));
    assert!(on_b.len() >= 20, "RTP moved to the new port");
    assert_contiguous(&on_b);
    let tail_a = collect(&a, Duration::from_millis(300));
    assert!(
        tail_a.len() <= 2,
        "RTP left the old port ({} packets)",
        tail_a.len()
    );
}

#[test]
fn update_changes_the_target_too() {
    let server = Server::start(&[]);
    let mut call = RawCall::start(server.sip, "");
    let a = call.rtp.take().unwrap();
    assert!(!collect(&a, Duration::from_millis(300)).is_empty());
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b_port = b.local_addr().unwrap().port();
    let r = call
        .request("UPDATE", &RawCall::offer(b_port, "sendrecv"), "")
        .unwrap();
    assert!(r.starts_with("SIP/2.0 200") && r.contains("m=audio"), "{r}");
    let on_b = collect(&b, Duration::from_millis(500));
    assert!(on_b.len() >= 20);
    assert_contiguous(&on_b);
}

#[test]
fn codec_change_switches_at_once() {
    let server = Server::start(&[]);
    let mut call = RawCall::start(server.sip, "");
    let a = call.rtp.take().unwrap();
    let port = a.local_addr().unwrap().port();
    assert!(
        collect(&a, Duration::from_millis(300))
            .iter()
            .all(|p| p.1 == 0)
    );
    let pcma = format!(
        "v=0\r\no=- 1 3 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"
    );
    let r = call.request("INVITE", &pcma, "").unwrap();
    assert!(
        r.starts_with("SIP/2.0 200") && r.contains("RTP/AVP 8"),
        "{r}"
    );
    std::thread::sleep(Duration::from_millis(60));
    drain(&a);
    let after = collect(&a, Duration::from_millis(300));
    assert!(
        !after.is_empty() && after.iter().all(|p| p.1 == 8),
        "{after:?}"
    );
    assert_contiguous(&after);
}
