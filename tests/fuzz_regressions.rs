//! The fuzz targets' kept inputs, replayed by `cargo test`: every target's seeds
//! (`fuzz/seeds/<target>/`), the crashes it found (`fuzz/regressions/<target>/`, minimised)
//! and its minimised corpus (`fuzz/corpus-min/<target>/`, when committed) go through the
//! target's own checks (`fuzz/src/<target>.rs`, the same code the fuzzer runs). Then the
//! findings as hand-written tests: each feeds the minimised input to the same harness and
//! asserts the property the target checks, so it fails until the bug is fixed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mohd::sip::msg::{self, Message};

/// The targets' bodies (`fuzz/src/lib.rs`), compiled into this test.
#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod fuzz;

use fuzz::endpoint::Harness;

/// Our To tag, from the last response that had one.
fn our_tag(h: &Harness) -> String {
    h.last_tag.clone().expect("a response with a To tag")
}

/// What the target asserts of every datagram mohd sends is checked as they are sent (they
/// parse as SIP); this adds that something was sent at all.
fn assert_sent_something(h: &Harness) {
    assert!(!h.sent.is_empty(), "mohd sent nothing");
}

/// Found by `endpoint` (minimised with `cargo fuzz tmin`): the INVITE's Contact is `<i: 0>`,
/// a "URI" with a space inside the brackets. `NameAddr::parse` accepts it (it rejects only
/// whitespace at the ends), the dialog takes it as the remote target, and when Timer H ends the
/// unacknowledged call, our BYE's request line is `BYE i: 0 SIP/2.0`: four words, which no
/// SIP stack (ours included) parses. The peer never learns the call ended.
#[test]
fn fuzz_endpoint_contact_with_space_gives_unparseable_bye_raw() {
    let mut h = Harness::new(Duration::ZERO);
    h.deliver(b"INVITE sip:m SIP/2.0\nVia: SIP/2.0/DP 19\nF::>\nT::0\nCall-ID:1\nCSeq: 10 INVITE\r\nContact: <i: 0>\r");
    h.advance(Duration::from_secs(40));
    assert_sent_something(&h);
}

/// An INVITE with an SDP offer, as a PBX sends it.
const INVITE: &str = "INVITE sip:moh@192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.50:5070;branch=z9hG4bKc1;rport\r\nMax-Forwards: 70\r\nFrom: <sip:pbx@192.0.2.50>;tag=ft1\r\nTo: <sip:moh@192.0.2.10>\r\nCall-ID: c1\r\nCSeq: 10 INVITE\r\nContact: <sip:pbx@192.0.2.50:5070>\r\nContent-Type: application/sdp\r\nContent-Length: 104\r\n\r\nv=0\r\no=- 1 1 IN IP4 192.0.2.50\r\ns=-\r\nc=IN IP4 192.0.2.50\r\nt=0 0\r\nm=audio 30000 RTP/AVP 0 8\r\na=sendrecv\r\n";

