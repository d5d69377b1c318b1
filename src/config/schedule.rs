//! `[channels.NAME.schedule]`: which programme a channel plays by local time, read into a
//! [`Schedule`]. Owns the raw serde shape of the table (`RawSchedule`, which
//! `channels.rs` embeds as `schedule: Option<Spanned<RawSchedule>>`) and its checks, each
//! error naming file:line:key; the schedule's meaning lives in `crate::schedule`.
//!
//! ```toml
//! [channels.sales.schedule]
//! timezone = "Europe/London"
//! default = "closed"            # a programme name; "main" (the default) is the channel's playlist
//! [[channels.sales.schedule.weekly]]
//! days = "mon-fri"              # or ["mon", "wed"], "sat-sun", "daily"
//! from = "09:00"
//! to = "17:30"                  # earlier than from: runs past midnight; "24:00": end of day
//! programme = "main"
//! [[channels.sales.schedule.date]]
//! date = "2026-12-25"           # or a bare TOML date, 2026-12-25
//! programme = "closed"          # the whole day unless from/to are given
//! ```

use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use super::doc::{Doc, Key, line_col};
use super::raw::OneOrMany;
use crate::channel::spec::MAIN_PROGRAMME;
use crate::schedule::{
    DatedException, EntryKind, Schedule, TimeOfDay, Weekdays, WeeklyRange, resolve_zone,
};

/// `[channels.NAME.schedule]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSchedule {
    pub(super) timezone: Spanned<String>,
    pub(super) default: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) weekly: Vec<Spanned<RawWeekly>>,
    #[serde(default)]
    pub(super) date: Vec<Spanned<RawDated>>,
}

/// `[[channels.NAME.schedule.weekly]]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWeekly {
    pub(super) days: Spanned<OneOrMany>,
    /// A string or a TOML local time (`09:00:00`); `24:00` only as a string.
    pub(super) from: Spanned<toml::Value>,
    pub(super) to: Spanned<toml::Value>,
    pub(super) programme: Spanned<String>,
}

/// `[[channels.NAME.schedule.date]]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDated {
    /// A string or a TOML local date.
    pub(super) date: Spanned<toml::Value>,
    pub(super) from: Option<Spanned<toml::Value>>,
    pub(super) to: Option<Spanned<toml::Value>>,
    pub(super) programme: Spanned<String>,
}

