//! Graceful drain and a shutdown that always ends (issues 15 and 18), against a server in
//! process served as `mohd serve` serves it (`Running::serve_until_stopped`: a stop request is
//! what SIGTERM sends the binary).
//!
//! - SIGTERM during 50 calls: every call keeps its music to its own end, new INVITEs and
//!   OPTIONS get 503 with Retry-After meanwhile, `/healthz` says draining, and the server
//!   stops once the last call has ended.
//! - `POST /api/drain` drains the same way and `{"cancel": true}` undoes it.
//! - 500 calls whose peers are gone (sipp killed, RTP answered by ICMP port unreachable): the
//!   shutdown still ends within a bound.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::http::{self, Auth};
use common::*;
use mohd::config::Config;
use mohd::server::Environment;

/// A server on 127.0.0.1 with its web listener and an API token; `extra_calls` goes into its
/// `[calls]` table.
fn start(dir: &std::path::Path, extra_calls: &str) -> (Server, String) {
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let token = mohd::web::auth::AuthStore::open(&state)
        .unwrap()
        .new_token("drain")
        .unwrap();
    let file = dir.join("mohd.toml");
    std::fs::write(
        &file,
        format!(
            "[sip]\nlisten = \"udp:127.0.0.1:0\"\n[web]\nlisten = \"127.0.0.1:0\"\n\
             [state]\ndir = \"{}\"\n[channels.default]\nmusic = \"demo\"\n[calls]\n{extra_calls}\n",
            state.display()
        ),
    )
    .unwrap();
    let config = Config::load(&file).unwrap_or_else(|e| panic!("{e}"));
    let server = Server::in_configured_state(config, Environment::with_probe(mohd_bin()));
    server.wait_until_serving("default", mohd::codec::Codec::Pcmu);
    (server, token)
}

/// Sends `request` (a SIP request with `{l}` for our address and `{s}` for the server's)
/// from a fresh socket; returns the final response.
fn ask(server: SocketAddr, request: &str) -> String {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let l = sock.local_addr().unwrap().to_string();
    let msg = request
        .replace("{l}", &l)
        .replace("{s}", &server.to_string())
        .replace("{id}", &rand::random::<u32>().to_string());
    sock.send_to(msg.as_bytes(), server).unwrap();
    RawCall::wait_for(
        &sock,
        |m| m.starts_with("SIP/2.0 ") && !m.starts_with("SIP/2.0 1"),
        Duration::from_secs(5),
    )
    .expect("a final response")
}

const OPTIONS: &str = "OPTIONS sip:moh@{s} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bKo{id};rport\r\nMax-Forwards: 70\r\nFrom: <sip:probe@{l}>;tag=o{id}\r\nTo: <sip:moh@{s}>\r\nCall-ID: o{id}@t\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";

const SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

fn invite() -> String {
    format!(
        "INVITE sip:moh@{{s}} SIP/2.0\r\nVia: SIP/2.0/UDP {{l}};branch=z9hG4bKi{{id}};rport\r\nMax-Forwards: 70\r\nFrom: <sip:t@{{l}}>;tag=f{{id}}\r\nTo: <sip:moh@{{s}}>\r\nCall-ID: i{{id}}@t\r\nCSeq: 1 INVITE\r\nContact: <sip:t@{{l}}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP}",
        SDP.len()
    )
}

fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A new call and a probe are both refused with 503 and a Retry-After, and the Warning
/// says why.
fn assert_refusing(sip: SocketAddr, why: &str) {
    for request in [OPTIONS.to_owned(), invite()] {
        let answer = ask(sip, &request);
        assert!(answer.starts_with("SIP/2.0 503"), "{answer}");
        assert!(header(&answer, "Retry-After").is_some(), "{answer}");
        let warning = header(&answer, "Warning").unwrap_or_default();
        assert!(warning.contains(why), "{answer}");
    }
}

fn healthz(web: SocketAddr) -> (u16, serde_json::Value) {
    let r = http::get(web, "/healthz", &Auth::none());
    (r.status, r.json())
}

