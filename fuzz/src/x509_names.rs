//! Fuzz target `x509_names`: `mohd::tls::certificate_names`, the hand-written DER reader that
//! gives a client certificate's names for pinning (`[sip.tls] client_names`).
//!
//! Never panics, never reads past its input; and wherever x509-parser (a full X.509 parser,
//! used here as the oracle only) reads the same bytes as a certificate with one well-formed
//! subjectAltName, mohd's names are exactly its SAN DNS names followed by its subject CNs.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::*;

/// The names x509-parser reads, in mohd's order; `None` where it cannot say (not a
/// certificate to it, or an extension it refuses).
pub fn oracle(der: &[u8]) -> Option<Vec<String>> {
    let (_, cert) = parse_x509_certificate(der).ok()?;
    if !name_is_well_tagged(cert.subject().as_raw()) || !extensions_are_well_tagged(der) {
        return None;
    }
    // A subjectAltName x509-parser could not read (a general name that is not UTF-8, say)
    // it reports as absent: then it cannot say which names are there.
    let unread_san = cert.extensions().iter().any(|e| {
        e.oid == x509_parser::oid_registry::OID_X509_EXT_SUBJECT_ALT_NAME
            && !matches!(
                e.parsed_extension(),
                ParsedExtension::SubjectAlternativeName(_)
            )
    });
    if unread_san {
        return None;
    }
    let mut names = Vec::new();
    if let Some(san) = cert.subject_alternative_name().ok()? {
        for name in &san.value.general_names {
            // x509-parser takes any UTF-8 (its comment: "many certificates are using unicode
            // characters"); mohd only ASCII, as RFC 5280 says (src/tls.rs).
            if let GeneralName::DNSName(dns) = name
                && dns.is_ascii()
            {
                names.push((*dns).to_string());
            }
        }
    }
    for cn in cert.subject().iter_common_name() {
        names.push(String::from_utf8_lossy(cn.attr_value().data).into_owned());
    }
    Some(names)
}

/// The DER elements one after another in `der`, up to the first that does not parse.
fn elements(mut der: &[u8]) -> impl Iterator<Item = x509_parser::asn1_rs::Any<'_>> {
    use x509_parser::asn1_rs::{Any, FromDer};
    std::iter::from_fn(move || {
        let (rest, any) = Any::from_der(der).ok()?;
        der = rest;
        Some(any)
    })
}

/// The DER elements of `der` when it is nothing but whole elements; `None` otherwise.
fn whole(der: &[u8]) -> Option<Vec<x509_parser::asn1_rs::Any<'_>>> {
    use x509_parser::asn1_rs::{Any, FromDer};
    let mut rest = der;
    let mut all = Vec::new();
    while !rest.is_empty() {
        let (after, any) = Any::from_der(rest).ok()?;
        all.push(any);
        rest = after;
    }
    Some(all)
}

/// Whether `a` is the universal-class element `tag`, constructed exactly when a SEQUENCE or
/// SET is (DER; asn1-rs checks neither class nor the constructed bit here).
fn universal(a: &x509_parser::asn1_rs::Any<'_>, tag: x509_parser::asn1_rs::Tag) -> bool {
    use x509_parser::asn1_rs::{Class, Tag};
    let constructed = tag == Tag::Sequence || tag == Tag::Set;
    a.header.class() == Class::Universal
        && a.tag() == tag
        && a.header.is_constructed() == constructed
}

/// Whether a Name's DER is tagged as X.501 says along the path both readers take: SETs of
/// SEQUENCEs whose first element is an OBJECT IDENTIFIER. asn1-rs 0.7 checks neither the tag
/// of an OID (`TryFrom<&Any> for Oid`) nor the class of most tags, so x509-parser finds a CN
/// whose type is tagged, say, 0x10; mohd's reader refuses it, rightly (X.690 DER). The oracle
/// says nothing about such a name (found by this target on 2026-12-07,
/// `fuzz/regressions/x509_names/subject-type-not-an-oid`).
fn name_is_well_tagged(name: &[u8]) -> bool {
    use x509_parser::asn1_rs::{Any, FromDer, Tag};
    let Ok((_, name)) = Any::from_der(name) else {
        return false;
    };
    elements(name.data).all(|set| {
        universal(&set, Tag::Set)
            && elements(set.data).all(|attribute| {
                // { type, value }, both whole DER elements: x509-parser makes an empty CN of
                // a value that does not parse (its `parse_malformed_string`; found 2026-12-07
                // with a tag byte 0xff), where mohd reads none.
                universal(&attribute, Tag::Sequence)
                    && matches!(whole(attribute.data).as_deref(),
                        Some([t, _value]) if universal(t, Tag::Oid))
            })
    })
}

