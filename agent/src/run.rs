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
    probes::KernelFilter,
    probes::{
        Probes,
        repeats::{KernelRepeats, KernelSuppressed},
    },
    process::ProcessTable,
    secrets,
    sinks::{self, forensic, metrics::Metrics},
};

/// How often existing secret files are looked up again (new files, replaced inodes).
const SECRET_REFRESH: Duration = Duration::from_secs(10);

/// `credwatch run` arguments (docs/contract.md).
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
    /// Audit each new container's image once (containerd's content API, a background thread
    /// at the lowest priority) and mark records of baked credentials in use (`image_finding`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub audit_images: bool,
    /// Rotate the forensic log file at this size.
    #[arg(long, default_value_t = 100 * 1024 * 1024)]
    pub log_max_bytes: u64,
    /// Rotated log files to keep.
    #[arg(long, default_value_t = 5)]
    pub log_keep: u32,
    /// Size of the kernel ring buffer in MiB (a power of two). Kernel memory, reserved whole;
    /// a file-open record takes ~130 bytes plus its paths, so 8 MiB holds ~40,000 of them.
    #[arg(long, default_value_t = 8, value_parser = ring_buffer_mib)]
    pub ring_buffer_mib: u32,
    /// Records per second each container (cgroup) may send through the ring buffer once its
    /// burst is spent; what is over is counted in the kernel and reported as summaries
    /// (`verdict: "suppressed"`). 0 = no budget.
    #[arg(long, default_value_t = 1000)]
    pub container_records_per_sec: u32,
    /// Records a container may send at once (its budget's burst).
    #[arg(long, default_value_t = 10_000)]
    pub container_burst: u32,
    /// Records each container may write to the forensic log per hour (all at once, or spread);
    /// past that its accesses are summed into summaries every 10 s, so no container can rotate
    /// the others' evidence out of the log. 0 = no share.
    #[arg(long, default_value_t = 20_000)]
    pub container_log_records_per_hour: u64,
    /// Diagnostics from the kernel programs (walks cut short, failed kernel reads, exits
    /// without their arguments), printed to stderr: off, error, warn, info, debug or trace.
    /// Off unless given here or as `credwatch_probes=LEVEL` in RUST_LOG; off, the programs
    /// run without them.
    #[arg(long)]
    pub kernel_log: Option<log::LevelFilter>,
}

/// The kernel programs' log level: `--kernel-log`, else a `credwatch_probes=LEVEL` directive
/// in RUST_LOG, else off.
fn kernel_log_level(opts: &RunOptions) -> log::LevelFilter {
    opts.kernel_log.unwrap_or_else(|| {
        std::env::var("RUST_LOG")
            .unwrap_or_default()
            .split(',')
            .find_map(|d| d.trim().strip_prefix("credwatch_probes=")?.parse().ok())
            .unwrap_or(log::LevelFilter::Off)
    })
}

/// DNS answers a container may receive at once (its DNS bucket's burst) at most.
const DNS_BURST: u32 = 1000;

/// The kernel's form of the per-container record budget.
fn budget(opts: &RunOptions) -> credwatch_common::Budget {
    match opts.container_records_per_sec {
        0 => credwatch_common::Budget::default(),
        rate => {
            let cost_ns = 1_000_000_000 / rate as u64;
            credwatch_common::Budget {
                cost_ns: cost_ns.max(1),
                cap_ns: cost_ns.max(1) * opts.container_burst.max(1) as u64,
                // ≤ 1,000 answers (≤ 1.3 MB of the ring) at once: far more than a container
                // resolves, far less than the ring holds.
                dns_cap_ns: cost_ns.max(1) * opts.container_burst.clamp(1, DNS_BURST) as u64,
            }
        }
    }
}

fn ring_buffer_mib(text: &str) -> Result<u32, String> {
    let mib: u32 = text.parse().map_err(|e| format!("{e}"))?;
    if !mib.is_power_of_two() || mib > 1024 {
        return Err(format!("{mib} is not a power of two from 1 to 1024"));
    }
    Ok(mib)
}

