//! Mid-call interop with a real peer: sipp as the PBX runs re-INVITE hold/unhold, UPDATE with a
//! session refresh, a 491 glare and a CANCEL that crosses the 200 OK against `mohd serve`, on
//! 127.0.0.1 only. Each scenario checks mohd's answers itself (`ereg check_it`), so sipp's exit
//! status is the verdict. Without sipp these tests are skipped, except under CI.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Runs `calls` calls of a scenario, a few at once; returns sipp's exit status and its errors.
fn run(scenario: &str, calls: u32) -> (Option<i32>, String) {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let errors = dir.path().join("errors.log");
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sipp")
        .join(scenario);
    let mut child = Command::new("sipp")
        .arg(server.sip.to_string())
        .arg("-sf")
        .arg(&file)
        .args(["-s", "moh", "-i", "127.0.0.1", "-nostdin"])
        .args(["-m", &calls.to_string(), "-l", "5", "-r", "10"])
        .args(["-timeout", "30s", "-timeout_error", "-recv_timeout", "10s"])
        .arg("-trace_err")
        .arg("-error_file")
        .arg(&errors)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sipp");
    let deadline = Instant::now() + Duration::from_secs(45);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sipp did not finish {scenario}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (
        status.code(),
        std::fs::read_to_string(&errors).unwrap_or_default(),
    )
}

fn check(scenario: &str) {
    if !sipp_ready() {
        return;
    }
    let (code, errors) = run(scenario, 5);
    assert_eq!(code, Some(0), "{scenario} failed:\n{errors}");
}

#[test]
fn reinvite_hold_and_unhold() {
    check("uac_reinvite.xml");
}

#[test]
fn update_with_session_refresh_and_new_offer() {
    check("uac_update.xml");
}

#[test]
fn reinvite_glare_gets_491() {
    check("uac_glare.xml");
}

#[test]
fn cancel_crossing_the_200_is_a_no_op() {
    check("uac_cancel_race.xml");
}
