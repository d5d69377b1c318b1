//! Fuzz target `endpoint`: the whole SIP request handler, `mohd::sip::endpoint::Endpoint`, on a
//! virtual clock.
//!
//! Input: datagrams separated by a NUL byte. A datagram whose first byte is 0x01..=0x03 has it
//! stripped and read as flags: bit 0 sends it from a second peer (IPv6), bit 1 over TCP rather
//! than UDP. An empty datagram (two NULs in a row) moves the clock 5 s on, firing the timers
//! due meanwhile; otherwise the clock moves 10 ms between datagrams. Before a datagram is
//! delivered, `MOHTAG` in it becomes the To tag of the last response mohd sent and `MOHBRANCH`
//! the branch of the last request mohd sent, so that in-dialog requests (ACK, BYE, re-INVITE,
//! UPDATE) and responses to mohd's own BYE and refreshes reach the dialog: a random tag is
//! beyond what a fuzzer can guess. A leading 0x04 byte (before the first datagram) makes mohd
//! ring for 2 s before answering (`answer_delay`), so CANCEL races and 180s are reached.
//!
//! Checked, besides "never panics":
//! - every datagram mohd sends parses as SIP, leaves from the local address it was given and
//!   goes to a source IP of the input or an address a Contact or Record-Route named;
//! - `active_calls()` never exceeds the INVITEs fed; `CallEnded` comes at most once per
//!   `IncomingCall`;
//! - after `handle_timeout(now)`, the next timer is later than `now` (else the shell spins);
//! - ten virtual minutes after the last datagram (max call length 60 s), no call and no
//!   transaction is left, and every call got its `CallEnded`.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mohd::codec::Codec;
use mohd::config::Config;
use mohd::dialplan::Dialplan;
use mohd::sip::endpoint::{CallId, Endpoint, EndpointConfig, Event, Output, Transport};
use mohd::sip::msg::{self, Message, Method, NameAddr, SipUri};

const SEPARATOR: u8 = 0;
const MAX_DATAGRAMS: usize = 64;
const PEERS: [&str; 2] = ["192.0.2.50:5070", "[2001:db8::50]:5060"];
const LOCAL: &str = "192.0.2.10:5060";
const LOCAL_RTP: &str = "192.0.2.10:40000";
const TAG_MARK: &[u8] = b"MOHTAG";
const BRANCH_MARK: &[u8] = b"MOHBRANCH";
/// Bound on timer firings while settling: a timer that never moves on is a bug, not a hang.
const MAX_STEPS: usize = 100_000;

fn dialplan() -> Dialplan {
    static DIALPLAN: OnceLock<Dialplan> = OnceLock::new();
    DIALPLAN
        .get_or_init(|| Config::embedded_default().dialplan)
        .clone()
}

/// `MOHD_FUZZ_TRACE=1` prints what goes in and out, to read a crash or check a seed.
fn trace() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("MOHD_FUZZ_TRACE").is_some())
}

/// `MOHD_FUZZ_NO_PARSE_CHECK=1` skips the check that what mohd sends parses, so that fuzzing can
/// go past an open bug of that kind and look for others.
fn check_output_parses() -> bool {
    static CHECK: OnceLock<bool> = OnceLock::new();
    *CHECK.get_or_init(|| std::env::var_os("MOHD_FUZZ_NO_PARSE_CHECK").is_none())
}

fn first_line(data: &[u8]) -> String {
    let end = data.iter().position(|&b| b == b'\r' || b == b'\n');
    String::from_utf8_lossy(&data[..end.unwrap_or(data.len())]).into_owned()
}

