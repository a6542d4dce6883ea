//! cgroup id → container → pod: which container (and pod) a kernel event came from.
//!
//! Resolution is lazy and cached per cgroup id; entries for removed cgroups are swept, so the
//! table stays bounded under container churn.

pub mod cgroup;
pub mod runtime;
pub mod workload;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use cgroup::CgroupPaths;
pub use runtime::{Metadata, Pod, StateRoots};

use crate::events::CgroupEvent;

/// A container whose runtime state was not found (not written yet, or already removed) is
/// looked up again after this long.
const RETRY_INCOMPLETE: Duration = Duration::from_millis(200);
/// How long a removed cgroup stays known: records of its last events may still be queued.
pub const REMOVED_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
enum Entry {
    Host,
    Container {
        meta: Arc<Metadata>,
        checked: Instant,
    },
}

pub struct Containers {
    paths: Option<CgroupPaths>,
    roots: StateRoots,
    by_cgroup: HashMap<u64, Entry>,
    /// Paths from the kernel's cgroup_mkdir events, with when the cgroup was removed.
    known_paths: HashMap<u64, (String, Option<Instant>)>,
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

impl Containers {
    pub fn new(roots: StateRoots) -> Self {
        let paths = CgroupPaths::open()
            .map_err(|err| {
                log::warn!(
                    "cgroup ids cannot be resolved directly ({err}); using /proc/<pid>/cgroup"
                )
            })
            .ok();
        Containers {
            paths,
            roots,
            by_cgroup: HashMap::new(),
            known_paths: HashMap::new(),
        }
    }

    /// A cgroup appeared or went away (kernel event). New ones are looked up right away, while
    /// the runtime's state is most likely still there.
    pub fn on_cgroup(&mut self, event: &CgroupEvent) {
        if event.created {
            self.known_paths
                .insert(event.id, (event.path.clone(), None));
            self.resolve(event.id, 0, Lookup::Cached);
        } else if let Some((_, removed)) = self.known_paths.get_mut(&event.id) {
            *removed = Some(Instant::now());
        } else {
            self.known_paths
                .insert(event.id, (event.path.clone(), Some(Instant::now())));
        }
    }

    /// Host or container, for an event from `pid` in cgroup `cgroup_id`. A container whose
    /// runtime state cannot be found is still reported, with what its cgroup path says
    /// (`Metadata::incomplete`).
    pub fn resolve(&mut self, cgroup_id: u64, pid: u32, lookup: Lookup) -> Origin {
        match self.by_cgroup.get(&cgroup_id) {
            Some(Entry::Host) => {
                return Origin::Host {
                    cgroup: self.path(cgroup_id, pid),
                };
            }
            Some(Entry::Container { meta, checked })
                if !meta.incomplete
                    || (lookup == Lookup::Cached && checked.elapsed() < RETRY_INCOMPLETE) =>
            {
                return Origin::Container(meta.clone());
            }
            _ => {}
        }
        let path = self.path(cgroup_id, pid);
        let entry = match path.as_deref().and_then(cgroup::parse) {
            None => Entry::Host,
            Some(container) => {
                let cgroup = path.as_deref().unwrap_or_default();
                let meta = runtime::lookup(&self.roots, &container, cgroup)
                    .unwrap_or_else(|| runtime::from_path(&container, cgroup));
                Entry::Container {
                    meta: Arc::new(meta),
                    checked: Instant::now(),
                }
            }
        };
        self.by_cgroup.insert(cgroup_id, entry.clone());
        match entry {
            Entry::Container { meta, .. } => Origin::Container(meta),
            Entry::Host => Origin::Host { cgroup: path },
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

    /// Forgets cgroups removed more than `REMOVED_GRACE` ago (and, for cgroups the kernel did
    /// not report, those that no longer exist).
    pub fn sweep(&mut self) {
        let now = Instant::now();
        self.known_paths.retain(|_, (_, removed)| {
            removed.is_none_or(|at| now.duration_since(at) < REMOVED_GRACE)
        });
        let (known, paths) = (&self.known_paths, &self.paths);
        self.by_cgroup.retain(|id, _| {
            known.contains_key(id) || paths.as_ref().is_some_and(|p| p.path_of(*id).is_some())
        });
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

    /// Containers currently known.
    pub fn containers(&self) -> usize {
        self.by_cgroup
            .values()
            .filter(|e| matches!(e, Entry::Container { .. }))
            .count()
    }

    pub fn cgroups(&self) -> usize {
        self.by_cgroup.len().max(self.known_paths.len())
    }
}

/// The `workload` label: the pod's owner, or the container name off Kubernetes.
pub fn workload(meta: &Metadata) -> String {
    match &meta.pod {
        Some(Pod {
            name: Some(name),
            labels,
            ..
        }) => workload::workload_of(name, labels),
        _ => meta.name.clone().unwrap_or_else(|| meta.id.clone()),
    }
}
