//! Paths written in the config: resolved against the config file's folder, never `~`-expanded
//! (mohd runs without a home), and the `[sip.tls]`/`[web.tls]` PEM files (pair, and the client CA).

use std::path::{Path, PathBuf};

use toml::Spanned;

use super::doc::{Doc, Key};
use super::raw::RawTls;
use super::{ConfigError, TlsConfig};

/// `[sip.tls]` or `[web.tls]`: both PEM paths, resolved against the config's folder.
pub(super) fn tls_config(
    doc: &Doc,
    base: &Path,
    raw: Spanned<RawTls>,
    table: &[&str],
    client_auth: bool,
) -> Result<TlsConfig, ConfigError> {
    let span = raw.span();
    let t = raw.into_inner();
    let tls_key = |leaf| Key::table(table).leaf(leaf);
    let path = |v: Option<Spanned<String>>, leaf: &'static str, what: &str| match v {
        None => Err(doc.err(
            Some(span.clone()),
            tls_key(leaf),
            format!("missing: the PEM file with {what}"),
        )),
        Some(p) if p.get_ref().trim().is_empty() => {
            Err(doc.err(Some(p.span()), tls_key(leaf), "must not be empty"))
        }
        Some(p) => Ok(base.join(p.get_ref())),
    };
    let client_ca = match t.client_ca {
        None => None,
        Some(p) if !client_auth => {
            return Err(doc.err(
                Some(p.span()),
                tls_key("client_ca"),
                "client certificates are verified on [sip.tls] only",
            ));
        }
        Some(p) => Some(path(Some(p), "client_ca", "the client CA bundle")?),
    };
    let mut client_names = Vec::new();
    if let Some(list) = t.client_names {
        if client_ca.is_none() {
            return Err(doc.err(
                Some(list.span()),
                tls_key("client_names"),
                "pins the names of a client certificate: needs client_ca = \"ca.pem\"",
            ));
        }
        for name in list.into_inner() {
            if name.get_ref().trim().is_empty() {
                return Err(doc.err(Some(name.span()), tls_key("client_names"), "empty name"));
            }
            client_names.push(name.into_inner());
        }
    }
    Ok(TlsConfig {
        certificate: path(t.certificate, "certificate", "the certificate chain")?,
        key: path(t.key, "key", "the private key")?,
        client_ca,
        client_names,
    })
}

/// A music file or folder, or the state folder.
pub(super) fn music_path(base: &Path, s: &str) -> Result<PathBuf, String> {
    if s.trim().is_empty() {
        return Err("the path is empty".to_owned());
    }
    if s == "~" || s.starts_with("~/") {
        return Err("'~' is not expanded; write the full path".to_owned());
    }
    Ok(base.join(s))
}
