//! The default catalogue's breadth, end to end from containers: host credential stores, tool
//! and registry tokens, cloud-init user data, and — through the host's directories mounted
//! into a container — other pods' secrets as the kubelet keeps them and etcd's data.

use std::path::Path;

use credwatch_tests::{Agent, agent, helper_binary, runc::Container};
use serde_json::json;

/// (path inside the container, catalogue entry it must be named as).
const IN_IMAGE: &[(&str, &str)] = &[
    ("/etc/shadow", "host-credential-stores"),
    ("/etc/gshadow", "host-credential-stores"),
    ("/home/dev/.npmrc", "tool-tokens"),
    ("/home/dev/.pypirc", "tool-tokens"),
    ("/home/dev/.pgpass", "tool-tokens"),
    ("/home/dev/.my.cnf", "tool-tokens"),
    ("/home/dev/.config/gh/hosts.yml", "tool-tokens"),
    (
        "/home/dev/.terraform.d/credentials.tfrc.json",
        "tool-tokens",
    ),
    ("/home/dev/.config/containers/auth.json", "tool-tokens"),
    ("/home/dev/.m2/settings.xml", "tool-tokens"),
    ("/home/dev/.gradle/gradle.properties", "tool-tokens"),
    ("/home/dev/.cargo/credentials.toml", "tool-tokens"),
    ("/home/dev/.boto", "tool-tokens"),
    ("/home/dev/.oci/config", "tool-tokens"),
    (
        "/var/lib/cloud/instance/user-data.txt",
        "cloud-init-user-data",
    ),
];

/// Under a host directory mounted at /var/lib in the container (a hostPath mount).
const FROM_HOST: &[(&str, &str)] = &[
    (
        "/var/lib/kubelet/pods/0b7c9a4e-1111-4c1e-9d43-2f7a3c9e5d10/volumes/kubernetes.io~secret/db-creds/password",
        "kubelet-pod-secrets",
    ),
    (
        "/var/lib/kubelet/pods/0b7c9a4e-1111-4c1e-9d43-2f7a3c9e5d10/volumes/kubernetes.io~projected/kube-api-access-x2z9q/token",
        "kubelet-pod-secrets",
    ),
    ("/var/lib/etcd/member/snap/db", "etcd-data"),
];

fn prepare(_work: &Path) -> String {
    // The default catalogue only; the entry below matches nothing.
    "    - name: e2e-unused\n      paths: [\"/nonexistent-e2e/**\"]\n".to_string()
}

fn setup() -> &'static Agent {
    agent(prepare, "auto")
}

#[test]
fn the_default_catalogue_names_what_thieves_go_for() {
    let agent = setup();
    let rootfs = credwatch_tests::runc::rootfs();
    for (path, _) in IN_IMAGE {
        let file = rootfs.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, "not-a-real-credential\n").unwrap();
    }
    let id = format!("cw-{}-catalogue", std::process::id());
    let host_lib = std::env::temp_dir().join(format!("credwatch-hostlib-{}", std::process::id()));
    for (path, _) in FROM_HOST {
        let file = host_lib.join(path.trim_start_matches("/var/lib/"));
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, "not-a-real-credential\n").unwrap();
    }
    std::fs::create_dir_all(rootfs.join("var/lib")).unwrap();
    let all: Vec<&str> = IN_IMAGE.iter().chain(FROM_HOST).map(|(p, _)| *p).collect();
    let script = format!("for f in {}; do cat \"$f\" >/dev/null; done", all.join(" "));
    let c = Container::with_spec(&id, &[], &["/bin/sh", "-c", &script], |spec| {
        spec["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/var/lib", "type": "bind", "source": host_lib,
            "options": ["rbind", "ro"]}));
    });
    c.run_to_completion();
    for (path, entry) in IN_IMAGE.iter().chain(FROM_HOST) {
        let record = agent.wait_record(path, |r| {
            r["container"]["id"] == id.as_str() && r["file"]["path"] == *path
        });
        assert_eq!(record["secret"]["name"], *entry, "{record:#}");
        assert_eq!(record["verdict"], "undeclared");
    }
    let _ = std::fs::remove_dir_all(&host_lib);
}

#[test]
fn another_process_memory_is_named_and_a_process_own_is_not() {
    let agent = setup();
    let id = format!("cw-{}-memory", std::process::id());
    // cat opens the container's first process's memory (refused or not, it is recorded),
    // then its own, which is not credential theft.
    let c = Container::new(
        &id,
        &[],
        &[
            "/bin/sh",
            "-c",
            "cat /proc/1/mem 2>/dev/null; cat /proc/self/mem 2>/dev/null; true",
        ],
    );
    c.run_to_completion();
    let record = agent.wait_record("the read of another process' memory", |r| {
        r["container"]["id"] == id.as_str() && r["file"]["path"] == "/proc/1/mem"
    });
    assert_eq!(record["secret"]["name"], "process-memory", "{record:#}");
    let own: Vec<_> = agent
        .records()
        .into_iter()
        .filter(|r| r["container"]["id"] == id.as_str())
        .filter(|r| r["file"]["raw_path"] == "/proc/self/mem")
        .collect();
    assert!(own.is_empty(), "its own memory is exempt: {own:?}");
}

