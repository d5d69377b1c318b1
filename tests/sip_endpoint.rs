//! The sans-IO SIP endpoint on a virtual clock: transaction timers, retransmission absorption,
//! CANCEL races, dialogs. No sockets; made-up addresses; time only moves when the test says.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mohd::config::Config;
use mohd::sip::endpoint::{CallId, EndReason, Endpoint, EndpointConfig, Event, Output, Transport};
use mohd::sip::msg::{self, Message, Response};
use mohd::sip::timer::{T1, T2};

const PEER: &str = "192.0.2.50:5070";
const LOCAL: &str = "192.0.2.10:5060";

struct Harness {
    ep: Endpoint,
    now: Instant,
    sent: Vec<(Instant, SocketAddr, Vec<u8>)>,
    events: Vec<Event>,
}

impl Harness {
    fn new() -> Self {
        Self::with(EndpointConfig::default())
    }
    fn with(config: EndpointConfig) -> Self {
        let dialplan = Config::embedded_default().dialplan;
        Harness {
            ep: Endpoint::new(config, dialplan, 7),
            now: Instant::now(),
            sent: Vec::new(),
            events: Vec::new(),
        }
    }
    fn peer() -> SocketAddr {
        PEER.parse().unwrap()
    }
    fn local() -> SocketAddr {
        LOCAL.parse().unwrap()
    }
    fn recv(&mut self, text: &str) {
        self.recv_on(Transport::Udp, text);
    }
    fn recv_on(&mut self, transport: Transport, text: &str) {
        let (peer, local) = (Self::peer(), Self::local());
        self.ep
            .handle_receive_on(self.now, transport, peer, local, text.as_bytes());
        self.drain();
    }
    fn drain(&mut self) {
        while let Some(o) = self.ep.poll_output() {
            match o {
                Output::Transmit(t) => self.sent.push((self.now, t.to, t.data)),
                Output::Event(e) => {
                    // The application's half: answer every call with an RTP port.
                    if let Event::IncomingCall { call, .. } = &e {
                        let call = *call;
                        self.events.push(e);
                        self.ep
                            .accept(self.now, call, "192.0.2.10:40000".parse().unwrap());
                        continue;
                    }
                    self.events.push(e);
                }
            }
        }
    }
    /// Jump to the endpoint's next timer (bounded, so a stuck machine fails, not hangs).
    fn step(&mut self) -> bool {
        match self.ep.poll_timeout() {
            Some(at) => {
                self.now = self.now.max(at);
                self.ep.handle_timeout(self.now);
                self.drain();
                true
            }
            None => false,
        }
    }
    fn advance(&mut self, d: Duration) {
        let until = self.now + d;
        for _ in 0..10_000 {
            match self.ep.poll_timeout() {
                Some(at) if at <= until => {
                    self.step();
                }
                _ => break,
            }
        }
        self.now = until;
        self.ep.handle_timeout(self.now);
        self.drain();
    }
    fn responses(&self) -> Vec<(Instant, Response)> {
        self.sent
            .iter()
            .filter_map(|(t, _, d)| match msg::parse(d) {
                Ok(Message::Response(r)) => Some((*t, r)),
                _ => None,
            })
            .collect()
    }
    fn codes(&self) -> Vec<u16> {
        self.responses().iter().map(|(_, r)| r.code).collect()
    }
    fn requests(&self, method: &str) -> Vec<(Instant, msg::Request)> {
        self.sent
            .iter()
            .filter_map(|(t, _, d)| match msg::parse(d) {
                Ok(Message::Request(r)) if r.method.as_str() == method => Some((*t, r)),
                _ => None,
            })
            .collect()
    }
    /// Requests we sent, counting retransmissions once.
    fn distinct_requests(&self, method: &str) -> Vec<(Instant, msg::Request)> {
        let mut seen = std::collections::HashSet::new();
        self.requests(method)
            .into_iter()
            .filter(|(_, r)| seen.insert(r.headers.get("CSeq").unwrap_or_default().to_string()))
            .collect()
    }
    fn ended(&self) -> Vec<(CallId, EndReason)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::CallEnded { call, reason } => Some((*call, reason.clone())),
                _ => None,
            })
            .collect()
    }
    fn started(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, Event::CallStarted { .. }))
            .count()
    }
    fn incoming(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, Event::IncomingCall { .. }))
            .count()
    }
}

const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.50\r\ns=-\r\nc=IN IP4 192.0.2.50\r\nt=0 0\r\nm=audio 30000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n";

fn invite(branch: &str, call_id: &str, body: &str) -> String {
    format!(
        "INVITE sip:moh@192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.50:5070;branch={branch};rport\r\nMax-Forwards: 70\r\nFrom: <sip:pbx@192.0.2.50>;tag=ft1\r\nTo: <sip:moh@192.0.2.10>\r\nCall-ID: {call_id}\r\nCSeq: 10 INVITE\r\nContact: <sip:pbx@192.0.2.50:5070>\r\n{ctype}Content-Length: {len}\r\n\r\n{body}",
        ctype = if body.is_empty() {
            ""
        } else {
            "Content-Type: application/sdp\r\n"
        },
        len = body.len()
    )
}

fn in_dialog(
    method: &str,
    cseq: u32,
    branch: &str,
    call_id: &str,
    to_tag: &str,
    body: &str,
) -> String {
    format!(
        "{method} sip:pbx@192.0.2.50:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.50:5070;branch={branch};rport\r\nMax-Forwards: 70\r\nFrom: <sip:pbx@192.0.2.50>;tag=ft1\r\nTo: <sip:moh@192.0.2.10>;tag={to_tag}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n{ctype}Content-Length: {len}\r\n\r\n{body}",
        ctype = if body.is_empty() {
            ""
        } else {
            "Content-Type: application/sdp\r\n"
        },
        len = body.len()
    )
}

fn to_tag(r: &Response) -> String {
    r.to().and_then(|t| t.tag().map(str::to_string)).unwrap()
}

#[test]
fn invite_is_answered_with_100_then_200_and_sdp() {
    let mut h = Harness::new();
    h.recv(&invite("z9hG4bKa1", "c1", OFFER));
    assert_eq!(h.codes(), vec![100, 200]);
    let (_, ok) = &h.responses()[1];
    let body = String::from_utf8(ok.body.clone()).unwrap();
    assert!(body.contains("m=audio 40000 RTP/AVP 0"), "{body}");
    assert!(body.contains("a=sendonly"), "{body}");
    assert!(ok.contact().is_some());
    assert!(!to_tag(ok).is_empty());
    // rport: the response goes back to the source port.
    assert!(h.sent.iter().all(|(_, to, _)| *to == Harness::peer()));
    assert_eq!(h.started(), 1);
}

