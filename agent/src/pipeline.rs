//! Everything a kernel record passes through after it leaves the ring buffer: decoding, the
//! process table, container attribution, credential matching, the verdict, and the sinks.
//!
//! A record from a container whose metadata is not readable yet (the first event of a
//! brand-new container) is held for up to `HOLD` and written once the metadata is there, or
//! with what is known when the deadline passes (counted in `credwatch_missing_metadata_total`).

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use log::warn;

mod budgets;
mod connections;
mod filter;
pub mod log_share;
mod proxied;
mod state;
#[cfg(test)]
mod tests;

use crate::{
    containers::{Containers, Lookup, Origin},
    events::{self, Event, FileOpen, ProcessEventKind},
    policy::verdict::{self, Subject, Verdict},
    policy::{Action, PolicySet},
    process::ProcessTable,
    requests,
    secrets::SecretTable,
    sinks::{self, forensic, metrics::Metrics},
    summaries::{AllowedKey, Finished, RepeatOrigins, Tally},
    tls_hello,
};

/// Longest a record waits for its container's metadata.
pub const HOLD: Duration = Duration::from_millis(500);
/// An allowed access is written once per (container, binary, secret, path or endpoint) per
/// this long.
pub const ALLOWED_EVERY: Duration = Duration::from_secs(600);

/// How long a connection to an endpoint whose requests are inspected may stay silent before it
/// is recorded as it is (`request: "not_seen"`).
pub const REQUEST_WAIT: Duration = Duration::from_secs(2);
/// How long an inspected connection's context is kept after its last request. Long: the kernel
/// keeps reading the connection, and a request whose context is gone is only counted
/// (`credential="unattributed"`), so a client that waits must not outlast it easily.
const INSPECTED_IDLE: Duration = Duration::from_secs(3600);
/// Inspected connections (and connections awaiting their ClientHello) tracked at most, and per
/// container; past that, new ones are recorded as they are (unnamed ones counted).
const MAX_INSPECTED: usize = 4096;
const MAX_INSPECTED_PER_CONTAINER: usize = 64;

/// What named a connection beyond its address, and what it asked for.
#[derive(Default)]
struct Naming {
    /// Its TLS ClientHello's server name.
    sni: Option<String>,
    /// What it asked the HTTP proxy it connected to for.
    proxied: Option<requests::ProxyRequest>,
    /// Why it is a credential access, judged already (a request sent through a proxy).
    request: Option<(&'static str, Option<forensic::HttpSection>)>,
}

/// A connection to an endpoint whose requests decide whether it is a credential access.
struct Inspected {
    /// Its connect's record, written with each request that makes it one.
    connect: Held,
    service: String,
    /// A request was judged: a connection that then goes quiet is not recorded.
    answered: bool,
    /// Silent until then: recorded as it is. Answered: forgotten then.
    deadline: Instant,
}

/// Whether a connect with this result may still send: done, under way (non-blocking), or
/// interrupted by a signal (the handshake goes on); None: seen by the cgroup hook before the
/// attempt.
fn may_send(result: Option<i64>) -> bool {
    const ERESTARTSYS: i64 = 512;
    result.is_none_or(|r| {
        r == 0
            || r == -ERESTARTSYS
            || [libc::EINPROGRESS, libc::EINTR, libc::EALREADY]
                .iter()
                .any(|e| r == -(*e as i64))
    })
}

/// A connect nothing named, waiting for its TLS ClientHello.
struct PendingHello {
    connect: events::Connect,
    /// The payloads so far.
    bytes: Vec<u8>,
    /// A payload was cut in the kernel: what follows would not continue it.
    cut: bool,
    deadline: Instant,
}

/// A record waiting for its container's metadata and its verdict.
#[derive(Clone)]
struct Held {
    record: forensic::Record,
    cgroup_id: u64,
    pid: u32,
    exe: Option<Vec<u8>>,
    /// The file's path (None for network accesses).
    path: Option<Vec<u8>>,
    outside_root: bool,
    until: Instant,
    /// The kernel counts this access's repeats under this key.
    repeat: Option<credwatch_common::RepeatKey>,
}

pub struct Pipeline {
    policies: PolicySet,
    secrets: SecretTable,
    processes: ProcessTable,
    containers: Containers,
    log: forensic::ForensicLog,
    metrics: Arc<Metrics>,
    node: String,
    /// CLOCK_REALTIME − CLOCK_BOOTTIME, to turn kernel boot-time stamps into wall-clock time.
    boot_to_unix_ns: i128,
    next_event: u64,
    held: VecDeque<Held>,
    /// Connections whose requests are inspected, by socket cookie.
    inspected: connections::Connections<Inspected>,
    /// Connects nothing named, waiting for their ClientHello, by socket cookie.
    hellos: connections::Connections<PendingHello>,
    /// Connections to an HTTP proxy, waiting for what they ask it for, by socket cookie.
    proxied: connections::Connections<proxied::Proxied>,
    /// When an allowed (container, binary, secret, path or endpoint) was last written.
    allowed_logged: HashMap<AllowedKey, Instant>,
    /// Containers already warned about for holding too many secret files.
    secret_budget_warned: std::collections::HashSet<String>,
    /// The kernel's DNS-answer budget per container and second (`limit` in its records).
    dns_answers_per_sec: u64,
    /// The node-wide table of connections waited on was found full (warned once).
    inspection_full_warned: bool,
    /// Each container's share of the forensic log.
    log_share: log_share::LogShare,
    /// What each access whose repeats the kernel is counting was reported as.
    repeat_origins: RepeatOrigins,
    /// Containers whose filesystem has been searched for secret files.
    scanned: std::collections::HashSet<u64>,
    /// A container started running programs: search its filesystem soon.
    rescan: bool,
    /// Addresses of catalogue host names, from DNS responses.
    learned: crate::dns::LearnedHosts,
    /// Audits of running containers' images (None: not on containerd, or turned off).
    images: Option<crate::audit::NodeAudits>,
}

/// `/proc/<pid>/root/<path>` through another live process of `<pid>`'s container, when `<pid>`
/// has exited (its table entry still names its cgroup for a while).
fn relocate_root(
    processes: &crate::process::ProcessTable,
    found_at: &std::path::Path,
) -> Option<std::path::PathBuf> {
    let mut parts = found_at.strip_prefix("/proc").ok()?.components();
    let pid: u32 = parts.next()?.as_os_str().to_str()?.parse().ok()?;
    if std::path::Path::new("/proc").join(pid.to_string()).exists() {
        return None;
    }
    let cgroup = processes.cgroup_of(pid)?;
    let live = processes.pids_in_cgroups(&[cgroup]).into_iter().next()?;
    Some(
        std::path::Path::new("/proc")
            .join(live.to_string())
            .join(parts.as_path()),
    )
}

/// The catalogue entry whose footprints judge syscalls into another process's memory (its
/// file paths, `/proc/<pid>/mem`, are the same theft by another route).
const PROCESS_MEMORY: &str = "process-memory";

impl Pipeline {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        policies: PolicySet,
        secrets: SecretTable,
        processes: ProcessTable,
        containers: Containers,
        log: forensic::ForensicLog,
        metrics: Arc<Metrics>,
        node: String,
        boot_to_unix_ns: i128,
    ) -> Self {
        metrics.set_policy(&policies.sha256);
        metrics.secret_files.set(secrets.len() as i64);
        Pipeline {
            policies,
            secrets,
            processes,
            containers,
            log,
            metrics,
            node,
            boot_to_unix_ns,
            next_event: 0,
            held: VecDeque::new(),
            inspected: connections::Connections::new(MAX_INSPECTED, MAX_INSPECTED_PER_CONTAINER),
            hellos: connections::Connections::new(MAX_INSPECTED, MAX_INSPECTED_PER_CONTAINER),
            proxied: connections::Connections::new(MAX_INSPECTED, MAX_INSPECTED_PER_CONTAINER),
            allowed_logged: HashMap::new(),
            repeat_origins: RepeatOrigins::default(),
            secret_budget_warned: Default::default(),
            dns_answers_per_sec: 0,
            inspection_full_warned: false,
            log_share: log_share::LogShare::new(0),
            scanned: Default::default(),
            rescan: false,
            learned: Default::default(),
            images: None,
        }
    }

