//! The SIP user-agent server, sans-IO: RFC 3261 server transactions (§17.2, with the RFC 6026
//! "Accepted" state), UAS dialogs (§12), the INVITE/ACK/BYE/CANCEL/OPTIONS core (§8.2, §9, §11,
//! §13.3, §15), and our own in-dialog requests (BYE, session refresh) through
//! [`super::client_txn`]. Every retransmission and timeout runs on [`super::timer`]: a
//! [`Retransmit`] schedule per message resent (Timers G/H, the 2xx, E/F) and a call's
//! [`TimerTable`] of one-shot timers (answer delay, maximum length, session timer).
//!
//! Owns every piece of SIP state. Bytes and time go in ([`Endpoint::handle_receive`],
//! [`Endpoint::handle_timeout`]); datagrams to send and call events come out of
//! [`Endpoint::poll_output`]; [`Endpoint::poll_timeout`] says when to call back. It never reads a
//! clock, opens a socket or uses a thread-local RNG, so tests drive months of time in a second.
//!
//! Contract (as str0m's): after every `handle_*`, `accept`, `reject` or `hangup`, drain
//! `poll_output` until it returns `None`, then sleep until `poll_timeout`.
//!
//! The transaction layer is ours rather than a crate's because the Rust SIP stacks available do
//! I/O and read the clock inside their state machines (see `DESIGN.md`); the timers below are
//! exactly what makes a UAS right or wrong, so they must be testable with a virtual clock.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use super::client_txn::{ClientTxn, Link};
use super::guard::{Guard, GuardConfig, LogGate, OnBan, RefusalKind, SecurityEvent, Verdict};
use super::msg::{self, Headers, Message, Method, NameAddr, Request, Response, SipUri};
use super::sdp::{
    self, AnswerOptions, LocalMedia, MediaParams, NegotiationError, SrtpKeySeed, SrtpPolicy,
};
use super::timer::{Retransmit, Step, T4, TRANSACTION_TIMEOUT, TimerKind, TimerTable};
use crate::codec::{Codec, opus};
use crate::dialplan::{Cidr, Dialplan, RouteRequest};
use crate::rtp::admission::{Gate, Refusal};
use crate::table::{give_back_queue_room, give_back_room};

const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, INFO";
const SUPPORTED: &str = "timer";

/// An unavailable reason that starts so is a box still starting (its channels on silent
/// placeholders for a second or so): OPTIONS adds a Retry-After of
/// [`STARTING_RETRY_AFTER_S`]. Other reasons (no playable music) last until someone acts.
pub const STARTING: &str = "starting";
/// What OPTIONS tells a proxy while the box is [`STARTING`]: ask again in this long.
pub const STARTING_RETRY_AFTER_S: u32 = 1;

/// A call, as the rest of mohd sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(pub u64);

impl std::fmt::Display for CallId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "call-{}", self.0)
    }
}

#[derive(Debug, Clone)]
pub struct EndpointConfig {
    pub user_agent: String,
    /// Ring this long before answering (180 Ringing meanwhile). Zero answers at once.
    pub answer_delay: Duration,
    /// Codecs we offer and accept, in our order of preference (`[rtp] codecs`).
    pub codecs: Vec<Codec>,
    /// How answers choose among them, the Opus bitrate they state, and the SRTP policy
    /// (`answer.sdes_allowed` and `answer.srtp_key` are set per call).
    pub answer: AnswerOptions,
    /// Take SDES keys from INVITEs over UDP and TCP too, not only over TLS.
    pub srtp_over_plain_transports: bool,
    /// Calls end (BYE) after this long, whatever the peer does. `None`: never.
    pub max_call_duration: Option<Duration>,
    /// The smallest session interval we accept (RFC 4028 Min-SE); smaller gets 422.
    pub min_session_expires: Duration,
    /// New INVITEs beyond this many calls get 503 (Retry-After).
    pub max_calls: usize,
    /// Open server transactions at most, so a flood cannot grow memory without bound. At the
    /// cap a new request takes the place of the oldest transaction that has answered and only
    /// waits out its timer (see `Endpoint::make_room`); only when none has is it dropped.
    pub max_transactions: usize,
    pub access: AccessPolicy,
    /// Challenge new INVITEs with digest authentication (RFC 8760) when set.
    pub auth: Option<super::digest::VerifierConfig>,
    /// Guessing limits on that authentication (on by default).
    pub guard: GuardConfig,
    /// Requests whose User-Agent contains one of these (lowercase) are dropped unanswered.
    pub drop_user_agents: Vec<String>,
}

/// The User-Agents of the SIP scanners seen on public addresses (sipvicious's svmap, svwar
/// and svcrack say "friendly-scanner" unless told otherwise), matched as case-insensitive
/// substrings. No PBX or phone sends these.
pub const SCANNER_USER_AGENTS: &[&str] = &[
    "friendly-scanner",
    "sipvicious",
    "sipcli",
    "sip-scan",
    "vaxsipuseragent",
    "iwar",
    "sundayddr",
    "sipscan",
    "pplsip",
];

/// Who may talk to us, and how fast.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessPolicy {
    /// Source networks allowed; empty allows everyone.
    pub allow: Vec<Cidr>,
    /// Answer 403 to others (true) or drop them silently (false).
    pub reject_denied: bool,
    /// Sustained datagrams per second per source IP; 0: unlimited.
    pub rate_per_source: u32,
    /// Burst allowed above the rate.
    pub burst: u32,
}

impl Default for AccessPolicy {
    fn default() -> Self {
        AccessPolicy {
            allow: Vec::new(),
            reject_denied: true,
            rate_per_source: 1000,
            burst: 2000,
        }
    }
}

/// Token buckets per source. Bounded: a flood of spoofed sources cannot grow it past
/// `MAX_SOURCES`; idle buckets are forgotten.
#[derive(Debug, Default)]
struct RateLimiter {
    buckets: HashMap<IpAddr, (f64, Instant)>,
    /// When `forget_full` next looks (it walks every bucket, so not at every timer).
    next_sweep: Option<Instant>,
}

const MAX_SOURCES: usize = 65_536;
/// How often idle sources' buckets are forgotten.
const SOURCE_SWEEP: Duration = Duration::from_secs(10);
/// A full transaction table is logged at most this often (a storm fills it for minutes).
const TABLE_FULL_LOG_INTERVAL: Duration = Duration::from_secs(60);

impl RateLimiter {
    fn allow(&mut self, now: Instant, ip: IpAddr, rate: u32, burst: u32) -> bool {
        if rate == 0 {
            return true;
        }
        let (rate, burst) = (f64::from(rate), f64::from(burst.max(1)));
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= MAX_SOURCES {
            let horizon = Duration::from_secs(10);
            self.buckets
                .retain(|_, (_, last)| now.saturating_duration_since(*last) < horizon);
            if self.buckets.len() >= MAX_SOURCES {
                return false;
            }
        }
        let (tokens, last) = self.buckets.entry(ip).or_insert((burst, now));
        let elapsed = now.saturating_duration_since(*last).as_secs_f64();
        *tokens = (*tokens + elapsed * rate).min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Forgets the buckets that have refilled: a full bucket and no bucket allow the same, so
    /// this changes no answer, and a trunk of many PBXs (or a flood from ever new addresses)
    /// leaves nothing behind once it has been quiet for a refill (`burst / rate`).
    fn forget_full(&mut self, now: Instant, rate: u32, burst: u32) {
        if self.next_sweep.is_some_and(|at| now < at) {
            return;
        }
        self.next_sweep = Some(now + SOURCE_SWEEP);
        if rate == 0 {
            self.buckets.clear();
        } else {
            let refill = Duration::from_secs_f64(f64::from(burst.max(1)) / f64::from(rate));
            self.buckets
                .retain(|_, (_, last)| now.saturating_duration_since(*last) < refill);
        }
        give_back_room(&mut self.buckets);
    }
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            user_agent: format!("mohd/{}", env!("CARGO_PKG_VERSION")),
            answer_delay: Duration::ZERO,
            codecs: Codec::G711.to_vec(),
            answer: AnswerOptions::default(),
            srtp_over_plain_transports: false,
            max_call_duration: Some(Duration::from_secs(4 * 3600)),
            min_session_expires: Duration::from_secs(90),
            max_calls: 4096,
            max_transactions: 16_384,
            access: AccessPolicy::default(),
            auth: None,
            guard: GuardConfig::default(),
            drop_user_agents: SCANNER_USER_AGENTS.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// The transport a message came in on, and goes out on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Transport {
    #[default]
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    /// Reliable transports need no retransmission timers (RFC 3261 §17: Timers G, E, I, J, K
    /// are for unreliable transports only).
    pub fn is_reliable(self) -> bool {
        !matches!(self, Transport::Udp)
    }
    pub fn via_name(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }
}

/// A message to send. For UDP, a datagram from the socket bound to `local`; for TCP and TLS,
/// over the connection with `to` (the shell opens one when there is none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub transport: Transport,
    pub local: SocketAddr,
    pub to: SocketAddr,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// The peer sent BYE.
    RemoteBye,
    /// The peer cancelled before we answered.
    Cancelled,
    /// No ACK came for our 200 OK within 64×T1 (Timer H).
    NoAck,
    /// The late-offer ACK carried no usable answer.
    BadAck,
    /// We refused it (the code sent).
    Rejected(u16),
    /// The application hung up (shutdown, media timeouts).
    LocalHangup,
    /// The session timer ran out without a refresh (RFC 4028 §10).
    SessionExpired,
    /// Our session refresh failed (timeout, 408 or 481).
    RefreshFailed(u16),
    /// The configured maximum call length passed.
    MaxDuration,
    /// The media side saw the peer go (no RTP/RTCP, ICMP unreachable).
    PeerGone(String),
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndReason::RemoteBye => f.write_str("remote BYE"),
            EndReason::Cancelled => f.write_str("cancelled"),
            EndReason::NoAck => f.write_str("no ACK for 200 OK (Timer H)"),
            EndReason::BadAck => f.write_str("ACK without a usable SDP answer"),
            EndReason::Rejected(c) => write!(f, "rejected with {c}"),
            EndReason::LocalHangup => f.write_str("local hangup"),
            EndReason::SessionExpired => f.write_str("session timer expired (no refresh)"),
            EndReason::RefreshFailed(c) => write!(f, "session refresh failed ({c})"),
            EndReason::MaxDuration => f.write_str("maximum call length reached"),
            EndReason::PeerGone(why) => f.write_str(why),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A new INVITE routed to `channel`. Answer with [`Endpoint::accept`] (giving the local RTP
    /// address) or [`Endpoint::reject`].
    IncomingCall {
        call: CallId,
        channel: String,
        peer: SocketAddr,
        local: SocketAddr,
        from: String,
        request_uri: String,
    },
    /// Media can flow: the 200 OK is out (or, for a late offer, the ACK brought the answer).
    CallStarted {
        call: CallId,
        channel: String,
        media: MediaParams,
    },
    /// A re-INVITE changed the media (address, codec, direction).
    CallUpdated { call: CallId, media: MediaParams },
    /// The call is over; free its media. Emitted once per `IncomingCall`.
    CallEnded { call: CallId, reason: EndReason },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Transmit(Transmit),
    Event(Event),
}

/// Counters the shell exports (metrics, logs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Messages dropped unanswered: ACKs and responses that match nothing, and (counted in
    /// `table_full` too) new requests while the transaction table is full.
    pub datagrams_dropped: u64,
    /// New requests dropped because every open transaction was still at work (a flood).
    pub table_full: u64,
    pub bad_requests: u64,
    pub retransmissions_absorbed: u64,
    /// From a source outside `access.allow`.
    pub denied: u64,
    /// Over the per-source rate.
    pub rate_limited: u64,
    /// INVITEs answered 401 (no or wrong credentials).
    pub unauthorised: u64,
    /// Refused (403 or dropped, `[sip.auth] on_ban`) while their source was banned for
    /// guessing passwords.
    pub banned: u64,
    /// Dropped because their User-Agent names a scanner (`[sip] drop_user_agents`).
    pub scanners: u64,
    /// TLS handshakes refused for the client's certificate (`[sip.tls] client_ca`,
    /// `client_names`), as the shell reports them.
    pub client_certs_refused: u64,
    pub calls_started: u64,
    pub calls_ended: u64,
    /// New INVITEs refused (503) by the availability gate, by reason.
    pub refused_capacity: u64,
    pub refused_max_calls: u64,
    pub refused_draining: u64,
}