/// A well-formed call whose INVITE has `contact` as its Contact: answered, ACKed, hung up by us.
/// Every datagram mohd sends, the BYE included, must parse. (Refusing the INVITE is a fix too.)
fn call_with_contact_then_hangup(contact: &str) {
    let mut h = Harness::new(Duration::ZERO);
    let invite = INVITE.replace("<sip:pbx@192.0.2.50:5070>", contact);
    h.deliver(invite.as_bytes());
    if let Some(&call) = h.calls.first() {
        let tag = our_tag(&h);
        let ack = format!(
            "ACK sip:pbx@192.0.2.50:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.50:5070;branch=z9hG4bKa1;rport\r\nMax-Forwards: 70\r\nFrom: <sip:pbx@192.0.2.50>;tag=ft1\r\nTo: <sip:moh@192.0.2.10>;tag={tag}\r\nCall-ID: c1\r\nCSeq: 10 ACK\r\nContent-Length: 0\r\n\r\n"
        );
        h.deliver(ack.as_bytes());
        let now = h.now;
        h.ep.hangup(now, call);
        h.drain();
    }
    assert_sent_something(&h);
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
    let mut h = Harness::new(Duration::ZERO);
    let invite = INVITE.replace(
        "Max-Forwards: 70\r\n",
        "Max-Forwards: 70\r\nSession-Expires: 18446744073709551615\r\n",
    );
    h.deliver(invite.as_bytes());
    h.advance(Duration::from_secs(120));
    assert_sent_something(&h);
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
    let mut h = Harness::new(Duration::ZERO);
    let invite = INVITE.replace(
        "Max-Forwards: 70\r\n",
        "Max-Forwards: 70\r\nSession-Expires: 90\r\nAllow: INVITE, ACK, BYE, CANCEL, UPDATE\r\n",
    );
    h.deliver(invite.as_bytes());
    let tag = our_tag(&h);
    let ack = format!(
        "ACK sip:pbx@192.0.2.50:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.50:5070;branch=z9hG4bKa1;rport\r\nMax-Forwards: 70\r\nFrom: <sip:pbx@192.0.2.50>;tag=ft1\r\nTo: <sip:moh@192.0.2.10>;tag={tag}\r\nCall-ID: c1\r\nCSeq: 10 ACK\r\nContent-Length: 0\r\n\r\n"
    );
    h.deliver(ack.as_bytes());
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
    h.deliver(ok.as_bytes());
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

/// Where each target's kept inputs are: the seeds, the crashes found (minimised) and the
/// minimised corpus of the runs, when committed.
const KEPT: [&str; 3] = ["seeds", "regressions", "corpus-min"];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Every input kept for `target`, in `fuzz/{seeds,regressions,corpus-min}/<target>/`.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for kept in KEPT {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(kept).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_file() {
                let data = std::fs::read(&path).unwrap();
                out.push((path, data));
            }
        }
    }
    out.sort();
    out
}

/// Runs `check` (a target's body) on every input kept for `target` and on `also`'s, naming
/// the file that fails; at least `min` inputs (the seeds committed today).
fn replay(target: &str, also: &[&str], min: usize, check: fn(&[u8])) {
    let mut inputs = corpus(target);
    for other in also {
        inputs.extend(corpus(other));
    }
    assert!(inputs.len() >= min, "{target}: {} inputs", inputs.len());
    for (path, data) in inputs {
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            panic!("the {target} target's checks fail on {}", path.display());
        }
    }
}

/// One test per target, `test: target (+ another target whose inputs it also gets), at
/// least this many inputs, its check`.
macro_rules! replays {
    ($($test:ident: $target:literal $(+ $also:literal)?, $min:literal, $check:path;)*) => {$(
        #[test]
        fn $test() {
            replay($target, &[$($also)?], $min, $check);
        }
    )*};
}

replays! {
    sip_msg_corpus_replays: "sip_msg", 60, fuzz::sip_msg::check;
    sdp_corpus_replays: "sdp", 27, fuzz::sdp::check;
    sdp_crypto_corpus_replays: "sdp_crypto", 3, fuzz::sdp_crypto::check;
    // With the `sip_msg` inputs too, as the fuzzer is run (fuzz/README.md).
    endpoint_corpus_replays: "endpoint" + "sip_msg", 80, fuzz::endpoint::check;
    config_corpus_replays: "config", 4, fuzz::config::check;
    dialplan_corpus_replays: "dialplan", 2, fuzz::dialplan::check;
    api_json_corpus_replays: "api_json", 3, fuzz::api_json::check;
}

#[test]
fn upload_name_corpus_replays() {
    replay("upload_name", &[], 5, fuzz::upload_name::check);
    // The checks on an accepted name ran: some seed is one.
    let accepted = (corpus("upload_name").iter())
        .filter_map(|(_, name)| std::str::from_utf8(name).ok())
        .filter(|name| mohd::library::validate_name(name).is_ok())
        .count();
    assert!(accepted >= 1);
}

