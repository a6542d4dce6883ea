//! The Prometheus door, with the real thing: Debian's `promtool` checks and unit-tests the
//! shipped alert rules, and a `prometheus` server on loopback scrapes a running agent while a
//! runc container deviates from its footprint; the series and the firing alert are read back
//! through Prometheus' HTTP query API.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use credwatch_tests::{
    Agent, agent,
    runc::{Container, ensure_packages},
};
use serde_json::Value;

const FOOTPRINT: &str = r#"apiVersion: credwatch.dev/v1alpha1
kind: SecretFootprint
metadata: {name: fp-prom}
spec:
  selector: {cgroup: "/cw-*-prom"}
  allow:
    - secret: mounted-secrets
      paths: ["/run/secrets/allowed"]
"#;

fn prepare(work: &Path) -> String {
    std::fs::write(work.join("policies/footprint.yaml"), FOOTPRINT).unwrap();
    "    - name: e2e-unused\n      paths: [\"/nonexistent-e2e/**\"]\n".to_string()
}

fn setup() -> &'static Agent {
    ensure_packages(&[
        ("/usr/bin/promtool", "prometheus"),
        ("/usr/bin/prometheus", "prometheus"),
    ]);
    agent(prepare, "auto")
}

fn rules_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

#[test]
fn the_alert_rules_pass_promtool() {
    setup();
    for args in [
        ["check", "rules", "credwatch-alerts.yaml"],
        ["test", "rules", "credwatch-alerts.test.yaml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(rules_dir())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

struct Prometheus {
    child: Child,
    addr: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_prometheus(agent: &Agent) -> Prometheus {
    let dir = agent.work.join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        rules_dir().join("credwatch-alerts.yaml"),
        dir.join("credwatch-alerts.yaml"),
    )
    .unwrap();
    let config = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [credwatch-alerts.yaml]\nscrape_configs:\n  - job_name: credwatch\n    static_configs: [{{targets: [\"{}\"]}}]\n",
        agent.metrics_addr
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .expect("starting prometheus");
    Prometheus { child, addr }
}

/// `GET /api/v1/query?query=…` → the result vector.
fn query(addr: &str, promql: &str) -> Option<Vec<Value>> {
    let encoded: String = promql
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let mut stream = TcpStream::connect(addr).ok()?;
    write!(
        stream,
        "GET /api/v1/query?query={encoded} HTTP/1.0\r\nHost: {addr}\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let body = response.split_once("\r\n\r\n")?.1;
    let value: Value = serde_json::from_str(body).ok()?;
    (value["status"] == "success")
        .then(|| value["data"]["result"].as_array().cloned())
        .flatten()
}

fn wait_for(addr: &str, promql: &str, what: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(result) = query(addr, promql).filter(|r| !r.is_empty()) {
            return result;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never showed {what} ({promql})"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn prometheus_scrapes_a_deviation_and_fires_the_alert() {
    let agent = setup();
    let prometheus = start_prometheus(agent);
    wait_for(
        &prometheus.addr,
        r#"up{job="credwatch"} == 1"#,
        "the agent as a healthy target",
    );
    let id = format!("cw-{}-prom", std::process::id());
    let c = Container::new(
        &id,
        &[("allowed", "a"), ("stolen", "s")],
        &[
            "/bin/sh",
            "-c",
            "cat /run/secrets/allowed /run/secrets/stolen; exit 0",
        ],
    );
    c.run_to_completion();
    let series = wait_for(
        &prometheus.addr,
        &format!(r#"credwatch_deviations_total{{container="{id}"}} >= 1"#),
        "the deviation",
    );
    let labels = &series[0]["metric"];
    assert_eq!(labels["secret"], "mounted-secrets");
    assert_eq!(labels["reason"], "path not in footprint");
    // Off Kubernetes: the container name without its generated parts ("cw-prom").
    assert_eq!(
        labels["workload"],
        credwatch::containers::workload::off_kubernetes(Some(&id), None)
    );
    let allowed = wait_for(
        &prometheus.addr,
        &format!(r#"credwatch_credential_access_total{{container="{id}",verdict="allowed"}}"#),
        "the allowed access",
    );
    assert_eq!(allowed[0]["value"][1], "1");
    wait_for(
        &prometheus.addr,
        &format!(
            r#"ALERTS{{alertname="CredwatchCredentialDeviation",alertstate="firing",container="{id}"}}"#
        ),
        "the firing deviation alert",
    );
    // The agent's own health series are there too.
    wait_for(
        &prometheus.addr,
        r#"credwatch_probe_attached{probe="openat"} == 1"#,
        "probe_attached",
    );
    wait_for(
        &prometheus.addr,
        r#"credwatch_kernel_events_total{probe="openat",outcome="filtered"} > 0"#,
        "kernel counters",
    );
}
