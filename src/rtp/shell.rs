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
}

pub fn spawn(clock: MediaClock, seed: u64) -> std::io::Result<MediaHandle> {
    let (tx, rx) = mpsc::channel();
    let stats = Arc::new(MediaStats::default());
    let thread_stats = stats.clone();
    // The wall time that corresponds to the clock's epoch, for RTCP's NTP timestamps only.
    let wall_epoch = SystemTime::now() - clock.epoch().elapsed();
    let thread = std::thread::Builder::new()
        .name("mohd-media".into())
        .spawn(move || run(clock, seed, wall_epoch, rx, thread_stats))?;
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
) {
    let mut fanout = Fanout::new(clock, seed, wall_epoch);
    let mut sockets: HashMap<u64, CallSockets> = HashMap::new();
    let mut buf = vec![0u8; 2048];
    loop {
        let now = Instant::now();
        fanout.handle_timeout(now);
        while let Some(t) = fanout.poll_transmit(now, &mut buf) {
            let Some(s) = sockets.get(&t.call) else {
                continue;
            };
            let socket = match t.kind {
                PacketKind::Rtp => &s.rtp,
                PacketKind::Rtcp => s.rtcp.as_ref().unwrap_or(&s.rtp),
            };
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
                    tracing::trace!(call = t.call, error = %e, "RTP send failed");
                }
            }
        }
        stats.last_tick_ns.store(
            now.saturating_duration_since(clock.epoch()).as_nanos() as u64,
            Ordering::Relaxed,
        );

        // Sleep until the next deadline, waking early for commands.
        let wait = fanout
            .poll_timeout()
            .map(|at| at.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_millis(500))
            .min(Duration::from_millis(500));
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
                let codec = media.codec;
                fanout.add_call(Instant::now(), media);
                sockets.insert(
                    call,
                    CallSockets {
                        rtp,
                        rtcp,
                        info,
                        codec,
                    },
                );
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
                }
            }
            MediaCommand::Remove { call, reason } => {
                let counters = fanout.remove_call(call);
                // The RTCP BYE the fan-out queued goes out before the sockets close.
                let now = Instant::now();
                while let Some(t) = fanout.poll_transmit(now, &mut buf) {
                    if let Some(s) = sockets.get(&t.call) {
                        let socket = match t.kind {
                            PacketKind::Rtp => &s.rtp,
                            PacketKind::Rtcp => s.rtcp.as_ref().unwrap_or(&s.rtp),
                        };
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
