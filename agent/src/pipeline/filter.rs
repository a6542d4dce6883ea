//! What the in-kernel filter should hold: one derivation from the catalogue, the secret files
//! found and what DNS and containers' variables taught, used at start, after every secret
//! search, on every policy reload and when learned endpoints change.

use super::Pipeline;
use crate::{
    dns::{LearnedHosts, LearnedKeys},
    policy::{
        PolicySet,
        catalog::{Catalog, EndpointKeys},
    },
    probes::KernelFilter,
    secrets::SecretTable,
};

impl KernelFilter {
    /// The whole filter for `catalog` with the secret files of `secrets` and the endpoints
    /// learned so far (`learned` must already name `catalog`'s entries).
    pub fn desired(catalog: &Catalog, secrets: &SecretTable, learned: &LearnedHosts) -> Self {
        let (endpoints, learned) = desired_endpoints(catalog, learned);
        KernelFilter {
            paths: catalog.path_keys(),
            inodes: secrets.kernel_inodes(),
            endpoints,
            learned,
            named_ports: catalog.named_ports(),
        }
    }
}

/// The endpoint maps alone (they change with every DNS answer that teaches an address):
/// `ENDPOINTS` holds the catalogue's addresses and those learned node-wide, `LEARNED_ENDPOINTS`
/// what each container's DNS answers and proxy variables taught.
pub fn desired_endpoints(catalog: &Catalog, learned: &LearnedHosts) -> (EndpointKeys, LearnedKeys) {
    let mut endpoints = catalog.endpoint_keys();
    endpoints.extend(learned.endpoint_keys(catalog));
    (endpoints, learned.learned_keys(catalog))
}

impl Pipeline {
    /// The filter for the running policies with a new search's secret files.
    pub fn kernel_filter_with(&self, secrets: &SecretTable) -> KernelFilter {
        KernelFilter::desired(&self.policies.catalog, secrets, &self.learned)
    }

    /// The endpoint maps for the running policies and what was learned.
    pub fn kernel_endpoints(&self) -> (EndpointKeys, LearnedKeys) {
        desired_endpoints(&self.policies.catalog, &self.learned)
    }

    /// What was learned, renamed to `set`'s catalogue entries (a reload keeps what the
    /// containers taught for every endpoint the new catalogue still names).
    pub fn learned_under(&self, set: &PolicySet) -> LearnedHosts {
        let mut learned = self.learned.clone();
        learned.remap(&self.policies.catalog, &set.catalog);
        learned
    }
}