    pub fn handle(&mut self, bytes: &[u8]) {
        let event = match events::decode(bytes) {
            Ok(event) => event,
            Err(err) => {
                self.metrics
                    .events_lost
                    .with_label_values(&["decode"])
                    .inc();
                warn!("dropping an undecodable kernel record: {err}");
                return;
            }
        };
        match event {
            Event::FileOpen(open) => self.file_open(&open),
            Event::Connect(connect) => self.connect(&connect),
            Event::Memory(access) => self.memory_access(&access),
            Event::Request(request) => self.request(&request),
            Event::Dns { cgroup_id, message } => {
                let catalog = &self.policies.catalog;
                self.learned
                    .learn(catalog, cgroup_id, &message, Instant::now());
                self.report_dns_learned_over_share();
            }
            Event::Process(process) => {
                self.processes.apply(&process);
                if process.kind == ProcessEventKind::Exec {
                    // A new program, maybe in a new container: look it up while it exists, and
                    // search a new container's filesystem for its secrets.
                    let origin =
                        self.containers
                            .resolve(process.cgroup_id, process.pid, Lookup::Cached);
                    if matches!(origin, Origin::Container(_))
                        && self.scanned.insert(process.cgroup_id)
                    {
                        self.rescan = true;
                        // A new container: the endpoints its environment points at.
                        let catalog = &self.policies.catalog;
                        self.learned.learn_environment(
                            catalog,
                            process.pid,
                            process.cgroup_id,
                            Instant::now(),
                        );
                    }
                }
            }
            Event::Cgroup(cgroup) => {
                if !cgroup.created {
                    self.learned.forget_cgroup(cgroup.id);
                }
                self.containers.on_cgroup(&cgroup);
            }
        }
    }

