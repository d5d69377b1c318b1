//! `[web]` and `[web.tls]`: the admin page, REST API, metrics and health listener.

use std::net::SocketAddr;
use std::path::Path;

use toml::Spanned;

use super::doc::{Doc, Key};
use super::raw::RawWeb;
use super::{ConfigError, DEFAULT_MAX_UPLOAD_MB, DEFAULT_WEB, WebConfig};

pub(super) fn web_config(
    doc: &Doc,
    base: &Path,
    raw: Option<Spanned<RawWeb>>,
) -> Result<WebConfig, ConfigError> {
    let Some(raw) = raw else {
        return Ok(WebConfig::default_with(None));
    };
    let raw = raw.into_inner();
    let key = |leaf| Key::table(&["web"]).leaf(leaf);
    let listen = match &raw.listen {
        None => Some(DEFAULT_WEB),
        Some(l) if l.get_ref() == "off" || l.get_ref().is_empty() => None,
        Some(l) => Some(doc.checked(l, key("listen"), |l| {
            l.parse::<SocketAddr>()
                .map_err(|_| "expected IP:PORT, e.g. \"0.0.0.0:8080\", or \"off\"".to_owned())
        })?),
    };
    let tls = match raw.tls {
        None => None,
        Some(t) => Some(super::paths::tls_config(
            doc,
            base,
            t,
            &["web", "tls"],
            false,
        )?),
    };
    let max_upload_mb = doc
        .int_within(raw.max_upload_mb, key("max_upload_mb"), 1..=4096, " MiB")?
        .unwrap_or(DEFAULT_MAX_UPLOAD_MB);
    Ok(WebConfig {
        listen,
        tls,
        metrics_public: raw.metrics_public.is_some_and(Spanned::into_inner),
        max_upload_bytes: max_upload_mb * 1024 * 1024,
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{MINIMAL, err, load};

    #[test]
    fn state_web_and_library_channels() {
        let c = load(
            "[state]\ndir = \"state\"\n[web]\nlisten = \"0.0.0.0:8443\"\nmetrics_public = true\nmax_upload_mb = 50\n[web.tls]\ncertificate = \"c.pem\"\nkey = \"k.pem\"\n[channels.default]\nmusic = \"library\"\n[dialplan]\ndefault = \"default\"\n",
        )
        .unwrap();
        assert!(c.state.dir.ends_with("state") && c.state.dir.is_absolute());
        assert_eq!(c.web.listen, Some("0.0.0.0:8443".parse().unwrap()));
        assert!(c.web.metrics_public);
        assert_eq!(c.web.max_upload_bytes, 50 * 1024 * 1024);
        assert!(c.web.tls.is_some());
        assert!(c.channels["default"].library);
        // No [web]: no web listener; "off" too.
        let c = load(MINIMAL).unwrap();
        assert_eq!(c.web.listen, None);
        assert!(!c.channels["default"].library);
        let c = load(&format!("[web]\nlisten = \"off\"\n{MINIMAL}")).unwrap();
        assert_eq!(c.web.listen, None);
        let e = err(&format!("[web]\nlisten = \"8080\"\n{MINIMAL}"));
        assert_eq!(e.key(), Some("[web] listen"));
        assert_eq!(e.line(), Some(2));
        let e = err(&format!("[web]\nmax_upload_mb = 0\n{MINIMAL}"));
        assert_eq!(e.key(), Some("[web] max_upload_mb"));
        let e = err(&format!("[state]\ndirr = \"x\"\n{MINIMAL}"));
        assert!(e.message().contains("dirr"), "{e}");
    }
}
