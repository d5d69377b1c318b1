//! `mohd call`: a small test softphone, for an admin checking a box and for the tests.
//!
//! Owns one call's client side: INVITE (offering the one codec asked for, retransmitted per
//! Timer A on UDP), ACK, receiving and decoding the RTP (G.711, G.722, Opus; recorded at the
//! codec's audio rate), BYE (retransmitted per Timer E on UDP), and the RFC 3550 receive
//! statistics. With `--srtp` the offer is `RTP/SAVP` with an SDES key per suite (RFC 4568), and
//! what arrives is authenticated and decrypted (SRTP and SRTCP), rejections counted. SIP goes over UDP, or over one TCP or TLS connection that carries
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
use crate::codec::g722::G722Decoder;
use crate::codec::opus::{OpusDecoder, OpusError};
use crate::rtp::packet::parse_rtp;
use crate::rtp::srtp::{SrtpError, SrtpParams, SrtpReceiver, SrtpSuite};
use crate::rtp::stats::{ReceiverStats, StatsReport};
use crate::sip::client_txn::{ClientTxn, Link};
use crate::sip::digest;
use crate::sip::endpoint::Transport;
use crate::sip::msg::{self, Headers, Message, Method, Request, SipUri};
use crate::sip::sdes::{self, CryptoError, CryptoLine};
use crate::sip::sdp;
use crate::sip::shell::local_ip_towards;
use crate::sip::timer::Step;
use crate::sip::transport::{Frame, Framer, PONG};

#[derive(clap::Args, Debug, Clone)]
pub struct CallArgs {
    /// Whom to call, e.g. sip:moh@192.0.2.10 or sip:moh@127.0.0.1:5060.
    pub uri: String,
    /// How long to listen before hanging up.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Write the decoded audio to this WAV file (16-bit, mono, at the codec's audio rate:
    /// 8 kHz for PCMU/PCMA, 16 kHz for G.722, 48 kHz for Opus).
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// The codec to offer (the only one offered, so the server must speak it).
    #[arg(long, value_enum, default_value = "pcmu")]
    pub codec: CodecChoice,
    /// Offer SRTP (RTP/SAVP with SDES keys, RFC 4568: one a=crypto line per suite mohd
    /// implements) and decrypt what arrives. SDES keys travel in the SDP, so use it over TLS.
    #[arg(long)]
    pub srtp: bool,
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
    G722,
    Opus,
}

impl CodecChoice {
    pub fn codec(self) -> Codec {
        match self {
            CodecChoice::Pcmu => Codec::Pcmu,
            CodecChoice::Pcma => Codec::Pcma,
            CodecChoice::G722 => Codec::G722,
            CodecChoice::Opus => Codec::Opus,
        }
    }
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
    #[error("cannot write the recording: {}: {source}", path.display())]
    Record { path: PathBuf, source: hound::Error },
    #[error("cannot decode the stream: {0}")]
    Decoder(#[from] OpusError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("the SIP connection closed")]
    Closed,
}

#[derive(Debug, Clone, Serialize)]
pub struct CallReport {
    pub uri: String,
    pub codec: String,
    /// The rate of the decoded audio (and of the recording), in Hz.
    pub audio_rate: u32,
    /// The RTP clock rate of the codec, in Hz.
    pub clock_rate: u32,
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
    /// Packets whose payload the decoder refused (counted, not recorded).
    pub undecodable: u64,
    /// RTCP packets (compounds) received on the RTCP port.
    pub rtcp_received: u64,
    /// The SRTP the call used; `null` for plain RTP.
    pub srtp: Option<SrtpReport>,
}

/// What SRTP did on the call.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SrtpReport {
    /// The suite the answer chose, as named in `a=crypto`.
    pub suite: String,
    /// RTP packets dropped because their authentication tag did not match.
    pub rtp_auth_failures: u64,
    /// RTP packets dropped as replays (or older than the replay window).
    pub rtp_replays: u64,
    /// RTP packets dropped as not SRTP at all (too short, wrong version).
    pub rtp_malformed: u64,
    /// RTCP compounds dropped for failing authentication (or as replays, or malformed).
    pub rtcp_rejected: u64,
}

impl SrtpReport {
    fn count_rtp(&mut self, error: SrtpError) {
        match error {
            SrtpError::AuthenticationFailed => self.rtp_auth_failures += 1,
            SrtpError::Replay => self.rtp_replays += 1,
            _ => self.rtp_malformed += 1,
        }
    }
}