/// Whether the certificate `der`'s extensions are tagged as RFC 5280 says along the path
/// both readers take: a context-specific `[3]` holding a SEQUENCE of SEQUENCE { OBJECT
/// IDENTIFIER, BOOLEAN (optional), OCTET STRING }, and a subjectAltName whose general names
/// are all context-specific. x509-parser reads through a wrong tag or class at each of these
/// places (this target found an extnID tagged 0x07, the `[3]` as 0x23 and an extnValue as
/// 0x44 on 2026-12-07, `fuzz/regressions/x509_names/`); mohd does not. True when there are no
/// extensions.
fn extensions_are_well_tagged(der: &[u8]) -> bool {
    use x509_parser::asn1_rs::{Any, FromDer, Tag};
    let Some(tbs) = Any::from_der(der)
        .ok()
        .and_then(|(_, cert)| elements(cert.data).next())
    else {
        return false;
    };
    // The version is a constructed `[0]` (0xa0); x509-parser takes a primitive one (0x80,
    // found 2026-12-07), where mohd then reads the fields one place off.
    if elements(tbs.data).next().is_some_and(|v| {
        v.header.is_contextspecific() && v.tag() == Tag(0) && !v.header.is_constructed()
    }) {
        return false;
    }
    // No field of the TBS itself has tag number 3 but the extensions' `[3]`.
    let Some(wrapper) = elements(tbs.data).find(|e| e.tag() == Tag(3)) else {
        return true;
    };
    // x509-parser takes one of any class (0x23, found 2026-12-07) or primitive (0x83, found
    // the same day) for it: about those, say nothing.
    if !wrapper.header.is_contextspecific() || !wrapper.header.is_constructed() {
        return false;
    }
    elements(wrapper.data).all(|list| {
        universal(&list, Tag::Sequence)
            && elements(list.data).all(|ext| {
                let parts: Vec<Any<'_>> = elements(ext.data).collect();
                let (id, value) = match parts.as_slice() {
                    [id, value] => (id, value),
                    [id, critical, value] if universal(critical, Tag::Boolean) => (id, value),
                    _ => return false,
                };
                let san = id.data == [0x55, 0x1d, 0x11];
                universal(&ext, Tag::Sequence)
                    && universal(id, Tag::Oid)
                    && universal(value, Tag::OctetString)
                    && (!san
                        || Any::from_der(value.data).is_ok_and(|(_, names)| {
                            // A dNSName is a primitive [2]; x509-parser takes a constructed one.
                            elements(names.data).all(|n| {
                                n.header.is_contextspecific()
                                    && (n.tag() != Tag(2) || !n.header.is_constructed())
                            })
                        }))
            })
    })
}

/// The target's body: panics when a check fails.
pub fn check(data: &[u8]) {
    let ours = mohd::tls::certificate_names(data);
    if let Some(names) = &ours {
        let total: usize = names.iter().map(String::len).sum();
        // Lossy UTF-8 may widen a byte to three; anything beyond that was invented.
        assert!(
            total <= data.len() * 3,
            "{total} bytes of names from {} bytes",
            data.len()
        );
    }
    // mohd may refuse DER that x509-parser reads leniently (an extensions list whose inner
    // length overruns its wrapper, found 2026-12-07): no names, so nothing is pinned. What it
    // must never do is read other names than x509-parser does. That it reads well-formed
    // certificates at all, the replay of the seeds checks (tests/fuzz_regressions.rs).
    if let (Some(expected), Some(ours)) = (oracle(data), &ours) {
        assert_eq!(ours, &expected, "mohd and x509-parser disagree");
    }
}
