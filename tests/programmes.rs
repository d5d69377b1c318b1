//! Hold programmes end to end: an in-process server, `mohd call` as the caller, what it
//! records correlated against the channel's own 8 kHz render.
//!
//! - from-start and shared: two calls 7 s apart on a from-start channel each hear the
//!   programme from its first sample (± one packet), while on a shared channel the second
//!   caller hears it 7 s further on.
//! - shuffle: no packet late while the next shuffled passes render and are queued (a short
//!   playlist crosses pass boundaries within the call), and the channel moved on to them.
//! - greeting: a caller hears the greeting from its start, then the shared programme; RTP
//!   sequence and timestamps continuous, no sample step above the music's own at the join.
//! - persistence: a managed channel made while the server runs routes calls at once (its
//!   dialplan pushed to the SIP task), and again after a restart.
//!
//! Each test keeps its calls short (their first seconds): the whole file runs in well under
//! a minute.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use mohd::channel::spec::{ChannelSpec, Music, Origin};
use mohd::channel::store::ManagedRoute;
use mohd::channel::{ChannelRender, MusicSource};
use mohd::config::Config;
use mohd::server::Environment;

/// Long enough that 7 s and a call's length fit in one loop without wrapping ambiguity.
const LOOP_SECONDS: f64 = 12.0;
const RATE: usize = 8000;
/// Samples skipped at the start of each recording (jitter buffer, first packet's marker).
const SETTLE: usize = RATE / 10;
/// Samples correlated to find where in the render a recording is.
const PROBE: usize = RATE / 10;
/// The second caller dials this long after the first.
const APART: Duration = Duration::from_secs(7);

/// Writes the test music and returns its path and the channel's 8 kHz render of it (what
/// every PCMU caller hears, sample for sample).
fn music(dir: &Path) -> (std::path::PathBuf, ChannelRender) {
    let path = dir.join("music.wav");
    write_test_music(&path, LOOP_SECONDS, 8000);
    let render = ChannelRender::render(
        "default",
        &MusicSource::Files(vec![path.clone()]),
        mohd::channel::DEFAULT_TARGET_LUFS,
    );
    (path, render)
}

/// A 2 s PCMU call to `uri`, recorded; returns what it heard.
fn call_pcmu(uri: &str, record: &Path) -> Vec<i16> {
    call_pcmu_for(uri, record, "2")
}

/// A PCMU call of `seconds` to `uri`, recorded, with nothing lost and RTP timestamps
/// continuous; returns what it heard.
fn call_pcmu_for(uri: &str, record: &Path, seconds: &str) -> Vec<i16> {
    let report = mohd_call(
        uri,
        &[
            "--codec",
            "pcmu",
            "--seconds",
            seconds,
            "--record",
            record.to_str().expect("path"),
        ],
    );
    assert_eq!(report["stats"]["lost"], 0, "{report}");
    assert_eq!(report["stats"]["ts_jumps"], 0, "{report}");
    let heard = read_wav_mono(record);
    assert!(heard.len() > SETTLE + RATE, "{report}");
    heard
}

/// Where in `reference` (circular) the recording's first sample is, and how well it matched:
/// a coarse search of every lag with a short probe, then a fine one near it with a long
/// probe (the test music's tones repeat within a note; its note changes pin the lag).
fn position(heard: &[i16], reference: &[i16]) -> (usize, f64) {
    let (_, coarse) = best_circular_correlation(&heard[SETTLE..SETTLE + PROBE], reference);
    let len = reference.len();
    let at = refine(heard, reference, coarse + len - SETTLE);
    (at.0 % len, at.1)
}

/// The best lag within ±0.1 s of `near` for the recording's first sample, with a 1 s probe.
fn refine(heard: &[i16], reference: &[i16], near: usize) -> (usize, f64) {
    let len = reference.len();
    let probe = &heard[SETTLE..SETTLE + RATE];
    (0..=2 * SEARCH)
        .map(|k| {
            let start = (near + len - SEARCH + k) % len;
            (
                start,
                correlation_at(probe, reference, (start + SETTLE) % len),
            )
        })
        .fold((0, f64::MIN), |best, c| if c.1 > best.1 { c } else { best })
}

/// Half the width of the fine search, samples.
const SEARCH: usize = RATE / 10;

/// A packet of PCMU at 20 ms, in samples.
const PACKET: i64 = 160;

