//! The `workload` metric label: the pod's owning workload (Deployment, StatefulSet, DaemonSet,
//! Job) without the generated suffixes, so the label stays bounded across pod churn.

use std::collections::BTreeMap;

/// Owner name of a pod, from its labels where they say, else from the usual name shapes.
pub fn workload_of(pod_name: &str, labels: &BTreeMap<String, String>) -> String {
    let strip = |suffix: &str| pod_name.strip_suffix(suffix).map(str::to_string);
    if let Some(job) = labels
        .get("batch.kubernetes.io/job-name")
        .or_else(|| labels.get("job-name"))
    {
        return job.clone();
    }
    // Deployment → ReplicaSet "<deployment>-<pod-template-hash>" → pod "<rs>-<5 chars>".
    if let Some(hash) = labels.get("pod-template-hash")
        && let Some(at) = pod_name.rfind(&format!("-{hash}-"))
    {
        return pod_name[..at].to_string();
    }
    // StatefulSet pods are "<set>-<ordinal>".
    if labels.contains_key("statefulset.kubernetes.io/pod-name")
        && let Some((set, ordinal)) = pod_name.rsplit_once('-')
        && ordinal.parse::<u32>().is_ok()
    {
        return set.to_string();
    }
    // DaemonSet pods are "<set>-<5 chars>".
    if labels.contains_key("controller-revision-hash")
        && let Some((set, suffix)) = pod_name.rsplit_once('-')
        && is_generated(suffix, 5)
    {
        return strip(&format!("-{suffix}")).unwrap_or_else(|| set.to_string());
    }
    if labels.is_empty() {
        // No labels to go by: recognise "<deployment>-<8-10 char hash>-<5 chars>".
        let parts: Vec<&str> = pod_name.rsplitn(3, '-').collect();
        if let [suffix, hash, base] = parts.as_slice()
            && is_generated(suffix, 5)
            && (8..=10).contains(&hash.len())
            && is_generated(hash, hash.len())
        {
            return base.to_string();
        }
    }
    pod_name.to_string()
}

/// The `workload` label of a container outside Kubernetes, bounded across churn: its image's
/// repository (no registry port, tag or digest) when known, else its name without the parts
/// that look generated (numbers, long hex strings), so "ci-job-4711-build" and
/// "ci-job-4712-build" are one workload.
pub fn off_kubernetes(name: Option<&str>, image: Option<&str>) -> String {
    if let Some(image) = image.filter(|i| !i.is_empty()) {
        let without_digest = image.split('@').next().unwrap_or(image);
        // A tag follows the last ':' after the last '/' (a registry port comes before it).
        let last_slash = without_digest.rfind('/').map_or(0, |i| i + 1);
        let repo = match without_digest[last_slash..].rfind(':') {
            Some(colon) => &without_digest[..last_slash + colon],
            None => without_digest,
        };
        return repo.to_string();
    }
    let Some(name) = name else {
        return String::new();
    };
    let kept: Vec<&str> = name
        .split(['-', '_', '.'])
        .filter(|part| !looks_generated(part))
        .collect();
    if kept.is_empty() {
        "generated".to_string()
    } else {
        kept.join("-")
    }
}

/// A number, or a hex string of 6+ characters with a digit in it (ids, hashes).
fn looks_generated(part: &str) -> bool {
    !part.is_empty()
        && (part.chars().all(|c| c.is_ascii_digit())
            || (part.len() >= 6
                && part.chars().all(|c| c.is_ascii_hexdigit())
                && part.chars().any(|c| c.is_ascii_digit())))
}

/// Kubernetes' generated name suffixes use lowercase consonants and digits ("bcdfghjklmnpqrstvwxz2456789").
fn is_generated(s: &str, len: usize) -> bool {
    s.len() == len
        && s.chars()
            .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn off_kubernetes_workloads_are_bounded() {
        assert_eq!(
            off_kubernetes(Some("ci-job-4711-build"), None),
            "ci-job-build"
        );
        assert_eq!(
            off_kubernetes(Some("ci-job-4712-build"), None),
            "ci-job-build"
        );
        assert_eq!(
            off_kubernetes(Some("runner-3f9a1c2e7b-project-42"), None),
            "runner-project"
        );
        assert_eq!(off_kubernetes(Some("web"), None), "web");
        assert_eq!(off_kubernetes(Some("0123456789abcdef"), None), "generated");
        assert_eq!(
            off_kubernetes(Some("x"), Some("registry:5000/team/api:1.2@sha256:ab")),
            "registry:5000/team/api"
        );
        assert_eq!(off_kubernetes(None, Some("nginx")), "nginx");
    }

    #[test]
    fn owners() {
        let deploy = labels(&[("app", "payments-api"), ("pod-template-hash", "7d4b9c6f5")]);
        assert_eq!(
            workload_of("payments-api-7d4b9c6f5-x2x9z", &deploy),
            "payments-api"
        );
        let sts = labels(&[
            ("controller-revision-hash", "db-6b8f"),
            ("statefulset.kubernetes.io/pod-name", "db-2"),
        ]);
        assert_eq!(workload_of("db-2", &sts), "db");
        let ds = labels(&[("controller-revision-hash", "5f7c8d9b6")]);
        assert_eq!(workload_of("node-exporter-8kq2w", &ds), "node-exporter");
        let job = labels(&[
            ("job-name", "backup-29100000"),
            ("batch.kubernetes.io/job-name", "backup-29100000"),
        ]);
        assert_eq!(
            workload_of("backup-29100000-7xk2p", &job),
            "backup-29100000"
        );
        assert_eq!(
            workload_of("standalone", &labels(&[("app", "x")])),
            "standalone"
        );
    }

    #[test]
    fn without_labels_the_deployment_shape_is_recognised() {
        let none = BTreeMap::new();
        assert_eq!(
            workload_of("payments-api-7d4b9c6f5-x2x9z", &none),
            "payments-api"
        );
        assert_eq!(workload_of("web-0", &none), "web-0");
        assert_eq!(workload_of("my-pod", &none), "my-pod");
    }
}
