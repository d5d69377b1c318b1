//! Reading the TOS byte (DSCP << 2) packets arrive with, as a switch queueing them would see it.

use std::io::IoSliceMut;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};

/// Asks the kernel to report each datagram's TOS byte (`IP_RECVTOS`) to [`receive`].
pub fn report_tos(s: &UdpSocket) {
    setsockopt(s, sockopt::IpRecvTos, &true).expect("IP_RECVTOS");
}

/// One datagram into `buf` and the TOS byte it arrived with; `None` when nothing came before
/// the socket's read timeout.
pub fn receive(s: &UdpSocket, buf: &mut [u8]) -> Option<(usize, Option<u8>)> {
    let mut cmsg = nix::cmsg_space!(u8);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(s.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty()).ok()?;
    let tos = msg.cmsgs().ok()?.find_map(|c| match c {
        ControlMessageOwned::Ipv4Tos(tos) => Some(tos),
        _ => None,
    });
    Some((msg.bytes, tos))
}
