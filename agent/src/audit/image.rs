//! Where an image's blobs come from and how its manifests are found: an OCI layout directory,
//! an OCI archive or a `docker save` archive (legacy `<id>/layer.tar` and Engine 25+
//! `blobs/sha256/…` layouts). Archives are read in place: one pass indexes the tar's members
//! (name → offset, size), blobs are then read by seeking. Nothing is ever extracted.

use std::{
    collections::HashMap,
    fs::File,
    io::{self, Read, Seek, SeekFrom},
    path::{Path, PathBuf},
};

use serde::Deserialize;

/// Manifests, indexes and configs larger than this are refused (memory bound).
const MAX_JSON_BLOB: u64 = 8 << 20;

/// Why a scan could not be completed (exit code 3).
#[derive(Debug)]
pub struct Incomplete(pub String);

impl std::fmt::Display for Incomplete {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn incomplete(what: impl Into<String>) -> Incomplete {
    Incomplete(what.into())
}

/// The files of an image layout: a directory or a tar archive's members.
pub enum Store {
    Directory(PathBuf),
    Archive {
        file: PathBuf,
        members: HashMap<String, (u64, u64)>,
    },
    /// An image in containerd's content store, read through its content API.
    Containerd(Box<super::containerd::ContentStore>),
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, Incomplete> {
        let meta =
            std::fs::metadata(path).map_err(|e| incomplete(format!("{}: {e}", path.display())))?;
        if meta.is_dir() {
            return Ok(Store::Directory(path.to_path_buf()));
        }
        let mut file =
            File::open(path).map_err(|e| incomplete(format!("{}: {e}", path.display())))?;
        let mut magic = [0u8; 4];
        let n = file.read(&mut magic).unwrap_or(0);
        if n >= 2 && magic[..2] == [0x1f, 0x8b] {
            return Err(incomplete(format!(
                "{}: a compressed archive; decompress it first (gunzip): blobs are read by seeking",
                path.display()
            )));
        }
        file.seek(SeekFrom::Start(0)).ok();
        let mut members = HashMap::new();
        let mut archive = tar::Archive::new(file);
        let entries = archive
            .entries()
            .map_err(|e| incomplete(format!("{}: not a tar archive: {e}", path.display())))?;
        for entry in entries {
            let entry = entry
                .map_err(|e| incomplete(format!("{}: corrupt archive: {e}", path.display())))?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let name = normalize(&entry.path_bytes());
            members.insert(name, (entry.raw_file_position(), entry.size()));
        }
        Ok(Store::Archive {
            file: path.to_path_buf(),
            members,
        })
    }

    pub fn has(&self, name: &str) -> bool {
        match self {
            Store::Directory(root) => root.join(name).is_file(),
            Store::Archive { members, .. } => members.contains_key(name),
            Store::Containerd(_) => false,
        }
    }

    /// A member by its name in the layout (`index.json`, `blobs/sha256/<hex>`, `<id>/layer.tar`).
    pub fn read(&self, name: &str) -> Result<Box<dyn Read + Send + '_>, Incomplete> {
        let name = normalize(name.as_bytes());
        match self {
            Store::Directory(root) => {
                let path = root.join(&name);
                // A layout directory is input too: its members are regular files, never links
                // that would make the scan read the host's files.
                let meta = std::fs::symlink_metadata(&path)
                    .map_err(|e| incomplete(format!("missing {name}: {e}")))?;
                if !meta.is_file() {
                    return Err(incomplete(format!("{name}: not a regular file")));
                }
                let file = File::open(&path).map_err(|e| incomplete(format!("{name}: {e}")))?;
                Ok(Box::new(io::BufReader::with_capacity(1 << 16, file)))
            }
            Store::Archive { file, members } => {
                let (offset, size) = members
                    .get(&name)
                    .copied()
                    .ok_or_else(|| incomplete(format!("missing {name} in the archive")))?;
                let mut file = File::open(file).map_err(|e| incomplete(format!("{e}")))?;
                file.seek(SeekFrom::Start(offset))
                    .map_err(|e| incomplete(format!("{name}: {e}")))?;
                Ok(Box::new(io::BufReader::with_capacity(
                    1 << 16,
                    file.take(size),
                )))
            }
            Store::Containerd(content) => {
                let digest = name
                    .strip_prefix("blobs/")
                    .and_then(|rest| rest.split_once('/'))
                    .map(|(algorithm, hex)| format!("{algorithm}:{hex}"))
                    .ok_or_else(|| incomplete(format!("{name}: not a blob")))?;
                content.read(&digest)
            }
        }
    }

