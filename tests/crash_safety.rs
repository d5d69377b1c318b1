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

/// Run by [`channels_json_survives_kill_9_at_any_point_of_a_change`] in a child process (this
/// test binary again, with `MOHD_STORE_CHILD` set to a state folder): changes the managed
/// channels as fast as it can until killed. Does nothing when run as an ordinary test.
#[test]
fn channel_store_writer_child() {
    use mohd::channel::spec::{ChannelSpec, Music, Origin};
    use mohd::channel::store::{ChannelStore, ManagedRoute};
    let Some(dir) = std::env::var_os("MOHD_STORE_CHILD") else {
        return;
    };
    let mut store = ChannelStore::open(std::path::Path::new(&dir), ["default"]).unwrap();
    let mut n = store
        .channels()
        .filter_map(|c| c.name.strip_prefix('c')?.parse::<u64>().ok())
        .max()
        .map_or(0, |m| m + 1);
    println!("ready");
    let deadline = Instant::now() + Duration::from_secs(20);
    // Each step is one change, and every state between two steps keeps the invariants the
    // parent checks: at least one channel, routes only to existing channels.
    while Instant::now() < deadline {
        let name = format!("c{n}");
        let mut spec =
            ChannelSpec::simple(&name, Origin::Managed, Music::Tracks(Vec::new()), -18.0);
        spec.main.shuffle = n % 2 == 0;
        store.create(spec, None).unwrap();
        println!("step");
        store
            .set_routes(vec![ManagedRoute::user(&n.to_string(), &name)])
            .unwrap();
        println!("step");
        let older: Vec<String> = store
            .channels()
            .map(|c| c.name.clone())
            .filter(|c| *c != name)
            .collect();
        for old in older {
            store.delete(&old, true).unwrap();
            println!("step");
        }
        n += 1;
    }
}

/// kill -9 at random points while the managed channels are being changed: every restart
/// finds channels.json whole (old or new, never set aside as corrupt), consistent, and no
/// temp file left behind. (A power cut differs from kill -9 only in what the page cache
/// loses; `fsutil::write_atomic` fsyncs the file and the folder around the rename for that,
/// the same routine library.json uses.)
#[test]
fn channels_json_survives_kill_9_at_any_point_of_a_change() {
    use mohd::channel::store::{CHANNELS_JSON, ChannelStore};
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut changes_seen = 0;
    // Rounds whose kill left a temp file (fell inside a write): reported, not asserted, as
    // it depends on the machine's speed.
    let mut killed_mid_write = 0;
    for round in 0..15u64 {
        let mut child = std::process::Command::new(&exe)
            .args([
                "--exact",
                "channel_store_writer_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("MOHD_STORE_CHILD", dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout).lines();
        assert!(
            lines.any(|l| l.is_ok_and(|l| l.ends_with("ready"))),
            "the child did not start"
        );
        // After a few changes, then a little later, so that the kills fall at different
        // points of a change (each write is a temp file, an fsync, a rename, a folder fsync).
        let steps = 1 + round as usize % 4;
        assert!(
            lines
                .by_ref()
                .filter(|l| l.as_ref().is_ok_and(|l| l == "step"))
                .nth(steps - 1)
                .is_some(),
            "the child stopped changing the store"
        );
        std::thread::sleep(Duration::from_micros((round * 997) % 5_000));
        child.kill().unwrap();
        child.wait().unwrap();

        if entries(dir.path()).len() > 1 {
            killed_mid_write += 1;
        }
        let store = ChannelStore::open(dir.path(), ["default"]).unwrap();
        let names: Vec<u64> = store
            .channels()
            .map(|c| c.name.strip_prefix('c').unwrap().parse().unwrap())
            .collect();
        assert!(
            !names.is_empty(),
            "round {round}: the first change was lost"
        );
        for r in store.routes() {
            assert!(store.exists(&r.channel), "round {round}: a route to {r:?}");
        }
        let left = entries(dir.path());
        assert_eq!(
            left,
            [CHANNELS_JSON],
            "round {round}: temp or corrupt files"
        );
        changes_seen = names.iter().copied().max().unwrap_or(0);
    }
    eprintln!("{killed_mid_write} of 15 kills fell inside a write");
    // Every child committed at least its first change (a new channel) before it was killed.
    assert!(changes_seen >= 14, "only up to c{changes_seen}");
}
