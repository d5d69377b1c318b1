//! Batched UDP I/O for the media threads, the inbound demultiplexer of a shared port, and the
//! socket model they serve.
//!
//! Owns: [`SendBatch`] (up to [`BATCH`] datagrams, each in its own preallocated slot, flushed
//! with one `sendmmsg`), [`RecvBatch`] (`recvmmsg` into preallocated slots),
//! [`read_send_errors`] (the ICMP errors a socket's error queue holds, each naming the
//! destination it concerns) and [`Demux`] (inbound packet on a shared port → call). Nothing on
//! the send or receive path allocates: slots, headers and addresses are allocated once.
//!
//! # The socket model (`[rtp] port_model`)
//!
//! Most of a packet's CPU cost is the kernel's UDP send. A connected socket per call saves
//! nothing measurable; only batching across calls gets below the `sendto` floor, and
//! `sendmmsg` batches only what leaves through one socket. Measured side by side
//! (`examples/socket_model.rs`, benches/README.md), mohd's fan-out costs 3,072 ns per packet
//! at 1,000 calls with a socket per call and 2,309 ns with one shared socket (3,461 and 2,413
//! at 2,500): the shared socket saves a quarter to a third of the media threads' CPU, and its
//! sending part is `rtp_floor sendmmsg`'s. Hence two models, `[rtp] port_model` (wired in
//! `rtp::router`, which answers with the port, and `rtp::shell`, which sends and reads):
//!
//! - **shared**: each media thread owns one RTP/RTCP port pair (per local address calls
//!   arrive on, taken from `[rtp] ports` when its first call comes); a call is placed on its
//!   thread when the INVITE is answered, so the SDP answer names that thread's port, and it
//!   never moves (the rebalancer skips it; new calls still go to the least-loaded thread). A
//!   turn's due packets leave in `sendmmsg` batches per socket, RTCP too; inbound RTP/RTCP
//!   is read with `recvmmsg` every 20 ms and demultiplexed by [`Demux`]; the ICMP errors
//!   [`read_send_errors`] reads name the refused destination, hence every call sending
//!   there, whose peer is gone (as a per-call socket's `ECONNREFUSED` does). The default.
//!   This is what the PBXs
//!   on the other side do themselves and expect of a media server: Asterisk, FreeSWITCH and
//!   Cisco UCM route by the (address, port) a call's SDP named, and are indifferent to whether
//!   our port is shared with other calls; Cisco's own MOH server and SBCs (media relays)
//!   commonly serve many calls from few ports. RFC 4961 (symmetric RTP) holds: we send from
//!   exactly the port we advertise, so a NAT-latching SBC (which learns "where to send" from
//!   the source of what we send) latches onto our shared port per *its own* port — it
//!   allocates one port per call on its side, and that is what tells our calls apart.
//! - **per-call**: a port pair per call from `[rtp] ports`, one `sendto` per packet (no
//!   batching is possible across sockets). Kept for peers that filter by our port per call,
//!   for `MediaCommand::Add` with explicit sockets (multicast streams), and as the fallback.
//!
//! RTCP goes to the peer's RTCP port (RTP + 1 or `a=rtcp`) from our RTCP port (our RTP + 1),
//! or through the RTP port with rtcp-mux, in both models. SRTP stays per call: a packet is
//! routed to its call first, then authenticated with that call's context, and only then
//! counts as hearing from the peer or moves where we send.
//!
//! # Demultiplexing, and the NAT rule
//!
//! An inbound packet on a shared port belongs to a call, in this order:
//! 1. by its exact source address (IP and port), if a call expects it: the address the SDP
//!    named, or the one the call latched or followed since;
//! 2. by its SSRC, if it is the SSRC learned from that call's peer (learned only from
//!    packets that passed step 1 or 3 and the call's checks): the peer moved (NAT rebinding);
//! 3. latching, for a call not heard from yet: if exactly one such call expects this source
//!    IP (on another port: a NAT in front of the peer rewrote it), the packet is that call's.
//!    Two or more unheard calls expecting the same IP make it ambiguous and nothing latches:
//!    re-targeting a call from a guess could send one caller's music to another's phone.
//!
//! Everything else is counted and dropped. A caller of [`Demux::route`] authenticates the
//! packet (SRTP) before [`Demux::accept`] records it; only `accept` moves a call's address.
//! A plain-RTP peer is as safe here as with a port per call: there, anyone who knows the
//! call's port can redirect it; here, anyone who knows the peer's source address or SSRC.

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::socket::{
    self, ControlMessage, ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrLike,
    SockaddrStorage,
};

use super::fanout::MIN_BUFFER;
use super::packet::is_rtcp;

/// `[rtp] port_model`: how calls get their RTP/RTCP ports (see the module docs).
///
/// Shared is the default: 14 % cheaper per packet, measured. An ICMP port unreachable on a
/// shared port names only the peer's address, so it concerns every call sending there
/// ([`Demux::calls_sending_to`]): a PBX or SBC that reuses one RTP port for several calls
/// loses them all when it goes, as it would on per-call ports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PortModel {
    /// One port pair per media thread, shared by its calls: batched sends.
    #[default]
    Shared,
    /// A port pair per call.
    PerCall,
}

impl PortModel {
    /// The config's spelling: `"shared"`, `"per-call"`.
    pub fn from_config_name(name: &str) -> Option<Self> {
        match name {
            "shared" => Some(PortModel::Shared),
            "per-call" => Some(PortModel::PerCall),
            _ => None,
        }
    }
}

