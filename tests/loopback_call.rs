//! Over real loopback UDP: `mohd call` against `mohd serve`. The caller hears the music: no loss,
//! jitter well under 5 ms, and the recording correlates with the channel's own render.

mod common;

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
