//! `[channels.NAME.multicast]`: a channel streamed without end to an IPv4 multicast group, one
//! stream per codec, the way Cisco UCM's multicast music on hold lays them out: from a base
//! address and port, each further codec two ports up (`step = "port"`) or one address up
//! (`step = "address"`), RTCP on the port above each stream's.
//!
//! ```toml
//! [channels.default.multicast]
//! address = "239.1.1.1"   # required: an IPv4 multicast group
//! port = 16384            # even; RTCP on port + 1; default 16384
//! codecs = ["pcmu", "g722"]   # one stream each, all in [rtp] codecs; default ["pcmu"]
//! step = "port"           # "port" (+2 per codec) or "address" (+1 per codec)
//! ttl = 1                 # router hops; 1 (default) stays on the local network
//! interface = "eth0"      # an interface name or one of its IPv4 addresses
//! ```

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use super::RtpConfig;
use super::doc::{Doc, Key};
use super::raw::RawChannels;
use crate::codec::Codec;

/// Cisco UCM's default base port for multicast music on hold.
pub const DEFAULT_PORT: u16 = 16384;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMulticast {
    address: Option<Spanned<String>>,
    port: Option<Spanned<i64>>,
    codecs: Option<Spanned<Vec<Spanned<String>>>>,
    step: Option<Spanned<String>>,
    ttl: Option<Spanned<i64>>,
    interface: Option<Spanned<String>>,
}

/// One channel's multicast streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MulticastConfig {
    /// The channel streamed (a `[channels.NAME]` of the config file).
    pub channel: String,
    /// The first stream's group.
    pub address: Ipv4Addr,
    /// The first stream's RTP port (even); its RTCP goes to the port above.
    pub port: u16,
    /// One stream per codec, in this order (the first at `address:port`).
    pub codecs: Vec<Codec>,
    /// How the streams after the first are laid out.
    pub step: MulticastStep,
    /// IP TTL: how many routers the packets may cross (1: the local network only).
    pub ttl: u8,
    /// Where the streams leave from; `None`: as the routing table says for the group.
    pub interface: Option<MulticastInterface>,
}

/// `step`: where the next codec's stream goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MulticastStep {
    /// Same group, RTP port + 2 (RTCP + 2 too).
    Port,
    /// Next group address, same ports.
    Address,
}

/// `interface`: a network interface by name, or one of its IPv4 addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MulticastInterface {
    Name(String),
    Address(Ipv4Addr),
}

impl MulticastConfig {
    /// Each codec's stream and where its RTP goes (its RTCP: the port above).
    pub fn destinations(&self) -> Vec<(Codec, SocketAddrV4)> {
        self.codecs
            .iter()
            .enumerate()
            .map(|(i, &codec)| {
                let i = i as u32;
                let dest = match self.step {
                    MulticastStep::Port => {
                        SocketAddrV4::new(self.address, self.port.saturating_add(2 * i as u16))
                    }
                    MulticastStep::Address => SocketAddrV4::new(
                        Ipv4Addr::from(u32::from(self.address).saturating_add(i)),
                        self.port,
                    ),
                };
                (codec, dest)
            })
            .collect()
    }
}

/// Every `[channels.NAME.multicast]` table, checked: multicast groups only, room for every
/// codec's stream, codecs the server renders, and no two streams on the same group and port.
pub(super) fn multicast_config(
    doc: &Doc,
    channels: Option<&RawChannels>,
    rtp: &RtpConfig,
) -> Result<Vec<MulticastConfig>, ConfigError> {
    let mut out: Vec<MulticastConfig> = Vec::new();
    let mut taken: BTreeMap<SocketAddrV4, String> = BTreeMap::new();
    for (name, ch) in channels.map(|c| c.get_ref().iter()).into_iter().flatten() {
        let Some(raw) = &ch.get_ref().multicast else {
            continue;
        };
        let config = one_channel(doc, name.get_ref(), raw, rtp)?;
        for (_, dest) in config.destinations() {
            for taken_port in [dest.port(), dest.port() + 1] {
                let at = SocketAddrV4::new(*dest.ip(), taken_port);
                if let Some(other) = taken.insert(at, config.channel.clone()) {
                    return Err(doc.err(
                        Some(raw.span()),
                        Key::table(&["channels", name.get_ref(), "multicast"]),
                        format!("its streams overlap channel {other}'s at {at}"),
                    ));
                }
            }
        }
        out.push(config);
    }
    Ok(out)
}

