//! The entries the kernel's filter maps hold, as the agent computes them (from the catalogue,
//! the secret search and what DNS taught) and `Probes::sync_filter` writes them.

use std::collections::BTreeMap;

use credwatch_common::{EndpointValue, LearnedKey};

/// What the in-kernel filter gets from the catalogue. Values are indices into `Catalog::files`
/// (for diagnostics; userspace re-matches every record exactly).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PathKeys {
    pub prefixes: BTreeMap<Vec<u8>, u32>,
    /// Already byte-reversed.
    pub suffixes: BTreeMap<Vec<u8>, u32>,
}

impl PathKeys {
    /// The kernel's file-name check: of each suffix key, the part after its last `/` with
    /// that `/` (`/.aws/credentials` → `/credentials`; `.pem` stays), byte-reversed like the
    /// suffixes and cut to what the kernel compares. A file whose name does not end with one
    /// of these cannot end with the suffix key it came from.
    pub fn leaf_keys(&self) -> BTreeMap<Vec<u8>, u32> {
        let cap = credwatch_common::LEAF_KEY_BYTES;
        let mut keys = BTreeMap::new();
        for (reversed, id) in &self.suffixes {
            let end = reversed
                .iter()
                .position(|&b| b == b'/')
                .map_or(reversed.len(), |slash| slash + 1);
            keys.entry(reversed[..end.min(cap)].to_vec()).or_insert(*id);
        }
        keys
    }

    /// The kernel's directory check: every directory above a prefix key, with its `/` ("/",
    /// "/etc/", "/etc/ssh/" for "/etc/ssh/ssh_host_"), valued with its length. Files in a
    /// directory that is neither one of these nor under a prefix key cannot match one.
    pub fn dir_keys(&self) -> BTreeMap<Vec<u8>, u32> {
        let mut keys = BTreeMap::new();
        for prefix in self.prefixes.keys() {
            for (i, &b) in prefix.iter().enumerate() {
                if b == b'/' && i + 1 < prefix.len() {
                    keys.insert(prefix[..=i].to_vec(), (i + 1) as u32);
                }
            }
        }
        keys
    }
}

/// The kernel's endpoint map: (IPv6-form address, prefix length in bits) → endpoint.
pub type EndpointKeys = BTreeMap<([u8; 16], u32), EndpointValue>;

/// Kernel learned-endpoint map entries: (cgroup, address) → endpoint.
pub type LearnedKeys = BTreeMap<LearnedKey, EndpointValue>;
