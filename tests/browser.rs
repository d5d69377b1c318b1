//! A real browser against the admin page: headless Debian chromium, driven by
//! tests/browser/admin.mjs (playwright-core), logs in, uploads two files, reorders them by button
//! and by drag, reloads, and watches a `mohd call` show up on the Status page; then creates a
//! channel, fills and orders its playlist, sets shuffle, an announcement and a schedule, routes
//! number 7001 to it, and watches a call to 7001 play on it. The script fails on any console
//! error, page error or CSP violation; this test starts the server (one server, one browser),
//! places the calls when the script asks, checks the second call heard music (not silence), and
//! keeps the screenshots under `target/browser-screenshots/`.
//!
//! Needs `node`, `/usr/bin/chromium` and `tests/browser/node_modules` (`scripts/setup-deps`
//! installs all three). Without them the test is skipped with a NOTICE, or fails under CI.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::web::{PASSWORD, WebServer};
use common::{mohd_call, write_test_music};

const CHROMIUM: &str = "/usr/bin/chromium";
/// Guards against a hung browser; the script's own steps time out well before it.
const KILL_AFTER: Duration = Duration::from_secs(240);
/// How long the call lasts: long enough for the page (polling each second) to see it.
const CALL_SECONDS: &str = "6";

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Whether node, chromium and the npm packages are here. Missing ones skip the test, unless
/// under CI, where that is a failure.
fn browser_ready() -> bool {
    let mut missing = Vec::new();
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !node {
        missing.push("node (Debian package nodejs)");
    }
    if !Path::new(CHROMIUM).exists() {
        missing.push("chromium (Debian package chromium)");
    }
    if !browser_dir()
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        missing.push("tests/browser/node_modules (npm ci in tests/browser)");
    }
    if missing.is_empty() {
        return true;
    }
    let what = missing.join(", ");
    if std::env::var_os("CI").is_some() {
        panic!("the browser test needs {what}: run scripts/setup-deps");
    }
    eprintln!("NOTICE: the browser test needs {what} (run scripts/setup-deps): skipping it");
    false
}

/// `target/browser-screenshots/`, emptied so that only this run's pictures are there.
fn screenshot_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp.parent().unwrap_or(tmp).join("browser-screenshots");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Ends a hung script. SIGTERM first: playwright then closes chromium, which it started in a
/// process group of its own; SIGKILL to node's group if that does not end it.
fn stop(child: &mut std::process::Child) {
    use nix::sys::signal::{Signal, killpg};
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = killpg(group, Signal::SIGTERM);
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = killpg(group, Signal::SIGKILL);
}

enum Event {
    ReadyForCall,
    ReadyForChannelCall,
    Done,
}

/// RMS of a recording, in 16-bit sample units; music at -18 LUFS is in the thousands.
fn rms(samples: &[i16]) -> f64 {
    let sum: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    (sum / samples.len().max(1) as f64).sqrt()
}

