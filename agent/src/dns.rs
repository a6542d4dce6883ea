//! Which addresses catalogue host names resolve to, learned from the DNS responses processes
//! receive (the kernel's `dns` probe). Connect hooks only see an address, and cloud APIs share
//! front-end addresses (all Google APIs, for one), so the names come from the workloads' own
//! DNS traffic, and what one cgroup's answers taught applies to that cgroup's connects only.
//! Learned addresses go into the kernel's learned-endpoint map, and records name the host.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, MessageType},
    rr::RData,
};

use credwatch_common::{EndpointValue, LearnedKey};

use crate::policy::{Catalog, catalog::EndpointKeys};

/// Bounds on what is learned (the kernel map's size): memory stays bounded under any DNS
/// traffic and container churn.
pub const MAX_LEARNED: usize = 8192;
/// Addresses one cgroup may have learned at once: a container answering itself with crafted
/// DNS responses only ever replaces its own entries, never another container's.
pub const MAX_LEARNED_PER_CGROUP: usize = 256;
/// `Learned::endpoint` of an HTTP proxy containers are configured with (`HTTPS_PROXY`,
/// `HTTP_PROXY`): not a catalogue endpoint, but what its connections ask it for names one.
pub const PROXY: usize = usize::MAX;
/// Proxy host names and ports kept at most (node-wide).
const MAX_PROXY_NAMES: usize = 64;
const MAX_PROXY_PORTS: usize = credwatch_common::ENDPOINT_PORTS;
const MIN_TTL: Duration = Duration::from_secs(60);
const MAX_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
struct Learned {
    endpoint: usize,
    hostname: String,
    until: Instant,
}

pub use crate::probes::keys::LearnedKeys;

#[derive(Default, Clone)]
pub struct LearnedHosts {
    /// From DNS answers, by the cgroup that received them.
    by_cgroup: HashMap<(u64, IpAddr), Learned>,
    /// From containers' endpoint variables: node-wide (a Service address is the same for
    /// every pod).
    by_address: HashMap<IpAddr, Learned>,
    /// Host names from containers' endpoint variables (VAULT_ADDR), matched like catalogue hosts.
    extra_names: HashMap<String, usize>,
    /// Proxies' host names and ports from containers' proxy variables.
    proxy_names: std::collections::HashSet<String>,
    proxy_ports: std::collections::BTreeSet<u16>,
    changed: bool,
    /// Cgroups already warned about for going over their share.
    over_budget_warned: std::collections::HashSet<u64>,
    /// Entries of `by_cgroup` per cgroup.
    per_cgroup: HashMap<u64, usize>,
    /// Cgroups that learned beyond their share since `take_over_share`.
    over_share: HashMap<u64, OverShare>,
}

/// A cgroup that learned more addresses than its share (`MAX_LEARNED_PER_CGROUP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverShare {
    pub cgroup_id: u64,
    /// Its own oldest addresses replaced by newer ones.
    pub replaced: u64,
    /// The first time this cgroup went over.
    pub first: bool,
}

impl LearnedHosts {
    /// Learns from one DNS message received by `cgroup_id`; returns how many addresses it
    /// named.
    pub fn learn(
        &mut self,
        catalog: &Catalog,
        cgroup_id: u64,
        bytes: &[u8],
        now: Instant,
    ) -> usize {
        let Ok(message) = Message::from_vec(bytes) else {
            return 0;
        };
        if message.metadata.message_type != MessageType::Response {
            return 0;
        }
        // The asked name decides (answers may be CNAME chains to other names); a catalogue
        // host anywhere in the chain before a proxy's name (an alias of a catalogue host must
        // not turn into a "proxy").
        // (name as asked, its plain lower-case form)
        let names: Vec<(String, String)> = (message.queries.iter().map(|q| q.name.to_ascii()))
            .chain(message.answers.iter().map(|r| r.name.to_ascii()))
            .map(|name| {
                let plain = name.trim_end_matches('.').to_ascii_lowercase();
                (name, plain)
            })
            .collect();
        let catalogued = names.iter().find_map(|(name, plain)| {
            let index = (catalog.endpoints.iter())
                .position(|e| e.matches_host(name))
                .or_else(|| self.extra_names.get(plain).copied())?;
            Some((index, plain.clone()))
        });
        let proxy = || {
            (names.iter())
                .find(|(_, plain)| self.proxy_names.contains(plain))
                .map(|(_, plain)| (PROXY, plain.clone()))
        };
        let Some((endpoint, hostname)) = catalogued.or_else(proxy) else {
            return 0;
        };
        let mut learned = 0;
        for record in &message.answers {
            let address = match &record.data {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
                _ => continue,
            };
            let key = (cgroup_id, address);
            if !self.by_cgroup.contains_key(&key) {
                self.make_room(cgroup_id, now);
            }
            let ttl = Duration::from_secs(record.ttl as u64).clamp(MIN_TTL, MAX_TTL);
            let entry = Learned {
                endpoint,
                hostname: hostname.clone(),
                until: now + ttl,
            };
            let previous = self.by_cgroup.insert(key, entry);
            if previous.is_none() {
                *self.per_cgroup.entry(cgroup_id).or_default() += 1;
            }
            self.changed |= previous.is_none_or(|p| p.endpoint != endpoint);
            learned += 1;
        }
        learned
    }

