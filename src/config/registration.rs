//! `[[registration]]`: PBXs mohd registers with as an extension.

use std::time::Duration;

use toml::Spanned;

use super::ConfigError;
use super::doc::{Doc, Key, value_msg};
use super::raw::RawRegistration;
use super::sip::header_safe;
use crate::sip::endpoint::Transport;
use crate::sip::msg::SipUri;
use crate::sip::register::RegistrationConfig;

const DEFAULT_REGISTER_EXPIRES: u64 = 300;
/// Below this a registrar refuses (423) or the refreshes flood it; above a day a dead mohd
/// stays bound for too long.
const REGISTER_EXPIRES_RANGE: std::ops::RangeInclusive<u64> = 10..=86_400;

fn key(leaf: &str) -> Key {
    Key::array(&["registration"]).leaf(leaf)
}

pub(super) fn registrations_config(
    doc: &Doc,
    raw: Vec<Spanned<RawRegistration>>,
) -> Result<Vec<RegistrationConfig>, ConfigError> {
    let mut out: Vec<RegistrationConfig> = Vec::new();
    for entry in raw {
        let r = entry.into_inner();
        let user = r.user.clone();
        let config = registration(doc, r)?;
        if out
            .iter()
            .any(|o| o.registrar == config.registrar && o.user == config.user)
        {
            return Err(doc.err(
                Some(user.span()),
                key("user"),
                value_msg(&user, "registered twice with the same registrar"),
            ));
        }
        out.push(config);
    }
    Ok(out)
}

/// One `[[registration]]` table, checked in the order its keys are usually written.
fn registration(doc: &Doc, r: RawRegistration) -> Result<RegistrationConfig, ConfigError> {
    let sips = doc.checked(&r.registrar, key("registrar"), registrar_is_sips)?;
    identity(doc, &r)?;
    let expires = doc
        .int_within(
            r.expires,
            key("expires"),
            REGISTER_EXPIRES_RANGE,
            " seconds",
        )?
        .unwrap_or(DEFAULT_REGISTER_EXPIRES);
    // TCP and TLS need the shell's connections; until registration is wired to them,
    // refuse rather than silently send over UDP.
    let transport = match &r.transport {
        None => Transport::Udp,
        Some(t) => doc.checked(t, key("transport"), registration_transport)?,
    };
    if sips {
        return Err(doc.err(
            Some(r.registrar.span()),
            key("registrar"),
            value_msg(
                &r.registrar,
                "sips: (TLS) is not supported for registration yet",
            ),
        ));
    }
    Ok(RegistrationConfig {
        registrar: r.registrar.get_ref().trim().to_owned(),
        user: r.user.into_inner(),
        auth_user: r.auth_user.map(Spanned::into_inner),
        password: r.password.into_inner(),
        domain: r.domain.map(Spanned::into_inner),
        realm: r.realm.map(Spanned::into_inner),
        expires: Duration::from_secs(expires),
        contact_user: r.contact_user.map(Spanned::into_inner),
        transport,
    })
}

/// A registrar is `sip:HOST[:PORT]` (or `sips:`, refused later); whether it is `sips:`.
fn registrar_is_sips(registrar: &str) -> Result<bool, String> {
    match SipUri::parse(registrar) {
        None => Err(format!(
            "not a SIP URI; write e.g. \"sip:{}\"",
            registrar.trim()
        )),
        Some(u) if u.user.is_some() => Err(
            "the registrar URI names the server, not a user: write \"sip:HOST[:PORT]\" \
             and set `user`"
                .into(),
        ),
        Some(u) => Ok(u.scheme == "sips"),
    }
}

/// `user`, `auth_user`, `contact_user`, `password`, `domain`, `realm`: what goes into the
/// REGISTER's URIs and headers.
fn identity(doc: &Doc, r: &RawRegistration) -> Result<(), ConfigError> {
    doc.checked(&r.user, key("user"), uri_user)?;
    if let Some(u) = &r.auth_user {
        doc.checked(u, key("auth_user"), |v| header_safe(v, "auth_user"))?;
    }
    if let Some(u) = &r.contact_user {
        doc.checked(u, key("contact_user"), uri_user)?;
    }
    if r.password.get_ref().is_empty() {
        return Err(doc.err(
            Some(r.password.span()),
            key("password"),
            "must not be empty",
        ));
    }
    if let Some(d) = &r.domain {
        doc.checked(d, key("domain"), domain)?;
    }
    if let Some(realm) = &r.realm {
        doc.checked(realm, key("realm"), |v| header_safe(v, "realm"))?;
    }
    Ok(())
}

