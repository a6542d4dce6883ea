//! Builds the kernel programs (`ebpf/probes`) for the BPF target and embeds them in the agent.

#[path = "../xtask/src/toolchain.rs"]
mod toolchain;

use anyhow::{Context as _, anyhow};

fn main() {
    if let Err(err) = build() {
        // Plain message, no backtrace: the usual cause is a missing `cargo xtask setup`.
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

fn build() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=CREDWATCH_TOOLS");
    let tc = toolchain::select().map_err(|why| {
        anyhow!(
            "cannot build the eBPF programs: {why}.\n\
             Run `cargo xtask setup` once: it installs rust-src and a bpf-linker built against \
             the toolchain's own LLVM."
        )
    })?;
    println!("cargo:rerun-if-changed={}", tc.linker().display());

    // aya-build runs `rustup run <toolchain> cargo build` with our environment: put our linker
    // first on PATH and, on a stable toolchain, allow -Z build-std.
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![tc.linker_root().join("bin")];
    dirs.extend(std::env::split_paths(&path));
    // SAFETY: build scripts are single-threaded at this point.
    unsafe {
        std::env::set_var("PATH", std::env::join_paths(dirs)?);
        if tc.needs_bootstrap {
            std::env::set_var("RUSTC_BOOTSTRAP", "1");
        }
    }

    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let probes = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "credwatch-probes")
        .ok_or_else(|| anyhow!("credwatch-probes package not found"))?;
    let root_dir = probes
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no probes dir"))?;
    let package = aya_build::Package {
        name: probes.name.as_str(),
        root_dir: root_dir.as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::Custom(&tc.name))
}
