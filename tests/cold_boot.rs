//! Cold boot (issue 18): with an empty render cache and a long playlist, SIP answers with
//! music before the full loop is rendered (the channel's head: its first track), and the full
//! loop then takes over mid-call with no step: RTP sequence and timestamps run on, and what
//! the caller hears is the full loop's samples, at one position, across the join. The full
//! render is held by a test hook until the call is in progress, so "before" is an observed
//! state (the channel still rendering, the head live), not a race against the clock.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Server, mohd_bin, read_wav_mono, wait_until};
use mohd::channel::ChannelRender;
use mohd::codec::{Codec, g711};
use mohd::config::Config;
use mohd::control::RenderHold;
use mohd::server::Environment;
use mohd::web::backend::Backend;

const CHANNEL: &str = "default";
/// Eight tracks, the first long enough to be the head on its own (the head is the first
/// tracks that last 30 s).
/// The rest short, so the full loop with G.722 renders within a call in a debug build.
const TRACK_SECONDS: [usize; 8] = [32, 8, 9, 10, 11, 12, 13, 14];

/// Tracks of different pitches, each with a slow tremolo, so any 20 ms of the loop is found
/// at one place only.
fn write_playlist(dir: &Path) -> PathBuf {
    let music = dir.join("music");
    std::fs::create_dir_all(&music).unwrap();
    for (i, &seconds) in TRACK_SECONDS.iter().enumerate() {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 8000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(music.join(format!("t{i:02}.wav")), spec).unwrap();
        let pitch = 200.0 + 45.0 * i as f64;
        for n in 0..seconds * 8000 {
            let t = n as f64 / 8000.0;
            let tremolo = 0.6 + 0.4 * (t * 0.7 + i as f64).sin();
            let chirp = 300.0 + 20.0 * t;
            let v = 0.5 * tremolo * (2.0 * std::f64::consts::PI * pitch * t).sin()
                + 0.2 * (2.0 * std::f64::consts::PI * chirp * t).sin();
            w.write_sample((v * 20_000.0) as i16).unwrap();
        }
        w.finalize().unwrap();
    }
    music
}

/// A server starting on `music` with an empty cache, its full renders held by `hold_full`
/// and its heads by `hold_heads` (when given).
fn start_cold(music: PathBuf, hold_full: &RenderHold, hold_heads: Option<&RenderHold>) -> Server {
    let mut config = Config::embedded_default();
    config.apply_overrides(Some("127.0.0.1:0".parse().unwrap()), Some(music));
    config.web.listen = None;
    // G.711 and one wideband codec: Opus would add a minute of encoding in a debug build.
    config.rtp.codecs = vec![Codec::Pcmu, Codec::Pcma, Codec::G722];
    let mut env = Environment::with_probe(mohd_bin());
    env.hold_full_render = Some(hold_full.clone());
    env.hold_heads = hold_heads.cloned();
    // A fresh state folder: an empty render cache.
    Server::with_environment(config, env)
}

/// The channel's live render and its render state on the status page.
fn live(server: &Server) -> (Arc<ChannelRender>, String) {
    let render = server.control().renders.read().unwrap()[CHANNEL].clone();
    let status = server.control().status();
    let channel = status.channels.iter().find(|c| c.name == CHANNEL).unwrap();
    (render, channel.render.clone())
}

/// Whether the channel plays its head: its first track whole (the opening before it is its
/// first seconds).
fn head_is_live(server: &Server) -> bool {
    let (render, _) = live(server);
    render.tracks.len() == 1 && render.len_samples() >= 30 * 8000
}

/// What a PCMU caller decodes of `render` from sample `at` on.
fn heard(render: &ChannelRender, at: usize, len: usize) -> Vec<i16> {
    (at..at + len)
        .map(|i| g711::ulaw_to_linear(g711::linear_to_ulaw(render.pcm[i % render.pcm.len()])))
        .collect()
}

/// Where in `render` the recording's first 20 ms are, exactly.
fn position_of(recording: &[i16], render: &ChannelRender) -> Option<usize> {
    let probe = &recording[..160];
    (0..render.pcm.len()).find(|&p| heard(render, p, 160) == probe)
}

/// The share of samples of `recording` that are exactly `render`'s from `at` on (the rest
/// may differ by a step of the last bit: the loop-wide limiter of the full loop).
fn exact_share(recording: &[i16], render: &ChannelRender, at: usize) -> f64 {
    let reference = heard(render, at, recording.len());
    let same = recording
        .iter()
        .zip(&reference)
        .filter(|(a, b)| a == b)
        .count();
    same as f64 / recording.len() as f64
}

