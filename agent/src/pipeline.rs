//! Everything a kernel record passes through after it leaves the ring buffer: decoding, the
//! process table, container attribution, credential matching, and the sinks.
//!
//! A record from a container whose runtime state is not readable yet (the first event of a
//! brand-new container) is held for up to `HOLD` and written once the metadata is there, or
//! with what is known when the deadline passes (counted in `credwatch_missing_metadata_total`).

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use log::warn;

use crate::{
    containers::{Containers, Lookup, Origin},
    events::{self, Event, FileOpen, ProcessEventKind},
    policy::Catalog,
    process::ProcessTable,
    secrets::SecretTable,
    sinks::{self, forensic, metrics::Metrics},
};

/// Longest a record waits for its container's metadata.
pub const HOLD: Duration = Duration::from_millis(500);

/// A record waiting for its container's metadata.
struct Held {
    record: forensic::Record,
    cgroup_id: u64,
    pid: u32,
    until: Instant,
}

pub struct Pipeline {
    pub catalog: Catalog,
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
}

impl Pipeline {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        catalog: Catalog,
        secrets: SecretTable,
        processes: ProcessTable,
        containers: Containers,
        log: forensic::ForensicLog,
        metrics: Arc<Metrics>,
        node: String,
        boot_to_unix_ns: i128,
    ) -> Self {
        Pipeline {
            catalog,
            secrets,
            processes,
            containers,
            log,
            metrics,
            node,
            boot_to_unix_ns,
            next_event: 0,
            held: VecDeque::new(),
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
            Event::Process(process) => {
                self.processes.apply(&process);
                if process.kind == ProcessEventKind::Exec {
                    // A new program, maybe in a new container: look it up while it exists.
                    self.containers
                        .resolve(process.cgroup_id, process.pid, Lookup::Cached);
                }
            }
            Event::Cgroup(cgroup) => self.containers.on_cgroup(&cgroup),
        }
    }

    fn file_open(&mut self, open: &FileOpen) {
        let process = self.processes.describe(open);
        let Some(credential) = self.secrets.classify(&self.catalog, open, process.ns_pid) else {
            return; // the kernel keys are coarser than the globs
        };
        let rule = &self.catalog.files[credential.rule];
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
            container: None,
            pod: None,
        };
        let held = Held {
            record,
            cgroup_id: open.cgroup_id,
            pid: open.pid,
            until: Instant::now() + HOLD,
        };
        if let Some(still_waiting) = self.attribute(held, Instant::now()) {
            self.held.push_back(still_waiting);
        }
    }

    /// Adds the container and writes the record, or hands it back to wait for metadata.
    fn attribute(&mut self, mut held: Held, now: Instant) -> Option<Held> {
        let origin = self
            .containers
            .resolve(held.cgroup_id, held.pid, Lookup::Fresh);
        let meta = match origin {
            Origin::Container(meta) => Some(meta),
            Origin::Host { .. } => None,
        };
        if let Some(m) = &meta
            && m.incomplete
        {
            if now < held.until && self.containers.is_pending(held.cgroup_id) {
                return Some(held);
            }
            self.metrics.missing_metadata.inc();
        }
        held.record.container = meta.as_deref().map(sinks::container_section);
        held.record.pod = meta.as_deref().and_then(sinks::pod_section);
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
        let record = &held.record;
        self.metrics
            .credential_access
            .with_label_values(&[
                &namespace,
                &workload,
                &container,
                &record.secret.name,
                record.kind,
                record.verdict,
            ])
            .inc();
        if let Err(err) = self.log.write(record) {
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
}
