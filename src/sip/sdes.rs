//! SDES key exchange (RFC 4568): the `a=crypto` attribute of an `RTP/SAVP` m-line.
//!
//! Owns parsing one attribute value (`<tag> <suite> inline:<base64 key‖salt>[|lifetime][|MKI:len]
//! [session-params]`) into a typed [`CryptoLine`], choosing the first line of an offer mohd can
//! honour (in the offer's order, RFC 4568 §7.1.1), writing our answer line (same tag and
//! suite, our own fresh key), reading the answer to an offer mohd made, and generating keys
//! from a caller-given cryptographic RNG.
//!
//! What mohd cannot honour refuses the line, never the whole offer: an MKI (several master
//! keys selected per packet; unsupported, so any MKI and any second key), a lifetime above
//! SRTP's 2^48 packets, a key derivation rate, and session parameters that turn protection
//! off (`UNENCRYPTED_SRTP`, `UNENCRYPTED_SRTCP`, `UNAUTHENTICATED_SRTP`) or that mohd does not
//! know; `WSH` (a window-size hint) is accepted. A lifetime on the peer's key bounds what the
//! peer sends with it, so any value up to the maximum is honoured by accepting it.
//!
//! Pure: no I/O, no RNG of its own; never panics on any input (fuzzed: `fuzz/fuzz_targets/
//! sdp_crypto.rs`).

use std::fmt;

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use rand::{CryptoRng, RngCore};
use thiserror::Error;

use crate::rtp::srtp::{MAX_KEY_MATERIAL_LEN, SrtpKeyMaterial, SrtpParams, SrtpSuite};

/// RFC 4568 §6.1: the tag is 1 to 9 digits.
const MAX_TAG_DIGITS: usize = 9;
/// SRTP's packet index is 48 bits: no master key may protect more packets (RFC 4568 §6.2.1).
const MAX_LIFETIME_EXPONENT: u32 = 48;
/// base64 with `=` padding on output; on input padding is optional, as some phones omit it.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why an `a=crypto` line (or an offer's set of them) cannot be used.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CryptoError {
    /// The offer has no `a=crypto` line.
    #[error("no a=crypto line")]
    Missing,
    /// Not `<tag> <suite> <key-params> [session-params]`, or the tag is not 1–9 digits.
    #[error("malformed a=crypto line")]
    Syntax,
    /// A crypto suite mohd does not implement.
    #[error("unsupported crypto suite")]
    UnknownSuite,
    /// A key method other than `inline:`.
    #[error("key method is not inline")]
    NotInline,
    /// The key is not base64.
    #[error("key is not valid base64")]
    BadBase64,
    /// The key‖salt is not the suite's length.
    #[error("{suite} needs {expected} bytes of key and salt, the line has {len}")]
    KeyLength {
        /// The line's suite.
        suite: SrtpSuite,
        /// Bytes the suite needs.
        expected: usize,
        /// Bytes the line carries.
        len: usize,
    },
    /// A lifetime that is malformed, zero, or above 2^48 packets.
    #[error("key lifetime mohd cannot honour")]
    Lifetime,
    /// An MKI, or several keys (which need MKIs): mohd uses one key per direction.
    #[error("MKI is not supported")]
    Mki,
    /// A session parameter mohd does not honour (`UNENCRYPTED_SRTP`, `KDR`, …).
    #[error("unsupported session parameter")]
    SessionParam,
    /// Our offer's answer names a tag or suite we did not offer.
    #[error("the answer's crypto line matches none we offered")]
    NotOffered,
}

/// One usable `a=crypto` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CryptoLine {
    /// Links an answer line to the offer line it accepts.
    pub tag: u32,
    /// The suite.
    pub suite: SrtpSuite,
    /// The master key and salt of the line's author (what its author sends with).
    pub key: SrtpKeyMaterial,
}

impl CryptoLine {
    /// Parses the value of an `a=crypto` attribute (the text after `a=crypto:`).
    pub fn parse(value: &str) -> Result<CryptoLine, CryptoError> {
        let mut fields = value.split_ascii_whitespace();
        let (Some(tag), Some(suite), Some(key_params)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return Err(CryptoError::Syntax);
        };
        let tag = parse_tag(tag)?;
        let suite = SrtpSuite::from_sdp_name(suite).ok_or(CryptoError::UnknownSuite)?;
        let key = parse_key_params(suite, key_params)?;
        for param in fields {
            check_session_param(param)?;
        }
        Ok(CryptoLine { tag, suite, key })
    }

