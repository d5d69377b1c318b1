//! RFC 4475 SIP torture messages (tests/data/rfc4475, provenance in its README) through the
//! parser and the whole endpoint. Messages are fed from a made-up source on a virtual clock, so
//! nothing is ever sent anywhere; what the endpoint *would* send is checked instead.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use mohd::config::Config;
use mohd::sip::endpoint::{Endpoint, EndpointConfig, Event, Output};
use mohd::sip::msg::{self, Message};

fn fixtures() -> Vec<(String, String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/rfc4475");
    let index = std::fs::read_to_string(dir.join("INDEX.tsv")).unwrap();
    index
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split('\t');
            let (file, section) = (f.next()?, f.next()?);
            let data = std::fs::read(dir.join(file)).ok()?;
            Some((file.to_string(), section.to_string(), data))
        })
        .collect()
}

/// Feed one message; return the response codes the endpoint would send.
fn answer(data: &[u8]) -> Vec<u16> {
    let mut ep = Endpoint::new(
        EndpointConfig::default(),
        Config::embedded_default().dialplan,
        1,
    );
    let from: SocketAddr = "192.0.2.99:5060".parse().unwrap();
    let local: SocketAddr = "192.0.2.10:5060".parse().unwrap();
    let now = Instant::now();
    ep.handle_receive(now, from, local, data);
    let mut codes = Vec::new();
    while let Some(o) = ep.poll_output() {
        match o {
            Output::Transmit(t) => {
                // Responses only ever go back to where the request came from.
                assert_eq!(t.to.ip(), from.ip(), "sent to a third party");
                if let Ok(Message::Response(r)) = msg::parse(&t.data) {
                    codes.push(r.code);
                }
            }
            Output::Event(Event::IncomingCall { call, .. }) => {
                ep.accept(now, call, "192.0.2.10:40000".parse().unwrap());
            }
            Output::Event(_) => {}
        }
    }
    codes
}

#[test]
fn all_fixtures_are_present() {
    // RFC 4475's messages plus TC_TEST_I (see the README beside them).
    assert_eq!(fixtures().len(), 50);
}

#[test]
fn no_message_panics_the_parser_or_the_endpoint() {
    for (file, _, data) in fixtures() {
        let _ = msg::parse(&data);
        let _ = answer(&data);
        // And every truncation of it.
        for cut in (0..data.len()).step_by(7) {
            let _ = answer(&data[..cut]);
        }
        let _ = file;
    }
}

#[test]
fn valid_syntax_messages_parse() {
    let mut failures = Vec::new();
    for (file, section, data) in fixtures() {
        if section.starts_with("3.1.1") && msg::parse(&data).is_err() {
            failures.push(format!(
                "{file}: {:?}",
                msg::parse(&data).err().map(|e| e.kind)
            ));
        }
    }
    assert!(failures.is_empty(), "valid messages refused: {failures:#?}");
}

#[test]
fn invalid_syntax_messages_get_400_505_or_are_dropped() {
    let mut failures = Vec::new();
    for (file, section, data) in fixtures() {
        if !section.starts_with("3.1.2") {
            continue;
        }
        let codes = answer(&data);
        let ok = codes.is_empty() || codes.iter().all(|c| *c == 400 || *c == 505);
        if !ok {
            failures.push(format!("{file} ({section}): answered {codes:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "invalid messages accepted: {failures:#?}"
    );
}

/// What a music-on-hold UAS answers to each message (its final response; `None`: nothing,
/// e.g. for responses, which have no transaction here). Read against RFC 4475's text.
const EXPECTED: &[(&str, Option<u16>)] = &[
    ("TC_WSINV.dat", Some(481)), // a valid in-dialog INVITE for a dialog we do not have
    ("TC_INTMETH.dat", Some(501)), // unknown method, crazy but valid URI
    ("TC_ESC01_V.dat", Some(200)), // escaped characters: a normal INVITE
    ("TC_ESCNULL_V.dat", Some(405)), // REGISTER: not for a MOH server
    ("TC_ESC02_V.dat", Some(501)), // method with escapes is just an unknown method
    ("TC_LWSDISP_V.dat", Some(200)), // OPTIONS with odd whitespace
    ("TC_LONGREQ_V.dat", Some(200)), // very long values are fine
    ("TC_DBLREQ.dat", Some(405)), // first of two REGISTERs; the rest ignored
    ("TC_SEMIURI_V.dat", Some(200)), // ; in the user part
    ("TC_TRANSPORTS_V.dat", Some(200)), // unknown transports further down the Via
    ("TC_MPART01.dat", Some(405)),
    ("TC_UNREASON_V.dat", None), // responses
    ("TC_NOREASON_V.dat", None),
    ("TC_BADBRANCH_V.dat", Some(200)), // branch is just the magic cookie: still matched
    ("TC_INSUF_I.dat", Some(400)),     // missing mandatory headers
    ("TC_UNKSCM_V.dat", Some(416)),    // unknown Request-URI scheme
    ("TC_NOVELSC_V.dat", Some(416)),
    ("TC_UNKSM2_V.dat", Some(405)),
    ("TC_BEXT01_V.dat", Some(420)), // Require: unknown extension
    ("TC_INVUT_V.dat", Some(415)),  // body type we do not understand
    ("TC_REGAUT01_V.dat", Some(405)),
    ("TC_MULTI01_I.dat", Some(400)), // single-valued headers repeated
    ("TC_MCL01_I.dat", Some(400)),   // several Content-Lengths
    ("TC_BCAST_V.dat", None),        // a response
    ("TC_ZEROMF_V.dat", Some(200)),  // Max-Forwards 0: an endpoint processes it
    ("TC_CPARAM01_V.dat", Some(405)),
    ("TC_CPARAM02_V.dat", Some(405)),
    ("TC_REGESCRT_V.dat", Some(405)),
    ("TC_SDP01_V.dat", Some(406)), // Accept excludes the SDP we would answer with
    ("TC_INV2543_I.dat", Some(200)), // RFC 2543 INVITE: accepted
    ("TC_TEST_I.dat", None),       // not SIP: dropped
];

#[test]
fn each_message_gets_the_answer_rfc_4475_asks_for() {
    let all = fixtures();
    let mut wrong = Vec::new();
    for (file, expected) in EXPECTED {
        let (_, _, data) = all.iter().find(|(f, _, _)| f == file).expect(file);
        let got = answer(data).last().copied();
        if got != *expected {
            wrong.push(format!("{file}: expected {expected:?}, got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
