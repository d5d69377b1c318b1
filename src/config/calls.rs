//! `[calls]`: call limits and the watchdogs that end calls whose peer went away without a BYE.

use std::time::Duration;

use toml::Spanned;

use super::doc::{Doc, Key};
use super::raw::RawCalls;
use super::{CallsConfig, ConfigError};

pub(super) fn calls_config(
    doc: &Doc,
    raw: Option<Spanned<RawCalls>>,
) -> Result<CallsConfig, ConfigError> {
    let defaults = CallsConfig::default();
    let Some(raw) = raw else {
        return Ok(defaults);
    };
    let raw = raw.into_inner();
    let key = |leaf| Key::table(&["calls"]).leaf(leaf);
    // `0` turns a watchdog off: absent keeps the default, `Some(0)` is `None`.
    let seconds_or_off = |s: Option<u64>, default: Option<Duration>| match s {
        None => default,
        Some(0) => None,
        Some(s) => Some(Duration::from_secs(s)),
    };
    let int = |v, name, range, unit| doc.int_within::<u64>(v, key(name), range, unit);
    let max_duration = int(
        raw.max_duration_s,
        "max_duration_s",
        0..=30 * 86_400,
        " (0: no limit)",
    )?;
    let rtp_timeout = int(raw.rtp_timeout_s, "rtp_timeout_s", 0..=86_400, " (0: off)")?;
    let unreachable = int(
        raw.unreachable_timeout_s,
        "unreachable_timeout_s",
        1..=3600,
        "",
    )?;
    let max_calls = doc.int_within(raw.max_calls, key("max_calls"), 1..=100_000, "")?;
    // RFC 4028 asks for at least 90; smaller values are for tests.
    let min_se = int(
        raw.min_session_expires_s,
        "min_session_expires_s",
        1..=86_400,
        "",
    )?;
    Ok(CallsConfig {
        max_duration: seconds_or_off(max_duration, defaults.max_duration),
        rtp_timeout: seconds_or_off(rtp_timeout, defaults.rtp_timeout),
        unreachable_timeout: unreachable.map_or(defaults.unreachable_timeout, Duration::from_secs),
        max_calls: max_calls.unwrap_or(defaults.max_calls),
        min_session_expires: min_se.map_or(defaults.min_session_expires, Duration::from_secs),
    })
}
