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
    let mut o = Options {
        calls: vec![1000, 2500],
        seconds: 6,
        warm_up: 2,
        runs: 3,
        evict_kb: 0,
        ptime_ms: 20,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(USAGE)?;
        let bad = |_| format!("bad value {value} for {flag}\n{USAGE}");
        match flag.as_str() {
            "--calls" => {
                o.calls = value
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .map_err(bad)?
            }
            "--seconds" => o.seconds = value.parse().map_err(bad)?,
            "--warm-up" => o.warm_up = value.parse().map_err(bad)?,
            "--runs" => o.runs = value.parse().map_err(bad)?,
            "--evict-kb" => o.evict_kb = value.parse().map_err(bad)?,
            "--ptime" => o.ptime_ms = value.parse().map_err(bad)?,
            _ => return Err(USAGE.into()),
        }
    }
    if o.seconds <= o.warm_up || o.runs == 0 || o.calls.iter().any(|&n| n == 0 || n > 100_000) {
        return Err(format!(
            "more seconds than warm-up, 1 run, 1..=100000 calls\n{USAGE}"
        ));
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
    let render = match bench_render() {
        Ok(r) => Arc::new(r),
        Err(e) => {
            eprintln!("cannot build the bench render: {e}");
            std::process::exit(1);
        }
    };
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

fn thread_cpu() -> Duration {
    getrusage(UsageWho::RUSAGE_THREAD).map_or(Duration::ZERO, |u| {
        let (user, system) = (u.user_time(), u.system_time());
        Duration::new((user.tv_sec() + system.tv_sec()) as u64, 0)
            + Duration::from_micros((user.tv_usec() + system.tv_usec()) as u64)
    })
}

/// One run: `n` calls arriving over the first second (their first packets on the 20 ms grid,
/// as `add_call` places them), served for `seconds` virtual seconds.
fn run(options: &Options, n: usize, render: &Arc<ChannelRender>) -> Run {
    let epoch = Instant::now();
    let clock = MediaClock::new(epoch);
    let mut fanout: Fanout = Fanout::new(clock, 18, SystemTime::now());
    let arrivals = Duration::from_secs(1) / n as u32;
    for call in 0..n {
        let params = MediaParams {
            codec: Codec::Pcmu,
            payload_type: 0,
            ptime_ms: options.ptime_ms,
            remote_rtp: ([127, 0, 0, 1], 20_000 + 2 * (call % 20_000) as u16).into(),
            remote_rtcp: None,
            direction: Direction::SendOnly,
            peer_opus: None,
            srtp: None,
        };
        let media = CallMedia {
            call: call as u64,
            params,
            channel: Arc::clone(render),
            playback: Playback::Shared,
            cname: format!("bench-{call}"),
            ssrc: None,
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
