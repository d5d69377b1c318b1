//! The tokio shell around the sans-IO [`Endpoint`]: owns the SIP sockets (UDP, TCP, TLS), the
//! TCP/TLS connections and the real clock.
//!
//! One task owns the endpoint. Each UDP socket has a reader task, each TCP/TLS listener an
//! accept task, and each connection a task of its own (TLS handshake, framing by
//! Content-Length, keep-alive pongs, writes, idle timeout); all of them forward what they
//! receive to the owner over one channel, and the owner never awaits a connection: it hands a
//! connection its bytes with `try_send`, so a peer that stops reading stalls only itself. The
//! owner feeds messages in, drains `poll_output` (sending, handing events to the application
//! callback) and sleeps until `poll_timeout`.
//!
//! A connection is named by its transport and peer address, which is what the endpoint calls
//! `from` and later `to`: responses and our in-dialog requests go back over the connection the
//! request came in on. When that connection is gone, TCP opens a new one to the same address;
//! TLS cannot (we would have no name to check the peer's certificate against), so it logs and
//! drops.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::control::availability::GateInputs;
use crate::tls::ReloadableTls;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant as TokioInstant;

use super::endpoint::{CallId, EndReason, Endpoint, Event, Output, Transmit, Transport};
use super::register::{self, Output as RegOutput, Registration, ResolveError, Route};
use super::transport::{Frame, Framer, PONG, bad_request_for};

/// Messages queued for one connection before it counts as stuck and is closed.
const CONNECTION_QUEUE: usize = 256;
/// A write that takes longer than this means the peer stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS handshakes and outgoing connects that take longer are given up, so half-open
/// connections cannot hold the connection slots.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// At shutdown, how long the BYEs get to go out (and a retransmission or two) before the task
/// ends. Their transactions are not waited for: a dead peer never answers, and Timer F (32 s)
/// would hold the shutdown.
pub const BYE_GRACE: Duration = Duration::from_millis(600);

/// Finding the next timer, and running the due ones, visits every transaction and call: RFC
/// 3261 keeps a transaction 32 s after its final answer, so at 500 new calls a second that is
/// some 16,000 entries (the endpoint's whole table). Doing it after every datagram cost
/// mohd 55 % of a core at 500 calls/s in benches/setup_rate.sh. So the loop looks the next
/// timer up at most once per TIMER_GRANULARITY (a timer set meanwhile runs at most that late:
/// SIP's timers are in hundreds of milliseconds, T1 = 500 ms), and takes up to INBOUND_BATCH
/// queued messages per turn: 32 %. (The storm's 7 s stall and 19.5 s p99 were the full
/// transaction table dropping new requests: see `Endpoint::make_room`.)
const INBOUND_BATCH: usize = 64;
const TIMER_GRANULARITY: Duration = Duration::from_millis(5);

/// A bound SIP socket and the address it was asked to listen on.
pub struct SipSocket {
    pub bound: SocketAddr,
    pub socket: Arc<UdpSocket>,
}

/// Receive buffer asked for on the SIP socket. The kernel's default (about 208 KiB) holds a
/// few hundred datagrams: a call storm (a PBX putting hundreds of callers on hold at once, or
/// a proxy failing a box's calls over to this one) arrives faster than one scheduling slice
/// of the SIP task, and every datagram dropped there costs the caller a 500 ms retransmission.
/// Measured (benches/setup_rate.sh, 500 calls/s while 1,000 stream, busy box): `ss -uam`
/// showed the socket dropping at the default; with 16 MiB the worst setup time fell from 729
/// to 325 ms. Forced past `rmem_max` when we may (CAP_NET_ADMIN), else as much as the kernel
/// allows.
const SIP_RECEIVE_BUFFER: usize = 16 << 20;

pub async fn bind(addr: SocketAddr) -> std::io::Result<SipSocket> {
    let socket = UdpSocket::bind(addr).await?;
    {
        use nix::sys::socket::{setsockopt, sockopt};
        if setsockopt(&socket, sockopt::RcvBufForce, &SIP_RECEIVE_BUFFER).is_err() {
            // Not allowed past rmem_max: the kernel caps it there, which is still more.
            let _ = setsockopt(&socket, sockopt::RcvBuf, &SIP_RECEIVE_BUFFER);
        }
    }
    let bound = socket.local_addr()?;
    Ok(SipSocket {
        bound,
        socket: Arc::new(socket),
    })
}

