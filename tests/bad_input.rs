//! Malformed SIP over real loopback UDP against `mohd serve`: after every batch of bad datagrams
//! the server is still running and still answers OPTIONS with 200; a malformed request that
//! still names Via, From, To, Call-ID and CSeq is answered 400; and nothing malformed ever starts
//! a call (no 1xx/2xx to it).

mod common;

use common::*;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// The test's SIP socket on 127.0.0.1: sends datagrams to mohd and reads its answers.
struct Peer {
    sock: UdpSocket,
    server: SocketAddr,
    n: u32,
}

impl Peer {
    fn new(server: SocketAddr) -> Peer {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        Peer { sock, server, n: 0 }
    }

    fn local(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    fn send(&self, data: &[u8]) {
        // An over-large datagram is refused by the kernel here, which is not what is tested.
        self.sock.send_to(data, self.server).unwrap();
    }

    fn next_call_id(&mut self, what: &str) -> String {
        self.n += 1;
        format!("bad-{what}-{}@test", self.n)
    }

    /// The headers every request needs, addressed so that the answer comes back here.
    fn head(&self, method: &str, call_id: &str) -> String {
        let me = self.local();
        format!(
            "{method} sip:moh@{srv} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {me};branch=z9hG4bK-{call_id};rport\r\n\
             From: <sip:tester@{me}>;tag=t{n}\r\n\
             To: <sip:moh@{srv}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: 1 {method}\r\n\
             Max-Forwards: 70\r\n",
            srv = self.server,
            n = self.n,
        )
    }

    /// Reads answers until `pred` matches one or `wait` passes.
    fn recv_until(&self, wait: Duration, mut pred: impl FnMut(&Answer) -> bool) -> Option<Answer> {
        let end = Instant::now() + wait;
        let mut buf = vec![0u8; 65_536];
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.sock
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let Ok(n) = self.sock.recv(&mut buf) else {
                return None;
            };
            let answer = Answer::parse(&buf[..n]);
            if pred(&answer) {
                return Some(answer);
            }
        }
    }

    /// Everything that arrives within `wait`.
    fn drain(&self, wait: Duration) -> Vec<Answer> {
        let mut all = Vec::new();
        self.recv_until(wait, |a| {
            all.push(a.clone());
            false
        });
        all
    }

    /// The answer to the request with this Call-ID, waiting up to 5 s.
    fn answer_to(&self, call_id: &str) -> Option<Answer> {
        self.recv_until(Duration::from_secs(5), |a| {
            a.call_id.as_deref() == Some(call_id)
        })
    }
}

/// One datagram from mohd: its status code (None if it is not a SIP response) and Call-ID.
#[derive(Debug, Clone)]
struct Answer {
    code: Option<u16>,
    call_id: Option<String>,
    text: String,
}

impl Answer {
    fn parse(data: &[u8]) -> Answer {
        let text = String::from_utf8_lossy(data).into_owned();
        let code = text
            .strip_prefix("SIP/2.0 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|c| c.parse().ok());
        let call_id = text.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            let name = name.trim();
            (name.eq_ignore_ascii_case("Call-ID") || name == "i").then(|| value.trim().to_string())
        });
        Answer {
            code,
            call_id,
            text,
        }
    }
}

/// mohd is still running, and answers OPTIONS 200 (so a load balancer keeps it in service).
fn assert_alive(server: &mut Server, peer: &mut Peer, after: &str) {
    // Whatever the batch provoked is read first, so it cannot be mistaken for the answer below.
    let stray = peer.drain(Duration::from_millis(300));
    for a in &stray {
        assert!(
            !matches!(a.code, Some(100..=299)),
            "after {after}: a malformed datagram was answered as valid:\n{}",
            a.text
        );
    }
    assert!(server.is_serving(), "mohd exited after {after}");
    let call_id = peer.next_call_id("alive");
    let options = format!(
        "{}Content-Length: 0\r\n\r\n",
        peer.head("OPTIONS", &call_id)
    );
    peer.send(options.as_bytes());
    let answer = peer
        .answer_to(&call_id)
        .unwrap_or_else(|| panic!("after {after}: no answer to OPTIONS"));
    assert_eq!(answer.code, Some(200), "after {after}:\n{}", answer.text);
}

