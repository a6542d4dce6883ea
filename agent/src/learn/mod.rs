//! `credwatch learn`: footprints from observed behaviour. Reads forensic logs (or runs the
//! probes for a while), groups accesses by workload, and writes one reviewable footprint per
//! workload with the evidence behind each entry. Accesses by processes that entered a
//! container through exec are quarantined, deviations from existing footprints are set aside
//! for review, and `--check` turns the same comparison into a CI gate.

mod evidence;
mod group;
mod render;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use time::OffsetDateTime;

use crate::{
    containers::{Metadata, Pod},
    error::UsageError,
    policy::verdict::{self, Subject, Verdict},
    policy::{self, PolicySet},
};
use evidence::{Evidence, Observation};
pub use group::GroupBy;
use group::{Group, GroupKey, learned_binary, learned_path};
use render::{AllowDoc, DocMetadata, DocSpec, FootprintDoc, LearnedSelector};

/// `credwatch learn` arguments (README, "From zero to footprints").
#[derive(clap::Args, Debug)]
pub struct LearnOptions {
    /// The catalogue (and any footprints in force) to learn against.
    #[arg(long, default_value = "./policies")]
    pub policies: PathBuf,
    /// Forensic logs to learn from (plain or gzip; - for stdin). Repeatable.
    #[arg(long = "from", value_name = "FILE")]
    pub from: Vec<String>,
    /// Watch with the probes instead of reading logs (needs root), for --duration.
    #[arg(long, conflicts_with = "from", requires = "duration")]
    pub live: bool,
    /// How long --live watches, e.g. 10m, 1h.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Where to write the footprints (one YAML file each).
    #[arg(long, required_unless_present = "check")]
    pub out: Option<PathBuf>,
    /// Existing footprints: kept as written, learned entries added, unused ones reported.
    #[arg(long)]
    pub merge: Option<PathBuf>,
    /// Exit 1 when the existing footprints (--merge, else --policies) do not cover what was
    /// observed, and list what is missing.
    #[arg(long)]
    pub check: bool,
    #[arg(long, value_enum, default_value = "workload")]
    pub group_by: GroupBy,
    /// Also learn processes outside containers (one `host: true` footprint).
    #[arg(long)]
    pub host: bool,
    /// The learned footprints' action.
    #[arg(long, default_value = "log", value_parser = ["log", "alert"])]
    pub action: String,
    /// Learn accesses an existing footprint judged as deviations (default: listed for review).
    #[arg(long)]
    pub accept_deviations: bool,
    /// Footprints whose last new access is more recent than this before the window's end are
    /// marked not yet stable.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub min_quiet: Option<Duration>,
}

