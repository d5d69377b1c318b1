//! The two socket models side by side: CPU per packet of mohd's own fan-out sending N G.711
//! streams (a) from a socket per call with one `sendto` each, (b) from one shared socket in
//! `sendmmsg` batches (`rtp::io::SendBatch`), with `rtp_floor` (bare C sender) in the same run
//! as the reference. A measurement, not a test; the command is in benches/README.md.
//!
//! Each mode runs in turn for a few seconds, round after round, so that a machine whose speed
//! drifts (other work, frequency scaling) affects every mode alike; the medians are compared.
//! Receivers are bound on 127.0.0.1 and never read, as for `rtp_floor`. CPU is the sending
//! thread's own (`RUSAGE_THREAD`) after a warm-up second, over the datagrams it sent (RTP, plus
//! the RTCP report every 5 s per call that mohd also sends).

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mohd::clock::MediaClock;
use mohd::codec::Codec;
use mohd::rtp::fanout::{CallMedia, Fanout, MIN_BUFFER, PayloadSource, Playback};
use mohd::rtp::io::SendBatch;
use mohd::sip::sdp::{Direction, MediaParams};
use nix::sys::resource::{Resource, UsageWho, getrlimit, getrusage, setrlimit};

const USAGE: &str = "usage: socket_model [--streams 1000,2500] [--seconds 5] [--runs 3] \
                     [--floor target/rtp_floor] [--base-port 21000]";
const WARM_UP: Duration = Duration::from_secs(1);

/// Thirty seconds of µ-law "silence": what a render's `fill_packet` does is one copy.
struct Loop;

impl PayloadSource for Loop {
    fn name(&self) -> &str {
        "bench"
    }
    fn len_ticks(&self) -> u64 {
        3000
    }
    fn fill_packet(&self, _codec: Codec, _tick: u64, ticks: u64, out: &mut [u8]) -> usize {
        let len = ticks as usize * 80;
        out[..len].fill(0xff);
        len
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Model {
    PerCall,
    Shared,
    /// The fan-out's own work (headers, payload copy, deadlines), nothing sent: what no socket
    /// model changes.
    FanoutOnly,
}

struct Options {
    streams: Vec<usize>,
    seconds: u64,
    runs: usize,
    floor: Option<String>,
    base_port: u16,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        streams: vec![1000, 2500],
        seconds: 5,
        runs: 3,
        floor: Some("target/rtp_floor".into()),
        base_port: 21000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(USAGE)?;
        let bad = |_| format!("bad value {value} for {flag}\n{USAGE}");
        match flag.as_str() {
            "--streams" => {
                o.streams = value
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .map_err(bad)?
            }
            "--seconds" => o.seconds = value.parse().map_err(bad)?,
            "--runs" => o.runs = value.parse().map_err(bad)?,
            "--floor" => o.floor = Some(value).filter(|v| !v.is_empty()),
            "--base-port" => o.base_port = value.parse().map_err(bad)?,
            _ => return Err(USAGE.into()),
        }
    }
    if o.seconds < 3 || o.runs == 0 || o.streams.iter().any(|&n| n == 0 || n > 10_000) {
        return Err(format!("at least 3 s, 1 run, 1..=10000 streams\n{USAGE}"));
    }
    Ok(o)
}

fn main() {
    let options = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    // Receivers, per-call senders and rtp_floor's sockets.
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    let floor = options
        .floor
        .clone()
        .filter(|f| std::path::Path::new(f).exists());
    if floor.is_none() {
        eprintln!("rtp_floor not found: measuring mohd only (see benches/README.md)");
    }
    println!(
        "ns per datagram, CPU time of the sending thread; median of {} runs of {} s (all runs in brackets)",
        options.runs, options.seconds
    );
    println!(
        "{:>7}  {:>22}  {:>22}  {:>22}  {:>22}  {:>22}",
        "streams",
        "floor sendto",
        "floor sendmmsg",
        "mohd per-call sendto",
        "mohd shared sendmmsg",
        "mohd fan-out, no send"
    );
    for &n in &options.streams {
        let Some(receivers) = bind_receivers(options.base_port, n) else {
            eprintln!("cannot bind {n} receivers from port {}", options.base_port);
            std::process::exit(1);
        };
        let dests: Vec<SocketAddr> = receivers
            .iter()
            .filter_map(|r| r.local_addr().ok())
            .collect();
        let mut figures: [Vec<f64>; 5] = Default::default();
        for _ in 0..options.runs {
            if let Some(floor) = &floor {
                for (i, mode) in ["sendto", "sendmmsg"].into_iter().enumerate() {
                    if let Some(ns) = run_floor(floor, mode, n, options.seconds, options.base_port)
                    {
                        figures[i].push(ns);
                    }
                }
            }
            for (i, model) in [
                (2, Model::PerCall),
                (3, Model::Shared),
                (4, Model::FanoutOnly),
            ] {
                let dests = dests.clone();
                let seconds = options.seconds;
                let ns = std::thread::spawn(move || run_mohd(model, &dests, seconds))
                    .join()
                    .unwrap_or(f64::NAN);
                figures[i].push(ns);
            }
        }
        let cells: Vec<String> = figures.iter_mut().map(|f| cell(f)).collect();
        println!(
            "{n:>7}  {:>22}  {:>22}  {:>22}  {:>22}  {:>22}",
            cells[0], cells[1], cells[2], cells[3], cells[4]
        );
        drop(receivers);
    }
}

fn cell(values: &mut [f64]) -> String {
    if values.is_empty() {
        return "-".into();
    }
    values.sort_by(f64::total_cmp);
    let median = values[values.len() / 2];
    let all: Vec<String> = values.iter().map(|v| format!("{v:.0}")).collect();
    format!("{median:.0} [{}]", all.join(" "))
}

/// `n` UDP sockets on 127.0.0.1 from `base`, step 2 (the layout `rtp_floor` sends to).
fn bind_receivers(base: u16, n: usize) -> Option<Vec<UdpSocket>> {
    (0..n)
        .map(|k| {
            let port = u16::try_from(usize::from(base) + 2 * k).ok()?;
            UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).ok()
        })
        .collect()
}

