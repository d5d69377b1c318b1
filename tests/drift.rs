//! "Months, not days": the RTP timestamps of a call stay on the monotonic clock. One 60 s call
//! to a real mohd on loopback, measured from the receiving side by `mohd call`: the change over
//! the call of the min-filtered offset between arrival time and timestamp time must stay
//! under 1 ms. (The server's own accounting, with a virtual clock, a stall and a catch-up, is
//! unit-tested in `rtp::fanout`.)

mod common;

use common::{Server, mohd_call};

#[test]
fn a_minute_long_call_keeps_its_timestamps_on_the_clock() {
    let server = Server::start(&[]);
    let report = mohd_call(&server.uri("moh"), &["--seconds", "60"]);
    let stats = &report["stats"];
    let packets = stats["packets"].as_u64().expect("packets");
    // The call carried a minute of media (50 packets/s), so the figure means something.
    assert!(packets > 2900, "{report}");
    let ts_s = report["ts_elapsed_s"].as_f64().expect("ts_elapsed_s");
    let arrival_s = report["arrival_elapsed_s"]
        .as_f64()
        .expect("arrival_elapsed_s");
    assert!(ts_s > 58.0 && arrival_s > 58.0, "{report}");
    let drift_ms = report["drift_ms"].as_f64().expect("drift_ms");
    eprintln!("receiver-side drift {drift_ms:+.3} ms over {arrival_s:.1} s ({packets} packets)");
    assert!(
        drift_ms.abs() < 1.0,
        "timestamps drifted {drift_ms} ms from the clock over {arrival_s} s: {report}"
    );
}