/// Why an observation was not learned.
enum Set {
    Quarantined,
    Review,
    Unlearnable(&'static str),
}

struct Outcome {
    groups: BTreeMap<GroupKey, Group>,
    set_aside: Vec<(Set, usize)>,
    host_skipped: usize,
}

pub fn learn(opts: LearnOptions) -> Result<bool> {
    if opts.from.is_empty() && !opts.live {
        return Err(
            UsageError("learn needs --from FILE (or -) or --live --duration DUR".into()).into(),
        );
    }
    let set = load(&opts.policies, None)?;
    let mut evidence = Evidence::default();
    let mut window_start = None;
    if opts.live {
        let (log, started) = watch_live(&opts)?;
        window_start = Some(started);
        evidence.read_source(log.to_str().context("temporary log path")?)?;
    }
    for source in &opts.from {
        evidence.read_source(source)?;
    }
    let outcome = classify(&evidence, &opts);
    let window = window(&evidence, window_start);
    let out = &mut std::io::stdout().lock();
    writeln!(
        out,
        "credwatch learn: {} record(s) in {} line(s) from {} source(s); window {}",
        evidence.observations.len(),
        evidence.lines,
        opts.from.len() + usize::from(opts.live),
        window.map_or("(empty)".into(), |(a, b)| format!(
            "{} .. {}",
            render::rfc3339(a),
            render::rfc3339(b)
        ))
    )?;

    let existing = match &opts.merge {
        Some(dir) => Some((load(&opts.policies, Some(dir))?, read_docs(dir)?)),
        None => None,
    };
    let mut ok = true;
    if opts.check {
        let judge_set = existing.as_ref().map_or(&set, |(s, _)| s);
        ok = check(out, &evidence, &opts, judge_set)?;
    }
    if let Some(dir) = &opts.out {
        let docs = footprints(out, &evidence, &outcome, window, &opts, existing.as_ref())?;
        write_docs(dir, &docs)?;
    }
    report(out, &evidence, &outcome)?;
    Ok(ok)
}

fn load(policies: &Path, merge: Option<&Path>) -> Result<PolicySet> {
    let dirs: Vec<&Path> = std::iter::once(policies).chain(merge).collect();
    policy::load_dirs(&dirs).map_err(|problems| {
        for p in &problems {
            eprintln!("{p}");
        }
        UsageError(format!("{} problem(s) in the policies", problems.len())).into()
    })
}

/// Sorts every observation into a footprint, or says why it is not learned.
fn classify(evidence: &Evidence, opts: &LearnOptions) -> Outcome {
    let mut outcome = Outcome {
        groups: BTreeMap::new(),
        set_aside: Vec::new(),
        host_skipped: 0,
    };
    for (index, o) in evidence.observations.iter().enumerate() {
        if o.container.is_none() && !opts.host {
            outcome.host_skipped += 1;
            continue;
        }
        let why = if o.entry.as_deref() == Some("exec") {
            Some(Set::Quarantined)
        } else if o.verdict == "deviation" && !opts.accept_deviations {
            Some(Set::Review)
        } else {
            o.path_unusable.map(Set::Unlearnable)
        };
        if let Some(why) = why {
            outcome.set_aside.push((why, index));
            continue;
        }
        let Some(exe) = o.exe.as_deref().and_then(learned_binary) else {
            outcome
                .set_aside
                .push((Set::Unlearnable("binary unknown or not valid UTF-8"), index));
            continue;
        };
        let path = match o.path.as_deref().map(learned_path) {
            Some(None) => {
                outcome
                    .set_aside
                    .push((Set::Unlearnable("path is not valid UTF-8"), index));
                continue;
            }
            Some(Some(p)) => Some(p),
            None => None,
        };
        let Some(key) = GroupKey::of(o, opts.group_by) else {
            outcome.set_aside.push((
                Set::Unlearnable("container has no name or image to group by"),
                index,
            ));
            continue;
        };
        outcome
            .groups
            .entry(key)
            .or_default()
            .add(index, o, path, exe);
    }
    outcome
}

fn window(
    evidence: &Evidence,
    start: Option<OffsetDateTime>,
) -> Option<(OffsetDateTime, OffsetDateTime)> {
    let times = evidence.observations.iter().map(|o| o.at);
    let first = start.or_else(|| times.clone().min())?;
    let last = times.max().unwrap_or(first).max(first);
    Some((first, last))
}

/// The container (and pod) of an observation, as the selectors see it.
fn metadata(o: &Observation) -> Option<Metadata> {
    let c = o.container.as_ref()?;
    Some(Metadata {
        id: c.id.clone(),
        name: c.name.clone(),
        image: c.image.clone(),
        runtime: "recorded",
        pod: c.pod.as_ref().map(|p| Pod {
            name: p.name.clone(),
            namespace: p.namespace.clone(),
            uid: p.uid.clone(),
            labels: p.labels.clone(),
        }),
        ..Default::default()
    })
}

/// The verdict the policy set gives an observation now.
fn judge<'a>(set: &'a PolicySet, o: &Observation) -> verdict::Judgement<'a> {
    let meta = metadata(o);
    let subject = Subject {
        container: meta.as_ref(),
        host_cgroup: None,
        exe: o.exe.as_deref().map(str::as_bytes),
    };
    verdict::judge(
        &set.footprints,
        &subject,
        &o.secret,
        o.path.as_deref().map(str::as_bytes),
        false,
    )
}

