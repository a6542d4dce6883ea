//! `SecretFootprint` documents: which workloads a footprint selects, and which credentials (by
//! catalogue entry, optionally narrowed to paths and binaries) they may touch.

use std::collections::{BTreeMap, BTreeSet};

use globset::{Glob, GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};
use serde::Deserialize;

use super::{Metadata, Problem, Source};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FootprintDocument {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    metadata: Metadata,
    spec: FootprintSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FootprintSpec {
    selector: SelectorSpec,
    #[serde(default)]
    allow: Vec<AllowSpec>,
    #[serde(default)]
    action: Action,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SelectorSpec {
    namespace: Option<String>,
    pod_labels: Option<BTreeMap<String, String>>,
    container: Option<String>,
    image: Option<String>,
    cgroup: Option<String>,
    host: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowSpec {
    secret: String,
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    binaries: Vec<String>,
    /// What `credwatch learn` saw (first/last seen, count, replicas): for reviewers only.
    #[serde(default)]
    #[allow(dead_code)]
    evidence: Option<serde::de::IgnoredAny>,
}

/// What a deviation from this footprint does.
#[derive(Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Written to the log and counted in `credwatch_deviations_total` (alerts fire).
    #[default]
    Alert,
    /// Written to the log only.
    Log,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Alert => "alert",
            Action::Log => "log",
        }
    }
}

/// A compiled footprint.
#[derive(Debug)]
pub struct Footprint {
    pub name: String,
    pub selector: Selector,
    pub allows: Vec<Allow>,
    pub action: Action,
}

/// Every key given must match.
#[derive(Debug, Default)]
pub struct Selector {
    pub namespace: Option<String>,
    pub pod_labels: BTreeMap<String, String>,
    pub container: Option<String>,
    pub image: Option<GlobMatcher>,
    pub cgroup: Option<GlobMatcher>,
    /// Selects processes that are not in a container.
    pub host: bool,
}

#[derive(Debug)]
pub struct Allow {
    /// A catalogue entry name (file or endpoint).
    pub secret: String,
    /// Narrowing to these paths; None = any path of the entry.
    pub paths: Option<GlobSet>,
    /// Only these executables; None = any.
    pub binaries: Option<GlobSet>,
}

impl Allow {
    /// Whether this entry allows `exe` to reach `secret` at `path` (None for endpoints).
    pub fn covers(&self, secret: &str, path: Option<&[u8]>, exe: Option<&[u8]>) -> bool {
        self.covers_path(secret, path) && self.allows_binary(exe)
    }

    /// `covers`, ignoring the binary (to tell "path not in footprint" from "binary not
    /// allowed"). Paths are compared in their canonical form (see `paths::canonical`).
    pub fn covers_path(&self, secret: &str, path: Option<&[u8]>) -> bool {
        self.secret == secret
            && match (&self.paths, path) {
                (None, _) => true,
                (Some(globs), Some(p)) => std::str::from_utf8(&super::paths::canonical(p))
                    .is_ok_and(|p| globs.is_match(p)),
                (Some(_), None) => false,
            }
    }

    fn allows_binary(&self, exe: Option<&[u8]>) -> bool {
        match (&self.binaries, exe) {
            (None, _) => true,
            (Some(globs), Some(e)) => std::str::from_utf8(e).is_ok_and(|e| globs.is_match(e)),
            (Some(_), None) => false,
        }
    }
}

/// Globs on paths: `*` within a component, `**` across.
fn path_glob(pattern: &str) -> Result<Glob, String> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|err| format!("bad glob {pattern:?}: {}", err.kind()))
}

/// Globs on image references: `*` may cross `/` ("registry.example.com/payments/*").
fn image_glob(pattern: &str) -> Result<Glob, String> {
    GlobBuilder::new(pattern)
        .literal_separator(false)
        .build()
        .map_err(|err| format!("bad glob {pattern:?}: {}", err.kind()))
}

