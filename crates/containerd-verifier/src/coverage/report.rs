//! The coverage report: text for people, JSON for scripts, SARIF for code scanning, and a
//! Prometheus textfile (node_exporter's textfile collector) for dashboards and alerts.

use serde_json::json;

use super::{Row, Status};
use crate::limits::printable;

/// Counts per status, in [`Status::ALL`] order.
pub fn totals(rows: &[Row]) -> Vec<(Status, usize)> {
    Status::ALL.iter().map(|s| (*s, rows.iter().filter(|r| r.status == *s).count())).collect()
}

pub fn text(target: &str, rows: &[Row], cut: bool) -> String {
    let mut out = String::new();
    for row in rows {
        out.push_str(&format!(
            "{:<10} {}  ({}{})\n",
            row.status.word(),
            printable(&row.item.image),
            row.reason,
            row.rule.as_deref().map(|r| format!(", rule {r}")).unwrap_or_default()
        ));
        if row.status != Status::Admitted {
            out.push_str(&format!("           {}\n", printable(&crate::limits::short(&row.message, 400))));
        }
    }
    let counts: Vec<String> = totals(rows).into_iter().filter(|(_, n)| *n > 0).map(|(s, n)| format!("{n} {}", s.word())).collect();
    let signed = rows.iter().filter(|r| r.status == Status::Admitted).count();
    out.push_str(&format!("{target}: {} image(s): {}", rows.len(), if counts.is_empty() { "none".into() } else { counts.join(", ") }));
    if !rows.is_empty() {
        out.push_str(&format!(" — {:.1}% admitted", 100.0 * signed as f64 / rows.len() as f64));
    }
    out.push('\n');
    if cut {
        out.push_str(&format!("note: the listing had more than {} images; the rest were not decided\n", super::MAX_IMAGES));
    }
    out
}

fn row_json(row: &Row) -> serde_json::Value {
    json!({
        "image": row.item.image, "decided": row.decided, "status": row.status.word(), "reason": row.reason, "message": row.message,
        "rule": row.rule, "signers": row.signers, "found": row.item.found, "signedBy": row.item.signed_by,
    })
}

pub fn json(target: &str, rows: &[Row], cut: bool) -> serde_json::Value {
    let totals: serde_json::Map<String, serde_json::Value> = totals(rows).into_iter().map(|(s, n)| (s.word().to_owned(), json!(n))).collect();
    let list = |status: Status| rows.iter().filter(|r| r.status == status).map(|r| json!(r.item.image)).collect::<Vec<_>>();
    json!({
        "target": target, "images": rows.len(), "truncated": cut, "totals": totals,
        "unsigned": list(Status::Unsigned), "revoked": list(Status::Revoked), "untrusted": list(Status::Untrusted),
        "results": rows.iter().map(row_json).collect::<Vec<_>>(),
    })
}

pub fn sarif(rows: &[Row]) -> serde_json::Value {
    let mut rules: Vec<&str> = rows.iter().map(|r| r.reason).collect();
    rules.sort_unstable();
    rules.dedup();
    let results = rows
        .iter()
        .map(|row| {
            json!({
                "ruleId": row.reason,
                "level": match row.status { Status::Admitted => "none", Status::Audited | Status::Undecided => "warning", _ => "error" },
                "kind": if row.status == Status::Admitted { "pass" } else { "fail" },
                "message": {"text": format!("{}: {}", row.status.word(), row.message)},
                "locations": [{"physicalLocation": {"artifactLocation": {"uri": if row.decided.is_empty() { &row.item.image } else { &row.decided }}}}],
                "properties": {"status": row.status.word(), "rule": row.rule, "signers": row.signers, "found": row.item.found},
            })
        })
        .collect();
    crate::engine::sarif_log(&rules, results)
}

/// Label values are escaped as the exposition format requires (\\, \", \n).
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

pub fn prometheus(target: &str, rows: &[Row], now_seconds: i64) -> String {
    let target = label(target);
    let mut out = String::new();
    out.push_str("# HELP atproto_verifier_coverage_images Images of the coverage target, by status under the trust policy.\n");
    out.push_str("# TYPE atproto_verifier_coverage_images gauge\n");
    for (status, n) in totals(rows) {
        out.push_str(&format!("atproto_verifier_coverage_images{{target=\"{target}\",status=\"{}\"}} {n}\n", status.word()));
    }
    out.push_str("# HELP atproto_verifier_coverage_image One per image: 1, with its status and reason.\n");
    out.push_str("# TYPE atproto_verifier_coverage_image gauge\n");
    for row in rows {
        out.push_str(&format!(
            "atproto_verifier_coverage_image{{target=\"{target}\",image=\"{}\",status=\"{}\",reason=\"{}\"}} 1\n",
            label(&row.item.image),
            row.status.word(),
            row.reason
        ));
    }
    out.push_str("# HELP atproto_verifier_coverage_timestamp_seconds When this report was made.\n");
    out.push_str("# TYPE atproto_verifier_coverage_timestamp_seconds gauge\n");
    out.push_str(&format!("atproto_verifier_coverage_timestamp_seconds{{target=\"{target}\"}} {now_seconds}\n"));
    out
}