/// `--check`: every access the footprints would be asked about must be allowed by them —
/// deviations included; exec'd processes and unlearnable paths are reported separately.
fn check(
    out: &mut impl std::io::Write,
    evidence: &Evidence,
    opts: &LearnOptions,
    set: &PolicySet,
) -> Result<bool> {
    let mut missing = BTreeSet::new();
    for o in &evidence.observations {
        let skipped = (o.container.is_none() && !opts.host)
            || o.entry.as_deref() == Some("exec")
            || o.path_unusable.is_some();
        if skipped {
            continue;
        }
        let j = judge(set, o);
        if j.verdict != Verdict::Allowed {
            missing.insert(format!("{} ({}) [{}]", access(o), j.reason, o.source));
        }
    }
    if missing.is_empty() {
        writeln!(out, "check: the footprints cover every access observed")?;
        return Ok(true);
    }
    writeln!(
        out,
        "check: {} access(es) not covered by the footprints:",
        missing.len()
    )?;
    for m in &missing {
        writeln!(out, "  missing: {m}")?;
    }
    Ok(false)
}

/// "where: secret path-or-endpoint by binary", for the report and the check.
fn access(o: &Observation) -> String {
    format!(
        "{}: {} {} by {}",
        describe_container(o),
        o.secret,
        o.path.as_deref().or(o.endpoint.as_deref()).unwrap_or(""),
        o.exe.as_deref().unwrap_or("?")
    )
}

fn describe_container(o: &Observation) -> String {
    match &o.container {
        Some(c) => match &c.pod {
            Some(p) => format!(
                "{}/{}/{}",
                p.namespace.as_deref().unwrap_or("?"),
                p.name.as_deref().unwrap_or("?"),
                c.name.as_deref().unwrap_or("?")
            ),
            None => c.name.clone().unwrap_or_else(|| c.id.clone()),
        },
        None => "host".into(),
    }
}

/// Existing `SecretFootprint` documents of a directory, by name, as written.
fn read_docs(dir: &Path) -> Result<BTreeMap<String, FootprintDoc>> {
    use serde::Deserialize as _;
    let mut docs = BTreeMap::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        for document in serde_norway::Deserializer::from_str(&text) {
            let value = serde_norway::Value::deserialize(document)?;
            if value.get("kind").and_then(|k| k.as_str()) != Some("SecretFootprint") {
                continue;
            }
            let doc: FootprintDoc = serde_norway::from_value(value)
                .with_context(|| format!("{}: a SecretFootprint", file.display()))?;
            docs.insert(doc.metadata.name.clone(), doc);
        }
    }
    Ok(docs)
}

