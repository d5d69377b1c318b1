//! The REGISTER client (RFC 3261 §10, with the non-INVITE client transaction of §17.1.2),
//! sans-IO: mohd registering as an extension on a PBX.
//!
//! Owns one binding: resolving the registrar (asked of the shell with [`Output::Resolve`], since
//! DNS is I/O), sending REGISTER and retransmitting it (Timer E) until a response or Timer F,
//! answering digest challenges ([`super::digest`]), refreshing before the binding expires, and
//! backing off after failures and retrying forever. Call-ID and From tag are kept for the life of
//! the binding and CSeq counts up across refreshes (§10.2.4).
//!
//! Same contract as the endpoint: after every `start`, `handle_*` or `unregister`, drain
//! [`Registration::poll_output`], then call [`Registration::handle_timeout`] at
//! [`Registration::poll_timeout`]. State changes are logged here (tracing) so every shell logs
//! them alike; [`Registration::state`] is for whoever wants to show them.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::client_txn::{ClientTxn, Link};
use super::digest::{self, Challenge, ChallengeKind, RequestParts};
use super::endpoint::{Transmit, Transport};
use super::msg::{self, Headers, Message, Method, NameAddr, Request, Response, SipUri};
use super::timer::{Step, TRANSACTION_TIMEOUT};

/// First retry delay after a failure; doubles per failure up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_secs(5);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Refresh this long before expiry, or at half the interval if that is later.
const REFRESH_MARGIN: Duration = Duration::from_secs(30);
/// Challenges (401/407/423) answered within one attempt before calling it a failure, so two
/// confused servers cannot ping-pong forever.
const MAX_RETRIES_PER_ATTEMPT: u32 = 4;
/// A registrar's Retry-After is honoured up to this.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(3600);
/// Old transactions whose late responses are still ours to swallow.
const RECENT_BRANCHES: usize = 8;

/// Why the shell could not turn the registrar's host into a [`Route`].
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The resolver failed.
    #[error("{0}")]
    Lookup(#[from] std::io::Error),
    #[error("DNS timed out")]
    TimedOut,
    #[error("no address")]
    NoAddress,
    /// The OS has no route to the registrar's address.
    #[error("no route to {0}")]
    NoRoute(SocketAddr),
    /// We listen on no SIP socket of the registrar's address family.
    #[error("no SIP socket of its address family (IPv4/IPv6) to send from")]
    NoSocketForFamily,
}

/// One `[[registration]]`.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistrationConfig {
    /// `sip:host[:port]` or `sips:…`; the host may be an IP literal or a name (the shell resolves
    /// it). No user part: the Request-URI of a REGISTER names the domain (§10.2).
    pub registrar: String,
    /// The extension: the user part of the address-of-record.
    pub user: String,
    /// The name to authenticate as, when the PBX wants another than `user`.
    pub auth_user: Option<String>,
    pub password: String,
    /// The AOR's domain; defaults to the registrar's host.
    pub domain: Option<String>,
    /// Only answer challenges from this realm (any realm when unset).
    pub realm: Option<String>,
    /// The binding lifetime asked for; the registrar may shorten it (or lengthen it with 423).
    pub expires: Duration,
    /// The user part of our Contact; defaults to `user`.
    pub contact_user: Option<String>,
    pub transport: Transport,
}

/// Without the password, so that a debug print of a config cannot leak it into a log.
impl std::fmt::Debug for RegistrationConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistrationConfig")
            .field("registrar", &self.registrar)
            .field("user", &self.user)
            .field("auth_user", &self.auth_user)
            .field("domain", &self.domain)
            .field("realm", &self.realm)
            .field("expires", &self.expires)
            .field("contact_user", &self.contact_user)
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    #[error("registrar {0:?} is not a sip: or sips: URI with a host")]
    BadRegistrar(String),
}

/// Where REGISTERs go and from which local address (the shell's answer to [`Output::Resolve`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The registrar's address.
    pub to: SocketAddr,
    /// Our address towards it: the SIP socket's port and the local IP the OS routes from. It
    /// is put in Via and Contact, so it is where the PBX will send its INVITEs.
    pub local: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Not started, or unregistered at shutdown.
    Unregistered,
    /// The first REGISTER (or the one after an expiry) is on its way.
    Registering,
    /// The registrar accepted the binding until `expires_at`; a refresh may be in flight.
    Registered { expires_at: Instant },
    /// The last attempt failed; the next one starts at `retry_at`.
    Failed { reason: String, retry_at: Instant },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Transmit(Transmit),
    /// Resolve `host` (a name or an IP literal) and call [`Registration::handle_resolved`].
    Resolve {
        host: String,
        port: u16,
        transport: Transport,
    },
}

/// One REGISTER in flight.
#[derive(Debug)]
struct Attempt {
    txn: ClientTxn,
    /// Credentials sent in it: (header kind, realm, nonce).
    sent: Vec<(ChallengeKind, String, String)>,
    /// The expiry asked for (0: unregistering).
    expires: u32,
}

#[derive(Debug)]
struct AuthSession {
    kind: ChallengeKind,
    challenge: Challenge,
    /// Requests sent with this nonce so far.
    nc: u32,
}

pub struct Registration {
    config: RegistrationConfig,
    user_agent: String,
    rng: StdRng,
    host: String,
    port: u16,
    request_uri: String,
    aor: String,
    call_id: String,
    from_tag: String,
    cseq: u32,
    /// The expiry we ask for, in seconds (raised by a 423's Min-Expires).
    expires: u32,
    state: State,
    route: Option<Route>,
    /// Resolve again before the next attempt (after any failure: the PBX may have moved).
    resolve: bool,
    resolve_deadline: Option<Instant>,
    txn: Option<Attempt>,
    recent: VecDeque<String>,
    auth: Vec<AuthSession>,
    retries_this_attempt: u32,
    failures: u32,
    next_attempt: Option<Instant>,
    unregistering: bool,
    outputs: VecDeque<Output>,
}

