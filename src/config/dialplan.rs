//! `[dialplan]` inline, or the dialplan file it names: routes from a request to a channel,
//! checked against the channels defined.

use std::collections::BTreeMap;
use std::path::Path;

use toml::Spanned;

use super::channels::known_channel;
use super::doc::{Doc, Key};
use super::raw::{RawDialplan, RawDialplanFile, RawRoute};
use super::{ChannelConfig, ConfigError};
use crate::dialplan::{Cidr, Dialplan, Pattern, Route};

pub(super) fn dialplan_config(
    doc: &Doc,
    base: &Path,
    raw: Option<Spanned<RawDialplan>>,
    channels: &BTreeMap<String, ChannelConfig>,
) -> Result<Dialplan, ConfigError> {
    let header = raw.as_ref().map(Spanned::span);
    // One channel and no [dialplan] at all: every call goes to it (what anyone would mean).
    if raw.is_none()
        && channels.len() == 1
        && let Some(only) = channels.keys().next()
    {
        return Ok(Dialplan::with_default(only.clone()));
    }
    let raw = raw.map(Spanned::into_inner).unwrap_or_default();
    let dialplan = match raw.file {
        Some(file) => {
            if raw.default.is_some() || !raw.route.is_empty() {
                return Err(doc.err(
                    Some(file.span()),
                    Key::table(&["dialplan"]).leaf("file"),
                    "set either `file` or inline `default` and [[dialplan.route]], not both",
                ));
            }
            dialplan_file(doc, base, &file, channels)?
        }
        None => build_dialplan(doc, &["dialplan"], raw.default, raw.route, channels)?,
    };
    if dialplan.routes().is_empty() && dialplan.default_channel().is_none() {
        let first = channels.keys().next().map_or("default", String::as_str);
        return Err(doc.err(
            header,
            Key::table(&["dialplan"]),
            format!(
                "no route and no default channel: every call would get 404; \
                 add e.g. default = {first:?}"
            ),
        ));
    }
    Ok(dialplan)
}

