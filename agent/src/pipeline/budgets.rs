//! Containers over a budget that is not about one credential access: too many catalogue files
//! in their filesystem for the kernel's inode map, DNS answers beyond their DNS budget, endpoint
//! addresses learned beyond their share. Each is reported once in the log (`kind: "budget"`,
//! `verdict: "over_budget"`, naming the container and what it exceeded) and counted in a
//! metric; every other container keeps its share.

use log::warn;

use super::Pipeline;
use crate::{
    containers::{Lookup, Metadata},
    probes::repeats::Repeats,
    sinks::{self, forensic, metrics::Family},
};

/// One container over one budget.
struct OverBudget {
    container: Option<forensic::ContainerSection>,
    pod: Option<forensic::PodSection>,
    budget: &'static str,
    limit: u64,
    found: u64,
    reason: &'static str,
    /// The window (boot-time ns) the kernel counted it in, when it did.
    window: Option<(u64, u64)>,
}

impl Pipeline {
    /// Names the containers whose filesystems hold more catalogue files than their share of
    /// the kernel's secret-inode map (a warning and a record once, and a gauge while it lasts).
    pub fn report_secret_budgets(&mut self, over: &[crate::secrets::OverBudget]) {
        self.metrics.secret_files_over_budget.reset();
        for o in over {
            let pid = o
                .root
                .strip_prefix("/proc")
                .ok()
                .and_then(|rest| rest.iter().next())
                .and_then(|p| p.to_str()?.parse::<u32>().ok());
            let meta = pid.and_then(|pid| {
                let cgroup_id = self.processes.cgroup_of(pid)?;
                self.containers
                    .resolve(cgroup_id, pid, Lookup::Cached)
                    .container()
            });
            let [namespace, workload, container] =
                crate::containers::metric_labels(meta.as_deref());
            let id = meta.as_deref().map_or("the host", |m| m.id.as_str());
            if self.secret_budget_warned.insert(id.to_string()) {
                warn!(
                    "{id}: more than {} catalogue files ({}+ under {}); only the first are tracked by inode, the rest by path",
                    crate::secrets::MAX_FILES_PER_ROOT,
                    o.found,
                    o.root.display()
                );
                self.write_over_budget(OverBudget {
                    container: meta.as_deref().map(sinks::container_section),
                    pod: meta.as_deref().and_then(sinks::pod_section),
                    budget: "secret_files",
                    limit: crate::secrets::MAX_FILES_PER_ROOT as u64,
                    found: o.found as u64,
                    reason: "more catalogue files in its filesystem than it may have tracked by inode: the rest are known by path only (a hardlink to one of them is not recognised)",
                    window: None,
                });
            }
            self.metrics
                .secret_files_over_budget
                .with_label_values(&[&namespace, &workload, &container])
                .set(o.found as i64);
        }
    }

    /// A container past its share of the forensic log (once, until its share is whole again):
    /// its further accesses are written as summaries.
    pub(super) fn report_over_log_share(&mut self, access: &forensic::Record) {
        self.write_over_budget(OverBudget {
            container: access.container.clone(),
            pod: access.pod.clone(),
            budget: "log_records",
            limit: self.log_share.per_hour(),
            found: self.log_share.per_hour() + 1,
            reason: "more records in an hour than its share of the forensic log: its further accesses are summed into summaries (verdict suppressed) every 10 s",
            window: None,
        });
    }

    /// DNS answers the kernel did not pass up for a container over its DNS budget in one
    /// window: a record per container and window (as the record budget's summaries are), and
    /// the count.
    pub(super) fn report_dns_answers_over_budget(&mut self, cgroup_id: u64, cut: &Repeats) {
        let meta = self
            .containers
            .resolve(cgroup_id, 0, Lookup::Cached)
            .container();
        self.count_over_budget(meta.as_deref(), "dns_answers", cut.count);
        self.write_over_budget(OverBudget {
            container: meta.as_deref().map(sinks::container_section),
            pod: meta.as_deref().and_then(sinks::pod_section),
            budget: "dns_answers",
            limit: self.dns_answers_per_sec,
            found: cut.count,
            reason: "more DNS answers than its DNS budget: the rest were not read, so host names in them were not learned for its connects",
            window: Some((cut.first_ns, cut.last_ns)),
        });
    }