/// Datagrams per `sendmmsg` / `recvmmsg`. 64 × 20 ms packets amortise the syscall well
/// (`rtp_floor`'s gain is mostly reached by then) while a slot array stays in L2.
pub const BATCH: usize = 64;
/// Bytes per send slot: anything the fan-out writes fits.
pub const SEND_SLOT: usize = MIN_BUFFER;
/// Bytes per receive slot: a full Ethernet datagram and then some; longer ones are cut.
pub const RECV_SLOT: usize = 2048;

/// What a [`SendBatch`] has done since it was made.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendCounters {
    /// Datagrams the kernel took.
    pub sent: u64,
    /// `sendmmsg` calls made.
    pub syscalls: u64,
    /// Datagrams dropped because the socket's send buffer was full: the rest of that flush is
    /// dropped rather than waited for, since every other caller's packet waits behind it.
    pub dropped_full: u64,
    /// Datagrams dropped for an error of their own (reported through `flush`'s callback).
    pub failed: u64,
    /// ICMP errors (of earlier packets) that a send returned instead of sending; the packet is
    /// sent again, and whom the error concerned is read with [`read_send_errors`].
    pub errors_surfaced: u64,
}

/// A datagram the kernel refused for a reason of its own (not a full buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendFailure<A> {
    /// The tag it was pushed with (the call).
    pub tag: u64,
    pub dest: A,
    pub error: Errno,
}

/// Up to [`BATCH`] datagrams to any destinations, sent through one socket with one
/// `sendmmsg`. Write a datagram into [`SendBatch::slot`], [`SendBatch::push`] it, and
/// [`SendBatch::flush`] when full or at the end of the turn.
///
/// Not `Send` (nix's preallocated headers hold raw pointers): make it on the thread that
/// uses it.
pub struct SendBatch<A: SockaddrLike + Copy = SockaddrStorage> {
    slots: Box<[u8]>,
    lens: [usize; BATCH],
    dests: Box<[Option<A>]>,
    tags: [u64; BATCH],
    queued: usize,
    headers: MultiHeaders<A>,
    counters: SendCounters,
}

impl<A: SockaddrLike + Copy> Default for SendBatch<A> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A: SockaddrLike + Copy> SendBatch<A> {
    pub fn new() -> Self {
        SendBatch {
            slots: vec![0u8; BATCH * SEND_SLOT].into_boxed_slice(),
            lens: [0; BATCH],
            dests: vec![None; BATCH].into_boxed_slice(),
            tags: [0; BATCH],
            queued: 0,
            headers: MultiHeaders::preallocate(BATCH, None),
            counters: SendCounters::default(),
        }
    }

    /// Datagrams waiting for the next flush.
    pub fn len(&self) -> usize {
        self.queued
    }

    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    pub fn is_full(&self) -> bool {
        self.queued == BATCH
    }

    pub fn counters(&self) -> SendCounters {
        self.counters
    }

    /// The next free slot ([`SEND_SLOT`] bytes, holding stale bytes); `None` when full.
    pub fn slot(&mut self) -> Option<&mut [u8]> {
        if self.is_full() {
            return None;
        }
        let start = self.queued * SEND_SLOT;
        Some(&mut self.slots[start..start + SEND_SLOT])
    }

    /// Queues the `len` bytes written at the start of [`SendBatch::slot`] for `dest`.
    ///
    /// # Panics
    ///
    /// When the batch is full or `len` exceeds the slot (programming errors).
    pub fn push(&mut self, len: usize, dest: impl Into<A>, tag: u64) {
        assert!(!self.is_full(), "push on a full batch: flush first");
        assert!(len <= SEND_SLOT, "datagram longer than a slot");
        let i = self.queued;
        self.lens[i] = len;
        self.dests[i] = Some(dest.into());
        self.tags[i] = tag;
        self.queued += 1;
    }