    fn file_open(&mut self, open: &FileOpen) {
        let process = self.processes.describe(open);
        let catalog = &self.policies.catalog;
        let processes = &self.processes;
        let relocate = |found_at: &std::path::Path| relocate_root(processes, found_at);
        let Some(credential) = self
            .secrets
            .classify(catalog, open, process.ns_pid, &relocate)
        else {
            // The kernel keys are coarser than the globs; its repeats are not credentials either.
            if let Some(key) = open.repeat {
                self.repeat_origins.remember(key, None);
            }
            return;
        };
        let rule = &catalog.files[credential.rule];
        let secret = (rule.name.clone(), rule.catalog.clone());
        let mut record = self.new_record(open.boot_ns, open.tid, "file", secret, &process);
        record.file = Some(sinks::file_section(open, &credential));
        let held = Held {
            record,
            cgroup_id: open.cgroup_id,
            pid: open.pid,
            exe: process.program.exe.clone(),
            path: Some(credential.path),
            outside_root: open.path_flags & credwatch_common::path_flag::OUTSIDE_ROOT != 0,
            until: Instant::now() + HOLD,
            repeat: open.repeat,
        };
        if let Some(still_waiting) = self.attribute(held, Instant::now()) {
            self.held.push_back(still_waiting);
        }
    }

    /// ptrace attach/seize or process_vm_readv/writev of another process: judged like the
    /// catalogue's `process-memory` entry (a debugger sidecar can be allowed by a footprint).
    fn memory_access(&mut self, m: &events::MemoryAccess) {
        let task = |pid: u32| FileOpen {
            boot_ns: m.boot_ns,
            pid,
            tid: pid,
            ..Default::default()
        };
        let process = self.processes.describe(&FileOpen {
            tid: m.tid,
            uid: m.uid,
            gid: m.gid,
            cgroup_id: m.cgroup_id,
            start_boottime: m.start_boottime,
            comm: m.comm.clone(),
            ..task(m.pid)
        });
        let host_pid = crate::process::host_pid_in_namespace_of(m.pid, m.target);
        // A process reading its own memory is no theft.
        if process.ns_pid == Some(m.target) || host_pid == Some(m.pid) {
            return;
        }
        let target_info = host_pid.map(|pid| self.processes.describe(&task(pid)));
        let target_container = host_pid
            .and_then(|pid| Some((pid, self.processes.cgroup_of(pid)?)))
            .and_then(|(pid, cgroup)| {
                self.containers
                    .resolve(cgroup, pid, Lookup::Cached)
                    .container()
            })
            .map(|meta| meta.id.clone());
        let catalog = &self.policies.catalog;
        let secret = catalog
            .files
            .iter()
            .find(|f| f.name == PROCESS_MEMORY)
            .map_or_else(
                || (PROCESS_MEMORY.to_string(), "builtin".to_string()),
                |f| (f.name.clone(), f.catalog.clone()),
            );
        let mut record = self.new_record(m.boot_ns, m.tid, "process_memory", secret, &process);
        record.memory = Some(forensic::MemorySection {
            syscall: m.syscall,
            request: m.request,
            result: m.result,
            errno: (m.result < 0).then(|| sinks::errno_name(-m.result)),
            target: forensic::MemoryTarget {
                pid: m.target,
                host_pid,
                exe: target_info
                    .as_ref()
                    .and_then(|t| t.program.shown_exe.as_deref())
                    .map(str::to_string),
                comm: target_info
                    .as_ref()
                    .map(|t| crate::escape::escape_bytes(&t.comm))
                    .filter(|c| !c.is_empty()),
                container: target_container,
            },
        });
        let held = Held {
            record,
            cgroup_id: m.cgroup_id,
            pid: m.pid,
            exe: process.program.exe.clone(),
            path: None,
            outside_root: false,
            until: Instant::now() + HOLD,
            repeat: None,
        };
        if let Some(still_waiting) = self.attribute(held, Instant::now()) {
            self.held.push_back(still_waiting);
        }
    }

    fn connect(&mut self, c: &events::Connect) {
        if c.cookie != 0 {
            // A socket connected again (connect(AF_UNSPEC), then elsewhere): what its earlier
            // connection was waiting for is over.
            self.finish_connection(c.cookie, Instant::now());
        }
        let catalog = &self.policies.catalog;
        let on_port = |i: &usize| {
            catalog
                .endpoints
                .get(*i)
                .is_some_and(|e| e.serves_port(c.port))
        };
        // (What DNS taught decides only an unconfirmed connect.)
        let learned = (c.endpoint == 0)
            .then(|| self.learned.endpoint(c.cgroup_id, &c.address))
            .flatten();
        if c.endpoint == credwatch_common::PROXY_ENDPOINT || learned == Some(crate::dns::PROXY) {
            return self.await_proxied(c);
        }
        let endpoint = match c.endpoint {
            // Unconfirmed: a connect right after a DNS answer; decided by what that answer
            // taught (it was handled before this record: the ring buffer keeps their order).
            0 => learned.filter(on_port),
            credwatch_common::SNI_CANDIDATE => None,
            id => (id as usize).checked_sub(1).filter(on_port),
        };
        match endpoint {
            Some(index) => self.record_connect(c, index, Naming::default()),
            // Nothing named the address: the ClientHello may (the kernel reads it).
            None if (c.endpoint == 0 || c.endpoint == credwatch_common::SNI_CANDIDATE)
                && c.cookie != 0
                && may_send(c.result) =>
            {
                self.await_hello(c)
            }
            None => {} // not a credential endpoint (or the catalogue changed since)
        }
    }