fn replace(hay: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

/// The endpoint on a virtual clock, every call accepted, every output checked as it comes.
/// Public for `tests/fuzz_regressions.rs`, whose hand-written inputs drive it step by step.
pub struct Harness {
    pub ep: Endpoint,
    start: Instant,
    pub now: Instant,
    local: SocketAddr,
    /// IPs mohd may send to: sources and addresses named in Contact/Record-Route.
    allowed: HashSet<IpAddr>,
    invites: usize,
    incoming: HashSet<u64>,
    ended: HashSet<u64>,
    /// The To tag of the last response mohd sent.
    pub last_tag: Option<String>,
    last_branch: Option<String>,
    /// Every datagram mohd sent, in order.
    pub sent: Vec<Vec<u8>>,
    /// Every call announced, in order.
    pub calls: Vec<CallId>,
}

impl Harness {
    pub fn new(answer_delay: Duration) -> Self {
        let config = EndpointConfig {
            max_call_duration: Some(Duration::from_secs(60)),
            answer_delay,
            // Every codec, and SDES keys read from offers whatever the transport.
            codecs: Codec::ALL.to_vec(),
            srtp_over_plain_transports: true,
            ..EndpointConfig::default()
        };
        let start = Instant::now();
        Harness {
            ep: Endpoint::new(config, dialplan(), 7),
            start,
            now: start,
            local: LOCAL.parse().unwrap(),
            allowed: HashSet::new(),
            invites: 0,
            incoming: HashSet::new(),
            ended: HashSet::new(),
            last_tag: None,
            last_branch: None,
            sent: Vec::new(),
            calls: Vec::new(),
        }
    }

    /// One input datagram (flags byte, marks), then what mohd does about it.
    pub fn deliver(&mut self, datagram: &[u8]) {
        let (flags, body) = match datagram.first() {
            Some(&f @ 1..=3) => (f, &datagram[1..]),
            _ => (0, datagram),
        };
        let from: SocketAddr = PEERS[usize::from(flags & 1)].parse().unwrap();
        let transport = if flags & 2 != 0 {
            Transport::Tcp
        } else {
            Transport::Udp
        };
        let mut data = body.to_vec();
        if let Some(tag) = &self.last_tag {
            data = replace(&data, TAG_MARK, tag.as_bytes());
        }
        if let Some(branch) = &self.last_branch {
            data = replace(&data, BRANCH_MARK, branch.as_bytes());
        }
        self.allowed.insert(from.ip());
        if let Ok(Message::Request(req)) = msg::parse(&data) {
            if req.method == Method::Invite {
                self.invites += 1;
            }
            for name in ["Contact", "Record-Route"] {
                for v in req.headers.list(name) {
                    if let Some(addr) = NameAddr::parse(v)
                        .and_then(|n| SipUri::parse(&n.uri))
                        .and_then(|u| u.socket_addr())
                    {
                        self.allowed.insert(addr.ip());
                    }
                }
            }
        }
        if trace() {
            eprintln!(
                "{:?} <- {from} {transport:?}: {}",
                self.elapsed(),
                first_line(&data)
            );
        }
        self.ep
            .handle_receive_on(self.now, transport, from, self.local, &data);
        self.drain();
    }

    pub fn drain(&mut self) {
        while let Some(out) = self.ep.poll_output() {
            match out {
                Output::Transmit(t) => {
                    if trace() {
                        eprintln!("{:?} -> {}: {}", self.elapsed(), t.to, first_line(&t.data));
                    }
                    assert_eq!(t.local, self.local, "sent from another address");
                    assert!(
                        self.allowed.contains(&t.to.ip()),
                        "sent to {} which nothing named; allowed {:?}",
                        t.to,
                        self.allowed
                    );
                    match msg::parse(&t.data) {
                        Ok(Message::Response(r)) => {
                            if let Some(tag) = r.to().and_then(|t| t.tag().map(str::to_string)) {
                                self.last_tag = Some(tag);
                            }
                        }
                        Ok(Message::Request(r)) => {
                            if let Some(b) =
                                r.top_via().and_then(|v| v.branch().map(str::to_string))
                            {
                                self.last_branch = Some(b);
                            }
                        }
                        Err(_) if !check_output_parses() => {}
                        Err(e) => panic!(
                            "mohd sent a message that does not parse ({e}): {:?}",
                            String::from_utf8_lossy(&t.data)
                        ),
                    }
                    self.sent.push(t.data);
                }
                Output::Event(Event::IncomingCall { call, .. }) => {
                    if trace() {
                        eprintln!("{:?} event IncomingCall {call}", self.elapsed());
                    }
                    assert!(self.incoming.insert(call.0), "{call} announced twice");
                    self.calls.push(call);
                    self.ep.accept(self.now, call, LOCAL_RTP.parse().unwrap());
                }
                Output::Event(Event::CallEnded { call, reason }) => {
                    if trace() {
                        eprintln!("{:?} event CallEnded {call}: {reason}", self.elapsed());
                    }
                    assert!(self.incoming.contains(&call.0), "{call} ended, never began");
                    assert!(self.ended.insert(call.0), "{call} ended twice");
                }
                Output::Event(e) => {
                    if trace() {
                        eprintln!("{:?} event {e:?}", self.elapsed());
                    }
                }
            }
        }
        assert!(
            self.ep.active_calls() <= self.invites,
            "{} calls from {} INVITEs",
            self.ep.active_calls(),
            self.invites
        );
    }

    fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    pub fn fire(&mut self) {
        self.ep.handle_timeout(self.now);
        self.drain();
        if let Some(at) = self.ep.poll_timeout() {
            assert!(at > self.now, "a timer due now survived handle_timeout");
        }
    }

    /// Move the clock by `d`, firing every timer on its due time on the way.
    pub fn advance(&mut self, d: Duration) {
        let until = self.now + d;
        for _ in 0..MAX_STEPS {
            match self.ep.poll_timeout() {
                Some(at) if at <= until => {
                    self.now = self.now.max(at);
                    self.fire();
                }
                _ => {
                    self.now = until;
                    self.fire();
                    return;
                }
            }
        }
        panic!("timers still firing after {MAX_STEPS} steps");
    }
}

/// The target's body: panics when a check fails.
pub fn check(data: &[u8]) {
    let (answer_delay, data) = match data.split_first() {
        Some((4, rest)) => (Duration::from_secs(2), rest),
        _ => (Duration::ZERO, data),
    };
    let mut h = Harness::new(answer_delay);
    for datagram in data.split(|&b| b == SEPARATOR).take(MAX_DATAGRAMS) {
        if datagram.is_empty() {
            h.advance(Duration::from_secs(5));
        } else {
            h.deliver(datagram);
            h.advance(Duration::from_millis(10));
        }
    }
    h.advance(Duration::from_secs(600));
    assert_eq!(h.ep.active_calls(), 0, "calls left after 10 minutes");
    assert_eq!(
        h.ep.open_transactions(),
        0,
        "transactions left after 10 minutes"
    );
    assert_eq!(h.incoming, h.ended, "a call without CallEnded");
}
