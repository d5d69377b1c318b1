//! `[rtp]`: the source address put in SDP, the port range calls draw from, the codecs mohd
//! accepts and in which order, the Opus bitrate, the SRTP policy, how many media threads
//! share the calls and whether their calls share a port, and the DSCP media is marked with.

use std::net::IpAddr;

use toml::Spanned;

use super::doc::{Doc, Key, value_msg};
use super::raw::RawRtp;
use super::{ConfigError, RtpConfig};
use crate::codec::Codec;
use crate::rtp::io::PortModel;
use crate::sip::sdp::SrtpPolicy;

/// Below 1024 needs privileges and collides with well-known services.
const PORT_FLOOR: u16 = 1024;

pub(super) fn rtp_config(
    doc: &Doc,
    raw: Option<Spanned<RawRtp>>,
) -> Result<RtpConfig, ConfigError> {
    let raw = raw.map(Spanned::into_inner).unwrap_or_default();
    let defaults = RtpConfig::default();
    let key = |leaf| Key::table(&["rtp"]).leaf(leaf);
    let flag = |v: Option<Spanned<bool>>, default| v.map_or(default, Spanned::into_inner);
    let address = match &raw.address {
        None => None,
        Some(a) => Some(doc.checked(a, key("address"), parse_rtp_address)?),
    };
    let (port_min, port_max) = match &raw.ports {
        None => (defaults.port_min, defaults.port_max),
        Some(p) => doc.checked(p, key("ports"), parse_ports)?,
    };
    let codecs = match raw.codecs {
        None => defaults.codecs,
        Some(list) => codec_list(doc, list, key("codecs"))?,
    };
    // RFC 7587 §3.1.1: Opus runs from 6 to 510 kb/s.
    let (lo, hi) = crate::codec::opus::BITRATE_RANGE.into_inner();
    let opus_bitrate = doc
        .int_within(
            raw.opus_bitrate,
            key("opus_bitrate"),
            u64::from(lo)..=u64::from(hi),
            " bit/s",
        )?
        .unwrap_or(defaults.opus_bitrate);
    let media_threads = doc
        .int_within(
            raw.media_threads,
            key("media_threads"),
            1..=crate::rtp::shell::MAX_MEDIA_THREADS as u64,
            " threads",
        )?
        .unwrap_or(defaults.media_threads);
    let port_model = match &raw.port_model {
        None => defaults.port_model,
        Some(v) => doc.checked(v, key("port_model"), |s| {
            PortModel::from_config_name(s)
                .ok_or_else(|| "expected \"shared\" or \"per-call\"".to_owned())
        })?,
    };
    let srtp = match &raw.srtp {
        None => defaults.srtp,
        Some(v) => doc.checked(v, key("srtp"), |s| {
            SrtpPolicy::from_config_name(s)
                .ok_or_else(|| "expected \"off\", \"offer-answer\" or \"required\"".to_owned())
        })?,
    };
    let srtp_over_plain_transports = flag(
        raw.srtp_over_plain_transports,
        defaults.srtp_over_plain_transports,
    );
    if srtp_over_plain_transports && srtp != SrtpPolicy::Off {
        tracing::warn!(
            path = %doc.path.display(),
            "[rtp] srtp_over_plain_transports = true: SRTP keys are accepted from INVITEs over \
             UDP and TCP, where anyone who sees the signalling can decrypt the media"
        );
    }
    let dscp = doc
        .int_within(raw.dscp, key("dscp"), 0..=63, "")?
        .unwrap_or(defaults.dscp);
    Ok(RtpConfig {
        address,
        port_min,
        port_max,
        symmetric: flag(raw.symmetric, defaults.symmetric),
        realtime: flag(raw.realtime, defaults.realtime),
        media_threads,
        port_model,
        codecs,
        prefer_own_order: flag(raw.prefer_own_order, defaults.prefer_own_order),
        opus_bitrate,
        srtp,
        srtp_over_plain_transports,
        dscp,
    })
}