    pub fn blob_name(digest: &str) -> Result<String, Incomplete> {
        let (algorithm, hex) = digest
            .split_once(':')
            .ok_or_else(|| incomplete(format!("bad digest {digest:?}")))?;
        let safe = |s: &str, extra: &[char]| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || extra.contains(&c))
        };
        if !safe(algorithm, &['+', '.', '_', '-']) || !safe(hex, &[]) {
            return Err(incomplete(format!("bad digest {digest:?}")));
        }
        Ok(format!("blobs/{algorithm}/{hex}"))
    }

    pub fn read_json<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Result<T, Incomplete> {
        let mut bytes = Vec::new();
        self.read(name)?
            .take(MAX_JSON_BLOB + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| incomplete(format!("{name}: {e}")))?;
        if bytes.len() as u64 > MAX_JSON_BLOB {
            return Err(incomplete(format!(
                "{name}: larger than {MAX_JSON_BLOB} bytes"
            )));
        }
        serde_json::from_slice(&bytes).map_err(|e| incomplete(format!("{name}: {e}")))
    }
}

/// A path inside a layout or a layer, made absolute-free and `..`-free lexically: `./a/../b`
/// is `b`. Never used to touch the host's filesystem except under a layout directory.
pub fn normalize(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut parts: Vec<&str> = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

#[derive(Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub digest: String,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
}

#[derive(Deserialize, Debug, Clone, Default)]
pub struct Platform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    pub fn name(&self) -> String {
        match &self.variant {
            Some(v) if !v.is_empty() => format!("{}/{}/{v}", self.os, self.architecture),
            _ => format!("{}/{}", self.os, self.architecture),
        }
    }
}

/// An index or a manifest: the fields that tell them apart.
#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct IndexOrManifest {
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// `docker save`'s manifest.json entry.
#[derive(Deserialize, Debug)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

#[derive(Deserialize, Debug, Default)]
pub struct ImageConfig {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default)]
    pub config: Option<RunConfig>,
    #[serde(default)]
    pub rootfs: Option<RootFs>,
    #[serde(default)]
    pub history: Vec<History>,
}

impl ImageConfig {
    /// The platform the config says it is for.
    fn platform(&self) -> Platform {
        Platform {
            os: self.os.clone(),
            architecture: self.architecture.clone(),
            variant: self.variant.clone(),
        }
    }
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub labels: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Deserialize, Debug, Default)]
pub struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

#[derive(Deserialize, Debug, Default, Clone)]
pub struct History {
    #[serde(default)]
    pub created_by: Option<String>,
    #[serde(default)]
    pub empty_layer: bool,
}

/// One image to scan: a platform's manifest (or a `docker save` entry).
pub struct Target {
    pub name: String,
    /// The manifest's digest (OCI), or the config's (legacy docker archives have no manifest).
    pub manifest_digest: String,
    pub platform: String,
    pub config: ImageConfig,
    /// Member names of the layers, lowest first.
    pub layers: Vec<String>,
    /// Attestation manifests' layers (in-toto statements) that refer to this image.
    pub attestations: Vec<String>,
}

