//! Regression tests for what the cargo-fuzz targets in `fuzz/` found (see `fuzz/README.md`).
//! Each feeds the minimised input to the same public API the target drives, and asserts the
//! property the target checks, so it fails until the bug is fixed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mohd::config::Config;
use mohd::sip::endpoint::{Endpoint, EndpointConfig, Event, Output};
use mohd::sip::msg::{self, Message};

const PEER: &str = "192.0.2.50:5070";
const LOCAL: &str = "192.0.2.10:5060";
const LOCAL_RTP: &str = "192.0.2.10:40000";

/// The `endpoint` fuzz target's harness, reduced: every call is accepted, and every datagram
/// mohd sends is kept.
struct Harness {
    ep: Endpoint,
    now: Instant,
    sent: Vec<Vec<u8>>,
    calls: Vec<mohd::sip::endpoint::CallId>,
}

impl Harness {
    fn new() -> Self {
        let config = EndpointConfig {
            max_call_duration: Some(Duration::from_secs(60)),
            ..EndpointConfig::default()
        };
        Harness {
            ep: Endpoint::new(config, Config::embedded_default().dialplan, 7),
            now: Instant::now(),
            sent: Vec::new(),
            calls: Vec::new(),
        }
    }

    fn recv(&mut self, data: &[u8]) {
        let (peer, local): (SocketAddr, SocketAddr) =
            (PEER.parse().unwrap(), LOCAL.parse().unwrap());
        self.ep.handle_receive(self.now, peer, local, data);
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(out) = self.ep.poll_output() {
            match out {
                Output::Transmit(t) => self.sent.push(t.data),
                Output::Event(Event::IncomingCall { call, .. }) => {
                    self.calls.push(call);
                    self.ep.accept(self.now, call, LOCAL_RTP.parse().unwrap());
                }
                Output::Event(_) => {}
            }
        }
    }

    fn advance(&mut self, d: Duration) {
        let until = self.now + d;
        for _ in 0..10_000 {
            match self.ep.poll_timeout() {
                Some(at) if at <= until => {
                    self.now = self.now.max(at);
                    self.ep.handle_timeout(self.now);
                    self.drain();
                }
                _ => break,
            }
        }
        self.now = until;
        self.ep.handle_timeout(self.now);
        self.drain();
    }

    /// Our To tag, from the last response that has one.
    fn our_tag(&self) -> String {
        self.sent
            .iter()
            .rev()
            .filter_map(|d| match msg::parse(d) {
                Ok(Message::Response(r)) => r.to().and_then(|t| t.tag().map(str::to_string)),
                _ => None,
            })
            .next()
            .expect("a response with a To tag")
    }

    /// What the fuzz target asserts of every datagram mohd sends: it is SIP that parses.
    fn assert_all_sent_parse(&self) {
        assert!(!self.sent.is_empty());
        for d in &self.sent {
            if let Err(e) = msg::parse(d) {
                panic!(
                    "mohd sent a message that does not parse ({e}):\n{}",
                    String::from_utf8_lossy(d)
                );
            }
        }
    }
}

/// Found by `endpoint` (minimised with `cargo fuzz tmin`): the INVITE's Contact is `<i: 0>`,
/// a "URI" with a space inside the brackets. `NameAddr::parse` accepts it (it rejects only
/// whitespace at the ends), the dialog takes it as the remote target, and when Timer H ends the
/// unacknowledged call, our BYE's request line is `BYE i: 0 SIP/2.0`: four words, which no
/// SIP stack (ours included) parses. The peer never learns the call ended.
#[test]
fn fuzz_endpoint_contact_with_space_gives_unparseable_bye_raw() {
    let mut h = Harness::new();
    h.recv(b"INVITE sip:m SIP/2.0\nVia: SIP/2.0/DP 19\nF::>\nT::0\nCall-ID:1\nCSeq: 10 INVITE\r\nContact: <i: 0>\r");
    h.advance(Duration::from_secs(40));
    h.assert_all_sent_parse();
}

/// An INVITE with an SDP offer, as a PBX sends it.
const INVITE: &str = "INVITE sip:moh@192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.50:5070;branch=z9hG4bKc1;rport\r\nMax-Forwards: 70\r\nFrom: <sip:pbx@192.0.2.50>;tag=ft1\r\nTo: <sip:moh@192.0.2.10>\r\nCall-ID: c1\r\nCSeq: 10 INVITE\r\nContact: <sip:pbx@192.0.2.50:5070>\r\nContent-Type: application/sdp\r\nContent-Length: 104\r\n\r\nv=0\r\no=- 1 1 IN IP4 192.0.2.50\r\ns=-\r\nc=IN IP4 192.0.2.50\r\nt=0 0\r\nm=audio 30000 RTP/AVP 0 8\r\na=sendrecv\r\n";

