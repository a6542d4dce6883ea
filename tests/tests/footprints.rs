//! Verdicts end to end with real runc containers selected by cgroup: allowed, deviation (other
//! binary, undeclared secret, another container's secret through /proc/<pid>/root), undeclared,
//! a broken policy edit during the run, and a secret rotated the way Kubernetes does it.

use std::{path::Path, time::Duration};

use credwatch_tests::{Agent, agent, dev_ino, runc::Container};
use serde_json::Value;

const FOOTPRINTS: &str = r#"apiVersion: credwatch.dev/v1alpha1
kind: SecretFootprint
metadata: {name: fp-app}
spec:
  selector: {cgroup: "/cw-*-app*"}
  allow:
    - secret: mounted-secrets
      paths: ["/run/secrets/db_password"]
      binaries: ["/bin/busybox"]
---
apiVersion: credwatch.dev/v1alpha1
kind: SecretFootprint
metadata: {name: fp-thief}
spec:
  selector: {cgroup: "/cw-*-thief"}
  allow:
    - secret: mounted-secrets
      paths: ["/run/secrets/db_password"]
      binaries: ["/bin/busybox"]
"#;

fn prepare(work: &Path) -> String {
    std::fs::write(work.join("policies/footprints.yaml"), FOOTPRINTS).unwrap();
    "    - name: e2e-unused\n      paths: [\"/nonexistent-e2e/**\"]\n".to_string()
}

fn setup() -> &'static Agent {
    agent(prepare, "auto")
}

fn id(suffix: &str) -> String {
    format!("cw-{}-{suffix}", std::process::id())
}

/// Records of container `id` whose exe and path are as given.
fn find(agent: &Agent, id: &str, exe: &str, path: &str) -> Value {
    let what = format!("{id} {exe} {path}");
    agent.wait_record(&what, |r| {
        r["container"]["id"] == id && r["process"]["exe"] == exe && r["file"]["path"] == path
    })
}

#[test]
fn verdicts_for_a_selected_container() {
    let agent = setup();
    let id = id("app");
    let script = "cat /run/secrets/db_password; /opt/tool/cat /run/secrets/db_password; cat /run/secrets/api_key; sleep 60";
    let c = Container::new(
        &id,
        &[("db_password", "x"), ("api_key", "y")],
        &["/bin/sh", "-c", script],
    );
    c.start();
    let allowed = find(agent, &id, "/bin/busybox", "/run/secrets/db_password");
    assert_eq!(allowed["verdict"], "allowed", "{allowed:#}");
    assert_eq!(allowed["reason"], "declared in footprint");
    assert_eq!(allowed["policy"]["name"], "fp-app");
    assert_eq!(allowed["policy"]["action"], "alert");
    let other_binary = find(agent, &id, "/opt/tool/cat", "/run/secrets/db_password");
    assert_eq!(other_binary["verdict"], "deviation", "{other_binary:#}");
    assert_eq!(other_binary["reason"], "binary not allowed");
    let undeclared_secret = find(agent, &id, "/bin/busybox", "/run/secrets/api_key");
    assert_eq!(
        undeclared_secret["verdict"], "deviation",
        "{undeclared_secret:#}"
    );
    assert_eq!(undeclared_secret["reason"], "path not in footprint");
    let series = format!(
        "credwatch_deviations_total{{container=\"{id}\",kind=\"file\",namespace=\"\",reason=\"binary not allowed\",secret=\"mounted-secrets\",workload=\"{workload}\"}}",
        // Off Kubernetes: the name without its generated parts (the test pid).
        workload = credwatch::containers::workload::off_kubernetes(Some(&id), None)
    );
    assert_eq!(agent.metric(&series), 1.0, "{}", agent.metrics());
}

#[test]
fn a_container_without_footprint_is_undeclared() {
    let agent = setup();
    let id = id("lonely");
    let c = Container::new(
        &id,
        &[("db_password", "x")],
        &["/bin/cat", "/run/secrets/db_password"],
    );
    c.run_to_completion();
    let record = find(agent, &id, "/bin/busybox", "/run/secrets/db_password");
    assert_eq!(record["verdict"], "undeclared", "{record:#}");
    assert_eq!(record["reason"], "no footprint selects this container");
    assert!(record.get("policy").is_none());
}

/// The thief shares the host's pid namespace and reads the victim's secret through
/// /proc/<victim pid>/root/: the path is the one the victim's footprint... and the thief's own
/// footprint names, but the file is outside the thief's filesystem, so it is a deviation,
/// attributed to the thief.
#[test]
fn reading_another_containers_secret_through_proc_root_is_a_deviation() {
    let agent = setup();
    let victim = Container::new(
        &id("victim"),
        &[("db_password", "victims")],
        &["/bin/sleep", "120"],
    );
    victim.start();
    let target = format!("/proc/{}/root/run/secrets/db_password", victim.init_pid());
    let thief_id = id("thief");
    let thief = Container::with_spec(
        &thief_id,
        &[("db_password", "own")],
        &["/bin/cat", &target],
        |spec| {
            let namespaces = spec["linux"]["namespaces"].as_array_mut().unwrap();
            namespaces.retain(|ns| ns["type"] != "pid");
        },
    );
    thief.run_to_completion();
    let record = agent.wait_record(&target, |r| r["file"]["raw_path"] == target.as_str());
    assert_eq!(
        record["container"]["id"],
        thief_id.as_str(),
        "attributed to the reader: {record:#}"
    );
    assert_eq!(record["verdict"], "deviation", "{record:#}");
    assert_eq!(record["file"]["outside_root"], true);
    assert_eq!(record["file"]["path"], "/run/secrets/db_password");
    assert!(
        record["reason"]
            .as_str()
            .unwrap()
            .contains("outside the process' own filesystem")
    );
}

