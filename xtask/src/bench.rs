//! `cargo xtask bench`: the cost of watching file opens, against no tracer and two common
//! tracers, and of watching connects, measured in one run with the configurations interleaved
//! (these machines are noisy, so only ratios against the same run's baseline mean anything).

use std::{
    io::{BufRead as _, BufReader, Read},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{Profile, build_agent, cargo, is_root, setup, status, workspace_root};

mod audit;
mod catalogue;
mod egress;
mod fleet;
mod load;

const CONFIGS: [&str; 4] = ["baseline", "credwatch", "opensnoop", "bpftrace"];
/// Connects and io_uring requests: the comparison tracers watch opens only, so just with and
/// without credwatch.
const CONNECT_CONFIGS: [&str; 2] = ["baseline", "credwatch"];
/// Connects per round (each is a socket, a connect and a close: slower than an open).
const CONNECT_ITERATIONS: u64 = 200_000;
/// io_uring NOPs per round (submitted and waited for one at a time).
const URING_ITERATIONS: u64 = 1_000_000;
/// The floor for a tracer of opens: an empty program on entry and on exit.
const BPFTRACE_PROGRAM: &str =
    "tracepoint:syscalls:sys_enter_openat {} tracepoint:syscalls:sys_exit_openat {}";

/// One part of the benchmark alone, or all of it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Only {
    All,
    Egress,
    Catalogue,
    Fleet,
}