    /// Writes (or holds, for its request) the record of a connect to catalogue endpoint
    /// `index`; `sni`: the server name that named it.
    fn record_connect(&mut self, c: &events::Connect, index: usize, naming: Naming) {
        let Naming {
            sni,
            proxied,
            request,
        } = naming;
        let process = self.processes.describe_connect(c);
        let Some(endpoint) = self.policies.catalog.endpoints.get(index) else {
            return;
        };
        let family = match (c.ipv6_socket, c.address) {
            (false, _) => "ipv4",
            (true, std::net::IpAddr::V4(_)) => "ipv4-mapped",
            (true, std::net::IpAddr::V6(_)) => "ipv6",
        };
        let mut network = forensic::NetworkSection {
            address: c.address.to_string(),
            port: c.port,
            family,
            hostname: self
                .learned
                .hostname(c.cgroup_id, &c.address)
                .map(str::to_string)
                .or_else(|| sni.clone()),
            sni,
            service: endpoint.name.clone(),
            result: c.result,
            source: if c.result.is_some() {
                "connect"
            } else {
                "cgroup_hook"
            },
            request: None,
            http: None,
            proxy: None,
        };
        if let Some(target) = proxied {
            // Named by what it asked its proxy for: the target, and the proxy it went through.
            let host = crate::escape::escape_bytes(target.host.as_bytes());
            let is_address = target.host.parse::<std::net::IpAddr>().is_ok();
            network.proxy = Some(forensic::ProxySection {
                address: std::mem::replace(&mut network.address, host.clone()),
                port: std::mem::replace(&mut network.port, target.port),
            });
            // The name that named the endpoint: the tunnel's server name, else the target's.
            network.hostname = network.sni.clone().or((!is_address).then_some(host));
        }
        let judged = request.is_some();
        if let Some((why, http)) = request {
            network.request = Some(why);
            network.http = http;
        }
        // What it asks for decides, when the kernel inspects its requests (a connect that
        // failed sends none); a request judged on the way through a proxy was judged already.
        let inspect = endpoint.http_paths.is_some()
            && network.proxy.is_none()
            && !judged
            && c.cookie != 0
            && may_send(c.result);
        let secret = (endpoint.name.clone(), endpoint.catalog.clone());
        let service = endpoint.name.clone();
        let mut record = self.new_record(c.boot_ns, c.tid, "network", secret, &process);
        record.network = Some(network);
        let now = Instant::now();
        let held = Held {
            record,
            cgroup_id: c.cgroup_id,
            pid: c.pid,
            exe: process.program.exe.clone(),
            path: None,
            outside_root: false,
            until: now + HOLD,
            repeat: None,
        };
        let held = if inspect {
            let waiting = Inspected {
                connect: held,
                service,
                answered: false,
                deadline: now + REQUEST_WAIT,
            };
            match self.inspected.insert(c.cookie, c.cgroup_id, waiting) {
                Ok(()) => return,
                // Recorded as it is, without reading its requests.
                Err((refused, waiting)) => {
                    self.count_refused(c, refused);
                    waiting.connect
                }
            }
        } else {
            held
        };
        if let Some(still_waiting) = self.attribute(held, now) {
            self.held.push_back(still_waiting);
        }
    }

    /// Waits for the ClientHello of a connect nothing named (see `tls_hello`).
    fn await_hello(&mut self, c: &events::Connect) {
        let waiting = PendingHello {
            connect: c.clone(),
            bytes: Vec::new(),
            cut: false,
            deadline: Instant::now() + REQUEST_WAIT,
        };
        if let Err((refused, _)) = self.hellos.insert(c.cookie, c.cgroup_id, waiting) {
            self.count_refused(c, refused);
            self.count_unnamed(c);
        }
    }

    /// The first payloads of a connection waiting for its ClientHello: named by a catalogue
    /// host, it is a credential access like a connect named by DNS.
    fn hello(&mut self, r: &events::Request) {
        let Some(pending) = self.hellos.get_mut(r.cookie) else {
            return;
        };
        if !pending.cut {
            pending.bytes.extend_from_slice(&r.data);
            // (a cut payload's continuation would not follow on from it)
            pending.cut = r.data.len() < r.payload_len as usize;
        }
        let named = match tls_hello::server_name(&pending.bytes) {
            tls_hello::Hello::NeedMore if !r.last && !pending.cut => return,
            tls_hello::Hello::Named(name) => Some(name),
            _ => None,
        };
        let Some(pending) = self.hellos.remove(r.cookie) else {
            return;
        };
        let c = &pending.connect;
        let Some(name) = named else {
            self.count_unnamed(c);
            return;
        };
        if let Some(index) = self.endpoint_for(&name, c.port) {
            self.record_connect(
                c,
                index,
                Naming {
                    sni: Some(name),
                    ..Naming::default()
                },
            );
        }
    }

    /// A connect on a host-name endpoint's port that nothing could name, per container.
    fn count_unnamed(&mut self, c: &events::Connect) {
        self.count_unnamed_in(c.cgroup_id, c.pid, 1);
    }

    /// `n` connects of `cgroup_id` that nothing named, per container.
    fn count_unnamed_in(&mut self, cgroup_id: u64, pid: u32, n: u64) {
        let meta = self
            .containers
            .resolve(cgroup_id, pid, Lookup::Cached)
            .container();
        let [namespace, workload, container] = crate::containers::metric_labels(meta.as_deref());
        self.metrics.add(
            crate::sinks::metrics::Family::UnnamedConnects,
            &[&namespace, &workload, &container],
            n,
        );
    }

