//! Over real loopback UDP: `mohd call` against `mohd serve`. The caller hears the music: no loss,
//! jitter well under 5 ms, and the recording correlates with the channel's own render, in
//! every codec (G.722 recorded at 16 kHz, Opus at 48 kHz).

mod common;

use std::time::{Duration, Instant};

use common::*;
use mohd::channel::{ChannelRender, MusicSource};
use mohd::codec::Codec;
use mohd::config::Config;

#[test]
fn caller_hears_the_channel_render_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let music = dir.path().join("music.wav");
    write_test_music(&music, 3.0, 44_100);
    let server = Server::start(&["--music", music.to_str().unwrap()]);

    let record = dir.path().join("heard.wav");
    let report = mohd_call(
        &server.uri("moh"),
        &["--seconds", "5", "--record", record.to_str().unwrap()],
    );
    let stats = &report["stats"];
    assert_eq!(report["codec"], "PCMU");
    assert!(stats["packets"].as_u64().unwrap() >= 240, "{report}");
    assert_eq!(stats["lost"], 0, "{report}");
    assert_eq!(stats["duplicated"], 0, "{report}");
    assert!(stats["jitter_max_ms"].as_f64().unwrap() < 5.0, "{report}");
    assert_eq!(report["bye_status"], 200, "{report}");

    // The same render the server made (rendering is deterministic).
    let render = ChannelRender::render("default", &MusicSource::Files(vec![music.clone()]), -18.0);
    let heard = read_wav_mono(&record);
    assert!(heard.len() >= 8000 * 4, "recorded {} samples", heard.len());
    let chunk = &heard[8000..8000 + 2000];
    let rms = (chunk.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / chunk.len() as f64).sqrt();
    assert!(rms > 300.0, "the recording is (near) silence: rms {rms}");
    let (corr, _lag) = best_circular_correlation(chunk, &render.pcm);
    assert!(
        corr > 0.95,
        "recording does not match the render: correlation {corr}"
    );
}

#[test]
fn pcma_is_used_when_offered_first() {
    let server = Server::start(&[]);
    let report = mohd_call(&server.uri("moh"), &["--seconds", "1", "--codec", "pcma"]);
    assert_eq!(report["codec"], "PCMA");
    assert_eq!(report["stats"]["lost"], 0);
    assert!(report["stats"]["packets"].as_u64().unwrap() >= 40);
}

#[test]
fn a_codec_the_server_does_not_accept_is_a_clean_488() {
    let mut config = Config::embedded_default();
    config.apply_overrides(Some("127.0.0.1:0".parse().unwrap()), None);
    config.web.listen = None;
    config.rtp.codecs = Codec::G711.to_vec();
    let server = Server::with_config(config);
    for codec in ["g722", "opus"] {
        let stderr = mohd_call_fails(&server.uri("moh"), &["--seconds", "1", "--codec", codec]);
        assert!(stderr.contains("call refused: 488"), "{codec}: {stderr}");
        assert!(!stderr.contains("panicked"), "{codec}: {stderr}");
    }
    // The server is unharmed: G.711 still plays.
    let report = mohd_call(&server.uri("moh"), &["--seconds", "1", "--codec", "pcmu"]);
    assert_eq!(report["codec"], "PCMU");
    assert_eq!(report["audio_rate"], 8000);
    assert!(report["stats"]["packets"].as_u64().unwrap() >= 40);
}

/// Every `step`-th sample: the recordings and renders compared at 8 kHz, which the test
/// music's tones (under 1.5 kHz with their harmonics) survive, so the search stays quick.
fn every(pcm: &[i16], step: usize) -> Vec<i16> {
    pcm.iter().step_by(step).copied().collect()
}

#[test]
fn g722_and_opus_callers_hear_the_channel_at_their_own_rate() {
    let dir = tempfile::tempdir().unwrap();
    let music = dir.path().join("music.wav");
    write_test_music(&music, 3.0, 44_100);
    let server = Server::start(&["--music", music.to_str().unwrap()]);
    let source = MusicSource::Files(vec![music.clone()]);
    for (codec, name, rate) in [("g722", "G722", 16_000), ("opus", "opus", 48_000)] {
        // The wideband renders are made after start-up: until they are in, the call is
        // answered but silent.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let probe = mohd_call(&server.uri("moh"), &["--seconds", "0.3", "--codec", codec]);
            if probe["stats"]["packets"].as_u64().unwrap_or(0) > 0 {
                break;
            }
            assert!(Instant::now() < deadline, "{codec} never served");
            std::thread::sleep(Duration::from_millis(500));
        }
        let record = dir.path().join(format!("{codec}.wav"));
        let report = mohd_call(
            &server.uri("moh"),
            &[
                "--seconds",
                "4",
                "--codec",
                codec,
                "--record",
                record.to_str().unwrap(),
            ],
        );
        assert_eq!(report["codec"], name, "{report}");
        assert_eq!(report["audio_rate"], rate, "{report}");
        assert_eq!(report["stats"]["lost"], 0, "{report}");
        assert_eq!(report["undecodable"], 0, "{report}");
        let heard = read_wav_mono(&record);
        assert_eq!(
            hound::WavReader::open(&record).unwrap().spec().sample_rate,
            rate
        );
        assert!(
            heard.len() >= rate as usize * 3,
            "{codec}: {} samples",
            heard.len()
        );

        let step = rate as usize / 8000;
        let reference = ChannelRender::render_at("default", &source, -18.0, rate);
        let (heard, reference) = (every(&heard, step), every(&reference.pcm, step));
        // Three 100 ms chunks a second apart: at most one can straddle the loop's seam,
        // where this reference (the loop as the joins make it) and the served one (fitted to
        // whole 20 ms frames) may differ.
        let matching = [8000, 16_000, 24_000]
            .iter()
            .map(|&at| best_circular_correlation(&heard[at..at + 800], &reference).0)
            .filter(|&corr| corr > 0.95)
            .count();
        assert!(
            matching >= 2,
            "{codec}: the recording does not match the render"
        );
    }
}

#[test]
fn srtp_offered_over_plain_udp_is_a_clean_488() {
    // SDES keys in SDP over UDP are readable on the path: by default mohd takes them only over
    // TLS, and refuses the offer rather than answering it in plain RTP.
    let server = Server::start(&[]);
    let stderr = mohd_call_fails(&server.uri("moh"), &["--seconds", "1", "--srtp"]);
    assert!(stderr.contains("call refused: 488"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