impl CallReport {
    pub fn human(&self) -> String {
        let s = &self.stats;
        format!(
            "call {uri}\n  codec        {codec} ({ptime} ms, {rate} Hz audio, {clock} Hz clock)\n  setup        {setup:.1} ms (INVITE to 200 OK)\n  media from   {remote}\n  packets      {packets} received, {lost} lost, {dup} duplicated, {reord} reordered\n  jitter       {jm:.2} ms mean, {jx:.2} ms max\n  largest gap  {gap:.1} ms\n  drift        {drift} over {elapsed:.1} s\n  RTCP         {rtcp} received\n  SRTP         {srtp}\n  BYE          {bye}\n",
            uri = self.uri,
            codec = self.codec,
            ptime = self.ptime_ms,
            rate = self.audio_rate,
            clock = self.clock_rate,
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
            rtcp = self.rtcp_received,
            srtp = self.srtp.as_ref().map_or_else(
                || "off".to_string(),
                |r| format!(
                    "{}: RTP {} failed authentication, {} replayed, {} malformed; RTCP {} rejected",
                    r.suite, r.rtp_auth_failures, r.rtp_replays, r.rtp_malformed, r.rtcp_rejected
                )
            ),
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

/// Places the call `args` describes and reports on it: the steps in order, each its own
/// function (invite, wait for the answer, ACK, record RTP, BYE, report).
pub fn run(args: &CallArgs) -> Result<CallReport, CallError> {
    let dialed = Dialed::resolve(&args.uri, args.transport)?;
    let timeout = Duration::from_secs_f64(args.timeout.max(0.1));
    let sip = match dialed.transport {
        Transport::Udp => SipLink::udp(dialed.addr)?,
        Transport::Tcp => SipLink::tcp(dialed.addr, timeout)?,
        Transport::Tls => SipLink::tls(dialed.addr, &dialed.host, args.ca.as_deref(), timeout)?,
    };
    let result = place_call(args, &dialed, &sip, timeout);
    sip.close();
    result
}

fn place_call(
    args: &CallArgs,
    dialed: &Dialed,
    sip: &SipLink,
    timeout: Duration,
) -> Result<CallReport, CallError> {
    let (rtp, rtcp) = bind_rtp_pair(sip.local.ip())?;
    let codecs = [args.codec.codec()];
    let crypto = match args.srtp {
        true => offer_crypto(&mut rand::rng()),
        false => Vec::new(),
    };
    let media_offer = caller_media(rtp.local_addr()?, &codecs);
    let offer = sdp::caller_offer(&media_offer, args.ptime, &crypto);
    let credentials = args
        .user
        .clone()
        .map(|u| (u, args.password.clone().unwrap_or_default()));
    let mut call = Call::new(dialed, sip.local, offer, credentials);
    let sent_at = Instant::now();
    let ok = invite(&mut call, sip, sent_at + timeout, args.timeout)?;
    let setup = sent_at.elapsed();
    let (ack, dest) = call.confirm(&ok);
    sip.send(&ack, dest)?;
    let negotiated = negotiate(&ok, &codecs, dest, &crypto)?;
    let media = receive_media(&rtp, rtcp.as_ref(), sip, &call, &negotiated, args)?;
    let bye_status = match media.ended_by_remote {
        true => None,
        false => hang_up(&mut call, sip)?,
    };
    if let Some(path) = &args.record {
        write_wav(
            path,
            &media.recording.samples,
            negotiated.codec.audio_rate(),
        )
        .map_err(|source| CallError::Record {
            path: path.clone(),
            source,
        })?;
    }
    Ok(report(args, setup, &negotiated, media, bye_status))
}

/// Whom we call: the URI, the transport and the address its host resolved to.
pub(crate) struct Dialed {
    text: String,
    uri: SipUri,
    host: String,
    pub(crate) transport: Transport,
    pub(crate) addr: SocketAddr,
}

impl Dialed {
    pub(crate) fn resolve(
        text: &str,
        transport: Option<TransportChoice>,
    ) -> Result<Dialed, CallError> {
        let uri = SipUri::parse(text).ok_or_else(|| CallError::BadUri(text.to_string()))?;
        let transport = choose_transport(transport, &uri);
        let host = uri.host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port.unwrap_or(if transport == Transport::Tls {
            5061
        } else {
            5060
        });
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|_| CallError::Resolve(uri.host.clone()))?
            .next()
            .ok_or_else(|| CallError::Resolve(uri.host.clone()))?;
        Ok(Dialed {
            text: text.to_string(),
            host: host.to_string(),
            uri,
            transport,
            addr,
        })
    }
}

/// Our side of the SDP: receive only, on `rtp`.
pub(crate) fn caller_media(rtp: SocketAddr, codecs: &[Codec]) -> sdp::LocalMedia {
    let session_id = u64::from(rand::random::<u32>());
    sdp::LocalMedia {
        ip: rtp.ip(),
        rtp_port: rtp.port(),
        session_id,
        session_version: session_id,
        codecs: codecs.to_vec(),
        username: "mohd-call".to_string(),
        answer: sdp::AnswerOptions::default(),
    }
}

/// Sends the INVITE and waits for its final answer, retransmitting per Timer A on UDP and
/// answering one digest challenge (RFC 8760). Gives up at `deadline`.
fn invite(
    call: &mut Call,
    sip: &SipLink,
    deadline: Instant,
    timeout_s: f64,
) -> Result<msg::Response, CallError> {
    let mut txn = call.invite(Instant::now(), deadline, None);
    sip.transmit(&txn)?;
    loop {
        match txn.on_timeout(Instant::now()) {
            Step::Fire => sip.transmit(&txn)?,
            Step::GiveUp => return Err(CallError::Timeout(timeout_s)),
            Step::Idle => {}
        }
        let wait = txn.next_timeout().saturating_duration_since(Instant::now());
        let data = match sip.rx.recv_timeout(wait.max(Duration::from_millis(1))) {
            Ok((_, data)) => data,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(match call.transport.is_reliable() {
                    true => CallError::Closed,
                    false => CallError::Timeout(timeout_s),
                });
            }
        };
        match call.on_invite_response(&data) {
            InviteOutcome::Ignored => {}
            InviteOutcome::Provisional => txn.on_provisional(),
            InviteOutcome::Answered(ok) => return Ok(ok),
            InviteOutcome::Challenged(resp) => {
                let _ = sip.send(&call.ack_failure(&resp), txn.dest);
                let Some(authorization) = call.answer_challenge(&resp) else {
                    return Err(CallError::Refused(resp.code, resp.reason));
                };
                txn = call.invite(Instant::now(), deadline, Some(authorization));
                sip.transmit(&txn)?;
            }
            InviteOutcome::Refused(resp) => {
                let _ = sip.send(&call.ack_failure(&resp), txn.dest);
                return Err(CallError::Refused(resp.code, resp.reason));
            }
        }
    }
}

/// Our offer's `a=crypto` lines: every suite mohd implements, strongest first, each with its
/// own fresh key (RFC 4568 §6.1: a key per line), tags 1, 2, 3.
pub(crate) fn offer_crypto<R: rand::CryptoRng + rand::RngCore>(rng: &mut R) -> Vec<CryptoLine> {
    (1..)
        .zip(SrtpSuite::ALL)
        .map(|(tag, suite)| CryptoLine::generate(tag, suite, rng))
        .collect()
}

/// The media the 200 OK's answer settles; `peer` is where the answer came from. With
/// `crypto` offered, the answer must be `RTP/SAVP` with an `a=crypto` line accepting one.
pub(crate) fn negotiate(
    ok: &msg::Response,
    codecs: &[Codec],
    peer: SocketAddr,
    crypto: &[CryptoLine],
) -> Result<sdp::MediaParams, CallError> {
    let mut answer = std::str::from_utf8(&ok.body)
        .ok()
        .and_then(|s| sdp::parse(s).ok())
        .ok_or_else(|| CallError::BadAnswer("no SDP in 200 OK".into()))?;
    let srtp = match crypto.is_empty() {
        true => None,
        false => Some(answer_srtp(&mut answer, crypto)?),
    };
    let mut params = sdp::negotiate_answer(codecs, &answer, peer)
        .map_err(|e| CallError::BadAnswer(format!("{e:?}")))?;
    params.srtp = srtp;
    Ok(params)
}

/// The SRTP an answer to our SAVP offer settles: its audio stream's first `a=crypto` line
/// that accepts one of ours. The stream is then read as the RTP it carries (SAVP is AVP with
/// keys), so the codec negotiation needs no SRTP of its own.
fn answer_srtp(
    answer: &mut sdp::SessionDescription,
    offered: &[CryptoLine],
) -> Result<SrtpParams, CallError> {
    let m = answer
        .media
        .iter_mut()
        .find(|m| m.kind.eq_ignore_ascii_case("audio") && m.port != 0)
        .ok_or_else(|| CallError::BadAnswer("no audio stream in the answer".into()))?;
    if !m.proto.eq_ignore_ascii_case("RTP/SAVP") {
        return Err(CallError::BadAnswer(format!(
            "SRTP offered, answered with {}",
            m.proto
        )));
    }
    let mut last_error = CryptoError::Missing;
    for value in m
        .attributes
        .iter()
        .filter(|a| a.name.eq_ignore_ascii_case("crypto"))
        .filter_map(|a| a.value.as_deref())
    {
        match sdes::from_answer(offered, value) {
            Ok(params) => {
                m.proto = "RTP/AVP".to_string();
                return Ok(params);
            }
            Err(e) => last_error = e,
        }
    }
    Err(CallError::BadAnswer(format!(
        "no usable a=crypto in the answer: {last_error}"
    )))
}

/// What the call heard.
struct ReceivedMedia {
    stats: ReceiverStats,
    drift: ReceiverDrift,
    recording: Recording,
    ended_by_remote: bool,
    rtcp_received: u64,
    /// The peer's SRTP context, and what it rejected.
    srtp: Option<(SrtpReceiver, SrtpReport)>,
}

/// Receives RTP for `--seconds`, answering in-dialog requests meanwhile; stops early when the
/// other side sends BYE.
fn receive_media(
    rtp: &UdpSocket,
    rtcp: Option<&UdpSocket>,
    sip: &SipLink,
    call: &Call,
    negotiated: &sdp::MediaParams,
    args: &CallArgs,
) -> Result<ReceivedMedia, CallError> {
    rtp.set_read_timeout(Some(Duration::from_millis(20)))?;
    let codec = negotiated.codec;
    let max_samples = (args.seconds.max(0.0) + 2.0) * f64::from(codec.audio_rate());
    let mut media = ReceivedMedia::new(codec, max_samples as usize, negotiated.srtp)?;
    if let Some(socket) = rtcp {
        socket.set_nonblocking(true)?;
    }
    let mut buf = vec![0u8; 2048];
    let listen_until = Instant::now() + Duration::from_secs_f64(args.seconds.max(0.0));
    while Instant::now() < listen_until && !media.ended_by_remote {
        if let Ok((n, _)) = rtp.recv_from(&mut buf) {
            media.on_rtp(Instant::now(), &mut buf[..n], negotiated);
        }
        while let Some(Ok((n, _))) = rtcp.map(|s| s.recv_from(&mut buf)) {
            media.on_rtcp(&mut buf[..n]);
        }
        while let Ok((from, data)) = sip.rx.try_recv() {
            if let Some(reply) = call.on_mid_call(from, &data) {
                let _ = sip.send(&reply.data, reply.to);
                media.ended_by_remote |= reply.ends_call;
            }
        }
    }
    Ok(media)
}

impl ReceivedMedia {
    fn new(
        codec: Codec,
        max_samples: usize,
        srtp: Option<SrtpParams>,
    ) -> Result<ReceivedMedia, OpusError> {
        Ok(ReceivedMedia {
            stats: ReceiverStats::new(codec.clock_rate()),
            drift: ReceiverDrift::new(codec.clock_rate()),
            recording: Recording::new(codec, max_samples)?,
            ended_by_remote: false,
            rtcp_received: 0,
            srtp: srtp.map(|p| {
                let report = SrtpReport {
                    suite: p.suite.sdp_name().to_string(),
                    ..SrtpReport::default()
                };
                (p.receiver(), report)
            }),
        })
    }

