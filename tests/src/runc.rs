//! Real runc containers for the end-to-end tests: a busybox-static rootfs (Debian's
//! `busybox-static`), shared read-only by every container, and one bundle per container with
//! its own secrets directory bind-mounted at /run/secrets.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
};

use serde_json::{Value, json};

/// Installs the Debian packages a test needs when their binaries are missing. Tests run in
/// parallel and apt refuses to run twice at once, so installs take turns.
pub fn ensure_packages(wanted: &[(&str, &str)]) {
    static APT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = APT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(binary, _)| !Path::new(binary).exists())
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return;
    }
    let ok = |cmd: &mut Command| cmd.status().map(|s| s.success()).unwrap_or(false);
    assert!(
        ok(Command::new("apt-get").args(["update", "-q"])),
        "apt-get update failed"
    );
    assert!(
        ok(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            // Another apt (outside the tests) may hold the lock for a while.
            .args(["-o", "DPkg::Lock::Timeout=300"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")),
        "apt-get install {missing:?} failed"
    );
}

/// The shared busybox rootfs, built once per test binary.
pub fn rootfs() -> &'static Path {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS.get_or_init(|| {
        ensure_packages(&[
            ("/usr/sbin/runc", "runc"),
            ("/bin/busybox", "busybox-static"),
        ]);
        let root = std::env::temp_dir().join(format!("credwatch-rootfs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for dir in ["bin", "proc", "dev", "sys", "tmp", "run/secrets", "etc"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        for applet in [
            "sh", "cat", "sleep", "ls", "echo", "head", "wget", "nslookup",
        ] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        // A second program (a busybox copy) for "read by a binary the footprint does not allow".
        std::fs::create_dir_all(root.join("opt/tool")).unwrap();
        std::fs::copy("/bin/busybox", root.join("opt/tool/cat")).unwrap();
        // Files runtimes bind-mount over (the rootfs is read-only, so the targets must exist).
        for file in ["etc/resolv.conf", "etc/hosts", "etc/hostname"] {
            std::fs::write(root.join(file), "").unwrap();
        }
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").unwrap();
        std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
        root
    })
}

/// A runc container with its own bundle and secrets.
pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    pub secrets: PathBuf,
}

impl Container {
    /// Prepares a bundle: `secrets` are (file name, contents) under the container's
    /// /run/secrets; `args` is the command.
    pub fn new(id: &str, secrets: &[(&str, &str)], args: &[&str]) -> Container {
        Self::with_spec(id, secrets, args, |_| {})
    }

    /// Like `new`, with a chance to edit the OCI spec (e.g. share the host's pid namespace).
    pub fn with_spec(
        id: &str,
        secrets: &[(&str, &str)],
        args: &[&str],
        edit: impl FnOnce(&mut Value),
    ) -> Container {
        let rootfs = rootfs(); // also installs runc on a fresh machine
        let bundle = std::env::temp_dir().join(format!("credwatch-bundle-{id}"));
        let _ = std::fs::remove_dir_all(&bundle);
        let secrets_dir = bundle.join("secrets");
        std::fs::create_dir_all(&secrets_dir).unwrap();
        for (name, contents) in secrets {
            std::fs::write(secrets_dir.join(name), contents).unwrap();
        }
        let status = Command::new("runc")
            .args(["spec", "--bundle"])
            .arg(&bundle)
            .status()
            .unwrap();
        assert!(status.success(), "runc spec");
        let spec_path = bundle.join("config.json");
        let mut spec: Value = serde_json::from_slice(&std::fs::read(&spec_path).unwrap()).unwrap();
        spec["root"] = json!({"path": rootfs, "readonly": true});
        spec["process"]["terminal"] = json!(false);
        spec["process"]["args"] = json!(args);
        spec["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/run/secrets",
            "type": "bind",
            "source": secrets_dir,
            "options": ["rbind", "ro"],
        }));
        edit(&mut spec);
        std::fs::write(&spec_path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
        Container {
            id: id.to_string(),
            bundle,
            secrets: secrets_dir,
        }
    }

    /// `runc run` in the foreground: create, start, wait, delete.
    pub fn run_to_completion(&self) {
        let status = Command::new("runc")
            .args(["run", "--bundle"])
            .arg(&self.bundle)
            .arg(&self.id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "runc run {}: {status}", self.id);
    }

    /// `runc run --detach`: the container keeps running until `stop`.
    pub fn start(&self) {
        let status = Command::new("runc")
            .args(["run", "--detach", "--bundle"])
            .arg(&self.bundle)
            .arg(&self.id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "runc run --detach {}: {status}", self.id);
    }

    /// The host pid of the container's init process.
    pub fn init_pid(&self) -> u32 {
        let out = Command::new("runc")
            .args(["state", &self.id])
            .output()
            .unwrap();
        let state: Value = serde_json::from_slice(&out.stdout).unwrap();
        state["pid"].as_u64().unwrap() as u32
    }

    pub fn stop(&self) {
        let _ = Command::new("runc")
            .args(["delete", "--force", &self.id])
            .status();
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.bundle);
    }
}
