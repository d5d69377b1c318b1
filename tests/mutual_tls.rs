//! Mutual TLS with the PBX (`[sip.tls] client_ca`, `client_names`) and certificate reload on
//! SIGHUP, against the real binary (`mohd serve`): a client without a certificate, with one
//! from another CA and with one whose name is not pinned is refused (and logged with the
//! `mohd security:` line), a good one is answered; a reload in the middle of a TLS call keeps
//! the call and its connection, new connections get the new certificate, and a bad new file
//! leaves the last good one in place.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Reads may block this long before a test gives up (a failure, not a timing assertion).
const PATIENCE: Duration = Duration::from_secs(10);

fn new_ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

/// A client certificate for `names` issued by `ca`: (certificate PEM, key PEM).
fn client_cert(
    ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    names: &[&str],
) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn client_config(server_ca: &Path, client: Option<&(String, String)>) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(server_ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    })
}

/// OPTIONS over a new TLS connection: the response's status line, or `None` when the
/// handshake or the connection was refused.
fn options_over_tls(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Option<String> {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let local = tcp.local_addr().unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let r = rand::random::<u32>();
    let msg = format!(
        "OPTIONS sip:moh@{addr} SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch=z9hG4bK{r}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:pbx@{local}>;tag=p1\r\nTo: <sip:moh@{addr}>\r\n\
         Call-ID: {r}@pbx\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    tls.write_all(msg.as_bytes()).ok()?;
    let mut buf = vec![0u8; 4096];
    match tls.read(&mut buf) {
        Ok(n) if n > 0 => String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .map(str::to_owned),
        _ => None,
    }
}

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

    let answer = |client| options_over_tls(server.tls, client_config(&server_ca, client));
    assert_eq!(answer(None), None, "no client certificate");
    assert_eq!(
        answer(Some(&foreign)),
        None,
        "a certificate from another CA"
    );
    assert_eq!(answer(Some(&unpinned)), None, "a name that is not pinned");
    assert_eq!(answer(Some(&good)).as_deref(), Some("SIP/2.0 200 OK"));

    let refusals = |log: &str| {
        log.lines()
            .filter(|l| l.contains("mohd security: refused source=127.0.0.1 reason=client-cert"))
            .count()
    };
    assert!(
        wait_until(PATIENCE, || refusals(&server.log()) == 3),
        "{}",
        server.log()
    );
}

#[test]
fn sighup_during_a_tls_call_keeps_it_and_new_connections_get_the_new_certificate() {
    let dir = tempfile::tempdir().unwrap();
    write_certificate(dir.path(), true);
    let old_ca = dir.path().join("old-ca.pem");
    std::fs::copy(dir.path().join("ca.pem"), &old_ca).unwrap();
    let server = Serve::start(dir.path(), TLS_KEYS);
    let uri = format!("sips:moh@{}", server.tls);
    let call = {
        let (uri, ca) = (uri.clone(), old_ca.clone());
        std::thread::spawn(move || {
            mohd_call(&uri, &["--seconds", "6", "--ca", ca.to_str().unwrap()])
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    // A new CA and certificate in the same files, then SIGHUP, mid-call.
    write_certificate(dir.path(), true);
    let new_ca = dir.path().join("ca.pem");
    server.signal(nix::sys::signal::Signal::SIGHUP);
    let report = call.join().unwrap();
    // The call went on over its connection: every packet, none lost, the BYE answered there.
    let stats = &report["stats"];
    assert!(stats["packets"].as_u64().unwrap() >= 280, "{report}");
    assert_eq!(stats["lost"], 0, "{report}");
    assert_eq!(report["bye_status"], 200, "{report}");
    assert!(
        server.log().contains("TLS certificate reloaded"),
        "{}",
        server.log()
    );
    // New connections see the new certificate: trusted by the new CA, not by the old one.
    assert_eq!(
        options_over_tls(server.tls, client_config(&new_ca, None)).as_deref(),
        Some("SIP/2.0 200 OK")
    );
    assert_eq!(
        options_over_tls(server.tls, client_config(&old_ca, None)),
        None
    );
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
