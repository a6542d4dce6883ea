//! Reading forensic logs as evidence: several files, rotated and gzip-compressed ones, or
//! stdin. Every line that is not a usable credwatch record is counted and reported with its
//! file and line; nothing is skipped silently.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read},
    path::Path,
};

use anyhow::{Context as _, Result};
use serde::Deserialize;
use time::OffsetDateTime;

use crate::sinks::forensic::SCHEMA;

/// One credential access, as the log recorded it.
#[derive(Debug, Clone)]
pub struct Observation {
    pub at: OffsetDateTime,
    pub node: Option<String>,
    pub verdict: String,
    pub reason: String,
    pub secret: String,
    /// The file's path (None for network accesses).
    pub path: Option<String>,
    /// The path cannot name the secret (deeper than the kernel walks, or another
    /// filesystem's): not learnable.
    pub path_unusable: Option<&'static str>,
    /// For network accesses: address:port, for the report.
    pub endpoint: Option<String>,
    pub exe: Option<String>,
    pub pid: u32,
    pub args: Vec<String>,
    /// "init" or "exec" (process.container_entry).
    pub entry: Option<String>,
    pub container: Option<ContainerSeen>,
    /// Where it was read: "file:line".
    pub source: String,
    /// How many accesses the record stands for (a summary of repeats: its `count`).
    pub accesses: u64,
}

#[derive(Debug, Clone, Default)]
pub struct ContainerSeen {
    pub id: String,
    pub name: Option<String>,
    pub image: Option<String>,
    pub started: Option<OffsetDateTime>,
    pub pod: Option<PodSeen>,
}