/// A bound TCP listener; with a TLS configuration (read at each accept, so a reload applies
/// to the next connection), TLS.
pub struct StreamListener {
    pub bound: SocketAddr,
    listener: TcpListener,
    tls: Option<Arc<ReloadableTls>>,
}

impl StreamListener {
    pub fn transport(&self) -> Transport {
        if self.tls.is_some() {
            Transport::Tls
        } else {
            Transport::Tcp
        }
    }

    /// The TLS configuration, for reloading.
    pub fn tls(&self) -> Option<&Arc<ReloadableTls>> {
        self.tls.as_ref()
    }
}

/// Binds a SIP listener over TCP, or over TLS when `tls` is given.
pub async fn bind_stream(
    addr: SocketAddr,
    tls: Option<Arc<ReloadableTls>>,
) -> std::io::Result<StreamListener> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    Ok(StreamListener {
        bound,
        listener,
        tls,
    })
}

/// Whatever the shell listens on.
pub enum Listener {
    Udp(SipSocket),
    Stream(StreamListener),
}

impl Listener {
    pub fn transport(&self) -> Transport {
        match self {
            Listener::Udp(_) => Transport::Udp,
            Listener::Stream(s) => s.transport(),
        }
    }

    pub fn bound(&self) -> SocketAddr {
        match self {
            Listener::Udp(s) => s.bound,
            Listener::Stream(s) => s.bound,
        }
    }
}

/// Caps on TCP and TLS connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Open connections at most (accepted and our own); beyond it, new ones are closed at once.
    pub max_connections: usize,
    /// Largest message; a larger one closes its connection.
    pub max_message_bytes: usize,
    /// A connection with no traffic either way, and no call on it, for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_connections: 1024,
            max_message_bytes: super::msg::MAX_MESSAGE,
            idle_timeout: Duration::from_secs(300),
        }
    }
}

pub use crate::tls::TlsSetupError;

