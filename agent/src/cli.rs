//! Command line (docs/contract.md). Exit codes: 0 ok, 1 runtime failure, 2 bad usage or invalid policies.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::{policy, run};

#[derive(Parser)]
#[command(
    name = "credwatch",
    version,
    about = "Catches credential theft inside containers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the probes and report credential accesses.
    Run(run::RunOptions),
    /// Validate a policy directory.
    Check {
        #[arg(long, default_value = "./policies")]
        policies: PathBuf,
    },
    /// Re-judge recorded accesses (a forensic log) against a policy directory, without eBPF.
    Replay {
        #[arg(long, default_value = "./policies")]
        policies: PathBuf,
        /// A forensic log (JSON lines).
        file: PathBuf,
    },
    /// Write footprints from observed credential access (forensic logs, or --live).
    Learn(crate::learn::LearnOptions),
    /// Find credentials baked into images (OCI layouts, OCI and docker save archives).
    AuditImage(crate::audit::AuditOptions),
    /// Print the version.
    Version,
}

pub use crate::error::UsageError;

pub fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .target(env_logger::Target::Stderr)
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match cli.command {
        Command::Run(options) => run::run(options),
        Command::Check { policies } => check(&policies),
        Command::Replay { policies, file } => crate::replay::replay(&policies, &file),
        Command::Learn(options) => match crate::learn::learn(options) {
            // `--check` found accesses the footprints do not cover.
            Ok(false) => return ExitCode::from(1),
            other => other.map(|_| ()),
        },
        Command::AuditImage(options) => match crate::audit::audit(options) {
            Ok(0) => Ok(()),
            Ok(code) => return ExitCode::from(code),
            Err(err) => Err(err),
        },
        Command::Version => {
            println!("credwatch {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.is::<UsageError>() => {
            eprintln!("credwatch: {err}");
            ExitCode::from(2)
        }
        Err(err) => {
            eprintln!("credwatch: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn check(dir: &std::path::Path) -> anyhow::Result<()> {
    match policy::load_dir(dir) {
        Ok(set) => {
            println!(
                "{}: ok: {} document(s) in {} file(s), {} catalogue file entries",
                dir.display(),
                set.documents,
                set.files,
                set.catalog.files.len()
            );
            Ok(())
        }
        Err(problems) => {
            for p in &problems {
                println!("{p}");
            }
            Err(UsageError(format!(
                "{} problem(s) in {}",
                problems.len(),
                dir.display()
            ))
            .into())
        }
    }
}
