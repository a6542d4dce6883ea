//! Harness for the privileged end-to-end tests: one real agent per test binary, real probes on
//! the running kernel, and helpers to act as a workload and read what the agent reported.
//!
//! There is no skip path: when the agent cannot load its eBPF programs (not root, no BTF, a
//! verifier rejection) every test fails with the agent's own error output.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Mutex, MutexGuard, OnceLock},
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod containerd;
pub mod netns;
pub mod python;
pub mod runc;

pub const READY_TIMEOUT: Duration = Duration::from_secs(120);
pub const RECORD_TIMEOUT: Duration = Duration::from_secs(15);

/// A running agent and the scratch tree it watches.
pub struct Agent {
    pub pid: u32,
    pub work: PathBuf,
    pub log: PathBuf,
    pub stderr: PathBuf,
    pub metrics_addr: String,
    /// The log's records parsed so far: each poll parses only what the agent wrote since (a
    /// test that waits on a log of tens of thousands of records must not take the CPU the
    /// agent needs).
    parsed: Mutex<ParsedLog>,
}

#[derive(Default)]
struct ParsedLog {
    /// Bytes of the log parsed (up to the last complete line).
    offset: u64,
    /// The last line parsed, with its newline (read again to see the log was not rewritten).
    last_line: Vec<u8>,
    records: Vec<Value>,
}

static AGENT: OnceLock<Agent> = OnceLock::new();

/// The agent for this test binary, started on first use. `prepare` runs once before it starts,
/// with the scratch directory, to create files that must exist when the agent scans for secret
/// inodes; it returns extra catalogue YAML (the `files:` entries) for this binary's tests.
/// `probe_mode` is passed as CREDWATCH_PROBE_MODE ("auto" or "enter-exit").
pub fn agent(prepare: fn(&Path) -> String, probe_mode: &str) -> &'static Agent {
    AGENT.get_or_init(|| start_agent(prepare, probe_mode))
}

