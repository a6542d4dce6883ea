//! Container attribution with real runc containers: every record names its container and the
//! process tree inside it, from the first event of a new container, and the agent's tables and
//! memory stay bounded while hundreds of containers come and go.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use credwatch_tests::{
    Agent, agent,
    containerd::{self, BUSYBOX_IMAGE, Pod, PodSpec},
    runc::Container,
};
use serde_json::Value;

fn prepare(_work: &Path) -> String {
    // The default catalogue's `/run/secrets/**` is what the containers read.
    "    - name: e2e-unused\n      paths: [\"/nonexistent-e2e/**\"]\n".to_string()
}

fn setup() -> &'static Agent {
    agent(prepare, "auto")
}

fn record_of_container(agent: &Agent, id: &str) -> Value {
    agent.wait_record(id, |r| r["container"]["id"] == id)
}

#[test]
fn runc_container_reads_are_attributed_to_the_container_and_its_shell() {
    let agent = setup();
    let id = format!("cw-{}-attr", std::process::id());
    let container = Container::new(
        &id,
        &[("token", "not-a-real-token")],
        &["/bin/sh", "-c", "cat /run/secrets/token; sleep 60"],
    );
    container.start();
    let record = record_of_container(agent, &id);
    assert_eq!(record["container"]["runtime"], "runc", "{record:#}");
    assert_eq!(record["container"]["name"], id.as_str());
    assert_eq!(record["container"]["cgroup"], format!("/{id}"));
    assert_eq!(
        record["file"]["path"], "/run/secrets/token",
        "the path as the container sees it"
    );
    assert_eq!(record["secret"]["name"], "mounted-secrets");
    assert_eq!(record["process"]["exe"], "/bin/busybox", "{record:#}");
    assert_eq!(
        record["process"]["args"],
        serde_json::json!(["cat", "/run/secrets/token"])
    );
    let shell = &record["process"]["ancestors"][0];
    assert_eq!(shell["exe"], "/bin/busybox", "{record:#}");
    assert_eq!(shell["args"][0], "/bin/sh");
    assert_eq!(
        shell["pid"],
        container.init_pid(),
        "the shell is the container's init"
    );
    assert!(record.get("pod").is_none(), "no pod off Kubernetes");
    let series = format!(
        "credwatch_credential_access_total{{container=\"{id}\",kind=\"file\",namespace=\"\",secret=\"mounted-secrets\",verdict=\"undeclared\",workload=\"{workload}\"}}",
        // Off Kubernetes: the name without its generated parts (the test pid).
        workload = credwatch::containers::workload::off_kubernetes(Some(&id), None)
    );
    assert!(agent.metric(&series) >= 1.0, "{}", agent.metrics());
}

/// 200 containers start, read a secret and go away. Each read is attributed to its own
/// container, and afterwards the agent's container and process tables and its memory are back
/// near where they started.
#[test]
fn container_churn_is_attributed_and_bounded() {
    const CONTAINERS: usize = 200;
    let agent = setup();
    // Warm up (rootfs, first container) before taking the baseline.
    let warm = Container::new(
        &format!("cw-{}-warm", std::process::id()),
        &[("token", "x")],
        &["/bin/cat", "/run/secrets/token"],
    );
    warm.run_to_completion();
    record_of_container(agent, &warm.id);
    std::thread::sleep(Duration::from_secs(6));
    let containers_before = agent.metric("credwatch_containers");
    let rss_before = agent.rss_kib();

    let started = Instant::now();
    let ids: Vec<String> = (0..CONTAINERS)
        .map(|i| format!("cw-{}-churn-{i}", std::process::id()))
        .collect();
    for id in &ids {
        let c = Container::new(id, &[("token", "x")], &["/bin/cat", "/run/secrets/token"]);
        c.run_to_completion();
    }
    eprintln!("{CONTAINERS} containers in {:?}", started.elapsed());
    let attributed = |records: &[Value]| {
        ids.iter()
            .filter(|id| {
                records.iter().any(|r| {
                    r["container"]["id"] == id.as_str() && r["process"]["args"][0] == "/bin/cat"
                })
            })
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while attributed(&agent.records()) < CONTAINERS && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        attributed(&agent.records()),
        CONTAINERS,
        "every container's read names that container"
    );

    // Exited processes are kept for 30 s, removed containers until the next sweep (5 s).
    std::thread::sleep(credwatch_grace() + Duration::from_secs(8));
    let containers_after = agent.metric("credwatch_containers");
    let processes_after = agent.metric("credwatch_processes");
    let rss_after = agent.rss_kib();
    eprintln!(
        "containers {containers_before} -> {containers_after}, processes now {processes_after}, rss {rss_before} KiB -> {rss_after} KiB"
    );
    assert!(
        containers_after <= containers_before,
        "container table shrank back"
    );
    // Other tests of this binary start and stop processes meanwhile (containerd, its shims,
    // pods), whose exits are still within the grace period: wait until the table has settled
    // (a leak never does), rather than judge one moment.
    let live = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
            })
            .count() as f64
    };
    let settle = Instant::now() + credwatch_grace() + Duration::from_secs(30);
    let mut processes_after = processes_after;
    while processes_after > live() + 50.0 && Instant::now() < settle {
        std::thread::sleep(Duration::from_secs(1));
        processes_after = agent.metric("credwatch_processes");
    }
    let live = live();
    eprintln!("process table {processes_after}, live {live}");
    assert!(
        processes_after <= live + 50.0,
        "process table ({processes_after}) tracks the {live} live processes"
    );
    assert!(
        rss_after < rss_before + 16 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
}

