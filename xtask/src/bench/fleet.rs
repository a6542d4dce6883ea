//! The agent beside hundreds of running containers: its memory, its CPU when nothing happens
//! (the secret search of every container's filesystem every 10 s, the runtime look-ups, the
//! sweeps) and how long a credential access takes to reach the log while all that runs —
//! each measured with no containers and with `FLEET` running ones, in the same run.

use std::{
    io::{BufRead as _, BufReader, Read as _, Seek as _, SeekFrom},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    load::{cpu_seconds, logged_agent_log, metric},
    median, start_tracer, stop,
};

/// Running containers (busybox `sleep`, one secret each).
const FLEET: usize = 300;
/// Credential opens timed per phase, one every `SPACING`: together longer than a secret
/// search's period (10 s), so some of them meet a search.
const SAMPLES: usize = 60;
const SPACING: Duration = Duration::from_millis(250);
/// How long the agent's idle CPU is measured.
const IDLE: Duration = Duration::from_secs(30);
/// A record not in the log by then counts as this late (and is reported as missing).
const RECORD_TIMEOUT: Duration = Duration::from_secs(10);

struct Phase {
    rss_kib: u64,
    idle_cpu_percent: f64,
    /// Milliseconds from just before the open to the record's line in the log.
    latencies_ms: Vec<f64>,
    missing: usize,
}

pub fn fleet(agent: &Path, fleet_bin: &Path, work: &Path) -> Result<()> {
    let log = logged_agent_log(work);
    let _ = std::fs::remove_file(&log);
    let tracer = start_tracer("credwatch-logged", agent)?.context("agent")?;
    let pid = tracer.id();
    let result = (|| -> Result<(Phase, Phase)> {
        let quiet = phase(pid, &log, work, "none")?;
        let mut fleet = Command::new(fleet_bin)
            .arg(FLEET.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the container fleet")?;
        let started = Instant::now();
        let mut ready = String::new();
        BufReader::new(fleet.stdout.take().context("fleet stdout")?).read_line(&mut ready)?;
        let busy = (|| -> Result<Phase> {
            if ready.trim() != "ready" {
                bail!("the fleet of {FLEET} containers did not start");
            }
            println!(
                "fleet: {FLEET} containers running after {:.0} s",
                started.elapsed().as_secs_f64()
            );
            // The agent knows them all, and its secret search has found each one's secret.
            let deadline = Instant::now() + Duration::from_secs(120);
            while metric("credwatch_containers")? < FLEET as f64 {
                if Instant::now() > deadline {
                    bail!("the agent did not see {FLEET} containers within 120 s");
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            while metric("credwatch_secret_files")? < FLEET as f64 {
                if Instant::now() > deadline {
                    bail!(
                        "the agent's secret search did not find the fleet's {FLEET} secrets within 120 s"
                    );
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            phase(pid, &log, work, "fleet")
        })();
        drop(fleet.stdin.take()); // the fleet removes its containers
        let _ = fleet.wait();
        Ok((quiet, busy?))
    })();
    stop(tracer);
    let (quiet, busy) = result?;
    println!();
    println!(
        "agent with running containers: RSS, idle CPU ({} s), record latency ({SAMPLES} credential opens, one every {} ms)",
        IDLE.as_secs(),
        SPACING.as_millis()
    );
    println!(
        "| running containers | agent RSS | idle CPU (% of a core) | latency p50 | p99 | max | missing |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for (containers, p) in [(0, &quiet), (FLEET, &busy)] {
        let mut sorted = p.latencies_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
        println!(
            "| {containers} | {:.1} MiB | {:.2} % | {:.1} ms | {:.1} ms | {:.1} ms | {} |",
            p.rss_kib as f64 / 1024.0,
            p.idle_cpu_percent,
            at(0.5),
            at(0.99),
            at(1.0),
            p.missing
        );
    }
    println!(
        "ratios (with {FLEET} / none): RSS {:.2}x, latency p50 {:.2}x",
        busy.rss_kib as f64 / quiet.rss_kib.max(1) as f64,
        median(&mut busy.latencies_ms.clone()) / median(&mut quiet.latencies_ms.clone()).max(0.001)
    );
    Ok(())
}

/// Record latency first (the opens cost the agent CPU), then idle CPU and RSS.
fn phase(pid: u32, log: &Path, work: &Path, name: &str) -> Result<Phase> {
    let dir = work.join("latency").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    let files: Vec<_> = (0..SAMPLES)
        .map(|k| dir.join(format!("d{k}/.ssh/id_rsa")))
        .collect();
    for file in &files {
        std::fs::create_dir_all(file.parent().unwrap())?;
        std::fs::write(file, "bench")?;
    }
    let mut tail = LogTail::new(log)?;
    let mut latencies_ms = Vec::new();
    let mut missing = 0;
    for file in &files {
        let wanted = file.to_string_lossy().into_owned();
        let opened = Instant::now();
        drop(std::fs::File::open(file)?);
        loop {
            if tail.contains(&wanted)? {
                latencies_ms.push(opened.elapsed().as_secs_f64() * 1e3);
                break;
            }
            if opened.elapsed() > RECORD_TIMEOUT {
                latencies_ms.push(RECORD_TIMEOUT.as_secs_f64() * 1e3);
                missing += 1;
                break;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        std::thread::sleep(SPACING.saturating_sub(opened.elapsed()));
    }
    let cpu0 = cpu_seconds(pid)?;
    std::thread::sleep(IDLE);
    let idle_cpu_percent = (cpu_seconds(pid)? - cpu0) / IDLE.as_secs_f64() * 100.0;
    Ok(Phase {
        rss_kib: rss_kib(pid)?,
        idle_cpu_percent,
        latencies_ms,
        missing,
    })
}

/// VmRSS of a process, KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")
}

/// Reads what the agent appends to its log, and finds the complete lines that name a path.
struct LogTail {
    file: std::fs::File,
    offset: u64,
    partial: Vec<u8>,
    seen: Vec<String>,
}

impl LogTail {
    fn new(log: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .open(log)
            .with_context(|| log.display().to_string())?;
        let offset = file.metadata()?.len();
        Ok(LogTail {
            file,
            offset,
            partial: Vec::new(),
            seen: Vec::new(),
        })
    }

    fn contains(&mut self, path: &str) -> Result<bool> {
        self.file.seek(SeekFrom::Start(self.offset))?;
        let mut new = Vec::new();
        self.offset += self.file.read_to_end(&mut new)? as u64;
        self.partial.extend_from_slice(&new);
        if let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') {
            let complete: Vec<u8> = self.partial.drain(..=end).collect();
            let text = String::from_utf8_lossy(&complete);
            self.seen.extend(text.lines().map(str::to_string));
        }
        let quoted = format!("\"{path}\"");
        Ok(self.seen.iter().any(|line| line.contains(&quoted)))
    }
}
