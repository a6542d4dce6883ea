//! `credwatch run`: load the policies, attach the probes, and turn kernel records into forensic
//! records and metrics until told to stop.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Result;
use log::{info, warn};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};

use crate::{
    containers::{Containers, StateRoots, runtime_api::RuntimeApi},
    pipeline::Pipeline,
    policy,
    probes::Probes,
    process::ProcessTable,
    secrets,
    sinks::{self, forensic, metrics::Metrics},
};

/// How often existing secret files are looked up again (new files, replaced inodes).
const SECRET_REFRESH: Duration = Duration::from_secs(10);

/// `credwatch run` arguments (DESIGN §5).
#[derive(clap::Args, Debug)]
pub struct RunOptions {
    #[arg(long, default_value = "./policies")]
    pub policies: PathBuf,
    /// Forensic log: a file path, or - for stdout.
    #[arg(long, default_value = "-")]
    pub log: String,
    #[arg(long, default_value = "127.0.0.1:9750")]
    pub metrics_addr: SocketAddr,
    /// Node name in records (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// CRI runtime socket (default: the first of /run/containerd/containerd.sock,
    /// /var/run/crio/crio.sock that exists).
    #[arg(long)]
    pub cri_socket: Option<PathBuf>,
    /// Rotate the forensic log file at this size.
    #[arg(long, default_value_t = 100 * 1024 * 1024)]
    pub log_max_bytes: u64,
    /// Rotated log files to keep.
    #[arg(long, default_value_t = 5)]
    pub log_keep: u32,
}

pub fn run(opts: RunOptions) -> Result<()> {
    let set = policy::load_dir(&opts.policies).map_err(|problems| {
        for p in &problems {
            eprintln!("{p}");
        }
        crate::cli::UsageError(format!(
            "{} problem(s) in {}",
            problems.len(),
            opts.policies.display()
        ))
    })?;
    info!(
        "policies: {} document(s) in {} file(s), {} catalogue file entries",
        set.documents,
        set.files,
        set.catalog.files.len()
    );
    let (secret_table, filter) = secrets::resolve(&set.catalog, &[]);
    // Seeded before the probes attach: processes started later arrive as events.
    let mut processes = ProcessTable::new();
    processes.seed_from_procfs();
    let mut probes = Probes::load()?;
    probes.sync_filter(&filter)?;
    info!(
        "kernel filter: {} prefixes, {} suffixes, {} secret inodes",
        filter.paths.prefixes.len(),
        filter.paths.suffixes.len(),
        filter.inodes.len()
    );
    print_probe_summary(&probes);

    let metrics = Arc::new(Metrics::new());
    let stats = probes.take_stats()?;
    metrics.set_probes(&probes.status, stats);
    let ring = probes.take_events()?;
    let mut pipeline = Pipeline::new(
        set,
        secret_table,
        processes,
        Containers::new(StateRoots::default(), RuntimeApi::start(opts.cri_socket)),
        forensic::ForensicLog::open(&opts.log, opts.log_max_bytes, opts.log_keep)?,
        metrics.clone(),
        opts.node_name.unwrap_or_else(hostname),
        boot_to_unix_ns(),
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = sinks::metrics::bind(opts.metrics_addr).await?;
        let metrics_addr = listener.local_addr()?;
        let server = tokio::spawn(sinks::metrics::serve(listener, metrics));
        // SAFETY: the ring buffer owns its fd and is owned by the AsyncFd, so the fd stays open
        // for as long as it is registered.
        let mut ring =
            unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
                .map_err(|err| {
                    anyhow::anyhow!("watching the ring buffer: {}", err.into_parts().1)
                })?;
        let mut refresh = tokio::time::interval(SECRET_REFRESH);
        refresh.tick().await;
        let mut housekeeping = tokio::time::interval(Duration::from_secs(5));
        let mut hold_check = tokio::time::interval(Duration::from_millis(50));
        let mut policy_check = tokio::time::interval(POLICY_CHECK);
        let mut hangup = tokio::signal::unix::signal(SignalKind::hangup())?;
        let mut reloader = Reloader {
            dir: opts.policies.clone(),
            rejected: None,
        };
        pipeline.metrics.set_policy(&pipeline.policies.sha256);
        let mut terminate = tokio::signal::unix::signal(SignalKind::terminate())?;
        let mut interrupt = tokio::signal::unix::signal(SignalKind::interrupt())?;
        eprintln!("credwatch: ready (metrics on http://{metrics_addr}/metrics)");
        loop {
            tokio::select! {
                guard = ring.readable_mut() => {
                    let mut guard = guard?;
                    let events = guard.get_inner_mut();
                    while let Some(item) = events.next() {
                        pipeline.handle(&item);
                    }
                    guard.clear_ready();
                    // Addresses just learned from DNS: into the kernel before the next batch.
                    if pipeline.learned.take_changed() {
                        refresh_endpoints(&mut pipeline, &mut probes);
                    }
                }
                _ = refresh.tick() => {
                    refresh_secrets(&mut pipeline, &mut probes);
                    pipeline.boot_to_unix_ns = boot_to_unix_ns();
                }
                _ = housekeeping.tick() => {
                    pipeline.processes.expire(std::time::Instant::now());
                    pipeline.expire_allowed(std::time::Instant::now());
                    pipeline.learned.expire(std::time::Instant::now());
                    pipeline.containers.sweep();
                    pipeline.metrics.processes.set(pipeline.processes.len() as i64);
                    pipeline.metrics.containers.set(pipeline.containers.containers() as i64);
                    let learned = pipeline.learned.entries() as i64;
                    pipeline.metrics.learned_endpoints.set(learned);
                }
                _ = hold_check.tick() => {
                    pipeline.release_held(false);
                    // A new container: learn its secrets' inodes now, not at the next refresh.
                    if pipeline.take_rescan() {
                        refresh_secrets(&mut pipeline, &mut probes);
                    }
                }
                _ = policy_check.tick() => reloader.reload(&mut pipeline, &mut probes, false),
                _ = hangup.recv() => reloader.reload(&mut pipeline, &mut probes, true),
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
            }
        }
        pipeline.release_held(true);
        server.abort();
        info!("stopping: detaching probes");
        drop(probes);
        Ok(())
    })
}

