//! The CLI contract without eBPF: `check` exit codes and messages, `replay` re-judging.

use std::{path::Path, process::Command};

const BIN: &str = env!("CARGO_BIN_EXE_credwatch");

fn policies_with(extra: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/catalog.yaml");
    std::fs::copy(shipped, dir.path().join("catalog.yaml")).unwrap();
    for (name, text) in extra {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

#[test]
fn check_accepts_the_shipped_policies_and_examples() {
    for dir in ["../policies", "../policies/examples"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        let target = if dir.ends_with("examples") {
            let d = policies_with(&[]);
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                std::fs::copy(&p, d.path().join(p.file_name().unwrap())).unwrap();
            }
            d.keep()
        } else {
            dir
        };
        let out = Command::new(BIN)
            .args(["check", "--policies"])
            .arg(&target)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(": ok: "), "{stdout}");
    }
}

#[test]
fn check_reports_every_problem_and_exits_2() {
    let dir = policies_with(&[(
        "bad.yaml",
        "apiVersion: credwatch.dev/v1alpha1\nkind: SecretFootprint\nmetadata: {name: x}\nspec:\n  selector: {}\n  allow:\n    - secret: nope\n",
    )]);
    let out = Command::new(BIN)
        .args(["check", "--policies"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let bad = dir.path().join("bad.yaml").display().to_string();
    assert!(
        stdout.contains(&format!("{bad}:5:3: selector has no key")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{bad}:7:7: allow names \"nope\"")),
        "{stdout}"
    );
}

fn replay(policies: &Path, log: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(["replay", "--policies"])
        .arg(policies)
        .arg(log)
        .output()
        .unwrap()
}

#[test]
fn replay_rejudges_recorded_accesses() {
    let footprint = "apiVersion: credwatch.dev/v1alpha1\nkind: SecretFootprint\nmetadata: {name: web}\nspec:\n  selector: {container: web}\n  allow:\n    - secret: mounted-secrets\n      binaries: [\"/usr/bin/*\"]\n";
    let dir = policies_with(&[("web.yaml", footprint)]);
    let record = |container: &str, exe: &str| {
        serde_json::json!({
            "schema": 1, "ts": "2026-11-23T12:00:00Z", "event_id": "e", "node": "n",
            "verdict": "undeclared", "reason": "no footprint selects this container", "kind": "file",
            "secret": {"name": "mounted-secrets", "catalog_entry": "default/mounted-secrets"},
            "file": {"path": "/run/secrets/db", "flags": ["O_RDONLY"], "result": 3, "syscall": "openat"},
            "process": {"pid": 1, "tid": 1, "uid": 0, "gid": 0, "comm": "x", "exe": exe, "ancestors": []},
            "container": {"id": "c1", "name": container, "runtime": "runc", "cgroup": "/c1"},
        })
        .to_string()
    };
    let log = dir.path().join("records.jsonl");
    let lines = [
        record("web", "/usr/bin/cat"),
        record("web", "/tmp/x"),
        record("db", "/usr/bin/cat"),
    ];
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let out = replay(dir.path(), &log);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let judged: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let verdicts: Vec<(&str, &str)> = judged
        .iter()
        .map(|r| {
            (
                r["verdict"].as_str().unwrap(),
                r["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        verdicts,
        [
            ("allowed", "declared in footprint"),
            ("deviation", "binary not allowed"),
            ("undeclared", "no footprint selects this container")
        ]
    );
    assert_eq!(judged[0]["policy"]["name"], "web");
    assert!(judged[2].get("policy").is_none());

    // Host processes: a `host: true` footprint narrowed by cgroup is judged on the recorded
    // cgroup, as the agent judged it.
    let sshd = "apiVersion: credwatch.dev/v1alpha1\nkind: SecretFootprint\nmetadata: {name: sshd}\nspec:\n  selector: {host: true, cgroup: \"/system.slice/ssh.service\"}\n  allow:\n    - secret: ssh-private-keys\n      binaries: [/usr/sbin/sshd]\n";
    let dir = policies_with(&[("sshd.yaml", sshd)]);
    let host_record = |cgroup: &str| {
        serde_json::json!({
            "schema": 1, "ts": "2026-11-23T12:00:00Z", "event_id": "e", "node": "n",
            "verdict": "allowed", "reason": "declared in footprint", "kind": "file",
            "secret": {"name": "ssh-private-keys", "catalog_entry": "default/ssh-private-keys"},
            "file": {"path": "/etc/ssh/ssh_host_ed25519_key", "result": 3, "syscall": "openat"},
            "process": {"pid": 1, "tid": 1, "uid": 0, "gid": 0, "comm": "sshd",
                        "exe": "/usr/sbin/sshd", "ancestors": [], "cgroup": cgroup},
        })
        .to_string()
    };
    let log = dir.path().join("host.jsonl");
    let lines = [
        host_record("/system.slice/ssh.service"),
        host_record("/user.slice/session-1.scope"),
    ];
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let out = replay(dir.path(), &log);
    let judged: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        judged.len(),
        1,
        "the other cgroup is not selected: {judged:?}"
    );
    assert_eq!(judged[0]["verdict"], "allowed");
    assert_eq!(judged[0]["policy"]["name"], "sshd");

    let log = dir.path().join("records.jsonl");
    std::fs::write(&log, "not json\n").unwrap();
    let out = replay(dir.path(), &log);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("records.jsonl:1: not a JSON record"));
}
