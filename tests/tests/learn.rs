//! `credwatch learn` end to end: real containers read secrets under a real agent, its forensic
//! log is learned into footprints, and those footprints are checked, replayed, installed and
//! used as a drift gate.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use credwatch_tests::{
    Agent, agent,
    containerd::{Pod, PodSpec},
    runc::Container,
};

fn prepare(_work: &Path) -> String {
    "    - name: e2e-unused\n      paths: [\"/nonexistent-e2e/**\"]\n".to_string()
}

fn setup() -> &'static Agent {
    agent(prepare, "auto")
}

fn credwatch(args: &[&str]) -> Output {
    let bin = std::env::var("CREDWATCH_BIN").expect("CREDWATCH_BIN");
    Command::new(bin).args(args).output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A directory holding only the default catalogue.
fn catalog_dir(work: &Path, name: &str) -> PathBuf {
    let dir = work.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    std::fs::copy(repo.join("policies/catalog.yaml"), dir.join("catalog.yaml")).unwrap();
    dir
}

/// Lays `dir` out the way Kubernetes' atomic writer does: the file in a timestamped
/// directory, `..data` pointing at it, and the visible name a symlink through `..data`.
fn atomic_write(dir: &Path, name: &str, contents: &str, stamp: &str) {
    let versioned = dir.join(format!("..{stamp}"));
    std::fs::create_dir_all(&versioned).unwrap();
    std::fs::write(versioned.join(name), contents).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..{stamp}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    let visible = dir.join(name);
    if std::fs::symlink_metadata(&visible).is_err() {
        std::os::unix::fs::symlink(format!("..data/{name}"), &visible).unwrap();
    }
}

fn runc_exec(id: &str, args: &[&str]) {
    let status = Command::new("runc")
        .args(["exec", id])
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "runc exec {args:?}");
}

fn snapshot_log(agent: &Agent, name: &str) -> PathBuf {
    let copy = agent.work.join(name);
    std::fs::copy(&agent.log, &copy).unwrap();
    copy
}

