//! The forensic log: one JSON object per line (docs/contract.md).
//!
//! Strings that come from the workload (paths, argv, comm) are untrusted bytes. They are kept
//! verbatim where they are valid UTF-8; every byte that is not is written as `\xNN`, and a
//! literal backslash as `\\`, so nothing is dropped and the escaping is unambiguous. JSON's
//! own escaping (quotes, control characters) is done by serde_json on top.

use std::{io::Write as _, path::Path, sync::Arc};

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::logfile::LogFile;

pub const SCHEMA: u32 = 1;

pub use crate::escape::escape_bytes;

#[derive(Serialize, Debug, Clone)]
pub struct Record {
    pub schema: u32,
    pub ts: String,
    pub event_id: String,
    pub node: String,
    pub verdict: &'static str,
    pub reason: String,
    pub kind: &'static str,
    /// Absent on a `kind: "budget"` record (no one secret).
    #[serde(skip_serializing_if = "SecretSection::is_empty")]
    pub secret: SecretSection,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<FileSection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkSection>,
    /// `kind: "process_memory"`: the syscall into another process's memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemorySection>,
    /// `kind: "budget"`: what the container exceeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetSection>,
    /// Absent (pid 0) on a summary of accesses a container's budget cut: they left no
    /// record of who made them.
    #[serde(skip_serializing_if = "ProcessSection::unknown")]
    pub process: ProcessSection,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerSection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodSection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicySection>,
    /// A summary of identical accesses counted in the kernel (absent: this record is one
    /// access): how many, the first and last of them, and the record of the access they repeat.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_ts: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_ts: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repeat_of: Option<String>,
    /// The credential read was baked into the container's own image (`audit-image`): it
    /// must be rotated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_finding: Option<ImageFindingSection>,
}

/// `kind: "budget"`: a container went over a per-container budget other than its record rate
/// (which gives `suppressed` summaries): what it exceeded, the limit and how much it had.
#[derive(Serialize, Debug, Clone)]
pub struct BudgetSection {
    /// "secret_files": catalogue files in its filesystem tracked by inode.
    pub budget: &'static str,
    pub limit: u64,
    pub found: u64,
}

#[derive(Serialize, Debug, Clone)]
pub struct MemorySection {
    /// "ptrace", "process_vm_readv" or "process_vm_writev".
    pub syscall: &'static str,
    /// "PTRACE_ATTACH" or "PTRACE_SEIZE".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<&'static str>,
    /// The return value (bytes transferred for process_vm_*), or -errno.
    pub result: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<String>,
    pub target: MemoryTarget,
}

/// The process whose memory was reached for.
#[derive(Serialize, Debug, Clone)]
pub struct MemoryTarget {
    /// As the caller named it (in the caller's pid namespace).
    pub pid: u32,
    /// The same process on the host, when it could be found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    /// The target's container id, when it is in one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

#[derive(Serialize, Debug, Clone)]
pub struct ImageFindingSection {
    pub status: &'static str,
    pub layer: usize,
    pub rule: String,
}

/// The footprint behind the verdict.
#[derive(Serialize, Debug, Clone)]
pub struct PolicySection {
    pub name: String,
    pub action: &'static str,
}

#[derive(Serialize, Debug, Default, Clone)]
pub struct ContainerSection {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    pub runtime: &'static str,
    pub cgroup: String,
    /// When the runtime created the container (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
}

#[derive(Serialize, Debug, Default, Clone)]
pub struct PodSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    pub labels: std::collections::BTreeMap<String, String>,
    /// The owning workload (Deployment, StatefulSet, DaemonSet, Job), as in the metrics.
    pub workload: String,
}

#[derive(Serialize, Debug, Clone)]
pub struct SecretSection {
    /// The catalogue entry that matched (also the `secret` metric label).
    pub name: String,
    /// `<CredentialCatalog name>/<entry name>`.
    pub catalog_entry: String,
}

impl SecretSection {
    pub fn is_empty(&self) -> bool {
        self.name.is_empty()
    }
}

#[derive(Serialize, Debug, Default, Clone)]
pub struct FileSection {
    /// The credential's path: resolved by the kernel from the opened file; for a hit on a
    /// known secret inode (e.g. through a hardlink), the path the secret is known by.
    pub path: String,
    /// The path the kernel resolved for this open when it differs from `path` (hardlinks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opened_path: Option<String>,
    /// The string the process passed, as given (relative, with `..`, through symlinks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dev: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ino: Option<u64>,
    pub flags: Vec<String>,
    /// The new fd, or `-errno`.
    pub result: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<String>,
    pub syscall: &'static str,
    /// `path` is only the tail of a path deeper than the kernel walks.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub path_truncated: bool,
    /// The file is outside the process' own filesystem view (another container's, reached
    /// through `/proc/<pid>/root/`, or the host's): `path` is as that filesystem names it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub outside_root: bool,
    /// The open failed, so `path` is the process' base directory joined with `raw_path`
    /// (lexically normalised, symlinks not resolved).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub path_unresolved: bool,
}

