//! The media thread: the only place RTP leaves the process.
//!
//! Owns the fan-out, the RTP/RTCP sockets of every call and the media clock's real time. It
//! sleeps until the fan-out's next absolute deadline (never a relative `sleep(20 ms)`), sends
//! what is due, and takes commands (add, update, remove a call; swap a render) from a channel,
//! which also wakes it. A plain OS thread rather than a tokio task: its timer is the futex's
//! (tens of microseconds), not tokio's millisecond wheel, and nothing else can delay it.
//!
//! Sockets are non-blocking: a full send buffer drops that one packet (counted) instead of
//! stalling every other caller.
//!
//! It also watches the peers, a few times a second rather than every packet (a syscall per
//! socket per 20 ms would cost more than sending): RTP or RTCP arriving from another address
//! than the SDP said re-targets the stream there (symmetric RTP, for PBXs behind NAT); no
//! RTP/RTCP at all for the configured time, or ICMP port unreachable for several seconds, reports
//! the peer gone so the SIP side hangs up. ICMP errors reach an unconnected UDP socket only with
//! `IP_RECVERR`, which is set on every call's sockets.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use super::fanout::{CallMedia, Fanout, PacketKind};
use crate::channel::ChannelRender;
use crate::clock::MediaClock;
use crate::codec::Codec;

/// Sent more than this after its deadline counts as late.
pub const LATE_THRESHOLD: Duration = Duration::from_millis(5);
/// How often the peers' sockets are read.
const PEER_POLL: Duration = Duration::from_millis(200);
/// ICMP errors further apart than this are not "continuous".
const UNREACHABLE_GAP: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy)]
pub struct MediaOptions {
    /// Send to where the peer's RTP/RTCP comes from, not only to what its SDP said.
    pub symmetric_rtp: bool,
    /// End calls from which no RTP or RTCP came for this long (`None`: never; many PBXs send
    /// nothing to a hold-music source).
    pub rtp_timeout: Option<Duration>,
    /// End calls whose RTP has been answered by ICMP port unreachable for this long.
    pub unreachable_timeout: Duration,
    /// Run the media thread under SCHED_FIFO when the process may (root or CAP_SYS_NICE), so a
    /// busy box (a decoder, a compile, the web page) cannot make packets late.
    pub realtime: bool,
}

/// Best effort: without the privilege the thread stays at normal priority, which is logged.
fn raise_to_realtime() {
    use thread_priority::{
        RealtimeThreadSchedulePolicy, ThreadPriority, ThreadPriorityValue, ThreadSchedulePolicy,
        set_thread_priority_and_policy, thread_native_id,
    };
    // A middle priority: above every normal thread, below the kernel's own real-time threads.
    let Ok(value) = ThreadPriorityValue::try_from(40u8) else {
        return;
    };
    match set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Crossplatform(value),
        ThreadSchedulePolicy::Realtime(RealtimeThreadSchedulePolicy::Fifo),
    ) {
        Ok(()) => tracing::info!("media thread runs with real-time priority (SCHED_FIFO)"),
        Err(e) => tracing::info!(
            error = ?e,
            "media thread at normal priority (real-time needs root or CAP_SYS_NICE)"
        ),
    }
}

impl Default for MediaOptions {
    fn default() -> Self {
        MediaOptions {
            symmetric_rtp: true,
            rtp_timeout: None,
            unreachable_timeout: Duration::from_secs(5),
            realtime: true,
        }
    }
}

/// What the media thread tells the SIP side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    /// The peer is gone (no media, or unreachable): hang up.
    PeerGone { call: u64, reason: String },
}

/// What the rest of mohd knows about a call, for the end-of-call log line.
#[derive(Debug, Clone)]
pub struct CallInfo {
    pub peer: SocketAddr,
    pub channel: String,
    pub started: Instant,
}

pub enum MediaCommand {
    Add {
        media: CallMedia,
        rtp: UdpSocket,
        rtcp: Option<UdpSocket>,
        info: CallInfo,
    },
    Update {
        call: u64,
        remote_rtp: SocketAddr,
        remote_rtcp: Option<SocketAddr>,
        sending: bool,
        codec: Codec,
        ptime_ms: u32,
    },
    Remove {
        call: u64,
        reason: String,
    },
    SetChannel(Arc<ChannelRender>),
    Shutdown,
}