fn start_agent(prepare: fn(&Path) -> String, probe_mode: &str) -> Agent {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the end-to-end tests load eBPF programs and must run as root: use `cargo xtask test`"
    );
    let bin = std::env::var("CREDWATCH_BIN")
        .expect("CREDWATCH_BIN must name the credwatch binary: use `cargo xtask test`");
    let work = std::env::temp_dir().join(format!("credwatch-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    // Traversable by the unprivileged uid some tests switch to.
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o755)).unwrap();
    let policies = work.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    std::fs::copy(
        repo.join("policies/catalog.yaml"),
        policies.join("catalog.yaml"),
    )
    .unwrap();
    // The suite's workloads run on the host too: a host footprint (with no allows) makes
    // their accesses deviations instead of ignored host activity.
    std::fs::write(
        policies.join("e2e-host.yaml"),
        "apiVersion: credwatch.dev/v1alpha1\nkind: SecretFootprint\nmetadata: {name: e2e-host}\nspec:\n  selector: {host: true}\n",
    )
    .unwrap();
    let extra = prepare(&work);
    std::fs::write(
        policies.join("e2e.yaml"),
        format!(
            "apiVersion: credwatch.dev/v1alpha1\nkind: CredentialCatalog\nmetadata:\n  name: e2e\nspec:\n  files:\n{extra}"
        ),
    )
    .unwrap();

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let log = work.join("forensic.jsonl");
    let stderr = work.join("agent.stderr");
    let mut cmd = Command::new(&bin);
    cmd.args(["run", "--policies"])
        .arg(&policies)
        .arg("--log")
        .arg(&log)
        .args(["--metrics-addr", &metrics_addr, "--node-name", "e2e-node"])
        // One file for the whole run: the tests read every record (rotation has unit tests).
        .args(["--log-max-bytes", "4294967296"])
        // The kernel programs' diagnostics of rare conditions, as an operator would turn
        // them on (asserted by the truncated-walk test).
        .args(["--kernel-log", "warn"])
        .env("CREDWATCH_PROBE_MODE", probe_mode)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap());
    // SAFETY: prctl is async-signal-safe. The agent dies with the thread that spawned it, which
    // is the keeper thread below that lives as long as the test process.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let (tx, rx) = std::sync::mpsc::channel::<Child>();
    std::thread::spawn(move || {
        let child = cmd.spawn().expect("spawning the agent");
        tx.send(child).unwrap();
        loop {
            std::thread::park();
        }
    });
    let mut child = rx.recv().unwrap();
    let pid = child.id();
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(&stderr).unwrap_or_default();
        if text.contains("credwatch: ready") {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the agent exited ({status}) before it was ready:\n{text}");
        }
        if Instant::now() > deadline {
            panic!("the agent was not ready after {READY_TIMEOUT:?}:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::mem::forget(child);
    Agent {
        pid,
        work,
        log,
        stderr,
        metrics_addr,
        parsed: Mutex::default(),
    }
}

impl Agent {
    /// All records so far.
    pub fn records(&self) -> Vec<Value> {
        self.parsed_log().records.clone()
    }

    /// The first record so far that matches `pred`.
    pub fn find_record(&self, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        self.parsed_log().records.iter().find(|r| pred(r)).cloned()
    }

    /// The log parsed up to its last complete line (the agent may be writing the next one).
    /// What was parsed is checked to still be there: a log rotated, or a batch the agent cut
    /// back off after a failed write (a full disk), is parsed again from its start.
    fn parsed_log(&self) -> MutexGuard<'_, ParsedLog> {
        use std::io::Seek as _;
        let mut parsed = self.parsed.lock().unwrap_or_else(|p| p.into_inner());
        let Ok(mut file) = std::fs::File::open(&self.log) else {
            return parsed;
        };
        let mut fresh = Vec::new();
        loop {
            let from = parsed.offset - parsed.last_line.len() as u64;
            fresh.clear();
            if file.seek(std::io::SeekFrom::Start(from)).is_err()
                || file.read_to_end(&mut fresh).is_err()
            {
                return parsed;
            }
            if fresh.starts_with(&parsed.last_line) {
                break;
            }
            *parsed = ParsedLog::default(); // rewritten: parse it again from its start
        }
        let fresh = &fresh[parsed.last_line.len()..];
        let complete = fresh
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |end| end + 1);
        for line in fresh[..complete]
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
        {
            let record = serde_json::from_slice(line).unwrap_or_else(|e| {
                panic!(
                    "bad JSON line {:?}: {e}; agent stderr:\n{}",
                    String::from_utf8_lossy(line),
                    self.stderr_tail()
                )
            });
            parsed.records.push(record);
        }
        if complete > 0 {
            let start = fresh[..complete - 1]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |end| end + 1);
            parsed.last_line = fresh[start..complete].to_vec();
        }
        parsed.offset += complete as u64;
        parsed
    }

    /// The last lines of the agent's stderr, for failure messages.
    pub fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Waits for the first record matching `pred`.
    pub fn wait_record(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + RECORD_TIMEOUT;
        loop {
            if let Some(found) = self.find_record(&pred) {
                return found;
            }
            if Instant::now() > deadline {
                panic!(
                    "no record for {what}; agent stderr:\n{}",
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The agent's resident memory in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Waits for the first record whose `file.raw_path` is `raw_path`.
    pub fn wait_record_for_path(&self, raw_path: &str) -> Value {
        self.wait_record(raw_path, |r| r["file"]["raw_path"] == raw_path)
    }

    pub fn records_of(&self, pid: u32) -> Vec<Value> {
        self.records()
            .into_iter()
            .filter(|r| r["process"]["pid"] == pid)
            .collect()
    }

    /// Waits until `pid` has at least `n` records and returns them.
    pub fn wait_records(&self, pid: u32, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + RECORD_TIMEOUT;
        loop {
            let found = self.records_of(pid);
            if found.len() >= n {
                return found;
            }
            if Instant::now() > deadline {
                panic!(
                    "pid {pid}: expected {n} record(s), found {}: {found:#?}\nagent stderr:\n{}",
                    found.len(),
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn metrics(&self) -> String {
        let mut stream = TcpStream::connect(&self.metrics_addr).expect("metrics endpoint");
        write!(
            stream,
            "GET /metrics HTTP/1.0\r\nHost: {}\r\n\r\n",
            self.metrics_addr
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
        assert!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{head}"
        );
        body.to_string()
    }

    /// The value of one series, e.g. `credwatch_kernel_events_total{probe="openat",outcome="filtered"}`.
    pub fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|line| {
                line.strip_prefix(series)
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }
}

/// A workload process: `credwatch-opener` doing the given ops and then holding (so its /proc
/// entry stays readable) until dropped.
pub struct Workload {
    pub pid: u32,
    pub results: Vec<i64>,
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Workload {
    pub fn run(args: &[&str]) -> Workload {
        let mut child = Command::new(helper_binary("credwatch-opener"))
            .arg("--hold")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning the opener");
        let ops = args.iter().filter(|a| **a == "--next").count() + 1;
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let pid_line = lines.next().expect("opener output").unwrap();
        let pid = pid_line.strip_prefix("pid=").unwrap().parse().unwrap();
        let results = (0..ops)
            .map(|_| {
                lines
                    .next()
                    .expect("opener result")
                    .unwrap()
                    .strip_prefix("result=")
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        let stdin = child.stdin.take();
        Workload {
            pid,
            results,
            child,
            stdin,
        }
    }

    pub fn run_as(uid: u32, args: &[&str]) -> Workload {
        let uid = uid.to_string();
        let mut full = vec!["--uid", uid.as_str()];
        full.extend_from_slice(args);
        Workload::run(&full)
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// (st_dev, st_ino) of a path, following symlinks.
pub fn dev_ino(path: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).unwrap();
    (meta.dev(), meta.ino())
}

/// A helper binary of this crate: cargo puts them one level above the test executables.
pub fn helper_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(path.is_file(), "{} not built", path.display());
    path
}

/// Pins a running process to one CPU.
pub fn pin_to_cpu(pid: u32, cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one bit set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(pid as i32, std::mem::size_of_val(&set), &set),
            0
        );
    }
}

/// The pid of the newest process running `helper` with `arg` in its command line.
pub fn find_process(arg: &str) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == arg.as_bytes()))
        })
        .max()
}