/// The footprint documents to write: learned ones, and with `--merge` the existing ones with
/// what they miss added.
fn footprints(
    out: &mut impl std::io::Write,
    evidence: &Evidence,
    outcome: &Outcome,
    window: Option<(OffsetDateTime, OffsetDateTime)>,
    opts: &LearnOptions,
    existing: Option<&(PolicySet, BTreeMap<String, FootprintDoc>)>,
) -> Result<BTreeMap<String, FootprintDoc>> {
    let mut docs: BTreeMap<String, FootprintDoc> =
        existing.map(|(_, d)| d.clone()).unwrap_or_default();
    let (window_start, window_end) =
        window.unwrap_or((OffsetDateTime::UNIX_EPOCH, OffsetDateTime::UNIX_EPOCH));
    for (key, group) in &outcome.groups {
        // With --merge: the existing footprint that selects this workload, and what of the
        // group it does not allow yet.
        let home = existing.and_then(|(set, d)| {
            let o = &evidence.observations[*group.observed.first()?];
            let name = &judge(set, o).policy?.name;
            d.contains_key(name).then(|| (set, name.clone()))
        });
        let additions = match home {
            Some((set, _)) => {
                let mut only_new = Group::default();
                for &i in &group.observed {
                    let o = &evidence.observations[i];
                    if judge(set, o).verdict != Verdict::Allowed {
                        let path = o.path.as_deref().and_then(learned_path);
                        let exe = o
                            .exe
                            .as_deref()
                            .and_then(learned_binary)
                            .unwrap_or_default();
                        only_new.add(i, o, path, exe);
                    }
                }
                only_new
            }
            None => Group {
                entries: group.entries.clone(),
                ..Default::default()
            },
        };
        let allows: Vec<AllowDoc> = additions
            .entries
            .iter()
            .map(|((secret, binary), learned)| render::allow_doc(secret, binary, learned))
            .collect();
        let complete = group.complete(window_start) && evidence.bad.is_empty();
        let quiet = group.last_new().map(|t| window_end - t);
        let stable = opts.min_quiet.map(|min| {
            quiet.is_some_and(|q| q >= time::Duration::try_from(min).unwrap_or(time::Duration::MAX))
        });
        let name = match &home {
            Some((_, name)) => name.clone(),
            None => key.footprint_name(),
        };
        writeln!(
            out,
            "footprint {name}: {}, {} replica(s), {} distinct access(es){}{}",
            if complete { "complete" } else { "partial" },
            group.instances.len().max(group.pods.len()),
            group.distinct(),
            quiet.map_or(String::new(), |q| format!(
                ", last new one {} before the window's end",
                human(q)
            )),
            match stable {
                Some(true) => ", stable",
                Some(false) => ", NOT YET STABLE",
                None => "",
            }
        )?;
        for a in &allows {
            writeln!(
                out,
                "  + {} {} by {}",
                a.secret,
                a.paths.join(" "),
                a.binaries.join(" ")
            )?;
        }
        let mut annotations = BTreeMap::new();
        if let Some((a, b)) = window {
            annotations.insert(
                render::ANNOTATION_WINDOW.into(),
                format!("{}/{}", render::rfc3339(a), render::rfc3339(b)),
            );
        }
        annotations.insert(
            render::ANNOTATION_NODES.into(),
            group.nodes.iter().cloned().collect::<Vec<_>>().join(","),
        );
        annotations.insert(
            render::ANNOTATION_COVERAGE.into(),
            if complete { "complete" } else { "partial" }.into(),
        );
        if let Some(stable) = stable {
            annotations.insert(render::ANNOTATION_STABLE.into(), stable.to_string());
        }
        match home {
            Some((set, name)) => {
                let doc = docs.get_mut(&name).expect("home footprint exists");
                doc.spec.allow.extend(allows);
                doc.metadata.annotations.extend(annotations);
                removal_candidates(out, evidence, group, set, &name)?;
            }
            None => {
                docs.insert(
                    name.clone(),
                    new_doc(name, key, group, allows, annotations, &opts.action),
                );
            }
        }
    }
    Ok(docs)
}

/// Entries of an existing footprint that nothing in the window used.
fn removal_candidates(
    out: &mut impl std::io::Write,
    evidence: &Evidence,
    group: &Group,
    set: &PolicySet,
    name: &str,
) -> Result<()> {
    let Some(footprint) = set.footprints.iter().find(|f| f.name == name) else {
        return Ok(());
    };
    for (n, allow) in footprint.allows.iter().enumerate() {
        let used = group.observed.iter().any(|&i| {
            let o = &evidence.observations[i];
            allow.covers(
                &o.secret,
                o.path.as_deref().map(str::as_bytes),
                o.exe.as_deref().map(str::as_bytes),
            )
        });
        if !used {
            writeln!(
                out,
                "  - removal candidate: allow #{} ({}) was not used in the window",
                n + 1,
                allow.secret
            )?;
        }
    }
    Ok(())
}

