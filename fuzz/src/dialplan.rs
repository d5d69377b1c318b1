//! Fuzz target `dialplan`: a `[dialplan]` table (the input's first part, up to a NUL byte)
//! under a fixed set of channels, read by `Config::from_str`, then asked to route requests
//! whose Request-URI, To and From users and source address come from the input's second part
//! (one per line: `ruri to from ip`), and each line's words as `Pattern`s and `Cidr`s.
//!
//! Never panics; a route always names a configured channel; with a default, every request is
//! routed.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use mohd::config::Config;
use mohd::dialplan::{Cidr, Pattern, RouteRequest};

const CHANNELS: &str = "[channels.a]\nmusic = \"demo\"\n[channels.b]\nmusic = \"demo\"\n\
                        [channels.sales]\nmusic = \"demo\"\n";

/// The target's body: panics when a check fails.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (table, requests) = text
        .split_once('\0')
        .unwrap_or((text, "100 100 pbx 192.0.2.1"));
    for line in requests.lines() {
        for word in line.split(' ') {
            if let Ok(p) = Pattern::parse(word) {
                let _ = p.matches(word);
                let _ = p.matches("");
            }
            if let Ok(c) = Cidr::parse(word) {
                let _ = c.contains(IpAddr::V4(Ipv4Addr::LOCALHOST));
            }
        }
    }
    let config_text = format!("{CHANNELS}[dialplan]\n{table}");
    let Ok(config) = Config::from_str(&config_text, Path::new("/nonexistent/mohd.toml")) else {
        return;
    };
    let dialplan = &config.dialplan;
    for line in requests.lines() {
        let mut words = line.split(' ');
        let mut user = || words.next().filter(|w| !w.is_empty());
        let (ruri_user, to_user, from_user) = (user(), user(), user());
        let source = user()
            .and_then(|w| w.parse().ok())
            .unwrap_or(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
        let req = RouteRequest {
            ruri_user,
            to_user,
            from_user,
            source,
        };
        match dialplan.route(&req) {
            Some(channel) => assert!(config.channels.contains_key(channel), "{channel}"),
            None => assert!(dialplan.default_channel().is_none(), "{req:?}"),
        }
    }
    let _ = dialplan.describe();
}