/// The images a layout holds, for the platforms asked for (all when `platform` is None).
pub fn targets(
    store: &Store,
    label: &str,
    platform: Option<&str>,
) -> Result<Vec<Target>, Incomplete> {
    let mut out = Vec::new();
    let roots: Option<Vec<(Descriptor, Option<String>)>> = if let Store::Containerd(content) = store
    {
        Some(vec![(
            content.target.clone(),
            Some(content.reference.clone()),
        )])
    } else if store.has("index.json") {
        let index: IndexOrManifest = store.read_json("index.json")?;
        Some(
            index
                .manifests
                .unwrap_or_default()
                .into_iter()
                .map(|d| {
                    let name = d
                        .annotations
                        .get("org.opencontainers.image.ref.name")
                        .or_else(|| d.annotations.get("io.containerd.image.name"))
                        .cloned();
                    (d, name)
                })
                .collect(),
        )
    } else {
        None
    };
    if let Some(roots) = roots {
        let mut pending = roots;
        let mut attestations: HashMap<String, Vec<String>> = HashMap::new();
        let mut seen = 0;
        while let Some((descriptor, ref_name)) = pending.pop() {
            seen += 1;
            if seen > 1024 {
                return Err(incomplete("more than 1024 manifests"));
            }
            let doc: IndexOrManifest = store.read_json(&Store::blob_name(&descriptor.digest)?)?;
            if let Some(children) = doc.manifests {
                pending.extend(children.into_iter().map(|d| (d, ref_name.clone())));
                continue;
            }
            // BuildKit's attestation manifests name the image they describe.
            if descriptor
                .annotations
                .get("vnd.docker.reference.type")
                .map(String::as_str)
                == Some("attestation-manifest")
            {
                if let Some(subject) = descriptor.annotations.get("vnd.docker.reference.digest") {
                    let layers = doc
                        .layers
                        .iter()
                        .map(|l| Store::blob_name(&l.digest))
                        .collect::<Result<Vec<_>, _>>()?;
                    attestations
                        .entry(subject.clone())
                        .or_default()
                        .extend(layers);
                }
                continue;
            }
            let config_descriptor = doc.config.ok_or_else(|| {
                incomplete(format!("manifest {} has no config", descriptor.digest))
            })?;
            let config: ImageConfig =
                store.read_json(&Store::blob_name(&config_descriptor.digest)?)?;
            let platform_name = descriptor
                .platform
                .clone()
                .unwrap_or_else(|| config.platform())
                .name();
            if platform.is_some_and(|p| p != platform_name) {
                continue;
            }
            out.push(Target {
                name: ref_name.unwrap_or_else(|| label.to_string()),
                manifest_digest: descriptor.digest.clone(),
                platform: platform_name,
                config,
                layers: doc
                    .layers
                    .iter()
                    .map(|l| Store::blob_name(&l.digest))
                    .collect::<Result<_, _>>()?,
                attestations: Vec::new(),
            });
        }
        for target in &mut out {
            if let Some(layers) = attestations.remove(&target.manifest_digest) {
                target.attestations = layers;
            }
        }
        out.sort_by(|a, b| a.platform.cmp(&b.platform));
        return Ok(out);
    }
    if store.has("manifest.json") {
        let manifests: Vec<DockerManifest> = store.read_json("manifest.json")?;
        for manifest in manifests {
            let config: ImageConfig = store.read_json(&manifest.config)?;
            let platform_name = config.platform().name();
            if platform.is_some_and(|p| p != platform_name) {
                continue;
            }
            let digest = manifest
                .config
                .rsplit('/')
                .next()
                .map(|hex| format!("sha256:{}", hex.trim_end_matches(".json")))
                .unwrap_or_default();
            out.push(Target {
                name: manifest
                    .repo_tags
                    .and_then(|t| t.into_iter().next())
                    .unwrap_or_else(|| label.to_string()),
                manifest_digest: digest,
                platform: platform_name,
                config,
                layers: manifest.layers,
                attestations: Vec::new(),
            });
        }
        return Ok(out);
    }
    Err(incomplete(format!(
        "{label}: neither an OCI layout (index.json) nor a docker save archive (manifest.json)"
    )))
}
