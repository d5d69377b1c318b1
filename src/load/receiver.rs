//! The load tool's RTP receiver: a few UDP sockets (an RTP port and the RTCP port above it
//! each), advertised to many calls and demultiplexed by source address and SSRC, so it holds
//! thousands of streams with a handful of descriptors. One thread per socket reads with
//! `recvmmsg` in batches and stamps each packet with the kernel's receive time
//! (`SO_TIMESTAMPNS`), so the receiver's own scheduling delays on a busy box are not counted
//! against the sender; `SO_RXQ_OVFL` reports what the kernel dropped for want of buffer, so a
//! receiver that fell behind does not pass for loss at the sender. Headers only: no decoding.

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrLike, SockaddrStorage, recvmmsg,
    setsockopt, sockopt,
};
use nix::sys::time::TimeSpec;

use super::stats::{StreamStats, Summary};
use crate::clock::{Seq16, Ts32};

/// Datagrams per `recvmmsg`.
const BATCH: usize = 64;
/// Large enough for any RTP packet a music-on-hold server sends.
const DATAGRAM: usize = 2048;
/// What each socket asks of the kernel: a tick of 5,000 calls' packets is ~5 MB of buffers.
const RECEIVE_BUFFER: usize = 16 << 20;
/// How long a read waits before the thread looks at the window again.
const READ_TIMEOUT: Duration = Duration::from_millis(50);

/// What the receivers count: nothing yet (calls coming up), the measurement window, nothing
/// again (calls hanging up: still read, so the server sees no ICMP), stop, or silent (a vanished
/// peer: nothing read, sockets kept open).
#[derive(Debug)]
pub struct Window(AtomicU8);

const WARMING_UP: u8 = 0;
const MEASURING: u8 = 1;
const STOPPED: u8 = 2;
const DRAINING: u8 = 3;
const SILENT: u8 = 4;

impl Default for Window {
    fn default() -> Window {
        Window(AtomicU8::new(WARMING_UP))
    }
}

impl Window {
    pub fn open(&self) {
        self.0.store(MEASURING, Ordering::Release);
    }

    pub fn close(&self) {
        self.0.store(DRAINING, Ordering::Release);
    }

    /// Stop reading for good but keep the sockets open: a peer that went silent.
    pub fn silence(&self) {
        self.0.store(SILENT, Ordering::Release);
    }

    pub fn stop(&self) {
        self.0.store(STOPPED, Ordering::Release);
    }

    fn state(&self) -> u8 {
        self.0.load(Ordering::Acquire)
    }
}

/// An RTP socket on an even port and the RTCP socket above it (RFC 3550 §11), so the
/// server's RTCP is drained rather than answered with ICMP port unreachable.
pub struct MediaSocket {
    pub rtp: UdpSocket,
    pub rtcp: UdpSocket,
}

impl MediaSocket {
    pub fn bind(ip: IpAddr) -> std::io::Result<MediaSocket> {
        for _ in 0..64 {
            let rtp = UdpSocket::bind((ip, 0))?;
            let port = rtp.local_addr()?.port();
            if port % 2 == 0
                && port < u16::MAX
                && let Ok(rtcp) = UdpSocket::bind((ip, port + 1))
            {
                return Ok(MediaSocket { rtp, rtcp });
            }
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "no free even RTP port with its RTCP port",
        ))
    }

    pub fn rtp_addr(&self) -> std::io::Result<SocketAddr> {
        self.rtp.local_addr()
    }
}

/// How the streams are read.
#[derive(Debug, Clone, Copy)]
pub struct StreamConfig {
    pub clock_rate: u32,
    pub samples_per_packet: u32,
    pub payload_type: Option<u8>,
    /// Fold a stream into the summary once it has been quiet this long (churn: calls end all
    /// the time, and only live streams are kept); `None`: keep every stream to the end.
    pub fold_after: Option<Duration>,
}

/// What one receiver thread saw.
#[derive(Debug, Default)]
pub struct Received {
    pub summary: Summary,
    pub rtcp_packets: u64,
    /// Datagrams on the RTP port that were not RTP (or not the payload type asked for).
    pub not_rtp: u64,
    /// Datagrams the kernel dropped because the socket's buffer was full.
    pub kernel_drops: u64,
    /// Receive errors other than timeouts, with the last one's text.
    pub errors: u64,
    pub last_error: Option<String>,
}

/// Starts the thread that reads `socket` until the window stops.
pub fn spawn(
    socket: MediaSocket,
    config: StreamConfig,
    window: Arc<Window>,
) -> std::io::Result<JoinHandle<Received>> {
    prepare(&socket)?;
    std::thread::Builder::new()
        .name("load-rx".into())
        .spawn(move || receive(&socket, config, &window))
}

fn prepare(socket: &MediaSocket) -> std::io::Result<()> {
    let io = |e: Errno| std::io::Error::from_raw_os_error(e as i32);
    setsockopt(&socket.rtp, sockopt::ReceiveTimestampns, &true).map_err(io)?;
    // Best effort: without it kernel drops are not told from loss, which the report says.
    let _ = setsockopt(&socket.rtp, sockopt::RxqOvfl, &1);
    enlarge_receive_buffer(&socket.rtp);
    socket.rtp.set_read_timeout(Some(READ_TIMEOUT))?;
    socket.rtcp.set_nonblocking(true)?;
    Ok(())
}

