//! Guessing limits and security log lines for SIP, sans-IO: who is banned, for how long, and
//! which refusals are worth a log line.
//!
//! Owns three things, each with time passed in:
//! - [`Guard`]: failed digest authentications counted per source address and per user name, in
//!   the spirit of Kamailio's pike + htable ban lists. A source that fails `max_failures` times
//!   within `window` is banned for `ban`, doubled for each repeat up to `max_ban`; after a ban
//!   it is on probation, and its next failure within `window` bans it again at once. A user
//!   name that fails `max_failures` times (from any sources) is *guarded* for the same
//!   back-off: every source that then fails on it is banned at its first failure. Names are
//!   never refused outright, so an attacker guessing a PBX's password from one address cannot
//!   lock the PBX itself out (Asterisk's and fail2ban's lesson: lock-outs by name are a
//!   denial of service). A success clears its source's record.
//! - [`LogGate`]: repeated refusals from one source become one line per source per interval
//!   with a count, so a flood cannot fill the journal or hide the lines that matter.
//! - [`SecurityEvent`]: the one documented security log line (`mohd security: auth-failed
//!   source=… user=… reason=…`) that `examples/fail2ban/filter.d/mohd.conf` matches.
//!
//! Memory is bounded: both tables have a cap and evict the entry seen longest ago; the user
//! table only ever holds configured user names (an unknown name has no password to guess).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// What a banned source gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnBan {
    /// Nothing: the scanner cannot tell a ban from a dead address (the default).
    #[default]
    Drop,
    /// `403 Forbidden`.
    Reject,
}

/// `[sip.auth]`'s guessing limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardConfig {
    /// Off: count nothing, ban nobody.
    pub enabled: bool,
    pub max_failures: u32,
    pub window: Duration,
    /// The first ban; doubled for each repeat.
    pub ban: Duration,
    pub max_ban: Duration,
    pub on_ban: OnBan,
    /// Sources remembered at most (a flood of spoofed sources evicts the oldest).
    pub max_sources: usize,
    /// At most one summary line per source per this interval.
    pub log_interval: Duration,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            enabled: true,
            max_failures: 5,
            window: Duration::from_secs(60),
            ban: Duration::from_secs(60),
            max_ban: Duration::from_secs(3600),
            on_ban: OnBan::Drop,
            max_sources: 16_384,
            log_interval: Duration::from_secs(60),
        }
    }
}

/// Why an authentication failed, as the security log line spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureReason {
    BadPassword,
    UnknownUser,
    Malformed,
    WrongRealm,
    WrongUri,
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::BadPassword => "bad-password",
            FailureReason::UnknownUser => "unknown-user",
            FailureReason::Malformed => "malformed",
            FailureReason::WrongRealm => "wrong-realm",
            FailureReason::WrongUri => "wrong-uri",
        }
    }
}

/// What one failure led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Counted; the source may try again.
    Counted,
    /// The source is now banned for this long.
    Banned(Duration),
}

/// One key's record: failures in the current window, the ban and its repeats.
#[derive(Debug, Clone, Copy)]
struct Record {
    window_start: Instant,
    failures: u32,
    banned_until: Option<Instant>,
    /// Bans so far; the next one lasts `ban × 2^strikes`.
    strikes: u32,
    last_seen: Instant,
}

impl Record {
    fn new(now: Instant) -> Record {
        Record {
            window_start: now,
            failures: 0,
            banned_until: None,
            strikes: 0,
            last_seen: now,
        }
    }

    fn banned(&self, now: Instant) -> bool {
        self.banned_until.is_some_and(|until| now < until)
    }

    /// After a ban ended: the first failure within `window` of its end bans again.
    fn on_probation(&self, now: Instant, window: Duration) -> bool {
        self.banned_until
            .is_some_and(|until| now >= until && now.saturating_duration_since(until) < window)
    }