    /// The catalogue endpoint a host name (or an address, as a proxy request names it) and a
    /// port name.
    fn endpoint_for(&self, host: &str, port: u16) -> Option<usize> {
        let address = host.parse::<std::net::IpAddr>().ok();
        self.policies.catalog.endpoints.iter().position(|e| {
            let named = match &address {
                Some(address) => e.contains_address(address),
                None => e.matches_host(host),
            };
            named && e.serves_port(port)
        })
    }

    /// A payload sent on an inspected connection: a credential request (or one not shown to
    /// be benign) is recorded as the connection's credential access; a benign one is counted.
    fn request(&mut self, r: &events::Request) {
        if self.hellos.contains(r.cookie) {
            return self.hello(r);
        }
        if self.proxied.contains(r.cookie) {
            return self.proxied_request(r);
        }
        let catalog = &self.policies.catalog;
        let Some(entry) = self.inspected.get_mut(r.cookie) else {
            // Its connect was not seen (sent before the agent started) or not kept.
            self.metrics
                .endpoint_requests
                .with_label_values(&["unknown", "unattributed"])
                .inc();
            return;
        };
        let paths = catalog
            .endpoints
            .iter()
            .find(|e| e.name == entry.service)
            .and_then(|e| e.http_paths.as_ref());
        let judged = match paths {
            _ if r.unreadable => requests::Judged::Unreadable(None),
            Some(paths) => requests::judge(&r.data, r.payload_len, paths),
            None => requests::Judged::Unreadable(None), // the catalogue changed since
        };
        let (credential, mut why, line) = match judged {
            requests::Judged::Benign(_) => ("false", None, None),
            requests::Judged::Credential(line) => ("true", Some("credential"), Some(line)),
            requests::Judged::Unreadable(line) => ("unreadable", Some("unreadable"), line),
        };
        self.metrics
            .endpoint_requests
            .with_label_values(&[entry.service.as_str(), credential])
            .inc();
        let now = Instant::now();
        entry.answered = true;
        entry.deadline = now + INSPECTED_IDLE;
        if r.last {
            // The kernel stops here: what the connection sends next goes unseen.
            why = why.or(Some("beyond_inspection"));
        }
        let Some(why) = why else { return };
        let mut held = entry.connect.clone();
        if r.last {
            self.inspected.remove(r.cookie);
        }
        let tid = held.record.process.tid;
        self.renumber(&mut held.record, r.boot_ns, tid);
        if let Some(network) = held.record.network.as_mut() {
            network.request = Some(why);
            network.http = line.map(|l| forensic::HttpSection {
                method: l.method,
                path: l.path,
            });
        }
        held.until = now + HOLD;
        if let Some(still_waiting) = self.attribute(held, now) {
            self.held.push_back(still_waiting);
        }
    }

    /// Ends what socket `cookie`'s connection was waiting for: a silent inspected connection is
    /// recorded as it is, an unnamed one counted.
    fn finish_connection(&mut self, cookie: u64, now: Instant) {
        self.finish_proxied(cookie);
        if let Some(pending) = self.hellos.remove(cookie) {
            self.count_unnamed(&pending.connect);
        }
        if let Some(entry) = self.inspected.remove(cookie)
            && !entry.answered
        {
            self.record_not_seen(entry, now);
        }
    }

    fn record_not_seen(&mut self, entry: Inspected, now: Instant) {
        let mut held = entry.connect;
        if let Some(network) = held.record.network.as_mut() {
            network.request = Some("not_seen");
        }
        held.until = now + HOLD;
        if let Some(still_waiting) = self.attribute(held, now) {
            self.held.push_back(still_waiting);
        }
    }

    /// Records inspected connections that stayed silent past `REQUEST_WAIT` as they are, and
    /// forgets answered ones idle past `INSPECTED_IDLE`; with `flush`, all of them now.
    fn release_inspected(&mut self, now: Instant, flush: bool) {
        let hellos = self.hellos.iter().map(|(c, h)| (c, h.deadline));
        let inspected = self.inspected.iter().map(|(c, e)| (c, e.deadline));
        let proxied = self.proxied.iter().map(|(c, p)| (c, p.deadline));
        let due: Vec<u64> = hellos
            .chain(inspected)
            .chain(proxied)
            .filter(|(_, deadline)| flush || now >= *deadline)
            .map(|(cookie, _)| cookie)
            .collect();
        for cookie in due {
            self.finish_connection(cookie, now);
        }
    }

    /// A copy of a record gets its own time and event id.
    fn renumber(&mut self, record: &mut forensic::Record, boot_ns: u64, tid: u32) {
        record.ts = sinks::rfc3339(self.boot_to_unix_ns + boot_ns as i128).unwrap_or_default();
        record.event_id = self.next_event_id(boot_ns, tid);
    }

    /// A record's event id: its time, thread and a sequence number unique in this agent.
    fn next_event_id(&mut self, boot_ns: u64, tid: u32) -> String {
        self.next_event += 1;
        format!("{boot_ns:016x}-{tid:08x}-{}", self.next_event)
    }