/// Counters shared with the rest of the process (metrics, health, tests).
#[derive(Debug, Default)]
pub struct MediaStats {
    pub packets_sent: AtomicU64,
    pub packets_late: AtomicU64,
    pub send_errors: AtomicU64,
    pub max_late_us: AtomicU64,
    pub active_calls: AtomicU64,
    /// Nanoseconds since the clock epoch of the last loop turn: a stalled loop shows here.
    pub last_tick_ns: AtomicU64,
}

pub struct MediaHandle {
    tx: mpsc::Sender<MediaCommand>,
    thread: Option<JoinHandle<()>>,
    pub stats: Arc<MediaStats>,
}

impl MediaHandle {
    pub fn send(&self, cmd: MediaCommand) {
        if self.tx.send(cmd).is_err() {
            tracing::error!("media thread is gone");
        }
    }

    pub fn sender(&self) -> mpsc::Sender<MediaCommand> {
        self.tx.clone()
    }

    pub fn shutdown(mut self) {
        let _ = self.tx.send(MediaCommand::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct CallSockets {
    rtp: UdpSocket,
    rtcp: Option<UdpSocket>,
    info: CallInfo,
    codec: Codec,
    ptime_ms: u32,
    sending: bool,
    remote_rtp: SocketAddr,
    /// `None`: RTCP multiplexed on the RTP port.
    remote_rtcp: Option<SocketAddr>,
    last_heard: Instant,
    refused_since: Option<Instant>,
    last_refused: Option<Instant>,
    reported: bool,
}

impl CallSockets {
    /// RTCP leaves from the RTCP socket, or the RTP one when multiplexed.
    fn socket_for(&self, kind: PacketKind) -> &UdpSocket {
        match kind {
            PacketKind::Rtp => &self.rtp,
            PacketKind::Rtcp => self.rtcp.as_ref().unwrap_or(&self.rtp),
        }
    }

    fn note_refused(&mut self, now: Instant) {
        if self
            .last_refused
            .is_none_or(|t| now.saturating_duration_since(t) > UNREACHABLE_GAP)
        {
            self.refused_since = Some(now);
        }
        self.last_refused = Some(now);
    }
}

/// Ask the kernel to report ICMP errors on an unconnected UDP socket (as `ECONNREFUSED`).
fn enable_icmp_errors(socket: &UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt};
    let result = match socket.local_addr() {
        Ok(SocketAddr::V4(_)) => setsockopt(socket, sockopt::Ipv4RecvErr, &true),
        Ok(SocketAddr::V6(_)) => setsockopt(socket, sockopt::Ipv6RecvErr, &true),
        Err(_) => return,
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "cannot enable ICMP error reporting on an RTP socket");
    }
}

pub fn spawn(
    clock: MediaClock,
    seed: u64,
    options: MediaOptions,
    events: Option<tokio::sync::mpsc::UnboundedSender<MediaEvent>>,
) -> std::io::Result<MediaHandle> {
    let (tx, rx) = mpsc::channel();
    let stats = Arc::new(MediaStats::default());
    let thread_stats = stats.clone();
    // The wall time that corresponds to the clock's epoch, for RTCP's NTP timestamps only.
    let wall_epoch = SystemTime::now() - clock.epoch().elapsed();
    let thread = std::thread::Builder::new()
        .name("mohd-media".into())
        .spawn(move || {
            if options.realtime {
                raise_to_realtime();
            }
            run(clock, seed, wall_epoch, rx, thread_stats, options, events)
        })?;
    Ok(MediaHandle {
        tx,
        thread: Some(thread),
        stats,
    })
}

fn run(
    clock: MediaClock,
    seed: u64,
    wall_epoch: SystemTime,
    rx: mpsc::Receiver<MediaCommand>,
    stats: Arc<MediaStats>,
    options: MediaOptions,
    events: Option<tokio::sync::mpsc::UnboundedSender<MediaEvent>>,
) {
    let mut fanout = Fanout::new(clock, seed, wall_epoch);
    let mut sockets: HashMap<u64, CallSockets> = HashMap::new();
    let mut buf = vec![0u8; 2048];
    let mut next_peer_poll = Instant::now() + PEER_POLL;
    loop {
        let now = Instant::now();
        if now >= next_peer_poll {
            next_peer_poll = now + PEER_POLL;
            watch_peers(
                now,
                &mut fanout,
                &mut sockets,
                &options,
                events.as_ref(),
                &mut buf,
            );
        }
        fanout.handle_timeout(now);
        while let Some(t) = fanout.poll_transmit(now, &mut buf) {
            let Some(s) = sockets.get_mut(&t.call) else {
                continue;
            };
            let socket = s.socket_for(t.kind);
            match socket.send_to(&buf[..t.len], t.dest) {
                Ok(_) => {
                    if matches!(t.kind, PacketKind::Rtp) {
                        stats.packets_sent.fetch_add(1, Ordering::Relaxed);
                        let late = now.saturating_duration_since(t.due);
                        if late > LATE_THRESHOLD {
                            stats.packets_late.fetch_add(1, Ordering::Relaxed);
                        }
                        stats
                            .max_late_us
                            .fetch_max(late.as_micros() as u64, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    stats.send_errors.fetch_add(1, Ordering::Relaxed);
                    if e.kind() == std::io::ErrorKind::ConnectionRefused {
                        s.note_refused(now);
                    }
                    tracing::trace!(call = t.call, error = %e, "RTP send failed");
                }
            }
        }
        stats.last_tick_ns.store(
            now.saturating_duration_since(clock.epoch()).as_nanos() as u64,
            Ordering::Relaxed,
        );

        // Sleep until the next deadline, waking early for commands.
        let wake = fanout
            .poll_timeout()
            .map_or(next_peer_poll, |at| at.min(next_peer_poll));
        let wait = wake.saturating_duration_since(Instant::now());
        let cmd = if wait.is_zero() {
            match rx.try_recv() {
                Ok(c) => Some(c),
                Err(mpsc::TryRecvError::Empty) => None,
                Err(mpsc::TryRecvError::Disconnected) => break,
            }
        } else {
            match rx.recv_timeout(wait) {
                Ok(c) => Some(c),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        };
        let Some(cmd) = cmd else { continue };
        match cmd {
            MediaCommand::Add {
                media,
                rtp,
                rtcp,
                info,
            } => {
                let call = media.call;
                enable_icmp_errors(&rtp);
                if let Some(r) = &rtcp {
                    enable_icmp_errors(r);
                }
                let entry = CallSockets {
                    rtp,
                    rtcp,
                    info,
                    codec: media.codec,
                    ptime_ms: media.ptime_ms,
                    sending: media.sending,
                    remote_rtp: media.remote_rtp,
                    remote_rtcp: media.remote_rtcp,
                    last_heard: Instant::now(),
                    refused_since: None,
                    last_refused: None,
                    reported: false,
                };
                fanout.add_call(Instant::now(), media);
                sockets.insert(call, entry);
            }
            MediaCommand::Update {
                call,
                remote_rtp,
                remote_rtcp,
                sending,
                codec,
                ptime_ms,
            } => {
                fanout.update_call(call, remote_rtp, remote_rtcp, sending, codec, ptime_ms);
                if let Some(s) = sockets.get_mut(&call) {
                    s.codec = codec;
                    s.ptime_ms = ptime_ms;
                    s.sending = sending;
                    s.remote_rtp = remote_rtp;
                    s.remote_rtcp = remote_rtcp;
                    // A new address starts a new chance to hear from it.
                    s.last_heard = Instant::now();
                    s.refused_since = None;
                    s.last_refused = None;
                }
            }
            MediaCommand::Remove { call, reason } => {
                let counters = fanout.remove_call(call);
                // The RTCP BYE the fan-out queued goes out before the sockets close.
                let now = Instant::now();
                while let Some(t) = fanout.poll_transmit(now, &mut buf) {
                    if let Some(s) = sockets.get(&t.call) {
                        let socket = s.socket_for(t.kind);
                        let _ = socket.send_to(&buf[..t.len], t.dest);
                    }
                }
                if let Some(s) = sockets.remove(&call) {
                    let packets = counters.map(|c| c.packets_sent).unwrap_or_default();
                    tracing::info!(
                        call,
                        peer = %s.info.peer,
                        channel = %s.info.channel,
                        codec = s.codec.encoding_name(),
                        duration_s = format!("{:.1}", s.info.started.elapsed().as_secs_f64()),
                        packets_sent = packets,
                        %reason,
                        "call ended"
                    );
                }
            }
            MediaCommand::SetChannel(render) => fanout.set_channel(render),
            MediaCommand::Shutdown => break,
        }
        stats
            .active_calls
            .store(fanout.call_count() as u64, Ordering::Relaxed);
    }
}

/// Drain what the peers sent, follow them if they moved (symmetric RTP), and report the ones
/// that are gone.
fn watch_peers(
    now: Instant,
    fanout: &mut Fanout,
    sockets: &mut HashMap<u64, CallSockets>,
    options: &MediaOptions,
    events: Option<&tokio::sync::mpsc::UnboundedSender<MediaEvent>>,
    buf: &mut [u8],
) {
    for (&call, s) in sockets.iter_mut() {
        let mut rtp_from = None;
        let mut rtcp_from = None;
        // Bounded: a peer flooding us cannot keep the media thread here.
        for _ in 0..256 {
            match s.rtp.recv_from(buf) {
                Ok((n, from)) => {
                    s.last_heard = now;
                    s.refused_since = None;
                    s.last_refused = None;
                    if super::packet::is_rtcp(&buf[..n]) {
                        rtcp_from = Some(from);
                    } else {
                        rtp_from = Some(from);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => s.note_refused(now),
                Err(_) => break,
            }
        }
        let mut rtcp_heard = false;
        let mut rtcp_refused = false;
        if let Some(rtcp) = &s.rtcp {
            for _ in 0..64 {
                match rtcp.recv_from(buf) {
                    Ok((_, from)) => {
                        rtcp_heard = true;
                        rtcp_from = Some(from);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        rtcp_refused = true;
                    }
                    Err(_) => break,
                }
            }
        }
        if rtcp_heard {
            s.last_heard = now;
        }
        if rtcp_refused {
            s.note_refused(now);
        }
        if options.symmetric_rtp {
            let mut moved = false;
            if let Some(from) = rtp_from
                && from != s.remote_rtp
            {
                tracing::info!(call, from = %s.remote_rtp, to = %from, "symmetric RTP: following the peer's RTP source");
                s.remote_rtp = from;
                moved = true;
            }
            if let Some(from) = rtcp_from
                && s.remote_rtcp.is_some_and(|r| r != from)
            {
                s.remote_rtcp = Some(from);
                moved = true;
            }
            if moved {
                fanout.update_call(
                    call,
                    s.remote_rtp,
                    s.remote_rtcp,
                    s.sending,
                    s.codec,
                    s.ptime_ms,
                );
            }
        }
        if s.reported {
            continue;
        }
        let unreachable = s.refused_since.is_some_and(|since| {
            now.saturating_duration_since(since) >= options.unreachable_timeout
                && s.last_refused
                    .is_some_and(|t| now.saturating_duration_since(t) <= UNREACHABLE_GAP)
        });
        let silent = options
            .rtp_timeout
            .is_some_and(|d| now.saturating_duration_since(s.last_heard) >= d);
        let reason = if unreachable {
            Some(format!(
                "ICMP port unreachable for its RTP for {} s",
                options.unreachable_timeout.as_secs()
            ))
        } else if silent {
            Some(format!(
                "no RTP or RTCP from the peer for {} s",
                options.rtp_timeout.map(|d| d.as_secs()).unwrap_or_default()
            ))
        } else {
            None
        };
        if let Some(reason) = reason {
            s.reported = true;
            tracing::info!(call, peer = %s.info.peer, %reason, "peer gone");
            if let Some(events) = events {
                let _ = events.send(MediaEvent::PeerGone { call, reason });
            }
        }
    }
}
