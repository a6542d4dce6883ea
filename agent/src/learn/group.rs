//! Which footprint an observation belongs to, and what each footprint learns from it.
//!
//! Kubernetes containers group by namespace + owning workload + container name, so replicas
//! (and the pods a Deployment rolls through) are one footprint; other containers by name (or
//! by image); host processes, with `--host`, into one `host: true` footprint.

use std::collections::{BTreeMap, BTreeSet};

use time::OffsetDateTime;

use super::evidence::Observation;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GroupBy {
    /// Kubernetes: namespace/workload/container; elsewhere the container name.
    Workload,
    /// The container image (off Kubernetes).
    Image,
}

/// Pod labels that differ between replicas or revisions of one workload: never selector keys.
const VOLATILE_LABELS: &[&str] = &[
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "controller-uid",
    "job-name",
    "job-index",
];
const VOLATILE_LABEL_PREFIXES: &[&str] = &["batch.kubernetes.io/"];

/// Accesses within this long of the container's start are "startup".
const STARTUP: time::Duration = time::Duration::seconds(60);

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum GroupKey {
    Pod {
        namespace: String,
        workload: String,
        container: String,
    },
    Container(String),
    Image(String),
    Host,
}

impl GroupKey {
    pub fn of(o: &Observation, by: GroupBy) -> Option<GroupKey> {
        let Some(c) = &o.container else {
            return Some(GroupKey::Host);
        };
        if let Some(pod) = &c.pod
            && let (Some(namespace), Some(workload), Some(container)) =
                (&pod.namespace, &pod.workload, &c.name)
        {
            return Some(GroupKey::Pod {
                namespace: namespace.clone(),
                workload: workload.clone(),
                container: container.clone(),
            });
        }
        match by {
            GroupBy::Image => c.image.clone().map(GroupKey::Image),
            GroupBy::Workload => c.name.clone().map(GroupKey::Container),
        }
    }

    /// The footprint's name (also its file name): lower-case letters, digits, '-' and '.'.
    pub fn footprint_name(&self) -> String {
        let raw = match self {
            GroupKey::Pod {
                namespace,
                workload,
                container,
            } => format!("{namespace}-{workload}-{container}"),
            GroupKey::Container(name) => format!("container-{name}"),
            GroupKey::Image(image) => format!("image-{image}"),
            GroupKey::Host => "host".into(),
        };
        let mut name: String = raw
            .chars()
            .map(|c| match c {
                'a'..='z' | '0'..='9' | '-' | '.' => c,
                'A'..='Z' => c.to_ascii_lowercase(),
                _ => '-',
            })
            .collect();
        name.truncate(200);
        name.trim_matches(['-', '.']).to_string()
    }
}

/// One allow entry being learned: a secret reached by one binary.
#[derive(Debug, Clone)]
pub struct Learned {
    pub paths: BTreeSet<String>,
    pub first: OffsetDateTime,
    pub last: OffsetDateTime,
    pub count: u64,
    /// Pods (Kubernetes) or container instances that made these accesses.
    pub replicas: BTreeSet<String>,
    /// Every access came within `STARTUP` of its container's start (None: start unknown).
    pub startup_only: Option<bool>,
}

#[derive(Debug, Default)]
pub struct Group {
    /// Container id → when it started (if the record said).
    pub instances: BTreeMap<String, Option<OffsetDateTime>>,
    /// Pod (uid, else name) → its labels.
    pub pods: BTreeMap<String, BTreeMap<String, String>>,
    pub nodes: BTreeSet<String>,
    pub image: Option<String>,
    /// (secret, binary) → what was learned.
    pub entries: BTreeMap<(String, String), Learned>,
    /// Indices of the learned observations (for merging and checking).
    pub observed: Vec<usize>,
}

impl Group {
    pub fn add(&mut self, index: usize, o: &Observation, path: Option<String>, exe: String) {
        self.observed.push(index);
        if let Some(node) = &o.node {
            self.nodes.insert(node.clone());
        }
        let mut replica = String::new();
        let mut started = None;
        if let Some(c) = &o.container {
            started = c.started;
            self.instances.insert(c.id.clone(), c.started);
            self.image = self.image.take().or_else(|| c.image.clone());
            replica = c.id.clone();
            if let Some(pod) = &c.pod
                && let Some(key) = pod.uid.clone().or_else(|| pod.name.clone())
            {
                self.pods.insert(key.clone(), pod.labels.clone());
                replica = key;
            }
        }
        let at_startup = started.map(|s| o.at - s <= STARTUP);
        let entry = self
            .entries
            .entry((o.secret.clone(), exe))
            .or_insert_with(|| Learned {
                paths: BTreeSet::new(),
                first: o.at,
                last: o.at,
                count: 0,
                replicas: BTreeSet::new(),
                startup_only: Some(true),
            });
        entry.paths.extend(path);
        entry.first = entry.first.min(o.at);
        entry.last = entry.last.max(o.at);
        entry.count += o.accesses;
        if !replica.is_empty() {
            entry.replicas.insert(replica);
        }
        entry.startup_only = match (entry.startup_only, at_startup) {
            (Some(a), Some(b)) => Some(a && b),
            _ => None,
        };
    }