pub fn bench(iterations: u64, rounds: u32, only: Only) -> Result<()> {
    if !is_root() {
        bail!("the benchmark loads eBPF programs: run it as root");
    }
    setup::setup()?;
    ensure_debian_packages(&[
        ("opensnoop", "libbpf-tools"),
        ("bpftrace", "bpftrace"),
        // the packet programs' run time (egress) is read with `bpftool prog show`
        ("bpftool", "bpftool"),
    ])?;
    let _stats = load::BpfStats::enable()?;
    let agent = build_agent(Profile::Release)?;
    if only == Only::Egress {
        return egress::egress(&agent, rounds);
    }
    status(cargo().args([
        "build",
        "--release",
        "-p",
        "credwatch-tests",
        "--bin",
        "credwatch-openloop",
        "--bin",
        "credwatch-connectloop",
        "--bin",
        "credwatch-uringloop",
        "--bin",
        "credwatch-sweep",
        "--bin",
        "credwatch-mkimage",
        "--bin",
        "credwatch-fleet",
    ]))?;
    let fleet_bin = workspace_root().join("target/release/credwatch-fleet");
    let sweep = workspace_root().join("target/release/credwatch-sweep");
    let connectloop = workspace_root().join("target/release/credwatch-connectloop");
    let uringloop = workspace_root().join("target/release/credwatch-uringloop");
    let openloop = workspace_root().join("target/release/credwatch-openloop");
    let dir = std::env::temp_dir().join("credwatch-bench");
    std::fs::create_dir_all(&dir)?;
    let target = dir.join("not-a-credential.txt");
    std::fs::write(&target, b"benchmark\n")?;
    if only == Only::Catalogue {
        return catalogue::catalogue_sizes(&agent, &openloop, &target, iterations, rounds);
    }
    if only == Only::Fleet {
        return fleet::fleet(&agent, &fleet_bin, &dir);
    }

    let mut results: Vec<Vec<f64>> = vec![Vec::new(); CONFIGS.len()];
    // The tracers' programs' own run time per open, as the kernel counts it.
    let mut kernel_results: Vec<Vec<f64>> = vec![Vec::new(); CONFIGS.len() - 1];
    let mut connect_results: Vec<Vec<f64>> = vec![Vec::new(); CONNECT_CONFIGS.len()];
    let mut uring_results: Vec<Vec<f64>> = vec![Vec::new(); CONNECT_CONFIGS.len()];
    for round in 1..=rounds {
        for (i, config) in CONFIGS.iter().enumerate() {
            let tracer = start_tracer(config, &agent)?;
            let before = match &tracer {
                Some(t) => Some(load::programs_of(t.id())?),
                None => None,
            };
            let ns = run_loop(
                Command::new(&openloop)
                    .arg(&target)
                    .arg(iterations.to_string()),
            )?;
            let mut kernel = String::new();
            if let (Some(tracer), Some((ns0, _))) = (&tracer, before) {
                let (ns1, _) = load::programs_of(tracer.id())?;
                let per_open = (ns1 - ns0) as f64 / iterations as f64;
                kernel = format!(", programs {per_open:.1} ns/open");
                kernel_results[i - 1].push(per_open);
            }
            if let Some(tracer) = tracer {
                stop(tracer);
            }
            println!("round {round}/{rounds}: {config:<10} {ns:>8.1} ns/open{kernel}");
            results[i].push(ns);
        }
        for (i, config) in CONNECT_CONFIGS.iter().enumerate() {
            let tracer = start_tracer(config, &agent)?;
            let ns = run_loop(Command::new(&connectloop).arg(CONNECT_ITERATIONS.to_string()))?;
            if let Some(tracer) = tracer {
                stop(tracer);
            }
            println!("round {round}/{rounds}: {config:<10} {ns:>8.1} ns/connect");
            connect_results[i].push(ns);
            let tracer = start_tracer(config, &agent)?;
            let ns = run_loop(Command::new(&uringloop).arg(URING_ITERATIONS.to_string()))?;
            if let Some(tracer) = tracer {
                stop(tracer);
            }
            println!("round {round}/{rounds}: {config:<10} {ns:>8.1} ns/io_uring NOP");
            uring_results[i].push(ns);
        }
    }

    println!();
    println!(
        "open+close of a non-credential file, {iterations} iterations, median of {rounds} interleaved rounds"
    );
    print_table("ns per open", &CONFIGS, &mut results);
    println!();
    println!(
        "the tracers' programs' run time per open (kernel.bpf_stats_enabled), median of {rounds} rounds, against bpftrace's empty enter+exit pair"
    );
    let mut kernel_configs = vec!["bpftrace"];
    kernel_configs.extend(&CONFIGS[1..CONFIGS.len() - 1]);
    let mut kernel_table = vec![kernel_results[CONFIGS.len() - 2].clone()];
    kernel_table.extend(kernel_results[..CONFIGS.len() - 2].iter().cloned());
    print_table("program ns per open", &kernel_configs, &mut kernel_table);
    println!();
    catalogue::catalogue_sizes(&agent, &openloop, &target, iterations, rounds)?;
    println!();
    println!(
        "UDP socket+connect+close to 127.0.0.1:9 (not an endpoint), {CONNECT_ITERATIONS} iterations, median of {rounds} interleaved rounds"
    );
    print_table("ns per connect", &CONNECT_CONFIGS, &mut connect_results);
    println!();
    println!(
        "io_uring NOP submitted and waited for, {URING_ITERATIONS} iterations, median of {rounds} interleaved rounds"
    );
    print_table("ns per NOP", &CONNECT_CONFIGS, &mut uring_results);
    egress::egress(&agent, rounds)?;
    load::loads(&agent, &openloop, &sweep, &dir)?;
    fleet::fleet(&agent, &fleet_bin, &dir)?;
    println!();
    let mkimage = workspace_root().join("target/release/credwatch-mkimage");
    audit::audit(&agent, &mkimage, &dir, rounds)
}

/// A Markdown table of medians and ratios against the first configuration (the baseline).
pub(crate) fn print_table(unit: &str, configs: &[&str], results: &mut [Vec<f64>]) {
    let medians: Vec<f64> = results.iter_mut().map(|r| median(r)).collect();
    let baseline = medians[0];
    println!("| configuration | {unit} | vs baseline |");
    println!("|---|---:|---:|");
    for (config, ns) in configs.iter().zip(&medians) {
        let ratio = ns / baseline;
        println!(
            "| {config} | {ns:.1} | {ratio:.2}x ({:+.1}%) |",
            (ratio - 1.0) * 100.0
        );
    }
}

/// Runs a load loop; it prints the mean ns per operation.
pub(crate) fn run_loop(cmd: &mut Command) -> Result<f64> {
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("load loop failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("parsing the load loop's result")
}

/// Starts a tracer and returns once it is attached.
/// A running tracer, stopped when dropped: a measurement that fails part-way (a missing tool, a
/// program that did not run) must not leave it attached to skew every later measurement.
pub(crate) struct Tracer(Option<Child>);

impl Tracer {
    pub(crate) fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Some(child) = self.0.take() {
            stop_child(child);
        }
    }
}

