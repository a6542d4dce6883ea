//! The Kubernetes deployment: every manifest validates against the Kubernetes schemas
//! (`kubernetes-validate` from PyPI), the ConfigMap carries exactly the shipped catalogue and
//! passes `credwatch check`, and the pieces agree with each other.

use std::{path::Path, process::Command};

fn deploy() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

fn ensure_kubernetes_validate() {
    let present = Command::new("kubernetes-validate")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        let status = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "kubernetes-validate"])
            .status()
            .unwrap();
        assert!(status.success(), "pip install kubernetes-validate failed");
    }
}

fn yaml(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(deploy().join(name)).unwrap();
    // YAML is a superset of JSON; convert through Python, which the validator needs anyway.
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(text.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success(), "{name} is not YAML");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    ensure_kubernetes_validate();
    for name in [
        "namespace.yaml",
        "serviceaccount.yaml",
        "configmap.yaml",
        "daemonset.yaml",
        "service.yaml",
    ] {
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "--kubernetes-version", "1.30.0"])
            .arg(deploy().join(name))
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.contains("passed"),
            "{name}:\n{text}"
        );
    }
}

#[test]
fn the_configmap_is_the_shipped_catalogue_and_passes_check() {
    ensure_kubernetes_validate(); // brings PyYAML
    let cm = yaml("configmap.yaml");
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/catalog.yaml"),
    )
    .unwrap();
    assert_eq!(
        cm["data"]["catalog.yaml"].as_str(),
        Some(shipped.as_str()),
        "configmap.yaml drifted from policies/catalog.yaml"
    );
    let dir = std::env::temp_dir().join(format!("credwatch-cm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text) in cm["data"].as_object().unwrap() {
        std::fs::write(dir.join(name), text.as_str().unwrap()).unwrap();
    }
    let bin = std::env::var("CREDWATCH_BIN").expect("CREDWATCH_BIN (use `cargo xtask test`)");
    let out = Command::new(bin)
        .args(["check", "--policies"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn the_pieces_agree() {
    ensure_kubernetes_validate();
    let ds = yaml("daemonset.yaml");
    let pod = &ds["spec"]["template"]["spec"];
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    let container = &pod["containers"][0];
    // Least privilege: capabilities, not privileged.
    assert_eq!(container["securityContext"]["privileged"], false);
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"][0],
        "ALL"
    );
    assert_eq!(pod["hostPID"], true);
    let port = &container["ports"][0];
    for name in ["service.yaml", "podmonitor.yaml"] {
        let m = yaml(name);
        let selector = if name == "service.yaml" {
            &m["spec"]["selector"]
        } else {
            &m["spec"]["selector"]["matchLabels"]
        };
        for (k, v) in selector.as_object().unwrap() {
            assert_eq!(&labels[k], v, "{name} selects the agent pods");
        }
    }
    let pm = yaml("podmonitor.yaml");
    assert_eq!(pm["kind"], "PodMonitor");
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["port"], port["name"]);
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(args.contains(&"--metrics-addr=0.0.0.0:9750"));
    assert_eq!(port["containerPort"], 9750);
    let mounts: Vec<&str> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["mountPath"].as_str())
        .collect();
    for needed in [
        "/sys/kernel/btf",
        "/sys/kernel/tracing",
        "/sys/fs/cgroup",
        "/run/containerd",
        "/etc/credwatch/policies",
        "/var/log/credwatch",
    ] {
        assert!(mounts.contains(&needed), "{needed} is mounted");
    }
}
