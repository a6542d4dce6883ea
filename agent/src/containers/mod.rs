//! cgroup id → container → pod: which container (and pod) a kernel event came from.
//!
//! Resolution is lazy and cached per cgroup id. Paths come from the kernel's cgroup_mkdir
//! events when available (so a container that is already gone is still named), else from the
//! live cgroupfs. Metadata comes from the runtime's state files right away and, for containerd
//! and CRI containers, from the runtime API on a worker thread. Entries for removed cgroups are
//! dropped after a grace period, so the table stays bounded under container churn.

pub mod cgroup;
pub mod runtime;
pub mod runtime_api;
pub mod workload;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use cgroup::{CgroupPaths, ContainerRef, RuntimeHint};
pub use runtime::{Metadata, Pod, StateRoots};
use runtime_api::{ApiAnswer, ApiRequest, RuntimeApi};

use crate::events::CgroupEvent;

/// A container whose runtime state was not found (not written yet, or already removed) is
/// looked up again after this long.
const RETRY_INCOMPLETE: Duration = Duration::from_millis(200);
/// How long a removed cgroup stays known: records of its last events may still be queued.
pub const REMOVED_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
enum Entry {
    /// Not a container: its cgroup path, looked up once (cgroup ids are not reused).
    Host(Option<String>),
    Container {
        meta: Arc<Metadata>,
        checked: Instant,
        /// Asked the runtime API; its answer completes `meta`.
        awaiting_api: bool,
    },
}

/// Whether a container whose runtime state was not found is looked up again right away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Use what is cached (lookups of incomplete entries are throttled).
    Cached,
    /// Look incomplete entries up again now (a record is about to be written).
    Fresh,
}

/// What an event's cgroup turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Host { cgroup: Option<String> },
    Container(Arc<Metadata>),
}

impl Origin {
    /// The container's metadata; None for a host process.
    pub fn container(self) -> Option<Arc<Metadata>> {
        match self {
            Origin::Container(meta) => Some(meta),
            Origin::Host { .. } => None,
        }
    }
}

pub struct Containers {
    paths: Option<CgroupPaths>,
    roots: StateRoots,
    by_cgroup: HashMap<u64, Entry>,
    /// Paths from the kernel's cgroup_mkdir events, with when the cgroup was removed.
    known_paths: HashMap<u64, (String, Option<Instant>)>,
    /// When the kernel reported each known cgroup's creation (boot-time ns): a container's
    /// start when its runtime state is gone before the agent looks (short-lived containers).
    created_ns: HashMap<u64, u64>,
    api: Option<RuntimeApi>,
    /// Images the runtime API named since the last `take_new_images`.
    new_images: Vec<String>,
}

impl Containers {
    pub fn new(roots: StateRoots, api: Option<RuntimeApi>) -> Self {
        let paths = CgroupPaths::open()
            .map_err(|err| log::warn!("cgroup ids unresolvable ({err}); using /proc/<pid>/cgroup"))
            .ok();
        Containers {
            paths,
            roots,
            by_cgroup: HashMap::new(),
            known_paths: HashMap::new(),
            created_ns: HashMap::new(),
            api,
            new_images: Vec::new(),
        }
    }

    /// A cgroup appeared or went away (kernel event). New ones are looked up right away, while
    /// the runtime's state is most likely still there.
    pub fn on_cgroup(&mut self, event: &CgroupEvent) {
        let now = Instant::now();
        match self.known_paths.get_mut(&event.id) {
            Some((_, removed)) if !event.created => *removed = Some(now),
            _ => {
                let removed = (!event.created).then_some(now);
                self.known_paths
                    .insert(event.id, (event.path.clone(), removed));
            }
        }
        if event.created {
            self.created_ns.insert(event.id, event.boot_ns);
            self.resolve(event.id, 0, Lookup::Cached);
        }
    }