    /// One datagram on the RTP port: authenticated and decrypted in place first under SRTP
    /// (a rejected one is counted and goes no further).
    fn on_rtp(&mut self, arrival: Instant, packet: &mut [u8], negotiated: &sdp::MediaParams) {
        let len = match &mut self.srtp {
            None => packet.len(),
            Some((receiver, report)) => match receiver.unprotect_rtp(packet) {
                Ok(len) => len,
                Err(e) => {
                    report.count_rtp(e);
                    return;
                }
            },
        };
        let Ok(pkt) = parse_rtp(&packet[..len]) else {
            return;
        };
        if pkt.header.payload_type != negotiated.payload_type {
            return;
        }
        let (seq, ts) = (pkt.header.seq.get(), pkt.header.timestamp.get());
        self.stats.on_packet(arrival, seq, ts);
        self.drift.on_packet(arrival, Ts32(ts));
        self.recording.add(ts, pkt.payload);
    }

    /// One datagram on the RTCP port: counted, and under SRTP checked (SRTCP, RFC 3711 §3.4).
    fn on_rtcp(&mut self, packet: &mut [u8]) {
        if let Some((receiver, report)) = &mut self.srtp
            && receiver.unprotect_rtcp(packet).is_err()
        {
            report.rtcp_rejected += 1;
            return;
        }
        self.rtcp_received += 1;
    }
}

/// One codec's decoder, fed packets in arrival order.
enum StreamDecoder {
    G711(Codec),
    /// Boxed: its state (two sub-bands and the QMF) is 400 bytes, the others are small.
    G722(Box<G722Decoder>),
    Opus(OpusDecoder),
}

impl StreamDecoder {
    fn new(codec: Codec) -> Result<StreamDecoder, OpusError> {
        Ok(match codec {
            Codec::Pcmu | Codec::Pcma => StreamDecoder::G711(codec),
            Codec::G722 => StreamDecoder::G722(Box::default()),
            Codec::Opus => StreamDecoder::Opus(OpusDecoder::new(codec.audio_rate())?),
        })
    }

