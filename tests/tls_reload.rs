//! `POST /api/tls/reload` end to end, over real sockets, against an in-process mohd with SIP
//! over TLS and HTTPS: certificates replaced on disk are what new connections get after the
//! reload, while connections (and a call) made before keep working on theirs; a file that
//! does not load is reported by the API (500, naming the file) and the last good certificate
//! stays; without the admin token the reload is refused. (SIGHUP, the other way to reload, is
//! `tests/mutual_tls.rs`.)

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::http::{Auth, Response};
use common::tls::*;
use common::*;
use mohd::server::Environment;

/// mohd with a TLS SIP listener and an HTTPS web listener, each with its own CA and
/// certificate (`sip/` and `web/` in `dir`, as [`write_certificate`] writes them).
struct TlsServer {
    sip_tls: SocketAddr,
    web: SocketAddr,
    token: String,
    /// Dropped (stopped) before `dir`.
    _server: Server,
    dir: tempfile::TempDir,
}

impl TlsServer {
    fn start() -> TlsServer {
        let dir = tempfile::tempdir().unwrap();
        for part in ["sip", "web", "state"] {
            std::fs::create_dir_all(dir.path().join(part)).unwrap();
        }
        write_certificate(&dir.path().join("sip"), true);
        write_certificate(&dir.path().join("web"), true);
        let mut auth = mohd::web::auth::AuthStore::open(&dir.path().join("state")).unwrap();
        auth.set_password("correct horse battery staple").unwrap();
        let token = auth.new_token("tests").unwrap();
        let config = dir.path().join("mohd.toml");
        std::fs::write(
            &config,
            "[sip]\nlisten = [\"udp:127.0.0.1:0\", \"tls:127.0.0.1:0\"]\n\
             [sip.tls]\ncertificate = \"sip/cert.pem\"\nkey = \"sip/key.pem\"\n\
             [state]\ndir = \"state\"\n\
             [web]\nlisten = \"127.0.0.1:0\"\n\
             [web.tls]\ncertificate = \"web/cert.pem\"\nkey = \"web/key.pem\"\n\
             [lineout]\nenabled = false\n\
             [channels.default]\nmusic = \"demo\"\n[dialplan]\ndefault = \"default\"\n",
        )
        .unwrap();
        let config = mohd::config::Config::load(&config).unwrap_or_else(|e| panic!("{e}"));
        let server = Server::in_configured_state(config, Environment::with_probe(mohd_bin()));
        TlsServer {
            sip_tls: server.addr("tls"),
            web: server.web.expect("web listener"),
            token,
            _server: server,
            dir,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A copy of `part`'s current CA, kept when the certificate is replaced.
    fn keep_ca(&self, part: &str) -> PathBuf {
        let kept = self.path(&format!("{part}-old-ca.pem"));
        std::fs::copy(self.path(&format!("{part}/ca.pem")), &kept).unwrap();
        kept
    }

    /// `POST /api/tls/reload` over a new HTTPS connection that trusts `web_ca`.
    fn reload(&self, web_ca: &Path, auth: &Auth) -> Response {
        let mut https = Https::connect(self.web, client_config(web_ca, None)).unwrap();
        https.request("POST", "/api/tls/reload", auth)
    }

    fn admin(&self) -> Auth {
        Auth::bearer(&self.token)
    }

    /// Breaks `file` (`web/cert.pem`, …) and reloads: the API answers 500 with a message that
    /// names the configuration and the file, and only that configuration. The message.
    fn reload_refused(&self, web_ca: &Path, file: &str) -> String {
        std::fs::write(self.path(file), "not PEM").unwrap();
        let r = self.reload(web_ca, &self.admin());
        assert_eq!(r.status, 500, "{}", r.text());
        let error = r.error();
        let (part, other) = if file.starts_with("sip/") {
            ("sip", "web")
        } else {
            ("web", "sip")
        };
        assert!(error.contains(&format!("{part}: ")), "{error}");
        assert!(error.contains(file), "{error}");
        assert!(!error.contains(&format!("{other}: ")), "{error}");
        error
    }
}

#[test]
fn reloading_the_web_certificate_serves_new_connections_and_keeps_open_ones() {
    let s = TlsServer::start();
    let old_ca = s.keep_ca("web");
    let old_cert = first_certificate(&s.path("web/cert.pem"));
    let mut before = Https::connect(s.web, client_config(&old_ca, None)).unwrap();
    assert_eq!(before.request("GET", "/healthz", &Auth::none()).status, 200);

    // A new CA and certificate in the same files: nothing changes until the reload.
    write_certificate(&s.path("web"), true);
    let new_ca = s.path("web/ca.pem");
    let new_cert = first_certificate(&s.path("web/cert.pem"));
    let unchanged = Https::connect(s.web, client_config(&old_ca, None)).unwrap();
    assert_eq!(unchanged.server_certificate(), old_cert);

    // Without the admin's token: refused, and still nothing changes.
    let r = s.reload(&old_ca, &Auth::none());
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(!r.error().is_empty());
    let r = s.reload(&old_ca, &Auth::bearer("mohd_not-a-real-token"));
    assert_eq!(r.status, 401, "{}", r.text());
    let unchanged = Https::connect(s.web, client_config(&old_ca, None)).unwrap();
    assert_eq!(unchanged.server_certificate(), old_cert);

    let r = s.reload(&old_ca, &s.admin());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!([
            {"what": "sip", "reloaded": true},
            {"what": "web", "reloaded": true},
        ])
    );

    // New connections get the new certificate; one that trusts only the old CA fails.
    let after = Https::connect(s.web, client_config(&new_ca, None)).unwrap();
    assert_eq!(after.server_certificate(), new_cert);
    assert!(Https::connect(s.web, client_config(&old_ca, None)).is_err());
    // The connection opened before goes on, on the certificate it was made with.
    let r = before.request("GET", "/api/status", &s.admin());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(before.server_certificate(), old_cert);

    // A broken certificate file: the API says so, naming it, and the last good one stays.
    s.reload_refused(&new_ca, "web/cert.pem");
    let still = Https::connect(s.web, client_config(&new_ca, None)).unwrap();
    assert_eq!(still.server_certificate(), new_cert);
}

#[test]
fn reloading_the_sip_certificate_keeps_a_tls_call_and_new_connections_get_the_new_one() {
    let s = TlsServer::start();
    let web_ca = s.path("web/ca.pem");
    let old_ca = s.keep_ca("sip");
    let call = tls_call(s.sip_tls, &old_ca);
    // Mid-call: a new CA and certificate in the same files, then the reload.
    std::thread::sleep(Duration::from_secs(2));
    write_certificate(&s.path("sip"), true);
    let new_ca = s.path("sip/ca.pem");
    let r = s.reload(&web_ca, &s.admin());
    assert_eq!(r.status, 200, "{}", r.text());

    // New connections see the new certificate: trusted by the new CA, not by the old one.
    assert_sip_tls_certificate_from(s.sip_tls, &new_ca, &old_ca);

    // The call went on over its connection: every packet, none lost, the BYE answered there.
    assert_call_went_on(&call.join().unwrap());

    // A key that does not load: the API says so, naming it, and the last good pair stays.
    s.reload_refused(&web_ca, "sip/key.pem");
    assert_eq!(
        options_over_tls(s.sip_tls, client_config(&new_ca, None)).as_deref(),
        Some("SIP/2.0 200 OK")
    );
}
