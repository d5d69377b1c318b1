//! `mohd load`: the test softphone as a load generator, for an admin learning a box's capacity
//! from another machine (or the benches from this one). Places N calls at a rate over SIP/UDP
//! (`calls`), holds them, measures every stream in a window once all are up, hangs up; or, with
//! `--hold`, churns calls of a fixed length and measures the whole run. The receiver
//! (`receiver`) keeps up with thousands of streams on a few sockets; the figures are pure
//! (`stats`). One call with its audio decoded and recorded is `mohd call`.

pub mod calls;
pub mod receiver;
pub mod stats;

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::call::{CallError, CodecChoice, Dialed, TransportChoice};
use crate::sip::shell::local_ip_towards;
use calls::{Caller, Mode, Plan, WindowEvent};
use receiver::{MediaSocket, Received, StreamConfig, Window};
use stats::{MediaReport, Percentiles, Summary};

#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// Whom to call, e.g. sip:moh@192.0.2.10 (SIP over UDP).
    pub target: String,
    /// How many calls to place (held at once; with --hold, in total).
    #[arg(long, default_value_t = 100)]
    pub calls: u64,
    /// Calls started per second (and hung up per second at the end).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds measured once every call is up (and --settle has passed).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds between the last answer and the start of the measurement.
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
    /// Churn: each call hangs up this many seconds after its answer, and the whole run is
    /// measured (--duration and --settle are then unused).
    #[arg(long, value_name = "SECONDS")]
    pub hold: Option<f64>,
    /// A peer that goes silent: this many seconds after the window opens (held mode), stop
    /// reading and answering anything, SIP and RTP, while keeping every socket open (so the
    /// server gets no ICMP), say `mohd load: vanished` on stderr and wait to be killed. No
    /// report is printed. For timing a server's stop with its callers gone.
    #[arg(long, value_name = "SECONDS", conflicts_with = "hold")]
    pub vanish_after: Option<f64>,
    /// The codec to offer (the only one offered).
    #[arg(long, value_enum, default_value = "pcmu")]
    pub codec: CodecChoice,
    /// Ask for this packetisation time (a=ptime), in ms; the streams are read at it.
    #[arg(long, default_value_t = 20)]
    pub ptime: u32,
    /// Offer SRTP (RTP/SAVP with SDES keys, as `mohd call --srtp`); over UDP the server must
    /// allow it (`[rtp] srtp_over_plain_transports`). Headers are read, nothing decrypted.
    #[arg(long)]
    pub srtp: bool,
    /// RTP sockets (each with its RTCP port and its own reading thread) the calls are spread
    /// over; default one per 1,000 calls, at most 8.
    #[arg(long)]
    pub rtp_sockets: Option<usize>,
    /// The server's process id, when it runs on this machine: its CPU over the window (per
    /// packet received) and its RSS are reported.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Give up on a call with no final answer within this many seconds.
    #[arg(long, default_value_t = 32.0)]
    pub timeout: f64,
    /// User name for digest authentication, when the server challenges.
    #[arg(long)]
    pub user: Option<String>,
    /// Password for digest authentication.
    #[arg(long)]
    pub password: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What a run found.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub target: String,
    pub codec: String,
    pub ptime_ms: u32,
    pub srtp: bool,
    /// "held" (all calls up, then measured) or "churn" (calls of --hold seconds).
    pub mode: String,
    pub calls: CallsReport,
    /// Length of the measurement window, in s.
    pub window_s: f64,
    pub media: MediaReport,
    /// RTP packets received per second in the window.
    pub packets_per_s: f64,
    pub rtcp_received: u64,
    pub receiver: ReceiverReport,
    pub server: Option<ServerReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CallsReport {
    pub placed: u64,
    pub answered: u64,
    pub failed: u64,
    /// Failed calls by reason ("503 Service Unavailable", "timeout", ...).
    pub failures: BTreeMap<String, u64>,
    /// Refusals (3xx–6xx to the INVITE) that said when to retry (`Retry-After`).
    pub refused_with_retry_after: u64,
    /// INVITE sent to 200 OK received; `null` when no call was answered.
    pub setup_ms: Option<Percentiles>,
    pub ended_by_remote: u64,
    pub bye_failures: u64,
    pub send_errors: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReceiverReport {
    pub sockets: usize,
    /// Datagrams the kernel dropped at our sockets (a receiver that fell behind, not loss
    /// at the sender).
    pub kernel_drops: u64,
    pub not_rtp: u64,
    pub errors: u64,
    /// This process's CPU over the window, in % of one core.
    pub cpu_pct_of_core: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerReport {
    pub pid: u32,
    /// Its CPU over the window, in % of one core.
    pub cpu_pct_of_core: f64,
    /// Its CPU time over the window divided by the packets received in it.
    pub cpu_ns_per_packet: Option<f64>,
    pub rss_mib: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Target(#[from] CallError),
    #[error("network: {0}")]
    Io(#[from] std::io::Error),
    #[error("--calls and --rate must be positive")]
    Nothing,
}

/// Runs the load the arguments describe and reports on it.
pub fn run(args: &LoadArgs) -> Result<LoadReport, LoadError> {
    if args.calls == 0 || args.rate.is_nan() || args.rate <= 0.0 {
        return Err(LoadError::Nothing);
    }
    let dialed = Dialed::resolve(&args.target, Some(TransportChoice::Udp))?;
    let local_ip =
        local_ip_towards(dialed.addr).ok_or_else(|| CallError::Resolve(dialed.addr.to_string()))?;
    let sip = UdpSocket::bind((local_ip, 0))?;
    // Thousands of calls' answers: a late 200 OK must be a late one, not a dropped one
    // retransmitted 500 ms on.
    receiver::enlarge_receive_buffer(&sip);
    let codec = args.codec.codec();
    let sockets = args
        .rtp_sockets
        .unwrap_or_else(|| args.calls.div_ceil(1000).min(8) as usize)
        .max(1);
    let window = Arc::new(Window::default());
    let stream_config = StreamConfig {
        clock_rate: codec.clock_rate(),
        samples_per_packet: codec.clock_rate() / 1000 * args.ptime,
        payload_type: None,
        fold_after: args.hold.map(|_| Duration::from_secs(2)),
    };
    let mut media = Vec::with_capacity(sockets);
    let mut threads = Vec::with_capacity(sockets);
    for _ in 0..sockets {
        let socket = MediaSocket::bind(local_ip)?;
        media.push(socket.rtp_addr()?);
        threads.push(receiver::spawn(socket, stream_config, window.clone())?);
    }
    let seconds = |s: f64| Duration::from_secs_f64(s.max(0.0));
    let plan = Plan {
        calls: args.calls,
        rate: args.rate,
        mode: match args.hold {
            Some(hold) => Mode::Churn {
                hold: seconds(hold),
            },
            None => Mode::Held {
                settle: seconds(args.settle),
                measure: seconds(args.duration),
            },
        },
        vanish_after: args.vanish_after.map(seconds),
        invite_timeout: seconds(args.timeout.max(0.1)),
        codec,
        ptime: Some(args.ptime),
        srtp: args.srtp,
        credentials: args
            .user
            .clone()
            .map(|u| (u, args.password.clone().unwrap_or_default())),
    };
    let mut samples = CpuSamples::new(args.server_pid);
    let caller = Caller::new(&sip, &dialed, &media, plan)?;
    let outcome = caller.run(&mut |event| match event {
        WindowEvent::Open => {
            samples.open();
            window.open();
        }
        WindowEvent::Close => {
            window.close();
            samples.close();
        }
        WindowEvent::Vanish => {
            window.silence();
            eprintln!("mohd load: vanished: reading and answering nothing; sockets kept open");
        }
    });
    window.stop();
    let mut received = Received::default();
    let mut summary = Summary::default();
    for thread in threads {
        if let Ok(r) = thread.join() {
            summary.merge(&r.summary);
            received.rtcp_packets += r.rtcp_packets;
            received.not_rtp += r.not_rtp;
            received.kernel_drops += r.kernel_drops;
            received.errors += r.errors;
        }
    }
    let media_report = summary.report();
    let window_s = outcome.window.as_secs_f64();
    let failed = outcome.failures.values().sum();
    Ok(LoadReport {
        target: args.target.clone(),
        codec: codec.encoding_name().to_string(),
        ptime_ms: args.ptime,
        srtp: args.srtp,
        mode: match args.hold {
            Some(_) => "churn",
            None => "held",
        }
        .to_string(),
        calls: CallsReport {
            placed: outcome.placed,
            answered: outcome.answered,
            failed,
            failures: outcome.failures,
            refused_with_retry_after: outcome.refused_with_retry_after,
            setup_ms: Percentiles::of_durations(&outcome.setup_times),
            ended_by_remote: outcome.ended_by_remote,
            bye_failures: outcome.bye_failures,
            send_errors: outcome.send_errors,
        },
        window_s,
        packets_per_s: match window_s > 0.0 {
            true => media_report.packets as f64 / window_s,
            false => 0.0,
        },
        rtcp_received: received.rtcp_packets,
        receiver: ReceiverReport {
            sockets,
            kernel_drops: received.kernel_drops,
            not_rtp: received.not_rtp,
            errors: received.errors,
            cpu_pct_of_core: samples.own_cpu_pct(),
        },
        server: samples.server_report(media_report.packets),
        media: media_report,
    })
}

/// CPU time (utime + stime) of this process and of the server over the window, from
/// `/proc/PID/stat` (Linux).
struct CpuSamples {
    server_pid: Option<u32>,
    opened: Option<CpuSample>,
    closed: Option<CpuSample>,
}

/// CPU seconds so far of this process and of the server, at an instant.
struct CpuSample {
    at: Instant,
    own: Option<f64>,
    server: Option<f64>,
}

impl CpuSamples {
    fn new(server_pid: Option<u32>) -> CpuSamples {
        CpuSamples {
            server_pid,
            opened: None,
            closed: None,
        }
    }

    fn sample(&self) -> CpuSample {
        CpuSample {
            at: Instant::now(),
            own: cpu_seconds("self"),
            server: self
                .server_pid
                .and_then(|pid| cpu_seconds(&pid.to_string())),
        }
    }

    fn open(&mut self) {
        self.opened = Some(self.sample());
    }

    fn close(&mut self) {
        self.closed = Some(self.sample());
    }

    /// (wall seconds, CPU seconds) between the samples, for one of the two processes.
    fn spent(&self, pick: fn(&CpuSample) -> Option<f64>) -> Option<(f64, f64)> {
        let (opened, closed) = (self.opened.as_ref()?, self.closed.as_ref()?);
        let wall = closed.at.duration_since(opened.at).as_secs_f64();
        let cpu = pick(closed)? - pick(opened)?;
        (wall > 0.0).then_some((wall, cpu))
    }

    fn own_cpu_pct(&self) -> Option<f64> {
        self.spent(|s| s.own).map(|(wall, cpu)| cpu * 100.0 / wall)
    }

    fn server_report(&self, packets: u64) -> Option<ServerReport> {
        let pid = self.server_pid?;
        let (wall, cpu) = self.spent(|s| s.server)?;
        Some(ServerReport {
            pid,
            cpu_pct_of_core: cpu * 100.0 / wall,
            cpu_ns_per_packet: (packets > 0).then(|| cpu * 1e9 / packets as f64),
            rss_mib: rss_mib(pid),
        })
    }
}

/// Clock ticks per second in `/proc/PID/stat`: USER_HZ, 100 on every Linux architecture's
/// ABI whatever the kernel's own HZ.
const USER_HZ: f64 = 100.0;

/// utime + stime of a process (`self` or a pid), in seconds.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

impl LoadReport {
    pub fn human(&self) -> String {
        let c = &self.calls;
        let m = &self.media;
        let l = &m.lateness_ms;
        let setup = c.setup_ms.map_or_else(
            || "-".to_string(),
            |p| {
                format!(
                    "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (INVITE to 200 OK)",
                    p.p50, p.p99, p.max
                )
            },
        );
        let failures = match c.failures.is_empty() {
            true => String::new(),
            false => {
                format!(
                    " ({})",
                    c.failures
                        .iter()
                        .map(|(why, n)| format!("{n} × {why}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ) + &match c.refused_with_retry_after {
                    0 => String::new(),
                    n => format!(" ({n} with Retry-After)"),
                }
            }
        };
        let server = self.server.as_ref().map_or_else(String::new, |s| {
            format!(
                "  server      PID {}: CPU {:.1} % of a core, {} ns per packet, RSS {}\n",
                s.pid,
                s.cpu_pct_of_core,
                s.cpu_ns_per_packet
                    .map_or_else(|| "-".to_string(), |n| format!("{n:.0}")),
                s.rss_mib
                    .map_or_else(|| "-".to_string(), |r| format!("{r:.1} MiB")),
            )
        });
        format!(
            "load {target}: {codec} {ptime} ms, {mode}, {window:.1} s measured\n  calls       {placed} placed, {answered} answered, {failed} failed{failures}; {remote} ended by the server, {byefail} BYE failures\n  setup       {setup}\n  streams     {streams} measured, {packets} packets ({pps:.0}/s), {bytes} payload bytes, {rtcp} RTCP\n  lateness    {late:.3} % > 5 ms ({late_n} packets), {vlate:.3} % > 20 ms; p50 {p50:.2}, p99 {p99:.2}, p99.9 {p999:.2}, max {max:.2} ms\n  loss        {lost} lost ({loss:.3} %), {dup} duplicated, {reord} reordered, {gaps} timestamp gaps ({skipped} frames not sent)\n  receiver    {sockets} sockets, {drops} kernel drops, {not_rtp} not RTP, CPU {rx_cpu}\n{server}",
            target = self.target,
            codec = match self.srtp {
                true => format!("{} + SRTP", self.codec),
                false => self.codec.clone(),
            },
            ptime = self.ptime_ms,
            mode = self.mode,
            window = self.window_s,
            placed = c.placed,
            answered = c.answered,
            failed = c.failed,
            remote = c.ended_by_remote,
            byefail = c.bye_failures,
            streams = m.streams,
            packets = m.packets,
            pps = self.packets_per_s,
            bytes = m.payload_bytes,
            rtcp = self.rtcp_received,
            late = m.late_over_5ms_pct,
            late_n = m.late_over_5ms,
            vlate = m.late_over_20ms_pct,
            p50 = l.p50,
            p99 = l.p99,
            p999 = l.p99_9,
            max = l.max,
            lost = m.lost,
            loss = m.loss_pct,
            dup = m.duplicates,
            reord = m.reordered,
            gaps = m.timestamp_gaps,
            skipped = m.frames_not_sent,
            sockets = self.receiver.sockets,
            drops = self.receiver.kernel_drops,
            not_rtp = self.receiver.not_rtp,
            rx_cpu = self
                .receiver
                .cpu_pct_of_core
                .map_or_else(|| "-".to_string(), |p| format!("{p:.1} % of a core")),
        )
    }
}