/// `[dialplan] file`: the same keys at the top level of their own file, whose errors name it.
fn dialplan_file(
    doc: &Doc,
    base: &Path,
    file: &Spanned<String>,
    channels: &BTreeMap<String, ChannelConfig>,
) -> Result<Dialplan, ConfigError> {
    let path = base.join(file.get_ref());
    let text = std::fs::read_to_string(&path).map_err(|e| {
        doc.err(
            Some(file.span()),
            Key::table(&["dialplan"]).leaf("file"),
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let fdoc = Doc {
        path: &path,
        text: &text,
    };
    let raw: RawDialplanFile = fdoc.deserialize()?;
    build_dialplan(&fdoc, &[], raw.default, raw.route, channels)
}

/// `prefix` is where the dialplan keys live: `["dialplan"]` inline, `[]` in a dialplan file.
fn build_dialplan(
    doc: &Doc,
    prefix: &[&str],
    default: Option<Spanned<String>>,
    routes: Vec<Spanned<RawRoute>>,
    channels: &BTreeMap<String, ChannelConfig>,
) -> Result<Dialplan, ConfigError> {
    let mut route_tables = prefix.to_vec();
    route_tables.push("route");
    let route_key = Key::array(&route_tables);
    let mut out = Vec::with_capacity(routes.len());
    // Where the first route that takes every call was written: routes after it never match.
    let mut catch_all_at: Option<String> = None;
    for raw in routes {
        let origin = doc.origin(raw.span().start);
        let raw_route = raw.get_ref();
        let catches_all = only_star_user(raw_route);
        let route = route(doc, &route_key, raw, channels)?;
        if let Some(at) = &catch_all_at {
            tracing::warn!(route = %origin, earlier = %at,
                "route is never used: an earlier route matches every user");
        }
        if catches_all && catch_all_at.is_none() {
            catch_all_at = Some(origin);
        }
        out.push(route);
    }
    if let Some(d) = &default {
        doc.checked(d, Key::table(prefix).leaf("default"), |d| {
            known_channel(channels, d)
        })?;
    }
    Ok(Dialplan::new(out, default.map(Spanned::into_inner)))
}

/// One `[[route]]`: its channel exists, its patterns parse, and it matches on something.
fn route(
    doc: &Doc,
    key: &Key,
    raw: Spanned<RawRoute>,
    channels: &BTreeMap<String, ChannelConfig>,
) -> Result<Route, ConfigError> {
    let header = raw.span();
    let raw = raw.into_inner();
    let channel = doc.checked(&raw.channel, key.clone().leaf("channel"), |c| {
        known_channel(channels, c)
    })?;
    let mut route = Route::new(channel).origin(doc.origin(header.start));
    let pattern = |p: &Spanned<String>, leaf: &str| {
        doc.checked(p, key.clone().leaf(leaf), |p| {
            Pattern::parse(p).map_err(|e| e.to_string())
        })
    };
    if let Some(p) = &raw.user {
        route = route.user(pattern(p, "user")?);
    }
    if let Some(p) = &raw.to_user {
        route = route.to_user(pattern(p, "to_user")?);
    }
    if let Some(p) = &raw.from_user {
        route = route.from_user(pattern(p, "from_user")?);
    }
    if let Some(c) = &raw.source {
        let cidr = doc.checked(c, key.clone().leaf("source"), |c| {
            Cidr::parse(c).map_err(|e| e.to_string())
        })?;
        route = route.source(cidr);
    }
    if route.is_catch_all() {
        return Err(doc.err(
            Some(header),
            key.clone(),
            "a route needs at least one of user, to_user, from_user, source \
             (user = \"*\" catches every call)",
        ));
    }
    Ok(route)
}

/// `user = "*"` (or `"**"`) and nothing else: the route takes every call.
fn only_star_user(raw: &RawRoute) -> bool {
    raw.user
        .as_ref()
        .is_some_and(|u| u.get_ref().chars().all(|c| c == '*'))
        && raw.to_user.is_none()
        && raw.from_user.is_none()
        && raw.source.is_none()
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{err, load};

    #[test]
    fn route_to_undefined_channel_names_the_route_line() {
        let e = err(
            "[channels.default]\nmusic = \"demo\"\n[dialplan]\ndefault = \"default\"\n\
             [[dialplan.route]]\nuser = \"a\"\nchannel = \"default\"\n\
             [[dialplan.route]]\nuser = \"b\"\nchannel = \"jazz\"\n",
        );
        assert_eq!(
            e.to_string(),
            "/etc/mohd/mohd.toml:10:11: [[dialplan.route]] channel: \"jazz\": no such channel; defined: default"
        );
    }

    #[test]
    fn default_to_undefined_channel() {
        let e = err("[channels.default]\nmusic = \"demo\"\n[dialplan]\ndefault = \"jazz\"\n");
        assert_eq!((e.key(), e.line()), (Some("[dialplan] default"), Some(4)));
    }

    #[test]
    fn route_errors_name_the_key() {
        let base = "[channels.default]\nmusic = \"demo\"\n[[dialplan.route]]\n";
        let e = err(&format!("{base}user = \"\"\nchannel = \"default\"\n"));
        assert_eq!(
            (e.key(), e.line()),
            (Some("[[dialplan.route]] user"), Some(4))
        );
        let e = err(&format!(
            "{base}source = \"10.0.0.1/8\"\nchannel = \"default\"\n"
        ));
        assert_eq!(
            (e.key(), e.line()),
            (Some("[[dialplan.route]] source"), Some(4))
        );
        assert!(e.message().contains("did you mean \"10.0.0.0/8\""), "{e}");
        let e = err(&format!("{base}channel = \"default\"\n"));
        assert_eq!((e.key(), e.line()), (Some("[[dialplan.route]]"), Some(3)));
        assert!(e.message().contains("at least one of"), "{e}");
        let e = err(&format!("{base}user = \"a\"\n"));
        assert_eq!((e.key(), e.line()), (Some("[[dialplan.route]]"), Some(3)));
        assert_eq!(e.message(), "missing key `channel`");
        let e = err(&format!("{base}user = \"a\"\nchanel = \"default\"\n"));
        assert_eq!(
            (e.key(), e.line()),
            (Some("[[dialplan.route]] chanel"), Some(5))
        );
    }

    #[test]
    fn a_dialplan_that_routes_nothing_is_an_error() {
        // One channel and no [dialplan]: it is the default.
        let c = load("[channels.only]\nmusic = \"demo\"\n").unwrap();
        assert_eq!(c.dialplan.default_channel(), Some("only"));
        let e = err("[channels.default]\nmusic = \"demo\"\n[channels.b]\nmusic = \"demo\"\n");
        assert_eq!(e.key(), Some("[dialplan]"));
        let e = err("[channels.default]\nmusic = \"demo\"\n[dialplan]\n");
        assert_eq!(e.key(), Some("[dialplan]"));
        assert!(e.message().contains("default = \"default\""), "{e}");
    }
}
