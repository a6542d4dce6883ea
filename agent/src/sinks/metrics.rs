//! Prometheus metrics (docs/contract.md) and the `/metrics` endpoint.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result};
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::TokioIo;
use log::{debug, warn};
use prometheus::{Encoder as _, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::probes::{KernelStats, ProbeStatus};

pub struct Metrics {
    registry: Registry,
    pub credential_access: IntCounterVec,
    pub deviations: IntCounterVec,
    pub events_lost: IntCounterVec,
    pub over_budget: IntCounterVec,
    unnamed_connects: IntCounterVec,
    budget_exceeded: IntCounterVec,
    pub secret_files_over_budget: IntGaugeVec,
    /// Findings of `audit-image` in running containers' images.
    pub image_findings: IntGaugeVec,
    pub policy_reloads: IntCounterVec,
    /// Requests read on connections to plain-HTTP credential endpoints, by what they asked.
    pub endpoint_requests: IntCounterVec,
    policy_info: IntGaugeVec,
    kernel_events: IntCounterVec,
    probe_attached: IntGaugeVec,
    /// Processes in the process table (live, and exited within the grace period).
    pub processes: prometheus::IntGauge,
    /// (cgroup, address) pairs learned from DNS plus environment-named addresses.
    pub learned_endpoints: prometheus::IntGauge,
    inspected_connections: prometheus::IntGauge,
    pub containers: prometheus::IntGauge,
    pub secret_files: prometheus::IntGauge,
    /// Records written without the container's full metadata.
    pub missing_metadata: prometheus::IntCounter,
    /// Process-table entries whose exit event never arrived (found gone from /proc).
    pub process_exits_missed: prometheus::IntCounter,
    /// The kernel counters are cumulative in the kernel; we add the difference at each scrape.
    kernel: Mutex<Option<(KernelStats, KernelTotals)>>,
    /// When each per-container series last changed, for expiry and the cap.
    series: Mutex<SeriesBook>,
}

/// The per-container series and when each last changed, found without allocating (this is on
/// every record's way).
#[derive(Default)]
struct SeriesBook {
    /// Hash of (family, labels) → the series with that hash (almost always one).
    by_hash: HashMap<u64, Vec<Tracked>>,
    per_family: [usize; FAMILIES],
}

struct Tracked {
    family: Family,
    labels: Vec<String>,
    changed: std::time::Instant,
}

impl SeriesBook {
    /// Notes that a series changed; adds it if it is new and `may_add`. Returns whether the
    /// series is tracked.
    fn record(
        &mut self,
        family: Family,
        labels: &[&str],
        now: std::time::Instant,
        may_add: bool,
    ) -> bool {
        use std::hash::{Hash as _, Hasher as _};
        let mut hasher = std::hash::DefaultHasher::new();
        (family, labels).hash(&mut hasher);
        let same = self.by_hash.entry(hasher.finish()).or_default();
        if let Some(t) = same
            .iter_mut()
            .find(|t| t.family == family && t.labels.iter().eq(labels.iter()))
        {
            t.changed = now;
            return true;
        }
        if may_add {
            same.push(Tracked {
                family,
                labels: labels.iter().map(|l| l.to_string()).collect(),
                changed: now,
            });
            self.per_family[family as usize] += 1;
        }
        may_add
    }
}

/// The metric families with per-container labels (namespace, workload, container first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    CredentialAccess,
    Deviations,
    OverBudget,
    /// Connections on a host-name endpoint's port that nothing named (no DNS answer, no
    /// server name in a readable ClientHello).
    UnnamedConnects,
    /// What a container did beyond a budget that is not itself a credential access (labels
    /// end with `budget`).
    BudgetExceeded,
}
const FAMILIES: usize = 5;

/// Series per family before new containers share one overflow series.
pub const MAX_SERIES: usize = 10_000;
/// A per-container series unchanged this long is dropped (its container is usually gone).
pub const SERIES_IDLE: std::time::Duration = std::time::Duration::from_secs(3600);
/// What `workload` and `container` become past `MAX_SERIES`.
pub const OVERFLOW: &str = "_overflow";

