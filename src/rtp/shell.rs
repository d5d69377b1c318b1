//! The media thread: the only place RTP leaves the process.
//!
//! Owns the fan-out, the RTP/RTCP sockets of every call and the media clock's real time. It
//! sleeps until the fan-out's next absolute deadline (never a relative `sleep(20 ms)`), sends
//! what is due, and takes commands (add, update, remove a call; swap a render; queue a
//! channel's next piece) from a channel, which also wakes it. A plain OS thread rather than a
//! tokio task: its timer is the futex's (tens of microseconds), not tokio's millisecond
//! wheel, and nothing else can delay it.
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
//!
//! It is also what proves mohd alive to systemd: the watchdog is petted from this loop's own
//! iteration and nowhere else, so a wedged media loop stops the pets and systemd restarts the
//! service. What the rest of the process may read — counters, the lateness histogram, the
//! drift, and a snapshot of the calls for the web page — is published in [`MediaStats`]
//! without the loop ever waiting on a lock: atomics for numbers, and a `try_lock`ed swap of an
//! `Arc` for the snapshot (once a second and when calls come or go).

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use super::fanout::{CallMedia, Fanout, PacketKind, Piece};
use super::srtp::{SrtpError, SrtpReceiver};
use crate::channel::ChannelRender;
use crate::clock::{MediaClock, TICKS_PER_SECOND};
use crate::notify::Watchdog;
use crate::sip::sdp::MediaParams;

/// Sent more than this after its deadline counts as late.
pub const LATE_THRESHOLD: Duration = Duration::from_millis(5);
/// How often the peers' sockets are read.
const PEER_POLL: Duration = Duration::from_millis(200);
/// ICMP errors further apart than this are not "continuous".
const UNREACHABLE_GAP: Duration = Duration::from_secs(2);
/// How often the call snapshot is refreshed.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);
/// How soon after a call comes, goes or moves the snapshot is refreshed. Not at once: a
/// snapshot costs a pass over every call, so a burst of n changes (thousands of calls hung up
/// at shutdown) would cost n passes, O(n²); at most one per this interval instead.
const SNAPSHOT_AFTER_CHANGE: Duration = Duration::from_millis(50);
/// Upper bounds of the lateness histogram's buckets, in ns (0.5, 1, 2, 5, 10, 20, 50, 100 ms);
/// a last bucket takes the rest.
pub const LATENESS_BOUNDS_NS: [u64; 8] = [
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    20_000_000,
    50_000_000,
    100_000_000,
];

#[derive(Debug)]
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
    /// The systemd watchdog, petted from the media loop (`notify::Watchdog::from_env()`).
    pub watchdog: Option<Watchdog>,
    /// Test hook only (`notify::test_stall_media_after()`): wedge the loop this long after
    /// it starts, to show that the watchdog pets stop.
    pub stall_after: Option<Duration>,
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
            watchdog: None,
            stall_after: None,
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
        params: MediaParams,
    },
    Remove {
        call: u64,
        reason: String,
    },
    SetChannel(Arc<ChannelRender>),
    /// Plans what a channel plays (next shuffled pass, a schedule switch): see
    /// [`Fanout::queue`].
    Queue {
        channel: String,
        piece: Piece<ChannelRender>,
    },
    Shutdown,
}

/// One call as the web page shows it; refreshed about once a second.
#[derive(Debug, Clone, PartialEq)]
pub struct CallSnapshot {
    pub call: u64,
    /// The SIP peer the INVITE came from.
    pub peer: SocketAddr,
    /// Where its RTP goes now (after symmetric RTP, if the peer moved).
    pub remote_rtp: SocketAddr,
    pub channel: String,
    pub codec: &'static str,
    /// When the INVITE arrived.
    pub started: Instant,
    pub packets_sent: u64,
    /// RTP packets sent more than `fanout::LATE_AFTER` after their deadline.
    pub packets_late: u64,
    /// False while the call is on hold the other way (inactive: no RTP sent).
    pub sending: bool,
    /// The call's current drift (see `rtp::fanout`), ns.
    pub drift_ns: i64,
    /// Packets from the peer dropped by SRTP (failed authentication or replayed).
    pub srtp_rejected: u64,
    /// The track this caller hears (of the channel's pass, its greeting or a segment), if
    /// the render names one there.
    pub track: Option<String>,
    /// Where in what it hears (the pass, greeting or segment), ms from its start.
    pub position_ms: u64,
}