impl EndpointStats {
    /// New INVITEs refused for `why`.
    pub fn refused(&self, why: Refusal) -> u64 {
        match why {
            Refusal::Capacity => self.refused_capacity,
            Refusal::MaxCalls => self.refused_max_calls,
            Refusal::Draining => self.refused_draining,
        }
    }

    fn count_refusal(&mut self, why: Refusal) {
        match why {
            Refusal::Capacity => self.refused_capacity += 1,
            Refusal::MaxCalls => self.refused_max_calls += 1,
            Refusal::Draining => self.refused_draining += 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TxnKey {
    branch: String,
    sent_by: String,
    /// ACK is folded into INVITE (§17.2.3); CANCEL has its own.
    method: Method,
}

impl TxnKey {
    fn of(req: &Request) -> Option<TxnKey> {
        let via = req.top_via()?;
        let method = match req.method {
            Method::Ack => Method::Invite,
            ref m => m.clone(),
        };
        match via.branch() {
            Some(b) if b.starts_with("z9hG4bK") => Some(TxnKey {
                branch: b.to_string(),
                sent_by: via.sent_by().to_ascii_lowercase(),
                method,
            }),
            // RFC 2543 peers: match on the request's identity (§17.2.3, second part).
            _ => {
                let (cseq, _) = req.cseq()?;
                let from_tag = req.from()?.tag().unwrap_or_default().to_string();
                let to_tag = match req.method {
                    Method::Ack => String::new(),
                    _ => req.to()?.tag().unwrap_or_default().to_string(),
                };
                Some(TxnKey {
                    branch: format!(
                        "2543|{}|{}|{}|{}|{}",
                        req.uri,
                        req.call_id()?,
                        cseq,
                        from_tag,
                        to_tag
                    ),
                    sent_by: via.sent_by().to_ascii_lowercase(),
                    method,
                })
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxnState {
    Proceeding,
    /// Non-2xx final sent (INVITE: waiting for ACK; non-INVITE: absorbing retransmissions).
    Completed,
    /// 2xx sent to an INVITE (RFC 6026): absorbs retransmissions; the call retransmits the 2xx.
    Accepted,
    /// ACK received for a non-2xx (Timer I).
    Confirmed,
}

#[derive(Debug)]
struct ServerTxn {
    is_invite: bool,
    transport: Transport,
    state: TxnState,
    request: Request,
    dest: SocketAddr,
    local: SocketAddr,
    last_response: Option<Vec<u8>>,
    call: Option<CallId>,
    /// Timers G and H: a non-2xx final to an INVITE, resent until the ACK or given up.
    retransmit: Option<Retransmit>,
    /// Timers I, J and the Accepted-state lifetime: the transaction is forgotten then.
    expire_at: Option<Instant>,
}

impl ServerTxn {
    fn next_timeout(&self) -> Option<Instant> {
        let retransmit = self.retransmit.map(|r| r.next_timeout());
        [retransmit, self.expire_at].into_iter().flatten().min()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallState {
    /// IncomingCall emitted; waiting for accept/reject.
    Pending,
    /// Accepted; ringing until `answer_at`.
    Ringing,
    /// 200 OK sent, waiting for ACK.
    Answered,
    Confirmed,
}

#[derive(Debug)]
struct Call {
    transport: Transport,
    channel: String,
    state: CallState,
    invite_txn: TxnKey,
    peer: SocketAddr,
    local: SocketAddr,
    call_id: String,
    local_tag: String,
    remote_tag: String,
    /// Our From/To values as the peer sees them (To with our tag, From as received).
    local_party: String,
    remote_party: String,
    remote_target: Option<String>,
    route_set: Vec<String>,
    /// Our Contact (the header value) in every 2xx and request of the dialog.
    local_contact: String,
    remote_cseq: u32,
    local_cseq: u32,
    offer: Option<sdp::SessionDescription>,
    local_media: Option<LocalMedia>,
    media: Option<MediaParams>,
    /// The 2xx to retransmit until ACK (RFC 3261 §13.3.1.4), and its schedule (the deadline
    /// is Timer H for the 2xx).
    ok_bytes: Option<Vec<u8>>,
    ok_dest: SocketAddr,
    ok_retransmit: Option<Retransmit>,
    /// Answer delay, maximum length and session timer.
    timers: TimerTable<CallTimer, 3>,
    /// A re-INVITE without SDP got our offer; its ACK carries the answer.
    awaiting_ack_answer: bool,
    started: bool,
    /// RFC 4028 session timer, once negotiated (starts when our 2xx goes out).
    session: Option<SessionTimer>,
    /// The negotiated timer of the request being answered, applied with its 2xx.
    pending_session: Option<SessionTimer>,
    /// The peer's Supported: timer (whether our responses may Require it).
    peer_supports_timer: bool,
    /// The peer's Allow lists UPDATE: we refresh with UPDATE rather than re-INVITE.
    peer_allows_update: bool,
    /// Our own refresh request (UPDATE or re-INVITE) is in progress: glare gets 491.
    refreshing: bool,
}

impl Call {
    fn next_timeout(&self) -> Option<Instant> {
        let ok = self.ok_retransmit.map(|r| r.next_timeout());
        [ok, self.timers.next_timeout()].into_iter().flatten().min()
    }

    /// Our 2xx goes out now: retransmit it until the ACK (§13.3.1.4), and start the session
    /// timer the request negotiated (a re-INVITE is a refresh, RFC 4028 §7.4).
    fn answered(&mut self, now: Instant, ok: Vec<u8>) {
        self.state = CallState::Answered;
        self.ok_bytes = Some(ok);
        // Over every transport: the 2xx is the TU's to retransmit, not the transport's.
        self.ok_retransmit = Some(Retransmit::new(now, false, TRANSACTION_TIMEOUT));
        self.session = self.pending_session.take();
        self.restart_session_timer(now);
    }

    fn restart_session_timer(&mut self, now: Instant) {
        match self.session {
            Some(t) => self.timers.set(CallTimer::Session, t.deadline_from(now)),
            None => self.timers.stop(CallTimer::Session),
        }
    }
}

/// A call's one-shot timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallTimer {
    /// The answer delay is over: send the 200 OK.
    Answer,
    /// The configured maximum call length passed.
    MaxDuration,
    /// RFC 4028: refresh the session (refresher) or end it (not refresher).
    Session,
}

impl TimerKind for CallTimer {
    const ALL: &'static [CallTimer] = &[
        CallTimer::Answer,
        CallTimer::MaxDuration,
        CallTimer::Session,
    ];
    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SessionTimer {
    interval: Duration,
    we_refresh: bool,
}

impl SessionTimer {
    /// Session-Expires (and Require: timer when the peer supports it) for our 2xx.
    fn push_headers(&self, headers: &mut Headers, require: bool) {
        let refresher = if self.we_refresh { "uas" } else { "uac" };
        headers.push(
            "Session-Expires",
            format!("{};refresher={refresher}", self.interval.as_secs()),
        );
        if require {
            headers.push("Require", "timer");
        }
    }

    /// The 2xx to our refresh: the peer may shorten the interval or take over refreshing
    /// (RFC 4028 §7.2).
    fn adopt_response(&mut self, resp: &Response, min_session_expires: Duration) {
        let session_expires = resp.headers.get("Session-Expires");
        let interval = session_expires
            .and_then(|v| v.split(';').next()?.trim().parse::<u64>().ok())
            .map(|secs| {
                // Never below our Min-SE (0 would refresh in a busy loop), never absurd.
                let min = min_session_expires.as_secs().max(1);
                Duration::from_secs(secs.clamp(min, MAX_SESSION_EXPIRES_S))
            });
        if let Some(i) = interval {
            self.interval = i;
        }
        self.we_refresh =
            !session_expires.is_some_and(|v| v.to_ascii_lowercase().contains("refresher=uac"));
    }

    /// When we send our refresh (refresher) or a BYE (not refresher, RFC 4028 §10), for a
    /// session (re)started at `now`.
    fn deadline_from(&self, now: Instant) -> Instant {
        if self.we_refresh {
            now + self.interval / 2
        } else {
            // BYE slightly before expiry: the lesser of 32 s and a third of the interval.
            let margin = (self.interval / 3).min(Duration::from_secs(32));
            now + self.interval - margin
        }
    }
}

/// A request of ours in a call's dialog (BYE, session refresh).
#[derive(Debug)]
struct OutgoingRequest {
    txn: ClientTxn,
    call: Option<CallId>,
    /// After a 2xx to our INVITE: the ACK, resent if the 2xx is retransmitted.
    ack: Option<Vec<u8>>,
}

pub struct Endpoint {
    config: EndpointConfig,
    dialplan: Dialplan,
    rng: StdRng,
    unavailable: Option<String>,
    /// The media threads' measured capacity (`usize::MAX` until told) and whether the box is
    /// draining: with `max_calls`, the availability gate.
    capacity: usize,
    draining: bool,
    /// Transactions and calls are boxed: a table's empty slots then cost a pointer rather
    /// than a whole transaction (272 bytes) or call (about 1 KiB). RFC 3261's 32 s timers keep
    /// about 64 transactions per call/s of churn in the table, and a table is a power of two.
    txns: HashMap<TxnKey, Box<ServerTxn>>,
    calls: HashMap<CallId, Box<Call>>,
    /// (Call-ID, our tag) → call, for in-dialog requests.
    dialogs: HashMap<(String, String), CallId>,
    /// Our requests, by Via branch.
    client_txns: HashMap<String, OutgoingRequest>,
    /// Server transactions that have answered and linger only to absorb retransmissions
    /// (`expire_at` set), oldest first: what gives way when the table is full. May name
    /// transactions gone since; compacted when it outgrows the table (`note_lingering`).
    lingering: VecDeque<TxnKey>,
    /// When the last "transaction table full" warning was logged.
    table_full_logged: Option<Instant>,
    outputs: VecDeque<Output>,
    limiter: RateLimiter,
    verifier: Option<super::digest::Verifier>,
    guard: Guard,
    security_log: LogGate,
    next_call: u64,
    stats: EndpointStats,
}

impl Endpoint {
    /// An endpoint whose tags, branches and SRTP keys come from `seed`: for tests, which want
    /// them repeatable. A server uses [`Endpoint::with_seed`].
    pub fn new(config: EndpointConfig, dialplan: Dialplan, seed: u64) -> Self {
        Self::with_rng(config, dialplan, StdRng::seed_from_u64(seed), seed)
    }

    /// An endpoint whose randomness, SRTP keys included, comes from a CSPRNG seeded with
    /// `seed`: 256 bits from the OS, so that no call's key can be guessed from another's.
    pub fn with_seed(config: EndpointConfig, dialplan: Dialplan, seed: [u8; 32]) -> Self {
        let mut rng = StdRng::from_seed(seed);
        let digest_seed = rng.random();
        Self::with_rng(config, dialplan, rng, digest_seed)
    }

    fn with_rng(config: EndpointConfig, dialplan: Dialplan, rng: StdRng, seed: u64) -> Self {
        let verifier = config
            .auth
            .clone()
            .map(|c| super::digest::Verifier::new(c, seed.rotate_left(17) ^ 0x5eed));
        let users = config.auth.as_ref().map_or(0, |a| a.users.len());
        let guard = Guard::new(config.guard, users);
        let security_log = LogGate::new(config.guard.log_interval, config.guard.max_sources);
        Endpoint {
            verifier,
            guard,
            security_log,
            config,
            dialplan,
            rng,
            unavailable: None,
            capacity: usize::MAX,
            draining: false,
            txns: HashMap::new(),
            calls: HashMap::new(),
            dialogs: HashMap::new(),
            client_txns: HashMap::new(),
            lingering: VecDeque::new(),
            table_full_logged: None,
            outputs: VecDeque::new(),
            limiter: RateLimiter::default(),
            next_call: 1,
            stats: EndpointStats::default(),
        }
    }

    /// When set, OPTIONS answers 503 with this reason (and its Retry-After) so a load balancer
    /// routes around us. Calls are still answered (the caller hears silence rather than a
    /// failed hold: a PBX that sends its caller here has no other box to try).
    pub fn set_unavailable(&mut self, reason: Option<String>) {
        self.unavailable = reason;
    }

    /// The media threads' measured capacity in calls (admission control, `rtp::admission`):
    /// new INVITEs beyond it get 503; calls in progress are never touched.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity;
    }

    /// While draining, every new INVITE and OPTIONS gets 503; calls in progress go on.
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    /// Whether a new call would be refused now, and why (the availability gate).
    pub fn refusal(&self) -> Option<Refusal> {
        let gate = Gate {
            max_calls: self.config.max_calls,
            capacity: self.capacity,
            draining: self.draining,
        };
        // Calls being set up count: they will be media calls in a moment.
        gate.refusal(self.calls.len())
    }

    /// Routes new INVITEs with `dialplan` (channels created or deleted over the API); calls
    /// in progress keep their channel.
    pub fn set_dialplan(&mut self, dialplan: Dialplan) {
        self.dialplan = dialplan;
    }

    pub fn stats(&self) -> EndpointStats {
        self.stats
    }

    /// A TLS handshake from `source` refused for its client certificate (the shell's TLS
    /// listeners see it; no SIP reached us): counted, and logged through the same gate as the
    /// SIP refusals, so a flood of handshakes writes one line per source per interval.
    pub fn client_cert_refused(&mut self, now: Instant, source: IpAddr) {
        self.stats.client_certs_refused += 1;
        self.log_refusal(now, source, RefusalKind::ClientCert);
    }

    pub fn active_calls(&self) -> usize {
        self.calls.len()
    }

    pub fn call_ids(&self) -> Vec<CallId> {
        let mut ids: Vec<CallId> = self.calls.keys().copied().collect();
        ids.sort();
        ids
    }

    /// Open transactions (server and client); for leak checks.
    pub fn open_transactions(&self) -> usize {
        self.txns.len() + self.client_txns.len()
    }

    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let txns = self.txns.values().filter_map(|t| t.next_timeout());
        let calls = self.calls.values().filter_map(|c| c.next_timeout());
        let clients = self.client_txns.values().map(|r| r.txn.next_timeout());
        let summaries = self.security_log.next_timeout();
        txns.chain(calls).chain(clients).chain(summaries).min()
    }

    /// A datagram arrived on the socket bound to `local` from `from`.
    pub fn handle_receive(
        &mut self,
        now: Instant,
        from: SocketAddr,
        local: SocketAddr,
        data: &[u8],
    ) {
        self.handle_receive_on(now, Transport::Udp, from, local, data)
    }

    /// A message arrived over `transport` (for TCP/TLS, `from` names the connection).
    pub fn handle_receive_on(
        &mut self,
        now: Instant,
        transport: Transport,
        from: SocketAddr,
        local: SocketAddr,
        data: &[u8],
    ) {
        let policy = &self.config.access;
        let (rate, burst) = (policy.rate_per_source, policy.burst);
        if !self.limiter.allow(now, from.ip(), rate, burst) {
            self.stats.rate_limited += 1;
            return;
        }
        let policy = &self.config.access;
        if !policy.allow.is_empty() && !policy.allow.iter().any(|n| n.contains(from.ip())) {
            self.stats.denied += 1;
            if policy.reject_denied
                && let Ok(Message::Request(req)) = msg::parse(data)
                && req.method != Method::Ack
            {
                tracing::debug!(%from, "request from outside the allowed networks: 403");
                let resp = self.response_to(&req, 403, None);
                let dest = response_dest(&req, from, transport).unwrap_or(from);
                self.send(transport, local, dest, resp.to_bytes());
            }
            return;
        }
        match msg::parse(data) {
            Ok(Message::Request(req)) => self.on_request(now, transport, from, local, req),
            Ok(Message::Response(resp)) => self.on_response(now, resp),
            Err(e) => match e.request {
                Some(req) if req.method != Method::Ack => {
                    self.stats.bad_requests += 1;
                    let code = if e.kind == msg::ParseErrorKind::Version {
                        505
                    } else {
                        400
                    };
                    tracing::debug!(%from, error = %e.kind, "malformed request answered {code}");
                    let mut resp = self.response_to(&req, code, None);
                    resp.reason = format!("Bad Request ({})", e.kind);
                    if code == 505 {
                        resp.reason = msg::reason_phrase(505).to_string();
                    }
                    let dest = response_dest(&req, from, transport).unwrap_or(from);
                    self.send(transport, local, dest, resp.to_bytes());
                }
                _ => {
                    self.stats.datagrams_dropped += 1;
                    tracing::debug!(%from, error = %e.kind, "dropped unparseable datagram");
                }
            },
        }
    }

    /// Time passed: runs every timer due at `now`, server transactions first, then calls,
    /// then our own requests.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due = |t: Option<Instant>| t.is_some_and(|at| at <= now);
        let txns: Vec<TxnKey> = (self.txns.iter())
            .filter(|(_, t)| due(t.next_timeout()))
            .map(|(k, _)| k.clone())
            .collect();
        for key in txns {
            self.on_server_txn_timeout(now, &key);
        }
        let calls: Vec<CallId> = (self.calls.iter())
            .filter(|(_, c)| due(c.next_timeout()))
            .map(|(id, _)| *id)
            .collect();
        for id in calls {
            self.on_ok_retransmit_timeout(now, id);
            self.on_call_timers(now, id);
        }
        let clients: Vec<String> = (self.client_txns.iter())
            .filter(|(_, r)| due(Some(r.txn.next_timeout())))
            .map(|(b, _)| b.clone())
            .collect();
        for branch in clients {
            self.on_client_txn_timeout(now, &branch);
        }
        if due(self.security_log.next_timeout()) {
            for line in self.security_log.poll_summaries(now) {
                log_security(&line);
            }
        }
        // Those that expired just now were the oldest answered ones.
        while let Some(key) = self.lingering.front()
            && !self.is_lingering(key)
        {
            self.lingering.pop_front();
        }
        let policy = &self.config.access;
        let (rate, burst) = (policy.rate_per_source, policy.burst);
        self.limiter.forget_full(now, rate, burst);
        give_back_room(&mut self.txns);
        give_back_room(&mut self.calls);
        give_back_room(&mut self.dialogs);
        give_back_room(&mut self.client_txns);
        give_back_queue_room(&mut self.lingering);
    }

    /// Timer G resends a non-2xx final, Timer H stops waiting for its ACK; Timers I and J (and
    /// the Accepted lifetime) forget the transaction.
    fn on_server_txn_timeout(&mut self, now: Instant, key: &TxnKey) {
        let Some(t) = self.txns.get_mut(key) else {
            return;
        };
        let step = t.retransmit.as_mut().map(|r| r.on_timeout(now));
        match step {
            Some(Step::Fire) => {
                if let Some(bytes) = t.last_response.clone() {
                    let (tr, l, d) = (t.transport, t.local, t.dest);
                    self.send(tr, l, d, bytes);
                }
            }
            Some(Step::GiveUp) => {
                // Timer H for a non-2xx final: the ACK never came; stop trying.
                t.retransmit = None;
                t.expire_at = Some(now);
            }
            Some(Step::Idle) | None => {}
        }
        if self
            .txns
            .get(key)
            .is_some_and(|t| t.expire_at.is_some_and(|at| at <= now))
        {
            self.txns.remove(key);
        }
    }

    /// The 2xx retransmission (§13.3.1.4) and its Timer H: no ACK ends the call.
    fn on_ok_retransmit_timeout(&mut self, now: Instant, id: CallId) {
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        match c.ok_retransmit.as_mut().map(|r| r.on_timeout(now)) {
            Some(Step::Fire) => {
                if let Some(bytes) = c.ok_bytes.clone() {
                    let (tr, l, d) = (c.transport, c.local, c.ok_dest);
                    self.send(tr, l, d, bytes);
                }
            }
            Some(Step::GiveUp) => {
                c.ok_retransmit = None;
                tracing::warn!(call = %id, "no ACK for 200 OK within 64*T1; ending the call");
                self.send_bye(now, id);
                self.end_call(id, EndReason::NoAck);
            }
            Some(Step::Idle) | None => {}
        }
    }

    /// A call's one-shot timers: the delayed answer, the maximum length, the session timer.
    fn on_call_timers(&mut self, now: Instant, id: CallId) {
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        for timer in c.timers.expired(now) {
            match timer {
                CallTimer::Answer => self.send_ok(now, id),
                CallTimer::MaxDuration => self.end_by_timer(now, id, EndReason::MaxDuration),
                CallTimer::Session => self.on_session_timer(now, id),
            }
        }
    }

    /// RFC 4028: the refresher refreshes at half the interval; otherwise the session expired.
    fn on_session_timer(&mut self, now: Instant, id: CallId) {
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        match c.session {
            Some(t) if t.we_refresh => {
                // If the refresh fails, its client transaction's timeout or error ends the call.
                c.timers.set(CallTimer::Session, now + t.interval / 2);
                self.send_refresh(now, id);
            }
            _ => self.end_by_timer(now, id, EndReason::SessionExpired),
        }
    }

    fn end_by_timer(&mut self, now: Instant, id: CallId, reason: EndReason) {
        if self.calls.contains_key(&id) {
            tracing::info!(call = %id, %reason, "ending the call");
            self.send_bye(now, id);
            self.end_call(id, reason);
        }
    }

    /// Our BYEs and refreshes: Timers E and F (A and B for a re-INVITE). A refresh that got no
    /// answer means the peer is gone.
    fn on_client_txn_timeout(&mut self, now: Instant, branch: &str) {
        let Some(r) = self.client_txns.get_mut(branch) else {
            return;
        };
        match r.txn.on_timeout(now) {
            Step::Fire => {
                let transmit = r.txn.transmit();
                self.outputs.push_back(Output::Transmit(transmit));
            }
            Step::GiveUp => {
                let failed_refresh = r.ack.is_none() && r.txn.method != Method::Bye;
                let call = r.call;
                self.client_txns.remove(branch);
                if let Some(id) = call.filter(|_| failed_refresh)
                    && self.calls.contains_key(&id)
                {
                    tracing::info!(call = %id, "session refresh timed out; ending the call");
                    self.send_bye(now, id);
                    self.end_call(id, EndReason::RefreshFailed(408));
                }
            }
            Step::Idle => {}
        }
    }

    /// Answer an `IncomingCall`, sending RTP from `local_rtp` (which the SDP names).
    pub fn accept(&mut self, now: Instant, call: CallId, local_rtp: SocketAddr) {
        let session_id = self.rng.random::<u32>() as u64;
        let delay = self.config.answer_delay;
        let Some(transport) = self.calls.get(&call).map(|c| c.transport) else {
            return;
        };
        let local_media = self.local_media(local_rtp, session_id, transport);
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        if c.state != CallState::Pending {
            return;
        }
        c.local_media = Some(local_media);
        if delay.is_zero() {
            self.send_ok(now, call);
        } else {
            c.state = CallState::Ringing;
            c.timers.set(CallTimer::Answer, now + delay);
            self.respond_invite(now, call, 180);
        }
    }

    /// Refuse an `IncomingCall` (e.g. 486 or 503 when out of ports).
    pub fn reject(&mut self, now: Instant, call: CallId, code: u16) {
        let Some(c) = self.calls.get(&call) else {
            return;
        };
        if matches!(c.state, CallState::Pending | CallState::Ringing) {
            self.respond_invite(now, call, code);
            self.end_call(call, EndReason::Rejected(code));
        }
    }

    /// End a call from our side for `reason` (BYE if it was answered).
    pub fn hangup_because(&mut self, now: Instant, call: CallId, reason: EndReason) {
        let answered = self
            .calls
            .get(&call)
            .is_some_and(|c| matches!(c.state, CallState::Answered | CallState::Confirmed));
        if answered {
            self.send_bye(now, call);
            self.end_call(call, reason);
        } else {
            self.hangup(now, call);
        }
    }

    /// End a call from our side: BYE if it was answered, 487-style refusal if not.
    pub fn hangup(&mut self, now: Instant, call: CallId) {
        let Some(c) = self.calls.get(&call) else {
            return;
        };
        match c.state {
            CallState::Pending | CallState::Ringing => self.reject(now, call, 503),
            CallState::Answered | CallState::Confirmed => {
                self.send_bye(now, call);
                self.end_call(call, EndReason::LocalHangup);
            }
        }
    }

    /// A request: ACK and retransmissions go to their transaction; anything else opens a
    /// server transaction, passes the common checks and goes to its method's handler.
    fn on_request(
        &mut self,
        now: Instant,
        transport: Transport,
        from: SocketAddr,
        local: SocketAddr,
        req: Request,
    ) {
        let Some(key) = TxnKey::of(&req) else {
            self.stats.datagrams_dropped += 1;
            return;
        };
        if req.method == Method::Ack {
            self.on_ack(now, key, req);
            return;
        }
        if self.txns.contains_key(&key) {
            self.absorb_retransmission(&key);
            return;
        }
        if self.is_scanner(&req) {
            self.stats.scanners += 1;
            self.refused(now, from, RefusalKind::Scanner);
            return;
        }
        let out_of_dialog = req.to().is_some_and(|t| t.tag().is_none());
        if out_of_dialog && self.guard.is_banned(now, from.ip()) {
            self.stats.banned += 1;
            self.refused(now, from, RefusalKind::Banned);
            if self.guard.config().on_ban == OnBan::Reject {
                let resp = self.response_to(&req, 403, None);
                self.send(
                    transport,
                    local,
                    dest_of(&req, from, transport),
                    resp.to_bytes(),
                );
            }
            return;
        }
        if self.txns.len() >= self.config.max_transactions && !self.make_room(now) {
            // A flood of requests still unanswered: refuse to grow.
            self.stats.datagrams_dropped += 1;
            self.stats.table_full += 1;
            return;
        }
        let dest = dest_of(&req, from, transport);
        let txn = ServerTxn {
            is_invite: req.method == Method::Invite,
            transport,
            state: TxnState::Proceeding,
            request: req.clone(),
            dest,
            local,
            last_response: None,
            call: None,
            retransmit: None,
            expire_at: None,
        };
        self.txns.insert(key.clone(), Box::new(txn));

        if req.method == Method::Cancel {
            self.on_cancel(now, key, req);
            return;
        }
        if let Some(code) = self.precheck(&req) {
            let extra = match code {
                420 => Some(("Unsupported", unsupported_options(&req).join(", "))),
                405 => Some(("Allow", ALLOW.to_string())),
                415 | 406 => Some(("Accept", "application/sdp".to_string())),
                _ => None,
            };
            self.respond_txn(now, &key, code, extra, None);
            return;
        }
        match req.to().and_then(|t| t.tag().map(str::to_string)) {
            Some(tag) => self.on_in_dialog(now, key, req, tag),
            None => self.on_out_of_dialog(now, key, req, from, local),
        }
    }

    /// The table is full: forgets the oldest transaction that has answered and only lingers
    /// to absorb retransmissions; false when there is none (every one is still at work).
    ///
    /// RFC 3261 keeps each call's INVITE (Accepted, RFC 6026) and BYE transactions 64×T1 =
    /// 32 s after their answers, so a steady r calls/s fills the table with some 64 × r of
    /// them: 32,000 at 500 calls/s. Refusing new requests then stalled every new call (and
    /// hang-up) until the oldest expired, 15 s later (benches/setup_rate.sh: INVITE→200 p99
    /// 19.5 s at 500/s). Forgetting one early costs at most a late retransmission of its
    /// request being taken as new: a BYE gets 481, an INVITE whose call is up 482 (merged
    /// request), an OPTIONS its answer again. Two transactions a call, the oldest is some
    /// max_transactions / (2 × calls/s) old (16 s at 500 calls/s, 8 s at 1,000): a peer that
    /// got its answer stopped retransmitting long before.
    fn make_room(&mut self, now: Instant) -> bool {
        while let Some(key) = self.lingering.pop_front() {
            if self.is_lingering(&key) {
                self.txns.remove(&key);
                if self
                    .table_full_logged
                    .is_none_or(|at| now >= at + TABLE_FULL_LOG_INTERVAL)
                {
                    self.table_full_logged = Some(now);
                    tracing::warn!(
                        max_transactions = self.config.max_transactions,
                        "SIP transaction table full: answered transactions are forgotten before \
                         their timers (logged at most once a minute)"
                    );
                }
                return true;
            }
        }
        false
    }

    /// Whether the transaction `key` is open and only waits out its timer (`expire_at`).
    fn is_lingering(&self, key: &TxnKey) -> bool {
        self.txns.get(key).is_some_and(|t| t.expire_at.is_some())
    }

    /// The transaction `key` has answered and now only waits out its timer (`expire_at`).
    fn note_lingering(&mut self, key: &TxnKey) {
        // Most keys here expire in order and are popped by `make_room` or `handle_timeout`;
        // those that expire sooner (Timer I, reliable transports) are dropped here, so the
        // queue stays within twice the table.
        if self.lingering.len() >= 2 * self.config.max_transactions.max(1) {
            let txns = &self.txns;
            self.lingering
                .retain(|k| txns.get(k).is_some_and(|t| t.expire_at.is_some()));
        }
        self.lingering.push_back(key.clone());
    }

    /// A retransmitted request is absorbed by its transaction (§17.2.1, §17.2.2): the last
    /// response again, and during the Accepted state the call's 2xx too (it may be what was
    /// lost).
    fn absorb_retransmission(&mut self, key: &TxnKey) {
        let Some(t) = self.txns.get(key) else {
            return;
        };
        self.stats.retransmissions_absorbed += 1;
        let last = t.last_response.clone();
        let (tr, l, d) = (t.transport, t.local, t.dest);
        let accepted_ok = t
            .call
            .and_then(|c| self.calls.get(&c))
            .filter(|_| t.state == TxnState::Accepted)
            .and_then(|call| {
                Some((
                    call.transport,
                    call.local,
                    call.ok_dest,
                    call.ok_bytes.clone()?,
                ))
            });
        if let Some(bytes) = last {
            self.send(tr, l, d, bytes);
        }
        if let Some((tr, l, d, bytes)) = accepted_ok {
            self.send(tr, l, d, bytes);
        }
    }

    /// A request outside any dialog (no To tag).
    fn on_out_of_dialog(
        &mut self,
        now: Instant,
        key: TxnKey,
        req: Request,
        from: SocketAddr,
        local: SocketAddr,
    ) {
        match req.method {
            Method::Invite => self.on_invite(now, key, req, from, local),
            Method::Options => self.on_options(now, &key),
            Method::Bye | Method::Update | Method::Prack | Method::Info => {
                self.respond_txn(now, &key, 481, None, None)
            }
            Method::Other(_) => self.respond_txn(now, &key, 501, None, None),
            _ => self.respond_txn(now, &key, 405, Some(("Allow", ALLOW.to_string())), None),
        }
    }

    /// OPTIONS: our capabilities, or 503 while unavailable or refusing new calls (so a load
    /// balancer such as Kamailio's dispatcher routes elsewhere), with a Warning saying why.
    fn on_options(&mut self, now: Instant, key: &TxnKey) {
        let refusal = self.refusal();
        let why = (self.unavailable.clone()).or_else(|| refusal.map(|r| r.warning().to_owned()));
        let code = if why.is_some() { 503 } else { 200 };
        let mut extra = vec![
            ("Allow", ALLOW.to_string()),
            ("Accept", "application/sdp".to_string()),
            ("Supported", SUPPORTED.to_string()),
        ];
        let starting = (self.unavailable.as_ref()).is_some_and(|u| u.starts_with(STARTING));
        let retry_after = (starting.then_some(STARTING_RETRY_AFTER_S))
            .or_else(|| refusal.map(|r| r.retry_after_s()));
        if let Some(s) = retry_after {
            extra.push(("Retry-After", s.to_string()));
        }
        if let Some(why) = why {
            extra.push(("Warning", format!("399 mohd \"{}\"", why.replace('"', "'"))));
        }
        self.respond_txn_multi(now, key, code, &extra, None);
    }

    /// Checks every request gets before its method is looked at. Returns the refusal code.
    fn precheck(&self, req: &Request) -> Option<u16> {
        let scheme = req
            .uri
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if scheme != "sip" && scheme != "sips" {
            return Some(416);
        }
        if SipUri::parse(&req.uri).is_none() {
            return Some(400);
        }
        if req.method != Method::Cancel && !unsupported_options(req).is_empty() {
            return Some(420);
        }
        if matches!(req.method, Method::Invite)
            && req.headers.get("Accept").is_some()
            && !req
                .headers
                .get_all("Accept")
                .flat_map(|v| v.split(','))
                .any(|t| {
                    let t = t
                        .split(';')
                        .next()
                        .unwrap_or_default()
                        .trim()
                        .to_ascii_lowercase();
                    t == "application/sdp" || t == "application/*" || t == "*/*"
                })
        {
            // Our answer is SDP, which the peer says it cannot take (RFC 4475 §3.3.15).
            return Some(406);
        }
        if matches!(req.method, Method::Invite) && !req.body.is_empty() {
            let ctype = req
                .headers
                .get("Content-Type")
                .unwrap_or_default()
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            if ctype != "application/sdp" {
                return Some(415);
            }
            if let Some(enc) = req.headers.get("Content-Encoding")
                && !enc.trim().eq_ignore_ascii_case("identity")
            {
                return Some(415);
            }
        }
        None
    }

    /// A new INVITE: refused early if it cannot become a call (each check answers its own
    /// code), else a `Call` in `Pending` and an `IncomingCall` for the application.
    fn on_invite(
        &mut self,
        now: Instant,
        key: TxnKey,
        req: Request,
        from: SocketAddr,
        local: SocketAddr,
    ) {
        let (Some(call_id), Some(from_hdr), Some((cseq, _))) =
            (req.call_id().map(str::to_string), req.from(), req.cseq())
        else {
            self.respond_txn(now, &key, 400, None, None);
            return;
        };
        let remote_tag = from_hdr.tag().unwrap_or_default().to_string();
        // A merged request (§8.2.2.2): same From tag, Call-ID and CSeq, another transaction.
        if self
            .calls
            .values()
            .any(|c| c.call_id == call_id && c.remote_tag == remote_tag && c.remote_cseq == cseq)
        {
            self.respond_txn(now, &key, 482, None, None);
            return;
        }
        if !self.admit_invite(now, &key, &req, from) {
            return;
        }
        // 100 Trying at once, so the PBX stops retransmitting (§17.2.1).
        self.respond_txn(now, &key, 100, None, None);
        let Ok(session) = self.session_timer_of(now, &key, &req) else {
            return;
        };
        let Some(channel) = self.route_invite(&req, from) else {
            tracing::info!(%from, uri = %req.uri, "no dialplan route: 404");
            self.respond_txn(now, &key, 404, None, None);
            return;
        };
        let Ok(offer) = self.acceptable_offer(now, &key, &req, from, local) else {
            return;
        };
        let id = CallId(self.next_call);
        self.next_call += 1;
        let call = self.new_call(&key, &req, from, local, channel.clone(), offer, session);
        if let Some(t) = self.txns.get_mut(&key) {
            t.call = Some(id);
        }
        self.dialogs
            .insert((call.call_id.clone(), call.local_tag.clone()), id);
        self.calls.insert(id, Box::new(call));
        self.outputs.push_back(Output::Event(Event::IncomingCall {
            call: id,
            channel,
            peer: from,
            local,
            from: from_hdr.uri,
            request_uri: req.uri,
        }));
    }

    /// Digest authentication (401) and the availability gate (503: draining, `max_calls`,
    /// media capacity). False: refused.
    fn admit_invite(
        &mut self,
        now: Instant,
        key: &TxnKey,
        req: &Request,
        from: SocketAddr,
    ) -> bool {
        if let Some(v) = self.verifier.as_mut() {
            match v.check(now, req) {
                Ok(_) => self.guard.on_success(from.ip()),
                Err(why) => {
                    // The first 401 of every call, and stale or replayed nonces: no guess.
                    tracing::debug!(%from, %why, "INVITE not authorised: 401");
                    self.stats.unauthorised += 1;
                    let stale = why.is_stale();
                    if self.count_guess(now, from, &why) {
                        self.stats.banned += 1;
                        if self.guard.config().on_ban == OnBan::Reject {
                            self.respond_txn(now, key, 403, None, None);
                        } else {
                            self.txns.remove(key);
                        }
                        return false;
                    }
                    let Some(v) = self.verifier.as_mut() else {
                        return false;
                    };
                    let extra = v.challenges(now, stale);
                    let extra: Vec<(&str, String)> = extra.into_iter().collect();
                    self.respond_txn_multi(now, key, 401, &extra, None);
                    return false;
                }
            }
        }
        if let Some(why) = self.refusal() {
            tracing::warn!(%from, calls = self.calls.len(), reason = why.label(), "new call refused: 503");
            self.stats.count_refusal(why);
            let extra = [
                ("Retry-After", why.retry_after_s().to_string()),
                ("Warning", format!("399 mohd \"{}\"", why.warning())),
            ];
            self.respond_txn_multi(now, key, 503, &extra, None);
            return false;
        }
        true
    }

    /// A failed authentication: logged as a security event and counted against its source
    /// (and its user name, when configured). True when the source is now banned.
    fn count_guess(
        &mut self,
        now: Instant,
        from: SocketAddr,
        why: &super::digest::AuthFailure,
    ) -> bool {
        let Some(reason) = why.guess() else {
            return false;
        };
        let user = why.user().unwrap_or_default().to_owned();
        log_security(&SecurityEvent::AuthFailed {
            source: from.ip(),
            user: user.clone(),
            reason,
        });
        let configured = (self.config.auth.as_ref()).is_some_and(|a| a.users.contains_key(&user));
        let verdict = (self.guard).on_failure(now, from.ip(), configured.then_some(user.as_str()));
        let Verdict::Banned(duration) = verdict else {
            return false;
        };
        log_security(&SecurityEvent::Ban {
            source: from.ip(),
            user,
            duration,
        });
        true
    }

    /// A request refused for its source or its User-Agent: the security log line, when the
    /// gate lets it through.
    fn refused(&mut self, now: Instant, from: SocketAddr, kind: RefusalKind) {
        self.log_refusal(now, from.ip(), kind);
    }

    fn log_refusal(&mut self, now: Instant, source: IpAddr, kind: RefusalKind) {
        if let Some(line) = self.security_log.refused(now, source, kind) {
            log_security(&line);
        }
    }

    fn is_scanner(&self, req: &Request) -> bool {
        let patterns = &self.config.drop_user_agents;
        if patterns.is_empty() {
            return false;
        }
        req.headers.get_all("User-Agent").any(|ua| {
            let ua = ua.to_ascii_lowercase();
            patterns.iter().any(|p| ua.contains(p.as_str()))
        })
    }

    /// The channel the dialplan gives this INVITE.
    fn route_invite(&self, req: &Request, from: SocketAddr) -> Option<String> {
        let user_of = |uri: &str| SipUri::parse(uri).and_then(|u| u.user);
        let ruri_user = user_of(&req.uri);
        let to_user = req.to().and_then(|t| user_of(&t.uri));
        let from_user = req.from().and_then(|f| user_of(&f.uri));
        self.dialplan
            .route(&RouteRequest {
                ruri_user: ruri_user.as_deref(),
                to_user: to_user.as_deref(),
                from_user: from_user.as_deref(),
                source: from.ip(),
            })
            .map(str::to_string)
    }

    /// The INVITE's SDP offer (`None`: a late offer), refused with 488 when malformed or when
    /// no codec of ours fits, before the application is asked for ports.
    fn acceptable_offer(
        &mut self,
        now: Instant,
        key: &TxnKey,
        req: &Request,
        from: SocketAddr,
        local: SocketAddr,
    ) -> Result<Option<sdp::SessionDescription>, Refused> {
        let transport = self.txns.get(key).map(|t| t.transport).unwrap_or_default();
        let probe = self.local_media(SocketAddr::new(local.ip(), 9), 0, transport);
        if req.body.is_empty() {
            // Our offer will have to be SRTP, whose keys this transport may not carry.
            if probe.answer.srtp == SrtpPolicy::Required && !probe.answer.sdes_allowed {
                tracing::info!(%from, "late offer needs SRTP keys over a plain transport: 488");
                self.refuse_offer(now, key, &NegotiationError::SdesNeedsTls);
                return Err(Refused);
            }
            return Ok(None);
        }
        let Ok(offer) = sdp::parse_bytes(&req.body) else {
            let reason = Some("Not Acceptable Here (malformed SDP)");
            self.respond_txn(now, key, 488, None, reason);
            return Err(Refused);
        };
        if let Err(e) = sdp::answer(&offer, &probe, from) {
            tracing::info!(%from, error = ?e, "offer not acceptable: 488");
            self.refuse_offer(now, key, &e);
            return Err(Refused);
        }
        Ok(Some(offer))
    }

    /// What we answer and offer with, for a call whose RTP is at `local_rtp` and whose
    /// INVITE came over `transport`: SDES keys only over TLS (unless configured otherwise),
    /// and a fresh key of our own.
    fn local_media(
        &mut self,
        local_rtp: SocketAddr,
        session_id: u64,
        transport: Transport,
    ) -> LocalMedia {
        let mut answer = self.config.answer.clone();
        answer.sdes_allowed = transport == Transport::Tls || self.config.srtp_over_plain_transports;
        answer.srtp_key = self.fresh_srtp_key();
        LocalMedia {
            ip: local_rtp.ip(),
            rtp_port: local_rtp.port(),
            session_id,
            session_version: session_id,
            codecs: self.config.codecs.clone(),
            username: "mohd".to_string(),
            answer,
        }
    }

    fn fresh_srtp_key(&mut self) -> SrtpKeySeed {
        let mut key = SrtpKeySeed::default();
        self.rng.fill_bytes(&mut key.0);
        key
    }

    /// Answers a new offer in call `id`'s dialog (re-INVITE, UPDATE). Our SRTP key stays
    /// while the suite does (RFC 4568 §7.1.4 lets either side keep its key, and the peer
    /// decrypts on without a gap); a call turning SRTP, or changing suite, gets a fresh key,
    /// so that no key restarts its packet index or serves two suites.
    fn answer_reoffer(
        &mut self,
        id: CallId,
        offer: &sdp::SessionDescription,
    ) -> Result<(String, MediaParams), NegotiationError> {
        let fresh = self.fresh_srtp_key();
        let c = self.calls.get_mut(&id).ok_or(NegotiationError::NoAudio)?;
        let local = c.local_media.as_mut().ok_or(NegotiationError::NoAudio)?;
        let (text, media) = sdp::answer(offer, local, c.peer)?;
        let suite_now = c.media.and_then(|m| m.srtp).map(|s| s.suite);
        match media.srtp {
            Some(s) if Some(s.suite) != suite_now => {
                local.answer.srtp_key = fresh;
                sdp::answer(offer, local, c.peer)
            }
            _ => Ok((text, media)),
        }
    }

    /// Says what an Opus caller asked for that the channel's one encoding does not give it
    /// (a lower bitrate or playback rate): logged, since every caller gets the same frames.
    fn note_opus_request(id: CallId, media: &MediaParams, ours: u32) {
        let Some(peer) = media.peer_opus else {
            return;
        };
        if peer.send_bitrate(ours) < ours || peer.max_playback_rate < opus::SAMPLE_RATE {
            tracing::info!(
                call = %id,
                maxaveragebitrate = ?peer.max_average_bitrate,
                maxplaybackrate = peer.max_playback_rate,
                sending = ours,
                "Opus: the caller asks for less than the channel's encoding; it gets that encoding"
            );
        }
    }

    /// 488 to an offer we cannot answer, with a `Warning` (RFC 3261 §20.43) saying what we
    /// support, so the PBX's log shows what to change.
    fn refuse_offer(&mut self, now: Instant, key: &TxnKey, error: &NegotiationError) {
        let (code, text) = error.warning(&self.config.codecs);
        let agent = self
            .txns
            .get(key)
            .map_or_else(|| "mohd".to_owned(), |t| fmt_host_port(t.local));
        let warning = format!("{code} {agent} \"{}\"", text.replace('"', "'"));
        let reason = match error {
            NegotiationError::NoCommonCodec => "Not Acceptable Here (no common codec)",
            _ => "Not Acceptable Here",
        };
        self.respond_txn(now, key, 488, Some(("Warning", warning)), Some(reason));
    }

    /// The call an admitted INVITE creates, waiting for the application (`Pending`).
    // Each argument is one outcome of the checks before it; a struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    fn new_call(
        &mut self,
        key: &TxnKey,
        req: &Request,
        from: SocketAddr,
        local: SocketAddr,
        channel: String,
        offer: Option<sdp::SessionDescription>,
        session: Option<SessionTimer>,
    ) -> Call {
        let local_tag = self.random_token(12);
        let to_value = req.headers.get("To").unwrap_or_default();
        let txn = self.txns.get(key);
        let transport = txn.map(|t| t.transport).unwrap_or_default();
        Call {
            transport,
            channel,
            state: CallState::Pending,
            invite_txn: key.clone(),
            peer: from,
            local,
            call_id: req.call_id().unwrap_or_default().to_string(),
            remote_tag: (req.from())
                .and_then(|f| f.tag().map(str::to_string))
                .unwrap_or_default(),
            local_party: format!("{to_value};tag={local_tag}"),
            local_tag,
            remote_party: req.headers.get("From").unwrap_or_default().to_string(),
            remote_target: req.contact().map(|c| dialog_target(&c.uri, from)),
            route_set: req
                .headers
                .list("Record-Route")
                .map(str::to_string)
                .collect(),
            local_contact: dialog_contact(req, local, transport),
            remote_cseq: req.cseq().map(|(n, _)| n).unwrap_or_default(),
            local_cseq: self.rng.random_range(1..10_000),
            offer,
            local_media: None,
            media: None,
            ok_bytes: None,
            ok_dest: txn.map(|t| t.dest).unwrap_or(from),
            ok_retransmit: None,
            timers: TimerTable::default(),
            awaiting_ack_answer: false,
            started: false,
            session: None,
            pending_session: session,
            peer_supports_timer: supports(req, "timer"),
            peer_allows_update: allows(req, "UPDATE"),
            refreshing: false,
        }
    }

    fn on_cancel(&mut self, now: Instant, key: TxnKey, _req: Request) {
        let invite_key = TxnKey {
            method: Method::Invite,
            ..key.clone()
        };
        let Some(invite) = self.txns.get(&invite_key) else {
            self.respond_txn(now, &key, 481, None, None);
            return;
        };
        let pending = invite.state == TxnState::Proceeding;
        let call = invite.call;
        // §9.2: 200 to the CANCEL whether or not it still has an effect.
        self.respond_txn(now, &key, 200, None, None);
        if pending {
            self.respond_txn(now, &invite_key, 487, None, None);
            if let Some(call) = call {
                self.end_call(call, EndReason::Cancelled);
            }
        }
    }

    fn on_ack(&mut self, now: Instant, key: TxnKey, req: Request) {
        // ACK for a non-2xx final: same branch as the INVITE (§17.2.1).
        if let Some(t) = self.txns.get_mut(&key)
            && t.is_invite
            && t.state == TxnState::Completed
        {
            t.state = TxnState::Confirmed;
            t.retransmit = None;
            // Timer I: T4 on unreliable transports, zero on reliable ones.
            t.expire_at = Some(if t.transport.is_reliable() {
                now
            } else {
                now + T4
            });
            self.note_lingering(&key);
            return;
        }
        // ACK for a 2xx: its own transaction, matched to the dialog.
        let Some(id) = self.dialog_of(&req) else {
            self.stats.datagrams_dropped += 1;
            return;
        };
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        if c.state != CallState::Answered && !c.awaiting_ack_answer {
            return; // a retransmitted ACK
        }
        c.state = CallState::Confirmed;
        c.ok_retransmit = None;
        c.ok_bytes = None;
        if c.media.is_none() || c.awaiting_ack_answer {
            // Late offer: the ACK carries the answer to the offer in our 200 OK (RFC 3264 §4).
            c.awaiting_ack_answer = false;
            let negotiated = (sdp::parse_bytes(&req.body).ok())
                .zip(c.local_media.as_ref())
                .and_then(|(a, local)| sdp::negotiate_answer_to(local, &a, c.peer).ok());
            match negotiated {
                Some(media) => {
                    let first = c.media.is_none();
                    c.media = Some(media);
                    let channel = c.channel.clone();
                    if first {
                        c.started = true;
                        self.stats.calls_started += 1;
                        Self::note_opus_request(id, &media, self.config.answer.opus_bitrate);
                        self.outputs.push_back(Output::Event(Event::CallStarted {
                            call: id,
                            channel,
                            media,
                        }));
                    } else {
                        Self::note_opus_request(id, &media, self.config.answer.opus_bitrate);
                        self.outputs
                            .push_back(Output::Event(Event::CallUpdated { call: id, media }));
                    }
                }
                None if c.media.is_none() => {
                    tracing::warn!(call = %id, "ACK carried no usable SDP answer; ending the call");
                    self.send_bye(now, id);
                    self.end_call(id, EndReason::BadAck);
                }
                None => {}
            }
        }
    }

    fn on_in_dialog(&mut self, now: Instant, key: TxnKey, req: Request, _to_tag: String) {
        let Some(id) = self.dialog_of(&req) else {
            self.respond_txn(now, &key, 481, None, None);
            return;
        };
        let cseq = req.cseq().map(|(n, _)| n).unwrap_or_default();
        match req.method {
            Method::Bye => {
                self.respond_txn(now, &key, 200, None, None);
                self.end_call(id, EndReason::RemoteBye);
            }
            Method::Options | Method::Info => self.respond_txn(now, &key, 200, None, None),
            Method::Invite => self.on_reinvite(now, key, req, id, cseq),
            Method::Update => self.on_update(now, key, req, id, cseq),
            Method::Other(_) => self.respond_txn(now, &key, 501, None, None),
            _ => self.respond_txn(now, &key, 405, Some(("Allow", ALLOW.to_string())), None),
        }
    }

    fn on_reinvite(&mut self, now: Instant, key: TxnKey, req: Request, id: CallId, cseq: u32) {
        if !self.cseq_in_order(now, &key, id, cseq) {
            return;
        }
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        if c.state != CallState::Confirmed || c.refreshing {
            // An offer/answer exchange is already in progress (RFC 3261 §14.2, RFC 3311 §5.2).
            self.respond_txn(now, &key, 491, None, None);
            return;
        }
        c.remote_cseq = cseq;
        if let Some(contact) = req.contact() {
            c.remote_target = Some(dialog_target(&contact.uri, c.peer));
        }
        c.peer_allows_update = allows(&req, "UPDATE") || c.peer_allows_update;
        let Ok(session) = self.session_timer_of(now, &key, &req) else {
            return;
        };
        let fresh_key = self.fresh_srtp_key();
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        c.pending_session = session;
        let Some(local) = c.local_media.as_mut() else {
            self.respond_txn(now, &key, 500, None, None);
            return;
        };
        local.session_version = local.session_version.wrapping_add(1);
        let (body, update) = if req.body.is_empty() {
            // A new offer of ours: a new key, should it be SRTP (the answer comes in the ACK).
            local.answer.srtp_key = fresh_key;
            let body = sdp::offer(local);
            c.awaiting_ack_answer = true;
            (body, None)
        } else {
            let Ok(offer) = sdp::parse_bytes(&req.body) else {
                self.respond_txn(now, &key, 488, None, None);
                return;
            };
            match self.answer_reoffer(id, &offer) {
                Ok((text, media)) => {
                    if let Some(c) = self.calls.get_mut(&id) {
                        // The session as it now stands, for our own refreshes.
                        c.offer = Some(offer);
                    }
                    (text, Some(media))
                }
                Err(e) => {
                    tracing::info!(call = %id, error = ?e, "re-offer not acceptable: 488");
                    self.refuse_offer(now, &key, &e);
                    return;
                }
            }
        };
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        if let Some(media) = &update {
            c.media = Some(*media);
        }
        if let Some(t) = self.txns.get_mut(&key) {
            t.call = Some(id);
        }
        let resp = self.ok_response(id, &req, body);
        let bytes = resp.to_bytes();
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        c.answered(now, bytes.clone());
        let (tr, l, d) = (c.transport, c.local, c.ok_dest);
        self.accept_txn(now, &key);
        self.send(tr, l, d, bytes);
        if let Some(media) = update {
            Self::note_opus_request(id, &media, self.config.answer.opus_bitrate);
            self.outputs
                .push_back(Output::Event(Event::CallUpdated { call: id, media }));
        }
    }

    /// The INVITE server transaction sent a 2xx (RFC 6026 Accepted): the call retransmits the
    /// 2xx; the transaction only absorbs retransmitted INVITEs for 64×T1.
    fn accept_txn(&mut self, now: Instant, key: &TxnKey) {
        if let Some(t) = self.txns.get_mut(key) {
            t.state = TxnState::Accepted;
            t.last_response = None;
            t.retransmit = None;
            t.expire_at = Some(now + TRANSACTION_TIMEOUT);
            self.note_lingering(key);
        }
    }

    fn dialog_of(&self, req: &Request) -> Option<CallId> {
        let call_id = req.call_id()?.to_string();
        let tag = req.to()?.tag()?.to_string();
        let id = *self.dialogs.get(&(call_id, tag))?;
        let from_tag = req.from()?.tag().unwrap_or_default().to_string();
        let c = self.calls.get(&id)?;
        (c.remote_tag == from_tag).then_some(id)
    }

    fn send_ok(&mut self, now: Instant, id: CallId) {
        let Some(c) = self.calls.get(&id) else {
            return;
        };
        let Some(local) = c.local_media.clone() else {
            return;
        };
        let Some(invite) = self.txns.get(&c.invite_txn).map(|t| t.request.clone()) else {
            return;
        };
        let (body, media) = match &c.offer {
            Some(offer) => match sdp::answer(offer, &local, c.peer) {
                Ok((text, media)) => (text, Some(media)),
                Err(_) => {
                    self.reject(now, id, 488);
                    return;
                }
            },
            None => (sdp::offer(&local), None),
        };
        let resp = self.ok_response(id, &invite, body);
        let bytes = resp.to_bytes();
        let key = {
            let Some(c) = self.calls.get_mut(&id) else {
                return;
            };
            c.media = media;
            c.answered(now, bytes.clone());
            if let Some(d) = self.config.max_call_duration {
                c.timers.set(CallTimer::MaxDuration, now + d);
            }
            c.invite_txn.clone()
        };
        let (tr, l, d) = match self.calls.get(&id) {
            Some(c) => (c.transport, c.local, c.ok_dest),
            None => return,
        };
        self.accept_txn(now, &key);
        self.send(tr, l, d, bytes);
        if let Some(media) = media
            && let Some(c) = self.calls.get_mut(&id)
        {
            c.started = true;
            let channel = c.channel.clone();
            self.stats.calls_started += 1;
            Self::note_opus_request(id, &media, self.config.answer.opus_bitrate);
            self.outputs.push_back(Output::Event(Event::CallStarted {
                call: id,
                channel,
                media,
            }));
        }
    }

    fn ok_response(&self, id: CallId, req: &Request, sdp_body: String) -> Response {
        let mut resp = self.response_to(req, 200, None);
        if let Some(c) = self.calls.get(&id) {
            resp.headers.set("To", c.local_party.clone());
            for rr in req.headers.get_all("Record-Route") {
                resp.headers.push("Record-Route", rr.to_string());
            }
            resp.headers.push("Contact", c.local_contact.clone());
        }
        resp.headers.push("Allow", ALLOW);
        resp.headers.push("Supported", SUPPORTED);
        if let Some(c) = self.calls.get(&id)
            && let Some(t) = c.pending_session
        {
            t.push_headers(&mut resp.headers, c.peer_supports_timer);
        }
        resp.headers.push("Content-Type", "application/sdp");
        resp.body = sdp_body.into_bytes();
        resp
    }

    /// A final or provisional response to the call's INVITE transaction.
    fn respond_invite(&mut self, now: Instant, id: CallId, code: u16) {
        let Some(c) = self.calls.get(&id) else {
            return;
        };
        let key = c.invite_txn.clone();
        let local_party = c.local_party.clone();
        let Some(t) = self.txns.get(&key) else {
            return;
        };
        let mut resp = self.response_to(&t.request, code, None);
        resp.headers.set("To", local_party);
        self.apply_response_at(now, &key, resp);
    }

    fn respond_txn(
        &mut self,
        now: Instant,
        key: &TxnKey,
        code: u16,
        extra: Option<(&str, String)>,
        reason: Option<&str>,
    ) {
        let extra: Vec<(&str, String)> = extra.into_iter().collect();
        self.respond_txn_multi(now, key, code, &extra, reason);
    }

    fn respond_txn_multi(
        &mut self,
        now: Instant,
        key: &TxnKey,
        code: u16,
        extra: &[(&str, String)],
        reason: Option<&str>,
    ) {
        let Some(t) = self.txns.get(key) else {
            return;
        };
        let mut resp = self.response_to(&t.request, code, reason);
        // A non-2xx final to an INVITE that created a call carries the call's To tag.
        if let Some(c) = t.call.and_then(|c| self.calls.get(&c))
            && t.is_invite
        {
            resp.headers.set("To", c.local_party.clone());
        }
        for (n, v) in extra {
            resp.headers.push(n, v.clone());
        }
        self.apply_response_at(now, key, resp);
    }

    /// Send `resp` within the server transaction `key` and move its state machine.
    fn apply_response_at(&mut self, now: Instant, key: &TxnKey, resp: Response) {
        let code = resp.code;
        let bytes = resp.to_bytes();
        let Some(t) = self.txns.get_mut(key) else {
            return;
        };
        if t.state != TxnState::Proceeding {
            return; // a final response was already sent
        }
        t.last_response = Some(bytes.clone());
        if code >= 200 {
            t.state = TxnState::Completed;
            let reliable = t.transport.is_reliable();
            if t.is_invite {
                // Timer G retransmits until the ACK (unreliable transports only); Timer H gives
                // up waiting for it (§17.2.1).
                t.retransmit = Some(Retransmit::new(now, reliable, TRANSACTION_TIMEOUT));
            } else {
                // Timer J: absorb retransmissions for 64*T1 (zero on reliable transports).
                t.expire_at = Some(if reliable {
                    now
                } else {
                    now + TRANSACTION_TIMEOUT
                });
            }
        }
        let (tr, l, d) = (t.transport, t.local, t.dest);
        let lingering = t.expire_at.is_some();
        self.send(tr, l, d, bytes);
        if lingering {
            self.note_lingering(key);
        }
    }

    /// RFC 3261 §8.2.6: copy Via, From, To, Call-ID, CSeq; add the To tag; received/rport.
    fn response_to(&self, req: &Request, code: u16, reason: Option<&str>) -> Response {
        let mut headers = Headers::new();
        for via in req.headers.list("Via") {
            headers.push("Via", via.to_string());
        }
        for name in ["From", "To", "Call-ID", "CSeq"] {
            if let Some(v) = req.headers.get(name) {
                headers.push(name, v.to_string());
            }
        }
        if code > 100
            && let Some(to) = req.headers.get("To")
            && NameAddr::parse(to).is_some_and(|t| t.tag().is_none())
        {
            // Any response but 100 carries a To tag (§8.2.6.2). Calls override it with theirs.
            let tag = stable_tag(req);
            headers.set_in_place("To", format!("{to};tag={tag}"));
        }
        headers.push("Server", self.config.user_agent.clone());
        Response {
            code,
            reason: reason.unwrap_or(msg::reason_phrase(code)).to_string(),
            headers,
            body: Vec::new(),
        }
    }

    fn send_bye(&mut self, now: Instant, id: CallId) {
        let answered = self
            .calls
            .get(&id)
            .is_some_and(|c| matches!(c.state, CallState::Answered | CallState::Confirmed));
        if answered {
            self.send_in_dialog(now, id, Method::Bye, &[], None);
        }
    }

    /// A session refresh (RFC 4028 §7.4 as refresher): UPDATE when the peer allows it (no
    /// offer/answer needed), else a re-INVITE carrying our current SDP unchanged.
    fn send_refresh(&mut self, now: Instant, id: CallId) {
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        if c.refreshing || c.state != CallState::Confirmed {
            return;
        }
        let Some(t) = c.session else {
            return;
        };
        c.refreshing = true;
        let headers = vec![
            (
                "Session-Expires",
                format!("{};refresher=uas", t.interval.as_secs()),
            ),
            ("Supported", SUPPORTED.to_string()),
        ];
        if c.peer_allows_update {
            self.send_in_dialog(now, id, Method::Update, &headers, None);
        } else {
            // The session description unchanged: our answer to their offer, else our offer.
            let body = c.local_media.as_ref().map(|l| {
                c.offer
                    .as_ref()
                    .and_then(|o| sdp::answer(o, l, c.peer).ok())
                    .map(|(text, _)| text)
                    .unwrap_or_else(|| sdp::offer(l))
            });
            self.send_in_dialog(now, id, Method::Invite, &headers, body);
        }
    }

    /// Build an in-dialog request from our side of the dialog (§12.2.1.1).
    fn in_dialog_request(
        &mut self,
        id: CallId,
        method: Method,
        cseq: Option<u32>,
        branch: &str,
    ) -> Option<(Request, SocketAddr, Transport, SocketAddr)> {
        let user_agent = self.config.user_agent.clone();
        let c = self.calls.get_mut(&id)?;
        let cseq = match cseq {
            Some(n) => n,
            None => {
                c.local_cseq = c.local_cseq.wrapping_add(1) & 0x7fff_ffff;
                c.local_cseq
            }
        };
        // Remote target, through the route set (loose routing). We send only to IP literals;
        // a host name falls back to where the INVITE came from.
        let target = c
            .remote_target
            .clone()
            .unwrap_or_else(|| format!("sip:{}", c.peer));
        let next_hop = c
            .route_set
            .first()
            .and_then(|r| NameAddr::parse(r))
            .map(|n| n.uri)
            .unwrap_or_else(|| target.clone());
        let transport = c.transport;
        // Over TCP/TLS, reuse the connection the INVITE came on (as RFC 5923 would): a PBX
        // behind NAT or a firewall may not accept a new one.
        let dest = if transport.is_reliable() {
            c.peer
        } else {
            SipUri::parse(&next_hop)
                .and_then(|u| u.socket_addr())
                .unwrap_or(c.peer)
        };
        let mut headers = Headers::new();
        headers.push(
            "Via",
            format!(
                "SIP/2.0/{} {};branch={branch};rport",
                transport.via_name(),
                fmt_host_port(c.local)
            ),
        );
        headers.push("Max-Forwards", "70");
        for r in &c.route_set {
            headers.push("Route", r.clone());
        }
        headers.push("From", c.local_party.clone());
        headers.push("To", c.remote_party.clone());
        headers.push("Call-ID", c.call_id.clone());
        headers.push("CSeq", format!("{cseq} {method}"));
        if method != Method::Ack && method != Method::Bye {
            headers.push("Contact", c.local_contact.clone());
            headers.push("Allow", ALLOW);
        }
        headers.push("User-Agent", user_agent);
        let local = c.local;
        Some((
            Request {
                method,
                uri: target,
                headers,
                body: Vec::new(),
            },
            dest,
            transport,
            local,
        ))
    }

    fn send_in_dialog(
        &mut self,
        now: Instant,
        id: CallId,
        method: Method,
        extra: &[(&str, String)],
        body: Option<String>,
    ) {
        let branch = format!("z9hG4bK{}", self.random_token(16));
        let Some((mut req, dest, transport, local)) =
            self.in_dialog_request(id, method.clone(), None, &branch)
        else {
            return;
        };
        for (n, v) in extra {
            req.headers.push(n, v.clone());
        }
        if let Some(body) = body {
            req.headers.push("Content-Type", "application/sdp");
            req.body = body.into_bytes();
        }
        let link = Link {
            transport,
            local,
            dest,
        };
        let txn = ClientTxn::new(now, method, branch.clone(), req.to_bytes(), link);
        self.outputs.push_back(Output::Transmit(txn.transmit()));
        let request = OutgoingRequest {
            txn,
            call: Some(id),
            ack: None,
        };
        self.client_txns.insert(branch, request);
    }

    /// A response to one of our requests (matched by Via branch, §17.1.3).
    fn on_response(&mut self, now: Instant, resp: Response) {
        let Some(branch) = resp.top_via().and_then(|v| v.branch().map(str::to_string)) else {
            self.stats.datagrams_dropped += 1;
            return;
        };
        let Some(r) = self.client_txns.get_mut(&branch) else {
            self.stats.datagrams_dropped += 1;
            return;
        };
        if resp.code < 200 {
            r.txn.on_provisional();
            return;
        }
        if let Some(ack) = r.ack.clone() {
            // A retransmitted 2xx: our ACK was lost.
            if resp.is_success() {
                let transmit = r.txn.transmit_bytes(ack);
                self.outputs.push_back(Output::Transmit(transmit));
            }
            return;
        }
        let (method, call) = (r.txn.method.clone(), r.call);
        if method == Method::Invite && resp.is_success() {
            self.ack_reinvite_ok(now, &branch, &resp);
        } else {
            self.client_txns.remove(&branch);
        }
        match call {
            Some(id) if method != Method::Bye => self.on_refresh_response(now, id, &resp),
            _ => {}
        }
    }

    /// ACK the 2xx to our re-INVITE ourselves (§13.2.2.4), and keep the ACK for the 2xx's
    /// retransmissions for 64×T1.
    fn ack_reinvite_ok(&mut self, now: Instant, branch: &str, resp: &Response) {
        let call = self.client_txns.get(branch).and_then(|r| r.call);
        let cseq = resp.cseq().map(|(n, _)| n);
        let ack_branch = format!("z9hG4bK{}", self.random_token(16));
        let ack = call.and_then(|id| self.in_dialog_request(id, Method::Ack, cseq, &ack_branch));
        let (Some((ack, dest, tr, local)), Some(r)) = (ack, self.client_txns.get_mut(branch))
        else {
            self.client_txns.remove(branch);
            return;
        };
        let bytes = ack.to_bytes();
        r.ack = Some(bytes.clone());
        r.txn.linger(now, TRANSACTION_TIMEOUT);
        self.send(tr, local, dest, bytes);
    }

    /// The final answer to our session refresh (UPDATE or re-INVITE).
    fn on_refresh_response(&mut self, now: Instant, id: CallId, resp: &Response) {
        let min_se = self.config.min_session_expires;
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        c.refreshing = false;
        if resp.is_success() {
            if let Some(t) = c.session.as_mut() {
                t.adopt_response(resp, min_se);
            }
            c.restart_session_timer(now);
        } else if matches!(resp.code, 408 | 481) {
            // The dialog is gone on the other side (RFC 3261 §12.2.1.2).
            let code = resp.code;
            tracing::info!(call = %id, code, "session refresh refused; ending the call");
            if code == 408 {
                self.send_bye(now, id);
            }
            self.end_call(id, EndReason::RefreshFailed(code));
        }
    }

    /// In-dialog UPDATE (RFC 3311): a session refresh, and possibly a new offer.
    fn on_update(&mut self, now: Instant, key: TxnKey, req: Request, id: CallId, cseq: u32) {
        if !self.cseq_in_order(now, &key, id, cseq) {
            return;
        }
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        if !req.body.is_empty() && (c.refreshing || c.awaiting_ack_answer) {
            self.respond_txn(now, &key, 491, None, None);
            return;
        }
        c.remote_cseq = cseq;
        if let Some(contact) = req.contact() {
            c.remote_target = Some(dialog_target(&contact.uri, c.peer));
        }
        let Ok(session) = self.session_timer_of(now, &key, &req) else {
            return;
        };
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        let mut body = None;
        let mut update = None;
        if !req.body.is_empty() {
            let (Ok(offer), Some(local)) = (sdp::parse_bytes(&req.body), c.local_media.as_mut())
            else {
                self.respond_txn(now, &key, 488, None, None);
                return;
            };
            local.session_version = local.session_version.wrapping_add(1);
            match self.answer_reoffer(id, &offer) {
                Ok((text, media)) => {
                    if let Some(c) = self.calls.get_mut(&id) {
                        c.media = Some(media);
                        c.offer = Some(offer);
                    }
                    body = Some(text);
                    update = Some(media);
                }
                Err(e) => {
                    tracing::info!(call = %id, error = ?e, "UPDATE offer not acceptable: 488");
                    self.refuse_offer(now, &key, &e);
                    return;
                }
            }
        }
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        c.session = session;
        c.restart_session_timer(now);
        let (local_party, local_contact) = (c.local_party.clone(), c.local_contact.clone());
        let Some(t) = self.txns.get(&key) else {
            return;
        };
        let mut resp = self.response_to(&t.request, 200, None);
        resp.headers.set("To", local_party);
        resp.headers.push("Contact", local_contact);
        resp.headers.push("Supported", SUPPORTED);
        if let Some(t) = session {
            t.push_headers(&mut resp.headers, supports(&req, "timer"));
        }
        if let Some(b) = body {
            resp.headers.push("Content-Type", "application/sdp");
            resp.body = b.into_bytes();
        }
        self.apply_response_at(now, &key, resp);
        if let Some(media) = update {
            Self::note_opus_request(id, &media, self.config.answer.opus_bitrate);
            self.outputs
                .push_back(Output::Event(Event::CallUpdated { call: id, media }));
        }
    }

    /// An in-dialog request's CSeq must grow (§12.2.2); else 500. False: refused.
    fn cseq_in_order(&mut self, now: Instant, key: &TxnKey, id: CallId, cseq: u32) -> bool {
        let last = self.calls.get(&id).map_or(0, |c| c.remote_cseq);
        if cseq <= last {
            let reason = Some("Server Internal Error (CSeq out of order)");
            self.respond_txn(now, key, 500, None, reason);
            return false;
        }
        true
    }

    /// The session timer a request asks for (RFC 4028), or 422 when its interval is below our
    /// Min-SE.
    fn session_timer_of(
        &mut self,
        now: Instant,
        key: &TxnKey,
        req: &Request,
    ) -> Result<Option<SessionTimer>, Refused> {
        negotiate_session_timer(&self.config, req).map_err(|e| {
            let min_se = e.min_se.to_string();
            self.respond_txn(now, key, 422, Some(("Min-SE", min_se)), None);
            Refused
        })
    }

    fn end_call(&mut self, id: CallId, reason: EndReason) {
        if let Some(c) = self.calls.remove(&id) {
            self.dialogs
                .remove(&(c.call_id.clone(), c.local_tag.clone()));
            self.stats.calls_ended += 1;
            self.outputs
                .push_back(Output::Event(Event::CallEnded { call: id, reason }));
        }
    }

    fn send(&mut self, transport: Transport, local: SocketAddr, to: SocketAddr, data: Vec<u8>) {
        self.outputs.push_back(Output::Transmit(Transmit {
            transport,
            local,
            to,
            data,
        }));
    }

    fn random_token(&mut self, len: usize) -> String {
        const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        (0..len)
            .map(|_| ALPHABET[self.rng.random_range(0..ALPHABET.len())] as char)
            .collect()
    }
}

/// Where a response goes (RFC 3261 §18.2.2 for unreliable transports, RFC 3581 rport): the
/// source IP always (it is what `received` would say), the source port when `rport` was asked,
/// else the sent-by port or 5060. `maddr` is ignored: we never send to an address we were not
/// contacted from.
/// [`response_dest`], or the source itself when the request has no Via to follow.
fn dest_of(req: &Request, from: SocketAddr, transport: Transport) -> SocketAddr {
    response_dest(req, from, transport).unwrap_or(from)
}

/// The security log line (documented in the README; `examples/fail2ban` matches it), under its
/// own target so that `RUST_LOG=mohd::security=warn` keeps it alone.
fn log_security(event: &SecurityEvent) {
    tracing::warn!(target: "mohd::security", "{event}");
}

fn response_dest(req: &Request, from: SocketAddr, transport: Transport) -> Option<SocketAddr> {
    if transport.is_reliable() {
        // §18.2.2: over the connection the request came in on.
        return Some(from);
    }
    let via = req.top_via()?;
    if via.param("rport").is_some() {
        return Some(from);
    }
    Some(SocketAddr::new(from.ip(), via.port.unwrap_or(5060)))
}

const MAX_SESSION_EXPIRES_S: u64 = 86_400;

/// Our Contact for the dialog `invite` creates. A `sips:` URI exactly when RFC 3261 asks for
/// one: the INVITE's Request-URI, its top Record-Route or its Contact was SIPS (§12.1.1 for our
/// 2xx; §8.1.1.8 for our own requests, whose Request-URI is that Contact and whose top Route is
/// that Record-Route). Otherwise `sip:`, even over TLS: a peer that dialled `sip:` may not
/// handle `sips:` at all (baresip ends the call on it). The transport parameter names the
/// transport the INVITE came over, so the peer's requests come back on it; `sips:` over TLS
/// implies it (RFC 5630 §3.1.3 deprecates `transport=tls` there).
fn dialog_contact(invite: &Request, local: SocketAddr, transport: Transport) -> String {
    let is_sips = |uri: &str| SipUri::parse(uri).is_some_and(|u| u.scheme == "sips");
    let top_record_route = invite.headers.list("Record-Route").next();
    let sips = is_sips(&invite.uri)
        || top_record_route
            .and_then(NameAddr::parse)
            .is_some_and(|n| is_sips(&n.uri))
        || invite.contact().is_some_and(|c| is_sips(&c.uri));
    // The user part is decoded; one that would need escaping is left out rather than escaped.
    let printable = |u: &str| {
        u.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.!~*'()&=+$,".contains(c))
    };
    let user = SipUri::parse(&invite.uri)
        .and_then(|u| u.user)
        .filter(|u| printable(u))
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    let scheme = if sips { "sips" } else { "sip" };
    let transport_param = match transport {
        Transport::Udp => "",
        Transport::Tcp => ";transport=tcp",
        Transport::Tls if sips => "",
        Transport::Tls => ";transport=tls",
    };
    format!("<{scheme}:{user}{}{transport_param}>", fmt_host_port(local))
}

/// The remote target for in-dialog requests: the Contact URI without its headers
/// (§19.1.5 forbids them in a Request-URI); a URI we cannot parse falls back to the address
/// the request came from, so our BYE is always a well-formed request.
fn dialog_target(uri: &str, peer: SocketAddr) -> String {
    let base = uri.split('?').next().unwrap_or_default();
    if SipUri::parse(base).is_some() && !base.contains([' ', '\t', '<', '>']) {
        base.to_string()
    } else {
        format!("sip:{}", fmt_host_port(peer))
    }
}

/// RFC 4028 §9 as UAS. `Err` carries our Min-SE for a 422.
/// The request was refused (the response is out).
struct Refused;

/// A Session-Expires below our Min-SE (RFC 4028 §8.1): answered 422 with our minimum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("session interval below our minimum of {min_se} s")]
struct IntervalTooBrief {
    min_se: u64,
}

fn negotiate_session_timer(
    config: &EndpointConfig,
    req: &Request,
) -> Result<Option<SessionTimer>, IntervalTooBrief> {
    let Some(se) = req.headers.get("Session-Expires") else {
        return Ok(None);
    };
    let mut parts = se.split(';');
    let Some(secs) = parts.next().and_then(|v| v.trim().parse::<u64>().ok()) else {
        return Ok(None);
    };
    let min = config.min_session_expires.as_secs();
    if secs < min {
        return Err(IntervalTooBrief { min_se: min });
    }
    // A UAS may shorten the interval (RFC 4028 §9); a day is plenty and keeps the arithmetic
    // on Instants far from overflow.
    let secs = secs.min(MAX_SESSION_EXPIRES_S);
    let refresher = parts
        .filter_map(|p| p.split_once('='))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case("refresher"))
        .map(|(_, v)| v.trim().to_ascii_lowercase());
    let we_refresh = match refresher.as_deref() {
        Some("uas") => true,
        Some("uac") => false,
        // Unset: a UAC that supports timers refreshes; one that does not cannot, so we do.
        _ => !supports(req, "timer"),
    };
    Ok(Some(SessionTimer {
        interval: Duration::from_secs(secs),
        we_refresh,
    }))
}

fn list_contains(req: &Request, header: &str, token: &str) -> bool {
    req.headers
        .get_all(header)
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn supports(req: &Request, option: &str) -> bool {
    list_contains(req, "Supported", option) || list_contains(req, "Require", option)
}

fn allows(req: &Request, method: &str) -> bool {
    list_contains(req, "Allow", method)
}

fn unsupported_options(req: &Request) -> Vec<String> {
    req.headers
        .get_all("Require")
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && !s.eq_ignore_ascii_case("timer"))
        .collect()
}

/// A To tag for responses outside a call (OPTIONS, errors) that is the same for retransmissions.
fn stable_tag(req: &Request) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    req.call_id().hash(&mut h);
    req.headers.get("Via").hash(&mut h);
    req.headers.get("CSeq").hash(&mut h);
    format!("{:012x}", h.finish() & 0xffff_ffff_ffff)
}

fn fmt_host_port(addr: SocketAddr) -> String {
    match addr.ip() {
        IpAddr::V4(ip) => format!("{ip}:{}", addr.port()),
        IpAddr::V6(ip) => format!("[{ip}]:{}", addr.port()),
    }
}