fn one_channel(
    doc: &Doc,
    channel: &str,
    raw: &Spanned<RawMulticast>,
    rtp: &RtpConfig,
) -> Result<MulticastConfig, ConfigError> {
    let table = ["channels", channel, "multicast"];
    let key = |leaf: &str| Key::table(&table).leaf(leaf);
    let r = raw.get_ref();
    let Some(address) = &r.address else {
        return Err(doc.err(
            Some(raw.span()),
            Key::table(&table),
            "missing key `address`: the IPv4 multicast group to stream to, e.g. \"239.1.1.1\"",
        ));
    };
    let address = doc.checked(address, key("address"), parse_group)?;
    let port = doc
        .int_within::<u16>(r.port.clone(), key("port"), 1024..=65534, "")?
        .unwrap_or(DEFAULT_PORT);
    if port % 2 != 0 {
        let span = r.port.as_ref().map(Spanned::span);
        return Err(doc.err(
            span,
            key("port"),
            format!("{port}: must be even (RTP on even ports, RTCP on the odd one above)"),
        ));
    }
    let codecs = match &r.codecs {
        None => vec![Codec::Pcmu],
        Some(list) => codec_list(doc, list, key("codecs"))?,
    };
    let codecs_span = r.codecs.as_ref().map(Spanned::span);
    if let Some(missing) = codecs.iter().find(|c| !rtp.codecs.contains(c)) {
        return Err(doc.err(
            codecs_span.or(Some(raw.span())),
            key("codecs"),
            format!(
                "{}: not in [rtp] codecs, so the channel is not rendered for it",
                missing.config_name()
            ),
        ));
    }
    let step = match &r.step {
        None => MulticastStep::Port,
        Some(s) => doc.checked(s, key("step"), |s| match s {
            "port" => Ok(MulticastStep::Port),
            "address" => Ok(MulticastStep::Address),
            _ => Err("expected \"port\" (+2 per codec) or \"address\" (+1 per codec)".to_owned()),
        })?,
    };
    let ttl = doc
        .int_within::<u8>(r.ttl.clone(), key("ttl"), 0..=255, "")?
        .unwrap_or(1);
    let interface = match &r.interface {
        None => None,
        Some(i) => Some(doc.checked(i, key("interface"), parse_interface)?),
    };
    let config = MulticastConfig {
        channel: channel.to_owned(),
        address,
        port,
        codecs,
        step,
        ttl,
        interface,
    };
    // The last stream must still be a multicast group with its RTCP port in range.
    let extra = config.codecs.len().saturating_sub(1) as u32;
    let room = match step {
        MulticastStep::Port => u32::from(port) + 2 * extra < u32::from(u16::MAX),
        MulticastStep::Address => u32::from(address)
            .checked_add(extra)
            .is_some_and(|last| Ipv4Addr::from(last).is_multicast()),
    };
    if !room {
        let (span, leaf) = match step {
            MulticastStep::Port => (r.port.as_ref().map(Spanned::span), "port"),
            MulticastStep::Address => (r.address.as_ref().map(Spanned::span), "address"),
        };
        return Err(doc.err(
            span.or(Some(raw.span())),
            key(leaf),
            format!(
                "no room for {} streams from {address}:{port} with step = \"{}\"",
                config.codecs.len(),
                match step {
                    MulticastStep::Port => "port",
                    MulticastStep::Address => "address",
                }
            ),
        ));
    }
    Ok(config)
}

fn parse_group(s: &str) -> Result<Ipv4Addr, String> {
    let ip: std::net::IpAddr = s
        .trim()
        .parse()
        .map_err(|_| "not an IP address (host names are not resolved here)".to_owned())?;
    match ip {
        std::net::IpAddr::V4(v4) if v4.is_multicast() => Ok(v4),
        std::net::IpAddr::V4(_) => Err(
            "not a multicast group (224.0.0.0/4; 239.0.0.0/8 is for an organisation's own use)"
                .to_owned(),
        ),
        std::net::IpAddr::V6(_) => Err("IPv6 multicast is not supported; use IPv4".to_owned()),
    }
}

fn parse_interface(s: &str) -> Result<MulticastInterface, String> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return match ip {
            std::net::IpAddr::V4(v4) if !v4.is_multicast() && !v4.is_unspecified() => {
                Ok(MulticastInterface::Address(v4))
            }
            _ => Err("an interface's own IPv4 address, or its name (e.g. \"eth0\")".to_owned()),
        };
    }
    // Linux interface names: up to 15 bytes, no '/' or whitespace.
    let valid =
        !s.is_empty() && s.len() <= 15 && s.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
    if valid {
        Ok(MulticastInterface::Name(s.to_owned()))
    } else {
        Err("not an interface name (e.g. \"eth0\") or IPv4 address".to_owned())
    }
}

