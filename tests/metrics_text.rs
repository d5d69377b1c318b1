//! The `/metrics` text as scrapers read it: documents written through `mohd::metrics` parse
//! strictly (tests/common/prom.rs), pass `promtool check metrics`, and read the same in the
//! reference Python client; and the strict parser itself refuses what Prometheus would.

mod common;

use std::collections::BTreeMap;
use std::fmt;
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::prom::{parse_text, promtool_accepts, value_of};
use mohd::metrics::{Histogram, counter, counters, encode, gauges, histogram};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

const BUCKETS: &[f64] = &[0.001, 0.01, 0.1, 1.0];

/// A document with every kind of family, the edge values and every escape.
#[derive(Debug)]
struct Sampler {
    histogram: Arc<Histogram>,
}

impl Collector for Sampler {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        counters(
            &mut enc,
            "mohd_calls_total",
            "Calls by \"outcome\".\nSecond line \\.",
            [
                ([("result", "answered")], u64::MAX - 1),
                ([("result", "rejected")], 2),
            ],
        )?;
        gauges(
            &mut enc,
            "mohd_level_db",
            "Level.",
            [([("device", "hw:0,0 \"x\"\n\\")], -12.5)],
        )?;
        counter(&mut enc, "mohd_renders_total", "Renders.", 0)?;
        histogram(
            &mut enc,
            "mohd_wait_seconds",
            "H.",
            &self.histogram.snapshot(),
        )
    }
}

fn document(h: &Arc<Histogram>) -> String {
    encode([Box::new(Sampler {
        histogram: h.clone(),
    }) as Box<dyn Collector>])
}

fn observed() -> Arc<Histogram> {
    let h = Arc::new(Histogram::new(BUCKETS));
    for v in [0.0001, 0.05, 0.05, 7.0] {
        h.observe(v);
    }
    h
}

#[test]
fn a_document_parses_strictly_with_its_values() {
    let text = document(&observed());
    let s = parse_text(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(
        value_of(&s, "mohd_calls_total", &[("result", "rejected")]),
        Some(2.0)
    );
    assert_eq!(value_of(&s, "mohd_calls_total", &[]), None);
    assert_eq!(
        value_of(&s, "mohd_level_db", &[("device", "hw:0,0 \"x\"\n\\")]),
        Some(-12.5)
    );
    assert_eq!(value_of(&s, "mohd_renders_total", &[]), Some(0.0));
    assert_eq!(
        value_of(&s, "mohd_wait_seconds_bucket", &[("le", "0.01")]),
        Some(1.0)
    );
    assert_eq!(
        value_of(&s, "mohd_wait_seconds_bucket", &[("le", "0.1")]),
        Some(3.0)
    );
    assert_eq!(
        value_of(&s, "mohd_wait_seconds_bucket", &[("le", "+Inf")]),
        Some(4.0)
    );
    assert_eq!(value_of(&s, "mohd_wait_seconds_count", &[]), Some(4.0));
    // 2 counters + 1 gauge + 1 counter + 5 buckets, _sum and _count.
    assert_eq!(s.len(), 2 + 1 + 1 + 5 + 2);
    assert_eq!(text.matches("# TYPE").count(), 4);
}

#[test]
fn documents_taken_while_observers_run_stay_valid_and_add_up() {
    let h = Arc::new(Histogram::new(BUCKETS));
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
    for _ in 0..50 {
        let text = document(&h);
        parse_text(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
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
fn promtool_accepts_a_document() {
    promtool_accepts(&document(&observed()));
}

/// Every family `/metrics` can show (the line-out and registrations too, which the loopback
/// server of tests/web_api.rs has not), as pinned by `metrics::families`' golden test.
#[test]
fn every_mohd_family_parses_and_passes_promtool() {
    let text = include_str!("../src/metrics/families.golden.txt").replace("VERSION", "0.1.0");
    let samples = parse_text(&text).unwrap_or_else(|e| panic!("{e}"));
    assert!(samples.iter().any(|s| s.name == "mohd_lineout_playing"));
    promtool_accepts(&text);
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
    let ok = "# a comment\n\n# TYPE x gauge\nx{a=\"1\",} 1 1700000000000\n# TYPE u untyped\nu 3\n";
    let s = parse_text(ok).unwrap();
    assert_eq!(value_of(&s, "x", &[("a", "1")]), Some(1.0));
    assert_eq!(parse_text("").unwrap(), vec![]);
}

/// Cross-checks the writer against the reference Python parser when it is installed
/// (`pip install prometheus_client`); skipped with a note otherwise.
#[test]
fn python_prometheus_client_accepts_the_output() {
    let probe = Command::new("python3")
        .args(["-c", "import prometheus_client.parser"])
        .stderr(Stdio::null())
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        println!("note: python3 with prometheus_client not available; cross-check skipped");
        return;
    }
    let text = document(&observed());
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
