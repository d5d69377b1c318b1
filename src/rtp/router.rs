//! Call routing: from the SIP endpoint's call events to RTP ports and the media thread.
//!
//! Owns the RTP port pool and the calls between "INVITE arrived" and "call ended": it gives
//! each new call its RTP address (or 503), hands the call's channel and negotiated
//! [`MediaParams`] to the media thread once media can flow, forwards re-INVITE changes, and
//! frees what the call held at the end. With `[rtp] port_model = "per-call"` the address is
//! a port pair of the call's own, whose sockets go to the media thread; with `"shared"` the
//! call is placed on a media thread at once and the address is that thread's shared port
//! pair for the INVITE's local address (taken from the pool the first time it is needed and
//! kept for the life of the process). The media parameters pass through unchanged. How a call
//! listens to its channel (shared, from the start, greeting first) is read from the
//! channel's [`CallPlan`] when its media starts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use crate::channel::ChannelRender;
use crate::channel::spec::ChannelMode;
use crate::control::{CallMetrics, LiveRenders};
use crate::rtp::fanout::{CallMedia, Playback};
use crate::rtp::io::PortModel;
use crate::rtp::shell::{CallInfo, MediaCommand, MediaSender};
use crate::sip::endpoint::{CallId, EndReason, Endpoint, Event};
use crate::sip::sdp::MediaParams;

/// Even RTP ports (RTCP on the odd one above) handed out round-robin, so a port just freed is
/// the last to be reused (late packets of an old call never reach a new one).
struct PortPool {
    min: u16,
    max: u16,
    next: u16,
    in_use: HashSet<u16>,
    /// Marked on every socket handed out (`[rtp] dscp`).
    dscp: u8,
}

impl PortPool {
    fn new(min: u16, max: u16, dscp: u8) -> Self {
        let min = min + (min % 2);
        PortPool {
            min,
            max,
            next: min,
            in_use: HashSet::new(),
            dscp,
        }
    }

    fn allocate(&mut self, ip: IpAddr) -> Option<(u16, UdpSocket, UdpSocket)> {
        let pairs = ((self.max.saturating_sub(self.min)) / 2 + 1) as usize;
        for _ in 0..pairs {
            let port = self.next;
            self.next = if port.saturating_add(3) > self.max {
                self.min
            } else {
                port + 2
            };
            if self.in_use.contains(&port) || port.checked_add(1).is_none_or(|p| p > self.max) {
                continue;
            }
            let Ok(rtp) = UdpSocket::bind((ip, port)) else {
                continue;
            };
            let Ok(rtcp) = UdpSocket::bind((ip, port + 1)) else {
                continue;
            };
            if rtp.set_nonblocking(true).is_err() || rtcp.set_nonblocking(true).is_err() {
                continue;
            }
            crate::rtp::qos::mark_dscp(&rtp, self.dscp);
            crate::rtp::qos::mark_dscp(&rtcp, self.dscp);
            self.in_use.insert(port);
            return Some((port, rtp, rtcp));
        }
        None
    }

    fn release(&mut self, port: u16) {
        self.in_use.remove(&port);
    }
}

/// How new calls on one channel listen to it.
#[derive(Debug, Clone, Default)]
pub struct CallPlan {
    pub mode: ChannelMode,
    /// Heard first by every new call (a rendered greeting segment, ending in silence).
    pub greeting: Option<Arc<ChannelRender>>,
}

impl CallPlan {
    /// The [`Playback`] a call starting now gets.
    pub fn playback(&self) -> Playback<ChannelRender> {
        match (&self.greeting, self.mode) {
            (Some(greeting), then) => Playback::Greeting {
                greeting: Arc::clone(greeting),
                then,
            },
            (None, ChannelMode::Shared) => Playback::Shared,
            (None, ChannelMode::FromStart) => Playback::FromStart,
        }
    }
}