/// `codecs = ["pcmu", "g722"]`: known names, at least one, each once.
fn codec_list(
    doc: &Doc,
    list: &Spanned<Vec<Spanned<String>>>,
    key: Key,
) -> Result<Vec<Codec>, ConfigError> {
    let items = list.get_ref();
    if items.is_empty() {
        return Err(doc.err(
            Some(list.span()),
            key,
            "the list is empty: name at least one codec to stream",
        ));
    }
    super::rtp::known_codecs_once(doc, items, key)
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{MINIMAL, err, load};
    use super::*;

    fn with(table: &str) -> String {
        format!("{MINIMAL}[channels.default.multicast]\n{table}")
    }

    #[test]
    fn cisco_style_layout_by_port_and_by_address() {
        let c = load(&with(
            "address = \"239.1.1.1\"\nport = 16384\ncodecs = [\"pcmu\", \"pcma\", \"g722\"]\n",
        ))
        .unwrap();
        let m = &c.multicast[0];
        assert_eq!(
            (m.channel.as_str(), m.ttl, m.interface.clone()),
            ("default", 1, None)
        );
        let dests: Vec<String> = m
            .destinations()
            .iter()
            .map(|(_, d)| d.to_string())
            .collect();
        assert_eq!(
            dests,
            ["239.1.1.1:16384", "239.1.1.1:16386", "239.1.1.1:16388"]
        );
        let c = load(&with(
            "address = \"239.1.1.254\"\ncodecs = [\"pcmu\", \"g722\"]\nstep = \"address\"\n\
             ttl = 4\ninterface = \"192.0.2.2\"\n",
        ))
        .unwrap();
        let m = &c.multicast[0];
        let dests: Vec<String> = m
            .destinations()
            .iter()
            .map(|(_, d)| d.to_string())
            .collect();
        assert_eq!(dests, ["239.1.1.254:16384", "239.1.1.255:16384"]);
        assert_eq!(m.ttl, 4);
        assert_eq!(
            m.interface,
            Some(MulticastInterface::Address("192.0.2.2".parse().unwrap()))
        );
        let c = load(&with("address = \"239.1.1.1\"\ninterface = \"eth0\"\n")).unwrap();
        assert_eq!(c.multicast[0].codecs, [Codec::Pcmu]);
        assert_eq!(
            c.multicast[0].interface,
            Some(MulticastInterface::Name("eth0".into()))
        );
        assert!(load(MINIMAL).unwrap().multicast.is_empty());
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let cases = [
            (
                "port = 16384\n",
                "[channels.default.multicast]",
                5,
                "missing key `address`",
            ),
            (
                "address = \"10.0.0.1\"\n",
                "[channels.default.multicast] address",
                6,
                "not a multicast group",
            ),
            (
                "address = \"ff02::1\"\n",
                "[channels.default.multicast] address",
                6,
                "IPv6 multicast",
            ),
            (
                "address = \"moh.example\"\n",
                "[channels.default.multicast] address",
                6,
                "not an IP address",
            ),
            (
                "address = \"239.1.1.1\"\nport = 16385\n",
                "[channels.default.multicast] port",
                7,
                "must be even",
            ),
            (
                "address = \"239.1.1.1\"\nport = 80\n",
                "[channels.default.multicast] port",
                7,
                "1024..=65534",
            ),
            (
                "address = \"239.1.1.1\"\nport = 65534\ncodecs = [\"pcmu\", \"pcma\"]\n",
                "[channels.default.multicast] port",
                7,
                "no room for 2 streams",
            ),
            (
                "address = \"239.255.255.255\"\nstep = \"address\"\ncodecs = [\"pcmu\", \"pcma\"]\n",
                "[channels.default.multicast] address",
                6,
                "no room",
            ),
            (
                "address = \"239.1.1.1\"\ncodecs = [\"g729\"]\n",
                "[channels.default.multicast] codecs",
                7,
                "unknown codec",
            ),
            (
                "address = \"239.1.1.1\"\ncodecs = []\n",
                "[channels.default.multicast] codecs",
                7,
                "empty",
            ),
            (
                "address = \"239.1.1.1\"\nstep = \"codec\"\n",
                "[channels.default.multicast] step",
                7,
                "expected \"port\"",
            ),
            (
                "address = \"239.1.1.1\"\nttl = 256\n",
                "[channels.default.multicast] ttl",
                7,
                "0..=255",
            ),
            (
                "address = \"239.1.1.1\"\ninterface = \"239.1.1.2\"\n",
                "[channels.default.multicast] interface",
                7,
                "own IPv4 address",
            ),
            (
                "address = \"239.1.1.1\"\ninterface = \"a/b\"\n",
                "[channels.default.multicast] interface",
                7,
                "not an interface",
            ),
            (
                "address = \"239.1.1.1\"\nloop = true\n",
                "[channels.default.multicast] loop",
                7,
                "unknown key",
            ),
        ];
        for (table, want_key, line, want) in cases {
            let e = err(&with(table));
            assert_eq!(e.key(), Some(want_key), "{table}: {e}");
            assert_eq!(e.line(), Some(line), "{table}: {e}");
            assert!(e.message().contains(want), "{table}: {e}");
        }
    }

    #[test]
    fn codecs_must_be_rendered_and_streams_must_not_overlap() {
        let e = err(&format!(
            "[rtp]\ncodecs = [\"pcma\"]\n{}",
            with("address = \"239.1.1.1\"\n")
        ));
        assert_eq!(e.key(), Some("[channels.default.multicast] codecs"), "{e}");
        assert!(e.message().contains("pcmu: not in [rtp] codecs"), "{e}");
        let e = err(&format!(
            "{}[channels.other]\nmusic = \"demo\"\n[channels.other.multicast]\n\
             address = \"239.1.1.1\"\nport = 16386\n",
            with("address = \"239.1.1.1\"\ncodecs = [\"pcmu\", \"pcma\"]\n")
        ));
        assert_eq!(e.key(), Some("[channels.other.multicast]"), "{e}");
        assert!(
            e.message()
                .contains("overlap channel default's at 239.1.1.1:16386"),
            "{e}"
        );
    }
}
