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

/// The DaemonSet's capabilities are enough: the agent, started as root with exactly that
/// capability set (as its bounding set, and with no_new_privs as `allowPrivilegeEscalation:
/// false` gives), attaches every probe.
#[test]
fn the_daemonset_capabilities_attach_every_probe() {
    ensure_kubernetes_validate();
    let ds = yaml("daemonset.yaml");
    let container = &ds["spec"]["template"]["spec"]["containers"][0];
    let caps: Vec<String> = container["securityContext"]["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_ascii_lowercase())
        .collect();
    let bounding = std::iter::once("-all".to_string())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    let bin = std::env::var("CREDWATCH_BIN").expect("CREDWATCH_BIN: use `cargo xtask test`");
    let work = std::env::temp_dir().join(format!("credwatch-caps-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let stderr = work.join("agent.stderr");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut agent = Command::new("setpriv")
        .arg("--no-new-privs")
        .arg(format!("--bounding-set={bounding}"))
        .arg("--")
        .arg(&bin)
        .args(["run", "--policies"])
        .arg(repo.join("policies"))
        .arg("--log")
        .arg(work.join("forensic.jsonl"))
        .args(["--metrics-addr", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let text = loop {
        let text = std::fs::read_to_string(&stderr).unwrap_or_default();
        if text.contains("credwatch: ready") {
            break text;
        }
        if let Ok(Some(status)) = agent.try_wait() {
            panic!("the agent exited ({status}):\n{text}");
        }
        assert!(std::time::Instant::now() < deadline, "not ready:\n{text}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    // The agent really ran with only those capabilities.
    let effective = capabilities(&format!("/proc/{}/status", agent.id()), "CapEff:");
    let _ = agent.kill();
    let _ = agent.wait();
    let _ = std::fs::remove_dir_all(&work);
    // What the manifest asks for, as far as this machine grants it at all (some sandboxes
    // withhold SYS_RESOURCE, which only kernels older than 5.11 need).
    let ours = capabilities("/proc/self/status", "CapBnd:");
    let asked = caps
        .iter()
        .fold(0u64, |mask, c| mask | 1 << capability_number(c));
    assert_eq!(effective, asked & ours, "CapEff {effective:#x}");
    assert!(!text.contains("probe unavailable"), "{text}");
    assert!(text.contains("credwatch: probes attached:"), "{text}");
}

/// A capability mask line (`CapEff:`, `CapBnd:`) of a /proc status file.
fn capabilities(status: &str, line: &str) -> u64 {
    std::fs::read_to_string(status)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(line))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap()
}

/// Capability numbers (linux/capability.h) of the ones a manifest may name.
fn capability_number(name: &str) -> u32 {
    match name {
        "dac_read_search" => 2,
        "net_admin" => 12,
        "sys_ptrace" => 19,
        "sys_admin" => 21,
        "sys_resource" => 24,
        "perfmon" => 38,
        "bpf" => 39,
        other => panic!("capability {other}: add its number here"),
    }
}