    /// Decodes `payload` into `out`, returning the samples written; `None` if the payload is
    /// not valid for the codec.
    fn decode(&mut self, payload: &[u8], out: &mut [i16]) -> Option<usize> {
        match self {
            StreamDecoder::G711(codec) => {
                let n = payload.len().min(out.len());
                codec.decode(&payload[..n], &mut out[..n]);
                Some(n)
            }
            StreamDecoder::G722(decoder) => {
                let n = payload.len().min(out.len() / 2);
                Some(decoder.decode(&payload[..n], out))
            }
            StreamDecoder::Opus(decoder) => decoder.decode(payload, out).ok(),
        }
    }

    /// Fills `out` with a guess at lost audio: Opus's concealment; the others leave silence.
    fn conceal(&mut self, out: &mut [i16]) -> usize {
        match self {
            StreamDecoder::Opus(decoder) => decoder.conceal(out.len(), out).unwrap_or(0),
            _ => 0,
        }
    }
}

/// Longest gap Opus concealment fills (RFC 7587 §3.2 leaves it to the receiver; past this
/// the stream is more likely gone than late, and silence is the honest recording).
const MAX_CONCEALED_MS: u32 = 100;

/// The decoded audio at the codec's audio rate, placed by RTP timestamp (gaps stay silent,
/// or for Opus are concealed up to [`MAX_CONCEALED_MS`]), up to a cap.
struct Recording {
    decoder: StreamDecoder,
    samples: Vec<i16>,
    max_samples: usize,
    first_ts: Option<u32>,
    /// Audio samples per RTP clock tick: 2 for G.722 (16 kHz audio on the 8 kHz clock), else 1.
    samples_per_tick: usize,
    /// Where the last packet's audio ended, in samples from the first packet.
    end: usize,
    undecodable: u64,
    pcm: Vec<i16>,
}

impl Recording {
    fn new(codec: Codec, max_samples: usize) -> Result<Recording, OpusError> {
        Ok(Recording {
            decoder: StreamDecoder::new(codec)?,
            samples: Vec::new(),
            max_samples,
            first_ts: None,
            samples_per_tick: (codec.audio_rate() / codec.clock_rate()).max(1) as usize,
            end: 0,
            undecodable: 0,
            // 120 ms at 48 kHz, the longest Opus packet.
            pcm: vec![0i16; 5760],
        })
    }

    fn add(&mut self, ts: u32, payload: &[u8]) {
        let first = *self.first_ts.get_or_insert(ts);
        let offset = ts.wrapping_sub(first) as usize * self.samples_per_tick;
        if offset > self.end && offset < self.max_samples {
            self.conceal(offset);
        }
        let Some(len) = self.decoder.decode(payload, &mut self.pcm) else {
            self.undecodable += 1;
            return;
        };
        self.place(offset, len);
    }

    /// Fills a gap from `self.end` up to `offset` with concealment where the codec has it.
    fn conceal(&mut self, offset: usize) {
        let StreamDecoder::Opus(decoder) = &self.decoder else {
            return;
        };
        let frame = decoder.frame_samples();
        let limit = decoder.rate() as usize * MAX_CONCEALED_MS as usize / 1000;
        if offset - self.end > limit {
            return;
        }
        while self.end + frame <= offset {
            let start = self.end;
            let n = self.decoder.conceal(&mut self.pcm[..frame]);
            if n == 0 {
                return;
            }
            self.place(start, n);
        }
    }

