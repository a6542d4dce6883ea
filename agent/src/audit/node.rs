//! The agent's side of the image audit: each new container's image is audited once, and a
//! file record of a container reading a credential its own image carries is marked
//! `image_finding`: a baked secret in use, which must be rotated.
//!
//! An image is untrusted input that anyone who can push to a registry controls, so the audit
//! runs in a child process (`credwatch audit-image containerd://…`) at the lowest CPU
//! priority, with its data memory capped and a time limit: an image built to exhaust memory or
//! time ends that audit as incomplete, never the agent.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Command, Stdio},
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use log::{info, warn};
use serde::Deserialize;

/// Images audited (and kept) per agent: a node runs far fewer; past it, new images are not
/// audited (logged once).
const MAX_IMAGES: usize = 1024;
/// Layer findings kept per image for the record join.
const MAX_BAKED_FILES: usize = 4096;
/// The audit child's data memory (`--max-memory-mib`, RLIMIT_DATA); a normal audit peaks
/// near 30 MiB whatever the image's size.
const CHILD_MEMORY: u64 = 128 << 20;
/// An audit taking longer is stopped (incomplete).
const CHILD_TIME: Duration = Duration::from_secs(600);
/// A layer may expand to this much in a node audit.
const NODE_MAX_LAYER_BYTES: u64 = 16 << 30;

/// A credential file present in an image's final filesystem.
#[derive(Debug, Clone)]
pub struct BakedFile {
    pub status: &'static str,
    pub layer: usize,
    pub rule: String,
}

#[derive(Debug, Default)]
pub struct ImageAudit {
    pub image: String,
    pub manifest_digest: String,
    /// Present credential files by path (as the container sees them).
    pub baked: HashMap<String, BakedFile>,
    /// Findings of every status and source by (status, severity), for the metric.
    pub counts: BTreeMap<(String, String), i64>,
    pub incomplete: Option<String>,
}

pub struct NodeAudits {
    requests: mpsc::Sender<String>,
    answers: mpsc::Receiver<ImageAudit>,
    asked: HashSet<String>,
    done: HashMap<String, Arc<ImageAudit>>,
    warned_full: bool,
}

/// Where the audit child finds containerd and the catalogue.
#[derive(Clone)]
pub struct AuditSetup {
    pub socket: PathBuf,
    pub policies: PathBuf,
}

impl NodeAudits {
    pub fn start(setup: AuditSetup) -> Option<NodeAudits> {
        let (requests, incoming) = mpsc::channel::<String>();
        let (outgoing, answers) = mpsc::channel();
        std::thread::Builder::new()
            .name("image-audit".into())
            .spawn(move || worker(setup, incoming, outgoing))
            .ok()?;
        Some(NodeAudits {
            requests,
            answers,
            asked: HashSet::new(),
            done: HashMap::new(),
            warned_full: false,
        })
    }

    /// Audits `image` (a containerd reference; its namespace is looked up) unless it was
    /// asked before.
    pub fn want(&mut self, image: &str) {
        if self.asked.contains(image) {
            return;
        }
        if self.asked.len() >= MAX_IMAGES {
            if !std::mem::replace(&mut self.warned_full, true) {
                warn!("image audit: {MAX_IMAGES} images audited; newer images are not");
            }
            return;
        }
        self.asked.insert(image.to_string());
        let _ = self.requests.send(image.to_string());
    }

    /// Audits finished since the last call.
    pub fn collect(&mut self) -> Vec<Arc<ImageAudit>> {
        let mut new = Vec::new();
        for audit in self.answers.try_iter() {
            let audit = Arc::new(audit);
            self.done.insert(audit.image.clone(), audit.clone());
            new.push(audit);
        }
        new
    }

    /// The credential `image` carries at `path`, if its audit is done and found one there.
    pub fn baked(&self, image: &str, path: &str) -> Option<&BakedFile> {
        self.done.get(image)?.baked.get(path)
    }
}

fn worker(setup: AuditSetup, incoming: mpsc::Receiver<String>, outgoing: mpsc::Sender<ImageAudit>) {
    for image in incoming {
        let started = Instant::now();
        let audit = match audit_in_child(&setup, &image) {
            Ok(audit) => audit,
            Err(why) => ImageAudit {
                image: image.clone(),
                incomplete: Some(why),
                ..Default::default()
            },
        };
        match &audit.incomplete {
            Some(why) => warn!("image audit of {image}: incomplete: {why}"),
            None => info!(
                "image audit of {image} ({}): {} credential file(s) present, in {:?}",
                audit.manifest_digest,
                audit.baked.len(),
                started.elapsed()
            ),
        }
        if outgoing.send(audit).is_err() {
            return;
        }
    }
}

/// The parts of `audit-image --format json` the agent uses.
#[derive(Deserialize)]
struct Report {
    #[serde(default)]
    images: Vec<ReportImage>,
    #[serde(default)]
    findings: Vec<ReportFinding>,
    #[serde(default)]
    incomplete: Vec<String>,
}

#[derive(Deserialize)]
struct ReportImage {
    manifest_digest: String,
}

#[derive(Deserialize)]
struct ReportFinding {
    source: String,
    rule: String,
    severity: String,
    status: String,
    #[serde(default)]
    layer: Option<usize>,
    #[serde(default)]
    path: Option<String>,
}

fn audit_in_child(setup: &AuditSetup, image: &str) -> Result<ImageAudit, String> {
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let mut command = Command::new(exe);
    command
        .args(["audit-image", "--format", "json", "--fail-on", "critical"])
        .arg("--policies")
        .arg(&setup.policies)
        .arg("--containerd-socket")
        .arg(&setup.socket)
        .args(["--max-layer-bytes", &NODE_MAX_LAYER_BYTES.to_string()])
        .args(["--max-memory-mib", &(CHILD_MEMORY >> 20).to_string()])
        .arg(format!("containerd://{image}"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // SAFETY: only an async-signal-safe call between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::setpriority(libc::PRIO_PROCESS, 0, 19);
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("starting the audit: {e}"))?;
    // The report is read on its own thread, so a full pipe cannot stall the child.
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut text);
        text
    });
    let deadline = Instant::now() + CHILD_TIME;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("stopped after {CHILD_TIME:?}"));
            }
        }
    };
    let text = reader.join().unwrap_or_default();
    // 0: clean, 1: findings, 3: incomplete (the report says why); anything else (a signal:
    // out of memory) is a failed audit.
    if !matches!(status.code(), Some(0 | 1 | 3)) {
        return Err(format!(
            "the audit process failed ({status}); memory cap {} MiB",
            CHILD_MEMORY >> 20
        ));
    }
    let report: Report =
        serde_json::from_slice(&text).map_err(|e| format!("unreadable audit report: {e}"))?;
    let mut audit = ImageAudit {
        image: image.to_string(),
        manifest_digest: report
            .images
            .first()
            .map(|i| i.manifest_digest.clone())
            .unwrap_or_default(),
        incomplete: report.incomplete.first().cloned(),
        ..Default::default()
    };
    for finding in report.findings {
        *audit
            .counts
            .entry((finding.status.clone(), finding.severity.clone()))
            .or_default() += 1;
        let in_use_matters = finding.source == "layer"
            && finding.status == "present"
            && matches!(finding.severity.as_str(), "medium" | "high" | "critical");
        if let (true, Some(path), Some(layer)) = (in_use_matters, finding.path, finding.layer)
            && audit.baked.len() < MAX_BAKED_FILES
        {
            audit.baked.insert(
                path,
                BakedFile {
                    status: "present",
                    layer,
                    rule: finding.rule,
                },
            );
        }
    }
    Ok(audit)
}
