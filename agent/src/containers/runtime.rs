//! Container metadata from what the runtimes leave on the host: runc's state (`state.json`,
//! whose labels carry the OCI bundle's annotations) under each runtime's state root. CRI
//! runtimes annotate containers with the pod's name, namespace and uid, the container's name
//! and its image.

use std::{collections::BTreeMap, path::PathBuf};

use serde::Deserialize;

use super::cgroup::{ContainerRef, RuntimeHint};

/// Where runtimes keep runc state, per runtime; overridable for tests.
#[derive(Debug, Clone)]
pub struct StateRoots {
    /// Plain `runc` (and CRI-O, Podman with runc): `<root>/<id>/state.json`.
    pub runc: PathBuf,
    /// containerd's runc shim: `<root>/<namespace>/<id>/state.json`.
    pub containerd: PathBuf,
    /// Docker: `<root>/<id>/state.json`.
    pub docker: PathBuf,
}

impl Default for StateRoots {
    fn default() -> Self {
        StateRoots {
            runc: "/run/runc".into(),
            containerd: "/run/containerd/runc".into(),
            docker: "/run/docker/runtime-runc/moby".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Metadata {
    pub id: String,
    pub name: Option<String>,
    pub image: Option<String>,
    pub runtime: &'static str,
    pub cgroup: String,
    pub pod: Option<Pod>,
    /// No runtime state was found: only what the cgroup path says is known.
    pub incomplete: bool,
    /// The container's first process (host pid), from the runtime state: processes that do
    /// not descend from it entered through exec.
    pub init_pid: Option<u32>,
    /// When the runtime created the container (RFC 3339), from its state.
    pub created: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pod {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub uid: Option<String>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct RuncState {
    config: RuncConfig,
    #[serde(default)]
    init_process_pid: Option<u32>,
    #[serde(default)]
    created: Option<String>,
}

#[derive(Deserialize)]
struct RuncConfig {
    #[serde(default)]
    labels: Vec<String>,
}

/// containerd's namespace for Kubernetes containers.
const K8S_NAMESPACE: &str = "k8s.io";

/// Looks the container up in its runtime's state. None when no runtime knows it: for the bare
/// `/<id>` layouts that means the cgroup is not a container at all.
pub fn lookup(roots: &StateRoots, container: &ContainerRef, cgroup: &str) -> Option<Metadata> {
    let id = container.id.as_str();
    let candidates: Vec<(PathBuf, &'static str)> = match (container.hint, &container.namespace) {
        (RuntimeHint::RuncOrContainerd, Some(ns)) => {
            vec![(roots.containerd.join(ns).join(id), "containerd")]
        }
        (RuntimeHint::RuncOrContainerd, None) => vec![(roots.runc.join(id), "runc")],
        (RuntimeHint::Containerd, _) => {
            vec![(roots.containerd.join(K8S_NAMESPACE).join(id), "containerd")]
        }
        (RuntimeHint::Crio, _) => vec![(roots.runc.join(id), "cri-o")],
        (RuntimeHint::Cri, _) => vec![
            (roots.containerd.join(K8S_NAMESPACE).join(id), "containerd"),
            (roots.runc.join(id), "cri-o"),
        ],
        (RuntimeHint::Docker, _) => vec![(roots.docker.join(id), "docker")],
        (RuntimeHint::Podman, _) => vec![(roots.runc.join(id), "podman")],
    };
    let (state, runtime) = candidates.into_iter().find_map(|(dir, runtime)| {
        let text = std::fs::read_to_string(dir.join("state.json")).ok()?;
        let state: RuncState = serde_json::from_str(&text).ok()?;
        Some((state, runtime))
    })?;
    let mut meta = from_annotations(
        id,
        runtime,
        cgroup,
        &annotations(&state.config.labels),
        container.pod_uid.as_deref(),
    );
    meta.init_pid = state.init_process_pid.filter(|&pid| pid > 0);
    meta.created = state.created;
    Some(meta)
}

/// What the cgroup path alone says about a container whose runtime state is gone (or not
/// written yet).
pub fn from_path(container: &ContainerRef, cgroup: &str) -> Metadata {
    Metadata {
        id: container.id.clone(),
        // Off Kubernetes (runc, ctr) a container is named by its id; a Kubernetes container's
        // name is not in its cgroup path.
        name: (container.hint == RuntimeHint::RuncOrContainerd).then(|| container.id.clone()),
        image: None,
        runtime: match container.hint {
            RuntimeHint::Containerd => "containerd",
            RuntimeHint::Crio => "cri-o",
            RuntimeHint::Docker => "docker",
            RuntimeHint::Podman => "podman",
            RuntimeHint::Cri | RuntimeHint::RuncOrContainerd => "unknown",
        },
        cgroup: cgroup.to_string(),
        pod: container.pod_uid.as_ref().map(|uid| Pod {
            uid: Some(uid.clone()),
            ..Default::default()
        }),
        incomplete: true,
        ..Default::default()
    }
}

/// runc keeps the bundle's annotations as `key=value` labels.
fn annotations(labels: &[String]) -> BTreeMap<String, String> {
    labels
        .iter()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn from_annotations(
    id: &str,
    runtime: &'static str,
    cgroup: &str,
    a: &BTreeMap<String, String>,
    pod_uid_from_path: Option<&str>,
) -> Metadata {
    let get = |keys: &[&str]| keys.iter().find_map(|k| a.get(*k).cloned());
    let pod_name = get(&["io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"]);
    let pod_namespace = get(&[
        "io.kubernetes.cri.sandbox-namespace",
        "io.kubernetes.pod.namespace",
    ]);
    let pod_uid = get(&["io.kubernetes.cri.sandbox-uid", "io.kubernetes.pod.uid"])
        .or_else(|| pod_uid_from_path.map(str::to_string));
    let pod = (pod_name.is_some() || pod_namespace.is_some() || pod_uid.is_some()).then(|| Pod {
        name: pod_name,
        namespace: pod_namespace,
        uid: pod_uid,
        labels: BTreeMap::new(),
    });
    Metadata {
        id: id.to_string(),
        name: get(&[
            "io.kubernetes.cri.container-name",
            "io.kubernetes.container.name",
        ])
        .or_else(|| Some(id.to_string())),
        image: get(&[
            "io.kubernetes.cri.image-name",
            "io.kubernetes.cri-o.ImageName",
            "org.opencontainers.image.ref.name",
        ]),
        runtime,
        cgroup: cgroup.to_string(),
        pod,
        incomplete: false,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_state(dir: &std::path::Path, labels: &[&str]) {
        std::fs::create_dir_all(dir).unwrap();
        let state = serde_json::json!({"id": "x", "config": {"labels": labels}});
        std::fs::write(dir.join("state.json"), state.to_string()).unwrap();
    }

    fn roots(tmp: &std::path::Path) -> StateRoots {
        StateRoots {
            runc: tmp.join("runc"),
            containerd: tmp.join("containerd"),
            docker: tmp.join("docker"),
        }
    }

    #[test]
    fn plain_runc_is_named_by_its_id() {
        let tmp = tempfile::tempdir().unwrap();
        write_state(&tmp.path().join("runc/web1"), &["bundle=/b"]);
        let c = ContainerRef {
            id: "web1".into(),
            hint: RuntimeHint::RuncOrContainerd,
            pod_uid: None,
            namespace: None,
        };
        let m = lookup(&roots(tmp.path()), &c, "/web1").unwrap();
        assert_eq!(
            (m.name.as_deref(), m.runtime, m.pod),
            (Some("web1"), "runc", None)
        );
        // A top-level cgroup no runtime knows is not a container.
        let other = ContainerRef {
            id: "batch".into(),
            ..c
        };
        assert_eq!(lookup(&roots(tmp.path()), &other, "/batch"), None);
    }

    #[test]
    fn cri_annotations_name_the_pod() {
        let tmp = tempfile::tempdir().unwrap();
        write_state(
            &tmp.path().join("containerd/k8s.io/abc"),
            &[
                "io.kubernetes.cri.container-name=api",
                "io.kubernetes.cri.sandbox-name=payments-api-7d4b9c6f5-x2x9z",
                "io.kubernetes.cri.sandbox-namespace=payments",
                "io.kubernetes.cri.sandbox-uid=1234",
                "io.kubernetes.cri.image-name=registry.example.com/payments/api:1.2",
                "bundle=/run/containerd/io.containerd.runtime.v2.task/k8s.io/abc",
            ],
        );
        let c = ContainerRef {
            id: "abc".into(),
            hint: RuntimeHint::Cri,
            pod_uid: Some("1234".into()),
            namespace: None,
        };
        let m = lookup(&roots(tmp.path()), &c, "/kubepods/pod1234/abc").unwrap();
        assert_eq!(m.name.as_deref(), Some("api"));
        assert_eq!(m.runtime, "containerd");
        assert_eq!(
            m.image.as_deref(),
            Some("registry.example.com/payments/api:1.2")
        );
        let pod = m.pod.unwrap();
        assert_eq!(pod.name.as_deref(), Some("payments-api-7d4b9c6f5-x2x9z"));
        assert_eq!(pod.namespace.as_deref(), Some("payments"));
        assert_eq!(pod.uid.as_deref(), Some("1234"));
    }

    #[test]
    fn containerd_namespaces() {
        let tmp = tempfile::tempdir().unwrap();
        write_state(&tmp.path().join("containerd/default/web"), &[]);
        let c = ContainerRef {
            id: "web".into(),
            hint: RuntimeHint::RuncOrContainerd,
            pod_uid: None,
            namespace: Some("default".into()),
        };
        let m = lookup(&roots(tmp.path()), &c, "/default/web").unwrap();
        assert_eq!((m.runtime, m.name.as_deref()), ("containerd", Some("web")));
    }
}
