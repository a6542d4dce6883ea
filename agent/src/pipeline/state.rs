//! What the event loop (`run.rs`) may ask of or change in the pipeline: its settings at start,
//! the policies it judges with, the secret inodes it names, the endpoints the kernel should
//! know, the clock. The pipeline's fields stay private: each change of state has one method.

use super::{Pipeline, log_share::LogShare};
use crate::{dns::LearnedHosts, policy::PolicySet, secrets::SecretTable};

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

    /// A new policy set, with the secret inodes found for its catalogue and what was learned
    /// renamed to its entries (`learned_under`): the metrics name the new set.
    pub fn replace_policies(
        &mut self,
        set: PolicySet,
        secrets: SecretTable,
        learned: LearnedHosts,
    ) {
        self.metrics.set_policy(&set.sha256);
        self.count_policy_reload(true);
        self.replace_secrets(secrets);
        self.learned = learned;
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
        self.metrics.secret_files.set(secrets.len() as i64);
        self.secrets = secrets;
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