/// ptrace attach and process_vm_readv of another process, from a container: records of kind
/// `process_memory` naming the syscall, its result and the target; the same read of the
/// process's own memory is not recorded.
#[test]
fn syscalls_into_another_process_memory_are_recorded() {
    let agent = setup();
    let id = format!("cw-{}-memsys", std::process::id());
    let rootfs = credwatch_tests::runc::rootfs();
    std::fs::create_dir_all(rootfs.join("usr")).unwrap();
    for (link, to) in [("lib", "usr/lib"), ("lib64", "usr/lib64")] {
        let _ = std::os::unix::fs::symlink(to, rootfs.join(link));
    }
    let target = rootfs.join("opt/memreader");
    if !target.exists() {
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(&target, "").unwrap();
    }
    let helper = helper_binary("credwatch-memreader");
    let c = Container::with_spec(&id, &[], &["/opt/memreader"], |spec| {
        let mounts = spec["mounts"].as_array_mut().unwrap();
        mounts.push(
            json!({"destination": "/usr", "type": "bind", "source": "/usr",
            "options": ["rbind", "ro"]}),
        );
        mounts.push(
            json!({"destination": "/opt/memreader", "type": "bind", "source": helper,
            "options": ["bind", "ro"]}),
        );
    });
    c.run_to_completion();
    let of = |syscall: &str| {
        agent.wait_record(syscall, |r| {
            r["container"]["id"] == id.as_str()
                && r["kind"] == "process_memory"
                && r["memory"]["syscall"] == syscall
        })
    };
    let readv = of("process_vm_readv");
    assert_eq!(readv["secret"]["name"], "process-memory", "{readv:#}");
    assert_eq!(readv["memory"]["result"], 32, "{readv:#}");
    assert_eq!(readv["verdict"], "undeclared");
    // The target is the reader's child: named by its pid in the container's namespace and
    // resolved to the host's process, its executable and container.
    let target = &readv["memory"]["target"];
    assert_eq!(readv["process"]["exe"], "/opt/memreader", "{readv:#}");
    assert_eq!(target["exe"], "/opt/memreader", "{readv:#}");
    assert_eq!(target["container"], id.as_str(), "{readv:#}");
    assert!(target["pid"].as_u64().unwrap() > 1, "{readv:#}");
    assert!(target["host_pid"].is_u64(), "{readv:#}");
    assert_ne!(target["host_pid"], readv["process"]["pid"], "{readv:#}");
    let attach = of("ptrace");
    assert_eq!(attach["memory"]["request"], "PTRACE_ATTACH", "{attach:#}");
    assert_eq!(attach["memory"]["result"], 0, "{attach:#}");
    let readvs = agent
        .records()
        .into_iter()
        .filter(|r| r["container"]["id"] == id.as_str())
        .filter(|r| r["memory"]["syscall"] == "process_vm_readv")
        .count();
    assert_eq!(readvs, 1, "the read of its own memory is not recorded");
}

/// The host's filesystem mounted into a container at /host (as node agents and debug pods
/// do): a pod secret the kubelet keeps, read through it, is named by its host path, with the
/// path the container used beside it (`opened_path`). The agent knows the host's secret files
/// by inode, whatever path reaches them.
#[test]
fn a_pod_secret_read_through_a_mount_of_the_host_is_named_by_its_host_path() {
    let agent = setup();
    let kubelet = Path::new("/var/lib/kubelet");
    let created_kubelet = !kubelet.exists();
    let pod = kubelet.join(format!(
        "pods/{:08x}-e2e0-4000-8000-000000000000",
        std::process::id()
    ));
    let dir = pod.join("volumes/kubernetes.io~secret/db-creds");
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("password");
    std::fs::write(&secret, "not-a-real-credential\n").unwrap();
    let seen_as = format!("/host{}", secret.display());
    let id = format!("cw-{}-hostmount", std::process::id());
    let script = format!("while true; do cat {seen_as} >/dev/null; sleep 1; done");
    let c = Container::with_spec(&id, &[], &["/bin/sh", "-c", &script], |spec| {
        spec["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/host/var/lib/kubelet", "type": "bind", "source": kubelet,
            "options": ["rbind", "ro"]}));
    });
    c.start();
    // Named once the agent's search of the host has found the file (at the container's start
    // or the next refresh).
    let record = agent.wait_record(&seen_as, |r| {
        r["container"]["id"] == id.as_str() && r["file"]["opened_path"] == seen_as.as_str()
    });
    c.stop();
    let _ = std::fs::remove_dir_all(if created_kubelet { kubelet } else { &pod });
    assert_eq!(
        record["file"]["path"],
        secret.to_str().unwrap(),
        "{record:#}"
    );
    assert_eq!(
        record["secret"]["name"], "kubelet-pod-secrets",
        "{record:#}"
    );
}
