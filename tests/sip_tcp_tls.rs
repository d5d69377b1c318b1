//! SIP over TCP and TLS (RFC 3261 §18) on loopback: whole calls with `mohd call`, and raw
//! connections that pipeline, split, ping, oversize, idle and crowd.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use mohd::sip::msg::{self, Message};
use mohd::sip::transport::{Frame, Framer};

/// Reads may block this long before a test gives up (a failure, not a timing assertion).
const PATIENCE: Duration = Duration::from_secs(10);

/// A config in `dir` with the given `[sip]` keys (listeners on port 0) and the demo melody.
fn write_config(dir: &Path, sip: &str) -> PathBuf {
    let path = dir.join("mohd.toml");
    std::fs::write(
        &path,
        format!(
            "[sip]\n{sip}\n[channels.default]\nmusic = \"demo\"\n[dialplan]\ndefault = \"default\"\n"
        ),
    )
    .unwrap();
    path
}

fn assert_clean_call(report: &serde_json::Value, min_packets: u64) {
    let stats = &report["stats"];
    assert!(
        stats["packets"].as_u64().unwrap() >= min_packets,
        "{report}"
    );
    assert_eq!(stats["lost"], 0, "{report}");
    assert_eq!(stats["duplicated"], 0, "{report}");
    assert_eq!(report["bye_status"], 200, "{report}");
}

#[test]
fn a_call_over_tcp_hears_music_and_its_bye_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    // Idle connections close after 1 s, but not one that carries a call: the caller sends
    // nothing for 3 s and then its BYE must still go over the same connection.
    let config = write_config(
        dir.path(),
        "listen = [\"udp:127.0.0.1:0\", \"tcp:127.0.0.1:0\"]\nidle_timeout_s = 1",
    );
    let server = Server::from_config_file(&config, &["udp", "tcp"]);
    let uri = format!("sip:moh@{}", server.addr("tcp"));
    let report = mohd_call(&uri, &["--transport", "tcp", "--seconds", "3"]);
    assert_clean_call(&report, 140);
    // The URI's transport parameter alone selects TCP too.
    let report = mohd_call(&format!("{uri};transport=tcp"), &["--seconds", "1"]);
    assert_clean_call(&report, 40);
}

/// A server with a self-signed certificate in `dir`, listening on UDP and TLS; and the URI
/// that calls it over TLS.
fn udp_and_tls_server(dir: &Path) -> (Server, String) {
    write_certificate(dir, false);
    let config = write_config(
        dir,
        &format!("listen = [\"udp:127.0.0.1:0\", \"tls:127.0.0.1:0\"]\n{TLS_KEYS}"),
    );
    let server = Server::from_config_file(&config, &["udp", "tls"]);
    let uri = format!("sip:moh@{}", server.addr("tls"));
    (server, uri)
}

#[test]
fn a_call_over_tls_hears_music_and_its_bye_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, uri) = udp_and_tls_server(dir.path());
    let report = mohd_call(&uri, &["--transport", "tls", "--seconds", "3"]);
    assert_clean_call(&report, 140);
}

#[test]
fn tls_certificates_are_checked_against_the_given_ca() {
    let dir = tempfile::tempdir().unwrap();
    write_certificate(dir.path(), true);
    let other = tempfile::tempdir().unwrap();
    write_certificate(other.path(), true);
    let config = write_config(
        dir.path(),
        &format!("listen = \"tls:127.0.0.1:0\"\n{TLS_KEYS}"),
    );
    let server = Server::from_config_file(&config, &["tls"]);
    // A sips: URI means TLS without --transport.
    let uri = format!("sips:moh@{}", server.addr("tls"));
    let ca = dir.path().join("ca.pem");
    let report = mohd_call(&uri, &["--seconds", "1", "--ca", ca.to_str().unwrap()]);
    assert_clean_call(&report, 40);
    let wrong_ca = other.path().join("ca.pem");
    let err = mohd_call_fails(
        &uri,
        &["--seconds", "1", "--ca", wrong_ca.to_str().unwrap()],
    );
    assert!(err.contains("TLS"), "{err}");
}

