//! One pass over each layer, streaming: the compression is told by its magic bytes, each tar
//! member is matched by its header's path first (catalogue globs), regular files' bytes go
//! through one keyword prefilter pass, and whiteouts and opaque directories of later layers
//! turn earlier findings into `deleted`, later files at the same path into `overwritten`.
//! Member names are only compared, never used to create anything on the host.

use std::{
    cell::Cell,
    collections::BTreeMap,
    io::{self, BufRead, BufReader, Read},
    rc::Rc,
    sync::LazyLock,
};

use globset::{Glob, GlobSet, GlobSetBuilder};

use super::{
    content,
    finding::{Category, Severity, Status},
    image::{Incomplete, normalize},
};
use crate::policy::Catalog;

/// Bytes of one file that are scanned; the rest of a larger file is skipped (counted).
pub const MAX_SCANNED_FILE: u64 = 4 << 20;
/// A layer that expands more than this many times its compressed size past `BOMB_FLOOR` is
/// taken for a decompression bomb (gzip itself tops out near 1032:1).
const MAX_RATIO: u64 = 1000;
const BOMB_FLOOR: u64 = 1 << 30;

/// A finding in a layer, before the image's fields are added.
pub struct LayerHit {
    pub layer: usize,
    pub path: String,
    pub rule: String,
    pub catalogue: Option<String>,
    pub category: Category,
    pub severity: Severity,
    pub status: Status,
    pub fingerprint: String,
    pub preview: String,
}

#[derive(Default, Debug, serde::Serialize, Clone)]
pub struct Stats {
    pub layers: usize,
    pub files: u64,
    pub uncompressed_bytes: u64,
    pub compressed_bytes: u64,
    /// Files larger than `MAX_SCANNED_FILE`: only their first bytes were scanned.
    pub partly_scanned_files: u64,
    pub binary_files: u64,
}

/// Paths whose credentials are demoted: distribution defaults and packages' test suites and
/// documentation (real keys are rarely there; test fixtures are, by the hundred).
static PACKAGE_FILES: LazyLock<GlobSet> = LazyLock::new(|| {
    let mut set = GlobSetBuilder::new();
    for pattern in [
        "/usr/share/doc/**",
        "/usr/share/**/examples/**",
        "/usr/lib/python3*/test/**",
        "/usr/lib/python3*/**/tests/**",
        "**/site-packages/**/tests/**",
        "**/site-packages/**/test/**",
        "**/node_modules/**/test/**",
        "**/node_modules/**/tests/**",
        "/usr/lib/go*/src/**/testdata/**",
        "/usr/local/go/src/**/testdata/**",
        "/usr/share/perl*/**/t/**",
    ] {
        set.add(Glob::new(pattern).expect("static glob"));
    }
    set.build().expect("static globs")
});

const SNAKEOIL: &str = "/etc/ssl/private/ssl-cert-snakeoil.key";

fn host_key(path: &str) -> bool {
    path.starts_with("/etc/ssh/ssh_host_") && path.ends_with("_key")
}

/// The layers of one image, scanned lowest first.
pub struct Layers<'a> {
    catalog: &'a Catalog,
    key: &'a [u8],
    pub hits: Vec<LayerHit>,
    /// Finding indices by path, for whiteouts and overwrites.
    by_path: BTreeMap<String, Vec<usize>>,
    pub stats: Stats,
    buffer: Vec<u8>,
    max_layer_bytes: u64,
}

#[derive(Clone, Copy)]
enum Scope {
    Exact,
    WithSubtree,
    SubtreeOnly,
}

struct Counter<R> {
    inner: R,
    count: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counter<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

/// Stops a layer that expands past the limits (a decompression bomb) with an error.
struct Limit<R> {
    inner: R,
    compressed: Rc<Cell<u64>>,
    seen: u64,
    max: u64,
}

impl<R: Read> Read for Limit<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.seen += n as u64;
        let ratio_bomb =
            self.seen > BOMB_FLOOR && self.seen / self.compressed.get().max(1) > MAX_RATIO;
        if self.seen > self.max || ratio_bomb {
            return Err(io::Error::other(format!(
                "expands past {} bytes (ratio {}:1): decompression bomb or --max-layer-bytes too low",
                self.seen,
                self.seen / self.compressed.get().max(1)
            )));
        }
        Ok(n)
    }
}