#[test]
fn a_broken_policy_edit_is_rejected_and_the_old_policy_keeps_running() {
    let agent = setup();
    let failures = r#"credwatch_policy_reloads_total{result="failure"}"#;
    let before = agent.metric(failures);
    let info_before = agent
        .metrics()
        .lines()
        .find(|l| l.starts_with("credwatch_policy_info"))
        .unwrap()
        .to_string();
    let broken = agent.work.join("policies/zz-broken.yaml");
    std::fs::write(&broken, "apiVersion: credwatch.dev/v1alpha1\nkind: SecretFootprint\nmetadata: {name: fp-app}\nspec: {selector: {}}\n").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while agent.metric(failures) <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "the broken edit was not noticed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let stderr = std::fs::read_to_string(&agent.stderr).unwrap();
    assert!(
        stderr.contains("zz-broken.yaml:3:"),
        "rejected with file:line:col messages"
    );
    // The last good set still decides.
    let id = id("app2");
    let c = Container::new(
        &id,
        &[("db_password", "x")],
        &["/bin/cat", "/run/secrets/db_password"],
    );
    c.run_to_completion();
    let record = find(agent, &id, "/bin/busybox", "/run/secrets/db_password");
    assert_eq!(record["verdict"], "allowed", "{record:#}");
    let info_after = agent
        .metrics()
        .lines()
        .find(|l| l.starts_with("credwatch_policy_info"))
        .unwrap()
        .to_string();
    assert_eq!(
        info_before, info_after,
        "policy_info still names the old set"
    );
    std::fs::remove_file(&broken).unwrap();
}

/// Kubernetes updates a secret volume by writing a new timestamped directory and swapping the
/// `..data` symlink; the secret is still detected afterwards, under its new inode.
#[test]
fn a_secret_rotated_the_kubernetes_way_is_still_detected() {
    let agent = setup();
    let id = id("rot");
    let c = Container::new(
        &id,
        &[],
        &[
            "/bin/sh",
            "-c",
            "while true; do cat /run/secrets/token > /dev/null; sleep 0.3; done",
        ],
    );
    let dir = &c.secrets;
    let write_version = |version: &str| {
        let versioned = dir.join(format!("..{version}"));
        std::fs::create_dir_all(&versioned).unwrap();
        std::fs::write(versioned.join("token"), format!("token-{version}")).unwrap();
        let tmp = dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
        std::fs::rename(&tmp, dir.join("..data")).unwrap();
    };
    write_version("2026_01_01_v1");
    std::os::unix::fs::symlink("..data/token", dir.join("token")).unwrap();
    c.start();
    let (_, first_ino) = dev_ino(&dir.join("token"));
    agent.wait_record("first token", |r| {
        r["container"]["id"] == id.as_str() && r["file"]["ino"] == first_ino
    });
    write_version("2026_01_02_v2");
    std::fs::remove_dir_all(dir.join("..2026_01_01_v1")).unwrap();
    let (_, second_ino) = dev_ino(&dir.join("token"));
    assert_ne!(first_ino, second_ino);
    let record = agent.wait_record("rotated token", |r| {
        r["container"]["id"] == id.as_str() && r["file"]["ino"] == second_ino
    });
    // Known by the name users see, not the atomic writer's versioned directory.
    assert_eq!(record["file"]["path"], "/run/secrets/token", "{record:#}");
    assert_eq!(record["secret"]["name"], "mounted-secrets");
}

/// The agent looks into each container's filesystem for its secrets: a hardlink to the secret
/// elsewhere in the container is caught by inode and named as the secret.
#[test]
fn a_hardlink_inside_a_container_names_the_secret() {
    let agent = setup();
    let id = id("links");
    // The agent looks into a container when it starts (and every 10 s): read until it has.
    let script = "i=0; while [ $i -lt 60 ]; do cat /data/innocent.txt > /dev/null; sleep 0.2; i=$((i+1)); done";
    let c = Container::new(&id, &[("db_password", "x")], &["/bin/sh", "-c", script]);
    // Same filesystem as the secrets directory, outside every catalogue path.
    let data = c.bundle.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::hard_link(c.secrets.join("db_password"), data.join("innocent.txt")).unwrap();
    add_bind_mount(&c, &data, "/data");
    c.start();
    let record = agent.wait_record("hardlink", |r| {
        r["container"]["id"] == id.as_str() && r["file"]["raw_path"] == "/data/innocent.txt"
    });
    assert_eq!(
        record["file"]["path"], "/run/secrets/db_password",
        "{record:#}"
    );
    assert_eq!(record["file"]["opened_path"], "/data/innocent.txt");
    assert_eq!(record["secret"]["name"], "mounted-secrets");
}

fn add_bind_mount(c: &Container, source: &Path, destination: &str) {
    let spec_path = c.bundle.join("config.json");
    let mut spec: Value = serde_json::from_slice(&std::fs::read(&spec_path).unwrap()).unwrap();
    spec["mounts"].as_array_mut().unwrap().push(serde_json::json!({
        "destination": destination, "type": "bind", "source": source, "options": ["rbind", "ro"],
    }));
    std::fs::write(&spec_path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
}