#[test]
fn sigterm_during_50_calls_lets_each_finish_with_music_refuses_new_ones_then_exits() {
    const CALLS: usize = 50;
    const SECONDS: f64 = 8.0;
    let dir = tempfile::tempdir().unwrap();
    let (mut server, _) = start(dir.path(), "drain_grace_s = 120");
    let (sip, web, uri) = (server.sip, server.web.unwrap(), server.uri("moh"));
    assert!(ask(sip, OPTIONS).starts_with("SIP/2.0 200"));
    let serving = server.serve_until_stopped();

    let calls: Vec<_> = (0..CALLS)
        .map(|_| {
            let uri = uri.clone();
            std::thread::spawn(move || {
                let report = mohd_call(&uri, &["--seconds", &SECONDS.to_string()]);
                (report, Instant::now())
            })
        })
        .collect();
    let all_up = wait_until(Duration::from_secs(60), || {
        serving.control.sip_status.lock().unwrap().active_calls == CALLS
    });
    assert!(all_up, "{CALLS} calls up");

    // SIGTERM.
    serving.request_stop();
    assert!(wait_until(Duration::from_secs(5), || {
        serving.control.availability.draining().is_some()
    }));
    assert_refusing(sip, "draining");
    let (status, health) = healthz(web);
    assert_eq!(status, 200, "draining is not a fault: {health}");
    let availability = &health["availability"];
    assert_eq!(availability["draining"], true, "{health}");
    assert_eq!(availability["accepting_calls"], false, "{health}");
    assert_eq!(availability["refusing"], "draining", "{health}");
    assert!(
        availability["drain_seconds_left"].as_f64().unwrap() > 60.0,
        "{health}"
    );
    // The SIP task publishes its counters once a second.
    let token = common::web::new_token(&dir.path().join("state"), "m");
    let mut metrics = String::new();
    let counted = wait_until(Duration::from_secs(5), || {
        metrics = http::get(web, "/metrics", &Auth::bearer(&token)).text();
        metrics.contains("mohd_calls_refused_total{reason=\"draining\"} 1")
    });
    assert!(counted, "{metrics}");
    assert!(metrics.contains("mohd_draining 1"), "{metrics}");
    assert!(serving.stopped.try_recv().is_err(), "stopped with calls up");

    // Every call ran to its own end (the caller's BYE), with its music throughout.
    let mut last_end = Instant::now();
    for c in calls {
        let (report, ended) = c.join().unwrap();
        assert_eq!(report["ended_by_remote"], false, "{report}");
        assert_eq!(report["bye_status"], 200, "{report}");
        let packets = report["stats"]["packets"].as_u64().unwrap();
        assert!(
            packets as f64 >= 0.95 * SECONDS * 50.0,
            "music to the end: {packets} packets in {SECONDS} s\n{report}"
        );
        assert_eq!(report["stats"]["lost"], 0, "{report}");
        last_end = last_end.max(ended);
    }
    // Then the server stopped, soon after the last call.
    let stopped = serving
        .stopped
        .recv_timeout(Duration::from_secs(20))
        .expect("stopped after the last call ended");
    assert!(
        stopped.saturating_duration_since(last_end) < Duration::from_secs(5),
        "stopped {:?} after the last call",
        stopped.saturating_duration_since(last_end)
    );
}