/// A user part of a SIP URI as we write it unescaped.
fn uri_user(s: &str) -> Result<(), String> {
    header_safe(s, "a user name")?;
    if s.contains('@') {
        return Err("write the user without \"@domain\" (set `domain` for the domain)".into());
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.!~*'()&=+$,;?/%".contains(&b))
    {
        return Err("a SIP user part is letters, digits and -_.!~*'()&=+$,;?/%".into());
    }
    Ok(())
}

/// A host for the address of record: a name or an IP address, without port or parameters.
fn domain(d: &str) -> Result<(), String> {
    let ok =
        SipUri::parse(&format!("sip:{d}")).is_some_and(|u| u.port.is_none() && u.params.is_empty());
    if ok {
        Ok(())
    } else {
        Err("not a domain or IP address".into())
    }
}

fn registration_transport(t: &str) -> Result<Transport, String> {
    match t.to_ascii_lowercase().as_str() {
        "udp" => Ok(Transport::Udp),
        "tcp" | "tls" => Err("not supported for registration yet: only \"udp\"".into()),
        _ => Err("expected \"udp\"".into()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::test_util::{MINIMAL, err, load};
    use crate::sip::endpoint::Transport;

    const REG: &str = "[[registration]]\nregistrar = \" sip:pbx.example:5060 \"\nuser = \"moh\"\n\
                       password = \"p\"\n";

    #[test]
    fn a_registration_with_defaults() {
        let c = load(&format!("{REG}{MINIMAL}")).unwrap();
        let [r] = &c.registrations[..] else {
            panic!("{:?}", c.registrations);
        };
        assert_eq!(r.registrar, "sip:pbx.example:5060");
        assert_eq!((r.user.as_str(), r.password.as_str()), ("moh", "p"));
        assert_eq!(r.expires, Duration::from_secs(300));
        assert_eq!(r.transport, Transport::Udp);
        assert_eq!((&r.auth_user, &r.domain, &r.realm), (&None, &None, &None));
    }

    #[test]
    fn registration_errors_name_key_and_value() {
        for (extra, key, want) in [
            (
                "expires = 5",
                "expires",
                "5: must be within 10..=86400 seconds",
            ),
            (
                "transport = \"tcp\"",
                "transport",
                "\"tcp\": not supported for registration yet: only \"udp\"",
            ),
            (
                "domain = \"a:5\"",
                "domain",
                "\"a:5\": not a domain or IP address",
            ),
            (
                "contact_user = \"a@b\"",
                "contact_user",
                "\"a@b\": write the user without \"@domain\" (set `domain` for the domain)",
            ),
            ("realm = \"\"", "realm", "\"\": realm must not be empty"),
        ] {
            let e = err(&format!("{REG}{extra}\n{MINIMAL}"));
            let key = format!("[[registration]] {key}");
            assert_eq!((e.key(), e.line()), (Some(key.as_str()), Some(5)));
            assert_eq!(e.message(), want);
        }
        let e = err(&format!("{REG}{REG}{MINIMAL}"));
        assert_eq!(
            (e.key(), e.line()),
            (Some("[[registration]] user"), Some(7))
        );
        assert!(e.message().contains("registered twice"), "{e}");
        for (registrar, want) in [
            ("sips:pbx", "sips: (TLS) is not supported"),
            ("sip:u@pbx", "names the server, not a user"),
            ("pbx", "not a SIP URI; write e.g. \"sip:pbx\""),
        ] {
            let e = err(&format!(
                "[[registration]]\nregistrar = \"{registrar}\"\nuser = \"moh\"\n\
                 password = \"p\"\n{MINIMAL}"
            ));
            assert_eq!(e.key(), Some("[[registration]] registrar"));
            assert!(e.message().contains(want), "{e}");
        }
    }
}
