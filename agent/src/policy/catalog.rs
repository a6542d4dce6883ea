//! The credential catalogue: which files count as credentials on this node, and the keys the
//! in-kernel filter needs to let exactly those opens through.

use std::{collections::BTreeMap, ffi::OsStr, os::unix::ffi::OsStrExt as _, path::Path};

use std::net::{IpAddr, Ipv6Addr};

use credwatch_common::{ENDPOINT_PORTS, EndpointValue};
use globset::{Candidate, GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Deserialize;

use super::{Metadata, Problem, Source};
pub use crate::probes::keys::{EndpointKeys, PathKeys};

/// Shortest literal prefix or suffix the kernel filter accepts: anything shorter would let a
/// large share of all opens out of the kernel.
const MIN_FILTER_LITERAL: usize = 4;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CatalogDocument {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    metadata: Metadata,
    spec: CatalogSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogSpec {
    #[serde(default)]
    files: Vec<FileEntrySpec>,
    /// Network endpoints are validated for shape here and used by the network stage.
    #[serde(default)]
    endpoints: Vec<EndpointSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntrySpec {
    name: String,
    paths: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct EndpointSpec {
    name: String,
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    ports: Vec<u16>,
    /// Plain-HTTP services: the request paths that hand out credentials (globs). Other
    /// requests to the endpoint are counted, not recorded as credential accesses.
    #[serde(default, rename = "httpPaths")]
    http_paths: Vec<String>,
}

/// One `files` entry of the catalogue, compiled.
#[derive(Debug, Clone)]
pub struct FileRule {
    pub name: String,
    /// The catalogue document that defined it.
    pub catalog: String,
    pub paths: Vec<String>,
    include: GlobSet,
    exclude: GlobSet,
}

impl FileRule {
    pub fn matches(&self, path: &[u8]) -> bool {
        let candidate = Candidate::new(Path::new(OsStr::from_bytes(path)));
        self.include.is_match_candidate(&candidate) && !self.exclude.is_match_candidate(&candidate)
    }
}

#[derive(Debug, Default, Clone)]
pub struct Catalog {
    pub files: Vec<FileRule>,
    /// Network endpoints (secret managers, metadata services).
    pub endpoints: Vec<EndpointRule>,
}

impl Catalog {
    /// The kernel's endpoint map: (IPv6-form address, prefix length) → endpoint id and ports.
    /// On overlapping networks the longer prefix wins (LPM); equal ones go to the first entry.
    pub fn endpoint_keys(&self) -> EndpointKeys {
        let mut keys = BTreeMap::new();
        for (index, rule) in self.endpoints.iter().enumerate() {
            let value = rule.kernel_value(index);
            for (addr, len) in &rule.networks {
                keys.entry((masked(addr, *len), *len as u32))
                    .or_insert(value);
            }
        }
        keys
    }

    /// Ports of the endpoints known by host name: connects to them right after a DNS answer
    /// reach the agent even before it has learned the answer (at most NAMED_PORT_SLOTS).
    pub fn named_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .endpoints
            .iter()
            .filter(|e| !e.hosts.is_empty())
            .flat_map(|e| e.ports.iter().copied())
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports.truncate(credwatch_common::NAMED_PORT_SLOTS as usize);
        ports
    }

    /// The endpoint a recorded connect matched (the kernel's map value).
    pub fn endpoint(&self, id: u32) -> Option<&EndpointRule> {
        self.endpoints.get((id as usize).checked_sub(1)?)
    }

    /// Every entry name an allow may refer to.
    pub fn entry_names(&self) -> std::collections::BTreeSet<String> {
        self.files
            .iter()
            .map(|f| f.name.clone())
            .chain(self.endpoints.iter().map(|e| e.name.clone()))
            .collect()
    }

    /// The first rule that matches `path`.
    pub fn match_path(&self, path: &[u8]) -> Option<(usize, &FileRule)> {
        self.files
            .iter()
            .enumerate()
            .find(|(_, rule)| rule.matches(path))
    }

    pub fn path_keys(&self) -> PathKeys {
        let mut keys = PathKeys::default();
        for (index, rule) in self.files.iter().enumerate() {
            for pattern in &rule.paths {
                match filter_key(pattern) {
                    Some(FilterKey::Prefix(p)) => {
                        keys.prefixes.entry(p.into_bytes()).or_insert(index as u32);
                    }
                    Some(FilterKey::Suffix(s)) => {
                        let reversed: Vec<u8> = s.bytes().rev().collect();
                        keys.suffixes.entry(reversed).or_insert(index as u32);
                    }
                    None => {} // rejected when the catalogue was built
                }
            }
        }
        keys
    }
}

/// One `endpoints` entry of the catalogue, compiled.
#[derive(Debug, Clone)]
pub struct EndpointRule {
    pub name: String,
    pub catalog: String,
    /// (network address, prefix length) in IPv6 form (IPv4 mapped).
    pub networks: Vec<(Ipv6Addr, u8)>,
    /// Host names (matched against DNS answers by the network stage).
    pub hosts: Vec<String>,
    /// `hosts` compiled: names as paths ("a.b.c" → "a/b/c") so `*` spans one label.
    pub host_globs: Option<GlobSet>,
    /// Empty = any port.
    pub ports: Vec<u16>,
    /// The request paths that are credential accesses (`httpPaths`, `*` within one path
    /// segment); None: every connect is one.
    pub http_paths: Option<GlobSet>,
}

/// "Secretsmanager.US-East-1.amazonaws.com." → "secretsmanager/us-east-1/amazonaws/com".
pub fn host_as_path(name: &str) -> String {
    name.trim_end_matches('.')
        .to_ascii_lowercase()
        .replace('.', "/")
}

impl EndpointRule {
    /// Whether a DNS name is one of this endpoint's hosts.
    pub fn matches_host(&self, name: &str) -> bool {
        self.host_globs
            .as_ref()
            .is_some_and(|g| g.is_match(host_as_path(name)))
    }

    /// Whether connections to `port` reach it (no ports listed: any).
    pub fn serves_port(&self, port: u16) -> bool {
        self.ports.is_empty() || self.ports.contains(&port)
    }

    /// Whether `address` is in one of the endpoint's networks.
    pub fn contains_address(&self, address: &std::net::IpAddr) -> bool {
        self.networks.iter().any(|n| in_network(address, n))
    }

    /// Whether one of the endpoint's networks other than "any address" (`0.0.0.0/0`, `::/0`)
    /// holds `address`: the catalogue names it by address.
    pub fn names_address(&self, address: &std::net::IpAddr) -> bool {
        (self.networks.iter())
            .filter(|(_, len)| *len != 0 && *len != 96)
            .any(|n| in_network(address, n))
    }

    /// The kernel map value for this endpoint (id = position + 1).
    pub fn kernel_value(&self, index: usize) -> EndpointValue {
        let mut value = EndpointValue {
            id: index as u32 + 1,
            port_count: self.ports.len() as u32,
            ports: [0; ENDPOINT_PORTS],
            flags: if self.http_paths.is_some() {
                credwatch_common::endpoint_flag::INSPECT_REQUESTS
            } else {
                0
            },
            _pad: 0,
        };
        for (slot, port) in value.ports.iter_mut().zip(&self.ports) {
            *slot = *port;
        }
        value
    }
}

fn in_network(address: &std::net::IpAddr, (network, len): &(Ipv6Addr, u8)) -> bool {
    let v6 = match address {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        std::net::IpAddr::V6(v6) => *v6,
    };
    let mask = u128::MAX.checked_shl(128 - *len as u32).unwrap_or(0);
    u128::from(v6) & mask == u128::from(*network) & mask
}

/// "169.254.169.254", "10.0.0.0/8", "fd00:ec2::254/128" → IPv6 form (IPv4 mapped, prefix + 96).
pub fn parse_network(text: &str) -> Option<(Ipv6Addr, u8)> {
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (a.parse::<IpAddr>().ok()?, Some(l.parse::<u8>().ok()?)),
        None => (text.parse::<IpAddr>().ok()?, None),
    };
    match addr {
        IpAddr::V4(v4) => {
            let len = len.unwrap_or(32);
            (len <= 32).then(|| (v4.to_ipv6_mapped(), 96 + len))
        }
        IpAddr::V6(v6) => {
            let len = len.unwrap_or(128);
            (len <= 128).then_some((v6, len))
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum FilterKey {
    Prefix(String),
    Suffix(String),
}

/// The in-kernel key for a glob: its literal prefix (up to the first wildcard) or literal
/// suffix (after the last), whichever is longer; ties go to the suffix, which names the file.
/// Keys are cut to what an LPM trie holds.
pub fn filter_key(pattern: &str) -> Option<FilterKey> {
    let is_meta = |c: char| matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | '\\');
    let first = pattern.find(is_meta);
    let last = pattern.rfind(is_meta);
    let (prefix, suffix) = match (first, last) {
        (None, _) | (_, None) => (pattern, pattern),
        (Some(first), Some(last)) => (&pattern[..first], &pattern[last + 1..]),
    };
    let cap = credwatch_common::PATH_KEY_BYTES;
    let prefix = truncate_at_char(prefix, cap, false);
    let suffix = truncate_at_char(suffix, cap, true);
    if suffix.len() >= prefix.len() && suffix.len() >= MIN_FILTER_LITERAL {
        Some(FilterKey::Suffix(suffix.to_string()))
    } else if prefix.len() >= MIN_FILTER_LITERAL && prefix.starts_with('/') {
        Some(FilterKey::Prefix(prefix.to_string()))
    } else {
        None
    }
}

fn truncate_at_char(s: &str, max: usize, keep_end: bool) -> &str {
    if s.len() <= max {
        return s;
    }
    if keep_end {
        let mut start = s.len() - max;
        while !s.is_char_boundary(start) {
            start += 1;
        }
        &s[start..]
    } else {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        &s[..end]
    }
}

fn compile_glob(pattern: &str) -> Result<globset::Glob, String> {
    if !pattern.starts_with('/') && !pattern.starts_with("**/") {
        return Err(format!(
            "path pattern {pattern:?} must be absolute or start with \"**/\" (paths are matched as the container sees them)"
        ));
    }
    GlobBuilder::new(pattern)
        // `*` stays within one path component; `**` crosses them.
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|err| format!("bad glob {pattern:?}: {}", err.kind()))
}

#[derive(Default)]
pub struct CatalogBuilder {
    rules: Vec<FileRule>,
    endpoints: Vec<EndpointRule>,
    /// Where each entry name was defined, for duplicate reports.
    seen: BTreeMap<String, String>,
}

impl CatalogBuilder {
    pub fn add_document<'de>(
        &mut self,
        source: &Source,
        line: usize,
        body: serde_norway::Deserializer<'de>,
        problems: &mut Vec<Problem>,
    ) {
        let doc = match CatalogDocument::deserialize(body) {
            Ok(doc) => doc,
            Err(err) => return problems.push(source.yaml_problem(&err)),
        };
        let catalog_name = doc.metadata.name;
        for entry in doc.spec.files {
            let here = format!("{}:{}", source.file.display(), line);
            if let Some(first) = self.seen.insert(entry.name.clone(), here) {
                problems.push(source.locate(
                    line,
                    &format!("name: {}", entry.name),
                    format!(
                        "duplicate catalogue entry {:?} (first defined at {first})",
                        entry.name
                    ),
                ));
                continue;
            }
            if entry.paths.is_empty() {
                problems.push(source.locate(
                    line,
                    &entry.name,
                    format!("entry {:?} has no paths", entry.name),
                ));
                continue;
            }
            let mut include = GlobSetBuilder::new();
            let mut exclude = GlobSetBuilder::new();
            let mut ok = true;
            for (pattern, is_exclude) in entry
                .paths
                .iter()
                .map(|p| (p, false))
                .chain(entry.exclude.iter().map(|p| (p, true)))
            {
                match compile_glob(pattern) {
                    Ok(glob) if is_exclude => {
                        exclude.add(glob);
                    }
                    Ok(glob) => {
                        if filter_key(pattern).is_none() {
                            ok = false;
                            problems.push(source.locate(line, pattern, format!(
                                "path pattern {pattern:?} has no literal prefix or suffix of at least \
                                 {MIN_FILTER_LITERAL} bytes for the in-kernel filter; name the file \
                                 (e.g. \"**/.ssh/id_ed25519\") or an absolute directory"
                            )));
                        }
                        include.add(glob);
                    }
                    Err(message) => {
                        ok = false;
                        problems.push(source.locate(line, pattern, message));
                    }
                }
            }
            if !ok {
                continue;
            }
            match (include.build(), exclude.build()) {
                (Ok(include), Ok(exclude)) => self.rules.push(FileRule {
                    name: entry.name,
                    catalog: catalog_name.clone(),
                    paths: entry.paths,
                    include,
                    exclude,
                }),
                (Err(err), _) | (_, Err(err)) => {
                    problems.push(source.locate(line, &entry.name, err.to_string()));
                }
            }
        }
        for endpoint in doc.spec.endpoints {
            let here = format!("{}:{}", source.file.display(), line);
            if let Some(first) = self.seen.insert(endpoint.name.clone(), here) {
                problems.push(source.locate(
                    line,
                    &format!("name: {}", endpoint.name),
                    format!(
                        "duplicate catalogue entry {:?} (first defined at {first})",
                        endpoint.name
                    ),
                ));
                continue;
            }
            if endpoint.addresses.is_empty() && endpoint.hosts.is_empty() {
                problems.push(source.locate(
                    line,
                    &endpoint.name,
                    format!("endpoint {:?} needs addresses or hosts", endpoint.name),
                ));
            }
            if endpoint.ports.len() > ENDPOINT_PORTS {
                problems.push(source.locate(
                    line,
                    &endpoint.name,
                    format!(
                        "endpoint {:?} lists {} ports; at most {ENDPOINT_PORTS}",
                        endpoint.name,
                        endpoint.ports.len()
                    ),
                ));
            }
            let mut networks = Vec::new();
            for address in &endpoint.addresses {
                match parse_network(address) {
                    Some(network) => networks.push(network),
                    None => problems.push(source.locate(line, address, format!(
                        "bad address {address:?}: expected an IP address or CIDR (10.0.0.0/8, fd00:ec2::254/128)"
                    ))),
                }
            }
            let mut globs = GlobSetBuilder::new();
            for host in &endpoint.hosts {
                match GlobBuilder::new(&host_as_path(host))
                    .literal_separator(true)
                    .build()
                {
                    Ok(glob) => {
                        globs.add(glob);
                    }
                    Err(err) => problems.push(source.locate(
                        line,
                        host,
                        format!("bad host pattern {host:?}: {}", err.kind()),
                    )),
                }
            }
            let mut paths = GlobSetBuilder::new();
            for pattern in &endpoint.http_paths {
                let glob = pattern
                    .starts_with('/')
                    .then(|| GlobBuilder::new(pattern).literal_separator(true).build());
                match glob {
                    Some(Ok(glob)) => {
                        paths.add(glob);
                    }
                    Some(Err(err)) => problems.push(source.locate(
                        line,
                        pattern,
                        format!("bad httpPaths pattern {pattern:?}: {}", err.kind()),
                    )),
                    None => problems.push(source.locate(
                        line,
                        pattern,
                        format!("httpPaths pattern {pattern:?} must start with \"/\""),
                    )),
                }
            }
            self.endpoints.push(EndpointRule {
                name: endpoint.name,
                catalog: catalog_name.clone(),
                networks,
                host_globs: (!endpoint.hosts.is_empty())
                    .then(|| globs.build().ok())
                    .flatten(),
                hosts: endpoint.hosts,
                ports: endpoint.ports,
                http_paths: (!endpoint.http_paths.is_empty())
                    .then(|| paths.build().ok())
                    .flatten(),
            });
        }
    }

    pub fn finish(self) -> Catalog {
        // (endpoints keep their order: ids are positions)
        Catalog {
            files: self.rules,
            endpoints: self.endpoints,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_keys_pick_the_longer_literal() {
        assert_eq!(
            filter_key("/run/secrets/**"),
            Some(FilterKey::Prefix("/run/secrets/".into()))
        );
        assert_eq!(
            filter_key("**/.aws/credentials"),
            Some(FilterKey::Suffix("/.aws/credentials".into()))
        );
        assert_eq!(
            filter_key("/proc/*/environ"),
            Some(FilterKey::Suffix("/environ".into()))
        );
        assert_eq!(
            filter_key("/etc/shadow"),
            Some(FilterKey::Suffix("/etc/shadow".into()))
        );
        assert_eq!(filter_key("**/.ssh/id_*"), None);
        assert_eq!(
            filter_key("**/*.key"),
            Some(FilterKey::Suffix(".key".into()))
        );
        assert_eq!(filter_key("**/id_*"), None);
    }

    #[test]
    fn long_literals_are_cut_to_the_trie_key_size() {
        let long = format!("/{}/**", "a".repeat(300));
        let Some(FilterKey::Prefix(p)) = filter_key(&long) else {
            panic!()
        };
        assert_eq!(p.len(), credwatch_common::PATH_KEY_BYTES);
    }

    #[test]
    fn star_does_not_cross_directories() {
        let glob = compile_glob("/proc/*/environ").unwrap().compile_matcher();
        assert!(glob.is_match("/proc/12/environ"));
        assert!(!glob.is_match("/proc/12/task/13/environ"));
        let glob = compile_glob("**/.aws/credentials")
            .unwrap()
            .compile_matcher();
        assert!(glob.is_match("/root/.aws/credentials"));
        assert!(glob.is_match("/home/a/b/.aws/credentials"));
        assert!(!glob.is_match("/root/.aws/credentials.bak"));
    }

    /// The longest key that starts `lookup`, as the kernel's LPM tries answer.
    fn longest<'a>(keys: &'a BTreeMap<Vec<u8>, u32>, lookup: &[u8]) -> Option<&'a Vec<u8>> {
        keys.keys()
            .filter(|k| lookup.starts_with(k))
            .max_by_key(|k| k.len())
    }

    /// The kernel's full filter on a walked path (prefix or reversed suffix).
    fn full_filter(keys: &PathKeys, path: &[u8]) -> bool {
        let reversed: Vec<u8> = path.iter().rev().copied().collect();
        longest(&keys.prefixes, path).is_some() || longest(&keys.suffixes, &reversed).is_some()
    }

    /// The kernel's cheap checks (`filter.rs` in the probes): the file name against the
    /// leaf keys, the directory against the prefix keys and the directories above them.
    fn cheap_says_walk(keys: &PathKeys, path: &[u8]) -> bool {
        let slash = path.iter().rposition(|&b| b == b'/').unwrap();
        let mut leaf: Vec<u8> = path[slash..].iter().rev().copied().collect();
        leaf.truncate(credwatch_common::LEAF_KEY_BYTES);
        let dir = &path[..=slash];
        longest(&keys.leaf_keys(), &leaf).is_some()
            || longest(&keys.prefixes, dir).is_some()
            || longest(&keys.dir_keys(), dir).is_some_and(|k| k.len() == dir.len())
    }

    /// The cheap checks only ever spare files the full filter would drop: every path made
    /// from the default catalogue's patterns (and look-alikes around them) that the full
    /// filter keeps is walked, and ordinary files are not.
    #[test]
    fn the_cheap_checks_never_spare_a_file_the_filter_keeps() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/catalog.yaml"),
            dir.path().join("catalog.yaml"),
        )
        .unwrap();
        let mut catalog = crate::policy::load_dir(dir.path()).unwrap().catalog;
        // A user's suffix without a directory and a long file name, beside the defaults.
        for pattern in [
            "**/*.pem",
            "**/a-very-long-credential-file-name-indeed.json",
        ] {
            catalog.files[0].paths.push(pattern.to_string());
        }
        let keys = catalog.path_keys();
        let mut paths = Vec::new();
        for rule in &catalog.files {
            for pattern in &rule.paths {
                for (star, stars) in [("x", "a/b"), ("12", "home/u"), ("ab_cd", "")] {
                    let path = pattern.replace("**", stars).replace('*', star);
                    let path = path.replace("//", "/");
                    let path = if path.starts_with('/') {
                        path
                    } else {
                        format!("/{path}")
                    };
                    for variant in [
                        path.clone(),
                        format!("{path}/inner/file"),
                        format!("{path}.bak"),
                        format!("/host{path}"),
                        path.trim_end_matches('/').to_string() + "/f",
                    ] {
                        paths.push(variant);
                    }
                }
            }
        }
        let mut kept = 0;
        for path in &paths {
            if full_filter(&keys, path.as_bytes()) {
                kept += 1;
                assert!(cheap_says_walk(&keys, path.as_bytes()), "spared {path}");
            }
        }
        assert!(kept > 100, "only {kept} generated paths are credentials");
        for ordinary in [
            "/tmp/credwatch-bench/not-a-credential.txt",
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
            "/home/u/project/src/main.rs",
            "/var/log/syslog",
        ] {
            assert!(
                !cheap_says_walk(&keys, ordinary.as_bytes()),
                "walks {ordinary}"
            );
        }
    }

    #[test]
    fn relative_patterns_are_rejected() {
        assert!(compile_glob("secrets/*").is_err());
        assert!(compile_glob("/ok/[").is_err());
    }
}

/// The address with the bits past `len` cleared (LPM keys must not carry host bits).
fn masked(addr: &Ipv6Addr, len: u8) -> [u8; 16] {
    let bits = u128::from_be_bytes(addr.octets());
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - len as u32)
    };
    (bits & mask).to_be_bytes()
}

#[cfg(test)]
mod endpoint_tests {
    use super::*;

    #[test]
    fn networks_parse_into_ipv6_form() {
        let (a, l) = parse_network("169.254.169.254").unwrap();
        assert_eq!(
            (a.to_string(), l),
            ("::ffff:169.254.169.254".to_string(), 128)
        );
        assert_eq!(parse_network("10.0.0.0/8").unwrap().1, 104);
        assert_eq!(parse_network("fd00:ec2::254/128").unwrap().1, 128);
        assert_eq!(parse_network("0.0.0.0/0").unwrap().1, 96);
        assert!(parse_network("10.0.0.0/33").is_none());
        assert!(parse_network("vault.svc").is_none());
        assert_eq!(
            masked(&"::ffff:10.1.2.3".parse().unwrap(), 104),
            "::ffff:10.0.0.0".parse::<Ipv6Addr>().unwrap().octets()
        );
    }
}
