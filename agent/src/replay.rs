//! `credwatch replay --policies DIR FILE.jsonl`: re-judges recorded accesses against a policy
//! set without eBPF, to try footprints before rolling them out. Output uses the record schema;
//! only `verdict`, `reason` and `policy` change.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::{
    containers::{Metadata, Pod},
    error::UsageError,
    policy,
    policy::verdict::{self, Subject, Verdict},
};

pub fn replay(policies: &Path, file: &Path) -> Result<()> {
    let set = policy::load_dir(policies).map_err(|problems| {
        for p in &problems {
            println!("{p}");
        }
        UsageError(format!(
            "{} problem(s) in {}",
            problems.len(),
            policies.display()
        ))
    })?;
    let input = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let mut out = std::io::stdout().lock();
    let mut bad = 0;
    for (index, line) in BufReader::new(input).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", file.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let mut record: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(err) => {
                eprintln!("{}:{}: not a JSON record: {err}", file.display(), index + 1);
                bad += 1;
                continue;
            }
        };
        // Not an access: a container reported for going over a budget, passed through.
        if record["kind"] == "budget" {
            writeln!(out, "{record}")?;
            continue;
        }
        let Some(secret) = record["secret"]["name"].as_str().map(str::to_string) else {
            eprintln!(
                "{}:{}: record without secret.name",
                file.display(),
                index + 1
            );
            bad += 1;
            continue;
        };
        let container = container_of(&record);
        let exe = record["process"]["exe"]
            .as_str()
            .map(|s| s.as_bytes().to_vec());
        let path = record["file"]["path"]
            .as_str()
            .map(|s| s.as_bytes().to_vec());
        // A host process's cgroup, for `host: true` footprints narrowed by `cgroup`.
        let host_cgroup = record["process"]["cgroup"].as_str().map(str::to_string);
        let subject = Subject {
            container: container.as_ref(),
            host_cgroup: host_cgroup.as_deref().filter(|_| container.is_none()),
            exe: exe.as_deref(),
        };
        let outside_root = record["file"]["outside_root"] == true;
        let judgement = verdict::judge(
            &set.footprints,
            &subject,
            &secret,
            path.as_deref(),
            outside_root,
        );
        if judgement.verdict == Verdict::Ignored {
            continue;
        }
        record["verdict"] = json!(judgement.verdict.as_str());
        record["reason"] = json!(judgement.reason);
        match judgement.policy {
            Some(p) => {
                record["policy"] = json!({"name": p.name, "action": judgement.action.as_str()})
            }
            None => {
                if let Some(map) = record.as_object_mut() {
                    map.remove("policy");
                }
            }
        }
        writeln!(out, "{record}")?;
    }
    if bad > 0 {
        bail!(
            "{bad} line(s) of {} were not credwatch records",
            file.display()
        );
    }
    Ok(())
}

/// The container (and pod) a recorded access came from, as the record names it.
fn container_of(record: &Value) -> Option<Metadata> {
    let c = record.get("container")?;
    let text = |v: &Value| v.as_str().map(str::to_string);
    let pod = record.get("pod").map(|p| Pod {
        name: text(&p["name"]),
        namespace: text(&p["namespace"]),
        uid: text(&p["uid"]),
        labels: p["labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_else(BTreeMap::new),
    });
    Some(Metadata {
        id: text(&c["id"]).unwrap_or_default(),
        name: text(&c["name"]),
        image: text(&c["image"]),
        runtime: "recorded",
        cgroup: text(&c["cgroup"]).unwrap_or_default(),
        pod,
        incomplete: false,
        ..Default::default()
    })
}
