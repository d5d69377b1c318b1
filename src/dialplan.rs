//! The dialplan **(pure)**: which channel an incoming call hears.
//!
//! Owns the routing decision only: an ordered list of routes (first match wins) and an optional
//! fallback channel. A route matches on the Request-URI user and, optionally, the To user, the
//! From user and the source address (CIDR); every key a route sets must match. No route and no
//! fallback means `None`, and the caller answers 404.
//!
//! The glob and CIDR matchers are written by hand: the only wildcard is `*`, and a CIDR test is a
//! mask and a compare, so a crate would cost more (build time, API surface) than it saves.
//! Loading, spans and error messages live in `config`; this module never sees a file.

use std::fmt;
use std::net::IpAddr;

/// Request → channel: ordered routes, first match wins, then the fallback.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dialplan {
    routes: Vec<Route>,
    default: Option<String>,
}

/// What the dialplan may look at in an incoming INVITE.
#[derive(Debug, Clone, Copy)]
pub struct RouteRequest<'a> {
    /// User part of the Request-URI (`None` for `sip:host`).
    pub ruri_user: Option<&'a str>,
    /// User part of the To URI.
    pub to_user: Option<&'a str>,
    /// User part of the From URI.
    pub from_user: Option<&'a str>,
    /// Address the request came from.
    pub source: IpAddr,
}

/// One dialplan rule: every key that is set must match.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    user: Option<Pattern>,
    to_user: Option<Pattern>,
    from_user: Option<Pattern>,
    source: Option<Cidr>,
    channel: String,
    origin: Option<String>,
}

impl Route {
    /// A route to `channel` that matches every request until match keys are added.
    pub fn new(channel: impl Into<String>) -> Route {
        Route {
            user: None,
            to_user: None,
            from_user: None,
            source: None,
            channel: channel.into(),
            origin: None,
        }
    }

    /// Match the Request-URI user.
    #[must_use]
    pub fn user(mut self, pattern: Pattern) -> Route {
        self.user = Some(pattern);
        self
    }

    /// Match the To user.
    #[must_use]
    pub fn to_user(mut self, pattern: Pattern) -> Route {
        self.to_user = Some(pattern);
        self
    }

    /// Match the From user.
    #[must_use]
    pub fn from_user(mut self, pattern: Pattern) -> Route {
        self.from_user = Some(pattern);
        self
    }

    /// Match the source address.
    #[must_use]
    pub fn source(mut self, cidr: Cidr) -> Route {
        self.source = Some(cidr);
        self
    }

    /// Where the route was written (e.g. `mohd.toml:23`), shown by [`Dialplan::describe`].
    #[must_use]
    pub fn origin(mut self, origin: impl Into<String>) -> Route {
        self.origin = Some(origin.into());
        self
    }

    /// The channel this route sends calls to.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// True if the route sets no match key at all (it would catch every call).
    pub fn is_catch_all(&self) -> bool {
        self.user.is_none()
            && self.to_user.is_none()
            && self.from_user.is_none()
            && self.source.is_none()
    }

    fn matches(&self, req: &RouteRequest) -> bool {
        // A missing user part is matched as "": only "*" (or a bare-star glob) takes it.
        let user_ok = |p: &Option<Pattern>, v: Option<&str>| {
            p.as_ref().is_none_or(|p| p.matches(v.unwrap_or("")))
        };
        user_ok(&self.user, req.ruri_user)
            && user_ok(&self.to_user, req.to_user)
            && user_ok(&self.from_user, req.from_user)
            && self.source.as_ref().is_none_or(|c| c.contains(req.source))
    }

    fn describe(&self) -> String {
        format!("{} -> channel {:?}", self.describe_match(), self.channel)
    }

    /// What the route matches, e.g. `user = "8*", source = "10.0.0.0/8"`, or `every call`.
    pub fn describe_match(&self) -> String {
        let mut keys = Vec::new();
        if let Some(p) = &self.user {
            keys.push(format!("user = {:?}", p.as_str()));
        }
        if let Some(p) = &self.to_user {
            keys.push(format!("to_user = {:?}", p.as_str()));
        }
        if let Some(p) = &self.from_user {
            keys.push(format!("from_user = {:?}", p.as_str()));
        }
        if let Some(c) = &self.source {
            keys.push(format!("source = \"{c}\""));
        }
        if keys.is_empty() {
            "every call".to_owned()
        } else {
            keys.join(", ")
        }
    }
}

