//! `credwatch audit-image` on images the tests build by hand (no registry): an OCI layout with
//! gzip, zstd and plain layers, a `docker save` archive, a multi-platform index with a
//! provenance attestation, and broken inputs. Every output format is checked to never carry a
//! secret value in clear.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_credwatch");

// Values the images carry; none may ever appear in an output.
const AWS_KEY_ID: &str = "AKIAQYLPMN5HHHFPZAM2";
const AWS_SECRET: &str = "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";
const GITHUB_TOKEN: &str = "ghp_R8a2Lq9ZkW3mN7pX1vB5cD0fG4hJ6tY8uI2o";
const NPM_TOKEN: &str = "npm_Q7w9E2r4T6y8U1i3O5p7A9s2D4f6G8h1J3k5";
const PASSWORD: &str = "correct-horse-battery-staple";
const KEY_BODY: &str = "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZWQyNTUxOQAAACBzZWNyZXRzZWNyZXRzZWNyZXQ";
const SECRETS: &[&str] = &[
    AWS_KEY_ID,
    AWS_SECRET,
    GITHUB_TOKEN,
    NPM_TOKEN,
    PASSWORD,
    KEY_BODY,
];

fn private_key() -> String {
    format!("-----BEGIN OPENSSH PRIVATE KEY-----\n{KEY_BODY}\n-----END OPENSSH PRIVATE KEY-----\n")
}

enum Member {
    File(&'static str, String),
    Dir(&'static str),
}

fn layer_tar(members: &[Member]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for member in members {
        let mut header = tar::Header::new_gnu();
        match member {
            Member::File(path, text) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(text.len() as u64);
                header.set_mode(0o600);
                // Raw names: the tar crate refuses `..` through set_path, images do not.
                let name = header.as_old_mut().name.as_mut();
                name.fill(0);
                name[..path.len()].copy_from_slice(path.as_bytes());
                header.set_cksum();
                builder.append(&header, text.as_bytes()).unwrap();
            }
            Member::Dir(path) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                header.set_mode(0o755);
                header.set_path(path).unwrap();
                header.set_cksum();
                builder.append(&header, std::io::empty()).unwrap();
            }
        }
    }
    builder.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn digest(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// An OCI layout being written: blobs by digest.
struct Layout {
    dir: PathBuf,
}

impl Layout {
    fn new(dir: &Path) -> Layout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout {
            dir: dir.to_path_buf(),
        }
    }

    fn blob(&self, bytes: &[u8]) -> String {
        let d = digest(bytes);
        std::fs::write(self.dir.join("blobs/sha256").join(&d[7..]), bytes).unwrap();
        d
    }

    /// A manifest for these (media type, uncompressed, stored) layers and config; its descriptor.
    fn image(
        &self,
        layers: &[(&str, Vec<u8>, Vec<u8>)],
        mut config: Value,
        platform: &str,
    ) -> Value {
        config["rootfs"] = json!({
            "type": "layers",
            "diff_ids": layers.iter().map(|(_, raw, _)| digest(raw)).collect::<Vec<_>>(),
        });
        let (os, arch) = platform.split_once('/').unwrap();
        config["os"] = json!(os);
        config["architecture"] = json!(arch);
        let config_bytes = serde_json::to_vec(&config).unwrap();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": self.blob(&config_bytes), "size": config_bytes.len()},
            "layers": layers.iter().map(|(media, _, stored)| json!({"mediaType": media, "digest": self.blob(stored), "size": stored.len()})).collect::<Vec<_>>(),
        });
        let bytes = serde_json::to_vec(&manifest).unwrap();
        json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": self.blob(&bytes),
            "size": bytes.len(),
            "platform": {"os": os, "architecture": arch},
        })
    }

    fn index(&self, manifests: Vec<Value>) {
        let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests});
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
    }
}

fn policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

