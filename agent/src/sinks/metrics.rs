//! Prometheus metrics (DESIGN §6) and the `/metrics` endpoint.

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
    pub policy_reloads: IntCounterVec,
    policy_info: IntGaugeVec,
    kernel_events: IntCounterVec,
    probe_attached: IntGaugeVec,
    /// Processes in the process table (live, and exited within the grace period).
    pub processes: prometheus::IntGauge,
    /// (cgroup, address) pairs learned from DNS plus environment-named addresses.
    pub learned_endpoints: prometheus::IntGauge,
    pub containers: prometheus::IntGauge,
    /// Records written without the container's full metadata.
    pub missing_metadata: prometheus::IntCounter,
    /// The kernel counters are cumulative in the kernel; we add the difference at each scrape.
    kernel: Mutex<Option<(KernelStats, KernelTotals)>>,
}

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
            policy_info: gauge(
                &registry,
                "credwatch_policy_info",
                "The policy set in force (1 for its sha256).",
                &["sha256"],
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
            learned_endpoints: plain_gauge(
                &registry,
                "credwatch_learned_endpoints",
                "Endpoint addresses learned from DNS answers (per container) and containers' environments.",
            ),
            missing_metadata: {
                let c = prometheus::IntCounter::new(
                    "credwatch_missing_metadata_total",
                    "Records written without the container's full metadata (runtime state not found).",
                )
                .expect("valid metric");
                registry
                    .register(Box::new(c.clone()))
                    .expect("unique metric");
                c
            },
            kernel: Mutex::new(None),
            registry,
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