impl Registration {
    pub fn new(config: RegistrationConfig, seed: u64) -> Result<Registration, RegisterError> {
        let uri = SipUri::parse(&config.registrar)
            .filter(|u| u.user.is_none())
            .ok_or_else(|| RegisterError::BadRegistrar(config.registrar.clone()))?;
        let default_port = if uri.scheme == "sips" || config.transport == Transport::Tls {
            5061
        } else {
            5060
        };
        let host = uri
            .host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let domain = config.domain.clone().unwrap_or_else(|| uri.host.clone());
        let scheme = if uri.scheme == "sips" { "sips" } else { "sip" };
        let aor = format!("{scheme}:{}@{domain}", config.user);
        let request_uri = config.registrar.trim().to_string();
        let mut rng = StdRng::seed_from_u64(seed);
        let call_id = format!("{}@mohd", token(&mut rng, 20));
        let from_tag = token(&mut rng, 12);
        let cseq = rng.random_range(1..10_000);
        let expires = u32::try_from(config.expires.as_secs()).unwrap_or(u32::MAX);
        Ok(Registration {
            user_agent: format!("mohd/{}", env!("CARGO_PKG_VERSION")),
            host,
            port: uri.port.unwrap_or(default_port),
            request_uri,
            aor,
            call_id,
            from_tag,
            cseq,
            expires,
            state: State::Unregistered,
            route: None,
            resolve: true,
            resolve_deadline: None,
            txn: None,
            recent: VecDeque::new(),
            auth: Vec::new(),
            retries_this_attempt: 0,
            failures: 0,
            next_attempt: None,
            unregistering: false,
            outputs: VecDeque::new(),
            config,
            rng,
        })
    }

    /// Sent as `User-Agent`.
    pub fn set_user_agent(&mut self, user_agent: impl Into<String>) {
        self.user_agent = user_agent.into();
    }

    /// The address-of-record, e.g. `sip:moh@pbx.example.com`, for logs.
    pub fn aor(&self) -> &str {
        &self.aor
    }

    pub fn registrar(&self) -> &str {
        &self.request_uri
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Begin registering.
    pub fn start(&mut self, now: Instant) {
        self.unregistering = false;
        self.begin_attempt(now);
    }

    /// Remove the binding (REGISTER with Expires: 0), e.g. at shutdown, and stop refreshing.
    pub fn unregister(&mut self, now: Instant) {
        self.next_attempt = None;
        self.resolve_deadline = None;
        let bound = matches!(self.state, State::Registered { .. }) || self.txn.is_some();
        self.unregistering = true;
        match self.route {
            Some(_) if bound => {
                self.retries_this_attempt = 0;
                self.send_register(now);
            }
            _ => {
                // Nothing bound: nothing to remove, nothing worth a log line.
                self.txn = None;
                self.state = State::Unregistered;
            }
        }
    }

    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let txn = self.txn.iter().map(|a| a.txn.next_timeout());
        let expiry = match self.state {
            State::Registered { expires_at } => Some(expires_at),
            _ => None,
        };
        txn.chain(
            [self.next_attempt, self.resolve_deadline, expiry]
                .into_iter()
                .flatten(),
        )
        .min()
    }

