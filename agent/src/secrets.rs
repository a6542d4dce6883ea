//! Which credential an open touched: catalogue globs on the resolved path, plus the inodes of
//! credential files that exist on this host, so a hardlink made anywhere still names the secret.

use std::{
    collections::BTreeMap,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use credwatch_common::{InodeKey, path_flag};

use crate::{
    events::{FileOpen, user_dev_to_kernel},
    policy::Catalog,
    probes::KernelFilter,
};

/// Bounds on the directory walk that finds existing secret files.
const MAX_WALK_DEPTH: usize = 8;
const MAX_SECRET_FILES: usize = 16384;

/// A credential file that exists on this host, known by inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownSecret {
    pub rule: usize,
    pub path: Vec<u8>,
}

/// Secrets by the id the kernel's inode map returns (id = index + 1).
#[derive(Debug, Default)]
pub struct SecretTable {
    known: Vec<KnownSecret>,
}

/// The credential an open touched.
#[derive(Debug, PartialEq, Eq)]
pub struct Credential {
    pub rule: usize,
    /// The path the credential is known by.
    pub path: Vec<u8>,
    /// The kernel-resolved path of this open, when it differs (a hardlink).
    pub opened_path: Option<Vec<u8>>,
}

/// Finds the existing files the catalogue names below its literal directories, on the host and
/// inside each container (`container_roots`: `/proc/<pid>/root` of a process in each), and
/// builds the complete in-kernel filter (path keys + the inodes of those files).
pub fn resolve(catalog: &Catalog, container_roots: &[PathBuf]) -> (SecretTable, KernelFilter) {
    let mut table = SecretTable::default();
    let mut inodes: BTreeMap<InodeKey, u32> = BTreeMap::new();
    let roots = std::iter::once((PathBuf::from("/"), false))
        .chain(container_roots.iter().map(|r| (r.clone(), true)));
    for (root, confined) in roots {
        for (rule_index, rule) in catalog.files.iter().enumerate() {
            for pattern in &rule.paths {
                let Some(dir) = literal_dir(pattern) else {
                    continue;
                };
                let mut files = Vec::new();
                let inside = root.join(dir.strip_prefix("/").unwrap_or(&dir));
                collect_files(&inside, 0, confined, &mut files);
                for file in files {
                    if table.known.len() >= MAX_SECRET_FILES {
                        log::warn!(
                            "more than {MAX_SECRET_FILES} secret files; inode tracking stops here"
                        );
                        break;
                    }
                    // The path as the container (or host) sees it.
                    let seen = Path::new("/").join(file.strip_prefix(&root).unwrap_or(&file));
                    let bytes = seen.as_os_str().as_bytes();
                    if !rule.matches(bytes) {
                        continue;
                    }
                    let Ok(meta) = std::fs::metadata(&file) else {
                        continue;
                    };
                    let key = InodeKey {
                        dev: user_dev_to_kernel(meta.dev()),
                        ino: meta.ino(),
                    };
                    if inodes.contains_key(&key) {
                        continue;
                    }
                    table.known.push(KnownSecret {
                        rule: rule_index,
                        path: bytes.to_vec(),
                    });
                    inodes.insert(key, table.known.len() as u32);
                }
            }
        }
    }
    (
        table,
        KernelFilter {
            paths: catalog.path_keys(),
            inodes,
            endpoints: catalog.endpoint_keys(),
            named_ports: catalog.named_ports(),
        },
    )
}

/// The directory a glob is anchored at: its literal part up to the last `/` before the first
/// wildcard; None for patterns that start with `**` (those cannot be enumerated).
fn literal_dir(pattern: &str) -> Option<PathBuf> {
    // Inodes under /proc and /sys are per-process and come and go: paths identify those.
    if pattern.starts_with("/proc/") || pattern.starts_with("/sys/") {
        return None;
    }
    let literal_end = pattern
        .find(['*', '?', '[', '{', '\\'])
        .unwrap_or(pattern.len());
    let literal = &pattern[..literal_end];
    if literal_end == pattern.len() {
        // A plain file name: its directory is walked to depth 0 (the file itself matches).
        return Path::new(literal)
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| p != Path::new("/"));
    }
    let dir = &literal[..literal.rfind('/')? + 1];
    (dir.len() > 1).then(|| PathBuf::from(dir))
}

/// Regular files below `dir`. Symlinked files are followed (Kubernetes mounts secrets as
/// symlinks into `..data`); symlinked directories and `..`-prefixed atomic-writer internals are
/// not descended into, so every secret is found under the name users know. Inside a container
/// (`confined`) only relative symlinks without `..` steps are followed: anything else would be
/// resolved against the host's filesystem, not the container's.
fn collect_files(dir: &Path, depth: usize, confined: bool, out: &mut Vec<PathBuf>) {
    if depth > MAX_WALK_DEPTH || out.len() >= MAX_SECRET_FILES {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        if entry.file_name().as_bytes().starts_with(b"..") {
            continue;
        }
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            collect_files(&path, depth + 1, confined, out);
        } else if kind.is_symlink() && confined && !is_contained_link(&path) {
            continue;
        } else if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            out.push(path);
        }
    }
}