    fn place(&mut self, offset: usize, len: usize) {
        if offset < self.max_samples {
            let end = (offset + len).min(self.max_samples);
            if self.samples.len() < end {
                self.samples.resize(end, 0);
            }
            self.samples[offset..end].copy_from_slice(&self.pcm[..end - offset]);
        }
        self.end = self.end.max(offset + len);
    }
}

/// BYE, retransmitted per Timer E on UDP, until its final answer or Timer F.
fn hang_up(call: &mut Call, sip: &SipLink) -> Result<Option<u16>, CallError> {
    let Some(mut txn) = call.bye(Instant::now()) else {
        return Ok(None);
    };
    sip.transmit(&txn)?;
    loop {
        match txn.on_timeout(Instant::now()) {
            Step::Fire => sip.transmit(&txn)?,
            Step::GiveUp => return Ok(None),
            Step::Idle => {}
        }
        let wait = txn.next_timeout().saturating_duration_since(Instant::now());
        match sip.rx.recv_timeout(wait.max(Duration::from_millis(1))) {
            Ok((_, data)) => match call.on_bye_response(&data) {
                Some(code) if code >= 200 => return Ok(Some(code)),
                Some(_) => txn.on_provisional(),
                None => {}
            },
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(None),
        }
    }
}

fn report(
    args: &CallArgs,
    setup: Duration,
    negotiated: &sdp::MediaParams,
    media: ReceivedMedia,
    bye_status: Option<u16>,
) -> CallReport {
    CallReport {
        uri: args.uri.clone(),
        codec: negotiated.codec.encoding_name().to_string(),
        audio_rate: negotiated.codec.audio_rate(),
        clock_rate: negotiated.codec.clock_rate(),
        ptime_ms: negotiated.ptime_ms,
        setup_ms: setup.as_secs_f64() * 1000.0,
        seconds: args.seconds,
        remote_rtp: negotiated.remote_rtp.to_string(),
        stats: media.stats.report(),
        drift_ms: media.drift.drift_ms(),
        ts_elapsed_s: media.drift.ts_elapsed_s(),
        arrival_elapsed_s: media.drift.arrival_elapsed_s(),
        bye_status,
        ended_by_remote: media.ended_by_remote,
        recorded_samples: media.recording.samples.len(),
        undecodable: media.recording.undecodable,
        rtcp_received: media.rtcp_received,
        srtp: media.srtp.map(|(_, report)| report),
    }
}

/// What an answer to our INVITE means.
pub(crate) enum InviteOutcome {
    /// Not for the current INVITE.
    Ignored,
    Provisional,
    Answered(msg::Response),
    /// 401/407 to the first INVITE: answer it when we have credentials.
    Challenged(msg::Response),
    Refused(msg::Response),
}

/// A message to send back during the call.
pub(crate) struct MidCallReply {
    pub(crate) data: Vec<u8>,
    pub(crate) to: SocketAddr,
    /// It answers the other side's BYE.
    pub(crate) ends_call: bool,
}

/// One call as the caller (UAC) sees it: the requests it sends and what the answers mean
/// (RFC 3261 §8.1, §12.1.2, §13.2, §15). No socket and no clock: the step functions above move
/// its messages, so one driver could run many calls.
pub(crate) struct Call {
    transport: Transport,
    /// Our SIP address (Via, Contact, From).
    local: SocketAddr,
    /// Where out-of-dialog requests go.
    target: SocketAddr,
    request_uri: String,
    from: String,
    /// To as dialed (no tag).
    to: String,
    call_id: String,
    contact: String,
    /// The SDP offer in our INVITE.
    offer: String,
    credentials: Option<(String, String)>,
    cseq: u32,
    /// The INVITE last sent (for the ACK of a non-2xx answer).
    invite: Option<Request>,
    dialog: Option<Dialog>,
}

/// Our side of the dialog once the 2xx came (§12.1.2).
struct Dialog {
    /// To with the remote tag.
    to: String,
    remote_target: String,
    /// The 2xx's Record-Route in reverse.
    route: Vec<String>,
    /// Over UDP, the remote target's address; over TCP/TLS everything uses the one connection.
    dest: SocketAddr,
    /// Our ACK, resent if the 2xx is.
    ack: Vec<u8>,
}

impl Call {
    /// A call to `dialed` from our SIP address `local`, offering `offer`; `credentials`
    /// (user, password) answer one digest challenge.
    pub(crate) fn new(
        dialed: &Dialed,
        local: SocketAddr,
        offer: String,
        credentials: Option<(String, String)>,
    ) -> Call {
        let transport = dialed.transport;
        let contact = uri_with_transport(
            &format!("{}:mohd-call@{}", dialed.uri.scheme, host_port(local)),
            &dialed.uri,
            transport,
        );
        Call {
            transport,
            local,
            target: dialed.addr,
            request_uri: uri_with_transport(&dialed.text, &dialed.uri, transport),
            from: format!("<sip:mohd-call@{}>;tag={}", host_port(local), token()),
            to: format!("<{}>", dialed.text),
            call_id: format!("{}@{}", token(), local.ip()),
            contact: format!("<{contact}>"),
            offer,
            credentials,
            cseq: 0,
            invite: None,
            dialog: None,
        }
    }

    /// The Call-ID, which tells this call's messages from other calls'.
    pub(crate) fn call_id(&self) -> &str {
        &self.call_id
    }

    fn link(&self, dest: SocketAddr) -> Link {
        Link {
            transport: self.transport,
            local: self.local,
            dest,
        }
    }

    /// Via, Max-Forwards, Route, From, To, Call-ID and CSeq of a request of ours, and its
    /// branch.
    fn request(
        &self,
        method: Method,
        uri: &str,
        to: &str,
        cseq: u32,
        route: &[String],
    ) -> (Request, String) {
        let branch = format!("z9hG4bK{}", token());
        let mut headers = Headers::new();
        headers.push(
            "Via",
            format!(
                "SIP/2.0/{} {};branch={branch};rport",
                self.transport.via_name(),
                host_port(self.local)
            ),
        );
        headers.push("Max-Forwards", "70");
        for r in route {
            headers.push("Route", r.clone());
        }
        headers.push("From", self.from.clone());
        headers.push("To", to.to_string());
        headers.push("Call-ID", self.call_id.clone());
        headers.push("CSeq", format!("{cseq} {method}"));
        let request = Request {
            method,
            uri: uri.to_string(),
            headers,
            body: Vec::new(),
        };
        (request, branch)
    }