#[derive(Debug, Clone, Default)]
pub struct PodSeen {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub uid: Option<String>,
    pub workload: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// A line that was not a usable record.
#[derive(Debug, Clone)]
pub struct BadLine {
    pub source: String,
    pub message: String,
}

#[derive(Default)]
pub struct Evidence {
    pub observations: Vec<Observation>,
    pub bad: Vec<BadLine>,
    /// Lines read in all.
    pub lines: usize,
}

/// The parts of a record learning needs (the log schema, docs/contract.md); unknown fields ignored.
#[derive(Deserialize)]
struct Line {
    schema: Option<u32>,
    ts: Option<String>,
    node: Option<String>,
    verdict: Option<String>,
    #[serde(default)]
    reason: String,
    kind: Option<String>,
    secret: Option<SecretPart>,
    file: Option<FilePart>,
    network: Option<NetworkPart>,
    #[serde(default)]
    process: ProcessPart,
    container: Option<ContainerPart>,
    pod: Option<PodPart>,
    /// A summary of repeats counted in the kernel stands for this many accesses.
    count: Option<u64>,
}

#[derive(Deserialize)]
struct SecretPart {
    name: Option<String>,
}

#[derive(Deserialize)]
struct FilePart {
    path: Option<String>,
    #[serde(default)]
    path_truncated: bool,
    #[serde(default)]
    outside_root: bool,
}

#[derive(Deserialize)]
struct NetworkPart {
    address: Option<String>,
    port: Option<u16>,
}

#[derive(Deserialize, Default)]
struct ProcessPart {
    #[serde(default)]
    pid: u32,
    exe: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    container_entry: Option<String>,
}

#[derive(Deserialize)]
struct ContainerPart {
    id: Option<String>,
    name: Option<String>,
    image: Option<String>,
    started: Option<String>,
}

#[derive(Deserialize)]
struct PodPart {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    workload: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

fn parse_time(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

impl Evidence {
    /// Reads `path` ("-" for stdin); gzip is recognised by its magic bytes.
    pub fn read_source(&mut self, path: &str) -> Result<()> {
        let raw: Box<dyn Read> = if path == "-" {
            Box::new(std::io::stdin().lock())
        } else {
            Box::new(
                std::fs::File::open(Path::new(path)).with_context(|| format!("opening {path}"))?,
            )
        };
        let mut buffered = BufReader::new(raw);
        let gzip = buffered.fill_buf().map(|b| b.starts_with(&[0x1f, 0x8b]))?;
        let reader: Box<dyn BufRead> = if gzip {
            Box::new(BufReader::new(flate2::bufread::MultiGzDecoder::new(
                buffered,
            )))
        } else {
            Box::new(buffered)
        };
        let name = if path == "-" { "<stdin>" } else { path };
        self.read_lines(name, reader);
        Ok(())
    }

    fn read_lines(&mut self, name: &str, mut reader: Box<dyn BufRead>) {
        let mut bytes = Vec::new();
        let mut number = 0;
        loop {
            bytes.clear();
            number += 1;
            match reader.read_until(b'\n', &mut bytes) {
                Ok(0) => break,
                Ok(_) => {}
                Err(err) => {
                    // A truncated or corrupt compressed file: what came before counts.
                    self.bad.push(BadLine {
                        source: format!("{name}:{number}"),
                        message: format!("unreadable from here on: {err}"),
                    });
                    break;
                }
            }
            let source = format!("{name}:{number}");
            if !bytes.ends_with(b"\n") {
                self.lines += 1;
                self.bad.push(BadLine {
                    source,
                    message: "truncated line (no newline at the end of the input)".into(),
                });
                break;
            }
            let text = String::from_utf8_lossy(&bytes);
            if text.trim().is_empty() {
                continue;
            }
            self.lines += 1;
            match parse(&text, source.clone()) {
                Ok(Some(observation)) => self.observations.push(observation),
                // Not an access (a container reported for going over a budget).
                Ok(None) => {}
                Err(message) => self.bad.push(BadLine { source, message }),
            }
        }
    }
}

fn parse(text: &str, source: String) -> Result<Option<Observation>, String> {
    let line: Line =
        serde_json::from_str(text).map_err(|err| format!("not a credwatch record: {err}"))?;
    match line.schema {
        Some(SCHEMA) => {}
        Some(other) => {
            return Err(format!(
                "record schema {other} (this credwatch reads {SCHEMA})"
            ));
        }
        None => return Err("not a credwatch record: no schema".into()),
    }
    if line.kind.as_deref() == Some("budget") {
        return Ok(None);
    }
    let at = line
        .ts
        .as_deref()
        .and_then(parse_time)
        .ok_or("record without a valid ts")?;
    let secret = line
        .secret
        .and_then(|s| s.name)
        .ok_or("record without secret.name")?;
    let kind = line.kind.ok_or("record without kind")?;
    let verdict = line.verdict.ok_or("record without verdict")?;
    if verdict == "suppressed" {
        return Err(format!(
            "{} access(es) summed over a container's record budget or log share (no path or binary): the evidence is incomplete",
            line.count.unwrap_or(1)
        ));
    }
    let (path, path_unusable) = match &line.file {
        Some(f) => (
            f.path.clone(),
            if f.outside_root {
                Some("file outside the process' own filesystem")
            } else if f.path_truncated {
                Some("path truncated by the kernel")
            } else {
                None
            },
        ),
        None => (None, None),
    };
    if kind == "file" && path.is_none() {
        return Err("file record without file.path".into());
    }
    let endpoint = line.network.as_ref().map(|n| {
        format!(
            "{}:{}",
            n.address.as_deref().unwrap_or("?"),
            n.port.unwrap_or_default()
        )
    });
    let container = line.container.map(|c| ContainerSeen {
        id: c.id.unwrap_or_default(),
        name: c.name,
        image: c.image,
        started: c.started.as_deref().and_then(parse_time),
        pod: line.pod.map(|p| PodSeen {
            name: p.name,
            namespace: p.namespace,
            uid: p.uid,
            workload: p.workload,
            labels: p.labels,
        }),
    });
    Ok(Some(Observation {
        accesses: line.count.unwrap_or(1).max(1),
        at,
        node: line.node,
        verdict,
        reason: line.reason,
        secret,
        path,
        path_unusable,
        endpoint,
        exe: line.process.exe,
        pid: line.process.pid,
        args: line.process.args,
        entry: line.process.container_entry,
        container,
        source,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"schema":1,"ts":"2026-11-30T10:00:00.5Z","node":"n1","verdict":"undeclared","reason":"no footprint selects this container","kind":"file","secret":{"name":"mounted-secrets","catalog_entry":"default/mounted-secrets"},"file":{"path":"/run/secrets/token","flags":["O_RDONLY"],"result":3,"syscall":"openat"},"process":{"pid":7,"tid":7,"uid":0,"gid":0,"comm":"cat","exe":"/bin/busybox","container_entry":"init","ancestors":[]},"container":{"id":"c1","name":"web","runtime":"runc","cgroup":"/c1"}}"#;

    fn read(text: &[u8]) -> Evidence {
        let mut evidence = Evidence::default();
        evidence.read_lines("log", Box::new(std::io::Cursor::new(text.to_vec())));
        evidence
    }

    #[test]
    fn bad_lines_are_counted_with_their_place() {
        let input = format!(
            "{GOOD}\nnot json\n{}\n{}\n\n{GOOD}\n{{\"schema\":1,\"ts\":\"2026",
            GOOD.replace("\"schema\":1", "\"schema\":2"),
            GOOD.replace(
                r#""secret":{"name":"mounted-secrets","catalog_entry":"default/mounted-secrets"},"#,
                ""
            )
        );
        let e = read(input.as_bytes());
        assert_eq!(e.observations.len(), 2);
        let places: Vec<_> = e.bad.iter().map(|b| b.source.as_str()).collect();
        assert_eq!(places, ["log:2", "log:3", "log:4", "log:7"]);
        assert!(e.bad[1].message.contains("schema 2"), "{:?}", e.bad[1]);
        assert!(e.bad[2].message.contains("secret.name"));
        assert!(e.bad[3].message.contains("truncated"));
    }

    #[test]
    fn gzip_is_read_like_plain_text() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credwatch.jsonl.1.gz");
        let mut gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&path).unwrap(),
            flate2::Compression::default(),
        );
        writeln!(gz, "{GOOD}").unwrap();
        gz.finish().unwrap();
        let mut e = Evidence::default();
        e.read_source(path.to_str().unwrap()).unwrap();
        assert_eq!(e.observations.len(), 1, "{:?}", e.bad);
        let o = &e.observations[0];
        assert_eq!(o.path.as_deref(), Some("/run/secrets/token"));
        assert_eq!(o.entry.as_deref(), Some("init"));
        assert!(o.source.ends_with(":1"));
    }
}