/// A relative symlink whose target never steps up (`..data/token` is fine, `../x` is not).
fn is_contained_link(path: &Path) -> bool {
    std::fs::read_link(path).is_ok_and(|target| {
        target.is_relative()
            && target
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)))
    })
}

impl SecretTable {
    /// Which credential `open` touched, if any. Userspace re-checks every record exactly: the
    /// kernel's prefix/suffix keys are coarser than the globs.
    pub fn classify(
        &self,
        catalog: &Catalog,
        open: &FileOpen,
        ns_pid: Option<u32>,
    ) -> Option<Credential> {
        if open.secret_id != 0
            && let Some(known) = self.known.get(open.secret_id as usize - 1)
        {
            let opened_path = (known.path != open.path).then(|| open.path.clone());
            return Some(Credential {
                rule: known.rule,
                path: known.path.clone(),
                opened_path,
            });
        }
        let path = if open.path_flags & path_flag::LEXICAL != 0 {
            normalize_lexically(&open.path)
        } else {
            without_atomic_writer_dirs(&open.path)
        };
        if is_own_proc_entry(&path, [Some(open.pid), Some(open.tid), ns_pid]) {
            return None;
        }
        let (rule, _) = catalog.match_path(&path)?;
        Some(Credential {
            rule,
            path,
            opened_path: None,
        })
    }
}

/// `/proc/<n>/...` where n is the opener itself: a process reading its own environment is not
/// credential theft.
fn is_own_proc_entry(path: &[u8], own: [Option<u32>; 3]) -> bool {
    let Some(rest) = path.strip_prefix(b"/proc/") else {
        return false;
    };
    let pid = rest.split(|&b| b == b'/').next().unwrap_or_default();
    let Some(pid) = std::str::from_utf8(pid)
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
    else {
        return false;
    };
    own.contains(&Some(pid))
}

/// Kubernetes writes secret and ConfigMap volumes into `..<timestamp>` directories behind a
/// `..data` symlink, so the kernel resolves `/run/secrets/token` to
/// `/run/secrets/..2026_01_02_15_04_05.123/token`. Dropping those components gives the path
/// users know (and write in footprints), across rotations.
pub fn without_atomic_writer_dirs(path: &[u8]) -> Vec<u8> {
    if !path.windows(2).any(|w| w == b"/.") {
        return path.to_vec();
    }
    let mut out = Vec::with_capacity(path.len());
    for part in path.split(|&b| b == b'/').filter(|p| !p.is_empty()) {
        if part.len() > 2 && part.starts_with(b"..") {
            continue;
        }
        out.push(b'/');
        out.extend_from_slice(part);
    }
    out
}

/// Resolves `.` and `..` without touching the filesystem (for failed opens, whose path was
/// never resolved by the kernel).
pub fn normalize_lexically(path: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    let mut out = Vec::with_capacity(path.len());
    for part in parts {
        out.push(b'/');
        out.extend_from_slice(part);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_dirs() {
        assert_eq!(
            literal_dir("/run/secrets/**"),
            Some(PathBuf::from("/run/secrets/"))
        );
        assert_eq!(
            literal_dir("/etc/kubernetes/pki/*.key"),
            Some(PathBuf::from("/etc/kubernetes/pki/"))
        );
        assert_eq!(literal_dir("**/.aws/credentials"), None);
        assert_eq!(literal_dir("/proc/*/environ"), None);
        assert_eq!(
            literal_dir("/etc/kubernetes/admin.conf"),
            Some(PathBuf::from("/etc/kubernetes"))
        );
    }

    #[test]
    fn atomic_writer_directories_are_dropped() {
        assert_eq!(
            without_atomic_writer_dirs(
                b"/var/run/secrets/kubernetes.io/serviceaccount/..2026_01_02_15_04_05.1234/token"
            ),
            b"/var/run/secrets/kubernetes.io/serviceaccount/token"
        );
        assert_eq!(
            without_atomic_writer_dirs(b"/root/.aws/credentials"),
            b"/root/.aws/credentials"
        );
        assert_eq!(
            without_atomic_writer_dirs(b"/run/secrets/..data/x"),
            b"/run/secrets/x"
        );
    }

    #[test]
    fn lexical_normalisation() {
        assert_eq!(normalize_lexically(b"/a/b/../c/./d"), b"/a/c/d");
        assert_eq!(normalize_lexically(b"/../.."), b"/");
        assert_eq!(normalize_lexically(b"/tmp//x/"), b"/tmp/x");
    }

    #[test]
    fn own_proc_entries_are_exempt() {
        assert!(is_own_proc_entry(
            b"/proc/42/environ",
            [Some(42), None, None]
        ));
        assert!(is_own_proc_entry(
            b"/proc/7/environ",
            [Some(42), Some(43), Some(7)]
        ));
        assert!(!is_own_proc_entry(
            b"/proc/1/environ",
            [Some(42), Some(42), None]
        ));
        assert!(!is_own_proc_entry(
            b"/run/secrets/x",
            [Some(42), None, None]
        ));
    }
}