    /// A record's common part; verdict, container and policy are added by `attribute`.
    fn new_record(
        &mut self,
        boot_ns: u64,
        tid: u32,
        kind: &'static str,
        (name, catalog): (String, String),
        process: &crate::process::ProcessInfo,
    ) -> forensic::Record {
        forensic::Record {
            schema: forensic::SCHEMA,
            ts: sinks::rfc3339(self.boot_to_unix_ns + boot_ns as i128).unwrap_or_default(),
            event_id: self.next_event_id(boot_ns, tid),
            node: self.node.clone(),
            verdict: "undeclared",
            reason: String::new(),
            kind,
            secret: forensic::SecretSection {
                catalog_entry: format!("{catalog}/{name}"),
                name,
            },
            file: None,
            network: None,
            memory: None,
            budget: None,
            process: sinks::process_section(process, self.boot_to_unix_ns),
            container: None,
            pod: None,
            policy: None,
            count: None,
            first_ts: None,
            last_ts: None,
            repeat_of: None,
            image_finding: None,
        }
    }

    /// Adds the container and the verdict and writes the record, or hands it back to wait for
    /// the container's metadata.
    fn attribute(&mut self, mut held: Held, now: Instant) -> Option<Held> {
        let origin = self
            .containers
            .resolve(held.cgroup_id, held.pid, Lookup::Fresh);
        let (meta, host_cgroup) = match origin {
            Origin::Container(meta) => {
                (Some(self.containers.with_state(held.cgroup_id, meta)), None)
            }
            Origin::Host { cgroup } => (None, cgroup),
        };
        if let Some(m) = &meta
            && m.incomplete
        {
            if now < held.until && self.containers.is_pending(held.cgroup_id) {
                return Some(held);
            }
            self.metrics.missing_metadata.inc();
        }
        let subject = Subject {
            container: meta.as_deref(),
            host_cgroup: host_cgroup.as_deref(),
            exe: held.exe.as_deref(),
        };
        let secret = held.record.secret.name.clone();
        let judgement = verdict::judge(
            &self.policies.footprints,
            &subject,
            &secret,
            held.path.as_deref(),
            held.outside_root,
        );
        if judgement.verdict == Verdict::Ignored {
            if let Some(key) = held.repeat {
                self.repeat_origins.remember(key, None);
            }
            return None;
        }
        let record = &mut held.record;
        record.verdict = judgement.verdict.as_str();
        record.reason = judgement.reason.to_string();
        record.policy = judgement.policy.map(|p| forensic::PolicySection {
            name: p.name.clone(),
            action: judgement.action.as_str(),
        });
        record.container = meta.as_deref().map(sinks::container_section);
        if let Some(section) = record.container.as_mut()
            && section.started.is_none()
        {
            // The runtime's state was gone before the agent looked (a container that ran for
            // milliseconds): its cgroup's creation is when it started.
            section.started = self
                .containers
                .cgroup_created_ns(held.cgroup_id)
                .and_then(|ns| sinks::rfc3339(self.boot_to_unix_ns + ns as i128));
        }
        record.process.container_entry =
            meta.as_deref().and_then(|m| m.init_pid).and_then(|init| {
                self.processes
                    .container_entry(held.pid, held.cgroup_id, init)
            });
        record.pod = meta.as_deref().and_then(sinks::pod_section);
        record.process.cgroup = host_cgroup.clone();
        // (Images are asked for as the runtime API names them: `poll_image_audits`.)
        if let (Some(m), Some(images)) = (meta.as_deref(), self.images.as_ref())
            && let Some(image) = &m.image
        {
            record.image_finding = record
                .file
                .as_ref()
                .filter(|_| !held.outside_root)
                .and_then(|f| images.baked(image, &f.path))
                .map(|baked| forensic::ImageFindingSection {
                    status: baked.status,
                    layer: baked.layer,
                    rule: baked.rule.clone(),
                });
        }

        let [namespace, workload, container] = crate::containers::metric_labels(meta.as_deref());
        // Every distinct path or endpoint of an allowed access reaches the log once per
        // interval, so the log is complete evidence for `credwatch learn`.
        let allowed_key = (judgement.verdict == Verdict::Allowed).then(|| {
            let target = match (&record.file, &record.network) {
                (Some(f), _) => f.path.clone(),
                (None, Some(n)) => format!("{}:{}", n.address, n.port),
                (None, None) => String::new(),
            };
            (
                meta.as_ref()
                    .map_or_else(|| "host".to_string(), |m| m.id.clone()),
                held.exe.clone().unwrap_or_default(),
                secret.clone(),
                target,
            )
        });
        let tally = Tally {
            labels: [
                namespace,
                workload,
                container,
                secret,
                record.kind.to_string(),
            ],
            verdict: record.verdict,
            reason: judgement.reason,
            alert: judgement.verdict == Verdict::Deviation && judgement.action == Action::Alert,
            allowed_key,
        };
        self.report(&held.record, &tally, 1, now);
        // Kept (not copied) for the summary of its repeats.
        if let Some(key) = held.repeat {
            self.repeat_origins
                .remember(key, Some((held.record, tally)));
        }
        None
    }

