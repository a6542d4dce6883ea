//! The agent's side of the image audit: each new container's image is audited once (through
//! containerd's content API, on a worker thread at the lowest CPU priority, one image at a
//! time), and a file record of a container reading a credential its own image carries is
//! marked `image_finding`: a baked secret in use, which must be rotated.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, mpsc},
};

use log::{debug, info, warn};

use super::{
    containerd::{ContentStore, host_platform},
    finding::{Severity, Status},
    image::{Incomplete, Store, targets},
    layer::Layers,
};
use crate::policy::Catalog;

/// Images audited (and kept) per agent: a node runs far fewer; past it, new images are not
/// audited (logged once).
const MAX_IMAGES: usize = 1024;
/// Layer findings kept per image for the record join.
const MAX_BAKED_FILES: usize = 4096;
/// A node audit stops a layer that expands past this (the CLI's default is larger).
const NODE_MAX_LAYER_BYTES: u64 = 16 << 30;

/// A credential file present in an image's final filesystem.
#[derive(Debug, Clone)]
pub struct BakedFile {
    pub status: Status,
    pub layer: usize,
    pub rule: String,
}

#[derive(Debug, Default)]
pub struct ImageAudit {
    pub image: String,
    pub manifest_digest: String,
    /// Present credential files by path (as the container sees them).
    pub baked: HashMap<String, BakedFile>,
    /// Findings of every status and source, for the metric.
    pub counts: BTreeMap<(&'static str, &'static str), i64>,
    pub incomplete: Option<String>,
}

struct Request {
    image: String,
    catalog: Catalog,
}

pub struct NodeAudits {
    requests: mpsc::Sender<Request>,
    answers: mpsc::Receiver<ImageAudit>,
    asked: HashSet<String>,
    done: HashMap<String, Arc<ImageAudit>>,
    warned_full: bool,
}

impl NodeAudits {
    pub fn start(socket: PathBuf) -> Option<NodeAudits> {
        let (requests, incoming) = mpsc::channel::<Request>();
        let (outgoing, answers) = mpsc::channel();
        std::thread::Builder::new()
            .name("image-audit".into())
            .spawn(move || worker(socket, incoming, outgoing))
            .ok()?;
        Some(NodeAudits {
            requests,
            answers,
            asked: HashSet::new(),
            done: HashMap::new(),
            warned_full: false,
        })
    }

    /// Audits `image` (a containerd reference; its namespace is looked up) unless it was
    /// asked before.
    pub fn want(&mut self, image: &str, catalog: &Catalog) {
        if self.asked.contains(image) {
            return;
        }
        if self.asked.len() >= MAX_IMAGES {
            if !std::mem::replace(&mut self.warned_full, true) {
                warn!("image audit: {MAX_IMAGES} images audited; newer images are not");
            }
            return;
        }
        self.asked.insert(image.to_string());
        let _ = self.requests.send(Request {
            image: image.to_string(),
            catalog: catalog.clone(),
        });
    }

    /// Audits finished since the last call.
    pub fn collect(&mut self) -> Vec<Arc<ImageAudit>> {
        let mut new = Vec::new();
        for audit in self.answers.try_iter() {
            let audit = Arc::new(audit);
            self.done.insert(audit.image.clone(), audit.clone());
            new.push(audit);
        }
        new
    }

    /// The credential `image` carries at `path`, if its audit is done and found one there.
    pub fn baked(&self, image: &str, path: &str) -> Option<&BakedFile> {
        self.done.get(image)?.baked.get(path)
    }
}

fn worker(socket: PathBuf, incoming: mpsc::Receiver<Request>, outgoing: mpsc::Sender<ImageAudit>) {
    // The audit is background work: it yields the CPU to everything else on the node.
    // SAFETY: setpriority on this thread's own id.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19);
    }
    let key = std::env::var("CREDWATCH_FINGERPRINT_KEY")
        .map(String::into_bytes)
        .unwrap_or_else(|_| super::DEFAULT_FINGERPRINT_KEY.to_vec());
    let mut by_digest: HashMap<String, Findings> = HashMap::new();
    for request in incoming {
        let started = std::time::Instant::now();
        let mut audit = ImageAudit {
            image: request.image.clone(),
            ..Default::default()
        };
        match audit_image(
            &socket,
            &request.image,
            &request.catalog,
            &key,
            &mut by_digest,
        ) {
            Ok((digest, baked, counts)) => {
                audit.manifest_digest = digest;
                audit.baked = baked;
                audit.counts = counts;
            }
            Err(Incomplete(why)) => audit.incomplete = Some(why),
        }
        match &audit.incomplete {
            Some(why) => warn!("image audit of {}: incomplete: {why}", audit.image),
            None => info!(
                "image audit of {} ({}): {} credential file(s) present, in {:?}",
                audit.image,
                audit.manifest_digest,
                audit.baked.len(),
                started.elapsed()
            ),
        }
        if outgoing.send(audit).is_err() {
            return;
        }
    }
}

/// Present credential files by path, and finding counts by (status, severity).
type Findings = (HashMap<String, BakedFile>, Counts);
type Counts = BTreeMap<(&'static str, &'static str), i64>;
/// The manifest digest and its findings.
type Audited = (
    String,
    HashMap<String, BakedFile>,
    BTreeMap<(&'static str, &'static str), i64>,
);

fn audit_image(
    socket: &std::path::Path,
    spec: &str,
    catalog: &Catalog,
    key: &[u8],
    by_digest: &mut HashMap<String, Findings>,
) -> Result<Audited, Incomplete> {
    let store = Store::Containerd(Box::new(ContentStore::open(spec, socket)?));
    let platform = host_platform();
    let target = targets(&store, spec, Some(&platform))?
        .into_iter()
        .next()
        .ok_or_else(|| Incomplete(format!("no {platform} image")))?;
    if let Some((baked, counts)) = by_digest.get(&target.manifest_digest) {
        debug!(
            "image audit: {spec} is {} (audited before)",
            target.manifest_digest
        );
        return Ok((
            target.manifest_digest.clone(),
            baked.clone(),
            counts.clone(),
        ));
    }
    let mut layers = Layers::new(catalog, key, NODE_MAX_LAYER_BYTES);
    for (index, name) in target.layers.iter().enumerate() {
        layers.scan(index, store.read(name)?)?;
    }
    let mut counts: BTreeMap<(&'static str, &'static str), i64> = BTreeMap::new();
    let mut baked = HashMap::new();
    for hit in layers.hits {
        *counts
            .entry((hit.status.name(), hit.severity.name()))
            .or_default() += 1;
        if hit.status == Status::Present
            && hit.severity >= Severity::Medium
            && baked.len() < MAX_BAKED_FILES
        {
            baked.insert(
                hit.path,
                BakedFile {
                    status: hit.status,
                    layer: hit.layer,
                    rule: hit.rule,
                },
            );
        }
    }
    for hit in super::config::scan(&target.config) {
        *counts.entry(("present", hit.severity.name())).or_default() += 1;
    }
    if by_digest.len() < MAX_IMAGES {
        by_digest.insert(
            target.manifest_digest.clone(),
            (baked.clone(), counts.clone()),
        );
    }
    Ok((target.manifest_digest, baked, counts))
}