    /// Host or container, for an event from `pid` in cgroup `cgroup_id`. A container whose
    /// runtime state cannot be found is still reported, with what its cgroup path says
    /// (`Metadata::incomplete`).
    pub fn resolve(&mut self, cgroup_id: u64, pid: u32, lookup: Lookup) -> Origin {
        self.collect_answers();
        match self.by_cgroup.get(&cgroup_id) {
            Some(Entry::Host(path)) => {
                return Origin::Host {
                    cgroup: path.clone(),
                };
            }
            Some(Entry::Container {
                meta,
                checked,
                awaiting_api,
            }) if !meta.incomplete
                || *awaiting_api
                || (lookup == Lookup::Cached && checked.elapsed() < RETRY_INCOMPLETE) =>
            {
                return Origin::Container(meta.clone());
            }
            _ => {}
        }
        let path = self.path(cgroup_id, pid);
        let Some(container) = path.as_deref().and_then(cgroup::parse) else {
            self.by_cgroup.insert(cgroup_id, Entry::Host(path.clone()));
            return Origin::Host { cgroup: path };
        };
        let cgroup = path.as_deref().unwrap_or_default();
        let mut meta = runtime::lookup(&self.roots, &container, cgroup)
            .unwrap_or_else(|| runtime::from_path(&container, cgroup));
        let awaiting_api = self.ask_api(cgroup_id, &container, &meta);
        meta.incomplete |= awaiting_api;
        let meta = Arc::new(meta);
        let entry = Entry::Container {
            meta: meta.clone(),
            checked: Instant::now(),
            awaiting_api,
        };
        self.by_cgroup.insert(cgroup_id, entry);
        Origin::Container(meta)
    }

    /// Asks the runtime API for what its state files do not hold: the image of containerd
    /// containers, the pod labels of CRI containers. Returns whether it asked.
    fn ask_api(&self, cgroup_id: u64, container: &ContainerRef, meta: &Metadata) -> bool {
        let Some(api) = &self.api else { return false };
        let kubernetes = matches!(
            container.hint,
            RuntimeHint::Containerd | RuntimeHint::Crio | RuntimeHint::Cri
        ) || container.namespace.as_deref() == Some("k8s.io");
        let containerd = meta.runtime == "containerd" && container.namespace.is_some();
        if !kubernetes && !containerd {
            return false;
        }
        api.request(ApiRequest {
            cgroup_id,
            container_id: container.id.clone(),
            namespace: container
                .namespace
                .clone()
                .unwrap_or_else(|| "k8s.io".into()),
            cri: kubernetes,
        });
        true
    }

    /// The container's metadata with its init process and creation time filled from the
    /// runtime's state when the first look-up came before the runtime wrote them (a CRI
    /// container is named by the API while its task is still being created).
    pub fn with_state(&mut self, cgroup_id: u64, meta: Arc<Metadata>) -> Arc<Metadata> {
        if meta.init_pid.is_some() {
            return meta;
        }
        let Some(container) = cgroup::parse(&meta.cgroup) else {
            return meta;
        };
        let Some(state) = runtime::lookup(&self.roots, &container, &meta.cgroup) else {
            return meta;
        };
        let mut filled = (*meta).clone();
        filled.init_pid = state.init_pid;
        filled.created = state.created;
        let filled = Arc::new(filled);
        if let Some(Entry::Container { meta, .. }) = self.by_cgroup.get_mut(&cgroup_id) {
            *meta = filled.clone();
        }
        filled
    }

    /// Merges the runtime API's answers into the cached metadata.
    fn collect_answers(&mut self) {
        let Some(api) = &self.api else { return };
        for ApiAnswer {
            cgroup_id,
            ok,
            runtime,
            name,
            image,
            pod,
        } in api.answers()
        {
            let Some(Entry::Container {
                meta, awaiting_api, ..
            }) = self.by_cgroup.get_mut(&cgroup_id)
            else {
                continue;
            };
            let mut merged = (**meta).clone();
            if let Some(image) = &image
                && merged.image.is_none()
                && self.new_images.len() < 1024
            {
                self.new_images.push(image.clone());
            }
            merged.name = name.or(merged.name);
            merged.image = image.or(merged.image);
            merged.pod = pod.or(merged.pod);
            if ok && merged.runtime == "unknown" {
                merged.runtime = runtime.unwrap_or(merged.runtime);
            }
            // Still incomplete when neither the runtime state nor the API knew the container.
            merged.incomplete = !ok && merged.runtime == "unknown";
            *meta = Arc::new(merged);
            *awaiting_api = false;
        }
    }