    /// Room for one more address learned by `cgroup_id`: within its own share it evicts its
    /// own entry closest to expiry; when the node-wide map is full, the entry closest to expiry
    /// of the cgroup holding the most. No cgroup can push out another that stays in its share.
    fn make_room(&mut self, cgroup_id: u64, now: Instant) {
        let own = self.per_cgroup.get(&cgroup_id).copied().unwrap_or(0);
        let victim = if own >= MAX_LEARNED_PER_CGROUP {
            let first = self.over_budget_warned.insert(cgroup_id);
            if first {
                log::warn!(
                    "cgroup {cgroup_id}: more than {MAX_LEARNED_PER_CGROUP} learned endpoint addresses; its oldest are replaced"
                );
            }
            let over = self.over_share.entry(cgroup_id).or_insert(OverShare {
                cgroup_id,
                replaced: 0,
                first,
            });
            over.replaced += 1;
            Some(cgroup_id)
        } else if self.by_cgroup.len() >= MAX_LEARNED {
            self.expire(now);
            (self.by_cgroup.len() >= MAX_LEARNED)
                .then(|| {
                    let most = self.per_cgroup.iter().max_by_key(|(_, n)| **n);
                    most.map(|(id, _)| *id)
                })
                .flatten()
        } else {
            None
        };
        let Some(victim) = victim else { return };
        let oldest = self
            .by_cgroup
            .iter()
            .filter(|((id, _), _)| *id == victim)
            .min_by_key(|(_, l)| l.until)
            .map(|(key, _)| *key);
        if let Some(key) = oldest {
            self.by_cgroup.remove(&key);
            self.changed = true;
            if let Some(n) = self.per_cgroup.get_mut(&key.0) {
                *n -= 1;
            }
        }
    }

    /// The cgroups that learned beyond their share since the last call.
    pub fn take_over_share(&mut self) -> Vec<OverShare> {
        self.over_share.drain().map(|(_, o)| o).collect()
    }

    /// Brings `per_cgroup` in line with `by_cgroup` after entries went.
    fn recount(&mut self) {
        self.per_cgroup.clear();
        for (id, _) in self.by_cgroup.keys() {
            *self.per_cgroup.entry(*id).or_default() += 1;
        }
    }