/// One channel's schedule, checked against the programmes the channel defines
/// (`programme_names`, "main" included).
pub(super) fn schedule_config(
    doc: &Doc,
    channel: &str,
    raw: Spanned<RawSchedule>,
    programme_names: &[&str],
) -> Result<Schedule, ConfigError> {
    let table = ["channels", channel, "schedule"];
    let key = |leaf: &str| Key::table(&table).leaf(leaf);
    let weekly_key = Key::array(&["channels", channel, "schedule", "weekly"]);
    let dated_key = Key::array(&["channels", channel, "schedule", "date"]);
    let table_span = raw.span();
    let raw = raw.into_inner();

    doc.checked(&raw.timezone, key("timezone"), |z| {
        resolve_zone(z).map(|_| ()).map_err(|_| {
            "unknown time zone; expected an IANA name such as \"Europe/London\"".into()
        })
    })?;
    let known = |p: &str| {
        if programme_names.contains(&p) {
            Ok(p.to_owned())
        } else {
            Err(format!(
                "no such programme; defined: {}",
                programme_names.join(", ")
            ))
        }
    };
    let default = match &raw.default {
        Some(d) => doc.checked(d, key("default"), known)?,
        None => known(MAIN_PROGRAMME).map_err(|m| {
            doc.err(
                Some(table_span.clone()),
                Key::table(&table),
                format!("no default given and {MAIN_PROGRAMME:?}: {m}"),
            )
        })?,
    };

    let mut weekly = Vec::with_capacity(raw.weekly.len());
    let mut weekly_spans = Vec::with_capacity(raw.weekly.len());
    for entry in raw.weekly {
        weekly_spans.push(entry.span());
        let entry = entry.into_inner();
        let k = |leaf: &str| weekly_key.clone().leaf(leaf);
        let mut days = Weekdays::NONE;
        let days_span = entry.days.span();
        for item in OneOrMany::into_items(entry.days) {
            let more = doc.checked(&item, k("days"), |d| {
                Weekdays::parse(d).map_err(|_| {
                    "expected days as \"mon-fri\", \"sat-sun\", \"daily\", \"mon,wed\" \
                     or a list of them"
                        .to_owned()
                })
            })?;
            days = days.union(more);
        }
        if days.is_empty() {
            return Err(doc.err(Some(days_span), k("days"), "no days given"));
        }
        let from = time_value(doc, &entry.from, k("from"))?;
        let to = time_value(doc, &entry.to, k("to"))?;
        check_range(doc, &entry.from, from, &entry.to, to, &k)?;
        let programme = doc.checked(&entry.programme, k("programme"), known)?;
        weekly.push(WeeklyRange {
            days,
            from,
            to,
            programme,
        });
    }

    let mut dated = Vec::with_capacity(raw.date.len());
    let mut dated_spans = Vec::with_capacity(raw.date.len());
    for entry in raw.date {
        let entry_span = entry.span();
        dated_spans.push(entry_span.clone());
        let entry = entry.into_inner();
        let k = |leaf: &str| dated_key.clone().leaf(leaf);
        let date = value_text(&entry.date)
            .and_then(|text| text.parse::<jiff::civil::Date>().ok())
            .ok_or_else(|| {
                doc.err(
                    Some(entry.date.span()),
                    k("date"),
                    format!(
                        "{}: expected a date as YYYY-MM-DD",
                        shown(entry.date.get_ref())
                    ),
                )
            })?;
        let (from, to) = match (&entry.from, &entry.to) {
            (None, None) => (None, None),
            (Some(f), Some(t)) => {
                let from = time_value(doc, f, k("from"))?;
                let to = time_value(doc, t, k("to"))?;
                check_range(doc, f, from, t, to, &k)?;
                (Some(from), Some(to))
            }
            (Some(one), None) | (None, Some(one)) => {
                let which = if entry.from.is_some() { "to" } else { "from" };
                return Err(doc.err(
                    Some(one.span()),
                    k(which),
                    format!(
                        "missing key `{which}`: give both from and to, or neither for the whole day"
                    ),
                ));
            }
        };
        let programme = doc.checked(&entry.programme, k("programme"), known)?;
        dated.push(DatedException {
            date,
            from,
            to,
            programme,
        });
    }

    let schedule = Schedule::new(raw.timezone.get_ref(), &default, weekly, dated)
        .map_err(|e| doc.err(Some(table_span.clone()), Key::table(&table), e.to_string()))?;
    // Name both entries; point at the later one, and say where the earlier one is.
    let overlaps = [
        (
            EntryKind::Weekly,
            schedule.weekly_overlap(),
            &weekly_spans,
            &weekly_key,
        ),
        (
            EntryKind::Dated,
            schedule.dated_overlap(),
            &dated_spans,
            &dated_key,
        ),
    ];
    for (kind, overlap, spans, entry_key) in overlaps {
        let Some((first, second)) = overlap else {
            continue;
        };
        let label = |i: usize| match kind {
            EntryKind::Weekly => schedule.weekly()[i].to_string(),
            EntryKind::Dated => schedule.dated()[i].to_string(),
        };
        let first_line = spans
            .get(first)
            .map(|s| line_col(doc.text, s.start).0)
            .unwrap_or(0);
        return Err(doc.err(
            spans.get(second).cloned(),
            entry_key.clone(),
            format!(
                "{kind}[{first}] ({}, line {first_line}) overlaps {kind}[{second}] ({})",
                label(first),
                label(second)
            ),
        ));
    }
    Ok(schedule)
}

/// A range's own sense: not empty, not starting at 24:00.
fn check_range(
    doc: &Doc,
    from_raw: &Spanned<toml::Value>,
    from: TimeOfDay,
    to_raw: &Spanned<toml::Value>,
    to: TimeOfDay,
    key: &dyn Fn(&str) -> Key,
) -> Result<(), ConfigError> {
    if from == TimeOfDay::END_OF_DAY {
        return Err(doc.err(
            Some(from_raw.span()),
            key("from"),
            "\"24:00\": a range cannot start at the end of the day; write \"00:00\"",
        ));
    }
    if from == to {
        return Err(doc.err(
            Some(to_raw.span()),
            key("to"),
            format!("\"{to}\": equal to from, so the range is empty (\"00:00\" to \"24:00\" is a whole day)"),
        ));
    }
    Ok(())
}

/// A time written as a string or a TOML local time.
fn time_value(doc: &Doc, raw: &Spanned<toml::Value>, key: Key) -> Result<TimeOfDay, ConfigError> {
    value_text(raw)
        .ok_or_else(|| "expected a time as HH:MM".to_owned())
        .and_then(|text| TimeOfDay::parse(&text))
        .map_err(|_| {
            doc.err(
                Some(raw.span()),
                key,
                format!(
                    "{}: expected a time as \"HH:MM\", \"00:00\" to \"24:00\"",
                    shown(raw.get_ref())
                ),
            )
        })
}