    /// A line with a fresh key (for an offer mohd makes).
    pub fn generate<R: CryptoRng + RngCore + ?Sized>(
        tag: u32,
        suite: SrtpSuite,
        rng: &mut R,
    ) -> CryptoLine {
        CryptoLine {
            tag,
            suite,
            key: generate_key(suite, rng),
        }
    }

    /// Our answer to this offer line: same tag and suite, our own fresh key.
    pub fn answer<R: CryptoRng + RngCore + ?Sized>(&self, rng: &mut R) -> CryptoLine {
        CryptoLine::generate(self.tag, self.suite, rng)
    }
}

/// The attribute value, `<tag> <suite> inline:<base64>` (without `a=crypto:`).
impl fmt::Display for CryptoLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = [0; 4 * MAX_KEY_MATERIAL_LEN.div_ceil(3)];
        let len = BASE64
            .encode_slice(self.key.as_bytes(), &mut text)
            .map_err(|_| fmt::Error)?;
        let key = std::str::from_utf8(&text[..len]).map_err(|_| fmt::Error)?;
        write!(f, "{} {} inline:{key}", self.tag, self.suite)
    }
}

/// A fresh master key and salt for `suite`.
pub fn generate_key<R: CryptoRng + RngCore + ?Sized>(
    suite: SrtpSuite,
    rng: &mut R,
) -> SrtpKeyMaterial {
    let mut bytes = [0; MAX_KEY_MATERIAL_LEN];
    let bytes = &mut bytes[..suite.key_material_len()];
    rng.fill_bytes(bytes);
    SrtpKeyMaterial::from_bytes(suite, bytes).expect("generated at the suite's length")
}

/// The first line of an offer (`a=crypto` values in the offer's order) that mohd can honour.
/// When none can, the first line's reason ([`CryptoError::Missing`] without lines).
pub fn choose<'a>(
    offer_values: impl IntoIterator<Item = &'a str>,
) -> Result<CryptoLine, CryptoError> {
    let mut first_error = None;
    for value in offer_values {
        match CryptoLine::parse(value) {
            Ok(line) => return Ok(line),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or(CryptoError::Missing))
}

/// Answers an offer's `a=crypto` lines: the call's SRTP (theirs = the chosen line's key, ours =
/// a fresh one) and the line to put in the answer.
pub fn answer<'a, R: CryptoRng + RngCore + ?Sized>(
    offer_values: impl IntoIterator<Item = &'a str>,
    rng: &mut R,
) -> Result<(SrtpParams, CryptoLine), CryptoError> {
    let theirs = choose(offer_values)?;
    let ours = theirs.answer(rng);
    let params = SrtpParams {
        suite: theirs.suite,
        ours: ours.key,
        theirs: theirs.key,
    };
    Ok((params, ours))
}

/// The call's SRTP from the answer to an offer mohd made with `offered` lines: the answer's
/// tag picks our line (and must carry its suite).
pub fn from_answer(offered: &[CryptoLine], answer_value: &str) -> Result<SrtpParams, CryptoError> {
    let theirs = CryptoLine::parse(answer_value)?;
    let ours = offered
        .iter()
        .find(|line| line.tag == theirs.tag && line.suite == theirs.suite)
        .ok_or(CryptoError::NotOffered)?;
    Ok(SrtpParams {
        suite: ours.suite,
        ours: ours.key,
        theirs: theirs.key,
    })
}

fn parse_tag(tag: &str) -> Result<u32, CryptoError> {
    if tag.is_empty() || tag.len() > MAX_TAG_DIGITS || !tag.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CryptoError::Syntax);
    }
    tag.parse().map_err(|_| CryptoError::Syntax)
}

/// `inline:<key‖salt>[|lifetime][|MKI:length]`, one key only (a second, after `;`, needs MKIs).
fn parse_key_params(suite: SrtpSuite, key_params: &str) -> Result<SrtpKeyMaterial, CryptoError> {
    if key_params.contains(';') {
        return Err(CryptoError::Mki);
    }
    let key_info = key_params
        .strip_prefix("inline:")
        .ok_or(CryptoError::NotInline)?;
    let mut parts = key_info.split('|');
    let key_salt = parts.next().unwrap_or_default();
    let mut lifetime_seen = false;
    for part in parts {
        if part.contains(':') {
            return Err(CryptoError::Mki);
        }
        if lifetime_seen {
            return Err(CryptoError::Syntax);
        }
        check_lifetime(part)?;
        lifetime_seen = true;
    }
    let mut bytes = [0; MAX_KEY_MATERIAL_LEN];
    let len = match BASE64.decode_slice(key_salt, &mut bytes) {
        Ok(len) => len,
        Err(base64::DecodeSliceError::OutputSliceTooSmall) => {
            return Err(CryptoError::KeyLength {
                suite,
                expected: suite.key_material_len(),
                len: key_salt.len() * 3 / 4,
            });
        }
        Err(base64::DecodeSliceError::DecodeError(_)) => return Err(CryptoError::BadBase64),
    };
    SrtpKeyMaterial::from_bytes(suite, &bytes[..len]).ok_or(CryptoError::KeyLength {
        suite,
        expected: suite.key_material_len(),
        len,
    })
}

