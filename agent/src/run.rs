//! `credwatch run`: load the policies, attach the probes, and turn kernel records into forensic
//! records and metrics until told to stop.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Result;
use log::{info, warn};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};

use crate::{
    containers::{Containers, Origin, StateRoots},
    events::{self, Event, FileOpen},
    policy::{self, Catalog},
    probes::Probes,
    process::ProcessTable,
    secrets::{self, SecretTable},
    sinks::{self, forensic, metrics::Metrics},
};

/// How often existing secret files are looked up again (new files, replaced inodes).
const SECRET_REFRESH: Duration = Duration::from_secs(30);

pub struct RunOptions {
    pub policies: PathBuf,
    pub log: String,
    pub metrics_addr: SocketAddr,
    pub node_name: Option<String>,
}

/// Everything a record passes through after it leaves the ring buffer.
struct Pipeline {
    catalog: Catalog,
    secrets: SecretTable,
    processes: ProcessTable,
    containers: Containers,
    log: forensic::ForensicLog,
    metrics: Arc<Metrics>,
    node: String,
    /// CLOCK_REALTIME − CLOCK_BOOTTIME, to turn kernel boot-time stamps into wall-clock time.
    boot_to_unix_ns: i128,
    next_event: u64,
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
    let (secret_table, filter) = secrets::resolve(&set.catalog);
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
    let mut pipeline = Pipeline {
        catalog: set.catalog,
        secrets: secret_table,
        processes,
        containers: Containers::new(StateRoots::default()),
        log: forensic::ForensicLog::open(&opts.log)?,
        metrics: metrics.clone(),
        node: opts.node_name.unwrap_or_else(hostname),
        boot_to_unix_ns: boot_to_unix_ns(),
        next_event: 0,
    };

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
                }
                _ = refresh.tick() => {
                    let (table, filter) = secrets::resolve(&pipeline.catalog);
                    match probes.sync_filter(&filter) {
                        Ok(()) => pipeline.secrets = table,
                        Err(err) => warn!("refreshing the secret inodes failed: {err:#}"),
                    }
                    pipeline.boot_to_unix_ns = boot_to_unix_ns();
                }
                _ = housekeeping.tick() => {
                    pipeline.processes.expire(std::time::Instant::now());
                    pipeline.containers.sweep();
                    pipeline.metrics.processes.set(pipeline.processes.len() as i64);
                    pipeline.metrics.containers.set(pipeline.containers.containers() as i64);
                }
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
            }
        }
        server.abort();
        info!("stopping: detaching probes");
        drop(probes);
        Ok(())
    })
}

impl Pipeline {
    fn handle(&mut self, bytes: &[u8]) {
        let event = match events::decode(bytes) {
            Ok(event) => event,
            Err(err) => {
                self.metrics
                    .events_lost
                    .with_label_values(&["decode"])
                    .inc();
                warn!("dropping an undecodable kernel record: {err}");
                return;
            }
        };
        match event {
            Event::FileOpen(open) => self.file_open(&open),
            Event::Process(process) => self.processes.apply(&process),
        }
    }

    fn file_open(&mut self, open: &FileOpen) {
        let process = self.processes.describe(open);
        let Some(credential) = self.secrets.classify(&self.catalog, open, process.ns_pid) else {
            return; // the kernel keys are coarser than the globs
        };
        let rule = &self.catalog.files[credential.rule];
        let origin = self.containers.resolve(open.cgroup_id, open.pid);
        let meta = match &origin {
            Origin::Container(meta) => Some(meta.clone()),
            Origin::Host { .. } => None,
        };
        self.next_event += 1;
        let record = forensic::Record {
            schema: forensic::SCHEMA,
            ts: sinks::rfc3339(self.boot_to_unix_ns + open.boot_ns as i128).unwrap_or_default(),
            event_id: format!("{:016x}-{:08x}-{}", open.boot_ns, open.tid, self.next_event),
            node: self.node.clone(),
            verdict: "undeclared",
            reason: "no footprint selects this process".into(),
            kind: "file",
            secret: forensic::SecretSection {
                name: rule.name.clone(),
                catalog_entry: format!("{}/{}", rule.catalog, rule.name),
            },
            file: Some(sinks::file_section(open, &credential)),
            process: sinks::process_section(&process, self.boot_to_unix_ns),
            container: meta.as_deref().map(sinks::container_section),
            pod: meta.as_deref().and_then(sinks::pod_section),
        };
        let (namespace, workload, container) = match meta.as_deref() {
            Some(m) => (
                m.pod
                    .as_ref()
                    .and_then(|p| p.namespace.clone())
                    .unwrap_or_default(),
                crate::containers::workload(m),
                m.name.clone().unwrap_or_default(),
            ),
            None => Default::default(),
        };
        self.metrics
            .credential_access
            .with_label_values(&[
                &namespace,
                &workload,
                &container,
                &rule.name,
                "file",
                record.verdict,
            ])
            .inc();
        if let Err(err) = self.log.write(&record) {
            self.metrics
                .events_lost
                .with_label_values(&["log_write"])
                .inc();
            warn!("forensic log: {err:#}");
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
