//! Mutual TLS with the PBX (`[sip.tls] client_ca`, `client_names`) and certificate reload on
//! SIGHUP, against the real binary (`mohd serve`): a client without a certificate, with one
//! from another CA and with one whose name is not pinned is refused (and logged with the
//! `mohd security:` line), a good one is answered; a reload in the middle of a TLS call keeps
//! the call and its connection, new connections get the new certificate, and a bad new file
//! leaves the last good one in place.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::tls::*;
use common::*;

/// `mohd serve` on a config in `dir`, its log in `dir/mohd.log`; stopped (SIGTERM) on drop.
struct Serve {
    child: Child,
    tls: SocketAddr,
    log: PathBuf,
}

impl Serve {
    fn start(dir: &Path, tls_keys: &str) -> Serve {
        let config = dir.join("mohd.toml");
        std::fs::write(
            &config,
            format!(
                "[sip]\nlisten = [\"udp:127.0.0.1:0\", \"tls:127.0.0.1:0\"]\n{tls_keys}\
                 [state]\ndir = \"state\"\n[web]\nlisten = \"off\"\n\
                 [channels.default]\nmusic = \"demo\"\n[dialplan]\ndefault = \"default\"\n"
            ),
        )
        .unwrap();
        let log = dir.join("mohd.log");
        let mut child = Command::new(mohd_bin())
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let tls = loop {
            let line = lines
                .next()
                .unwrap_or_else(|| {
                    panic!("mohd exited: {}", std::fs::read_to_string(&log).unwrap())
                })
                .unwrap();
            if let Some(addr) = line.strip_prefix("mohd: SIP listening on tls:") {
                break addr.parse().unwrap();
            }
        };
        // Keep reading stdout so mohd never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Serve { child, tls, log }
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        nix::sys::signal::kill(pid, signal).unwrap();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        if wait_for_exit(&mut self.child, PATIENCE).is_none() {
            let _ = self.child.kill();
        }
    }
}

#[test]
fn mutual_tls_refuses_no_certificate_another_ca_and_an_unpinned_name_and_answers_a_good_one() {
    let dir = tempfile::tempdir().unwrap();
    write_certificate(dir.path(), true);
    let pbx_ca = new_ca("PBX CA");
    std::fs::write(dir.path().join("client-ca.pem"), pbx_ca.pem()).unwrap();
    let server = Serve::start(
        dir.path(),
        &format!(
            "{TLS_KEYS}client_ca = \"client-ca.pem\"\nclient_names = [\"pbx1.example.com\"]\n"
        ),
    );
    let server_ca = dir.path().join("ca.pem");
    let good = client_cert(&pbx_ca, &["pbx1.example.com"]);
    let foreign = client_cert(&new_ca("Another CA"), &["pbx1.example.com"]);
    let unpinned = client_cert(&pbx_ca, &["pbx2.example.com"]);

    // Each refused client from its own address: refusals from one source are summarised.
    let answer = |from: [u8; 4], client| {
        let config = client_config(&server_ca, client);
        options_over_tls_from(from.into(), server.tls, config)
    };
    assert_eq!(answer([127, 0, 0, 2], None), None, "no client certificate");
    assert_eq!(
        answer([127, 0, 0, 3], Some(&foreign)),
        None,
        "a certificate from another CA"
    );
    assert_eq!(
        answer([127, 0, 0, 4], Some(&unpinned)),
        None,
        "a name that is not pinned"
    );
    // 200 once the channel plays music (503 "starting" before).
    let served = || answer([127, 0, 0, 1], Some(&good)).as_deref() == Some("SIP/2.0 200 OK");
    assert!(wait_until(Duration::from_secs(10), served));

    let refused = |log: &str, source: &str| {
        log.lines()
            .filter(|l| {
                l.contains(&format!(
                    "mohd security: refused source={source} reason=client-cert"
                ))
            })
            .count()
    };
    let logged = || {
        let log = server.log();
        ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
            .iter()
            .all(|s| refused(&log, s) == 1)
    };
    assert!(wait_until(PATIENCE, logged), "{}", server.log());
    assert_eq!(refused(&server.log(), "127.0.0.1"), 0, "{}", server.log());
}

#[test]
fn sighup_during_a_tls_call_keeps_it_and_new_connections_get_the_new_certificate() {
    let dir = tempfile::tempdir().unwrap();
    write_certificate(dir.path(), true);
    let old_ca = dir.path().join("old-ca.pem");
    std::fs::copy(dir.path().join("ca.pem"), &old_ca).unwrap();
    let server = Serve::start(dir.path(), TLS_KEYS);
    let call = tls_call(server.tls, &old_ca);
    std::thread::sleep(Duration::from_secs(2));
    // A new CA and certificate in the same files, then SIGHUP, mid-call.
    write_certificate(dir.path(), true);
    let new_ca = dir.path().join("ca.pem");
    server.signal(nix::sys::signal::Signal::SIGHUP);
    assert_call_went_on(&call.join().unwrap());
    assert!(
        server.log().contains("TLS certificate reloaded"),
        "{}",
        server.log()
    );
    // New connections see the new certificate: trusted by the new CA, not by the old one.
    assert_sip_tls_certificate_from(server.tls, &new_ca, &old_ca);
    // A broken file is refused with an error and the last good certificate stays.
    std::fs::write(dir.path().join("cert.pem"), "not a certificate").unwrap();
    server.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        wait_until(PATIENCE, || server.log().contains("TLS reload refused")),
        "{}",
        server.log()
    );
    assert_eq!(
        options_over_tls(server.tls, client_config(&new_ca, None)).as_deref(),
        Some("SIP/2.0 200 OK")
    );
}