    /// The shell's answer to [`Output::Resolve`].
    pub fn handle_resolved(&mut self, now: Instant, result: Result<Route, ResolveError>) {
        if self.resolve_deadline.take().is_none() {
            return; // an answer nobody waits for any more
        }
        match result {
            Ok(route) => {
                self.route = Some(route);
                self.resolve = false;
                self.send_register(now);
            }
            Err(e) => {
                let reason = format!("cannot resolve {}: {e}", self.host);
                self.fail(now, reason, None);
            }
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.resolve_deadline.is_some_and(|d| d <= now) {
            self.resolve_deadline = None;
            let reason = format!("resolving {} took too long", self.host);
            self.fail(now, reason, None);
        }
        if let Some(a) = &mut self.txn {
            match a.txn.on_timeout(now) {
                Step::Fire => {
                    let transmit = a.txn.transmit();
                    self.outputs.push_back(Output::Transmit(transmit));
                }
                Step::GiveUp => {
                    // Timer F.
                    self.txn = None;
                    if self.unregistering {
                        self.set_unregistered();
                    } else {
                        self.fail(now, "no response from the registrar".to_string(), None);
                    }
                }
                Step::Idle => {}
            }
        }
        if let State::Registered { expires_at } = self.state
            && expires_at <= now
        {
            tracing::warn!(aor = %self.aor, registrar = %self.request_uri, "registration expired without a successful refresh");
            self.state = State::Registering;
        }
        if self.next_attempt.is_some_and(|at| at <= now) {
            self.next_attempt = None;
            self.begin_attempt(now);
        }
    }

    /// Whether `resp` answers one of our REGISTERs (the current one or a recent one).
    pub fn owns(&self, resp: &Response) -> bool {
        let Some(branch) = resp.top_via().and_then(|v| v.branch().map(str::to_string)) else {
            return false;
        };
        self.txn.as_ref().is_some_and(|a| a.txn.branch == branch) || self.recent.contains(&branch)
    }

    /// Feed a response. Returns false when it is not ours (so it belongs to the endpoint).
    pub fn handle_response(&mut self, now: Instant, resp: &Response) -> bool {
        if !self.owns(resp) {
            return false;
        }
        let current = resp
            .top_via()
            .and_then(|v| v.branch().map(str::to_string))
            .is_some_and(|b| self.txn.as_ref().is_some_and(|a| a.txn.branch == b));
        if !current || resp.cseq().is_none_or(|(_, m)| m != Method::Register) {
            return true; // a late retransmission of an answered transaction
        }
        if resp.code < 200 {
            if let Some(a) = &mut self.txn {
                a.txn.on_provisional();
            }
            return true;
        }
        let Some(txn) = self.txn.take() else {
            return true;
        };
        self.remember(txn.txn.branch.clone());
        match resp.code {
            200..=299 => self.on_success(now, resp, &txn),
            401 | 407 => self.on_challenge(now, resp, &txn),
            423 => {
                let min = resp
                    .headers
                    .get("Min-Expires")
                    .and_then(|v| v.trim().parse::<u32>().ok());
                match min {
                    Some(m) if m > txn.expires && !self.unregistering => {
                        tracing::info!(aor = %self.aor, min_expires = m, "registrar wants a longer interval (423)");
                        self.expires = m;
                        self.retry_in_attempt(now, "423 Interval Too Brief");
                    }
                    _ => self.final_failure(now, resp),
                }
            }
            _ => self.final_failure(now, resp),
        }
        true
    }

    fn on_success(&mut self, now: Instant, resp: &Response, txn: &Attempt) {
        if self.unregistering {
            self.set_unregistered();
            return;
        }
        let granted = self.granted_expires(resp).unwrap_or(txn.expires);
        if granted == 0 {
            self.fail(
                now,
                "the registrar granted no time (expires=0)".to_string(),
                None,
            );
            return;
        }
        let granted = Duration::from_secs(u64::from(granted));
        let expires_at = now + granted;
        let was_registered = matches!(self.state, State::Registered { .. });
        self.state = State::Registered { expires_at };
        self.failures = 0;
        self.next_attempt = Some(now + refresh_delay(granted));
        if was_registered {
            tracing::debug!(aor = %self.aor, expires_s = granted.as_secs(), "registration refreshed");
        } else {
            tracing::info!(aor = %self.aor, registrar = %self.request_uri, expires_s = granted.as_secs(), "registered");
        }
    }

    fn on_challenge(&mut self, now: Instant, resp: &Response, txn: &Attempt) {
        let challenges: Vec<(ChallengeKind, Challenge)> = Challenge::from_response(resp)
            .into_iter()
            .filter(|(_, c)| self.config.realm.as_ref().is_none_or(|r| *r == c.realm))
            .collect();
        if challenges.is_empty() {
            let reason = format!(
                "{} {} without a digest challenge we can answer",
                resp.code, resp.reason
            );
            self.fail(now, reason, None);
            return;
        }
        for (kind, c) in &challenges {
            let sent_this_nonce = txn
                .sent
                .iter()
                .any(|(k, realm, nonce)| k == kind && *realm == c.realm && *nonce == c.nonce);
            if sent_this_nonce && !c.stale {
                // Our answer to this very nonce was refused: the password (or user) is wrong.
                self.auth.clear();
                let reason = format!(
                    "bad credentials for realm {:?} ({} {})",
                    c.realm, resp.code, resp.reason
                );
                self.fail(now, reason, None);
                return;
            }
        }
        for (kind, c) in challenges {
            self.auth
                .retain(|s| !(s.kind == kind && s.challenge.realm == c.realm));
            self.auth.push(AuthSession {
                kind,
                challenge: c,
                nc: 0,
            });
        }
        self.retry_in_attempt(now, "challenged");
    }

    /// Another REGISTER within the same attempt (after a challenge or a 423).
    fn retry_in_attempt(&mut self, now: Instant, why: &str) {
        self.retries_this_attempt += 1;
        if self.retries_this_attempt > MAX_RETRIES_PER_ATTEMPT {
            self.fail(now, format!("gave up after repeated {why}"), None);
            return;
        }
        self.send_register(now);
    }

    fn final_failure(&mut self, now: Instant, resp: &Response) {
        if self.unregistering {
            self.set_unregistered();
            return;
        }
        let retry_after = resp
            .headers
            .get("Retry-After")
            .and_then(|v| v.split([';', '(']).next())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s).min(RETRY_AFTER_MAX));
        self.fail(now, format!("{} {}", resp.code, resp.reason), retry_after);
    }

    /// The lifetime the registrar gave our binding: our Contact's expires, else the Expires
    /// header (§10.2.4). `None`: the response does not say.
    fn granted_expires(&self, resp: &Response) -> Option<u32> {
        let ours = self.route.map(|r| self.contact_uri(r.local));
        let contacts: Vec<NameAddr> = resp
            .headers
            .list("Contact")
            .filter_map(NameAddr::parse)
            .collect();
        let expires_of = |c: &NameAddr| {
            c.params
                .iter()
                .find(|(n, _)| n == "expires")
                .and_then(|(_, v)| v.as_deref()?.trim().parse::<u32>().ok())
        };
        let mine = contacts
            .iter()
            .find(|c| ours.as_deref().is_some_and(|o| same_contact(o, &c.uri)));
        if let Some(e) = mine.and_then(expires_of) {
            return Some(e);
        }
        if let Some(e) = resp
            .headers
            .get("Expires")
            .and_then(|v| v.trim().parse::<u32>().ok())
        {
            return Some(e);
        }
        // A registrar that rewrote our Contact (NAT fix-ups) but lists only one.
        match contacts.as_slice() {
            [only] => expires_of(only),
            _ => None,
        }
    }

    fn begin_attempt(&mut self, now: Instant) {
        self.retries_this_attempt = 0;
        if matches!(self.state, State::Unregistered | State::Failed { .. }) {
            self.state = State::Registering;
        }
        if self.resolve || self.route.is_none() {
            self.resolve_deadline = Some(now + TRANSACTION_TIMEOUT);
            self.outputs.push_back(Output::Resolve {
                host: self.host.clone(),
                port: self.port,
                transport: self.config.transport,
            });
        } else {
            self.send_register(now);
        }
    }

    fn send_register(&mut self, now: Instant) {
        let Some(route) = self.route else {
            return;
        };
        if let Some(old) = self.txn.take() {
            self.remember(old.txn.branch);
        }
        let transport = self.config.transport;
        let branch = format!("z9hG4bK{}", token(&mut self.rng, 16));
        self.cseq = (self.cseq + 1) & 0x7fff_ffff;
        let expires = if self.unregistering { 0 } else { self.expires };
        let mut h = Headers::new();
        h.push(
            "Via",
            format!(
                "SIP/2.0/{} {};branch={branch};rport",
                transport.via_name(),
                host_port(route.local)
            ),
        );
        h.push("Max-Forwards", "70");
        h.push("From", format!("<{}>;tag={}", self.aor, self.from_tag));
        h.push("To", format!("<{}>", self.aor));
        h.push("Call-ID", self.call_id.clone());
        h.push("CSeq", format!("{} REGISTER", self.cseq));
        h.push("Contact", format!("<{}>", self.contact_uri(route.local)));
        h.push("Expires", expires.to_string());
        h.push("User-Agent", self.user_agent.clone());
        let sent = self.push_credentials(&mut h);
        let req = Request {
            method: Method::Register,
            uri: self.request_uri.clone(),
            headers: h,
            body: Vec::new(),
        };
        let link = Link {
            transport,
            local: route.local,
            dest: route.to,
        };
        let txn = ClientTxn::new(now, Method::Register, branch, req.to_bytes(), link);
        self.outputs.push_back(Output::Transmit(txn.transmit()));
        self.txn = Some(Attempt { txn, sent, expires });
    }

    /// An answer to every challenge of this binding, as headers in `h`; returns what was
    /// sent: (header kind, realm, nonce).
    fn push_credentials(&mut self, h: &mut Headers) -> Vec<(ChallengeKind, String, String)> {
        let username = (self.config.auth_user.clone()).unwrap_or_else(|| self.config.user.clone());
        let mut sent = Vec::new();
        for i in 0..self.auth.len() {
            let cnonce = token(&mut self.rng, 16);
            let Some(s) = self.auth.get_mut(i) else {
                continue;
            };
            s.nc = s.nc.wrapping_add(1);
            let parts = RequestParts {
                method: "REGISTER",
                uri: &self.request_uri,
                body: b"",
            };
            let password = &self.config.password;
            let a = digest::authorize(&s.challenge, &username, password, parts, &cnonce, s.nc);
            h.push(s.kind.answer_header(), a.to_header_value());
            sent.push((s.kind, s.challenge.realm.clone(), s.challenge.nonce.clone()));
        }
        sent
    }

    fn remember(&mut self, branch: String) {
        self.recent.push_back(branch);
        while self.recent.len() > RECENT_BRANCHES {
            self.recent.pop_front();
        }
    }

    fn fail(&mut self, now: Instant, reason: String, retry_after: Option<Duration>) {
        if let Some(old) = self.txn.take() {
            self.remember(old.txn.branch);
        }
        self.resolve_deadline = None;
        self.resolve = true;
        if self.unregistering {
            tracing::warn!(aor = %self.aor, registrar = %self.request_uri, %reason, "unregistering failed");
            self.state = State::Unregistered;
            self.next_attempt = None;
            return;
        }
        self.failures = self.failures.saturating_add(1);
        let exp = BACKOFF_MIN
            .saturating_mul(1u32 << self.failures.saturating_sub(1).min(16))
            .min(BACKOFF_MAX);
        // Between half and all of it, so many mohds behind one PBX do not retry in step.
        let half = exp / 2;
        let jitter = Duration::from_millis(
            self.rng
                .random_range(0..=u64::try_from(half.as_millis()).unwrap_or(u64::MAX)),
        );
        let delay = (half + jitter).max(retry_after.unwrap_or_default());
        let retry_at = now + delay;
        tracing::warn!(
            aor = %self.aor,
            registrar = %self.request_uri,
            %reason,
            retry_in_s = format!("{:.1}", delay.as_secs_f64()),
            "registration failed"
        );
        self.state = State::Failed { reason, retry_at };
        self.next_attempt = Some(retry_at);
    }

    fn set_unregistered(&mut self) {
        if self.state != State::Unregistered {
            tracing::info!(aor = %self.aor, registrar = %self.request_uri, "unregistered");
        }
        self.state = State::Unregistered;
        self.next_attempt = None;
    }

    fn contact_uri(&self, local: SocketAddr) -> String {
        let user = self
            .config
            .contact_user
            .as_deref()
            .unwrap_or(&self.config.user);
        let transport = match self.config.transport {
            Transport::Udp => "",
            Transport::Tcp => ";transport=tcp",
            Transport::Tls => ";transport=tls",
        };
        format!("sip:{user}@{}{transport}", host_port(local))
    }
}

