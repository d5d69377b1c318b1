//! The fan-out's own cost per packet, nothing sent: `rtp::fanout::Fanout` serving N PCMU calls
//! from a real 30-second channel render, on a virtual clock, driven as a media thread drives it
//! (at each wake-up `handle_timeout`, then `poll_transmit` until `None` with a fresh instant
//! per packet). A measurement, not a test; the commands are in benches/README.md.
//!
//! Two figures, both over the measured window only (after `--warm-up` virtual seconds):
//! - ns per packet of the thread's CPU (`RUSAGE_THREAD`) around the fan-out's work of each
//!   turn (median over `--runs`), and
//! - under `valgrind --tool=callgrind --toggle-collect='*measured_turn*'`, the instruction
//!   count of exactly that work: divide by the packets the run prints (repeatable on a busy
//!   machine, unlike time).
//!
//! Between turns a real media thread sleeps, and the kernel's sending and other processes
//! push its data out of the caches; `--evict-kb` writes that much of another buffer between
//! turns (outside the measured part) to have the fan-out start each turn on cold caches.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mohd::channel::ChannelRender;
use mohd::clock::MediaClock;
use mohd::codec::Codec;
use mohd::rtp::fanout::{CallMedia, Fanout, MIN_BUFFER, Playback};
use mohd::sip::sdp::{Direction, MediaParams};
use nix::sys::resource::{UsageWho, getrusage};

const USAGE: &str = "usage: fanout_cost [--calls 1000,2500] [--seconds 6] [--warm-up 2] \
                     [--runs 3] [--evict-kb 0] [--ptime 20]";
/// The time a real driver takes per packet between two `poll_transmit`s (sending included),
/// so each packet gets its own, later `now`, as in the media thread.
const PACKET_SPACING: Duration = Duration::from_nanos(300);
const LOOP_SECONDS: usize = 30;

struct Options {
    calls: Vec<usize>,
    seconds: u64,
    warm_up: u64,
    runs: usize,
    evict_kb: usize,
    ptime_ms: u32,
}

fn parse_args() -> Result<Options, String> {
    let (calls, seconds, warm_up, runs, evict_kb, ptime_ms) = (vec![1000, 2500], 6, 2, 3, 0, 20);
    #[rustfmt::skip]
    let mut o = Options { calls, seconds, warm_up, runs, evict_kb, ptime_ms };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let [flag, value] = pair else {
            return Err(USAGE.into());
        };
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{flag} {value}?\n{USAGE}"))
        };
        match flag.as_str() {
            "--calls" => {
                o.calls = value.split(',').filter_map(|n| n.parse().ok()).collect();
            }
            "--seconds" => o.seconds = number()?,
            "--warm-up" => o.warm_up = number()?,
            "--runs" => o.runs = number()? as usize,
            "--evict-kb" => o.evict_kb = number()? as usize,
            "--ptime" => o.ptime_ms = number()? as u32,
            _ => return Err(USAGE.into()),
        }
    }
    let calls_ok = !o.calls.is_empty() && o.calls.iter().all(|&n| (1..=100_000).contains(&n));
    if o.seconds <= o.warm_up || o.runs == 0 || !calls_ok {
        return Err(format!(
            "more seconds than warm-up, 1 run, 1..=100000 calls\n{USAGE}"
        ));
    }
    Ok(o)
}

fn main() {
    let options = parse_args().unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    let render = Arc::new(bench_render().unwrap_or_else(|e| {
        eprintln!("cannot build the bench render: {e}");
        std::process::exit(1)
    }));
    println!(
        "fan-out alone, PCMU {} ms, {} virtual s after {} s warm-up, evict {} KB per turn; \
         CPU ns per packet, median of {} runs (all in brackets)",
        options.ptime_ms,
        options.seconds - options.warm_up,
        options.warm_up,
        options.evict_kb,
        options.runs
    );
    for &n in &options.calls {
        let mut figures = Vec::new();
        let mut packets = 0;
        for _ in 0..options.runs {
            let run = run(&options, n, &render);
            packets = run.packets;
            figures.push(run.cpu.as_nanos() as f64 / run.packets.max(1) as f64);
        }
        figures.sort_by(f64::total_cmp);
        let all: Vec<String> = figures.iter().map(|v| format!("{v:.0}")).collect();
        println!(
            "{n:>7} calls: {:>5.0} ns/packet [{}], {packets} packets measured per run",
            figures[figures.len() / 2],
            all.join(" ")
        );
    }
}

