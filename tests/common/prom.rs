//! The tests' reader of `/metrics`: a strict parser of the Prometheus text exposition
//! (version 0.0.4) that checks what Prometheus itself would refuse or mis-read, and
//! `promtool check metrics` (Debian package `prometheus`) as a second opinion when installed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::process::{Command, Stdio};

/// One sample line of an exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Sample name, suffix included (`mohd_x_bucket`).
    pub name: String,
    /// Labels, `le` included for buckets.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

/// The value of the sample with exactly this name and these labels.
pub fn value_of(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

/// Parses exposition text strictly: every sample's family has a `# TYPE` line before it, a
/// family's lines are contiguous, HELP/TYPE appear at most once per family, no series
/// repeats, label values use only the `\\`, `\"`, `\n` escapes, counters are not negative,
/// and each histogram series has ascending `le` bounds with non-decreasing counts, a `+Inf`
/// bucket equal to its `_count`, and a `_sum`. Errors name the line.
pub fn parse_text(s: &str) -> Result<Vec<Sample>, String> {
    if !s.is_empty() && !s.ends_with('\n') {
        return Err("the text does not end with a line feed".into());
    }
    let mut reader = Reader::default();
    for (n, line) in s.lines().enumerate() {
        let read = match line.strip_prefix('#') {
            _ if line.trim().is_empty() => Ok(()),
            Some(rest) => reader.comment(rest),
            None => reader.sample(line),
        };
        read.map_err(|msg| format!("line {}: {msg}: {line:?}", n + 1))?;
    }
    reader.finish()
}

/// Runs `promtool check metrics` on `text`: true when it passed, false when promtool is not
/// installed here (the caller's check is skipped with a notice). Under CI a missing promtool
/// fails the test: `scripts/setup-deps` installs it.
pub fn promtool_accepts(text: &str) -> bool {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        if std::env::var_os("CI").is_some() {
            panic!("promtool is not installed (Debian package prometheus; run scripts/setup-deps)");
        }
        eprintln!("NOTICE: promtool is not installed (apt-get install prometheus): check skipped");
        return false;
    };
    child
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool ran");
    assert!(
        out.status.success(),
        "promtool check metrics refused:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

/// A histogram series being read: its buckets so far, `_sum`, `_count`.
#[derive(Default)]
struct HistSeries {
    buckets: Vec<(f64, f64)>,
    sum: Option<f64>,
    count: Option<f64>,
}

type SeriesKey = (String, Vec<(String, String)>);

/// What has been read so far, for the checks that span lines.
#[derive(Default)]
struct Reader {
    types: HashMap<String, String>,
    helps: HashSet<String>,
    /// Families whose samples have ended: a later sample of one is a split family.
    finished: HashSet<String>,
    current: Option<String>,
    seen: HashSet<SeriesKey>,
    hists: BTreeMap<SeriesKey, HistSeries>,
    samples: Vec<Sample>,
}

impl Reader {
    /// A line starting with `#`: HELP, TYPE, or an ordinary comment.
    fn comment(&mut self, rest: &str) -> Result<(), String> {
        let mut parts = rest.trim_start().splitn(3, ' ');
        let keyword = parts.next().unwrap_or("");
        if keyword != "HELP" && keyword != "TYPE" || !rest.starts_with(' ') {
            return Ok(());
        }
        let name = parts.next().unwrap_or("");
        if !valid_metric_name(name) {
            return Err(format!("bad metric name {name:?}"));
        }
        if keyword == "TYPE" && self.types.contains_key(name)
            || keyword == "HELP" && self.helps.contains(name)
        {
            return Err(format!("second {keyword} for {name}"));
        }
        if self.finished.contains(name) || self.current.as_deref() == Some(name) {
            return Err(format!("{keyword} for {name} after its samples"));
        }
        let text = parts.next().unwrap_or("");
        if keyword == "HELP" {
            self.helps.insert(name.to_owned());
            return unescape_help(text).map(drop);
        }
        let kind = text.trim_end();
        if !matches!(
            kind,
            "counter" | "gauge" | "histogram" | "summary" | "untyped"
        ) {
            return Err(format!("unknown type {kind:?}"));
        }
        self.types.insert(name.to_owned(), kind.to_owned());
        Ok(())
    }

    fn sample(&mut self, line: &str) -> Result<(), String> {
        let (name, labels, value) = parse_sample_line(line)?;
        let (family, kind) = family_of(&name, &self.types)
            .ok_or_else(|| format!("sample {name} has no TYPE line before it"))?;
        self.enter_family(&family)?;
        let key_labels = labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if !self.seen.insert((name.clone(), key_labels)) {
            return Err("duplicate series".into());
        }
        if kind == "counter" && (value.is_nan() || value < 0.0) {
            return Err("negative or NaN counter".into());
        }
        if kind == "histogram" {
            self.histogram_part(&family, &name, &labels, value)?;
        }
        self.samples.push(Sample {
            name,
            labels,
            value,
        });
        Ok(())
    }

    /// Moves on to `family`'s samples, refusing a family that already ended.
    fn enter_family(&mut self, family: &str) -> Result<(), String> {
        if self.current.as_deref() == Some(family) {
            return Ok(());
        }
        if self.finished.contains(family) {
            return Err(format!("family {family} is split in two places"));
        }
        if let Some(prev) = self.current.take() {
            self.finished.insert(prev);
        }
        self.current = Some(family.to_owned());
        Ok(())
    }

    fn histogram_part(
        &mut self,
        family: &str,
        name: &str,
        labels: &BTreeMap<String, String>,
        value: f64,
    ) -> Result<(), String> {
        let mut series_labels = labels.clone();
        let le = series_labels.remove("le");
        let key = (family.to_owned(), series_labels.into_iter().collect());
        let h = self.hists.entry(key).or_default();
        match name.strip_prefix(family) {
            Some("_bucket") => {
                let le = le.ok_or("bucket without le")?;
                let bound = parse_value(&le).ok_or_else(|| format!("le {le:?} is not a number"))?;
                if let Some((last_le, last_count)) = h.buckets.last() {
                    if bound.is_nan() || bound <= *last_le {
                        return Err("le bounds not ascending".into());
                    }
                    if value < *last_count {
                        return Err("bucket counts decrease".into());
                    }
                }
                h.buckets.push((bound, value));
            }
            Some(suffix) if le.is_some() => return Err(format!("le label on {suffix}")),
            Some("_sum") => h.sum = Some(value),
            Some(_) => h.count = Some(value),
            None => return Err("not a histogram sample".into()),
        }
        Ok(())
    }

    /// The checks that need a whole histogram series.
    fn finish(self) -> Result<Vec<Sample>, String> {
        for ((family, labels), h) in &self.hists {
            let what = format!("histogram {family}{labels:?}");
            let inf = match h.buckets.last() {
                Some((le, c)) if *le == f64::INFINITY => *c,
                _ => return Err(format!("{what} has no +Inf bucket")),
            };
            match h.count {
                Some(c) if c == inf => {}
                Some(c) => return Err(format!("{what}: +Inf bucket {inf} != _count {c}")),
                None => return Err(format!("{what} has no _count")),
            }
            if h.sum.is_none() {
                return Err(format!("{what} has no _sum"));
            }
        }
        Ok(self.samples)
    }
}

/// The family a sample belongs to and its type.
fn family_of(name: &str, types: &HashMap<String, String>) -> Option<(String, String)> {
    if let Some(kind) = types.get(name)
        && kind != "histogram"
        && kind != "summary"
    {
        return Some((name.to_owned(), kind.clone()));
    }
    for (suffix, kinds) in [
        ("_bucket", &["histogram"][..]),
        ("_sum", &["histogram", "summary"][..]),
        ("_count", &["histogram", "summary"][..]),
    ] {
        if let Some(base) = name.strip_suffix(suffix)
            && let Some(kind) = types.get(base)
            && kinds.contains(&kind.as_str())
        {
            return Some((base.to_owned(), kind.clone()));
        }
    }
    match types.get(name).map(String::as_str) {
        Some("summary") => Some((name.to_owned(), "summary".to_owned())),
        _ => None,
    }
}

type ParsedLine = (String, BTreeMap<String, String>, f64);

fn parse_sample_line(line: &str) -> Result<ParsedLine, String> {
    let name_end = line.find(['{', ' ', '\t']).ok_or("no value")?;
    let (name, mut rest) = line.split_at(name_end);
    if !valid_metric_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        let consumed;
        (labels, consumed) = parse_labels(after)?;
        rest = after.get(consumed..).unwrap_or("");
    }
    if !rest.starts_with([' ', '\t']) {
        return Err("no space before the value".into());
    }
    let mut fields = rest.split_ascii_whitespace();
    let value_text = fields.next().ok_or("no value")?;
    let value = parse_value(value_text).ok_or_else(|| format!("bad value {value_text:?}"))?;
    if let Some(ts) = fields.next()
        && ts.parse::<i64>().is_err()
    {
        return Err(format!("bad timestamp {ts:?}"));
    }
    if fields.next().is_some() {
        return Err("junk after the value".into());
    }
    Ok((name.to_owned(), labels, value))
}

/// The label set after its `{`, up to and including its `}`: the labels, and how many bytes
/// of `after` they took.
fn parse_labels(after: &str) -> Result<(BTreeMap<String, String>, usize), String> {
    let mut labels = BTreeMap::new();
    let mut chars = after.char_indices().peekable();
    loop {
        // A label name, or the closing brace (also after a trailing comma).
        let start = match chars.peek() {
            Some((_, '}')) => {
                chars.next();
                break;
            }
            Some((i, _)) => *i,
            None => return Err("unterminated label set".into()),
        };
        let eq = chars
            .by_ref()
            .find(|(_, c)| *c == '=')
            .map(|(i, _)| i)
            .ok_or("label without =")?;
        let key = after.get(start..eq).unwrap_or("");
        if !valid_label_name(key) {
            return Err(format!("bad label name {key:?}"));
        }
        if chars.next().map(|(_, c)| c) != Some('"') {
            return Err(format!("label {key} value not quoted"));
        }
        let value = label_value(&mut chars.by_ref().map(|(_, c)| c), key)?;
        if labels.insert(key.to_owned(), value).is_some() {
            return Err(format!("label {key} twice"));
        }
        match chars.next().map(|(_, c)| c) {
            Some(',') => {}
            Some('}') => break,
            _ => return Err("expected , or } after a label".into()),
        }
    }
    let consumed = chars.peek().map_or(after.len(), |(i, _)| *i);
    Ok((labels, consumed))
}

/// A quoted label value after its opening quote, through its closing one, unescaped.
fn label_value(chars: &mut impl Iterator<Item = char>, key: &str) -> Result<String, String> {
    let mut value = String::new();
    loop {
        match chars.next() {
            Some('"') => return Ok(value),
            Some('\\') => match chars.next() {
                Some('\\') => value.push('\\'),
                Some('"') => value.push('"'),
                Some('n') => value.push('\n'),
                other => return Err(format!("bad escape \\{other:?} in label {key}")),
            },
            Some('\n') | None => return Err(format!("unterminated value of label {key}")),
            Some(c) => value.push(c),
        }
    }
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        // Rust would also take "inf", "infinity", "nan" in any case; Prometheus spells them
        // one way, so only digits, signs, dots and exponents get this far.
        _ if s
            .bytes()
            .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) =>
        {
            s.parse().ok()
        }
        _ => None,
    }
}

fn unescape_help(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                other => return Err(format!("bad escape \\{other:?} in HELP")),
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

fn valid_metric_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

fn valid_label_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}
