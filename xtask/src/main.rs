//! `cargo xtask setup|run|test|bench`: the one entry point for building, running and testing.

mod bench;
mod setup;
mod toolchain;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install and check the eBPF toolchain (rust-src, bpf-linker on the toolchain's LLVM).
    Setup,
    /// Setup, build, and run `credwatch run <ARGS>` as root.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup, unit tests, then the privileged end-to-end suite in tests/ (as root).
    Test {
        /// Extra arguments for the privileged test binary (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measure probe overhead against no tracer, opensnoop and bpftrace in one run.
    Bench {
        /// open+close iterations per measurement.
        #[arg(long, default_value_t = 1_000_000)]
        iterations: u64,
        /// Rounds; each round measures every configuration once, interleaved.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Only the packet program's cost per packet (`egress`), not the whole run.
        #[arg(long)]
        only_egress: bool,
        /// Only the file programs' cost by catalogue size (10 and 1,000 path patterns).
        #[arg(long)]
        only_catalogue: bool,
        /// Only the agent with hundreds of running containers (RSS, idle CPU, record latency).
        #[arg(long)]
        only_fleet: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Setup => setup::setup().map(|_| ()),
        Task::Run { args } => run(&args),
        Task::Test { args } => test(&args),
        Task::Bench {
            iterations,
            rounds,
            only_egress,
            only_catalogue,
            only_fleet,
        } => {
            let only = match (only_egress, only_catalogue, only_fleet) {
                (true, _, _) => bench::Only::Egress,
                (_, true, _) => bench::Only::Catalogue,
                (_, _, true) => bench::Only::Fleet,
                _ => bench::Only::All,
            };
            bench::bench(iterations, rounds, only)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

pub fn status(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Builds the agent and returns the binary's path.
pub fn build_agent(profile: Profile) -> Result<PathBuf> {
    status(cargo().args(["build", "-p", "credwatch", "--profile", profile.name()]))?;
    Ok(workspace_root()
        .join("target")
        .join(profile.dir())
        .join("credwatch"))
}

/// How the agent is built.
#[derive(Clone, Copy)]
pub enum Profile {
    /// What users run (`cargo xtask run`, the benchmarks, the image).
    Release,
    /// The release build with overflow checks and debug assertions on, for the end-to-end
    /// suite: the code users run, at the speed they run it (an unoptimised agent is ~30 times
    /// slower at writing records and fell behind the no-loss tests on a slow machine), with
    /// the checks that turn a silent bug into a failing test.
    EndToEnd,
}

impl Profile {
    fn name(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::EndToEnd => "e2e",
        }
    }

    fn dir(self) -> &'static str {
        self.name()
    }
}

/// Runs `program args` as root: directly when we are root, else through sudo.
fn as_root(program: &Path, args: &[String]) -> Command {
    if is_root() {
        let mut cmd = Command::new(program);
        cmd.args(args);
        cmd
    } else {
        eprintln!("xtask: not root; using sudo");
        let mut cmd = Command::new("sudo");
        cmd.arg("--preserve-env=CI,RUST_LOG,CREDWATCH_BIN")
            .arg(program)
            .args(args);
        cmd
    }
}

fn run(args: &[String]) -> Result<()> {
    setup::setup()?;
    let agent = build_agent(Profile::Release)?;
    let mut full = vec!["run".to_string()];
    full.extend(args.iter().cloned());
    status(as_root(&agent, &full).current_dir(workspace_root()))
}

fn test(args: &[String]) -> Result<()> {
    setup::setup()?;
    println!("xtask: unit tests");
    // The probes only build for the BPF target; the privileged suite runs below, as root.
    status(cargo().args([
        "test",
        "--workspace",
        "--exclude",
        "credwatch-probes",
        "--exclude",
        "credwatch-tests",
    ]))?;

    println!("xtask: privileged end-to-end tests");
    let agent = build_agent(Profile::EndToEnd)?;
    // Build the test binaries unprivileged, then run them as root.
    let out = cargo()
        .args([
            "test",
            "-p",
            "credwatch-tests",
            "--no-run",
            "--message-format=json",
        ])
        .output()
        .context("building the privileged tests")?;
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        bail!("building the privileged tests failed");
    }
    let binaries = test_executables(&out.stdout);
    if binaries.is_empty() {
        bail!("no privileged test binaries were built");
    }
    // SAFETY: single-threaded at this point.
    unsafe { std::env::set_var("CREDWATCH_BIN", &agent) };
    for binary in binaries {
        status(as_root(&binary, args).current_dir(workspace_root()))?;
    }
    Ok(())
}

/// Test executables from `cargo test --no-run --message-format=json` output.
fn test_executables(json_lines: &[u8]) -> Vec<PathBuf> {
    String::from_utf8_lossy(json_lines)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["profile"]["test"] == true)
        // Only the integration tests in tests/tests/: the helper binaries have no tests.
        .filter(|m| m["target"]["kind"][0] == "test")
        .filter_map(|m| m["executable"].as_str().map(PathBuf::from))
        .collect()
}