fn audit(args: &[&str], image: &Path) -> Output {
    let out = Command::new(BIN)
        .arg("audit-image")
        .arg("--policies")
        .arg(policies())
        .args(args)
        .arg(image)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for secret in SECRETS {
        assert!(
            !text.contains(secret),
            "a value in clear ({secret}) in:\n{text}"
        );
    }
    out
}

fn json_report(args: &[&str], image: &Path) -> (Option<i32>, Value) {
    let mut all = vec!["--format", "json"];
    all.extend_from_slice(args);
    let out = audit(&all, image);
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), report)
}

fn find<'a>(report: &'a Value, path: &str, rule: &str) -> &'a Value {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == path && f["rule"] == rule)
        .unwrap_or_else(|| panic!("no {rule} finding at {path}: {report:#}"))
}

fn leaky_layout(dir: &Path) -> Layout {
    let layout = Layout::new(dir);
    let base = layer_tar(&[
        Member::Dir("etc/ssl/private/"),
        Member::File("etc/ssl/private/ssl-cert-snakeoil.key", private_key()),
        Member::File(
            "usr/share/doc/tool/example.txt",
            format!("id = {AWS_KEY_ID}\n"),
        ),
        Member::File("etc/ssh/ssh_host_ed25519_key", private_key()),
        Member::File("usr/bin/tool", format!("\x7fELF\0\0{GITHUB_TOKEN}")),
    ]);
    let app = layer_tar(&[
        Member::File(
            "root/.aws/credentials",
            format!(
                "[default]\naws_access_key_id = {AWS_KEY_ID}\naws_secret_access_key = {AWS_SECRET}\n"
            ),
        ),
        Member::File(
            "app/config.js",
            format!("const token = '{GITHUB_TOKEN}';\n"),
        ),
        Member::File(
            "root/.kube/config",
            "clusters:\n- cluster:\n    certificate-authority-data: LS0t\n".into(),
        ),
        Member::File(
            "root/.docker/config.json",
            r#"{"credsStore": "desktop"}"#.into(),
        ),
        Member::File(
            "root/.ssh/id_ed25519.pub",
            "ssh-ed25519 AAAAC3Nza test".into(),
        ),
        Member::File("run/secrets/npmrc", String::new()),
        Member::File("app/docs/aws.md", "example AKIAIOSFODNN7EXAMPLE\n".into()),
        // A hostile name: compared after lexical normalisation, never written anywhere.
        Member::File(
            "../../../opt/leak/.git-credentials",
            format!("https://bot:{PASSWORD}@git.example.com\n"),
        ),
    ]);
    let cleanup = layer_tar(&[
        Member::File("root/.aws/.wh.credentials", String::new()),
        Member::File("app/config.js", "const token = process.env.TOKEN;\n".into()),
    ]);
    let config = json!({
        "config": {"Env": ["PATH=/usr/bin", format!("DB_PASSWORD={PASSWORD}"), "PUBLIC_KEY=abc"]},
        "history": [
            {"created_by": "/bin/sh -c #(nop) ADD file:0123 in / "},
            {"created_by": format!("ARG NPM_TOKEN={NPM_TOKEN}"), "empty_layer": true},
            {"created_by": "COPY . / # buildkit"},
            {"created_by": format!("RUN |1 NPM_TOKEN={NPM_TOKEN} /bin/sh -c rm -f /root/.aws/credentials")},
        ],
    });
    let zstd = zstd::encode_all(&app[..], 3).unwrap();
    let manifest = layout.image(
        &[
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                base.clone(),
                gzip(&base),
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                app.clone(),
                zstd,
            ),
            (
                "application/vnd.oci.image.layer.v1.tar",
                cleanup.clone(),
                cleanup.clone(),
            ),
        ],
        config,
        "linux/amd64",
    );
    layout.index(vec![manifest]);
    layout
}

