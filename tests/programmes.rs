//! Hold programmes end to end: an in-process server, `mohd call` as the caller, what it
//! records correlated against the channel's own 8 kHz render.
//!
//! - shared: a second caller 7 s after the first hears the channel 7 s further on.
//!
//! Each test keeps its calls short (their first seconds): the whole file runs in well under
//! a minute.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use mohd::channel::{ChannelRender, MusicSource};

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
    let report = mohd_call(
        uri,
        &[
            "--codec",
            "pcmu",
            "--seconds",
            "2",
            "--record",
            record.to_str().expect("path"),
        ],
    );
    assert_eq!(report["stats"]["lost"], 0, "{report}");
    let heard = read_wav_mono(record);
    assert!(heard.len() > SETTLE + PROBE, "{report}");
    heard
}

/// Where in `reference` (circular) the recording's first sample is, and how well it matched.
fn position(heard: &[i16], reference: &[i16]) -> (usize, f64) {
    let (corr, at) = best_circular_correlation(&heard[SETTLE..SETTLE + PROBE], reference);
    let len = reference.len();
    ((at + len - SETTLE) % len, corr)
}

/// Two calls on a shared channel 7 s apart: the second hears the channel 7 s further on
/// (the shared position is the media clock's), give or take the two calls' set-up times.
#[test]
fn shared_second_caller_joins_seven_seconds_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, render) = music(dir.path());
    let server = Server::start(&["--music", path.to_str().expect("path")]);
    let uri = server.uri("moh");
    let first_at = Instant::now();
    let first = {
        let (uri, record) = (uri.clone(), dir.path().join("first.wav"));
        std::thread::spawn(move || call_pcmu(&uri, &record))
    };
    std::thread::sleep(APART.saturating_sub(first_at.elapsed()));
    let second_at = Instant::now();
    let second = call_pcmu(&uri, &dir.path().join("second.wav"));
    let first = first.join().expect("first call");
    let reference = &render.pcm[..];
    let (p1, c1) = position(&first, reference);
    let (p2, c2) = position(&second, reference);
    assert!(c1 > 0.95 && c2 > 0.95, "correlations {c1:.3} {c2:.3}");
    let len = reference.len() as i64;
    let apart = (second_at - first_at).as_secs_f64();
    let heard_apart = ((p2 as i64 - p1 as i64).rem_euclid(len)) as f64 / RATE as f64;
    assert!(
        (heard_apart - apart).abs() < 0.4,
        "second caller is {heard_apart:.3} s on from the first, dialled {apart:.3} s later"
    );
}