#[test]
fn a_runc_workload_is_learned_checked_replayed_and_gated() {
    let agent = setup();
    let id = format!("cw-{}-learn", std::process::id());
    let catalog = catalog_dir(&agent.work, "learn-catalog");
    let out1 = agent.work.join("learned-1");
    let out2 = agent.work.join("learned-2");

    // Run 1: the workload reads its token; an operator execs in and reads another secret.
    let run1 = Container::new(
        &id,
        &[("other", "x")],
        &["/bin/sh", "-c", "cat /run/secrets/token; sleep 60"],
    );
    atomic_write(
        &run1.secrets,
        "token",
        "v1",
        "2026_11_30_10_00_00.000000001",
    );
    run1.start();
    agent.wait_record("the workload's token read", |r| {
        r["container"]["id"] == id.as_str() && r["process"]["container_entry"] == "init"
    });
    runc_exec(&id, &["cat", "/run/secrets/other"]);
    let execd = agent.wait_record("the exec'd read", |r| {
        r["container"]["id"] == id.as_str() && r["file"]["path"] == "/run/secrets/other"
    });
    assert_eq!(execd["process"]["container_entry"], "exec", "{execd:#}");
    run1.stop();
    let log1 = snapshot_log(agent, "run1.jsonl");

    // Learn: one footprint, the token (canonical path, the binary), not the exec'd read.
    let learn = |out: &Path| {
        credwatch(&[
            "learn",
            "--policies",
            catalog.to_str().unwrap(),
            "--from",
            log1.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let result = learn(&out1);
    let report = text(&result);
    assert!(result.status.success(), "{report}");
    let file = out1.join(format!("container-{id}.yaml"));
    let yaml = std::fs::read_to_string(&file).unwrap_or_else(|_| panic!("{report}"));
    assert!(yaml.contains(&format!("container: {id}")), "{yaml}");
    assert!(
        yaml.contains("- /run/secrets/token\n"),
        "canonical path:\n{yaml}"
    );
    assert!(yaml.contains("- /bin/busybox\n"), "{yaml}");
    assert!(yaml.contains("action: log"), "{yaml}");
    assert!(
        !yaml.contains("/run/secrets/other"),
        "the exec'd access is not learned:\n{yaml}"
    );
    assert!(
        report.contains("quarantined") && report.contains("/run/secrets/other"),
        "{report}"
    );
    // Deterministic: learned again from the same evidence, byte for byte.
    assert!(learn(&out2).status.success());
    let again = std::fs::read_to_string(out2.join(format!("container-{id}.yaml"))).unwrap();
    assert_eq!(yaml, again, "byte-identical when learned twice");

    // Accepted by `check`; replaying the evidence against it: the workload's read is allowed.
    let combined = catalog_dir(&agent.work, "learn-combined");
    std::fs::copy(&file, combined.join(file.file_name().unwrap())).unwrap();
    let check = credwatch(&["check", "--policies", combined.to_str().unwrap()]);
    assert!(check.status.success(), "{}", text(&check));
    let replay = credwatch(&[
        "replay",
        "--policies",
        combined.to_str().unwrap(),
        log1.to_str().unwrap(),
    ]);
    let replayed: Vec<serde_json::Value> = String::from_utf8_lossy(&replay.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &serde_json::Value| r["container"]["id"] == id.as_str())
        .collect();
    let token_reads: Vec<_> = replayed
        .iter()
        .filter(|r| r["process"]["container_entry"] == "init")
        .collect();
    assert!(!token_reads.is_empty());
    assert!(
        token_reads.iter().all(|r| r["verdict"] == "allowed"),
        "{replayed:#?}"
    );

    // Installed in the running agent. Run 2 after a rotation: the token stays allowed, a
    // secret the workload never read before is a deviation.
    let reloads = r#"credwatch_policy_reloads_total{result="success"}"#;
    let before = agent.metric(reloads);
    std::fs::copy(
        &file,
        agent.work.join("policies").join(file.file_name().unwrap()),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while agent.metric(reloads) <= before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        agent.metric(reloads) > before,
        "the agent reloaded the learned footprint"
    );
    let run2 = Container::new(
        &id,
        &[("new", "x")],
        &[
            "/bin/sh",
            "-c",
            "cat /run/secrets/token; cat /run/secrets/new; exit 0",
        ],
    );
    atomic_write(
        &run2.secrets,
        "token",
        "v1",
        "2026_11_30_10_00_00.000000001",
    );
    atomic_write(
        &run2.secrets,
        "token",
        "v2",
        "2026_11_30_11_00_00.000000002",
    );
    run2.run_to_completion();
    // The agent names a known secret inode by the name it found it under; an inode it has not
    // seen yet by the kernel's path through the timestamped directory (canonical to the
    // matcher either way).
    let rotated = agent.wait_record("the rotated token", |r| {
        r["container"]["id"] == id.as_str()
            && r["process"]["args"][1]
                .as_str()
                .is_some_and(|p| p.ends_with("/token"))
            && r["process"]["ancestors"][0]["args"][2]
                .as_str()
                .is_some_and(|a| a.contains("/run/secrets/new"))
    });
    assert_eq!(rotated["verdict"], "allowed", "{rotated:#}");
    let new = agent.wait_record("the new secret", |r| {
        r["container"]["id"] == id.as_str() && r["file"]["path"] == "/run/secrets/new"
    });
    assert_eq!(new["verdict"], "deviation", "{new:#}");
    assert_eq!(new["reason"], "path not in footprint");
    let log2 = snapshot_log(agent, "run2.jsonl");

    // The drift gate: exit 1, naming what is missing.
    let gate = credwatch(&[
        "learn",
        "--check",
        "--policies",
        catalog.to_str().unwrap(),
        "--merge",
        out1.to_str().unwrap(),
        "--from",
        log2.to_str().unwrap(),
    ]);
    let gate_text = text(&gate);
    assert_eq!(gate.status.code(), Some(1), "{gate_text}");
    assert!(
        gate_text.contains("missing") && gate_text.contains("/run/secrets/new"),
        "{gate_text}"
    );
    assert!(
        !gate_text.contains("/run/secrets/token ("),
        "the rotated token is covered:\n{gate_text}"
    );

    // --merge: a hand-written footprint stays as written; the learned access is added; its
    // unused entry is a removal candidate.
    let hand = agent.work.join("hand");
    std::fs::create_dir_all(&hand).unwrap();
    std::fs::write(
        hand.join("hand.yaml"),
        format!("apiVersion: credwatch.dev/v1alpha1\nkind: SecretFootprint\nmetadata: {{name: hand-{id}}}\nspec:\n  selector: {{container: {id}}}\n  allow:\n    - secret: aws-shared-credentials\n  action: alert\n"),
    )
    .unwrap();
    let merged_dir = agent.work.join("merged");
    let merge = credwatch(&[
        "learn",
        "--policies",
        catalog.to_str().unwrap(),
        "--merge",
        hand.to_str().unwrap(),
        "--from",
        log1.to_str().unwrap(),
        "--out",
        merged_dir.to_str().unwrap(),
    ]);
    let merge_text = text(&merge);
    assert!(merge.status.success(), "{merge_text}");
    let merged = std::fs::read_to_string(merged_dir.join(format!("hand-{id}.yaml"))).unwrap();
    assert!(
        merged.contains("secret: aws-shared-credentials"),
        "{merged}"
    );
    assert!(merged.contains("action: alert"), "{merged}");
    assert!(merged.contains("- /run/secrets/token\n"), "{merged}");
    assert!(merge_text.contains("removal candidate"), "{merge_text}");
}

/// Two replicas of one workload (a rollout between two ReplicaSets) through the CRI: one
/// footprint, the union of what both read, selected by the identity labels only.
#[test]
fn two_cri_replicas_make_one_footprint() {
    let agent = setup();
    let tag = std::process::id();
    let mut pods = Vec::new();
    for (name, hash, file) in [
        ("learn-api-7d4b9c6f5-aaaaa", "7d4b9c6f5", "token"),
        ("learn-api-5f6d7c8b9-bbbbb", "5f6d7c8b9", "namespace"),
    ] {
        let token_dir = agent.work.join(format!("learn-{name}"));
        std::fs::create_dir_all(&token_dir).unwrap();
        std::fs::write(token_dir.join(file), "x").unwrap();
        let command =
            format!("cat /var/run/secrets/kubernetes.io/serviceaccount/{file}; sleep 120");
        let namespace = format!("learn-{tag}");
        pods.push(Pod::run(PodSpec {
            name,
            namespace: &namespace,
            labels: &[
                ("app", "learn-api"),
                ("tier", "backend"),
                ("pod-template-hash", hash),
            ],
            container: "api",
            token_dir: &token_dir,
            command: &["/bin/sh", "-c", &command],
        }));
    }
    for pod in &pods {
        let record = agent.wait_record("a replica's read", |r| {
            r["container"]["id"] == pod.container_id.as_str()
        });
        assert_eq!(record["process"]["container_entry"], "init", "{record:#}");
        assert!(record["container"]["started"].is_string(), "{record:#}");
    }
    let log = snapshot_log(agent, "replicas.jsonl");
    let catalog = catalog_dir(&agent.work, "replica-catalog");
    let out = agent.work.join("replica-footprints");
    let result = credwatch(&[
        "learn",
        "--policies",
        catalog.to_str().unwrap(),
        "--from",
        log.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(result.status.success(), "{}", text(&result));
    let file = out.join(format!("learn-{tag}-learn-api-api.yaml"));
    let yaml = std::fs::read_to_string(&file).unwrap_or_else(|_| panic!("{}", text(&result)));
    assert!(yaml.contains(&format!("namespace: learn-{tag}")), "{yaml}");
    assert!(
        yaml.contains("app: learn-api") && yaml.contains("tier: backend"),
        "{yaml}"
    );
    assert!(
        !yaml.contains("pod-template-hash"),
        "volatile labels are not selector keys:\n{yaml}"
    );
    assert!(
        yaml.contains("serviceaccount/token") && yaml.contains("serviceaccount/namespace"),
        "union:\n{yaml}"
    );
    assert!(yaml.contains("container: api"), "{yaml}");
    // (Other tests' containers share this agent's log and get footprints of their own.)
    let of_this_workload = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("learn-api"))
        .count();
    assert_eq!(of_this_workload, 1, "one footprint for both replicas");
}

/// `--live`: learn runs the probes itself for the duration (a second agent beside the suite's)
/// and writes the footprint of a container that read a secret meanwhile.
#[test]
fn live_learning_watches_for_the_duration() {
    let agent = setup();
    let id = format!("cw-{}-live", std::process::id());
    let catalog = catalog_dir(&agent.work, "live-catalog");
    let out = agent.work.join("live-footprints");
    let bin = std::env::var("CREDWATCH_BIN").expect("CREDWATCH_BIN");
    let learner = Command::new(bin)
        .args(["learn", "--live", "--duration", "20s", "--policies"])
        .arg(&catalog)
        .arg("--out")
        .arg(&out)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the learner's probes: its "ready" line on stderr comes once they are attached
    // (its log file exists earlier, so waiting for the file raced with the container start).
    let mut learner = learner;
    let stderr = learner.stderr.take().unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            if line.contains("credwatch: ready") {
                let _ = ready_tx.send(());
            }
            lines.push(line);
        }
        lines.join("\n")
    });
    assert!(
        ready_rx.recv_timeout(Duration::from_secs(60)).is_ok(),
        "the live learner did not get ready"
    );
    let container = Container::new(&id, &[("live", "x")], &["/bin/cat", "/run/secrets/live"]);
    container.run_to_completion();
    let result = learner.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&result.stdout),
        reader.join().unwrap()
    );
    assert!(result.status.success(), "{report}");
    let yaml = std::fs::read_to_string(out.join(format!("container-{id}.yaml")))
        .unwrap_or_else(|_| panic!("{report}"));
    assert!(yaml.contains("- /run/secrets/live\n"), "{yaml}");
    assert!(
        yaml.contains("learned-coverage: complete"),
        "the container started after the probes attached:\n{yaml}"
    );
}
