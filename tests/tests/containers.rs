//! Container attribution with real runc containers: every record names its container and the
//! process tree inside it, from the first event of a new container, and the agent's tables and
//! memory stay bounded while hundreds of containers come and go.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use credwatch_tests::{Agent, agent, runc::Container};
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
        "credwatch_credential_access_total{{container=\"{id}\",kind=\"file\",namespace=\"\",secret=\"mounted-secrets\",verdict=\"undeclared\",workload=\"{id}\"}}"
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
    let live = std::fs::read_dir("/proc")
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        })
        .count() as f64;
    assert!(
        processes_after <= live + 50.0,
        "process table ({processes_after}) tracks the {live} live processes"
    );
    assert!(
        rss_after < rss_before + 16 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
}

fn credwatch_grace() -> Duration {
    Duration::from_secs(30)
}