#[test]
fn ok_is_retransmitted_on_timer_g_schedule_then_timer_h_ends_the_call() {
    let mut h = Harness::new();
    let t0 = h.now;
    h.recv(&invite("z9hG4bKa2", "c2", OFFER));
    h.advance(Duration::from_secs(40));
    let oks: Vec<Duration> = h
        .responses()
        .iter()
        .filter(|(_, r)| r.code == 200)
        .map(|(t, _)| *t - t0)
        .collect();
    // First send at 0, then T1, 2T1, 4T1, capped at T2 (RFC 3261 §13.3.1.4).
    let mut expected = vec![Duration::ZERO];
    let (mut at, mut interval) = (Duration::ZERO, T1);
    loop {
        at += interval;
        if at >= 64 * T1 {
            break;
        }
        expected.push(at);
        interval = (interval * 2).min(T2);
    }
    assert_eq!(oks, expected);
    // Timer H: at 64*T1 the call ends with a BYE.
    let byes = h.requests("BYE");
    assert_eq!(byes.first().map(|(t, _)| *t - t0), Some(64 * T1));
    assert_eq!(h.ended(), vec![(CallId(1), EndReason::NoAck)]);
    assert_eq!(h.ep.active_calls(), 0);
    // Everything is forgotten eventually: no leak of transactions.
    h.advance(Duration::from_secs(60));
    assert_eq!(h.ep.open_transactions(), 0);
}

#[test]
fn ack_stops_the_retransmissions() {
    let mut h = Harness::new();
    h.recv(&invite("z9hG4bKa3", "c3", OFFER));
    let tag = to_tag(&h.responses()[1].1);
    h.advance(Duration::from_millis(600)); // one retransmission
    h.recv(&in_dialog("ACK", 10, "z9hG4bKack3", "c3", &tag, ""));
    let before = h.codes().len();
    h.advance(Duration::from_secs(60));
    assert_eq!(h.codes().len(), before, "no 200 after the ACK");
    assert!(h.ended().is_empty());
    assert_eq!(h.ep.active_calls(), 1);
}

#[test]
fn retransmitted_invite_is_absorbed_never_a_second_call() {
    let mut h = Harness::new();
    let inv = invite("z9hG4bKa4", "c4", OFFER);
    h.recv(&inv);
    h.recv(&inv);
    h.advance(Duration::from_millis(100));
    h.recv(&inv);
    assert_eq!(h.incoming(), 1);
    assert_eq!(h.ep.active_calls(), 1);
    assert_eq!(h.ep.stats().retransmissions_absorbed, 2);
    // Each retransmission got the 2xx again.
    assert!(h.codes().iter().filter(|c| **c == 200).count() >= 3);
}

#[test]
fn retransmitted_bye_and_options_are_absorbed() {
    let mut h = Harness::new();
    h.recv(&invite("z9hG4bKa5", "c5", OFFER));
    let tag = to_tag(&h.responses()[1].1);
    h.recv(&in_dialog("ACK", 10, "z9hG4bKack5", "c5", &tag, ""));
    let bye = in_dialog("BYE", 11, "z9hG4bKbye5", "c5", &tag, "");
    h.recv(&bye);
    h.recv(&bye);
    assert_eq!(h.ended(), vec![(CallId(1), EndReason::RemoteBye)]);
    let oks_to_bye = h
        .responses()
        .iter()
        .filter(|(_, r)| r.cseq().map(|c| c.1) == Some(msg::Method::Bye))
        .count();
    assert_eq!(
        oks_to_bye, 2,
        "the retransmitted BYE gets the same 200, no 481"
    );
    // Timer J then forgets the transaction.
    h.advance(Duration::from_secs(40));
    assert_eq!(h.ep.open_transactions(), 0);
}

