//! Verdicts: each credential access is compared with the footprints that select where it came
//! from (docs/contract.md). Several footprints may select one container: their allows add up.

use super::{Action, Footprint, footprint::Selector};
use crate::containers::Metadata;

/// Where an access came from, as far as selectors care.
#[derive(Debug, Clone, Copy, Default)]
pub struct Subject<'a> {
    /// None for processes outside containers.
    pub container: Option<&'a Metadata>,
    /// The cgroup path of a host process.
    pub host_cgroup: Option<&'a str>,
    /// The executable (as the process' mount namespace names it).
    pub exe: Option<&'a [u8]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Deviation,
    /// No footprint selects the container.
    Undeclared,
    /// A host process no `host: true` footprint selects: not reported.
    Ignored,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Deviation => "deviation",
            Verdict::Undeclared => "undeclared",
            Verdict::Ignored => "ignored",
        }
    }
}

#[derive(Debug)]
pub struct Judgement<'a> {
    pub verdict: Verdict,
    pub reason: &'static str,
    /// The footprint that allowed the access, or the first that selects the subject.
    pub policy: Option<&'a Footprint>,
    /// What a deviation does: alert if any selecting footprint says so.
    pub action: Action,
}

/// `outside_root`: the file is not in the process' own filesystem view (the kernel's path walk
/// left the process' root: another container's files through `/proc/<pid>/root/`, or the
/// host's). Its path then says nothing about whose secret it is, so no allow can cover it.
pub fn judge<'a>(
    footprints: &'a [Footprint],
    subject: &Subject,
    secret: &str,
    path: Option<&[u8]>,
    outside_root: bool,
) -> Judgement<'a> {
    let selected: Vec<&Footprint> = footprints
        .iter()
        .filter(|f| f.selector.selects(subject))
        .collect();
    let Some(first) = selected.first().copied() else {
        return match subject.container {
            Some(_) => Judgement {
                verdict: Verdict::Undeclared,
                reason: "no footprint selects this container",
                policy: None,
                action: Action::Alert,
            },
            None => Judgement {
                verdict: Verdict::Ignored,
                reason: "host process and no footprint selects the host",
                policy: None,
                action: Action::Log,
            },
        };
    };
    let action = if selected.iter().any(|f| f.action == Action::Alert) {
        Action::Alert
    } else {
        Action::Log
    };
    let deviation = |reason| Judgement {
        verdict: Verdict::Deviation,
        reason,
        policy: Some(first),
        action,
    };
    if outside_root {
        return deviation(
            "file outside the process' own filesystem (another container's or the host's)",
        );
    }
    let for_secret: Vec<(&Footprint, &crate::policy::footprint::Allow)> = selected
        .iter()
        .flat_map(|f| f.allows.iter().map(move |a| (*f, a)))
        .filter(|(_, a)| a.secret == secret)
        .collect();
    if for_secret.is_empty() {
        return deviation("secret not in footprint");
    }
    let on_path: Vec<_> = for_secret
        .into_iter()
        .filter(|(_, a)| a.covers_path(secret, path))
        .collect();
    if on_path.is_empty() {
        return deviation("path not in footprint");
    }
    let by_binary = on_path
        .into_iter()
        .find(|(_, a)| a.covers(secret, path, subject.exe));
    match by_binary {
        Some((footprint, _)) => Judgement {
            verdict: Verdict::Allowed,
            reason: "declared in footprint",
            policy: Some(footprint),
            action: footprint.action,
        },
        None => deviation("binary not allowed"),
    }
}

