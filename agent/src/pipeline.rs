//! Everything a kernel record passes through after it leaves the ring buffer: decoding, the
//! process table, container attribution, credential matching, the verdict, and the sinks.
//!
//! A record from a container whose metadata is not readable yet (the first event of a
//! brand-new container) is held for up to `HOLD` and written once the metadata is there, or
//! with what is known when the deadline passes (counted in `credwatch_missing_metadata_total`).

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use log::warn;

use crate::{
    containers::{Containers, Lookup, Origin},
    events::{self, Event, FileOpen, ProcessEventKind},
    footprint::{self, Subject, Verdict},
    policy::{Action, PolicySet},
    process::ProcessTable,
    secrets::SecretTable,
    sinks::{self, forensic, metrics::Metrics},
};

/// Longest a record waits for its container's metadata.
pub const HOLD: Duration = Duration::from_millis(500);
/// An allowed access is written once per (container, binary, secret) per this long.
pub const ALLOWED_EVERY: Duration = Duration::from_secs(600);

/// A record waiting for its container's metadata and its verdict.
struct Held {
    record: forensic::Record,
    cgroup_id: u64,
    pid: u32,
    exe: Option<Vec<u8>>,
    /// The file's path (None for network accesses).
    path: Option<Vec<u8>>,
    outside_root: bool,
    until: Instant,
}

pub struct Pipeline {
    pub policies: PolicySet,
    pub secrets: SecretTable,
    pub processes: ProcessTable,
    pub containers: Containers,
    pub log: forensic::ForensicLog,
    pub metrics: Arc<Metrics>,
    pub node: String,
    /// CLOCK_REALTIME − CLOCK_BOOTTIME, to turn kernel boot-time stamps into wall-clock time.
    pub boot_to_unix_ns: i128,
    next_event: u64,
    held: VecDeque<Held>,
    /// When an allowed (container, binary, secret) was last written.
    allowed_logged: HashMap<(String, Vec<u8>, String), Instant>,
    /// Containers whose filesystem has been searched for secret files.
    scanned: std::collections::HashSet<u64>,
    /// A container started running programs: search its filesystem soon.
    rescan: bool,
    /// Addresses of catalogue host names, from DNS responses.
    pub learned: crate::dns::LearnedHosts,
}