#[test]
fn an_oci_layout_with_baked_credentials() {
    let dir = tempfile::tempdir().unwrap();
    leaky_layout(dir.path());
    let (code, report) = json_report(&[], dir.path());
    assert_eq!(code, Some(1), "{report:#}");
    assert!(report["incomplete"].as_array().unwrap().is_empty());

    // Deleted in a later layer, still extractable from the one that added it.
    let aws = find(&report, "/root/.aws/credentials", "aws-shared-credentials");
    assert_eq!(aws["status"], "deleted");
    assert_eq!(aws["severity"], "high");
    assert_eq!(aws["layer"], 1);
    assert_eq!(
        aws["history"], 2,
        "layer 1 is the second non-empty history entry"
    );
    assert_eq!(aws["instruction"], "COPY");
    assert!(aws["diff_id"].as_str().unwrap().starts_with("sha256:"));
    assert!(
        aws["fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("hmac-sha256:")
    );
    let token = find(&report, "/app/config.js", "github-token");
    assert_eq!(token["status"], "overwritten");
    assert_eq!(token["preview"], "ghp_… [40 bytes redacted]");
    assert_eq!(
        find(&report, "/run/secrets/npmrc", "mounted-secrets")["status"],
        "empty-placeholder"
    );
    let snakeoil = find(
        &report,
        "/etc/ssl/private/ssl-cert-snakeoil.key",
        "tls-private-keys",
    );
    assert_eq!(
        (&snakeoil["category"], &snakeoil["severity"]),
        (&json!("package-file"), &json!("low"))
    );
    let doc = find(
        &report,
        "/usr/share/doc/tool/example.txt",
        "aws-access-key-id",
    );
    assert_eq!(doc["severity"], "low");
    assert_eq!(
        find(&report, "/app/docs/aws.md", "aws-access-key-id")["category"],
        "known-example"
    );
    let host_key = find(&report, "/etc/ssh/ssh_host_ed25519_key", "ssh-private-keys");
    assert_eq!(
        (&host_key["category"], &host_key["severity"]),
        (&json!("host-key"), &json!("medium"))
    );
    assert_eq!(
        host_key["preview"],
        format!(
            "-----BEGIN OPENSSH PRIVATE KEY-----… [{} bytes redacted]",
            private_key().len()
        )
    );
    let hostile = find(&report, "/opt/leak/.git-credentials", "git-credentials");
    assert_eq!(hostile["status"], "present");
    assert!(!Path::new("/opt/leak").exists(), "nothing extracted");

    // Harmless files at catalogue paths and binaries are not findings.
    for path in [
        "/root/.kube/config",
        "/root/.docker/config.json",
        "/root/.ssh/id_ed25519.pub",
        "/usr/bin/tool",
    ] {
        assert!(
            !report["findings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["path"] == path),
            "{path}: {report:#}"
        );
    }

    // The config: Env by name (PUBLIC_KEY is not), the ARG and the RUN's recorded build argument.
    let config: Vec<&Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["source"] != "layer")
        .collect();
    let keys: Vec<(&str, &str)> = config
        .iter()
        .map(|f| {
            (
                f["source"].as_str().unwrap(),
                f["key"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert!(keys.contains(&("config", "DB_PASSWORD")), "{keys:?}");
    assert!(
        !keys.iter().any(|(_, k)| *k == "PUBLIC_KEY" || *k == "PATH"),
        "{keys:?}"
    );
    let args: Vec<&&Value> = config.iter().filter(|f| f["key"] == "NPM_TOKEN").collect();
    assert_eq!(args.len(), 2, "ARG and RUN |1: {keys:?}");
    assert_eq!(
        args[0]["fingerprint"], args[1]["fingerprint"],
        "one value, one fingerprint"
    );
    let run = args.iter().find(|f| f["history"] == 3).unwrap();
    assert_eq!(
        (&run["instruction"], &run["layer"]),
        (&json!("RUN"), &json!(2))
    );
    assert_eq!(
        run["preview"],
        format!("NPM_TOKEN=… [{} bytes redacted]", NPM_TOKEN.len())
    );

    // The other formats carry no value in clear either (checked in `audit`), and a table names
    // each finding.
    let table = audit(&[], dir.path());
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("deleted") && text.contains("/root/.aws/credentials"),
        "{text}"
    );
    let sarif = audit(&["--format", "sarif"], dir.path());
    let sarif: Value = serde_json::from_slice(&sarif.stdout).unwrap();
    assert_eq!(sarif["version"], "2.1.0");
    assert_eq!(
        sarif["runs"][0]["results"].as_array().unwrap().len(),
        report["findings"].as_array().unwrap().len()
    );

    // A baseline of this report accepts what it lists; --fail-on critical lets high pass.
    let baseline = dir.path().join("baseline.json");
    std::fs::write(&baseline, serde_json::to_vec(&report).unwrap()).unwrap();
    let (code, again) = json_report(&["--baseline", baseline.to_str().unwrap()], dir.path());
    assert_eq!(code, Some(0), "{again:#}");
    assert!(
        again["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["baselined"] == true)
    );
    assert_eq!(
        json_report(&["--fail-on", "critical"], dir.path()).0,
        Some(0)
    );
    // Deterministic: the same image gives the same report.
    assert_eq!(json_report(&[], dir.path()).1, report);
}

#[test]
fn an_oci_archive_in_docker_engine_25_layout() {
    // Docker Engine 25+ `docker save`: an OCI layout (index.json, blobs/sha256) plus the
    // legacy manifest.json pointing into the blobs, in one tar, read in place.
    let dir = tempfile::tempdir().unwrap();
    let layout_dir = dir.path().join("layout");
    leaky_layout(&layout_dir);
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout_dir.join("index.json")).unwrap()).unwrap();
    let manifest_blob = |digest: &str| layout_dir.join("blobs/sha256").join(&digest[7..]);
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(manifest_blob(
            index["manifests"][0]["digest"].as_str().unwrap(),
        ))
        .unwrap(),
    )
    .unwrap();
    let blob_name = |d: &Value| format!("blobs/sha256/{}", &d["digest"].as_str().unwrap()[7..]);
    let legacy = json!([{
        "Config": blob_name(&manifest["config"]),
        "RepoTags": ["leaky/app:25"],
        "Layers": manifest["layers"].as_array().unwrap().iter().map(blob_name).collect::<Vec<_>>(),
    }]);
    std::fs::write(layout_dir.join("manifest.json"), legacy.to_string()).unwrap();
    let archive = dir.path().join("image.tar");
    let mut builder = tar::Builder::new(std::fs::File::create(&archive).unwrap());
    builder.append_dir_all(".", &layout_dir).unwrap();
    builder.finish().unwrap();
    drop(builder);
    let (code, report) = json_report(&[], &archive);
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(
        find(&report, "/root/.aws/credentials", "aws-shared-credentials")["status"],
        "deleted"
    );
    assert_eq!(
        find(&report, "/app/config.js", "github-token")["status"],
        "overwritten"
    );
    // Read in place: the archive's members were not written anywhere.
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        2,
        "layout and archive only"
    );
}

#[test]
fn a_docker_save_archive_legacy_layout() {
    let dir = tempfile::tempdir().unwrap();
    let layer = layer_tar(&[Member::File(
        "home/app/.npmrc",
        format!("//registry.npmjs.org/:_authToken={NPM_TOKEN}\n"),
    )]);
    let config = json!({"os": "linux", "architecture": "arm64", "config": {"Env": [format!("GITHUB_TOKEN={GITHUB_TOKEN}")]}, "rootfs": {"type": "layers", "diff_ids": [digest(&layer)]}, "history": [{"created_by": "COPY .npmrc /home/app/ # buildkit"}]});
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_name = format!("{}.json", &digest(&config_bytes)[7..]);
    let manifest = json!([{"Config": config_name, "RepoTags": ["leaky/app:1"], "Layers": ["0123abcd/layer.tar"]}]);
    let archive = dir.path().join("image.tar");
    let mut builder = tar::Builder::new(std::fs::File::create(&archive).unwrap());
    for (name, bytes) in [
        ("manifest.json", serde_json::to_vec(&manifest).unwrap()),
        (config_name.as_str(), config_bytes),
        ("0123abcd/VERSION", b"1.0".to_vec()),
        ("0123abcd/layer.tar", layer),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        builder.append_data(&mut header, name, &bytes[..]).unwrap();
    }
    builder.finish().unwrap();
    drop(builder);
    let (code, report) = json_report(&[], &archive);
    assert_eq!(code, Some(1), "{report:#}");
    let npmrc = find(&report, "/home/app/.npmrc", "tool-tokens");
    assert_eq!(
        (&npmrc["image"], &npmrc["platform"]),
        (&json!("leaky/app:1"), &json!("linux/arm64"))
    );
    assert_eq!(npmrc["instruction"], "COPY");
    let env = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["key"] == "GITHUB_TOKEN")
        .unwrap();
    assert_eq!(env["source"], "config");
}

