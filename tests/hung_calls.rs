//! No hung calls, over real loopback sockets: a peer that vanishes without a BYE is hung up
//! (RTP inactivity, ICMP port unreachable, maximum call length, session timer), and RTP stops.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn server_with(calls: &str) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mohd.toml");
    std::fs::write(
        &config,
        format!("[calls]\n{calls}\n[channels.default]\nmusic = \"demo\"\n[dialplan]\ndefault = \"default\"\n"),
    )
    .unwrap();
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    (dir, server)
}

#[test]
fn silent_peers_are_hung_up_when_inactivity_detection_is_on() {
    let (_dir, server) = server_with("rtp_timeout_s = 2");
    let calls: Vec<RawCall> = (0..5).map(|_| RawCall::start(server.sip, "")).collect();
    assert!(calls[0].rtp_flows(), "music flows at first");
    for c in &calls {
        let took = c
            .wait_bye(Duration::from_secs(8))
            .expect("BYE for a silent peer");
        assert!(took <= Duration::from_secs(8));
    }
    for c in &calls {
        assert!(!c.rtp_flows(), "RTP stops after the BYE");
    }
}

#[test]
fn peers_that_answer_with_icmp_unreachable_are_hung_up() {
    let (_dir, server) = server_with("unreachable_timeout_s = 2");
    let mut call = RawCall::start(server.sip, "");
    assert!(call.rtp_flows());
    // The phone vanishes: its RTP port closes, so mohd's RTP bounces (ICMP port unreachable).
    call.rtp = None;
    let took = call
        .wait_bye(Duration::from_secs(10))
        .expect("BYE after ICMP unreachable");
    assert!(
        took >= Duration::from_secs(1),
        "not before the configured time: {took:?}"
    );
}

#[test]
fn calls_end_at_the_maximum_length_and_a_listening_peer_is_not_hung_up_early() {
    let (_dir, server) = server_with("max_duration_s = 3");
    let t0 = Instant::now();
    let calls: Vec<RawCall> = (0..10).map(|_| RawCall::start(server.sip, "")).collect();
    for c in &calls {
        c.wait_bye(Duration::from_secs(8))
            .expect("BYE at max length");
    }
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(2_500), "too early: {took:?}");
    for c in &calls {
        assert!(!c.rtp_flows());
    }
    // The box still takes calls afterwards.
    let report = mohd_call(&server.uri("moh"), &["--seconds", "1"]);
    assert!(report["stats"]["packets"].as_u64().unwrap() >= 40);
}

#[test]
fn session_timer_expiry_ends_the_call_over_loopback() {
    let (_dir, server) = server_with("min_session_expires_s = 3");
    let call = RawCall::start(
        server.sip,
        "Supported: timer\r\nSession-Expires: 3;refresher=uac\r\n",
    );
    // Not refreshed: BYE at 3 s - min(32 s, 1 s) = 2 s.
    let took = call
        .wait_bye(Duration::from_secs(8))
        .expect("BYE on session expiry");
    assert!(took >= Duration::from_millis(1_000), "{took:?}");
    assert!(!call.rtp_flows());
}