/// Thirty seconds of a 440 Hz tone at 8 kHz, encoded as every channel render is.
fn bench_render() -> Result<ChannelRender, String> {
    let samples = LOOP_SECONDS * 8000;
    let pcm: Vec<i16> = (0..samples)
        .map(|i| {
            let phase = i as f64 * 440.0 / 8000.0 * std::f64::consts::TAU;
            (phase.sin() * 8000.0) as i16
        })
        .collect();
    ChannelRender::from_parts("bench", 8000, pcm, Vec::new(), Vec::new(), true, None)
        .map_err(|e| format!("{e:?}"))
}

struct Run {
    packets: u64,
    cpu: Duration,
}

/// The calling thread's CPU time (user and system), to the microsecond.
fn thread_cpu() -> Duration {
    let Ok(usage) = getrusage(UsageWho::RUSAGE_THREAD) else {
        return Duration::ZERO;
    };
    let micros = [usage.user_time(), usage.system_time()]
        .iter()
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64)
        .sum();
    Duration::from_micros(micros)
}

/// One run: `n` calls arriving over the first second (their first packets on the 20 ms grid,
/// as `add_call` places them), served for `seconds` virtual seconds.
fn run(options: &Options, n: usize, render: &Arc<ChannelRender>) -> Run {
    let epoch = Instant::now();
    let clock = MediaClock::new(epoch);
    let mut fanout: Fanout = Fanout::new(clock, 18, SystemTime::now());
    let arrivals = Duration::from_secs(1) / n as u32;
    for call in 0..n {
        let media = CallMedia {
            call: call as u64,
            channel: Arc::clone(render),
            playback: Playback::Shared,
            cname: format!("bench-{call}"),
            ssrc: None,
            params: MediaParams {
                codec: Codec::Pcmu,
                payload_type: 0,
                ptime_ms: options.ptime_ms,
                remote_rtp: ([127, 0, 0, 1], 20_000 + 2 * (call % 20_000) as u16).into(),
                remote_rtcp: None,
                direction: Direction::SendOnly,
                peer_opus: None,
                srtp: None,
            },
        };
        fanout.add_call(epoch + arrivals * call as u32, media);
    }
    let mut buf = vec![0u8; MIN_BUFFER];
    let mut evict = vec![0u8; options.evict_kb * 1024];
    let measure_from = epoch + Duration::from_secs(options.warm_up);
    let end = epoch + Duration::from_secs(options.seconds);
    let mut packets = 0;
    let mut cpu = Duration::ZERO;
    while let Some(wake) = fanout.poll_timeout().filter(|&w| w < end) {
        evict_caches(&mut evict, wake);
        if wake < measure_from {
            warm_up_turn(&mut fanout, wake, &mut buf);
        } else {
            let before = thread_cpu();
            packets += measured_turn(&mut fanout, wake, &mut buf);
            cpu += thread_cpu() - before;
        }
    }
    Run { packets, cpu }
}

/// Writes over the eviction buffer (a different byte each turn, so it cannot be skipped).
fn evict_caches(evict: &mut [u8], wake: Instant) {
    let byte = (wake.elapsed().subsec_nanos() & 0xff) as u8;
    for line in evict.chunks_mut(64) {
        line[0] = byte;
    }
    black_box(evict);
}

#[inline(never)]
fn warm_up_turn(fanout: &mut Fanout, wake: Instant, buf: &mut [u8]) -> u64 {
    turn(fanout, wake, buf)
}

/// The measured work (callgrind's `--toggle-collect` names it).
#[inline(never)]
fn measured_turn(fanout: &mut Fanout, wake: Instant, buf: &mut [u8]) -> u64 {
    turn(fanout, wake, buf)
}

/// What the media thread does at a wake-up, minus the sending: the datagrams sent.
#[inline(always)]
fn turn(fanout: &mut Fanout, wake: Instant, buf: &mut [u8]) -> u64 {
    fanout.handle_timeout(wake);
    let mut sent = 0;
    let mut now = wake;
    while let Some(t) = fanout.poll_transmit(now, buf) {
        black_box(&buf[..t.len]);
        sent += 1;
        now += PACKET_SPACING;
    }
    sent
}
