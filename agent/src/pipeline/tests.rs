//! The pipeline's own decisions without a kernel: a record waits for its container's runtime
//! state (held) and is written once it is known or once waiting is pointless, and an allowed
//! access reaches the log once per interval while every access is counted.

use std::{sync::Arc, time::Instant};

use credwatch_common::{
    CGROUP_PATH_BYTES, CgroupRecord, FILE_OPEN_FIXED_BYTES, FileOpenRecord, KIND_CGROUP,
    KIND_FILE_OPEN, RecordHeader, cgroup_event, probe,
};

use super::{ALLOWED_EVERY, Pipeline};
use crate::{
    containers::{Containers, StateRoots},
    process::ProcessTable,
    secrets::SecretTable,
    sinks::{forensic::ForensicLog, metrics::Metrics},
};

const CONTAINER: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const CGROUP_ID: u64 = 4242;
/// No such process: the records carry what the kernel said about it.
const PID: u32 = 4_000_000;

struct Harness {
    dir: tempfile::TempDir,
    pipeline: Pipeline,
    metrics: Arc<Metrics>,
}

impl Harness {
    /// A pipeline whose catalogue knows `/run/secrets/**` and whose one footprint lets
    /// Docker containers read `/run/secrets/token` (and nothing else there).
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let policies = dir.path().join("policies");
        std::fs::create_dir(&policies).unwrap();
        std::fs::write(
            policies.join("p.yaml"),
            "apiVersion: credwatch.dev/v1alpha1\nkind: CredentialCatalog\nmetadata: {name: t}\n\
             spec:\n  files:\n    - name: mounted-secrets\n      paths: [\"/run/secrets/**\"]\n\
             ---\napiVersion: credwatch.dev/v1alpha1\nkind: SecretFootprint\nmetadata: {name: api}\n\
             spec:\n  selector: {cgroup: \"/system.slice/docker-*.scope\"}\n  allow:\n\
             \x20   - secret: mounted-secrets\n      paths: [\"/run/secrets/token\"]\n",
        )
        .unwrap();
        let set = crate::policy::load_dir(&policies).expect("test policies");
        let roots = StateRoots {
            runc: dir.path().join("runc"),
            containerd: dir.path().join("containerd"),
            docker: dir.path().join("docker"),
        };
        let log = ForensicLog::open(dir.path().join("log").to_str().unwrap(), 1 << 30, 1).unwrap();
        let metrics = Arc::new(Metrics::new());
        let pipeline = Pipeline::new(
            set,
            SecretTable::default(),
            ProcessTable::new(),
            Containers::new(roots, None),
            log,
            metrics.clone(),
            "node".into(),
            0,
        );
        Harness {
            dir,
            pipeline,
            metrics,
        }
    }

    /// The kernel reports the container's cgroup (`created`) or its removal.
    fn cgroup(&mut self, created: bool) {
        let path = format!("/system.slice/docker-{CONTAINER}.scope");
        let mut rec = CgroupRecord {
            header: RecordHeader::of::<CgroupRecord>(KIND_CGROUP),
            boot_ns: 1,
            event: if created {
                cgroup_event::MKDIR
            } else {
                cgroup_event::RMDIR
            },
            path_len: path.len() as u32,
            id: CGROUP_ID,
            path: [0; CGROUP_PATH_BYTES],
        };
        rec.path[..path.len()].copy_from_slice(path.as_bytes());
        self.pipeline.handle(&bytes(&rec));
    }

    /// The container's runtime writes its state (what `runc` leaves in its state directory).
    fn runtime_state(&self) {
        let dir = self.dir.path().join("docker").join(CONTAINER);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("state.json"),
            r#"{"config":{"labels":["io.kubernetes.container.name=api"]},"init_process_pid":0}"#,
        )
        .unwrap();
    }

    /// The container's process opened `path` (found by the kernel's path keys).
    fn open(&mut self, path: &str) {
        // SAFETY: all-zero is a valid FileOpenRecord.
        let mut rec: FileOpenRecord = unsafe { std::mem::zeroed() };
        rec.header = RecordHeader::of::<FileOpenRecord>(KIND_FILE_OPEN);
        rec.header.size = (FILE_OPEN_FIXED_BYTES + path.len()) as u32;
        rec.task.boot_ns = 2;
        rec.task.pid = PID;
        rec.task.tid = PID;
        rec.task.cgroup_id = CGROUP_ID;
        rec.probe = probe::OPENAT;
        rec.result = 3;
        rec.dirfd = -100;
        rec.matched = credwatch_common::matched::PREFIX;
        rec.path_len = path.len() as u32;
        rec.task.comm[..3].copy_from_slice(b"cat");
        rec.tail[..path.len()].copy_from_slice(path.as_bytes());
        let mut wire = bytes(&rec);
        wire.truncate(rec.header.size as usize);
        self.pipeline.handle(&wire);
    }

    /// The records written so far.
    fn records(&mut self) -> Vec<serde_json::Value> {
        self.pipeline.flush_log();
        let text = std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default();
        text.lines()
            .map(|line| serde_json::from_str(line).expect("a JSON record"))
            .collect()
    }

    /// `credwatch_credential_access_total` summed over its series with this verdict.
    fn accesses(&self, verdict: &str) -> u64 {
        let text = String::from_utf8(self.metrics.render()).unwrap();
        text.lines()
            .filter(|l| l.starts_with("credwatch_credential_access_total{"))
            .filter(|l| l.contains(&format!("verdict=\"{verdict}\"")))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
            .sum()
    }
}