pub(crate) fn stop(tracer: Tracer) {
    drop(tracer);
}

pub(crate) fn start_tracer(config: &str, agent: &Path) -> Result<Option<Tracer>> {
    let (mut cmd, ready_marker, from_stderr) = match config {
        "baseline" => return Ok(None),
        "credwatch" => {
            let mut cmd = Command::new(agent);
            cmd.args(["run", "--log", "/dev/null", "--metrics-addr", "127.0.0.1:0"])
                .current_dir(workspace_root())
                .env("RUST_LOG", "warn");
            (cmd, "credwatch: ready", true)
        }
        // The agent with another policy directory (the catalogue-size sweep).
        c if c.starts_with("credwatch-policies=") => {
            let mut cmd = Command::new(agent);
            cmd.args(["run", "--log", "/dev/null", "--metrics-addr", "127.0.0.1:0"])
                .arg("--policies")
                .arg(&c["credwatch-policies=".len()..])
                .current_dir(workspace_root())
                .env("RUST_LOG", "warn");
            (cmd, "credwatch: ready", true)
        }
        // The agent writing a real log, for the loads (see `load.rs`).
        "credwatch-logged" => {
            let mut cmd = Command::new(agent);
            let work = std::env::temp_dir().join("credwatch-bench");
            cmd.arg("run")
                .arg("--log")
                .arg(load::logged_agent_log(&work))
                .arg("--policies")
                .arg(load::policies(&work)?)
                // The loads measure what the pipeline keeps up with: no per-container budget.
                .args(["--container-records-per-sec", "0"])
                .args(["--metrics-addr", load::METRICS_ADDR])
                .current_dir(workspace_root())
                .env("RUST_LOG", "warn");
            (cmd, "credwatch: ready", true)
        }
        // stdbuf: opensnoop block-buffers stdout into a pipe, which would hide its ready header.
        "opensnoop" => {
            let mut cmd = Command::new("stdbuf");
            cmd.args(["-oL", "opensnoop"]);
            (cmd, "PID", false)
        }
        "bpftrace" => {
            let mut cmd = Command::new("bpftrace");
            cmd.args(["-e", BPFTRACE_PROGRAM]);
            (cmd, "Attaching", false)
        }
        other => bail!("unknown configuration {other}"),
    };
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {config}"))?;
    let (stdout, stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let mut tracer = Tracer(Some(child));
    let (watched, other): (Box<dyn Read + Send>, Box<dyn Read + Send>) = if from_stderr {
        (Box::new(stderr), Box::new(stdout))
    } else {
        (Box::new(stdout), Box::new(stderr))
    };
    drain(other);
    let (tx, rx) = std::sync::mpsc::channel();
    let marker = ready_marker.to_string();
    thread::spawn(move || {
        let mut reader = BufReader::new(watched);
        let mut line = String::new();
        let mut signalled = false;
        // Keep reading to the end so the tracer never blocks on a full pipe.
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            if !signalled && line.contains(&marker) {
                let _ = tx.send(());
                signalled = true;
            }
            line.clear();
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if rx.recv_timeout(Duration::from_millis(200)).is_ok() {
            // Give the tracer's reader a moment to settle into its poll loop.
            thread::sleep(Duration::from_millis(500));
            return Ok(Some(tracer));
        }
        let exited = tracer.0.as_mut().expect("running").try_wait()?;
        if let Some(exit) = exited {
            tracer.0 = None; // reaped: nothing to stop (its pid may be another's by now)
            bail!("{config} exited before it was ready: {exit}");
        }
    }
    bail!("{config} was not ready within 60 s")
}

fn drain(stream: Box<dyn Read + Send>) {
    thread::spawn(move || {
        let _ = std::io::copy(&mut BufReader::new(stream), &mut std::io::sink());
    });
}

fn stop_child(mut child: Child) {
    // SIGINT: each tracer's normal way to detach and exit.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// Installs missing Debian packages (the benchmark's comparison tracers).
pub fn ensure_debian_packages(wanted: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(binary, _)| !on_path(binary))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("xtask: installing Debian packages: {}", missing.join(" "));
    status(Command::new("apt-get").arg("update").arg("-q"))?;
    status(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn on_path(binary: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| is_executable(&d.join(binary))))
        .unwrap_or(false)
}

fn is_executable(path: &Path) -> bool {
    path.is_file()
}