#[test]
fn a_drain_over_the_api_can_be_cancelled_and_ends_the_server_when_idle() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, token) = start(dir.path(), "drain_grace_s = 60");
    let (sip, web) = (server.sip, server.web.unwrap());
    let serving = server.serve_until_stopped();
    let drain = |body: serde_json::Value, auth: &Auth| {
        http::send_json(web, "POST", "/api/drain", auth, &body)
    };
    // Only with a token (or a session).
    assert_eq!(drain(serde_json::json!({}), &Auth::none()).status, 401);
    let auth = Auth::bearer(&token);

    // A call keeps the drain open; meanwhile the admin changes their mind.
    let call = RawCall::start(sip, "");
    let r = drain(serde_json::json!({}), &auth);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["draining"], true);
    assert_refusing(sip, "draining");
    assert!(http::get(web, "/healthz", &Auth::none()).json()["availability"]["draining"] == true);
    let r = drain(serde_json::json!({"cancel": true}), &auth);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["draining"], false);
    assert!(ask(sip, OPTIONS).starts_with("SIP/2.0 200"));
    assert!(call.rtp_flows(), "the call in progress was not touched");
    assert!(serving.stopped.try_recv().is_err());

    // Drain again with no grace: the call is hung up (BYE) and the server stops.
    let r = drain(serde_json::json!({"grace_s": 0}), &auth);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(call.wait_bye(Duration::from_secs(10)).is_some(), "BYE");
    serving
        .stopped
        .recv_timeout(Duration::from_secs(15))
        .expect("stopped once drained");
}

/// 500 calls whose peers vanished: sipp killed (its SIP port closed, so BYEs are answered by
/// ICMP port unreachable) and every call's RTP sent to a closed port (ICMP for every packet).
/// A stop request, after a short grace period, hangs them all up and the server has stopped
/// within a bound, without waiting for the BYEs' transactions (Timer F, 32 s).
#[test]
fn shutdown_with_500_calls_whose_peers_are_gone_ends_within_a_bound() {
    if !sipp_ready() {
        return;
    }
    const CALLS: usize = 500;
    let dir = tempfile::tempdir().unwrap();
    // The media watchdog would end the calls after 5 s of ICMP; keep them up so the
    // shutdown meets every one of them.
    let (mut server, _) = start(
        dir.path(),
        "drain_grace_s = 1\nunreachable_timeout_s = 3600\nmax_calls = 1000\nmedia_budget = 1.0",
    );
    let sip = server.sip;
    let serving = server.serve_until_stopped();
    let dead_rtp_port = {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let sipp_dir = tempfile::tempdir().unwrap();
    let mut sipp = Command::new("sipp")
        .arg(sip.to_string())
        .arg("-sf")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sipp/uac_call.xml"))
        .args(["-s", "moh", "-i", "127.0.0.1", "-p", "0", "-nostdin"])
        .args(["-key", "rtp_addr", "127.0.0.1"])
        .args(["-key", "rtp_port", &dead_rtp_port.to_string()])
        .args(["-set", "hold_ms", "600000"])
        .args([
            "-r",
            "200",
            "-l",
            &CALLS.to_string(),
            "-m",
            &CALLS.to_string(),
        ])
        .current_dir(sipp_dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sipp");
    // All of them, unless admission control refuses some on a loaded test machine (a
    // debug build): then as many as it took, once sipp has placed them all.
    let calls = || serving.control.sip_status.lock().unwrap().active_calls;
    let placed = wait_until(Duration::from_secs(90), || {
        calls() >= CALLS || {
            let refused = serving.control.sip_status.lock().unwrap().stats;
            calls() + refused.refused_capacity as usize >= CALLS
        }
    });
    let up = calls();
    std::thread::sleep(Duration::from_secs(2));
    eprintln!(
        "admission with {up} calls: {:?}",
        serving.control.availability.status(Instant::now())
    );
    // The peers vanish: sipp's SIP port closes; the RTP port was never open.
    let _ = sipp.kill();
    let _ = sipp.wait();
    assert!(
        placed && up >= CALLS * 4 / 5,
        "only {up} of {CALLS} calls came up"
    );
    std::thread::sleep(Duration::from_millis(500));

    let asked = Instant::now();
    serving.request_stop();
    let stopped = serving
        .stopped
        .recv_timeout(Duration::from_secs(60))
        .expect("the server stopped");
    let took = stopped.saturating_duration_since(asked);
    eprintln!("shutdown with {CALLS} dead-peer calls took {took:?} (grace 1 s)");
    assert!(
        took < Duration::from_secs(15),
        "shutdown took {took:?} with {CALLS} dead-peer calls"
    );
}