    /// Containers that learned more endpoint addresses than their share from their own DNS
    /// answers (a container answering itself with crafted responses): a record the first
    /// time, and every address it replaced counted.
    pub(super) fn report_dns_learned_over_share(&mut self) {
        for over in self.learned.take_over_share() {
            let meta = self
                .containers
                .resolve(over.cgroup_id, 0, Lookup::Cached)
                .container();
            self.count_over_budget(meta.as_deref(), "dns_learned", over.replaced);
            if over.first {
                self.write_over_budget(OverBudget {
                    container: meta.as_deref().map(sinks::container_section),
                    pod: meta.as_deref().and_then(sinks::pod_section),
                    budget: "dns_learned",
                    limit: crate::dns::MAX_LEARNED_PER_CGROUP as u64,
                    found: crate::dns::MAX_LEARNED_PER_CGROUP as u64 + over.replaced,
                    reason: "more endpoint addresses learned from its own DNS answers than its share: its oldest are replaced (no other container's are)",
                    window: None,
                });
            }
        }
    }

    /// A connection the agent would have waited on (for its requests or its ClientHello) but
    /// could not: the node-wide table is full, or its container holds its share already
    /// (counted against that container).
    pub(super) fn count_refused(
        &mut self,
        c: &crate::events::Connect,
        refused: super::connections::Refused,
    ) {
        match refused {
            super::connections::Refused::OverShare => {
                let meta = self
                    .containers
                    .resolve(c.cgroup_id, c.pid, Lookup::Cached)
                    .container();
                self.count_over_budget(meta.as_deref(), "inspected_connections", 1);
            }
            super::connections::Refused::Full => {
                if !self.inspection_full_warned {
                    self.inspection_full_warned = true;
                    warn!(
                        "{} connections waited on already: new ones are recorded without reading their requests (counted unnamed when nothing named them)",
                        super::MAX_INSPECTED
                    );
                }
            }
        }
    }

    fn count_over_budget(&self, meta: Option<&Metadata>, budget: &str, n: u64) {
        let [namespace, workload, container] = crate::containers::metric_labels(meta);
        self.metrics.add(
            Family::BudgetExceeded,
            &[&namespace, &workload, &container, budget],
            n,
        );
    }

    fn write_over_budget(&mut self, over: OverBudget) {
        let wall = |ns: u64| sinks::rfc3339(self.boot_to_unix_ns + ns as i128);
        let now = || sinks::rfc3339(time::OffsetDateTime::now_utc().unix_timestamp_nanos());
        self.next_event += 1;
        let record = forensic::Record {
            schema: forensic::SCHEMA,
            ts: over
                .window
                .map_or_else(now, |(_, last)| wall(last))
                .unwrap_or_default(),
            event_id: format!(
                "budget-{}-{}",
                over.budget.replace('_', "-"),
                self.next_event
            ),
            node: self.node.clone(),
            verdict: "over_budget",
            reason: over.reason.to_string(),
            kind: "budget",
            secret: forensic::SecretSection {
                name: String::new(),
                catalog_entry: String::new(),
            },
            file: None,
            network: None,
            memory: None,
            budget: Some(forensic::BudgetSection {
                budget: over.budget,
                limit: over.limit,
                found: over.found,
            }),
            process: Default::default(),
            container: over.container,
            pod: over.pod,
            policy: None,
            count: None,
            first_ts: over.window.and_then(|(first, _)| wall(first)),
            last_ts: over.window.and_then(|(_, last)| wall(last)),
            repeat_of: None,
            image_finding: None,
        };
        let written = self.log.write(&record);
        self.count_unwritten(written);
    }
}