/// The text of a string or a TOML date/time value.
fn value_text(raw: &Spanned<toml::Value>) -> Option<String> {
    match raw.get_ref() {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Datetime(d) => Some(d.to_string()),
        _ => None,
    }
}

/// A value as it reads in messages: strings quoted, like `value_msg`.
fn shown(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use serde::Deserialize;
    use toml::Spanned;

    use super::super::ConfigError;
    use super::super::doc::Doc;
    use super::{RawSchedule, schedule_config};
    use crate::schedule::Schedule;

    /// Only the schedule tables of `[channels.NAME]`, so these tests stand alone.
    #[derive(Deserialize)]
    struct File {
        channels: BTreeMap<String, Channel>,
    }

    #[derive(Deserialize)]
    struct Channel {
        schedule: Spanned<RawSchedule>,
    }

    fn load(text: &str) -> Result<Schedule, ConfigError> {
        let doc = Doc {
            path: Path::new("/etc/mohd/mohd.toml"),
            text,
        };
        let file: File = doc.deserialize()?;
        let (name, channel) = file.channels.into_iter().next().expect("one channel");
        schedule_config(&doc, &name, channel.schedule, &["main", "closed", "late"])
    }

    fn err(text: &str) -> String {
        match load(text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    const SALES: &str = "[channels.sales.schedule]\n\
        timezone = \"Europe/London\"\n\
        default = \"closed\"\n\
        [[channels.sales.schedule.weekly]]\n\
        days = \"mon-fri\"\n\
        from = \"09:00\"\n\
        to = \"17:30\"\n\
        programme = \"main\"\n\
        [[channels.sales.schedule.weekly]]\n\
        days = [\"sat\"]\n\
        from = 10:00:00\n\
        to = \"24:00\"\n\
        programme = \"main\"\n\
        [[channels.sales.schedule.date]]\n\
        date = 2026-12-25\n\
        programme = \"closed\"\n\
        [[channels.sales.schedule.date]]\n\
        date = \"2026-12-24\"\n\
        from = \"13:00\"\n\
        to = \"24:00\"\n\
        programme = \"closed\"\n";

    #[test]
    fn a_schedule_table_reads_into_a_schedule() {
        let s = load(SALES).unwrap();
        assert_eq!(s.timezone(), "Europe/London");
        assert_eq!(s.default_programme(), "closed");
        let weekly: Vec<String> = s.weekly().iter().map(|w| w.to_string()).collect();
        assert_eq!(weekly, ["mon-fri 09:00-17:30", "sat 10:00-24:00"]);
        let dated: Vec<String> = s.dated().iter().map(|d| d.to_string()).collect();
        assert_eq!(dated, ["2026-12-25", "2026-12-24 13:00-24:00"]);
        // The default programme is the channel's own playlist unless named.
        let s = load("[channels.x.schedule]\ntimezone = \"UTC\"\n").unwrap();
        assert_eq!(s.default_programme(), "main");
    }

    #[test]
    fn overlapping_ranges_name_both_entries() {
        let text = SALES.replace(
            "[[channels.sales.schedule.date]]\ndate = 2026",
            "[[channels.sales.schedule.weekly]]\ndays = \"fri\"\nfrom = \"17:00\"\n\
             to = \"19:00\"\nprogramme = \"late\"\n[[channels.sales.schedule.date]]\ndate = 2026",
        );
        assert_eq!(
            err(&text),
            "/etc/mohd/mohd.toml:14:1: [[channels.sales.schedule.weekly]]: weekly[0] \
             (mon-fri 09:00-17:30, line 4) overlaps weekly[2] (fri 17:00-19:00)"
        );
        let text = SALES.replace("date = \"2026-12-24\"", "date = \"2026-12-25\"");
        assert_eq!(
            err(&text),
            "/etc/mohd/mohd.toml:17:1: [[channels.sales.schedule.date]]: date[0] \
             (2026-12-25, line 14) overlaps date[1] (2026-12-25 13:00-24:00)"
        );
    }

    #[test]
    fn bad_values_name_file_line_and_key() {
        let cases = [
            (
                SALES.replace("Europe/London", "Europe/Lndon"),
                "/etc/mohd/mohd.toml:2:12: [channels.sales.schedule] timezone: \"Europe/Lndon\": \
                 unknown time zone; expected an IANA name such as \"Europe/London\"",
            ),
            (
                SALES.replace("default = \"closed\"", "default = \"shut\""),
                "/etc/mohd/mohd.toml:3:11: [channels.sales.schedule] default: \"shut\": no such \
                 programme; defined: main, closed, late",
            ),
            (
                SALES.replace("from = \"09:00\"", "from = \"9h\""),
                "/etc/mohd/mohd.toml:6:8: [[channels.sales.schedule.weekly]] from: \"9h\": \
                 expected a time as \"HH:MM\", \"00:00\" to \"24:00\"",
            ),
            (
                SALES.replace("to = \"17:30\"", "to = \"09:00\""),
                "/etc/mohd/mohd.toml:7:6: [[channels.sales.schedule.weekly]] to: \"09:00\": \
                 equal to from, so the range is empty (\"00:00\" to \"24:00\" is a whole day)",
            ),
            (
                SALES.replace("days = \"mon-fri\"", "days = \"mon-fry\""),
                "/etc/mohd/mohd.toml:5:8: [[channels.sales.schedule.weekly]] days: \"mon-fry\": \
                 expected days as \"mon-fri\", \"sat-sun\", \"daily\", \"mon,wed\" or a list of them",
            ),
            (
                SALES.replace(
                    "programme = \"main\"\n[[channels.sales.schedule.weekly]]",
                    "programme = \"jazz\"\n[[channels.sales.schedule.weekly]]",
                ),
                "/etc/mohd/mohd.toml:8:13: [[channels.sales.schedule.weekly]] programme: \"jazz\": \
                 no such programme; defined: main, closed, late",
            ),
            (
                SALES.replace("date = 2026-12-25", "date = \"25/12/2026\""),
                "/etc/mohd/mohd.toml:15:8: [[channels.sales.schedule.date]] date: \"25/12/2026\": \
                 expected a date as YYYY-MM-DD",
            ),
            (
                SALES.replace("from = \"13:00\"\n", ""),
                "/etc/mohd/mohd.toml:19:6: [[channels.sales.schedule.date]] from: missing key \
                 `from`: give both from and to, or neither for the whole day",
            ),
            (
                SALES.replace("from = 10:00:00", "from = \"24:00\""),
                "/etc/mohd/mohd.toml:11:8: [[channels.sales.schedule.weekly]] from: \"24:00\": a \
                 range cannot start at the end of the day; write \"00:00\"",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(err(&text), expected);
        }
        let e = err("[channels.x.schedule]\ntimezone = \"UTC\"\nweekday = []\n");
        assert!(
            e.contains("[channels.x.schedule] weekday: unknown key"),
            "{e}"
        );
    }

    #[test]
    fn a_channel_in_the_full_config_gets_its_schedule() {
        use super::super::test_util::{err as config_err, load as config_load};
        let channel = "[channels.sales]\nmusic = \"demo\"\n\
            [channels.sales.programmes.closed]\nmusic = \"demo\"\n";
        let dialplan = "[dialplan]\ndefault = \"sales\"\n";
        let c = config_load(&format!(
            "{channel}{}{dialplan}",
            SALES.replace("\"late\"", "\"main\"")
        ))
        .unwrap();
        let s = c.channels["sales"]
            .spec
            .schedule
            .as_ref()
            .expect("a schedule");
        assert_eq!(s.weekly().len(), 2);
        // Overlaps are refused naming both entries, at the later one's line.
        let overlapping = SALES.replace("days = [\"sat\"]", "days = [\"fri\"]");
        let e = config_err(&format!("{channel}{overlapping}{dialplan}"));
        assert_eq!(
            e.to_string(),
            "/etc/mohd/mohd.toml:13:1: [[channels.sales.schedule.weekly]]: weekly[0] \
             (mon-fri 09:00-17:30, line 8) overlaps weekly[1] (fri 10:00-24:00)"
        );
        // A programme the channel does not define ("late" is not one of sales's).
        let e = config_err(&format!(
            "{channel}{}{dialplan}",
            SALES.replace(
                "programme = \"main\"\n[[channels.sales.schedule.date]]",
                "programme = \"late\"\n[[channels.sales.schedule.date]]"
            )
        ));
        assert_eq!(
            (e.key(), e.line()),
            (
                Some("[[channels.sales.schedule.weekly]] programme"),
                Some(17)
            )
        );
        assert_eq!(
            e.message(),
            "\"late\": no such programme; defined: main, closed"
        );
    }
}