impl Pipeline {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        policies: PolicySet,
        secrets: SecretTable,
        processes: ProcessTable,
        containers: Containers,
        log: forensic::ForensicLog,
        metrics: Arc<Metrics>,
        node: String,
        boot_to_unix_ns: i128,
    ) -> Self {
        Pipeline {
            policies,
            secrets,
            processes,
            containers,
            log,
            metrics,
            node,
            boot_to_unix_ns,
            next_event: 0,
            held: VecDeque::new(),
            allowed_logged: HashMap::new(),
            scanned: Default::default(),
            rescan: false,
            learned: Default::default(),
        }
    }

    pub fn handle(&mut self, bytes: &[u8]) {
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
            Event::Connect(connect) => self.connect(&connect),
            Event::Dns { cgroup_id, message } => {
                let catalog = &self.policies.catalog;
                self.learned
                    .learn(catalog, cgroup_id, &message, Instant::now());
            }
            Event::Process(process) => {
                self.processes.apply(&process);
                if process.kind == ProcessEventKind::Exec {
                    // A new program, maybe in a new container: look it up while it exists, and
                    // search a new container's filesystem for its secrets.
                    let origin =
                        self.containers
                            .resolve(process.cgroup_id, process.pid, Lookup::Cached);
                    if matches!(origin, Origin::Container(_))
                        && self.scanned.insert(process.cgroup_id)
                    {
                        self.rescan = true;
                        // A new container: the endpoints its environment points at.
                        let catalog = &self.policies.catalog;
                        self.learned
                            .learn_environment(catalog, process.pid, Instant::now());
                    }
                }
            }
            Event::Cgroup(cgroup) => {
                if !cgroup.created {
                    self.learned.forget_cgroup(cgroup.id);
                }
                self.containers.on_cgroup(&cgroup);
            }
        }
    }

    fn file_open(&mut self, open: &FileOpen) {
        let process = self.processes.describe(open);
        let catalog = &self.policies.catalog;
        let Some(credential) = self.secrets.classify(catalog, open, process.ns_pid) else {
            return; // the kernel keys are coarser than the globs
        };
        let rule = &catalog.files[credential.rule];
        let secret = (rule.name.clone(), rule.catalog.clone());
        let mut record = self.new_record(open.boot_ns, open.tid, "file", secret, &process);
        record.file = Some(sinks::file_section(open, &credential));
        let held = Held {
            record,
            cgroup_id: open.cgroup_id,
            pid: open.pid,
            exe: process.exe,
            path: Some(credential.path),
            outside_root: open.path_flags & credwatch_common::path_flag::OUTSIDE_ROOT != 0,
            until: Instant::now() + HOLD,
        };
        if let Some(still_waiting) = self.attribute(held, Instant::now()) {
            self.held.push_back(still_waiting);
        }
    }

    fn connect(&mut self, c: &events::Connect) {
        let process = self.processes.describe_connect(c);
        let catalog = &self.policies.catalog;
        let endpoint = match c.endpoint {
            // Unconfirmed: a connect right after a DNS answer; decided by what that answer
            // taught (it was handled before this record: the ring buffer keeps their order).
            0 => self
                .learned
                .endpoint(c.cgroup_id, &c.address)
                .and_then(|i| catalog.endpoints.get(i))
                .filter(|e| e.ports.is_empty() || e.ports.contains(&c.port)),
            id => catalog.endpoint(id),
        };
        let Some(endpoint) = endpoint else {
            return; // not a credential endpoint (or the catalogue changed since)
        };
        let family = match (c.ipv6_socket, c.address) {
            (false, _) => "ipv4",
            (true, std::net::IpAddr::V4(_)) => "ipv4-mapped",
            (true, std::net::IpAddr::V6(_)) => "ipv6",
        };
        let network = forensic::NetworkSection {
            address: c.address.to_string(),
            port: c.port,
            family,
            hostname: self
                .learned
                .hostname(c.cgroup_id, &c.address)
                .map(str::to_string),
            service: endpoint.name.clone(),
            result: c.result,
            source: if c.result.is_some() {
                "connect"
            } else {
                "cgroup_hook"
            },
        };
        let secret = (endpoint.name.clone(), endpoint.catalog.clone());
        let mut record = self.new_record(c.boot_ns, c.tid, "network", secret, &process);
        record.network = Some(network);
        let held = Held {
            record,
            cgroup_id: c.cgroup_id,
            pid: c.pid,
            exe: process.exe,
            path: None,
            outside_root: false,
            until: Instant::now() + HOLD,
        };
        if let Some(still_waiting) = self.attribute(held, Instant::now()) {
            self.held.push_back(still_waiting);
        }
    }

    /// A record's common part; verdict, container and policy are added by `attribute`.
    fn new_record(
        &mut self,
        boot_ns: u64,
        tid: u32,
        kind: &'static str,
        (name, catalog): (String, String),
        process: &crate::process::ProcessInfo,
    ) -> forensic::Record {
        self.next_event += 1;
        forensic::Record {
            schema: forensic::SCHEMA,
            ts: sinks::rfc3339(self.boot_to_unix_ns + boot_ns as i128).unwrap_or_default(),
            event_id: format!("{boot_ns:016x}-{tid:08x}-{}", self.next_event),
            node: self.node.clone(),
            verdict: "undeclared",
            reason: String::new(),
            kind,
            secret: forensic::SecretSection {
                catalog_entry: format!("{catalog}/{name}"),
                name,
            },
            file: None,
            network: None,
            process: sinks::process_section(process, self.boot_to_unix_ns),
            container: None,
            pod: None,
            policy: None,
        }
    }

    /// Adds the container and the verdict and writes the record, or hands it back to wait for
    /// the container's metadata.
    fn attribute(&mut self, mut held: Held, now: Instant) -> Option<Held> {
        let origin = self
            .containers
            .resolve(held.cgroup_id, held.pid, Lookup::Fresh);
        let (meta, host_cgroup) = match origin {
            Origin::Container(meta) => (Some(meta), None),
            Origin::Host { cgroup } => (None, cgroup),
        };
        if let Some(m) = &meta
            && m.incomplete
        {
            if now < held.until && self.containers.is_pending(held.cgroup_id) {
                return Some(held);
            }
            self.metrics.missing_metadata.inc();
        }
        let subject = Subject {
            container: meta.as_deref(),
            host_cgroup: host_cgroup.as_deref(),
            exe: held.exe.as_deref(),
        };
        let secret = held.record.secret.name.clone();
        let judgement = footprint::judge(
            &self.policies.footprints,
            &subject,
            &secret,
            held.path.as_deref(),
            held.outside_root,
        );
        if judgement.verdict == Verdict::Ignored {
            return None;
        }
        let record = &mut held.record;
        record.verdict = judgement.verdict.as_str();
        record.reason = judgement.reason.to_string();
        record.policy = judgement.policy.map(|p| forensic::PolicySection {
            name: p.name.clone(),
            action: judgement.action.as_str(),
        });
        record.container = meta.as_deref().map(sinks::container_section);
        record.pod = meta.as_deref().and_then(sinks::pod_section);

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
        let labels = [
            namespace.as_str(),
            &workload,
            &container,
            &secret,
            record.kind,
        ];
        let [ns, wl, ct, sc, kind] = labels;
        self.metrics
            .credential_access
            .with_label_values(&[ns, wl, ct, sc, kind, record.verdict])
            .inc();
        if judgement.verdict == Verdict::Deviation && judgement.action == Action::Alert {
            self.metrics
                .deviations
                .with_label_values(&[ns, wl, ct, sc, kind, judgement.reason])
                .inc();
        }
        if judgement.verdict == Verdict::Allowed {
            let key = (
                meta.as_ref()
                    .map_or_else(|| "host".to_string(), |m| m.id.clone()),
                held.exe.clone().unwrap_or_default(),
                secret,
            );
            if self
                .allowed_logged
                .get(&key)
                .is_some_and(|at| now.duration_since(*at) < ALLOWED_EVERY)
            {
                return None;
            }
            self.allowed_logged.insert(key, now);
        }
        if let Err(err) = self.log.write(&held.record) {
            self.metrics
                .events_lost
                .with_label_values(&["log_write"])
                .inc();
            warn!("forensic log: {err:#}");
        }
        None
    }

    /// Retries held records; with `flush`, writes all of them with what is known.
    pub fn release_held(&mut self, flush: bool) {
        let now = if flush {
            Instant::now() + HOLD * 2
        } else {
            Instant::now()
        };
        for held in std::mem::take(&mut self.held) {
            if let Some(still_waiting) = self.attribute(held, now) {
                self.held.push_back(still_waiting);
            }
        }
    }

    pub fn has_held(&self) -> bool {
        !self.held.is_empty()
    }

    /// Whether a new container wants its filesystem searched (cleared by the call).
    pub fn take_rescan(&mut self) -> bool {
        std::mem::take(&mut self.rescan)
    }

    /// `/proc/<pid>/root` of a live process in each running container.
    pub fn container_roots(&self) -> Vec<std::path::PathBuf> {
        let cgroups = self.containers.live_container_cgroups();
        self.processes
            .pids_in_cgroups(&cgroups)
            .into_iter()
            .map(|pid| std::path::PathBuf::from(format!("/proc/{pid}/root")))
            .filter(|root| root.exists())
            .collect()
    }

    /// Forgets allowed-access timestamps older than the logging interval (bounded memory).
    pub fn expire_allowed(&mut self, now: Instant) {
        self.allowed_logged
            .retain(|_, at| now.duration_since(*at) < ALLOWED_EVERY);
        let live = self.containers.live_container_cgroups();
        self.scanned.retain(|id| live.contains(id));
    }
}
