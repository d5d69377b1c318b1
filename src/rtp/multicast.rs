//! Multicast music on hold: a channel streamed without end to a multicast group, one stream
//! per codec (`[channels.NAME.multicast]`, laid out as Cisco UCM does), for phones and gateways
//! that join the group instead of calling.
//!
//! Owns opening each stream's socket and handing it to the media thread. A stream is a
//! permanent call of the media thread (`MediaCommand::Add` with its own socket), so it rides
//! the channel's timeline like any shared caller: same clock, same render, a new render or
//! schedule switch followed at once, RTCP sender reports to the port above. What makes it a
//! stream rather than a caller:
//!
//! - its destination is the group, which never answers: the media thread neither watches it
//!   for silence or ICMP nor follows it (symmetric RTP), and it plays until mohd stops;
//! - its SSRC is fixed, derived from channel and codec, so receivers see the same source after
//!   a restart (sequence numbers and timestamps start afresh, as RFC 3550 allows a source);
//! - its socket has the multicast TTL (default 1: never past the first router), leaves from
//!   the configured interface, and carries the same DSCP as every other RTP socket.
//!
//! The interface is chosen by binding the socket to the interface's IPv4 address: for a
//! multicast destination Linux routes out of the device that owns the source address (the
//! kernel's documented alternative to `IP_MULTICAST_IF`, which needs no unsafe code here).
//! Multicast loopback stays on (the kernel's default), so a receiver on the box itself hears
//! the streams too.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use sha2::{Digest, Sha256};

use super::fanout::{CallMedia, Playback};
use super::shell::{CallInfo, MediaCommand, MediaSender, MediaStats};
use crate::channel::ChannelRender;
use crate::codec::Codec;
use crate::config::{MulticastConfig, MulticastInterface};
use crate::sip::sdp::{Direction, MediaParams};

/// Media-thread call ids of the streams: far above the SIP endpoint's, which count from 1.
pub const FIRST_STREAM_ID: u64 = 1 << 62;

/// Every packet carries 20 ms, the ptime phones joining a group expect.
pub const STREAM_PTIME_MS: u32 = 20;

/// One stream as it was started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MulticastStream {
    /// Its id among the media thread's calls.
    pub call: u64,
    pub channel: String,
    pub codec: Codec,
    /// Where its RTP goes; RTCP goes to the port above.
    pub group: SocketAddrV4,
    pub ssrc: u32,
}

/// The SSRC of `channel`'s `codec` stream: the same on every start of every version, so
/// receivers (and anyone reading a capture) see one source across restarts.
pub fn stable_ssrc(channel: &str, codec: Codec) -> u32 {
    let digest = Sha256::new()
        .chain_update(b"mohd multicast\0")
        .chain_update(channel.as_bytes())
        .chain_update(b"\0")
        .chain_update(codec.config_name().as_bytes())
        .finalize();
    let mut first = [0u8; 4];
    first.copy_from_slice(&digest[..4]);
    u32::from_be_bytes(first)
}

/// Starts every configured stream on the media thread: `renders` has the channels' current
/// renders (later ones reach the streams through the channel's timeline), `dscp` marks their
/// packets. A stream that cannot start (an interface that does not exist, a missing channel)
/// is logged and left out; calls are not affected. Returns the streams started.
pub fn start(
    configs: &[MulticastConfig],
    renders: &std::collections::BTreeMap<String, Arc<ChannelRender>>,
    dscp: u8,
    media: &MediaSender,
    stats: &MediaStats,
) -> Vec<MulticastStream> {
    let mut started = Vec::new();
    let mut next_id = FIRST_STREAM_ID;
    for config in configs {
        let Some(render) = renders.get(&config.channel) else {
            tracing::error!(channel = %config.channel, "multicast: no such channel; not streamed");
            continue;
        };
        let source = match source_address(config.interface.as_ref()) {
            Ok(source) => source,
            Err(e) => {
                tracing::error!(channel = %config.channel, error = %e, "multicast: not streamed");
                continue;
            }
        };
        for (codec, group) in config.destinations() {
            let call = next_id;
            next_id += 1;
            let socket = match open_socket(source, config.ttl, dscp) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(channel = %config.channel, %group, error = %e, "multicast: cannot open a socket; not streamed");
                    continue;
                }
            };
            let stream = MulticastStream {
                call,
                channel: config.channel.clone(),
                codec,
                group,
                ssrc: stable_ssrc(&config.channel, codec),
            };
            let command = add_command(&stream, Arc::clone(render), socket);
            if media.send(command).is_err() {
                tracing::error!("multicast: the media thread is gone");
                return started;
            }
            stats.multicast_streams.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                channel = %stream.channel,
                codec = codec.encoding_name(),
                %group,
                ttl = config.ttl,
                source = %source,
                ssrc = format!("{:08x}", stream.ssrc),
                "multicast stream started"
            );
            started.push(stream);
        }
    }
    started
}