/// `rtp_floor`'s ns/packet, parsed from its one line.
fn run_floor(floor: &str, mode: &str, n: usize, seconds: u64, base: u16) -> Option<f64> {
    let out = Command::new(floor)
        .args([
            mode,
            &n.to_string(),
            &seconds.to_string(),
            &base.to_string(),
            "2",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let before = text.split(" ns/packet").next()?;
    before.rsplit(' ').next()?.parse().ok()
}

fn thread_cpu() -> Duration {
    getrusage(UsageWho::RUSAGE_THREAD).map_or(Duration::ZERO, |u| {
        let (user, system) = (u.user_time(), u.system_time());
        Duration::new((user.tv_sec() + system.tv_sec()) as u64, 0)
            + Duration::from_micros((user.tv_usec() + system.tv_usec()) as u64)
    })
}

/// Streams to every `dests` for `seconds` the way the media thread does (sleep to the next
/// absolute deadline, poll everything due, a fresh instant per packet) and returns the
/// sending thread's ns per datagram after the warm-up.
fn run_mohd(model: Model, dests: &[SocketAddr], seconds: u64) -> f64 {
    let bind = || {
        let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a sender");
        s.set_nonblocking(true).expect("non-blocking");
        s
    };
    let per_call: Vec<UdpSocket> = match model {
        Model::PerCall => dests.iter().map(|_| bind()).collect(),
        Model::Shared | Model::FanoutOnly => Vec::new(),
    };
    let shared = bind();
    // The clock starts once the sockets are bound: binding thousands is not what is measured.
    let started = Instant::now();
    let clock = MediaClock::new(started);
    let mut fanout: Fanout<Loop> = Fanout::new(clock, 18, SystemTime::now());
    let channel = Arc::new(Loop);
    for (call, &dest) in dests.iter().enumerate() {
        let params = MediaParams {
            codec: Codec::Pcmu,
            payload_type: 0,
            ptime_ms: 20,
            remote_rtp: dest,
            // rtcp-mux: the receivers' odd ports are not bound.
            remote_rtcp: None,
            direction: Direction::SendOnly,
            peer_opus: None,
            srtp: None,
        };
        let media = CallMedia {
            call: call as u64,
            params,
            channel: Arc::clone(&channel),
            playback: Playback::Shared,
            cname: format!("bench-{call}"),
            ssrc: None,
        };
        fanout.add_call(started, media);
    }
    let mut batch: SendBatch = SendBatch::new();
    let mut buf = vec![0u8; MIN_BUFFER];
    let mut sent: u64 = 0;
    let measure_from = started + WARM_UP;
    let end = started + Duration::from_secs(seconds);
    let mut window: Option<(Duration, u64)> = None;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if window.is_none() && now >= measure_from {
            window = Some((thread_cpu(), sent));
        }
        fanout.handle_timeout(now);
        // At most one datagram per call per turn (and a few RTCP reports): on a starved box a
        // turn that fell behind would otherwise never end, and neither would the run.
        let mut budget = dests.len() + dests.len() / 8 + 1;
        match model {
            Model::PerCall => {
                while budget > 0
                    && let Some(t) = fanout.poll_transmit(Instant::now(), &mut buf)
                {
                    budget -= 1;
                    if per_call[t.call as usize]
                        .send_to(&buf[..t.len], t.dest)
                        .is_ok()
                    {
                        sent += 1;
                    }
                }
            }
            Model::Shared => {
                while budget > 0 {
                    let Some(slot) = batch.slot() else {
                        sent += batch.flush(&shared, |_| {}) as u64;
                        continue;
                    };
                    let Some(t) = fanout.poll_transmit(Instant::now(), slot) else {
                        break;
                    };
                    budget -= 1;
                    batch.push(t.len, t.dest, t.call);
                }
                sent += batch.flush(&shared, |_| {}) as u64;
            }
            Model::FanoutOnly => {
                while budget > 0 && fanout.poll_transmit(Instant::now(), &mut buf).is_some() {
                    budget -= 1;
                    sent += 1;
                }
            }
        }
        let wake = fanout.poll_timeout().unwrap_or(end).min(end);
        std::thread::sleep(wake.saturating_duration_since(Instant::now()));
    }
    let Some((cpu0, sent0)) = window else {
        eprintln!("no measurement window: the run ended during its warm-up");
        return f64::NAN;
    };
    if sent == sent0 {
        eprintln!("nothing was sent");
    }
    let packets = sent - sent0;
    (thread_cpu() - cpu0).as_nanos() as f64 / packets.max(1) as f64
}
