//! Every codec end to end over loopback: `mohd call --codec X` against an in-process server.
//! What the caller decodes correlates with that codec's reference render of the source (the
//! channel rendered at the codec's audio rate) in every 1 s block, across the loop's seam (the
//! 3 s loop wraps during the 5 s call), with no click at the wrap; and with `--srtp` over TLS
//! the same music arrives encrypted.

mod common;

use std::path::Path;

use common::*;
use mohd::channel::compose::Composition;
use mohd::channel::encoded::reference_pcm;
use mohd::channel::{ChannelRender, MusicSource};
use mohd::codec::Codec;

/// The loop is 3 s: a 5 s call hears the seam at least once.
const LOOP_SECONDS: f64 = 3.0;
const CALL_SECONDS: &str = "5";
/// Best correlation every 1 s block must reach (the bar).
const BLOCK_CORRELATION: f64 = 0.98;

#[test]
fn pcmu_every_block_matches_the_render() {
    call_and_compare(Codec::Pcmu, &[]);
}

#[test]
fn pcma_every_block_matches_the_render() {
    call_and_compare(Codec::Pcma, &[]);
}

#[test]
fn g722_every_block_matches_the_16khz_render() {
    call_and_compare(Codec::G722, &[]);
}

#[test]
fn opus_every_block_matches_the_48khz_render() {
    call_and_compare(Codec::Opus, &[]);
}

#[test]
fn srtp_over_tls_carries_the_same_music() {
    let dir = tempfile::tempdir().unwrap();
    write_certificate(dir.path(), false);
    let music = dir.path().join("music.wav");
    write_test_music(&music, LOOP_SECONDS, 44_100);
    let config = dir.path().join("mohd.toml");
    std::fs::write(
        &config,
        format!(
            "[sip]\nlisten = [\"tls:127.0.0.1:0\"]\n{TLS_KEYS}\n[channels.default]\nmusic = {music:?}\n[dialplan]\ndefault = \"default\"\n"
        ),
    )
    .unwrap();
    let server = Server::from_config_file(&config, &["tls"]);
    server.wait_until_serving("default", Codec::G722);
    let uri = format!("sip:moh@{};transport=tls", server.addr("tls"));
    let (report, heard) = call(
        &uri,
        Codec::G722,
        &["--srtp"],
        &dir.path().join("heard.wav"),
    );
    let suite = report["srtp"]["suite"].as_str().unwrap_or_default();
    assert!(
        suite.starts_with("AES") || suite.starts_with("AEAD"),
        "{report}"
    );
    assert_eq!(report["srtp"]["rtp_auth_failures"], 0, "{report}");
    compare(Codec::G722, &heard, &music);
}

/// A call with `codec` to a server playing a 3 s test loop; every block checked.
fn call_and_compare(codec: Codec, extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let music = dir.path().join("music.wav");
    write_test_music(&music, LOOP_SECONDS, 44_100);
    let server = Server::start(&["--music", music.to_str().unwrap()]);
    server.wait_until_serving("default", codec);
    let (_, heard) = call(
        &server.uri("moh"),
        codec,
        extra,
        &dir.path().join("heard.wav"),
    );
    compare(codec, &heard, &music);
}

/// Runs `mohd call --codec` and returns its report and what it recorded, checking what every
/// clean call means: the codec asked for, no loss, BYE answered.
fn call(uri: &str, codec: Codec, extra: &[&str], record: &Path) -> (serde_json::Value, Vec<i16>) {
    let mut args = vec![
        "--codec",
        codec.config_name(),
        "--seconds",
        CALL_SECONDS,
        "--record",
        record.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let report = mohd_call(uri, &args);
    assert_eq!(report["codec"], codec.encoding_name(), "{report}");
    assert_eq!(report["stats"]["lost"], 0, "{report}");
    assert_eq!(report["bye_status"], 200, "{report}");
    let mut wav = hound::WavReader::open(record).expect("open recording");
    assert_eq!(wav.spec().sample_rate, codec.audio_rate(), "{report}");
    let heard = wav.samples::<i16>().map(|s| s.expect("sample")).collect();
    (report, heard)
}

/// Every whole 1 s block of `heard` (after the first, where decoders settle) correlates with
/// the channel's render at the codec's rate, at the position the first block fixes; and the
/// largest sample step is no larger than the render's own (no click at the seam).
fn compare(codec: Codec, heard: &[i16], music: &Path) {
    let rate = codec.audio_rate() as usize;
    let source = MusicSource::Files(vec![music.to_path_buf()]);
    let base = ChannelRender::render("default", &source, -18.0);
    let reference = &if codec.is_g711() {
        base.pcm.to_vec()
    } else {
        let playlist = Composition::playlist(source.clone(), -18.0);
        reference_pcm("default", &playlist, codec, base.frames())
    };
    assert!(heard.len() >= rate * 4, "recorded {} samples", heard.len());
    let start = find_position(&heard[rate..rate + rate / 4], reference, rate);
    let blocks = heard.len() / rate;
    for b in 1..blocks {
        let block = &heard[b * rate..(b + 1) * rate];
        let expected = start + (b - 1) * rate;
        let corr = best_correlation_near(block, reference, expected, rate / 200);
        assert!(
            corr >= BLOCK_CORRELATION,
            "{codec:?}: block {b} correlates at {corr:.4} (< {BLOCK_CORRELATION})"
        );
    }
    let step = |s: &[i16]| {
        s.windows(2)
            .map(|w| (i32::from(w[1]) - i32::from(w[0])).abs())
            .max()
            .unwrap_or(0)
    };
    let heard_step = step(&heard[rate..blocks * rate]);
    let render_step = step(reference);
    assert!(
        f64::from(heard_step) <= f64::from(render_step) * 1.5 + 500.0,
        "{codec:?}: a click: largest step {heard_step} against the render's {render_step}"
    );
}

/// Where in the circular `reference` the `chunk` starts: a search at 8 kHz (box-decimated),
/// refined at the full rate.
fn find_position(chunk: &[i16], reference: &[i16], rate: usize) -> usize {
    let factor = rate / 8000;
    let (_, coarse) =
        best_circular_correlation(&decimate(chunk, factor), &decimate(reference, factor));
    let guess = coarse * factor;
    let n = reference.len();
    (0..=2 * factor)
        .map(|d| (guess + n + d - factor) % n)
        .max_by(|&a, &b| {
            correlation_at(chunk, reference, a).total_cmp(&correlation_at(chunk, reference, b))
        })
        .unwrap_or(guess)
}

/// The best correlation of `block` with `reference` at `expected ± slack` (circular).
fn best_correlation_near(block: &[i16], reference: &[i16], expected: usize, slack: usize) -> f64 {
    let n = reference.len();
    (0..=2 * slack)
        .map(|d| correlation_at(block, reference, (expected + n + d - slack) % n))
        .fold(f64::MIN, f64::max)
}
