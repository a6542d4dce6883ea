//! Footprint documents as `credwatch learn` writes them: the policy schema (README, "Secret
//! footprints") plus reviewer-only evidence that the matcher ignores. Output is a pure function
//! of the evidence (sorted maps, times from the records), so learning twice from the same logs
//! gives byte-identical files.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_norway::Value;

use super::group::Learned;

pub const ANNOTATION_WINDOW: &str = "credwatch.dev/learned-window";
pub const ANNOTATION_NODES: &str = "credwatch.dev/learned-nodes";
pub const ANNOTATION_COVERAGE: &str = "credwatch.dev/learned-coverage";
pub const ANNOTATION_STABLE: &str = "credwatch.dev/learned-stable";

/// A `SecretFootprint` document, loosely typed where it is carried over from a hand-written
/// file (selector, annotations) so nothing in it is lost.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct FootprintDoc {
    pub api_version: String,
    pub kind: String,
    pub metadata: DocMetadata,
    pub spec: DocSpec,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct DocMetadata {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct DocSpec {
    pub selector: Value,
    #[serde(default)]
    pub allow: Vec<AllowDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct AllowDoc {
    pub secret: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub binaries: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EvidenceDoc {
    first_seen: String,
    last_seen: String,
    count: u64,
    replicas: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    startup_only: Option<bool>,
}

pub fn rfc3339(t: time::OffsetDateTime) -> String {
    crate::sinks::rfc3339(t.unix_timestamp_nanos()).unwrap_or_default()
}

/// An allow entry for what one binary was seen doing with one secret.
pub fn allow_doc(secret: &str, binary: &str, learned: &Learned) -> AllowDoc {
    let evidence = EvidenceDoc {
        first_seen: rfc3339(learned.first),
        last_seen: rfc3339(learned.last),
        count: learned.count,
        replicas: learned.replicas.len(),
        startup_only: learned.startup_only,
    };
    AllowDoc {
        secret: secret.to_string(),
        paths: learned.paths.iter().cloned().collect(),
        binaries: vec![binary.to_string()],
        evidence: serde_norway::to_value(evidence).ok(),
    }
}

/// The selector of a learned footprint, as YAML.
#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct LearnedSelector {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<bool>,
}

pub fn to_yaml(doc: &FootprintDoc, header: &str) -> anyhow::Result<String> {
    let body = serde_norway::to_string(doc)?;
    Ok(format!("{header}{body}"))
}
