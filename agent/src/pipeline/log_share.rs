//! Each container's share of the forensic log. The kernel's record budget bounds what a
//! container sends per second, but at its steady rate a container could still, over hours,
//! rotate every other container's evidence out of the log files. So each container may write
//! `per_hour` records per hour (all at once, or spread); past that its accesses are still
//! counted in the metrics and summed per (kind, catalogue entry) into one summary record per
//! `WINDOW` (`verdict: "suppressed"`, `reason: "container over its log share"`, `count`).

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use crate::sinks::forensic::Record;

/// How long a container's over-share accesses are summed before their summary is written.
pub const WINDOW: Duration = Duration::from_secs(10);
const HOUR: f64 = 3600.0;

struct Bucket {
    /// Records it may write now.
    credit: f64,
    last: Instant,
}

struct Pending {
    summary: Record,
    since: Instant,
}

pub struct LogShare {
    /// Records per container and hour; 0: no share.
    per_hour: u64,
    buckets: HashMap<String, Bucket>,
    /// By (container id, kind, catalogue entry).
    pending: HashMap<(String, &'static str, String), Pending>,
    /// Containers reported over their share (until their bucket is full again).
    over: HashSet<String>,
}

impl LogShare {
    pub fn new(per_hour: u64) -> Self {
        LogShare {
            per_hour,
            buckets: HashMap::new(),
            pending: HashMap::new(),
            over: HashSet::new(),
        }
    }

    pub fn per_hour(&self) -> u64 {
        self.per_hour
    }

    /// Takes one record from `container`'s share; false when it has none left.
    pub fn admit(&mut self, container: &str, now: Instant) -> bool {
        if self.per_hour == 0 {
            return true;
        }
        let cap = self.per_hour as f64;
        // (Looked up before inserting: no key allocated for every record written.)
        if !self.buckets.contains_key(container) {
            let full = Bucket {
                credit: cap,
                last: now,
            };
            self.buckets.insert(container.to_string(), full);
        }
        let bucket = self.buckets.get_mut(container).expect("inserted above");
        let refill = now.duration_since(bucket.last).as_secs_f64() * cap / HOUR;
        bucket.credit = (bucket.credit + refill).min(cap);
        bucket.last = now;
        if bucket.credit < 1.0 {
            return false;
        }
        bucket.credit -= 1.0;
        true
    }

    /// Adds `record`'s `accesses` to its container's summary for the current window. True the
    /// first time the container is over its share (it is to be reported).
    pub fn summarise(&mut self, record: &Record, accesses: u64, now: Instant) -> bool {
        let Some(container) = record.container.as_ref().map(|c| c.id.clone()) else {
            return false;
        };
        let key = (
            container.clone(),
            record.kind,
            record.secret.catalog_entry.clone(),
        );
        let first_ts = record.first_ts.clone().unwrap_or_else(|| record.ts.clone());
        let last_ts = record.last_ts.clone().unwrap_or_else(|| record.ts.clone());
        let pending = self.pending.entry(key).or_insert_with(|| Pending {
            summary: Record {
                verdict: "suppressed",
                reason: "container over its log share".to_string(),
                file: None,
                network: None,
                memory: None,
                budget: None,
                process: Default::default(),
                policy: None,
                count: Some(0),
                first_ts: Some(first_ts),
                last_ts: None,
                repeat_of: None,
                image_finding: None,
                ..record.clone()
            },
            since: now,
        });
        let summary = &mut pending.summary;
        summary.count = Some(summary.count.unwrap_or(0) + accesses);
        summary.ts = last_ts.clone();
        summary.last_ts = Some(last_ts);
        self.over.insert(container)
    }

    /// Summaries whose window is over (`all`: every one); forgets containers whose share is
    /// whole again.
    pub fn due(&mut self, now: Instant, all: bool) -> Vec<Record> {
        let due: Vec<_> = self
            .pending
            .iter()
            .filter(|(_, p)| all || now.duration_since(p.since) >= WINDOW)
            .map(|(key, _)| key.clone())
            .collect();
        let summaries = due
            .into_iter()
            .filter_map(|key| self.pending.remove(&key))
            .map(|p| p.summary)
            .collect();
        let cap = self.per_hour as f64;
        self.buckets
            .retain(|_, b| b.credit + now.duration_since(b.last).as_secs_f64() * cap / HOUR < cap);
        let buckets = &self.buckets;
        self.over.retain(|id| buckets.contains_key(id));
        summaries
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::forensic::{ContainerSection, SecretSection};

    fn access(container: &str, ts: &str) -> Record {
        Record {
            schema: 1,
            ts: ts.to_string(),
            event_id: "e".to_string(),
            node: "n".to_string(),
            verdict: "deviation",
            reason: "secret not in footprint".to_string(),
            kind: "file",
            secret: SecretSection {
                name: "mounted-secrets".to_string(),
                catalog_entry: "default/mounted-secrets".to_string(),
            },
            file: None,
            network: None,
            memory: None,
            budget: None,
            process: Default::default(),
            container: Some(ContainerSection {
                id: container.to_string(),
                name: None,
                image: None,
                runtime: "runc",
                cgroup: format!("/{container}"),
                started: None,
            }),
            pod: None,
            policy: None,
            count: None,
            first_ts: None,
            last_ts: None,
            repeat_of: None,
            image_finding: None,
        }
    }

    #[test]
    fn past_its_share_a_container_is_summed_and_others_are_not() {
        let mut share = LogShare::new(3);
        let now = Instant::now();
        for _ in 0..3 {
            assert!(share.admit("noisy", now));
        }
        assert!(!share.admit("noisy", now));
        assert!(
            share.admit("quiet", now),
            "another container keeps its share"
        );
        assert!(
            share.summarise(&access("noisy", "t1"), 1, now),
            "reported once"
        );
        assert!(!share.summarise(&access("noisy", "t2"), 5, now));
        assert!(share.due(now, false).is_empty(), "its window is not over");
        let summaries = share.due(now + WINDOW, false);
        assert_eq!(summaries.len(), 1);
        let s = &summaries[0];
        assert_eq!((s.verdict, s.count), ("suppressed", Some(6)));
        assert_eq!(
            (s.first_ts.as_deref(), s.last_ts.as_deref()),
            (Some("t1"), Some("t2"))
        );
        assert_eq!(s.secret.name, "mounted-secrets");
        // The share comes back with time (3 per hour: one every 20 minutes).
        assert!(share.admit("noisy", now + Duration::from_secs(1200)));
    }

    #[test]
    fn no_share_means_no_limit() {
        let mut share = LogShare::new(0);
        assert!((0..100_000).all(|_| share.admit("c", Instant::now())));
    }
}
