//! `audit-image` throughput: a generated image of about 1 GiB of layer data (gzip layers, as
//! registries serve them), audited in rounds interleaved with the floor every audit pays,
//! decompressing the same layers (`gzip -dc` to /dev/null). Reported per CPU-second (the audit
//! is one thread), with the audit's peak RSS.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use super::median;
use crate::workspace_root;

const IMAGE_MIB: u64 = 1024;

/// CPU seconds and peak RSS (KiB) of one child process, from its own rusage.
fn measured(cmd: &mut Command) -> Result<(f64, u64)> {
    let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    if waited < 0 {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    // audit-image exits 1 on findings (the image has one planted): only a crash or 2/3 fail.
    let code = libc::WEXITSTATUS(status);
    if !libc::WIFEXITED(status) || code >= 2 {
        bail!("{cmd:?} exited with status {status:#x}");
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok((
        seconds(usage.ru_utime) + seconds(usage.ru_stime),
        usage.ru_maxrss as u64,
    ))
}

pub fn audit(agent: &Path, mkimage: &Path, work: &Path, rounds: u32) -> Result<()> {
    let image = work.join("audit-image-1g");
    let bytes_file = image.join("layer-bytes");
    if !bytes_file.exists() {
        let _ = std::fs::remove_dir_all(&image);
        let out = Command::new(mkimage)
            .arg(&image)
            .arg(IMAGE_MIB.to_string())
            .output()
            .context("generating the benchmark image")?;
        if !out.status.success() {
            bail!(
                "credwatch-mkimage: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::fs::write(&bytes_file, String::from_utf8_lossy(&out.stdout).trim())?;
    }
    let layer_bytes: f64 = std::fs::read_to_string(&bytes_file)?.trim().parse()?;
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(image.join("index.json"))?)?;
    let manifest_digest = index["manifests"][0]["digest"].as_str().context("index")?;
    let blob = |digest: &str| image.join("blobs/sha256").join(&digest[7..]);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(manifest_digest))?)?;
    let layers: Vec<_> = manifest["layers"]
        .as_array()
        .context("manifest")?
        .iter()
        .map(|l| blob(l["digest"].as_str().unwrap_or_default()))
        .collect();

    let (mut floor, mut audit, mut rss) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let (cpu, _) = measured(Command::new("gzip").arg("-dc").args(&layers))?;
        floor.push(cpu);
        let (cpu, peak) = measured(
            Command::new(agent)
                .args(["audit-image", "--format", "json", "--policies"])
                .arg(workspace_root().join("policies"))
                .arg(&image),
        )?;
        audit.push(cpu);
        rss.push(peak as f64);
        println!(
            "round {round}/{rounds}: gzip -dc {:.2} s CPU, audit-image {cpu:.2} s CPU, peak RSS {} MiB",
            floor[floor.len() - 1],
            peak / 1024
        );
    }
    let (floor, audit, rss) = (median(&mut floor), median(&mut audit), median(&mut rss));
    let mb = layer_bytes / 1e6;
    println!();
    println!(
        "audit-image of a generated {:.0} MB image (8 gzip layers, 8k files), median of {rounds} interleaved rounds",
        mb
    );
    println!("| | CPU | MB/s per core | ratio | peak RSS |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| gzip -dc (decompression floor) | {floor:.2} s | {:.0} | 1.00x | |",
        mb / floor
    );
    println!(
        "| credwatch audit-image | {audit:.2} s | {:.0} | {:.2}x | {:.0} MiB |",
        mb / audit,
        audit / floor,
        rss / 1024.0
    );
    Ok(())
}
