//! `[library]`: following a library published elsewhere (see `library::follow`).

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::doc::{Doc, Key};
use super::raw::RawLibrary;
use super::{ConfigError, FollowConfig, LibraryConfig};

/// Between polls when `interval_s` is not set: 70 boxes make one request a second between
/// them, and a change reaches every box within two minutes.
const DEFAULT_INTERVAL_S: u64 = 60;

pub(super) fn library_config(
    doc: &Doc,
    base: &Path,
    raw: Option<Spanned<RawLibrary>>,
) -> Result<LibraryConfig, ConfigError> {
    let Some(raw) = raw else {
        return Ok(LibraryConfig::default());
    };
    let raw = raw.into_inner();
    let key = |leaf| Key::table(&["library"]).leaf(leaf);
    let Some(follow) = raw.follow else {
        for (name, set) in [
            ("token", raw.token.is_some()),
            ("interval_s", raw.interval_s.is_some()),
            ("ca_file", raw.ca_file.is_some()),
            ("allow_http", raw.allow_http.is_some()),
        ] {
            if set {
                return Err(doc.err(None, key(name), "only used with follow = \"https://…\""));
            }
        }
        return Ok(LibraryConfig::default());
    };
    let allow_http = raw.allow_http.is_some_and(Spanned::into_inner);
    let url = doc.checked(&follow, key("follow"), |u| follow_url(u, allow_http))?;
    let token = match raw.token {
        None => None,
        Some(t) => Some(doc.checked(&t, key("token"), |t| {
            let t = t.trim();
            if t.is_empty() || t.chars().any(|c| c.is_control() || c == ' ') {
                Err("expected the token `mohd token new` printed".to_owned())
            } else {
                Ok(t.to_owned())
            }
        })?),
    };
    let interval_s = doc
        .int_within(raw.interval_s, key("interval_s"), 1..=86_400, " seconds")?
        .unwrap_or(DEFAULT_INTERVAL_S);
    let ca_file = match raw.ca_file {
        None => None,
        Some(c) => Some(doc.checked(&c, key("ca_file"), |c| super::paths::music_path(base, c))?),
    };
    Ok(LibraryConfig {
        follow: Some(FollowConfig {
            url,
            token,
            interval: Duration::from_secs(interval_s),
            ca_file,
        }),
    })
}

/// An `https://` URL; `http://` only to a loopback address (a publisher on the same host, the
/// tests) or with `allow_http = true`: a manifest read in clear can be changed on the way, and
/// the sha256 it lists are what every file is checked against.
fn follow_url(u: &str, allow_http: bool) -> Result<String, String> {
    let url = reqwest::Url::parse(u).map_err(|e| format!("not a URL: {e}"))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_http || is_loopback(&url) => {}
        "http" => {
            return Err(
                "http:// is allowed only to a loopback address; use https:// (or set \
                 allow_http = true on a network you trust)"
                    .to_owned(),
            );
        }
        other => return Err(format!("{other}: expected an https:// URL")),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host".to_owned());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("put credentials in `token`, not in the URL".to_owned());
    }
    Ok(url.to_string())
}

fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || bare.parse::<IpAddr>().is_ok_and(|a| a.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{MINIMAL, err, load};
    use std::time::Duration;

    fn err_text(text: &str) -> String {
        err(text).to_string()
    }

    #[test]
    fn follow_keys_are_read_and_checked() {
        let c = load(&format!(
            "{MINIMAL}[library]\nfollow = \"https://pub.example:8080/api/library/export/manifest.json\"\ntoken = \"abc\"\ninterval_s = 30\n"
        ))
        .unwrap();
        let f = c.library.follow.unwrap();
        assert_eq!(f.interval, Duration::from_secs(30));
        assert_eq!(f.token.as_deref(), Some("abc"));
        assert!(
            !format!("{f:?}").contains("abc"),
            "the token stays out of logs"
        );

        let local = load(&format!(
            "{MINIMAL}[library]\nfollow = \"http://127.0.0.1:9/manifest.json\"\n"
        ))
        .unwrap();
        assert_eq!(
            local.library.follow.unwrap().interval,
            Duration::from_secs(60)
        );

        let e = err_text(&format!(
            "{MINIMAL}[library]\nfollow = \"http://pub.example/manifest.json\"\n"
        ));
        assert!(
            e.contains("[library] follow") && e.contains("loopback"),
            "{e}"
        );
        let ok = load(&format!(
            "{MINIMAL}[library]\nfollow = \"http://pub.example/manifest.json\"\nallow_http = true\n"
        ));
        assert!(ok.is_ok());
        let e = err_text(&format!("{MINIMAL}[library]\ntoken = \"abc\"\n"));
        assert!(e.contains("[library] token"), "{e}");
        let e = err_text(&format!(
            "{MINIMAL}[library]\nfollow = \"ftp://x/m.json\"\n"
        ));
        assert!(e.contains("https://"), "{e}");
    }
}