    /// A new INVITE (with `authorization`, a header name and value, after a challenge), as a
    /// client transaction that gives up at `deadline`.
    pub(crate) fn invite(
        &mut self,
        now: Instant,
        deadline: Instant,
        authorization: Option<(&'static str, String)>,
    ) -> ClientTxn {
        self.cseq += 1;
        let (mut req, branch) =
            self.request(Method::Invite, &self.request_uri, &self.to, self.cseq, &[]);
        let h = &mut req.headers;
        h.push("Contact", self.contact.clone());
        h.push(
            "User-Agent",
            format!("mohd-call/{}", env!("CARGO_PKG_VERSION")),
        );
        h.push("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS");
        if let Some((name, value)) = authorization {
            h.push(name, value);
        }
        h.push("Content-Type", "application/sdp");
        req.body = self.offer.clone().into_bytes();
        let bytes = req.to_bytes();
        self.invite = Some(req);
        let timeout = deadline.saturating_duration_since(now);
        let link = self.link(self.target);
        ClientTxn::with_timeout(now, Method::Invite, branch, bytes, link, timeout)
    }

    pub(crate) fn on_invite_response(&self, data: &[u8]) -> InviteOutcome {
        let Ok(Message::Response(resp)) = msg::parse(data) else {
            return InviteOutcome::Ignored;
        };
        if resp.cseq().map(|(n, _)| n) != Some(self.cseq) || resp.call_id() != Some(&self.call_id) {
            return InviteOutcome::Ignored;
        }
        match resp.code {
            100..=199 => InviteOutcome::Provisional,
            200..=299 => InviteOutcome::Answered(resp),
            401 | 407 if self.cseq == 1 && self.credentials.is_some() => {
                InviteOutcome::Challenged(resp)
            }
            _ => InviteOutcome::Refused(resp),
        }
    }

    /// The Authorization (or Proxy-Authorization) for a challenge, if we can answer it.
    pub(crate) fn answer_challenge(&self, resp: &msg::Response) -> Option<(&'static str, String)> {
        let (user, password) = self.credentials.as_ref()?;
        let (kind, challenge) = digest::Challenge::from_response(resp).into_iter().next()?;
        let parts = digest::RequestParts {
            method: "INVITE",
            uri: &self.request_uri,
            body: self.offer.as_bytes(),
        };
        let authorization = digest::authorize(&challenge, user, password, parts, &token(), 1);
        Some((kind.answer_header(), authorization.to_header_value()))
    }

    /// ACK for a non-2xx final: the INVITE's branch, To from the response (§17.1.1.3).
    pub(crate) fn ack_failure(&self, resp: &msg::Response) -> Vec<u8> {
        let Some(invite) = &self.invite else {
            return Vec::new();
        };
        let mut headers = Headers::new();
        headers.push("Via", invite.headers.get("Via").unwrap_or_default());
        headers.push("Max-Forwards", "70");
        headers.push("From", self.from.clone());
        headers.push("To", resp.headers.get("To").unwrap_or_default());
        headers.push("Call-ID", self.call_id.clone());
        headers.push("CSeq", format!("{} ACK", self.cseq));
        let ack = Request {
            method: Method::Ack,
            uri: invite.uri.clone(),
            headers,
            body: Vec::new(),
        };
        ack.to_bytes()
    }

    /// The 2xx came: the dialog starts, and the ACK to send (and where).
    pub(crate) fn confirm(&mut self, ok: &msg::Response) -> (Vec<u8>, SocketAddr) {
        let remote_target = ok
            .contact()
            .map(|c| c.uri)
            .unwrap_or_else(|| self.request_uri.clone());
        let dest = SipUri::parse(&remote_target)
            .and_then(|u| u.socket_addr())
            .unwrap_or(self.target);
        let mut route: Vec<String> = ok
            .headers
            .list("Record-Route")
            .map(str::to_string)
            .collect();
        route.reverse();
        let mut dialog = Dialog {
            to: ok.headers.get("To").unwrap_or_default().to_string(),
            remote_target,
            route,
            dest,
            ack: Vec::new(),
        };
        dialog.ack = self.in_dialog(&dialog, Method::Ack, self.cseq).0.to_bytes();
        let reply = (dialog.ack.clone(), dest);
        self.dialog = Some(dialog);
        reply
    }

    /// A request within the dialog (§12.2.1.1), and its branch.
    fn in_dialog(&self, dialog: &Dialog, method: Method, cseq: u32) -> (Request, String) {
        let target = &dialog.remote_target;
        self.request(method, target, &dialog.to, cseq, &dialog.route)
    }

    /// A message that came during the call: requests get 200 (a BYE ends the call), a
    /// retransmitted 2xx gets our ACK again.
    pub(crate) fn on_mid_call(&self, from: SocketAddr, data: &[u8]) -> Option<MidCallReply> {
        match msg::parse(data).ok()? {
            Message::Request(req) if req.method != Method::Ack => Some(MidCallReply {
                data: ok_response(&req).to_bytes(),
                to: from,
                ends_call: req.method == Method::Bye,
            }),
            Message::Response(r) if r.code == 200 && r.cseq().map(|c| c.0) == Some(self.cseq) => {
                let dialog = self.dialog.as_ref()?;
                Some(MidCallReply {
                    data: dialog.ack.clone(),
                    to: dialog.dest,
                    ends_call: false,
                })
            }
            _ => None,
        }
    }

    /// Our BYE, as a client transaction (Timers E and F).
    pub(crate) fn bye(&mut self, now: Instant) -> Option<ClientTxn> {
        let dialog = self.dialog.as_ref()?;
        let (req, branch) = self.in_dialog(dialog, Method::Bye, self.cseq + 1);
        let link = self.link(dialog.dest);
        Some(ClientTxn::new(
            now,
            Method::Bye,
            branch,
            req.to_bytes(),
            link,
        ))
    }

    /// The status of an answer to our BYE, if `data` is one.
    pub(crate) fn on_bye_response(&self, data: &[u8]) -> Option<u16> {
        match msg::parse(data).ok()? {
            Message::Response(r) if r.cseq().map(|c| c.0) == Some(self.cseq + 1) => Some(r.code),
            _ => None,
        }
    }
}

/// 200 OK to a request of the other side's (§8.2.6).
fn ok_response(req: &Request) -> msg::Response {
    let mut headers = Headers::new();
    for v in req.headers.get_all("Via") {
        headers.push("Via", v);
    }
    for h in ["From", "To", "Call-ID", "CSeq"] {
        if let Some(v) = req.headers.get(h) {
            headers.push(h, v);
        }
    }
    msg::Response {
        code: 200,
        reason: msg::reason_phrase(200).to_string(),
        headers,
        body: Vec::new(),
    }
}

/// Width of the buckets the receiver-side drift is min-filtered in.
const DRIFT_BUCKET_NS: u64 = 100_000_000;
/// Buckets in each of the first and last windows: 5 s.
const DRIFT_WINDOW_BUCKETS: usize = 50;

/// Receiver-side drift: for each packet the offset `arrival_elapsed − ts_elapsed / clock rate`
/// (both since the first packet, the timestamp unwrapped from packet to packet); network and
/// scheduling delays only ever add to it, so its minimum over a window is the sender's clock
/// offset. The drift is the last window's minimum minus the first's (5 s each, or half the
/// call when shorter). Memory is bounded whatever the call's length: the first window's
/// minima, and a ring of the latest window's.
#[derive(Debug, Clone)]
struct ReceiverDrift {
    /// The codec's RTP clock, in Hz.
    clock_rate: u32,
    first_arrival: Option<Instant>,
    last_ts: Ts32,
    /// Samples since the first packet, unwrapped.
    ts_elapsed: i64,
    last_arrival_ns: u64,
    head: [i64; DRIFT_WINDOW_BUCKETS],
    /// (bucket index, its minimum), at `index % DRIFT_WINDOW_BUCKETS`.
    ring: [(u64, i64); DRIFT_WINDOW_BUCKETS],
}

impl ReceiverDrift {
    fn new(clock_rate: u32) -> Self {
        ReceiverDrift {
            clock_rate: clock_rate.max(1),
            first_arrival: None,
            last_ts: Ts32(0),
            ts_elapsed: 0,
            last_arrival_ns: 0,
            head: [i64::MAX; DRIFT_WINDOW_BUCKETS],
            ring: [(u64::MAX, i64::MAX); DRIFT_WINDOW_BUCKETS],
        }
    }

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
        let media_ns = i128::from(self.ts_elapsed) * 1_000_000_000 / i128::from(self.clock_rate);
        let offset = i128::from(elapsed) - media_ns;
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
        self.ts_elapsed as f64 / f64::from(self.clock_rate)
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