fn rms(x: &[i16]) -> f64 {
    (x.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

/// A PCMU call of `seconds`, recorded; its JSON report.
fn call(
    server: &Server,
    seconds: f64,
    record: &Path,
) -> std::thread::JoinHandle<serde_json::Value> {
    call_on("pcmu", server, seconds, record)
}

/// A call on `codec` of `seconds`, recorded; its JSON report.
fn call_on(
    codec: &'static str,
    server: &Server,
    seconds: f64,
    record: &Path,
) -> std::thread::JoinHandle<serde_json::Value> {
    let uri = server.uri("moh");
    let record = record.to_owned();
    std::thread::spawn(move || {
        common::mohd_call(
            &uri,
            &[
                "--seconds",
                &seconds.to_string(),
                "--codec",
                codec,
                "--record",
                record.to_str().unwrap(),
            ],
        )
    })
}

/// RTP ran on unbroken: nothing lost, no timestamp step, no re-sync.
fn assert_unbroken(report: &serde_json::Value) {
    let stats = &report["stats"];
    assert_eq!(stats["lost"], 0, "{report}");
    assert_eq!(stats["ts_jumps"], 0, "{report}");
    assert_eq!(stats["resyncs"], 0, "{report}");
    assert_eq!(stats["expected"], stats["packets"], "{report}");
}

/// Serves the head while held; a call placed then hears the head, and hears the full loop
/// take over (released mid-call, after `head_laps_first` full laps of the head have played)
/// with no step at the join and no gap in its RTP; so does a G.722 caller (the head has its
/// G.722 before the call, and the full loop joins with its own).
fn cold_boot_call(head_laps_first: u64) {
    let dir = tempfile::tempdir().unwrap();
    let music = write_playlist(dir.path());
    let hold = RenderHold::new();
    let started = Instant::now();
    let server = start_cold(music, &hold, None);

    // The head goes live (after the opening, its first seconds), then with G.722, while the
    // full render is held: one track, still "rendering".
    let wideband_head = || head_is_live(&server) && live(&server).0.serves(Codec::G722);
    assert!(
        wait_until(Duration::from_secs(60), wideband_head),
        "the head never went live with G.722"
    );
    let (head, state) = live(&server);
    assert_eq!(state, "rendering");
    assert!(head.playable);
    let head_seconds = head.len_samples() as f64 / 8000.0;
    assert!(
        (30.0..40.0).contains(&head_seconds),
        "head {head_seconds} s"
    );
    // A head that has looped (the full render was late) is joined through the timeline.
    // Past the opening's ramp into the head (a few seconds in), so the call hears the full
    // loop's samples throughout.
    let lapped = Duration::from_secs_f64(head_seconds * head_laps_first as f64 + 3.0);
    std::thread::sleep(lapped.saturating_sub(started.elapsed()));

    let recording = dir.path().join("call.wav");
    let answered = || {
        server
            .control()
            .call_metrics
            .answered
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let wideband_recording = dir.path().join("g722.wav");
    let calling = call(&server, 30.0, &recording);
    let wideband_calling = call_on("g722", &server, 30.0, &wideband_recording);
    assert!(
        wait_until(Duration::from_secs(10), || answered() == 2),
        "no answer"
    );
    // Some head first: the calls are in progress and the full loop is still held.
    std::thread::sleep(Duration::from_secs(2));
    let (during, state) = live(&server);
    assert!(Arc::ptr_eq(&during, &head) && state == "rendering");

    hold.release();
    // The full loop joins while the call goes on.
    let joined = wait_until(Duration::from_secs(60), || {
        let (render, state) = live(&server);
        state == "ready" && render.tracks.len() == TRACK_SECONDS.len()
    });
    assert!(joined, "the full loop never joined");
    assert!(
        !calling.is_finished(),
        "the join came after the call ended: make it longer"
    );
    let (full, _) = live(&server);
    let report = calling.join().unwrap();
    let wideband_report = wideband_calling.join().unwrap();

    // RTP ran on across the join: nothing lost, no timestamp step, no re-sync.
    assert_unbroken(&report);
    assert_unbroken(&wideband_report);
    assert_eq!(wideband_report["codec"], "G722", "{wideband_report}");

    // Music from the first packet: the head's own samples (exactly), not silence.
    let heard_samples = read_wav_mono(&recording);
    assert!(
        heard_samples.len() > 15 * 8000,
        "{} samples",
        heard_samples.len()
    );
    let at = position_of(&heard_samples, &head).expect("the recording starts inside the head");
    let first_second = &heard_samples[..8000];
    assert!(
        rms(first_second) > 1000.0,
        "silence: rms {}",
        rms(first_second)
    );
    assert_eq!(
        first_second,
        &heard(&head, at, 8000)[..],
        "the head, exactly"
    );
    // Then one continuous run of the full loop from that position, across the join.
    let share = exact_share(&heard_samples, &full, at);
    assert!(
        share > 0.999,
        "only {share} of the call is the full loop at one position"
    );
    assert!(rms(&heard_samples[heard_samples.len() - 8000..]) > 1000.0);

    // The G.722 caller heard music from its first 20 ms to its last (no silence before its
    // codec was ready, no drop at the join), and no step: no sample moves further from the
    // one before than the music does at 8 kHz (twice as far per sample as at 16 kHz).
    let (rate, wideband) = common::read_wav_first_channel(&wideband_recording);
    assert_eq!(rate, 16_000);
    let frame = 320;
    let quietest = wideband[frame..]
        .chunks_exact(frame)
        .map(rms)
        .fold(f64::INFINITY, f64::min);
    assert!(quietest > 300.0, "a silent 20 ms: rms {quietest}");
    let step = |x: &[i16]| {
        x.windows(2)
            .map(|w| (i32::from(w[1]) - i32::from(w[0])).abs())
            .max()
            .unwrap_or(0)
    };
    let music_step = step(&heard_samples);
    assert!(
        step(&wideband) <= music_step + music_step / 4,
        "a step of {} in the G.722 call (music at 16 kHz: {})",
        step(&wideband),
        music_step
    );
}

#[test]
fn a_cold_boot_answers_with_the_head_and_joins_the_full_loop_seamlessly() {
    cold_boot_call(0);
}

/// The full render took longer than the head lasts: the head looped (its own seam, a
/// crossfade), and the full loop joins at the head's position then, not at the absolute one.
#[test]
fn a_late_full_loop_joins_a_looped_head_at_its_position() {
    cold_boot_call(1);
}

/// Until its heads are live the box says "starting": OPTIONS gets 503 with a Retry-After and a
/// Warning, so a proxy routes elsewhere meanwhile. An INVITE sent anyway is answered at once
/// (a PBX with no other box has nowhere else to send its caller): silence, then the head.
#[test]
fn options_say_starting_until_the_head_is_live_and_a_call_meanwhile_gets_the_head() {
    let dir = tempfile::tempdir().unwrap();
    let music = write_playlist(dir.path());
    let (heads, full) = (RenderHold::new(), RenderHold::new());
    let server = start_cold(music, &full, Some(&heads));

    let answer = common::options(server.sip);
    assert!(answer.starts_with("SIP/2.0 503"), "{answer}");
    assert!(answer.contains("\r\nRetry-After: 1\r\n"), "{answer}");
    assert!(answer.contains("Warning: 399 mohd \"starting"), "{answer}");
    assert!(answer.contains(CHANNEL), "{answer}");

    let recording = dir.path().join("call.wav");
    let calling = call(&server, 12.0, &recording);
    let answered = || {
        let calls = &server.control().call_metrics.answered;
        calls.load(std::sync::atomic::Ordering::Relaxed) == 1
    };
    assert!(wait_until(Duration::from_secs(10), answered), "no answer");
    std::thread::sleep(Duration::from_secs(1));
    assert!(common::options(server.sip).starts_with("SIP/2.0 503"));
    heads.release();
    let serving = || common::options(server.sip).starts_with("SIP/2.0 200");
    assert!(wait_until(Duration::from_secs(60), serving), "still 503");
    let head_live = || head_is_live(&server);
    assert!(wait_until(Duration::from_secs(60), head_live), "no head");
    let (head, state) = live(&server);
    assert_eq!((head.tracks.len(), state.as_str()), (1, "rendering"));
    let report = calling.join().unwrap();
    full.release();

    // One unbroken stream: silence while starting, then the head, exactly.
    let stats = &report["stats"];
    assert_eq!(stats["lost"], 0, "{report}");
    assert_eq!(stats["expected"], stats["packets"], "{report}");
    let heard_samples = read_wav_mono(&recording);
    assert!(rms(&heard_samples[..4000]) < 16.0, "not silence at first");
    let last = &heard_samples[heard_samples.len() - 8000..];
    assert!(rms(last) > 1000.0, "no music at the end: rms {}", rms(last));
    let at = position_of(last, &head).expect("the end of the call is inside the head");
    assert_eq!(last, &heard(&head, at, 8000)[..], "the head, exactly");
}
