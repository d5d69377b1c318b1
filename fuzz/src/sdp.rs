//! Fuzz target `sdp`: `mohd::sip::sdp::parse_bytes` on one body, every fmtp read as Opus's
//! (`OpusFmtp::parse`), then offer/answer.
//!
//! When the body parses as an offer, `answer` must not panic for any of a few local setups,
//! and an answer it gives must be CRLF text that parses again, mirrors every m-line, accepts
//! exactly one (on our port, with the codec and payload type it reports) and asks for a ptime
//! the RTP side can send; when it is SRTP, it carries exactly one `a=crypto` line, which reads
//! back as the suite and our key the media thread gets. Two of the setups take SDES keys (one
//! requiring SRTP), so the offer's `a=crypto` lines are parsed. Reading the body as an answer to
//! our own offer (plain, and SRTP) must not panic either.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use mohd::codec::Codec;
use mohd::codec::opus::OpusFmtp;
use mohd::sip::sdes::CryptoLine;
use mohd::sip::sdp::{self, AnswerOptions, LocalMedia, SrtpKeySeed, SrtpPolicy};

/// The offerer's signalling address.
const PEER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)), 5060);

/// Over TLS, with our key 0x00, 0x01, …
fn sdes(srtp: SrtpPolicy) -> AnswerOptions {
    AnswerOptions {
        srtp,
        sdes_allowed: true,
        srtp_key: SrtpKeySeed(std::array::from_fn(|i| i as u8)),
        ..AnswerOptions::default()
    }
}

fn locals() -> [LocalMedia; 4] {
    [
        LocalMedia {
            ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
            rtp_port: 40000,
            session_id: 1,
            session_version: 1,
            codecs: Codec::ALL.to_vec(),
            username: "mohd".to_string(),
            answer: sdes(SrtpPolicy::OfferAnswer),
        },
        LocalMedia {
            ip: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 10)),
            rtp_port: 40002,
            session_id: u64::MAX,
            session_version: u64::MAX,
            codecs: vec![Codec::Pcma],
            username: "a b\r\nc".to_string(),
            answer: AnswerOptions::default(),
        },
        LocalMedia {
            ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
            rtp_port: 9,
            session_id: 0,
            session_version: 0,
            codecs: vec![Codec::Opus, Codec::G722, Codec::Pcmu],
            username: String::new(),
            answer: AnswerOptions {
                prefer_own_order: true,
                opus_bitrate: 6000,
                ..sdes(SrtpPolicy::Required)
            },
        },
        LocalMedia {
            ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
            rtp_port: 9,
            session_id: 0,
            session_version: 0,
            codecs: Vec::new(),
            username: String::new(),
            answer: AnswerOptions::default(),
        },
    ]
}

/// The target's body: panics when a check fails.
pub fn check(data: &[u8]) {
    let Ok(offer) = sdp::parse_bytes(data) else {
        return;
    };
    // Every fmtp read as Opus's: never panics, and what it yields prints and reads back the same.
    for fmtp in offer.media.iter().flat_map(|m| &m.fmtps) {
        let opus = OpusFmtp::parse(&fmtp.params);
        assert_eq!(
            OpusFmtp::parse(&opus.to_string()),
            opus,
            "{:?}",
            fmtp.params
        );
    }
    for local in locals() {
        let Ok((text, neg)) = sdp::answer(&offer, &local, PEER) else {
            continue;
        };
        assert!(
            text.ends_with("\r\n"),
            "answer not CRLF-terminated: {text:?}"
        );
        assert_eq!(
            text.matches('\n').count(),
            text.matches("\r\n").count(),
            "bare LF in the answer: {text:?}"
        );
        let ans = match sdp::parse(&text) {
            Ok(a) => a,
            Err(e) => panic!("our answer does not parse ({e}): {text:?}"),
        };
        assert_eq!(ans.media.len(), offer.media.len(), "every m-line mirrored");
        let accepted: Vec<_> = ans.media.iter().filter(|m| m.port != 0).collect();
        assert_eq!(accepted.len(), 1, "exactly one stream accepted: {text:?}");
        let m = accepted[0];
        assert_eq!(m.port, local.rtp_port);
        assert_eq!(
            m.formats.first().map(String::as_str),
            Some(neg.payload_type.to_string().as_str())
        );
        let allowed = if local.codecs.is_empty() {
            Codec::ALL.to_vec()
        } else {
            local.codecs.clone()
        };
        assert!(allowed.contains(&neg.codec), "{:?} not ours", neg.codec);
        assert!(
            (10..=60).contains(&neg.ptime_ms) && neg.ptime_ms % 10 == 0,
            "ptime {}",
            neg.ptime_ms
        );
        assert_eq!(ans.connection, Some(local.ip));
        let crypto: Vec<_> = m.attributes.iter().filter(|a| a.name == "crypto").collect();
        match neg.srtp {
            None => assert!(crypto.is_empty(), "{text:?}"),
            Some(srtp) => {
                assert_eq!(crypto.len(), 1, "{text:?}");
                let line = CryptoLine::parse(crypto[0].value.as_deref().unwrap_or_default())
                    .unwrap_or_else(|e| panic!("our crypto line does not parse ({e}): {text:?}"));
                assert_eq!((line.suite, line.key), (srtp.suite, srtp.ours));
            }
        }
    }
    let _ = sdp::negotiate_answer(&Codec::ALL, &offer, PEER);
    let [_, _, required, _] = locals();
    let _ = sdp::negotiate_answer_to(&required, &offer, PEER);
}