/// `2^n` or a decimal count of packets, 1 ..= 2^48.
fn check_lifetime(lifetime: &str) -> Result<(), CryptoError> {
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let within = match lifetime.strip_prefix("2^") {
        Some(exponent) if all_digits(exponent) => exponent
            .parse::<u32>()
            .is_ok_and(|e| e <= MAX_LIFETIME_EXPONENT),
        Some(_) => false,
        None if all_digits(lifetime) => lifetime
            .parse::<u64>()
            .is_ok_and(|n| (1..=1 << MAX_LIFETIME_EXPONENT).contains(&n)),
        None => false,
    };
    if within {
        Ok(())
    } else {
        Err(CryptoError::Lifetime)
    }
}

/// Only the window-size hint is harmless; anything else changes what protection means.
fn check_session_param(param: &str) -> Result<(), CryptoError> {
    match param.strip_prefix("WSH=") {
        Some(window) if !window.is_empty() && window.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
        _ => Err(CryptoError::SessionParam),
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    /// RFC 4568 §4's example key (30 bytes: AES-CM key and salt).
    const RFC_KEY: &str = "PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR";

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    #[test]
    fn parses_the_rfc_example_with_lifetime() {
        let line = CryptoLine::parse(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}|2^20"))
            .expect("valid");
        assert_eq!(line.tag, 1);
        assert_eq!(line.suite, SrtpSuite::AesCm128HmacSha1_80);
        assert_eq!(line.key.as_bytes().len(), 30);
        assert_eq!(
            line.to_string(),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}")
        );
    }

    #[test]
    fn the_rfc_examples_mki_refuses_the_line() {
        assert_eq!(
            CryptoLine::parse(&format!(
                "1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}|2^20|1:32"
            )),
            Err(CryptoError::Mki)
        );
        assert_eq!(
            CryptoLine::parse(&format!("1 AES_CM_128_HMAC_SHA1_32 inline:{RFC_KEY}|1:4")),
            Err(CryptoError::Mki)
        );
        assert_eq!(
            CryptoLine::parse(&format!(
                "1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}|2^20|1:4;inline:{RFC_KEY}|2^20|2:4"
            )),
            Err(CryptoError::Mki)
        );
    }

    #[test]
    fn every_suite_round_trips_through_format_and_parse() {
        let mut rng = rng();
        for suite in SrtpSuite::ALL {
            let line = CryptoLine::generate(42, suite, &mut rng);
            let text = line.to_string();
            assert_eq!(CryptoLine::parse(&text), Ok(line), "{text}");
            assert!(text.starts_with(&format!("42 {} inline:", suite.sdp_name())));
        }
    }

    #[test]
    fn gcm_key_accepted_with_or_without_base64_padding() {
        let mut rng = rng();
        let line = CryptoLine::generate(1, SrtpSuite::AeadAes128Gcm, &mut rng);
        let text = line.to_string();
        assert!(text.ends_with('='), "28 bytes pad to 40 chars: {text}");
        assert_eq!(CryptoLine::parse(text.trim_end_matches('=')), Ok(line));
    }

    #[test]
    fn typed_errors_for_each_kind_of_bad_line() {
        let cases = [
            ("", CryptoError::Syntax),
            ("1 AES_CM_128_HMAC_SHA1_80", CryptoError::Syntax),
            (
                &format!("x AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}"),
                CryptoError::Syntax,
            ),
            (
                &format!("1234567890 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}"),
                CryptoError::Syntax,
            ),
            (
                &format!("1 F8_128_HMAC_SHA1_80 inline:{RFC_KEY}"),
                CryptoError::UnknownSuite,
            ),
            (
                &format!("1 aes_cm_128_hmac_sha1_80 inline:{RFC_KEY}"),
                CryptoError::UnknownSuite,
            ),
            (
                &format!("1 AES_CM_128_HMAC_SHA1_80 uri:{RFC_KEY}"),
                CryptoError::NotInline,
            ),
            (
                "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVee!FCanVmcjkpPywjNWhcYD0mXXtxaVBR",
                CryptoError::BadBase64,
            ),
            (
                &format!("1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}|2^49"),
                CryptoError::Lifetime,
            ),
            (
                &format!("1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}|0"),
                CryptoError::Lifetime,
            ),
            (
                &format!("1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}|2^"),
                CryptoError::Lifetime,
            ),
            (
                &format!("1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}|2^20|2^20"),
                CryptoError::Syntax,
            ),
            (
                &format!("1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY} UNENCRYPTED_SRTP"),
                CryptoError::SessionParam,
            ),
            (
                &format!("1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY} KDR=1"),
                CryptoError::SessionParam,
            ),
        ];
        for (value, expected) in cases {
            assert_eq!(CryptoLine::parse(value), Err(expected), "{value:?}");
        }
        assert!(matches!(
            CryptoLine::parse(&format!("1 AEAD_AES_128_GCM inline:{RFC_KEY}")),
            Err(CryptoError::KeyLength {
                expected: 28,
                len: 30,
                ..
            })
        ));
        assert!(matches!(
            CryptoLine::parse("1 AES_CM_128_HMAC_SHA1_80 inline:AAAA"),
            Err(CryptoError::KeyLength {
                expected: 30,
                len: 3,
                ..
            })
        ));
        assert!(matches!(
            CryptoLine::parse(&format!(
                "1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}{RFC_KEY}"
            )),
            Err(CryptoError::KeyLength { .. })
        ));
    }

    #[test]
    fn accepted_lifetimes_and_session_params() {
        for tail in [
            "|2^31",
            "|2^48",
            "|1048576",
            "|281474976710656",
            " WSH=64",
            "|2^31 WSH=128",
        ] {
            let value = format!("7 AES_CM_128_HMAC_SHA1_32 inline:{RFC_KEY}{tail}");
            assert!(CryptoLine::parse(&value).is_ok(), "{value}");
        }
    }

    #[test]
    fn choose_takes_the_first_acceptable_line_in_offer_order() {
        let offer = [
            format!("1 AES_256_CM_HMAC_SHA1_80 inline:{RFC_KEY}"),
            format!("2 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}|2^20|1:4"),
            format!("3 AES_CM_128_HMAC_SHA1_32 inline:{RFC_KEY}"),
            format!("4 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}"),
        ];
        let chosen = choose(offer.iter().map(String::as_str)).expect("line 3");
        assert_eq!(
            (chosen.tag, chosen.suite),
            (3, SrtpSuite::AesCm128HmacSha1_32)
        );
        assert_eq!(
            choose(offer[..2].iter().map(String::as_str)),
            Err(CryptoError::UnknownSuite)
        );
        assert_eq!(choose([]), Err(CryptoError::Missing));
    }

    #[test]
    fn answer_keeps_tag_and_suite_with_a_fresh_key_and_the_offerer_reads_it() {
        let mut rng = rng();
        let offered = [
            CryptoLine::generate(1, SrtpSuite::AeadAes128Gcm, &mut rng),
            CryptoLine::generate(2, SrtpSuite::AesCm128HmacSha1_80, &mut rng),
        ];
        let offer_text: Vec<String> = offered.iter().map(ToString::to_string).collect();
        let (params, line) = answer(offer_text.iter().map(String::as_str), &mut rng).expect("ok");
        assert_eq!((line.tag, line.suite), (1, SrtpSuite::AeadAes128Gcm));
        assert_eq!(params.theirs, offered[0].key);
        assert_eq!(params.ours, line.key);
        assert_ne!(params.ours, params.theirs);

        let offerer_view = from_answer(&offered, &line.to_string()).expect("matches line 1");
        assert_eq!(offerer_view.ours, params.theirs);
        assert_eq!(offerer_view.theirs, params.ours);
        let wrong_tag = CryptoLine { tag: 9, ..line };
        assert_eq!(
            from_answer(&offered, &wrong_tag.to_string()),
            Err(CryptoError::NotOffered)
        );
    }

    #[test]
    fn never_panics_on_odd_input() {
        let samples = [
            "1 AES_CM_128_HMAC_SHA1_80 inline:",
            "1 AES_CM_128_HMAC_SHA1_80 inline:|",
            "1 AES_CM_128_HMAC_SHA1_80 inline:||||",
            "1 AES_CM_128_HMAC_SHA1_80 inline:é|2^é",
            "1 AES_CM_128_HMAC_SHA1_80 inline:====",
            "\u{0}\u{0}\u{0}",
            "1\tAES_CM_128_HMAC_SHA1_80\tinline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR",
            "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|99999999999999999999999",
            "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^99999999999",
        ];
        for s in samples {
            let _ = CryptoLine::parse(s);
        }
    }
}