/// The certificates of the corpus (OpenSSL-made: SAN and CN, CN only, a v1 certificate with
/// two CNs, SAN without CN) and every truncation of them: mohd's certificate-name reader
/// agrees with x509-parser wherever x509-parser reads one, and never invents names.
#[test]
fn x509_names_corpus_replays_against_x509_parser() {
    replay("x509_names", &[], 4, |der| {
        for cut in 0..=der.len() {
            fuzz::x509_names::check(&der[..cut]);
        }
    });
    // The comparison ran: x509-parser reads every seed whole (the regressions are malformed
    // on purpose).
    for (path, der) in corpus("x509_names")
        .into_iter()
        .filter(|(path, _)| !path.starts_with(fuzz_dir().join("regressions")))
    {
        assert!(
            fuzz::x509_names::oracle(&der).is_some(),
            "{}",
            path.display()
        );
        assert!(
            mohd::tls::certificate_names(&der).is_some(),
            "mohd reads {}",
            path.display()
        );
    }
}

/// Found by the `x509_names` target: a subject whose attribute type is tagged 0x10, not OBJECT
/// IDENTIFIER, with the bytes of commonName after it. x509-parser reads a CN there (asn1-rs
/// does not check an OID's tag); mohd reads the certificate and pins no name from it.
#[test]
fn a_subject_attribute_not_tagged_as_an_oid_gives_no_name() {
    let der = std::fs::read(fuzz_dir().join("regressions/x509_names/subject-type-not-an-oid"))
        .expect("kept input");
    assert_eq!(
        mohd::tls::certificate_names(&der),
        Some(Vec::new()),
        "no name from a malformed attribute"
    );
    assert_eq!(
        fuzz::x509_names::oracle(&der),
        None,
        "the oracle says nothing about it"
    );
}

/// Found by the `x509_names` target: the subjectAltName's extnID tagged 0x07, not OBJECT
/// IDENTIFIER, its extnValue tagged 0x44, not OCTET STRING, and the extensions' wrapper tagged
/// 0x23, not `[3]`. x509-parser reads a SAN through each (asn1-rs checks neither an OID's tag
/// nor most tags' class); mohd pins no name from them.
#[test]
fn extensions_tagged_wrongly_give_no_san_names() {
    let der = std::fs::read(fuzz_dir().join("regressions/x509_names/san-id-not-an-oid"))
        .expect("kept input");
    let names = mohd::tls::certificate_names(&der).expect("a certificate");
    assert!(!names.iter().any(|n| n == "pbx2.example.com"), "{names:?}");
    assert_eq!(
        fuzz::x509_names::oracle(&der),
        None,
        "the oracle says nothing"
    );
    // The subjectAltName's extnValue tagged 0x44 (application class) instead of OCTET STRING.
    let der =
        std::fs::read(fuzz_dir().join("regressions/x509_names/san-value-not-an-octet-string"))
            .expect("kept input");
    let names = mohd::tls::certificate_names(&der).expect("a certificate");
    assert!(!names.iter().any(|n| n == "pbx2.example.com"), "{names:?}");
    assert_eq!(fuzz::x509_names::oracle(&der), None);
    // The extensions' wrapper primitive, 0x83, not constructed `[3]` (0xa3).
    let der = std::fs::read(fuzz_dir().join("regressions/x509_names/extensions-primitive"))
        .expect("kept input");
    assert_eq!(mohd::tls::certificate_names(&der), Some(Vec::new()));
    assert_eq!(fuzz::x509_names::oracle(&der), None);
    // The extensions' wrapper tagged 0x23 (universal) instead of `[3]` (0xa3): x509-parser
    // reads the SAN through it, mohd does not, and pins only the subject's CN.
    let der =
        std::fs::read(fuzz_dir().join("regressions/x509_names/extensions-not-context-specific"))
            .expect("kept input");
    assert_eq!(
        mohd::tls::certificate_names(&der),
        Some(vec!["pbx.example.com".to_string()])
    );
    assert_eq!(
        fuzz::x509_names::oracle(&der),
        None,
        "the oracle says nothing"
    );
}