/// `codecs = ["opus", "pcmu"]`: known names, at least one, each once.
fn codec_list(
    doc: &Doc,
    list: Spanned<Vec<Spanned<String>>>,
    key: Key,
) -> Result<Vec<Codec>, ConfigError> {
    let span = list.span();
    let items = list.into_inner();
    if items.is_empty() {
        return Err(doc.err(
            Some(span),
            key,
            "the list is empty: name at least one codec (\"opus\", \"g722\", \"pcmu\", \"pcma\")",
        ));
    }
    known_codecs_once(doc, &items, key)
}

/// Each item a known codec name, none twice: the check every `codecs` list shares (`[rtp]`,
/// a channel's multicast streams); an empty list is the caller's to word.
pub(super) fn known_codecs_once(
    doc: &Doc,
    items: &[Spanned<String>],
    key: Key,
) -> Result<Vec<Codec>, ConfigError> {
    let mut codecs = Vec::with_capacity(items.len());
    for item in items {
        let codec = doc.checked(item, key.clone(), |s| {
            Codec::from_config_name(s).ok_or_else(|| {
                "unknown codec; expected \"opus\", \"g722\", \"pcmu\" or \"pcma\"".to_owned()
            })
        })?;
        if codecs.contains(&codec) {
            return Err(doc.err(Some(item.span()), key, value_msg(item, "listed twice")));
        }
        codecs.push(codec);
    }
    Ok(codecs)
}

fn parse_rtp_address(s: &str) -> Result<IpAddr, String> {
    let s = s.trim();
    let bare = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    let ip: IpAddr = bare
        .parse()
        .map_err(|_| "not an IP address (host names are not resolved here)".to_owned())?;
    if ip.is_unspecified() {
        return Err(
            "callers cannot send to an unspecified address; leave `address` out to use \
                    the address each INVITE arrived on"
                .to_owned(),
        );
    }
    if ip.is_multicast() {
        return Err("must be a unicast address of this host".to_owned());
    }
    Ok(ip)
}

