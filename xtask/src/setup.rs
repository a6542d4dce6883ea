//! `cargo xtask setup`: everything the eBPF build needs, installed idempotently.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{
    status,
    toolchain::{self, EbpfToolchain},
};

/// bpf-linker release known to work with LLVM 22 (README, "Building and testing").
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn setup() -> Result<EbpfToolchain> {
    if Command::new("rustup").arg("--version").output().is_err() {
        bail!("rustup not found: credwatch builds its kernel programs with a rustup toolchain");
    }
    let tc = match toolchain::probe_toolchain("nightly") {
        Some(nightly) => nightly,
        None => {
            let stable = toolchain::probe_toolchain("stable")
                .context("neither a nightly nor a stable rustup toolchain is installed")?;
            println!(
                "xtask: no nightly toolchain; using stable with RUSTC_BOOTSTRAP=1 for -Z build-std"
            );
            stable
        }
    };
    if !tc.has_rust_src() {
        println!("xtask: installing rust-src for {}", tc.name);
        status(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            &tc.name,
        ]))?;
        if !tc.has_rust_src() {
            bail!(
                "rust-src still missing in {} after installing it",
                tc.sysroot.display()
            );
        }
    }
    if !linker_works(&tc) {
        install_bpf_linker(&tc)?;
        if !linker_works(&tc) {
            bail!(
                "bpf-linker at {} does not run after installing it",
                tc.linker().display()
            );
        }
    }
    ensure_protoc()?;
    let chosen = toolchain::select().map_err(anyhow::Error::msg)?;
    println!(
        "xtask: eBPF toolchain: {} ({}{}), bpf-linker {}",
        chosen.name,
        chosen.llvm_dylib,
        if chosen.needs_bootstrap {
            ", RUSTC_BOOTSTRAP=1"
        } else {
            ""
        },
        chosen.linker().display()
    );
    Ok(chosen)
}

/// The containerd and CRI API clients are generated from their .proto files at build time.
fn ensure_protoc() -> Result<()> {
    if Command::new("protoc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    if !crate::is_root() {
        bail!("protoc is missing: install Debian's protobuf-compiler (or run setup as root)");
    }
    println!("xtask: installing protobuf-compiler (protoc) for the runtime API clients");
    crate::bench::ensure_debian_packages(&[("protoc", "protobuf-compiler")])
}

fn linker_works(tc: &EbpfToolchain) -> bool {
    Command::new(tc.linker())
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Builds bpf-linker against the toolchain's own LLVM shared library, so the linker and rustc
/// agree on the LLVM bitcode format (about a minute).
fn install_bpf_linker(tc: &EbpfToolchain) -> Result<()> {
    println!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against {} into {} (about a minute)",
        tc.llvm_dylib,
        tc.linker_root().display()
    );
    // "LLVM-22-rust-1.97.0-nightly" → bpf-linker's "llvm-22" feature.
    let major = tc
        .llvm_dylib
        .split('-')
        .nth(1)
        .context("LLVM library name without a version")?;
    let lib = tc.sysroot.join("lib");
    let rustflags = format!(
        "-L {lib} -l dylib={dylib} -C link-arg=-Wl,-rpath,{lib}",
        lib = lib.display(),
        dylib = tc.llvm_dylib
    );
    let mut cmd = Command::new("rustup");
    cmd.args(["run", &tc.name, "cargo", "install"])
        .arg(format!("bpf-linker@{BPF_LINKER_VERSION}"))
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{major},no-llvm-linking"))
        .arg("--root")
        .arg(tc.linker_root())
        .env("RUSTFLAGS", rustflags)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO");
    if tc.needs_bootstrap {
        cmd.env("RUSTC_BOOTSTRAP", "1");
    }
    status(&mut cmd)
}
