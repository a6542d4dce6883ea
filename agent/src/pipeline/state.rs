//! What the event loop (`run.rs`) may ask of or change in the pipeline: its settings at start,
//! the policies it judges with, the secret inodes it names, the endpoints the kernel should
//! know, the clock. The pipeline's fields stay private: each change of state has one method.

use super::{Pipeline, log_share::LogShare};
use crate::{
    dns::LearnedKeys,
    policy::{PolicySet, catalog::EndpointKeys},
    secrets::SecretTable,
};

impl Pipeline {
    /// The per-container budgets the agent enforces itself (the kernel's DNS budget is only
    /// reported here): DNS answers per second, log records per hour (0 = no share).
    pub fn with_budgets(mut self, dns_answers_per_sec: u64, log_records_per_hour: u64) -> Self {
        self.dns_answers_per_sec = dns_answers_per_sec;
        self.log_share = LogShare::new(log_records_per_hour);
        self
    }

    /// Audits of running containers' images (containerd only).
    pub fn with_image_audits(mut self, audits: Option<crate::audit::NodeAudits>) -> Self {
        self.images = audits;
        self
    }

    pub fn policies(&self) -> &PolicySet {
        &self.policies
    }

    /// A new policy set, with the secret inodes found for its catalogue: endpoints learned
    /// so far follow their catalogue entry by name, and the metrics name the new set.
    pub fn replace_policies(&mut self, set: PolicySet, secrets: SecretTable) {
        self.metrics.set_policy(&set.sha256);
        self.count_policy_reload(true);
        self.secrets = secrets;
        self.learned.remap(&self.policies.catalog, &set.catalog);
        self.policies = set;
    }

    pub fn count_policy_reload(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.metrics
            .policy_reloads
            .with_label_values(&[result])
            .inc();
    }

    /// The secret inodes of a new search (new containers, rotated secrets).
    pub fn replace_secrets(&mut self, secrets: SecretTable) {
        self.secrets = secrets;
    }

    /// What the kernel's endpoint maps should hold: the catalogue's addresses and those
    /// learned node-wide (`ENDPOINTS`), and what each container's DNS answers and proxy
    /// variables taught (`LEARNED_ENDPOINTS`).
    pub fn kernel_endpoints(&self) -> (EndpointKeys, LearnedKeys) {
        let catalog = &self.policies.catalog;
        let mut endpoints = catalog.endpoint_keys();
        endpoints.extend(self.learned.endpoint_keys(catalog));
        (endpoints, self.learned.learned_keys(catalog))
    }

    /// Whether what was learned changed since the last call (the kernel's maps need it).
    pub fn take_endpoints_changed(&mut self) -> bool {
        self.learned.take_changed()
    }

    /// CLOCK_REALTIME − CLOCK_BOOTTIME again (the wall clock may have been set).
    pub fn set_boot_to_unix_ns(&mut self, offset: i128) {
        self.boot_to_unix_ns = offset;
    }
}
