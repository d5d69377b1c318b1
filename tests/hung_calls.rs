//! No hung calls, over real loopback sockets: a peer that vanishes without a BYE is hung up
//! (RTP inactivity, ICMP port unreachable, maximum call length, session timer), and RTP stops.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::*;

/// A bare-bones UAC: INVITE, ACK, then whatever the test does with its sockets.
struct RawCall {
    sip: UdpSocket,
    rtp: Option<UdpSocket>,
    server: SocketAddr,
}

impl RawCall {
    fn start(server: SocketAddr, extra_headers: &str) -> RawCall {
        let sip = UdpSocket::bind("127.0.0.1:0").unwrap();
        let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
        sip.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        rtp.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let (l, rp) = (sip.local_addr().unwrap(), rtp.local_addr().unwrap().port());
        let body = format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rp} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
        );
        let id = rand::random::<u32>();
        let invite = format!(
            "INVITE sip:moh@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bKi{id};rport\r\nMax-Forwards: 70\r\nFrom: <sip:t@{l}>;tag=f{id}\r\nTo: <sip:moh@{server}>\r\nCall-ID: {id}@t\r\nCSeq: 1 INVITE\r\nContact: <sip:t@{l}>\r\n{extra_headers}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        sip.send_to(invite.as_bytes(), server).unwrap();
        let ok = Self::wait_for(
            &sip,
            |m| m.starts_with("SIP/2.0 200"),
            Duration::from_secs(5),
        )
        .expect("200 OK");
        let to = ok
            .lines()
            .find(|h| h.starts_with("To:"))
            .unwrap()
            .trim_start_matches("To:")
            .trim()
            .to_string();
        let ack = format!(
            "ACK sip:moh@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bKa{id};rport\r\nMax-Forwards: 70\r\nFrom: <sip:t@{l}>;tag=f{id}\r\nTo: {to}\r\nCall-ID: {id}@t\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
        );
        sip.send_to(ack.as_bytes(), server).unwrap();
        RawCall {
            sip,
            rtp: Some(rtp),
            server,
        }
    }

    fn wait_for(
        sock: &UdpSocket,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Option<String> {
        let end = Instant::now() + timeout;
        let mut buf = [0u8; 8192];
        while Instant::now() < end {
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                if pred(&m) {
                    return Some(m);
                }
            }
        }
        None
    }

    /// Waits for mohd's BYE, answers it, returns how long it took.
    fn wait_bye(&self, timeout: Duration) -> Option<Duration> {
        let t0 = Instant::now();
        let bye = Self::wait_for(&self.sip, |m| m.starts_with("BYE "), timeout)?;
        let mut resp = String::from("SIP/2.0 200 OK\r\n");
        for h in bye.lines() {
            for name in ["Via:", "From:", "To:", "Call-ID:", "CSeq:"] {
                if h.starts_with(name) {
                    resp.push_str(h);
                    resp.push_str("\r\n");
                }
            }
        }
        resp.push_str("Content-Length: 0\r\n\r\n");
        let _ = self.sip.send_to(resp.as_bytes(), self.server);
        Some(t0.elapsed())
    }

    fn rtp_flows(&self) -> bool {
        let mut buf = [0u8; 2048];
        let rtp = self.rtp.as_ref().unwrap();
        // Drain what is queued, then see whether more comes.
        rtp.set_nonblocking(true).unwrap();
        while rtp.recv_from(&mut buf).is_ok() {}
        rtp.set_nonblocking(false).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        rtp.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        rtp.recv_from(&mut buf).is_ok()
    }
}

fn server_with(calls: &str) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mohd.toml");
    std::fs::write(
        &config,
        format!("[calls]\n{calls}\n[channels.default]\nmusic = \"demo\"\n[dialplan]\ndefault = \"default\"\n"),
    )
    .unwrap();
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    (dir, server)
}

#[test]
fn silent_peers_are_hung_up_when_inactivity_detection_is_on() {
    let (_dir, server) = server_with("rtp_timeout_s = 2");
    let calls: Vec<RawCall> = (0..5).map(|_| RawCall::start(server.sip, "")).collect();
    assert!(calls[0].rtp_flows(), "music flows at first");
    for c in &calls {
        let took = c
            .wait_bye(Duration::from_secs(8))
            .expect("BYE for a silent peer");
        assert!(took <= Duration::from_secs(8));
    }
    for c in &calls {
        assert!(!c.rtp_flows(), "RTP stops after the BYE");
    }
}

#[test]
fn peers_that_answer_with_icmp_unreachable_are_hung_up() {
    let (_dir, server) = server_with("unreachable_timeout_s = 2");
    let mut call = RawCall::start(server.sip, "");
    assert!(call.rtp_flows());
    // The phone vanishes: its RTP port closes, so mohd's RTP bounces (ICMP port unreachable).
    call.rtp = None;
    let took = call
        .wait_bye(Duration::from_secs(10))
        .expect("BYE after ICMP unreachable");
    assert!(
        took >= Duration::from_secs(1),
        "not before the configured time: {took:?}"
    );
}

#[test]
fn calls_end_at_the_maximum_length_and_a_listening_peer_is_not_hung_up_early() {
    let (_dir, server) = server_with("max_duration_s = 3");
    let t0 = Instant::now();
    let calls: Vec<RawCall> = (0..10).map(|_| RawCall::start(server.sip, "")).collect();
    for c in &calls {
        c.wait_bye(Duration::from_secs(8))
            .expect("BYE at max length");
    }
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(2_500), "too early: {took:?}");
    for c in &calls {
        assert!(!c.rtp_flows());
    }
    // The box still takes calls afterwards.
    let report = mohd_call(&server.uri("moh"), &["--seconds", "1"]);
    assert!(report["stats"]["packets"].as_u64().unwrap() >= 40);
}

#[test]
fn session_timer_expiry_ends_the_call_over_loopback() {
    let (_dir, server) = server_with("min_session_expires_s = 3");
    let call = RawCall::start(
        server.sip,
        "Supported: timer\r\nSession-Expires: 3;refresher=uac\r\n",
    );
    // Not refreshed: BYE at 3 s - min(32 s, 1 s) = 2 s.
    let took = call
        .wait_bye(Duration::from_secs(8))
        .expect("BYE on session expiry");
    assert!(took >= Duration::from_millis(1_000), "{took:?}");
    assert!(!call.rtp_flows());
}
