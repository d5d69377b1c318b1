//! Metrics: the lock-free [`Histogram`] that the server's parts observe into, and the writers
//! that put our counters, gauges and histograms into the `/metrics` document. Which families
//! `/metrics` shows, and where each one's value comes from, is [`families`].
//!
//! The text (Prometheus exposition format 0.0.4) is written by the `prometheus-client` crate's
//! encoder. Each scrape builds its own `Registry` (a value, not a process global: a test process
//! runs several servers) and registers one [`Collector`] per group of families, which reads
//! the server's atomics and status snapshots at that moment.
//!
//! The cells themselves stay ours. prometheus-client's `Histogram` takes a mutex on every
//! `observe`, and the media thread must neither lock nor allocate ([`Histogram::observe`]
//! does neither); its counters would do, but ours are plain atomics in the structs each
//! subsystem already owns (`MediaStats`, `EndpointStats`, `CallMetrics`), read at scrape time
//! like the gauges that come from status snapshots.

pub mod families;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, NoLabelSet, prometheus_text,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// `Content-Type` of the `/metrics` response.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// A distribution over fixed buckets. Each observation lands in exactly one (non-cumulative)
/// bucket; a snapshot accumulates them, and derives the count from the buckets so that the
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
    pub bounds: Vec<f64>,
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

    /// `(upper bound, count in that bucket alone)` for every finite bound: the form the
    /// encoder takes (it accumulates them, and writes `+Inf` from [`Self::count`]).
    fn finite_buckets(&self) -> Vec<(f64, u64)> {
        let mut below = 0;
        self.bounds
            .iter()
            .zip(&self.cumulative)
            .map(|(&le, &cum)| {
                let in_bucket = cum.saturating_sub(below);
                below = cum;
                (le, in_bucket)
            })
            .collect()
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
            bounds: self.bounds.to_vec(),
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

/// The exposition of these collectors' families, in order.
pub fn encode(collectors: impl IntoIterator<Item = Box<dyn Collector>>) -> String {
    let mut registry = Registry::default();
    for c in collectors {
        registry.register_collector(c);
    }
    let mut text = String::new();
    // Writing to a String cannot fail, and our values all fit the encoder's number types; an
    // error would be a bug in a collector, so it is logged and the scrape gets what was written.
    if let Err(e) = prometheus_text::encode(&mut text, &registry) {
        tracing::error!(error = %e, "encoding /metrics failed");
    }
    text
}

/// A counter family with one series per label set; nothing when `series` is empty. `name` is
/// the exposed name, ending in `_total` (the encoder appends that suffix itself, so it is
/// taken off here: the source then shows the name dashboards query).
pub fn counters<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut series = series.into_iter().peekable();
    if series.peek().is_none() {
        return Ok(());
    }
    let mut family = enc.encode_descriptor(counter_base(name), help, None, MetricType::Counter)?;
    for (labels, v) in series {
        family
            .encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
    }
    Ok(())
}

/// A counter without labels (see [`counters`] for `name`).
pub fn counter(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> fmt::Result {
    enc.encode_descriptor(counter_base(name), help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&v, None)
}

fn counter_base(name: &str) -> &str {
    debug_assert!(
        name.ends_with("_total"),
        "counter {name} must end in _total"
    );
    name.strip_suffix("_total").unwrap_or(name)
}

/// A gauge family with one series per label set; nothing when `series` is empty.
pub fn gauges<L: EncodeLabelSet, V: EncodeGaugeValue>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, V)>,
) -> fmt::Result {
    let mut series = series.into_iter().peekable();
    if series.peek().is_none() {
        return Ok(());
    }
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in series {
        family.encode_family(&labels)?.encode_gauge(&v)?;
    }
    Ok(())
}

/// A gauge without labels.
pub fn gauge<V: EncodeGaugeValue>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    v: V,
) -> fmt::Result {
    enc.encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&v)
}