    /// Endpoint addresses a container is configured with, from an allow-list of environment
    /// variables of one of its processes: `KUBERNETES_SERVICE_HOST` (the API server's service
    /// address → `kubernetes-api`) and `VAULT_ADDR` (→ `vault`; a host name is then learned
    /// from DNS like the catalogue's). Only these names are looked at; every other variable's
    /// value is skipped, never kept or logged.
    pub fn learn_environment(
        &mut self,
        catalog: &Catalog,
        pid: u32,
        cgroup_id: u64,
        now: Instant,
    ) -> usize {
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            return 0;
        };
        let mut learned = 0;
        for entry in environ.split(|&b| b == 0) {
            let Some(eq) = entry.iter().position(|&b| b == b'=') else {
                continue;
            };
            let (name, value) = (&entry[..eq], &entry[eq + 1..]);
            let (endpoint, host) = match name {
                b"KUBERNETES_SERVICE_HOST" => (
                    "kubernetes-api",
                    String::from_utf8_lossy(value).into_owned(),
                ),
                b"VAULT_ADDR" => ("vault", url_host(&String::from_utf8_lossy(value))),
                b"HTTPS_PROXY" | b"https_proxy" | b"HTTP_PROXY" | b"http_proxy" => {
                    ("", String::from_utf8_lossy(value).into_owned())
                }
                _ => continue,
            };
            if endpoint.is_empty() {
                learned += self.learn_proxy(cgroup_id, name, &host, now);
                continue;
            }
            let Some(index) = catalog.endpoints.iter().position(|e| e.name == endpoint) else {
                continue;
            };
            match host.parse::<IpAddr>() {
                // A variable never renames what the catalogue names by address (for every
                // container on the node: its entry would be the longer prefix).
                Ok(address) if catalog.endpoints.iter().any(|e| e.names_address(&address)) => {}
                Ok(address) => {
                    let hostname = format!("${}", String::from_utf8_lossy(name));
                    let entry = Learned {
                        endpoint: index,
                        hostname,
                        until: now + MAX_TTL,
                    };
                    let previous = self.by_address.insert(address, entry);
                    self.changed |= previous.is_none_or(|p| p.endpoint != index);
                    learned += 1;
                }
                Err(_) if !host.is_empty() => {
                    self.extra_names.insert(host.to_ascii_lowercase(), index);
                }
                Err(_) => {}
            }
        }
        learned
    }

    /// An `http://` proxy URL: its address or host name (learned from DNS answers like a
    /// catalogue host) and port go into the kernel's map of what this container's connects
    /// name, so its connections' requests are read. Only for this container: its variables
    /// must not change how others' connects are read. (That map is looked at after the
    /// catalogue's addresses: a "proxy" at the metadata service's address and port changes
    /// nothing.) An `https://` proxy is not read: what is sent to it is encrypted.
    fn learn_proxy(&mut self, cgroup_id: u64, variable: &[u8], url: &str, now: Instant) -> usize {
        let lower = url.trim().to_ascii_lowercase();
        let rest = match lower.split_once("://") {
            Some(("http", rest)) => rest,
            None => lower.as_str(),
            Some(_) => return 0,
        };
        if rest.is_empty()
            || rest
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return 0;
        }
        let request = format!("GET http://{rest} HTTP/1.1\r\n");
        let Some(target) = crate::requests::proxy_target(request.as_bytes()) else {
            return 0;
        };
        let plausible = |host: &str| {
            host.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        };
        if target.host.parse::<IpAddr>().is_err() && !plausible(&target.host) {
            return 0;
        }
        if self.proxy_ports.len() >= MAX_PROXY_PORTS && !self.proxy_ports.contains(&target.port) {
            log::warn!(
                "more than {MAX_PROXY_PORTS} proxy ports configured: port {} is not read",
                target.port
            );
            return 0;
        }
        match target.host.parse::<IpAddr>() {
            Ok(address) => {
                self.changed |= self.proxy_ports.insert(target.port);
                let key = (cgroup_id, address);
                if !self.by_cgroup.contains_key(&key) {
                    self.make_room(cgroup_id, now);
                    *self.per_cgroup.entry(cgroup_id).or_default() += 1;
                }
                let entry = Learned {
                    endpoint: PROXY,
                    hostname: format!("${}", String::from_utf8_lossy(variable)),
                    until: now + MAX_TTL,
                };
                let previous = self.by_cgroup.insert(key, entry);
                self.changed |= previous.is_none_or(|p| p.endpoint != PROXY);
                1
            }
            Err(_) if self.proxy_names.len() < MAX_PROXY_NAMES => {
                self.changed |= self.proxy_ports.insert(target.port);
                self.proxy_names.insert(target.host);
                0
            }
            Err(_) => 0,
        }
    }

    /// The kernel map value of what `endpoint` (a catalogue index, or `PROXY`) names.
    fn kernel_value(&self, catalog: &Catalog, endpoint: usize) -> Option<EndpointValue> {
        if endpoint == PROXY {
            let mut value = EndpointValue {
                id: credwatch_common::PROXY_ENDPOINT,
                port_count: self.proxy_ports.len() as u32,
                ports: [0; credwatch_common::ENDPOINT_PORTS],
                flags: credwatch_common::endpoint_flag::INSPECT_REQUESTS,
                _pad: 0,
            };
            for (slot, port) in value.ports.iter_mut().zip(&self.proxy_ports) {
                *slot = *port;
            }
            return Some(value);
        }
        Some(catalog.endpoints.get(endpoint)?.kernel_value(endpoint))
    }

    fn lookup(&self, cgroup_id: u64, address: &IpAddr) -> Option<&Learned> {
        (self.by_cgroup.get(&(cgroup_id, *address))).or_else(|| self.by_address.get(address))
    }

    /// The catalogue host name an address was learned for, by this cgroup's DNS answers or
    /// from a container's environment.
    pub fn hostname(&self, cgroup_id: u64, address: &IpAddr) -> Option<&str> {
        self.lookup(cgroup_id, address).map(|l| l.hostname.as_str())
    }

    /// The endpoint an address was learned for (index into the catalogue's endpoints).
    pub fn endpoint(&self, cgroup_id: u64, address: &IpAddr) -> Option<usize> {
        self.lookup(cgroup_id, address).map(|l| l.endpoint)
    }

    pub fn expire(&mut self, now: Instant) {
        let before = self.by_cgroup.len() + self.by_address.len();
        self.by_cgroup.retain(|_, l| l.until > now);
        self.by_address.retain(|_, l| l.until > now);
        self.recount();
        self.changed |= self.by_cgroup.len() + self.by_address.len() != before;
    }

    /// After a catalogue reload: entries follow their endpoint by name; those whose endpoint
    /// is gone are dropped.
    pub fn remap(&mut self, old: &Catalog, new: &Catalog) {
        let index_in_new = |endpoint: usize| {
            if endpoint == PROXY {
                return Some(PROXY);
            }
            let name = &old.endpoints.get(endpoint)?.name;
            new.endpoints.iter().position(|e| &e.name == name)
        };
        self.by_address
            .retain(|_, l| index_in_new(l.endpoint).map(|i| l.endpoint = i).is_some());
        self.by_cgroup
            .retain(|_, l| index_in_new(l.endpoint).map(|i| l.endpoint = i).is_some());
        self.recount();
        self.extra_names
            .retain(|_, endpoint| index_in_new(*endpoint).map(|i| *endpoint = i).is_some());
        self.changed = true;
    }

    /// A removed cgroup's answers are of no further use.
    pub fn forget_cgroup(&mut self, cgroup_id: u64) {
        let before = self.by_cgroup.len();
        self.by_cgroup.retain(|(id, _), _| *id != cgroup_id);
        self.changed |= self.by_cgroup.len() != before;
        self.over_budget_warned.remove(&cgroup_id);
        self.per_cgroup.remove(&cgroup_id);
    }

    /// Learned entries, DNS and environment.
    pub fn entries(&self) -> usize {
        self.by_cgroup.len() + self.by_address.len()
    }

    /// Whether the kernel map needs updating (cleared by the call).
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Kernel endpoint (LPM) map entries for the node-wide addresses (/128).
    pub fn endpoint_keys(&self, catalog: &Catalog) -> EndpointKeys {
        self.by_address
            .iter()
            .filter_map(|(address, learned)| {
                let value = self.kernel_value(catalog, learned.endpoint)?;
                Some(((v6_octets(address), 128), value))
            })
            .collect()
    }

    /// Kernel learned-endpoint map entries: (cgroup, address) from DNS answers.
    pub fn learned_keys(&self, catalog: &Catalog) -> LearnedKeys {
        self.by_cgroup
            .iter()
            .filter_map(|((cgroup_id, address), learned)| {
                let key = LearnedKey {
                    cgroup_id: *cgroup_id,
                    addr: v6_octets(address),
                };
                Some((key, self.kernel_value(catalog, learned.endpoint)?))
            })
            .collect()
    }
}