/// If mohd answers the request with this Call-ID (it may also drop it), the answer is one of
/// `allowed`.
fn answer_if_any(peer: &Peer, call_id: &str, allowed: &[u16], what: &str) {
    // 100 Trying says nothing yet: mohd sends it for any INVITE before reading the body.
    if let Some(a) = peer.recv_until(Duration::from_secs(1), |a| {
        a.call_id.as_deref() == Some(call_id) && a.code != Some(100)
    }) {
        assert!(
            a.code.is_some_and(|c| allowed.contains(&c)),
            "{what}: expected one of {allowed:?} or no answer:\n{}",
            a.text
        );
    }
}

/// Sends a malformed request that names all of Via/From/To/Call-ID/CSeq and expects a 400.
fn assert_400(peer: &Peer, call_id: &str, data: &[u8], what: &str) {
    peer.send(data);
    let answer = peer
        .answer_to(call_id)
        .unwrap_or_else(|| panic!("{what}: no answer (expected 400)"));
    assert_eq!(answer.code, Some(400), "{what}:\n{}", answer.text);
}

const SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                   m=audio 9 RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\n";

/// A small deterministic generator for the garbage (seeded, so a failure can be replayed).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn malformed_datagrams_never_stop_the_server() {
    let mut server = Server::start(&[]);
    let mut peer = Peer::new(server.sip);
    assert_alive(&mut server, &mut peer, "start");

    // Answerable: the five headers a response needs are there, the message is still wrong.
    let id = peer.next_call_id("cl-large");
    let msg = format!(
        "{}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP}",
        peer.head("INVITE", &id),
        SDP.len() + 100
    );
    assert_400(
        &peer,
        &id,
        msg.as_bytes(),
        "Content-Length larger than the body",
    );

    let id = peer.next_call_id("cl-text");
    let msg = format!(
        "{}Content-Type: application/sdp\r\nContent-Length: abc\r\n\r\n{SDP}",
        peer.head("INVITE", &id)
    );
    assert_400(&peer, &id, msg.as_bytes(), "non-numeric Content-Length");

    let id = peer.next_call_id("cl-negative");
    let msg = format!("{}Content-Length: -1\r\n\r\n", peer.head("OPTIONS", &id));
    assert_400(&peer, &id, msg.as_bytes(), "negative Content-Length");

    let id = peer.next_call_id("cl-overflow");
    let msg = format!(
        "{}Content-Length: 999999999999999999999999\r\n\r\n",
        peer.head("OPTIONS", &id)
    );
    assert_400(&peer, &id, msg.as_bytes(), "Content-Length beyond 64 bits");

    let id = peer.next_call_id("cseq-mismatch");
    let msg = format!("{}Content-Length: 0\r\n\r\n", peer.head("OPTIONS", &id))
        .replace("CSeq: 1 OPTIONS", "CSeq: 1 INVITE");
    assert_400(&peer, &id, msg.as_bytes(), "CSeq method not the request's");
    assert_alive(&mut server, &mut peer, "answerable malformed requests");

    // A truncated INVITE, cut at every 16th byte. Content-Length comes right after Via, so any
    // prefix that holds the five headers also holds a Content-Length the body cannot meet:
    // none of them is a valid INVITE, and none may ring or answer.
    let id = peer.next_call_id("truncated");
    let head = peer.head("INVITE", &id);
    let (via, rest) = head.split_at(head.find("From:").unwrap());
    let full = format!(
        "{via}Content-Length: {}\r\nContent-Type: application/sdp\r\n{rest}\r\n{SDP}",
        SDP.len()
    );
    let mut answerable = 0;
    for cut in (1..full.len()).step_by(16) {
        let part = &full.as_bytes()[..cut];
        peer.send(part);
        let text = String::from_utf8_lossy(part);
        // Whole CSeq line present: mohd has what it needs to answer 400.
        if text.contains("CSeq: 1 INVITE\r\n") {
            answerable += 1;
            let answer = peer
                .answer_to(&id)
                .unwrap_or_else(|| panic!("INVITE cut at {cut} of {} bytes: no 400", full.len()));
            assert_eq!(answer.code, Some(400), "cut at {cut}:\n{}", answer.text);
        }
    }
    assert!(answerable > 0, "no truncation kept the five headers");
    assert_alive(&mut server, &mut peer, "truncated INVITEs");

    // Not answerable: no Call-ID to answer with.
    let id = peer.next_call_id("no-callid");
    let msg = format!(
        "{}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP}",
        peer.head("INVITE", &id),
        SDP.len()
    )
    .replace(&format!("Call-ID: {id}\r\n"), "");
    peer.send(msg.as_bytes());
    assert_alive(&mut server, &mut peer, "an INVITE without Call-ID");

    // Seeded binary garbage: a few hundred datagrams, some dressed as the start of a request.
    let mut rng = XorShift(0x6d6f_6864_2d62_6164);
    for i in 0..300 {
        let len = 1 + (rng.next() % 1400) as usize;
        let mut d: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if i % 3 == 0 {
            let prefix = b"INVITE sip:moh@127.0.0.1 SIP/2.0\r\nVia: ";
            d.splice(0..0, prefix.iter().copied());
        }
        peer.send(&d);
        if i % 50 == 49 {
            // Paced so the loss of a datagram in a full socket buffer is not what is tested.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert_alive(&mut server, &mut peer, "binary garbage");

    // About 60 KB of headers in one datagram: in 200 long headers (a valid OPTIONS), in 2,000
    // short ones (more headers than mohd keeps), and as one 60 KB header line.
    let id = peer.next_call_id("big-long");
    let filler: String = (0..200)
        .map(|i| format!("X-Filler-{i}: {}\r\n", "a".repeat(290)))
        .collect();
    let msg = format!(
        "{}{filler}Content-Length: 0\r\n\r\n",
        peer.head("OPTIONS", &id)
    );
    assert!(msg.len() > 60_000 && msg.len() < 65_000, "{}", msg.len());
    peer.send(msg.as_bytes());
    let answer = peer.answer_to(&id).expect("no answer to a 60 KB OPTIONS");
    assert!(
        matches!(answer.code, Some(200 | 400 | 413 | 513)),
        "60 KB OPTIONS:\n{}",
        answer.text
    );
    let id = peer.next_call_id("big-many");
    let filler: String = (0..2_000).map(|i| format!("X-F{i}: {i}\r\n")).collect();
    let msg = format!(
        "{}{filler}Content-Length: 0\r\n\r\n",
        peer.head("OPTIONS", &id)
    );
    peer.send(msg.as_bytes());
    answer_if_any(&peer, &id, &[400, 413, 513], "2,000 headers");
    let id = peer.next_call_id("big-one");
    let msg = format!(
        "{}X-Huge: {}\r\nContent-Length: 0\r\n\r\n",
        peer.head("OPTIONS", &id),
        "b".repeat(60_000)
    );
    peer.send(msg.as_bytes());
    answer_if_any(&peer, &id, &[200, 400, 413, 513], "a 60 KB header line");
    assert_alive(&mut server, &mut peer, "60 KB of headers");

    // Request lines with three spaces, or two in a row: malformed (RFC 4475 3.1.2.8/9).
    for line in [
        format!("OPTIONS sip:moh@{} SIP/2.0 extra", server.sip),
        format!("OPTIONS  sip:moh@{} SIP/2.0", server.sip),
        format!("OPTIONS sip:moh@{}  SIP/2.0", server.sip),
    ] {
        let id = peer.next_call_id("spaces");
        let head = peer.head("OPTIONS", &id);
        let (_, rest) = head.split_once("\r\n").unwrap();
        let msg = format!("{line}\r\n{rest}Content-Length: 0\r\n\r\n");
        peer.send(msg.as_bytes());
        if let Some(a) = peer.recv_until(Duration::from_millis(500), |a| {
            a.call_id.as_deref() == Some(id.as_str())
        }) {
            assert_eq!(a.code, Some(400), "request line {line:?}:\n{}", a.text);
        }
    }
    assert_alive(&mut server, &mut peer, "request lines with extra spaces");

    // NUL bytes: in a header value, in the request line, and a datagram of nothing else.
    let id = peer.next_call_id("nul");
    let msg = format!(
        "{}User-Agent: a\0b\r\nContent-Length: 0\r\n\r\n",
        peer.head("OPTIONS", &id)
    );
    peer.send(msg.as_bytes());
    answer_if_any(&peer, &id, &[200, 400], "NUL in a header value");
    let msg = format!("OPT\0IONS sip:moh@{} SIP/2.0\r\n\r\n", server.sip);
    peer.send(msg.as_bytes());
    peer.send(&[0u8; 512]);
    let id2 = peer.next_call_id("nul-body");
    let msg = format!(
        "{}Content-Type: application/sdp\r\nContent-Length: 8\r\n\r\n\0\0\0\0\0\0\0\0",
        peer.head("INVITE", &id2)
    );
    peer.send(msg.as_bytes());
    answer_if_any(&peer, &id2, &[400, 488], "an SDP body of NUL bytes");
    assert_alive(&mut server, &mut peer, "NUL bytes");

    // Huge Via lists: 250 Via headers (answered to the top one), more Via headers than mohd
    // keeps, and one Via header with 1,200 comma-separated values (the response that would copy
    // them all does not fit a datagram).
    let me = peer.local();
    let vias = |n: usize| -> String {
        (0..n)
            .map(|i| {
                format!(
                    "Via: SIP/2.0/UDP 127.0.0.1:{};branch=z9hG4bK-v{i}\r\n",
                    1000 + i
                )
            })
            .collect()
    };
    let id = peer.next_call_id("vias-250");
    let msg = format!(
        "{}{}Content-Length: 0\r\n\r\n",
        peer.head("OPTIONS", &id),
        vias(249)
    );
    peer.send(msg.as_bytes());
    let answer = peer
        .answer_to(&id)
        .expect("no answer to an OPTIONS with 250 Vias");
    assert_eq!(answer.code, Some(200), "{}", answer.text);
    let id = peer.next_call_id("vias-400");
    let msg = format!(
        "{}{}Content-Length: 0\r\n\r\n",
        peer.head("OPTIONS", &id),
        vias(400)
    );
    peer.send(msg.as_bytes());
    answer_if_any(&peer, &id, &[400, 413, 513], "400 Via headers");
    let id = peer.next_call_id("vias-list");
    let list: Vec<String> = (0..1_200)
        .map(|i| format!("SIP/2.0/UDP 127.0.0.1:{};branch=z9hG4bK-l{i}", 1000 + i))
        .collect();
    let head = peer.head("OPTIONS", &id);
    let top_via = format!("Via: SIP/2.0/UDP {me};branch=z9hG4bK-{id};rport");
    let msg = format!(
        "{}Content-Length: 0\r\n\r\n",
        head.replace(&top_via, &format!("{top_via}, {}", list.join(", ")))
    );
    assert!(msg.len() > 50_000 && msg.len() < 65_000, "{}", msg.len());
    peer.send(msg.as_bytes());
    answer_if_any(
        &peer,
        &id,
        &[200, 400, 413, 513],
        "a Via list of 1,200 values",
    );
    assert_alive(&mut server, &mut peer, "huge Via lists");

    // Nothing at all, a lone CRLF (a keep-alive), a double CRLF.
    peer.send(b"");
    peer.send(b"\r\n");
    peer.send(b"\r\n\r\n");
    assert_alive(&mut server, &mut peer, "empty datagram and CRLFs");
}

/// SDES and Opus fmtp from a hostile or broken peer, over real UDP (with SDES allowed over plain
/// transports, so the crypto lines are read at all): every malformed `a=crypto` line is skipped,
/// and an offer with none usable gets 488 with a Warning, at call set-up and mid-call; garbage
/// Opus fmtp values are the RFC's defaults, and the call is answered.
#[test]
fn malformed_crypto_is_488_and_garbage_opus_fmtp_is_defaults() {
    let mut config = mohd::config::Config::embedded_default();
    config.apply_overrides(Some("127.0.0.1:0".parse().unwrap()), None);
    config.web.listen = None;
    config.rtp.srtp_over_plain_transports = true;
    let mut server = Server::with_config(config);
    let mut peer = Peer::new(server.sip);
    const KEY30: &str = "PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR";
    let savp = |crypto: &str| {
        format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio 9 RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\n{crypto}"
        )
    };
    let bad_lines = [
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:@@@not*base64@@@\r\n".to_owned(),
        format!(
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{}\r\n",
            &KEY30[..36]
        ),
        format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY30}AAAA\r\n"),
        format!("a=crypto:1 F8_128_HMAC_SHA1_80 inline:{KEY30}\r\n"),
        format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY30}|2^20|1:4\r\n"),
        format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY30}|2^99\r\n"),
        format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY30} UNENCRYPTED_SRTP\r\n"),
        format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY30} KDR=24\r\n"),
        format!("a=crypto:1234567890 AES_CM_128_HMAC_SHA1_80 inline:{KEY30}\r\n"),
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:\r\na=crypto:\r\na=crypto:\u{1}\r\n".to_owned(),
        String::new(),
    ];
    for crypto in &bad_lines {
        let id = peer.next_call_id("crypto");
        let body = savp(crypto);
        let msg = format!(
            "{}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
            peer.head("INVITE", &id),
            body.len()
        );
        peer.send(msg.as_bytes());
        let a = peer
            .recv_until(Duration::from_secs(5), |a| {
                a.call_id.as_deref() == Some(id.as_str()) && a.code != Some(100)
            })
            .unwrap_or_else(|| panic!("{crypto:?}: no answer"));
        assert_eq!(a.code, Some(488), "{crypto:?}:\n{}", a.text);
        assert!(
            a.text.contains("\r\nWarning: 306 ") && a.text.contains("no usable a=crypto"),
            "{crypto:?}:\n{}",
            a.text
        );
    }
    assert_alive(&mut server, &mut peer, "malformed a=crypto lines");

    // A good line after the bad ones is taken.
    let mut call = RawCall::start_with_offer(server.sip, "", |rp| {
        savp(&format!(
            "{}{}a=crypto:9 AES_CM_128_HMAC_SHA1_32 inline:{KEY30}\r\n",
            bad_lines[0], bad_lines[4]
        ))
        .replace("m=audio 9 ", &format!("m=audio {rp} "))
    });
    assert!(
        call.ok
            .contains("\r\na=crypto:9 AES_CM_128_HMAC_SHA1_32 inline:"),
        "{}",
        call.ok
    );
    // Mid-call, a re-offer whose only line is malformed: 488, and the call goes on.
    let reoffer = savp(&bad_lines[1]);
    let resp = call
        .request("INVITE", &reoffer, "")
        .expect("answer to re-INVITE");
    assert!(resp.starts_with("SIP/2.0 488"), "{resp}");
    assert!(resp.contains("\r\nWarning: 306 "), "{resp}");
    let resp = call.request("BYE", "", "").expect("answer to BYE");
    assert!(resp.starts_with("SIP/2.0 200"), "{resp}");

    // Garbage Opus fmtp: answered with Opus and our own fmtp.
    let mut call = RawCall::start_with_offer(server.sip, "", |rp| {
        format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio {rp} RTP/AVP 107 0\r\na=rtpmap:107 opus/48000/2\r\n\
             a=fmtp:107 maxplaybackrate=banana;stereo=2;maxaveragebitrate=-5;;===;useinbandfec;\
             maxaveragebitrate=99999999999999999999;\u{7f}\r\n"
        )
    });
    assert!(
        call.ok
            .contains("a=rtpmap:107 opus/48000/2\r\na=fmtp:107 maxplaybackrate=48000;"),
        "{}",
        call.ok
    );
    assert!(call.ok.contains("a=ptime:20\r\n"), "{}", call.ok);
    let resp = call.request("BYE", "", "").expect("answer to BYE");
    assert!(resp.starts_with("SIP/2.0 200"), "{resp}");
    assert_alive(&mut server, &mut peer, "garbage Opus fmtp");
}