/// A well-formed call whose INVITE has `contact` as its Contact: answered, ACKed, hung up by us.
/// Every datagram mohd sends, the BYE included, must parse. (Refusing the INVITE is a fix too.)
fn call_with_contact_then_hangup(contact: &str) {
    let mut h = Harness::new();
    let invite = INVITE.replace("<sip:pbx@192.0.2.50:5070>", contact);
    h.recv(invite.as_bytes());
    if let Some(&call) = h.calls.first() {
        let tag = h.our_tag();
        let ack = format!(
            "ACK sip:pbx@192.0.2.50:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.50:5070;branch=z9hG4bKa1;rport\r\nMax-Forwards: 70\r\nFrom: <sip:pbx@192.0.2.50>;tag=ft1\r\nTo: <sip:moh@192.0.2.10>;tag={tag}\r\nCall-ID: c1\r\nCSeq: 10 ACK\r\nContent-Length: 0\r\n\r\n"
        );
        h.recv(ack.as_bytes());
        let now = h.now;
        h.ep.hangup(now, call);
        h.drain();
    }
    h.assert_all_sent_parse();
}

/// The control: with an ordinary Contact the same call passes, so the tests below can pass.
#[test]
fn ordinary_contact_call_sends_only_parseable_messages() {
    call_with_contact_then_hangup("<sip:pbx@192.0.2.50:5070>");
}

/// The bug above in a well-formed call: `BYE sip:pbx @192.0.2.50:5070 SIP/2.0`.
#[test]
fn fuzz_endpoint_contact_with_space_gives_unparseable_bye() {
    call_with_contact_then_hangup("<sip:pbx @192.0.2.50:5070>");
}

/// Found by `endpoint` (same run, same check): a Contact of `<<sip:…>` is taken as the URI
/// `<sip:…`, and our BYE's request line is `BYE <sip:pbx@192.0.2.50:5070 SIP/2.0`, which
/// `msg::parse` refuses (a Request-URI starting with `<`, RFC 4475 §3.1.2.11).
#[test]
fn fuzz_endpoint_contact_with_double_bracket_gives_unparseable_bye() {
    call_with_contact_then_hangup("<<sip:pbx@192.0.2.50:5070>");
}

/// Found by `endpoint` (same run, same check): a Contact URI with a header part,
/// `<sip:pbx@192.0.2.50:5070?Subject=hold>`, is legal (RFC 3261 §19.1.1), but the dialog uses
/// it verbatim as the BYE's Request-URI, where headers are not allowed (§19.1.5; our own parser
/// refuses it). The `?…` part must be dropped from the remote target (§12.1.1, §19.1.5).
#[test]
fn fuzz_endpoint_contact_with_uri_headers_gives_unparseable_bye() {
    call_with_contact_then_hangup("<sip:pbx@192.0.2.50:5070?Subject=hold>");
}

/// Found while writing the `endpoint` target (a hand-made input fed to it, not the fuzzer): a
/// `Session-Expires` of 2^64-1 seconds is taken as is (RFC 4028 sets a floor, not a ceiling,
/// and mohd checks only the floor), and starting the session timer computes
/// `now + interval / 2`, which overflows `Instant` and panics inside `handle_receive`.
#[test]
fn huge_session_expires_does_not_panic() {
    let mut h = Harness::new();
    let invite = INVITE.replace(
        "Max-Forwards: 70\r\n",
        "Max-Forwards: 70\r\nSession-Expires: 18446744073709551615\r\n",
    );
    h.recv(invite.as_bytes());
    h.advance(Duration::from_secs(120));
    h.assert_all_sent_parse();
    assert_eq!(
        h.ep.active_calls(),
        0,
        "the unacknowledged call ends (Timer H, then max length)"
    );
}

/// Found while writing the `endpoint` target (a hand-made input fed to it; the target's
/// "no timer due now survives handle_timeout" check fired): when mohd is the session refresher
/// and the peer answers its refreshing UPDATE with `Session-Expires: 0`, the interval becomes
/// 0, the next refresh is due at once and stays due: `poll_timeout()` keeps returning `now`, so
/// the shell spins at 100% CPU, and a second UPDATE goes out in the same instant. RFC 4028 §4
/// puts the smallest interval at 90 s; a smaller one in a 2xx must not be taken as is.
#[test]
fn zero_session_expires_in_a_refresh_answer_does_not_spin() {
    let mut h = Harness::new();
    let invite = INVITE.replace(
        "Max-Forwards: 70\r\n",
        "Max-Forwards: 70\r\nSession-Expires: 90\r\nAllow: INVITE, ACK, BYE, CANCEL, UPDATE\r\n",
    );
    h.recv(invite.as_bytes());
    let tag = h.our_tag();
    let ack = format!(
        "ACK sip:pbx@192.0.2.50:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.50:5070;branch=z9hG4bKa1;rport\r\nMax-Forwards: 70\r\nFrom: <sip:pbx@192.0.2.50>;tag=ft1\r\nTo: <sip:moh@192.0.2.10>;tag={tag}\r\nCall-ID: c1\r\nCSeq: 10 ACK\r\nContent-Length: 0\r\n\r\n"
    );
    h.recv(ack.as_bytes());
    h.advance(Duration::from_secs(46)); // we refresh at half the interval: 45 s
    let updates = |h: &Harness| {
        h.sent
            .iter()
            .filter_map(|d| match msg::parse(d) {
                Ok(Message::Request(r)) if r.method == msg::Method::Update => Some(r),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let update = updates(&h).pop().expect("mohd refreshes with UPDATE");
    let mut ok = "SIP/2.0 200 OK\r\n".to_string();
    for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
        ok.push_str(&format!(
            "{name}: {}\r\n",
            update.headers.get(name).unwrap()
        ));
    }
    ok.push_str("Session-Expires: 0;refresher=uas\r\nContent-Length: 0\r\n\r\n");
    let before = updates(&h).len();
    h.recv(ok.as_bytes());
    let now = h.now;
    h.ep.handle_timeout(now);
    h.drain();
    assert!(
        h.ep.poll_timeout().is_none_or(|at| at > now),
        "a timer stays due at `now`: the shell would spin"
    );
    assert_eq!(
        updates(&h).len(),
        before,
        "no new refresh in the same instant"
    );
}

/// Every input kept for a target: its seeds and the crashes it found (`fuzz/regressions/`),
/// read as the target reads them.
fn corpus(target: &str) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = Vec::new();
    for dir in [
        root.join("seeds").join(target),
        root.join("regressions").join(target),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            out.push((path, data));
        }
    }
    out.sort();
    out
}