    /// Counts a failure; `Some(ban)` when it crosses the line. `at_once` bans at this failure.
    fn fail(&mut self, now: Instant, config: &GuardConfig, at_once: bool) -> Option<Duration> {
        self.last_seen = now;
        if self.banned(now) {
            return None;
        }
        let probation = self.on_probation(now, config.window);
        if let Some(until) = self.banned_until
            && !probation
            && now.saturating_duration_since(until) >= config.max_ban
        {
            // Clean for as long as the longest ban: forgiven.
            self.strikes = 0;
        }
        if now.saturating_duration_since(self.window_start) >= config.window {
            self.window_start = now;
            self.failures = 0;
        }
        self.failures += 1;
        if !(at_once || probation || self.failures >= config.max_failures.max(1)) {
            return None;
        }
        let factor = 1u32.checked_shl(self.strikes.min(31)).unwrap_or(u32::MAX);
        let ban = config.ban.saturating_mul(factor).min(config.max_ban);
        self.banned_until = Some(now + ban);
        self.strikes = self.strikes.saturating_add(1);
        self.failures = 0;
        self.window_start = now;
        Some(ban)
    }

    /// Whether the record still matters at `now` (otherwise it may be forgotten).
    fn live(&self, now: Instant, config: &GuardConfig) -> bool {
        let recent = |t: Instant, d: Duration| now.saturating_duration_since(t) < d;
        match self.banned_until {
            // Strikes are kept until forgiven.
            Some(until) => now < until || recent(until, config.max_ban.max(config.window)),
            None => recent(self.window_start, config.window),
        }
    }
}

/// A table of records with a cap; full, it forgets dead records, then the one seen longest
/// ago.
#[derive(Debug)]
struct Table<K> {
    records: HashMap<K, Record>,
    cap: usize,
}

impl<K: Hash + Eq + Clone> Table<K> {
    fn new(cap: usize) -> Self {
        Table {
            records: HashMap::new(),
            cap: cap.max(1),
        }
    }

    fn entry(&mut self, now: Instant, key: &K, config: &GuardConfig) -> &mut Record {
        if !self.records.contains_key(key) && self.records.len() >= self.cap {
            self.records.retain(|_, r| r.live(now, config));
            if self.records.len() >= self.cap {
                // O(cap), only when full of live records: a flood from many sources.
                let oldest = (self.records.iter())
                    .min_by_key(|(_, r)| r.last_seen)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    self.records.remove(&k);
                }
            }
        }
        self.records
            .entry(key.clone())
            .or_insert_with(|| Record::new(now))
    }
}

/// Failed authentications per source and per user name, and the bans they lead to.
#[derive(Debug)]
pub struct Guard {
    config: GuardConfig,
    sources: Table<IpAddr>,
    users: Table<String>,
}

impl Guard {
    /// `users`: the configured user names, the only names worth a record.
    pub fn new(config: GuardConfig, users: usize) -> Guard {
        Guard {
            sources: Table::new(config.max_sources),
            users: Table::new(users.max(1)),
            config,
        }
    }

    pub fn config(&self) -> &GuardConfig {
        &self.config
    }

    /// Whether requests from `source` are refused at `now`.
    pub fn is_banned(&self, now: Instant, source: IpAddr) -> bool {
        self.config.enabled
            && self
                .sources
                .records
                .get(&source)
                .is_some_and(|r| r.banned(now))
    }

    /// A failed authentication from `source`; `user` when it names a configured user.
    pub fn on_failure(&mut self, now: Instant, source: IpAddr, user: Option<&str>) -> Verdict {
        if !self.config.enabled {
            return Verdict::Counted;
        }
        let config = self.config;
        let mut name_guarded = false;
        if let Some(user) = user {
            let record = self.users.entry(now, &user.to_owned(), &config);
            name_guarded = record.banned(now) || record.fail(now, &config, false).is_some();
        }
        match self
            .sources
            .entry(now, &source, &config)
            .fail(now, &config, name_guarded)
        {
            Some(ban) => Verdict::Banned(ban),
            None => Verdict::Counted,
        }
    }

    /// A successful authentication: the source's record is cleared (a PBX that was
    /// misconfigured and is fixed starts afresh). The name's record stays: other sources may
    /// still be guessing it.
    pub fn on_success(&mut self, source: IpAddr) {
        self.sources.records.remove(&source);
    }

