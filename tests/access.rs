//! Access control over real loopback sockets: sources outside `[access] allow` get 403, or
//! nothing with `action = "drop"`.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::*;

fn options_answer(sip: SocketAddr) -> Option<String> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let l = sock.local_addr().unwrap();
    let r = rand::random::<u32>();
    let msg = format!(
        "OPTIONS sip:moh@{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bK{r};rport\r\nMax-Forwards: 70\r\nFrom: <sip:p@{l}>;tag={r}\r\nTo: <sip:moh@{sip}>\r\nCall-ID: {r}@p\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    let mut buf = [0u8; 4096];
    for _ in 0..2 {
        sock.send_to(msg.as_bytes(), sip).unwrap();
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    None
}

fn server(access: &str) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mohd.toml");
    std::fs::write(
        &config,
        format!("[access]\n{access}\n[channels.default]\nmusic = \"demo\"\n[dialplan]\ndefault = \"default\"\n"),
    )
    .unwrap();
    let s = Server::start(&["--config", config.to_str().unwrap()]);
    (dir, s)
}

#[test]
fn outside_the_allowed_networks_is_refused_with_403() {
    let (_d, s) = server("allow = [\"127.0.0.2/32\", \"10.0.0.0/8\"]\naction = \"reject\"");
    let answer = options_answer(s.sip).expect("an answer");
    assert!(answer.starts_with("SIP/2.0 403"), "{answer}");
}

#[test]
fn outside_the_allowed_networks_is_dropped_when_configured() {
    let (_d, s) = server("allow = [\"127.0.0.2/32\"]\naction = \"drop\"");
    assert_eq!(options_answer(s.sip), None);
}

#[test]
fn inside_the_allowed_networks_is_served() {
    let (_d, s) = server("allow = [\"127.0.0.0/8\"]");
    let answer = options_answer(s.sip).expect("an answer");
    assert!(answer.starts_with("SIP/2.0 200"), "{answer}");
}

fn auth_server() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mohd.toml");
    std::fs::write(
        &config,
        "[sip.auth]\nrealm = \"moh.example\"\nusers = { pbx = \"s3cret\" }\n[channels.default]\nmusic = \"demo\"\n[dialplan]\ndefault = \"default\"\n",
    )
    .unwrap();
    let s = Server::start(&["--config", config.to_str().unwrap()]);
    (dir, s)
}

#[test]
fn digest_auth_on_invite_accepts_the_right_password() {
    let (_d, s) = auth_server();
    let report = mohd_call(
        &s.uri("moh"),
        &["--seconds", "1", "--user", "pbx", "--password", "s3cret"],
    );
    assert!(
        report["stats"]["packets"].as_u64().unwrap() >= 40,
        "{report}"
    );
}

#[test]
fn digest_auth_on_invite_refuses_a_wrong_password_and_none() {
    let (_d, s) = auth_server();
    for extra in [
        vec!["--user", "pbx", "--password", "wrong"],
        vec!["--user", "nobody", "--password", "s3cret"],
        vec![],
    ] {
        let out = std::process::Command::new(mohd_bin())
            .args(["call", &s.uri("moh"), "--seconds", "1"])
            .args(&extra)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{extra:?} got through");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("401"), "{extra:?}: {stderr}");
    }
}
