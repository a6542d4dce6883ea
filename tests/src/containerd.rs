//! A real containerd (Debian's package) for the end-to-end tests, images built locally from
//! the busybox rootfs (no registry, no network), `ctr` containers, and Kubernetes-style pods
//! created through containerd's CRI plugin the way the kubelet does: host-network sandboxes on
//! a locally imported pause image.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ImageSpec, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, Mount, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
    StopPodSandboxRequest, runtime_service_client::RuntimeServiceClient,
};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::runc::{ensure_packages, rootfs};

pub const SOCKET: &str = "/run/containerd/containerd.sock";
/// containerd 1.6's default sandbox image; imported locally under this name.
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.6";
pub const BUSYBOX_IMAGE: &str = "docker.io/library/credwatch-busybox:e2e";
/// These machines withhold CAP_SYS_RESOURCE, so the CRI's negative oom_score_adj for
/// sandboxes is refused; containerd's option for that case clamps it.
const RESTRICT_OOM: &str = "restrict_oom_score_adj = true";

/// Starts containerd unless one already answers on its socket.
pub fn ensure_containerd() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        ensure_packages(&[("/usr/bin/containerd", "containerd"), ("/usr/sbin/runc", "runc")]);
        if ctr(&["version"]).is_ok() {
            return;
        }
        let dir = Path::new("/run/credwatch-e2e-containerd");
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"{PAUSE_IMAGE}\"\n  {RESTRICT_OOM}\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        // Detached: containerd outlives this test binary like a node's runtime would.
        Command::new("setsid")
            .arg("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting containerd");
        let deadline = Instant::now() + Duration::from_secs(30);
        while ctr(&["version"]).is_err() {
            assert!(Instant::now() < deadline, "containerd did not start; see {}", dir.display());
            std::thread::sleep(Duration::from_millis(200));
        }
    });
}

pub fn ctr(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ctr")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Builds an OCI image (one uncompressed layer: the busybox rootfs) and imports it into
/// containerd `namespace` as `name`.
pub fn import_image(namespace: &str, name: &str, cmd: &[&str]) {
    import_image_with(namespace, name, cmd, &[]);
}

/// `import_image` with one more layer on top holding `files` (path in the image, contents).
pub fn import_image_with(namespace: &str, name: &str, cmd: &[&str], files: &[(&str, &str)]) {
    let dir = std::env::temp_dir().join(format!(
        "credwatch-oci-{}-{}",
        std::process::id(),
        sha_hex(name.as_bytes())
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let layer_path = dir.join("layer.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(rootfs())
        .arg("-cf")
        .arg(&layer_path)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    let put = |bytes: &[u8]| -> (String, usize) {
        let hex = sha_hex(bytes);
        std::fs::write(blobs.join(&hex), bytes).unwrap();
        (format!("sha256:{hex}"), bytes.len())
    };
    let (layer, layer_size) = put(&std::fs::read(&layer_path).unwrap());
    let mut layers = vec![(layer, layer_size)];
    if !files.is_empty() {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, contents) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(contents.len() as u64);
            header.set_mode(0o600);
            builder
                .append_data(
                    &mut header,
                    path.trim_start_matches('/'),
                    contents.as_bytes(),
                )
                .unwrap();
        }
        layers.push(put(&builder.into_inner().unwrap()));
    }
    let diff_ids: Vec<&String> = layers.iter().map(|(digest, _)| digest).collect();
    let config = json!({
        "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "config": {"Cmd": cmd},
    });
    let (config, config_size) = put(config.to_string().as_bytes());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size},
        "layers": layers.iter().map(|(digest, size)| json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": size})).collect::<Vec<_>>(),
    });
    let (manifest, manifest_size) = put(manifest.to_string().as_bytes());
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest,
            "size": manifest_size,
            "annotations": {"io.containerd.image.name": name},
        }],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::remove_file(&layer_path).unwrap();
    let archive = dir.with_extension("tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&dir)
        .arg("-cf")
        .arg(&archive)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    ctr(&[
        "-n",
        namespace,
        "images",
        "import",
        archive.to_str().unwrap(),
    ])
    .expect("ctr images import");
}

