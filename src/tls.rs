//! TLS server configurations from PEM files, for SIP/TLS and the web: the certificate chain
//! and key, and optionally the CA bundle that a client (the PBX) must present a certificate
//! from, with the subject names it may carry. Owns reloading: a [`ReloadableTls`] re-reads
//! its files on demand and swaps the configuration that *new* handshakes use; connections
//! already up keep the one they were made with. A file that fails to load leaves the old
//! configuration in place. [`TlsReloader`] is what SIGHUP and `POST /api/tls/reload` call.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::config::TlsConfig;

/// Why a TLS configuration could not be built from its files.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read TLS {what} {}: {source}", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("no certificate in {}", .0.display())]
    NoCertificate(PathBuf),
    #[error("TLS certificate {} with key {}: {source}", certificate.display(), key.display())]
    Rustls {
        certificate: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("TLS client CA bundle {}: {reason}", path.display())]
    ClientCa { path: PathBuf, reason: String },
}

fn pem_err(
    what: &'static str,
    path: &Path,
) -> impl FnOnce(rustls::pki_types::pem::Error) -> TlsSetupError + use<> {
    let path = path.to_owned();
    move |source| TlsSetupError::Pem { what, path, source }
}

fn read_certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(pem_err(what, path))?
        .collect::<Result<_, _>>()
        .map_err(pem_err(what, path))?;
    if certs.is_empty() {
        return Err(TlsSetupError::NoCertificate(path.to_owned()));
    }
    Ok(certs)
}

/// A server configuration (rustls, `ring`, TLS 1.2 and 1.3) from `files`, offering `alpn`.
/// With `client_ca`, a client certificate from that bundle is required (and its names
/// checked against `client_names` when any are given).
pub fn server_config(
    files: &TlsConfig,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let certs = read_certificates("certificate", &files.certificate)?;
    let private = PrivateKeyDer::from_pem_file(&files.key).map_err(pem_err("key", &files.key))?;
    let rustls_err = |source| TlsSetupError::Rustls {
        certificate: files.certificate.clone(),
        key: files.key.clone(),
        source,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(rustls_err)?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let ca_err = |reason: String| TlsSetupError::ClientCa {
                path: ca.clone(),
                reason,
            };
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certificates("client CA bundle", ca)? {
                roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
            }
            let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| ca_err(e.to_string()))?;
            builder.with_client_cert_verifier(Arc::new(PinnedNames {
                inner: webpki,
                names: files.client_names.clone(),
            }))
        }
    };
    let mut config = builder
        .with_single_cert(certs, private)
        .map_err(rustls_err)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Whether a handshake error is the client's certificate being refused (none, an unknown
/// issuer, a name not pinned, expired...): what the `mohd security:` line reports as
/// `reason=client-cert`.
pub fn is_client_cert_refusal(e: &std::io::Error) -> bool {
    let Some(inner) = e.get_ref() else {
        return false;
    };
    matches!(
        inner.downcast_ref::<rustls::Error>(),
        Some(rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_))
    )
}

/// The webpki chain check, then the leaf's names against the pinned list (when not empty).
#[derive(Debug)]
struct PinnedNames {
    inner: Arc<dyn ClientCertVerifier>,
    names: Vec<String>,
}