    /// Counts `accesses` accesses in the metrics and writes the record, unless it is an
    /// allowed access already written in this interval.
    fn report(&mut self, record: &forensic::Record, tally: &Tally, accesses: u64, now: Instant) {
        let [ns, wl, ct, sc, kind] = tally.labels.each_ref().map(String::as_str);
        use crate::sinks::metrics::Family;
        self.metrics.add(
            Family::CredentialAccess,
            &[ns, wl, ct, sc, kind, tally.verdict],
            accesses,
        );
        if tally.alert {
            self.metrics.add(
                Family::Deviations,
                &[ns, wl, ct, sc, kind, tally.reason],
                accesses,
            );
        }
        if let Some(key) = &tally.allowed_key {
            if self
                .allowed_logged
                .get(key)
                .is_some_and(|at| now.duration_since(*at) < ALLOWED_EVERY)
            {
                return;
            }
            self.allowed_logged.insert(key.clone(), now);
        }
        if let Some(container) = &record.container
            && !self.log_share.admit(&container.id, now)
        {
            // Counted above; written as part of its container's summary.
            self.metrics.add(
                Family::BudgetExceeded,
                &[ns, wl, ct, "log_records"],
                accesses,
            );
            if self.log_share.summarise(record, accesses, now) {
                self.report_over_log_share(record);
            }
            return;
        }
        let written = self.log.write(record);
        self.count_unwritten(written);
    }

    /// Writes the summaries of containers over their log share whose window is over (`all`:
    /// every one, the agent is stopping).
    pub fn report_log_shares(&mut self, now: Instant, all: bool) {
        for mut summary in self.log_share.due(now, all) {
            self.next_event += 1;
            summary.event_id = format!("log-share-{}", self.next_event);
            let written = self.log.write(&summary);
            self.count_unwritten(written);
        }
    }

    /// Writes the records queued for the log (after each batch from the ring buffer and each
    /// timer: records are never held back longer than that).
    pub fn flush_log(&mut self) {
        let written = self.log.flush();
        self.count_unwritten(written);
    }

    fn count_unwritten(&self, written: Result<(), forensic::Lost>) {
        if let Err(forensic::Lost(err, records)) = written {
            self.metrics
                .events_lost
                .with_label_values(&["log_write"])
                .inc_by(records as u64);
            warn!("forensic log: {err:#} ({records} record(s) not written)");
        }
    }

    /// Reports what containers' budgets cut in finished windows: one summary record per
    /// container, catalogue entry and window (`verdict: "suppressed"`, `count`), counted in
    /// `credwatch_over_budget_total` and as credential accesses.
    pub fn report_suppressed(
        &mut self,
        finished: &[(
            credwatch_common::SuppressedKey,
            crate::probes::repeats::Repeats,
        )],
    ) {
        let now = Instant::now();
        for (key, cut) in finished.iter().filter(|(_, cut)| cut.count > 0) {
            use credwatch_common::{DNS_RULE, ENDPOINT_RULE, ENDPOINT_RULE_MASK, SECRET_RULE};
            let catalog = &self.policies.catalog;
            let named = |name: &str, catalog: &str| (name.to_string(), format!("{catalog}/{name}"));
            // The catalogue changed since (a reload): still reported, unnamed.
            let unknown = || ("unknown".to_string(), String::new());
            let (kind, (name, entry)) = if key.rule & SECRET_RULE != 0 {
                let rule = crate::secrets::SecretTable::rule_of(key.rule & !SECRET_RULE);
                let file = rule.and_then(|r| catalog.files.get(r));
                (
                    "file",
                    file.map_or_else(unknown, |r| named(&r.name, &r.catalog)),
                )
            } else if key.rule == DNS_RULE {
                self.report_dns_answers_over_budget(key.cgroup_id, cut);
                continue;
            } else if key.rule & ENDPOINT_RULE != 0 {
                let id = key.rule & ENDPOINT_RULE_MASK;
                let proxy = credwatch_common::PROXY_ENDPOINT & ENDPOINT_RULE_MASK;
                if id == 0 || id == ENDPOINT_RULE_MASK || id == proxy {
                    // Connects nothing had named yet (unconfirmed, TLS candidates, to a proxy):
                    // they stay unnamed, and are not credential accesses.
                    self.count_unnamed_in(key.cgroup_id, 0, cut.count);
                    continue;
                }
                let endpoint = catalog.endpoints.get(id as usize - 1);
                (
                    "network",
                    endpoint.map_or_else(unknown, |e| named(&e.name, &e.catalog)),
                )
            } else {
                let file = catalog.files.get(key.rule as usize);
                (
                    "file",
                    file.map_or_else(unknown, |r| named(&r.name, &r.catalog)),
                )
            };
            let meta = self
                .containers
                .resolve(key.cgroup_id, 0, Lookup::Cached)
                .container();
            let [namespace, workload, container] =
                crate::containers::metric_labels(meta.as_deref());
            self.metrics.add(
                crate::sinks::metrics::Family::OverBudget,
                &[&namespace, &workload, &container],
                cut.count,
            );
            let wall = |ns: u64| sinks::rfc3339(self.boot_to_unix_ns + ns as i128);
            self.next_event += 1;
            let record = forensic::Record {
                schema: forensic::SCHEMA,
                ts: wall(cut.last_ns).unwrap_or_default(),
                event_id: format!("{:016x}-budget-{}", cut.first_ns, self.next_event),
                node: self.node.clone(),
                verdict: "suppressed",
                reason: "container over its record budget".to_string(),
                kind,
                secret: forensic::SecretSection {
                    name: name.clone(),
                    catalog_entry: entry,
                },
                file: None,
                network: None,
                memory: None,
                budget: None,
                process: Default::default(),
                container: meta.as_deref().map(sinks::container_section),
                pod: meta.as_deref().and_then(sinks::pod_section),
                policy: None,
                count: Some(cut.count),
                first_ts: wall(cut.first_ns),
                last_ts: wall(cut.last_ns),
                repeat_of: None,
                image_finding: None,
            };
            let tally = Tally {
                labels: [namespace, workload, container, name, kind.to_string()],
                verdict: "suppressed",
                reason: "container over its record budget",
                alert: false,
                allowed_key: None,
            };
            self.report(&record, &tally, cut.count, now);
        }
    }

