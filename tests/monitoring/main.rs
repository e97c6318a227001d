//! The shipped monitoring against a real Prometheus (Debian's `prometheus` and `promtool`): the
//! alerts are valid and pass their tests; every metric the alerts and the dashboard use is one
//! that `serve --watch` exports (Prometheus scrapes a running server over HTTPS on loopback and
//! is asked for the names it stored); the copies in the Helm chart and the PrometheusRule are
//! the same as packaging/monitoring/.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "../integration/harness.rs"]
mod harness;
#[path = "../support/pki.rs"]
mod pki;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use harness::{env, free_port, policy, repo_root};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn monitoring() -> PathBuf {
    repo_root().join("packaging/monitoring")
}

/// A Debian binary the tests need; missing is a failure that says what to install.
fn debian(tool: &str) -> PathBuf {
    let path = Path::new("/usr/bin").join(tool);
    assert!(path.exists(), "{} is missing: apt-get install prometheus (scripts/test installs it)", path.display());
    path
}

/// Every `atproto_verifier_*` metric name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut at = 0;
    while let Some(found) = text[at..].find("atproto_verifier_") {
        let start = at + found;
        let end = start + text[start..].bytes().take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_').count();
        names.insert(text[start..end].to_owned());
        at = end.max(start + 1);
        if at >= bytes.len() {
            break;
        }
    }
    names
}

#[test]
fn the_alerts_are_valid_and_pass_their_tests() {
    let promtool = debian("promtool");
    let out = Command::new(&promtool).args(["check", "rules", "rules.yaml"]).current_dir(monitoring()).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCESS: 11 rules found"), "{}", String::from_utf8_lossy(&out.stdout));
    let out = Command::new(&promtool).args(["test", "rules", "rules.test.yaml"]).current_dir(monitoring()).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // Every alert has a test that expects it to fire.
    let rules = std::fs::read_to_string(monitoring().join("rules.yaml")).unwrap();
    let tests = std::fs::read_to_string(monitoring().join("rules.test.yaml")).unwrap();
    for alert in rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        let firing = tests.split("alertname: ").skip(1).any(|rest| rest.starts_with(alert) && rest.lines().nth(1).is_some_and(|l| l.contains("exp_alerts:")));
        assert!(firing, "no test expects {alert} to fire");
    }
}

#[test]
fn the_chart_and_the_prometheusrule_carry_the_same_rules_and_dashboard() {
    let dir = monitoring();
    let chart = repo_root().join("packaging/kubernetes/helm/atproto-verifier/files");
    for file in ["rules.yaml", "dashboard.json"] {
        assert_eq!(std::fs::read(chart.join(file)).unwrap(), std::fs::read(dir.join(file)).unwrap(), "{file} differs in the chart");
    }
    let rules = std::fs::read_to_string(dir.join("rules.yaml")).unwrap();
    let groups = &rules[rules.find("groups:").unwrap()..];
    let indented: String = groups.lines().map(|l| if l.trim().is_empty() { "\n".to_owned() } else { format!("  {l}\n") }).collect();
    let operator = std::fs::read_to_string(dir.join("prometheusrule.yaml")).unwrap();
    assert!(operator.ends_with(&indented), "prometheusrule.yaml's groups are not rules.yaml's");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("dashboard.json")).unwrap()).unwrap();
    assert!(dashboard["panels"].as_array().unwrap().len() >= 10);
}

