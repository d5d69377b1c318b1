//! The client transaction (RFC 3261 §17.1), pure: one request we sent, where it went, and its
//! retransmission schedule (Timers A/B for INVITE, E/F otherwise). The endpoint's BYEs and
//! session refreshes, the REGISTER client and `mohd call` all send through it; what a response
//! means is theirs to decide.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::endpoint::{Transmit, Transport};
use super::msg::Method;
use super::timer::{Retransmit, Step, TRANSACTION_TIMEOUT};

/// A request in flight.
#[derive(Debug, Clone)]
pub struct ClientTxn {
    /// The Via branch that names the transaction (§17.1.3).
    pub branch: String,
    pub method: Method,
    pub transport: Transport,
    pub local: SocketAddr,
    pub dest: SocketAddr,
    /// The request as sent, for retransmission.
    bytes: Vec<u8>,
    retransmit: Retransmit,
}

impl ClientTxn {
    /// `bytes` was just sent at `now`; it times out after 64×T1.
    pub fn new(now: Instant, method: Method, branch: String, bytes: Vec<u8>, link: Link) -> Self {
        ClientTxn::with_timeout(now, method, branch, bytes, link, TRANSACTION_TIMEOUT)
    }

    /// As [`ClientTxn::new`], giving up after `timeout` instead.
    pub fn with_timeout(
        now: Instant,
        method: Method,
        branch: String,
        bytes: Vec<u8>,
        link: Link,
        timeout: Duration,
    ) -> Self {
        ClientTxn {
            branch,
            method,
            transport: link.transport,
            local: link.local,
            dest: link.dest,
            bytes,
            retransmit: Retransmit::new(now, link.transport.is_reliable(), timeout),
        }
    }

    /// The first send (and every retransmission).
    pub fn transmit(&self) -> Transmit {
        self.transmit_bytes(self.bytes.clone())
    }

    /// Other bytes along the same path (the ACK for a 2xx).
    pub fn transmit_bytes(&self, data: Vec<u8>) -> Transmit {
        Transmit {
            transport: self.transport,
            local: self.local,
            to: self.dest,
            data,
        }
    }

    /// The request as sent.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// A 1xx arrived: an INVITE stops retransmitting (Timer A, §17.1.1.2); any other request
    /// goes on at T2 (§17.1.2.2).
    pub fn on_provisional(&mut self) {
        if self.method == Method::Invite {
            self.retransmit.stop();
        } else {
            self.retransmit.slow_to_t2();
        }
    }

    /// Stop retransmitting but stay until `now + linger` (an INVITE whose 2xx we ACKed, to
    /// ACK its retransmissions).
    pub fn linger(&mut self, now: Instant, linger: Duration) {
        self.retransmit = Retransmit::deadline_only(now + linger);
    }

    /// [`Step::Fire`]: send [`ClientTxn::transmit`] again; [`Step::GiveUp`]: Timer B/F fired.
    pub fn on_timeout(&mut self, now: Instant) -> Step {
        self.retransmit.on_timeout(now)
    }

    pub fn next_timeout(&self) -> Instant {
        self.retransmit.next_timeout()
    }
}

/// Where a client transaction's messages go: over `transport` from `local` to `dest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub transport: Transport,
    pub local: SocketAddr,
    pub dest: SocketAddr,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::timer::{T1, T2};

    fn link(transport: Transport) -> Link {
        Link {
            transport,
            local: "192.0.2.1:5060".parse().unwrap(),
            dest: "192.0.2.2:5060".parse().unwrap(),
        }
    }

    #[test]
    fn bye_retransmits_then_times_out() {
        let t0 = Instant::now();
        let mut t = ClientTxn::new(
            t0,
            Method::Bye,
            "z9hG4bKx".into(),
            b"BYE".to_vec(),
            link(Transport::Udp),
        );
        assert_eq!(t.next_timeout(), t0 + T1);
        assert_eq!(t.on_timeout(t0 + T1), Step::Fire);
        assert_eq!(t.transmit().data, b"BYE");
        assert_eq!(t.transmit().to, link(Transport::Udp).dest);
        t.on_provisional();
        assert_eq!(t.next_timeout(), t0 + T1 + 2 * T1);
        assert_eq!(t.on_timeout(t0 + 3 * T1), Step::Fire);
        assert_eq!(t.next_timeout(), t0 + 3 * T1 + T2);
        assert_eq!(t.on_timeout(t0 + 64 * T1), Step::GiveUp);
    }

    #[test]
    fn invite_stops_on_provisional_and_lingers_after_ack() {
        let t0 = Instant::now();
        let mut t = ClientTxn::new(
            t0,
            Method::Invite,
            "z9hG4bKy".into(),
            Vec::new(),
            link(Transport::Udp),
        );
        t.on_provisional();
        assert_eq!(t.next_timeout(), t0 + 64 * T1);
        t.linger(t0 + T1, 64 * T1);
        assert_eq!(t.next_timeout(), t0 + T1 + 64 * T1);
        let t = ClientTxn::new(
            t0,
            Method::Bye,
            "z9hG4bKz".into(),
            Vec::new(),
            link(Transport::Tcp),
        );
        assert_eq!(t.next_timeout(), t0 + 64 * T1);
    }
}