/// The local IP this host uses to reach `peer`: the address an INVITE from `peer` most likely
/// arrived on, when the socket is bound to the wildcard address. A routing lookup, no traffic.
pub fn local_ip_towards(peer: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = if peer.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = StdUdpSocket::bind(any).ok()?;
    s.connect(peer).ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

/// A connection, as the endpoint names it.
type ConnKey = (Transport, SocketAddr);

/// What the reader, accept and connection tasks tell the endpoint's owner.
enum Inbound {
    Datagram {
        index: usize,
        from: SocketAddr,
        data: Vec<u8>,
    },
    /// A connection finished its handshake and is ready for writes.
    Opened {
        key: ConnKey,
        id: u64,
        tx: mpsc::Sender<Vec<u8>>,
        calls: Arc<AtomicUsize>,
    },
    Message {
        key: ConnKey,
        local: SocketAddr,
        data: Vec<u8>,
    },
    Closed {
        key: ConnKey,
        id: u64,
    },
    /// A TLS handshake refused for the client's certificate: the endpoint counts it and logs
    /// it through its gate (one line per source per interval, not one per handshake).
    ClientCertRefused {
        source: IpAddr,
    },
}

/// The owner's handle on one connection.
struct Conn {
    id: u64,
    tx: mpsc::Sender<Vec<u8>>,
    /// Calls whose INVITE came over this connection: while any is up, it is not idle.
    calls: Arc<AtomicUsize>,
}

/// Counts open connections against the cap; the slot is freed when the guard drops.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(open: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()
        .map(|_| Slot(open.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Everything connection tasks share.
#[derive(Clone)]
struct StreamCtx {
    inbound: mpsc::Sender<Inbound>,
    limits: StreamLimits,
    open: Arc<AtomicUsize>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
}

impl StreamCtx {
    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// The owner's state besides the endpoint.
struct Io {
    udp: Vec<SipSocket>,
    conns: HashMap<ConnKey, Conn>,
    call_conns: HashMap<CallId, Arc<AtomicUsize>>,
    ctx: StreamCtx,
}

impl Io {
    /// Starts a reader per UDP socket and an accept loop per stream listener, all feeding the
    /// returned channel.
    fn listen(
        listeners: Vec<Listener>,
        limits: StreamLimits,
    ) -> (Io, mpsc::Receiver<Inbound>, Vec<JoinHandle<()>>) {
        let (tx, rx) = mpsc::channel::<Inbound>(1024);
        let ctx = StreamCtx {
            inbound: tx,
            limits,
            open: Arc::new(AtomicUsize::new(0)),
            next_id: Arc::new(std::sync::atomic::AtomicU64::new(1)),
        };
        let mut tasks: Vec<JoinHandle<()>> = Vec::new();
        let mut udp = Vec::new();
        for listener in listeners {
            match listener {
                Listener::Udp(s) => {
                    let reader = read_udp(s.socket.clone(), udp.len(), ctx.inbound.clone());
                    tasks.push(tokio::spawn(reader));
                    udp.push(s);
                }
                Listener::Stream(l) => tasks.push(tokio::spawn(accept_loop(l, ctx.clone()))),
            }
        }
        let io = Io {
            udp,
            conns: HashMap::new(),
            call_conns: HashMap::new(),
            ctx,
        };
        (io, rx, tasks)
    }
}

/// Sleeps until `at`; forever without one.
async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(TokioInstant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// The copy the web page and metrics read.
fn publish_status(
    endpoint: &Endpoint,
    registrations: &Registrations,
    status: &std::sync::Mutex<SipStatus>,
) {
    let snapshot = SipStatus {
        stats: endpoint.stats(),
        active_calls: endpoint.active_calls(),
        registrations: registrations.status(),
    };
    if let Ok(mut s) = status.lock() {
        *s = snapshot;
    }
}

/// Runs until `shutdown` turns true, then calls `on_shutdown` (to hang up calls) and drains
/// what that produced for a short grace period. `hangups` are calls the application ends
/// (media watchdogs).
// Each argument is a separate input of the loop; a struct of them would only rename them.
#[allow(clippy::too_many_arguments)]
pub async fn run<F, S>(
    mut endpoint: Endpoint,
    listeners: Vec<Listener>,
    limits: StreamLimits,
    mut on_event: F,
    mut on_shutdown: S,
    mut shutdown: watch::Receiver<bool>,
    mut hangups: mpsc::UnboundedReceiver<(CallId, EndReason)>,
    mut registrations: Registrations,
    status: Arc<std::sync::Mutex<SipStatus>>,
    mut unavailable: watch::Receiver<Option<String>>,
    mut dialplan: watch::Receiver<crate::dialplan::Dialplan>,
    mut gate: watch::Receiver<GateInputs>,
) where
    F: FnMut(std::time::Instant, Event, &mut Endpoint),
    S: FnMut(std::time::Instant, &mut Endpoint),
{
    let (mut io, mut rx, tasks) = Io::listen(listeners, limits);
    let mut shutting_down = false;
    let mut grace_until: Option<std::time::Instant> = None;
    registrations.start(std::time::Instant::now());
    // The web page and metrics read a copy, refreshed once a second: they never wait on, or
    // slow down, the SIP loop.
    let mut publish = tokio::time::interval(std::time::Duration::from_secs(1));
    publish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unavailable_open = true;
    endpoint.set_unavailable(unavailable.borrow_and_update().clone());
    let mut dialplan_open = true;
    endpoint.set_dialplan(dialplan.borrow_and_update().clone());
    let mut gate_open = true;
    set_gate(&mut endpoint, *gate.borrow_and_update());
    let mut published_calls = endpoint.active_calls();
    // The next timer and when it was looked up; `stale` once anything happened since.
    let mut next_timer: Option<std::time::Instant> = None;
    let mut looked_up: Option<std::time::Instant> = None;
    let mut stale = true;
    loop {
        // A drain waits for the last call to end: tell it (and the status page) at once
        // rather than at the next second, and before the 200 OK of a new call goes out.
        if endpoint.active_calls() != published_calls {
            published_calls = endpoint.active_calls();
            publish_status(&endpoint, &registrations, &status);
        }
        drain(&mut endpoint, &mut io, &mut on_event).await;
        registrations.drain(&mut io).await;
        // Looked up at most once per TIMER_GRANULARITY; meanwhile, wake by the granule's end
        // to look again (a timer set since is at most that late).
        let now = std::time::Instant::now();
        if stale && looked_up.is_none_or(|at| now >= at + TIMER_GRANULARITY) {
            let timers = [endpoint.poll_timeout(), registrations.poll_timeout()];
            next_timer = timers.into_iter().flatten().min();
            looked_up = Some(now);
            stale = false;
        }
        let wake = match looked_up {
            Some(at) if stale => {
                let granule_end = at + TIMER_GRANULARITY;
                Some(next_timer.map_or(granule_end, |t| t.min(granule_end)))
            }
            _ => next_timer,
        };
        let sleep = sleep_until([wake, grace_until].into_iter().flatten().min());
        tokio::select! {
            msg = rx.recv() => {
                // The owner keeps a sender in `io.ctx`, so the channel never closes.
                let Some(msg) = msg else { break };
                if !registrations.take(&msg) {
                    on_inbound(&mut endpoint, &mut io, msg);
                }
                // What else has queued up meanwhile, before the timers are looked at again
                // (see INBOUND_BATCH).
                for _ in 1..INBOUND_BATCH {
                    let Ok(msg) = rx.try_recv() else { break };
                    if !registrations.take(&msg) {
                        on_inbound(&mut endpoint, &mut io, msg);
                    }
                }
            }
            Some((index, route)) = registrations.resolved() => {
                registrations.handle_resolved(std::time::Instant::now(), index, route);
            }
            Some((call, reason)) = hangups.recv() => {
                endpoint.hangup_because(std::time::Instant::now(), call, reason);
            }
            _ = sleep => {
                let now = std::time::Instant::now();
                if grace_until.is_some_and(|g| g <= now) {
                    break;
                }
                endpoint.handle_timeout(now);
                registrations.handle_timeout(now);
                // Nothing due at `now` is left: until the next lookup, wake no earlier.
                if next_timer.is_some_and(|t| t <= now) {
                    next_timer = None;
                }
            }
            changed = unavailable.changed(), if unavailable_open => {
                if changed.is_ok() {
                    let reason = unavailable.borrow_and_update().clone();
                    endpoint.set_unavailable(reason);
                } else {
                    // The owner is gone: keep the last reason.
                    unavailable_open = false;
                }
            }
            changed = dialplan.changed(), if dialplan_open => {
                if changed.is_ok() {
                    endpoint.set_dialplan(dialplan.borrow_and_update().clone());
                } else {
                    // The owner is gone: keep routing with the last dialplan.
                    dialplan_open = false;
                }
            }
            changed = gate.changed(), if gate_open => {
                if changed.is_ok() {
                    set_gate(&mut endpoint, *gate.borrow_and_update());
                } else {
                    // The owner is gone: keep the last capacity and drain state.
                    gate_open = false;
                }
            }
            _ = publish.tick() => publish_status(&endpoint, &registrations, &status),
            changed = shutdown.changed(), if !shutting_down => {
                if changed.is_err() || *shutdown.borrow() {
                    shutting_down = true;
                    let now = std::time::Instant::now();
                    on_shutdown(now, &mut endpoint);
                    registrations.unregister_all(now);
                    grace_until = Some(now + BYE_GRACE);
                }
            }
        }
        // Whatever happened may have set or moved a timer.
        stale = true;
    }
    drain(&mut endpoint, &mut io, &mut on_event).await;
    registrations.drain(&mut io).await;
    for t in tasks {
        t.abort();
    }
    // Dropping the connections' senders lets each write what is queued (the BYEs) and close.
}

/// The availability gate's inputs: the measured capacity and the drain.
fn set_gate(endpoint: &mut Endpoint, inputs: GateInputs) {
    endpoint.set_capacity(inputs.capacity);
    endpoint.set_draining(inputs.draining);
}

fn on_inbound(endpoint: &mut Endpoint, io: &mut Io, msg: Inbound) {
    let now = std::time::Instant::now();
    match msg {
        Inbound::Datagram { index, from, data } => {
            let Some(s) = io.udp.get(index) else { return };
            let local = resolve_local(s.bound, from);
            endpoint.handle_receive(now, from, local, &data);
        }
        Inbound::Opened { key, id, tx, calls } => {
            io.conns.insert(key, Conn { id, tx, calls });
        }
        Inbound::Message { key, local, data } => {
            endpoint.handle_receive_on(now, key.0, key.1, local, &data);
        }
        Inbound::Closed { key, id } => {
            // A newer connection from the same address may have taken the name meanwhile.
            if io.conns.get(&key).is_some_and(|c| c.id == id) {
                io.conns.remove(&key);
            }
        }
        Inbound::ClientCertRefused { source } => endpoint.client_cert_refused(now, source),
    }
}

/// The concrete local address an INVITE arrived on, for Contact and SDP.
fn resolve_local(bound: SocketAddr, from: SocketAddr) -> SocketAddr {
    if bound.ip().is_unspecified() {
        let ip = local_ip_towards(from).unwrap_or(bound.ip());
        SocketAddr::new(ip, bound.port())
    } else {
        bound
    }
}

async fn drain<F>(endpoint: &mut Endpoint, io: &mut Io, on_event: &mut F)
where
    F: FnMut(std::time::Instant, Event, &mut Endpoint),
{
    while let Some(out) = endpoint.poll_output() {
        match out {
            Output::Transmit(t) if t.transport == Transport::Udp => send_udp(&io.udp, t).await,
            Output::Transmit(t) => send_stream(io, t),
            Output::Event(ev) => {
                track_call(io, &ev);
                on_event(std::time::Instant::now(), ev, endpoint);
            }
        }
    }
}

async fn send_udp(sockets: &[SipSocket], t: Transmit) {
    let socket = sockets
        .iter()
        .find(|s| s.bound == t.local)
        .or_else(|| {
            sockets.iter().find(|s| {
                s.bound.port() == t.local.port()
                    && s.bound.ip().is_unspecified()
                    && s.bound.is_ipv4() == t.to.is_ipv4()
            })
        })
        .or_else(|| sockets.first());
    match socket {
        Some(s) => {
            if let Err(e) = s.socket.send_to(&t.data, t.to).await {
                tracing::debug!(to = %t.to, error = %e, "SIP send failed");
            }
        }
        None => tracing::debug!(to = %t.to, "no UDP listener to send from; dropped"),
    }
}

/// Hands a message to its connection without waiting; opens a TCP connection when there is
/// none.
fn send_stream(io: &mut Io, mut t: Transmit) {
    if !io.conns.contains_key(&(t.transport, t.to)) {
        t.to = reconnect_address(&t);
    }
    let key = (t.transport, t.to);
    let data = match io.conns.get(&key) {
        Some(conn) => match conn.tx.try_send(t.data) {
            Ok(()) => return,
            Err(TrySendError::Full(_)) => {
                // Dropping its sender makes the connection task close it.
                tracing::warn!(peer = %t.to, transport = ?t.transport, "SIP connection not draining: closed");
                io.conns.remove(&key);
                return;
            }
            Err(TrySendError::Closed(data)) => {
                io.conns.remove(&key);
                data
            }
        },
        None => t.data,
    };
    if t.transport == Transport::Tls {
        tracing::info!(peer = %t.to, "no TLS connection to the peer any more: message dropped");
        return;
    }
    let Some(slot) = Slot::take(&io.ctx.open, io.ctx.limits.max_connections) else {
        tracing::warn!(peer = %t.to, "SIP connection limit reached: message dropped");
        return;
    };
    let (tx, rx) = mpsc::channel(CONNECTION_QUEUE);
    // A fresh channel has room.
    let _ = tx.try_send(data);
    let id = io.ctx.next_id();
    let calls = Arc::new(AtomicUsize::new(0));
    io.conns.insert(
        key,
        Conn {
            id,
            tx,
            calls: calls.clone(),
        },
    );
    let ctx = io.ctx.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let to = key.1;
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(to)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                let local = stream.local_addr().unwrap_or(to);
                tracing::debug!(peer = %to, "SIP TCP connection opened");
                serve_connection(stream, key, local, id, rx, calls, &ctx).await;
            }
            Ok(Err(e)) => tracing::info!(peer = %to, error = %e, "cannot connect over TCP"),
            Err(_) => tracing::info!(peer = %to, "cannot connect over TCP: timed out"),
        }
        let _ = ctx.inbound.send(Inbound::Closed { key, id }).await;
    });
}

/// Where to open a new connection when the one a message belongs on is gone. A response goes
/// to the port of the request's top Via (RFC 3261 §18.2.2): the connection's source port was
/// most likely ephemeral. A request goes where the endpoint said.
fn reconnect_address(t: &Transmit) -> SocketAddr {
    if !t.data.starts_with(b"SIP/2.0 ") {
        return t.to;
    }
    let via_port = match super::msg::parse(&t.data) {
        Ok(super::msg::Message::Response(r)) => r.top_via().and_then(|v| v.port),
        _ => None,
    };
    let default = if t.transport == Transport::Tls {
        5061
    } else {
        5060
    };
    SocketAddr::new(t.to.ip(), via_port.unwrap_or(default))
}

/// Counts the calls each connection carries, so a connection with a call up (a caller on
/// hold for an hour sends nothing) is not closed as idle.
fn track_call(io: &mut Io, ev: &Event) {
    match ev {
        Event::IncomingCall { call, peer, .. } => {
            let conn = [Transport::Tcp, Transport::Tls]
                .into_iter()
                .find_map(|t| io.conns.get(&(t, *peer)));
            if let Some(conn) = conn {
                conn.calls.fetch_add(1, Ordering::AcqRel);
                io.call_conns.insert(*call, conn.calls.clone());
            }
        }
        Event::CallEnded { call, .. } => {
            if let Some(calls) = io.call_conns.remove(call) {
                calls.fetch_sub(1, Ordering::AcqRel);
            }
        }
        _ => {}
    }
}

async fn read_udp(socket: Arc<UdpSocket>, index: usize, tx: mpsc::Sender<Inbound>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, from)) => {
                let data = buf[..n].to_vec();
                if tx
                    .send(Inbound::Datagram { index, from, data })
                    .await
                    .is_err()
                {
                    break;
                }
            }
            // ICMP errors surface here on some systems; they are not fatal.
            Err(e) => tracing::debug!(error = %e, "SIP socket receive error"),
        }
    }
}