/// When to refresh a binding granted for `expires`: `max(expires/2, expires - 30 s)`.
pub fn refresh_delay(expires: Duration) -> Duration {
    (expires / 2).max(expires.saturating_sub(REFRESH_MARGIN))
}

/// Hand a datagram to the registration it answers. Returns true if one took it; anything else
/// (every request, and responses to the endpoint's own transactions) is the endpoint's.
pub fn dispatch_response(regs: &mut [Registration], now: Instant, data: &[u8]) -> bool {
    if regs.is_empty() {
        return false;
    }
    let start = data
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(data.len());
    if !data[start..].starts_with(b"SIP/2.0 ") {
        return false;
    }
    let Ok(Message::Response(resp)) = msg::parse(data) else {
        return false;
    };
    regs.iter_mut().any(|r| r.handle_response(now, &resp))
}

fn same_contact(ours: &str, theirs: &str) -> bool {
    match (SipUri::parse(ours), SipUri::parse(theirs)) {
        (Some(a), Some(b)) => {
            a.user == b.user
                && a.host.eq_ignore_ascii_case(&b.host)
                && a.port.unwrap_or(5060) == b.port.unwrap_or(5060)
        }
        _ => false,
    }
}

fn host_port(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

fn token(rng: &mut StdRng, len: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    (0..len)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::digest::{Authorization, compute_response};
    use crate::sip::timer::T1;

    const REGISTRAR: &str = "192.0.2.10:5060";
    const LOCAL: &str = "192.0.2.20:5062";

    fn config() -> RegistrationConfig {
        RegistrationConfig {
            registrar: "sip:192.0.2.10".into(),
            user: "moh".into(),
            auth_user: None,
            password: "secret".into(),
            domain: Some("pbx.example".into()),
            realm: None,
            expires: Duration::from_secs(300),
            contact_user: None,
            transport: Transport::Udp,
        }
    }

    /// A registrar double: challenges, checks digests itself (not with our `Verifier`), and
    /// grants bindings.
    struct Pbx {
        nonce: String,
        password: String,
        stale_next: bool,
        grant: Option<u32>,
    }

    impl Pbx {
        fn new(nonce: &str) -> Pbx {
            Pbx {
                nonce: nonce.into(),
                password: "secret".into(),
                stale_next: false,
                grant: None,
            }
        }

        fn answer(&mut self, req: &Request) -> Response {
            let auth = req
                .headers
                .get("Authorization")
                .map(|a| Authorization::parse(a).unwrap());
            let ok = auth.as_ref().is_some_and(|a| {
                a.nonce == self.nonce
                    && a.uri == req.uri
                    && a.response
                        == compute_response(
                            a.algorithm,
                            &a.username,
                            "pbx",
                            &self.password,
                            &a.nonce,
                            a.qop,
                            a.cnonce.as_deref().unwrap_or(""),
                            a.nc.unwrap(),
                            RequestParts {
                                method: "REGISTER",
                                uri: &a.uri,
                                body: b"",
                            },
                        )
            });
            if !ok || self.stale_next {
                let stale = if self.stale_next { ", stale=true" } else { "" };
                self.stale_next = false;
                return reply(
                    req,
                    401,
                    &[(
                        "WWW-Authenticate",
                        format!(
                            "Digest realm=\"pbx\", nonce=\"{}\", qop=\"auth\", algorithm=MD5{stale}",
                            self.nonce
                        ),
                    )],
                );
            }
            let asked: u32 = req.headers.get("Expires").unwrap().parse().unwrap();
            let granted = self.grant.unwrap_or(asked).min(asked);
            let contact = format!("{};expires={granted}", req.headers.get("Contact").unwrap());
            reply(req, 200, &[("Contact", contact)])
        }
    }

    fn reply(req: &Request, code: u16, extra: &[(&str, String)]) -> Response {
        let mut h = Headers::new();
        for v in req.headers.get_all("Via") {
            h.push("Via", v.to_string());
        }
        for n in ["From", "Call-ID", "CSeq"] {
            h.push(n, req.headers.get(n).unwrap().to_string());
        }
        h.push("To", format!("{};tag=reg1", req.headers.get("To").unwrap()));
        for (n, v) in extra {
            h.push(n, v.clone());
        }
        Response {
            code,
            reason: msg::reason_phrase(code).to_string(),
            headers: h,
            body: Vec::new(),
        }
    }

    struct Harness {
        reg: Registration,
        now: Instant,
        sent: Vec<(Instant, Request)>,
        /// How many of `sent` have had their answer.
        answered: usize,
    }

    impl Harness {
        fn new(config: RegistrationConfig) -> Harness {
            let now = Instant::now();
            let mut reg = Registration::new(config, 42).unwrap();
            reg.start(now);
            let mut h = Harness {
                reg,
                now,
                sent: Vec::new(),
                answered: 0,
            };
            h.drain();
            h
        }

        /// Collects transmits; answers resolutions at once with the test addresses.
        fn drain(&mut self) {
            while let Some(out) = self.reg.poll_output() {
                match out {
                    Output::Transmit(t) => {
                        assert_eq!(t.to, REGISTRAR.parse().unwrap());
                        let Ok(Message::Request(r)) = msg::parse(&t.data) else {
                            panic!("we sent something unparseable")
                        };
                        self.sent.push((self.now, r));
                    }
                    Output::Resolve { host, port, .. } => {
                        assert_eq!((host.as_str(), port), ("192.0.2.10", 5060));
                        let route = Route {
                            to: REGISTRAR.parse().unwrap(),
                            local: LOCAL.parse().unwrap(),
                        };
                        self.reg.handle_resolved(self.now, Ok(route));
                    }
                }
            }
        }

        /// Advance the virtual clock to `t`, firing every timer on the way.
        fn run_until(&mut self, t: Instant) {
            while let Some(at) = self.reg.poll_timeout() {
                if at > t {
                    break;
                }
                self.now = self.now.max(at);
                self.reg.handle_timeout(self.now);
                self.drain();
            }
            self.now = self.now.max(t);
        }

        fn last(&self) -> Request {
            self.sent.last().unwrap().1.clone()
        }

        fn respond(&mut self, resp: Response) {
            self.answered = self.sent.len();
            assert!(self.reg.handle_response(self.now, &resp));
            self.drain();
        }

        /// Let `pbx` answer every REGISTER (immediately) until `until`.
        fn serve(&mut self, pbx: &mut Pbx, until: Instant) {
            loop {
                while self.answered < self.sent.len() {
                    let req = self.sent[self.answered].1.clone();
                    let resp = pbx.answer(&req);
                    self.respond(resp);
                }
                match self.reg.poll_timeout() {
                    Some(at) if at <= until => {
                        self.now = self.now.max(at);
                        self.reg.handle_timeout(self.now);
                        self.drain();
                    }
                    _ => break,
                }
            }
            self.now = self.now.max(until);
        }
    }

    #[test]
    fn first_register_is_well_formed() {
        let h = Harness::new(config());
        assert_eq!(h.reg.state(), &State::Registering);
        assert_eq!(h.sent.len(), 1);
        let r = h.last();
        assert_eq!(r.method, Method::Register);
        assert_eq!(r.uri, "sip:192.0.2.10");
        assert_eq!(r.from().unwrap().uri, "sip:moh@pbx.example");
        assert!(r.from().unwrap().tag().is_some());
        assert_eq!(r.to().unwrap().uri, "sip:moh@pbx.example");
        assert_eq!(r.contact().unwrap().uri, "sip:moh@192.0.2.20:5062");
        assert_eq!(r.headers.get("Expires"), Some("300"));
        let via = r.top_via().unwrap();
        assert!(via.branch().unwrap().starts_with("z9hG4bK"));
        assert_eq!(via.sent_by(), "192.0.2.20:5062");
        assert!(r.headers.get("Authorization").is_none());
    }

    #[test]
    fn challenge_then_registered_then_refreshed_with_the_same_call_id() {
        let mut h = Harness::new(config());
        let mut pbx = Pbx::new("n1");
        let t0 = h.now;
        h.serve(&mut pbx, t0);
        // 401, then the authorised REGISTER got 200.
        assert_eq!(h.sent.len(), 2);
        let authed = &h.sent[1].1;
        let a = Authorization::parse(authed.headers.get("Authorization").unwrap()).unwrap();
        assert_eq!((a.username.as_str(), a.nc), ("moh", Some(1)));
        assert_eq!(a.uri, "sip:192.0.2.10");
        let State::Registered { expires_at } = *h.reg.state() else {
            panic!("{:?}", h.reg.state())
        };
        assert_eq!(expires_at, t0 + Duration::from_secs(300));

        // The refresh goes at 300 - 30 = 270 s, reusing the credentials with nc = 2.
        h.serve(&mut pbx, t0 + Duration::from_secs(269));
        assert_eq!(h.sent.len(), 2);
        h.serve(&mut pbx, t0 + Duration::from_secs(271));
        assert_eq!(h.sent.len(), 3);
        assert_eq!(h.sent[2].0, t0 + Duration::from_secs(270));
        let refresh = &h.sent[2].1;
        let a = Authorization::parse(refresh.headers.get("Authorization").unwrap()).unwrap();
        assert_eq!(a.nc, Some(2));
        let ids: Vec<&str> = h.sent.iter().map(|(_, r)| r.call_id().unwrap()).collect();
        assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
        let cseqs: Vec<u32> = h.sent.iter().map(|(_, r)| r.cseq().unwrap().0).collect();
        assert!(cseqs.windows(2).all(|w| w[1] == w[0] + 1), "{cseqs:?}");
        let tags: Vec<String> = h
            .sent
            .iter()
            .map(|(_, r)| r.from().unwrap().tag().unwrap().to_string())
            .collect();
        assert!(tags.iter().all(|t| *t == tags[0]));
        assert!(
            matches!(h.reg.state(), State::Registered { expires_at } if *expires_at == t0 + Duration::from_secs(570))
        );
    }

    #[test]
    fn uses_the_shorter_expiry_the_registrar_grants() {
        let mut h = Harness::new(config());
        let mut pbx = Pbx::new("n1");
        pbx.grant = Some(4);
        let t0 = h.now;
        h.serve(&mut pbx, t0 + Duration::from_secs(9));
        // Refreshes every max(4/2, 4-30) = 2 s: at 2, 4, 6, 8.
        let times: Vec<Duration> = h.sent[2..].iter().map(|(t, _)| *t - t0).collect();
        assert_eq!(
            times,
            [2, 4, 6, 8].map(Duration::from_secs).to_vec(),
            "refresh times"
        );
        assert!(matches!(h.reg.state(), State::Registered { .. }));
        assert_eq!(
            refresh_delay(Duration::from_secs(60)),
            Duration::from_secs(30)
        );
        assert_eq!(
            refresh_delay(Duration::from_secs(3600)),
            Duration::from_secs(3570)
        );
    }

    #[test]
    fn retransmits_on_timer_e_and_fails_on_timer_f() {
        let mut h = Harness::new(config());
        let t0 = h.now;
        h.run_until(t0 + 64 * T1);
        let offsets: Vec<u128> = h.sent.iter().map(|(t, _)| (*t - t0).as_millis()).collect();
        // 0, then T1 doubling to T2 (0.5, 1, 2, 4, 4, …) until Timer F at 32 s.
        let mut expected = vec![0u128];
        let (mut at, mut interval) = (0u128, 500u128);
        loop {
            at += interval;
            if at >= 32_000 {
                break;
            }
            expected.push(at);
            interval = (interval * 2).min(4000);
        }
        assert_eq!(offsets[..expected.len()], expected[..], "{offsets:?}");
        // Every retransmission is the same bytes (same branch).
        let branches: Vec<String> = h.sent[..expected.len()]
            .iter()
            .map(|(_, r)| r.top_via().unwrap().branch().unwrap().to_string())
            .collect();
        assert!(branches.iter().all(|b| *b == branches[0]));
        assert_eq!(h.sent.len(), expected.len());
        let State::Failed { reason, retry_at } = h.reg.state().clone() else {
            panic!("{:?}", h.reg.state())
        };
        assert!(reason.contains("no response"), "{reason}");
        let fail_at = t0 + 64 * T1;
        assert!(retry_at >= fail_at + BACKOFF_MIN / 2 && retry_at <= fail_at + BACKOFF_MIN);
    }

    #[test]
    fn provisional_response_slows_retransmissions_to_t2() {
        let mut h = Harness::new(config());
        let t0 = h.now;
        let trying = reply(&h.last(), 100, &[]);
        h.respond(trying);
        h.run_until(t0 + Duration::from_millis(8_900));
        let offsets: Vec<u128> = h.sent.iter().map(|(t, _)| (*t - t0).as_millis()).collect();
        // Timer E was set for 0.5 s before the 100; from then on every T2.
        assert_eq!(offsets, vec![0, 500, 4500, 8500]);
    }

    #[test]
    fn failures_back_off_exponentially_with_jitter_and_retry_forever() {
        let mut h = Harness::new(config());
        let mut retry_delays = Vec::new();
        for _ in 0..10 {
            let req = h.last();
            let resp = reply(&req, 503, &[]);
            let failed_at = h.now;
            h.respond(resp);
            let State::Failed { retry_at, .. } = h.reg.state().clone() else {
                panic!("{:?}", h.reg.state())
            };
            retry_delays.push(retry_at - failed_at);
            let before = h.sent.len();
            h.run_until(retry_at);
            assert_eq!(h.sent.len(), before + 1, "the retry was sent");
            assert_eq!(h.reg.state(), &State::Registering);
        }
        for (i, d) in retry_delays.iter().enumerate() {
            let full = (BACKOFF_MIN * (1 << i)).min(BACKOFF_MAX);
            assert!(
                *d >= full / 2 && *d <= full,
                "failure {i}: {d:?} vs {full:?}"
            );
        }
        // Jitter: not every delay is the same fraction of its full backoff.
        let fractions: Vec<u128> = retry_delays
            .iter()
            .enumerate()
            .map(|(i, d)| {
                d.as_millis() * 1000 / (BACKOFF_MIN * (1 << i)).min(BACKOFF_MAX).as_millis()
            })
            .collect();
        assert!(fractions.windows(2).any(|w| w[0] != w[1]), "{fractions:?}");
        // Success resets the backoff.
        let mut pbx = Pbx::new("n");
        let now = h.now;
        h.serve(&mut pbx, now);
        assert!(matches!(h.reg.state(), State::Registered { .. }));
        assert_eq!(h.reg.failures, 0);
    }

    #[test]
    fn retry_after_is_honoured() {
        let mut h = Harness::new(config());
        let resp = reply(&h.last(), 503, &[("Retry-After", "120".into())]);
        let t = h.now;
        h.respond(resp);
        let State::Failed { retry_at, reason } = h.reg.state().clone() else {
            panic!()
        };
        assert_eq!(reason, "503 Service Unavailable");
        assert_eq!(retry_at, t + Duration::from_secs(120));
    }

    #[test]
    fn wrong_password_fails_as_bad_credentials_and_retries_later() {
        let mut h = Harness::new(RegistrationConfig {
            password: "wrong".into(),
            ..config()
        });
        let mut pbx = Pbx::new("n1");
        let now = h.now;
        h.serve(&mut pbx, now);
        assert_eq!(h.sent.len(), 2, "one retry with credentials, not a loop");
        let State::Failed { reason, retry_at } = h.reg.state().clone() else {
            panic!("{:?}", h.reg.state())
        };
        assert!(reason.contains("bad credentials"), "{reason}");
        // It tries again after the backoff (the password may have been fixed on the PBX).
        pbx.password = "wrong".into();
        h.serve(&mut pbx, retry_at);
        assert!(matches!(h.reg.state(), State::Registered { .. }));
    }

    #[test]
    fn stale_nonce_retries_with_the_new_nonce() {
        let mut h = Harness::new(config());
        let mut pbx = Pbx::new("n1");
        let t0 = h.now;
        h.serve(&mut pbx, t0);
        // The PBX rotates its nonce and says the old one is stale: same password, new nonce.
        pbx.nonce = "n2".into();
        pbx.stale_next = true;
        h.serve(&mut pbx, t0 + Duration::from_secs(271));
        let nonces: Vec<String> = h.sent[2..]
            .iter()
            .map(|(_, r)| {
                Authorization::parse(r.headers.get("Authorization").unwrap())
                    .unwrap()
                    .nonce
            })
            .collect();
        // The refresh with n1 got 401 stale with n2; the retry with n2 got 200.
        assert_eq!(nonces, ["n1", "n2"]);
        assert!(matches!(h.reg.state(), State::Registered { .. }));
    }

    #[test]
    fn same_nonce_with_stale_true_is_not_bad_credentials() {
        let mut h = Harness::new(config());
        let mut pbx = Pbx::new("n1");
        let now = h.now;
        h.serve(&mut pbx, now);
        // Refresh with n1 gets 401 with n1 again but stale=true: retry, not failure.
        pbx.stale_next = true;
        let t = h.now + Duration::from_secs(271);
        h.serve(&mut pbx, t);
        assert!(matches!(h.reg.state(), State::Registered { .. }));
    }

    #[test]
    fn registrar_restart_new_nonce_reauthenticates() {
        let mut h = Harness::new(config());
        let mut pbx = Pbx::new("before");
        let t0 = h.now;
        h.serve(&mut pbx, t0);
        // The registrar restarts: it has forgotten the binding and its nonce.
        let mut pbx = Pbx::new("after");
        h.serve(&mut pbx, t0 + Duration::from_secs(271));
        // The refresh with the old nonce got 401 with a new one; the retry with it got 200.
        let nonces: Vec<String> = h.sent[2..]
            .iter()
            .map(|(_, r)| {
                Authorization::parse(r.headers.get("Authorization").unwrap())
                    .unwrap()
                    .nonce
            })
            .collect();
        assert_eq!(nonces, ["before", "after"]);
        let State::Registered { expires_at } = *h.reg.state() else {
            panic!("{:?}", h.reg.state())
        };
        assert_eq!(expires_at, t0 + Duration::from_secs(270 + 300));
    }

    #[test]
    fn interval_too_brief_retries_with_min_expires() {
        let mut h = Harness::new(RegistrationConfig {
            expires: Duration::from_secs(30),
            ..config()
        });
        let resp = reply(&h.last(), 423, &[("Min-Expires", "120".into())]);
        h.respond(resp);
        assert_eq!(h.sent.len(), 2);
        assert_eq!(h.last().headers.get("Expires"), Some("120"));
        // A 423 that does not raise the interval is a failure, not a loop.
        let resp = reply(&h.last(), 423, &[("Min-Expires", "60".into())]);
        h.respond(resp);
        assert!(matches!(h.reg.state(), State::Failed { .. }));
        assert_eq!(h.sent.len(), 2);
    }

    #[test]
    fn endless_challenges_with_fresh_nonces_give_up() {
        let mut h = Harness::new(config());
        for i in 0..10 {
            if matches!(h.reg.state(), State::Failed { .. }) {
                break;
            }
            let resp = reply(
                &h.last(),
                401,
                &[(
                    "WWW-Authenticate",
                    format!("Digest realm=\"pbx\", nonce=\"n{i}\""),
                )],
            );
            h.respond(resp);
        }
        let State::Failed { reason, .. } = h.reg.state().clone() else {
            panic!("{:?}", h.reg.state())
        };
        assert!(reason.contains("gave up"), "{reason}");
        assert_eq!(h.sent.len(), 1 + MAX_RETRIES_PER_ATTEMPT as usize);
    }

    #[test]
    fn realm_filter_and_proxy_challenges() {
        let mut h = Harness::new(RegistrationConfig {
            realm: Some("pbx".into()),
            auth_user: Some("1001".into()),
            ..config()
        });
        let resp = reply(
            &h.last(),
            401,
            &[(
                "WWW-Authenticate",
                "Digest realm=\"other\", nonce=\"x\"".into(),
            )],
        );
        h.respond(resp);
        assert!(matches!(h.reg.state(), State::Failed { .. }));

        let mut h = Harness::new(RegistrationConfig {
            auth_user: Some("1001".into()),
            ..config()
        });
        let resp = reply(
            &h.last(),
            407,
            &[(
                "Proxy-Authenticate",
                "Digest realm=\"proxy\", nonce=\"p\", algorithm=SHA-256, qop=\"auth\"".into(),
            )],
        );
        h.respond(resp);
        let r = h.last();
        assert!(r.headers.get("Authorization").is_none());
        let a = Authorization::parse(r.headers.get("Proxy-Authorization").unwrap()).unwrap();
        assert_eq!((a.username.as_str(), a.realm.as_str()), ("1001", "proxy"));
        assert_eq!(a.algorithm, digest::Algorithm::Sha256);
    }

    #[test]
    fn late_and_foreign_responses() {
        let mut h = Harness::new(config());
        let first = h.last();
        let mut pbx = Pbx::new("n1");
        let now = h.now;
        h.serve(&mut pbx, now);
        assert!(matches!(h.reg.state(), State::Registered { .. }));
        // A retransmitted 401 to the first REGISTER is swallowed and changes nothing.
        let late = reply(&first, 401, &[]);
        assert!(h.reg.handle_response(h.now, &late));
        assert!(matches!(h.reg.state(), State::Registered { .. }));
        assert_eq!(h.reg.poll_output(), None);
        // A response to someone else's transaction is not ours.
        let mut other = reply(&first, 200, &[]);
        other
            .headers
            .set("Via", "SIP/2.0/UDP 192.0.2.20:5062;branch=z9hG4bKbye1");
        assert!(!h.reg.handle_response(h.now, &other));
        let bytes = other.to_bytes();
        assert!(!dispatch_response(
            std::slice::from_mut(&mut h.reg),
            h.now,
            &bytes
        ));
        assert!(dispatch_response(
            std::slice::from_mut(&mut h.reg),
            h.now,
            &late.to_bytes()
        ));
        assert!(!dispatch_response(
            std::slice::from_mut(&mut h.reg),
            h.now,
            &first.to_bytes()
        ));
    }

    #[test]
    fn resolution_failure_backs_off_and_resolves_again() {
        let now = Instant::now();
        let mut reg = Registration::new(
            RegistrationConfig {
                registrar: "sip:pbx.invalid:5070".into(),
                ..config()
            },
            1,
        )
        .unwrap();
        reg.start(now);
        assert_eq!(
            reg.poll_output(),
            Some(Output::Resolve {
                host: "pbx.invalid".into(),
                port: 5070,
                transport: Transport::Udp
            })
        );
        reg.handle_resolved(now, Err(ResolveError::NoAddress));
        let State::Failed { reason, retry_at } = reg.state().clone() else {
            panic!()
        };
        assert!(reason.contains("pbx.invalid"), "{reason}");
        assert_eq!(reg.poll_timeout(), Some(retry_at));
        reg.handle_timeout(retry_at);
        assert!(matches!(reg.poll_output(), Some(Output::Resolve { .. })));
        // No answer at all: the resolution times out like a transaction.
        let deadline = reg.poll_timeout().unwrap();
        assert_eq!(deadline, retry_at + 64 * T1);
        reg.handle_timeout(deadline);
        assert!(matches!(reg.state(), State::Failed { .. }));
        // A late answer to the abandoned resolution is ignored.
        reg.handle_resolved(
            deadline,
            Ok(Route {
                to: REGISTRAR.parse().unwrap(),
                local: LOCAL.parse().unwrap(),
            }),
        );
        assert_eq!(reg.poll_output(), None);
    }

    #[test]
    fn unregister_sends_expires_zero_and_stops() {
        let mut h = Harness::new(config());
        let mut pbx = Pbx::new("n1");
        let now = h.now;
        h.serve(&mut pbx, now);
        h.reg.unregister(h.now);
        h.drain();
        let r = h.last();
        assert_eq!(r.headers.get("Expires"), Some("0"));
        assert!(r.headers.get("Authorization").is_some());
        let resp = pbx.answer(&r);
        h.respond(resp);
        assert_eq!(h.reg.state(), &State::Unregistered);
        assert_eq!(h.reg.poll_timeout(), None);

        // Never registered: nothing to send.
        let mut reg = Registration::new(config(), 3).unwrap();
        reg.unregister(Instant::now());
        assert_eq!(reg.poll_output(), None);
        assert_eq!(reg.state(), &State::Unregistered);
    }

    #[test]
    fn expiry_without_refresh_is_visible() {
        let mut h = Harness::new(config());
        let mut pbx = Pbx::new("n1");
        pbx.grant = Some(60);
        let t0 = h.now;
        h.serve(&mut pbx, t0);
        // From now on the registrar is silent: the refresh at 30 s times out at 62 s, after
        // the binding expired at 60 s.
        h.run_until(t0 + Duration::from_secs(61));
        assert_eq!(h.reg.state(), &State::Registering);
        h.run_until(t0 + Duration::from_secs(63));
        assert!(matches!(h.reg.state(), State::Failed { .. }));
    }

    #[test]
    fn ipv6_tcp_and_bad_registrars() {
        let now = Instant::now();
        let mut reg = Registration::new(
            RegistrationConfig {
                registrar: "sip:[2001:db8::1]".into(),
                transport: Transport::Tcp,
                contact_user: Some("hold".into()),
                ..config()
            },
            5,
        )
        .unwrap();
        reg.start(now);
        let Some(Output::Resolve { host, port, .. }) = reg.poll_output() else {
            panic!()
        };
        assert_eq!((host.as_str(), port), ("2001:db8::1", 5060));
        reg.handle_resolved(
            now,
            Ok(Route {
                to: "[2001:db8::1]:5060".parse().unwrap(),
                local: "[2001:db8::2]:5060".parse().unwrap(),
            }),
        );
        let Some(Output::Transmit(t)) = reg.poll_output() else {
            panic!()
        };
        assert_eq!(t.transport, Transport::Tcp);
        let Ok(Message::Request(r)) = msg::parse(&t.data) else {
            panic!()
        };
        assert_eq!(
            r.contact().unwrap().uri,
            "sip:hold@[2001:db8::2]:5060;transport=tcp"
        );
        assert!(
            r.headers
                .get("Via")
                .unwrap()
                .starts_with("SIP/2.0/TCP [2001:db8::2]:5060;")
        );
        // Reliable transport: no Timer E, only Timer F.
        assert_eq!(reg.poll_timeout(), Some(now + 64 * T1));

        for bad in ["sip:moh@pbx", "tel:+1234", "pbx.example.com", "sip:"] {
            assert!(
                Registration::new(
                    RegistrationConfig {
                        registrar: bad.into(),
                        ..config()
                    },
                    1
                )
                .is_err(),
                "{bad}"
            );
        }
    }
}
