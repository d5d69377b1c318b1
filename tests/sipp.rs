//! Interop with a real SIP peer: sipp (Debian `sip-tester`) as the caller against `mohd serve`,
//! on 127.0.0.1 only. The scenarios live in tests/sipp/*.xml; each test starts its own mohd.
//!
//! sipp only checks signalling (its media port just echoes), so where the music matters the
//! scenario's SDP names a UDP socket of the test (`-key rtp_port`) and the test counts the RTP
//! that arrives there.
//!
//! Without sipp these tests print a notice and pass, except under CI (`CI` set), where a missing
//! sipp is a failure: `scripts/setup-deps` installs it.

mod common;

use common::*;
use std::collections::HashMap;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sipp")
        .join(name)
}

/// What one sipp run left behind.
struct SippRun {
    code: Option<i32>,
    successful: u64,
    failed: u64,
    /// sipp's screen and its error log, for assertion messages.
    log: String,
}

impl SippRun {
    fn assert_all_succeeded(&self, calls: u64) {
        assert_eq!(self.code, Some(0), "sipp exit status\n{}", self.log);
        assert_eq!(self.successful, calls, "successful calls\n{}", self.log);
        assert_eq!(self.failed, 0, "failed calls\n{}", self.log);
    }
}

/// Runs sipp as a UAC against `server` with a scenario file, bounded by sipp's own global timeout
/// and, should sipp hang anyway, killed a little after it.
fn run_sipp(server: &Server, scenario_file: &str, extra: &[&str], timeout_s: u64) -> SippRun {
    let dir = tempfile::tempdir().unwrap();
    let stat = dir.path().join("stat.csv");
    let errors = dir.path().join("errors.log");
    let screen = dir.path().join("screen.log");
    let mut cmd = Command::new("sipp");
    cmd.arg(server.sip.to_string())
        .arg("-sf")
        .arg(scenario(scenario_file))
        .args(["-s", "moh", "-i", "127.0.0.1", "-nostdin"])
        .args(["-timeout", &format!("{timeout_s}s"), "-timeout_error"])
        .args(["-recv_timeout", "10s"])
        .arg("-trace_err")
        .arg("-error_file")
        .arg(&errors)
        .arg("-trace_stat")
        .arg("-stf")
        .arg(&stat)
        .args(["-fd", "1"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&screen).unwrap())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("start sipp");
    let deadline = Instant::now() + Duration::from_secs(timeout_s + 15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sipp did not stop by itself within {} s", timeout_s + 15);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let screen_text = std::fs::read_to_string(&screen).unwrap_or_default();
    let error_text = std::fs::read_to_string(&errors).unwrap_or_default();
    let (successful, failed) = final_counts(&std::fs::read_to_string(&stat).unwrap_or_default());
    SippRun {
        code: status.code(),
        successful,
        failed,
        log: format!(
            "--- sipp screen (tail) ---\n{}\n--- sipp errors ---\n{error_text}",
            tail(&screen_text, 40)
        ),
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// SuccessfulCall(C) and FailedCall(C) from the last row of sipp's `-trace_stat` file.
fn final_counts(csv: &str) -> (u64, u64) {
    let mut rows = csv.lines().filter(|l| !l.trim().is_empty());
    let Some(header) = rows.next() else {
        return (0, 0);
    };
    let Some(last) = rows.next_back() else {
        return (0, 0);
    };
    let names: Vec<&str> = header.split(';').collect();
    let values: Vec<&str> = last.split(';').collect();
    let get = |name: &str| {
        names
            .iter()
            .position(|n| *n == name)
            .and_then(|i| values.get(i))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (get("SuccessfulCall(C)"), get("FailedCall(C)"))
}

/// What arrived at the test's RTP socket, per SSRC.
#[derive(Debug, Clone)]
struct Stream {
    packets: u64,
    payload_types: Vec<u8>,
    first: Instant,
    last: Instant,
}

/// A UDP socket on 127.0.0.1 that the scenarios name as the caller's RTP address; it records
/// every RTP packet by SSRC until dropped.
struct RtpSink {
    port: u16,
    stop: Arc<AtomicBool>,
    streams: Arc<std::sync::Mutex<HashMap<u32, Stream>>>,
    not_rtp: Arc<std::sync::atomic::AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl RtpSink {
    fn start() -> RtpSink {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let port = socket.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(std::sync::Mutex::new(HashMap::new()));
        let not_rtp = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (stop2, streams2, not_rtp2) = (stop.clone(), streams.clone(), not_rtp.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop2.load(Ordering::Relaxed) {
                let Ok(n) = socket.recv(&mut buf) else {
                    continue;
                };
                let now = Instant::now();
                // RTP version 2, and a G.711 payload of 20 ms (160 bytes) after a 12-byte header.
                if n < 12 || buf[0] >> 6 != 2 {
                    not_rtp2.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let pt = buf[1] & 0x7f;
                let ssrc = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
                let mut map = streams2.lock().unwrap();
                let s = map.entry(ssrc).or_insert(Stream {
                    packets: 0,
                    payload_types: Vec::new(),
                    first: now,
                    last: now,
                });
                s.packets += 1;
                s.last = now;
                if !s.payload_types.contains(&pt) {
                    s.payload_types.push(pt);
                }
            }
        });
        RtpSink {
            port,
            stop,
            streams,
            not_rtp,
            thread: Some(thread),
        }
    }

    fn streams(&self) -> HashMap<u32, Stream> {
        self.streams.lock().unwrap().clone()
    }

    fn total_packets(&self) -> u64 {
        self.streams().values().map(|s| s.packets).sum()
    }
}

impl Drop for RtpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// After the BYE was answered, the music stops (a late packet or two in flight is fine).
fn assert_stream_stopped(sink: &RtpSink) {
    std::thread::sleep(Duration::from_millis(300));
    let before = sink.total_packets();
    std::thread::sleep(Duration::from_secs(1));
    let after = sink.total_packets();
    assert_eq!(
        before,
        after,
        "RTP still arriving after the BYE: {} packets in 1 s",
        after - before
    );
}

#[test]
fn invite_ack_bye_gets_a_sendonly_answer_and_music() {
    if !sipp_ready() {
        return;
    }
    let server = Server::start(&[]);
    let sink = RtpSink::start();
    let port = sink.port.to_string();
    let run = run_sipp(
        &server,
        "uac_call.xml",
        &[
            "-m",
            "1",
            "-key",
            "rtp_addr",
            "127.0.0.1",
            "-key",
            "rtp_port",
            &port,
            "-set",
            "hold_ms",
            "2000",
        ],
        30,
    );
    run.assert_all_succeeded(1);

    let streams = sink.streams();
    assert_eq!(streams.len(), 1, "one call, one RTP stream: {streams:?}");
    let s = streams.values().next().unwrap();
    assert_eq!(s.payload_types, vec![0], "PCMU was offered first");
    // 2 s at 50 packets/s is 100; half of that proves a stream, not a stray packet.
    assert!(
        s.packets >= 50,
        "only {} RTP packets in a 2 s call",
        s.packets
    );
    assert_eq!(sink.not_rtp.load(Ordering::Relaxed), 0, "non-RTP datagrams");
    assert_stream_stopped(&sink);
}

#[test]
fn cancel_while_ringing_gets_200_and_487() {
    if !sipp_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mohd.toml");
    std::fs::write(
        &config,
        "[sip]\nlisten = [\"udp:127.0.0.1:0\"]\nanswer_delay_ms = 3000\n\
         [channels.default]\nmusic = \"demo\"\n[dialplan]\ndefault = \"default\"\n",
    )
    .unwrap();
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let run = run_sipp(&server, "uac_cancel.xml", &["-m", "1"], 30);
    run.assert_all_succeeded(1);
}

#[test]
fn options_gets_200_with_allow() {
    if !sipp_ready() {
        return;
    }
    let server = Server::start(&[]);
    let run = run_sipp(&server, "uac_options.xml", &["-m", "3"], 20);
    run.assert_all_succeeded(3);
}

#[test]
fn late_offer_call_plays_to_the_address_in_the_ack() {
    if !sipp_ready() {
        return;
    }
    let server = Server::start(&[]);
    let sink = RtpSink::start();
    let port = sink.port.to_string();
    let run = run_sipp(
        &server,
        "uac_late_offer.xml",
        &[
            "-m",
            "1",
            "-key",
            "rtp_addr",
            "127.0.0.1",
            "-key",
            "rtp_port",
            &port,
            "-set",
            "hold_ms",
            "2000",
        ],
        30,
    );
    run.assert_all_succeeded(1);

    let streams = sink.streams();
    assert_eq!(streams.len(), 1, "one call, one RTP stream: {streams:?}");
    let s = streams.values().next().unwrap();
    assert_eq!(s.payload_types, vec![0], "the answer in the ACK chose PCMU");
    assert!(
        s.packets >= 50,
        "only {} RTP packets in a 2 s call",
        s.packets
    );
    assert_stream_stopped(&sink);
}

#[test]
fn fifty_concurrent_calls_are_all_answered_and_streamed() {
    if !sipp_ready() {
        return;
    }
    let server = Server::start(&[]);
    let sink = RtpSink::start();
    let port = sink.port.to_string();
    // 50 calls at 50/s, each held 5 s: all 50 are up at once for about 4 s.
    let run = run_sipp(
        &server,
        "uac_call.xml",
        &[
            "-l",
            "50",
            "-m",
            "50",
            "-r",
            "50",
            "-key",
            "rtp_addr",
            "127.0.0.1",
            "-key",
            "rtp_port",
            &port,
            "-set",
            "hold_ms",
            "5000",
        ],
        60,
    );
    run.assert_all_succeeded(50);

    let streams = sink.streams();
    assert_eq!(streams.len(), 50, "one RTP stream (SSRC) per call");
    for (ssrc, s) in &streams {
        assert_eq!(s.payload_types, vec![0], "SSRC {ssrc:#x}");
        assert!(
            s.packets >= 125,
            "SSRC {ssrc:#x}: only {} packets in a 5 s call",
            s.packets
        );
    }
    // All 50 streams were flowing at the same moment: the last to start began before the first
    // to end stopped.
    let last_start = streams.values().map(|s| s.first).max().unwrap();
    let first_end = streams.values().map(|s| s.last).min().unwrap();
    assert!(
        last_start < first_end,
        "the 50 calls never all streamed at once"
    );
    assert_stream_stopped(&sink);
}
