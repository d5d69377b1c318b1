//! `mohd call`: a small test softphone, for an admin checking a box and for the tests.
//!
//! Owns one call's client side: INVITE (offering PCMU and PCMA, retransmitted per Timer A), ACK,
//! receiving and decoding the RTP, BYE (retransmitted per Timer E), and the RFC 3550 receive
//! statistics. Blocking std sockets: it is one call, and a thread per socket is simplest.

use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::codec::Codec;
use crate::rtp::packet::parse_rtp;
use crate::rtp::stats::{ReceiverStats, StatsReport};
use crate::sip::endpoint::T1;
use crate::sip::msg::{self, Message, SipUri};
use crate::sip::sdp;
use crate::sip::shell::local_ip_towards;

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
    pub bye_status: Option<u16>,
    pub ended_by_remote: bool,
    pub recorded_samples: usize,
}

impl CallReport {
    pub fn human(&self) -> String {
        let s = &self.stats;
        format!(
            "call {uri}\n  codec        {codec} ({ptime} ms)\n  setup        {setup:.1} ms (INVITE to 200 OK)\n  media from   {remote}\n  packets      {packets} received, {lost} lost, {dup} duplicated, {reord} reordered\n  jitter       {jm:.2} ms mean, {jx:.2} ms max\n  largest gap  {gap:.1} ms\n  BYE          {bye}\n",
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
    let target = match uri.socket_addr() {
        Some(a) => a,
        None => {
            let host = uri.host.trim_start_matches('[').trim_end_matches(']');
            (host, uri.port.unwrap_or(5060))
                .to_socket_addrs()
                .map_err(|_| CallError::Resolve(uri.host.clone()))?
                .next()
                .ok_or_else(|| CallError::Resolve(uri.host.clone()))?
        }
    };
    let local_ip =
        local_ip_towards(target).ok_or_else(|| CallError::Resolve(target.to_string()))?;
    let sip = UdpSocket::bind((local_ip, 0))?;
    let sip_local = sip.local_addr()?;
    let (rtp, _rtcp) = bind_rtp_pair(local_ip)?;
    let rtp_local = rtp.local_addr()?;

    let codecs = match args.codec {
        CodecChoice::Pcmu => vec![Codec::Pcmu, Codec::Pcma],
        CodecChoice::Pcma => vec![Codec::Pcma, Codec::Pcmu],
    };
    let offer = client_offer(rtp_local, &codecs, args.ptime);
    let call_id = format!("{}@{}", token(), local_ip);
    let from_tag = token();
    let contact = format!("<sip:mohd-call@{}>", host_port(sip_local));
    let from = format!("<sip:mohd-call@{}>;tag={from_tag}", host_port(sip_local));
    let to = format!("<{}>", args.uri);
    let invite_branch = format!("z9hG4bK{}", token());
    let invite = format!(
        "INVITE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {via};branch={invite_branch};rport\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: {contact}\r\nUser-Agent: mohd-call/{ver}\r\nAllow: INVITE, ACK, BYE, CANCEL, OPTIONS\r\nContent-Type: application/sdp\r\nContent-Length: {len}\r\n\r\n{offer}",
        uri = args.uri,
        via = host_port(sip_local),
        ver = env!("CARGO_PKG_VERSION"),
        len = offer.len(),
    );

    // SIP receive on its own thread so the RTP loop never waits on it.
    let (sip_tx, sip_rx) = mpsc::channel::<(SocketAddr, Vec<u8>)>();
    let reader = sip.try_clone()?;
    reader.set_read_timeout(Some(Duration::from_millis(200)))?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_reader = stop.clone();
    let reader_thread = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while !stop_reader.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok((n, from)) = reader.recv_from(&mut buf)
                && sip_tx.send((from, buf[..n].to_vec())).is_err()
            {
                break;
            }
        }
    });
    let finish = |stop: &std::sync::atomic::AtomicBool| {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    };

    // INVITE with Timer A retransmission until a provisional or final response.
    let sent_at = Instant::now();
    sip.send_to(invite.as_bytes(), target)?;
    let mut interval = T1;
    let mut next_retransmit = Some(sent_at + interval);
    let give_up = sent_at + Duration::from_secs_f64(args.timeout.max(0.1));
    let ok = loop {
        let now = Instant::now();
        if now >= give_up {
            finish(&stop);
            return Err(CallError::Timeout(args.timeout));
        }
        let wait = next_retransmit
            .unwrap_or(give_up)
            .min(give_up)
            .saturating_duration_since(now);
        match sip_rx.recv_timeout(wait.max(Duration::from_millis(1))) {
            Ok((_, data)) => {
                let Ok(Message::Response(resp)) = msg::parse(&data) else {
                    continue;
                };
                if resp.cseq().map(|(n, _)| n) != Some(1) || resp.call_id() != Some(&call_id) {
                    continue;
                }
                match resp.code {
                    100..=199 => next_retransmit = None,
                    200..=299 => break resp,
                    code => {
                        let ack = ack_for_failure(&invite, &resp);
                        let _ = sip.send_to(ack.as_bytes(), target);
                        finish(&stop);
                        return Err(CallError::Refused(code, resp.reason.clone()));
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if next_retransmit.is_some_and(|t| t <= Instant::now()) {
                    sip.send_to(invite.as_bytes(), target)?;
                    interval = (interval * 2).min(Duration::from_secs(4));
                    next_retransmit = Some(Instant::now() + interval);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(CallError::Timeout(args.timeout));
            }
        }
    };
    let setup = sent_at.elapsed();

    let to_with_tag = ok.headers.get("To").unwrap_or_default().to_string();
    let remote_target = ok
        .contact()
        .map(|c| c.uri)
        .unwrap_or_else(|| args.uri.clone());
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
    let ack = in_dialog_request(
        "ACK",
        1,
        &remote_target,
        sip_local,
        &from,
        &to_with_tag,
        &call_id,
        &route,
    );
    sip.send_to(ack.as_bytes(), in_dialog_dest)?;

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
        while let Ok((from_addr, data)) = sip_rx.try_recv() {
            match msg::parse(&data) {
                Ok(Message::Request(req)) if req.method == msg::Method::Bye => {
                    let resp = simple_response(&req, 200);
                    let _ = sip.send_to(resp.as_bytes(), from_addr);
                    ended_by_remote = true;
                }
                Ok(Message::Request(req)) if req.method != msg::Method::Ack => {
                    let resp = simple_response(&req, 200);
                    let _ = sip.send_to(resp.as_bytes(), from_addr);
                }
                // A retransmitted 200 OK means our ACK was lost.
                Ok(Message::Response(r)) if r.code == 200 && r.cseq().map(|c| c.0) == Some(1) => {
                    let _ = sip.send_to(ack.as_bytes(), in_dialog_dest);
                }
                _ => {}
            }
        }
    }

    // BYE with Timer E retransmission.
    let mut bye_status = None;
    if !ended_by_remote {
        let bye = in_dialog_request(
            "BYE",
            2,
            &remote_target,
            sip_local,
            &from,
            &to_with_tag,
            &call_id,
            &route,
        );
        sip.send_to(bye.as_bytes(), in_dialog_dest)?;
        let mut interval = T1;
        let mut next = Instant::now() + interval;
        let give_up = Instant::now() + 32 * T1;
        while Instant::now() < give_up && bye_status.is_none() {
            let wait = next.saturating_duration_since(Instant::now());
            match sip_rx.recv_timeout(wait.max(Duration::from_millis(1))) {
                Ok((_, data)) => {
                    if let Ok(Message::Response(r)) = msg::parse(&data)
                        && r.cseq().map(|c| c.0) == Some(2)
                        && r.code >= 200
                    {
                        bye_status = Some(r.code);
                    }
                }
                Err(_) => {
                    if Instant::now() >= next {
                        sip.send_to(bye.as_bytes(), in_dialog_dest)?;
                        interval = (interval * 2).min(Duration::from_secs(4));
                        next = Instant::now() + interval;
                    }
                }
            }
        }
    }
    finish(&stop);
    let _ = reader_thread.join();

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
        bye_status,
        ended_by_remote,
        recorded_samples: recording.len(),
    })
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

#[allow(clippy::too_many_arguments)]
fn in_dialog_request(
    method: &str,
    cseq: u32,
    target: &str,
    local: SocketAddr,
    from: &str,
    to: &str,
    call_id: &str,
    route: &[String],
) -> String {
    let mut s = format!(
        "{method} {target} SIP/2.0\r\nVia: SIP/2.0/UDP {via};branch=z9hG4bK{b};rport\r\nMax-Forwards: 70\r\n",
        via = host_port(local),
        b = token()
    );
    for r in route {
        s.push_str(&format!("Route: {r}\r\n"));
    }
    s.push_str(&format!(
        "From: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
    ));
    s
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
    format!(
        "ACK {uri} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
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
