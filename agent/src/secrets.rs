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
};

/// Bounds on the directory walk that finds existing secret files.
const MAX_WALK_DEPTH: usize = 8;
/// The kernel's secret-inode map holds this many.
const MAX_SECRET_FILES: usize = 65536;
/// Secret files one filesystem (a container's, or the host's) may put into the kernel's map:
/// a container that fills its /run/secrets with thousands of files takes only its own share,
/// and is reported (`Resolved::over_budget`).
pub const MAX_FILES_PER_ROOT: usize = 1024;

/// A filesystem that holds more catalogue files than its share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverBudget {
    /// `/` for the host, else `/proc/<pid>/root`.
    pub root: PathBuf,
    /// Files found (the search stops just past the budget).
    pub found: usize,
}

/// A credential file that exists on this host, known by inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownSecret {
    pub rule: usize,
    pub path: Vec<u8>,
    /// Where the search found it (under `/proc/<pid>/root` for a container's file).
    pub found_at: PathBuf,
}

/// Secrets known by inode (the kernel's inode map holds their catalogue entry + 1).
#[derive(Debug, Default)]
pub struct SecretTable {
    known: Vec<KnownSecret>,
    /// (kernel dev, ino) → index. Records are looked up by their inode, not by the kernel's
    /// id: ids change with every search, and records already in the ring buffer carry the
    /// previous search's (a secret named by another secret's id would be mislabelled).
    by_inode: std::collections::HashMap<InodeKey, usize>,
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
/// names the filesystems that hold more catalogue files than their share (`MAX_FILES_PER_ROOT`;
/// their first files are still tracked). `KernelFilter::desired` turns the table into the
/// kernel's secret inodes.
pub fn search(catalog: &Catalog, container_roots: &[PathBuf]) -> (SecretTable, Vec<OverBudget>) {
    let mut table = SecretTable::default();
    let mut over_budget = Vec::new();
    let roots = std::iter::once((PathBuf::from("/"), false))
        .chain(container_roots.iter().map(|r| (r.clone(), true)));
    for (root, confined) in roots {
        let mut from_root = 0usize;
        let mut found = 0usize;
        for (rule_index, rule) in catalog.files.iter().enumerate() {
            for pattern in &rule.paths {
                let Some(dir) = literal_dir(pattern) else {
                    continue;
                };
                let mut files = Vec::new();
                // The path as the container (or host) sees it.
                let seen =
                    |file: &Path| Path::new("/").join(file.strip_prefix(&root).unwrap_or(file));
                let is_plain = !pattern.contains(GLOB_META);
                let single = root.join(pattern.trim_start_matches('/'));
                if is_plain {
                    // One file: no directory to walk.
                    if std::fs::metadata(&single).is_ok_and(|m| m.is_file())
                        && (!confined || !single.is_symlink() || is_contained_link(&single))
                    {
                        files.push(single);
                    }
                } else {
                    let inside = root.join(dir.strip_prefix("/").unwrap_or(&dir));
                    // Bounded: one match past the budget is enough to know it is exceeded.
                    let limit = (MAX_FILES_PER_ROOT + 1).saturating_sub(found);
                    let keep = |file: &Path| rule.matches(seen(file).as_os_str().as_bytes());
                    collect_files(&inside, 0, confined, limit, &keep, &mut files);
                }
                found += files.len();
                for file in files {
                    if from_root >= MAX_FILES_PER_ROOT {
                        break;
                    }
                    if table.known.len() >= MAX_SECRET_FILES {
                        log::warn!(
                            "more than {MAX_SECRET_FILES} secret files; inode tracking stops here"
                        );
                        break;
                    }
                    let seen = seen(&file);
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
                    if table.by_inode.contains_key(&key) {
                        continue;
                    }
                    table.known.push(KnownSecret {
                        rule: rule_index,
                        path: bytes.to_vec(),
                        found_at: file.clone(),
                    });
                    table.by_inode.insert(key, table.known.len() - 1);
                    from_root += 1;
                }
            }
        }
        if found > MAX_FILES_PER_ROOT {
            over_budget.push(OverBudget { root, found });
        }
    }
    (table, over_budget)
}

impl SecretTable {
    /// Secret files found (each watched by its inode).
    pub fn len(&self) -> usize {
        self.known.len()
    }

    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// The kernel's secret-inode map: (dev, ino) → the catalogue entry + 1 (never 0), not the
    /// file: it stays the same across searches, so what the kernel counted under it before a
    /// search is still named right after.
    pub fn kernel_inodes(&self) -> BTreeMap<InodeKey, u32> {
        self.by_inode
            .iter()
            .map(|(key, &index)| (*key, self.known[index].rule as u32 + 1))
            .collect()
    }
}

/// Characters that make a catalogue pattern a glob rather than a literal path.
const GLOB_META: [char; 5] = ['*', '?', '[', '{', '\\'];

/// The directory a glob is anchored at: its literal part up to the last `/` before the first
/// wildcard; None for patterns that start with `**` (those cannot be enumerated).
fn literal_dir(pattern: &str) -> Option<PathBuf> {
    // Inodes under /proc and /sys are per-process and come and go: paths identify those.
    if pattern.starts_with("/proc/") || pattern.starts_with("/sys/") {
        return None;
    }
    let literal_end = pattern.find(GLOB_META).unwrap_or(pattern.len());
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
fn collect_files(
    dir: &Path,
    depth: usize,
    confined: bool,
    limit: usize,
    keep: &dyn Fn(&Path) -> bool,
    out: &mut Vec<PathBuf>,
) {
    if depth > MAX_WALK_DEPTH || out.len() >= limit {
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
        if out.len() >= limit {
            return;
        }
        if kind.is_dir() {
            collect_files(&path, depth + 1, confined, limit, keep, out);
        } else if kind.is_symlink() && confined && !is_contained_link(&path) {
            continue;
        } else if keep(&path) && std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
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
    /// The catalogue entry of a known secret inode (the kernel's secret id is entry + 1).
    pub fn rule_of(secret_id: u32) -> Option<usize> {
        (secret_id as usize).checked_sub(1)
    }

    /// `relocate`: where a secret found under `/proc/<pid>/root` can be looked at now that
    /// `<pid>` has exited (the same file through a live process of its container), if anywhere.
    pub fn classify(
        &self,
        catalog: &Catalog,
        open: &FileOpen,
        ns_pid: Option<u32>,
        relocate: &dyn Fn(&Path) -> Option<PathBuf>,
    ) -> Option<Credential> {
        let inode = InodeKey {
            dev: crate::events::user_dev_to_kernel(open.dev),
            ino: open.ino,
        };
        if open.secret_id != 0
            && let Some(known) = self.by_inode.get(&inode).map(|&i| &self.known[i])
        {
            let opened_path = (known.path != open.path).then(|| open.path.clone());
            // An inode number is reused once its file is deleted: an open of an unrelated file
            // can hit a secret's stale entry until the next search. Under another path than
            // the secret's, the hit counts only while the secret's file still has this inode
            // (a hardlink); otherwise the open is judged by its own path below.
            if opened_path.is_none()
                || still_has_inode(&known.found_at, inode)
                || relocate(&known.found_at).is_some_and(|now| still_has_inode(&now, inode))
            {
                return Some(Credential {
                    rule: known.rule,
                    path: known.path.clone(),
                    opened_path,
                });
            }
        }
        let path = if open.path_flags & path_flag::LEXICAL != 0 {
            normalize_lexically(&open.path)
        } else {
            without_atomic_writer_dirs(&open.path)
        };
        if is_own_proc_entry(&path, [Some(open.pid), Some(open.tid), ns_pid])
            || names_itself(open.raw_path.as_deref(), &path)
        {
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

fn still_has_inode(file: &Path, inode: InodeKey) -> bool {
    std::fs::metadata(file).is_ok_and(|meta| {
        crate::events::user_dev_to_kernel(meta.dev()) == inode.dev && meta.ino() == inode.ino
    })
}

/// The process asked for `/proc/self/<rest>` (or `thread-self`) and got `/proc/<n>/<rest>`:
/// itself, even when it is gone before its namespace pid could be looked up. `..`, symlinks
/// (`/proc/self/root/...`) or a relative path would change `<rest>`, so they never pass.
fn names_itself(raw: Option<&[u8]>, resolved: &[u8]) -> bool {
    let Some(raw) = raw else { return false };
    let Some(rest) = raw
        .strip_prefix(b"/proc/self/")
        .or_else(|| raw.strip_prefix(b"/proc/thread-self/"))
    else {
        return false;
    };
    if rest
        .split(|&b| b == b'/')
        .any(|part| part == b".." || part == b".")
    {
        return false;
    }
    let Some(after_proc) = resolved.strip_prefix(b"/proc/") else {
        return false;
    };
    // /proc/<pid>/<rest>, or for thread-self /proc/<pid>/task/<tid>/<rest>.
    let mut parts = after_proc.splitn(2, |&b| b == b'/');
    let (Some(pid), Some(tail)) = (parts.next(), parts.next()) else {
        return false;
    };
    if pid.is_empty() || !pid.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let tail = match tail.strip_prefix(b"task/") {
        Some(task) if raw.starts_with(b"/proc/thread-self/") => {
            let mut t = task.splitn(2, |&b| b == b'/');
            match (t.next(), t.next()) {
                (Some(tid), Some(tail)) if tid.iter().all(u8::is_ascii_digit) => tail,
                _ => return false,
            }
        }
        _ => tail,
    };
    tail == rest
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
    fn proc_self_names_the_opener_only_when_nothing_steers_it() {
        let it =
            |raw: &str, resolved: &str| names_itself(Some(raw.as_bytes()), resolved.as_bytes());
        assert!(it("/proc/self/mem", "/proc/7/mem"));
        assert!(it("/proc/self/environ", "/proc/123/environ"));
        assert!(it("/proc/thread-self/environ", "/proc/7/task/9/environ"));
        assert!(!it("/proc/self/../1/mem", "/proc/1/mem"), "steered with ..");
        assert!(
            !it("/proc/self/root/proc/1/mem", "/proc/1/mem"),
            "through a symlink"
        );
        assert!(!it("/proc/1/mem", "/proc/1/mem"), "another process");
        assert!(!it("mem", "/proc/1/mem"), "relative to a directory fd");
        assert!(!names_itself(None, b"/proc/1/mem"));
    }

    #[test]
    fn records_are_named_by_their_inode_not_by_a_stale_id() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let secrets = dir.path().join("s");
        std::fs::create_dir_all(&secrets).unwrap();
        for name in ["a", "b"] {
            std::fs::write(secrets.join(name), name).unwrap();
        }
        let policies = dir.path().join("p");
        std::fs::create_dir_all(&policies).unwrap();
        std::fs::write(
            policies.join("c.yaml"),
            format!(
                "apiVersion: credwatch.dev/v1alpha1\nkind: CredentialCatalog\nmetadata: {{name: t}}\nspec:\n  files:\n    - name: t\n      paths: [\"{}/**\"]\n",
                secrets.display()
            ),
        )
        .unwrap();
        let catalog = crate::policy::load_dir(&policies).unwrap().catalog;
        let (table, _) = search(&catalog, &[]);
        let meta = std::fs::metadata(secrets.join("b")).unwrap();
        let id_of_b = table.kernel_inodes()[&InodeKey {
            dev: crate::events::user_dev_to_kernel(meta.dev()),
            ino: meta.ino(),
        }];
        let stale_id = if id_of_b == 1 { 2 } else { 1 };
        // A record of "b" carrying another value than the map holds for it: named by inode.
        let open = FileOpen {
            pid: 1,
            tid: 1,
            result: 3,
            dev: meta.dev(),
            ino: meta.ino(),
            secret_id: stale_id,
            matched: 1,
            path: secrets.join("b").as_os_str().as_bytes().to_vec(),
            ..Default::default()
        };
        let credential = table.classify(&catalog, &open, None, &|_| None).unwrap();
        assert_eq!(credential.path, secrets.join("b").as_os_str().as_bytes());

        // A hardlink elsewhere is named by the secret while the secret has that inode...
        let elsewhere = dir.path().join("unrelated");
        std::fs::hard_link(secrets.join("b"), &elsewhere).unwrap();
        let through_link = FileOpen {
            path: elsewhere.as_os_str().as_bytes().to_vec(),
            ..open.clone()
        };
        let credential = table
            .classify(&catalog, &through_link, None, &|_| None)
            .unwrap();
        assert_eq!(credential.path, secrets.join("b").as_os_str().as_bytes());
        assert!(credential.opened_path.is_some());
        // ...and once the secret is gone, the inode number is another file's (reused after a
        // delete): judged by its own path, it is no credential.
        std::fs::remove_file(secrets.join("b")).unwrap();
        assert_eq!(
            table.classify(&catalog, &through_link, None, &|_| None),
            None
        );
        // Found through a process that has exited: the same file seen through a live process
        // of its container still has the inode.
        let live = elsewhere.clone();
        let relocated = table.classify(&catalog, &through_link, None, &move |_| Some(live.clone()));
        assert_eq!(
            relocated.unwrap().path,
            secrets.join("b").as_os_str().as_bytes()
        );
    }

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