    /// Sends what is queued through `socket`, never waiting (`MSG_DONTWAIT`), and empties the
    /// batch. Returns how many the kernel took. A full send buffer drops the rest of the batch
    /// (counted); a datagram the kernel refuses for itself is dropped, counted and reported to
    /// `on_failure`; an ICMP error of an earlier packet returned by a send is counted and the
    /// datagram sent again.
    pub fn flush(
        &mut self,
        socket: &impl AsRawFd,
        on_failure: impl FnMut(SendFailure<A>),
    ) -> usize {
        let fd = socket.as_raw_fd();
        let SendBatch {
            slots,
            lens,
            dests,
            tags,
            queued,
            headers,
            counters,
        } = self;
        let messages: [[IoSlice<'_>; 1]; BATCH] = std::array::from_fn(|i| {
            let start = i * SEND_SLOT;
            [IoSlice::new(&slots[start..start + lens[i]])]
        });
        let no_control: &[ControlMessage<'_>] = &[];
        let dests: &[Option<A>] = dests;
        let send = |range: std::ops::Range<usize>| -> Result<usize, Errno> {
            socket::sendmmsg(
                fd,
                &mut *headers,
                messages[range.clone()].iter(),
                &dests[range],
                no_control,
                MsgFlags::MSG_DONTWAIT,
            )
            .map(Iterator::count)
        };
        let count = std::mem::take(queued);
        drive_flush(count, send, counters, tags, dests, on_failure)
    }
}

/// The flush loop, apart from the syscall so that its handling of partial sends and errors
/// is tested against a scripted kernel as well as a real one.
fn drive_flush<A: Copy>(
    queued: usize,
    mut send: impl FnMut(std::ops::Range<usize>) -> Result<usize, Errno>,
    counters: &mut SendCounters,
    tags: &[u64],
    dests: &[Option<A>],
    mut on_failure: impl FnMut(SendFailure<A>),
) -> usize {
    let mut next = 0;
    let mut sent = 0;
    // One ICMP error per send at most is pending (the socket keeps the latest), so a retry
    // after each one is bounded by the datagrams themselves.
    let mut retried_at = None;
    while next < queued {
        counters.syscalls += 1;
        match send(next..queued) {
            Ok(n) if n > 0 => {
                next += n;
                sent += n;
            }
            Err(Errno::EAGAIN | Errno::ENOBUFS) => {
                counters.dropped_full += (queued - next) as u64;
                break;
            }
            Err(Errno::ECONNREFUSED | Errno::EHOSTUNREACH | Errno::ENETUNREACH)
                if retried_at != Some(next) =>
            {
                counters.errors_surfaced += 1;
                retried_at = Some(next);
            }
            Err(Errno::EINTR) if retried_at != Some(next) => retried_at = Some(next),
            result => {
                // `Ok(0)` never happens for a non-empty batch; treated as that datagram's error.
                let error = result.err().unwrap_or(Errno::EIO);
                counters.failed += 1;
                if let Some(dest) = dests[next] {
                    on_failure(SendFailure {
                        tag: tags[next],
                        dest,
                        error,
                    });
                }
                next += 1;
            }
        }
    }
    counters.sent += sent as u64;
    sent
}

/// Up to [`BATCH`] datagrams read with one `recvmmsg`, each with its source.
///
/// Not `Send`, like [`SendBatch`].
pub struct RecvBatch {
    slots: Box<[u8]>,
    lens: [usize; BATCH],
    sources: [Option<SocketAddr>; BATCH],
    received: usize,
    headers: MultiHeaders<SockaddrStorage>,
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBatch {
    pub fn new() -> Self {
        RecvBatch {
            slots: vec![0u8; BATCH * RECV_SLOT].into_boxed_slice(),
            lens: [0; BATCH],
            sources: [None; BATCH],
            received: 0,
            headers: MultiHeaders::preallocate(BATCH, None),
        }
    }

    /// Reads what `socket` holds, up to [`BATCH`] datagrams, never waiting; returns how many
    /// (0: nothing waiting). An ICMP error returned instead of data (a refusal of something we
    /// sent, see [`read_send_errors`]) is skipped.
    pub fn recv(&mut self, socket: &impl AsRawFd) -> Result<usize, Errno> {
        let fd = socket.as_raw_fd();
        self.received = 0;
        for _ in 0..2 {
            let RecvBatch {
                slots,
                lens,
                sources,
                headers,
                ..
            } = self;
            let mut chunks = slots.chunks_exact_mut(RECV_SLOT);
            let mut messages: [[IoSliceMut<'_>; 1]; BATCH] =
                std::array::from_fn(|_| [IoSliceMut::new(chunks.next().unwrap_or_default())]);
            match socket::recvmmsg(
                fd,
                headers,
                messages.iter_mut(),
                MsgFlags::MSG_DONTWAIT,
                None,
            ) {
                Ok(results) => {
                    let mut n = 0;
                    for (i, message) in results.enumerate() {
                        lens[i] = message.bytes.min(RECV_SLOT);
                        sources[i] = message.address.as_ref().and_then(socket_addr);
                        n = i + 1;
                    }
                    self.received = n;
                    return Ok(n);
                }
                Err(Errno::EAGAIN) => return Ok(0),
                Err(Errno::ECONNREFUSED | Errno::EHOSTUNREACH | Errno::ENETUNREACH) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(0)
    }

    /// Datagrams from the last [`RecvBatch::recv`].
    pub fn len(&self) -> usize {
        self.received
    }

    pub fn is_empty(&self) -> bool {
        self.received == 0
    }

    /// Datagram `i` of the last read (mutable: SRTP decrypts in place) and its source; `None`
    /// past the end or for a source that is not IP.
    pub fn get(&mut self, i: usize) -> Option<(&mut [u8], SocketAddr)> {
        if i >= self.received {
            return None;
        }
        let source = self.sources[i]?;
        let start = i * RECV_SLOT;
        Some((&mut self.slots[start..start + self.lens[i]], source))
    }
}

/// An ICMP error the kernel queued for something `socket` sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendError {
    /// Where the refused datagram went (the call's peer).
    pub dest: SocketAddr,
    /// `ECONNREFUSED` for port unreachable, `EHOSTUNREACH`...
    pub error: Errno,
}

/// Reads up to `limit` ICMP errors from `socket`'s error queue (needs `IP_RECVERR` /
/// `IPV6_RECVERR`), each naming the destination it concerns: on a shared socket the only way
/// to know which call's peer refused. `cmsg` is caller-owned space for the error's control
/// message ([`send_error_space`]). Never waits.
pub fn read_send_errors(
    socket: &impl AsRawFd,
    cmsg: &mut [u8],
    limit: usize,
    mut on_error: impl FnMut(SendError),
) -> usize {
    let fd = socket.as_raw_fd();
    let mut payload = [0u8; 64];
    let mut read = 0;
    while read < limit {
        let mut iov = [IoSliceMut::new(&mut payload)];
        let Ok(message) = socket::recvmsg::<SockaddrStorage>(
            fd,
            &mut iov,
            Some(&mut *cmsg),
            MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT,
        ) else {
            break;
        };
        read += 1;
        let Some(dest) = message.address.as_ref().and_then(socket_addr) else {
            continue;
        };
        let Ok(controls) = message.cmsgs() else {
            continue;
        };
        for control in controls {
            let errno = match control {
                ControlMessageOwned::Ipv4RecvErr(e, _) => e.ee_errno,
                ControlMessageOwned::Ipv6RecvErr(e, _) => e.ee_errno,
                _ => continue,
            };
            on_error(SendError {
                dest,
                error: Errno::from_raw(errno as i32),
            });
        }
    }
    read
}

/// Control-message space for [`read_send_errors`].
pub fn send_error_space() -> Vec<u8> {
    // An extended error and the offender's address, for either family.
    nix::cmsg_space!([u8; 16], nix::sys::socket::SockaddrIn6)
}

/// The socket address of an IP `SockaddrStorage`, IPv4-mapped IPv6 folded to IPv4 (a
/// dual-stack socket reports IPv4 peers that way; the SDP names them plainly).
fn socket_addr(storage: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = storage.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    storage
        .as_sockaddr_in6()
        .map(|v6| canonical(SocketAddr::V6(SocketAddrV6::from(*v6))))
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Which call an inbound packet on a shared port belongs to, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// From an address the call expects.
    Source(u64),
    /// From elsewhere, carrying the SSRC learned from the call's peer: the peer moved.
    Ssrc(u64),
    /// From the IP that the one not-yet-heard call expecting that IP named, another port.
    Latch(u64),
    /// Nobody's: dropped and counted.
    Unknown,
}

impl Route {
    pub fn call(self) -> Option<u64> {
        match self {
            Route::Source(c) | Route::Ssrc(c) | Route::Latch(c) => Some(c),
            Route::Unknown => None,
        }
    }
}

/// What [`Demux`] has dropped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DemuxCounters {
    /// Packets no call could claim.
    pub unknown: u64,
    /// Of those, packets that two or more unheard calls from the same IP could have claimed.
    pub ambiguous: u64,
}

#[derive(Debug, Clone, Copy)]
struct Expected {
    rtp: SocketAddr,
    /// `None` with rtcp-mux: RTCP comes from the RTP address.
    rtcp: Option<SocketAddr>,
    heard: bool,
    ssrc: Option<u32>,
}

/// Inbound packet on a shared port → call (see the module docs for the rule). Pure.
#[derive(Debug, Default)]
pub struct Demux {
    calls: HashMap<u64, Expected>,
    by_source: HashMap<SocketAddr, u64>,
    /// Every call sending to an address (its RTP or RTCP peer): an ICMP error names only the
    /// address, and several calls may send there (a PBX or SBC that reuses one RTP port).
    by_dest: HashMap<SocketAddr, Vec<u64>>,
    /// `None`: two calls' peers use that SSRC; it routes nothing.
    by_ssrc: HashMap<u32, Option<u64>>,
    /// Calls not heard from yet, by the IP their SDP named.
    unheard_by_ip: HashMap<IpAddr, Vec<u64>>,
    counters: DemuxCounters,
}

impl Demux {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn counters(&self) -> DemuxCounters {
        self.counters
    }

    pub fn len(&self) -> usize {
        self.calls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// Expects `call`'s peer at `rtp` (and `rtcp`, `None` with rtcp-mux), as its SDP said. A
    /// call already present is replaced (a re-INVITE's new address); the newest call owns an
    /// address that two calls name.
    pub fn insert(&mut self, call: u64, rtp: SocketAddr, rtcp: Option<SocketAddr>) {
        let (rtp, rtcp) = (canonical(rtp), rtcp.map(canonical));
        let ssrc = self.remove_entry(call).and_then(|e| e.ssrc);
        self.by_source.insert(rtp, call);
        self.add_dest(rtp, call);
        if let Some(rtcp) = rtcp {
            self.by_source.insert(rtcp, call);
            if rtcp != rtp {
                self.add_dest(rtcp, call);
            }
        }
        self.unheard_by_ip.entry(rtp.ip()).or_default().push(call);
        self.calls.insert(
            call,
            Expected {
                rtp,
                rtcp,
                heard: false,
                ssrc: None,
            },
        );
        if let Some(ssrc) = ssrc {
            self.learn_ssrc(call, ssrc);
        }
    }

    /// Forgets `call`; false when it was not there.
    pub fn remove(&mut self, call: u64) -> bool {
        self.remove_entry(call).is_some()
    }

    fn remove_entry(&mut self, call: u64) -> Option<Expected> {
        let e = self.calls.remove(&call)?;
        for addr in [Some(e.rtp), e.rtcp].into_iter().flatten() {
            if self.by_source.get(&addr) == Some(&call) {
                self.by_source.remove(&addr);
            }
            self.drop_dest(addr, call);
        }
        if let Some(ssrc) = e.ssrc
            && self.by_ssrc.get(&ssrc) == Some(&Some(call))
        {
            self.by_ssrc.remove(&ssrc);
        }
        self.mark_heard(call, e.rtp.ip());
        Some(e)
    }

    /// The call whose peer is at `addr` (the newest, when several send there): who owns
    /// inbound packets from it.
    pub fn call_at(&self, addr: SocketAddr) -> Option<u64> {
        self.by_source.get(&canonical(addr)).copied()
    }

    /// Every call whose RTP or RTCP goes to `addr`: whom an ICMP error for a datagram sent
    /// there concerns. A refused port is refused for every call sending to it.
    pub fn calls_sending_to(&self, addr: SocketAddr) -> &[u64] {
        self.by_dest
            .get(&canonical(addr))
            .map_or(&[], Vec::as_slice)
    }

    fn add_dest(&mut self, addr: SocketAddr, call: u64) {
        let calls = self.by_dest.entry(addr).or_default();
        if !calls.contains(&call) {
            calls.push(call);
        }
    }

    fn drop_dest(&mut self, addr: SocketAddr, call: u64) {
        if let Some(calls) = self.by_dest.get_mut(&addr) {
            if let Some(i) = calls.iter().position(|&c| c == call) {
                calls.swap_remove(i);
            }
            if calls.is_empty() {
                self.by_dest.remove(&addr);
            }
        }
    }

    /// Which call `packet` from `from` belongs to. Changes nothing but the counters: the
    /// caller checks the packet (SRTP) and then calls [`Demux::accept`].
    pub fn route(&mut self, from: SocketAddr, packet: &[u8]) -> Route {
        let from = canonical(from);
        if let Some(&call) = self.by_source.get(&from) {
            return Route::Source(call);
        }
        if let Some(ssrc) = peer_ssrc(packet)
            && let Some(&Some(call)) = self.by_ssrc.get(&ssrc)
        {
            return Route::Ssrc(call);
        }
        match self.unheard_by_ip.get(&from.ip()).map(Vec::as_slice) {
            Some(&[call]) => Route::Latch(call),
            Some([_, _, ..]) => {
                self.counters.unknown += 1;
                self.counters.ambiguous += 1;
                Route::Unknown
            }
            _ => {
                self.counters.unknown += 1;
                Route::Unknown
            }
        }
    }

    /// Records that `packet` from `from`, routed to `call`, passed the call's checks: the call
    /// has been heard, its peer's SSRC is learned, and a source other than the expected one
    /// becomes the call's address for that kind (RTP or RTCP). Returns the call's new
    /// `(rtp, rtcp)` addresses when they moved (symmetric RTP: send there from now on).
    pub fn accept(
        &mut self,
        call: u64,
        from: SocketAddr,
        packet: &[u8],
    ) -> Option<(SocketAddr, Option<SocketAddr>)> {
        let from = canonical(from);
        let before = *self.calls.get(&call)?;
        self.mark_heard(call, before.rtp.ip());
        if let Some(ssrc) = peer_ssrc(packet)
            && before.ssrc != Some(ssrc)
        {
            self.learn_ssrc(call, ssrc);
        }
        let (mut rtp, mut rtcp) = (before.rtp, before.rtcp);
        if !is_rtcp(packet) {
            rtp = from;
        } else if rtcp.is_some() {
            rtcp = Some(from);
        }
        if rtp == before.rtp && rtcp == before.rtcp {
            return None;
        }
        for (old, new) in [(Some(before.rtp), Some(rtp)), (before.rtcp, rtcp)] {
            if let (Some(old), Some(new)) = (old, new)
                && old != new
            {
                self.move_source(call, old, new);
            }
        }
        for old in [Some(before.rtp), before.rtcp].into_iter().flatten() {
            self.drop_dest(old, call);
        }
        for new in [Some(rtp), rtcp].into_iter().flatten() {
            self.add_dest(new, call);
        }
        let e = self.calls.get_mut(&call)?;
        (e.rtp, e.rtcp) = (rtp, rtcp);
        Some((rtp, rtcp))
    }

    fn move_source(&mut self, call: u64, old: SocketAddr, new: SocketAddr) {
        if self.by_source.get(&old) == Some(&call) {
            self.by_source.remove(&old);
        }
        self.by_source.insert(new, call);
    }

    fn mark_heard(&mut self, call: u64, ip: IpAddr) {
        if let Some(calls) = self.unheard_by_ip.get_mut(&ip) {
            calls.retain(|&c| c != call);
            if calls.is_empty() {
                self.unheard_by_ip.remove(&ip);
            }
        }
        if let Some(e) = self.calls.get_mut(&call) {
            e.heard = true;
        }
    }

    fn learn_ssrc(&mut self, call: u64, ssrc: u32) {
        let Some(e) = self.calls.get_mut(&call) else {
            return;
        };
        let old = e.ssrc.replace(ssrc);
        if let Some(old) = old
            && self.by_ssrc.get(&old) == Some(&Some(call))
        {
            self.by_ssrc.remove(&old);
        }
        self.by_ssrc
            .entry(ssrc)
            .and_modify(|owner| {
                if *owner != Some(call) {
                    *owner = None;
                }
            })
            .or_insert(Some(call));
    }
}

/// The sender's SSRC of an RTP packet or an RTCP compound (its first report's); `None` for
/// anything too short or not version 2.
fn peer_ssrc(packet: &[u8]) -> Option<u32> {
    if packet.first().is_none_or(|b| b >> 6 != 2) {
        return None;
    }
    let at = if is_rtcp(packet) { 4 } else { 8 };
    let bytes = packet.get(at..at + 4)?;
    Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr, UdpSocket};
    use std::time::Duration;

    const LOCAL: Ipv4Addr = Ipv4Addr::LOCALHOST;

    fn receivers(ip: IpAddr, n: usize) -> Vec<UdpSocket> {
        (0..n)
            .map(|_| {
                let s = UdpSocket::bind((ip, 0)).expect("bind a receiver");
                s.set_read_timeout(Some(Duration::from_secs(2)))
                    .expect("timeout");
                s
            })
            .collect()
    }

    /// Queues one numbered datagram of `len` bytes for `dest`, flushing first when full.
    fn queue(batch: &mut SendBatch, socket: &UdpSocket, n: u32, len: usize, dest: SocketAddr) {
        if batch.is_full() {
            batch.flush(socket, |f| panic!("unexpected failure {f:?}"));
        }
        let slot = batch.slot().expect("room after a flush");
        slot[..4].copy_from_slice(&n.to_be_bytes());
        batch.push(len, dest, u64::from(n));
    }

    fn received_number(socket: &UdpSocket) -> (u32, usize) {
        let mut buf = [0u8; 256];
        let (len, _) = socket.recv_from(&mut buf).expect("the datagram arrived");
        (u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]), len)
    }

    #[test]
    fn a_thousand_packets_to_a_thousand_destinations_all_arrive_in_batches() {
        let sinks = receivers(IpAddr::V4(LOCAL), 1000);
        let sender = UdpSocket::bind((LOCAL, 0)).expect("bind");
        sender.set_nonblocking(true).expect("non-blocking");
        let mut batch = SendBatch::new();
        for (n, sink) in sinks.iter().enumerate() {
            let dest = sink.local_addr().expect("addr");
            queue(&mut batch, &sender, n as u32, 172, dest);
        }
        batch.flush(&sender, |f| panic!("unexpected failure {f:?}"));
        let c = batch.counters();
        assert_eq!((c.sent, c.dropped_full, c.failed), (1000, 0, 0));
        assert_eq!(c.syscalls, 1000_u64.div_ceil(BATCH as u64), "{c:?}");
        for (n, sink) in sinks.iter().enumerate() {
            assert_eq!(received_number(sink), (n as u32, 172), "receiver {n}");
        }
    }

    #[test]
    fn ipv6_destinations_are_reached_too() {
        let Ok(sender) = UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)) else {
            return; // no IPv6 on this host
        };
        sender.set_nonblocking(true).expect("non-blocking");
        let sinks = receivers(IpAddr::V6(Ipv6Addr::LOCALHOST), 100);
        let mut batch = SendBatch::new();
        for (n, sink) in sinks.iter().enumerate() {
            queue(
                &mut batch,
                &sender,
                n as u32,
                60,
                sink.local_addr().expect("addr"),
            );
        }
        assert_eq!(batch.flush(&sender, |f| panic!("{f:?}")), 100 - BATCH);
        for (n, sink) in sinks.iter().enumerate() {
            assert_eq!(received_number(sink), (n as u32, 60));
        }
    }

