//! The load tool's caller: many calls' SIP over one UDP socket, each call the softphone's
//! [`Call`] (INVITE with Timer A/B retransmissions, ACK, BYE with Timer E/F) driven by one loop
//! that starts calls at a rate, routes what arrives by Call-ID and fires the transactions'
//! timers. Finished calls are dropped, so a churn of a million calls holds only the live ones.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::call::{Call, Dialed, InviteOutcome, caller_media, negotiate, offer_crypto};
use crate::codec::Codec;
use crate::sip::client_txn::ClientTxn;
use crate::sip::msg::{self, Message};
use crate::sip::sdes::CryptoLine;
use crate::sip::sdp;
use crate::sip::timer::Step;

/// How often the retransmission timers and hang-ups are looked at.
const SCAN_EVERY: Duration = Duration::from_millis(5);
/// Datagrams read per turn of the loop before timers get their turn.
const READS_PER_TURN: usize = 256;

/// What to place.
#[derive(Debug, Clone)]
pub struct Plan {
    pub calls: u64,
    /// Calls started per second (and, when held, hung up per second at the end).
    pub rate: f64,
    pub mode: Mode,
    /// Held mode: this long after the window opens, go silent for good (`--vanish-after`).
    pub vanish_after: Option<Duration>,
    pub invite_timeout: Duration,
    pub codec: Codec,
    pub ptime: Option<u32>,
    /// Offer SRTP (SDES keys); the receiver reads the headers, which SRTP leaves in clear.
    pub srtp: bool,
    pub credentials: Option<(String, String)>,
}

#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// Every call held until the window (opening `settle` after the last answer, lasting
    /// `measure`) has closed; then all hang up at the rate.
    Held { settle: Duration, measure: Duration },
    /// Each call hangs up `hold` after its answer; the window is the whole run.
    Churn { hold: Duration },
}

/// The measurement window opening or closing, for whoever samples around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowEvent {
    Open,
    Close,
    /// The caller has gone silent and will never return (`Plan::vanish_after`).
    Vanish,
}

/// How the calls went.
#[derive(Debug, Default)]
pub struct CallsOutcome {
    pub placed: u64,
    pub answered: u64,
    /// Calls that never got a 2xx (or whose answer was unusable), by reason.
    pub failures: BTreeMap<String, u64>,
    /// Refusals that carried `Retry-After`.
    pub refused_with_retry_after: u64,
    /// INVITE sent → 200 OK received, per answered call.
    pub setup_times: Vec<Duration>,
    /// Calls the server hung up (BYE from its side) before we did.
    pub ended_by_remote: u64,
    /// Our BYEs that timed out (Timer F) or got a non-2xx answer.
    pub bye_failures: u64,
    pub send_errors: u64,
    /// From the window's opening to its closing.
    pub window: Duration,
}

impl CallsOutcome {
    fn fail(&mut self, reason: impl Into<String>) {
        *self.failures.entry(reason.into()).or_default() += 1;
    }
}

enum Phase {
    Inviting { txn: ClientTxn, sent_at: Instant },
    Up { answered_at: Instant },
    Hanging { txn: ClientTxn },
}

struct LiveCall {
    call: Call,
    phase: Phase,
    /// The `a=crypto` lines offered (none without `--srtp`), which the answer must accept.
    crypto: Vec<CryptoLine>,
}

/// One UDP socket, the calls in progress keyed by Call-ID.
pub(crate) struct Caller<'a> {
    socket: &'a UdpSocket,
    dialed: &'a Dialed,
    local: SocketAddr,
    /// The RTP addresses offered, call k getting `media[k % len]`.
    media: &'a [SocketAddr],
    plan: Plan,
    live: HashMap<String, LiveCall>,
    outcome: CallsOutcome,
}