fn glob_set(
    patterns: &[String],
    source: &Source,
    line: usize,
    problems: &mut Vec<Problem>,
) -> Option<GlobSet> {
    if patterns.is_empty() {
        return None;
    }
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        match path_glob(pattern) {
            Ok(glob) => {
                builder.add(glob);
            }
            Err(message) => problems.push(source.locate(line, pattern, message)),
        }
    }
    builder.build().ok()
}

/// A catalogue entry named by an allow, checked once all catalogues are read.
struct Reference {
    secret: String,
    problem_if_unknown: Problem,
}

#[derive(Default)]
pub struct FootprintBuilder {
    footprints: Vec<Footprint>,
    seen: BTreeMap<String, String>,
    references: Vec<Reference>,
}

impl FootprintBuilder {
    pub fn add_document<'de>(
        &mut self,
        source: &Source,
        line: usize,
        body: serde_norway::Deserializer<'de>,
        problems: &mut Vec<Problem>,
    ) {
        let doc = match FootprintDocument::deserialize(body) {
            Ok(doc) => doc,
            Err(err) => return problems.push(source.yaml_problem(&err)),
        };
        let name = doc.metadata.name;
        let here = format!("{}:{}", source.file.display(), line);
        if let Some(first) = self.seen.insert(name.clone(), here) {
            let message = format!("duplicate footprint {name:?} (first defined at {first})");
            problems.push(source.locate(line, &format!("name: {name}"), message));
            return;
        }
        let before = problems.len();
        let selector = compile_selector(doc.spec.selector, source, line, problems);
        let mut allows = Vec::new();
        for allow in doc.spec.allow {
            self.references.push(Reference {
                secret: allow.secret.clone(),
                problem_if_unknown: source.locate(
                    line,
                    &format!("secret: {}", allow.secret),
                    format!(
                        "allow names {:?}, which no CredentialCatalog defines",
                        allow.secret
                    ),
                ),
            });
            allows.push(Allow {
                paths: glob_set(&allow.paths, source, line, problems),
                binaries: glob_set(&allow.binaries, source, line, problems),
                secret: allow.secret,
            });
        }
        if problems.len() == before {
            self.footprints.push(Footprint {
                name,
                selector,
                allows,
                action: doc.spec.action,
            });
        }
    }

    /// Checks every allow against the catalogue entry names.
    pub fn finish(
        self,
        known_secrets: &BTreeSet<String>,
        problems: &mut Vec<Problem>,
    ) -> Vec<Footprint> {
        for reference in self.references {
            if !known_secrets.contains(&reference.secret) {
                problems.push(reference.problem_if_unknown);
            }
        }
        self.footprints
    }
}

fn compile_selector(
    spec: SelectorSpec,
    source: &Source,
    line: usize,
    problems: &mut Vec<Problem>,
) -> Selector {
    let host = spec.host.unwrap_or(false);
    let keys = [
        spec.namespace.is_some(),
        spec.pod_labels.as_ref().is_some_and(|l| !l.is_empty()),
        spec.container.is_some(),
        spec.image.is_some(),
        spec.cgroup.is_some(),
        host,
    ];
    if !keys.iter().any(|k| *k) {
        problems.push(source.locate(
            line,
            "selector",
            "selector has no key: it must say what it selects",
        ));
    }
    let container_keys = keys[..4].iter().any(|k| *k);
    if host && container_keys {
        problems.push(source.locate(
            line,
            "host",
            "host: true selects processes outside containers; it cannot be combined with namespace, podLabels, container or image",
        ));
    }
    let mut compile = |pattern: Option<String>, glob: fn(&str) -> Result<Glob, String>| {
        pattern.and_then(|p| match glob(&p) {
            Ok(g) => Some(g.compile_matcher()),
            Err(message) => {
                problems.push(source.locate(line, &p, message));
                None
            }
        })
    };
    Selector {
        image: compile(spec.image, image_glob),
        cgroup: compile(spec.cgroup, path_glob),
        namespace: spec.namespace,
        pod_labels: spec.pod_labels.unwrap_or_default(),
        container: spec.container,
        host,
    }
}
