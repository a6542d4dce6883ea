//! Real AWS SDK clients for the end-to-end tests: a Python venv with boto3 and moto's server
//! (PyPI, pinned in tests/python-requirements.txt), and a container rootfs in which the venv's
//! Python runs: the host's /usr read-only (glibc, libssl) plus the venv and its base Python.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

const REQUIREMENTS: &str = include_str!("../python-requirements.txt");

pub struct PythonEnv {
    /// The venv (its `bin/python`, `bin/moto_server`).
    pub venv: PathBuf,
    /// The Python installation the venv's interpreter links to.
    pub base_prefix: PathBuf,
}

impl PythonEnv {
    pub fn python(&self) -> PathBuf {
        self.venv.join("bin/python")
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.venv.join("bin").join(name)
    }
}

/// The venv, created on first use under ~/.cache/credwatch (keyed by the requirements, so a
/// change of pins makes a new one).
pub fn env() -> &'static PythonEnv {
    static ENV: OnceLock<PythonEnv> = OnceLock::new();
    ENV.get_or_init(|| {
        let digest = hex(&Sha256::digest(REQUIREMENTS.as_bytes())[..6]);
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
        let venv = home
            .join(".cache/credwatch")
            .join(format!("python-aws-{digest}"));
        if !venv.join(".complete").exists() {
            let _ = std::fs::remove_dir_all(&venv);
            run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
            let requirements = venv.join("requirements.txt");
            std::fs::write(&requirements, REQUIREMENTS).unwrap();
            run(Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
                .arg(&requirements));
            std::fs::write(venv.join(".complete"), "").unwrap();
        }
        let out = Command::new(venv.join("bin/python"))
            .args(["-c", "import sys; print(sys.base_prefix)"])
            .output()
            .unwrap();
        assert!(out.status.success(), "the venv's python does not run");
        let base_prefix = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        PythonEnv { venv, base_prefix }
    })
}

fn run(cmd: &mut Command) {
    let status = cmd.status().unwrap();
    assert!(status.success(), "{cmd:?}: {status}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A rootfs for glibc programs: mount points for the host's /usr and the Python environment,
/// the merged-/usr links, and its own /etc (resolver: the network namespace's 127.0.0.1).
pub fn rootfs() -> &'static Path {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS.get_or_init(|| {
        let env = env();
        let root = std::env::temp_dir().join(format!("credwatch-glibcfs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for dir in [
            "proc",
            "dev",
            "sys",
            "tmp",
            "run/secrets",
            "etc",
            "usr",
            "root",
        ] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        for link in ["bin", "lib", "lib64", "sbin"] {
            let target = std::fs::read_link(Path::new("/").join(link))
                .unwrap_or_else(|_| panic!("/{link} is not a link into /usr (merged /usr needed)"));
            std::os::unix::fs::symlink(target, root.join(link)).unwrap();
        }
        for dir in [&env.base_prefix, &env.venv] {
            std::fs::create_dir_all(root.join(dir.strip_prefix("/").unwrap())).unwrap();
        }
        std::fs::write(root.join("etc/resolv.conf"), "nameserver 127.0.0.1\n").unwrap();
        for file in ["etc/hosts", "etc/hostname"] {
            std::fs::write(root.join(file), "").unwrap();
        }
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
        root
    })
}

/// Turns a runc spec into one that runs on the glibc rootfs with the Python environment.
pub fn use_rootfs(spec: &mut Value) {
    let env = env();
    spec["root"] = json!({"path": rootfs(), "readonly": true});
    let mounts = spec["mounts"].as_array_mut().unwrap();
    let mut bind = |path: &Path| {
        mounts.push(json!({
            "destination": path,
            "type": "bind",
            "source": path,
            "options": ["rbind", "ro"],
        }));
    };
    bind(Path::new("/usr"));
    if !env.base_prefix.starts_with("/usr") {
        bind(&env.base_prefix);
    }
    bind(&env.venv);
}