impl<'a> Caller<'a> {
    pub(crate) fn new(
        socket: &'a UdpSocket,
        dialed: &'a Dialed,
        media: &'a [SocketAddr],
        plan: Plan,
    ) -> std::io::Result<Caller<'a>> {
        socket.set_read_timeout(Some(Duration::from_millis(1)))?;
        Ok(Caller {
            local: socket.local_addr()?,
            socket,
            dialed,
            media,
            plan,
            live: HashMap::new(),
            outcome: CallsOutcome::default(),
        })
    }

    /// Places every call, holds them, hangs up; `on_window` hears the window open and close.
    pub(crate) fn run(mut self, on_window: &mut dyn FnMut(WindowEvent)) -> CallsOutcome {
        let start = Instant::now();
        let rate = self.plan.rate.max(0.001);
        let due = |k: u64| start + Duration::from_secs_f64(k as f64 / rate);
        let mut buf = vec![0u8; 65_536];
        let mut next_scan = start;
        let mut opens_at = None;
        let mut window: Option<(Instant, Option<Instant>)> = None;
        let mut hangups_from = None;
        let mut hung_up = 0u64;
        if let Mode::Churn { .. } = self.plan.mode {
            on_window(WindowEvent::Open);
            window = Some((start, None));
        }
        loop {
            let now = Instant::now();
            while self.outcome.placed < self.plan.calls && due(self.outcome.placed) <= now {
                let k = self.outcome.placed;
                self.start_call(k, now);
                self.outcome.placed += 1;
            }
            self.read_all(&mut buf);
            let now = Instant::now();
            if now >= next_scan {
                self.fire_timers(now);
                next_scan = now + SCAN_EVERY;
            }
            let all_placed = self.outcome.placed == self.plan.calls;
            match self.plan.mode {
                Mode::Held { settle, measure } => {
                    let settled = self.outcome.answered + self.failed() == self.plan.calls;
                    if all_placed && settled && opens_at.is_none() {
                        opens_at = Some(now + settle);
                    }
                    if window.is_none() && opens_at.is_some_and(|t| now >= t) {
                        on_window(WindowEvent::Open);
                        window = Some((now, None));
                    }
                    if let (Some(after), Some((opened, _))) = (self.plan.vanish_after, window)
                        && now >= opened + after
                    {
                        on_window(WindowEvent::Vanish);
                        self.stay_silent();
                    }
                    if let Some((opened, None)) = window
                        && now >= opened + measure
                    {
                        on_window(WindowEvent::Close);
                        window = Some((opened, Some(now)));
                        hangups_from = Some(now);
                    }
                    if let Some(from) = hangups_from {
                        let allowed = (now.duration_since(from).as_secs_f64() * rate) as u64 + 1;
                        hung_up += self.hang_up_some(allowed.saturating_sub(hung_up), now);
                    }
                }
                Mode::Churn { .. } => {}
            }
            let window_done = match self.plan.mode {
                Mode::Held { .. } => {
                    self.outcome.answered == 0 || window.is_some_and(|(_, closed)| closed.is_some())
                }
                Mode::Churn { .. } => true,
            };
            if all_placed && self.live.is_empty() && window_done {
                break;
            }
        }
        let end = Instant::now();
        if let Some((opened, closed)) = window {
            if closed.is_none() {
                on_window(WindowEvent::Close);
            }
            self.outcome.window = closed.unwrap_or(end).duration_since(opened);
        }
        self.outcome
    }

    /// A vanished peer: holds the socket (and the caller's calls) without a read or a send
    /// until the process is killed.
    fn stay_silent(&self) -> ! {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }

    fn failed(&self) -> u64 {
        self.outcome.failures.values().sum()
    }

    fn start_call(&mut self, k: u64, now: Instant) {
        let media_addr = self.media[(k % self.media.len() as u64) as usize];
        let local_media = caller_media(media_addr, &[self.plan.codec]);
        let crypto = match self.plan.srtp {
            true => offer_crypto(&mut rand::rng()),
            false => Vec::new(),
        };
        let offer = sdp::caller_offer(&local_media, self.plan.ptime, &crypto);
        let mut call = Call::new(
            self.dialed,
            self.local,
            offer,
            self.plan.credentials.clone(),
        );
        let txn = call.invite(now, now + self.plan.invite_timeout, None);
        self.send(txn.bytes(), txn.dest);
        let id = call.call_id().to_string();
        let phase = Phase::Inviting { txn, sent_at: now };
        let live = LiveCall {
            call,
            phase,
            crypto,
        };
        self.live.insert(id, live);
    }

    fn send(&mut self, data: &[u8], to: SocketAddr) {
        if self.socket.send_to(data, to).is_err() {
            self.outcome.send_errors += 1;
        }
    }

    /// Reads what has arrived (waiting up to the socket's 1 ms timeout for the first).
    fn read_all(&mut self, buf: &mut [u8]) {
        for _ in 0..READS_PER_TURN {
            match self.socket.recv_from(buf) {
                Ok((n, from)) => self.on_message(from, &buf[..n]),
                // ICMP for an earlier datagram: the next read goes on.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                Err(_) => return,
            }
        }
    }

    fn on_message(&mut self, from: SocketAddr, data: &[u8]) {
        let call_id = match msg::parse(data) {
            Ok(Message::Response(r)) => r.call_id().map(str::to_string),
            Ok(Message::Request(r)) => r.headers.get("Call-ID").map(str::to_string),
            Err(_) => None,
        };
        let Some(mut live) = call_id.and_then(|id| self.live.remove(&id)) else {
            return;
        };
        let keep = match &mut live.phase {
            Phase::Inviting { .. } => self.on_invite_answer(&mut live, data),
            Phase::Up { .. } => self.on_mid_call(&live, from, data),
            Phase::Hanging { .. } => match live.call.on_bye_response(data) {
                Some(code) if code >= 200 => {
                    self.outcome.bye_failures += u64::from(code >= 300);
                    false
                }
                Some(_) => {
                    if let Phase::Hanging { txn } = &mut live.phase {
                        txn.on_provisional();
                    }
                    true
                }
                None => self.on_mid_call(&live, from, data),
            },
        };
        if keep {
            self.live.insert(live.call.call_id().to_string(), live);
        }
    }

    /// A request from the server, or a retransmitted 2xx; false when it ended the call.
    fn on_mid_call(&mut self, live: &LiveCall, from: SocketAddr, data: &[u8]) -> bool {
        let Some(reply) = live.call.on_mid_call(from, data) else {
            return true;
        };
        self.send(&reply.data, reply.to);
        if reply.ends_call {
            self.outcome.ended_by_remote += 1;
        }
        !reply.ends_call
    }

    /// An answer to the INVITE; false when the call failed.
    fn on_invite_answer(&mut self, live: &mut LiveCall, data: &[u8]) -> bool {
        let Phase::Inviting { txn, sent_at } = &mut live.phase else {
            return true;
        };
        let sent_at = *sent_at;
        match live.call.on_invite_response(data) {
            InviteOutcome::Ignored => true,
            InviteOutcome::Provisional => {
                txn.on_provisional();
                true
            }
            InviteOutcome::Challenged(resp) => {
                let ack = live.call.ack_failure(&resp);
                let dest = txn.dest;
                self.send(&ack, dest);
                let Some(authorization) = live.call.answer_challenge(&resp) else {
                    self.outcome.fail(resp.code.to_string());
                    return false;
                };
                let now = Instant::now();
                let txn =
                    live.call
                        .invite(now, now + self.plan.invite_timeout, Some(authorization));
                self.send(txn.bytes(), txn.dest);
                live.phase = Phase::Inviting { txn, sent_at };
                true
            }
            InviteOutcome::Refused(resp) => {
                let ack = live.call.ack_failure(&resp);
                let dest = txn.dest;
                self.send(&ack, dest);
                if resp.headers.get("Retry-After").is_some() {
                    self.outcome.refused_with_retry_after += 1;
                }
                self.outcome.fail(format!("{} {}", resp.code, resp.reason));
                false
            }
            InviteOutcome::Answered(ok) => {
                let now = Instant::now();
                let (ack, dest) = live.call.confirm(&ok);
                self.send(&ack, dest);
                if let Err(e) = negotiate(&ok, &[self.plan.codec], dest, &live.crypto) {
                    // Answered but unusable: counted as failed, and hung up.
                    self.outcome.fail(format!("{e}"));
                    self.start_bye(live, now);
                    return true;
                }
                self.outcome.answered += 1;
                self.outcome.setup_times.push(now.duration_since(sent_at));
                live.phase = Phase::Up { answered_at: now };
                true
            }
        }
    }

    /// Sends the call's BYE; false when there is no dialog to end.
    fn start_bye(&mut self, live: &mut LiveCall, now: Instant) -> bool {
        let Some(txn) = live.call.bye(now) else {
            return false;
        };
        self.send(txn.bytes(), txn.dest);
        live.phase = Phase::Hanging { txn };
        true
    }

    /// Retransmissions, transaction timeouts, and in churn the calls whose time is up.
    fn fire_timers(&mut self, now: Instant) {
        let hold = match self.plan.mode {
            Mode::Churn { hold } => Some(hold),
            Mode::Held { .. } => None,
        };
        let mut resend = Vec::new();
        let mut ended = Vec::new();
        let mut due_bye = Vec::new();
        for (id, live) in &mut self.live {
            match &mut live.phase {
                Phase::Inviting { txn, .. } => match txn.on_timeout(now) {
                    Step::Fire => resend.push((txn.bytes().to_vec(), txn.dest)),
                    Step::GiveUp => ended.push((id.clone(), Some("timeout"))),
                    Step::Idle => {}
                },
                Phase::Hanging { txn } => match txn.on_timeout(now) {
                    Step::Fire => resend.push((txn.bytes().to_vec(), txn.dest)),
                    Step::GiveUp => ended.push((id.clone(), None)),
                    Step::Idle => {}
                },
                Phase::Up { answered_at } => {
                    if hold.is_some_and(|h| now >= *answered_at + h) {
                        due_bye.push(id.clone());
                    }
                }
            }
        }
        for (data, to) in resend {
            self.send(&data, to);
        }
        for (id, reason) in ended {
            self.live.remove(&id);
            match reason {
                Some(reason) => self.outcome.fail(reason),
                None => self.outcome.bye_failures += 1,
            }
        }
        for id in due_bye {
            self.bye_by_id(&id, now);
        }
    }

    fn bye_by_id(&mut self, id: &str, now: Instant) {
        if let Some(mut live) = self.live.remove(id)
            && self.start_bye(&mut live, now)
        {
            self.live.insert(id.to_string(), live);
        }
    }

    /// Hangs up to `count` calls that are up; returns how many.
    fn hang_up_some(&mut self, count: u64, now: Instant) -> u64 {
        if count == 0 {
            return 0;
        }
        let ids: Vec<String> = self
            .live
            .iter()
            .filter(|(_, l)| matches!(l.phase, Phase::Up { .. }))
            .map(|(id, _)| id.clone())
            .take(count as usize)
            .collect();
        for id in &ids {
            self.bye_by_id(id, now);
        }
        ids.len() as u64
    }
}