impl Selector {
    /// Whether this selector picks the process an access came from.
    pub fn selects(&self, subject: &Subject) -> bool {
        let Some(meta) = subject.container else {
            // Host processes: only `host: true` selects them (narrowed by cgroup if given).
            return self.host
                && self
                    .cgroup
                    .as_ref()
                    .is_none_or(|g| subject.host_cgroup.is_some_and(|c| g.is_match(c)));
        };
        if self.host {
            return false;
        }
        let pod = meta.pod.as_ref();
        self.namespace
            .as_ref()
            .is_none_or(|ns| pod.and_then(|p| p.namespace.as_ref()) == Some(ns))
            && self
                .pod_labels
                .iter()
                .all(|(k, v)| pod.and_then(|p| p.labels.get(k)) == Some(v))
            && self
                .container
                .as_ref()
                .is_none_or(|c| meta.name.as_ref() == Some(c))
            && self
                .image
                .as_ref()
                .is_none_or(|g| meta.image.as_ref().is_some_and(|i| g.is_match(i)))
            && self
                .cgroup
                .as_ref()
                .is_none_or(|g| g.is_match(&meta.cgroup))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::containers::Pod;

    /// Policies parsed the way `credwatch check` parses them.
    fn footprints(yaml: &str) -> Vec<Footprint> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/catalog.yaml"),
            dir.path().join("catalog.yaml"),
        )
        .unwrap();
        std::fs::write(dir.path().join("footprints.yaml"), yaml).unwrap();
        match crate::policy::load_dir(dir.path()) {
            Ok(set) => set.footprints,
            Err(problems) => panic!("{problems:#?}"),
        }
    }

    fn container(
        name: &str,
        image: &str,
        cgroup: &str,
        pod: Option<(&str, &[(&str, &str)])>,
    ) -> Metadata {
        Metadata {
            id: format!("id-{name}"),
            name: Some(name.into()),
            image: Some(image.into()),
            runtime: "containerd",
            cgroup: cgroup.into(),
            pod: pod.map(|(ns, labels)| Pod {
                name: Some("p".into()),
                namespace: Some(ns.into()),
                uid: None,
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
            }),
            incomplete: false,
            ..Default::default()
        }
    }

    const POLICY: &str = r#"
apiVersion: credwatch.dev/v1alpha1
kind: SecretFootprint
metadata: {name: payments-api}
spec:
  selector:
    namespace: payments
    podLabels: {app: payments-api}
    container: api
    image: "registry.example.com/payments/*"
  allow:
    - secret: mounted-secrets
      paths: ["/run/secrets/db_password"]
      binaries: ["/app/server"]
    - secret: aws-shared-credentials
---
apiVersion: credwatch.dev/v1alpha1
kind: SecretFootprint
metadata: {name: payments-extra}
spec:
  selector: {namespace: payments}
  allow:
    - secret: k8s-serviceaccount-token
  action: log
---
apiVersion: credwatch.dev/v1alpha1
kind: SecretFootprint
metadata: {name: docker-host}
spec:
  selector: {cgroup: "/system.slice/docker-*.scope"}
  allow: [{secret: docker-config}]
---
apiVersion: credwatch.dev/v1alpha1
kind: SecretFootprint
metadata: {name: node-agents}
spec:
  selector: {host: true}
  allow: [{secret: ssh-private-keys, binaries: ["/usr/sbin/sshd"]}]