impl ClientCertVerifier for PinnedNames {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.names.is_empty() {
            return Ok(verified);
        }
        let presented = certificate_names(end_entity).unwrap_or_default();
        let pinned = presented
            .iter()
            .any(|p| self.names.iter().any(|n| n.eq_ignore_ascii_case(p)));
        if pinned {
            Ok(verified)
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

type ReloadHook = Box<dyn Fn(Arc<ServerConfig>) + Send + Sync>;

/// A TLS server configuration that can be re-read from its files; each handshake takes the
/// current one.
pub struct ReloadableTls {
    files: TlsConfig,
    alpn: Vec<&'static [u8]>,
    current: RwLock<Arc<ServerConfig>>,
    /// Told of each new configuration (the web server's own holder of it).
    on_reload: Mutex<Vec<ReloadHook>>,
}

impl std::fmt::Debug for ReloadableTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadableTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ReloadableTls {
    pub fn load(
        files: &TlsConfig,
        alpn: &[&'static [u8]],
    ) -> Result<Arc<ReloadableTls>, TlsSetupError> {
        let config = server_config(files, alpn)?;
        Ok(Arc::new(ReloadableTls {
            files: files.clone(),
            alpn: alpn.to_vec(),
            current: RwLock::new(config),
            on_reload: Mutex::new(Vec::new()),
        }))
    }

    /// The configuration for the next handshake.
    pub fn current(&self) -> Arc<ServerConfig> {
        match self.current.read() {
            Ok(c) => Arc::clone(&c),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current())
    }

    /// Calls `f` with every configuration a reload installs.
    pub fn on_reload(&self, f: impl Fn(Arc<ServerConfig>) + Send + Sync + 'static) {
        if let Ok(mut hooks) = self.on_reload.lock() {
            hooks.push(Box::new(f));
        }
    }

    /// Re-reads the files; on success new handshakes use them, on failure nothing changes.
    pub fn reload(&self) -> Result<(), TlsSetupError> {
        let config = server_config(&self.files, &self.alpn)?;
        match self.current.write() {
            Ok(mut c) => *c = Arc::clone(&config),
            Err(poisoned) => *poisoned.into_inner() = Arc::clone(&config),
        }
        if let Ok(hooks) = self.on_reload.lock() {
            for hook in hooks.iter() {
                hook(Arc::clone(&config));
            }
        }
        Ok(())
    }
}

/// One reloadable configuration's result.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct ReloadOutcome {
    /// `sip` or `web`.
    pub what: String,
    /// Whether the new files are in use.
    pub reloaded: bool,
    /// Why not, when they are not (the old certificate stays).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Every reloadable TLS configuration of a server.
#[derive(Debug, Default)]
pub struct TlsReloader {
    targets: Mutex<Vec<(&'static str, Arc<ReloadableTls>)>>,
}

impl TlsReloader {
    pub fn add(&self, what: &'static str, tls: Arc<ReloadableTls>) {
        if let Ok(mut t) = self.targets.lock() {
            t.push((what, tls));
        }
    }

    /// Reloads each, logging the outcome (a refused file is an error naming it).
    pub fn reload_all(&self) -> Vec<ReloadOutcome> {
        let targets = match self.targets.lock() {
            Ok(t) => t.clone(),
            Err(_) => return Vec::new(),
        };
        targets
            .iter()
            .map(|(what, tls)| match tls.reload() {
                Ok(()) => {
                    tracing::info!(what, "TLS certificate reloaded");
                    ReloadOutcome {
                        what: (*what).to_owned(),
                        reloaded: true,
                        error: None,
                    }
                }
                Err(e) => {
                    tracing::error!(what, error = %e, "TLS reload refused: the old certificate stays");
                    ReloadOutcome {
                        what: (*what).to_owned(),
                        reloaded: false,
                        error: Some(e.to_string()),
                    }
                }
            })
            .collect()
    }
}

/// The names a certificate (DER) is for, as pinning compares them: its subjectAltName DNS
/// names, then its subject's common names. `None` when the bytes are not a certificate.
pub fn certificate_names(der: &[u8]) -> Option<Vec<String>> {
    x509_names::subject_names(der)
}

/// Just enough DER to read a certificate's subject names: the subjectAltName DNS names and
/// the subject's common names. Hand-written on purpose: webpki (our verifier) checks names for
/// servers only, and x509-parser, the crate that would do this, pulls `time` into the shipped
/// binary, whose open advisory (RUSTSEC-2026-0009) is fixed only above our rust-version. It reads
/// a certificate that webpki has already verified, every length is checked before use, and the
/// `x509_names` fuzz target compares it with x509-parser on arbitrary input.
mod x509_names {
    /// One TLV: (tag, contents, what follows).
    fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (len, &rest[n..])
        };
        if rest.len() < len {
            return None;
        }
        Some((tag, &rest[..len], &rest[len..]))
    }

    fn items(mut input: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
        std::iter::from_fn(move || {
            let (tag, body, rest) = tlv(input)?;
            input = rest;
            Some((tag, body))
        })
    }

    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
    const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
    const DNS_NAME: u8 = 0x82;
    const EXTENSIONS: u8 = 0xa3;

    /// SAN DNS names, then subject CNs; `None` when the DER is not a certificate.
    pub(super) fn subject_names(der: &[u8]) -> Option<Vec<String>> {
        let (_, cert, _) = tlv(der)?;
        let (_, tbs, _) = tlv(cert)?;
        // Every field must parse to the end: a last field whose length overruns the TBS (found
        // by the `x509_names` fuzz target) makes the DER no certificate, rather than one whose
        // extensions are quietly skipped.
        let mut fields: Vec<(u8, &[u8])> = Vec::new();
        let mut rest = tbs;
        while !rest.is_empty() {
            let (tag, body, after) = tlv(rest)?;
            fields.push((tag, body));
            rest = after;
        }
        // [0] version is optional; serial, signature, issuer, validity, subject follow.
        let skip = usize::from(fields.first()?.0 == 0xa0);
        let subject = fields.get(skip + 4)?.1;
        let mut names = Vec::new();
        if let Some((_, ext_seq)) = fields.iter().find(|(tag, _)| *tag == EXTENSIONS) {
            let (_, exts, _) = tlv(ext_seq)?;
            for (_, ext) in items(exts) {
                let mut parts = items(ext);
                let Some((OID, OID_SUBJECT_ALT_NAME)) = parts.next() else {
                    continue;
                };
                let Some((_, value)) = parts.find(|(tag, _)| *tag == 0x04) else {
                    continue;
                };
                let (_, general_names, _) = tlv(value)?;
                for (tag, name) in items(general_names) {
                    // A dNSName is an IA5String (IDNs as A-labels, RFC 5280 §4.2.1.6): one
                    // that is not ASCII is malformed and pins nothing; decoded lossily, two
                    // different names could read alike.
                    if tag == DNS_NAME && name.is_ascii() {
                        names.push(String::from_utf8_lossy(name).into_owned());
                    }
                }
            }
        }
        for (_, rdn) in items(subject) {
            for (tag, attr) in items(rdn) {
                if tag != SEQUENCE {
                    continue;
                }
                let mut parts = items(attr);
                if let (Some((OID, OID_COMMON_NAME)), Some((_, value))) =
                    (parts.next(), parts.next())
                {
                    names.push(String::from_utf8_lossy(value).into_owned());
                }
            }
        }
        Some(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(sans: &[&str], cn: &str) -> Vec<u8> {
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn names_are_the_san_dns_names_then_the_common_name() {
        let der = cert_with(&["pbx1.example.com", "pbx1.example.net"], "PBX One");
        assert_eq!(
            x509_names::subject_names(&der),
            Some(vec![
                "pbx1.example.com".to_owned(),
                "pbx1.example.net".to_owned(),
                "PBX One".to_owned()
            ])
        );
        let der = cert_with(&[], "pbx2.example.com");
        assert_eq!(
            x509_names::subject_names(&der),
            Some(vec!["pbx2.example.com".to_owned()])
        );
    }

    #[test]
    fn garbage_has_no_names() {
        assert_eq!(x509_names::subject_names(&[]), None);
        assert_eq!(x509_names::subject_names(&[0x30, 0x82, 0xff]), None);
        let der = cert_with(&["a.example"], "a");
        for cut in 0..der.len() {
            // Never panics on a truncated certificate.
            let _ = x509_names::subject_names(&der[..cut]);
        }
    }

    #[test]
    fn a_bad_file_on_reload_keeps_the_old_configuration() {
        let dir = tempfile::tempdir().expect("dir");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let files = TlsConfig {
            certificate: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            client_ca: None,
            client_names: Vec::new(),
        };
        std::fs::write(&files.certificate, cert.pem()).expect("write");
        std::fs::write(&files.key, key.serialize_pem()).expect("write");
        let tls = ReloadableTls::load(&files, &[]).expect("load");
        let before = tls.current();
        std::fs::write(&files.certificate, "not a certificate").expect("write");
        assert!(tls.reload().is_err());
        assert!(Arc::ptr_eq(&before, &tls.current()));
        std::fs::write(&files.certificate, cert.pem()).expect("write");
        tls.reload().expect("reload");
        assert!(!Arc::ptr_eq(&before, &tls.current()));
    }
}