impl Dialplan {
    /// A dialplan from routes (tried in order) and an optional fallback channel.
    pub fn new(routes: Vec<Route>, default: Option<String>) -> Dialplan {
        Dialplan { routes, default }
    }

    /// Routes nothing but sends every call to `channel`.
    pub fn with_default(channel: impl Into<String>) -> Dialplan {
        Dialplan {
            routes: Vec::new(),
            default: Some(channel.into()),
        }
    }

    /// The channel for this request: the first matching route, else the fallback, else `None`
    /// (the caller answers 404 Not Found).
    pub fn route(&self, req: &RouteRequest) -> Option<&str> {
        self.routes
            .iter()
            .find(|r| r.matches(req))
            .map(|r| r.channel.as_str())
            .or(self.default.as_deref())
    }

    /// The routes, in evaluation order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The fallback channel, if any.
    pub fn default_channel(&self) -> Option<&str> {
        self.default.as_deref()
    }

    /// One human-readable line per rule, in evaluation order, for `mohd check`.
    pub fn describe(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| match &r.origin {
                Some(o) => format!("route {} ({o}): {}", i + 1, r.describe()),
                None => format!("route {}: {}", i + 1, r.describe()),
            })
            .collect();
        lines.push(match &self.default {
            Some(d) => format!("otherwise -> channel {d:?}"),
            None => "otherwise -> 404 Not Found (no default channel)".to_owned(),
        });
        lines
    }

    /// Every channel the dialplan can send a call to, each once, in order of first mention
    /// (routes first, then the fallback).
    pub fn channels(&self) -> impl Iterator<Item = &str> {
        let mut seen: Vec<&str> = Vec::new();
        let all = self
            .routes
            .iter()
            .map(|r| r.channel.as_str())
            .chain(self.default.as_deref());
        for c in all {
            if !seen.contains(&c) {
                seen.push(c);
            }
        }
        seen.into_iter()
    }
}

/// A user-part pattern: exact text, or a glob where `*` matches any run of characters
/// (including none). `\*` is a literal star (feature codes such as `*98`), `\\` a backslash.
/// Matching is case-sensitive, as RFC 3261 §19.1.4 compares the user part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    /// Literal pieces between stars.
    parts: Vec<String>,
    /// The pattern has no star: `parts` holds exactly one piece, compared whole.
    exact: bool,
    starts_with_star: bool,
    ends_with_star: bool,
}

/// Why a pattern or CIDR was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MatchError {
    /// The pattern is the empty string.
    #[error("the pattern is empty (use \"*\" to match any user)")]
    EmptyPattern,
    /// A backslash not followed by `*` or `\`.
    #[error("'\\' must be followed by '*' or '\\' (write \"\\\\*\" for a literal star)")]
    BadEscape,
    /// Not an IP address or `ADDRESS/PREFIX`.
    #[error("expected an IP address or a CIDR block like \"10.0.0.0/8\"")]
    BadCidr,
    /// The prefix length is longer than the address.
    #[error("the prefix length must be at most {max}")]
    PrefixTooLong {
        /// 32 for IPv4, 128 for IPv6.
        max: u8,
    },
    /// Bits set after the prefix: probably a typo for the network address.
    #[error("host bits are set after the prefix: did you mean \"{network}\"?")]
    HostBitsSet {
        /// The network address with the host bits cleared.
        network: String,
    },
}

