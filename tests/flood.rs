//! A flood of INVITEs from one source must not starve the calls in progress: their RTP keeps
//! flowing (no loss, no long gap), the flood is rate limited, and the box answers afterwards.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn calls_in_progress_keep_their_rtp_under_an_invite_flood() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mohd.toml");
    std::fs::write(
        &config,
        "[access]\nrate_per_source = 200\nburst = 400\n[channels.default]\nmusic = \"demo\"\n[dialplan]\ndefault = \"default\"\n",
    )
    .unwrap();
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let uri = server.uri("moh");
    let caller = std::thread::spawn(move || mohd_call(&uri, &["--seconds", "4"]));

    // Flood from another socket on 127.0.0.1 (the caller shares the source IP, so the caller's
    // own SIP is set up before the flood starts).
    std::thread::sleep(Duration::from_millis(500));
    let flood = UdpSocket::bind("127.0.0.1:0").unwrap();
    let l = flood.local_addr().unwrap();
    let sip = server.sip;
    let end = Instant::now() + Duration::from_secs(2);
    let mut sent = 0u32;
    while Instant::now() < end && sent < 40_000 {
        let msg = format!(
            "INVITE sip:moh@{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bKfl{sent}\r\nMax-Forwards: 70\r\nFrom: <sip:f@{l}>;tag=f{sent}\r\nTo: <sip:moh@{sip}>\r\nCall-ID: flood{sent}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        );
        let _ = flood.send_to(msg.as_bytes(), sip);
        sent += 1;
    }
    let report = caller.join().unwrap();
    let stats = &report["stats"];
    assert_eq!(stats["lost"], 0, "{report}");
    assert!(stats["packets"].as_u64().unwrap() >= 190, "{report}");
    assert!(
        stats["max_gap_ms"].as_f64().unwrap() < 200.0,
        "RTP stalled under the flood: {report}"
    );
    // Once the flood stops, the box answers as before.
    std::thread::sleep(Duration::from_secs(3));
    let after = mohd_call(&server.uri("moh"), &["--seconds", "1"]);
    assert!(after["stats"]["packets"].as_u64().unwrap() >= 40, "{after}");
}