/// Looks up the inodes of the catalogue's existing files, on the host and in every running
/// container, and updates the kernel's secret-inode map (new containers, rotated secrets).
fn refresh_secrets(pipeline: &mut Pipeline, probes: &mut Probes) {
    let roots = pipeline.container_roots();
    let (table, mut filter) = secrets::resolve(&pipeline.policies.catalog, &roots);
    filter
        .endpoints
        .extend(pipeline.learned.endpoint_keys(&pipeline.policies.catalog));
    log::debug!(
        "secret inodes: {} (host and {} container root(s))",
        filter.inodes.len(),
        roots.len()
    );
    match probes.sync_filter(&filter) {
        Ok(()) => pipeline.secrets = table,
        Err(err) => warn!("refreshing the secret inodes failed: {err:#}"),
    }
}

/// The kernel's endpoint map: the catalogue's addresses and the ones learned from DNS.
fn refresh_endpoints(pipeline: &mut Pipeline, probes: &mut Probes) {
    let catalog = &pipeline.policies.catalog;
    let mut endpoints = catalog.endpoint_keys();
    endpoints.extend(pipeline.learned.endpoint_keys(catalog));
    if let Err(err) = probes.sync_endpoints(&endpoints) {
        warn!("updating the endpoint map failed: {err:#}");
    }
    if let Err(err) = probes.sync_learned(&pipeline.learned.learned_keys(catalog)) {
        warn!("updating the learned-endpoint map failed: {err:#}");
    }
}

/// How often the policy directory is checked for changes (SIGHUP reloads at once).
const POLICY_CHECK: Duration = Duration::from_secs(2);

/// Re-reads the policy directory when it changes. An invalid set is rejected with the same
/// messages as `credwatch check` and the last good set keeps running.
struct Reloader {
    dir: PathBuf,
    /// Digest of the last rejected content, so it is reported once, not on every check.
    rejected: Option<String>,
}

impl Reloader {
    fn reload(&mut self, pipeline: &mut Pipeline, probes: &mut Probes, forced: bool) {
        let Some(digest) = policy::digest_dir(&self.dir) else {
            warn!(
                "policy directory {} unreadable; keeping the current policies",
                self.dir.display()
            );
            return;
        };
        let unchanged =
            digest == pipeline.policies.sha256 || self.rejected.as_ref() == Some(&digest);
        if unchanged && !forced {
            return;
        }
        match policy::load_dir(&self.dir) {
            Ok(set) => {
                let (table, filter) = secrets::resolve(&set.catalog, &pipeline.container_roots());
                if let Err(err) = probes.sync_filter(&filter) {
                    warn!(
                        "policy reload: updating the kernel filter failed: {err:#}; keeping the current policies"
                    );
                    pipeline
                        .metrics
                        .policy_reloads
                        .with_label_values(&["failure"])
                        .inc();
                    return;
                }
                info!(
                    "policy reload: {} document(s), {} footprint(s), sha256 {}",
                    set.documents,
                    set.footprints.len(),
                    set.sha256
                );
                pipeline.metrics.set_policy(&set.sha256);
                pipeline
                    .metrics
                    .policy_reloads
                    .with_label_values(&["success"])
                    .inc();
                pipeline.secrets = table;
                // What was learned names endpoints by catalogue position: carry it over by name.
                pipeline
                    .learned
                    .remap(&pipeline.policies.catalog, &set.catalog);
                pipeline.policies = set;
                self.rejected = None;
                refresh_endpoints(pipeline, probes);
            }
            Err(problems) => {
                for p in &problems {
                    warn!("policy reload rejected: {p}");
                }
                warn!(
                    "policy reload: {} problem(s); the last good policies keep running",
                    problems.len()
                );
                pipeline
                    .metrics
                    .policy_reloads
                    .with_label_values(&["failure"])
                    .inc();
                self.rejected = Some(digest);
            }
        }
    }
}

fn print_probe_summary(probes: &Probes) {
    let attached: Vec<String> = probes
        .status
        .iter()
        .filter_map(|s| s.mode.map(|m| format!("{} ({m})", s.probe)))
        .collect();
    eprintln!("credwatch: probes attached: {}", attached.join(", "));
    for s in probes.status.iter().filter(|s| s.mode.is_none()) {
        eprintln!("credwatch: probe unavailable: {}: {}", s.probe, s.detail);
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

fn boot_to_unix_ns() -> i128 {
    clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_BOOTTIME)
}