/// `serve --watch` running, its PDS source connected and a review answered; Prometheus scraping
/// it every second: every name the alerts and the dashboard use is stored.
#[test]
fn prometheus_scrapes_serve_and_every_metric_the_alerts_and_dashboard_use_exists() {
    let env = env();
    let dir = tempfile::tempdir().unwrap();
    let account = env.pds.create_account("promwatch");
    let r = &env.registry.host;
    let digest = env.registry.push_image("promwatch.test/app", "v1", "prom-signed");
    env.pds.put_manifest(&account, &digest, "app", OCI_MANIFEST);
    let rules = format!("  - name: signed\n    scope: \"{r}/**\"\n    require: {{ signature: true }}\n    action: enforce\n");
    let config = format!("plc_directory = {:?}\nhandle_resolver = {:?}\natproto_registries = [{r:?}]\n", env.pds.plc, env.pds.pds);
    let verifier =
        harness::Verifier::new(&config, &policy(&[(&account.handle, &account.did, None)], &rules, "{ action: enforce, require: { signature: true } }"));
    let (cert, key) = pki::issue(dir.path(), "ca", "serve");
    let (port, metrics_port) = (free_port(), free_port());
    let args: Vec<String> = vec![
        "serve".into(),
        format!("--listen=127.0.0.1:{port}"),
        format!("--tls-cert={}", cert.display()),
        format!("--tls-key={}", key.display()),
        format!("--config={}", verifier.config.display()),
        "--watch".into(),
        format!("--metrics-listen=127.0.0.1:{metrics_port}"),
    ];
    let _serve = harness::spawn_tied(Path::new(env!("CARGO_BIN_EXE_atproto-verifier")), &args, &[], &dir.path().join("serve.log"));
    let base = format!("https://127.0.0.1:{port}");
    let agent = {
        use ureq::tls::{Certificate, RootCerts, TlsConfig};
        let ca = Certificate::from_pem(&std::fs::read(dir.path().join("ca.crt")).unwrap()).unwrap().to_owned();
        let tls = TlsConfig::builder().root_certs(RootCerts::Specific(std::sync::Arc::new(vec![ca]))).build();
        ureq::Agent::config_builder().tls_config(tls).http_status_as_error(false).timeout_global(Some(Duration::from_secs(30))).build().new_agent()
    };
    let metrics =
        |agent: &ureq::Agent| agent.get(&format!("{base}/metrics")).call().ok().and_then(|mut r| r.body_mut().read_to_string().ok()).unwrap_or_default();
    let started = Instant::now();
    while !metrics(&agent).lines().any(|l| l.starts_with("atproto_verifier_watch_source_connected{") && l.ends_with(" 1")) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the watcher never connected:\n{}",
            std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A review answered, and an event from the watched repository (lag, events).
    let review = serde_json::json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "namespace": "ns", "operation": "CREATE",
        "object": {"spec": {"containers": [{"name": "app", "image": format!("{r}/promwatch.test/app:v1")}]}}}});
    let answer = agent
        .post(&format!("{base}/validate"))
        .header("content-type", "application/json")
        .send(review.to_string())
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(answer.contains("\"allowed\":true"), "{answer}");
    let other = env.registry.push_image("promwatch.test/app", "v2", "prom-signed-2");
    env.pds.put_manifest(&account, &other, "app", OCI_MANIFEST);
    let started = Instant::now();
    while !metrics(&agent).contains("atproto_verifier_watch_lag_seconds{") {
        assert!(started.elapsed() < Duration::from_secs(30), "no event reached the watcher:\n{}", metrics(&agent));
        std::thread::sleep(Duration::from_millis(100));
    }

    // The metrics port serves the same families in plain HTTP, and never a decision.
    let plain: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(10))).build().into();
    let on_metrics_port = plain.get(&format!("http://127.0.0.1:{metrics_port}/metrics")).call().unwrap().body_mut().read_to_string().unwrap();
    assert!(on_metrics_port.contains("atproto_verifier_admission_decisions_total{") && on_metrics_port.contains("atproto_verifier_watch_source_connected{"));
    let refused = plain.post(&format!("http://127.0.0.1:{metrics_port}/validate")).header("content-type", "application/json").send(review.to_string()).unwrap();
    assert_eq!(refused.status().as_u16(), 404);

    // Prometheus on loopback, scraping the metrics port (and the HTTPS port, with the test CA).
    let prom_port = free_port();
    let prom_config = dir.path().join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [{:?}]\nscrape_configs:\n  - job_name: atproto-verifier\n    static_configs:\n      - targets: [\"127.0.0.1:{metrics_port}\"]\n  - job_name: atproto-verifier-https\n    scheme: https\n    tls_config: {{ca_file: {:?}}}\n    static_configs:\n      - targets: [\"127.0.0.1:{port}\"]\n",
            monitoring().join("rules.yaml"),
            dir.path().join("ca.crt")
        ),
    )
    .unwrap();
    let prom_args = vec![
        format!("--config.file={}", prom_config.display()),
        format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()),
        format!("--web.listen-address=127.0.0.1:{prom_port}"),
    ];
    let _prometheus = harness::spawn_tied(&debian("prometheus"), &prom_args, &[], &dir.path().join("prometheus.log"));
    let mut needed = metric_names(&std::fs::read_to_string(monitoring().join("rules.yaml")).unwrap());
    needed.extend(metric_names(&std::fs::read_to_string(monitoring().join("dashboard.json")).unwrap()));
    assert!(needed.len() >= 25, "{needed:?}");
    let started = Instant::now();
    let missing = loop {
        let stored: BTreeSet<String> = plain
            .get(&format!("http://127.0.0.1:{prom_port}/api/v1/label/__name__/values"))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["data"].as_array().map(|a| a.iter().filter_map(|n| n.as_str().map(str::to_owned)).collect()))
            .unwrap_or_default();
        let missing: Vec<&String> = needed.iter().filter(|n| !stored.contains(*n)).collect();
        if missing.is_empty() {
            break missing;
        }
        if started.elapsed() > Duration::from_secs(90) {
            break missing;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        missing.is_empty(),
        "used by the alerts or the dashboard but not scraped: {missing:?}\nserver's /metrics:\n{}\nprometheus log:\n{}",
        metrics(&agent),
        std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
    );
    // And Prometheus loaded the alerts.
    let loaded = plain.get(&format!("http://127.0.0.1:{prom_port}/api/v1/rules")).call().unwrap().body_mut().read_to_string().unwrap();
    assert!(loaded.contains("AtprotoVerifierWatcherDisconnected") && loaded.contains("AtprotoVerifierCertificateExpiring"), "{loaded}");
}
