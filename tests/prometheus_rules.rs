//! The fleet monitoring example (`examples/prometheus/`) as Prometheus itself reads it:
//! `promtool check config` (the scrape config and its file-discovered targets), `promtool check
//! rules` and `promtool test rules` (each alert fires on synthetic series of a failing box and
//! stays quiet for a healthy one), run on the files unchanged. promtool comes with Debian's
//! `prometheus` package (scripts/setup-deps); without it the checks are skipped with a notice,
//! except under CI.
//!
//! And the rules watch what mohd really exports: every `mohd_*` series an alert reads is a
//! family of `/metrics` (src/metrics/families.golden.txt), so renaming a metric cannot silently
//! blind the fleet's alerts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/prometheus")
}

/// Runs `promtool ARGS` in the example's folder (where its relative paths point) and asserts
/// success; false when promtool is not installed here (outside CI).
fn promtool(args: &[&str]) -> bool {
    let out = match Command::new("promtool")
        .args(args)
        .current_dir(example_dir())
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "promtool is not installed ({e}): Debian package prometheus, run scripts/setup-deps"
            );
            eprintln!("NOTICE: promtool is not installed (apt-get install prometheus): skipped");
            return false;
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "promtool {} refused:\n{stdout}{stderr}",
        args.join(" ")
    );
    true
}

#[test]
fn scrape_config_and_targets_are_valid() {
    if !promtool(&["check", "config", "prometheus.yml"]) {
        return;
    }
    // The check reads the discovered targets too: at least one example file is there.
    let targets = std::fs::read_dir(example_dir().join("targets"))
        .expect("examples/prometheus/targets")
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "yml"))
        .count();
    assert!(targets > 0, "no targets/*.yml example");
}

#[test]
fn alert_rules_are_valid() {
    promtool(&["check", "rules", "mohd-alerts.yml"]);
}

#[test]
fn each_alert_fires_on_a_failing_box_and_not_on_a_healthy_one() {
    if !promtool(&["test", "rules", "mohd-alerts.test.yml"]) {
        return;
    }
    // Every alert of the rules file has a test case.
    let rules = read("mohd-alerts.yml");
    let tests = read("mohd-alerts.test.yml");
    for alert in values_of(&rules, "- alert:") {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "alert {alert} has no case in mohd-alerts.test.yml"
        );
    }
}

#[test]
fn alerts_read_only_metrics_mohd_exports() {
    let rules = read("mohd-alerts.yml");
    let golden = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/metrics/families.golden.txt"),
    )
    .expect("families.golden.txt");
    let exported: BTreeSet<&str> = golden
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let exprs = values_of(&rules, "expr:");
    assert!(!exprs.is_empty(), "no expr in mohd-alerts.yml");
    let mut read_any = false;
    for expr in &exprs {
        for name in metric_names(expr) {
            read_any = true;
            assert!(
                exported.contains(name.as_str()),
                "an alert reads {name}, which /metrics does not export (families.golden.txt): {expr}"
            );
        }
    }
    assert!(read_any, "no mohd_* metric in the alerts");
}

fn read(name: &str) -> String {
    std::fs::read_to_string(example_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// What follows `key` on each line that starts with it (after indentation).
fn values_of(yaml: &str, key: &str) -> Vec<String> {
    yaml.lines()
        .filter_map(|l| l.trim_start().strip_prefix(key))
        .map(|v| v.trim().to_owned())
        .collect()
}

/// The `mohd_*` names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("mohd_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.push(name);
    }
    names
}