#[test]
fn containerd_ctr_containers_are_attributed_with_their_image() {
    let agent = setup();
    let id = format!("cw-{}-ctr", std::process::id());
    let secrets = agent.work.join(format!("{id}-secrets"));
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("token"), "not-a-real-token").unwrap();
    // `; exit 0` keeps the shell: busybox would exec a lone command in place of itself.
    containerd::ctr_run(
        &id,
        &secrets,
        &["/bin/sh", "-c", "cat /run/secrets/token; exit 0"],
    );
    let record = record_of_container(agent, &id);
    let container = &record["container"];
    assert_eq!(container["runtime"], "containerd", "{record:#}");
    assert_eq!(container["image"], BUSYBOX_IMAGE, "{record:#}");
    assert_eq!(container["cgroup"], format!("/default/{id}"));
    assert_eq!(record["file"]["path"], "/run/secrets/token");
    assert_eq!(
        record["process"]["args"],
        serde_json::json!(["cat", "/run/secrets/token"])
    );
    assert_eq!(
        record["process"]["ancestors"][0]["args"][0], "/bin/sh",
        "{record:#}"
    );
}

/// A pod created through containerd's CRI plugin the way the kubelet does (host network,
/// kubepods cgroup parent, service-account token mounted): the record names the pod, its
/// namespace, uid, labels and owning workload, and the metrics carry them as labels.
#[test]
fn cri_pods_are_attributed_with_pod_labels_and_workload() {
    let agent = setup();
    let token_dir = agent.work.join("pod-token");
    std::fs::create_dir_all(&token_dir).unwrap();
    std::fs::write(token_dir.join("token"), "not-a-real-token").unwrap();
    let pod = Pod::run(PodSpec {
        name: "payments-api-7d4b9c6f5-x2x9z",
        namespace: "payments",
        labels: &[("app", "payments-api"), ("pod-template-hash", "7d4b9c6f5")],
        container: "api",
        token_dir: &token_dir,
        command: &[
            "/bin/sh",
            "-c",
            "cat /var/run/secrets/kubernetes.io/serviceaccount/token; sleep 120",
        ],
    });
    let record = record_of_container(agent, &pod.container_id);
    assert_eq!(record["container"]["name"], "api", "{record:#}");
    assert_eq!(record["container"]["runtime"], "containerd");
    assert_eq!(record["container"]["image"], BUSYBOX_IMAGE);
    assert!(
        record["container"]["cgroup"]
            .as_str()
            .unwrap()
            .contains(&format!("/kubepods/besteffort/pod{}/", pod.uid))
    );
    let p = &record["pod"];
    assert_eq!(p["name"], "payments-api-7d4b9c6f5-x2x9z", "{record:#}");
    assert_eq!(p["namespace"], "payments");
    assert_eq!(p["uid"], pod.uid.as_str());
    assert_eq!(p["labels"]["app"], "payments-api", "{record:#}");
    assert_eq!(p["workload"], "payments-api");
    assert_eq!(record["secret"]["name"], "k8s-serviceaccount-token");
    assert_eq!(
        record["process"]["ancestors"][0]["args"][0], "/bin/sh",
        "{record:#}"
    );
    let series = "credwatch_credential_access_total{container=\"api\",kind=\"file\",namespace=\"payments\",secret=\"k8s-serviceaccount-token\",verdict=\"undeclared\",workload=\"payments-api\"}";
    assert!(agent.metric(series) >= 1.0, "{}", agent.metrics());
}

fn credwatch_grace() -> Duration {
    Duration::from_secs(30)
}