    /// Sends (or resends) a client transaction's request.
    fn transmit(&self, txn: &ClientTxn) -> Result<(), CallError> {
        self.send(txn.bytes(), txn.dest)
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

fn write_wav(path: &Path, samples: &[i16], rate: u32) -> Result<(), hound::Error> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec)?;
    for s in samples {
        w.write_sample(*s)?;
    }
    w.finalize()
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
        let mut d = ReceiverDrift::new(8000);
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
        assert_eq!(ReceiverDrift::new(8000).drift_ms(), None);
    }

    /// `frames` 20 ms frames of a 440 Hz tone at `rate`.
    fn tone(rate: u32, frames: usize) -> Vec<i16> {
        (0..rate as usize / 50 * frames)
            .map(|i| {
                let t = i as f64 / f64::from(rate);
                ((std::f64::consts::TAU * 440.0 * t).sin() * 8000.0) as i16
            })
            .collect()
    }

    fn rms(pcm: &[i16]) -> f64 {
        (pcm.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / pcm.len().max(1) as f64).sqrt()
    }

    #[test]
    fn g722_is_recorded_at_16_khz_placed_by_the_8_khz_timestamp() {
        let pcm = tone(16_000, 3);
        let mut encoded = vec![0u8; pcm.len() / 2];
        crate::codec::g722::G722Encoder::new().encode(&pcm, &mut encoded);
        let mut rec = Recording::new(Codec::G722, 16_000).unwrap();
        // Packets 0 and 2 (timestamps 0 and 320 on the 8 kHz clock); packet 1 lost.
        rec.add(1000, &encoded[..160]);
        rec.add(1000 + 320, &encoded[320..]);
        assert_eq!(rec.samples.len(), 3 * 320);
        assert!(rms(&rec.samples[..320]) > 3000.0);
        assert!(
            rec.samples[320..640].iter().all(|&s| s == 0),
            "the gap stays silent"
        );
        assert!(rms(&rec.samples[640..]) > 3000.0);
    }

    #[test]
    fn opus_is_recorded_at_48_khz_with_a_lost_frame_concealed() {
        use crate::codec::opus::{MAX_FRAME_BYTES, OpusEncoder, OpusEncoderConfig};
        let pcm = tone(48_000, 10);
        let mut encoder = OpusEncoder::new(OpusEncoderConfig::default()).unwrap();
        let mut rec = Recording::new(Codec::Opus, 48_000).unwrap();
        let mut packet = [0u8; MAX_FRAME_BYTES];
        // Across the 32-bit timestamp wrap.
        let start = u32::MAX - 960;
        for (k, frame) in pcm.chunks_exact(960).enumerate() {
            let n = encoder.encode_frame(frame, &mut packet).unwrap();
            if k != 6 {
                rec.add(start.wrapping_add(960 * k as u32), &packet[..n]);
            }
        }
        assert_eq!(rec.samples.len(), 10 * 960);
        assert!(
            rms(&rec.samples[6 * 960..7 * 960]) > 1000.0,
            "frame 6 concealed"
        );
        assert_eq!(rec.undecodable, 0);
        // Not Opus: counted, nothing recorded.
        rec.add(start.wrapping_add(960 * 10), &[0x03]);
        assert_eq!(rec.undecodable, 1);
        assert_eq!(rec.samples.len(), 10 * 960);
    }

    /// An answer from 192.0.2.9 on `proto` with these `a=crypto` values.
    fn answer_sdp(proto: &str, crypto: &[String]) -> sdp::SessionDescription {
        let mut text = format!(
            "v=0\r\no=- 1 1 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\n\
             m=audio 30000 {proto} 0\r\n"
        );
        for line in crypto {
            text.push_str(&format!("a=crypto:{line}\r\n"));
        }
        text.push_str("a=sendonly\r\n");
        sdp::parse(&text).unwrap()
    }

