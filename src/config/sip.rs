//! `[sip]`, `[sip.tls]` and `[sip.auth]`: listeners, identity, connection caps and the digest
//! credentials callers must present.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::doc::{Doc, Key, value_msg};
use super::raw::{OneOrMany, RawSip, RawSipAuth, RawUsers};
use super::{ConfigError, DEFAULT_USER_AGENT, Listen, SipAuthConfig, SipConfig};
use crate::sip::endpoint::Transport;
use crate::sip::guard::{GuardConfig, OnBan};
use crate::sip::shell::StreamLimits;

/// Longer than the INVITE client transaction's Timer B (64 × T1 = 32 s), the PBX would give
/// up before we answer; 30 s leaves margin.
const MAX_ANSWER_DELAY_MS: u64 = 30_000;

fn key(leaf: &str) -> Key {
    Key::table(&["sip"]).leaf(leaf)
}

pub(super) fn sip_config(
    doc: &Doc,
    base: &Path,
    raw: Option<Spanned<RawSip>>,
) -> Result<SipConfig, ConfigError> {
    let Some(raw) = raw else {
        return Ok(SipConfig::default());
    };
    let defaults = SipConfig::default();
    let raw = raw.into_inner();
    let (listen, tls_listener) = match raw.listen {
        None => (defaults.listen, None),
        Some(list) => listeners(doc, list)?,
    };
    let user_agent = user_agent(doc, raw.user_agent)?;
    let answer_delay = doc
        .int_within(
            raw.answer_delay_ms,
            key("answer_delay_ms"),
            0..=MAX_ANSWER_DELAY_MS,
            " ms (a PBX gives up after about 32 s)",
        )?
        .map_or(defaults.answer_delay, Duration::from_millis);
    let tls = match raw.tls {
        None => None,
        Some(t) => Some(super::paths::tls_config(
            doc,
            base,
            t,
            &["sip", "tls"],
            true,
        )?),
    };
    if let (Some(span), None) = (tls_listener, &tls) {
        return Err(doc.err(
            Some(span),
            key("listen"),
            "a tls listener needs [sip.tls] with certificate = \"cert.pem\" and key = \"key.pem\"",
        ));
    }
    let limits = defaults.stream_limits;
    let int = |v, name, range| doc.int_within(v, key(name), range, "");
    let stream_limits = StreamLimits {
        max_connections: int(raw.max_connections, "max_connections", 1..=1_000_000)?
            .unwrap_or(limits.max_connections),
        // Below 1 KiB not even an INVITE with SDP fits; above 65535 the parser refuses.
        max_message_bytes: int(raw.max_message_bytes, "max_message_bytes", 1024..=65_535)?
            .unwrap_or(limits.max_message_bytes),
        idle_timeout: doc
            .int_within(raw.idle_timeout_s, key("idle_timeout_s"), 1..=86_400, "")?
            .map_or(limits.idle_timeout, Duration::from_secs),
    };
    Ok(SipConfig {
        listen,
        user_agent,
        answer_delay,
        tls,
        stream_limits,
        auth: raw.auth.map(|a| sip_auth_config(doc, a)).transpose()?,
        drop_user_agents: match raw.drop_user_agents {
            None => defaults.drop_user_agents,
            Some(list) => drop_user_agents(doc, list)?,
        },
    })
}

/// `drop_user_agents`: substrings, matched case-insensitively; `[]` drops none.
fn drop_user_agents(
    doc: &Doc,
    list: Spanned<Vec<Spanned<String>>>,
) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::new();
    for item in list.into_inner() {
        if item.get_ref().trim().is_empty() {
            return Err(doc.err(
                Some(item.span()),
                key("drop_user_agents"),
                "an empty pattern would drop every request",
            ));
        }
        out.push(item.into_inner().to_ascii_lowercase());
    }
    Ok(out)
}

/// `listen`: at least one address, none twice; also where the first TLS listener is written,
/// since that one needs `[sip.tls]`.
fn listeners(
    doc: &Doc,
    list: Spanned<OneOrMany>,
) -> Result<(Vec<Listen>, Option<Range<usize>>), ConfigError> {
    let span = list.span();
    let mut tls_listener = None;
    let mut out: Vec<Listen> = Vec::new();
    for item in OneOrMany::into_items(list) {
        let addr = doc.checked(&item, key("listen"), parse_listen)?;
        if addr.transport == Transport::Tls {
            tls_listener.get_or_insert(item.span());
        }
        if out.contains(&addr) {
            return Err(doc.err(
                Some(item.span()),
                key("listen"),
                value_msg(&item, "listed twice"),
            ));
        }
        out.push(addr);
    }
    if out.is_empty() {
        return Err(doc.err(
            Some(span),
            key("listen"),
            "at least one address is needed, e.g. [\"udp:0.0.0.0:5060\"]",
        ));
    }
    Ok((out, tls_listener))
}

