//! Images on the node: `credwatch audit-image containerd://…` reads an image imported with
//! `ctr` through containerd's content API, and the agent audits a new container's image by
//! itself and marks the container's read of the credential baked into it (`image_finding`).

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use credwatch_tests::{Agent, agent, containerd};
use serde_json::Value;

const LEAKY_IMAGE: &str = "docker.io/library/credwatch-leaky:e2e";
const BAKED: &str = "/root/.aws/credentials";
const BAKED_CONTENTS: &str = "[default]\naws_access_key_id = AKIAQYLPMN5HHHFPZAM2\naws_secret_access_key = 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\n";

fn prepare(_work: &Path) -> String {
    "    - name: e2e-unused\n      paths: [\"/nonexistent-e2e/**\"]\n".to_string()
}

fn setup() -> &'static Agent {
    // Once per binary: the two tests would race on the import's work directory.
    static IMPORTED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    IMPORTED.get_or_init(|| {
        containerd::ensure_containerd();
        containerd::ensure_images();
        containerd::import_image_with(
            "default",
            LEAKY_IMAGE,
            &["/bin/sh"],
            &[(BAKED, BAKED_CONTENTS)],
        );
    });
    agent(prepare, "auto")
}

fn audit(image: &str) -> (Option<i32>, Value, String) {
    let out = Command::new(std::env::var("CREDWATCH_BIN").unwrap())
        .args(["audit-image", "--format", "json", "--policies"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies"))
        .arg(image)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("T8pRo7kq1Yy3nmGv2cJ0aXb9LwQeZ4sHdU6fK5tN"),
        "value in clear: {text}"
    );
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {text}"));
    (out.status.code(), report, text)
}

#[test]
fn an_image_in_containerd_is_audited_through_its_content_api() {
    let _ = setup();
    for reference in [
        format!("containerd://default/{LEAKY_IMAGE}"),
        format!("containerd://{LEAKY_IMAGE}"),
    ] {
        let (code, report, text) = audit(&reference);
        assert_eq!(code, Some(1), "{text}");
        let finding = report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == BAKED)
            .unwrap_or_else(|| panic!("no finding at {BAKED}: {text}"));
        assert_eq!(finding["status"], "present");
        assert_eq!(finding["layer"], 1);
        assert_eq!(finding["rule"], "aws-shared-credentials");
        assert_eq!(finding["image"], LEAKY_IMAGE);
        assert!(
            finding["manifest_digest"]
                .as_str()
                .unwrap()
                .starts_with("sha256:")
        );
    }
    let (code, report, text) = audit(&format!("containerd://default/{LEAKY_IMAGE}-missing"));
    assert_eq!(code, Some(3), "{text}");
    assert!(
        report["incomplete"][0]
            .as_str()
            .unwrap()
            .contains("no image"),
        "{text}"
    );
}

#[test]
fn a_container_reading_a_credential_baked_into_its_image_is_marked() {
    let agent = setup();
    let id = format!("cw-{}-baked", std::process::id());
    // Reads its baked credential every half second until killed: the first reads may come
    // before the agent's audit of the image has finished.
    let mut child = Command::new("ctr")
        .args([
            "-n",
            "default",
            "run",
            "--rm",
            LEAKY_IMAGE,
            &id,
            "/bin/sh",
            "-c",
        ])
        .arg(format!(
            "while true; do cat {BAKED} >/dev/null; sleep 0.5; done"
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let marked = loop {
        let found = agent
            .records()
            .into_iter()
            .find(|r| r["container"]["id"] == id.as_str() && r["image_finding"].is_object());
        if let Some(record) = found {
            break Some(record);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let _ = containerd::ctr(&["-n", "default", "task", "kill", "-s", "KILL", &id]);
    let _ = child.wait();
    let record = marked.unwrap_or_else(|| {
        let of_container: Vec<Value> = agent
            .records()
            .into_iter()
            .filter(|r| r["container"]["id"] == id.as_str())
            .collect();
        panic!("no record with image_finding; the container's records: {of_container:#?}")
    });
    assert_eq!(record["file"]["path"], BAKED);
    assert_eq!(record["container"]["image"], LEAKY_IMAGE);
    assert_eq!(record["image_finding"]["status"], "present");
    assert_eq!(record["image_finding"]["layer"], 1);
    assert_eq!(record["image_finding"]["rule"], "aws-shared-credentials");
    let series = format!(
        r#"credwatch_image_findings{{image="{LEAKY_IMAGE}",severity="high",status="present"}}"#
    );
    assert_eq!(agent.metric(&series), 1.0, "{}", agent.metrics());
}