#[derive(Serialize, Debug, Default, Clone)]
pub struct NetworkSection {
    /// The address the process connected to (IPv4 shown as IPv4 even from an IPv6 socket).
    pub address: String,
    pub port: u16,
    /// "ipv4", "ipv6", or "ipv4-mapped" (an IPv4 address through an IPv6 socket).
    pub family: &'static str,
    /// The catalogue host name the address was learned for (from DNS), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The catalogue endpoint.
    pub service: String,
    /// 0, or -errno (-EINPROGRESS: a non-blocking connect under way); null when the connect
    /// was seen outside connect(2), before it was attempted.
    pub result: Option<i64>,
    /// "connect" (the syscall) or "cgroup_hook" (io_uring, TCP Fast Open: not connect(2)).
    pub source: &'static str,
    /// The server name of the connection's TLS ClientHello, when that is what named it (no
    /// DNS answer did).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// For endpoints whose requests are inspected (`httpPaths`): why this connection is a
    /// credential access — "credential" (a request for a credential path), "unreadable" (a
    /// payload not shown to be a benign request), "not_seen" (no request was seen in time),
    /// "beyond_inspection" (more payloads than the kernel inspects per connection).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<&'static str>,
    /// The request line, when one was read: method and path only (no query string, headers or
    /// body), escaped like every string from a workload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSection>,
    /// The HTTP proxy the connection went through (`HTTPS_PROXY`/`HTTP_PROXY`): then
    /// `address`/`port` are the target the request named (a host name, or an address) and
    /// this is what the process connected to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxySection>,
}

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct ProxySection {
    pub address: String,
    pub port: u16,
}

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct HttpSection {
    pub method: String,
    pub path: String,
}

#[derive(Serialize, Debug, Default, Clone)]
pub struct ProcessSection {
    pub pid: u32,
    pub tid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ppid: Option<u32>,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args: Option<Arc<[String]>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    pub ancestors: Vec<AncestorSection>,
    /// In a container: "init" (the container's first process or its descendant) or "exec"
    /// (entered through `runc exec`, `kubectl exec`, CRI ExecSync); absent when unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_entry: Option<&'static str>,
    /// A host process's cgroup path (a container's is `container.cgroup`): what a `host: true`
    /// footprint narrowed by `cgroup` is judged on, also by `replay`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
}

impl ProcessSection {
    fn unknown(&self) -> bool {
        self.pid == 0
    }
}

#[derive(Serialize, Debug, Default, Clone)]
pub struct AncestorSection {
    pub pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args: Option<Arc<[String]>>,
}

/// Where records go: stdout, or a rotated log file (see `logfile`).
pub enum ForensicLog {
    Stdout,
    File(LogFile),
}

impl ForensicLog {
    pub fn open(target: &str, max_bytes: u64, keep: u32) -> Result<Self> {
        if target == "-" {
            return Ok(ForensicLog::Stdout);
        }
        let log = LogFile::open(Path::new(target), max_bytes, keep)
            .with_context(|| format!("opening forensic log {target}"))?;
        Ok(ForensicLog::File(log))
    }

    /// Queues one record as one line; `flush` writes the queue. Returns how many records
    /// could not be written (a batch flushed early because the file was full).
    pub fn write(&mut self, record: &Record) -> Result<(), Lost> {
        let mut line = serde_json::to_vec(record).map_err(|e| Lost(e.into(), 1))?;
        line.push(b'\n');
        match self {
            // Line-buffered: one write per record.
            ForensicLog::Stdout => std::io::stdout()
                .lock()
                .write_all(&line)
                .map_err(|e| Lost(e.into(), 1)),
            ForensicLog::File(log) => log.queue(&line).map_err(Lost::from),
        }
    }

    /// Writes what is queued: one write for the whole batch.
    pub fn flush(&mut self) -> Result<(), Lost> {
        match self {
            ForensicLog::Stdout => Ok(()),
            ForensicLog::File(log) => log.flush().map_err(Lost::from),
        }
    }
}

/// Records that could not be written: why, and how many.
#[derive(Debug)]
pub struct Lost(pub anyhow::Error, pub usize);

impl From<super::logfile::Unwritten> for Lost {
    fn from(u: super::logfile::Unwritten) -> Self {
        Lost(
            anyhow::Error::new(u.error).context("writing the forensic log"),
            u.lines,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_keeps_every_byte() {
        assert_eq!(escape_bytes(b"/run/secrets/db"), "/run/secrets/db");
        assert_eq!(escape_bytes(b"a\xffb"), "a\\xffb");
        assert_eq!(escape_bytes(b"back\\slash"), "back\\\\slash");
        assert_eq!(escape_bytes("caf\u{e9}".as_bytes()), "caf\u{e9}");
        // A literal "\xff" text and a raw 0xff byte stay distinguishable.
        assert_ne!(escape_bytes(b"\\xff"), escape_bytes(b"\xff"));
    }

    #[test]
    fn hostile_strings_round_trip_through_json() {
        let hostile = b"x\n\"}{\x1b[31m\x00\xfe\r\t".to_vec();
        let record = ProcessSection {
            comm: escape_bytes(&hostile),
            ..Default::default()
        };
        let line = serde_json::to_string(&record).unwrap();
        assert!(!line.contains('\n'));
        let back: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back["comm"].as_str().unwrap(), escape_bytes(&hostile));
    }
}
