//! The media threads: the only place RTP leaves the process.
//!
//! A pool of `[rtp] media_threads` OS threads (default: one per core). Each owns a fan-out
//! (all on the one [`MediaClock`], so every thread's deadlines are on the same monotonic
//! clock), its share of the calls and their RTP/RTCP sockets. Each sleeps until its fan-out's
//! next absolute deadline (never a relative `sleep(20 ms)`), sends what is due, and takes
//! commands from its own channel, which also wakes it. Plain OS threads rather than tokio
//! tasks: their timer is the futex's (tens of microseconds), not tokio's millisecond wheel,
//! and nothing else can delay them.
//!
//! **Routing** ([`MediaSender`], cloned to the router and the conductor): a new call goes to
//! the least-loaded thread (measured work, see `rtp::balance`); `Update` and `Remove` go to
//! the thread that owns the call (a call → thread map); `SetChannel` and `Queue` go to every
//! thread (renders are `Arc`s: nothing is copied). **Rebalancing**: each thread measures its
//! work per second; the heaviest, when it stays heavier than the lightest by a margin, moves
//! calls to it between two of its turns ([`Fanout::take_call`] → [`Fanout::adopt_call`]:
//! SSRC, sequence, timestamp origin, counters, SRTP contexts, playback position, RTCP
//! schedule and the sockets all move), updating the map under its lock; a command that
//! reaches the old owner after the move is forwarded, after the call (one sender's messages
//! stay in order).
//!
//! **Counting.** The threads count what they send in thread-local counters and add them to
//! the shared [`MediaStats`] once per loop turn, not per packet (atomics written per packet
//! from several cores would ping-pong their cache lines).
//!
//! **Never starve the box.** A thread that fell behind skips ahead (`rtp::fanout`: past
//! [`super::fanout::MAX_CATCHUP`] due frames a call jumps to the current frame, counted in
//! `frames_skipped`), a turn sends at most [`MAX_PACKETS_PER_TURN`] packets before it looks
//! at its commands again, and the rule for SCHED_FIFO is: **a media thread that has not
//! blocked for at least [`REST`] (1 ms) within [`WORK_SLICE`] (50 ms) sleeps [`FORCED_REST`]
//! (5 ms)**, so on a saturated core at least 5 ms of every 55 go to the SIP and web threads
//! (the kernel's own real-time throttling leaves them 5 % only). `Shutdown` ends every thread
//! at its next turn: the calls' state and sockets are dropped, nothing is done per call.
//!
//! Sockets are non-blocking: a full send buffer drops that one packet (counted) instead of
//! stalling every other caller.
//!
//! **Shared ports** (`[rtp] port_model = "shared"`, see `rtp::io`): a thread may own port
//! pairs that its calls share ([`MediaSender::add_shared_port`]; such a call is placed on
//! its thread by [`MediaSender::place`] before its answer names the port, added with
//! [`MediaCommand::AddShared`], and never moved). A turn queues their packets in one
//! `sendmmsg` batch per socket, flushed when full and at the end of the turn; every
//! [`SHARED_POLL`] the thread reads the ports with `recvmmsg`, routes each packet to its call
//! (`Demux`), authenticates it (SRTP), and attributes the ICMP errors queued on the ports to
//! the calls whose peers refused.
//!
//! It also watches the peers, a few times a second rather than every packet (a syscall per
//! socket per 20 ms would cost more than sending): RTP or RTCP arriving from another address
//! than the SDP said re-targets the stream there (symmetric RTP, for PBXs behind NAT); no
//! RTP/RTCP at all for the configured time, or ICMP port unreachable for several seconds, reports
//! the peer gone so the SIP side hangs up. ICMP errors reach an unconnected UDP socket only with
//! `IP_RECVERR`, which is set on every call's sockets.
//!
//! They are also what proves mohd alive to systemd: every thread stamps each of its turns,
//! and the first thread pets the watchdog from its own loop, only while every stamp is fresh
//! (within [`ALIVE_WITHIN`]), so one wedged media thread stops the pets and systemd restarts
//! the service. What the rest of the process may read — counters, the lateness histogram, the
//! drift, per-thread work, and a snapshot of the calls for the web page — is published in
//! [`MediaStats`] without a loop ever waiting on a lock: atomics for numbers, and per thread a
//! `try_lock`ed swap of an `Arc` for its calls' snapshot (once a second and when calls come,
//! go or move), merged by the reader.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;

use super::balance::{self, Rebalance, Rebalancer, ThreadLoad};
use super::fanout::{CallMedia, Fanout, MovingCall, PacketKind, Piece};
use super::io::{BATCH, Demux, RecvBatch, SendBatch, read_send_errors, send_error_space};
use super::srtp::{SrtpError, SrtpParams, SrtpReceiver};
use crate::channel::ChannelRender;
use crate::clock::{MediaClock, TICKS_PER_SECOND};
use crate::notify::Watchdog;
use crate::sip::sdp::MediaParams;

/// Sent more than this after its deadline counts as late.
pub const LATE_THRESHOLD: Duration = Duration::from_millis(5);
/// How often the peers' sockets are read.
const PEER_POLL: Duration = Duration::from_millis(200);
/// How often a thread's shared ports are read: every call's peer sends there, so more often
/// than [`PEER_POLL`] keeps what waits within the socket's buffer (a read is one `recvmmsg`
/// per 64 packets, not a syscall per call). A read is done at any wake-up at least
/// [`SHARED_POLL_MIN`] after the last one, and the thread wakes for one of its own only when
/// no wake-up for the ticks comes within [`SHARED_POLL`]: with calls up, the reads ride with
/// the ticks. Read every 20 ms from the instant of the last read, as before, the read fell a
/// little after each tick and woke each thread once more per tick (about 50 more wake-ups a
/// second, `voluntary_ctxt_switches`, each dearer than a packet).
const SHARED_POLL: Duration = Duration::from_millis(30);
/// See [`SHARED_POLL`].
const SHARED_POLL_MIN: Duration = Duration::from_millis(10);
/// ICMP errors further apart than this are not "continuous".
const UNREACHABLE_GAP: Duration = Duration::from_secs(2);
/// How often the call snapshot is refreshed.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);
/// How soon after a call comes, goes or moves the snapshot is refreshed. Not at once: a
/// snapshot costs a pass over every call, so a burst of n changes (thousands of calls hung up
/// at shutdown) would cost n passes, O(n²); at most one per this interval instead.
const SNAPSHOT_AFTER_CHANGE: Duration = Duration::from_millis(50);
/// A thread's turn stamp older than this means it is not alive (no watchdog pet). Idle
/// threads still turn every [`PEER_POLL`].
pub const ALIVE_WITHIN: Duration = Duration::from_secs(1);
/// A turn sends at most this many packets, then looks at its commands and the rest rule
/// before it goes on.
pub const MAX_PACKETS_PER_TURN: usize = 4096;
/// Commands applied back to back before the thread sends again.
const MAX_COMMANDS_PER_TURN: usize = 256;
/// A wait that blocked at least this long counts as a rest (see the module docs).
pub const REST: Duration = Duration::from_millis(1);
/// Working this long without a rest forces one.
pub const WORK_SLICE: Duration = Duration::from_millis(50);
/// The forced rest.
pub const FORCED_REST: Duration = Duration::from_millis(5);
/// Each thread measures its work over windows this long (its load for balancing).
const LOAD_WINDOW: Duration = Duration::from_secs(1);
/// The most media threads `[rtp] media_threads` accepts.
pub const MAX_MEDIA_THREADS: usize = 64;