impl Pattern {
    /// Parses `text`: exact unless it contains an unescaped `*`.
    pub fn parse(text: &str) -> Result<Pattern, MatchError> {
        if text.is_empty() {
            return Err(MatchError::EmptyPattern);
        }
        let mut parts = vec![String::new()];
        let mut stars = 0usize;
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            match c {
                '*' => {
                    stars += 1;
                    parts.push(String::new());
                }
                '\\' => match chars.next() {
                    Some(e @ ('*' | '\\')) => push_char(&mut parts, e),
                    _ => return Err(MatchError::BadEscape),
                },
                c => push_char(&mut parts, c),
            }
        }
        let starts_with_star = stars > 0 && parts.first().is_some_and(String::is_empty);
        let ends_with_star = stars > 0 && parts.last().is_some_and(String::is_empty);
        // Empty pieces (from "**", or around the ends) constrain nothing.
        parts.retain(|p| !p.is_empty());
        Ok(Pattern {
            text: text.to_owned(),
            exact: stars == 0,
            parts,
            starts_with_star,
            ends_with_star,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True if `user` matches.
    pub fn matches(&self, user: &str) -> bool {
        if self.exact {
            return self.parts.first().is_some_and(|p| p == user);
        }
        let mut rest = user;
        let n = self.parts.len();
        for (i, part) in self.parts.iter().enumerate() {
            let last = i + 1 == n;
            if i == 0 && !self.starts_with_star {
                match rest.strip_prefix(part.as_str()) {
                    Some(r) => rest = r,
                    None => return false,
                }
            } else if last && !self.ends_with_star {
                // Checked on what the earlier pieces left, so "a*a" does not match "a".
                return rest.ends_with(part.as_str());
            } else {
                // Taking the leftmost occurrence of each middle piece is optimal: it leaves
                // the most text for the pieces after it.
                match rest.find(part.as_str()) {
                    Some(at) => rest = &rest[at + part.len()..],
                    None => return false,
                }
            }
        }
        // Pieces all found; a trailing star takes the rest, otherwise nothing may remain.
        self.ends_with_star || rest.is_empty()
    }
}

fn push_char(parts: &mut Vec<String>, c: char) {
    match parts.last_mut() {
        Some(p) => p.push(c),
        None => parts.push(c.to_string()),
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// An address block such as `10.0.0.0/8` or `2001:db8::/32`; a bare address is a single host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDRESS` or `ADDRESS/PREFIX`. Host bits after the prefix are an error: they are
    /// nearly always a typo, and silently masking them would widen or move the block.
    pub fn parse(text: &str) -> Result<Cidr, MatchError> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = addr.parse().map_err(|_| MatchError::BadCidr)?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p
                .parse::<u8>()
                .map_err(|_| MatchError::PrefixTooLong { max })?,
            Some(_) => return Err(MatchError::BadCidr),
        };
        if prefix > max {
            return Err(MatchError::PrefixTooLong { max });
        }
        let masked = mask(network, prefix);
        if masked != network {
            return Err(MatchError::HostBitsSet {
                network: format!("{masked}/{prefix}"),
            });
        }
        Ok(Cidr { network, prefix })
    }

    /// True if `addr` is inside the block. IPv4-mapped IPv6 addresses (what a dual-stack
    /// socket reports for IPv4 peers) count as their IPv4 address.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        addr.is_ipv4() == self.network.is_ipv4() && mask(addr, self.prefix) == self.network
    }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const LAN: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 20));

    fn req(user: Option<&str>) -> RouteRequest<'_> {
        RouteRequest {
            ruri_user: user,
            to_user: None,
            from_user: None,
            source: LAN,
        }
    }

    fn pat(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }

    fn plan() -> Dialplan {
        Dialplan::new(
            vec![
                Route::new("jazz").user(pat("moh-jazz")),
                Route::new("classical").user(pat("moh-*")),
                Route::new("star").user(pat("\\*98")),
            ],
            Some("default".into()),
        )
    }

    #[test]
    fn exact_match_wins_before_a_later_glob() {
        assert_eq!(plan().route(&req(Some("moh-jazz"))), Some("jazz"));
    }

    #[test]
    fn exact_match_is_case_sensitive() {
        assert_eq!(plan().route(&req(Some("MOH-JAZZ"))), Some("default"));
    }

    #[test]
    fn glob_matches_by_prefix() {
        assert_eq!(plan().route(&req(Some("moh-rock"))), Some("classical"));
        assert_eq!(plan().route(&req(Some("moh-"))), Some("classical"));
    }

    #[test]
    fn escaped_star_is_literal() {
        assert_eq!(plan().route(&req(Some("*98"))), Some("star"));
        assert_eq!(plan().route(&req(Some("598"))), Some("default"));
    }

    #[test]
    fn unmatched_falls_back_to_default() {
        assert_eq!(plan().route(&req(Some("1000"))), Some("default"));
        assert_eq!(plan().route(&req(None)), Some("default"));
    }

    #[test]
    fn unmatched_without_default_is_none() {
        let p = Dialplan::new(vec![Route::new("jazz").user(pat("moh-jazz"))], None);
        assert_eq!(p.route(&req(Some("other"))), None);
        assert_eq!(p.route(&req(None)), None);
        assert_eq!(Dialplan::default().route(&req(Some("x"))), None);
    }

    #[test]
    fn wildcard_matches_everything_including_no_user() {
        let p = Dialplan::new(vec![Route::new("all").user(pat("*"))], None);
        assert_eq!(p.route(&req(Some("anything"))), Some("all"));
        assert_eq!(p.route(&req(None)), Some("all"));
    }

    #[test]
    fn first_match_wins() {
        let p = Dialplan::new(
            vec![
                Route::new("a").user(pat("*")),
                Route::new("b").user(pat("x")),
            ],
            None,
        );
        assert_eq!(p.route(&req(Some("x"))), Some("a"));
    }

    #[test]
    fn glob_table() {
        let cases = [
            ("moh-*", "moh-jazz", true),
            ("moh-*", "xmoh-jazz", false),
            ("*-jazz", "moh-jazz", true),
            ("*-jazz", "moh-jazzy", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "acb", false),
            ("a*a", "a", false),
            ("a*a", "aa", true),
            ("*ab*", "xaby", true),
            ("*ab*", "xay", false),
            ("**", "", true),
            ("x", "x", true),
            ("x", "xx", false),
            ("7*", "7", true),
            ("\\\\*", "\\abc", true),
            ("ü*", "über", true),
        ];
        for (p, s, want) in cases {
            assert_eq!(pat(p).matches(s), want, "{p:?} vs {s:?}");
        }
    }

    #[test]
    fn bad_patterns_are_rejected() {
        assert_eq!(Pattern::parse(""), Err(MatchError::EmptyPattern));
        assert_eq!(Pattern::parse("a\\b"), Err(MatchError::BadEscape));
        assert_eq!(Pattern::parse("a\\"), Err(MatchError::BadEscape));
    }

    #[test]
    fn all_keys_of_a_route_must_match() {
        let p = Dialplan::new(
            vec![
                Route::new("vip")
                    .user(pat("moh"))
                    .from_user(pat("1*"))
                    .source(Cidr::parse("192.168.0.0/16").unwrap()),
                Route::new("to").to_user(pat("sales")),
            ],
            None,
        );
        let mut r = RouteRequest {
            ruri_user: Some("moh"),
            to_user: None,
            from_user: Some("100"),
            source: LAN,
        };
        assert_eq!(p.route(&r), Some("vip"));
        r.from_user = Some("200");
        assert_eq!(p.route(&r), None);
        r.from_user = Some("100");
        r.source = "10.0.0.1".parse().unwrap();
        assert_eq!(p.route(&r), None);
        r.to_user = Some("sales");
        assert_eq!(p.route(&r), Some("to"));
    }

    #[test]
    fn cidr_contains() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.255.1.2".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        // Dual-stack sockets report IPv4 peers as ::ffff:a.b.c.d.
        assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!c.contains("2001:db8::1".parse().unwrap()));
        let any = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(any.contains("203.0.113.9".parse().unwrap()));
        let host = Cidr::parse("192.0.2.7").unwrap();
        assert!(host.contains("192.0.2.7".parse().unwrap()));
        assert!(!host.contains("192.0.2.8".parse().unwrap()));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!v6.contains("2001:db9::5".parse().unwrap()));
    }

    #[test]
    fn bad_cidrs_are_rejected() {
        assert_eq!(
            Cidr::parse("10.0.0.0/33"),
            Err(MatchError::PrefixTooLong { max: 32 })
        );
        assert_eq!(
            Cidr::parse("10.0.0.0/999"),
            Err(MatchError::PrefixTooLong { max: 32 })
        );
        assert_eq!(Cidr::parse("10.0.0.0/"), Err(MatchError::BadCidr));
        assert_eq!(Cidr::parse("10.0.0.0/-1"), Err(MatchError::BadCidr));
        assert_eq!(Cidr::parse("pbx.example.com"), Err(MatchError::BadCidr));
        assert_eq!(
            Cidr::parse("10.0.0.1/8"),
            Err(MatchError::HostBitsSet {
                network: "10.0.0.0/8".into()
            })
        );
    }

    #[test]
    fn channels_are_distinct_and_include_the_default() {
        let p = Dialplan::new(
            vec![
                Route::new("jazz").user(pat("a")),
                Route::new("rock").user(pat("b")),
                Route::new("jazz").user(pat("c")),
            ],
            Some("rock".into()),
        );
        assert_eq!(p.channels().collect::<Vec<_>>(), ["jazz", "rock"]);
    }

    #[test]
    fn describe_lists_routes_then_fallback() {
        let p = Dialplan::new(
            vec![Route::new("jazz").user(pat("moh-*")).origin("mohd.toml:12")],
            None,
        );
        assert_eq!(
            p.describe(),
            [
                "route 1 (mohd.toml:12): user = \"moh-*\" -> channel \"jazz\"",
                "otherwise -> 404 Not Found (no default channel)",
            ]
        );
        assert_eq!(
            Dialplan::with_default("default").describe(),
            ["otherwise -> channel \"default\""]
        );
    }
}