fn new_doc(
    name: String,
    key: &GroupKey,
    group: &Group,
    allows: Vec<AllowDoc>,
    annotations: BTreeMap<String, String>,
    action: &str,
) -> FootprintDoc {
    let selector = match key {
        GroupKey::Pod {
            namespace,
            container,
            ..
        } => LearnedSelector {
            namespace: Some(namespace.clone()),
            pod_labels: group.identity_labels(),
            container: Some(container.clone()),
            ..Default::default()
        },
        GroupKey::Container(c) => LearnedSelector {
            container: Some(c.clone()),
            ..Default::default()
        },
        GroupKey::Image(i) => LearnedSelector {
            image: Some(group::glob_escape(i)),
            ..Default::default()
        },
        GroupKey::Host => LearnedSelector {
            host: Some(true),
            ..Default::default()
        },
    };
    FootprintDoc {
        api_version: policy::API_VERSION.into(),
        kind: "SecretFootprint".into(),
        metadata: DocMetadata {
            name,
            annotations,
            ..Default::default()
        },
        spec: DocSpec {
            selector: serde_norway::to_value(selector).unwrap_or_default(),
            allow: allows,
            action: Some(action.to_string()),
        },
    }
}

const HEADER: &str = "# Learned by `credwatch learn`: review before relying on it (README, \"From zero to footprints\").\n# `evidence` is for reviewers; the matcher ignores it.\n";

fn write_docs(dir: &Path, docs: &BTreeMap<String, FootprintDoc>) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, doc) in docs {
        let path = dir.join(format!("{name}.yaml"));
        let text = render::to_yaml(doc, HEADER)?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn report(out: &mut impl std::io::Write, evidence: &Evidence, outcome: &Outcome) -> Result<()> {
    let (mut quarantined, mut review, mut unlearnable) = (Vec::new(), Vec::new(), Vec::new());
    for (why, i) in &outcome.set_aside {
        let o = &evidence.observations[*i];
        let line = format!(
            "{} (pid {}, args {:?}) at {} [{}]",
            access(o),
            o.pid,
            o.args,
            render::rfc3339(o.at),
            o.source
        );
        match why {
            Set::Quarantined => quarantined.push(line),
            Set::Review => review.push(format!("{line} — {}", o.reason)),
            Set::Unlearnable(reason) => unlearnable.push(format!("{line} — {reason}")),
        }
    }
    for (title, items) in [
        (
            "quarantined (entered the container through exec; not learned)",
            quarantined,
        ),
        (
            "for review (deviations from a footprint in force; --accept-deviations learns them)",
            review,
        ),
        ("not learnable", unlearnable),
    ] {
        if !items.is_empty() {
            writeln!(out, "{title}: {}", items.len())?;
            for item in items {
                writeln!(out, "  {item}")?;
            }
        }
    }
    if outcome.host_skipped > 0 {
        writeln!(
            out,
            "host processes: {} access(es) not learned (--host learns them)",
            outcome.host_skipped
        )?;
    }
    if !evidence.bad.is_empty() {
        writeln!(
            out,
            "bad input: {} line(s) not used (every footprint is marked partial):",
            evidence.bad.len()
        )?;
        for bad in &evidence.bad {
            writeln!(out, "  {}: {}", bad.source, bad.message)?;
        }
    }
    Ok(())
}

fn human(d: time::Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.whole_seconds().max(0) as u64)).to_string()
}

/// `--live`: runs the agent for the duration with its log in a private temporary directory.
fn watch_live(opts: &LearnOptions) -> Result<(PathBuf, OffsetDateTime)> {
    let duration = opts.duration.context("--live needs --duration")?;
    let dir = std::env::temp_dir().join(format!("credwatch-learn-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let log = dir.join("observed.jsonl");
    let run = crate::run::RunOptions {
        policies: opts.policies.clone(),
        log: log.to_string_lossy().into_owned(),
        metrics_addr: "127.0.0.1:0".parse()?,
        node_name: None,
        cri_socket: None,
        // Learning needs what was accessed, not what images carry.
        audit_images: false,
        log_max_bytes: u64::MAX,
        log_keep: 1,
        ring_buffer_mib: 8,
        container_records_per_sec: 1000,
        container_burst: 10_000,
        // Its own log, read once: every access whole.
        container_log_records_per_hour: 0,
        kernel_log: None,
    };
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let started = crate::run::run_for(run, Some(duration))?;
    if !log.exists() {
        bail!("the agent wrote no log");
    }
    Ok((log, started))
}