    /// Images of containers the runtime API described since the last call (to audit them).
    pub fn take_new_images(&mut self) -> Vec<String> {
        self.collect_answers();
        std::mem::take(&mut self.new_images)
    }

    /// When the kernel reported the cgroup's creation (boot-time ns), if it did.
    pub fn cgroup_created_ns(&self, cgroup_id: u64) -> Option<u64> {
        self.created_ns.get(&cgroup_id).copied()
    }

    /// Whether a record from this cgroup should wait: its metadata is being fetched, or its
    /// runtime state may still appear (the cgroup is alive).
    pub fn is_pending(&mut self, cgroup_id: u64) -> bool {
        self.collect_answers();
        match self.by_cgroup.get(&cgroup_id) {
            Some(Entry::Container {
                awaiting_api: true, ..
            }) => true,
            Some(Entry::Container { meta, .. }) => meta.incomplete && self.is_alive(cgroup_id),
            _ => false,
        }
    }

    fn path(&self, cgroup_id: u64, pid: u32) -> Option<String> {
        if let Some((path, _)) = self.known_paths.get(&cgroup_id) {
            return Some(path.clone());
        }
        self.paths
            .as_ref()
            .and_then(|p| p.path_of(cgroup_id))
            .or_else(|| (pid != 0).then(|| cgroup::path_of_pid(pid)).flatten())
    }

    /// Whether the cgroup still exists (as far as the kernel's events or the cgroupfs say).
    pub fn is_alive(&self, cgroup_id: u64) -> bool {
        match self.known_paths.get(&cgroup_id) {
            Some((_, removed)) => removed.is_none(),
            None => self
                .paths
                .as_ref()
                .is_some_and(|p| p.path_of(cgroup_id).is_some()),
        }
    }

    /// Forgets cgroups removed more than `REMOVED_GRACE` ago (and, for cgroups the kernel did
    /// not report, those that no longer exist).
    pub fn sweep(&mut self) {
        let now = Instant::now();
        self.known_paths.retain(|_, (_, removed)| {
            removed.is_none_or(|at| now.duration_since(at) < REMOVED_GRACE)
        });
        let known = &self.known_paths;
        self.created_ns.retain(|id, _| known.contains_key(id));
        let (known, paths) = (&self.known_paths, &self.paths);
        self.by_cgroup.retain(|id, _| {
            known.contains_key(id) || paths.as_ref().is_some_and(|p| p.path_of(*id).is_some())
        });
    }

    /// cgroup ids of the containers whose cgroup still exists.
    pub fn live_container_cgroups(&self) -> Vec<u64> {
        self.by_cgroup
            .iter()
            .filter(|(id, e)| matches!(e, Entry::Container { .. }) && self.is_alive(**id))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Containers currently known.
    pub fn containers(&self) -> usize {
        self.by_cgroup
            .values()
            .filter(|e| matches!(e, Entry::Container { .. }))
            .count()
    }
}

/// The per-container metric labels: namespace, workload, container (all empty for the host).
pub fn metric_labels(meta: Option<&Metadata>) -> [String; 3] {
    match meta {
        Some(m) => [
            m.pod
                .as_ref()
                .and_then(|p| p.namespace.clone())
                .unwrap_or_default(),
            workload(m),
            m.name.clone().unwrap_or_default(),
        ],
        None => Default::default(),
    }
}

/// The `workload` label: the pod's owner, or off Kubernetes the image repository or the
/// container name without its generated parts (bounded under churn either way).
pub fn workload(meta: &Metadata) -> String {
    match &meta.pod {
        Some(Pod {
            name: Some(name),
            labels,
            ..
        }) => workload::workload_of(name, labels),
        _ => workload::off_kubernetes(
            Some(meta.name.as_deref().unwrap_or(&meta.id)),
            meta.image.as_deref(),
        ),
    }
}
