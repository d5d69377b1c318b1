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

#[cfg(test)]
mod tests {
    use super::super::test_util::{MINIMAL, err, load};
    use crate::sip::endpoint::AccessPolicy;

    #[test]
    fn access_is_read_into_the_endpoint_policy() {
        assert_eq!(load(MINIMAL).unwrap().access, AccessPolicy::default());
        let c = load(&format!(
            "[access]\nallow = [\"10.0.0.0/8\", \"192.0.2.1\"]\naction = \"drop\"\n\
             rate_per_source = 0\nburst = 5\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(c.access.allow.len(), 2);
        assert!(!c.access.reject_denied);
        assert_eq!((c.access.rate_per_source, c.access.burst), (0, 5));
        let c = load(&format!("[access]\nallow = \"10.0.0.0/8\"\n{MINIMAL}")).unwrap();
        assert_eq!(c.access.allow.len(), 1);
    }

    #[test]
    fn access_errors_name_key_and_value() {
        let e = err(&format!("[access]\nburst = 5000000000\n{MINIMAL}"));
        assert_eq!(
            e.to_string(),
            "/etc/mohd/mohd.toml:2:9: [access] burst: 5000000000: must be within \
             0..=1000000 (0: unlimited)"
        );
        let e = err(&format!("[access]\naction = \"x\"\n{MINIMAL}"));
        assert_eq!(
            e.message(),
            "\"x\": expected \"reject\" (answer 403) or \"drop\""
        );
        let e = err(&format!("[access]\nallow = [\"10.0.0.1/8\"]\n{MINIMAL}"));
        assert_eq!((e.key(), e.column()), (Some("[access] allow"), Some(10)));
        assert!(e.message().contains("did you mean \"10.0.0.0/8\""), "{e}");
    }
}