/// A histogram without labels: `_bucket` lines (cumulative, ending with `le="+Inf"`), `_sum`
/// and `_count`.
pub fn histogram(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    h: &HistogramSnapshot,
) -> fmt::Result {
    enc.encode_descriptor(name, help, None, MetricType::Histogram)?
        .encode_histogram::<NoLabelSet>(h.sum, h.count(), &h.finite_buckets(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUCKETS: &[f64] = &[0.001, 0.01, 0.1, 1.0];

    /// A collector made of a closure, so each test writes just its families.
    struct Families<F>(F);

    impl<F> fmt::Debug for Families<F> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Families")
        }
    }

    impl<F> Collector for Families<F>
    where
        F: Fn(&mut DescriptorEncoder<'_>) -> fmt::Result + Send + Sync + 'static,
    {
        fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
            (self.0)(&mut enc)
        }
    }

    fn text(
        f: impl Fn(&mut DescriptorEncoder<'_>) -> fmt::Result + Send + Sync + 'static,
    ) -> String {
        encode([Box::new(Families(f)) as Box<dyn Collector>])
    }

    #[test]
    fn counter_near_max_renders_exactly() {
        assert_eq!(
            text(|e| counter(
                e,
                "mohd_packets_sent_total",
                "RTP packets sent.",
                u64::MAX - 1
            )),
            "# HELP mohd_packets_sent_total RTP packets sent.\n\
             # TYPE mohd_packets_sent_total counter\n\
             mohd_packets_sent_total 18446744073709551614\n"
        );
    }

    #[test]
    fn families_have_one_help_and_type_and_empty_ones_are_left_out() {
        let t = text(|e| {
            counters(
                e,
                "mohd_calls_total",
                "Calls by outcome.",
                [([("result", "answered")], 7), ([("result", "rejected")], 1)],
            )?;
            gauge(e, "mohd_active_calls", "Calls in progress.", 2u64)?;
            gauges(
                e,
                "mohd_none",
                "Never shown.",
                Vec::<([(&str, &str); 1], u64)>::new(),
            )
        });
        assert_eq!(
            t,
            "# HELP mohd_calls_total Calls by outcome.\n\
             # TYPE mohd_calls_total counter\n\
             mohd_calls_total{result=\"answered\"} 7\n\
             mohd_calls_total{result=\"rejected\"} 1\n\
             # HELP mohd_active_calls Calls in progress.\n\
             # TYPE mohd_active_calls gauge\n\
             mohd_active_calls 2\n"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(BUCKETS);
        for v in [0.0005, 0.001, 0.002, 0.05, 0.05, 0.5, 3.0, 100.0] {
            h.observe(v);
        }
        h.observe(f64::NAN);
        let snap = h.snapshot();
        let t = text(move |e| histogram(e, "mohd_x_seconds", "How late.", &snap));
        assert_eq!(
            t,
            "# HELP mohd_x_seconds How late.\n\
             # TYPE mohd_x_seconds histogram\n\
             mohd_x_seconds_bucket{le=\"0.001\"} 2\n\
             mohd_x_seconds_bucket{le=\"0.01\"} 3\n\
             mohd_x_seconds_bucket{le=\"0.1\"} 5\n\
             mohd_x_seconds_bucket{le=\"1\"} 6\n\
             mohd_x_seconds_bucket{le=\"+Inf\"} 8\n\
             mohd_x_seconds_sum 103.6035\n\
             mohd_x_seconds_count 8\n"
        );
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let t = text(|e| {
            gauges(
                e,
                "mohd_track_info",
                "Line one\nback\\slash",
                [([("name", "a \"quoted\" \\ name\nline2"), ("k", "ü✓")], 1u64)],
            )
        });
        assert!(
            t.contains("# HELP mohd_track_info Line one\\nback\\\\slash\n"),
            "{t}"
        );
        assert!(
            t.contains("mohd_track_info{name=\"a \\\"quoted\\\" \\\\ name\\nline2\",k=\"ü✓\"} 1\n"),
            "{t}"
        );
    }

    #[test]
    fn gauge_values_render() {
        for (v, want) in [
            (0.0, "0.0"),
            (-12.25, "-12.25"),
            (1e-7, "1e-7"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (f64::NAN, "NaN"),
        ] {
            let t = text(move |e| gauge(e, "g", "g", v));
            assert!(t.ends_with(&format!("\ng {want}\n")), "{v}: {t}");
        }
    }

    #[test]
    #[should_panic(expected = "strictly ascending")]
    fn unsorted_bounds_are_a_programming_error() {
        static B: &[f64] = &[1.0, 0.5];
        let _ = Histogram::new(B);
    }
}