/// Each channel's [`CallPlan`] by name, written by whoever plans the channels; a channel
/// without one is shared with no greeting.
pub type LivePlans = Arc<RwLock<BTreeMap<String, CallPlan>>>;

/// Where a routed call's media goes out from.
enum CallPort {
    /// A port pair of its own, and its sockets until they go to the media thread.
    Own {
        port: u16,
        sockets: Option<(UdpSocket, UdpSocket)>,
    },
    /// Its media thread's shared port pair at this (RTP) address.
    Shared(SocketAddr),
}

/// A call's port, and whether the media thread streams it yet.
struct RoutedCall {
    port: CallPort,
    media_started: bool,
    info: CallInfo,
}

/// Call state between SIP events and the media thread.
pub struct CallRouter {
    channels: LiveRenders,
    plans: LivePlans,
    metrics: Arc<CallMetrics>,
    /// The address RTP is sent from and advertised; `None`: the SIP listener's.
    rtp_address: Option<IpAddr>,
    ports: PortPool,
    model: PortModel,
    /// Shared model: each (media thread, local address)'s port pair, once taken.
    shared_ports: HashMap<(usize, IpAddr), u16>,
    calls: HashMap<CallId, RoutedCall>,
    media: MediaSender,
}

impl CallRouter {
    /// A router handing out RTP port pairs from `port_min..=port_max` on `rtp_address`,
    /// marked with `dscp`, per call or per media thread as `model` says.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        channels: LiveRenders,
        plans: LivePlans,
        metrics: Arc<CallMetrics>,
        rtp_address: Option<IpAddr>,
        (port_min, port_max): (u16, u16),
        dscp: u8,
        model: PortModel,
        media: MediaSender,
    ) -> Self {
        CallRouter {
            channels,
            plans,
            metrics,
            rtp_address,
            ports: PortPool::new(port_min, port_max, dscp),
            model,
            shared_ports: HashMap::new(),
            calls: HashMap::new(),
            media,
        }
    }

    /// The call's port: a pair of its own, or its media thread's shared pair on `ip` (the
    /// thread chosen now, so that the answer names its port); `None` when no pair is free.
    fn take_port(&mut self, call: CallId, ip: IpAddr) -> Option<CallPort> {
        if self.model == PortModel::PerCall {
            let (port, rtp, rtcp) = self.ports.allocate(ip)?;
            return Some(CallPort::Own {
                port,
                sockets: Some((rtp, rtcp)),
            });
        }
        let thread = self.media.place(call.0);
        if let Some(&port) = self.shared_ports.get(&(thread, ip)) {
            return Some(CallPort::Shared(SocketAddr::new(ip, port)));
        }
        let given = self.ports.allocate(ip).and_then(|(port, rtp, rtcp)| {
            self.media.add_shared_port(thread, rtp, rtcp).ok()?;
            tracing::info!(thread, rtp = %SocketAddr::new(ip, port), "media thread's shared RTP port");
            Some(port)
        });
        let Some(port) = given else {
            self.media.unplace(call.0);
            return None;
        };
        self.shared_ports.insert((thread, ip), port);
        Some(CallPort::Shared(SocketAddr::new(ip, port)))
    }

    /// Acts on one endpoint event (the SIP shell's callback).
    pub fn on_event(&mut self, now: Instant, ev: Event, endpoint: &mut Endpoint) {
        match ev {
            Event::IncomingCall {
                call,
                channel,
                peer,
                local,
                ..
            } => self.on_incoming(now, call, channel, peer, local, endpoint),
            Event::CallStarted {
                call,
                channel,
                media,
            } => self.on_started(now, call, &channel, media, endpoint),
            Event::CallUpdated { call, media } => self.on_updated(call, media),
            Event::CallEnded { call, reason } => self.on_ended(call, &reason),
        }
    }

    /// A port pair and the answer, or 503 when none is free.
    fn on_incoming(
        &mut self,
        now: Instant,
        call: CallId,
        channel: String,
        peer: SocketAddr,
        local: SocketAddr,
        endpoint: &mut Endpoint,
    ) {
        let ip = self.rtp_address.unwrap_or(local.ip());
        let Some(port) = self.take_port(call, ip) else {
            tracing::warn!(%peer, "no free RTP port pair: 503");
            self.metrics
                .rejected_no_port
                .fetch_add(1, Ordering::Relaxed);
            endpoint.reject(now, call, 503);
            return;
        };
        let info = CallInfo {
            peer,
            channel: channel.into(),
            started: now,
        };
        let answer = match &port {
            CallPort::Own { port, .. } => SocketAddr::new(ip, *port),
            CallPort::Shared(local) => *local,
        };
        self.calls.insert(
            call,
            RoutedCall {
                port,
                media_started: false,
                info,
            },
        );
        endpoint.accept(now, call, answer);
    }

    /// Media can flow: the sockets, the channel's render and the negotiated media go to the
    /// media thread. A channel that has gone (removed from the config) ends the call.
    fn on_started(
        &mut self,
        now: Instant,
        call: CallId,
        channel: &str,
        params: MediaParams,
        endpoint: &mut Endpoint,
    ) {
        let render = self
            .channels
            .read()
            .ok()
            .and_then(|c| c.get(channel).cloned());
        let Some(render) = render else {
            endpoint.hangup(now, call);
            return;
        };
        let playback = self
            .plans
            .read()
            .ok()
            .and_then(|p| p.get(channel).map(CallPlan::playback))
            .unwrap_or_default();
        let Some(p) = self.calls.get_mut(&call) else {
            return;
        };
        self.metrics.answered.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .setup_seconds
            .observe(now.saturating_duration_since(p.info.started).as_secs_f64());
        if p.media_started {
            return;
        }
        tracing::info!(
            call = call.0,
            peer = %p.info.peer,
            channel = %channel,
            codec = params.codec.encoding_name(),
            payload_type = params.payload_type,
            ptime_ms = params.ptime_ms,
            remote_rtp = %params.remote_rtp,
            sending = params.sending(),
            playback = playback.describe(),
            "call started"
        );
        let media = CallMedia {
            call: call.0,
            params,
            channel: render,
            playback,
            cname: format!("mohd-{}", call.0),
            ssrc: None,
        };
        let info = p.info.clone();
        let command = match &mut p.port {
            CallPort::Own { sockets, .. } => {
                let Some((rtp, rtcp)) = sockets.take() else {
                    return;
                };
                MediaCommand::Add {
                    media,
                    rtp,
                    rtcp: Some(rtcp),
                    info,
                }
            }
            CallPort::Shared(local) => MediaCommand::AddShared {
                media,
                local: *local,
                info,
            },
        };
        p.media_started = true;
        let _ = self.media.send(command);
    }

    fn on_updated(&mut self, call: CallId, params: MediaParams) {
        if !self.calls.contains_key(&call) {
            return;
        }
        tracing::info!(
            call = call.0,
            codec = params.codec.encoding_name(),
            payload_type = params.payload_type,
            remote_rtp = %params.remote_rtp,
            sending = params.sending(),
            "call media updated"
        );
        let _ = self.media.send(MediaCommand::Update {
            call: call.0,
            params,
        });
    }

    fn on_ended(&mut self, call: CallId, reason: &EndReason) {
        let Some(p) = self.calls.remove(&call) else {
            return;
        };
        match p.port {
            CallPort::Own { port, .. } => self.ports.release(port),
            CallPort::Shared(_) if !p.media_started => self.media.unplace(call.0),
            CallPort::Shared(_) => {}
        }
        if p.media_started {
            self.metrics.ended.fetch_add(1, Ordering::Relaxed);
            let _ = self.media.send(MediaCommand::Remove {
                call: call.0,
                reason: reason.to_string(),
            });
        } else {
            tracing::info!(call = call.0, peer = %p.info.peer, channel = %p.info.channel, %reason, "call ended before media");
        }
    }
}