fn decompressed<'r>(
    raw: impl Read + 'r,
    compressed: Rc<Cell<u64>>,
) -> Result<Box<dyn Read + 'r>, String> {
    let mut buffered = BufReader::with_capacity(
        1 << 16,
        Counter {
            inner: raw,
            count: compressed,
        },
    );
    let head = buffered.fill_buf().map_err(|e| e.to_string())?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(buffered)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let decoder =
            zstd::stream::read::Decoder::with_buffer(buffered).map_err(|e| e.to_string())?;
        Ok(Box::new(decoder))
    } else if (head.len() >= 262 && &head[257..262] == b"ustar")
        || (head.len() >= 512 && head[..512].iter().all(|b| *b == 0))
    {
        Ok(Box::new(buffered))
    } else {
        let magic: Vec<String> = head.iter().take(4).map(|b| format!("{b:02x}")).collect();
        Err(format!(
            "unknown compression (magic bytes {})",
            magic.join(" ")
        ))
    }
}

impl<'a> Layers<'a> {
    pub fn new(catalog: &'a Catalog, key: &'a [u8], max_layer_bytes: u64) -> Self {
        Layers {
            catalog,
            key,
            hits: Vec::new(),
            by_path: BTreeMap::new(),
            stats: Stats::default(),
            buffer: Vec::new(),
            max_layer_bytes,
        }
    }

