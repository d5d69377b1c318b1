//! `mohd load` against a server in this process: the calls come up, every stream is measured,
//! and the report is JSON an admin's script can read.

mod common;

use common::{Server, mohd_json};
use mohd::codec::Codec;

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
