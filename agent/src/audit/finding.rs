//! A finding and how it is shown: a keyed-hash fingerprint and a redacted preview, never the
//! value in clear.

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// In the image's final filesystem (or its config).
    Present,
    /// Removed by a whiteout or an opaque directory in a later layer: still extractable from
    /// the layer that added it.
    Deleted,
    /// Replaced by a later layer's file at the same path: still extractable.
    Overwritten,
    /// A zero-byte file at a credential path, as a build-time secret mount leaves behind.
    EmptyPlaceholder,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Present => "present",
            Status::Deleted => "deleted",
            Status::Overwritten => "overwritten",
            Status::EmptyPlaceholder => "empty-placeholder",
        }
    }
}

/// Demoted findings are kept (a reviewer may disagree) but do not fail a gate at the default
/// threshold: known example keys, files of OS packages' test suites and documentation, a
/// distribution's default snakeoil key.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Category {
    Credential,
    /// Keys generated per image (ssh host keys): every container of the image shares them.
    HostKey,
    KnownExample,
    PackageFile,
    Placeholder,
}

impl Category {
    pub fn name(self) -> &'static str {
        match self {
            Category::Credential => "credential",
            Category::HostKey => "host-key",
            Category::KnownExample => "known-example",
            Category::PackageFile => "package-file",
            Category::Placeholder => "placeholder",
        }
    }
}

#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Layer,
    Config,
    History,
    Attestation,
}

#[derive(Serialize, Debug, Clone)]
pub struct Finding {
    pub image: String,
    pub manifest_digest: String,
    pub platform: String,
    pub source: Source,
    pub rule: String,
    /// The catalogue entry whose path matched (layer findings at catalogue paths).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catalogue: Option<String>,
    pub category: Category,
    pub severity: Severity,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<usize>,
    /// The history entry's instruction keyword (RUN, COPY, ENV…), never its arguments (they
    /// may hold the value).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instruction: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The variable, label or build argument name (config, history and attestation findings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub fingerprint: String,
    pub preview: String,
    /// Also in `--baseline`: reported, not counted against `--fail-on`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub baselined: bool,
}

/// Where a finding sits in its image, before the image's own fields are added.
pub struct Location {
    pub source: Source,
    pub layer: Option<usize>,
    pub path: Option<String>,
    pub key: Option<String>,
}

/// Keyed so that a fingerprint of a short secret cannot be reversed by trying candidates
/// without the key (`CREDWATCH_FINGERPRINT_KEY`); equal values give equal fingerprints across
/// images and runs with the same key, which is what baselines and the run-time join need.
pub fn fingerprint(key: &[u8], value: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(value);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("hmac-sha256:{hex}")
}

/// What may be shown of a value: its public prefix (a token type, a PEM header) and its length.
pub fn preview(public_prefix: &str, value_len: usize) -> String {
    if public_prefix.is_empty() {
        format!("[{value_len} bytes redacted]")
    } else {
        format!("{public_prefix}… [{value_len} bytes redacted]")
    }
}