/// `"udp:IP:PORT"`, `"tcp:IP:PORT"` or `"tls:IP:PORT"`; IPv6 in brackets.
fn parse_listen(s: &str) -> Result<Listen, String> {
    const EXPECTED: &str = "expected \"udp:IP:PORT\", \"tcp:IP:PORT\" or \"tls:IP:PORT\", \
                            e.g. \"udp:0.0.0.0:5060\" or \"tls:[::]:5061\"";
    let Some((scheme, rest)) = s.split_once(':') else {
        return Err(EXPECTED.to_owned());
    };
    let transport = match scheme.to_ascii_lowercase().as_str() {
        "udp" => Transport::Udp,
        "tcp" => Transport::Tcp,
        "tls" => Transport::Tls,
        "ws" | "wss" => return Err(format!("{scheme} is not supported: udp, tcp or tls")),
        _ if s.parse::<SocketAddr>().is_ok() => {
            return Err(format!("the transport is missing: write \"udp:{s}\""));
        }
        _ => return Err(EXPECTED.to_owned()),
    };
    match rest.parse() {
        Ok(addr) => Ok(Listen { transport, addr }),
        Err(_) => Err(format!(
            "{rest:?} is not IP:PORT (a numeric address; IPv6 in brackets, \"[::]:5060\")"
        )),
    }
}

fn user_agent(doc: &Doc, raw: Option<Spanned<String>>) -> Result<String, ConfigError> {
    let Some(ua) = raw else {
        return Ok(DEFAULT_USER_AGENT.to_owned());
    };
    if ua.get_ref().trim().is_empty() {
        return Err(doc.err(Some(ua.span()), key("user_agent"), "must not be empty"));
    }
    // It goes into a SIP header verbatim: a CR or LF would start a new header.
    if ua.get_ref().chars().any(char::is_control) {
        return Err(doc.err(
            Some(ua.span()),
            key("user_agent"),
            "must not contain control characters (it is sent as a SIP header)",
        ));
    }
    Ok(ua.into_inner())
}

/// A value that goes into a SIP header or URI: not empty, no control characters.
pub(super) fn header_safe(v: &str, what: &str) -> Result<(), String> {
    if v.trim().is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if v.chars().any(char::is_control) {
        return Err(format!(
            "{what} must not contain control characters (it is sent in a SIP header)"
        ));
    }
    Ok(())
}

fn sip_auth_config(doc: &Doc, raw: Spanned<RawSipAuth>) -> Result<SipAuthConfig, ConfigError> {
    let raw = raw.into_inner();
    let key = |leaf: &str| Key::table(&["sip", "auth"]).leaf(leaf);
    doc.checked(&raw.realm, key("realm"), |r| header_safe(r, "realm"))?;
    let users_span = raw.users.span();
    let users = auth_users(doc, raw.users.into_inner(), &key("users"))?;
    if users.is_empty() {
        return Err(doc.err(
            Some(users_span),
            key("users"),
            "no user: add e.g. users = { pbx = \"a long secret\" }",
        ));
    }
    let defaults = GuardConfig::default();
    let secs = |v, leaf: &str, range, default: Duration| {
        let got: Option<u64> = doc.int_within(v, key(leaf), range, " s")?;
        Ok::<_, ConfigError>(got.map_or(default, Duration::from_secs))
    };
    let max_failures: Option<u32> = doc.int_within(
        raw.max_failures,
        key("max_failures"),
        0..=1000,
        " (0 turns the guessing limits off)",
    )?;
    let ban = secs(raw.ban_s, "ban_s", 1..=86_400, defaults.ban)?;
    let max_ban_span = raw.max_ban_s.as_ref().map(Spanned::span);
    let max_ban = secs(raw.max_ban_s, "max_ban_s", 1..=7 * 86_400, defaults.max_ban)?;
    if max_ban < ban {
        return Err(doc.err(
            max_ban_span,
            key("max_ban_s"),
            format!("must be at least ban_s ({} s)", ban.as_secs()),
        ));
    }
    let on_ban = match raw.on_ban {
        None => defaults.on_ban,
        Some(v) => doc.checked(&v, key("on_ban"), |s| match s {
            "drop" => Ok(OnBan::Drop),
            "403" => Ok(OnBan::Reject),
            _ => Err("expected \"drop\" (no answer) or \"403\"".to_owned()),
        })?,
    };
    let guard = GuardConfig {
        enabled: max_failures != Some(0),
        max_failures: max_failures.unwrap_or(defaults.max_failures),
        window: secs(raw.window_s, "window_s", 1..=86_400, defaults.window)?,
        ban,
        max_ban,
        on_ban,
        ..defaults
    };
    Ok(SipAuthConfig {
        realm: raw.realm.into_inner(),
        users,
        invite: raw.invite.map(Spanned::into_inner).unwrap_or(true),
        guard,
    })
}

