//! Policy documents: a directory of Kubernetes-style YAML files (docs/contract.md).
//!
//! Every problem is reported as `file:line:column: message`, and all of them are collected
//! rather than stopping at the first, so `credwatch check` can show a whole broken edit at once.

pub mod catalog;
pub mod footprint;
pub mod paths;
pub mod verdict;

use std::{
    fmt,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use sha2::Digest as _;

pub use catalog::Catalog;
pub use footprint::{Action, Footprint};

pub const API_VERSION: &str = "credwatch.dev/v1alpha1";

/// One problem in one policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// A validated policy set.
#[derive(Debug, Default)]
pub struct PolicySet {
    pub catalog: Catalog,
    pub footprints: Vec<Footprint>,
    /// sha256 over the policy files' names and contents, for `credwatch_policy_info`.
    pub sha256: String,
    pub documents: usize,
    pub files: usize,
}

/// Where a document starts in its file, and the file's text, for locating values that the YAML
/// parser does not give positions for (e.g. a glob that parses as a string but is a bad glob).
pub struct Source<'a> {
    pub file: &'a Path,
    pub text: &'a str,
}

impl Source<'_> {
    pub fn problem_at(&self, line: usize, column: usize, message: impl Into<String>) -> Problem {
        Problem {
            file: self.file.to_path_buf(),
            line,
            column,
            message: message.into(),
        }
    }

    /// Position of the first occurrence of `needle` (a scalar from the document) at or after
    /// line `from_line`; the document's first line if it cannot be found.
    pub fn locate(&self, from_line: usize, needle: &str, message: impl Into<String>) -> Problem {
        for (index, line) in self
            .text
            .lines()
            .enumerate()
            .skip(from_line.saturating_sub(1))
        {
            if let Some(col) = line.find(needle) {
                return self.problem_at(index + 1, col + 1, message);
            }
        }
        self.problem_at(from_line, 1, message)
    }

    pub(crate) fn yaml_problem(&self, err: &serde_norway::Error) -> Problem {
        let (line, column) = err.location().map_or((1, 1), |l| (l.line(), l.column()));
        // serde_norway appends " at line L column C"; the prefix already says where.
        let text = err.to_string();
        let message = match text.find(" at line ") {
            Some(i) => text[..i].to_string(),
            None => text,
        };
        self.problem_at(line, column, message)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Head {
    api_version: Option<String>,
    kind: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// Reads every `*.yaml`/`*.yml` file directly in `dir` (not recursive; dot-files such as a
/// ConfigMap's `..data` are skipped) and validates the whole set.
pub fn load_dir(dir: &Path) -> Result<PolicySet, Vec<Problem>> {
    load_dirs(&[dir])
}

/// `load_dir` over several directories taken as one set (e.g. the catalogue's directory and
/// a directory of learned footprints).
pub fn load_dirs(dirs: &[&Path]) -> Result<PolicySet, Vec<Problem>> {
    let mut files = Vec::new();
    for dir in dirs {
        match policy_files(dir) {
            Ok(mut found) => {
                found.sort();
                files.extend(found);
            }
            Err(err) => {
                return Err(vec![Problem {
                    file: dir.to_path_buf(),
                    line: 0,
                    column: 0,
                    message: format!("cannot read policy directory: {err}"),
                }]);
            }
        }
    }
    let dir = dirs.first().copied().unwrap_or(Path::new("."));
    let mut problems = Vec::new();
    let mut builder = catalog::CatalogBuilder::default();
    let mut footprints = footprint::FootprintBuilder::default();
    let mut digest = sha2::Sha256::new();
    let mut documents = 0;
    for file in &files {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(err) => {
                problems.push(Problem {
                    file: file.clone(),
                    line: 0,
                    column: 0,
                    message: format!("cannot read: {err}"),
                });
                continue;
            }
        };
        let source = Source { file, text: &text };
        digest.update(
            file.file_name()
                .map(|n| n.as_encoded_bytes())
                .unwrap_or_default(),
        );
        digest.update([0]);
        digest.update(text.as_bytes());
        digest.update([0]);
        documents += load_documents(&source, &mut builder, &mut footprints, &mut problems);
    }
    let catalog = builder.finish();
    let footprints = footprints.finish(&catalog.entry_names(), &mut problems);
    let sha256 = digest
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if catalog.files.is_empty() && problems.is_empty() {
        problems.push(Problem {
            file: dir.to_path_buf(),
            line: 0,
            column: 0,
            message: "no CredentialCatalog with file entries: nothing would be watched".into(),
        });
    }
    if problems.is_empty() {
        Ok(PolicySet {
            catalog,
            footprints,
            sha256,
            documents,
            files: files.len(),
        })
    } else {
        Err(problems)
    }
}

/// sha256 over the policy files' names and contents: what `credwatch_policy_info` reports and
/// how a change in the directory is noticed. None when the directory cannot be read.
pub fn digest_dir(dir: &Path) -> Option<String> {
    let mut files = policy_files(dir).ok()?;
    files.sort();
    let mut digest = sha2::Sha256::new();
    for file in files {
        digest.update(
            file.file_name()
                .map(|n| n.as_encoded_bytes())
                .unwrap_or_default(),
        );
        digest.update([0]);
        digest.update(std::fs::read(&file).unwrap_or_default());
        digest.update([0]);
    }
    Some(
        digest
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

fn policy_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let is_yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        if is_yaml && !name.starts_with('.') && path.is_file() {
            out.push(path);
        }
    }
    Ok(out)
}

/// Parses each `---`-separated document twice: once for `apiVersion`/`kind` (lenient), once
/// into the strict type for that kind, so unknown fields are reported with their position.
fn load_documents(
    source: &Source,
    builder: &mut catalog::CatalogBuilder,
    footprints: &mut footprint::FootprintBuilder,
    problems: &mut Vec<Problem>,
) -> usize {
    let heads = serde_norway::Deserializer::from_str(source.text);
    let bodies = serde_norway::Deserializer::from_str(source.text);
    let mut count = 0;
    for (head, body) in heads.zip(bodies) {
        let head = match Head::deserialize(head) {
            Ok(head) => head,
            Err(err) => {
                problems.push(source.yaml_problem(&err));
                // A syntax error leaves the rest of the file unparseable.
                break;
            }
        };
        count += 1;
        let (Some(api_version), Some(kind)) = (head.api_version, head.kind) else {
            let line = first_line_of_document(source.text, count);
            problems.push(source.problem_at(line, 1, "document needs apiVersion and kind"));
            continue;
        };
        let line = first_line_of_document(source.text, count);
        if api_version != API_VERSION {
            problems.push(source.locate(
                line,
                &api_version,
                format!("unsupported apiVersion {api_version:?} (expected {API_VERSION})"),
            ));
            continue;
        }
        match kind.as_str() {
            "CredentialCatalog" => builder.add_document(source, line, body, problems),
            "SecretFootprint" => footprints.add_document(source, line, body, problems),
            other => problems.push(source.locate(
                line,
                other,
                format!("unknown kind {other:?} (expected CredentialCatalog or SecretFootprint)"),
            )),
        }
    }
    count
}

/// 1-based line where the `n`th (1-based) document starts.
fn first_line_of_document(text: &str, n: usize) -> usize {
    let mut seen = 0;
    let mut in_document = false;
    for (index, line) in text.lines().enumerate() {
        if line.starts_with("---") {
            in_document = false;
            continue;
        }
        let content = line.trim();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        if !in_document {
            in_document = true;
            seen += 1;
            if seen == n {
                return index + 1;
            }
        }
    }
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(files: &[(&str, &str)]) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/catalog.yaml"),
            dir.path().join("catalog.yaml"),
        )
        .unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let prefix = format!("{}/", dir.path().display());
        match load_dir(dir.path()) {
            Ok(_) => Vec::new(),
            Err(problems) => problems
                .iter()
                .map(|p| p.to_string().replace(&prefix, ""))
                .collect(),
        }
    }

    const HEAD: &str = "apiVersion: credwatch.dev/v1alpha1\nkind: SecretFootprint\n";

    #[test]
    fn every_problem_has_file_line_and_column() {
        let found = problems(&[
            (
                "a.yaml",
                &format!(
                    "{HEAD}metadata: {{name: a}}\nspec:\n  selector: {{namespace: x}}\n  allow:\n    - secret: no-such-entry\n"
                ),
            ),
            (
                "b.yaml",
                &format!("{HEAD}metadata: {{name: b}}\nspec:\n  selector: {{}}\n"),
            ),
            (
                "c.yaml",
                &format!("{HEAD}metadata: {{name: c}}\nspec:\n  selector: {{image: \"reg/[x\"}}\n"),
            ),
            (
                "d.yaml",
                &format!("{HEAD}metadata: {{name: d}}\nspec:\n  selectr: {{namespace: x}}\n"),
            ),
            (
                "e.yaml",
                "apiVersion: credwatch.dev/v1alpha1\nkind: Footprint\nmetadata: {name: e}\n",
            ),
            (
                "f.yaml",
                &format!("{HEAD}metadata: {{name: a}}\nspec:\n  selector: {{namespace: y}}\n"),
            ),
            (
                "g.yaml",
                "apiVersion: credwatch.dev/v1alpha1\nkind: SecretFootprint\nmetadata: {name: g\n",
            ),
        ]);
        let expect = [
            "a.yaml:7:7: allow names \"no-such-entry\", which no CredentialCatalog defines",
            "b.yaml:5:3: selector has no key: it must say what it selects",
            "c.yaml:5:22: bad glob \"reg/[x\": unclosed character class; missing ']'",
            "d.yaml:5:3: spec: unknown field `selectr`, expected one of `selector`, `allow`, `action`",
            "e.yaml:2:7: unknown kind \"Footprint\" (expected CredentialCatalog or SecretFootprint)",
            "f.yaml:3:12: duplicate footprint \"a\" (first defined at a.yaml:1)",
            "g.yaml:4:1: ",
        ];
        for e in expect {
            assert!(
                found.iter().any(|f| f.starts_with(e)),
                "missing {e:?} in {found:#?}"
            );
        }
        assert_eq!(found.len(), expect.len(), "{found:#?}");
    }

    #[test]
    fn the_shipped_policies_and_examples_are_valid() {
        let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies"));
        let set = load_dir(root).unwrap_or_else(|p| panic!("{p:#?}"));
        assert!(set.catalog.files.len() >= 10);
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(root.join("catalog.yaml"), dir.path().join("catalog.yaml")).unwrap();
        for entry in std::fs::read_dir(root.join("examples")).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
        let set = load_dir(dir.path()).unwrap_or_else(|p| panic!("{p:#?}"));
        assert!(set.footprints.len() >= 3, "the examples define footprints");
    }
}
