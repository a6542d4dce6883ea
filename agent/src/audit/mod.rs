//! `credwatch audit-image`: credentials baked into images. Every layer is streamed once (base
//! layers included, nothing extracted), files are matched against the same catalogue the
//! agent uses at run time and scanned for credential shapes, whiteouts tell deleted from
//! present, and the config's Env, labels, build history and provenance attestations are judged
//! too. Values are never printed: findings carry a keyed fingerprint and a redacted preview.

mod config;
mod containerd;
mod content;
mod finding;
mod image;
mod layer;
mod node;
mod report;

use std::{collections::BTreeSet, io::Read as _, path::PathBuf};

use anyhow::Result;

use crate::{error::UsageError, policy};
pub use containerd::DEFAULT_SOCKET as CONTAINERD_SOCKET;
pub use finding::{Finding, Severity, Source, Status};
use image::{Incomplete, Store};
pub use node::{AuditSetup, NodeAudits};

/// Used when `CREDWATCH_FINGERPRINT_KEY` is not set: fingerprints then compare across every
/// credwatch installation (fine for high-entropy tokens; set a key of your own for passwords).
const DEFAULT_FINGERPRINT_KEY: &[u8] = b"credwatch-fingerprint-v1";

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Sarif,
}

/// `credwatch audit-image` arguments (README, "Auditing images").
#[derive(clap::Args, Debug)]
pub struct AuditOptions {
    /// The catalogue whose paths count as credential files.
    #[arg(long, default_value = "./policies")]
    pub policies: PathBuf,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Exit 1 when a finding (not in --baseline) is at or above this severity.
    #[arg(long, value_enum, default_value_t = Severity::High)]
    pub fail_on: Severity,
    /// A previous `--format json` report: its findings (by fingerprint, rule and path) are
    /// reported as baselined and do not fail the gate.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Only this platform of a multi-platform image (os/arch[/variant]).
    #[arg(long)]
    pub platform: Option<String>,
    /// Uncompressed bytes one layer may expand to before the scan stops (exit 3).
    #[arg(long, default_value_t = 64 << 30)]
    pub max_layer_bytes: u64,
    /// Data memory the audit may use (MiB, RLIMIT_DATA; 0: no cap). A normal audit peaks near
    /// 30 MiB whatever the image's size; a layer built to exhaust memory (a huge tar header)
    /// ends the scan with exit 3 instead.
    #[arg(long, default_value_t = 256)]
    pub max_memory_mib: u64,
    /// containerd's socket, for `containerd://` images.
    #[arg(long, default_value = containerd::DEFAULT_SOCKET)]
    pub containerd_socket: PathBuf,
    /// OCI layout directories, OCI archives, `docker save` archives, or
    /// `containerd://[NAMESPACE/]REFERENCE` (an image on this node).
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
}

/// What one audit found, for the report and the exit code.
#[derive(serde::Serialize)]
pub struct Report {
    pub schema: u32,
    pub images: Vec<ImageSummary>,
    pub findings: Vec<Finding>,
    /// Images or parts that could not be read: the scan is incomplete (exit 3).
    pub incomplete: Vec<String>,
}

#[derive(serde::Serialize)]
pub struct ImageSummary {
    pub image: String,
    pub manifest_digest: String,
    pub platform: String,
    pub layers: usize,
    /// History entries that are not `empty_layer` do not match the layers one to one (history
    /// indices of this image's findings are then left out).
    pub history_mismatch: bool,
    pub stats: layer::Stats,
}

/// Exit code: 0 clean, 1 findings at or above the threshold, 3 incomplete (takes precedence:
/// an unread layer may hold anything).
pub fn audit(options: AuditOptions) -> Result<u8> {
    if options.max_memory_mib > 0 {
        cap_data_memory(options.max_memory_mib << 20);
    }
    let set = policy::load_dir(&options.policies).map_err(|problems| {
        let lines: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        UsageError(format!("invalid policies:\n{}", lines.join("\n")))
    })?;
    let key = std::env::var("CREDWATCH_FINGERPRINT_KEY")
        .map(String::into_bytes)
        .unwrap_or_else(|_| DEFAULT_FINGERPRINT_KEY.to_vec());
    let baseline = match &options.baseline {
        Some(path) => report::baseline(path).map_err(|e| UsageError(format!("--baseline: {e}")))?,
        None => BTreeSet::new(),
    };
    let mut report = Report {
        schema: 1,
        images: Vec::new(),
        findings: Vec::new(),
        incomplete: Vec::new(),
    };
    for path in &options.images {
        let label = path.display().to_string();
        if let Err(Incomplete(why)) =
            audit_one(path, &label, &options, &set.catalog, &key, &mut report)
        {
            report.incomplete.push(format!("{label}: {why}"));
        }
    }
    for finding in &mut report.findings {
        finding.baselined = baseline.contains(&report::baseline_key(finding));
    }
    let failing = report
        .findings
        .iter()
        .any(|f| !f.baselined && f.severity >= options.fail_on);
    let text = match options.format {
        Format::Table => report::table(&report),
        Format::Json => serde_json::to_string_pretty(&report)? + "\n",
        Format::Sarif => serde_json::to_string_pretty(&report::sarif(&report))? + "\n",
    };
    print!("{text}");
    for problem in &report.incomplete {
        eprintln!("credwatch: incomplete scan: {problem}");
    }
    Ok(if !report.incomplete.is_empty() {
        3
    } else if failing {
        1
    } else {
        0
    })
}

