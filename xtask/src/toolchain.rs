//! Finding the toolchain that builds the kernel programs, and the bpf-linker that goes with it.
//!
//! Shared by `cargo xtask setup` (which installs what is missing) and the agent's build script
//! (which only looks, and says to run setup when something is missing), through `#[path]`.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

/// A Rust toolchain able to build `bpfel-unknown-none` with `-Z build-std=core`.
#[derive(Debug, Clone)]
pub struct EbpfToolchain {
    /// rustup name: "nightly", or "stable" used with RUSTC_BOOTSTRAP=1.
    pub name: String,
    pub sysroot: PathBuf,
    /// The toolchain's own LLVM shared library, as `-l dylib=` wants it
    /// (e.g. "LLVM-22-rust-1.97.0-nightly").
    pub llvm_dylib: String,
    /// Whether unstable flags need RUSTC_BOOTSTRAP=1 (a stable toolchain).
    pub needs_bootstrap: bool,
}

impl EbpfToolchain {
    pub fn has_rust_src(&self) -> bool {
        self.sysroot
            .join("lib/rustlib/src/rust/library/core")
            .is_dir()
    }

    /// Where the bpf-linker linked against this toolchain's LLVM lives. Keyed by the LLVM
    /// library so a toolchain update gets a matching linker instead of a broken one.
    pub fn linker_root(&self) -> PathBuf {
        let base = env::var_os("CREDWATCH_TOOLS")
            .map(PathBuf::from)
            .or_else(|| env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("credwatch")))
            .or_else(|| env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/credwatch")))
            .unwrap_or_else(|| PathBuf::from("/var/cache/credwatch"));
        base.join(format!("bpf-linker-{}", self.llvm_dylib))
    }

    pub fn linker(&self) -> PathBuf {
        self.linker_root().join("bin/bpf-linker")
    }
}

/// Looks up a toolchain by rustup name; None when rustup does not have it.
pub fn probe_toolchain(name: &str) -> Option<EbpfToolchain> {
    let out = Command::new("rustup")
        .args(["run", name, "rustc", "--print", "sysroot"])
        .env_remove("RUSTC")
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let sysroot = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    let llvm_dylib = find_llvm_dylib(&sysroot.join("lib"))?;
    Some(EbpfToolchain {
        name: name.to_string(),
        needs_bootstrap: !llvm_dylib.ends_with("-nightly"),
        sysroot,
        llvm_dylib,
    })
}

/// `libLLVM-22-rust-1.97.0-nightly.so` → `LLVM-22-rust-1.97.0-nightly`.
fn find_llvm_dylib(libdir: &Path) -> Option<String> {
    std::fs::read_dir(libdir).ok()?.flatten().find_map(|entry| {
        let name = entry.file_name().into_string().ok()?;
        let stem = name.strip_prefix("lib")?.strip_suffix(".so")?;
        stem.starts_with("LLVM-").then(|| stem.to_string())
    })
}

/// The toolchain to build with: the nightly when it has `rust-src`, else stable with
/// RUSTC_BOOTSTRAP (both ship LLVM 22 here, README, "Toolchain").
pub fn select() -> Result<EbpfToolchain, String> {
    let candidates: Vec<EbpfToolchain> = ["nightly", "stable"]
        .iter()
        .filter_map(|name| probe_toolchain(name))
        .collect();
    if candidates.is_empty() {
        return Err("no rustup toolchain found (need nightly, or stable as a fallback)".into());
    }
    candidates
        .iter()
        .find(|tc| tc.has_rust_src() && tc.linker().is_file())
        .cloned()
        .ok_or_else(|| {
            let seen: Vec<String> = candidates
                .iter()
                .map(|tc| {
                    format!(
                        "{} (rust-src: {}, bpf-linker at {}: {})",
                        tc.name,
                        if tc.has_rust_src() { "yes" } else { "missing" },
                        tc.linker().display(),
                        if tc.linker().is_file() {
                            "yes"
                        } else {
                            "missing"
                        }
                    )
                })
                .collect();
            format!("no toolchain is ready to build eBPF: {}", seen.join("; "))
        })
}