"#;

    #[test]
    fn verdict_table() {
        let fps = footprints(POLICY);
        let api = container(
            "api",
            "registry.example.com/payments/api:1.2",
            "/kubepods/x",
            Some(("payments", &[("app", "payments-api")])),
        );
        let other_label = container(
            "api",
            "registry.example.com/payments/api:1.2",
            "/kubepods/y",
            Some(("payments", &[("app", "other")])),
        );
        let other_image = container(
            "api",
            "docker.io/library/api:1",
            "/kubepods/z",
            Some(("payments", &[("app", "payments-api")])),
        );
        let other_ns = container(
            "api",
            "registry.example.com/payments/api:1.2",
            "/kubepods/w",
            Some(("shop", &[("app", "payments-api")])),
        );
        let docker = container("web", "nginx", "/system.slice/docker-abc.scope", None);
        let loose = container("job", "busybox", "/batch1", None);
        let server = Some(&b"/app/server"[..]);
        let shell = Some(&b"/bin/sh"[..]);
        let db = Some(&b"/run/secrets/db_password"[..]);
        let other_secret = Some(&b"/run/secrets/other"[..]);
        let sub = |c: &'static Metadata, exe| Subject {
            container: Some(c),
            host_cgroup: None,
            exe,
        };
        // Leak the fixtures for the table's 'static borrows.
        let [api, other_label, other_image, other_ns, docker, loose]: [&'static Metadata; 6] =
            [api, other_label, other_image, other_ns, docker, loose]
                .map(|m| &*Box::leak(Box::new(m)));
        let host = |exe| Subject {
            container: None,
            host_cgroup: Some("/user.slice/session-1.scope"),
            exe,
        };
        let table: Vec<(
            &str,
            Subject,
            &str,
            Option<&[u8]>,
            Verdict,
            &str,
            Option<&str>,
        )> = vec![
            (
                "declared, right binary",
                sub(api, server),
                "mounted-secrets",
                db,
                Verdict::Allowed,
                "declared in footprint",
                Some("payments-api"),
            ),
            (
                "declared, other binary",
                sub(api, shell),
                "mounted-secrets",
                db,
                Verdict::Deviation,
                "binary not allowed",
                Some("payments-api"),
            ),
            (
                "path narrowing",
                sub(api, server),
                "mounted-secrets",
                other_secret,
                Verdict::Deviation,
                "path not in footprint",
                Some("payments-api"),
            ),
            (
                "undeclared secret",
                sub(api, server),
                "ssh-private-keys",
                None,
                Verdict::Deviation,
                "secret not in footprint",
                Some("payments-api"),
            ),
            (
                "allow without narrowing",
                sub(api, shell),
                "aws-shared-credentials",
                None,
                Verdict::Allowed,
                "declared in footprint",
                Some("payments-api"),
            ),
            (
                "second footprint adds up",
                sub(api, shell),
                "k8s-serviceaccount-token",
                None,
                Verdict::Allowed,
                "declared in footprint",
                Some("payments-extra"),
            ),
            (
                "podLabels must match",
                sub(other_label, server),
                "mounted-secrets",
                db,
                Verdict::Deviation,
                "secret not in footprint",
                Some("payments-extra"),
            ),
            (
                "image glob must match",
                sub(other_image, server),
                "k8s-serviceaccount-token",
                None,
                Verdict::Allowed,
                "declared in footprint",
                Some("payments-extra"),
            ),
            (
                "image glob must match (2)",
                sub(other_image, server),
                "aws-shared-credentials",
                None,
                Verdict::Deviation,
                "secret not in footprint",
                Some("payments-extra"),
            ),
            (
                "namespace must match",
                sub(other_ns, server),
                "aws-shared-credentials",
                None,
                Verdict::Undeclared,
                "no footprint selects this container",
                None,
            ),
            (
                "cgroup glob",
                sub(docker, shell),
                "docker-config",
                None,
                Verdict::Allowed,
                "declared in footprint",
                Some("docker-host"),
            ),
            (
                "no footprint",
                sub(loose, shell),
                "mounted-secrets",
                db,
                Verdict::Undeclared,
                "no footprint selects this container",
                None,
            ),
            (
                "host: true selects the host",
                host(Some(b"/usr/sbin/sshd")),
                "ssh-private-keys",
                None,
                Verdict::Allowed,
                "declared in footprint",
                Some("node-agents"),
            ),
            (
                "host binary not allowed",
                host(shell),
                "ssh-private-keys",
                None,
                Verdict::Deviation,
                "binary not allowed",
                Some("node-agents"),
            ),
        ];
        for (what, subject, secret, path, verdict, reason, policy) in table {
            let j = judge(&fps, &subject, secret, path, false);
            assert_eq!(
                (j.verdict, j.reason, j.policy.map(|p| p.name.as_str())),
                (verdict, reason, policy),
                "{what}"
            );
        }
        // A deviation's action is alert when any selecting footprint alerts.
        assert_eq!(
            judge(&fps, &sub(api, shell), "mounted-secrets", db, false).action,
            Action::Alert
        );
        // The same path reached outside the process' root (another container's file).
        let j = judge(&fps, &sub(api, server), "mounted-secrets", db, true);
        assert_eq!(
            (j.verdict, j.policy.map(|p| p.name.as_str())),
            (Verdict::Deviation, Some("payments-api"))
        );
    }

    #[test]
    fn host_processes_are_ignored_without_a_host_footprint() {
        let fps =
            footprints(&POLICY.replace("selector: {host: true}", "selector: {container: none}"));
        let j = judge(
            &fps,
            &Subject {
                exe: None,
                container: None,
                host_cgroup: Some("/"),
            },
            "ssh-private-keys",
            None,
            false,
        );
        assert_eq!(j.verdict, Verdict::Ignored);
    }
}
