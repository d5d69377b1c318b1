//! `[access]`: which sources may send SIP, what the others get, and the per-source rate
//! limit; read straight into the endpoint's [`AccessPolicy`].

use toml::Spanned;

use super::ConfigError;
use super::doc::{Doc, Key};
use super::raw::{OneOrMany, RawAccess};
use crate::dialplan::Cidr;
use crate::sip::endpoint::AccessPolicy;

pub(super) fn access_config(
    doc: &Doc,
    raw: Option<Spanned<RawAccess>>,
) -> Result<AccessPolicy, ConfigError> {
    let defaults = AccessPolicy::default();
    let Some(raw) = raw else {
        return Ok(defaults);
    };
    let raw = raw.into_inner();
    let key = |leaf| Key::table(&["access"]).leaf(leaf);
    let mut allow = Vec::new();
    for item in raw.allow.map(OneOrMany::into_items).unwrap_or_default() {
        allow.push(doc.checked(&item, key("allow"), |s| {
            Cidr::parse(s).map_err(|e| e.to_string())
        })?);
    }
    let reject_denied = match &raw.action {
        None => defaults.reject_denied,
        Some(a) => doc.checked(a, key("action"), |a| match a {
            "reject" => Ok(true),
            "drop" => Ok(false),
            _ => Err("expected \"reject\" (answer 403) or \"drop\"".to_owned()),
        })?,
    };
    // Datagrams per second; past a million the limit is no limit.
    let count = |v, name| doc.int_within(v, key(name), 0..=1_000_000, " (0: unlimited)");
    Ok(AccessPolicy {
        allow,
        reject_denied,
        rate_per_source: count(raw.rate_per_source, "rate_per_source")?
            .unwrap_or(defaults.rate_per_source),
        burst: count(raw.burst, "burst")?.unwrap_or(defaults.burst),
    })
}