/// Best effort: asks the kernel for RECEIVE_BUFFER, so a reader that falls behind for a
/// moment (a busy box) loses nothing. Beyond net.core.rmem_max only with CAP_NET_ADMIN.
pub(crate) fn enlarge_receive_buffer(socket: &UdpSocket) {
    if setsockopt(socket, sockopt::RcvBufForce, &RECEIVE_BUFFER).is_err() {
        let _ = setsockopt(socket, sockopt::RcvBuf, &RECEIVE_BUFFER);
    }
}

/// Streams by source address and SSRC: a shared server port sends many calls' streams from
/// one address, a port per call one each.
type Streams = HashMap<(SocketAddr, u32), StreamStats>;

fn receive(socket: &MediaSocket, config: StreamConfig, window: &Window) -> Received {
    let mut out = Received::default();
    let mut streams = Streams::new();
    let mut buffers = vec![[0u8; DATAGRAM]; BATCH];
    let cmsg = nix::cmsg_space!(TimeSpec, u32);
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, Some(cmsg));
    let mut rtcp_buffer = [0u8; DATAGRAM];
    let mut next_fold = now_ns() + 1_000_000_000;
    let fd = socket.rtp.as_raw_fd();
    loop {
        let state = window.state();
        if state == STOPPED {
            break;
        }
        if state == SILENT {
            std::thread::sleep(READ_TIMEOUT);
            continue;
        }
        let mut slices: Vec<[IoSliceMut; 1]> = buffers
            .iter_mut()
            .map(|b| [IoSliceMut::new(&mut b[..])])
            .collect();
        match recvmmsg(
            fd,
            &mut headers,
            slices.iter_mut(),
            MsgFlags::MSG_WAITFORONE,
            None,
        ) {
            Ok(messages) => {
                for message in messages {
                    let mut arrival_ns = None;
                    for cmsg in message.cmsgs().into_iter().flatten() {
                        match cmsg {
                            ControlMessageOwned::ScmTimestampns(ts) => {
                                arrival_ns = Some(ts.tv_sec() * 1_000_000_000 + ts.tv_nsec());
                            }
                            ControlMessageOwned::RxqOvfl(dropped) => {
                                out.kernel_drops = out.kernel_drops.max(u64::from(dropped));
                            }
                            _ => {}
                        }
                    }
                    let Some(from) = message.address.as_ref().and_then(socket_addr) else {
                        continue;
                    };
                    let Some(data) = message.iovs().next() else {
                        continue;
                    };
                    let data = &data[..message.bytes.min(data.len())];
                    if state == MEASURING {
                        let at = arrival_ns.unwrap_or_else(now_ns);
                        on_datagram(&mut streams, &config, &mut out, from, at, data);
                    }
                }
            }
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            Err(e) => {
                out.errors += 1;
                out.last_error = Some(e.desc().to_string());
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        while let Ok(n) = socket.rtcp.recv(&mut rtcp_buffer) {
            out.rtcp_packets += u64::from(n > 0);
        }
        if let Some(quiet) = config.fold_after {
            let now = now_ns();
            if now >= next_fold {
                next_fold = now + 1_000_000_000;
                let cutoff = now - quiet.as_nanos() as i64;
                streams.retain(|_, s| {
                    let live = s.last_arrival_ns() > cutoff;
                    if !live {
                        out.summary.add_stream(s);
                    }
                    live
                });
            }
        }
    }
    for stream in streams.values() {
        out.summary.add_stream(stream);
    }
    out
}

/// One datagram on the RTP port, in the window.
fn on_datagram(
    streams: &mut Streams,
    config: &StreamConfig,
    out: &mut Received,
    from: SocketAddr,
    arrival_ns: i64,
    data: &[u8],
) {
    let Some(header) = RtpFixedHeader::parse(data) else {
        out.not_rtp += 1;
        return;
    };
    if config
        .payload_type
        .is_some_and(|pt| pt != header.payload_type)
    {
        out.not_rtp += 1;
        return;
    }
    streams
        .entry((from, header.ssrc))
        .or_insert_with(|| StreamStats::new(config.clock_rate, config.samples_per_packet))
        .on_packet(arrival_ns, header.seq, header.timestamp, header.payload_len);
}

/// The part of an RTP header the measurement reads (RFC 3550 §5.1), and the payload's size.
struct RtpFixedHeader {
    payload_type: u8,
    seq: Seq16,
    timestamp: Ts32,
    ssrc: u32,
    payload_len: usize,
}

impl RtpFixedHeader {
    fn parse(data: &[u8]) -> Option<RtpFixedHeader> {
        let packet = crate::rtp::packet::parse_rtp(data).ok()?;
        Some(RtpFixedHeader {
            payload_type: packet.header.payload_type,
            seq: packet.header.seq,
            timestamp: packet.header.timestamp,
            ssrc: packet.header.ssrc,
            payload_len: packet.payload.len(),
        })
    }
}

fn socket_addr(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    addr.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
        .filter(|_| addr.family().is_some())
}

/// The realtime clock in ns, the clock `SO_TIMESTAMPNS` stamps with (for a datagram that came
/// without its stamp, and for folding quiet streams).
fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}
