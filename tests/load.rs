//! `mohd load` against a server in this process: the calls come up, every stream is measured,
//! and the report is JSON an admin's script can read; refusals say whether they gave a
//! Retry-After (benches/overload.sh), and `--vanish-after` plays a caller that went silent
//! (benches/stop.sh).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Server, mohd_bin, mohd_json, wait_for_exit, wait_until};
use mohd::codec::Codec;
use mohd::config::Config;

/// `mohd load` against a fresh server with the demo channel.
fn load_a_server(extra: &[&str]) -> serde_json::Value {
    let server = Server::start(&[]);
    server.wait_until_serving("default", Codec::Pcmu);
    mohd_json("load", &server.uri("moh"), extra)
}

#[test]
fn twenty_held_calls_are_all_measured_without_loss() {
    let report = load_a_server(&[
        "--calls",
        "20",
        "--rate",
        "50",
        "--duration",
        "3",
        "--settle",
        "1",
    ]);
    let calls = &report["calls"];
    assert_eq!(calls["placed"], 20, "{report:#}");
    assert_eq!(calls["answered"], 20, "{report:#}");
    assert_eq!(calls["failed"], 0, "{report:#}");
    assert_eq!(calls["bye_failures"], 0, "{report:#}");
    let setup = &calls["setup_ms"];
    assert!(
        setup["p50"].as_f64().is_some_and(|ms| ms > 0.0),
        "{report:#}"
    );
    assert!(setup["max"].as_f64() >= setup["p99"].as_f64(), "{report:#}");

    let media = &report["media"];
    assert_eq!(media["streams"], 20, "{report:#}");
    assert_eq!(media["lost"], 0, "{report:#}");
    assert_eq!(media["duplicates"], 0, "{report:#}");
    assert_eq!(media["frames_not_sent"], 0, "{report:#}");
    // 20 calls × 50 packets/s over the window (give or take the packets at its edges).
    let window = report["window_s"].as_f64().expect("window");
    assert!((3.0..3.5).contains(&window), "{report:#}");
    let packets = media["packets"].as_u64().expect("packets");
    assert!(
        (packets as f64 - 1000.0 * window).abs() <= 100.0,
        "{report:#}"
    );
    assert_eq!(media["payload_bytes"].as_u64(), Some(packets * 160));
    assert_eq!(report["receiver"]["kernel_drops"], 0, "{report:#}");
}

#[test]
fn churn_measures_every_short_call() {
    let report = load_a_server(&["--calls", "10", "--rate", "10", "--hold", "1"]);
    assert_eq!(report["mode"], "churn");
    assert_eq!(report["calls"]["answered"], 10, "{report:#}");
    assert_eq!(report["media"]["streams"], 10, "{report:#}");
    assert_eq!(report["media"]["lost"], 0, "{report:#}");
}

#[test]
fn unanswered_calls_are_counted_as_timeouts() {
    // Nobody answers on this port: every INVITE times out (after --timeout).
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let uri = format!("sip:moh@{}", silent.local_addr().unwrap());
    let report = mohd_json("load", &uri, &["--calls", "3", "--timeout", "1"]);
    assert_eq!(report["calls"]["failed"], 3, "{report:#}");
    assert_eq!(report["calls"]["failures"]["timeout"], 3, "{report:#}");
    assert_eq!(report["calls"]["setup_ms"], serde_json::Value::Null);
    assert_eq!(report["media"]["streams"], 0);
}

#[test]
fn calls_refused_for_the_call_limit_are_counted_with_their_retry_after() {
    let mut config = Config::embedded_default();
    config.apply_overrides(Some("127.0.0.1:0".parse().unwrap()), None);
    config.web.listen = None;
    config.calls.max_calls = 2;
    let server = Server::with_config(config);
    server.wait_until_serving("default", Codec::Pcmu);
    let args: Vec<&str> = "--calls 4 --rate 20 --duration 1 --settle 0"
        .split(' ')
        .collect();
    let report = mohd_json("load", &server.uri("moh"), &args);
    let calls = &report["calls"];
    assert_eq!(calls["answered"], 2, "{report:#}");
    assert_eq!(calls["failed"], 2, "{report:#}");
    let refused: u64 = calls["failures"]
        .as_object()
        .expect("failures")
        .iter()
        .filter(|(why, _)| why.starts_with("503"))
        .map(|(_, n)| n.as_u64().unwrap_or(0))
        .sum();
    assert_eq!(refused, 2, "{report:#}");
    assert_eq!(calls["refused_with_retry_after"], 2, "{report:#}");
}

#[test]
fn a_vanished_caller_keeps_its_calls_and_answers_nothing_until_killed() {
    let server = Server::start(&[]);
    server.wait_until_serving("default", Codec::Pcmu);
    let mut load = Command::new(mohd_bin())
        .args([
            "load",
            &server.uri("moh"),
            "--json",
            "--calls",
            "3",
            "--rate",
            "50",
        ])
        .args([
            "--settle",
            "0",
            "--duration",
            "600",
            "--vanish-after",
            "0.5",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mohd load");
    let stderr = load.stderr.take().expect("stderr");
    let said = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .any(|line| line.contains("vanished"))
    });
    let active = || {
        server
            .control()
            .media_stats
            .active_calls
            .load(Ordering::Relaxed)
    };
    assert!(
        wait_until(Duration::from_secs(20), || said.is_finished()),
        "mohd load never said it vanished"
    );
    assert!(
        said.join().unwrap_or(false),
        "mohd load exited without vanishing"
    );
    // Gone silent, not gone: still running, its calls still up (no BYE), no report.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(load.try_wait().ok().flatten(), None, "mohd load exited");
    assert_eq!(active(), 3);
    load.kill().expect("kill mohd load");
    let _ = wait_for_exit(&mut load, Duration::from_secs(5));
    let mut report = String::new();
    let _ = std::io::Read::read_to_string(&mut load.stdout.take().expect("stdout"), &mut report);
    assert_eq!(report, "", "a vanished caller prints no report");
}
