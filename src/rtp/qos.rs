//! Marking RTP for the network's priority queues: the DSCP of every socket media leaves from.
//!
//! Voice is DSCP EF (46, RFC 3246 / RFC 4594); switches and routers that honour it queue our
//! packets ahead of bulk traffic. The code point is set once per socket (`IP_TOS` for IPv4,
//! `IPV6_TCLASS` for IPv6: the DSCP is the top six bits of either byte).

use std::net::{SocketAddr, UdpSocket};

/// Expedited Forwarding: what voice media is marked with unless configured otherwise.
pub const DSCP_EF: u8 = 46;

/// Marks `socket`'s packets with `dscp` (0..=63; 0 leaves the default best effort). Best effort
/// itself: a kernel that refuses is logged once per socket at debug level, and media flows
/// unmarked rather than not at all.
pub fn mark_dscp(socket: &UdpSocket, dscp: u8) {
    use nix::sys::socket::{setsockopt, sockopt};
    if dscp == 0 {
        return;
    }
    let tos = i32::from(dscp.min(63)) << 2;
    let result = match socket.local_addr() {
        Ok(SocketAddr::V4(_)) => setsockopt(socket, sockopt::Ipv4Tos, &tos),
        Ok(SocketAddr::V6(_)) => setsockopt(socket, sockopt::Ipv6TClass, &tos),
        Err(_) => return,
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, dscp, "cannot set the DSCP of an RTP socket");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{getsockopt, sockopt};

    #[test]
    fn ef_is_written_into_the_tos_byte() {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        mark_dscp(&s, DSCP_EF);
        assert_eq!(getsockopt(&s, sockopt::Ipv4Tos).unwrap(), 0xB8);
        let s6 = match UdpSocket::bind("[::1]:0") {
            Ok(s) => s,
            Err(_) => return, // no IPv6 loopback on this machine
        };
        mark_dscp(&s6, DSCP_EF);
        assert_eq!(getsockopt(&s6, sockopt::Ipv6TClass).unwrap(), 0xB8);
    }

    #[test]
    fn zero_leaves_best_effort() {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        mark_dscp(&s, 0);
        assert_eq!(getsockopt(&s, sockopt::Ipv4Tos).unwrap(), 0);
    }
}