#[test]
fn cancel_before_answer_gets_200_and_487() {
    let mut h = Harness::with(EndpointConfig {
        answer_delay: Duration::from_secs(2),
        ..EndpointConfig::default()
    });
    h.recv(&invite("z9hG4bKa6", "c6", OFFER));
    assert_eq!(h.codes(), vec![100, 180]);
    h.advance(Duration::from_millis(300));
    h.recv("CANCEL sip:moh@192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.50:5070;branch=z9hG4bKa6;rport\r\nMax-Forwards: 70\r\nFrom: <sip:pbx@192.0.2.50>;tag=ft1\r\nTo: <sip:moh@192.0.2.10>\r\nCall-ID: c6\r\nCSeq: 10 CANCEL\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(h.codes(), vec![100, 180, 200, 487]);
    assert_eq!(h.ended(), vec![(CallId(1), EndReason::Cancelled)]);
    assert_eq!(h.started(), 0);
    // The 487 is retransmitted (Timer G) until the ACK.
    h.advance(Duration::from_millis(600));
    assert_eq!(h.codes().iter().filter(|c| **c == 487).count(), 2);
    let tag = to_tag(&h.responses()[3].1);
    h.recv(&format!("ACK sip:moh@192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.50:5070;branch=z9hG4bKa6;rport\r\nMax-Forwards: 70\r\nFrom: <sip:pbx@192.0.2.50>;tag=ft1\r\nTo: <sip:moh@192.0.2.10>;tag={tag}\r\nCall-ID: c6\r\nCSeq: 10 ACK\r\nContent-Length: 0\r\n\r\n"));
    h.advance(Duration::from_secs(40));
    assert_eq!(h.codes().iter().filter(|c| **c == 487).count(), 2);
    assert_eq!(
        h.codes().iter().filter(|c| **c == 200).count(),
        1,
        "never answered"
    );
    assert_eq!(h.ep.open_transactions(), 0);
}

#[test]
fn unacknowledged_487_stops_at_timer_h() {
    let mut h = Harness::with(EndpointConfig {
        answer_delay: Duration::from_secs(2),
        ..EndpointConfig::default()
    });
    let t0 = h.now;
    h.recv(&invite("z9hG4bKa7", "c7", OFFER));
    h.recv("CANCEL sip:moh@192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.50:5070;branch=z9hG4bKa7;rport\r\nMax-Forwards: 70\r\nFrom: <sip:pbx@192.0.2.50>;tag=ft1\r\nTo: <sip:moh@192.0.2.10>\r\nCall-ID: c7\r\nCSeq: 10 CANCEL\r\nContent-Length: 0\r\n\r\n");
    h.advance(Duration::from_secs(60));
    let last_487 = h
        .responses()
        .iter()
        .filter(|(_, r)| r.code == 487)
        .map(|(t, _)| *t - t0)
        .max()
        .unwrap();
    assert!(
        last_487 < 64 * T1,
        "Timer H stops retransmission ({last_487:?})"
    );
    assert_eq!(h.ep.open_transactions(), 0);
}

#[test]
fn cancel_after_200_is_a_no_op() {
    let mut h = Harness::new();
    h.recv(&invite("z9hG4bKa8", "c8", OFFER));
    h.recv("CANCEL sip:moh@192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.50:5070;branch=z9hG4bKa8;rport\r\nMax-Forwards: 70\r\nFrom: <sip:pbx@192.0.2.50>;tag=ft1\r\nTo: <sip:moh@192.0.2.10>\r\nCall-ID: c8\r\nCSeq: 10 CANCEL\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(h.codes(), vec![100, 200, 200], "200 to the CANCEL, no 487");
    assert!(h.ended().is_empty());
    assert_eq!(h.ep.active_calls(), 1);
}

#[test]
fn cancel_for_unknown_transaction_gets_481() {
    let mut h = Harness::new();
    h.recv("CANCEL sip:moh@192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.50:5070;branch=z9hG4bKnone;rport\r\nMax-Forwards: 70\r\nFrom: <sip:pbx@192.0.2.50>;tag=ft1\r\nTo: <sip:moh@192.0.2.10>\r\nCall-ID: c9\r\nCSeq: 10 CANCEL\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(h.codes(), vec![481]);
}

#[test]
fn options_bye_unknown_and_other_methods() {
    let mut h = Harness::new();
    let req = |m: &str, b: &str| {
        format!(
            "{m} sip:moh@192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.50:5070;branch={b}\r\nMax-Forwards: 70\r\nFrom: <sip:pbx@192.0.2.50>;tag=ft1\r\nTo: <sip:moh@192.0.2.10>\r\nCall-ID: x{b}\r\nCSeq: 1 {m}\r\nContent-Length: 0\r\n\r\n"
        )
    };
    h.recv(&req("OPTIONS", "z9hG4bKo1"));
    let (_, ok) = h.responses().pop().unwrap();
    assert_eq!(ok.code, 200);
    assert!(ok.headers.get("Allow").unwrap().contains("INVITE"));
    assert_eq!(ok.headers.get("Accept"), Some("application/sdp"));
    assert!(ok.headers.get("Supported").is_some());
    // No rport: the response goes to the sent-by port of the source IP.
    assert_eq!(h.sent.last().unwrap().1, Harness::peer());
    h.recv(&req("REGISTER", "z9hG4bKo2"));
    h.recv(&req("FOO", "z9hG4bKo3"));
    h.recv(&req("BYE", "z9hG4bKo4"));
    assert_eq!(h.codes()[1..], [405, 501, 481]);
    h.ep.set_unavailable(Some("nothing to play".into()));
    h.recv(&req("OPTIONS", "z9hG4bKo5"));
    assert_eq!(h.codes().last(), Some(&503));
}

const G729_ONLY: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.50\r\ns=-\r\nc=IN IP4 192.0.2.50\r\nt=0 0\r\nm=audio 30000 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n";

#[test]
fn g729_only_offer_gets_488() {
    let mut h = Harness::new();
    h.recv(&invite("z9hG4bKb1", "d1", G729_ONLY));
    assert_eq!(h.codes(), vec![100, 488]);
    assert_eq!(h.incoming(), 0);
    assert_eq!(h.ep.active_calls(), 0);
}

/// Every codec, as `[rtp] codecs` has them by default.
fn all_codecs() -> EndpointConfig {
    EndpointConfig {
        codecs: mohd::config::DEFAULT_CODECS.to_vec(),
        ..EndpointConfig::default()
    }
}

#[test]
fn no_common_codec_488_carries_a_warning_naming_what_we_support() {
    let mut h = Harness::with(all_codecs());
    h.recv(&invite("z9hG4bKw1", "w1", G729_ONLY));
    let (_, r) = h.responses().pop().unwrap();
    assert_eq!(r.code, 488);
    assert_eq!(
        r.headers.get("Warning"),
        Some(
            "305 192.0.2.10:5060 \"Incompatible media format: mohd supports opus, G722, PCMU, PCMA\""
        )
    );
    let mut h = Harness::new();
    h.recv(&invite("z9hG4bKw2", "w2", G729_ONLY));
    let (_, r) = h.responses().pop().unwrap();
    assert_eq!(
        r.headers.get("Warning"),
        Some("305 192.0.2.10:5060 \"Incompatible media format: mohd supports PCMU, PCMA\"")
    );
    // No audio at all (a T.38-only offer): 304.
    let t38 = G729_ONLY.replace("m=audio 30000 RTP/AVP 18", "m=image 30000 udptl t38");
    h.recv(&invite("z9hG4bKw3", "w3", &t38));
    let (_, r) = h.responses().pop().unwrap();
    assert_eq!(
        (r.code, r.headers.get("Warning")),
        (
            488,
            Some("304 192.0.2.10:5060 \"Media type not available\"")
        )
    );
}

/// The media of every CallStarted (`started`) or CallUpdated event, in order.
fn media_of(h: &Harness, started: bool) -> Vec<mohd::sip::sdp::MediaParams> {
    h.events
        .iter()
        .filter_map(|e| match e {
            Event::CallStarted { media, .. } if started => Some(*media),
            Event::CallUpdated { media, .. } if !started => Some(*media),
            _ => None,
        })
        .collect()
}

#[test]
fn reinvite_switches_codec_and_an_unusable_one_gets_488_and_keeps_the_call() {
    use mohd::codec::Codec;
    let mut h = Harness::with(all_codecs());
    let g722 = OFFER.replace("RTP/AVP 0 8 101", "RTP/AVP 9 0 101");
    h.recv(&invite("z9hG4bKx1", "x1", &g722));
    let first = media_of(&h, true)[0];
    assert_eq!((first.codec, first.payload_type), (Codec::G722, 9));
    let tag = to_tag(&h.responses()[1].1);
    h.recv(&in_dialog("ACK", 10, "z9hG4bKackx", "x1", &tag, ""));
    let opus = OFFER
        .replace("RTP/AVP 0 8 101", "RTP/AVP 107 0 101")
        .replace(
            "a=rtpmap:0 PCMU",
            "a=rtpmap:107 opus/48000/2\r\na=rtpmap:0 PCMU",
        );
    h.recv(&in_dialog("INVITE", 11, "z9hG4bKx2", "x1", &tag, &opus));
    let (_, r) = h.responses().pop().unwrap();
    assert_eq!(r.code, 200);
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert!(
        body.contains("a=rtpmap:107 opus/48000/2\r\na=fmtp:107 "),
        "{body}"
    );
    assert!(body.contains("a=ptime:20\r\n"), "{body}");
    let media = media_of(&h, false);
    assert_eq!(media.len(), 1);
    assert_eq!((media[0].codec, media[0].payload_type), (Codec::Opus, 107));
    h.recv(&in_dialog("ACK", 11, "z9hG4bKackx2", "x1", &tag, ""));
    // A re-offer with nothing we speak, by re-INVITE or UPDATE: 488 with the Warning; the call
    // goes on as it was.
    for (method, cseq) in [("INVITE", 12), ("UPDATE", 13)] {
        let branch = format!("z9hG4bKx{cseq}");
        h.recv(&in_dialog(method, cseq, &branch, "x1", &tag, G729_ONLY));
        let (_, r) = h.responses().pop().unwrap();
        assert_eq!(r.code, 488, "{method}");
        let warning = r.headers.get("Warning").unwrap_or_default();
        assert!(
            warning.starts_with("305 ") && warning.contains("mohd supports opus"),
            "{method}: {warning}"
        );
        assert_eq!(media_of(&h, false).len(), 1);
        assert_eq!(h.ep.active_calls(), 1);
        assert!(h.ended().is_empty());
    }
}

#[test]
fn late_offer_takes_the_answer_from_the_ack() {
    let mut h = Harness::new();
    h.recv(&invite("z9hG4bKb2", "d2", ""));
    assert_eq!(h.codes(), vec![100, 200]);
    let ok = &h.responses()[1].1;
    let body = String::from_utf8(ok.body.clone()).unwrap();
    assert!(
        body.contains("m=audio 40000"),
        "our offer in the 200: {body}"
    );
    assert_eq!(h.started(), 0, "no media before the answer");
    let tag = to_tag(ok);
    let answer = "v=0\r\no=- 2 2 IN IP4 192.0.2.50\r\ns=-\r\nc=IN IP4 192.0.2.50\r\nt=0 0\r\nm=audio 30002 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=recvonly\r\n";
    h.recv(&in_dialog("ACK", 10, "z9hG4bKack", "d2", &tag, answer));
    assert_eq!(h.started(), 1);
    let media = media_of(&h, true)[0];
    assert_eq!(media.codec, mohd::codec::Codec::Pcma);
    assert_eq!(media.remote_rtp, "192.0.2.50:30002".parse().unwrap());
}

#[test]
fn in_dialog_request_for_unknown_dialog_gets_481() {
    let mut h = Harness::new();
    h.recv(&in_dialog("BYE", 2, "z9hG4bKz", "nope", "nosuchtag", ""));
    assert_eq!(h.codes(), vec![481]);
}

#[test]
fn malformed_request_gets_400_and_garbage_is_dropped() {
    let mut h = Harness::new();
    let bad = invite("z9hG4bKc1", "e1", OFFER).replace("Content-Length: ", "Content-Length: 9");
    h.recv(&bad);
    assert_eq!(h.codes(), vec![400]);
    h.recv("\u{1}\u{2}garbage");
    assert_eq!(h.codes(), vec![400]);
    assert_eq!(h.ep.stats().datagrams_dropped, 1);
}

#[test]
fn unsupported_require_gets_420() {
    let mut h = Harness::new();
    let inv = invite("z9hG4bKc2", "e2", OFFER).replace(
        "Max-Forwards: 70\r\n",
        "Max-Forwards: 70\r\nRequire: 100rel\r\n",
    );
    h.recv(&inv);
    let (_, r) = h.responses().pop().unwrap();
    assert_eq!(r.code, 420);
    assert_eq!(r.headers.get("Unsupported"), Some("100rel"));
}

#[test]
fn reinvite_to_hold_and_back_updates_media() {
    let mut h = Harness::new();
    h.recv(&invite("z9hG4bKd1", "f1", OFFER));
    let tag = to_tag(&h.responses()[1].1);
    h.recv(&in_dialog("ACK", 10, "z9hG4bKackd", "f1", &tag, ""));
    let hold = OFFER.replace("a=sendrecv", "a=sendonly");
    h.recv(&in_dialog("INVITE", 11, "z9hG4bKd2", "f1", &tag, &hold));
    let (_, r) = h.responses().pop().unwrap();
    assert_eq!(r.code, 200);
    assert!(String::from_utf8_lossy(&r.body).contains("a=inactive"));
    let updated = h
        .events
        .iter()
        .filter(|e| matches!(e, Event::CallUpdated { .. }))
        .count();
    assert_eq!(updated, 1);
}

#[test]
fn no_route_gets_404() {
    let config = EndpointConfig::default();
    let dialplan = mohd::dialplan::Dialplan::default();
    let mut ep = Endpoint::new(config, dialplan, 1);
    let now = Instant::now();
    ep.handle_receive(
        now,
        PEER.parse().unwrap(),
        LOCAL.parse().unwrap(),
        invite("z9hG4bKe1", "g1", OFFER).as_bytes(),
    );
    let mut codes = Vec::new();
    while let Some(o) = ep.poll_output() {
        if let Output::Transmit(t) = o
            && let Ok(Message::Response(r)) = msg::parse(&t.data)
        {
            codes.push(r.code);
        }
    }
    assert_eq!(codes, vec![100, 404]);
}

fn with_headers(msg: &str, extra: &str) -> String {
    msg.replacen(
        "Max-Forwards: 70\r\n",
        &format!("Max-Forwards: 70\r\n{extra}"),
        1,
    )
}

/// INVITE + ACK with the given extra headers on the INVITE; returns our To tag.
fn establish(h: &mut Harness, call_id: &str, extra: &str) -> String {
    h.recv(&with_headers(
        &invite(&format!("z9hG4bK{call_id}"), call_id, OFFER),
        extra,
    ));
    let ok = h
        .responses()
        .into_iter()
        .rev()
        .find(|(_, r)| r.code == 200)
        .unwrap()
        .1;
    let tag = to_tag(&ok);
    h.recv(&in_dialog(
        "ACK",
        10,
        &format!("z9hG4bKack{call_id}"),
        call_id,
        &tag,
        "",
    ));
    tag
}

#[test]
fn session_timer_expiry_ends_the_call() {
    let mut h = Harness::new();
    let t0 = h.now;
    establish(
        &mut h,
        "st1",
        "Supported: timer\r\nSession-Expires: 90;refresher=uac\r\n",
    );
    let ok = h
        .responses()
        .into_iter()
        .find(|(_, r)| r.code == 200)
        .unwrap()
        .1;
    assert_eq!(ok.headers.get("Session-Expires"), Some("90;refresher=uac"));
    assert_eq!(ok.headers.get("Require"), Some("timer"));
    h.advance(Duration::from_secs(59));
    assert!(h.ended().is_empty());
    h.advance(Duration::from_secs(2));
    // BYE at expiry minus min(32 s, interval/3) = 60 s (RFC 4028 §10).
    let byes = h.distinct_requests("BYE");
    assert_eq!(byes.len(), 1);
    assert_eq!(byes[0].0 - t0, Duration::from_secs(60));
    assert_eq!(h.ended(), vec![(CallId(1), EndReason::SessionExpired)]);
}

#[test]
fn refresh_by_reinvite_or_update_keeps_the_call() {
    for method in ["INVITE", "UPDATE"] {
        let mut h = Harness::new();
        let tag = establish(
            &mut h,
            "st2",
            "Supported: timer\r\nSession-Expires: 90;refresher=uac\r\n",
        );
        h.advance(Duration::from_secs(40));
        let refresh = with_headers(
            &in_dialog(
                method,
                11,
                "z9hG4bKref",
                "st2",
                &tag,
                if method == "INVITE" { OFFER } else { "" },
            ),
            "Supported: timer\r\nSession-Expires: 90;refresher=uac\r\n",
        );
        h.recv(&refresh);
        let (_, r) = h.responses().pop().unwrap();
        assert_eq!(r.code, 200, "{method}");
        if method == "INVITE" {
            h.recv(&in_dialog("ACK", 11, "z9hG4bKack2", "st2", &tag, ""));
        }
        h.advance(Duration::from_secs(55)); // 95 s: would have expired at 60 s
        assert!(h.ended().is_empty(), "{method} refreshed the session");
        h.advance(Duration::from_secs(10)); // 40 + 60 = 100 s
        assert_eq!(
            h.ended(),
            vec![(CallId(1), EndReason::SessionExpired)],
            "{method}"
        );
    }
}

#[test]
fn too_small_session_interval_gets_422() {
    let mut h = Harness::new();
    h.recv(&with_headers(
        &invite("z9hG4bKst3", "st3", OFFER),
        "Supported: timer\r\nSession-Expires: 30\r\n",
    ));
    let (_, r) = h.responses().pop().unwrap();
    assert_eq!(r.code, 422);
    assert_eq!(r.headers.get("Min-SE"), Some("90"));
    assert_eq!(h.ep.active_calls(), 0);
}

#[test]
fn as_refresher_we_send_update_and_a_dead_peer_ends_the_call() {
    let mut h = Harness::new();
    let t0 = h.now;
    // A UAC without timer support, behind a proxy that asked for timers: we refresh.
    establish(
        &mut h,
        "st4",
        "Session-Expires: 120\r\nAllow: INVITE, ACK, BYE, CANCEL, UPDATE\r\n",
    );
    let ok = h
        .responses()
        .into_iter()
        .find(|(_, r)| r.code == 200)
        .unwrap()
        .1;
    assert_eq!(ok.headers.get("Session-Expires"), Some("120;refresher=uas"));
    assert_eq!(ok.headers.get("Require"), None);
    h.advance(Duration::from_secs(61));
    let updates = h.distinct_requests("UPDATE");
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].0 - t0, Duration::from_secs(60));
    // Answer it: the session goes on and the next refresh comes 60 s later.
    h.recv(&ok_to(
        &updates[0].1,
        "Session-Expires: 120;refresher=uas\r\n",
    ));
    h.advance(Duration::from_secs(60));
    assert_eq!(h.distinct_requests("UPDATE").len(), 2);
    assert!(h.ended().is_empty());
    // Nobody answers the second one: Timer F ends the call with a BYE.
    h.advance(Duration::from_secs(40));
    assert_eq!(h.ended(), vec![(CallId(1), EndReason::RefreshFailed(408))]);
    assert_eq!(h.distinct_requests("BYE").len(), 1);
}

/// The peer's 200 OK to our request `req`, with `extra` headers.
fn ok_to(req: &msg::Request, extra: &str) -> String {
    let mut resp = "SIP/2.0 200 OK\r\n".to_string();
    for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
        resp.push_str(&format!("{name}: {}\r\n", req.headers.get(name).unwrap()));
    }
    resp.push_str(&format!("{extra}Content-Length: 0\r\n\r\n"));
    resp
}