/// Found by the `x509_names` target: a subjectAltName whose dNSName has bytes that are not
/// ASCII (`only-sa\xeb\x07example`, and a crafted `only-saéexample` in valid UTF-8). A dNSName
/// is an IA5String: mohd pins nothing from such a name (it read `only-sa\u{fffd}\u{7}example`
/// before, and two different names could have read alike).
#[test]
fn a_dns_name_that_is_not_ascii_gives_no_name() {
    for kept in ["san-dns-name-not-ascii", "san-dns-name-utf8"] {
        let der = std::fs::read(fuzz_dir().join("regressions/x509_names").join(kept))
            .expect("kept input");
        let names = mohd::tls::certificate_names(&der).expect("a certificate");
        assert!(
            names.iter().all(|n| !n.contains("only-sa")),
            "{kept}: {names:?}"
        );
    }
}

/// Found by the `x509_names` target: the extensions' SEQUENCE claims 81 bytes inside an
/// `[3]` wrapper of 81 (two short). x509-parser reads the certificate anyway and gives its CN;
/// mohd refuses the DER, so a pinned name cannot match it: safe, and now what the target
/// allows (mohd may refuse more than x509-parser, never read other names).
#[test]
fn a_length_that_overruns_its_container_gives_no_names() {
    let der = std::fs::read(fuzz_dir().join("regressions/x509_names/extensions-length-overruns"))
        .expect("kept input");
    assert_eq!(mohd::tls::certificate_names(&der), None);
    assert_eq!(
        fuzz::x509_names::oracle(&der),
        Some(vec!["cn-only".to_string()])
    );
    // The same one level up: the extensions' own length overruns the TBS. mohd read the
    // fields before it and skipped the extensions, reading no names (`Some([])`) where
    // x509-parser reads the SAN; now the DER is no certificate to it either.
    // (Its subject is malformed too, so the oracle, stricter since, says nothing about it.)
    let der = std::fs::read(fuzz_dir().join("regressions/x509_names/tbs-last-field-overruns"))
        .expect("kept input");
    assert_eq!(mohd::tls::certificate_names(&der), None);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("x509-parser reads it");
    let san = cert.subject_alternative_name().ok().flatten();
    assert!(
        san.is_some(),
        "x509-parser reads the SAN through the overrun"
    );
}

/// Found by the `x509_names` target: the subject's CN value starts with the tag byte 0xff and
/// does not parse. x509-parser makes an empty CN of it; mohd reads no name.
#[test]
fn a_cn_value_that_is_not_der_gives_no_name() {
    let der = std::fs::read(fuzz_dir().join("regressions/x509_names/cn-value-not-der"))
        .expect("kept input");
    assert_eq!(mohd::tls::certificate_names(&der), Some(Vec::new()));
    assert_eq!(fuzz::x509_names::oracle(&der), None);
    // The version tagged 0x80 (primitive `[0]`) instead of 0xa0: x509-parser reads it as the
    // version; mohd does not, so it takes the fields one place off and reads no CN.
    let der = std::fs::read(fuzz_dir().join("regressions/x509_names/version-primitive"))
        .expect("kept input");
    assert_eq!(mohd::tls::certificate_names(&der), Some(Vec::new()));
    assert_eq!(fuzz::x509_names::oracle(&der), None);
}

/// A target added to `fuzz/fuzz_targets/` without a replay above would keep its finds out of
/// `cargo test`.
#[test]
fn every_fuzz_target_is_replayed() {
    let this = include_str!("fuzz_regressions.rs");
    let mut targets: Vec<String> = std::fs::read_dir(fuzz_dir().join("fuzz_targets"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_owned()))
        .collect();
    targets.sort();
    assert_eq!(targets.len(), 9, "{targets:?}");
    for target in targets {
        let test = format!("{target}_corpus_replays");
        assert!(this.contains(&test), "no `{test}` for fuzz target {target}");
        assert!(
            fuzz_dir().join("seeds").join(&target).is_dir(),
            "no seeds for {target}"
        );
    }
}
