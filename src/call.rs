//! `mohd call`: a small test softphone, for an admin checking a box and for the tests.
//!
//! Owns one call's client side: INVITE (offering PCMU and PCMA, retransmitted per Timer A on
//! UDP), ACK, receiving and decoding the RTP, BYE (retransmitted per Timer E on UDP), and the
//! RFC 3550 receive statistics. SIP goes over UDP, or over one TCP or TLS connection that carries
//! every request and response of the call (RTP stays UDP). Blocking std sockets: it is one call,
//! and a thread per socket is simplest.
//!
//! It also measures the sender's drift from the receiving side: how far the RTP timestamps
//! moved away from the arrival clock over the call (see [`ReceiverDrift`]).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};
use serde::Serialize;

use crate::clock::Ts32;
use crate::codec::Codec;
use crate::rtp::packet::parse_rtp;
use crate::rtp::stats::{ReceiverStats, StatsReport};
use crate::sip::endpoint::Transport;
use crate::sip::msg::{self, Message, SipUri};
use crate::sip::sdp;
use crate::sip::shell::local_ip_towards;
use crate::sip::timer::T1;
use crate::sip::transport::{Frame, Framer, PONG};

#[derive(clap::Args, Debug, Clone)]
pub struct CallArgs {
    /// Whom to call, e.g. sip:moh@192.0.2.10 or sip:moh@127.0.0.1:5060.
    pub uri: String,
    /// How long to listen before hanging up.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Write the decoded audio to this WAV file (8 kHz, 16-bit, mono).
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// The codec offered first (both are offered).
    #[arg(long, value_enum, default_value = "pcmu")]
    pub codec: CodecChoice,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Ask for this packetisation time (a=ptime), in ms.
    #[arg(long)]
    pub ptime: Option<u32>,
    /// Give up if no final answer comes within this many seconds.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// User name for digest authentication, when the server challenges (401/407).
    #[arg(long)]
    pub user: Option<String>,
    /// Password for digest authentication.
    #[arg(long)]
    pub password: Option<String>,
    /// SIP transport; RTP is UDP whatever this says. Default: tls for a sips: URI, the URI's
    /// ;transport= parameter if it has one, else udp.
    #[arg(long, value_enum)]
    pub transport: Option<TransportChoice>,
    /// With tls: trust only the CA certificates in this PEM file. WITHOUT IT THE SERVER'S
    /// CERTIFICATE IS NOT VERIFIED: this is a test tool, the link is encrypted but whoever
    /// answers is believed.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportChoice {
    Udp,
    Tcp,
    Tls,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecChoice {
    Pcmu,
    Pcma,
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("bad target URI {0:?} (expected sip:user@host[:port])")]
    BadUri(String),
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("network: {0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within {0:.1} s")]
    Timeout(f64),
    #[error("call refused: {0} {1}")]
    Refused(u16, String),
    #[error("the answer's SDP is unusable: {0}")]
    BadAnswer(String),
    #[error("cannot write the recording: {0}")]
    Record(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("the SIP connection closed")]
    Closed,
}

#[derive(Debug, Clone, Serialize)]
pub struct CallReport {
    pub uri: String,
    pub codec: String,
    pub ptime_ms: u32,
    pub setup_ms: f64,
    pub seconds: f64,
    pub remote_rtp: String,
    pub stats: StatsReport,
    /// How far the sender's RTP timestamps moved from the arrival clock over the call, in ms
    /// (positive: the packets came later than their timestamps say), min-filtered over the
    /// first and last 5 s; `null` without packets.
    pub drift_ms: Option<f64>,
    /// Media time the timestamps covered, first packet to last (unwrapped), in s.
    pub ts_elapsed_s: f64,
    /// Time between the first and the last packet's arrival, in s.
    pub arrival_elapsed_s: f64,
    pub bye_status: Option<u16>,
    pub ended_by_remote: bool,
    pub recorded_samples: usize,
}

impl CallReport {
    pub fn human(&self) -> String {
        let s = &self.stats;
        format!(
            "call {uri}\n  codec        {codec} ({ptime} ms)\n  setup        {setup:.1} ms (INVITE to 200 OK)\n  media from   {remote}\n  packets      {packets} received, {lost} lost, {dup} duplicated, {reord} reordered\n  jitter       {jm:.2} ms mean, {jx:.2} ms max\n  largest gap  {gap:.1} ms\n  drift        {drift} over {elapsed:.1} s\n  BYE          {bye}\n",
            uri = self.uri,
            codec = self.codec,
            ptime = self.ptime_ms,
            setup = self.setup_ms,
            remote = self.remote_rtp,
            packets = s.packets,
            lost = s.lost,
            dup = s.duplicated,
            reord = s.reordered,
            jm = s.jitter_mean_ms,
            jx = s.jitter_max_ms,
            gap = s.max_gap_ms,
            drift = self
                .drift_ms
                .map_or_else(|| "-".to_string(), |d| format!("{d:+.3} ms")),
            elapsed = self.arrival_elapsed_s,
            bye = match (self.ended_by_remote, self.bye_status) {
                (true, _) => "ended by the remote side".to_string(),
                (false, Some(c)) => format!("answered {c}"),
                (false, None) => "no answer".to_string(),
            },
        )
    }
}

