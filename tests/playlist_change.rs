//! A playlist change while 20 callers are on hold: no call drops, the RTP stream of every call
//! has no gap (sequence numbers contiguous, nothing lost), and every caller hears the new
//! music after the change (the new render was swapped in at a frame boundary, mid-call).

mod common;

use std::time::Duration;

use common::http;
use common::web::WebServer;
use serde_json::json;

const CALLS: usize = 20;
const SECONDS: f64 = 9.0;

/// Energy of `hz` in `x` (8 kHz), by the Goertzel recurrence.
fn tone_power(x: &[i16], hz: f64) -> f64 {
    let k = 2.0 * (2.0 * std::f64::consts::PI * hz / 8000.0).cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &v in x {
        let s0 = v as f64 + k * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    s1 * s1 + s2 * s2 - k * s1 * s2
}

#[test]
fn playlist_change_during_20_calls_drops_nothing_and_switches_the_music() {
    let s = WebServer::start("");
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a440.wav"), dir.path().join("b880.wav"));
    common::write_tone(&a, 440.0, 6.0);
    common::write_tone(&b, 880.0, 6.0);
    let ra = s.upload("a440.wav", &std::fs::read(&a).unwrap());
    assert_eq!(ra.status, 201, "{}", ra.text());
    let rb = s.upload("b880.wav", &std::fs::read(&b).unwrap());
    assert_eq!(rb.status, 201, "{}", rb.text());
    let (id_a, id_b) = (
        ra.json()["id"].as_str().unwrap().to_owned(),
        rb.json()["id"].as_str().unwrap().to_owned(),
    );
    let auth = s.auth();
    let r = http::send_json(
        s.web,
        "PATCH",
        &format!("/api/tracks/{id_b}"),
        &auth,
        &json!({"enabled": false}),
    );
    assert_eq!(r.status, 200);
    s.wait_for_channel_tracks(1);

    let uri = format!("sip:moh@{}", s.sip);
    let calls: Vec<_> = (0..CALLS)
        .map(|i| {
            let uri = uri.clone();
            let rec = dir.path().join(format!("call{i}.wav"));
            std::thread::spawn(move || {
                let out = std::process::Command::new(common::mohd_bin())
                    .args([
                        "call",
                        &uri,
                        "--json",
                        "--seconds",
                        &SECONDS.to_string(),
                        "--record",
                    ])
                    .arg(&rec)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "call {i}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                (report, common::read_wav_mono(&rec))
            })
        })
        .collect();

    // Mid-call: the 880 Hz track replaces the 440 Hz one.
    std::thread::sleep(Duration::from_millis(3000));
    let active = http::get(s.web, "/api/status", &auth).json();
    assert_eq!(
        active["calls"].as_array().map(Vec::len),
        Some(CALLS),
        "{active}"
    );
    let r = http::send_json(
        s.web,
        "PATCH",
        &format!("/api/tracks/{id_b}"),
        &auth,
        &json!({"enabled": true}),
    );
    assert_eq!(r.status, 200);
    let r = http::send_json(
        s.web,
        "PATCH",
        &format!("/api/tracks/{id_a}"),
        &auth,
        &json!({"enabled": false}),
    );
    assert_eq!(r.status, 200);

    for (i, c) in calls.into_iter().enumerate() {
        let (report, audio) = c.join().unwrap();
        let st = &report["stats"];
        assert_eq!(
            report["ended_by_remote"], false,
            "call {i} was dropped: {report}"
        );
        assert_eq!(report["bye_status"], 200, "call {i}: {report}");
        assert_eq!(st["lost"], 0, "call {i} has a gap: {report}");
        let packets = st["packets"].as_u64().unwrap() as f64;
        assert!(
            packets >= SECONDS * 50.0 * 0.95,
            "call {i}: {packets} packets: {report}"
        );
        // Before the change the caller hears 440 Hz; at the end, 880 Hz.
        let head = &audio[8000 / 2..8000 * 2];
        let tail = &audio[audio.len() - 8000 * 2..audio.len() - 8000 / 2];
        assert!(
            tone_power(head, 440.0) > 10.0 * tone_power(head, 880.0),
            "call {i}: the start is not the first track"
        );
        assert!(
            tone_power(tail, 880.0) > 10.0 * tone_power(tail, 440.0),
            "call {i}: the end is not the new track"
        );
    }
}