fn sha_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Both images, in both namespaces the tests use.
pub fn ensure_images() {
    static IMAGES: OnceLock<()> = OnceLock::new();
    IMAGES.get_or_init(|| {
        ensure_containerd();
        import_image("default", BUSYBOX_IMAGE, &["/bin/sh"]);
        import_image("k8s.io", BUSYBOX_IMAGE, &["/bin/sh"]);
        // The sandbox ("pause") container only has to stay up.
        import_image("k8s.io", PAUSE_IMAGE, &["/bin/sleep", "2147483647"]);
    });
}

/// `ctr run --rm` of the busybox image with `secrets` bind-mounted at /run/secrets.
pub fn ctr_run(id: &str, secrets: &Path, args: &[&str]) {
    ensure_images();
    let mount = format!(
        "type=bind,src={},dst=/run/secrets,options=rbind:ro",
        secrets.display()
    );
    let mut full = vec![
        "-n",
        "default",
        "run",
        "--rm",
        "--mount",
        &mount,
        BUSYBOX_IMAGE,
        id,
    ];
    full.extend_from_slice(args);
    ctr(&full).unwrap_or_else(|e| panic!("ctr run {id}: {e}"));
}

/// A pod sandbox with one container, created through the CRI.
pub struct Pod {
    pub sandbox_id: String,
    pub container_id: String,
    pub uid: String,
    runtime: tokio::runtime::Runtime,
}

pub struct PodSpec<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub labels: &'a [(&'a str, &'a str)],
    pub container: &'a str,
    /// Host directory mounted at /var/run/secrets/kubernetes.io/serviceaccount.
    pub token_dir: &'a Path,
    pub command: &'a [&'a str],
}

impl Pod {
    pub fn run(spec: PodSpec) -> Pod {
        ensure_images();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let uid = format!(
            "{:0>8}-0000-4000-8000-{:0>12}",
            std::process::id(),
            sha_hex(spec.name.as_bytes())[..12].to_string()
        );
        let labels: HashMap<String, String> = spec
            .labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let sandbox_config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: spec.name.into(),
                uid: uid.clone(),
                namespace: spec.namespace.into(),
                attempt: 0,
            }),
            labels: labels.clone(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: format!("/kubepods/besteffort/pod{uid}"),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Node as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (sandbox_id, container_id) = runtime.block_on(async {
            let mut cri = client().await;
            let sandbox_id = cri
                .run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(sandbox_config.clone()),
                    runtime_handler: String::new(),
                })
                .await
                .expect("RunPodSandbox")
                .into_inner()
                .pod_sandbox_id;
            let container = ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: spec.container.into(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: BUSYBOX_IMAGE.into(),
                    ..Default::default()
                }),
                command: spec.command.iter().map(|s| s.to_string()).collect(),
                labels,
                mounts: vec![Mount {
                    container_path: "/var/run/secrets/kubernetes.io/serviceaccount".into(),
                    host_path: spec.token_dir.display().to_string(),
                    readonly: true,
                    ..Default::default()
                }],
                ..Default::default()
            };
            let container_id = cri
                .create_container(CreateContainerRequest {
                    pod_sandbox_id: sandbox_id.clone(),
                    config: Some(container),
                    sandbox_config: Some(sandbox_config),
                })
                .await
                .expect("CreateContainer")
                .into_inner()
                .container_id;
            cri.start_container(StartContainerRequest {
                container_id: container_id.clone(),
            })
            .await
            .expect("StartContainer");
            (sandbox_id, container_id)
        });
        Pod {
            sandbox_id,
            container_id,
            uid,
            runtime,
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let id = self.sandbox_id.clone();
        self.runtime.block_on(async {
            let mut cri = client().await;
            let _ = cri
                .stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await;
            let _ = cri
                .remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
                .await;
        });
    }
}

async fn client() -> RuntimeServiceClient<tonic::transport::Channel> {
    let channel = containerd_client::connect(PathBuf::from(SOCKET))
        .await
        .expect("CRI socket");
    RuntimeServiceClient::new(channel)
}
