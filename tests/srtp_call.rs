//! An SRTP call end to end over loopback UDP: `mohd call --srtp` against the in-process server
//! (SDES allowed over plain UDP for the test). Every RTP packet and RTCP compound the fan-out
//! protects authenticates and decrypts at the caller, no packet is lost, and what the caller
//! hears is the channel's own render.

mod common;

use common::*;
use mohd::channel::{ChannelRender, MusicSource};
use mohd::config::Config;

#[test]
fn srtp_caller_hears_the_render_and_every_packet_authenticates() {
    let dir = tempfile::tempdir().unwrap();
    let music = dir.path().join("music.wav");
    write_test_music(&music, 3.0, 44_100);
    let mut config = Config::embedded_default();
    config.apply_overrides(Some("127.0.0.1:0".parse().unwrap()), Some(music.clone()));
    config.web.listen = None;
    config.rtp.srtp_over_plain_transports = true;
    let server = Server::with_config(config);

    let record = dir.path().join("heard.wav");
    let report = mohd_call(
        &server.uri("moh"),
        &[
            "--srtp",
            "--seconds",
            "7",
            "--record",
            record.to_str().unwrap(),
        ],
    );
    let srtp = &report["srtp"];
    // Our offer lists the strongest suite first; the answer takes the offer's order.
    assert_eq!(srtp["suite"], "AEAD_AES_128_GCM", "{report}");
    for rejected in [
        "rtp_auth_failures",
        "rtp_replays",
        "rtp_malformed",
        "rtcp_rejected",
    ] {
        assert_eq!(srtp[rejected], 0, "{rejected}: {report}");
    }
    let stats = &report["stats"];
    assert!(stats["packets"].as_u64().unwrap() >= 300, "{report}");
    assert_eq!(stats["lost"], 0, "{report}");
    // RTCP (multiplexed or not) arrives first after 1.25–3.75 s, then every 2.5–7.5 s.
    assert!(report["rtcp_received"].as_u64().unwrap() >= 1, "{report}");
    assert_eq!(report["bye_status"], 200, "{report}");

    let render = ChannelRender::render("default", &MusicSource::Files(vec![music]), -18.0);
    let heard = read_wav_mono(&record);
    let chunk = &heard[8000..8000 + 2000];
    let (corr, _lag) = best_circular_correlation(chunk, &render.pcm);
    assert!(corr > 0.95, "the decrypted audio is not the render: {corr}");
}