#[test]
fn max_call_length_ends_calls() {
    let mut h = Harness::with(EndpointConfig {
        max_call_duration: Some(Duration::from_secs(10)),
        ..EndpointConfig::default()
    });
    establish(&mut h, "mx1", "");
    h.advance(Duration::from_millis(9_900));
    assert!(h.ended().is_empty());
    h.advance(Duration::from_millis(200));
    assert_eq!(h.ended(), vec![(CallId(1), EndReason::MaxDuration)]);
    assert_eq!(h.distinct_requests("BYE").len(), 1);
    assert_eq!(h.ep.active_calls(), 0);
}

#[test]
fn reinvite_before_the_ack_gets_491() {
    let mut h = Harness::new();
    h.recv(&invite("z9hG4bKg1", "g491", OFFER));
    let tag = to_tag(&h.responses()[1].1);
    h.recv(&in_dialog("INVITE", 11, "z9hG4bKg2", "g491", &tag, OFFER));
    assert_eq!(h.codes().last(), Some(&491));
    assert_eq!(h.ep.active_calls(), 1);
}

#[test]
fn call_cap_answers_503() {
    let mut h = Harness::with(EndpointConfig {
        max_calls: 2,
        ..EndpointConfig::default()
    });
    for i in 0..3 {
        h.recv(&invite(
            &format!("z9hG4bKcap{i}"),
            &format!("cap{i}"),
            OFFER,
        ));
    }
    assert_eq!(h.ep.active_calls(), 2);
    assert_eq!(h.codes().last(), Some(&503));
    let refused = h.responses().pop().unwrap().1;
    assert_eq!(refused.headers.get("Retry-After"), Some("5"));
    assert!(
        refused
            .headers
            .get("Warning")
            .unwrap()
            .contains("max_calls")
    );
    // A probe hears it too: a proxy should send the next call elsewhere.
    assert_eq!(probe(&mut h, "z9hG4bKcapO").code, 503);
}