    /// Sources with a record (for tests of the bound).
    pub fn tracked_sources(&self) -> usize {
        self.sources.records.len()
    }
}

/// What a refusal is, in the security log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalKind {
    /// A request from a banned source.
    Banned,
    /// A request whose User-Agent names a scanner.
    Scanner,
    /// A TLS client without an acceptable certificate (`[sip.tls] client_ca`, `client_names`).
    ClientCert,
}

impl RefusalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalKind::Banned => "banned",
            RefusalKind::Scanner => "scanner",
            RefusalKind::ClientCert => "client-cert",
        }
    }
}

/// A line for the log, made by [`LogGate`] or the endpoint. `Display` writes the documented
/// format: `mohd security: EVENT source=IP key=value…`, values without spaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecurityEvent {
    AuthFailed {
        source: IpAddr,
        user: String,
        reason: FailureReason,
    },
    Ban {
        source: IpAddr,
        user: String,
        duration: Duration,
    },
    /// The first refusal of a kind from a source in an interval.
    Refused { source: IpAddr, kind: RefusalKind },
    /// The refusals after the first one in an interval.
    RefusedSummary {
        source: IpAddr,
        kind: RefusalKind,
        count: u64,
        interval: Duration,
    },
}

impl std::fmt::Display for SecurityEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A name is whatever the peer sent: printed so that it cannot break the line apart.
        let clean = |s: &str| -> String {
            let s: String = s
                .chars()
                .take(64)
                .map(|c| if c.is_ascii_graphic() { c } else { '?' })
                .collect();
            if s.is_empty() { "-".into() } else { s }
        };
        match self {
            SecurityEvent::AuthFailed {
                source,
                user,
                reason,
            } => write!(
                f,
                "mohd security: auth-failed source={source} user={} reason={}",
                clean(user),
                reason.as_str()
            ),
            SecurityEvent::Ban {
                source,
                user,
                duration,
            } => write!(
                f,
                "mohd security: banned source={source} user={} seconds={}",
                clean(user),
                duration.as_secs()
            ),
            SecurityEvent::Refused { source, kind } => write!(
                f,
                "mohd security: refused source={source} reason={}",
                kind.as_str()
            ),
            SecurityEvent::RefusedSummary {
                source,
                kind,
                count,
                interval,
            } => write!(
                f,
                "mohd security: refused source={source} reason={} count={count} seconds={}",
                kind.as_str(),
                interval.as_secs()
            ),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Gate {
    interval_start: Instant,
    /// Refusals since the line that opened the interval.
    suppressed: u64,
}

/// Refusals per (source, kind): the first one of an interval is logged, the rest counted and
/// reported in one summary line when the interval ends. Bounded as the ban table.
#[derive(Debug)]
pub struct LogGate {
    interval: Duration,
    cap: usize,
    gates: HashMap<(IpAddr, RefusalKind), Gate>,
}

impl LogGate {
    pub fn new(interval: Duration, cap: usize) -> LogGate {
        LogGate {
            interval: interval.max(Duration::from_millis(1)),
            cap: cap.max(1),
            gates: HashMap::new(),
        }
    }

    /// A refusal: `Some` line when it opens an interval for its source.
    pub fn refused(
        &mut self,
        now: Instant,
        source: IpAddr,
        kind: RefusalKind,
    ) -> Option<SecurityEvent> {
        let key = (source, kind);
        let interval = self.interval;
        if let Some(g) = self.gates.get_mut(&key) {
            if now.saturating_duration_since(g.interval_start) < interval {
                g.suppressed += 1;
                return None;
            }
            if g.suppressed > 0 {
                // The interval ended before `poll_summaries` saw it: this line reports it,
                // this refusal included, and the flood goes on summarised.
                let count = g.suppressed + 1;
                *g = Gate {
                    interval_start: now,
                    suppressed: 0,
                };
                return Some(SecurityEvent::RefusedSummary {
                    source,
                    kind,
                    count,
                    interval,
                });
            }
        }
        if !self.gates.contains_key(&key) && self.gates.len() >= self.cap {
            // Full: a refusal beyond the cap is counted in the metrics only.
            return None;
        }
        self.gates.insert(
            key,
            Gate {
                interval_start: now,
                suppressed: 0,
            },
        );
        Some(SecurityEvent::Refused { source, kind })
    }

    /// When the next summary is due.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.gates
            .values()
            .map(|g| g.interval_start + self.interval)
            .min()
    }

    /// The summaries due at `now`; gates whose interval ended are closed (with a summary when
    /// something was suppressed), so a source that keeps going gets one line per interval.
    pub fn poll_summaries(&mut self, now: Instant) -> Vec<SecurityEvent> {
        let interval = self.interval;
        let mut out = Vec::new();
        self.gates.retain(|&(source, kind), g| {
            if now.saturating_duration_since(g.interval_start) < interval {
                return true;
            }
            if g.suppressed > 0 {
                out.push(SecurityEvent::RefusedSummary {
                    source,
                    kind,
                    count: g.suppressed,
                    interval,
                });
                // The flood goes on: keep summarising without a new first line.
                *g = Gate {
                    interval_start: now,
                    suppressed: 0,
                };
                return true;
            }
            false
        });
        out.sort_by_key(|e| e.to_string());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn bans_after_max_failures_within_the_window() {
        let t0 = Instant::now();
        let mut g = Guard::new(GuardConfig::default(), 1);
        for i in 0..4 {
            assert_eq!(g.on_failure(t0 + secs(i), A, None), Verdict::Counted);
        }
        assert!(!g.is_banned(t0 + secs(4), A));
        assert_eq!(
            g.on_failure(t0 + secs(4), A, None),
            Verdict::Banned(secs(60))
        );
        assert!(g.is_banned(t0 + secs(5), A));
        assert!(
            !g.is_banned(t0 + secs(5), B),
            "another source is unaffected"
        );
        assert!(!g.is_banned(t0 + secs(64), A), "the ban ends");
    }

    #[test]
    fn failures_spread_wider_than_the_window_do_not_ban() {
        let t0 = Instant::now();
        let mut g = Guard::new(GuardConfig::default(), 1);
        for i in 0..20 {
            assert_eq!(g.on_failure(t0 + secs(i * 15), A, None), Verdict::Counted);
        }
    }

    #[test]
    fn the_back_off_doubles_up_to_the_cap_and_is_forgiven() {
        let t0 = Instant::now();
        let mut g = Guard::new(GuardConfig::default(), 1);
        let mut now = t0;
        for _ in 0..4 {
            g.on_failure(now, A, None);
        }
        let mut bans = Vec::new();
        assert_eq!(g.on_failure(now, A, None), Verdict::Banned(secs(60)));
        bans.push(60);
        for _ in 0..8 {
            // Right after the ban ends: on probation, one failure bans again, twice as long.
            let Some(until) = g.sources.records[&A].banned_until else {
                panic!("banned")
            };
            now = until + secs(1);
            match g.on_failure(now, A, None) {
                Verdict::Banned(d) => bans.push(d.as_secs()),
                v => panic!("{v:?}"),
            }
        }
        assert_eq!(bans, [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]);
        // Clean for an hour after the last ban: back to the first ban's length.
        now = g.sources.records[&A].banned_until.unwrap() + secs(3600);
        for _ in 0..4 {
            assert_eq!(g.on_failure(now, A, None), Verdict::Counted);
        }
        assert_eq!(g.on_failure(now, A, None), Verdict::Banned(secs(60)));
    }

    #[test]
    fn a_success_clears_the_source() {
        let t0 = Instant::now();
        let mut g = Guard::new(GuardConfig::default(), 1);
        for _ in 0..4 {
            g.on_failure(t0, A, Some("pbx"));
        }
        g.on_success(A);
        for _ in 0..4 {
            assert_eq!(g.on_failure(t0, A, None), Verdict::Counted);
        }
    }

    #[test]
    fn a_guessed_name_bans_every_further_source_at_its_first_failure() {
        let t0 = Instant::now();
        let mut g = Guard::new(GuardConfig::default(), 1);
        // Spread over sources, one failure each: no source reaches the limit, the name does,
        // and the failure that takes it there bans its source.
        for i in 0..4u8 {
            let src = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, i));
            assert_eq!(g.on_failure(t0, src, Some("pbx")), Verdict::Counted);
        }
        let fifth = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 4));
        assert_eq!(
            g.on_failure(t0, fifth, Some("pbx")),
            Verdict::Banned(secs(60))
        );
        assert_eq!(g.on_failure(t0, B, Some("pbx")), Verdict::Banned(secs(60)));
        // A source that has not failed is not refused: the PBX itself keeps working.
        assert!(!g.is_banned(t0, A));
        // Another name is not guarded.
        assert_eq!(g.on_failure(t0, A, Some("sbc")), Verdict::Counted);
    }

    #[test]
    fn disabled_bans_nobody() {
        let t0 = Instant::now();
        let config = GuardConfig {
            enabled: false,
            ..GuardConfig::default()
        };
        let mut g = Guard::new(config, 1);
        for _ in 0..100 {
            assert_eq!(g.on_failure(t0, A, Some("pbx")), Verdict::Counted);
        }
        assert!(!g.is_banned(t0, A));
    }

    #[test]
    fn the_source_table_is_bounded() {
        let t0 = Instant::now();
        let config = GuardConfig {
            max_sources: 100,
            ..GuardConfig::default()
        };
        let mut g = Guard::new(config, 1);
        for i in 0..10_000u32 {
            let src = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            g.on_failure(
                t0 + Duration::from_millis(u64::from(i)),
                src,
                Some("nobody"),
            );
        }
        assert!(g.tracked_sources() <= 100, "{}", g.tracked_sources());
        // The newest are kept.
        for _ in 0..4 {
            g.on_failure(t0 + secs(11), IpAddr::V4(0x0a00_270f.into()), None);
        }
        assert!(g.is_banned(t0 + secs(11), IpAddr::V4(0x0a00_270f.into())));
    }

    #[test]
    fn log_gate_logs_the_first_refusal_then_one_summary_per_interval() {
        let t0 = Instant::now();
        let mut gate = LogGate::new(secs(60), 1000);
        let mut lines = Vec::new();
        let mut now = t0;
        // 10 refusals a second for 5 minutes, polled as the endpoint would.
        for i in 0..3000u64 {
            now = t0 + Duration::from_millis(i * 100);
            if gate.next_timeout().is_some_and(|t| t <= now) {
                lines.extend(gate.poll_summaries(now));
            }
            lines.extend(gate.refused(now, A, RefusalKind::Banned));
        }
        lines.extend(gate.poll_summaries(now + secs(60)));
        assert!(lines.len() <= 7, "{lines:#?}");
        assert_eq!(
            lines[0].to_string(),
            format!("mohd security: refused source={A} reason=banned")
        );
        let counted: u64 = lines
            .iter()
            .map(|l| match l {
                SecurityEvent::RefusedSummary { count, .. } => *count,
                _ => 1,
            })
            .sum();
        assert_eq!(counted, 3000, "every refusal is in a line's count");
        // Quiet again: the gate is forgotten, the next refusal opens with a first line.
        assert!(gate.poll_summaries(now + secs(200)).is_empty());
        assert_eq!(gate.next_timeout(), None);
        assert!(
            gate.refused(now + secs(300), A, RefusalKind::Banned)
                .is_some()
        );
    }

    #[test]
    fn security_lines_keep_their_shape_whatever_the_peer_sends() {
        let e = SecurityEvent::AuthFailed {
            source: A,
            user: "al ice\r\nmohd security: x".into(),
            reason: FailureReason::BadPassword,
        };
        assert_eq!(
            e.to_string(),
            "mohd security: auth-failed source=192.0.2.1 user=al?ice??mohd?security:?x reason=bad-password"
        );
        let e = SecurityEvent::AuthFailed {
            source: A,
            user: String::new(),
            reason: FailureReason::Malformed,
        };
        assert!(e.to_string().contains("user=- reason=malformed"));
    }
}