/// Two channels with the same music, one from-start and one shared; two callers on each,
/// 7 s apart (G.711 only: adding the wideband codecs after start-up swaps each render in
/// mid-loop, and a from-start caller before that loop's first position 0 starts shared;
/// see `rtp::fanout::timeline`). Each from-start caller hears the programme from its first sample, ± one
/// packet; the shared channel's second caller hears it as far on as it dialled later (the
/// shared position is the media clock's), give or take the calls' set-up times.
#[test]
fn from_start_callers_hear_the_start_and_a_shared_second_caller_joins_seven_seconds_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, render) = music(dir.path());
    let config = Config::from_str(
        &format!(
            "[sip]\nlisten = [\"udp:127.0.0.1:0\"]\n\
             [rtp]\ncodecs = [\"pcmu\", \"pcma\"]\n\
             [channels.start]\nmusic = {path:?}\nmode = \"from-start\"\n\
             [channels.shared]\nmusic = {path:?}\n\
             [[dialplan.route]]\nuser = \"1\"\nchannel = \"start\"\n\
             [dialplan]\ndefault = \"shared\"\n"
        ),
        &dir.path().join("mohd.toml"),
    )
    .expect("config");
    let server = Server::with_config(config);
    let (start_uri, shared_uri) = (server.uri("1"), server.uri("2"));
    let first_at = Instant::now();
    let record = |name: &str| dir.path().join(name);
    let firsts = [
        (start_uri.clone(), record("start1.wav")),
        (shared_uri.clone(), record("shared1.wav")),
    ]
    .map(|(uri, record)| std::thread::spawn(move || call_pcmu(&uri, &record)));
    std::thread::sleep(APART.saturating_sub(first_at.elapsed()));
    let second_at = Instant::now();
    let seconds = [
        (start_uri, record("start2.wav")),
        (shared_uri, record("shared2.wav")),
    ]
    .map(|(uri, record)| std::thread::spawn(move || call_pcmu(&uri, &record)));
    let [start1, shared1] = firsts.map(|t| t.join().expect("call"));
    let [start2, shared2] = seconds.map(|t| t.join().expect("call"));
    let reference = &render.pcm[..];
    let len = reference.len() as i64;
    // From the start: position 0, circularly, within one packet.
    let offsets: Vec<(i64, f64)> = [&start1, &start2]
        .iter()
        .map(|heard| {
            let (at, corr) = refine(heard, reference, 0);
            ((at as i64 + len / 2).rem_euclid(len) - len / 2, corr)
        })
        .collect();
    for (n, &(off, corr)) in offsets.iter().enumerate() {
        assert!(corr > 0.95, "from-start call {n}: correlation {corr:.3}");
        assert!(
            off.abs() <= PACKET,
            "from-start call {n} began {off} samples from the programme's start"
        );
    }
    let (p1, c1) = position(&shared1, reference);
    let (p2, c2) = position(&shared2, reference);
    assert!(c1 > 0.95 && c2 > 0.95, "correlations {c1:.3} {c2:.3}");
    let apart = (second_at - first_at).as_secs_f64();
    let heard_apart = ((p2 as i64 - p1 as i64).rem_euclid(len)) as f64 / RATE as f64;
    assert!(
        (heard_apart - apart).abs() < 0.4,
        "second shared caller is {heard_apart:.3} s on from the first, dialled {apart:.3} s later"
    );
}

/// A shuffled channel of three 1 s tracks: its passes are about 3 s, so an 8 s call crosses
/// at least two pass boundaries while the next passes render (at nice 19) and are queued.
/// No packet of the call is late, and the channel moved on to new passes meanwhile.
#[test]
fn shuffle_no_packet_late_while_the_next_pass_renders() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = Vec::new();
    for n in 0..3 {
        let path = dir.path().join(format!("t{n}.wav"));
        write_test_music(&path, 1.0, 8000);
        files.push(format!("{:?}", path));
    }
    let config = Config::from_str(
        &format!(
            "[sip]\nlisten = [\"udp:127.0.0.1:0\"]\n\
             [channels.default]\nmusic = [{}]\nshuffle = true\n\
             [dialplan]\ndefault = \"default\"\n",
            files.join(", ")
        ),
        &dir.path().join("mohd.toml"),
    )
    .expect("config");
    let mut env = Environment::with_probe(mohd_bin());
    env.shuffle_seed = Some(7);
    let server = Server::with_environment(config, env);
    let live = || Arc::clone(&server.control().renders.read().unwrap()["default"]);
    let first_pass = live();
    let late_before = server
        .control()
        .media_stats
        .packets_late
        .load(Ordering::Relaxed);
    let report = mohd_call(&server.uri("moh"), &["--codec", "pcmu", "--seconds", "8"]);
    assert_eq!(report["stats"]["lost"], 0, "{report}");
    assert_eq!(report["stats"]["ts_jumps"], 0, "{report}");
    let late = server
        .control()
        .media_stats
        .packets_late
        .load(Ordering::Relaxed)
        - late_before;
    assert_eq!(
        late, 0,
        "{late} packets late across the pass boundaries: {report}"
    );
    assert!(
        !Arc::ptr_eq(&first_pass, &live()),
        "the channel is still on its first pass"
    );
}