/// The default number of media threads: one per core this process may run on.
pub fn default_media_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, MAX_MEDIA_THREADS)
}

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
    /// Run the media threads under SCHED_FIFO when the process may (root or CAP_SYS_NICE), so
    /// a busy box (a decoder, a compile, the web page) cannot make packets late.
    pub realtime: bool,
    /// How many media threads (`[rtp] media_threads`), at least 1.
    pub threads: usize,
    /// When calls move between threads.
    pub rebalance: Rebalance,
    /// The systemd watchdog, petted from the first media thread's loop while every thread
    /// is alive (`notify::Watchdog::from_env()`).
    pub watchdog: Option<Watchdog>,
    /// Test hook only (`notify::test_stall_media_after()`): wedge the last media thread's
    /// loop this long after it starts, to show that the watchdog pets stop.
    pub stall_after: Option<Duration>,
}

/// What every media thread is told of [`MediaOptions`].
#[derive(Debug, Clone, Copy)]
struct ThreadOptions {
    symmetric_rtp: bool,
    rtp_timeout: Option<Duration>,
    unreachable_timeout: Duration,
    rebalance: Rebalance,
}

/// Best effort: without the privilege the thread stays at normal priority, which is logged.
fn raise_to_realtime(thread: usize) {
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
        Ok(()) => tracing::info!(
            thread,
            "media thread runs with real-time priority (SCHED_FIFO)"
        ),
        Err(e) => tracing::info!(
            thread,
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
            threads: default_media_threads(),
            rebalance: Rebalance::default(),
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
    /// Shared with the call's snapshots (made every second): a count, not a copy.
    pub channel: Arc<str>,
    pub started: Instant,
}

pub enum MediaCommand {
    /// A call with sockets of its own (`[rtp] port_model = "per-call"`, multicast streams).
    Add {
        media: CallMedia,
        rtp: UdpSocket,
        rtcp: Option<UdpSocket>,
        info: CallInfo,
    },
    /// A call on the shared port `local` of the thread [`MediaSender::place`] chose for it
    /// (the port its SDP answer named; given with [`MediaSender::add_shared_port`]).
    AddShared {
        media: CallMedia,
        local: SocketAddr,
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
    pub channel: Arc<str>,
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

/// The bucket of a lateness of `ns`.
fn lateness_bucket(ns: u64) -> usize {
    LATENESS_BOUNDS_NS.partition_point(|&b| b < ns)
}

impl LatenessHistogram {
    pub fn observe(&self, late: Duration) {
        let ns = u64::try_from(late.as_nanos()).unwrap_or(u64::MAX);
        if let Some(b) = self.buckets.get(lateness_bucket(ns)) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Adds what a thread counted locally.
    fn add(&self, counts: &[u64; LATENESS_BOUNDS_NS.len() + 1], sum_ns: u64) {
        for (bucket, &n) in self.buckets.iter().zip(counts) {
            if n > 0 {
                bucket.fetch_add(n, Ordering::Relaxed);
            }
        }
        self.sum_ns.fetch_add(sum_ns, Ordering::Relaxed);
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

/// Counters shared with the rest of the process (metrics, health, tests): sums over the
/// media threads, added once per loop turn.
#[derive(Debug, Default)]
pub struct MediaStats {
    pub packets_sent: AtomicU64,
    /// RTP packets sent more than [`LATE_THRESHOLD`] after their deadline.
    pub packets_late: AtomicU64,
    pub send_errors: AtomicU64,
    pub max_late_us: AtomicU64,
    pub active_calls: AtomicU64,
    /// Of `active_calls`, the multicast streams (`rtp::multicast`): not callers.
    pub multicast_streams: AtomicU64,
    /// Nanoseconds since the clock epoch of the stalest media thread's last loop turn: a
    /// stalled thread shows here.
    pub last_tick_ns: AtomicU64,
    /// Time the media threads spent working (sending, reading peers, applying commands),
    /// summed over threads, ns: not the time asleep waiting for a deadline. The measured cost
    /// admission control divides by the packets sent. Per thread: [`MediaStats::threads`].
    pub busy_ns: AtomicU64,
    /// Frames not sent because their call skipped ahead after its thread fell behind (see
    /// `rtp::fanout`, "Catch-up and skip-ahead").
    pub frames_skipped: AtomicU64,
    /// Calls moved from one media thread to another by rebalancing.
    pub calls_moved: AtomicU64,
    /// Rests forced on a media thread that worked a whole [`WORK_SLICE`] without one (the
    /// threads are out of time: see the module docs).
    pub forced_rests: AtomicU64,
    /// Lateness of every RTP packet sent.
    pub lateness: LatenessHistogram,
    /// Largest absolute drift of any call's RTP timestamps from the monotonic clock since
    /// the start, ns (see `rtp::fanout`, "Drift accounting").
    pub max_abs_drift_ns: AtomicU64,
    /// Packets from peers dropped because they failed SRTP authentication (or were not SRTP).
    pub srtp_rejected_authentication: AtomicU64,
    /// Packets from peers dropped as SRTP replays (already received, or too old).
    pub srtp_rejected_replay: AtomicU64,
    threads: Box<[ThreadStats]>,
}

/// One media thread's figures. Written by that thread only; aligned so that two threads'
/// figures never share a cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct ThreadStats {
    /// Calls it serves.
    pub calls: AtomicU64,
    /// Time it spent working, ns (its share of [`MediaStats::busy_ns`]).
    pub busy_ns: AtomicU64,
    /// Its work over its last measurement window, ns per second: its load.
    pub load_ns_per_s: AtomicU64,
    /// The calls it served when it measured that.
    pub measured_calls: AtomicU64,
    /// Nanoseconds since the clock epoch of its last loop turn.
    pub last_turn_ns: AtomicU64,
    calls_snapshot: Mutex<Arc<Vec<CallSnapshot>>>,
}

impl ThreadStats {
    /// Publishes a new snapshot of this thread's calls unless a reader holds the lock right
    /// now (then the caller tries again on its next turn). Never blocks.
    fn try_publish(&self, calls: Vec<CallSnapshot>) -> bool {
        match self.calls_snapshot.try_lock() {
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

    fn calls_snapshot(&self) -> Arc<Vec<CallSnapshot>> {
        Arc::clone(&lock(&self.calls_snapshot))
    }

    /// What balancing reads of it, with `calls` the calls it has been given.
    fn load(&self, calls: u64) -> ThreadLoad {
        ThreadLoad {
            calls,
            measured_calls: self.measured_calls.load(Ordering::Relaxed),
            busy_ns_per_s: self.load_ns_per_s.load(Ordering::Relaxed),
        }
    }
}

/// A lock whose holder panicked still guards consistent data here (every holder only swaps
/// or inserts whole values): go on with it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MediaStats {
    /// Stats for `threads` media threads.
    pub fn with_threads(threads: usize) -> Self {
        MediaStats {
            threads: (0..threads).map(|_| ThreadStats::default()).collect(),
            ..MediaStats::default()
        }
    }

    /// Each media thread's own figures, in thread order.
    pub fn threads(&self) -> &[ThreadStats] {
        &self.threads
    }

    /// The calls being served, as of the last refresh (at most a second old, and fresh after
    /// a call came, went or moved), every thread's, by call id. Cheap with one thread
    /// (clones an `Arc`); with several, the threads' snapshots are merged here, by the reader.
    pub fn calls_snapshot(&self) -> Arc<Vec<CallSnapshot>> {
        if let [one] = &*self.threads {
            return one.calls_snapshot();
        }
        let mut calls: Vec<CallSnapshot> = self
            .threads
            .iter()
            .flat_map(|t| t.calls_snapshot().iter().cloned().collect::<Vec<_>>())
            .collect();
        calls.sort_by_key(|c| c.call);
        Arc::new(calls)
    }
}

/// What one media thread counts between two flushes into [`MediaStats`].
#[derive(Debug, Default)]
struct LocalCounts {
    packets_sent: u64,
    packets_late: u64,
    send_errors: u64,
    max_late_us: u64,
    lateness: [u64; LATENESS_BOUNDS_NS.len() + 1],
    lateness_sum_ns: u64,
}

impl LocalCounts {
    /// Counts one RTP packet sent `late` after its deadline.
    fn observe_sent(&mut self, late: Duration) {
        let ns = u64::try_from(late.as_nanos()).unwrap_or(u64::MAX);
        self.packets_sent += 1;
        if late > LATE_THRESHOLD {
            self.packets_late += 1;
        }
        if let Some(b) = self.lateness.get_mut(lateness_bucket(ns)) {
            *b += 1;
        }
        self.lateness_sum_ns = self.lateness_sum_ns.saturating_add(ns);
        self.max_late_us = self.max_late_us.max(ns / 1_000);
    }

    /// Adds everything counted since the last flush to `stats`, and starts again.
    fn flush(&mut self, stats: &MediaStats) {
        if self.packets_sent > 0 {
            stats
                .packets_sent
                .fetch_add(self.packets_sent, Ordering::Relaxed);
            stats
                .packets_late
                .fetch_add(self.packets_late, Ordering::Relaxed);
            stats
                .max_late_us
                .fetch_max(self.max_late_us, Ordering::Relaxed);
            stats.lateness.add(&self.lateness, self.lateness_sum_ns);
        }
        if self.send_errors > 0 {
            stats
                .send_errors
                .fetch_add(self.send_errors, Ordering::Relaxed);
        }
        *self = LocalCounts::default();
    }
}

/// Why a command could not be handed over: the media threads are gone (the process is
/// ending, or one panicked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the media threads are gone")]
pub struct MediaGone;

/// What a media thread's channel carries.
// A command (a call's `MediaParams`, SRTP keys included) is moved once per wake-up and already
// travels by value through the channel; boxing it would add an allocation for nothing.
#[allow(clippy::large_enum_variant)]
enum ThreadCommand {
    Media(MediaCommand),
    /// A call another thread gave up ([`Fanout::take_call`]), with its sockets.
    Adopt(Box<Migrant>),
    /// A port pair this thread's shared-port calls use from now on.
    SharedPort {
        rtp: UdpSocket,
        rtcp: UdpSocket,
    },
}

/// A call moving between threads.
struct Migrant {
    call: MovingCall,
    sockets: CallSockets,
}

/// Which thread owns which call; taken by senders (per SIP event, never per packet) and by
/// a thread when it moves or ends a call.
#[derive(Debug)]
struct Routing {
    owner: HashMap<u64, usize>,
    /// Calls per thread (given, possibly not yet applied): placement's call counts.
    assigned: Vec<u64>,
}

impl Routing {
    fn loads(&self, stats: &MediaStats) -> Vec<ThreadLoad> {
        stats
            .threads()
            .iter()
            .zip(&self.assigned)
            .map(|(t, &calls)| t.load(calls))
            .collect()
    }

    /// Records that `call` now belongs to `to` (and no longer to where it was).
    fn assign(&mut self, call: u64, to: usize) -> Option<usize> {
        let before = self.owner.insert(call, to);
        if let Some(b) = before.and_then(|b| self.assigned.get_mut(b)) {
            *b = b.saturating_sub(1);
        }
        if let Some(a) = self.assigned.get_mut(to) {
            *a += 1;
        }
        before
    }

    /// Forgets `call` if `thread` owns it.
    fn release(&mut self, call: u64, thread: usize) {
        if self.owner.get(&call) == Some(&thread) {
            self.owner.remove(&call);
            if let Some(a) = self.assigned.get_mut(thread) {
                *a = a.saturating_sub(1);
            }
        }
    }
}

/// What the senders and the threads share.
struct Pool {
    threads: Vec<mpsc::Sender<ThreadCommand>>,
    routing: Mutex<Routing>,
    stats: Arc<MediaStats>,
}

impl Pool {
    fn to_thread(&self, thread: usize, cmd: ThreadCommand) -> Result<(), MediaGone> {
        self.threads
            .get(thread)
            .ok_or(MediaGone)?
            .send(cmd)
            .map_err(|_| MediaGone)
    }

    fn broadcast(&self, make: impl Fn() -> MediaCommand) -> Result<(), MediaGone> {
        let mut result = Ok(());
        for t in 0..self.threads.len() {
            if self.to_thread(t, ThreadCommand::Media(make())).is_err() {
                result = Err(MediaGone);
            }
        }
        result
    }
}

/// Hands commands to the media threads (see the module docs, "Routing"). Cheap to clone.
#[derive(Clone)]
pub struct MediaSender {
    pool: Arc<Pool>,
}

impl std::fmt::Debug for MediaSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaSender")
            .field("threads", &self.pool.threads.len())
            .finish()
    }
}

impl MediaSender {
    pub fn send(&self, cmd: MediaCommand) -> Result<(), MediaGone> {
        let pool = &self.pool;
        match &cmd {
            MediaCommand::Add { media, .. } => {
                let call = media.call;
                let mut routing = lock(&pool.routing);
                let to = balance::least_loaded(&routing.loads(&pool.stats));
                if let Some(before) = routing.assign(call, to)
                    && before != to
                {
                    // The same id again (never from the router): the old stream ends.
                    let remove = MediaCommand::Remove {
                        call,
                        reason: "replaced".into(),
                    };
                    let _ = pool.to_thread(before, ThreadCommand::Media(remove));
                }
                pool.to_thread(to, ThreadCommand::Media(cmd))
            }
            MediaCommand::AddShared { media, .. } => {
                let routing = lock(&pool.routing);
                match routing.owner.get(&media.call) {
                    Some(&t) => pool.to_thread(t, ThreadCommand::Media(cmd)),
                    None => {
                        tracing::warn!(call = media.call, "shared-port call never placed");
                        Ok(())
                    }
                }
            }
            MediaCommand::Update { call, .. } | MediaCommand::Remove { call, .. } => {
                let routing = lock(&pool.routing);
                match routing.owner.get(call) {
                    Some(&t) => pool.to_thread(t, ThreadCommand::Media(cmd)),
                    // Already gone (its peer vanished and it was removed twice, say).
                    None => Ok(()),
                }
            }
            MediaCommand::SetChannel(render) => {
                pool.broadcast(|| MediaCommand::SetChannel(Arc::clone(render)))
            }
            MediaCommand::Queue { channel, piece } => pool.broadcast(|| MediaCommand::Queue {
                channel: channel.clone(),
                piece: piece.clone(),
            }),
            MediaCommand::Shutdown => pool.broadcast(|| MediaCommand::Shutdown),
        }
    }
}

impl MediaSender {
    /// Chooses the thread a shared-port call will run on (the least loaded, as for
    /// [`MediaCommand::Add`]) before its SDP answer names that thread's port. A call placed
    /// and never added is given back with [`MediaSender::unplace`].
    pub fn place(&self, call: u64) -> usize {
        let mut routing = lock(&self.pool.routing);
        let to = balance::least_loaded(&routing.loads(&self.pool.stats));
        routing.assign(call, to);
        to
    }

    /// Forgets a call placed but never added (it ended before media).
    pub fn unplace(&self, call: u64) {
        let mut routing = lock(&self.pool.routing);
        if let Some(&thread) = routing.owner.get(&call) {
            routing.release(call, thread);
        }
    }

    /// Gives `thread` a port pair for its shared-port calls; they are added after it.
    pub fn add_shared_port(
        &self,
        thread: usize,
        rtp: UdpSocket,
        rtcp: UdpSocket,
    ) -> Result<(), MediaGone> {
        self.pool
            .to_thread(thread, ThreadCommand::SharedPort { rtp, rtcp })
    }
}

/// The running media threads.
pub struct MediaHandle {
    sender: MediaSender,
    threads: Vec<JoinHandle<()>>,
    pub stats: Arc<MediaStats>,
}

impl MediaHandle {
    pub fn send(&self, cmd: MediaCommand) {
        if self.sender.send(cmd).is_err() {
            tracing::error!("media thread is gone");
        }
    }

    pub fn sender(&self) -> MediaSender {
        self.sender.clone()
    }

    /// Stops every media thread and waits for them: each ends at its next turn.
    pub fn shutdown(mut self) {
        let _ = self.sender.send(MediaCommand::Shutdown);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for MediaHandle {
    /// The threads hold the pool (and so each other's channels): they end only when told.
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            let _ = self.sender.send(MediaCommand::Shutdown);
        }
    }
}

/// Where a call's packets leave from and arrive on.
enum CallIo {
    /// Sockets of its own: the call can move between threads with them.
    Own {
        rtp: UdpSocket,
        rtcp: Option<UdpSocket>,
    },
    /// Its thread's shared port `port` (an index into the thread's shared ports); its RTCP
    /// leaves from the shared RTP socket when multiplexed.
    Shared { port: usize, rtcp_mux: bool },
}

/// A shared-port call's [`CallIo`] as its fan-out route ([`Fanout::set_route`]): its packets
/// go to their port's batch without a lookup of the call per packet (at 2,500 calls that
/// lookup missed the cache on every packet: a quarter of the media thread's own time).
/// Route 0 (never set): sockets of its own, looked up.
fn shared_route(port: usize, rtcp_mux: bool) -> u32 {
    let port = u32::try_from(port).unwrap_or(u32::MAX >> 2);
    1 | (u32::from(rtcp_mux) << 1) | (port << 2)
}

/// The shared port and RTCP muxing a route names; `None` for a call with its own sockets.
fn shared_of_route(route: u32) -> Option<(usize, bool)> {
    (route & 1 == 1).then_some(((route >> 2) as usize, route & 2 != 0))
}

struct CallSockets {
    io: CallIo,
    info: CallInfo,
    last_heard: Instant,
    refused_since: Option<Instant>,
    last_refused: Option<Instant>,
    reported: bool,
    /// Boxed: an SRTP receiver is some 2.3 KB, and every packet sent looks its call up here
    /// (inline, the table's entries were 2.5 KB apart, two cache misses a packet: a quarter
    /// of the media thread's own time at 2,500 calls).
    srtp: Option<Box<InboundSrtp>>,
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
    fn new(io: CallIo, info: CallInfo, srtp: Option<SrtpParams>) -> Self {
        CallSockets {
            io,
            info,
            last_heard: Instant::now(),
            refused_since: None,
            last_refused: None,
            reported: false,
            srtp: srtp.map(|keys| {
                Box::new(InboundSrtp {
                    receiver: keys.receiver(),
                    rejected: 0,
                })
            }),
        }
    }

    /// The call's own socket for `kind` (RTCP leaves from the RTCP socket, or the RTP one
    /// when there is none); `None` for a shared-port call.
    fn socket_for(&self, kind: PacketKind) -> Option<&UdpSocket> {
        match (&self.io, kind) {
            (CallIo::Own { rtp, .. }, PacketKind::Rtp) => Some(rtp),
            (CallIo::Own { rtp, rtcp }, PacketKind::Rtcp) => Some(rtcp.as_ref().unwrap_or(rtp)),
            (CallIo::Shared { .. }, _) => None,
        }
    }

    /// Whether the call can move to another thread (it has sockets of its own).
    fn movable(&self) -> bool {
        matches!(self.io, CallIo::Own { .. })
    }

    /// A packet from the peer passed the call's checks: it is alive and reachable.
    fn heard_from_peer(&mut self, now: Instant) {
        self.last_heard = now;
        self.refused_since = None;
        self.last_refused = None;
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
        let CallIo::Own { rtp, rtcp } = &self.io else {
            return heard;
        };
        let mut rtp_refused = false;
        for _ in 0..256 {
            match rtp.recv_from(buf) {
                Ok((n, from)) => {
                    if !passes_srtp(&mut self.srtp, call, &mut buf[..n], stats) {
                        continue;
                    }
                    // What `heard_from_peer` does (this loop holds the socket).
                    self.last_heard = now;
                    self.refused_since = None;
                    self.last_refused = None;
                    rtp_refused = false;
                    if super::packet::is_rtcp(&buf[..n]) {
                        heard.rtcp_from = Some(from);
                    } else {
                        heard.rtp_from = Some(from);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    rtp_refused = true;
                }
                Err(_) => break,
            }
        }
        let mut rtcp_heard = false;
        let mut rtcp_refused = false;
        if let Some(rtcp) = rtcp {
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
        if rtp_refused || rtcp_refused {
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
    fn gone(&self, now: Instant, options: &ThreadOptions) -> Option<String> {
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
    srtp: &mut Option<Box<InboundSrtp>>,
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
    mut options: MediaOptions,
    events: Option<tokio::sync::mpsc::UnboundedSender<MediaEvent>>,
) -> std::io::Result<MediaHandle> {
    let count = options.threads.clamp(1, MAX_MEDIA_THREADS);
    let stats = Arc::new(MediaStats::with_threads(count));
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..count).map(|_| mpsc::channel()).unzip();
    let pool = Arc::new(Pool {
        threads: senders,
        routing: Mutex::new(Routing {
            owner: HashMap::new(),
            assigned: vec![0; count],
        }),
        stats: Arc::clone(&stats),
    });
    let shared = ThreadOptions {
        symmetric_rtp: options.symmetric_rtp,
        rtp_timeout: options.rtp_timeout,
        unreachable_timeout: options.unreachable_timeout,
        rebalance: options.rebalance,
    };
    // The wall time that corresponds to the clock's epoch, for RTCP's NTP timestamps only.
    let wall_epoch = SystemTime::now() - clock.epoch().elapsed();
    let stall_at = options.stall_after.map(|d| Instant::now() + d);
    let mut watchdog = options.watchdog.take();
    let mut threads = Vec::with_capacity(count);
    for (me, rx) in receivers.into_iter().enumerate() {
        // Distinct streams of SSRCs and sequence starts per thread.
        let seed = seed.wrapping_add((me as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let watchdog = if me == 0 { watchdog.take() } else { None };
        let stall_at = stall_at.filter(|_| me == count - 1);
        let realtime = options.realtime;
        let (thread_pool, events) = (Arc::clone(&pool), events.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("mohd-media-{me}"))
            .spawn(move || {
                if realtime {
                    raise_to_realtime(me);
                }
                // Made here: the batches' preallocated headers are not `Send`.
                let m = MediaLoop::new(me, clock, seed, wall_epoch, &thread_pool, shared, events);
                m.run(rx, watchdog, stall_at)
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                let _ = pool.broadcast(|| MediaCommand::Shutdown);
                for t in threads {
                    let _ = t.join();
                }
                return Err(e);
            }
        }
    }
    Ok(MediaHandle {
        sender: MediaSender { pool },
        threads,
        stats,
    })
}

/// One port pair of a thread, shared by its calls (`[rtp] port_model = "shared"`): what
/// leaves through each socket is batched, what arrives is demultiplexed to its call.
struct SharedPort {
    /// The RTP address calls' SDP answers name.
    local: SocketAddr,
    rtp: UdpSocket,
    rtcp: UdpSocket,
    demux: Demux,
    rtp_out: SendBatch,
    rtcp_out: SendBatch,
}

/// A shared socket's receive buffer: what arrives between two reads ([`SHARED_POLL`]) from
/// every call's peer waits here. Best effort (`net.core.rmem_max` caps it).
const SHARED_RECV_BUFFER: usize = 4 << 20;

impl SharedPort {
    fn new(rtp: UdpSocket, rtcp: UdpSocket) -> std::io::Result<Self> {
        use nix::sys::socket::{setsockopt, sockopt};
        let local = rtp.local_addr()?;
        for socket in [&rtp, &rtcp] {
            socket.set_nonblocking(true)?;
            enable_icmp_errors(socket);
            if let Err(e) = setsockopt(socket, sockopt::RcvBuf, &SHARED_RECV_BUFFER) {
                tracing::debug!(error = %e, "cannot grow a shared RTP socket's receive buffer");
            }
        }
        Ok(SharedPort {
            local,
            rtp,
            rtcp,
            demux: Demux::new(),
            rtp_out: SendBatch::new(),
            rtcp_out: SendBatch::new(),
        })
    }

    /// The batch and socket a call's `kind` of packet leaves through.
    fn outbound(&mut self, kind: PacketKind, rtcp_mux: bool) -> (&mut SendBatch, &UdpSocket) {
        match kind {
            PacketKind::Rtcp if !rtcp_mux => (&mut self.rtcp_out, &self.rtcp),
            _ => (&mut self.rtp_out, &self.rtp),
        }
    }
}

/// Sends what `batch` holds through `socket`. What the kernel refused or dropped counts as
/// a send error (its RTP was counted as sent when queued: lateness is measured there); a
/// refusal is its call's peer refusing.
fn flush_batch(
    batch: &mut SendBatch,
    socket: &UdpSocket,
    sockets: &mut HashMap<u64, CallSockets>,
    counts: &mut LocalCounts,
    now: Instant,
) {
    if batch.is_empty() {
        return;
    }
    let queued = batch.len();
    let sent = batch.flush(socket, |f| {
        if f.error == Errno::ECONNREFUSED
            && let Some(s) = sockets.get_mut(&f.tag)
        {
            s.note_refused(now);
        }
        tracing::trace!(call = f.tag, error = %f.error, "RTP send failed");
    });
    counts.send_errors += (queued - sent) as u64;
}

/// What one media thread owns between turns.
struct MediaLoop {
    /// Its index in the pool.
    me: usize,
    clock: MediaClock,
    fanout: Fanout,
    sockets: HashMap<u64, CallSockets>,
    /// Its shared port pairs (usually one; one per address calls arrive on).
    shared: Vec<SharedPort>,
    /// Scratch for reading the shared ports, and for their ICMP errors.
    inbound: RecvBatch,
    error_space: Vec<u8>,
    last_shared_read: Instant,
    buf: Vec<u8>,
    pool: Arc<Pool>,
    stats: Arc<MediaStats>,
    options: ThreadOptions,
    events: Option<tokio::sync::mpsc::UnboundedSender<MediaEvent>>,
    next_snapshot: Instant,
    /// Counted since the last flush into `stats`.
    counts: LocalCounts,
    busy: Duration,
    /// What `stats` already has of the call count and of the fan-out's skipped frames.
    published_calls: u64,
    published_skipped: u64,
    /// The current load window: since when, and the work in it.
    window_start: Instant,
    window_busy: Duration,
    rebalancer: Rebalancer,
    /// Scratch: the calls a rebalancing step moves.
    moving: Vec<u64>,
}

/// What waiting for the next deadline brought.
// A command (a call's `MediaParams`, SRTP keys included) is moved once per wake-up and already
// travels by value through the channel; boxing it would add an allocation for nothing.
#[allow(clippy::large_enum_variant)]
enum Wake {
    Command(ThreadCommand),
    Deadline,
    /// Every sender is gone: the process is ending.
    Disconnected,
}

/// Waits for a command until `deadline`.
fn wait_until(rx: &mpsc::Receiver<ThreadCommand>, deadline: Instant) -> Wake {
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
    fn new(
        me: usize,
        clock: MediaClock,
        seed: u64,
        wall_epoch: SystemTime,
        pool: &Arc<Pool>,
        options: ThreadOptions,
        events: Option<tokio::sync::mpsc::UnboundedSender<MediaEvent>>,
    ) -> Self {
        let now = Instant::now();
        MediaLoop {
            me,
            clock,
            fanout: Fanout::new(clock, seed, wall_epoch),
            sockets: HashMap::new(),
            shared: Vec::new(),
            inbound: RecvBatch::new(),
            error_space: send_error_space(),
            last_shared_read: now,
            buf: vec![0u8; 2048],
            pool: Arc::clone(pool),
            stats: Arc::clone(&pool.stats),
            options,
            events,
            next_snapshot: now,
            counts: LocalCounts::default(),
            busy: Duration::ZERO,
            published_calls: 0,
            published_skipped: 0,
            window_start: now,
            window_busy: Duration::ZERO,
            rebalancer: Rebalancer::new(options.rebalance),
            moving: Vec::new(),
        }
    }

    fn mine(&self) -> &ThreadStats {
        &self.stats.threads()[self.me]
    }

    fn run(
        mut self,
        rx: mpsc::Receiver<ThreadCommand>,
        mut watchdog: Option<Watchdog>,
        stall_at: Option<Instant>,
    ) {
        let mut next_peer_poll = Instant::now() + PEER_POLL;
        let mut rested_at = Instant::now();
        loop {
            let now = Instant::now();
            if stall_at.is_some_and(|t| now >= t) {
                wedge();
            }
            self.stamp(now);
            // Only the media loops prove the media alive: one wedged thread stops the pets.
            if let Some(w) = watchdog.as_mut()
                && self.all_alive(now)
            {
                w.pet(now);
            }
            self.fanout.handle_timeout(now);
            let capped = self.send_due();
            // Reads come after the tick's packets have left: those do not wait for them, and
            // what arrived waits a few hundred microseconds more in the socket.
            let sent = Instant::now();
            if !self.shared.is_empty() && sent >= self.last_shared_read + SHARED_POLL_MIN {
                self.last_shared_read = sent;
                self.read_shared_ports(sent);
            }
            if sent >= next_peer_poll {
                next_peer_poll = sent + PEER_POLL;
                self.watch_peers(sent);
            }
            self.busy += now.elapsed();
            self.publish(now);

            // Sleep until the next deadline, waking early for commands and the watchdog (a
            // pet held back for a dead thread is not a reason to wake).
            let mut wake = match self.fanout.poll_timeout() {
                _ if capped => now,
                Some(at) => at.min(next_peer_poll),
                None => next_peer_poll,
            };
            if !self.shared.is_empty() {
                wake = wake.min(self.last_shared_read + SHARED_POLL);
            }
            if let Some(at) = watchdog.as_ref().and_then(Watchdog::next_pet)
                && at > now
            {
                wake = wake.min(at);
            }
            let waited_from = Instant::now();
            let woke = wait_until(&rx, wake);
            let awake = Instant::now();
            if awake - waited_from >= REST {
                rested_at = awake;
            }
            match woke {
                Wake::Deadline => {}
                Wake::Disconnected => break,
                Wake::Command(cmd) => {
                    // A burst (thousands of calls ending at once) is applied in batches,
                    // not one loop turn per command.
                    let mut flow = self.apply(cmd);
                    for _ in 1..MAX_COMMANDS_PER_TURN {
                        if flow.is_break() {
                            break;
                        }
                        let Ok(cmd) = rx.try_recv() else { break };
                        flow = self.apply(cmd);
                    }
                    self.sync_calls();
                    self.busy += awake.elapsed();
                    if flow.is_break() {
                        break;
                    }
                }
            }
            // The rest rule (module docs): never more than a work slice without a rest.
            if awake.saturating_duration_since(rested_at) >= WORK_SLICE {
                std::thread::sleep(FORCED_REST);
                rested_at = Instant::now();
                self.stats.forced_rests.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Stamps this turn (the watchdog's and `/healthz`'s proof of life); the first thread
    /// also publishes the stalest stamp.
    fn stamp(&self, now: Instant) {
        let ns = self.since_epoch_ns(now);
        self.mine().last_turn_ns.store(ns, Ordering::Relaxed);
        if self.me == 0 {
            let stalest = self
                .stats
                .threads()
                .iter()
                .map(|t| t.last_turn_ns.load(Ordering::Relaxed))
                .min()
                .unwrap_or(ns);
            self.stats.last_tick_ns.store(stalest, Ordering::Relaxed);
        }
    }

    fn since_epoch_ns(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.clock.epoch()).as_nanos() as u64
    }

    /// Whether every media thread has turned within [`ALIVE_WITHIN`].
    fn all_alive(&self, now: Instant) -> bool {
        let ns = self.since_epoch_ns(now);
        let within = ALIVE_WITHIN.as_nanos() as u64;
        self.stats
            .threads()
            .iter()
            .all(|t| ns.saturating_sub(t.last_turn_ns.load(Ordering::Relaxed)) <= within)
    }

    /// Sends what the fan-out has due, measuring each RTP packet's lateness; at most
    /// [`MAX_PACKETS_PER_TURN`] (true: there may be more).
    fn send_due(&mut self) -> bool {
        let capped = self.send_due_unflushed();
        // Whatever the shared ports' batches still hold leaves now, before the thread sleeps.
        let now = Instant::now();
        for port in &mut self.shared {
            flush_batch(
                &mut port.rtp_out,
                &port.rtp,
                &mut self.sockets,
                &mut self.counts,
                now,
            );
            flush_batch(
                &mut port.rtcp_out,
                &port.rtcp,
                &mut self.sockets,
                &mut self.counts,
                now,
            );
        }
        capped
    }

    /// [`MediaLoop::send_due`]'s packets: a call's own sockets send at once, a shared port's
    /// packets are queued in its batches (flushed when full).
    fn send_due_unflushed(&mut self) -> bool {
        // A fresh instant per packet: with a thousand calls a burst takes milliseconds, and
        // the fan-out's drift accounting and the lateness below need when each one left.
        for _ in 0..MAX_PACKETS_PER_TURN {
            let sent_at = Instant::now();
            let Some(t) = self.fanout.poll_transmit(sent_at, &mut self.buf) else {
                return false;
            };
            if let Some((port, rtcp_mux)) = shared_of_route(t.route) {
                let Some(shared) = self.shared.get_mut(port) else {
                    continue;
                };
                let (batch, socket) = shared.outbound(t.kind, rtcp_mux);
                if batch.is_full() {
                    flush_batch(batch, socket, &mut self.sockets, &mut self.counts, sent_at);
                }
                if let Some(slot) = batch.slot() {
                    slot[..t.len].copy_from_slice(&self.buf[..t.len]);
                    batch.push(t.len, t.dest, t.call);
                    if matches!(t.kind, PacketKind::Rtp) {
                        self.counts
                            .observe_sent(sent_at.saturating_duration_since(t.due));
                    }
                }
                continue;
            }
            let Some(s) = self.sockets.get_mut(&t.call) else {
                continue;
            };
            let Some(socket) = s.socket_for(t.kind) else {
                continue;
            };
            match socket.send_to(&self.buf[..t.len], t.dest) {
                Ok(_) if matches!(t.kind, PacketKind::Rtp) => {
                    self.counts
                        .observe_sent(sent_at.saturating_duration_since(t.due));
                }
                Ok(_) => {}
                Err(e) => {
                    self.counts.send_errors += 1;
                    if e.kind() == std::io::ErrorKind::ConnectionRefused {
                        s.note_refused(sent_at);
                    }
                    tracing::trace!(call = t.call, error = %e, "RTP send failed");
                }
            }
        }
        true
    }

    /// Refresh the snapshot within [`SNAPSHOT_AFTER_CHANGE`] (a call came, went or moved).
    fn snapshot_soon(&mut self) {
        self.next_snapshot = self
            .next_snapshot
            .min(Instant::now() + SNAPSHOT_AFTER_CHANGE);
    }

    /// Adds this turn's counts to the shared stats; the drift, (about once a second) the call
    /// snapshot, and at the end of a load window the load, then a rebalancing step.
    fn publish(&mut self, now: Instant) {
        let stats = Arc::clone(&self.stats);
        self.counts.flush(&stats);
        let skipped = self.fanout.frames_skipped();
        if skipped > self.published_skipped {
            stats
                .frames_skipped
                .fetch_add(skipped - self.published_skipped, Ordering::Relaxed);
            self.published_skipped = skipped;
        }
        let busy = std::mem::take(&mut self.busy);
        if !busy.is_zero() {
            let ns = busy.as_nanos() as u64;
            stats.busy_ns.fetch_add(ns, Ordering::Relaxed);
            self.mine().busy_ns.fetch_add(ns, Ordering::Relaxed);
            self.window_busy += busy;
        }
        stats
            .max_abs_drift_ns
            .fetch_max(self.fanout.max_abs_drift_ns(), Ordering::Relaxed);
        if now >= self.next_snapshot
            && self
                .mine()
                .try_publish(snapshot(&self.fanout, &self.sockets))
        {
            self.next_snapshot = now + SNAPSHOT_EVERY;
        }
        let window = now.saturating_duration_since(self.window_start);
        if window >= LOAD_WINDOW {
            let per_s = self.window_busy.as_nanos() * 1_000_000_000 / window.as_nanos().max(1);
            let mine = self.mine();
            mine.load_ns_per_s
                .store(u64::try_from(per_s).unwrap_or(u64::MAX), Ordering::Relaxed);
            mine.measured_calls
                .store(self.fanout.call_count() as u64, Ordering::Relaxed);
            self.window_start = now;
            self.window_busy = Duration::ZERO;
            self.rebalance(now);
        }
    }

    /// Brings the shared call counts up to date after calls came, went or moved.
    fn sync_calls(&mut self) {
        let calls = self.fanout.call_count() as u64;
        if calls == self.published_calls {
            return;
        }
        let active = &self.stats.active_calls;
        if calls > self.published_calls {
            active.fetch_add(calls - self.published_calls, Ordering::Relaxed);
        } else {
            active.fetch_sub(self.published_calls - calls, Ordering::Relaxed);
        }
        self.mine().calls.store(calls, Ordering::Relaxed);
        self.published_calls = calls;
    }

    /// One rebalancing step (`rtp::balance`): if this thread is the one to shed calls, moves
    /// them to the lightest thread, under the routing lock so that every later command for
    /// them goes there (after the call itself).
    fn rebalance(&mut self, now: Instant) {
        if self.pool.threads.len() < 2 {
            return;
        }
        let pool = Arc::clone(&self.pool);
        let mut routing = lock(&pool.routing);
        let loads = routing.loads(&self.stats);
        let Some(step) = self.rebalancer.decide(now, self.me, &loads) else {
            return;
        };
        let mut moving = std::mem::take(&mut self.moving);
        moving.clear();
        // A shared-port call stays: its port is this thread's.
        let sockets = &self.sockets;
        moving.extend(
            self.fanout
                .call_ids()
                .filter(|c| sockets.get(c).is_some_and(CallSockets::movable))
                .take(step.calls as usize),
        );
        if moving.is_empty() {
            self.moving = moving;
            return;
        }
        let mut moved = 0u64;
        for &call in &moving {
            let Some(taken) = self.fanout.take_call(call) else {
                continue;
            };
            let Some(sockets) = self.sockets.remove(&call) else {
                self.fanout.adopt_call(now, taken);
                continue;
            };
            let migrant = Box::new(Migrant {
                call: taken,
                sockets,
            });
            if pool
                .to_thread(step.to, ThreadCommand::Adopt(migrant))
                .is_ok()
            {
                routing.assign(call, step.to);
                moved += 1;
            }
        }
        drop(routing);
        self.moving = moving;
        self.stats.calls_moved.fetch_add(moved, Ordering::Relaxed);
        tracing::debug!(
            from = self.me,
            to = step.to,
            calls = moved,
            "media threads rebalanced"
        );
        self.sync_calls();
        self.snapshot_soon();
    }

    fn apply(&mut self, cmd: ThreadCommand) -> ControlFlow<()> {
        let cmd = match cmd {
            ThreadCommand::Adopt(migrant) => {
                let Migrant { call, sockets } = *migrant;
                let id = call.call();
                self.fanout.adopt_call(Instant::now(), call);
                self.sockets.insert(id, sockets);
                self.snapshot_soon();
                return ControlFlow::Continue(());
            }
            ThreadCommand::SharedPort { rtp, rtcp } => {
                match SharedPort::new(rtp, rtcp) {
                    Ok(port) => self.shared.push(port),
                    Err(e) => tracing::error!(error = %e, "a shared RTP port cannot be used"),
                }
                return ControlFlow::Continue(());
            }
            ThreadCommand::Media(cmd) => cmd,
        };
        match cmd {
            MediaCommand::Add {
                media,
                rtp,
                rtcp,
                info,
            } => {
                enable_icmp_errors(&rtp);
                if let Some(r) = &rtcp {
                    enable_icmp_errors(r);
                }
                self.add(media, CallIo::Own { rtp, rtcp }, info);
            }
            MediaCommand::AddShared { media, local, info } => {
                let Some(port) = self.shared.iter().position(|p| p.local == local) else {
                    tracing::error!(call = media.call, %local, "no shared RTP port there");
                    lock(&self.pool.routing).release(media.call, self.me);
                    return ControlFlow::Continue(());
                };
                let params = media.params;
                if let Some(shared) = self.shared.get_mut(port) {
                    shared
                        .demux
                        .insert(media.call, params.remote_rtp, params.remote_rtcp);
                }
                let rtcp_mux = params.rtcp_mux();
                self.add(media, CallIo::Shared { port, rtcp_mux }, info);
            }
            MediaCommand::Update { call, params } if self.fanout.params(call).is_none() => {
                self.forward(call, MediaCommand::Update { call, params });
            }
            MediaCommand::Update { call, params } => self.update(call, params),
            MediaCommand::Remove { call, reason } if self.fanout.params(call).is_none() => {
                self.forward(call, MediaCommand::Remove { call, reason });
            }
            MediaCommand::Remove { call, reason } => self.remove(call, &reason),
            MediaCommand::SetChannel(render) => self.fanout.set_channel(render),
            MediaCommand::Queue { channel, piece } => self.fanout.queue(&channel, piece),
            MediaCommand::Shutdown => return ControlFlow::Break(()),
        }
        ControlFlow::Continue(())
    }

    /// A command for a call this thread does not have: it moved (the command was sent before
    /// the routing said so), so it follows the call; or it is gone, and so is the command.
    fn forward(&self, call: u64, cmd: MediaCommand) {
        let routing = lock(&self.pool.routing);
        if let Some(&owner) = routing.owner.get(&call)
            && owner != self.me
        {
            let _ = self.pool.to_thread(owner, ThreadCommand::Media(cmd));
        }
    }

    fn update(&mut self, call: u64, params: MediaParams) {
        let old = self.fanout.params(call);
        let before = old.map(|p| p.codec);
        if let Some(s) = self.sockets.get_mut(&call)
            && old.is_some_and(|p| p.srtp != params.srtp)
        {
            // New keys: the peer's ROC and replay window start again too.
            s.srtp = params.srtp.map(|keys| {
                Box::new(InboundSrtp {
                    receiver: keys.receiver(),
                    rejected: s.srtp.as_ref().map_or(0, |old| old.rejected),
                })
            });
        }
        if let Some(s) = self.sockets.get_mut(&call)
            && let CallIo::Shared { port, rtcp_mux } = &mut s.io
        {
            *rtcp_mux = params.rtcp_mux();
            self.fanout.set_route(call, shared_route(*port, *rtcp_mux));
            // A new address (a re-INVITE) is expected afresh; the same one keeps what was
            // learned of it.
            if let Some(shared) = self.shared.get_mut(*port)
                && old.is_some_and(|o| {
                    (o.remote_rtp, o.remote_rtcp) != (params.remote_rtp, params.remote_rtcp)
                })
            {
                shared
                    .demux
                    .insert(call, params.remote_rtp, params.remote_rtcp);
            }
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

    fn add(&mut self, media: CallMedia, io: CallIo, info: CallInfo) {
        let call = media.call;
        let route = match io {
            CallIo::Shared { port, rtcp_mux } => shared_route(port, rtcp_mux),
            CallIo::Own { .. } => 0,
        };
        let entry = CallSockets::new(io, info, media.params.srtp);
        self.fanout.add_call(Instant::now(), media);
        self.fanout.set_route(call, route);
        self.sockets.insert(call, entry);
        self.snapshot_soon();
    }

    fn remove(&mut self, call: u64, reason: &str) {
        let codec = self.fanout.params(call).map(|p| p.codec.encoding_name());
        let counters = self.fanout.remove_call(call);
        // The RTCP BYE the fan-out queued goes out before the sockets close.
        if let Some(t) = self.fanout.poll_bye(&mut self.buf)
            && let Some(s) = self.sockets.get(&t.call)
        {
            let socket = match (&s.io, s.socket_for(t.kind)) {
                (_, Some(own)) => Some(own),
                (&CallIo::Shared { port, rtcp_mux }, None) => self
                    .shared
                    .get_mut(port)
                    .map(|p| p.outbound(t.kind, rtcp_mux).1),
                (CallIo::Own { .. }, None) => None,
            };
            if let Some(socket) = socket {
                let _ = socket.send_to(&self.buf[..t.len], t.dest);
            }
        }
        if let Some(s) = self.sockets.remove(&call) {
            if let CallIo::Shared { port, .. } = s.io
                && let Some(shared) = self.shared.get_mut(port)
            {
                shared.demux.remove(call);
            }
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
        lock(&self.pool.routing).release(call, self.me);
        self.snapshot_soon();
    }

    /// Reads what the peers sent to the shared ports: each packet goes to its call
    /// ([`Demux`]), is authenticated with the call's SRTP context, and only then counts as
    /// hearing from the peer or moves where the call's media goes (symmetric RTP). The ICMP
    /// errors queued on the ports are their calls' peers refusing.
    fn read_shared_ports(&mut self, now: Instant) {
        // Bounded per socket: a peer flooding the port cannot keep the thread here.
        const MAX_BATCHES: usize = 16;
        const MAX_ERRORS: usize = 1024;
        let symmetric = self.options.symmetric_rtp;
        for port in &mut self.shared {
            for socket in [&port.rtp, &port.rtcp] {
                for _ in 0..MAX_BATCHES {
                    let Ok(n) = self.inbound.recv(socket) else {
                        break;
                    };
                    for i in 0..n {
                        let Some((packet, from)) = self.inbound.get(i) else {
                            continue;
                        };
                        let Some(call) = port.demux.route(from, packet).call() else {
                            continue;
                        };
                        let Some(s) = self.sockets.get_mut(&call) else {
                            continue;
                        };
                        if !passes_srtp(&mut s.srtp, call, packet, &self.stats) {
                            continue;
                        }
                        s.heard_from_peer(now);
                        if let Some((rtp, rtcp)) = port.demux.accept(call, from, packet)
                            && symmetric
                            && let Some(current) = self.fanout.params(call)
                        {
                            let heard = Heard {
                                rtp_from: Some(rtp),
                                rtcp_from: rtcp,
                            };
                            if let Some(moved) = CallSockets::follow(call, current, heard) {
                                self.fanout.update_call(call, moved);
                            }
                        }
                    }
                    if n < BATCH {
                        break;
                    }
                }
                let (demux, sockets) = (&port.demux, &mut self.sockets);
                read_send_errors(socket, &mut self.error_space, MAX_ERRORS, |e| {
                    for call in demux.calls_sending_to(e.dest) {
                        if let Some(s) = sockets.get_mut(call) {
                            s.note_refused(now);
                        }
                    }
                });
            }
        }
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
                channel: Arc::clone(&s.info.channel),
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

    #[test]
    fn a_shared_route_names_its_port_and_muxing_and_zero_names_none() {
        for port in [0, 1, 7, 1_000] {
            for mux in [false, true] {
                let route = shared_route(port, mux);
                assert_ne!(route, 0);
                assert_eq!(shared_of_route(route), Some((port, mux)));
            }
        }
        assert_eq!(shared_of_route(0), None, "a call with its own sockets");
    }

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
    fn publishing_a_snapshot_never_waits_for_a_reader_and_readers_merge_the_threads() {
        let stats = MediaStats::with_threads(2);
        assert!(stats.calls_snapshot().is_empty());
        let [first, second] = stats.threads() else {
            panic!("two threads")
        };
        let held = first.calls_snapshot.lock().unwrap();
        assert!(
            !first.try_publish(Vec::new()),
            "a held lock is skipped, not waited for"
        );
        drop(held);
        let snap = |call| CallSnapshot {
            call,
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
        let (one, two, three) = (snap(1), snap(2), snap(3));
        assert!(first.try_publish(vec![one.clone(), three.clone()]));
        assert!(second.try_publish(vec![two.clone()]));
        assert_eq!(*stats.calls_snapshot(), vec![one, two, three]);
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
            (c.call, c.peer, c.remote_rtp, &*c.channel, c.codec),
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
            channel: render.name.as_str().into(),
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

    /// What one phone heard: (seq, timestamp, marker, ssrc) per RTP packet, in order.
    type Heard = Vec<(u16, u32, bool, u32)>;

    /// Reads every phone's socket until `stop`, on one thread (so that no receive buffer
    /// overflows while the test waits).
    fn listen(
        phones: Vec<UdpSocket>,
        stop: Arc<std::sync::atomic::AtomicBool>,
    ) -> std::thread::JoinHandle<Vec<Heard>> {
        std::thread::spawn(move || {
            let mut heard = vec![Vec::new(); phones.len()];
            let mut buf = [0u8; 512];
            for p in &phones {
                p.set_nonblocking(true).unwrap();
            }
            while !stop.load(Ordering::Relaxed) {
                let mut idle = true;
                for (phone, heard) in phones.iter().zip(&mut heard) {
                    while let Ok(n) = phone.recv(&mut buf) {
                        idle = false;
                        if super::super::packet::is_rtcp(&buf[..n]) {
                            continue;
                        }
                        if let Ok(p) = crate::rtp::packet::parse_rtp(&buf[..n]) {
                            let h = p.header;
                            heard.push((h.seq.get(), h.timestamp.get(), h.marker, h.ssrc));
                        }
                    }
                }
                if idle {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            heard
        })
    }

    /// One unbroken stream: one SSRC, each sequence number the previous + 1 (no gap, no
    /// duplicate), each timestamp the previous + 160 (20 ms at 8 kHz), or a whole number of
    /// frames more with the marker bit where the call skipped ahead (a thread that was late
    /// on a loaded test machine).
    fn assert_one_stream(call: usize, heard: &Heard) {
        assert!(heard.len() > 10, "call {call}: {} packets", heard.len());
        for w in heard.windows(2) {
            let ((seq0, ts0, _, ssrc0), (seq1, ts1, marker, ssrc1)) = (w[0], w[1]);
            assert_eq!(ssrc1, ssrc0, "call {call}: one SSRC");
            assert_eq!(seq1, seq0.wrapping_add(1), "call {call}: {w:?}");
            let advance = ts1.wrapping_sub(ts0);
            assert!(
                advance == 160 || (marker && advance % 160 == 0 && advance < 160 * 500),
                "call {call}: timestamp {ts0} then {ts1} ({w:?})"
            );
        }
    }

    /// Calls over two media threads: new ones go to the less loaded thread; after the calls
    /// of one thread end, the other moves some of its calls over (a zero margin, so that the
    /// few calls of a test suffice); calls come and go throughout; every phone hears one
    /// unbroken stream from the start of its call to its end.
    #[test]
    fn calls_over_two_threads_hear_continuous_rtp_as_calls_come_go_and_move() {
        let options = MediaOptions {
            threads: 2,
            rebalance: Rebalance {
                margin_ns_per_s: 0,
                hold: Duration::ZERO,
            },
            ..non_realtime()
        };
        let (h, render) = media_thread_with_a_channel(options, 12);
        let calls = 16;
        let mut phones = Vec::new();
        for call in 0..calls {
            let (phone, ours) = phone_and_call_sockets();
            let params = pcmu_to(phone.local_addr().unwrap());
            phones.push(phone);
            h.send(add_command(call as u64, params, Arc::clone(&render), ours));
            if call == 8 {
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let listener = listen(phones, Arc::clone(&stop));
        let owners = || lock(&h.sender.pool.routing).owner.clone();
        // Spread: new calls went to both threads.
        let first = owners();
        let on_one: Vec<u64> = (0..8).filter(|c| first.get(c) == Some(&1)).collect();
        assert!(
            !on_one.is_empty() && on_one.len() < 8,
            "calls 0..8 spread: {first:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
        // Thread 1's first calls end: thread 0 is now the heavier and sheds calls.
        for &call in &on_one {
            h.send(MediaCommand::Remove {
                call,
                reason: "test".into(),
            });
        }
        assert!(
            wait_until(Duration::from_secs(20), || h
                .stats
                .calls_moved
                .load(Ordering::Relaxed)
                > 0),
            "no call moved"
        );
        std::thread::sleep(Duration::from_millis(500));
        let last = owners();
        let moved: Vec<u64> = (0..calls as u64)
            .filter(|c| {
                first
                    .get(c)
                    .is_some_and(|&t| last.get(c).is_some_and(|&u| u != t))
            })
            .collect();
        assert!(!moved.is_empty(), "{first:?} then {last:?}");
        stop.store(true, Ordering::Relaxed);
        let heard = listener.join().unwrap();
        for (call, heard) in heard.iter().enumerate() {
            assert_one_stream(call, heard);
        }
        // The shared view sums the threads: every packet counted once.
        let sent = h.stats.packets_sent.load(Ordering::Relaxed);
        let received: usize = heard.iter().map(Vec::len).sum();
        assert!(sent as usize >= received, "{sent} sent, {received} heard");
        assert_eq!(
            h.stats.active_calls.load(Ordering::Relaxed),
            (calls - on_one.len()) as u64
        );
        let per_thread: u64 = h
            .stats
            .threads()
            .iter()
            .map(|t| t.calls.load(Ordering::Relaxed))
            .sum();
        assert_eq!(per_thread, (calls - on_one.len()) as u64);
        assert!(wait_until(Duration::from_secs(10), || {
            h.stats.calls_snapshot().len() == calls - on_one.len()
        }));
        h.shutdown();
    }

    /// Hundreds of calls whose peers are gone (every packet answered by ICMP port
    /// unreachable): removing them all at once, and shutting down with hundreds more, both
    /// end promptly. Bounds are generous; what they catch is a per-call slow path (seconds
    /// per call, or a pass over every call per call).
    #[test]
    fn many_calls_to_vanished_peers_end_and_shut_down_promptly() {
        let options = MediaOptions {
            threads: 2,
            ..non_realtime()
        };
        let (h, render) = media_thread_with_a_channel(options, 13);
        // A port nobody listens on: bound, then closed.
        let gone = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let add_all = |from: u64| {
            for call in from..from + 300 {
                let ours = UdpSocket::bind("127.0.0.1:0").unwrap();
                ours.set_nonblocking(true).unwrap();
                h.send(add_command(call, pcmu_to(gone), Arc::clone(&render), ours));
            }
        };
        add_all(0);
        assert!(wait_until(Duration::from_secs(20), || {
            h.stats.active_calls.load(Ordering::Relaxed) == 300
                && h.stats.send_errors.load(Ordering::Relaxed) > 300
        }));
        let started = Instant::now();
        for call in 0..300 {
            h.send(MediaCommand::Remove {
                call,
                reason: "peer gone".into(),
            });
        }
        assert!(wait_until(Duration::from_secs(10), || h
            .stats
            .active_calls
            .load(Ordering::Relaxed)
            == 0));
        let removed_in = started.elapsed();
        add_all(1000);
        assert!(wait_until(Duration::from_secs(20), || h
            .stats
            .active_calls
            .load(Ordering::Relaxed)
            == 300));
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        h.shutdown();
        let shut_in = started.elapsed();
        assert!(
            removed_in < Duration::from_secs(5) && shut_in < Duration::from_secs(2),
            "300 calls removed in {removed_in:?}, 300 shut down in {shut_in:?}"
        );
    }
}
