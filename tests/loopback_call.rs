//! Over real loopback UDP: `mohd call` against `mohd serve`. The caller hears the music: no loss,
//! jitter well under 5 ms, and the recording correlates with the channel's own render.

mod common;

use common::*;
use mohd::channel::{ChannelRender, MusicSource};

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