/// The `config` target's check: never panics, and an error names the file and a line that
/// exists.
#[test]
fn config_corpus_replays() {
    let inputs = corpus("config");
    assert!(inputs.len() >= 3, "{inputs:?}");
    for (path, data) in inputs {
        let Ok(text) = std::str::from_utf8(&data) else {
            continue;
        };
        match Config::from_str(text, std::path::Path::new("/nonexistent/mohd.toml")) {
            Ok(config) => {
                for channel in config.dialplan.channels() {
                    assert!(config.channels.contains_key(channel), "{path:?}: {channel}");
                }
            }
            Err(e) => {
                assert!(e.to_string().contains("mohd.toml"), "{path:?}: {e}");
                if let Some(line) = e.line() {
                    assert!(
                        line >= 1 && line <= text.lines().count() + 1,
                        "{path:?}: {e}"
                    );
                }
            }
        }
    }
}

/// The `upload_name` target's check: an accepted name is one plain path component with an
/// audio extension.
#[test]
fn upload_name_corpus_replays() {
    use std::path::{Component, Path};
    let inputs = corpus("upload_name");
    assert!(inputs.len() >= 5, "{inputs:?}");
    let mut accepted = 0;
    for (path, data) in inputs {
        let Ok(name) = std::str::from_utf8(&data) else {
            continue;
        };
        if mohd::library::validate_name(name).is_err() {
            continue;
        }
        accepted += 1;
        let components: Vec<Component> = Path::new(name).components().collect();
        assert!(
            matches!(components.as_slice(), [Component::Normal(_)]),
            "{path:?}: {components:?}"
        );
        assert!(
            !name.starts_with('.') && !name.contains(['/', '\\']),
            "{path:?}"
        );
    }
    assert!(accepted >= 1);
}

/// The `api_json` target's check on its channel bodies: what is accepted prints as JSON that
/// reads back to the same value.
#[test]
fn api_json_corpus_replays() {
    use mohd::web::backend::ChannelInput;
    for (path, data) in corpus("api_json") {
        let Some((&which, body)) = data.split_first() else {
            continue;
        };
        if which % 3 != 0 {
            continue;
        }
        let Ok(value) = serde_json::from_slice::<ChannelInput>(body) else {
            continue;
        };
        let printed = serde_json::to_vec(&value).unwrap();
        let again: ChannelInput = serde_json::from_slice(&printed).unwrap();
        assert_eq!(again, value, "{path:?}");
    }
}

/// The names x509-parser reads from `der`, in mohd's order (SAN DNS names, then subject CNs);
/// `None` where it cannot say. The `x509_names` target's oracle.
fn x509_parser_names(der: &[u8]) -> Option<Vec<String>> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut names = Vec::new();
    if let Some(san) = cert.subject_alternative_name().ok()? {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push((*dns).to_string());
            }
        }
    }
    for cn in cert.subject().iter_common_name() {
        names.push(String::from_utf8_lossy(cn.attr_value().data).into_owned());
    }
    Some(names)
}

/// The `x509_names` target's check: mohd's certificate-name reader agrees with x509-parser on
/// every certificate of the corpus (OpenSSL-made: SAN and CN, CN only, a v1 certificate with
/// two CNs, SAN without CN), and every truncation of them neither panics nor invents names.
#[test]
fn x509_names_corpus_replays_against_x509_parser() {
    let inputs = corpus("x509_names");
    assert!(inputs.len() >= 4, "{inputs:?}");
    for (path, der) in inputs {
        let expected = x509_parser_names(&der);
        let ours = mohd::tls::certificate_names(&der);
        if let Some(expected) = &expected {
            assert_eq!(ours.as_ref(), Some(expected), "{path:?}");
        }
        for cut in 0..der.len() {
            if let Some(names) = mohd::tls::certificate_names(&der[..cut]) {
                let total: usize = names.iter().map(String::len).sum();
                assert!(total <= cut * 3, "{path:?} cut at {cut}");
            }
        }
    }
}
