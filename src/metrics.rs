//! Prometheus metric primitives and the text exposition format (version 0.0.4): lock-free
//! [`Counter`], [`Gauge`] and [`Histogram`] cells that the server's parts own, a
//! [`MetricsText`] writer that renders them on `/metrics`, and a strict [`parse_text`] for
//! tests.
//!
//! Hand-written rather than the `metrics` crate with its Prometheus exporter: that crate keeps
//! one global recorder per process, so several servers in one test process would share (and
//! garble) their numbers, and our counters are already atomics owned by each server. The
//! format is a few lines per family. [`Histogram::observe`] neither allocates nor locks, so
//! the media thread may call it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// `Content-Type` of the `/metrics` response.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Prometheus' default latency buckets, in seconds.
pub const DEFAULT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A monotonically increasing count. 64 bits: at a million increments a second it would wrap
/// after half a million years.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// A counter at zero.
    pub const fn new() -> Counter {
        Counter(AtomicU64::new(0))
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down, stored as `f64` bits.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// A gauge at 0.0 (whose bit pattern is all zeroes).
    pub const fn new() -> Gauge {
        Gauge(AtomicU64::new(0))
    }

    /// Sets the value.
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }

    /// Adds `d` (negative to subtract).
    pub fn add(&self, d: f64) {
        add_f64(&self.0, d);
    }

    /// The current value.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// A distribution over fixed buckets. Each observation lands in exactly one (non-cumulative)
/// bucket; rendering accumulates them, and derives the count from the buckets so that the
/// `+Inf` bucket always equals `_count` even while other threads observe.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// `bounds.len() + 1` cells, the last one for values above every bound (`+Inf`).
    buckets: Box<[AtomicU64]>,
    sum_bits: AtomicU64,
}

/// A histogram's values at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Upper bounds (`le`), ascending, without `+Inf`.
    pub bounds: &'static [f64],
    /// Cumulative counts, one per bound and a last one for `+Inf`.
    pub cumulative: Vec<u64>,
    /// Sum of all observed values.
    pub sum: f64,
}

impl HistogramSnapshot {
    /// Number of observations (the `+Inf` bucket).
    pub fn count(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }
}

impl Histogram {
    /// A histogram with these bucket upper bounds.
    ///
    /// # Panics
    /// If `bounds` is not strictly ascending and finite: bounds are constants in the code, so
    /// this is a programming error caught by any test that builds the histogram.
    pub fn new(bounds: &'static [f64]) -> Histogram {
        assert!(
            bounds.iter().all(|b| b.is_finite()) && bounds.windows(2).all(|w| w[0] < w[1]),
            "histogram bounds must be finite and strictly ascending: {bounds:?}"
        );
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_bits: AtomicU64::new(0),
        }
    }

    /// Records one value. NaN is ignored (it has no bucket and would poison the sum). No
    /// allocation, no lock: safe on a real-time thread.
    pub fn observe(&self, v: f64) {
        if v.is_nan() {
            return;
        }
        // First bound >= v (Prometheus buckets are `le`), or the +Inf cell past the end.
        let i = self.bounds.partition_point(|b| *b < v);
        if let Some(cell) = self.buckets.get(i) {
            cell.fetch_add(1, Ordering::Relaxed);
        }
        add_f64(&self.sum_bits, v);
    }

    /// The bucket bounds.
    pub fn bounds(&self) -> &'static [f64] {
        self.bounds
    }

    /// Reads the cells once into cumulative counts.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut acc = 0u64;
        let cumulative = self
            .buckets
            .iter()
            .map(|c| {
                acc = acc.wrapping_add(c.load(Ordering::Relaxed));
                acc
            })
            .collect();
        HistogramSnapshot {
            bounds: self.bounds,
            cumulative,
            sum: f64::from_bits(self.sum_bits.load(Ordering::Relaxed)),
        }
    }
}