fn token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn host_port(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

pub fn run(args: &CallArgs) -> Result<CallReport, CallError> {
    let uri = SipUri::parse(&args.uri).ok_or_else(|| CallError::BadUri(args.uri.clone()))?;
    let transport = choose_transport(args.transport, &uri);
    let host = uri.host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port.unwrap_or(if transport == Transport::Tls {
        5061
    } else {
        5060
    });
    let target = (host, port)
        .to_socket_addrs()
        .map_err(|_| CallError::Resolve(uri.host.clone()))?
        .next()
        .ok_or_else(|| CallError::Resolve(uri.host.clone()))?;
    let timeout = Duration::from_secs_f64(args.timeout.max(0.1));
    let sip = match transport {
        Transport::Udp => SipLink::udp(target)?,
        Transport::Tcp => SipLink::tcp(target, timeout)?,
        Transport::Tls => SipLink::tls(target, host, args.ca.as_deref(), timeout)?,
    };
    let reliable = transport.is_reliable();
    let sip_local = sip.local;
    let local_ip = sip_local.ip();
    let (rtp, _rtcp) = bind_rtp_pair(local_ip)?;
    let rtp_local = rtp.local_addr()?;

    let codecs = match args.codec {
        CodecChoice::Pcmu => vec![Codec::Pcmu, Codec::Pcma],
        CodecChoice::Pcma => vec![Codec::Pcma, Codec::Pcmu],
    };
    let offer = client_offer(rtp_local, &codecs, args.ptime);
    let call_id = format!("{}@{}", token(), local_ip);
    let from_tag = token();
    let request_uri = uri_with_transport(&args.uri, &uri, transport);
    let contact = format!(
        "<{}>",
        uri_with_transport(
            &format!("{}:mohd-call@{}", uri.scheme, host_port(sip_local)),
            &uri,
            transport
        )
    );
    let from = format!("<sip:mohd-call@{}>;tag={from_tag}", host_port(sip_local));
    let to = format!("<{}>", args.uri);
    let build_invite = |cseq: u32, auth: &str| {
        format!(
            "INVITE {request_uri} SIP/2.0\r\nVia: SIP/2.0/{tp} {via};branch=z9hG4bK{branch};rport\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} INVITE\r\nContact: {contact}\r\nUser-Agent: mohd-call/{ver}\r\nAllow: INVITE, ACK, BYE, CANCEL, OPTIONS\r\n{auth}Content-Type: application/sdp\r\nContent-Length: {len}\r\n\r\n{offer}",
            branch = token(),
            tp = transport.via_name(),
            via = host_port(sip_local),
            ver = env!("CARGO_PKG_VERSION"),
            len = offer.len(),
        )
    };
    let mut invite_cseq = 1u32;
    let mut invite = build_invite(invite_cseq, "");

    // INVITE with Timer A retransmission (UDP only) until a provisional or final response.
    let sent_at = Instant::now();
    sip.send(invite.as_bytes(), target)?;
    let mut interval = T1;
    let mut next_retransmit = (!reliable).then_some(sent_at + interval);
    let give_up = sent_at + timeout;
    let ok = loop {
        let now = Instant::now();
        if now >= give_up {
            sip.close();
            return Err(CallError::Timeout(args.timeout));
        }
        let wait = next_retransmit
            .unwrap_or(give_up)
            .min(give_up)
            .saturating_duration_since(now);
        match sip.rx.recv_timeout(wait.max(Duration::from_millis(1))) {
            Ok((_, data)) => {
                let Ok(Message::Response(resp)) = msg::parse(&data) else {
                    continue;
                };
                if resp.cseq().map(|(n, _)| n) != Some(invite_cseq)
                    || resp.call_id() != Some(&call_id)
                {
                    continue;
                }
                match resp.code {
                    100..=199 => next_retransmit = None,
                    200..=299 => break resp,
                    401 | 407 if invite_cseq == 1 && args.user.is_some() => {
                        // Digest authentication (RFC 8760): ACK the challenge, ask again once.
                        let ack = ack_for_failure(&invite, &resp);
                        let _ = sip.send(ack.as_bytes(), target);
                        let Some((kind, challenge)) =
                            crate::sip::digest::Challenge::from_response(&resp)
                                .into_iter()
                                .next()
                        else {
                            sip.close();
                            return Err(CallError::Refused(resp.code, resp.reason.clone()));
                        };
                        let authorization = crate::sip::digest::authorize(
                            &challenge,
                            args.user.as_deref().unwrap_or_default(),
                            args.password.as_deref().unwrap_or_default(),
                            crate::sip::digest::RequestParts {
                                method: "INVITE",
                                uri: &request_uri,
                                body: offer.as_bytes(),
                            },
                            &token(),
                            1,
                        );
                        invite_cseq = 2;
                        invite = build_invite(
                            invite_cseq,
                            &format!(
                                "{}: {}\r\n",
                                kind.answer_header(),
                                authorization.to_header_value()
                            ),
                        );
                        sip.send(invite.as_bytes(), target)?;
                        interval = T1;
                        next_retransmit = (!reliable).then_some(Instant::now() + interval);
                    }
                    code => {
                        let ack = ack_for_failure(&invite, &resp);
                        let _ = sip.send(ack.as_bytes(), target);
                        sip.close();
                        return Err(CallError::Refused(code, resp.reason.clone()));
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if next_retransmit.is_some_and(|t| t <= Instant::now()) {
                    sip.send(invite.as_bytes(), target)?;
                    interval = (interval * 2).min(Duration::from_secs(4));
                    next_retransmit = Some(Instant::now() + interval);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                sip.close();
                return Err(if reliable {
                    CallError::Closed
                } else {
                    CallError::Timeout(args.timeout)
                });
            }
        }
    };
    let setup = sent_at.elapsed();

    let to_with_tag = ok.headers.get("To").unwrap_or_default().to_string();
    let remote_target = ok
        .contact()
        .map(|c| c.uri)
        .unwrap_or_else(|| request_uri.clone());
    // Over TCP/TLS everything goes over the one connection; over UDP, to the remote target.
    let in_dialog_dest = SipUri::parse(&remote_target)
        .and_then(|u| u.socket_addr())
        .unwrap_or(target);
    // A UAC's route set is the 2xx's Record-Route in reverse (§12.1.2).
    let mut route: Vec<String> = ok
        .headers
        .list("Record-Route")
        .map(str::to_string)
        .collect();
    route.reverse();
    let dialog = Dialog {
        transport,
        target: &remote_target,
        local: sip_local,
        from: &from,
        to: &to_with_tag,
        call_id: &call_id,
        route: &route,
    };
    let ack = dialog.request("ACK", invite_cseq);
    sip.send(ack.as_bytes(), in_dialog_dest)?;

    let answer = std::str::from_utf8(&ok.body)
        .ok()
        .and_then(|s| sdp::parse(s).ok())
        .ok_or_else(|| CallError::BadAnswer("no SDP in 200 OK".into()))?;
    let negotiated = sdp::negotiate_answer(&codecs, &answer)
        .map_err(|e| CallError::BadAnswer(format!("{e:?}")))?;
    let codec = negotiated.codec;

    // Receive RTP for the requested time; answer in-dialog requests meanwhile.
    rtp.set_read_timeout(Some(Duration::from_millis(20)))?;
    let mut stats = ReceiverStats::new(8000);
    let mut drift = ReceiverDrift::default();
    let max_samples = ((args.seconds.max(0.0) + 2.0) * 8000.0) as usize;
    let mut recording: Vec<i16> = Vec::new();
    let mut first_ts: Option<u32> = None;
    let mut pcm = vec![0i16; 2048];
    let mut buf = vec![0u8; 2048];
    let listen_until = Instant::now() + Duration::from_secs_f64(args.seconds.max(0.0));
    let mut ended_by_remote = false;
    while Instant::now() < listen_until && !ended_by_remote {
        if let Ok((n, _)) = rtp.recv_from(&mut buf) {
            let arrival = Instant::now();
            if let Ok(pkt) = parse_rtp(&buf[..n])
                && pkt.header.payload_type == negotiated.payload_type
            {
                let (seq, ts) = (pkt.header.seq.get(), pkt.header.timestamp.get());
                stats.on_packet(arrival, seq, ts);
                drift.on_packet(arrival, Ts32(ts));
                let first = *first_ts.get_or_insert(ts);
                let offset = ts.wrapping_sub(first) as usize;
                let payload = pkt.payload;
                let len = payload.len().min(pcm.len());
                codec.decode(&payload[..len], &mut pcm[..len]);
                if offset < max_samples {
                    let end = (offset + len).min(max_samples);
                    if recording.len() < end {
                        recording.resize(end, 0);
                    }
                    recording[offset..end].copy_from_slice(&pcm[..end - offset]);
                }
            }
        }
        while let Ok((from_addr, data)) = sip.rx.try_recv() {
            match msg::parse(&data) {
                Ok(Message::Request(req)) if req.method == msg::Method::Bye => {
                    let resp = simple_response(&req, 200);
                    let _ = sip.send(resp.as_bytes(), from_addr);
                    ended_by_remote = true;
                }
                Ok(Message::Request(req)) if req.method != msg::Method::Ack => {
                    let resp = simple_response(&req, 200);
                    let _ = sip.send(resp.as_bytes(), from_addr);
                }
                // A retransmitted 200 OK means our ACK was lost.
                Ok(Message::Response(r))
                    if r.code == 200 && r.cseq().map(|c| c.0) == Some(invite_cseq) =>
                {
                    let _ = sip.send(ack.as_bytes(), in_dialog_dest);
                }
                _ => {}
            }
        }
    }

    // BYE, with Timer E retransmission on UDP.
    let mut bye_status = None;
    if !ended_by_remote {
        let bye = dialog.request("BYE", invite_cseq + 1);
        sip.send(bye.as_bytes(), in_dialog_dest)?;
        let mut interval = T1;
        let mut next = Instant::now() + interval;
        let give_up = Instant::now() + 64 * T1;
        while Instant::now() < give_up && bye_status.is_none() {
            let wait = if reliable {
                give_up.saturating_duration_since(Instant::now())
            } else {
                next.saturating_duration_since(Instant::now())
            };
            match sip.rx.recv_timeout(wait.max(Duration::from_millis(1))) {
                Ok((_, data)) => {
                    if let Ok(Message::Response(r)) = msg::parse(&data)
                        && r.cseq().map(|c| c.0) == Some(invite_cseq + 1)
                        && r.code >= 200
                    {
                        bye_status = Some(r.code);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if !reliable && Instant::now() >= next {
                        sip.send(bye.as_bytes(), in_dialog_dest)?;
                        interval = (interval * 2).min(Duration::from_secs(4));
                        next = Instant::now() + interval;
                    }
                }
            }
        }
    }
    sip.close();

    if let Some(path) = &args.record {
        write_wav(path, &recording).map_err(CallError::Record)?;
    }
    Ok(CallReport {
        uri: args.uri.clone(),
        codec: codec.encoding_name().to_string(),
        ptime_ms: negotiated.ptime_ms,
        setup_ms: setup.as_secs_f64() * 1000.0,
        seconds: args.seconds,
        remote_rtp: negotiated
            .remote_rtp
            .map(|a| a.to_string())
            .unwrap_or_else(|| "none (hold)".into()),
        stats: stats.report(),
        drift_ms: drift.drift_ms(),
        ts_elapsed_s: drift.ts_elapsed_s(),
        arrival_elapsed_s: drift.arrival_elapsed_s(),
        bye_status,
        ended_by_remote,
        recorded_samples: recording.len(),
    })
}

/// Width of the buckets the receiver-side drift is min-filtered in.
const DRIFT_BUCKET_NS: u64 = 100_000_000;
/// Buckets in each of the first and last windows: 5 s.
const DRIFT_WINDOW_BUCKETS: usize = 50;

/// Receiver-side drift: for each packet the offset `arrival_elapsed − ts_elapsed / 8000 s`
/// (both since the first packet, the timestamp unwrapped from packet to packet); network and
/// scheduling delays only ever add to it, so its minimum over a window is the sender's clock
/// offset. The drift is the last window's minimum minus the first's (5 s each, or half the
/// call when shorter). Memory is bounded whatever the call's length: the first window's
/// minima, and a ring of the latest window's.
#[derive(Debug, Clone)]
struct ReceiverDrift {
    first_arrival: Option<Instant>,
    last_ts: Ts32,
    /// Samples since the first packet, unwrapped.
    ts_elapsed: i64,
    last_arrival_ns: u64,
    head: [i64; DRIFT_WINDOW_BUCKETS],
    /// (bucket index, its minimum), at `index % DRIFT_WINDOW_BUCKETS`.
    ring: [(u64, i64); DRIFT_WINDOW_BUCKETS],
}

impl Default for ReceiverDrift {
    fn default() -> Self {
        ReceiverDrift {
            first_arrival: None,
            last_ts: Ts32(0),
            ts_elapsed: 0,
            last_arrival_ns: 0,
            head: [i64::MAX; DRIFT_WINDOW_BUCKETS],
            ring: [(u64::MAX, i64::MAX); DRIFT_WINDOW_BUCKETS],
        }
    }
}

impl ReceiverDrift {
    fn on_packet(&mut self, arrival: Instant, ts: Ts32) {
        let Some(first) = self.first_arrival else {
            self.first_arrival = Some(arrival);
            self.last_ts = ts;
            self.record(0, 0);
            return;
        };
        self.ts_elapsed += i64::from(ts.distance_from(self.last_ts));
        self.last_ts = ts;
        let elapsed =
            u64::try_from(arrival.saturating_duration_since(first).as_nanos()).unwrap_or(u64::MAX);
        self.last_arrival_ns = self.last_arrival_ns.max(elapsed);
        let offset = i128::from(elapsed) - i128::from(self.ts_elapsed) * 125_000;
        let offset = offset.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
        self.record(elapsed, offset);
    }

    fn record(&mut self, elapsed_ns: u64, offset: i64) {
        let bucket = elapsed_ns / DRIFT_BUCKET_NS;
        if let Some(h) = usize::try_from(bucket)
            .ok()
            .and_then(|b| self.head.get_mut(b))
        {
            *h = (*h).min(offset);
        }
        let slot = (bucket % DRIFT_WINDOW_BUCKETS as u64) as usize;
        if let Some(r) = self.ring.get_mut(slot) {
            if r.0 == bucket {
                r.1 = r.1.min(offset);
            } else {
                *r = (bucket, offset);
            }
        }
    }

    fn drift_ms(&self) -> Option<f64> {
        self.first_arrival?;
        let last_bucket = self.last_arrival_ns / DRIFT_BUCKET_NS;
        // Half the call when it is shorter than two windows, so they do not overlap.
        let window = (last_bucket.div_ceil(2) as usize).clamp(1, DRIFT_WINDOW_BUCKETS);
        let first = self.head.iter().take(window).copied().min()?;
        let from = (last_bucket + 1).saturating_sub(window as u64);
        let last = self
            .ring
            .iter()
            .filter(|(b, _)| *b != u64::MAX && *b >= from && *b <= last_bucket)
            .map(|&(_, m)| m)
            .min()?;
        Some((last - first) as f64 / 1e6)
    }

    fn ts_elapsed_s(&self) -> f64 {
        self.ts_elapsed as f64 / 8000.0
    }

    fn arrival_elapsed_s(&self) -> f64 {
        self.last_arrival_ns as f64 / 1e9
    }
}

/// `--transport` if given; else what the URI implies (RFC 3263 without DNS: `sips:` means TLS,
/// then the `transport` parameter).
fn choose_transport(choice: Option<TransportChoice>, uri: &SipUri) -> Transport {
    match choice {
        Some(TransportChoice::Udp) => Transport::Udp,
        Some(TransportChoice::Tcp) => Transport::Tcp,
        Some(TransportChoice::Tls) => Transport::Tls,
        None if uri.scheme == "sips" => Transport::Tls,
        None => {
            let param = uri
                .params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("transport"))
                .and_then(|(_, v)| v.as_deref());
            match param.map(str::to_ascii_lowercase).as_deref() {
                Some("tcp") => Transport::Tcp,
                Some("tls") => Transport::Tls,
                _ => Transport::Udp,
            }
        }
    }
}

/// `text` (a `sip:` URI) with `;transport=tcp|tls` added when the call goes over TCP or TLS
/// and `target` does not say so already; a `sips:` URI means TLS by itself.
fn uri_with_transport(text: &str, target: &SipUri, transport: Transport) -> String {
    let has_param = target
        .params
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("transport"));
    let param = match transport {
        Transport::Udp => return text.to_string(),
        _ if has_param || target.scheme == "sips" => return text.to_string(),
        Transport::Tcp => ";transport=tcp",
        Transport::Tls => ";transport=tls",
    };
    // URI headers (`?...`) come after the parameters.
    match text.find('?') {
        Some(i) => format!("{}{param}{}", &text[..i], &text[i..]),
        None => format!("{text}{param}"),
    }
}

/// How long the SIP I/O thread waits in a read before it looks for something to write.
const STREAM_POLL: Duration = Duration::from_millis(5);

/// The SIP side of the call: a UDP socket, or one TCP or TLS connection that carries every
/// message of the call. Received messages arrive on `rx` from a thread of their own, so the RTP
/// loop never waits on SIP.
struct SipLink {
    local: SocketAddr,
    out: LinkOut,
    rx: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

enum LinkOut {
    Udp(UdpSocket),
    /// Messages for the thread that owns the connection (a TLS stream cannot be shared between
    /// a reading and a writing thread).
    Stream(mpsc::Sender<Vec<u8>>),
}

impl SipLink {
    fn udp(target: SocketAddr) -> Result<SipLink, CallError> {
        let local_ip =
            local_ip_towards(target).ok_or_else(|| CallError::Resolve(target.to_string()))?;
        let socket = UdpSocket::bind((local_ip, 0))?;
        let local = socket.local_addr()?;
        let reader = socket.try_clone()?;
        reader.set_read_timeout(Some(Duration::from_millis(200)))?;
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_reader = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !stop_reader.load(Ordering::Relaxed) {
                if let Ok((n, from)) = reader.recv_from(&mut buf)
                    && tx.send((from, buf[..n].to_vec())).is_err()
                {
                    break;
                }
            }
        });
        Ok(SipLink {
            local,
            out: LinkOut::Udp(socket),
            rx,
            stop,
            thread: Some(thread),
        })
    }

    fn tcp(target: SocketAddr, timeout: Duration) -> Result<SipLink, CallError> {
        let tcp = TcpStream::connect_timeout(&target, timeout)?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(STREAM_POLL))?;
        let local = tcp.local_addr()?;
        Ok(SipLink::stream(Box::new(tcp), target, local))
    }

    fn tls(
        target: SocketAddr,
        host: &str,
        ca: Option<&Path>,
        timeout: Duration,
    ) -> Result<SipLink, CallError> {
        let config = tls_client_config(ca)?;
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| CallError::Tls(format!("{host}: {e}")))?;
        let mut conn =
            ClientConnection::new(config, name).map_err(|e| CallError::Tls(e.to_string()))?;
        let mut tcp = TcpStream::connect_timeout(&target, timeout)?;
        tcp.set_nodelay(true)?;
        let local = tcp.local_addr()?;
        // The handshake up front, so a refused certificate is reported as such.
        tcp.set_read_timeout(Some(timeout))?;
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp)
                .map_err(|e| CallError::Tls(format!("handshake with {target}: {e}")))?;
        }
        tcp.set_read_timeout(Some(STREAM_POLL))?;
        Ok(SipLink::stream(
            Box::new(StreamOwned::new(conn, tcp)),
            target,
            local,
        ))
    }

    fn stream(stream: Box<dyn SipStream>, peer: SocketAddr, local: SocketAddr) -> SipLink {
        let (out_tx, out_rx) = mpsc::channel::<Vec<u8>>();
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_thread = stop.clone();
        let thread =
            std::thread::spawn(move || stream_io(stream, peer, &out_rx, &tx, &stop_thread));
        SipLink {
            local,
            out: LinkOut::Stream(out_tx),
            rx,
            stop,
            thread: Some(thread),
        }
    }

    /// Sends `data`: to `to` over UDP, over the connection otherwise.
    fn send(&self, data: &[u8], to: SocketAddr) -> Result<(), CallError> {
        match &self.out {
            LinkOut::Udp(s) => {
                s.send_to(data, to)?;
                Ok(())
            }
            LinkOut::Stream(tx) => tx.send(data.to_vec()).map_err(|_| CallError::Closed),
        }
    }

    /// Stops the I/O thread; a connection writes what is queued and closes.
    fn close(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A connection the SIP I/O thread can read, write and close cleanly.
trait SipStream: Read + Write + Send {
    fn close(&mut self);
}

impl SipStream for TcpStream {
    fn close(&mut self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

impl SipStream for StreamOwned<ClientConnection, TcpStream> {
    fn close(&mut self) {
        self.conn.send_close_notify();
        let _ = self.flush();
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }
}

/// The connection's thread: writes what is queued, reads with a short timeout, frames what it
/// reads by Content-Length and hands whole messages over; answers keep-alive pings.
fn stream_io(
    mut stream: Box<dyn SipStream>,
    peer: SocketAddr,
    out: &mpsc::Receiver<Vec<u8>>,
    tx: &mpsc::Sender<(SocketAddr, Vec<u8>)>,
    stop: &AtomicBool,
) {
    let mut framer = Framer::new(msg::MAX_MESSAGE);
    let mut buf = vec![0u8; 16 * 1024];
    'io: loop {
        while let Ok(data) = out.try_recv() {
            if stream
                .write_all(&data)
                .and_then(|()| stream.flush())
                .is_err()
            {
                break 'io;
            }
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                framer.push(&buf[..n]);
                loop {
                    match framer.next_frame() {
                        Ok(Some(Frame::Message(m))) => {
                            if tx.send((peer, m)).is_err() {
                                break 'io;
                            }
                        }
                        Ok(Some(Frame::Ping)) => {
                            let _ = stream.write_all(PONG).and_then(|()| stream.flush());
                        }
                        Ok(None) => break,
                        Err(_) => break 'io,
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(_) => break,
        }
    }
    stream.close();
}

/// rustls with `ring`; server certificates checked against `ca`, or not at all.
fn tls_client_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, CallError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| CallError::Tls(e.to_string()))?;
    let config = match ca {
        Some(path) => {
            let bad =
                |e: &dyn std::fmt::Display| CallError::Tls(format!("{}: {e}", path.display()));
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
                roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
            }
            if roots.is_empty() {
                return Err(bad(&"no CA certificate in the file"));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Believes any server certificate (still checking that the server holds its key). Only for
/// `mohd call` without `--ca`, which says so in its help.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// An RTP port and the RTCP port above it, both ours, so RTCP from the server is not bounced.
fn bind_rtp_pair(ip: std::net::IpAddr) -> std::io::Result<(UdpSocket, Option<UdpSocket>)> {
    for _ in 0..32 {
        let rtp = UdpSocket::bind((ip, 0))?;
        let port = rtp.local_addr()?.port();
        if port % 2 == 0
            && let Ok(rtcp) = UdpSocket::bind((ip, port + 1))
        {
            return Ok((rtp, Some(rtcp)));
        }
    }
    Ok((UdpSocket::bind((ip, 0))?, None))
}

fn client_offer(rtp: SocketAddr, codecs: &[Codec], ptime: Option<u32>) -> String {
    let (net, ip) = match rtp.ip() {
        std::net::IpAddr::V4(ip) => ("IP4", ip.to_string()),
        std::net::IpAddr::V6(ip) => ("IP6", ip.to_string()),
    };
    let mut s = format!(
        "v=0\r\no=mohd-call {id} {id} IN {net} {ip}\r\ns=mohd call\r\nc=IN {net} {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP",
        id = rand::random::<u32>(),
        port = rtp.port()
    );
    for c in codecs {
        s.push_str(&format!(" {}", c.payload_type()));
    }
    s.push_str(" 101\r\n");
    for c in codecs {
        s.push_str(&format!(
            "a=rtpmap:{} {}/8000\r\n",
            c.payload_type(),
            c.encoding_name()
        ));
    }
    s.push_str("a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n");
    if let Some(p) = ptime {
        s.push_str(&format!("a=ptime:{p}\r\n"));
    }
    s.push_str("a=recvonly\r\n");
    s
}

/// Our side of the dialog, for ACK and BYE (§12.2.1.1).
struct Dialog<'a> {
    transport: Transport,
    target: &'a str,
    local: SocketAddr,
    from: &'a str,
    to: &'a str,
    call_id: &'a str,
    route: &'a [String],
}

impl Dialog<'_> {
    fn request(&self, method: &str, cseq: u32) -> String {
        let mut s = format!(
            "{method} {target} SIP/2.0\r\nVia: SIP/2.0/{tp} {via};branch=z9hG4bK{b};rport\r\nMax-Forwards: 70\r\n",
            target = self.target,
            tp = self.transport.via_name(),
            via = host_port(self.local),
            b = token()
        );
        for r in self.route {
            s.push_str(&format!("Route: {r}\r\n"));
        }
        s.push_str(&format!(
            "From: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
            from = self.from,
            to = self.to,
            call_id = self.call_id,
        ));
        s
    }
}

/// ACK for a non-2xx final: same branch as the INVITE, To from the response (§17.1.1.3).
fn ack_for_failure(invite: &str, resp: &msg::Response) -> String {
    let Ok(Message::Request(req)) = msg::parse(invite.as_bytes()) else {
        return String::new();
    };
    let via = req.headers.get("Via").unwrap_or_default();
    let from = req.headers.get("From").unwrap_or_default();
    let to = resp.headers.get("To").unwrap_or_default();
    let call_id = req.call_id().unwrap_or_default();
    let cseq = req.cseq().map(|(n, _)| n).unwrap_or(1);
    format!(
        "ACK {uri} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} ACK\r\nContent-Length: 0\r\n\r\n",
        uri = req.uri
    )
}

fn simple_response(req: &msg::Request, code: u16) -> String {
    let mut s = format!("SIP/2.0 {code} {}\r\n", msg::reason_phrase(code));
    for v in req.headers.get_all("Via") {
        s.push_str(&format!("Via: {v}\r\n"));
    }
    for h in ["From", "To", "Call-ID", "CSeq"] {
        if let Some(v) = req.headers.get(h) {
            s.push_str(&format!("{h}: {v}\r\n"));
        }
    }
    s.push_str("Content-Length: 0\r\n\r\n");
    s
}

fn write_wav(path: &std::path::Path, samples: &[i16]) -> Result<(), String> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w =
        hound::WavWriter::create(path, spec).map_err(|e| format!("{}: {e}", path.display()))?;
    for s in samples {
        w.write_sample(*s)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    w.finalize().map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> SipUri {
        SipUri::parse(s).unwrap()
    }

    #[test]
    fn transport_comes_from_the_flag_then_the_uri() {
        let plain = uri("sip:moh@192.0.2.1:5060");
        assert_eq!(choose_transport(None, &plain), Transport::Udp);
        assert_eq!(
            choose_transport(Some(TransportChoice::Tcp), &plain),
            Transport::Tcp
        );
        assert_eq!(
            choose_transport(None, &uri("sips:moh@192.0.2.1")),
            Transport::Tls
        );
        assert_eq!(
            choose_transport(None, &uri("sip:moh@192.0.2.1;transport=TCP")),
            Transport::Tcp
        );
        // The flag wins over the URI.
        assert_eq!(
            choose_transport(
                Some(TransportChoice::Udp),
                &uri("sip:moh@192.0.2.1;transport=tcp")
            ),
            Transport::Udp
        );
    }

    #[test]
    fn request_uri_says_the_transport_once() {
        let plain = "sip:moh@192.0.2.1:5060";
        let t = uri(plain);
        assert_eq!(uri_with_transport(plain, &t, Transport::Udp), plain);
        assert_eq!(
            uri_with_transport(plain, &t, Transport::Tcp),
            "sip:moh@192.0.2.1:5060;transport=tcp"
        );
        assert_eq!(
            uri_with_transport(plain, &t, Transport::Tls),
            "sip:moh@192.0.2.1:5060;transport=tls"
        );
        let with_headers = "sip:moh@192.0.2.1?Subject=x";
        assert_eq!(
            uri_with_transport(with_headers, &uri(with_headers), Transport::Tcp),
            "sip:moh@192.0.2.1;transport=tcp?Subject=x"
        );
        let already = "sip:moh@192.0.2.1;transport=tcp";
        assert_eq!(
            uri_with_transport(already, &uri(already), Transport::Tcp),
            already
        );
        let sips = "sips:moh@192.0.2.1";
        assert_eq!(uri_with_transport(sips, &uri(sips), Transport::Tls), sips);
    }

    /// Feeds `seconds` of 20 ms packets whose arrival is `delay(k)` after their timestamp.
    fn drift_of(seconds: u64, ts0: u32, delay: impl Fn(u64) -> Duration) -> ReceiverDrift {
        let t0 = Instant::now();
        let mut d = ReceiverDrift::default();
        for k in 0..seconds * 50 {
            let at = t0 + Duration::from_millis(20 * k) + delay(k);
            d.on_packet(at, Ts32(ts0).add_samples(160 * k));
        }
        d
    }

    #[test]
    fn receiver_drift_ignores_delays_and_sees_clock_drift() {
        // Perfect pacing across the 32-bit wrap: no drift.
        let d = drift_of(60, u32::MAX - 8000, |_| Duration::ZERO);
        assert_eq!(d.drift_ms(), Some(0.0));
        assert!((d.ts_elapsed_s() - 59.98).abs() < 1e-9);
        assert!((d.arrival_elapsed_s() - 59.98).abs() < 1e-9);
        // Scheduling noise (up to 15 ms on four packets in five) and a late first packet
        // are filtered out.
        let d = drift_of(60, 0, |k| {
            if k == 0 {
                Duration::from_millis(7)
            } else {
                Duration::from_micros((k * 7919 % 5) * 3000)
            }
        });
        assert_eq!(d.drift_ms(), Some(0.0));
        // A sender clock 50 ppm slow: 3 ms late after 60 s.
        let d = drift_of(60, 0, |k| Duration::from_nanos(20_000_000 * k / 20_000));
        let ms = d.drift_ms().unwrap();
        assert!((2.6..=3.0).contains(&ms), "{ms}");
        // Short calls compare halves; no packets, no figure.
        let d = drift_of(2, 0, |k| Duration::from_micros(100 * k));
        assert!(d.drift_ms().unwrap() > 0.0);
        assert_eq!(ReceiverDrift::default().drift_ms(), None);
    }

    #[test]
    fn a_missing_ca_file_is_a_tls_error_naming_it() {
        let e = tls_client_config(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(
            matches!(&e, CallError::Tls(m) if m.contains("/nonexistent/ca.pem")),
            "{e}"
        );
    }
}
