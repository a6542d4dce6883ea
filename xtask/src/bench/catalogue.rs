//! The catalogue-size sweep: the file programs' kernel time per non-credential open with a
//! catalogue of 10 and of 1,000 path patterns. The cheap checks before the path walk must not
//! grow with the catalogue (they are trie and hash lookups, not a pass over the patterns).

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Result;

use super::{load, median, run_loop, start_tracer};

const SIZES: [usize; 2] = [10, 1000];

pub fn catalogue_sizes(
    agent: &Path,
    openloop: &Path,
    target: &Path,
    iterations: u64,
    rounds: u32,
) -> Result<()> {
    let dirs: Vec<PathBuf> = SIZES
        .iter()
        .map(|n| write_catalogue(*n))
        .collect::<Result<_>>()?;
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); SIZES.len()];
    for round in 1..=rounds {
        for (i, dir) in dirs.iter().enumerate() {
            let config = format!("credwatch-policies={}", dir.display());
            let tracer = start_tracer(&config, agent)?.expect("an agent");
            let (ns0, _) = load::programs_of(tracer.id())?;
            run_loop(
                Command::new(openloop)
                    .arg(target)
                    .arg(iterations.to_string()),
            )?;
            let (ns1, _) = load::programs_of(tracer.id())?;
            drop(tracer);
            let per_open = (ns1 - ns0) as f64 / iterations as f64;
            println!(
                "round {round}/{rounds}: {:>5} patterns: programs {per_open:.1} ns/open",
                SIZES[i]
            );
            results[i].push(per_open);
        }
    }
    println!();
    println!(
        "the file programs' run time per non-credential open by catalogue size, median of {rounds} rounds"
    );
    println!("| path patterns | program ns per open | vs 10 patterns |");
    println!("|---:|---:|---:|");
    let first = median(&mut results[0]);
    for (n, r) in SIZES.iter().zip(results.iter_mut()) {
        let ns = median(r);
        println!("| {n} | {ns:.1} | {:.2}x |", ns / first);
    }
    Ok(())
}

/// A catalogue of `n` path patterns, half suffix-keyed (`**/.toolN/credentialsN`) and half
/// prefix-keyed (`/srv/appN/secrets/**`), in a policy directory of its own.
fn write_catalogue(n: usize) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("credwatch-bench/catalogue-{n}"));
    std::fs::create_dir_all(&dir)?;
    let mut yaml = String::from(
        "apiVersion: credwatch.dev/v1alpha1\nkind: CredentialCatalog\nmetadata:\n  name: sweep\nspec:\n  files:\n",
    );
    for i in 0..n {
        let pattern = if i % 2 == 0 {
            format!("**/.tool{i}/credentials{i}")
        } else {
            format!("/srv/app{i}/secrets/**")
        };
        writeln!(yaml, "    - name: entry-{i}\n      paths: [\"{pattern}\"]")?;
    }
    std::fs::write(dir.join("catalog.yaml"), yaml)?;
    Ok(dir)
}