/// An OPTIONS request over TCP from `local`, numbered `n`.
fn options(local: SocketAddr, n: u32, extra_headers: &str, body: &str) -> String {
    format!(
        "OPTIONS sip:moh@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bK-tcp-{n}\r\nMax-Forwards: 70\r\nFrom: <sip:test@{local}>;tag=t{n}\r\nTo: <sip:moh@127.0.0.1>\r\nCall-ID: tcp-test-{n}@{local}\r\nCSeq: {n} OPTIONS\r\n{extra_headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s
}

/// The next message from the connection; `None` when mohd closed it.
fn read_message(stream: &mut TcpStream, framer: &mut Framer) -> Option<msg::Response> {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(Frame::Message(m)) = framer.next_frame().unwrap() {
            match msg::parse(&m) {
                Ok(Message::Response(r)) => return Some(r),
                other => panic!("not a response: {other:?}"),
            }
        }
        match stream.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => framer.push(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("no answer and no close within {PATIENCE:?}: {e}"),
        }
    }
}

/// True when mohd closes the connection (EOF or reset) before `PATIENCE` runs out.
fn closed_by_peer(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

fn options_answered(addr: SocketAddr, n: u32) -> bool {
    let mut s = connect(addr);
    let local = s.local_addr().unwrap();
    s.write_all(options(local, n, "", "").as_bytes()).is_ok()
        && read_message(&mut s, &mut Framer::new(65_535)).is_some_and(|r| r.code == 200)
}

#[test]
fn pipelined_split_and_keepalive_traffic_is_answered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "listen = \"tcp:127.0.0.1:0\"");
    let server = Server::from_config_file(&config, &["tcp"]);
    let mut s = connect(server.addr("tcp"));
    let local = s.local_addr().unwrap();

    // RFC 5626 keep-alive: a CRLF CRLF ping gets a CRLF pong.
    s.write_all(b"\r\n\r\n").unwrap();
    let mut pong = [0u8; 2];
    s.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"\r\n");

    // Two requests in one write, the second with a body; a third cut in three writes, one
    // of them in the middle of the blank line.
    let pipelined = options(local, 1, "", "")
        + &options(
            local,
            2,
            "Content-Type: text/plain\r\n",
            "hello\r\n\r\nworld",
        );
    s.write_all(pipelined.as_bytes()).unwrap();
    let third = options(local, 3, "", "");
    let (a, rest) = third.split_at(40);
    let (b, c) = rest.split_at(rest.len() - 3);
    for part in [a, b, c] {
        s.write_all(part.as_bytes()).unwrap();
        s.flush().unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut framer = Framer::new(65_535);
    for n in 1..=3 {
        let r = read_message(&mut s, &mut framer).expect("answer");
        assert_eq!(r.code, 200);
        assert_eq!(r.cseq().map(|c| c.0), Some(n));
        assert_eq!(
            r.top_via().unwrap().branch(),
            Some(format!("z9hG4bK-tcp-{n}").as_str())
        );
    }
}

#[test]
fn a_request_without_content_length_gets_400_and_the_connection_closes() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "listen = \"tcp:127.0.0.1:0\"");
    let server = Server::from_config_file(&config, &["tcp"]);
    let mut s = connect(server.addr("tcp"));
    let local = s.local_addr().unwrap();
    let request = options(local, 7, "", "").replace("Content-Length: 0\r\n", "");
    s.write_all(request.as_bytes()).unwrap();
    let mut framer = Framer::new(65_535);
    let r = read_message(&mut s, &mut framer).expect("a 400");
    assert_eq!(r.code, 400);
    assert_eq!(r.cseq().map(|c| c.0), Some(7));
    assert!(read_message(&mut s, &mut framer).is_none());
}

#[test]
fn an_idle_connection_is_closed_by_mohd() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "listen = \"tcp:127.0.0.1:0\"\nidle_timeout_s = 1",
    );
    let server = Server::from_config_file(&config, &["tcp"]);
    let mut s = connect(server.addr("tcp"));
    let local = s.local_addr().unwrap();
    // Used once, then left alone.
    s.write_all(options(local, 1, "", "").as_bytes()).unwrap();
    let mut framer = Framer::new(65_535);
    assert_eq!(read_message(&mut s, &mut framer).map(|r| r.code), Some(200));
    assert!(
        closed_by_peer(&mut s),
        "an idle connection was still open after {PATIENCE:?}"
    );
}

