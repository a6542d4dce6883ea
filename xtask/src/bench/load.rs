//! The loads that decide whether credwatch loses anything, and what its programs cost in the
//! kernel: a flood of one credential access, a sweep of distinct credential files, and the
//! programs' own run time (`kernel.bpf_stats_enabled`, from the program fds' fdinfo).

use std::{
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{start_tracer, stop};

/// Where the logged agent's metrics are served during the loads.
pub const METRICS_ADDR: &str = "127.0.0.1:9759";
const FLOOD_OPENS: u64 = 1_000_000;
const SWEEP_FILES: u64 = 20_000;
/// How long the agent may take to write what a load caused.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

/// Turns on the kernel's per-program run-time accounting for as long as it lives.
pub struct BpfStats {
    before: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    pub fn enable() -> Result<Self> {
        let before = std::fs::read_to_string(BPF_STATS).context(BPF_STATS)?;
        std::fs::write(BPF_STATS, "1").context(BPF_STATS)?;
        Ok(BpfStats { before })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, self.before.trim());
    }
}

/// Total run time (ns) and runs of the BPF programs that process `pid` holds, from the
/// `run_time_ns`/`run_cnt` lines the kernel adds to a program fd's fdinfo while
/// `kernel.bpf_stats_enabled` is on (each program once, however many fds it has).
pub fn programs_of(pid: u32) -> Result<(u64, u64)> {
    let mut seen = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))?.flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let (Some(id), Some(ns), Some(runs)) =
            (field("prog_id:"), field("run_time_ns:"), field("run_cnt:"))
        {
            seen.insert(id, (ns, runs));
        }
    }
    Ok(seen
        .values()
        .fold((0, 0), |(ns, runs), (n, r)| (ns + n, runs + r)))
}

/// CPU time (user + system) a process has used, in seconds.
pub(super) fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at state (field 3).
    let rest = &stat[stat.rfind(')').context("stat")? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks as f64 / hz)
}

pub(super) fn metric(name: &str) -> Result<f64> {
    let mut stream = std::net::TcpStream::connect(METRICS_ADDR)?;
    write!(
        stream,
        "GET /metrics HTTP/1.0\r\nHost: {METRICS_ADDR}\r\n\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

fn lost() -> Result<f64> {
    metric("credwatch_events_lost_total")
}

/// (records, accesses they stand for) in the log for paths under `dir`.
fn logged(log: &Path, dir: &str) -> (u64, u64) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let complete = &text[..text.rfind('\n').map_or(0, |e| e + 1)];
    let mut out = (0, 0);
    for line in complete.lines() {
        let Ok(record) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if record["file"]["path"]
            .as_str()
            .is_some_and(|p| p.starts_with(dir))
        {
            out.0 += 1;
            out.1 += record["count"].as_u64().unwrap_or(1);
        }
    }
    out
}

/// Waits until the log accounts for `want` accesses under `dir`; returns what it holds and
/// when it got there.
fn wait_logged(log: &Path, dir: &str, want: u64) -> ((u64, u64), Instant) {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let now = logged(log, dir);
        if now.1 >= want || Instant::now() > deadline {
            return (now, Instant::now());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The agent that writes its log, for the loads.
pub fn logged_agent_log(work: &Path) -> PathBuf {
    work.join("bench.log")
}

/// The catalogue and a footprint that selects the host, so the loads' host processes are
/// judged and written (without one they are not reported at all).
pub fn policies(work: &Path) -> Result<PathBuf> {
    let dir = work.join("policies");
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(
        crate::workspace_root().join("policies/catalog.yaml"),
        dir.join("catalog.yaml"),
    )?;
    std::fs::write(
        dir.join("bench-host.yaml"),
        "apiVersion: credwatch.dev/v1alpha1\nkind: SecretFootprint\nmetadata: {name: bench-host}\n\
         spec:\n  selector: {host: true}\n  action: log\n  allow:\n\
         \x20   - secret: kubeconfig\n      binaries: [/usr/bin/kubelet]\n",
    )?;
    Ok(dir)
}

pub fn loads(agent: &Path, openloop: &Path, sweep: &Path, work: &Path) -> Result<()> {
    let log = logged_agent_log(work);
    let _ = std::fs::remove_file(&log);
    // Catalogue matches (`**/.ssh/id_rsa`) the agent does not know by inode: every open is
    // decided by its path in the kernel.
    let flood_dir = work.join("flood");
    let flood_file = flood_dir.join("d0/.ssh/id_rsa");
    std::fs::create_dir_all(flood_file.parent().unwrap())?;
    std::fs::write(&flood_file, "bench")?;
    let sweep_dir = work.join("sweep");
    for i in 0..SWEEP_FILES {
        let ssh = sweep_dir.join(format!("d{i}/.ssh"));
        std::fs::create_dir_all(&ssh)?;
        std::fs::write(ssh.join("id_rsa"), "bench")?;
    }
    let tracer = start_tracer("credwatch-logged", agent)?.context("agent")?;
    let pid = tracer.id();
    let result = (|| -> Result<()> {
        // A flood: one process opening one credential file as fast as it can.
        let (lost0, cpu0) = (lost()?, cpu_seconds(pid)?);
        let started = Instant::now();
        let out = Command::new(openloop)
            .arg(&flood_file)
            .arg(FLOOD_OPENS.to_string())
            .output()?;
        let ns: f64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
        let dir = flood_dir.to_string_lossy();
        let ((records, accesses), done) = wait_logged(&log, &dir, FLOOD_OPENS);
        let (lost1, cpu1) = (lost()?, cpu_seconds(pid)?);
        println!();
        println!("flood: {FLOOD_OPENS} opens of one credential file by one process");
        println!("| opens/s | records | accesses accounted | lost | agent CPU | accounted after |");
        println!("|---:|---:|---:|---:|---:|---:|");
        println!(
            "| {:.0} | {records} | {accesses} | {} | {:.2} s | {:.1} s |",
            1e9 / ns,
            lost1 - lost0,
            cpu1 - cpu0,
            (done - started).as_secs_f64()
        );

        // A sweep: one process opening thousands of distinct credential files once each.
        let (lost0, cpu0) = (lost()?, cpu_seconds(pid)?);
        let started = Instant::now();
        let out = Command::new(sweep)
            .arg(&sweep_dir)
            .arg(SWEEP_FILES.to_string())
            .output()?;
        let ns: f64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
        let dir = sweep_dir.to_string_lossy();
        let ((records, _), done) = wait_logged(&log, &dir, SWEEP_FILES);
        let (lost1, cpu1) = (lost()?, cpu_seconds(pid)?);
        let cpu = cpu1 - cpu0;
        println!();
        println!("sweep: {SWEEP_FILES} distinct credential files opened once each by one process");
        println!(
            "| sweep took | records | lost | drained after | agent CPU | records per agent CPU second |"
        );
        println!("|---:|---:|---:|---:|---:|---:|");
        println!(
            "| {:.0} ms | {records} | {} | {:.1} s | {cpu:.2} s | {:.0} |",
            ns * SWEEP_FILES as f64 / 1e6,
            lost1 - lost0,
            (done - started).as_secs_f64(),
            records as f64 / cpu.max(0.01)
        );
        Ok(())
    })();
    stop(tracer);
    result
}