/// The kernel counters' totals at the last scrape, by (probe, outcome).
type KernelTotals = HashMap<(&'static str, &'static str), u64>;

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn plain_gauge(registry: &Registry, name: &str, help: &str) -> prometheus::IntGauge {
    let g = prometheus::IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn plain_counter(registry: &Registry, name: &str, help: &str) -> prometheus::IntCounter {
    let c = prometheus::IntCounter::new(name, help).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let build = gauge(
            &registry,
            "credwatch_build_info",
            "Build of the running agent.",
            &["version"],
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        Metrics {
            credential_access: counter(
                &registry,
                "credwatch_credential_access_total",
                "Credential accesses seen, by verdict.",
                &[
                    "namespace",
                    "workload",
                    "container",
                    "secret",
                    "kind",
                    "verdict",
                ],
            ),
            deviations: counter(
                &registry,
                "credwatch_deviations_total",
                "Credential accesses outside the declared footprint (footprints with action: alert).",
                &[
                    "namespace",
                    "workload",
                    "container",
                    "secret",
                    "kind",
                    "reason",
                ],
            ),
            policy_reloads: counter(
                &registry,
                "credwatch_policy_reloads_total",
                "Policy reloads, by result (failure: rejected, the last good set kept running).",
                &["result"],
            ),
            endpoint_requests: counter(
                &registry,
                "credwatch_endpoint_requests_total",
                "Requests sent to plain-HTTP credential endpoints (instance metadata, ECS and EKS credential agents), by catalogue endpoint and whether they asked for a credential (true), for something else (false: counted, not recorded), or could not be shown to be benign (unreadable: recorded).",
                &["service", "credential"],
            ),
            policy_info: gauge(
                &registry,
                "credwatch_policy_info",
                "The policy set in force (1 for its sha256).",
                &["sha256"],
            ),
            over_budget: counter(
                &registry,
                "credwatch_over_budget_total",
                "Credential accesses of a container over its record budget, reported as summaries.",
                &["namespace", "workload", "container"],
            ),
            unnamed_connects: counter(
                &registry,
                "credwatch_unnamed_connects_total",
                "Connects on a host-name endpoint's port (443, 6443, 8200 by default) to an address no DNS answer named, whose TLS ClientHello gave no server name either (none sent within 2 s, not TLS, cut, or without SNI): what stays unnamed.",
                &["namespace", "workload", "container"],
            ),
            budget_exceeded: counter(
                &registry,
                "credwatch_budget_exceeded_total",
                "What a container did beyond a budget, other than credential accesses: budget=\"dns_answers\" DNS answers it received over its DNS budget (not read, so names in them are not learned), budget=\"dns_learned\" endpoint addresses it learned beyond its share of 256 (its own oldest replaced), budget=\"inspected_connections\" connections recorded without reading their requests or ClientHello because it held its share of 64, budget=\"log_records\" accesses summarised beyond its share of the forensic log.",
                &["namespace", "workload", "container", "budget"],
            ),
            secret_files_over_budget: gauge(
                &registry,
                "credwatch_secret_files_over_budget",
                "Catalogue files found in a container's filesystem, when more than its share of the kernel's secret-inode map (the first ones are tracked by inode).",
                &["namespace", "workload", "container"],
            ),
            image_findings: gauge(
                &registry,
                "credwatch_image_findings",
                "Credentials baked into the images of containers on this node (audit-image), by status and severity (status incomplete: the audit could not finish).",
                &["image", "status", "severity"],
            ),
            events_lost: counter(
                &registry,
                "credwatch_events_lost_total",
                "Events that could not be delivered, by the stage that dropped them.",
                &["stage"],
            ),
            kernel_events: counter(
                &registry,
                "credwatch_kernel_events_total",
                "Syscalls seen by the kernel probes and what became of them.",
                &["probe", "outcome"],
            ),
            probe_attached: gauge(
                &registry,
                "credwatch_probe_attached",
                "1 when the probe is attached in the given mode.",
                &["probe", "mode"],
            ),
            processes: {
                let g = prometheus::IntGauge::new(
                    "credwatch_processes",
                    "Processes in the agent's process table (live and recently exited).",
                )
                .expect("valid metric");
                registry
                    .register(Box::new(g.clone()))
                    .expect("unique metric");
                g
            },
            containers: plain_gauge(
                &registry,
                "credwatch_containers",
                "Containers the agent tracks now.",
            ),
            secret_files: plain_gauge(
                &registry,
                "credwatch_secret_files",
                "Credential files the last secret search found on the host and in running containers, watched by inode in the kernel (hardlinks and renames included).",
            ),
            learned_endpoints: plain_gauge(
                &registry,
                "credwatch_learned_endpoints",
                "Endpoint addresses learned from DNS answers (per container) and containers' environments.",
            ),
            inspected_connections: plain_gauge(
                &registry,
                "credwatch_inspected_connections",
                "Connections whose first payloads the kernel is reading now (requests to plain-HTTP credential endpoints, TLS ClientHellos of unnamed connects); while 0, the egress program lets every packet through at once. May run high (a connection the kernel's table dropped), never low.",
            ),
            missing_metadata: plain_counter(
                &registry,
                "credwatch_missing_metadata_total",
                "Records written without the container's full metadata (runtime state not found).",
            ),
            process_exits_missed: plain_counter(
                &registry,
                "credwatch_process_exits_missed_total",
                "Processes found gone from /proc whose exit event never reached the agent.",
            ),
            kernel: Mutex::new(None),
            series: Mutex::new(SeriesBook::default()),
            registry,
        }
    }

    /// Adds `n` to a per-container series (labels: namespace, workload, container, then the
    /// family's own). Past `MAX_SERIES` series in the family, a new one is counted under
    /// workload and container `_overflow`: the total stays right, the labels stay bounded.
    pub fn add(&self, family: Family, labels: &[&str], n: u64) {
        let now = std::time::Instant::now();
        let mut book = self.series.lock().unwrap();
        let under_cap = book.per_family[family as usize] < MAX_SERIES;
        let overflow: Vec<&str>;
        let labels = if book.record(family, labels, now, under_cap) {
            labels
        } else {
            overflow = (labels.iter().enumerate())
                .map(|(i, l)| if i == 1 || i == 2 { OVERFLOW } else { *l })
                .collect();
            book.record(family, &overflow, now, true);
            &overflow
        };
        self.family(family).with_label_values(labels).inc_by(n);
    }

    fn family(&self, family: Family) -> &IntCounterVec {
        match family {
            Family::CredentialAccess => &self.credential_access,
            Family::Deviations => &self.deviations,
            Family::OverBudget => &self.over_budget,
            Family::UnnamedConnects => &self.unnamed_connects,
            Family::BudgetExceeded => &self.budget_exceeded,
        }
    }

    /// Drops per-container series unchanged for `SERIES_IDLE` (bounded under churn).
    pub fn expire_series(&self, now: std::time::Instant) {
        let mut book = self.series.lock().unwrap();
        let mut dropped = [0usize; FAMILIES];
        for same in book.by_hash.values_mut() {
            same.retain(|t| {
                if now.duration_since(t.changed) < SERIES_IDLE {
                    return true;
                }
                let values: Vec<&str> = t.labels.iter().map(String::as_str).collect();
                let _ = self.family(t.family).remove_label_values(&values);
                dropped[t.family as usize] += 1;
                false
            });
        }
        book.by_hash.retain(|_, same| !same.is_empty());
        for (count, gone) in book.per_family.iter_mut().zip(dropped) {
            *count -= gone;
        }
    }

    pub fn set_probes(&self, status: &[ProbeStatus], stats: KernelStats) {
        for s in status {
            match s.mode {
                Some(mode) => self
                    .probe_attached
                    .with_label_values(&[s.probe, mode])
                    .set(1),
                None => self
                    .probe_attached
                    .with_label_values(&[s.probe, "none"])
                    .set(0),
            }
        }
        // Make both families visible before the first event.
        self.events_lost.with_label_values(&["kernel_ringbuf"]);
        self.events_lost.with_label_values(&["decode"]);
        self.events_lost.with_label_values(&["log_write"]);
        *self.kernel.lock().unwrap() = Some((stats, HashMap::new()));
    }

    /// Marks `sha256` as the policy set in force.
    pub fn set_policy(&self, sha256: &str) {
        self.policy_info.reset();
        self.policy_info.with_label_values(&[sha256]).set(1);
        self.policy_reloads.with_label_values(&["success"]);
        self.policy_reloads.with_label_values(&["failure"]);
    }

    /// Pulls the kernel's per-CPU counters into the counters Prometheus sees.
    pub fn refresh_kernel(&self) {
        let mut guard = self.kernel.lock().unwrap();
        let Some((stats, last)) = guard.as_mut() else {
            return;
        };
        self.inspected_connections.set(stats.inspecting());
        for (probe, outcome, total) in stats.read() {
            let previous = last.insert((probe, outcome), total).unwrap_or(0);
            let delta = total.saturating_sub(previous);
            self.kernel_events
                .with_label_values(&[probe, outcome])
                .inc_by(delta);
            if outcome == "lost" && delta > 0 {
                self.events_lost
                    .with_label_values(&["kernel_ringbuf"])
                    .inc_by(delta);
            }
        }
    }

    pub fn render(&self) -> Vec<u8> {
        self.refresh_kernel();
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics address {addr}"))
}

/// Serves `GET /metrics` (and `/healthz` for probes) until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(err) => {
                warn!("metrics: accept failed: {err}");
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(&req, &metrics)) }
            });
            if let Err(err) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!("metrics: connection from {peer}: {err}");
            }
        });
    }
}

fn respond(req: &Request<hyper::body::Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&hyper::Method::GET, "/metrics") => {
            (StatusCode::OK, prometheus::TEXT_FORMAT, metrics.render())
        }
        (&hyper::Method::GET, "/healthz") => (StatusCode::OK, "text/plain", b"ok\n".to_vec()),
        _ => (StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(m: &Metrics) -> String {
        String::from_utf8(m.render()).unwrap()
    }

    #[test]
    fn per_container_series_are_capped_and_expire() {
        let m = Metrics::new();
        for i in 0..MAX_SERIES + 5 {
            let container = format!("c{i}");
            m.add(Family::OverBudget, &["", "w", &container], 1);
        }
        let text = rendered(&m);
        let series = text
            .lines()
            .filter(|l| l.starts_with("credwatch_over_budget_total{"))
            .count();
        assert_eq!(series, MAX_SERIES + 1, "the cap, plus one overflow series");
        assert!(text.contains(r#"credwatch_over_budget_total{container="_overflow",namespace="",workload="_overflow"} 5"#));
        m.expire_series(std::time::Instant::now() + SERIES_IDLE);
        assert!(!rendered(&m).contains("credwatch_over_budget_total{"));
    }
}