#[test]
fn a_multi_platform_index_with_a_provenance_attestation() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::new(dir.path());
    let clean = layer_tar(&[Member::File("app/main.py", "print('hello')\n".into())]);
    let history = json!({"history": [{"created_by": "COPY main.py /app/ # buildkit"}]});
    let amd64 = layout.image(
        &[(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            clean.clone(),
            gzip(&clean),
        )],
        history.clone(),
        "linux/amd64",
    );
    let arm64 = layout.image(
        &[(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            clean.clone(),
            gzip(&clean),
        )],
        history,
        "linux/arm64",
    );
    // BuildKit's mode=max provenance records the build arguments' values.
    let statement = json!({
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": "https://slsa.dev/provenance/v0.2",
        "predicate": {"invocation": {"parameters": {"args": {"build-arg:GITHUB_TOKEN": GITHUB_TOKEN, "build-arg:VERSION": "1.2"}}}},
    });
    let statement_bytes = serde_json::to_vec(&statement).unwrap();
    let config = br#"{"architecture":"unknown","os":"unknown","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#;
    let attestation = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": layout.blob(config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.in-toto+json", "digest": layout.blob(&statement_bytes), "size": statement_bytes.len()}],
    });
    let attestation_bytes = serde_json::to_vec(&attestation).unwrap();
    let attestation_descriptor = json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": layout.blob(&attestation_bytes),
        "size": attestation_bytes.len(),
        "platform": {"os": "unknown", "architecture": "unknown"},
        "annotations": {"vnd.docker.reference.type": "attestation-manifest", "vnd.docker.reference.digest": amd64["digest"]},
    });
    let nested = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [amd64, arm64, attestation_descriptor]});
    let nested_bytes = serde_json::to_vec(&nested).unwrap();
    layout.index(vec![json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": layout.blob(&nested_bytes), "size": nested_bytes.len()})]);

    let (code, report) = json_report(&[], dir.path());
    assert_eq!(code, Some(1), "{report:#}");
    let platforms: Vec<&str> = report["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["platform"].as_str().unwrap())
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
    let findings = report["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 1, "{report:#}");
    assert_eq!(
        (&findings[0]["source"], &findings[0]["key"]),
        (&json!("attestation"), &json!("GITHUB_TOKEN"))
    );
    assert_eq!(findings[0]["platform"], "linux/amd64");
    let (code, arm) = json_report(&["--platform", "linux/arm64"], dir.path());
    assert_eq!(
        (code, arm["findings"].as_array().unwrap().len()),
        (Some(0), 0),
        "{arm:#}"
    );
}

#[test]
fn broken_images_are_incomplete_never_a_silent_pass() {
    let secret_layer = layer_tar(&[Member::File(
        "root/.git-credentials",
        format!("https://u:{PASSWORD}@h\n"),
    )]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated gzip", gzip(&secret_layer)[..40].to_vec()),
        ("unknown compression", b"BZh91AY&SY garbage".to_vec()),
        ("truncated tar", secret_layer[..600].to_vec()),
    ];
    for (what, stored) in cases {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let manifest = layout.image(
            &[(
                "application/vnd.oci.image.layer.v1.tar",
                secret_layer.clone(),
                stored,
            )],
            json!({}),
            "linux/amd64",
        );
        layout.index(vec![manifest]);
        let (code, report) = json_report(&[], dir.path());
        assert_eq!(code, Some(3), "{what}: {report:#}");
        assert_eq!(
            report["incomplete"].as_array().unwrap().len(),
            1,
            "{what}: {report:#}"
        );
    }
    // A missing blob, a layout that is not one, and a directory member that is a symlink to a
    // host file.
    let dir = tempfile::tempdir().unwrap();
    let layout = leaky_layout(dir.path());
    let blobs: Vec<_> = std::fs::read_dir(layout.dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let biggest = blobs
        .iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    std::fs::remove_file(biggest).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", biggest).unwrap();
    let (code, report) = json_report(&[], dir.path());
    assert_eq!(code, Some(3), "{report:#}");
    assert!(
        report["incomplete"][0]
            .as_str()
            .unwrap()
            .contains("not a regular file"),
        "{report:#}"
    );
    std::fs::remove_file(biggest).unwrap();
    assert_eq!(json_report(&[], dir.path()).0, Some(3));
    let empty = tempfile::tempdir().unwrap();
    assert_eq!(json_report(&[], empty.path()).0, Some(3));
    // Bad usage is 2.
    let out = Command::new(BIN)
        .args(["audit-image", "--policies", "/nonexistent", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_huge_tar_header_ends_the_scan_not_the_memory() {
    // A GNU long name of 200 MiB (a few hundred KiB once gzipped; stored plain here to keep
    // the test fast): the tar reader keeps it whole, so the data-memory cap ends the scan as
    // incomplete.
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::new(dir.path());
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(1);
    header.set_mode(0o644);
    let name = "a".repeat(200 << 20);
    builder.append_data(&mut header, &name, &b"x"[..]).unwrap();
    drop(name);
    let raw = builder.into_inner().unwrap();
    let stored = gzip(&raw);
    let manifest = layout.image(
        &[("application/vnd.oci.image.layer.v1.tar+gzip", raw, stored)],
        json!({}),
        "linux/amd64",
    );
    layout.index(vec![manifest]);
    let (code, report) = json_report(&["--max-memory-mib", "128"], dir.path());
    assert_eq!(code, Some(3), "{report:#}");
    assert!(
        report["incomplete"][0]
            .as_str()
            .unwrap()
            .contains("out of memory"),
        "{report:#}"
    );
}

#[test]
fn a_decompression_bomb_stops_at_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::new(dir.path());
    // 64 MiB of zeros in one file, ~64 KiB compressed; the limit is 16 MiB.
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(64 << 20);
    header.set_mode(0o644);
    builder
        .append_data(&mut header, "zeros", std::io::repeat(0).take(64 << 20))
        .unwrap();
    let raw = builder.into_inner().unwrap();
    let manifest = layout.image(
        &[(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            raw.clone(),
            gzip(&raw),
        )],
        json!({}),
        "linux/amd64",
    );
    layout.index(vec![manifest]);
    let (code, report) = json_report(&["--max-layer-bytes", "16777216"], dir.path());
    assert_eq!(code, Some(3), "{report:#}");
    assert!(
        report["incomplete"][0]
            .as_str()
            .unwrap()
            .contains("decompression bomb"),
        "{report:#}"
    );
}

use std::io::Read as _;