    pub fn scan(&mut self, index: usize, raw: impl Read) -> Result<(), Incomplete> {
        let fail = |what: String| Incomplete(format!("layer {index}: {what}"));
        let compressed = Rc::new(Cell::new(0));
        let stream = decompressed(raw, compressed.clone()).map_err(fail)?;
        let limited = Limit {
            inner: stream,
            compressed: compressed.clone(),
            seen: 0,
            max: self.max_layer_bytes,
        };
        let mut archive = tar::Archive::new(limited);
        let entries = archive.entries().map_err(|e| fail(e.to_string()))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| fail(format!("corrupt or truncated: {e}")))?;
            self.stats.files += 1;
            let path = format!("/{}", normalize(&entry.path_bytes()));
            let (dir, name) = path.rsplit_once('/').unwrap_or(("", &path));
            if name == ".wh..wh..opq" {
                self.hide(dir, Scope::SubtreeOnly, index, Status::Deleted);
                continue;
            }
            if let Some(target) = name.strip_prefix(".wh.") {
                self.hide(
                    &format!("{dir}/{target}"),
                    Scope::WithSubtree,
                    index,
                    Status::Deleted,
                );
                continue;
            }
            // Whatever a later layer puts at a finding's path replaces it.
            self.hide(&path, Scope::Exact, index, Status::Overwritten);
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let size = entry.size();
            self.buffer.clear();
            (&mut entry)
                .take(MAX_SCANNED_FILE)
                .read_to_end(&mut self.buffer)
                .map_err(|e| fail(format!("{path}: {e}")))?;
            // The tar reader ends a member quietly at the end of the stream.
            if (self.buffer.len() as u64) < size.min(MAX_SCANNED_FILE) {
                return Err(fail(format!(
                    "{path}: truncated ({} of {size} bytes)",
                    self.buffer.len()
                )));
            }
            if size > MAX_SCANNED_FILE {
                self.stats.partly_scanned_files += 1;
            }
            self.judge_file(index, &path);
        }
        // Whatever the tar reader left unread (padding, trailing blocks) still counts.
        let mut rest = archive.into_inner();
        io::copy(&mut rest, &mut io::sink()).map_err(|e| fail(e.to_string()))?;
        self.stats.layers += 1;
        self.stats.uncompressed_bytes += rest.seen;
        self.stats.compressed_bytes += compressed.get();
        Ok(())
    }

    /// Marks findings of lower layers at `path` (or under it, per `scope`) with `status`.
    fn hide(&mut self, path: &str, scope: Scope, layer: usize, status: Status) {
        if self.by_path.is_empty() {
            return;
        }
        let under = format!("{}/", path.trim_end_matches('/'));
        let matching = self
            .by_path
            .range(path.to_string()..)
            .take_while(|(p, _)| p.starts_with(path))
            .filter(|(p, _)| match scope {
                Scope::Exact => p.as_str() == path,
                Scope::WithSubtree => p.as_str() == path || p.starts_with(&under),
                Scope::SubtreeOnly => p.starts_with(&under),
            })
            .flat_map(|(_, ids)| ids.iter().copied())
            .collect::<Vec<_>>();
        for id in matching {
            let hit = &mut self.hits[id];
            if hit.layer < layer && hit.status != Status::EmptyPlaceholder {
                hit.status = status;
            }
        }
    }

    fn judge_file(&mut self, layer: usize, path: &str) {
        let bytes = std::mem::take(&mut self.buffer);
        let demoted = if PACKAGE_FILES.is_match(path) || path == SNAKEOIL {
            Some(Category::PackageFile)
        } else {
            None
        };
        let mut catalogued = false;
        if let Some((_, rule)) = self.catalog.match_path(path.as_bytes()) {
            let rule_name = rule.name.clone();
            if bytes.is_empty() {
                self.add(LayerHit {
                    layer,
                    path: path.to_string(),
                    rule: rule_name.clone(),
                    catalogue: Some(rule_name),
                    category: Category::Placeholder,
                    severity: Severity::Low,
                    status: Status::EmptyPlaceholder,
                    fingerprint: String::new(),
                    preview: "[empty file]".into(),
                });
                self.buffer = bytes;
                return;
            }
            if content::catalogue_file_holds_credential(&rule_name, path, &bytes) != Some(false) {
                catalogued = true;
                let (category, severity) = match demoted {
                    Some(category) => (category, Severity::Low),
                    None if host_key(path) => (Category::HostKey, Severity::Medium),
                    None => (Category::Credential, Severity::High),
                };
                let header = content::scan(&bytes)
                    .into_iter()
                    .find(|h| h.rule == "private-key")
                    .map(|h| h.public_prefix)
                    .unwrap_or_default();
                self.add(LayerHit {
                    layer,
                    path: path.to_string(),
                    rule: rule_name.clone(),
                    catalogue: Some(rule_name),
                    category,
                    severity,
                    status: Status::Present,
                    fingerprint: super::finding::fingerprint(self.key, &bytes),
                    preview: super::finding::preview(&header, bytes.len()),
                });
            }
        }
        if !catalogued {
            if content::looks_binary(&bytes) {
                self.stats.binary_files += 1;
            } else {
                for hit in content::scan(&bytes) {
                    let (category, severity) = if content::is_known_example(hit.value) {
                        (Category::KnownExample, Severity::Low)
                    } else if let Some(category) = demoted {
                        (category, Severity::Low)
                    } else if host_key(path) {
                        (Category::HostKey, Severity::Medium)
                    } else {
                        (Category::Credential, Severity::High)
                    };
                    let finding = LayerHit {
                        layer,
                        path: path.to_string(),
                        rule: hit.rule.to_string(),
                        catalogue: None,
                        category,
                        severity,
                        status: Status::Present,
                        fingerprint: super::finding::fingerprint(self.key, hit.value),
                        preview: super::finding::preview(&hit.public_prefix, hit.value.len()),
                    };
                    self.add(finding);
                }
            }
        }
        self.buffer = bytes;
    }

    fn add(&mut self, hit: LayerHit) {
        self.by_path
            .entry(hit.path.clone())
            .or_default()
            .push(self.hits.len());
        self.hits.push(hit);
    }
}