fn add_f64(cell: &AtomicU64, d: f64) {
    let mut cur = cell.load(Ordering::Relaxed);
    loop {
        let next = (f64::from_bits(cur) + d).to_bits();
        match cell.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(seen) => cur = seen,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

#[derive(Debug)]
struct Family {
    name: String,
    kind: Kind,
    help: String,
    body: String,
}

/// Builds a `/metrics` response body. Samples of one family may be added in any order and
/// interleaved with other families: each family is written as one block, `# HELP` and
/// `# TYPE` once, in the order families were first seen.
///
/// ```
/// use mohd::metrics::MetricsText;
/// let mut m = MetricsText::new();
/// m.counter("mohd_calls_total", "Calls by outcome.", &[("result", "answered")], 3)
///     .gauge("mohd_active_calls", "Calls in progress.", &[], 1.0)
///     .counter("mohd_calls_total", "Calls by outcome.", &[("result", "rejected")], 1);
/// let text = m.finish();
/// assert_eq!(text.matches("# TYPE mohd_calls_total counter").count(), 1);
/// ```
#[derive(Debug, Default)]
pub struct MetricsText {
    families: Vec<Family>,
    index: HashMap<String, usize>,
}

impl MetricsText {
    /// An empty document.
    pub fn new() -> MetricsText {
        MetricsText::default()
    }

    /// One counter sample. By convention counter names end in `_total`.
    pub fn counter(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: u64,
    ) -> &mut Self {
        if let Some(body) = self.family(name, help, Kind::Counter) {
            write_sample(body, name, "", labels, None, &value.to_string());
        }
        self
    }

    /// One gauge sample.
    pub fn gauge(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: f64,
    ) -> &mut Self {
        if let Some(body) = self.family(name, help, Kind::Gauge) {
            write_sample(body, name, "", labels, None, &fmt_f64(value));
        }
        self
    }

    /// One histogram series: `_bucket` lines (cumulative, ending with `le="+Inf"`), `_sum`
    /// and `_count`.
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        h: &Histogram,
    ) -> &mut Self {
        debug_assert!(
            labels.iter().all(|(k, _)| *k != "le"),
            "`le` is reserved in histogram {name}"
        );
        let snap = h.snapshot();
        self.histogram_parts(name, help, labels, snap.bounds, &snap.cumulative, snap.sum)
    }

    /// A histogram read elsewhere (e.g. the media thread's own lock-free buckets):
    /// `cumulative` has one count per bound and a last one for `+Inf`.
    pub fn histogram_parts(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        bounds: &[f64],
        cumulative: &[u64],
        sum: f64,
    ) -> &mut Self {
        let count = cumulative.last().copied().unwrap_or(0);
        if let Some(body) = self.family(name, help, Kind::Histogram) {
            for (i, cum) in cumulative.iter().enumerate() {
                let le = bounds
                    .get(i)
                    .map_or_else(|| "+Inf".to_owned(), |b| fmt_f64(*b));
                write_sample(body, name, "_bucket", labels, Some(&le), &cum.to_string());
            }
            write_sample(body, name, "_sum", labels, None, &fmt_f64(sum));
            write_sample(body, name, "_count", labels, None, &count.to_string());
        }
        self
    }

    /// The exposition text.
    pub fn finish(self) -> String {
        let mut out = String::new();
        for f in self.families {
            let _ = writeln!(out, "# HELP {} {}", f.name, escape_help(&f.help));
            let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind.as_str());
            out.push_str(&f.body);
        }
        out
    }

    /// The body of family `name`, made on first use. None (and nothing is written) if the
    /// name was already used for another type: that is a programming error, loud in debug
    /// builds, and in release dropping the sample keeps the rest of the output valid.
    fn family(&mut self, name: &str, help: &str, kind: Kind) -> Option<&mut String> {
        debug_assert!(valid_metric_name(name), "invalid metric name {name:?}");
        let i = match self.index.get(name) {
            Some(&i) => i,
            None => {
                self.families.push(Family {
                    name: name.to_owned(),
                    kind,
                    help: help.to_owned(),
                    body: String::new(),
                });
                let i = self.families.len() - 1;
                self.index.insert(name.to_owned(), i);
                i
            }
        };
        let f = self.families.get_mut(i)?;
        debug_assert_eq!(f.kind, kind, "metric {name} used with two types");
        (f.kind == kind).then_some(&mut f.body)
    }
}

