//! TLS as a PBX or a browser meets mohd, over real sockets: CAs and client certificates made
//! with rcgen, rustls client configurations trusting a CA file (with or without a client
//! certificate), SIP OPTIONS over a new TLS connection from any loopback source, and HTTPS
//! requests on a connection kept open (to see which certificate it was made with, and that it
//! still works after a reload).

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::http::{self, Auth, Response};

/// Reads may block this long before a test gives up (a failure, not a timing assertion).
pub const PATIENCE: Duration = Duration::from_secs(10);

pub type Ca = rcgen::CertifiedIssuer<'static, rcgen::KeyPair>;

pub fn new_ca(name: &str) -> Ca {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

/// A client certificate for `names` issued by `ca`: (certificate PEM, key PEM).
pub fn client_cert(ca: &Ca, names: &[&str]) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A client that trusts the CAs of `server_ca` and presents `client` when given.
pub fn client_config(
    server_ca: &Path,
    client: Option<&(String, String)>,
) -> Arc<rustls::ClientConfig> {
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

/// The first certificate of a PEM file, as DER: what a server loading it presents.
pub fn first_certificate(pem: &Path) -> Vec<u8> {
    let first = CertificateDer::pem_file_iter(pem).unwrap().next();
    first.expect("a certificate").unwrap().to_vec()
}

/// A TCP connection to `to` from `from` (any address of 127/8), so one test can be several
/// sources.
pub fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrStorage, bind, connect, socket,
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    let local = SockaddrStorage::from(SocketAddr::new(from, 0));
    bind(fd.as_raw_fd(), &local).unwrap();
    connect(fd.as_raw_fd(), &SockaddrStorage::from(to)).unwrap();
    TcpStream::from(fd)
}

/// OPTIONS over a new TLS connection from 127.0.0.1: the response's status line, or `None`
/// when the handshake or the connection was refused.
pub fn options_over_tls(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Option<String> {
    options_over_tls_from([127, 0, 0, 1].into(), addr, config)
}

/// [`options_over_tls`] from the source address `from`.
pub fn options_over_tls_from(
    from: IpAddr,
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Option<String> {
    let tcp = connect_from(from, addr);
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

/// `mohd call` over TLS to `tls` for 6 s, trusting `ca`, in the background: its JSON report.
pub fn tls_call(tls: SocketAddr, ca: &Path) -> std::thread::JoinHandle<serde_json::Value> {
    let uri = format!("sips:moh@{tls}");
    let ca = ca.to_str().unwrap().to_owned();
    std::thread::spawn(move || super::mohd_call(&uri, &["--seconds", "6", "--ca", &ca]))
}

/// What a [`tls_call`] that went on through whatever happened meanwhile reports: every
/// packet, none lost, and its BYE answered over its connection.
pub fn assert_call_went_on(report: &serde_json::Value) {
    let stats = &report["stats"];
    assert!(stats["packets"].as_u64().unwrap() >= 280, "{report}");
    assert_eq!(stats["lost"], 0, "{report}");
    assert_eq!(report["bye_status"], 200, "{report}");
}

/// New SIP/TLS connections to `tls` get a certificate that `ca` trusts and `not_ca` does not
/// (a reload's new certificate, not the old one): OPTIONS answered 200 over one, refused over
/// the other.
pub fn assert_sip_tls_certificate_from(tls: SocketAddr, ca: &Path, not_ca: &Path) {
    let answer = options_over_tls(tls, client_config(ca, None));
    assert_eq!(answer.as_deref(), Some("SIP/2.0 200 OK"));
    assert_eq!(options_over_tls(tls, client_config(not_ca, None)), None);
}

/// An HTTPS connection kept open for several requests, as a browser keeps one.
pub struct Https {
    addr: SocketAddr,
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

impl Https {
    /// Connects and completes the handshake; the error when the server's certificate is not
    /// trusted by `config`.
    pub fn connect(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> io::Result<Https> {
        let tcp = TcpStream::connect(addr)?;
        tcp.set_read_timeout(Some(PATIENCE))?;
        let name = ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(config, name).map_err(io::Error::other)?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(Https { addr, tls })
    }

    /// The certificate the server presented on this connection (DER).
    pub fn server_certificate(&self) -> Vec<u8> {
        let certs = self
            .tls
            .conn
            .peer_certificates()
            .expect("a server certificate");
        certs[0].to_vec()
    }

    /// One request on this connection; the response is read by its Content-Length, so the
    /// connection stays usable.
    pub fn request(&mut self, method: &str, path: &str, auth: &Auth) -> Response {
        let head = http::head(self.addr, method, path, auth, None, b"", "keep-alive");
        self.tls.write_all(head.as_bytes()).unwrap();
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let so_far = http::parse_response(&raw);
                let length: usize = so_far
                    .header("content-length")
                    .and_then(|v| v.parse().ok())
                    .expect("a response with Content-Length");
                if raw.len() >= end + 4 + length {
                    return so_far;
                }
            }
            let n = self.tls.read(&mut buf).expect("the response");
            assert!(n > 0, "connection closed mid-response: {raw:?}");
            raw.extend_from_slice(&buf[..n]);
        }
    }
}