    /// Labels every pod of the group carries with the same value, less the volatile ones.
    pub fn identity_labels(&self) -> BTreeMap<String, String> {
        let mut pods = self.pods.values();
        let Some(first) = pods.next() else {
            return BTreeMap::new();
        };
        let mut common = first.clone();
        for labels in pods {
            common.retain(|k, v| labels.get(k) == Some(v));
        }
        common.retain(|k, _| {
            !VOLATILE_LABELS.contains(&k.as_str())
                && !VOLATILE_LABEL_PREFIXES.iter().any(|p| k.starts_with(p))
        });
        common
    }

    /// Whether every container of the group started inside the evidence window, so its
    /// start-up accesses are in the evidence.
    pub fn complete(&self, window_start: OffsetDateTime) -> bool {
        self.instances
            .values()
            .all(|s| s.is_some_and(|s| s >= window_start))
    }

    /// When the last access not seen before was first seen.
    pub fn last_new(&self) -> Option<OffsetDateTime> {
        self.entries.values().map(|e| e.first).max()
    }

    pub fn distinct(&self) -> usize {
        self.entries.values().map(|e| e.paths.len().max(1)).sum()
    }
}

/// The path as a footprint names it: atomic-writer directories dropped, volatile parts (pids
/// in `/proc/<pid>/`, pod UIDs in the kubelet's directories) as `*`, glob characters escaped.
/// None when no glob can name it literally (invalid UTF-8, shown as `\xNN` in the log).
pub fn learned_path(path: &str) -> Option<String> {
    let raw = unescape_log_string(path)?;
    let canonical = crate::policy::paths::canonical(raw.as_bytes()).into_owned();
    let canonical = String::from_utf8(canonical).ok()?;
    let parts: Vec<&str> = canonical.split('/').collect();
    let mut out = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let volatile = (i == 2 && parts[1] == "proc" && part.parse::<u32>().is_ok())
            || (i >= 5
                && parts[i - 4..i] == ["var", "lib", "kubelet", "pods"][..]
                && !part.is_empty());
        out.push(if volatile {
            "*".to_string()
        } else {
            glob_escape(part)
        });
    }
    Some(out.join("/"))
}

/// A binary's path as a literal glob.
pub fn learned_binary(exe: &str) -> Option<String> {
    unescape_log_string(exe).map(|e| glob_escape(&e))
}

/// The log escapes `\` as `\\` and non-UTF-8 bytes as `\xNN`; a glob can only name the first.
fn unescape_log_string(s: &str) -> Option<String> {
    if !s.contains('\\') {
        return Some(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('\\') => out.push('\\'),
                _ => return None,
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

pub(crate) fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '*' | '?' | '[' | ']' | '{' | '}' | '\\' | '!' => {
                out.push('[');
                out.push(c);
                out.push(']');
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_keep_literal_except_volatile_parts() {
        assert_eq!(
            learned_path("/run/secrets/kubernetes.io/serviceaccount/..2026_11_30_18_00_00.1/token")
                .unwrap(),
            "/run/secrets/kubernetes.io/serviceaccount/token"
        );
        assert_eq!(
            learned_path("/proc/4242/environ").unwrap(),
            "/proc/*/environ"
        );
        assert_eq!(
            learned_path("/var/lib/kubelet/pods/0d1e-42/volumes/kubernetes.io~secret/db/pw")
                .unwrap(),
            "/var/lib/kubelet/pods/*/volumes/kubernetes.io~secret/db/pw"
        );
        assert_eq!(
            learned_path("/run/secrets/a*b").unwrap(),
            "/run/secrets/a[*]b"
        );
        assert_eq!(
            learned_path("/run/secrets/back\\\\slash").unwrap(),
            "/run/secrets/back[\\]slash"
        );
        assert_eq!(learned_path("/run/secrets/bad\\xff"), None);
    }

    #[test]
    fn escaped_globs_match_only_the_literal_path() {
        for (path, other) in [
            ("/run/secrets/a*b", "/run/secrets/aXb"),
            ("/run/secrets/[x]", "/run/secrets/x"),
            ("/run/secrets/back\\slash", "/run/secrets/backslash"),
        ] {
            let logged = crate::escape::escape_bytes(path.as_bytes());
            let glob = globset::GlobBuilder::new(&learned_path(&logged).unwrap())
                .literal_separator(true)
                .build()
                .unwrap()
                .compile_matcher();
            assert!(glob.is_match(path), "{path}");
            assert!(!glob.is_match(other), "{other}");
        }
    }

    #[test]
    fn names_are_safe_file_names() {
        let key = GroupKey::Pod {
            namespace: "payments".into(),
            workload: "API_v2".into(),
            container: "srv/../x".into(),
        };
        assert_eq!(key.footprint_name(), "payments-api-v2-srv-..-x");
        assert!(!key.footprint_name().contains('/'));
    }
}