    #[test]
    fn a_datagram_of_the_wrong_family_fails_alone_and_names_its_call() {
        let sender = UdpSocket::bind((LOCAL, 0)).expect("bind");
        sender.set_nonblocking(true).expect("non-blocking");
        let sinks = receivers(IpAddr::V4(LOCAL), 2);
        let mut batch = SendBatch::new();
        queue(
            &mut batch,
            &sender,
            0,
            20,
            sinks[0].local_addr().expect("a"),
        );
        let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 9);
        queue(&mut batch, &sender, 1, 20, v6);
        queue(
            &mut batch,
            &sender,
            2,
            20,
            sinks[1].local_addr().expect("a"),
        );
        let mut failures = Vec::new();
        assert_eq!(batch.flush(&sender, |f| failures.push(f)), 2);
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert_eq!(failures[0].tag, 1);
        assert_eq!(received_number(&sinks[0]).0, 0);
        assert_eq!(received_number(&sinks[1]).0, 2);
    }

    #[test]
    fn partial_sends_and_errors_are_handled_per_datagram() {
        // A scripted kernel: 10 sent, an earlier packet's ICMP error, 20 sent, datagram 30
        // refused for itself, 5 sent, then a full buffer.
        let mut script = vec![
            Ok(10),
            Err(Errno::ECONNREFUSED),
            Ok(20),
            Err(Errno::EINVAL),
            Ok(5),
            Err(Errno::EAGAIN),
        ]
        .into_iter();
        let mut starts = Vec::new();
        let tags: Vec<u64> = (100..164).collect();
        let dests: Vec<Option<u16>> = (0..64).map(Some).collect();
        let mut counters = SendCounters::default();
        let mut failures = Vec::new();
        let sent = drive_flush(
            64,
            |range| {
                starts.push(range.start);
                script.next().expect("no more sends than scripted")
            },
            &mut counters,
            &tags,
            &dests,
            |f| failures.push(f),
        );
        assert_eq!(sent, 35);
        assert_eq!(starts, [0, 10, 10, 30, 31, 36]);
        assert_eq!(
            failures,
            [SendFailure {
                tag: 130,
                dest: 30,
                error: Errno::EINVAL
            }]
        );
        assert_eq!(
            counters,
            SendCounters {
                sent: 35,
                syscalls: 6,
                dropped_full: 28,
                failed: 1,
                errors_surfaced: 1,
            }
        );
    }

    #[test]
    fn a_full_receiver_drops_the_rest_of_the_batch_without_blocking() {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr as UnixSocketAddr, UnixDatagram};
        // A Unix datagram peer that never reads fills up (loopback UDP never pushes back).
        let name = format!("mohd-io-test-{}", std::process::id());
        let listen = UnixSocketAddr::from_abstract_name(name.as_bytes()).expect("name");
        let receiver = UnixDatagram::bind_addr(&listen).expect("bind");
        let sender = UnixDatagram::unbound().expect("socket");
        let dest = socket::UnixAddr::new_abstract(name.as_bytes()).expect("addr");
        let mut batch: SendBatch<socket::UnixAddr> = SendBatch::new();
        let mut partial_flushes = 0;
        for _ in 0..40 {
            while let Some(slot) = batch.slot() {
                slot[..4].copy_from_slice(b"RTP!");
                batch.push(1000, dest, 0);
            }
            let sent = batch.flush(&sender, |f| panic!("{f:?}"));
            if sent > 0 && sent < BATCH {
                partial_flushes += 1;
            }
        }
        let c = batch.counters();
        assert_eq!(c.sent + c.dropped_full, 40 * BATCH as u64, "{c:?}");
        assert!(c.sent > 0 && c.dropped_full > 0, "{c:?}");
        assert!(partial_flushes <= 1, "once full it stays full: {c:?}");
        // The receiver holds exactly what was counted as sent.
        receiver.set_nonblocking(true).expect("non-blocking");
        let mut buf = [0u8; 2048];
        let mut got = 0;
        while receiver.recv(&mut buf).is_ok() {
            got += 1;
        }
        assert_eq!(got, c.sent);
    }

    #[test]
    fn a_receive_batch_gives_each_datagram_with_its_length_and_source() {
        let receiver = UdpSocket::bind((LOCAL, 0)).expect("bind");
        let to = receiver.local_addr().expect("addr");
        let senders = receivers(IpAddr::V4(LOCAL), 3);
        let mut expected = HashMap::new();
        for round in 0..30usize {
            let sender = &senders[round % 3];
            let len = 12 + round;
            let mut packet = vec![0u8; len];
            packet[0] = round as u8;
            sender.send_to(&packet, to).expect("send");
            expected.insert(round as u8, (len, sender.local_addr().expect("addr")));
        }
        let mut batch = RecvBatch::new();
        let mut seen = HashMap::new();
        for _ in 0..200 {
            let n = batch.recv(&receiver).expect("recvmmsg");
            for i in 0..n {
                let (packet, from) = batch.get(i).expect("in range");
                seen.insert(packet[0], (packet.len(), from));
            }
            if seen.len() == 30 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(seen, expected);
        assert_eq!(batch.recv(&receiver), Ok(0), "nothing left, and no waiting");
    }

    fn closed_port() -> SocketAddr {
        let s = UdpSocket::bind((LOCAL, 0)).expect("bind");
        s.local_addr().expect("addr")
    }

    fn shared_socket() -> UdpSocket {
        use nix::sys::socket::{setsockopt, sockopt};
        let s = UdpSocket::bind((LOCAL, 0)).expect("bind");
        s.set_nonblocking(true).expect("non-blocking");
        setsockopt(&s, sockopt::Ipv4RecvErr, &true).expect("IP_RECVERR");
        s
    }

    /// Waits (bounded) for the ICMP errors of what `socket` sent.
    fn send_errors(socket: &UdpSocket) -> Vec<SendError> {
        let mut cmsg = send_error_space();
        let mut errors = Vec::new();
        for _ in 0..100 {
            read_send_errors(socket, &mut cmsg, 16, |e| errors.push(e));
            if !errors.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        errors
    }

    #[test]
    fn an_icmp_refusal_on_a_shared_socket_names_the_call_whose_peer_refused() {
        let shared = shared_socket();
        let (gone, alive) = (closed_port(), receivers(IpAddr::V4(LOCAL), 1));
        let alive_addr = alive[0].local_addr().expect("addr");
        let mut demux = Demux::new();
        demux.insert(7, gone, None);
        demux.insert(8, alive_addr, None);
        let mut batch = SendBatch::new();
        queue(&mut batch, &shared, 1, 40, alive_addr);
        queue(&mut batch, &shared, 2, 40, gone);
        batch.flush(&shared, |f| panic!("{f:?}"));
        let errors = send_errors(&shared);
        assert_eq!(
            errors,
            [SendError {
                dest: gone,
                error: Errno::ECONNREFUSED
            }]
        );
        assert_eq!(demux.calls_sending_to(errors[0].dest), [7]);
        assert_eq!(received_number(&alive[0]).0, 1);
    }

    #[test]
    fn an_icmp_error_concerns_every_call_sending_to_that_address() {
        let mut d = Demux::new();
        // Three calls to one peer port (a PBX that reuses it), one elsewhere.
        for call in 1..=3 {
            d.insert(call, at(1, 4000), Some(at(1, 4001)));
        }
        d.insert(4, at(1, 5000), None);
        let mut refused = d.calls_sending_to(at(1, 4000)).to_vec();
        refused.sort_unstable();
        assert_eq!(refused, [1, 2, 3]);
        assert_eq!(d.calls_sending_to(at(1, 4001)).len(), 3, "RTCP's port too");
        assert_eq!(d.calls_sending_to(at(1, 5000)), [4]);
        // Call 2's peer moves (symmetric RTP): it no longer sends to the old port.
        assert!(d.accept(2, at(1, 30000), &rtp(0xBBBB)).is_some());
        let mut refused = d.calls_sending_to(at(1, 4000)).to_vec();
        refused.sort_unstable();
        assert_eq!(refused, [1, 3]);
        assert_eq!(d.calls_sending_to(at(1, 30000)), [2]);
        // A re-INVITE to another address, and an ended call, leave nothing behind.
        d.insert(1, at(1, 6000), None);
        assert!(d.remove(3));
        assert!(d.calls_sending_to(at(1, 4000)).is_empty());
        assert_eq!(d.calls_sending_to(at(1, 4001)), [2]);
        assert!(d.remove(2) && d.remove(1) && d.remove(4));
        assert!(d.by_dest.is_empty(), "{:?}", d.by_dest);
    }

    #[test]
    fn an_icmp_error_surfacing_on_a_send_does_not_lose_the_packet() {
        let shared = shared_socket();
        let alive = receivers(IpAddr::V4(LOCAL), 1);
        let mut batch = SendBatch::new();
        queue(&mut batch, &shared, 1, 40, closed_port());
        batch.flush(&shared, |f| panic!("{f:?}"));
        std::thread::sleep(Duration::from_millis(50));
        queue(
            &mut batch,
            &shared,
            2,
            40,
            alive[0].local_addr().expect("addr"),
        );
        batch.flush(&shared, |f| panic!("{f:?}"));
        assert_eq!(received_number(&alive[0]).0, 2);
        let c = batch.counters();
        assert_eq!((c.sent, c.errors_surfaced), (2, 1), "{c:?}");
    }

    // Demultiplexing: pure, documentation addresses.

    fn at(last: u8, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, last)), port)
    }

    fn rtp(ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, 0, 0, 1, 0, 0, 0, 0];
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[0xff; 160]);
        p
    }

    fn rtcp_rr(ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, 201, 0, 1];
        p.extend_from_slice(&ssrc.to_be_bytes());
        p
    }

    #[test]
    fn packets_go_to_the_call_whose_sdp_named_their_source() {
        let mut d = Demux::new();
        d.insert(1, at(1, 4000), Some(at(1, 4001)));
        d.insert(2, at(1, 4002), Some(at(1, 4003)));
        d.insert(3, at(9, 4000), None);
        assert_eq!(d.route(at(1, 4000), &rtp(11)), Route::Source(1));
        assert_eq!(d.route(at(1, 4001), &rtcp_rr(11)), Route::Source(1));
        assert_eq!(d.route(at(1, 4002), &rtp(22)), Route::Source(2));
        assert_eq!(d.route(at(9, 4000), &rtcp_rr(33)), Route::Source(3));
        assert_eq!(d.accept(1, at(1, 4000), &rtp(11)), None, "nothing moved");
        assert_eq!(d.counters(), DemuxCounters::default());
    }

    #[test]
    fn a_peer_that_moves_is_followed_by_its_learned_ssrc() {
        let mut d = Demux::new();
        d.insert(1, at(1, 4000), Some(at(1, 4001)));
        d.insert(2, at(1, 4002), Some(at(1, 4003)));
        // Heard from the SDP's addresses: both peers' SSRCs learned.
        assert_eq!(d.accept(1, at(1, 4000), &rtp(0xAAAA)), None);
        assert_eq!(d.accept(2, at(1, 4002), &rtp(0xBBBB)), None);
        // Call 1's NAT rebinds: a new source port, same SSRC.
        assert_eq!(d.route(at(1, 30000), &rtp(0xAAAA)), Route::Ssrc(1));
        assert_eq!(
            d.accept(1, at(1, 30000), &rtp(0xAAAA)),
            Some((at(1, 30000), Some(at(1, 4001))))
        );
        assert_eq!(d.route(at(1, 30000), &rtp(0xAAAA)), Route::Source(1));
        assert_eq!(d.route(at(1, 30001), &rtcp_rr(0xAAAA)), Route::Ssrc(1));
        assert_eq!(
            d.accept(1, at(1, 30001), &rtcp_rr(0xAAAA)),
            Some((at(1, 30000), Some(at(1, 30001))))
        );
        assert_eq!(d.call_at(at(1, 30001)), Some(1));
        assert_eq!(d.call_at(at(1, 4001)), None, "the old address is free");
        // A stranger with an unknown SSRC from the same IP gets nothing: both calls are heard.
        assert_eq!(d.route(at(1, 5555), &rtp(0xCCCC)), Route::Unknown);
        assert_eq!(d.counters().unknown, 1);
    }

    #[test]
    fn only_the_one_unheard_call_expecting_an_ip_latches_another_port() {
        let mut d = Demux::new();
        d.insert(1, at(1, 4000), Some(at(1, 4001)));
        // The PBX's NAT rewrote the port: the only unheard call from that IP latches.
        assert_eq!(d.route(at(1, 61000), &rtp(7)), Route::Latch(1));
        assert_eq!(
            d.accept(1, at(1, 61000), &rtp(7)),
            Some((at(1, 61000), Some(at(1, 4001))))
        );
        assert_eq!(d.route(at(1, 61000), &rtp(7)), Route::Source(1));

        // Two unheard calls from one IP: ambiguous, nothing latches.
        d.insert(2, at(5, 4000), None);
        d.insert(3, at(5, 4002), None);
        assert_eq!(d.route(at(5, 50000), &rtp(8)), Route::Unknown);
        assert_eq!(d.counters().ambiguous, 1);
        // Once call 2 is heard from its own address, call 3 is the only one left.
        assert_eq!(d.route(at(5, 4000), &rtp(8)), Route::Source(2));
        assert_eq!(d.accept(2, at(5, 4000), &rtp(8)), None);
        assert_eq!(d.route(at(5, 50002), &rtp(9)), Route::Latch(3));
        // An unknown IP latches nothing.
        assert_eq!(d.route(at(77, 4000), &rtp(1)), Route::Unknown);
        assert_eq!(d.counters().unknown, 2);
    }

    #[test]
    fn two_peers_with_one_ssrc_are_told_apart_by_address_only() {
        let mut d = Demux::new();
        d.insert(1, at(1, 4000), None);
        d.insert(2, at(2, 4000), None);
        d.accept(1, at(1, 4000), &rtp(42));
        d.accept(2, at(2, 4000), &rtp(42));
        assert_eq!(d.route(at(1, 4000), &rtp(42)), Route::Source(1));
        assert_eq!(d.route(at(2, 4000), &rtp(42)), Route::Source(2));
        assert_eq!(d.route(at(3, 4000), &rtp(42)), Route::Unknown);
    }

    #[test]
    fn removing_a_call_frees_only_what_it_owns() {
        let mut d = Demux::new();
        d.insert(1, at(1, 4000), None);
        // A new call names the same address (the PBX reused its port): the newest owns it.
        d.insert(2, at(1, 4000), None);
        assert_eq!(d.route(at(1, 4000), &rtp(1)), Route::Source(2));
        assert!(d.remove(1));
        assert_eq!(d.route(at(1, 4000), &rtp(1)), Route::Source(2));
        assert!(d.remove(2));
        assert!(!d.remove(2));
        assert_eq!(d.route(at(1, 4000), &rtp(1)), Route::Unknown);
        assert!(d.is_empty());
    }

    #[test]
    fn an_ipv4_mapped_source_routes_to_the_ipv4_call() {
        let mut d = Demux::new();
        d.insert(1, at(1, 4000), None);
        let mapped = SocketAddr::new(
            IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped()),
            4000,
        );
        assert_eq!(d.route(mapped, &rtp(5)), Route::Source(1));
    }
}