/// OPTIONS from a probe (a proxy's dispatcher): the last response's code and headers.
fn probe(h: &mut Harness, branch: &str) -> Response {
    h.recv(&format!(
        "OPTIONS sip:moh@192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.50:5070;branch={branch}\r\nMax-Forwards: 70\r\nFrom: <sip:pbx@192.0.2.50>;tag=ft1\r\nTo: <sip:moh@192.0.2.10>\r\nCall-ID: o{branch}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ));
    h.responses().pop().unwrap().1
}

/// Admission control end to end on a virtual clock: the media budget (`rtp::admission`)
/// measured over, new INVITEs get 503 with Retry-After and OPTIONS says so too (so a proxy
/// routes elsewhere); calls in progress go on; once the load falls, 200 again.
#[test]
fn admission_control_refuses_over_budget_and_admits_again_when_the_load_falls() {
    use mohd::rtp::admission::{Admission, Refusal, Sample};
    let mut h = Harness::new();
    let mut model = Admission::new(0.7, 1);
    let mut sample = Sample {
        at: h.now,
        busy_ns: 0,
        packets_sent: 0,
        packets_late: 0,
        active_calls: 0,
        threads: 1,
        machine: None,
    };
    model.observe(sample);
    // A second of the media thread's life with `calls` calls at `cost_ns` per packet.
    let mut second = |h: &mut Harness, model: &mut Admission, calls: u64, cost_ns: u64| {
        h.advance(Duration::from_secs(1));
        sample.at = h.now;
        sample.busy_ns += calls * 50 * cost_ns;
        sample.packets_sent += calls * 50;
        sample.active_calls = calls;
        model.observe(sample);
        h.ep.set_capacity(model.capacity());
    };
    for i in 0..3 {
        let id = format!("ad{i}");
        h.recv(&invite(&format!("z9hG4bKad{i}"), &id, OFFER));
        let tag = to_tag(&h.responses().last().unwrap().1);
        h.recv(&in_dialog(
            "ACK",
            10,
            &format!("z9hG4bKadA{i}"),
            &id,
            &tag,
            "",
        ));
    }
    assert_eq!(h.ep.active_calls(), 3);
    // Three calls whose packets cost 6 ms each (a box far too slow for them): the budget is
    // exceeded and the capacity falls below the calls up.
    for _ in 0..4 {
        second(&mut h, &mut model, 3, 6_000_000);
    }
    assert!(model.budget_use() > 1.0, "{model:?}");
    assert_eq!(h.ep.refusal(), Some(Refusal::Capacity));
    h.recv(&invite("z9hG4bKad9", "ad9", OFFER));
    let refused = h.responses().pop().unwrap().1;
    assert_eq!(refused.code, 503);
    assert_eq!(refused.headers.get("Retry-After"), Some("5"));
    assert!(refused.headers.get("Warning").unwrap().contains("capacity"));
    let options = probe(&mut h, "z9hG4bKadO1");
    assert_eq!(options.code, 503);
    assert_eq!(options.headers.get("Retry-After"), Some("5"));
    assert!(options.headers.get("Allow").is_some());
    // Admission never touches calls in progress.
    assert_eq!(h.ep.active_calls(), 3);
    assert!(h.ended().is_empty());
    assert_eq!(h.ep.stats().refused(Refusal::Capacity), 1);
    // The load falls (the slow neighbour is gone): 20 µs a packet.
    for _ in 0..40 {
        second(&mut h, &mut model, 3, 20_000);
    }
    assert_eq!(h.ep.refusal(), None, "{model:?}");
    assert_eq!(probe(&mut h, "z9hG4bKadO2").code, 200);
    h.recv(&invite("z9hG4bKad10", "ad10", OFFER));
    assert_eq!(h.ep.active_calls(), 4);
}

/// Draining: every new INVITE and OPTIONS gets 503 (Retry-After, a Warning naming the
/// drain), whatever the capacity; the calls up are untouched; cancelling admits again.
#[test]
fn a_draining_endpoint_refuses_new_calls_and_probes_but_keeps_its_calls() {
    use mohd::rtp::admission::Refusal;
    let mut h = Harness::new();
    h.recv(&invite("z9hG4bKdr1", "dr1", OFFER));
    h.ep.set_draining(true);
    h.recv(&invite("z9hG4bKdr2", "dr2", OFFER));
    let refused = h.responses().pop().unwrap().1;
    assert_eq!(refused.code, 503);
    assert_eq!(refused.headers.get("Retry-After"), Some("60"));
    assert!(refused.headers.get("Warning").unwrap().contains("draining"));
    let options = probe(&mut h, "z9hG4bKdrO");
    assert_eq!(options.code, 503);
    assert!(options.headers.get("Warning").unwrap().contains("draining"));
    assert_eq!(h.ep.active_calls(), 1);
    assert_eq!(h.ep.stats().refused(Refusal::Draining), 1);
    h.ep.set_draining(false);
    assert_eq!(probe(&mut h, "z9hG4bKdrO2").code, 200);
}

#[test]
fn sources_outside_the_allowed_networks_get_403_or_nothing() {
    use mohd::dialplan::Cidr;
    use mohd::sip::endpoint::AccessPolicy;
    for reject in [true, false] {
        let mut h = Harness::with(EndpointConfig {
            access: AccessPolicy {
                allow: vec![Cidr::parse("10.0.0.0/8").unwrap()],
                reject_denied: reject,
                ..AccessPolicy::default()
            },
            ..EndpointConfig::default()
        });
        h.recv(&invite("z9hG4bKacl", "acl1", OFFER));
        if reject {
            assert_eq!(h.codes(), vec![403]);
        } else {
            assert!(h.sent.is_empty());
        }
        assert_eq!(h.incoming(), 0);
        assert_eq!(h.ep.stats().denied, 1);
    }
    // The allowed network gets through.
    let mut h = Harness::with(EndpointConfig {
        access: AccessPolicy {
            allow: vec![Cidr::parse("192.0.2.0/24").unwrap()],
            ..AccessPolicy::default()
        },
        ..EndpointConfig::default()
    });
    h.recv(&invite("z9hG4bKacl2", "acl2", OFFER));
    assert_eq!(h.codes(), vec![100, 200]);
}

#[test]
fn a_flooding_source_is_rate_limited_and_memory_stays_bounded() {
    use mohd::sip::endpoint::AccessPolicy;
    let mut h = Harness::with(EndpointConfig {
        access: AccessPolicy {
            rate_per_source: 10,
            burst: 20,
            ..AccessPolicy::default()
        },
        max_transactions: 1_000,
        ..EndpointConfig::default()
    });
    for i in 0..500 {
        h.recv(&invite(&format!("z9hG4bKfl{i}"), &format!("fl{i}"), OFFER));
    }
    assert_eq!(h.incoming(), 20, "only the burst got through");
    assert_eq!(h.ep.stats().rate_limited, 480);
    // A second later the bucket has refilled by the rate.
    h.advance(Duration::from_secs(1));
    for i in 0..50 {
        h.recv(&invite(&format!("z9hG4bKfm{i}"), &format!("fm{i}"), OFFER));
    }
    assert_eq!(h.incoming(), 30);
    assert!(h.ep.open_transactions() <= 1_000);
}

/// RFC 3261 keeps every call's INVITE transaction (Accepted, RFC 6026) and its BYE's (Timer J)
/// 64×T1 = 32 s after their answers, so a steady churn of r calls/s keeps some 64 × r answered
/// transactions in the table: 32,000 at 500 calls/s against the default cap of 16,384. Those
/// only absorb retransmissions; when the table is full the oldest of them must make room.
/// Dropping the new request instead stalled benches/setup_rate.sh at 500 calls/s from its
/// 17th second until the first transactions expired at 32 s (INVITE→200 p99 19.5 s).
#[test]
fn a_steady_call_rate_is_answered_when_answered_transactions_fill_the_table() {
    use mohd::sip::endpoint::AccessPolicy;
    let cap = 200;
    let mut h = Harness::with(EndpointConfig {
        access: AccessPolicy {
            rate_per_source: 0,
            ..AccessPolicy::default()
        },
        max_transactions: cap,
        ..EndpointConfig::default()
    });
    // 20 calls a second for 30 s, each hung up a second after its answer: 40 transactions a
    // second would linger for 32 s, so the table is full after 5 s.
    let (calls, per_second, hold) = (600usize, 20usize, 20usize);
    let mut tags: Vec<Option<String>> = vec![None; calls];
    let mut bye_answers: Vec<Option<u16>> = vec![None; calls];
    let mut seen = 0;
    for i in 0..calls + hold {
        if i < calls {
            h.recv(&invite(&format!("z9hG4bKst{i}"), &format!("st{i}"), OFFER));
        }
        if let Some(j) = i.checked_sub(hold)
            && let Some(tag) = tags[j].clone()
        {
            h.recv(&in_dialog(
                "BYE",
                11,
                &format!("z9hG4bKsb{j}"),
                &format!("st{j}"),
                &tag,
                "",
            ));
        }
        // What this turn sent: the 200 to the INVITE (ACKed at once), the answer to the BYE.
        let new: Vec<Response> = h.sent[seen..]
            .iter()
            .filter_map(|(_, _, d)| match msg::parse(d) {
                Ok(Message::Response(r)) => Some(r),
                _ => None,
            })
            .collect();
        seen = h.sent.len();
        for r in new {
            let Some(k) = r
                .call_id()
                .and_then(|c| c.strip_prefix("st"))
                .and_then(|k| k.parse::<usize>().ok())
            else {
                continue;
            };
            match r.cseq().map(|c| c.1) {
                Some(msg::Method::Invite) if r.code == 200 && tags[k].is_none() => {
                    let tag = to_tag(&r);
                    h.recv(&in_dialog(
                        "ACK",
                        10,
                        &format!("z9hG4bKsa{k}"),
                        &format!("st{k}"),
                        &tag,
                        "",
                    ));
                    tags[k] = Some(tag);
                }
                Some(msg::Method::Bye) => bye_answers[k] = Some(r.code),
                _ => {}
            }
        }
        h.advance(Duration::from_secs(1) / per_second as u32);
        assert!(h.ep.open_transactions() <= cap);
    }
    let unanswered: Vec<usize> = (0..calls).filter(|k| tags[*k].is_none()).collect();
    assert!(
        unanswered.is_empty(),
        "{} of {calls} INVITEs never answered, the first at {:?}",
        unanswered.len(),
        unanswered
            .first()
            .map(|k| Duration::from_secs(1) * *k as u32 / per_second as u32)
    );
    assert!(
        bye_answers.iter().all(|a| *a == Some(200)),
        "every BYE answered 200: {:?}",
        bye_answers.iter().filter(|a| **a != Some(200)).count()
    );
    assert_eq!(h.started(), calls);
    assert_eq!(h.ended().len(), calls);
    assert_eq!(h.ep.active_calls(), 0);
}

/// `msg` as it arrives over TLS: its Via says so, `uri` is its Request-URI and `contact` its
/// Contact.
fn over_tls(msg: &str, uri: &str, contact: &str) -> String {
    let msg = msg.replace("SIP/2.0/UDP", "SIP/2.0/TLS");
    let (start, rest) = msg.split_once("\r\n").unwrap();
    let method = start.split(' ').next().unwrap();
    let rest = rest.replace(
        "Contact: <sip:pbx@192.0.2.50:5070>",
        &format!("Contact: {contact}"),
    );
    format!("{method} {uri} SIP/2.0\r\n{rest}")
}

fn final_ok(h: &Harness) -> Response {
    h.responses()
        .into_iter()
        .rev()
        .find(|(_, r)| r.code == 200)
        .unwrap()
        .1
}

/// Our Contact is `sips:` exactly when the INVITE's Request-URI, top Record-Route or Contact was
/// (RFC 3261 §12.1.1, §8.1.1.8); a `sip:` INVITE over TLS gets `sip:` with `transport=tls`,
/// which is what baresip can use (it ends a call whose 200 has a `sips:` Contact).
#[test]
fn our_contact_is_sips_only_when_the_invite_used_sips() {
    const TLS_CONTACT: &str = "<sip:pbx@192.0.2.50:5070;transport=tls>";
    let cases = [
        (
            "sip:moh@192.0.2.10:5060;transport=tls",
            TLS_CONTACT,
            "",
            "<sip:moh@192.0.2.10:5060;transport=tls>",
        ),
        (
            "sips:moh@192.0.2.10:5060",
            "<sips:pbx@192.0.2.50:5070>",
            "",
            "<sips:moh@192.0.2.10:5060>",
        ),
        (
            "sip:moh@192.0.2.10:5060;transport=tls",
            TLS_CONTACT,
            "Record-Route: <sips:192.0.2.60;lr>, <sip:192.0.2.61;lr>\r\n",
            "<sips:moh@192.0.2.10:5060>",
        ),
        (
            "sip:moh@192.0.2.10:5060;transport=tls",
            TLS_CONTACT,
            "Record-Route: <sip:192.0.2.60;lr;transport=tls>\r\n",
            "<sip:moh@192.0.2.10:5060;transport=tls>",
        ),
        (
            "sip:moh@192.0.2.10:5060;transport=tls",
            "<sips:pbx@192.0.2.50:5070>",
            "",
            "<sips:moh@192.0.2.10:5060>",
        ),
        // A user part that would need escaping is left out.
        (
            "sip:a%3Eb@192.0.2.10:5060;transport=tls",
            TLS_CONTACT,
            "",
            "<sip:192.0.2.10:5060;transport=tls>",
        ),
    ];
    for (uri, contact, record_route, ours) in cases {
        let mut h = Harness::new();
        let invite = with_headers(&invite("z9hG4bKtls1", "tls1", OFFER), record_route);
        h.recv_on(Transport::Tls, &over_tls(&invite, uri, contact));
        assert_eq!(h.codes(), vec![100, 200], "{uri} {contact} {record_route}");
        let ok = final_ok(&h);
        assert_eq!(
            ok.headers.get("Contact"),
            Some(ours),
            "{uri} {contact} {record_route}"
        );
    }
}

/// Over TLS, one Contact for the whole dialog (our 200s, our own requests), and our requests go
/// to the peer's Contact as given.
#[test]
fn a_tls_dialog_keeps_its_contact_and_targets_the_peers() {
    const OURS: &str = "<sip:moh@192.0.2.10:5060;transport=tls>";
    const THEIRS: &str = "sip:pbx@192.0.2.50:5070;transport=tls";
    let uri = "sip:moh@192.0.2.10:5060;transport=tls";
    let contact = format!("<{THEIRS}>");
    let mut h = Harness::new();
    // The peer allows UPDATE but does not do timers: we refresh, with UPDATE.
    let invite = with_headers(
        &invite("z9hG4bKtls2", "tls2", OFFER),
        "Session-Expires: 120\r\nAllow: INVITE, ACK, BYE, CANCEL, UPDATE\r\n",
    );
    h.recv_on(Transport::Tls, &over_tls(&invite, uri, &contact));
    let ok = final_ok(&h);
    assert_eq!(ok.headers.get("Contact"), Some(OURS));
    let tag = to_tag(&ok);
    let ack = in_dialog("ACK", 10, "z9hG4bKtlsack", "tls2", &tag, "");
    h.recv_on(
        Transport::Tls,
        &over_tls(&ack, "sip:moh@192.0.2.10:5060;transport=tls", &contact),
    );

    h.advance(Duration::from_secs(61));
    let updates = h.distinct_requests("UPDATE");
    assert_eq!(updates.len(), 1);
    let (_, update) = &updates[0];
    assert_eq!(update.uri, THEIRS);
    assert_eq!(update.headers.get("Contact"), Some(OURS));
    let update_ok = ok_to(update, "Session-Expires: 120;refresher=uas\r\n");
    h.recv_on(Transport::Tls, &update_ok);

    let reinvite = in_dialog("INVITE", 11, "z9hG4bKtls3", "tls2", &tag, OFFER);
    h.recv_on(
        Transport::Tls,
        &over_tls(&reinvite, "sip:moh@192.0.2.10:5060;transport=tls", &contact),
    );
    let reinvite_ok = final_ok(&h);
    assert_eq!(reinvite_ok.headers.get("CSeq"), Some("11 INVITE"));
    assert_eq!(reinvite_ok.headers.get("Contact"), Some(OURS));

    h.ep.hangup(h.now, CallId(1));
    h.drain();
    let byes = h.distinct_requests("BYE");
    assert_eq!(byes.len(), 1);
    assert_eq!(byes[0].1.uri, THEIRS);
}

// ---- SRTP (SDES) ------------------------------------------------------------------------

const KEY30: &str = "PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR";
/// 28 bytes: AEAD_AES_128_GCM's key and salt.
const KEY28: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGw==";

fn savp_offer(suite: &str) -> String {
    let key = if suite.starts_with("AEAD") {
        KEY28
    } else {
        KEY30
    };
    OFFER.replace("RTP/AVP", "RTP/SAVP").replace(
        "a=ptime:20",
        &format!("a=crypto:1 {suite} inline:{key}\r\na=ptime:20"),
    )
}

/// Our `a=crypto` value in a response body.
fn our_crypto(r: &Response) -> String {
    let body = String::from_utf8_lossy(&r.body).into_owned();
    body.lines()
        .find_map(|l| l.strip_prefix("a=crypto:"))
        .unwrap_or_else(|| panic!("no crypto line in {body}"))
        .to_string()
}

/// `invite` as a `sip:` INVITE over TLS.
fn recv_over_tls(h: &mut Harness, invite: &str) {
    let uri = "sip:moh@192.0.2.10:5061;transport=tls";
    let contact = "<sip:pbx@192.0.2.50:5070;transport=tls>";
    h.recv_on(Transport::Tls, &over_tls(invite, uri, contact));
}

fn srtp_harness(policy: mohd::sip::sdp::SrtpPolicy) -> Harness {
    let mut config = EndpointConfig::default();
    config.answer.srtp = policy;
    Harness::with(config)
}

#[test]
fn sdes_offer_is_answered_over_tls_with_a_fresh_key_per_call_and_refused_over_udp() {
    use mohd::sip::sdp::SrtpPolicy;
    let mut h = srtp_harness(SrtpPolicy::OfferAnswer);
    let offer = savp_offer("AES_CM_128_HMAC_SHA1_80");
    h.recv(&invite("z9hG4bKs1", "s1", &offer));
    let (_, r) = h.responses().pop().unwrap();
    assert_eq!(
        (r.code, r.headers.get("Warning")),
        (
            488,
            Some(
                "399 192.0.2.10:5060 \"SRTP keys (a=crypto) are accepted only from SIP over TLS\""
            )
        )
    );
    let mut keys = Vec::new();
    for call in ["s2", "s3"] {
        recv_over_tls(&mut h, &invite(&format!("z9hG4bK{call}"), call, &offer));
        let ok = final_ok(&h);
        assert!(String::from_utf8_lossy(&ok.body).contains("m=audio 40000 RTP/SAVP 0 101\r\n"));
        let crypto = our_crypto(&ok);
        assert!(
            crypto.starts_with("1 AES_CM_128_HMAC_SHA1_80 inline:"),
            "{crypto}"
        );
        keys.push(crypto);
    }
    assert_ne!(keys[0], keys[1], "each call has its own key");
    let started = media_of(&h, true);
    assert_eq!(started.len(), 2);
    assert!(started.iter().all(|m| m.srtp.is_some()));
    assert_ne!(started[0].srtp.unwrap().ours, started[1].srtp.unwrap().ours);
}

#[test]
fn srtp_over_plain_transports_when_configured() {
    let mut h = Harness::with(EndpointConfig {
        srtp_over_plain_transports: true,
        ..EndpointConfig::default()
    });
    h.recv(&invite("z9hG4bKp1", "p1", &savp_offer("AEAD_AES_128_GCM")));
    let ok = final_ok(&h);
    assert!(our_crypto(&ok).starts_with("1 AEAD_AES_128_GCM inline:"));
    assert_eq!(
        media_of(&h, true)[0].srtp.map(|s| s.suite),
        Some(mohd::rtp::srtp::SrtpSuite::AeadAes128Gcm)
    );
}

#[test]
fn reinvite_keeps_our_key_for_the_same_suite_and_renews_it_for_another() {
    let mut h = Harness::with(EndpointConfig {
        srtp_over_plain_transports: true,
        ..EndpointConfig::default()
    });
    h.recv(&invite(
        "z9hG4bKr1",
        "r1",
        &savp_offer("AES_CM_128_HMAC_SHA1_80"),
    ));
    let first = our_crypto(&final_ok(&h));
    let tag = to_tag(&h.responses()[1].1);
    h.recv(&in_dialog("ACK", 10, "z9hG4bKackr1", "r1", &tag, ""));
    let hold = savp_offer("AES_CM_128_HMAC_SHA1_80").replace("a=sendrecv", "a=sendonly");
    h.recv(&in_dialog("INVITE", 11, "z9hG4bKr2", "r1", &tag, &hold));
    assert_eq!(our_crypto(&final_ok(&h)), first, "same suite: same key");
    h.recv(&in_dialog("ACK", 11, "z9hG4bKackr2", "r1", &tag, ""));
    let other = savp_offer("AES_CM_128_HMAC_SHA1_32");
    h.recv(&in_dialog("INVITE", 12, "z9hG4bKr3", "r1", &tag, &other));
    let renewed = our_crypto(&final_ok(&h));
    assert!(
        renewed.starts_with("1 AES_CM_128_HMAC_SHA1_32 inline:"),
        "{renewed}"
    );
    assert_ne!(renewed[32..], first[32..], "another suite: another key");
    let updates = media_of(&h, false);
    assert_eq!(updates.len(), 2);
    assert_eq!(
        media_of(&h, true)[0].srtp.unwrap().ours,
        updates[0].srtp.unwrap().ours
    );
    assert_ne!(updates[0].srtp.unwrap().ours, updates[1].srtp.unwrap().ours);
}

#[test]
fn required_srtp_refuses_plain_offers_and_offers_savp_itself() {
    use mohd::sip::sdp::SrtpPolicy;
    let mut h = srtp_harness(SrtpPolicy::Required);
    h.recv(&invite("z9hG4bKq1", "q1", OFFER));
    let (_, r) = h.responses().pop().unwrap();
    assert_eq!(r.code, 488);
    assert!(
        r.headers
            .get("Warning")
            .is_some_and(|w| w.starts_with("302 ") && w.contains("requires SRTP")),
        "{:?}",
        r.headers.get("Warning")
    );
    // A late offer over UDP: our offer would have to carry keys in the clear.
    h.recv(&invite("z9hG4bKq2", "q2", ""));
    let (_, r) = h.responses().pop().unwrap();
    assert_eq!(r.code, 488);
    assert!(
        r.headers
            .get("Warning")
            .is_some_and(|w| w.starts_with("399 "))
    );
    // Over TLS: our offer is SRTP, and the ACK's answer picks one of our lines.
    recv_over_tls(&mut h, &invite("z9hG4bKq3", "q3", ""));
    let ok = final_ok(&h);
    let body = String::from_utf8_lossy(&ok.body).into_owned();
    assert!(body.contains(" RTP/SAVP "), "{body}");
    assert_eq!(body.matches("a=crypto:").count(), 3, "{body}");
    let tag80 = body
        .lines()
        .find_map(|l| {
            let v = l.strip_prefix("a=crypto:")?;
            v.contains("AES_CM_128_HMAC_SHA1_80")
                .then(|| v.split(' ').next().unwrap().to_string())
        })
        .unwrap();
    let answer = format!(
        "v=0\r\no=- 2 2 IN IP4 192.0.2.50\r\ns=-\r\nc=IN IP4 192.0.2.50\r\nt=0 0\r\nm=audio 30002 RTP/SAVP 0\r\na=crypto:{tag80} AES_CM_128_HMAC_SHA1_80 inline:{KEY30}\r\na=recvonly\r\n"
    );
    let ack = in_dialog("ACK", 10, "z9hG4bKackq3", "q3", &to_tag(&ok), &answer);
    h.recv_on(Transport::Tls, &ack.replace("SIP/2.0/UDP", "SIP/2.0/TLS"));
    let started = media_of(&h, true);
    assert_eq!(started.len(), 1, "{:?}", h.events);
    assert_eq!(
        started[0].srtp.map(|s| s.suite),
        Some(mohd::rtp::srtp::SrtpSuite::AesCm128HmacSha1_80)
    );
}