/// IPv6 as is, IPv4 mapped (::ffff:a.b.c.d), as the kernel maps key them.
fn v6_octets(address: &IpAddr) -> [u8; 16] {
    match address {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// "https://vault.internal:8200/" → "vault.internal"; "http://[fd00::1]:8200" → "fd00::1".
fn url_host(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or_default().to_string();
    }
    authority.split(':').next().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use hickory_proto::{
        op::{Message, MessageType, Query},
        rr::{Name, RData, Record, RecordType, rdata},
    };

    use super::*;

    fn catalog() -> Catalog {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/catalog.yaml"),
            dir.path().join("catalog.yaml"),
        )
        .unwrap();
        crate::policy::load_dir(dir.path()).unwrap().catalog
    }

    fn response(query: &str, answers: &[(&str, RData)]) -> Vec<u8> {
        let mut message = Message::new(7, MessageType::Response, hickory_proto::op::OpCode::Query);
        message.queries.push(Query::query(
            Name::from_ascii(query).unwrap(),
            RecordType::A,
        ));
        for (name, data) in answers {
            message.answers.push(Record::from_rdata(
                Name::from_ascii(name).unwrap(),
                30,
                data.clone(),
            ));
        }
        message.to_vec().unwrap()
    }

    #[test]
    fn answers_for_catalogue_hosts_are_learned_through_cnames() {
        let catalog = catalog();
        let mut hosts = LearnedHosts::default();
        let now = Instant::now();
        let bytes = response(
            "secretsmanager.us-east-1.amazonaws.com.",
            &[
                (
                    "secretsmanager.us-east-1.amazonaws.com.",
                    RData::CNAME(rdata::CNAME(Name::from_ascii("lb.example.net.").unwrap())),
                ),
                (
                    "lb.example.net.",
                    RData::A(rdata::A("10.99.0.10".parse().unwrap())),
                ),
                (
                    "lb.example.net.",
                    RData::AAAA(rdata::AAAA("fd00::10".parse().unwrap())),
                ),
            ],
        );
        let (cgroup, other_cgroup) = (7, 8);
        assert_eq!(hosts.learn(&catalog, cgroup, &bytes, now), 2);
        let addr: IpAddr = "10.99.0.10".parse().unwrap();
        assert_eq!(
            hosts.hostname(cgroup, &addr),
            Some("secretsmanager.us-east-1.amazonaws.com")
        );
        let endpoint = &catalog.endpoints[hosts.endpoint(cgroup, &addr).unwrap()];
        assert_eq!(endpoint.name, "aws-secretsmanager");
        assert!(hosts.take_changed());
        // Only for the cgroup that received the answer.
        assert_eq!(hosts.hostname(other_cgroup, &addr), None);
        let keys = hosts.learned_keys(&catalog);
        assert_eq!(keys.len(), 2);
        assert!(keys.keys().all(|k| k.cgroup_id == cgroup));
        assert!(hosts.endpoint_keys(&catalog).is_empty());
        // A name the catalogue does not list teaches nothing; entries expire.
        let other = response(
            "example.com.",
            &[(
                "example.com.",
                RData::A(rdata::A("10.0.0.1".parse().unwrap())),
            )],
        );
        assert_eq!(hosts.learn(&catalog, cgroup, &other, now), 0);
        hosts.expire(now + MAX_TTL + Duration::from_secs(1));
        assert_eq!(hosts.hostname(cgroup, &addr), None);
        // A removed cgroup's answers go with it.
        hosts.learn(&catalog, cgroup, &bytes, now);
        hosts.learn(&catalog, other_cgroup, &bytes, now);
        hosts.forget_cgroup(cgroup);
        assert_eq!(hosts.entries(), 2);
        assert_eq!(hosts.hostname(cgroup, &addr), None);
        assert!(hosts.hostname(other_cgroup, &addr).is_some());
    }

    /// A cgroup answering itself with crafted responses for catalogue names.
    fn flood(hosts: &mut LearnedHosts, catalog: &Catalog, cgroup: u64, n: u32, now: Instant) {
        for i in 0..n {
            let address = std::net::Ipv4Addr::from(0x0a63_0000 + i);
            let bytes = response(
                "secretsmanager.us-east-1.amazonaws.com.",
                &[(
                    "secretsmanager.us-east-1.amazonaws.com.",
                    RData::A(rdata::A(address)),
                )],
            );
            hosts.learn(catalog, cgroup, &bytes, now);
        }
    }

    #[test]
    fn proxies_from_the_environment_are_read_by_address_or_learned_by_name() {
        let catalog = catalog();
        let mut hosts = LearnedHosts::default();
        let now = Instant::now();
        let proxy = |hosts: &mut LearnedHosts, cgroup, variable: &[u8], url| {
            hosts.learn_proxy(cgroup, variable, url, now)
        };
        assert_eq!(
            proxy(&mut hosts, 7, b"HTTPS_PROXY", "http://10.1.2.3:3128"),
            1
        );
        // For that container only: another's connects to the address are not read as proxied.
        let learned = hosts.learned_keys(&catalog);
        let (key, value) = learned.iter().next().unwrap();
        assert_eq!(key.cgroup_id, 7);
        assert_eq!(value.id, credwatch_common::PROXY_ENDPOINT);
        assert_eq!(value.ports[..value.port_count as usize], [3128]);
        assert_eq!(
            value.flags,
            credwatch_common::endpoint_flag::INSPECT_REQUESTS
        );
        assert!(
            hosts.endpoint_keys(&catalog).is_empty(),
            "nothing node-wide"
        );
        // Never at an address the catalogue names: a "proxy" at the metadata service would hide
        // requests sent to it directly.
        // TLS to the proxy cannot be read; garbage names nothing.
        assert_eq!(
            proxy(&mut hosts, 7, b"HTTPS_PROXY", "https://10.1.2.4:443"),
            0
        );
        assert_eq!(proxy(&mut hosts, 7, b"http_proxy", "not a url at all"), 0);
        // A proxy host name is learned from the container's own DNS answers.
        proxy(&mut hosts, 8, b"HTTP_PROXY", "squid.proxy.svc:8080");
        let bytes = response(
            "squid.proxy.svc.",
            &[(
                "squid.proxy.svc.",
                RData::A(rdata::A("10.1.2.5".parse().unwrap())),
            )],
        );
        assert_eq!(hosts.learn(&catalog, 8, &bytes, now), 1);
        assert_eq!(hosts.endpoint(8, &"10.1.2.5".parse().unwrap()), Some(PROXY));
        let learned = hosts.learned_keys(&catalog);
        let value = learned.values().next().unwrap();
        assert_eq!(value.ports[..value.port_count as usize], [3128, 8080]);
    }

    #[test]
    fn a_cgroup_flooding_answers_only_replaces_its_own_entries() {
        let catalog = catalog();
        let mut hosts = LearnedHosts::default();
        let now = Instant::now();
        let victim = 1;
        let bytes = response(
            "secretsmanager.eu-west-1.amazonaws.com.",
            &[(
                "secretsmanager.eu-west-1.amazonaws.com.",
                RData::A(rdata::A("192.0.2.7".parse().unwrap())),
            )],
        );
        assert_eq!(hosts.learn(&catalog, victim, &bytes, now), 1);
        let learned: IpAddr = "192.0.2.7".parse().unwrap();
        assert!(hosts.endpoint(victim, &learned).is_some());
        // One attacker: capped at its share.
        flood(&mut hosts, &catalog, 2, 1_000, now);
        assert_eq!(hosts.entries(), 1 + MAX_LEARNED_PER_CGROUP);
        // It is named, with what it replaced, the first time as such; the victim is not.
        let over = hosts.take_over_share();
        assert_eq!(
            over,
            [OverShare {
                cgroup_id: 2,
                replaced: 1_000 - MAX_LEARNED_PER_CGROUP as u64,
                first: true
            }]
        );
        flood(&mut hosts, &catalog, 2, 1_001, now); // one address more than before
        assert!(!hosts.take_over_share()[0].first, "reported once as new");
        // Many attackers filling the node-wide map: the victim keeps its entry.
        for attacker in 3..3 + (MAX_LEARNED / MAX_LEARNED_PER_CGROUP) as u64 + 2 {
            flood(
                &mut hosts,
                &catalog,
                attacker,
                MAX_LEARNED_PER_CGROUP as u32,
                now,
            );
        }
        assert!(hosts.entries() <= MAX_LEARNED);
        assert!(
            hosts.endpoint(victim, &learned).is_some(),
            "the victim's entry stays"
        );
    }

    #[test]
    fn url_hosts() {
        assert_eq!(url_host("https://vault.internal:8200/"), "vault.internal");
        assert_eq!(url_host("http://10.0.0.5:8200"), "10.0.0.5");
        assert_eq!(url_host("https://user:pw@[fd00::1]:8200/v1"), "fd00::1");
        assert_eq!(url_host("vault:8200"), "vault");
    }

    #[test]
    fn wildcards_span_one_label_and_names_are_case_insensitive() {
        let catalog = catalog();
        let sm = catalog
            .endpoints
            .iter()
            .find(|e| e.name == "aws-secretsmanager")
            .unwrap();
        assert!(sm.matches_host("SecretsManager.eu-west-1.amazonaws.com."));
        assert!(!sm.matches_host("secretsmanager.a.b.amazonaws.com"));
        assert!(!sm.matches_host("evil-secretsmanager.us-east-1.amazonaws.com.attacker.net"));
    }
}