/// Lowers this process's RLIMIT_DATA to `bytes` (never raises it: a parent's cap stays).
fn cap_data_memory(bytes: u64) {
    // SAFETY: plain getrlimit/setrlimit on this process with a valid struct.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_DATA, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_cur.min(bytes);
            libc::setrlimit(libc::RLIMIT_DATA, &limit);
        }
    }
}

fn audit_one(
    path: &std::path::Path,
    label: &str,
    options: &AuditOptions,
    catalog: &policy::Catalog,
    key: &[u8],
    report: &mut Report,
) -> Result<(), Incomplete> {
    let (store, platform) = match label.strip_prefix("containerd://") {
        // containerd keeps only this node's platform of a multi-platform image.
        Some(spec) => (
            Store::Containerd(Box::new(containerd::ContentStore::open(
                spec,
                &options.containerd_socket,
            )?)),
            Some(
                options
                    .platform
                    .clone()
                    .unwrap_or_else(containerd::host_platform),
            ),
        ),
        None => (Store::open(path)?, options.platform.clone()),
    };
    let targets = image::targets(&store, label, platform.as_deref())?;
    if targets.is_empty() {
        return Err(Incomplete(match &platform {
            Some(p) => format!("no image for platform {p}"),
            None => "no image in the layout".into(),
        }));
    }
    for target in targets {
        let diff_ids = target
            .config
            .rootfs
            .as_ref()
            .map(|r| r.diff_ids.clone())
            .unwrap_or_default();
        let history_of_layer = config::layer_history(&target.config.history, target.layers.len());
        let history_entry = |layer: usize| -> Option<(usize, String)> {
            let index = *history_of_layer.as_ref()?.get(layer)?;
            let created_by = target.config.history[index]
                .created_by
                .as_deref()
                .unwrap_or("");
            Some((index, config::instruction(created_by)))
        };
        let base = |source, rule: String, severity, category, status| Finding {
            image: target.name.clone(),
            manifest_digest: target.manifest_digest.clone(),
            platform: target.platform.clone(),
            source,
            rule,
            catalogue: None,
            category,
            severity,
            status,
            layer: None,
            diff_id: None,
            history: None,
            instruction: None,
            path: None,
            key: None,
            fingerprint: String::new(),
            preview: String::new(),
            baselined: false,
        };

        let mut layers = layer::Layers::new(catalog, key, options.max_layer_bytes);
        let mut failed = None;
        for (index, name) in target.layers.iter().enumerate() {
            let scanned = store
                .read(name)
                .and_then(|reader| layers.scan(index, reader));
            if let Err(why) = scanned {
                failed = Some(why);
                break;
            }
        }
        for hit in layers.hits {
            let history = history_entry(hit.layer);
            report.findings.push(Finding {
                catalogue: hit.catalogue,
                layer: Some(hit.layer),
                diff_id: diff_ids.get(hit.layer).cloned(),
                history: history.as_ref().map(|h| h.0),
                instruction: history.map(|h| h.1),
                path: Some(hit.path),
                fingerprint: hit.fingerprint,
                preview: hit.preview,
                ..base(
                    Source::Layer,
                    hit.rule,
                    hit.severity,
                    hit.category,
                    hit.status,
                )
            });
        }
        let mut config_hits = config::scan(&target.config);
        for name in &target.attestations {
            let mut bytes = Vec::new();
            store
                .read(name)?
                .take(8 << 20)
                .read_to_end(&mut bytes)
                .map_err(|e| Incomplete(format!("attestation {name}: {e}")))?;
            // Attestation layers that are not JSON statements (SBOMs in other formats) hold no
            // build arguments.
            if let Ok(statement) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                config_hits.extend(config::scan_attestation(&statement));
            }
        }
        for hit in config_hits {
            let instruction = hit.history.and_then(|i| {
                target.config.history[i]
                    .created_by
                    .as_deref()
                    .map(config::instruction)
            });
            report.findings.push(Finding {
                layer: hit.location.layer,
                diff_id: hit.location.layer.and_then(|l| diff_ids.get(l).cloned()),
                history: hit.history,
                instruction,
                path: hit.location.path,
                key: hit.location.key,
                fingerprint: finding::fingerprint(key, &hit.value),
                preview: finding::preview(&hit.public_prefix, hit.value.len()),
                ..base(
                    hit.location.source,
                    hit.rule.to_string(),
                    hit.severity,
                    hit.category,
                    Status::Present,
                )
            });
        }
        report.images.push(ImageSummary {
            image: target.name.clone(),
            manifest_digest: target.manifest_digest.clone(),
            platform: target.platform.clone(),
            layers: target.layers.len(),
            history_mismatch: history_of_layer.is_none(),
            stats: layers.stats,
        });
        if let Some(why) = failed {
            report
                .incomplete
                .push(format!("{} ({}): {why}", target.name, target.platform));
        }
    }
    Ok(())
}