#[test]
fn admin_page_in_a_real_browser() {
    if !browser_ready() {
        return;
    }
    let server = WebServer::start("");
    let uploads = server.dir.path().join("uploads");
    std::fs::create_dir_all(&uploads).unwrap();
    // Different lengths, so the contents (and the ids, a hash of them) differ.
    let first = uploads.join("first-tune.wav");
    let second = uploads.join("second-tune.wav");
    write_test_music(&first, 3.0, 44_100);
    write_test_music(&second, 4.5, 44_100);
    let shots = screenshot_dir();

    let mut child = Command::new("node")
        .arg(browser_dir().join("admin.mjs"))
        .arg("--url")
        .arg(format!("http://{}", server.web))
        .arg("--music")
        .arg(&first)
        .arg("--music")
        .arg(&second)
        .arg("--screenshots")
        .arg(&shots)
        .args(["--chromium", CHROMIUM, "--call-seconds", CALL_SECONDS])
        .env("MOHD_PASSWORD", PASSWORD)
        .current_dir(browser_dir())
        // Its own process group, so a hang is ended with chromium and all its helpers.
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start node");

    // Echoed as it comes; the lines after "BROWSER TEST FAILED" also go into the panic message.
    let stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut failure = Vec::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("{line}");
            if line.starts_with("BROWSER TEST FAILED") || !failure.is_empty() {
                failure.push(line);
            }
        }
        failure.join("\n")
    });

    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut ok = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            println!("{line}");
            match line.trim() {
                "READY_FOR_CALL" => {
                    let _ = tx.send(Event::ReadyForCall);
                }
                "READY_FOR_CHANNEL_CALL" => {
                    let _ = tx.send(Event::ReadyForChannelCall);
                }
                "BROWSER_TEST_OK" => ok = true,
                _ => {}
            }
        }
        let _ = tx.send(Event::Done);
        ok
    });

    let uri = format!("sip:moh@{}", server.sip);
    let channel_uri = format!("sip:7001@{}", server.sip);
    let recording = server.dir.path().join("channel-call.wav");
    let deadline = Instant::now() + KILL_AFTER;
    let mut call = None;
    let mut channel_call = None;
    let mut timed_out = false;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Event::ReadyForCall) => {
                let uri = uri.clone();
                call = Some(std::thread::spawn(move || {
                    mohd_call(&uri, &["--seconds", CALL_SECONDS])
                }));
            }
            Ok(Event::ReadyForChannelCall) => {
                let (uri, record) = (channel_uri.clone(), recording.clone());
                channel_call = Some(std::thread::spawn(move || {
                    let record = record.to_string_lossy().into_owned();
                    mohd_call(&uri, &["--seconds", CALL_SECONDS, "--record", &record])
                }));
            }
            Ok(Event::Done) => break,
            Err(_) => {
                timed_out = true;
                break;
            }
        }
    }
    if timed_out {
        stop(&mut child);
    }
    let status = child.wait().unwrap();
    let said_ok = reader.join().unwrap();
    let failure = errors.join().unwrap();

    let mut pictures: Vec<String> = std::fs::read_dir(&shots)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pictures.sort();
    println!(
        "screenshots in {}: {}",
        shots.display(),
        pictures.join(", ")
    );

    assert!(
        !timed_out,
        "the browser script did not finish within {} s (killed)",
        KILL_AFTER.as_secs()
    );
    assert!(
        status.success() && said_ok,
        "the browser script failed ({status}):\n{failure}\nscreenshots: {}",
        shots.display()
    );
    let report = call
        .expect("the script passed without asking for a call")
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert!(
        report["stats"]["packets"].as_u64().unwrap_or(0) > 0,
        "the call heard nothing: {report}"
    );

    let report = channel_call
        .expect("the script passed without asking for the call to the new channel")
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert!(
        report["stats"]["packets"].as_u64().unwrap_or(0) > 0,
        "the call to 7001 heard nothing: {report}"
    );
    let (_, heard) = common::read_wav_first_channel(&recording);
    let level = rms(&heard);
    assert!(
        heard.len() > 8000 && level > 300.0,
        "the call to the page's channel is silent: {} samples, RMS {level:.0}",
        heard.len()
    );

    // What the page did is what the server kept: dragged order, both enabled; the channel it
    // made, with its route.
    let tracks = server.tracks();
    let names: Vec<&str> = tracks.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["second-tune.wav", "first-tune.wav"]);
    assert!(tracks.iter().all(|t| t["enabled"] == true), "{tracks:?}");
    let auth = server.auth();
    let sales = common::http::get(server.web, "/api/channels/sales", &auth).json();
    let playlist: Vec<&str> = sales["playlist"]
        .as_array()
        .expect("playlist")
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(playlist, ["first-tune.wav", "second-tune.wav"], "{sales}");
    assert_eq!(sales["shuffle"], true, "{sales}");
    assert_eq!(sales["announcements"]["every_seconds"], 10, "{sales}");
    assert_eq!(sales["schedule"]["timezone"], "Europe/London", "{sales}");
    let routes = common::http::get(server.web, "/api/routes", &auth).json();
    assert_eq!(
        routes,
        serde_json::json!([{"user": "7001", "channel": "sales"}])
    );
    for want in [
        "01-login.png",
        "04-library-uploaded.png",
        "07-status-call.png",
        "10-status-channel-call.png",
    ] {
        assert!(
            pictures.iter().any(|p| p == want),
            "missing {want}: {pictures:?}"
        );
    }
}