/// The wire bytes of a plain #[repr(C)] record.
fn bytes<T: Copy>(rec: &T) -> Vec<u8> {
    // SAFETY: reading the bytes of a plain #[repr(C)] struct.
    unsafe { std::slice::from_raw_parts((rec as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

fn container_of(record: &serde_json::Value) -> (&str, &str) {
    let c = &record["container"];
    (c["id"].as_str().unwrap(), c["name"].as_str().unwrap_or(""))
}

#[test]
fn a_record_waits_for_its_containers_runtime_state_and_is_written_with_it() {
    let mut h = Harness::new();
    h.cgroup(true);
    h.open("/run/secrets/token");
    assert!(
        h.pipeline.has_held(),
        "no runtime state yet: the record waits"
    );
    h.pipeline.release_held(false);
    assert!(h.records().is_empty(), "still waiting: nothing written");

    h.runtime_state();
    h.pipeline.release_held(false);
    let records = h.records();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(container_of(&records[0]), (CONTAINER, "api"));
    assert_eq!(records[0]["verdict"], "allowed", "{}", records[0]);
    assert!(!h.pipeline.has_held());
    assert_eq!(h.metrics.missing_metadata.get(), 0);
}

#[test]
fn a_record_whose_container_never_shows_up_is_written_with_what_is_known_when_flushed() {
    let mut h = Harness::new();
    h.cgroup(true);
    h.open("/run/secrets/token");
    assert!(h.pipeline.has_held());
    // The agent is stopping (or the hold ran out): what the cgroup path says is written.
    h.pipeline.release_held(true);
    let records = h.records();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(container_of(&records[0]).0, CONTAINER);
    assert_eq!(h.metrics.missing_metadata.get(), 1);
    assert!(!h.pipeline.has_held());
}

#[test]
fn a_record_of_a_removed_container_is_written_at_once() {
    let mut h = Harness::new();
    h.cgroup(true);
    h.cgroup(false);
    // Its runtime state can no longer appear: waiting would only delay the evidence.
    h.open("/run/secrets/token");
    assert!(!h.pipeline.has_held());
    let records = h.records();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(container_of(&records[0]).0, CONTAINER);
    assert_eq!(h.metrics.missing_metadata.get(), 1);
}

#[test]
fn an_allowed_access_is_written_once_per_interval_and_every_access_is_counted() {
    let mut h = Harness::new();
    h.runtime_state();
    h.cgroup(true);
    for _ in 0..3 {
        h.open("/run/secrets/token");
    }
    assert_eq!(
        h.records().len(),
        1,
        "allowed repeats within the interval: one record"
    );
    assert_eq!(h.accesses("allowed"), 3);

    // Deviations are never folded: each is evidence.
    h.open("/run/secrets/other");
    h.open("/run/secrets/other");
    let records = h.records();
    assert_eq!(records.len(), 3, "{records:?}");
    assert_eq!(records[1]["verdict"], "deviation");
    assert_eq!(h.accesses("deviation"), 2);

    // Once the interval is over the allowed access is written again (`learn` sees it).
    h.pipeline
        .expire_allowed(Instant::now() + ALLOWED_EVERY + std::time::Duration::from_secs(1));
    h.open("/run/secrets/token");
    let records = h.records();
    assert_eq!(records.len(), 4, "{records:?}");
    assert_eq!(records[3]["verdict"], "allowed");
    assert_eq!(h.accesses("allowed"), 4);
}

#[test]
fn the_secret_files_a_search_found_are_counted() {
    let mut h = Harness::new();
    assert_eq!(h.metrics.secret_files.get(), 0);
    let secrets = h.dir.path().join("found");
    std::fs::create_dir(&secrets).unwrap();
    for name in ["a", "b"] {
        std::fs::write(secrets.join(name), "x").unwrap();
    }
    let policies = h.dir.path().join("found-policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(
        policies.join("c.yaml"),
        format!(
            "apiVersion: credwatch.dev/v1alpha1\nkind: CredentialCatalog\nmetadata: {{name: t}}\n\
             spec:\n  files:\n    - name: t\n      paths: [\"{}/**\"]\n",
            secrets.display()
        ),
    )
    .unwrap();
    let catalog = crate::policy::load_dir(&policies).unwrap().catalog;
    let (table, _) = crate::secrets::search(&catalog, &[]);
    h.pipeline.replace_secrets(table);
    assert_eq!(h.metrics.secret_files.get(), 2);
}