fn write_sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &[(&str, &str)],
    le: Option<&str>,
    value: &str,
) {
    out.push_str(name);
    out.push_str(suffix);
    let all = labels.iter().copied().chain(le.map(|v| ("le", v)));
    let mut first = true;
    for (k, v) in all {
        debug_assert!(valid_label_name(k), "invalid label name {k:?} on {name}");
        out.push(if first { '{' } else { ',' });
        first = false;
        out.push_str(k);
        out.push_str("=\"");
        escape_label_value(out, v);
        out.push('"');
    }
    if !first {
        out.push('}');
    }
    out.push(' ');
    out.push_str(value);
    out.push('\n');
}

fn escape_label_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn escape_help(h: &str) -> String {
    h.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Integers as integers (`3`, not `3.0`), others in Rust's shortest round-trip form, which Go
/// and Python both parse; the special values as Prometheus spells them.
fn fmt_f64(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else if v == v.trunc() && v.abs() < 1e15 {
        // Exact: |v| < 2^53, and `as` cannot saturate below 1e15.
        format!("{}", v as i64)
    } else {
        format!("{v:?}")
    }
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

// ---------------------------------------------------------------------------------------------
// Parser (for tests)

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

#[derive(Default)]
struct HistSeries {
    buckets: Vec<(f64, f64)>,
    sum: Option<f64>,
    count: Option<f64>,
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
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: HashSet<String> = HashSet::new();
    let mut finished: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut seen: HashSet<(String, Vec<(String, String)>)> = HashSet::new();
    let mut hists: BTreeMap<(String, Vec<(String, String)>), HistSeries> = BTreeMap::new();
    let mut samples = Vec::new();

    for (n, line) in s.lines().enumerate() {
        let at = |msg: String| format!("line {}: {msg}: {line:?}", n + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let mut parts = rest.trim_start().splitn(3, ' ');
            let keyword = parts.next().unwrap_or("");
            if keyword != "HELP" && keyword != "TYPE" || !rest.starts_with(' ') {
                continue; // an ordinary comment
            }
            let name = parts.next().unwrap_or("");
            if !valid_metric_name(name) {
                return Err(at(format!("bad metric name {name:?}")));
            }
            if keyword == "TYPE" && types.contains_key(name)
                || keyword == "HELP" && helps.contains(name)
            {
                return Err(at(format!("second {keyword} for {name}")));
            }
            if finished.contains(name) || current.as_deref() == Some(name) {
                return Err(at(format!("{keyword} for {name} after its samples")));
            }
            if keyword == "HELP" {
                helps.insert(name.to_owned());
                unescape_help(parts.next().unwrap_or("")).map_err(at)?;
            } else {
                let kind = parts.next().unwrap_or("").trim_end();
                if !matches!(
                    kind,
                    "counter" | "gauge" | "histogram" | "summary" | "untyped"
                ) {
                    return Err(at(format!("unknown type {kind:?}")));
                }
                if types.insert(name.to_owned(), kind.to_owned()).is_some() {
                    return Err(at(format!("second TYPE for {name}")));
                }
            }
            continue;
        }

        let (name, labels, value) = parse_sample_line(line).map_err(at)?;
        let (family, kind) = family_of(&name, &types)
            .ok_or_else(|| at(format!("sample {name} has no TYPE line before it")))?;
        if current.as_deref() != Some(family.as_str()) {
            if finished.contains(&family) {
                return Err(at(format!("family {family} is split in two places")));
            }
            if let Some(prev) = current.take() {
                finished.insert(prev);
            }
            current = Some(family.clone());
        }
        let key_labels: Vec<(String, String)> =
            labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if !seen.insert((name.clone(), key_labels)) {
            return Err(at("duplicate series".into()));
        }
        if kind == "counter" && (value.is_nan() || value < 0.0) {
            return Err(at("negative or NaN counter".into()));
        }
        if kind == "histogram" {
            let mut series_labels = labels.clone();
            let le = series_labels.remove("le");
            let key = (
                family.clone(),
                series_labels.into_iter().collect::<Vec<_>>(),
            );
            let h = hists.entry(key).or_default();
            match name.strip_prefix(family.as_str()) {
                Some("_bucket") => {
                    let le = le.ok_or_else(|| at("bucket without le".into()))?;
                    let bound =
                        parse_value(&le).ok_or_else(|| at(format!("le {le:?} is not a number")))?;
                    if let Some((last_le, last_count)) = h.buckets.last() {
                        if bound.is_nan() || bound <= *last_le {
                            return Err(at("le bounds not ascending".into()));
                        }
                        if value < *last_count {
                            return Err(at("bucket counts decrease".into()));
                        }
                    }
                    h.buckets.push((bound, value));
                }
                Some(suffix) => {
                    if le.is_some() {
                        return Err(at(format!("le label on {suffix}")));
                    }
                    if suffix == "_sum" {
                        h.sum = Some(value);
                    } else {
                        h.count = Some(value);
                    }
                }
                None => return Err(at("not a histogram sample".into())),
            }
        }
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }

    for ((family, labels), h) in &hists {
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
    Ok(samples)
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
            let mut eq = None;
            for (i, c) in chars.by_ref() {
                if c == '=' {
                    eq = Some(i);
                    break;
                }
            }
            let eq = eq.ok_or("label without =")?;
            let key = after.get(start..eq).unwrap_or("");
            if !valid_label_name(key) {
                return Err(format!("bad label name {key:?}"));
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("label {key} value not quoted"));
            }
            let mut value = String::new();
            loop {
                match chars.next().map(|(_, c)| c) {
                    Some('"') => break,
                    Some('\\') => match chars.next().map(|(_, c)| c) {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        other => return Err(format!("bad escape \\{other:?} in label {key}")),
                    },
                    Some('\n') | None => return Err(format!("unterminated value of label {key}")),
                    Some(c) => value.push(c),
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    const BUCKETS: &[f64] = &[0.001, 0.01, 0.1, 1.0];

    #[test]
    fn counter_near_max_renders_exactly() {
        let c = Counter::new();
        c.add(u64::MAX - 2);
        c.inc();
        let mut m = MetricsText::new();
        m.counter("mohd_packets_sent_total", "RTP packets sent.", &[], c.get());
        let text = m.finish();
        assert_eq!(
            text,
            "# HELP mohd_packets_sent_total RTP packets sent.\n\
             # TYPE mohd_packets_sent_total counter\n\
             mohd_packets_sent_total 18446744073709551614\n"
        );
        parse_text(&text).unwrap();
    }

    #[test]
    fn families_are_grouped_with_one_help_and_type() {
        let mut m = MetricsText::new();
        m.counter(
            "mohd_calls_total",
            "Calls by outcome.",
            &[("result", "answered")],
            7,
        )
        .gauge("mohd_active_calls", "Calls in progress.", &[], 2.0)
        .counter(
            "mohd_calls_total",
            "Calls by outcome.",
            &[("result", "rejected")],
            1,
        );
        let text = m.finish();
        assert_eq!(
            text,
            "# HELP mohd_calls_total Calls by outcome.\n\
             # TYPE mohd_calls_total counter\n\
             mohd_calls_total{result=\"answered\"} 7\n\
             mohd_calls_total{result=\"rejected\"} 1\n\
             # HELP mohd_active_calls Calls in progress.\n\
             # TYPE mohd_active_calls gauge\n\
             mohd_active_calls 2\n"
        );
        let s = parse_text(&text).unwrap();
        assert_eq!(
            value_of(&s, "mohd_calls_total", &[("result", "rejected")]),
            Some(1.0)
        );
        assert_eq!(value_of(&s, "mohd_calls_total", &[]), None);
        assert_eq!(value_of(&s, "mohd_active_calls", &[]), Some(2.0));
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(BUCKETS);
        for v in [0.0005, 0.001, 0.002, 0.05, 0.05, 0.5, 3.0, 100.0] {
            h.observe(v);
        }
        h.observe(f64::NAN);
        let mut m = MetricsText::new();
        m.histogram(
            "mohd_send_lateness_seconds",
            "How late RTP packets left.",
            &[("channel", "default")],
            &h,
        );
        let text = m.finish();
        let expected_tail = "\
mohd_send_lateness_seconds_bucket{channel=\"default\",le=\"0.001\"} 2
mohd_send_lateness_seconds_bucket{channel=\"default\",le=\"0.01\"} 3
mohd_send_lateness_seconds_bucket{channel=\"default\",le=\"0.1\"} 5
mohd_send_lateness_seconds_bucket{channel=\"default\",le=\"1\"} 6
mohd_send_lateness_seconds_bucket{channel=\"default\",le=\"+Inf\"} 8
mohd_send_lateness_seconds_sum{channel=\"default\"} 103.6035
mohd_send_lateness_seconds_count{channel=\"default\"} 8
";
        assert!(text.ends_with(expected_tail), "{text}");
        assert!(text.contains("# TYPE mohd_send_lateness_seconds histogram\n"));
        let s = parse_text(&text).unwrap();
        assert_eq!(
            value_of(
                &s,
                "mohd_send_lateness_seconds_count",
                &[("channel", "default")]
            ),
            Some(8.0)
        );
    }

    #[test]
    fn histogram_is_consistent_under_concurrent_observers() {
        let h = std::sync::Arc::new(Histogram::new(BUCKETS));
        let writers: Vec<_> = (0..2)
            .map(|t| {
                let h = h.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000u32 {
                        h.observe(f64::from(i % 7 + t) * 0.01);
                    }
                })
            })
            .collect();
        // Every snapshot taken meanwhile must render as valid text.
        for _ in 0..50 {
            let mut m = MetricsText::new();
            m.histogram("mohd_h", "h", &[], &h);
            parse_text(&m.finish()).unwrap();
        }
        for w in writers {
            w.join().unwrap();
        }
        let snap = h.snapshot();
        assert_eq!(snap.count(), 40_000);
        // Sum of (i % 7 + t) * 0.01 over both threads, in integer hundredths.
        let hundredths: u64 = (0..2u64)
            .map(|t| (0..20_000u64).map(|i| i % 7 + t).sum::<u64>())
            .sum();
        assert!((snap.sum - hundredths as f64 * 0.01).abs() < 1e-6);
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut m = MetricsText::new();
        m.gauge(
            "mohd_track_info",
            "Line one\nback\\slash",
            &[("name", "a \"quoted\" \\ name\nline2"), ("k", "ü✓")],
            1.0,
        );
        let text = m.finish();
        assert!(text.contains("# HELP mohd_track_info Line one\\nback\\\\slash\n"));
        assert!(
            text.contains(
                "mohd_track_info{name=\"a \\\"quoted\\\" \\\\ name\\nline2\",k=\"ü✓\"} 1\n"
            )
        );
        let s = parse_text(&text).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].labels["name"], "a \"quoted\" \\ name\nline2");
        assert_eq!(s[0].labels["k"], "ü✓");
    }

    #[test]
    fn gauge_values_render_and_round_trip() {
        let cases = [
            (0.0, "0"),
            (-3.0, "-3"),
            (0.1, "0.1"),
            (1e-7, "1e-7"),
            (1e300, "1e300"),
            (2.5e15, "2500000000000000.0"),
            (-12.25, "-12.25"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
        ];
        for (v, want) in cases {
            assert_eq!(fmt_f64(v), want);
            let mut m = MetricsText::new();
            m.gauge("g", "g", &[], v);
            let s = parse_text(&m.finish()).unwrap();
            assert_eq!(s[0].value, v, "{want}");
        }
        let mut m = MetricsText::new();
        m.gauge("g", "g", &[], f64::NAN);
        let s = parse_text(&m.finish()).unwrap();
        assert!(s[0].value.is_nan());

        let g = Gauge::new();
        assert_eq!(g.get(), 0.0);
        g.set(1.5);
        g.add(-2.0);
        assert_eq!(g.get(), -0.5);
    }

    #[test]
    fn parse_round_trip_of_a_full_document() {
        let h = Histogram::new(DEFAULT_BUCKETS);
        h.observe(0.2);
        let empty = Histogram::new(BUCKETS);
        let mut m = MetricsText::new();
        m.gauge("mohd_up", "1 while running.", &[], 1.0)
            .counter("mohd_calls_total", "Calls.", &[("result", "answered")], 3)
            .histogram(
                "mohd_render_seconds",
                "Render time.",
                &[("channel", "a")],
                &h,
            )
            .histogram(
                "mohd_render_seconds",
                "Render time.",
                &[("channel", "b")],
                &empty,
            )
            .counter("mohd_calls_total", "Calls.", &[("result", "failed")], 0);
        let text = m.finish();
        let s = parse_text(&text).unwrap();
        assert_eq!(
            value_of(&s, "mohd_calls_total", &[("result", "answered")]),
            Some(3.0)
        );
        assert_eq!(
            value_of(&s, "mohd_calls_total", &[("result", "failed")]),
            Some(0.0)
        );
        assert_eq!(
            value_of(
                &s,
                "mohd_render_seconds_bucket",
                &[("channel", "a"), ("le", "0.1")]
            ),
            Some(0.0)
        );
        assert_eq!(
            value_of(
                &s,
                "mohd_render_seconds_bucket",
                &[("channel", "a"), ("le", "0.25")]
            ),
            Some(1.0)
        );
        assert_eq!(
            value_of(&s, "mohd_render_seconds_sum", &[("channel", "a")]),
            Some(0.2)
        );
        assert_eq!(
            value_of(&s, "mohd_render_seconds_count", &[("channel", "b")]),
            Some(0.0)
        );
        // 1 gauge + 2 counters + 2 × (12 buckets? no: 11+1 and 4+1) + 2 × (sum, count)
        assert_eq!(s.len(), 1 + 2 + 12 + 5 + 4);
        assert_eq!(text.matches("# TYPE").count(), 3);
    }

    #[test]
    fn parser_rejects_malformed_text() {
        let bad = [
            ("x 1\n", "no TYPE"),
            ("# TYPE x counter\nx 1", "line feed"),
            ("# TYPE x counter\nx -1\n", "negative"),
            ("# TYPE x gauge\nx one\n", "bad value"),
            ("# TYPE x gauge\nx inf\n", "bad value"),
            ("# TYPE x gauge\nx 1\nx 2\n", "duplicate"),
            ("# TYPE x gauge\n# TYPE x gauge\n", "second TYPE"),
            ("# TYPE x gauge\nx 1\n# HELP x late\n", "after its samples"),
            (
                "# TYPE x gauge\n# TYPE y gauge\nx 1\ny 1\nx{a=\"b\"} 1\n",
                "split",
            ),
            ("# TYPE x gauge\nx{a=\"b} 1\n", "unterminated"),
            ("# TYPE x gauge\nx{a=\"\\t\"} 1\n", "escape"),
            ("# TYPE x gauge\nx{a=b} 1\n", "not quoted"),
            ("# TYPE x gauge\nx{a=\"1\",a=\"2\"} 1\n", "twice"),
            ("# TYPE x gauge\nx{0a=\"1\"} 1\n", "bad label name"),
            ("# TYPE x gauge\nx 1 2 3\n", "junk"),
            ("# TYPE x gauge\nx{a=\"1\"}1\n", "no space"),
            ("# TYPE x foo\n", "unknown type"),
            (
                "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
                "decrease",
            ),
            (
                "# TYPE h histogram\nh_bucket{le=\"2\"} 1\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
                "ascending",
            ),
            (
                "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
                "+Inf",
            ),
            (
                "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 1\n",
                "!= _count",
            ),
            (
                "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
                "_sum",
            ),
            (
                "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\n",
                "_count",
            ),
            ("# TYPE h histogram\nh_bucket 1\n", "without le"),
            ("# TYPE h histogram\nh 1\n", "no TYPE"),
        ];
        for (text, needle) in bad {
            let e = parse_text(text).expect_err(text);
            assert!(e.contains(needle), "{text:?}: {e:?} lacks {needle:?}");
        }
        // Accepted: comments, blank lines, timestamps, a trailing comma, an untyped family.
        let ok =
            "# a comment\n\n# TYPE x gauge\nx{a=\"1\",} 1 1700000000000\n# TYPE u untyped\nu 3\n";
        let s = parse_text(ok).unwrap();
        assert_eq!(value_of(&s, "x", &[("a", "1")]), Some(1.0));
        assert_eq!(parse_text("").unwrap(), vec![]);
    }

    #[test]
    #[should_panic(expected = "strictly ascending")]
    fn unsorted_bounds_are_a_programming_error() {
        static B: &[f64] = &[1.0, 0.5];
        let _ = Histogram::new(B);
    }

    /// Cross-checks the writer against the reference Python parser when it is installed
    /// (`pip install prometheus_client`); skipped with a note otherwise.
    #[test]
    fn python_prometheus_client_accepts_the_output() {
        use std::process::{Command, Stdio};
        let probe = Command::new("python3")
            .args(["-c", "import prometheus_client.parser"])
            .stderr(Stdio::null())
            .status();
        if !probe.is_ok_and(|s| s.success()) {
            println!("note: python3 with prometheus_client not available; cross-check skipped");
            return;
        }
        let h = Histogram::new(BUCKETS);
        for v in [0.0001, 0.05, 7.0] {
            h.observe(v);
        }
        let mut m = MetricsText::new();
        m.counter(
            "mohd_calls_total",
            "Calls by \"outcome\".\nSecond line \\.",
            &[("result", "answered")],
            u64::MAX - 1,
        )
        .gauge(
            "mohd_level_db",
            "Level.",
            &[("device", "hw:0,0 \"x\"\n\\")],
            -12.5,
        )
        .histogram("mohd_h_seconds", "H.", &[("channel", "default")], &h)
        .counter(
            "mohd_calls_total",
            "Calls by \"outcome\".\nSecond line \\.",
            &[("result", "rejected")],
            2,
        );
        let text = m.finish();
        let script = r#"
import sys, json
from prometheus_client.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.append([fam.name, fam.type, fam.documentation, s.name, s.labels, s.value])
print(json.dumps(out))
"#;
        let mut child = Command::new("python3")
            .args(["-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "python rejected:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let py: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        let ours = parse_text(&text).unwrap();
        assert_eq!(py.len(), ours.len(), "{py:?}");
        for (p, o) in py.iter().zip(&ours) {
            assert_eq!(p[3].as_str().unwrap(), o.name);
            let labels: BTreeMap<String, String> = serde_json::from_value(p[4].clone()).unwrap();
            assert_eq!(labels, o.labels);
            assert_eq!(p[5].as_f64().unwrap(), o.value, "{}", o.name);
        }
        let calls = py.iter().find(|p| p[3] == "mohd_calls_total").unwrap();
        assert_eq!(calls[1], "counter");
        assert_eq!(calls[2], "Calls by \"outcome\".\nSecond line \\.");
        let level = py.iter().find(|p| p[3] == "mohd_level_db").unwrap();
        assert_eq!(level[4]["device"], "hw:0,0 \"x\"\n\\");
        let types: Vec<_> = py.iter().map(|p| p[1].as_str().unwrap()).collect();
        assert!(types.contains(&"histogram"));
    }
}
