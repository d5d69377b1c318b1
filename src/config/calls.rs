//! `[calls]`: call limits, the media budget admission control keeps within, the drain's
//! grace period, and the watchdogs that end calls whose peer went away without a BYE.

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
    let media_budget = doc.float_within(raw.media_budget, key("media_budget"), 0.1..=1.0, "")?;
    let min_idle_cpu = int(
        raw.min_idle_cpu,
        "min_idle_cpu",
        0..=90,
        " (percent; 0: off)",
    )?;
    let drain_grace = int(
        raw.drain_grace_s,
        "drain_grace_s",
        0..=86_400,
        " (0: hang up at once)",
    )?;
    Ok(CallsConfig {
        max_duration: seconds_or_off(max_duration, defaults.max_duration),
        rtp_timeout: seconds_or_off(rtp_timeout, defaults.rtp_timeout),
        unreachable_timeout: unreachable.map_or(defaults.unreachable_timeout, Duration::from_secs),
        max_calls: max_calls.unwrap_or(defaults.max_calls),
        min_session_expires: min_se.map_or(defaults.min_session_expires, Duration::from_secs),
        media_budget: media_budget.unwrap_or(defaults.media_budget),
        min_idle_cpu: match min_idle_cpu {
            None => defaults.min_idle_cpu,
            Some(0) => None,
            Some(percent) => Some(percent as f64 / 100.0),
        },
        drain_grace: drain_grace.map_or(defaults.drain_grace, Duration::from_secs),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::test_util::{MINIMAL, err, load};

    #[test]
    fn zero_turns_a_watchdog_off_and_seconds_become_durations() {
        let c = load(MINIMAL).unwrap();
        assert_eq!(c.calls.max_duration, Some(Duration::from_secs(4 * 3600)));
        assert_eq!(c.calls.rtp_timeout, None);
        assert_eq!(c.calls.media_budget, 0.7);
        assert_eq!(c.calls.min_idle_cpu, None);
        assert_eq!(c.calls.drain_grace, Duration::from_secs(300));
        let c = load(&format!(
            "[calls]\nmax_duration_s = 0\nrtp_timeout_s = 2\nunreachable_timeout_s = 3\n\
             max_calls = 7\nmin_session_expires_s = 90\nmedia_budget = 0.5\n\
             drain_grace_s = 0\nmin_idle_cpu = 30\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(c.calls.media_budget, 0.5);
        assert_eq!(c.calls.min_idle_cpu, Some(0.3));
        assert_eq!(c.calls.drain_grace, Duration::ZERO);
        assert_eq!(c.calls.max_duration, None);
        assert_eq!(c.calls.rtp_timeout, Some(Duration::from_secs(2)));
        assert_eq!(c.calls.unreachable_timeout, Duration::from_secs(3));
        assert_eq!(c.calls.max_calls, 7);
        assert_eq!(c.calls.min_session_expires, Duration::from_secs(90));
    }

    #[test]
    fn out_of_range_names_the_range_and_what_zero_means() {
        for (k, v, want) in [
            (
                "max_duration_s",
                "-1",
                "-1: must be within 0..=2592000 (0: no limit)",
            ),
            (
                "rtp_timeout_s",
                "86401",
                "86401: must be within 0..=86400 (0: off)",
            ),
            ("unreachable_timeout_s", "0", "0: must be within 1..=3600"),
            ("max_calls", "100001", "100001: must be within 1..=100000"),
            ("min_session_expires_s", "0", "0: must be within 1..=86400"),
            ("media_budget", "1.5", "1.5: must be within 0.1..=1.0"),
            (
                "min_idle_cpu",
                "91",
                "91: must be within 0..=90 (percent; 0: off)",
            ),
            (
                "drain_grace_s",
                "-1",
                "-1: must be within 0..=86400 (0: hang up at once)",
            ),
        ] {
            let e = err(&format!("[calls]\n{k} = {v}\n{MINIMAL}"));
            let key = format!("[calls] {k}");
            assert_eq!((e.key(), e.line()), (Some(key.as_str()), Some(2)));
            assert_eq!(e.message(), want);
        }
    }
}