/// The media thread's view of a stream: a send-only call to the group with a fixed SSRC.
fn add_command(
    stream: &MulticastStream,
    render: Arc<ChannelRender>,
    rtp: UdpSocket,
) -> MediaCommand {
    let group = SocketAddr::V4(stream.group);
    let rtcp = SocketAddr::V4(SocketAddrV4::new(
        *stream.group.ip(),
        stream.group.port() + 1,
    ));
    MediaCommand::Add {
        media: CallMedia {
            call: stream.call,
            params: MediaParams {
                codec: stream.codec,
                payload_type: stream.codec.payload_type(),
                ptime_ms: STREAM_PTIME_MS,
                remote_rtp: group,
                remote_rtcp: Some(rtcp),
                direction: Direction::SendOnly,
                peer_opus: None,
                srtp: None,
            },
            channel: render,
            playback: Playback::Shared,
            cname: format!(
                "mohd-multicast-{}-{}",
                stream.channel,
                stream.codec.config_name()
            ),
            ssrc: Some(stream.ssrc),
        },
        rtp,
        // RTCP leaves from the RTP socket, to the port above the group's.
        rtcp: None,
        info: CallInfo {
            peer: group,
            channel: stream.channel.as_str().into(),
            started: Instant::now(),
        },
    }
}

/// The address streams leave from: the interface's (which picks the interface), or any.
fn source_address(interface: Option<&MulticastInterface>) -> std::io::Result<Ipv4Addr> {
    match interface {
        None => Ok(Ipv4Addr::UNSPECIFIED),
        Some(MulticastInterface::Address(ip)) => Ok(*ip),
        Some(MulticastInterface::Name(name)) => interface_ipv4(name),
    }
}

/// The first IPv4 address of the interface called `name`.
fn interface_ipv4(name: &str) -> std::io::Result<Ipv4Addr> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)?;
    for a in addrs {
        if a.interface_name != name {
            continue;
        }
        if let Some(v4) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
            return Ok(v4.ip());
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("interface {name:?} does not exist or has no IPv4 address"),
    ))
}

/// A non-blocking socket on `source` (any port) sending with `ttl` and `dscp`.
fn open_socket(source: Ipv4Addr, ttl: u8, dscp: u8) -> std::io::Result<UdpSocket> {
    let socket = UdpSocket::bind((source, 0))?;
    socket.set_multicast_ttl_v4(u32::from(ttl))?;
    socket.set_multicast_loop_v4(true)?;
    socket.set_nonblocking(true)?;
    super::qos::mark_dscp(&socket, dscp);
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{getsockopt, sockopt};

    #[test]
    fn ssrc_is_stable_and_differs_per_channel_and_codec() {
        // Pinned: a receiver that filtered on it keeps working across upgrades.
        let s = stable_ssrc("default", Codec::Pcmu);
        assert_eq!(s, stable_ssrc("default", Codec::Pcmu));
        assert_ne!(s, stable_ssrc("default", Codec::Pcma));
        assert_ne!(s, stable_ssrc("lobby", Codec::Pcmu));
        assert_eq!(
            s, 0x63ed_7f05,
            "sha256(\"mohd multicast\\0default\\0pcmu\")[..4]"
        );
    }

    #[test]
    fn socket_has_ttl_dscp_and_leaves_from_the_interface() {
        let s = open_socket(Ipv4Addr::LOCALHOST, 0, 46).unwrap();
        assert_eq!(s.multicast_ttl_v4().unwrap(), 0);
        assert!(s.multicast_loop_v4().unwrap());
        assert_eq!(getsockopt(&s, sockopt::Ipv4Tos).unwrap(), 0xB8);
        assert_eq!(s.local_addr().unwrap().ip(), Ipv4Addr::LOCALHOST);
        assert_eq!(interface_ipv4("lo").unwrap(), Ipv4Addr::LOCALHOST);
        assert!(interface_ipv4("no-such-if0").is_err());
    }
}
