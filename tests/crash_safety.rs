//! Power cuts and kill -9: an upload killed while it is being written leaves nothing behind,
//! and a server killed while serving calls comes back with its library intact and playing.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::web::WebServer;
use common::{mohd_call, write_test_music};

fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn an_upload_killed_midway_leaves_no_partial_file() {
    let mut s = WebServer::start_binary("");
    let dir = tempfile::tempdir().unwrap();
    let keep = dir.path().join("keep.wav");
    write_test_music(&keep, 2.0, 22_050);
    assert_eq!(
        s.upload("keep.wav", &std::fs::read(&keep).unwrap()).status,
        201
    );
    let before_tracks = s.tracks();
    let before_files = entries(&s.music_dir());

    // Start an upload, send half of it, and kill the server while it is writing.
    let big = dir.path().join("big.wav");
    write_test_music(&big, 20.0, 44_100);
    let body = std::fs::read(&big).unwrap();
    let mut conn = TcpStream::connect(s.web).unwrap();
    write!(
        conn,
        "POST /api/tracks?name=big.wav HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        s.token,
        body.len()
    )
    .unwrap();
    conn.write_all(&body[..body.len() / 2]).unwrap();
    conn.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while entries(&s.state().join("tmp")).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the upload never reached the disk"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    s.kill_and_restart();
    drop(conn);

    assert!(
        entries(&s.state().join("tmp")).is_empty(),
        "temp files survive a restart"
    );
    assert_eq!(
        entries(&s.music_dir()),
        before_files,
        "a partial file reached the library"
    );
    assert_eq!(s.tracks(), before_tracks);
    // And the library still plays.
    s.wait_for_channel_tracks(1);
    let report = mohd_call(&format!("sip:moh@{}", s.sip), &["--seconds", "1"]);
    assert!(
        report["stats"]["packets"].as_u64().unwrap() > 30,
        "{report}"
    );
}

#[test]
fn killed_while_serving_calls_restarts_with_the_library_intact_and_plays() {
    let mut s = WebServer::start_binary("");
    let dir = tempfile::tempdir().unwrap();
    for (i, secs) in [1.0, 2.0].iter().enumerate() {
        let p = dir.path().join(format!("t{i}.wav"));
        write_test_music(&p, *secs, 22_050);
        assert_eq!(
            s.upload(&format!("t{i}.wav"), &std::fs::read(&p).unwrap())
                .status,
            201
        );
    }
    s.wait_for_channel_tracks(2);
    let tracks = s.tracks();
    let files = entries(&s.music_dir());

    // Calls in progress when the power goes.
    let uri = format!("sip:moh@{}", s.sip);
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let uri = uri.clone();
            std::thread::spawn(move || {
                std::process::Command::new(common::mohd_bin())
                    .args(["call", &uri, "--seconds", "4", "--json"])
                    .output()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    s.kill_and_restart();
    // Those callers' BYEs now go to a dead port and time out (32 s); nothing to wait for.
    drop(calls);

    assert_eq!(s.tracks(), tracks, "the playlist survives kill -9");
    assert_eq!(entries(&s.music_dir()), files);
    assert!(entries(&s.state().join("tmp")).is_empty());
    // Straight after the restart the loop is the two tracks again (from the render cache).
    s.wait_for_channel_tracks(2);
    let report = mohd_call(&format!("sip:moh@{}", s.sip), &["--seconds", "1"]);
    assert!(
        report["stats"]["packets"].as_u64().unwrap() > 30,
        "{report}"
    );
}