#[test]
fn an_oversized_message_closes_its_connection_and_others_are_still_answered() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "listen = [\"udp:127.0.0.1:0\", \"tcp:127.0.0.1:0\"]\nmax_message_bytes = 2048",
    );
    let server = Server::from_config_file(&config, &["udp", "tcp"]);
    let tcp = server.addr("tcp");

    // A body larger than the limit: closed as soon as the headers announce it.
    let mut big = connect(tcp);
    let local = big.local_addr().unwrap();
    let body = "x".repeat(4000);
    big.write_all(options(local, 1, "", &body).as_bytes())
        .unwrap_or(());
    assert!(read_message(&mut big, &mut Framer::new(65_535)).is_none());

    // A header section that never ends.
    let mut endless = connect(tcp);
    let local = endless.local_addr().unwrap();
    let head = options(local, 2, "", "").replace("\r\n\r\n", "\r\n");
    let _ = endless.write_all(head.as_bytes());
    for _ in 0..200 {
        if endless
            .write_all(b"X-Padding: 0123456789abcdef\r\n")
            .is_err()
        {
            break;
        }
    }
    assert!(closed_by_peer(&mut endless));

    // Everyone else is still served, over TCP and UDP.
    assert!(options_answered(tcp, 3));
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(PATIENCE)).unwrap();
    let local = udp.local_addr().unwrap();
    let request = options(local, 4, "", "").replace("SIP/2.0/TCP", "SIP/2.0/UDP");
    udp.send_to(request.as_bytes(), server.addr("udp")).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = udp.recv_from(&mut buf).unwrap();
    assert!(matches!(msg::parse(&buf[..n]), Ok(Message::Response(r)) if r.code == 200));
}

#[test]
fn connections_beyond_the_cap_are_closed_and_a_freed_slot_is_reused() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "listen = \"tcp:127.0.0.1:0\"\nmax_connections = 2",
    );
    let server = Server::from_config_file(&config, &["tcp"]);
    let tcp = server.addr("tcp");
    let mut held = Vec::new();
    for n in 1..=2 {
        let mut s = connect(tcp);
        let local = s.local_addr().unwrap();
        s.write_all(options(local, n, "", "").as_bytes()).unwrap();
        let mut framer = Framer::new(65_535);
        assert_eq!(read_message(&mut s, &mut framer).map(|r| r.code), Some(200));
        held.push((s, framer));
    }
    // The third is closed at once, unanswered.
    let mut third = connect(tcp);
    assert!(closed_by_peer(&mut third), "a third connection stayed open");
    // The two held connections still work.
    let (s, framer) = &mut held[0];
    let local = s.local_addr().unwrap();
    s.write_all(options(local, 5, "", "").as_bytes()).unwrap();
    assert_eq!(read_message(s, framer).map(|r| r.code), Some(200));
    // Closing one frees its slot (once mohd has seen the close).
    let (s, _) = held.remove(0);
    s.shutdown(Shutdown::Both).unwrap();
    drop(s);
    let mut n = 10;
    assert!(
        wait_until(PATIENCE, || {
            n += 1;
            options_answered(tcp, n)
        }),
        "a freed connection slot was not reused"
    );
}

#[test]
fn an_srtp_call_over_tls_is_decrypted_and_nothing_fails_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, uri) = udp_and_tls_server(dir.path());
    let record = dir.path().join("heard.wav");
    let report = mohd_call(
        &uri,
        &[
            "--transport",
            "tls",
            "--srtp",
            "--seconds",
            "3",
            "--record",
            record.to_str().unwrap(),
        ],
    );
    assert_clean_call(&report, 140);
    // SDES over TLS is what the default policy accepts; mohd answers the offer's first usable
    // line (the strongest suite, offered first), and nothing it sends fails authentication.
    assert_eq!(
        report["srtp"],
        serde_json::json!({
            "suite": "AEAD_AES_128_GCM",
            "rtp_auth_failures": 0,
            "rtp_replays": 0,
            "rtp_malformed": 0,
            "rtcp_rejected": 0,
        }),
        "{report}"
    );
    // Decrypted, the stream is the channel's music (ciphertext decoded as μ-law is noise).
    let heard = read_wav_mono(&record);
    assert!(heard.len() >= 8000 * 2, "{} samples", heard.len());
    let render =
        mohd::channel::ChannelRender::render("default", &mohd::channel::MusicSource::Demo, -18.0);
    let (corr, _) = best_circular_correlation(&heard[8000..8800], &render.pcm);
    assert!(corr > 0.95, "correlation with the render {corr}");
}