/// `"FIRST-LAST"`: an even first port (RTP even, RTCP odd above) and room for one pair.
fn parse_ports(s: &str) -> Result<(u16, u16), String> {
    const EXPECTED: &str = "expected \"FIRST-LAST\", e.g. \"10000-20000\"";
    let (a, b) = s.split_once('-').ok_or(EXPECTED)?;
    let num = |t: &str| {
        let t = t.trim();
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(EXPECTED.to_owned());
        }
        // Parsed wide so that 70000 gets the range message, not a number-format one.
        t.parse::<u64>().map_err(|_| EXPECTED.to_owned())
    };
    let (first, last) = (num(a)?, num(b)?);
    let valid = u64::from(PORT_FLOOR)..=u64::from(u16::MAX);
    if !valid.contains(&first) || !valid.contains(&last) {
        return Err(format!("ports must be within {PORT_FLOOR}..=65535"));
    }
    if first > last {
        return Err("the first port must not exceed the last".to_owned());
    }
    if first % 2 != 0 {
        return Err(
            "the first port must be even (RTP uses even ports, RTCP the odd port above)".to_owned(),
        );
    }
    if last < first + 1 {
        return Err("the range must hold at least 2 ports (one RTP/RTCP pair)".to_owned());
    }
    // In range 1024..=65535 by the check above.
    let narrow = |p: u64| u16::try_from(p).map_err(|_| EXPECTED.to_owned());
    Ok((narrow(first)?, narrow(last)?))
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{MINIMAL, err, load};
    use crate::codec::Codec;
    use crate::sip::sdp::SrtpPolicy;

    #[test]
    fn codec_and_srtp_defaults() {
        let c = load(MINIMAL).unwrap();
        assert_eq!(
            c.rtp.codecs,
            [Codec::Opus, Codec::G722, Codec::Pcmu, Codec::Pcma]
        );
        assert!(!c.rtp.prefer_own_order);
        assert_eq!(c.rtp.opus_bitrate, 40_000);
        assert_eq!(c.rtp.srtp, SrtpPolicy::OfferAnswer);
        assert!(!c.rtp.srtp_over_plain_transports);
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(c.rtp.media_threads, cores.min(64));
        assert_eq!(c.rtp.dscp, 46, "voice is Expedited Forwarding by default");
    }

    #[test]
    fn media_threads_is_read_and_range_checked() {
        let c = load(&format!(
            "{MINIMAL}[rtp]
media_threads = 3
"
        ))
        .unwrap();
        assert_eq!(c.rtp.media_threads, 3);
        for (v, col) in [("0", 17), ("65", 17), ("-2", 17)] {
            let e = err(&format!(
                "{MINIMAL}[rtp]
media_threads = {v}
"
            ));
            assert_eq!(e.key(), Some("[rtp] media_threads"), "{e}");
            assert_eq!((e.line(), e.column()), (Some(6), Some(col)), "{e}");
            assert!(
                e.message()
                    .contains(&format!("{v}: must be within 1..=64 threads")),
                "{e}"
            );
        }
    }

    #[test]
    fn port_model_is_read_and_checked() {
        use crate::rtp::io::PortModel;
        assert_eq!(load(MINIMAL).unwrap().rtp.port_model, PortModel::default());
        for (v, model) in [
            ("shared", PortModel::Shared),
            ("per-call", PortModel::PerCall),
        ] {
            let c = load(&format!("{MINIMAL}[rtp]\nport_model = \"{v}\"\n")).unwrap();
            assert_eq!(c.rtp.port_model, model);
        }
        let e = err(&format!("{MINIMAL}[rtp]\nport_model = \"per_call\"\n"));
        assert_eq!(e.key(), Some("[rtp] port_model"), "{e}");
        assert_eq!(e.line(), Some(6), "{e}");
        assert!(e.message().contains("\"shared\" or \"per-call\""), "{e}");
    }

    #[test]
    fn dscp_is_read_and_range_checked() {
        let c = load(&format!("{MINIMAL}[rtp]\ndscp = 34\n")).unwrap();
        assert_eq!(c.rtp.dscp, 34);
        let c = load(&format!("{MINIMAL}[rtp]\ndscp = 0\n")).unwrap();
        assert_eq!(c.rtp.dscp, 0);
        for (bad, col) in [("64", 8), ("-1", 8), ("\"ef\"", 8)] {
            let e = err(&format!("{MINIMAL}[rtp]\ndscp = {bad}\n"));
            assert_eq!(
                (e.key(), e.line(), e.column()),
                (Some("[rtp] dscp"), Some(6), Some(col)),
                "{bad}: {e}"
            );
        }
        let e = err(&format!("{MINIMAL}[rtp]\ndscp = 64\n"));
        assert!(e.message().contains("64: must be within 0..=63"), "{e}");
    }

    #[test]
    fn codec_and_srtp_keys_are_read() {
        let c = load(&format!(
            "{MINIMAL}[rtp]\ncodecs = [\"PCMA\", \"g722\"]\nprefer_own_order = true\n\
             opus_bitrate = 64000\nsrtp = \"required\"\nsrtp_over_plain_transports = true\n"
        ))
        .unwrap();
        assert_eq!(c.rtp.codecs, [Codec::Pcma, Codec::G722]);
        assert!(c.rtp.prefer_own_order);
        assert_eq!(c.rtp.opus_bitrate, 64_000);
        assert_eq!(c.rtp.srtp, SrtpPolicy::Required);
        assert!(c.rtp.srtp_over_plain_transports);
        let c = load(&format!("{MINIMAL}[rtp]\nsrtp = \"off\"\n")).unwrap();
        assert_eq!(c.rtp.srtp, SrtpPolicy::Off);
    }

    #[test]
    fn codec_and_srtp_errors_name_key_and_place() {
        let cases = [
            ("codecs = []", "[rtp] codecs", 10, "the list is empty"),
            (
                "codecs = [\"pcmu\", \"g729\"]",
                "[rtp] codecs",
                19,
                "\"g729\": unknown codec",
            ),
            (
                "codecs = [\"pcmu\", \"opus\", \"PCMU\"]",
                "[rtp] codecs",
                27,
                "\"PCMU\": listed twice",
            ),
            (
                "codecs = \"pcmu\"",
                "[rtp] codecs",
                10,
                "expected a sequence",
            ),
            (
                "opus_bitrate = 5000",
                "[rtp] opus_bitrate",
                16,
                "5000: must be within 6000..=510000 bit/s",
            ),
            (
                "opus_bitrate = 600000",
                "[rtp] opus_bitrate",
                16,
                "must be within",
            ),
            (
                "srtp = \"on\"",
                "[rtp] srtp",
                8,
                "\"on\": expected \"off\", \"offer-answer\" or \"required\"",
            ),
            (
                "srtp_over_plain_transports = \"yes\"",
                "[rtp] srtp_over_plain_transports",
                30,
                "expected a boolean",
            ),
        ];
        for (line, want_key, col, want) in cases {
            let e = err(&format!("{MINIMAL}[rtp]\n{line}\n"));
            assert_eq!(e.key(), Some(want_key), "{line}: {e}");
            assert_eq!((e.line(), e.column()), (Some(6), Some(col)), "{line}: {e}");
            assert!(e.message().contains(want), "{line}: {e}");
        }
    }

    #[test]
    fn ports_errors() {
        let cases = [
            ("abc", "expected \"FIRST-LAST\""),
            ("10000", "expected \"FIRST-LAST\""),
            ("20000-10000", "the first port must not exceed the last"),
            ("10001-20000", "the first port must be even"),
            ("10000-10000", "at least 2 ports"),
            ("80-1000", "within 1024..=65535"),
            ("10000-70000", "within 1024..=65535"),
            ("-5-10", "expected \"FIRST-LAST\""),
        ];
        for (ports, want) in cases {
            let e = err(&format!("{MINIMAL}[rtp]\nports = \"{ports}\"\n"));
            assert_eq!(e.key(), Some("[rtp] ports"), "{ports}");
            assert_eq!((e.line(), e.column()), (Some(6), Some(9)), "{ports}");
            assert!(e.message().starts_with(&format!("{ports:?}: ")), "{e}");
            assert!(e.message().contains(want), "{ports}: {e}");
        }
        let c = load(&format!("{MINIMAL}[rtp]\nports = \"10000-10001\"\n")).unwrap();
        assert_eq!(c.rtp.port_pairs(), 1);
        let c = load(&format!("{MINIMAL}[rtp]\nports = \" 1024 - 65535 \"\n")).unwrap();
        assert_eq!(
            (c.rtp.port_min, c.rtp.port_max, c.rtp.port_pairs()),
            (1024, 65535, 32256)
        );
    }

    #[test]
    fn reversed_range_message_matches_the_documented_form() {
        let e = err(&format!("{MINIMAL}[rtp]\nports = \"20000-10000\"\n"));
        assert_eq!(
            e.to_string(),
            "/etc/mohd/mohd.toml:6:9: [rtp] ports: \"20000-10000\": the first port must not exceed the last"
        );
    }

    #[test]
    fn rtp_address() {
        let c = load(&format!("{MINIMAL}[rtp]\naddress = \"192.0.2.10\"\n")).unwrap();
        assert_eq!(c.rtp.address, Some("192.0.2.10".parse().unwrap()));
        let c = load(&format!("{MINIMAL}[rtp]\naddress = \"[2001:db8::1]\"\n")).unwrap();
        assert_eq!(c.rtp.address, Some("2001:db8::1".parse().unwrap()));
        for bad in ["pbx.local", "0.0.0.0", "::", "239.1.1.1"] {
            let e = err(&format!("{MINIMAL}[rtp]\naddress = \"{bad}\"\n"));
            assert_eq!(
                (e.key(), e.line()),
                (Some("[rtp] address"), Some(6)),
                "{bad}"
            );
        }
    }
}