/// How late RTP packets left, against their deadlines: a fixed-bucket histogram that the
/// media thread fills without a lock or an allocation.
#[derive(Debug, Default)]
pub struct LatenessHistogram {
    /// Packets per bucket (not cumulative): `buckets[i]` holds lateness ≤
    /// `LATENESS_BOUNDS_NS[i]` and above the previous bound; the last one everything beyond.
    buckets: [AtomicU64; LATENESS_BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
}

/// A [`LatenessHistogram`] read once, Prometheus-style.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatenessSnapshot {
    /// Bucket upper bounds (`le`), seconds, without `+Inf`.
    pub bounds_s: [f64; LATENESS_BOUNDS_NS.len()],
    /// Cumulative packet counts, one per bound and a last one for `+Inf` (the count), read
    /// from the same cells so that `+Inf` always equals the count.
    pub cumulative: [u64; LATENESS_BOUNDS_NS.len() + 1],
    /// Sum of all lateness, seconds.
    pub sum_s: f64,
}

impl LatenessSnapshot {
    /// Packets observed.
    pub fn count(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }
}

impl LatenessHistogram {
    pub fn observe(&self, late: Duration) {
        let ns = u64::try_from(late.as_nanos()).unwrap_or(u64::MAX);
        let i = LATENESS_BOUNDS_NS.partition_point(|&b| b < ns);
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> LatenessSnapshot {
        let mut cumulative = [0; LATENESS_BOUNDS_NS.len() + 1];
        let mut total = 0u64;
        for (c, bucket) in cumulative.iter_mut().zip(&self.buckets) {
            total = total.wrapping_add(bucket.load(Ordering::Relaxed));
            *c = total;
        }
        LatenessSnapshot {
            bounds_s: LATENESS_BOUNDS_NS.map(|b| b as f64 / 1e9),
            cumulative,
            sum_s: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// Counters shared with the rest of the process (metrics, health, tests).
#[derive(Debug, Default)]
pub struct MediaStats {
    pub packets_sent: AtomicU64,
    /// RTP packets sent more than [`LATE_THRESHOLD`] after their deadline.
    pub packets_late: AtomicU64,
    pub send_errors: AtomicU64,
    pub max_late_us: AtomicU64,
    pub active_calls: AtomicU64,
    /// Nanoseconds since the clock epoch of the last loop turn: a stalled loop shows here.
    pub last_tick_ns: AtomicU64,
    /// Time the media thread(s) spent working (sending, reading peers, applying commands),
    /// summed over threads, ns: not the time asleep waiting for a deadline. The measured cost
    /// admission control divides by the packets sent.
    pub busy_ns: AtomicU64,
    /// Lateness of every RTP packet sent.
    pub lateness: LatenessHistogram,
    /// Largest absolute drift of any call's RTP timestamps from the monotonic clock since
    /// the start, ns (see `rtp::fanout`, "Drift accounting").
    pub max_abs_drift_ns: AtomicU64,
    /// Packets from peers dropped because they failed SRTP authentication (or were not SRTP).
    pub srtp_rejected_authentication: AtomicU64,
    /// Packets from peers dropped as SRTP replays (already received, or too old).
    pub srtp_rejected_replay: AtomicU64,
    calls: Mutex<Arc<Vec<CallSnapshot>>>,
}

impl MediaStats {
    /// The calls being served, as of the last refresh (at most a second old, and fresh after
    /// a call came or went). Cheap: clones an `Arc`.
    pub fn calls_snapshot(&self) -> Arc<Vec<CallSnapshot>> {
        match self.calls.lock() {
            Ok(c) => Arc::clone(&c),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Counts one RTP packet sent `late` after its deadline.
    fn observe_sent(&self, late: Duration) {
        self.packets_sent.fetch_add(1, Ordering::Relaxed);
        if late > LATE_THRESHOLD {
            self.packets_late.fetch_add(1, Ordering::Relaxed);
        }
        self.lateness.observe(late);
        self.max_late_us
            .fetch_max(late.as_micros() as u64, Ordering::Relaxed);
    }

    /// Publishes a new snapshot unless a reader holds the lock right now (then the caller
    /// tries again on its next turn). Never blocks.
    fn try_publish(&self, calls: Vec<CallSnapshot>) -> bool {
        match self.calls.try_lock() {
            Ok(mut c) => {
                *c = Arc::new(calls);
                true
            }
            Err(TryLockError::Poisoned(p)) => {
                *p.into_inner() = Arc::new(calls);
                true
            }
            Err(TryLockError::WouldBlock) => false,
        }
    }
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
    last_heard: Instant,
    refused_since: Option<Instant>,
    last_refused: Option<Instant>,
    reported: bool,
    srtp: Option<InboundSrtp>,
}

/// The peer's side of an SRTP call: what it sends must authenticate before it counts as
/// hearing from the peer or moves where we send (symmetric RTP), else anyone who can reach
/// the port could redirect or keep alive the stream.
struct InboundSrtp {
    receiver: SrtpReceiver,
    rejected: u64,
}

impl InboundSrtp {
    /// Authenticates (and decrypts) `packet`; a rejected one is counted here and in `stats`.
    fn accept(&mut self, call: u64, packet: &mut [u8], stats: &MediaStats) -> bool {
        let result = if super::packet::is_rtcp(packet) {
            self.receiver.unprotect_rtcp(packet)
        } else {
            self.receiver.unprotect_rtp(packet)
        };
        let Err(e) = result else {
            return true;
        };
        self.rejected += 1;
        let counter = match e {
            SrtpError::Replay => &stats.srtp_rejected_replay,
            _ => &stats.srtp_rejected_authentication,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(call, error = %e, "SRTP: dropped a packet from the peer");
        false
    }
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

    /// Reads what the peer sent (bounded: a peer flooding us cannot keep the media thread
    /// here) and notes that it is alive or refusing. With SRTP only what authenticates counts.
    fn drain(&mut self, call: u64, now: Instant, buf: &mut [u8], stats: &MediaStats) -> Heard {
        let mut heard = Heard::default();
        for _ in 0..256 {
            match self.rtp.recv_from(buf) {
                Ok((n, from)) => {
                    if !passes_srtp(&mut self.srtp, call, &mut buf[..n], stats) {
                        continue;
                    }
                    self.last_heard = now;
                    self.refused_since = None;
                    self.last_refused = None;
                    if super::packet::is_rtcp(&buf[..n]) {
                        heard.rtcp_from = Some(from);
                    } else {
                        heard.rtp_from = Some(from);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    self.note_refused(now)
                }
                Err(_) => break,
            }
        }
        let mut rtcp_heard = false;
        let mut rtcp_refused = false;
        if let Some(rtcp) = &self.rtcp {
            for _ in 0..64 {
                match rtcp.recv_from(buf) {
                    Ok((n, from)) => {
                        if !passes_srtp(&mut self.srtp, call, &mut buf[..n], stats) {
                            continue;
                        }
                        rtcp_heard = true;
                        heard.rtcp_from = Some(from);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        rtcp_refused = true;
                    }
                    Err(_) => break,
                }
            }
        }
        if rtcp_heard {
            self.last_heard = now;
        }
        if rtcp_refused {
            self.note_refused(now);
        }
        heard
    }

    /// Symmetric RTP: where to send so that RTP and RTCP go to where the peer's come from;
    /// `None` when `current` already does.
    fn follow(call: u64, current: MediaParams, heard: Heard) -> Option<MediaParams> {
        let mut p = current;
        if let Some(from) = heard.rtp_from
            && from != p.remote_rtp
        {
            tracing::info!(call, from = %p.remote_rtp, to = %from, "symmetric RTP: following the peer's RTP source");
            p.remote_rtp = from;
        }
        if let Some(from) = heard.rtcp_from
            && p.remote_rtcp.is_some_and(|r| r != from)
        {
            p.remote_rtcp = Some(from);
        }
        (p != current).then_some(p)
    }

    /// Why the peer counts as gone (ICMP unreachable, or silent), if it does.
    fn gone(&self, now: Instant, options: &MediaOptions) -> Option<String> {
        let unreachable = self.refused_since.is_some_and(|since| {
            now.saturating_duration_since(since) >= options.unreachable_timeout
                && self
                    .last_refused
                    .is_some_and(|t| now.saturating_duration_since(t) <= UNREACHABLE_GAP)
        });
        let silent = options
            .rtp_timeout
            .is_some_and(|d| now.saturating_duration_since(self.last_heard) >= d);
        if unreachable {
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
        }
    }
}

/// True for a packet of a call without SRTP, or one that authenticates (decrypted in place).
fn passes_srtp(
    srtp: &mut Option<InboundSrtp>,
    call: u64,
    packet: &mut [u8],
    stats: &MediaStats,
) -> bool {
    srtp.as_mut().is_none_or(|s| s.accept(call, packet, stats))
}

/// Where the peer's packets came from during one [`CallSockets::drain`].
#[derive(Debug, Default, Clone, Copy)]
struct Heard {
    rtp_from: Option<SocketAddr>,
    rtcp_from: Option<SocketAddr>,
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

/// What the media loop owns between turns.
struct MediaLoop {
    clock: MediaClock,
    fanout: Fanout,
    sockets: HashMap<u64, CallSockets>,
    buf: Vec<u8>,
    stats: Arc<MediaStats>,
    options: MediaOptions,
    events: Option<tokio::sync::mpsc::UnboundedSender<MediaEvent>>,
    next_snapshot: Instant,
}

/// What waiting for the next deadline brought.
// A command (a call's `MediaParams`, SRTP keys included) is moved once per wake-up and already
// travels by value through the channel; boxing it would add an allocation for nothing.
#[allow(clippy::large_enum_variant)]
enum Wake {
    Command(MediaCommand),
    Deadline,
    /// Every sender is gone: the process is ending.
    Disconnected,
}

fn run(
    clock: MediaClock,
    seed: u64,
    wall_epoch: SystemTime,
    rx: mpsc::Receiver<MediaCommand>,
    stats: Arc<MediaStats>,
    mut options: MediaOptions,
    events: Option<tokio::sync::mpsc::UnboundedSender<MediaEvent>>,
) {
    let started = Instant::now();
    let mut next_peer_poll = started + PEER_POLL;
    let stall_at = options.stall_after.map(|d| started + d);
    let mut watchdog = options.watchdog.take();
    let mut m = MediaLoop {
        clock,
        fanout: Fanout::new(clock, seed, wall_epoch),
        sockets: HashMap::new(),
        buf: vec![0u8; 2048],
        stats,
        options,
        events,
        next_snapshot: started,
    };
    loop {
        let now = Instant::now();
        let turn_started = now;
        if stall_at.is_some_and(|t| now >= t) {
            wedge();
        }
        // Only this loop proves the media alive: a wedged loop stops the pets.
        if let Some(w) = watchdog.as_mut() {
            w.pet(now);
        }
        if now >= next_peer_poll {
            next_peer_poll = now + PEER_POLL;
            m.watch_peers(now);
        }
        m.fanout.handle_timeout(now);
        m.send_due();
        m.publish(now);

        // Sleep until the next deadline, waking early for commands and the watchdog.
        let mut wake = m
            .fanout
            .poll_timeout()
            .map_or(next_peer_poll, |at| at.min(next_peer_poll));
        if let Some(at) = watchdog.as_ref().and_then(Watchdog::next_pet) {
            wake = wake.min(at);
        }
        m.stats
            .busy_ns
            .fetch_add(turn_started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        match wait_until(&rx, wake) {
            Wake::Deadline => continue,
            Wake::Disconnected => break,
            Wake::Command(cmd) => {
                if m.apply(cmd).is_break() {
                    break;
                }
            }
        }
        m.stats
            .active_calls
            .store(m.fanout.call_count() as u64, Ordering::Relaxed);
    }
}

/// Waits for a command until `deadline`.
fn wait_until(rx: &mpsc::Receiver<MediaCommand>, deadline: Instant) -> Wake {
    let wait = deadline.saturating_duration_since(Instant::now());
    if wait.is_zero() {
        return match rx.try_recv() {
            Ok(c) => Wake::Command(c),
            Err(mpsc::TryRecvError::Empty) => Wake::Deadline,
            Err(mpsc::TryRecvError::Disconnected) => Wake::Disconnected,
        };
    }
    match rx.recv_timeout(wait) {
        Ok(c) => Wake::Command(c),
        Err(RecvTimeoutError::Timeout) => Wake::Deadline,
        Err(RecvTimeoutError::Disconnected) => Wake::Disconnected,
    }
}

impl MediaLoop {
    /// Sends everything the fan-out has due, measuring each RTP packet's lateness.
    fn send_due(&mut self) {
        // A fresh instant per packet: with a thousand calls a burst takes milliseconds, and
        // the fan-out's drift accounting and the lateness below need when each one left.
        loop {
            let sent_at = Instant::now();
            let Some(t) = self.fanout.poll_transmit(sent_at, &mut self.buf) else {
                break;
            };
            let Some(s) = self.sockets.get_mut(&t.call) else {
                continue;
            };
            let socket = s.socket_for(t.kind);
            match socket.send_to(&self.buf[..t.len], t.dest) {
                Ok(_) if matches!(t.kind, PacketKind::Rtp) => {
                    self.stats
                        .observe_sent(sent_at.saturating_duration_since(t.due));
                }
                Ok(_) => {}
                Err(e) => {
                    self.stats.send_errors.fetch_add(1, Ordering::Relaxed);
                    if e.kind() == std::io::ErrorKind::ConnectionRefused {
                        s.note_refused(sent_at);
                    }
                    tracing::trace!(call = t.call, error = %e, "RTP send failed");
                }
            }
        }
    }

    /// The loop's heartbeat, the drift and (about once a second) the call snapshot.
    /// Refresh the snapshot within [`SNAPSHOT_AFTER_CHANGE`] (a call came, went or moved).
    fn snapshot_soon(&mut self) {
        self.next_snapshot = self
            .next_snapshot
            .min(Instant::now() + SNAPSHOT_AFTER_CHANGE);
    }

    fn publish(&mut self, now: Instant) {
        let stats = &self.stats;
        stats.last_tick_ns.store(
            now.saturating_duration_since(self.clock.epoch()).as_nanos() as u64,
            Ordering::Relaxed,
        );
        stats
            .max_abs_drift_ns
            .fetch_max(self.fanout.max_abs_drift_ns(), Ordering::Relaxed);
        if now >= self.next_snapshot && stats.try_publish(snapshot(&self.fanout, &self.sockets)) {
            self.next_snapshot = now + SNAPSHOT_EVERY;
        }
    }

    fn apply(&mut self, cmd: MediaCommand) -> ControlFlow<()> {
        match cmd {
            MediaCommand::Add {
                media,
                rtp,
                rtcp,
                info,
            } => self.add(media, rtp, rtcp, info),
            MediaCommand::Update { call, params } => {
                let old = self.fanout.params(call);
                let before = old.map(|p| p.codec);
                if let Some(s) = self.sockets.get_mut(&call)
                    && old.is_some_and(|p| p.srtp != params.srtp)
                {
                    // New keys: the peer's ROC and replay window start again too.
                    s.srtp = params.srtp.map(|keys| InboundSrtp {
                        receiver: keys.receiver(),
                        rejected: s.srtp.as_ref().map_or(0, |old| old.rejected),
                    });
                }
                self.fanout.update_call(call, params);
                if let Some(from) = before.filter(|&c| c != params.codec) {
                    tracing::info!(
                        call,
                        from = from.encoding_name(),
                        to = params.codec.encoding_name(),
                        "codec switched"
                    );
                }
                if let Some(s) = self.sockets.get_mut(&call) {
                    // A new address starts a new chance to hear from it.
                    s.last_heard = Instant::now();
                    s.refused_since = None;
                    s.last_refused = None;
                }
                self.snapshot_soon();
            }
            MediaCommand::Remove { call, reason } => self.remove(call, &reason),
            MediaCommand::SetChannel(render) => self.fanout.set_channel(render),
            MediaCommand::Queue { channel, piece } => self.fanout.queue(&channel, piece),
            MediaCommand::Shutdown => return ControlFlow::Break(()),
        }
        ControlFlow::Continue(())
    }

    fn add(&mut self, media: CallMedia, rtp: UdpSocket, rtcp: Option<UdpSocket>, info: CallInfo) {
        let call = media.call;
        enable_icmp_errors(&rtp);
        if let Some(r) = &rtcp {
            enable_icmp_errors(r);
        }
        let entry = CallSockets {
            rtp,
            rtcp,
            info,
            last_heard: Instant::now(),
            refused_since: None,
            last_refused: None,
            reported: false,
            srtp: media.params.srtp.map(|keys| InboundSrtp {
                receiver: keys.receiver(),
                rejected: 0,
            }),
        };
        self.fanout.add_call(Instant::now(), media);
        self.sockets.insert(call, entry);
        self.snapshot_soon();
    }

    fn remove(&mut self, call: u64, reason: &str) {
        let codec = self.fanout.params(call).map(|p| p.codec.encoding_name());
        let counters = self.fanout.remove_call(call);
        // The RTCP BYE the fan-out queued goes out before the sockets close.
        let now = Instant::now();
        while let Some(t) = self.fanout.poll_transmit(now, &mut self.buf) {
            if let Some(s) = self.sockets.get(&t.call) {
                let socket = s.socket_for(t.kind);
                let _ = socket.send_to(&self.buf[..t.len], t.dest);
            }
        }
        if let Some(s) = self.sockets.remove(&call) {
            let packets = counters.map(|c| c.packets_sent).unwrap_or_default();
            tracing::info!(
                call,
                peer = %s.info.peer,
                channel = %s.info.channel,
                codec = codec.unwrap_or("-"),
                duration_s = format!("{:.1}", s.info.started.elapsed().as_secs_f64()),
                packets_sent = packets,
                %reason,
                "call ended"
            );
        }
        self.snapshot_soon();
    }

    /// Drains what the peers sent, follows them if they moved (symmetric RTP), and reports
    /// the ones that are gone.
    fn watch_peers(&mut self, now: Instant) {
        for (&call, s) in self.sockets.iter_mut() {
            // A multicast stream (its "peer" is the group) has nobody to hear from, follow
            // or lose: it plays until removed.
            if s.info.peer.ip().is_multicast() {
                continue;
            }
            let heard = s.drain(call, now, &mut self.buf, &self.stats);
            if self.options.symmetric_rtp
                && let Some(current) = self.fanout.params(call)
                && let Some(moved) = CallSockets::follow(call, current, heard)
            {
                self.fanout.update_call(call, moved);
            }
            if s.reported {
                continue;
            }
            if let Some(reason) = s.gone(now, &self.options) {
                s.reported = true;
                tracing::info!(call, peer = %s.info.peer, %reason, "peer gone");
                if let Some(events) = &self.events {
                    let _ = events.send(MediaEvent::PeerGone { call, reason });
                }
            }
        }
    }
}

/// The test hook's wedge: hold the media loop forever (no packets, no pets), like a deadlock
/// would. Only reachable through `MediaOptions::stall_after` (the binary sets it from
/// `MOHD_TEST_STALL_MEDIA_AFTER_MS`, in-process tests through `server::Environment`).
fn wedge() -> ! {
    tracing::warn!("media loop wedged on purpose (test hook MOHD_TEST_STALL_MEDIA_AFTER_MS)");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// The calls as the web page shows them.
fn snapshot(fanout: &Fanout, sockets: &HashMap<u64, CallSockets>) -> Vec<CallSnapshot> {
    let mut calls: Vec<CallSnapshot> = sockets
        .iter()
        .filter_map(|(&call, s)| {
            let c = fanout.counters(call)?;
            let params = fanout.params(call)?;
            let (track, position_ms) = fanout.playing(call).map_or((None, 0), |(render, ticks)| {
                let sample = ticks * u64::from(render.rate) / u64::from(TICKS_PER_SECOND);
                (render.track_at(sample).map(|t| t.name.clone()), ticks * 10)
            });
            Some(CallSnapshot {
                call,
                peer: s.info.peer,
                remote_rtp: params.remote_rtp,
                channel: s.info.channel.clone(),
                codec: params.codec.encoding_name(),
                started: s.info.started,
                packets_sent: c.packets_sent,
                packets_late: c.late_packets,
                sending: params.sending(),
                drift_ns: c.drift_ns,
                srtp_rejected: s.srtp.as_ref().map_or(0, |srtp| srtp.rejected),
                track,
                position_ms,
            })
        })
        .collect();
    calls.sort_by_key(|c| c.call);
    calls
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::MusicSource;
    use crate::codec::Codec;
    use crate::rtp::fanout::Playback;
    use crate::rtp::srtp::{SrtpKeyMaterial, SrtpParams, SrtpSender, SrtpSuite};
    use crate::sip::sdp::Direction;
    use std::os::unix::net::UnixDatagram;

    fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        f()
    }

    #[test]
    fn lateness_buckets_are_upper_bounds() {
        let h = LatenessHistogram::default();
        for us in [0, 500, 501, 1_000, 4_999, 100_000, 100_001, 3_000_000] {
            h.observe(Duration::from_micros(us));
        }
        let s = h.snapshot();
        assert_eq!(
            s.bounds_s,
            [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1]
        );
        assert_eq!(s.cumulative, [2, 4, 4, 5, 5, 5, 5, 6, 8]);
        assert_eq!(s.count(), 8);
        let sum: u64 = [0, 500, 501, 1_000, 4_999, 100_000, 100_001, 3_000_000]
            .iter()
            .sum();
        assert!((s.sum_s - sum as f64 / 1e6).abs() < 1e-9);
    }

    #[test]
    fn publishing_a_snapshot_never_waits_for_a_reader() {
        let stats = MediaStats::default();
        assert!(stats.calls_snapshot().is_empty());
        let held = stats.calls.lock().unwrap();
        assert!(
            !stats.try_publish(Vec::new()),
            "a held lock is skipped, not waited for"
        );
        drop(held);
        let snap = CallSnapshot {
            call: 1,
            peer: "192.0.2.1:5060".parse().unwrap(),
            remote_rtp: "192.0.2.1:4000".parse().unwrap(),
            channel: "default".into(),
            codec: "PCMU",
            started: Instant::now(),
            packets_sent: 0,
            packets_late: 0,
            sending: true,
            drift_ns: 0,
            srtp_rejected: 0,
            track: None,
            position_ms: 0,
        };
        assert!(stats.try_publish(vec![snap.clone()]));
        assert_eq!(*stats.calls_snapshot(), vec![snap]);
    }

    /// A media thread on a fresh clock and a channel to put calls on (an empty playlist: the
    /// loop is silence, which is all these tests need to see packets flow).
    fn media_thread_with_a_channel(
        options: MediaOptions,
        seed: u64,
    ) -> (MediaHandle, Arc<ChannelRender>) {
        let h = spawn(MediaClock::new(Instant::now()), seed, options, None).unwrap();
        let render = Arc::new(ChannelRender::render(
            "default",
            &MusicSource::Files(Vec::new()),
            -16.0,
        ));
        (h, render)
    }

    /// The phone's RTP socket (reads time out) and the call's own, non-blocking as the media
    /// thread wants it.
    fn phone_and_call_sockets() -> (UdpSocket, UdpSocket) {
        let phone = UdpSocket::bind("127.0.0.1:0").unwrap();
        phone
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let ours = UdpSocket::bind("127.0.0.1:0").unwrap();
        ours.set_nonblocking(true).unwrap();
        (phone, ours)
    }

    /// Plain PCMU, 20 ms, sending to `remote_rtp` with RTCP multiplexed.
    fn pcmu_to(remote_rtp: SocketAddr) -> MediaParams {
        MediaParams {
            codec: Codec::Pcmu,
            payload_type: 0,
            ptime_ms: 20,
            remote_rtp,
            remote_rtcp: None,
            direction: Direction::SendOnly,
            peer_opus: None,
            srtp: None,
        }
    }

    #[test]
    fn symmetric_rtp_follows_where_the_peers_rtp_comes_from() {
        let options = MediaOptions {
            realtime: false,
            ..MediaOptions::default()
        };
        let (h, render) = media_thread_with_a_channel(options, 6);
        // The SDP names one address; the phone (behind a NAT) sends from another.
        let advertised = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (phone, ours) = phone_and_call_sockets();
        let ours_addr = ours.local_addr().unwrap();
        h.send(MediaCommand::Add {
            media: CallMedia {
                call: 1,
                params: pcmu_to(advertised.local_addr().unwrap()),
                channel: render,
                playback: Playback::Shared,
                cname: "mohd-1@test".into(),
                ssrc: None,
            },
            rtp: ours,
            rtcp: None,
            info: CallInfo {
                peer: "192.0.2.9:5060".parse().unwrap(),
                channel: "default".into(),
                started: Instant::now(),
            },
        });
        // One RTP packet (version 2, PT 0) from the phone's real address.
        let mut packet = [0u8; 12 + 160];
        packet[0] = 0x80;
        phone.send_to(&packet, ours_addr).unwrap();
        let mut buf = [0u8; 512];
        assert!(
            wait_until(Duration::from_secs(10), || phone
                .recv_from(&mut buf)
                .is_ok_and(|(n, from)| from == ours_addr && n == 12 + 160)),
            "RTP follows the phone"
        );
        h.shutdown();
    }

    #[test]
    fn the_loop_streams_publishes_its_calls_and_pets_the_watchdog() {
        let dir = tempfile::tempdir().unwrap();
        let notify_path = dir.path().join("notify");
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let options = MediaOptions {
            realtime: false,
            watchdog: Some(
                Watchdog::connect(Duration::from_millis(200), notify_path.as_os_str()).unwrap(),
            ),
            ..MediaOptions::default()
        };
        let (h, render) = media_thread_with_a_channel(options, 5);
        let (phone, ours) = phone_and_call_sockets();
        let peer: SocketAddr = "192.0.2.9:5060".parse().unwrap();
        let started = Instant::now();
        h.send(MediaCommand::Add {
            media: CallMedia {
                call: 7,
                params: MediaParams {
                    codec: Codec::Pcma,
                    payload_type: 8,
                    ..pcmu_to(phone.local_addr().unwrap())
                },
                channel: render,
                playback: Playback::Shared,
                cname: "mohd-7@test".into(),
                ssrc: None,
            },
            rtp: ours,
            rtcp: None,
            info: CallInfo {
                peer,
                channel: "default".into(),
                started,
            },
        });
        // The snapshot shows the call as soon as it is added, then its packets.
        assert!(wait_until(Duration::from_secs(10), || {
            h.stats
                .calls_snapshot()
                .first()
                .is_some_and(|c| c.packets_sent >= 50)
        }));
        let snap = h.stats.calls_snapshot();
        let c = &snap[0];
        assert_eq!(snap.len(), 1);
        assert_eq!(
            (c.call, c.peer, c.remote_rtp, c.channel.as_str(), c.codec),
            (7, peer, phone.local_addr().unwrap(), "default", "PCMA")
        );
        assert!(c.sending);
        assert_eq!(c.started, started);
        // The phone hears RTP; every packet sent went through the lateness histogram.
        let mut buf = [0u8; 512];
        let (n, _) = phone.recv_from(&mut buf).unwrap();
        assert_eq!(n, 12 + 160);
        let sent = h.stats.packets_sent.load(Ordering::Relaxed);
        let observed = h.stats.lateness.snapshot().count();
        assert!(
            observed >= 50 && observed <= sent + 1,
            "{observed} of {sent}"
        );
        // Pets keep arriving from the loop.
        let mut pets = 0;
        assert!(wait_until(Duration::from_secs(10), || {
            while let Ok(n) = notify.recv(&mut buf) {
                assert_eq!(&buf[..n], b"WATCHDOG=1\n");
                pets += 1;
            }
            pets >= 3
        }));
        // Gone from the snapshot once removed.
        h.send(MediaCommand::Remove {
            call: 7,
            reason: "test".into(),
        });
        assert!(wait_until(Duration::from_secs(10), || h
            .stats
            .calls_snapshot()
            .is_empty()));
        h.shutdown();
    }

    fn non_realtime() -> MediaOptions {
        MediaOptions {
            realtime: false,
            ..MediaOptions::default()
        }
    }

    /// A call on `render` whose RTP (and multiplexed RTCP) leaves from `rtp`.
    fn add_command(
        call: u64,
        params: MediaParams,
        render: Arc<ChannelRender>,
        rtp: UdpSocket,
    ) -> MediaCommand {
        let info = CallInfo {
            peer: "192.0.2.9:5060".parse().unwrap(),
            channel: render.name.clone(),
            started: Instant::now(),
        };
        let media = CallMedia {
            call,
            params,
            channel: render,
            playback: Playback::Shared,
            cname: format!("mohd-{call}@test"),
            ssrc: None,
        };
        MediaCommand::Add {
            media,
            rtp,
            rtcp: None,
            info,
        }
    }

    /// With SRTP, what the peer's socket receives must authenticate: a tampered SRTCP
    /// compound and a forged RTP packet (from another address, which would otherwise re-target
    /// the stream) are dropped and counted as authentication failures, a replayed genuine one
    /// as a replay; the stream keeps going to the phone, protected.
    #[test]
    fn srtp_drops_and_counts_what_does_not_authenticate() {
        let (h, render) = media_thread_with_a_channel(non_realtime(), 8);
        let (phone, ours) = phone_and_call_sockets();
        let (attacker, _) = phone_and_call_sockets();
        let ours_addr = ours.local_addr().unwrap();
        let suite = SrtpSuite::AesCm128HmacSha1_80;
        let key = |fill: u8| SrtpKeyMaterial::from_bytes(suite, &[fill; 30]).unwrap();
        let keys = SrtpParams {
            suite,
            ours: key(1),
            theirs: key(2),
        };
        let params = MediaParams {
            srtp: Some(keys),
            ..pcmu_to(phone.local_addr().unwrap())
        };
        h.send(add_command(3, params, render, ours));
        // The phone protects with its key, as mohd's receiver expects: an empty RR + SDES.
        let mut phone_srtp = SrtpSender::new(suite, &keys.theirs);
        let mut protect_rr = || {
            let mut buf = [0u8; 64];
            let rr = [
                0x80, 201, 0, 1, 0, 0, 0, 9, 0x81, 202, 0, 2, 0, 0, 0, 9, 1, 1, b'p', 0,
            ];
            buf[..rr.len()].copy_from_slice(&rr);
            let n = phone_srtp.protect_rtcp(&mut buf, rr.len()).unwrap();
            buf[..n].to_vec()
        };
        let good = protect_rr();
        let mut tampered = protect_rr();
        tampered[12] ^= 0x04;
        let mut forged_rtp = [0u8; 12 + 160 + 10];
        forged_rtp[0] = 0x80;
        attacker.send_to(&tampered, ours_addr).unwrap();
        attacker.send_to(&forged_rtp, ours_addr).unwrap();
        phone.send_to(&good, ours_addr).unwrap();
        phone.send_to(&good, ours_addr).unwrap();
        assert!(
            wait_until(Duration::from_secs(10), || {
                h.stats.srtp_rejected_authentication.load(Ordering::Relaxed) == 2
                    && h.stats.srtp_rejected_replay.load(Ordering::Relaxed) == 1
            }),
            "authentication {} replay {}",
            h.stats.srtp_rejected_authentication.load(Ordering::Relaxed),
            h.stats.srtp_rejected_replay.load(Ordering::Relaxed)
        );
        assert!(wait_until(Duration::from_secs(10), || h
            .stats
            .calls_snapshot()
            .first()
            .is_some_and(|c| c.srtp_rejected == 3)));
        // The forged RTP did not move the stream: the phone still hears it, protected
        // (160 bytes of PCMU and an 80-bit tag), and the attacker nothing.
        std::thread::sleep(PEER_POLL * 2);
        let mut buf = [0u8; 512];
        assert!(
            attacker.recv_from(&mut buf).is_err(),
            "RTP went to the forger"
        );
        let (n, _) = phone.recv_from(&mut buf).unwrap();
        assert_eq!(n, 12 + 160 + 10);
        h.shutdown();
    }
}