/// A managed channel made while the server runs (the store, as the API does) answers its
/// route at once; after a restart on the same state folder it still does.
#[test]
fn a_managed_channel_routes_at_once_and_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let config = || {
        let mut c = Config::from_str(
            "[sip]\nlisten = [\"udp:127.0.0.1:0\"]\n\
             [channels.default]\nmusic = \"demo\"\n\
             [[dialplan.route]]\nuser = \"1\"\nchannel = \"default\"\n",
            &dir.path().join("mohd.toml"),
        )
        .expect("config");
        c.state.dir = state.clone();
        c
    };
    let hears_lobby = |server: &Server| {
        assert!(
            wait_until(Duration::from_secs(30), || server
                .control()
                .renders
                .read()
                .unwrap()
                .contains_key("lobby")),
            "the lobby channel never rendered"
        );
        // The config file routes only "1": "700" reaches a channel by the managed route
        // alone (else 404 and `mohd call` fails).
        let report = mohd_call(&server.uri("700"), &["--codec", "pcmu", "--seconds", "1"]);
        assert!(
            report["stats"]["packets"].as_u64().unwrap_or(0) > 20,
            "{report}"
        );
    };
    {
        let server = Server::in_configured_state(config(), Environment::with_probe(mohd_bin()));
        {
            let mut store = server
                .control()
                .store
                .as_ref()
                .expect("store")
                .lock()
                .unwrap();
            let spec = ChannelSpec::simple("lobby", Origin::Managed, Music::Tracks(vec![]), -18.0);
            store.create(spec, None).expect("create");
            store
                .set_routes(vec![ManagedRoute::user("700", "lobby")])
                .expect("route");
        }
        server.control().channels_changed();
        hears_lobby(&server);
    }
    let server = Server::in_configured_state(config(), Environment::with_probe(mohd_bin()));
    hears_lobby(&server);
}

/// A shared channel with a greeting: the call's first half second is the greeting (a tone
/// rendered as the server does), its last second the channel's music; no timestamp jump, no
/// loss, and no sample step larger than the music's and the greeting's own (no click where
/// the greeting's faded end and its silence meet the programme).
#[test]
fn greeting_first_then_the_shared_programme_without_a_click() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, render) = music(dir.path());
    let greeting = dir.path().join("greeting.wav");
    write_test_music(&greeting, 1.0, 8000);
    let config = Config::from_str(
        &format!(
            "[sip]\nlisten = [\"udp:127.0.0.1:0\"]\n\
             [rtp]\ncodecs = [\"pcmu\", \"pcma\"]\n\
             [channels.default]\nmusic = {path:?}\ngreeting = {greeting:?}\n\
             [dialplan]\ndefault = \"default\"\n"
        ),
        &dir.path().join("mohd.toml"),
    )
    .expect("config");
    let server = Server::with_config(config);
    let plan = mohd::channel::encoded::CodecPlan::new(&mohd::codec::Codec::G711, 32_000);
    let expected = ChannelRender::greeting(&greeting, mohd::channel::DEFAULT_TARGET_LUFS, &plan)
        .expect("greeting");
    // The greeting renders off the runtime after start-up.
    std::thread::sleep(Duration::from_secs(2));
    let heard = call_pcmu_for(&server.uri("moh"), &dir.path().join("heard.wav"), "4");
    let opening = correlation_at(&heard[..RATE / 2], &expected.pcm, 0);
    assert!(
        opening > 0.95,
        "the call did not open with the greeting: {opening:.3}"
    );
    let tail = &heard[heard.len() - RATE..heard.len() - RATE + PROBE];
    let (music, _) = best_circular_correlation(tail, &render.pcm);
    assert!(
        music > 0.95,
        "the call's end is not the channel's music: {music:.3}"
    );
    let step = |s: &[i16]| {
        s.windows(2)
            .map(|w| (i32::from(w[1]) - i32::from(w[0])).abs())
            .max()
            .unwrap_or(0)
    };
    let own = step(&render.pcm).max(step(&expected.pcm));
    let heard_step = step(&heard);
    assert!(
        f64::from(heard_step) <= f64::from(own) * 1.5 + 500.0,
        "a click: largest step {heard_step} against the sources' {own}"
    );
}
