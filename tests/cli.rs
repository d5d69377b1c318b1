//! The command line as an admin meets it: `mohd check` verdicts, config errors (exit 2), and a
//! channel with nothing playable (silence on the wire, OPTIONS 503).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn write(path: &std::path::Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn check_accepts_good_music_and_rejects_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    write_test_music(&dir.path().join("good.wav"), 2.0, 22_050);
    let config = dir.path().join("mohd.toml");
    write(
        &config,
        "[channels.default]\nmusic = \"good.wav\"\n[dialplan]\ndefault = \"default\"\n",
    );
    let out = Command::new(mohd_bin())
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("good.wav"), "{stdout}");

    write(&dir.path().join("bad.mp3"), "this is not audio at all");
    write(
        &config,
        "[channels.default]\nmusic = [\"good.wav\", \"bad.mp3\"]\n[dialplan]\ndefault = \"default\"\n",
    );
    let out = Command::new(mohd_bin())
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "a bad file must fail the check: {stdout}"
    );
    assert!(
        stdout.contains("bad.mp3"),
        "the bad file is named: {stdout}"
    );
}

#[test]
fn config_errors_name_file_line_and_key_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mohd.toml");
    write(
        &config,
        "[sip]\nlisten = [\"udp:127.0.0.1:0\"]\n[rtp]\nportz = \"10000-20000\"\n",
    );
    for cmd in ["serve", "check"] {
        let out = Command::new(mohd_bin())
            .args([cmd, "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("mohd.toml:4"), "{stderr}");
        assert!(stderr.contains("portz"), "{stderr}");
    }
}

#[test]
fn nothing_playable_means_silence_on_the_wire_and_options_503() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.flac");
    write(&bad, "fLaC but not really");
    let server = Server::start(&["--music", bad.to_str().unwrap()]);
    // A cold start answers at once on placeholders and learns that nothing is playable when
    // the channel's render fails, a moment later: from then on OPTIONS says 503.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut answer = options(server.sip);
    while !answer.starts_with("SIP/2.0 503") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        answer = options(server.sip);
    }
    assert!(answer.starts_with("SIP/2.0 503"), "{answer}");

    // A call still gets a full RTP stream (PBXs hang up on silence-by-absence), of silence.
    let record = dir.path().join("heard.wav");
    let report = mohd_call(
        &server.uri("moh"),
        &["--seconds", "2", "--record", record.to_str().unwrap()],
    );
    assert!(
        report["stats"]["packets"].as_u64().unwrap() >= 90,
        "{report}"
    );
    assert_eq!(report["stats"]["lost"], 0);
    let heard = read_wav_mono(&record);
    assert!(heard.iter().all(|&s| s.abs() < 16), "expected silence");
}

#[test]
fn healthy_box_answers_options_200() {
    let server = Server::start(&[]);
    let answer = options(server.sip);
    assert!(answer.starts_with("SIP/2.0 200"), "{answer}");
    assert!(answer.contains("Allow: INVITE"), "{answer}");
}

#[test]
fn a_folder_of_music_plays_every_file_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let music = dir.path().join("music");
    std::fs::create_dir(&music).unwrap();
    write_test_music(&music.join("a.wav"), 1.5, 22_050);
    write_test_music(&music.join("b.wav"), 1.5, 44_100);
    let out = Command::new(mohd_bin())
        .args(["check", "--music"])
        .arg(&music)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("a.wav") && stdout.contains("b.wav"),
        "{stdout}"
    );
}

/// `mohd serve` as a script runs it: the flags (`--sip`, `--web`, `--state`, `--music`), the
/// "listening" lines on stdout, and a clean exit on SIGTERM. The other SIP tests run the
/// server in process; this one is the binary's own path.
#[test]
fn serve_prints_its_listeners_serves_and_exits_cleanly_on_sigterm() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let dir = tempfile::tempdir().unwrap();
    let music = dir.path().join("tune.wav");
    write_test_music(&music, 2.0, 8_000);
    let state = dir.path().join("state");
    let mut child = Command::new(mohd_bin())
        .args([
            "serve",
            "--sip",
            "127.0.0.1:0",
            "--web",
            "127.0.0.1:0",
            "--state",
        ])
        .arg(&state)
        .arg("--music")
        .arg(&music)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut line = || lines.next().expect("a line").expect("stdout");
    let sip = line();
    let sip: std::net::SocketAddr = sip
        .strip_prefix("mohd: SIP listening on udp:")
        .unwrap_or_else(|| panic!("{sip}"))
        .parse()
        .unwrap();
    let web = line();
    let web: std::net::SocketAddr = web
        .strip_prefix("mohd: web listening on http://")
        .unwrap_or_else(|| panic!("{web}"))
        .parse()
        .unwrap();

    // Starting, it says so (503); once its music plays, 200.
    let serving = || options(sip).starts_with("SIP/2.0 200");
    assert!(
        wait_until(Duration::from_secs(10), serving),
        "{}",
        options(sip)
    );
    let healthz = common::http::get(web, "/healthz", &common::http::Auth::none());
    assert_eq!(healthz.status, 200, "{}", healthz.text());
    assert!(state.join("cache").is_dir(), "the state folder is --state");

    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let exited = wait_until(Duration::from_secs(20), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !exited {
        let _ = child.kill();
        panic!("mohd did not exit within 20 s of SIGTERM");
    }
    assert!(child.wait().unwrap().success());
}