/// `users`, in either form, as name → password: names header-safe and unique, passwords set.
fn auth_users(
    doc: &Doc,
    raw: RawUsers,
    key: &Key,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let pairs: Vec<(Spanned<String>, Spanned<String>)> = match raw {
        RawUsers::Table(pairs) => pairs,
        RawUsers::List(items) => items
            .into_iter()
            .map(|u| {
                let u = u.into_inner();
                (u.name, u.password)
            })
            .collect(),
    };
    let mut users = BTreeMap::new();
    for (name, password) in pairs {
        doc.checked(&name, key.clone(), |n| header_safe(n, "a user name"))?;
        if password.get_ref().is_empty() {
            return Err(doc.err(
                Some(password.span()),
                key.clone(),
                format!("{:?}: the password must not be empty", name.get_ref()),
            ));
        }
        if users
            .insert(name.get_ref().clone(), password.into_inner())
            .is_some()
        {
            return Err(doc.err(
                Some(name.span()),
                key.clone(),
                value_msg(&name, "listed twice"),
            ));
        }
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{MINIMAL, err, load};
    use super::super::{Listen, TlsConfig};
    use crate::sip::endpoint::Transport;
    use std::path::PathBuf;
    use std::time::Duration;

    #[test]
    fn listen_addresses() {
        let c = load(&format!(
            "[sip]\nlisten = [\"udp:127.0.0.1:5070\", \"udp:[::]:5060\"]\nuser_agent = \"moh/1\"\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(
            c.sip.listen,
            vec![
                Listen::udp("127.0.0.1:5070".parse().unwrap()),
                Listen::udp("[::]:5060".parse().unwrap())
            ]
        );
        assert_eq!(c.sip.user_agent, "moh/1");
        let cases = [
            ("\"0.0.0.0:5060\"", "write \"udp:0.0.0.0:5060\""),
            ("\"udp:0.0.0.0\"", "is not IP:PORT"),
            ("\"udp:::5060\"", "is not IP:PORT"),
            ("\"udp:pbx:5060\"", "is not IP:PORT"),
            ("\"ws:0.0.0.0:5060\"", "not supported"),
            ("\"tcp:0.0.0.0\"", "is not IP:PORT"),
            ("\"bogus\"", "expected \"udp:IP:PORT\""),
            ("\"tls:0.0.0.0:5061\"", "needs [sip.tls]"),
            ("\"udp:1.2.3.4:5060\", \"udp:1.2.3.4:5060\"", "listed twice"),
        ];
        for (list, want) in cases {
            let e = err(&format!("[sip]\nlisten = [{list}]\n{MINIMAL}"));
            assert_eq!(
                (e.key(), e.line()),
                (Some("[sip] listen"), Some(2)),
                "{list}"
            );
            assert!(e.message().contains(want), "{list}: {e}");
        }
        let c = load(&format!(
            "[sip]\nlisten = \"udp:127.0.0.1:5070\"\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(
            c.sip.listen,
            vec![Listen::udp("127.0.0.1:5070".parse().unwrap())]
        );
        let e = err(&format!(
            "[sip]\nlisten = \"tls:127.0.0.1:5070\"\n{MINIMAL}"
        ));
        assert_eq!((e.key(), e.column()), (Some("[sip] listen"), Some(10)));
        let e = err(&format!("[sip]\nlisten = []\n{MINIMAL}"));
        assert!(e.message().contains("at least one address"), "{e}");
        let c = load(&format!("[sip]\nanswer_delay_ms = 2500\n{MINIMAL}")).unwrap();
        assert_eq!(c.sip.answer_delay, Duration::from_millis(2500));
        for bad in ["-1", "30001", "1.5"] {
            let e = err(&format!("[sip]\nanswer_delay_ms = {bad}\n{MINIMAL}"));
            assert_eq!(
                (e.key(), e.line()),
                (Some("[sip] answer_delay_ms"), Some(2)),
                "{bad}"
            );
        }
        let e = err(&format!(
            "[sip]\nuser_agent = \"a\\r\\nX-Evil: 1\"\n{MINIMAL}"
        ));
        assert_eq!(e.key(), Some("[sip] user_agent"));
    }

    #[test]
    fn tcp_and_tls_listeners_with_certificate_and_caps() {
        let c = load(&format!(
            "[sip]\nlisten = [\"udp:0.0.0.0:5060\", \"tcp:0.0.0.0:5060\", \"tls:[::]:5061\"]\n\
             max_connections = 10\nmax_message_bytes = 4096\nidle_timeout_s = 2\n\
             [sip.tls]\ncertificate = \"tls/cert.pem\"\nkey = \"/abs/key.pem\"\n{MINIMAL}"
        ))
        .unwrap();
        let l = |t, a: &str| Listen {
            transport: t,
            addr: a.parse().unwrap(),
        };
        assert_eq!(
            c.sip.listen,
            vec![
                l(Transport::Udp, "0.0.0.0:5060"),
                l(Transport::Tcp, "0.0.0.0:5060"),
                l(Transport::Tls, "[::]:5061"),
            ]
        );
        assert_eq!(c.sip.listen[2].to_string(), "tls:[::]:5061");
        // Relative paths are relative to the config file, as music is.
        assert_eq!(
            c.sip.tls,
            Some(TlsConfig {
                certificate: PathBuf::from("/etc/mohd/tls/cert.pem"),
                key: PathBuf::from("/abs/key.pem"),
                client_ca: None,
                client_names: Vec::new(),
            })
        );
        assert_eq!(
            (
                c.sip.stream_limits.max_connections,
                c.sip.stream_limits.max_message_bytes,
                c.sip.stream_limits.idle_timeout
            ),
            (10, 4096, Duration::from_secs(2))
        );
    }

    #[test]
    fn mutual_tls_keys() {
        let c = load(&format!(
            "[sip.tls]\ncertificate = \"c.pem\"\nkey = \"k.pem\"\nclient_ca = \"pbx-ca.pem\"\n\
             client_names = [\"pbx1.example.com\", \"PBX2\"]\n{MINIMAL}"
        ))
        .unwrap();
        let tls = c.sip.tls.expect("tls");
        assert_eq!(tls.client_ca, Some(PathBuf::from("/etc/mohd/pbx-ca.pem")));
        assert_eq!(tls.client_names, ["pbx1.example.com", "PBX2"]);
        let e = err(&format!(
            "[sip.tls]\ncertificate = \"c.pem\"\nkey = \"k.pem\"\nclient_names = [\"a\"]\n{MINIMAL}"
        ));
        assert_eq!(
            (e.key(), e.line()),
            (Some("[sip.tls] client_names"), Some(4))
        );
        assert!(e.message().contains("client_ca"), "{e}");
        let e = err(&format!(
            "[web.tls]\ncertificate = \"c.pem\"\nkey = \"k.pem\"\nclient_ca = \"ca.pem\"\n{MINIMAL}"
        ));
        assert_eq!((e.key(), e.line()), (Some("[web.tls] client_ca"), Some(4)));
    }

    #[test]
    fn tls_without_certificate_or_key_names_what_is_missing() {
        let e = err(&format!(
            "[sip]\nlisten = \"tls:0.0.0.0:5061\"\n[sip.tls]\ncertificate = \"c.pem\"\n{MINIMAL}"
        ));
        assert_eq!((e.key(), e.line()), (Some("[sip.tls] key"), Some(3)));
        assert!(e.message().contains("private key"), "{e}");
        let e = err(&format!(
            "[sip]\nlisten = \"tls:0.0.0.0:5061\"\n[sip.tls]\nkey = \"k.pem\"\n{MINIMAL}"
        ));
        assert_eq!(e.key(), Some("[sip.tls] certificate"));
        let e = err(&format!(
            "[sip]\n[sip.tls]\ncertificate = \"c.pem\"\nkey = \"\"\n{MINIMAL}"
        ));
        assert_eq!((e.key(), e.line()), (Some("[sip.tls] key"), Some(4)));
        let e = err(&format!(
            "[sip.tls]\ncertificate = \"c.pem\"\nkey = \"k.pem\"\npassword = \"x\"\n{MINIMAL}"
        ));
        assert_eq!((e.key(), e.line()), (Some("[sip.tls] password"), Some(4)));
    }

    #[test]
    fn connection_caps_are_range_checked() {
        for (k, bad) in [
            ("max_connections", "0"),
            ("max_message_bytes", "100"),
            ("max_message_bytes", "70000"),
            ("idle_timeout_s", "0"),
            ("idle_timeout_s", "-5"),
        ] {
            let e = err(&format!("[sip]\n{k} = {bad}\n{MINIMAL}"));
            assert_eq!(
                (e.key(), e.line()),
                (Some(format!("[sip] {k}").as_str()), Some(2))
            );
            assert!(e.message().contains("must be within"), "{e}");
        }
    }

    #[test]
    fn auth_users_in_either_form() {
        for users in [
            "{ pbx = \"s1\", alice = \"s2\" }",
            "[{ name = \"pbx\", password = \"s1\" }, { name = \"alice\", password = \"s2\" }]",
        ] {
            let c = load(&format!(
                "[sip.auth]\nrealm = \"moh\"\nusers = {users}\n{MINIMAL}"
            ))
            .unwrap();
            let auth = c.sip.auth.unwrap();
            assert_eq!(auth.realm, "moh");
            assert!(auth.invite);
            assert_eq!(auth.users.len(), 2);
            assert_eq!(auth.users["pbx"], "s1");
            // The passwords stay out of debug prints (and so out of logs).
            assert!(!format!("{auth:?}").contains("s1"));
        }
    }

    #[test]
    fn auth_errors_name_key_and_user() {
        for (auth, want) in [
            (
                "realm = \"\"\nusers = { a = \"b\" }",
                "\"\": realm must not be empty",
            ),
            (
                "realm = \"r\"\nusers = {}",
                "no user: add e.g. users = { pbx = \"a long secret\" }",
            ),
            (
                "realm = \"r\"\nusers = { a = \"\" }",
                "\"a\": the password must not be empty",
            ),
            (
                "realm = \"r\"\nusers = [{ name = \"a\", password = \"x\" }, \
                 { name = \"a\", password = \"y\" }]",
                "\"a\": listed twice",
            ),
        ] {
            let e = err(&format!("[sip.auth]\n{auth}\n{MINIMAL}"));
            assert!(e.key().is_some_and(|k| k.starts_with("[sip.auth] ")), "{e}");
            assert_eq!(e.message(), want);
        }
    }

    #[test]
    fn guessing_limits_and_scanner_keys() {
        use crate::sip::guard::{GuardConfig, OnBan};
        let auth = "[sip.auth]\nrealm = \"moh\"\nusers = { pbx = \"s3cret\" }\n";
        let c = load(&format!("{auth}{MINIMAL}")).unwrap();
        assert_eq!(
            c.sip.auth.unwrap().guard,
            GuardConfig::default(),
            "on by default"
        );
        assert!(
            c.sip
                .drop_user_agents
                .iter()
                .any(|p| p == "friendly-scanner")
        );
        let c = load(&format!(
            "[sip]\ndrop_user_agents = [\"Evil-Scanner\"]\n{auth}max_failures = 3\nwindow_s = 10\n\
             ban_s = 5\nmax_ban_s = 50\non_ban = \"403\"\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(c.sip.drop_user_agents, ["evil-scanner"]);
        let g = c.sip.auth.unwrap().guard;
        assert_eq!(
            (
                g.enabled,
                g.max_failures,
                g.window,
                g.ban,
                g.max_ban,
                g.on_ban
            ),
            (
                true,
                3,
                Duration::from_secs(10),
                Duration::from_secs(5),
                Duration::from_secs(50),
                OnBan::Reject
            )
        );
        let c = load(&format!("{auth}max_failures = 0\n{MINIMAL}")).unwrap();
        assert!(!c.sip.auth.unwrap().guard.enabled);
        let c = load(&format!("[sip]\ndrop_user_agents = []\n{MINIMAL}")).unwrap();
        assert!(c.sip.drop_user_agents.is_empty());

        let e = err(&format!("{auth}on_ban = \"reject\"\n{MINIMAL}"));
        assert_eq!(
            (e.key(), e.line()),
            (Some("[sip.auth] on_ban"), Some(4)),
            "{e}"
        );
        let e = err(&format!("{auth}ban_s = 600\nmax_ban_s = 60\n{MINIMAL}"));
        assert_eq!(
            (e.key(), e.line()),
            (Some("[sip.auth] max_ban_s"), Some(5)),
            "{e}"
        );
        let e = err(&format!("{auth}window_s = 0\n{MINIMAL}"));
        assert_eq!(e.key(), Some("[sip.auth] window_s"), "{e}");
        let e = err(&format!("[sip]\ndrop_user_agents = [\" \"]\n{MINIMAL}"));
        assert_eq!(e.key(), Some("[sip] drop_user_agents"), "{e}");
    }
}