    /// Reports the repeats the kernel counted in finished windows (`all`: every window, the
    /// probes are gone). Returns the kernel entries that are done with.
    pub fn report_repeats(
        &mut self,
        finished: &[(credwatch_common::RepeatKey, crate::probes::repeats::Repeats)],
        now_epoch: u32,
        all: bool,
    ) -> Vec<credwatch_common::RepeatKey> {
        let mut done = Vec::with_capacity(finished.len());
        for (key, repeats) in finished {
            match self.repeat_origins.finish(key, *repeats, now_epoch, all) {
                Finished::Wait => continue,
                Finished::Done => {}
                Finished::Summary(summary) => {
                    let (mut record, tally) = *summary;
                    let wall = |ns: u64| sinks::rfc3339(self.boot_to_unix_ns + ns as i128);
                    record.first_ts = wall(repeats.first_ns);
                    record.last_ts = wall(repeats.last_ns);
                    record.ts = record.last_ts.clone().unwrap_or_default();
                    self.report(&record, &tally, repeats.count, Instant::now());
                }
                Finished::Unattributed(count) => {
                    self.metrics
                        .events_lost
                        .with_label_values(&["repeat_unattributed"])
                        .inc_by(count);
                }
            }
            done.push(*key);
        }
        done
    }

    /// Retries held records; with `flush`, writes all of them with what is known.
    pub fn release_held(&mut self, flush: bool) {
        self.release_inspected(Instant::now(), flush);
        let now = if flush {
            Instant::now() + HOLD * 2
        } else {
            Instant::now()
        };
        for held in std::mem::take(&mut self.held) {
            if let Some(still_waiting) = self.attribute(held, now) {
                self.held.push_back(still_waiting);
            }
        }
    }

    pub fn has_held(&self) -> bool {
        !self.held.is_empty()
    }

    /// Whether a new container wants its filesystem searched (cleared by the call).
    pub fn take_rescan(&mut self) -> bool {
        std::mem::take(&mut self.rescan)
    }

    /// `/proc/<pid>/root` of a live process in each running container.
    pub fn container_roots(&self) -> Vec<std::path::PathBuf> {
        let cgroups = self.containers.live_container_cgroups();
        self.processes
            .pids_in_cgroups(&cgroups)
            .into_iter()
            .map(|pid| std::path::PathBuf::from(format!("/proc/{pid}/root")))
            .filter(|root| root.exists())
            .collect()
    }

    /// Forgets allowed-access timestamps older than the logging interval (bounded memory).
    /// Starts audits of the images containers were found to run, and publishes finished ones
    /// as `credwatch_image_findings`.
    pub fn poll_image_audits(&mut self) {
        let Some(images) = self.images.as_mut() else {
            return;
        };
        for image in self.containers.take_new_images() {
            images.want(&image);
        }
        for audit in images.collect() {
            for ((status, severity), count) in &audit.counts {
                self.metrics
                    .image_findings
                    .with_label_values(&[audit.image.as_str(), status.as_str(), severity.as_str()])
                    .set(*count);
            }
            if let Some(why) = &audit.incomplete {
                self.metrics
                    .image_findings
                    .with_label_values(&[audit.image.as_str(), "incomplete", "unknown"])
                    .set(1);
                log::debug!("image {}: {why}", audit.image);
            }
        }
    }

    /// The periodic upkeep of the tables (every few seconds): processes whose exit was missed,
    /// exited processes, allowed-access dedup, idle metric series, learned endpoints, removed
    /// containers; and the gauges that report their sizes.
    pub fn housekeeping(&mut self, now: Instant) {
        let missed = self.processes.reconcile_with_procfs(now);
        if missed > 0 {
            log::debug!("{missed} process(es) gone without an exit event");
            self.metrics.process_exits_missed.inc_by(missed as u64);
        }
        self.processes.expire(now);
        self.report_log_shares(now, false);
        self.expire_allowed(now);
        self.metrics.expire_series(now);
        self.learned.expire(now);
        self.containers.sweep();
        self.metrics.processes.set(self.processes.len() as i64);
        log::debug!(
            "housekeeping: {} processes in the table, {missed} exit(s) missed",
            self.processes.len()
        );
        self.metrics
            .containers
            .set(self.containers.containers() as i64);
        self.metrics
            .learned_endpoints
            .set(self.learned.entries() as i64);
    }

    pub fn expire_allowed(&mut self, now: Instant) {
        self.allowed_logged
            .retain(|_, at| now.duration_since(*at) < ALLOWED_EVERY);
        let live = self.containers.live_container_cgroups();
        self.scanned.retain(|id| live.contains(id));
    }
}
