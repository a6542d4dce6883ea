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

/// A cgroup that looks like a container but whose runtime state is not there yet (the
/// runtime is still creating it) is looked up again after this long.
const RETRY_UNKNOWN: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
enum Entry {
    Host,
    Container(Arc<Metadata>),
    /// Looks like a container, no runtime knows it (yet).
    Unknown {
        since: Instant,
    },
}

pub struct Containers {
    paths: Option<CgroupPaths>,
    roots: StateRoots,
    by_cgroup: HashMap<u64, Entry>,
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
        }
    }

    pub fn resolve(&mut self, cgroup_id: u64, pid: u32) -> Origin {
        match self.by_cgroup.get(&cgroup_id) {
            Some(Entry::Container(meta)) => return Origin::Container(meta.clone()),
            Some(Entry::Host) => {
                return Origin::Host {
                    cgroup: self.path(cgroup_id, pid),
                };
            }
            Some(Entry::Unknown { since }) if since.elapsed() < RETRY_UNKNOWN => {
                return Origin::Host {
                    cgroup: self.path(cgroup_id, pid),
                };
            }
            _ => {}
        }
        let path = self.path(cgroup_id, pid);
        let entry = match path.as_deref().and_then(cgroup::parse) {
            None => Entry::Host,
            Some(container) => {
                match runtime::lookup(&self.roots, &container, path.as_deref().unwrap_or_default())
                {
                    Some(meta) => Entry::Container(Arc::new(meta)),
                    None => Entry::Unknown {
                        since: Instant::now(),
                    },
                }
            }
        };
        self.by_cgroup.insert(cgroup_id, entry.clone());
        match entry {
            Entry::Container(meta) => Origin::Container(meta),
            _ => Origin::Host { cgroup: path },
        }
    }

    fn path(&self, cgroup_id: u64, pid: u32) -> Option<String> {
        self.paths
            .as_ref()
            .and_then(|p| p.path_of(cgroup_id))
            .or_else(|| cgroup::path_of_pid(pid))
    }

    /// Drops entries whose cgroup is gone.
    pub fn sweep(&mut self) {
        let Some(paths) = &self.paths else {
            // Without id resolution nothing says which cgroups are gone: start afresh.
            self.by_cgroup.clear();
            return;
        };
        self.by_cgroup.retain(|id, _| paths.path_of(*id).is_some());
    }

    /// Containers currently known.
    pub fn containers(&self) -> usize {
        self.by_cgroup
            .values()
            .filter(|e| matches!(e, Entry::Container(_)))
            .count()
    }

    pub fn cgroups(&self) -> usize {
        self.by_cgroup.len()
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
