//! How an audit is shown: a table for people, JSON (the `Report` as is), SARIF 2.1.0 for code
//! scanning dashboards; and the baseline a previous JSON report gives.

use std::{collections::BTreeSet, path::Path};

use serde_json::{Value, json};

use super::{Finding, Report};

/// What identifies a finding across runs: the value's fingerprint, the rule and where it is
/// (layer and history indices change when a base image is rebuilt; the path does not).
pub fn baseline_key(finding: &Finding) -> String {
    format!(
        "{}|{}|{}|{}",
        finding.fingerprint,
        finding.rule,
        finding.path.as_deref().unwrap_or(""),
        finding.key.as_deref().unwrap_or("")
    )
}

pub fn baseline(path: &Path) -> Result<BTreeSet<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let report: Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let findings = report["findings"].as_array().ok_or_else(|| {
        format!(
            "{}: no findings array (not a --format json report)",
            path.display()
        )
    })?;
    Ok(findings
        .iter()
        .map(|f| {
            format!(
                "{}|{}|{}|{}",
                f["fingerprint"].as_str().unwrap_or(""),
                f["rule"].as_str().unwrap_or(""),
                f["path"].as_str().unwrap_or(""),
                f["key"].as_str().unwrap_or("")
            )
        })
        .collect())
}

fn location(f: &Finding) -> String {
    match (f.source, &f.path, &f.key) {
        (_, Some(path), _) => format!("layer {} {path}", f.layer.unwrap_or(0)),
        (super::Source::History, None, key) => format!(
            "history {} {}{}",
            f.history.unwrap_or(0),
            f.instruction.as_deref().unwrap_or(""),
            key.as_deref().map(|k| format!(" {k}")).unwrap_or_default()
        ),
        (source, None, Some(key)) => {
            format!("{source:?} {key}")
                .to_lowercase()
                .replacen(&key.to_lowercase(), key, 1)
        }
        (source, None, None) => format!("{source:?}").to_lowercase(),
    }
}

pub fn table(report: &Report) -> String {
    let mut out = String::new();
    for image in &report.images {
        let count = report
            .findings
            .iter()
            .filter(|f| f.image == image.image && f.platform == image.platform)
            .count();
        out += &format!(
            "{} ({}, {}): {} layer(s), {} file(s), {} MB, {count} finding(s)\n",
            image.image,
            image.platform,
            image.manifest_digest,
            image.layers,
            image.stats.files,
            image.stats.uncompressed_bytes / 1_000_000
        );
    }
    if report.findings.is_empty() {
        out += "no findings\n";
        return out;
    }
    let rows: Vec<[String; 6]> = report
        .findings
        .iter()
        .map(|f| {
            [
                format!(
                    "{}{}",
                    f.severity.name(),
                    if f.baselined { " (baseline)" } else { "" }
                ),
                f.status.name().to_string(),
                f.rule.clone(),
                f.category.name().to_string(),
                location(f),
                f.preview.clone(),
            ]
        })
        .collect();
    let header = ["SEVERITY", "STATUS", "RULE", "CATEGORY", "WHERE", "PREVIEW"].map(String::from);
    let mut widths = [0usize; 6];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out += cells.join("  ").trim_end();
        out += "\n";
    }
    out
}

/// SARIF 2.1.0: one result per finding; the artifact is the image (and the path inside it).
pub fn sarif(report: &Report) -> Value {
    let rules: BTreeSet<&str> = report.findings.iter().map(|f| f.rule.as_str()).collect();
    let results: Vec<Value> = report
        .findings
        .iter()
        .map(|f| {
            let level = match f.severity {
                super::Severity::Critical | super::Severity::High => "error",
                super::Severity::Medium => "warning",
                super::Severity::Low => "note",
            };
            let uri = match &f.path {
                Some(path) => format!("{}{path}", f.image),
                None => f.image.clone(),
            };
            json!({
                "ruleId": f.rule,
                "level": level,
                "message": {"text": format!("{} credential ({}), {}: {}", f.rule, f.status.name(), location(f), f.preview)},
                "locations": [{"physicalLocation": {"artifactLocation": {"uri": uri}}}],
                "partialFingerprints": {"credwatchFingerprint/v1": f.fingerprint},
                "baselineState": if f.baselined { "unchanged" } else { "new" },
                "properties": {
                    "severity": f.severity.name(),
                    "status": f.status.name(),
                    "source": f.source,
                    "category": f.category,
                    "manifestDigest": f.manifest_digest,
                    "platform": f.platform,
                    "layer": f.layer,
                    "diffId": f.diff_id,
                    "history": f.history,
                },
            })
        })
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "credwatch",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": rules.iter().map(|r| json!({"id": r, "shortDescription": {"text": format!("credential baked into an image: {r}")}})).collect::<Vec<_>>(),
            }},
            "results": results,
            "invocations": [{
                "executionSuccessful": report.incomplete.is_empty(),
                "toolExecutionNotifications": report.incomplete.iter().map(|p| json!({"level": "error", "message": {"text": p}})).collect::<Vec<_>>(),
            }],
        }],
    })
}