async fn accept_loop(l: StreamListener, ctx: StreamCtx) {
    let transport = l.transport();
    // Under a connection flood, one warning per 10 s; the rest at debug level.
    let mut warned: Option<TokioInstant> = None;
    loop {
        let (stream, peer) = match l.listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, mostly: wait for some to be freed.
                tracing::warn!(error = %e, ?transport, "SIP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = Slot::take(&ctx.open, ctx.limits.max_connections) else {
            let max = ctx.limits.max_connections;
            if warned.is_none_or(|w| w.elapsed() >= Duration::from_secs(10)) {
                warned = Some(TokioInstant::now());
                tracing::warn!(%peer, ?transport, max, "SIP connection limit reached: closing new connections");
            } else {
                tracing::debug!(%peer, ?transport, max, "SIP connection limit reached: closed");
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(l.bound);
        let tls = l.tls.as_ref().map(|t| t.acceptor());
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let key = (transport, peer);
            match tls {
                None => accepted(stream, key, local, &ctx).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => accepted(tls, key, local, &ctx).await,
                        Ok(Err(e)) if crate::tls::is_client_cert_refusal(&e) => {
                            // Why, per handshake, for whoever debugs a PBX's certificate; the
                            // `mohd security:` line comes from the endpoint's gate.
                            tracing::debug!(%peer, error = %e, "TLS client certificate refused");
                            let refused = Inbound::ClientCertRefused { source: peer.ip() };
                            let _ = ctx.inbound.send(refused).await;
                        }
                        Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

async fn accepted<St>(stream: St, key: ConnKey, local: SocketAddr, ctx: &StreamCtx)
where
    St: AsyncRead + AsyncWrite + Unpin,
{
    let id = ctx.next_id();
    let (tx, rx) = mpsc::channel(CONNECTION_QUEUE);
    let calls = Arc::new(AtomicUsize::new(0));
    let opened = Inbound::Opened {
        key,
        id,
        tx,
        calls: calls.clone(),
    };
    if ctx.inbound.send(opened).await.is_err() {
        return;
    }
    tracing::debug!(peer = %key.1, transport = ?key.0, "SIP connection accepted");
    serve_connection(stream, key, local, id, rx, calls, ctx).await;
    let _ = ctx.inbound.send(Inbound::Closed { key, id }).await;
}

/// One connection until it closes: reads and frames messages for the owner, answers
/// keep-alive pings, writes what the owner queues, closes when idle, on a framing error
/// (after a 400 when the request can be answered), or when the owner drops its sender.
async fn serve_connection<St>(
    mut stream: St,
    key: ConnKey,
    local: SocketAddr,
    id: u64,
    mut outbound: mpsc::Receiver<Vec<u8>>,
    calls: Arc<AtomicUsize>,
    ctx: &StreamCtx,
) where
    St: AsyncRead + AsyncWrite + Unpin,
{
    let peer = key.1;
    let idle = ctx.limits.idle_timeout;
    let mut framer = Framer::new(ctx.limits.max_message_bytes);
    let mut buf = vec![0u8; 16 * 1024];
    let mut last_activity = TokioInstant::now();
    let why: &str = 'conn: loop {
        tokio::select! {
            read = stream.read(&mut buf) => {
                let n = match read {
                    Ok(0) => break 'conn "closed by the peer",
                    Ok(n) => n,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "SIP connection read error");
                        break 'conn "read error";
                    }
                };
                last_activity = TokioInstant::now();
                framer.push(&buf[..n]);
                loop {
                    match framer.next_frame() {
                        Ok(None) => break,
                        Ok(Some(Frame::Message(data))) => {
                            let msg = Inbound::Message { key, local, data };
                            if ctx.inbound.send(msg).await.is_err() {
                                break 'conn "shutting down";
                            }
                        }
                        Ok(Some(Frame::Ping)) => {
                            if write(&mut stream, PONG).await.is_err() {
                                break 'conn "write failed";
                            }
                        }
                        Err(e) => {
                            tracing::info!(%peer, transport = ?key.0, error = %e, "bad SIP stream: closing the connection");
                            if let Some(resp) = bad_request_for(&e) {
                                let _ = write(&mut stream, &resp).await;
                            }
                            break 'conn "framing error";
                        }
                    }
                }
            }
            data = outbound.recv() => {
                let Some(data) = data else { break 'conn "released" };
                if write(&mut stream, &data).await.is_err() {
                    break 'conn "write failed";
                }
                last_activity = TokioInstant::now();
            }
            _ = tokio::time::sleep_until(last_activity + idle) => {
                if calls.load(Ordering::Acquire) > 0 {
                    last_activity = TokioInstant::now();
                } else {
                    break 'conn "idle";
                }
            }
        }
    };
    tracing::debug!(%peer, transport = ?key.0, id, reason = why, "SIP connection closed");
    // TLS close_notify, TCP FIN; a peer that does not read gets no more time.
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
}

async fn write<St: AsyncWrite + Unpin>(stream: &mut St, data: &[u8]) -> io::Result<()> {
    let result = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(data).await?;
        stream.flush().await
    })
    .await;
    match result {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")),
    }
}

/// The REGISTER clients, driven from the shell's task so that they share its sockets (the PBX
/// sees our REGISTERs come from the port it is to send INVITEs to) and its clock. DNS runs in
/// spawned tasks; their answers come back through `resolved`.
/// What the SIP loop publishes for the status page and metrics.
#[derive(Debug, Clone, Default)]
pub struct SipStatus {
    pub stats: crate::sip::endpoint::EndpointStats,
    pub active_calls: usize,
    pub registrations: Vec<RegistrationStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationStatus {
    pub aor: String,
    pub registrar: String,
    /// `registered`, `registering`, `failed` or `unregistered`.
    pub state: &'static str,
    pub last_error: Option<String>,
}

pub struct Registrations {
    regs: Vec<Registration>,
    resolved_tx: mpsc::UnboundedSender<(usize, Result<Route, ResolveError>)>,
    resolved_rx: mpsc::UnboundedReceiver<(usize, Result<Route, ResolveError>)>,
}

impl Registrations {
    pub fn new(regs: Vec<Registration>) -> Self {
        let (resolved_tx, resolved_rx) = mpsc::unbounded_channel();
        Registrations {
            regs,
            resolved_tx,
            resolved_rx,
        }
    }

    fn status(&self) -> Vec<RegistrationStatus> {
        use crate::sip::register::State;
        self.regs
            .iter()
            .map(|r| {
                let (state, last_error) = match r.state() {
                    State::Unregistered => ("unregistered", None),
                    State::Registering => ("registering", None),
                    State::Registered { .. } => ("registered", None),
                    State::Failed { reason, .. } => ("failed", Some(reason.clone())),
                };
                RegistrationStatus {
                    aor: r.aor().to_owned(),
                    registrar: r.registrar().to_owned(),
                    state,
                    last_error,
                }
            })
            .collect()
    }

    fn start(&mut self, now: std::time::Instant) {
        for r in &mut self.regs {
            r.start(now);
        }
    }

    fn poll_timeout(&self) -> Option<std::time::Instant> {
        self.regs
            .iter()
            .filter_map(Registration::poll_timeout)
            .min()
    }

    fn handle_timeout(&mut self, now: std::time::Instant) {
        for r in &mut self.regs {
            r.handle_timeout(now);
        }
    }

    /// Takes the responses to our REGISTERs; false for anything the endpoint should see.
    fn take(&mut self, msg: &Inbound) -> bool {
        match msg {
            Inbound::Datagram { data, .. } | Inbound::Message { data, .. } => {
                register::dispatch_response(&mut self.regs, std::time::Instant::now(), data)
            }
            _ => false,
        }
    }

    fn handle_resolved(
        &mut self,
        now: std::time::Instant,
        index: usize,
        result: Result<Route, ResolveError>,
    ) {
        if let Some(r) = self.regs.get_mut(index) {
            r.handle_resolved(now, result);
        }
    }

    async fn resolved(&mut self) -> Option<(usize, Result<Route, ResolveError>)> {
        self.resolved_rx.recv().await
    }

    fn unregister_all(&mut self, now: std::time::Instant) {
        for r in &mut self.regs {
            r.unregister(now);
        }
    }

    /// Sends what the registrations want sent, the same ways the endpoint's messages go.
    async fn drain(&mut self, io: &mut Io) {
        for (index, r) in self.regs.iter_mut().enumerate() {
            while let Some(out) = r.poll_output() {
                match out {
                    RegOutput::Transmit(t) if t.transport == Transport::Udp => {
                        send_udp(&io.udp, t).await
                    }
                    RegOutput::Transmit(t) => send_stream(io, t),
                    RegOutput::Resolve { host, port, .. } => {
                        let bound: Vec<SocketAddr> = io.udp.iter().map(|s| s.bound).collect();
                        let tx = self.resolved_tx.clone();
                        tokio::spawn(async move {
                            let _ = tx.send((index, resolve_route(&host, port, &bound).await));
                        });
                    }
                }
            }
        }
    }
}

/// The registrar's address, and ours towards it on a SIP socket of the same address family.
async fn resolve_route(host: &str, port: u16, bound: &[SocketAddr]) -> Result<Route, ResolveError> {
    let lookup = tokio::net::lookup_host((host, port));
    let addrs: Vec<SocketAddr> =
        match tokio::time::timeout(std::time::Duration::from_secs(10), lookup).await {
            Ok(Ok(addrs)) => addrs.collect(),
            Ok(Err(e)) => return Err(ResolveError::Lookup(e)),
            Err(_) => return Err(ResolveError::TimedOut),
        };
    for to in &addrs {
        if let Some(b) = bound.iter().find(|b| b.is_ipv4() == to.is_ipv4()) {
            let local = if b.ip().is_unspecified() {
                let ip = local_ip_towards(*to).ok_or(ResolveError::NoRoute(*to))?;
                SocketAddr::new(ip, b.port())
            } else {
                *b
            };
            return Ok(Route { to: *to, local });
        }
    }
    if addrs.is_empty() {
        Err(ResolveError::NoAddress)
    } else {
        Err(ResolveError::NoSocketForFamily)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transmit(transport: Transport, data: &str) -> Transmit {
        Transmit {
            transport,
            local: "127.0.0.1:5060".parse().unwrap(),
            to: "192.0.2.7:40312".parse().unwrap(),
            data: data.as_bytes().to_vec(),
        }
    }

    const RESPONSE: &str = "SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP 192.0.2.7:5070;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn a_response_whose_connection_is_gone_goes_to_the_via_port() {
        let t = transmit(Transport::Tcp, RESPONSE);
        assert_eq!(reconnect_address(&t), "192.0.2.7:5070".parse().unwrap());
        // No port in the Via: the transport's default.
        let t = transmit(Transport::Tls, &RESPONSE.replace(":5070", ""));
        assert_eq!(reconnect_address(&t), "192.0.2.7:5061".parse().unwrap());
    }

    #[test]
    fn a_request_goes_where_the_endpoint_said() {
        let t = transmit(
            Transport::Tcp,
            "BYE sip:x@192.0.2.7:5070 SIP/2.0\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(reconnect_address(&t), t.to);
    }

    #[test]
    fn the_connection_cap_counts_and_frees_slots() {
        let open = Arc::new(AtomicUsize::new(0));
        let a = Slot::take(&open, 2).unwrap();
        let b = Slot::take(&open, 2).unwrap();
        assert!(Slot::take(&open, 2).is_none());
        drop(a);
        let c = Slot::take(&open, 2);
        assert!(c.is_some());
        drop((b, c));
        assert_eq!(open.load(Ordering::Acquire), 0);
    }
}