    #[test]
    fn srtp_offer_names_every_suite_and_the_answer_picks_one() {
        let offered = offer_crypto(&mut rand::rng());
        let suites: Vec<_> = offered.iter().map(|l| (l.tag, l.suite)).collect();
        assert_eq!(
            suites,
            [
                (1, SrtpSuite::ALL[0]),
                (2, SrtpSuite::ALL[1]),
                (3, SrtpSuite::ALL[2])
            ]
        );
        let local = caller_media("192.0.2.1:40000".parse().unwrap(), &[Codec::Pcmu]);
        let offer = sdp::caller_offer(&local, None, &offered);
        assert!(
            offer.contains("m=audio 40000 RTP/SAVP 0 101\r\n"),
            "{offer}"
        );
        let parsed = sdp::parse(&offer).unwrap();
        let lines: Vec<CryptoLine> = parsed.media[0]
            .attributes
            .iter()
            .filter(|a| a.name == "crypto")
            .map(|a| CryptoLine::parse(a.value.as_deref().unwrap()).unwrap())
            .collect();
        assert_eq!(lines, offered);
        // Without keys the offer stays plain RTP.
        assert!(sdp::caller_offer(&local, None, &[]).contains(" RTP/AVP 0 101\r\n"));

        // The answer accepts tag 2 with the server's own key; a first line naming a tag we
        // did not offer is skipped.
        let server = offered[1].answer(&mut rand::rng());
        let stranger = CryptoLine::generate(9, SrtpSuite::ALL[0], &mut rand::rng());
        let mut answer = answer_sdp("RTP/SAVP", &[stranger.to_string(), server.to_string()]);
        let params = answer_srtp(&mut answer, &offered).unwrap();
        assert_eq!(params.suite, offered[1].suite);
        assert_eq!((params.ours, params.theirs), (offered[1].key, server.key));
        assert!(
            sdp::negotiate_answer(&[Codec::Pcmu], &answer, "192.0.2.9:5060".parse().unwrap())
                .is_ok()
        );

        // A plain answer to an SRTP offer, or no usable key: refused, not a panic.
        for (proto, crypto) in [
            ("RTP/AVP", vec![server.to_string()]),
            ("RTP/SAVP", vec![]),
            (
                "RTP/SAVP",
                vec!["2 AES_CM_128_HMAC_SHA1_80 inline:!!!".to_string()],
            ),
        ] {
            let e = answer_srtp(&mut answer_sdp(proto, &crypto), &offered).unwrap_err();
            assert!(
                matches!(e, CallError::BadAnswer(_)),
                "{proto} {crypto:?}: {e}"
            );
        }
    }

    #[test]
    fn srtp_is_decrypted_across_the_wrap_and_rejections_are_counted() {
        use crate::clock::Seq16;
        use crate::rtp::packet::{NtpTime, RtpHeader, SenderReport, write_rtp, write_sr_sdes};
        use crate::rtp::srtp::SrtpSender;

        let offered = offer_crypto(&mut rand::rng());
        let server = offered[0].answer(&mut rand::rng());
        let mut answer = answer_sdp("RTP/SAVP", &[server.to_string()]);
        let params = answer_srtp(&mut answer, &offered).unwrap();
        let negotiated =
            sdp::negotiate_answer(&[Codec::Pcmu], &answer, "192.0.2.9:5060".parse().unwrap())
                .unwrap();
        let mut sender = SrtpSender::new(server.suite, &server.key);
        let mut media = ReceivedMedia::new(Codec::Pcmu, 8000, Some(params)).unwrap();

        // Five packets from sequence 65,534: the rollover counter moves on the way.
        let packets: Vec<Vec<u8>> = (0..5u16)
            .map(|k| {
                let header = RtpHeader {
                    marker: false,
                    payload_type: 0,
                    seq: Seq16(65_534u16.wrapping_add(k)),
                    timestamp: Ts32(160 * u32::from(k)),
                    ssrc: 7,
                };
                let mut buf = [0u8; 256];
                let n = write_rtp(&header, &[0x80; 160], &mut buf).unwrap();
                let n = sender.protect_rtp(&mut buf, n).unwrap();
                buf[..n].to_vec()
            })
            .collect();
        let now = Instant::now();
        for p in &packets[..4] {
            media.on_rtp(now, &mut p.clone(), &negotiated);
        }
        let mut tampered = packets[4].clone();
        tampered[20] ^= 1;
        media.on_rtp(now, &mut tampered, &negotiated);
        media.on_rtp(now, &mut packets[0].clone(), &negotiated);
        media.on_rtp(now, &mut packets[4].clone(), &negotiated);
        media.on_rtp(now, &mut [0u8; 3], &negotiated);
        assert_eq!(media.stats.report().packets, 5);
        assert_eq!(media.recording.samples.len(), 5 * 160);
        assert!(
            media.recording.samples.iter().all(|&s| s != 0),
            "decrypted audio"
        );

        let sr = SenderReport {
            ssrc: 7,
            ntp: NtpTime(1 << 32),
            rtp_ts: Ts32(800),
            packet_count: 5,
            octet_count: 800,
        };
        let mut buf = [0u8; 256];
        let n = write_sr_sdes(&sr, "mohd", &mut buf).unwrap();
        let n = sender.protect_rtcp(&mut buf, n).unwrap();
        media.on_rtcp(&mut buf[..n].to_vec());
        buf[10] ^= 1;
        media.on_rtcp(&mut buf[..n]);
        assert_eq!(media.rtcp_received, 1);

        let (_, report) = media.srtp.as_ref().unwrap();
        assert_eq!(report.suite, server.suite.sdp_name());
        assert_eq!(
            (
                report.rtp_auth_failures,
                report.rtp_replays,
                report.rtp_malformed,
                report.rtcp_rejected
            ),
            (1, 1, 1, 1)
        );
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