pub fn run(opts: RunOptions) -> Result<()> {
    run_for(opts, None).map(|_| ())
}

/// `run`, stopping by itself after `duration` (`credwatch learn --live`). Returns when the
/// probes were attached: what it saw starts there.
pub fn run_for(opts: RunOptions, duration: Option<Duration>) -> Result<time::OffsetDateTime> {
    let set = policy::load_dir(&opts.policies).map_err(|problems| {
        for p in &problems {
            eprintln!("{p}");
        }
        crate::error::UsageError(format!(
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
    let (secret_table, _) = secrets::search(&set.catalog, &[]);
    let filter = KernelFilter::desired(&set.catalog, &secret_table, &Default::default());
    let kernel_log = kernel_log_level(&opts);
    let mut probes = Probes::load(opts.ring_buffer_mib << 20, budget(&opts), kernel_log)?;
    probes.sync_filter(&filter)?;
    info!(
        "kernel filter: {} prefixes, {} suffixes, {} secret inodes",
        filter.paths.prefixes.len(),
        filter.paths.suffixes.len(),
        filter.inodes.len()
    );
    print_probe_summary(&probes);
    // What this run can see starts here (`learn --live`'s window).
    let attached_at = time::OffsetDateTime::now_utc();

    let metrics = Arc::new(Metrics::new());
    let stats = probes.take_stats()?;
    metrics.set_probes(&probes.status, stats);
    let ring = probes.take_events()?;
    let mut repeats = probes.take_repeats()?;
    let mut suppressed = probes.take_suppressed()?;
    let kernel_log = probes.take_kernel_log(kernel_log)?;
    // Seeded once the probes are attached, so that every process is either in /proc now or
    // has its fork/exec/exit waiting in the ring buffer (seeded earlier, a process that exited
    // while the programs loaded would never be forgotten). The queued events are applied after
    // the seed, in the order they happened.
    let mut processes = ProcessTable::new();
    processes.seed_from_procfs();
    let mut pipeline = Pipeline::new(
        set,
        secret_table,
        processes,
        Containers::new(
            StateRoots::default(),
            RuntimeApi::start(opts.cri_socket.clone()),
        ),
        forensic::ForensicLog::open(&opts.log, opts.log_max_bytes, opts.log_keep)?,
        metrics.clone(),
        opts.node_name.unwrap_or_else(hostname),
        boot_to_unix_ns(),
    )
    // The kernel gives DNS answers their own bucket at the record budget's rate.
    .with_budgets(
        opts.container_records_per_sec as u64,
        opts.container_log_records_per_hour,
    );
    if opts.audit_images {
        // containerd's socket: the CRI socket when it is containerd's, else its default.
        let socket = opts
            .cri_socket
            .clone()
            .filter(|s| s.to_string_lossy().contains("containerd"))
            .unwrap_or_else(|| PathBuf::from(crate::audit::CONTAINERD_SOCKET));
        pipeline =
            pipeline.with_image_audits(crate::audit::NodeAudits::start(crate::audit::AuditSetup {
                socket,
                policies: opts.policies.clone(),
            }));
    }

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
        // SAFETY: as for the ring buffer: the logger owns its ring buffer's fd.
        let mut kernel_log = match kernel_log {
            Some(logger) => Some(
                unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
                    .map_err(|err| {
                        anyhow::anyhow!("watching the kernel log: {}", err.into_parts().1)
                    })?,
            ),
            None => None,
        };
        let mut refresh = tokio::time::interval(SECRET_REFRESH);
        refresh.tick().await;
        let mut housekeeping = tokio::time::interval(Duration::from_secs(5));
        let mut hold_check = tokio::time::interval(Duration::from_millis(50));
        let mut repeat_check = tokio::time::interval(REPEAT_CHECK);
        let mut scan: Option<SecretScan> = None;
        let mut scan_again = false;
        let mut policy_check = tokio::time::interval(POLICY_CHECK);
        let mut hangup = tokio::signal::unix::signal(SignalKind::hangup())?;
        let mut reloader = Reloader {
            dir: opts.policies.clone(),
            rejected: None,
        };
        let mut terminate = tokio::signal::unix::signal(SignalKind::terminate())?;
        let mut interrupt = tokio::signal::unix::signal(SignalKind::interrupt())?;
        eprintln!("credwatch: ready (metrics on http://{metrics_addr}/metrics)");
        let stop_after = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(stop_after);
        loop {
            tokio::select! {
                guard = ring.readable_mut() => {
                    let mut guard = guard?;
                    let events = guard.get_inner_mut();
                    let mut handled = 0usize;
                    while handled < RING_BATCH {
                        let Some(item) = events.next() else { break };
                        pipeline.handle(&item);
                        handled += 1;
                    }
                    // A ring that never empties (a flood, or a slow machine) must not starve
                    // the timers: held records, repeat summaries and secret searches wait on
                    // them. A full batch leaves the ring marked readable, so the next turn of
                    // the loop comes straight back here unless a timer is due.
                    if handled < RING_BATCH {
                        guard.clear_ready();
                    }
                    // Addresses just learned from DNS: into the kernel before the next batch.
                    if pipeline.take_endpoints_changed() {
                        refresh_endpoints(&mut pipeline, &mut probes);
                    }
                }
                _ = refresh.tick() => {
                    start_scan(&pipeline, &mut scan, &mut scan_again);
                    pipeline.set_boot_to_unix_ns(boot_to_unix_ns());
                }
                done = async { (&mut scan.as_mut().expect("guarded").task).await }, if scan.is_some() => {
                    let policies = scan.take().map(|s| s.policies).unwrap_or_default();
                    match done {
                        Ok(result) => apply_scan(&mut pipeline, &mut probes, &policies, result),
                        Err(err) => warn!("the secret search failed: {err}"),
                    }
                    if std::mem::take(&mut scan_again) {
                        start_scan(&pipeline, &mut scan, &mut scan_again);
                    }
                }
                _ = housekeeping.tick() => pipeline.housekeeping(std::time::Instant::now()),
                guard = async { kernel_log.as_mut().expect("guarded").readable_mut().await }, if kernel_log.is_some() => {
                    let mut guard = guard?;
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                _ = hold_check.tick() => {
                    pipeline.release_held(false);
                    pipeline.poll_image_audits();
                    // A new container: learn its secrets' inodes now, not at the next refresh.
                    if pipeline.take_rescan() {
                        start_scan(&pipeline, &mut scan, &mut scan_again);
                    }
                }
                _ = repeat_check.tick() => {
                    report_repeats(&mut pipeline, &mut repeats, false);
                    report_suppressed(&mut pipeline, &mut suppressed, false);
                }
                _ = policy_check.tick() => reloader.reload(&mut pipeline, &mut probes, false),
                _ = hangup.recv() => reloader.reload(&mut pipeline, &mut probes, true),
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
                _ = &mut stop_after => break,
            }
            pipeline.flush_log();
        }
        // What is still in the ring buffer, then every count the kernel holds.
        while let Some(item) = ring.get_mut().next() {
            pipeline.handle(&item);
        }
        pipeline.release_held(true);
        report_repeats(&mut pipeline, &mut repeats, true);
        report_suppressed(&mut pipeline, &mut suppressed, true);
        pipeline.report_log_shares(std::time::Instant::now(), true);
        pipeline.flush_log();
        server.abort();
        info!("stopping: detaching probes");
        drop(probes);
        Ok(attached_at)
    })
}

/// Records handled from the ring buffer per turn of the event loop (the log is written after
/// each turn).
const RING_BATCH: usize = 1024;

/// How often the kernel's counts of repeated accesses are looked at (windows are ~1 s).
const REPEAT_CHECK: Duration = Duration::from_millis(500);

/// Writes summaries of the repeats counted in finished windows and deletes their entries.
fn report_repeats(pipeline: &mut Pipeline, repeats: &mut KernelRepeats, all: bool) {
    let now_epoch = crate::probes::repeats::epoch_of(clock_ns(libc::CLOCK_BOOTTIME) as u64);
    let finished = repeats.finished(now_epoch, all);
    if finished.is_empty() {
        return;
    }
    let done = pipeline.report_repeats(&finished, now_epoch, all);
    repeats.forget(&done);
}

/// Writes summaries of what containers' budgets cut in finished windows.
fn report_suppressed(pipeline: &mut Pipeline, suppressed: &mut KernelSuppressed, all: bool) {
    let now_epoch = crate::probes::repeats::epoch_of(clock_ns(libc::CLOCK_BOOTTIME) as u64);
    let finished = suppressed.finished(now_epoch, all);
    if finished.is_empty() {
        return;
    }
    pipeline.report_suppressed(&finished);
    let keys: Vec<_> = finished.into_iter().map(|(key, _)| key).collect();
    suppressed.forget(&keys);
}

/// A search of the host's and every running container's filesystem for the catalogue's
/// files, on a worker thread: thousands of files in a container must not hold up the events.
struct SecretScan {
    /// The policy set it searched for (a reload in between makes it stale).
    policies: String,
    task: tokio::task::JoinHandle<(secrets::SecretTable, Vec<secrets::OverBudget>)>,
}

/// Starts a search unless one is running (then `again` asks for another once it is done).
fn start_scan(pipeline: &Pipeline, scan: &mut Option<SecretScan>, again: &mut bool) {
    if scan.is_some() {
        *again = true;
        return;
    }
    let roots = pipeline.container_roots();
    let catalog = pipeline.policies().catalog.clone();
    *scan = Some(SecretScan {
        policies: pipeline.policies().sha256.clone(),
        task: tokio::task::spawn_blocking(move || secrets::search(&catalog, &roots)),
    });
}

/// Puts a finished search's inodes into the kernel (new containers, rotated secrets).
fn apply_scan(
    pipeline: &mut Pipeline,
    probes: &mut Probes,
    policies: &str,
    result: (secrets::SecretTable, Vec<secrets::OverBudget>),
) {
    if policies != pipeline.policies().sha256 {
        return; // searched for a catalogue that has since been replaced
    }
    let (table, over_budget) = result;
    pipeline.report_secret_budgets(&over_budget);
    let filter = pipeline.kernel_filter_with(&table);
    log::debug!("secret inodes: {}", filter.inodes.len());
    match probes.sync_filter(&filter) {
        Ok(()) => pipeline.replace_secrets(table),
        Err(err) => warn!("refreshing the secret inodes failed: {err:#}"),
    }
}

/// The kernel's endpoint map: the catalogue's addresses and the ones learned from DNS.
fn refresh_endpoints(pipeline: &mut Pipeline, probes: &mut Probes) {
    let (endpoints, learned) = pipeline.kernel_endpoints();
    if let Err(err) = probes.sync_endpoints(&endpoints) {
        warn!("updating the endpoint map failed: {err:#}");
    }
    if let Err(err) = probes.sync_learned(&learned) {
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
            digest == pipeline.policies().sha256 || self.rejected.as_ref() == Some(&digest);
        if unchanged && !forced {
            return;
        }
        match policy::load_dir(&self.dir) {
            Ok(set) => {
                let (table, _) = secrets::search(&set.catalog, &pipeline.container_roots());
                let learned = pipeline.learned_under(&set);
                let filter = KernelFilter::desired(&set.catalog, &table, &learned);
                if let Err(err) = probes.sync_filter(&filter) {
                    warn!(
                        "policy reload: updating the kernel filter failed: {err:#}; keeping the current policies"
                    );
                    pipeline.count_policy_reload(false);
                    return;
                }
                info!(
                    "policy reload: {} document(s), {} footprint(s), sha256 {}",
                    set.documents,
                    set.footprints.len(),
                    set.sha256
                );
                pipeline.replace_policies(set, table, learned);
                self.rejected = None;
            }
            Err(problems) => {
                for p in &problems {
                    warn!("policy reload rejected: {p}");
                }
                warn!(
                    "policy reload: {} problem(s); the last good policies keep running",
                    problems.len()
                );
                pipeline.count_policy_reload(false);
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
