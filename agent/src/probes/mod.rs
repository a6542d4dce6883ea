//! Loading, feature checks and attaching of the kernel programs, and access to their maps.

pub mod keys;
pub mod offsets;
pub mod repeats;
mod table;
mod tracefs;

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, LpmTrie, MapData, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::TracePoint,
};
use credwatch_common::{
    Budget, EndpointValue, InodeKey, IoUringOffsets, LEAF_KEY_BYTES, LearnedKey, PATH_KEY_BYTES,
    STATS_ENTRIES, globals, maps, outcome, probe,
};
use log::{info, warn};

use keys::{EndpointKeys, LearnedKeys, PathKeys};
use table::{Attach, ProbeSpec};

/// The kernel programs, built by `agent/build.rs`.
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/credwatch-probes"));

/// How one probe (a syscall's enter+exit pair) ended up.
#[derive(Debug, Clone)]
pub struct ProbeStatus {
    pub probe: &'static str,
    /// The mechanism used ("tracepoint"), or None when it could not attach.
    pub mode: Option<&'static str>,
    pub detail: String,
}

pub struct Probes {
    ebpf: Ebpf,
    pub status: Vec<ProbeStatus>,
    /// (dev, ino) currently in the kernel's secret-inode map.
    inodes: BTreeMap<InodeKey, u32>,
    paths: PathKeys,
    endpoints: EndpointKeys,
    learned: LearnedKeys,
}

/// The entries the in-kernel filter should hold.
#[derive(Debug, Default)]
pub struct KernelFilter {
    pub paths: PathKeys,
    pub inodes: BTreeMap<InodeKey, u32>,
    /// (IPv6-form network, prefix length) → endpoint.
    pub endpoints: EndpointKeys,
    /// (cgroup, address) → endpoint, from containers' DNS answers and proxy variables.
    pub learned: LearnedKeys,
    /// Ports of host-name endpoints (see `Catalog::named_ports`).
    pub named_ports: Vec<u16>,
}

impl Probes {
    /// Loads the programs with offsets from the running kernel and attaches every probe that
    /// can be attached. Fails only when nothing useful can run.
    /// `ring_bytes`: the ring buffer's size (a power of two, whole pages); `budget`: each
    /// cgroup's record budget.
    /// `kernel_log`: the level of the programs' diagnostics (`diag.rs`; off: none at all).
    pub fn load(ring_bytes: u32, budget: Budget, kernel_log: log::LevelFilter) -> Result<Self> {
        tracefs::ensure_mounted()?;
        if let Err(err) = raise_memlock_limit() {
            // Kernels ≥ 5.11 account BPF memory to the cgroup instead; only older ones need it.
            warn!("could not raise RLIMIT_MEMLOCK ({err}); continuing (memcg accounting)");
        }
        let btf_path = Path::new(offsets::VMLINUX_BTF);
        let mut offsets = offsets::from_btf_file(btf_path)
            .context("kernel struct offsets: the file probes cannot run without them")?;
        let mode = choose_mode(btf_path)?;
        if let ArgsMode::FromRegisters { base, words } = mode {
            offsets.args_from_regs = 1;
            offsets.regs_base = base;
            offsets.regs_arg = words;
        }
        info!("file probes: {}", mode.describe());
        let uring = offsets::io_uring_from_btf_file(btf_path);
        let agent_tgid = std::process::id();
        let nr_cpus = aya::util::nr_cpus()
            .map_err(|(_, e)| e)
            .context("possible CPUs")? as u32;
        let ebpf = EbpfLoader::new()
            .verifier_log_level(if std::env::var_os("CREDWATCH_VERIFIER_LOG").is_some() {
                aya::VerifierLogLevel::VERBOSE
            } else {
                aya::VerifierLogLevel::default()
            })
            .map_max_entries(maps::EVENTS, ring_bytes)
            .override_global(globals::OFFSETS, &offsets, true)
            .override_global(globals::AGENT_TGID, &agent_tgid, true)
            .override_global(globals::NR_CPUS, &nr_cpus, true)
            .override_global(globals::BUDGET, &budget, true)
            // aya-log's levels count like `log`'s (off 0, error 1 … trace 5).
            .override_global(aya_log::LEVEL, &(kernel_log as usize as u8), true)
            .override_global(
                globals::URING_OFFSETS,
                uring.as_ref().unwrap_or(&IoUringOffsets::default()),
                true,
            )
            .load(PROGRAMS)
            .context("loading the eBPF object")?;
        let mut probes = Probes {
            ebpf,
            status: Vec::new(),
            inodes: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            learned: BTreeMap::new(),
            paths: PathKeys::default(),
        };
        let btf = aya::Btf::from_sys_fs().context("kernel BTF for the tp_btf probes")?;
        let uring = uring.map(|_| ()).map_err(|err| format!("{err:#}"));
        for spec in table::PROBES {
            let status = probes.attach(spec, mode, &btf, &uring);
            probes.record(status);
        }
        let file_open = |s: &&ProbeStatus| {
            table::PROBES
                .iter()
                .any(|p| p.name == s.probe && matches!(p.attach, Attach::FileOpenSyscall))
        };
        if !probes
            .status
            .iter()
            .filter(file_open)
            .any(|s| s.mode.is_some())
        {
            return Err(anyhow!("no file-open probe could be attached"));
        }
        probes.allow_remembering()?;
        Ok(probes)
    }

    fn record(&mut self, status: ProbeStatus) {
        match status.mode {
            Some(mode) => info!("probe {}: attached ({mode})", status.probe),
            None => warn!("probe {}: unavailable: {}", status.probe, status.detail),
        }
        self.status.push(status);
    }

    /// Lets the kernel filter remember verdicts once every probe that sees moves in the file
    /// tree is attached: without one of them, a remembered "not a credential" could outlive a
    /// directory moved under a catalogue path, so every open is decided afresh instead.
    fn allow_remembering(&mut self) -> Result<()> {
        let missing: Vec<&str> = table::PROBES
            .iter()
            .filter(|spec| spec.sees_moves)
            .filter(|spec| {
                !self
                    .status
                    .iter()
                    .any(|s| s.probe == spec.name && s.mode.is_some())
            })
            .map(|spec| spec.name)
            .collect();
        if !missing.is_empty() {
            warn!(
                "kernel filter: nothing is remembered between opens (every open walks its path) because these probes are unavailable: {}",
                missing.join(", ")
            );
            return Ok(());
        }
        self.filter_epoch()?
            .set(credwatch_common::filter_epoch::REMEMBER, 1, 0)
            .context("allowing the filter to remember")
    }

    /// Attaches one row of the probe table.
    fn attach(
        &mut self,
        spec: &ProbeSpec,
        mode: ArgsMode,
        btf: &aya::Btf,
        uring: &std::result::Result<(), String>,
    ) -> ProbeStatus {
        let name = spec.name;
        let (label, result) = match &spec.attach {
            Attach::FileOpenSyscall => (mode.label(), self.attach_syscall(name, mode)),
            Attach::Syscall => {
                let mode = ArgsMode::SavedAtEntry;
                (mode.label(), self.attach_syscall(name, mode))
            }
            Attach::BtfTracepoints(tracepoints) => (
                "tp_btf",
                tracepoints
                    .iter()
                    .try_for_each(|tp| self.attach_btf_tracepoint(tp, btf)),
            ),
            Attach::IoUring(tracepoints) => (
                "tp_btf",
                match uring {
                    Ok(()) => tracepoints
                        .iter()
                        .try_for_each(|tp| self.attach_btf_tracepoint(tp, btf)),
                    Err(err) => Err(anyhow!("io_uring request layout not in kernel BTF: {err}")),
                },
            ),
            Attach::CgroupTracepoint => ("tracepoint", self.attach_cgroup_tracepoint(name)),
            Attach::CgroupSkb { program, direction } => {
                ("cgroup_skb", self.attach_cgroup_skb(program, *direction))
            }
            Attach::CgroupSockAddr(hooks) => (
                "cgroup_sock_addr",
                hooks
                    .iter()
                    .try_for_each(|hook| self.attach_sock_addr(hook)),
            ),
            Attach::CgroupSockRelease(program) => {
                ("cgroup_sock", self.attach_sock_release(program))
            }
        };
        probe_status(name, label, result)
    }

    /// The object's program `name`, as the kind `T` it must be.
    fn program<'a, T>(&'a mut self, name: &str) -> Result<&'a mut T>
    where
        &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
    {
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the object"))?;
        Ok(program.try_into()?)
    }

    /// The filter's generations and switches (`filter_epoch`).
    fn filter_epoch(&mut self) -> Result<aya::maps::Array<&mut MapData, u64>> {
        Ok(aya::maps::Array::try_from(
            self.ebpf
                .map_mut(maps::FILTER_EPOCH)
                .ok_or_else(|| anyhow!("filter epoch map missing"))?,
        )?)
    }

    fn attach_btf_tracepoint(&mut self, name: &str, btf: &aya::Btf) -> Result<()> {
        let program: &mut aya::programs::BtfTracePoint = self.program(name)?;
        program
            .load(name, btf)
            .with_context(|| format!("loading {name}"))?;
        program
            .attach()
            .with_context(|| format!("attaching {name}"))?;
        Ok(())
    }

    /// A cgroup_skb program on the cgroup2 root: every cgroup below inherits it.
    fn attach_cgroup_skb(
        &mut self,
        program_name: &str,
        direction: aya::programs::CgroupSkbAttachType,
    ) -> Result<()> {
        let program: &mut aya::programs::CgroupSkb = self.program(program_name)?;
        program
            .load()
            .with_context(|| format!("loading {program_name}"))?;
        program
            .attach(
                cgroup2_root()?,
                direction,
                aya::programs::CgroupAttachMode::Single,
            )
            .with_context(|| format!("attaching {program_name} to the cgroup2 root"))?;
        Ok(())
    }

    /// A `cgroup/connect4|6` hook on the cgroup2 root.
    fn attach_sock_addr(&mut self, hook: &str) -> Result<()> {
        let program: &mut aya::programs::CgroupSockAddr = self.program(hook)?;
        program.load().with_context(|| format!("loading {hook}"))?;
        program
            .attach(cgroup2_root()?, aya::programs::CgroupAttachMode::Single)
            .with_context(|| format!("attaching {hook} to the cgroup2 root"))?;
        Ok(())
    }

    /// A `cgroup/sock_release` program on the cgroup2 root.
    fn attach_sock_release(&mut self, name: &str) -> Result<()> {
        let program: &mut aya::programs::CgroupSock = self.program(name)?;
        program.load().with_context(|| format!("loading {name}"))?;
        program
            .attach(cgroup2_root()?, aya::programs::CgroupAttachMode::Single)
            .with_context(|| format!("attaching {name} to the cgroup2 root"))?;
        Ok(())
    }

    fn attach_cgroup_tracepoint(&mut self, name: &str) -> Result<()> {
        tracefs::check_cgroup_format(name)?;
        let program: &mut TracePoint = self.program(name)?;
        program.load().with_context(|| format!("loading {name}"))?;
        program
            .attach("cgroup", name)
            .with_context(|| format!("attaching {name}"))?;
        Ok(())
    }

    fn attach_syscall(&mut self, name: &str, mode: ArgsMode) -> Result<()> {
        let phases: &[&str] = match mode {
            ArgsMode::FromRegisters { .. } => &["exit"],
            ArgsMode::SavedAtEntry => &["enter", "exit"],
        };
        for phase in phases {
            let tracepoint = format!("sys_{phase}_{name}");
            tracefs::check_syscall_format(&tracepoint)?;
            let program: &mut TracePoint = self.program(&tracepoint)?;
            program
                .load()
                .with_context(|| format!("loading {tracepoint}"))?;
            program
                .attach("syscalls", &tracepoint)
                .with_context(|| format!("attaching {tracepoint}"))?;
        }
        Ok(())
    }

    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(maps::EVENTS)
            .ok_or_else(|| anyhow!("EVENTS map missing"))?;
        Ok(RingBuf::try_from(map)?)
    }

    pub fn take_repeats(&mut self) -> Result<repeats::KernelRepeats> {
        repeats::KernelRepeats::take(&mut self.ebpf, maps::REPEATS)
    }

    pub fn take_suppressed(&mut self) -> Result<repeats::KernelSuppressed> {
        repeats::KernelSuppressed::take(&mut self.ebpf, maps::SUPPRESSED)
    }

    /// The reader of the programs' diagnostics, when they are on: it prints each line to
    /// stderr (the kernel already filtered them by level).
    pub fn take_kernel_log(
        &mut self,
        level: log::LevelFilter,
    ) -> Result<Option<aya_log::EbpfLogger<KernelLogger>>> {
        if level == log::LevelFilter::Off {
            return Ok(None);
        }
        Ok(Some(
            aya_log::EbpfLogger::init_with_logger(&mut self.ebpf, KernelLogger)
                .context("the kernel programs' log")?,
        ))
    }

    pub fn take_stats(&mut self) -> Result<KernelStats> {
        let map = self
            .ebpf
            .take_map(maps::STATS)
            .ok_or_else(|| anyhow!("STATS map missing"))?;
        let inspecting = self
            .ebpf
            .take_map(maps::INSPECTING)
            .and_then(|m| aya::maps::Array::try_from(m).ok());
        Ok(KernelStats {
            map: PerCpuArray::try_from(map)?,
            inspecting,
        })
    }

    /// Brings the endpoint map in line with `want` (add first, then remove).
    pub fn sync_endpoints(&mut self, want: &EndpointKeys) -> Result<()> {
        let mut endpoints: LpmTrie<_, [u8; 16], EndpointValue> = LpmTrie::try_from(
            self.ebpf
                .map_mut(maps::ENDPOINTS)
                .ok_or_else(|| anyhow!("endpoint map missing"))?,
        )?;
        sync_map(
            &mut endpoints,
            &self.endpoints,
            want,
            |endpoints, (addr, len), value| {
                endpoints
                    .insert(&Key::new(*len, *addr), value, 0)
                    .context("inserting an endpoint")
            },
            |endpoints, (addr, len)| {
                let _ = endpoints.remove(&Key::new(*len, *addr));
            },
        )?;
        self.endpoints = want.clone();
        Ok(())
    }

    /// Brings the learned-endpoint map (per-cgroup DNS answers) in line with `want`.
    pub fn sync_learned(&mut self, want: &LearnedKeys) -> Result<()> {
        let mut learned: aya::maps::HashMap<_, LearnedKey, EndpointValue> =
            aya::maps::HashMap::try_from(
                self.ebpf
                    .map_mut(maps::LEARNED_ENDPOINTS)
                    .ok_or_else(|| anyhow!("learned-endpoint map missing"))?,
            )?;
        sync_map(
            &mut learned,
            &self.learned,
            want,
            |learned, key, value| {
                learned
                    .insert(key, value, 0)
                    .context("inserting a learned endpoint")
            },
            |learned, key| {
                let _ = learned.remove(key);
            },
        )?;
        self.learned = want.clone();
        Ok(())
    }

    /// Brings the kernel filter maps in line with `want`: new entries are added before stale
    /// ones are removed, so no credential goes unwatched during the change.
    pub fn sync_filter(&mut self, want: &KernelFilter) -> Result<()> {
        // The kernel's remembered verdicts (per directory, per file) were decided with the
        // keys and secret inodes it had then.
        let changed = self.paths != want.paths || self.inodes != want.inodes;
        let synced = self.sync_filter_maps(want);
        if synced.is_err() {
            // Some maps may hold new entries and some old ones: the next sync rewrites them
            // all, and every remembered verdict is decided again.
            self.inodes.clear();
            self.paths = PathKeys::default();
        }
        if changed || synced.is_err() {
            // Only after the maps hold the new keys and inodes (or as much of them as could
            // be written): verdicts tagged with the old epoch stop counting.
            let mut epoch = self.filter_epoch()?;
            let keys = credwatch_common::filter_epoch::KEYS;
            let now = epoch.get(&keys, 0).unwrap_or(0);
            epoch
                .set(keys, now + 1, 0)
                .context("advancing the filter epoch")?;
        }
        synced
    }

    fn sync_filter_maps(&mut self, want: &KernelFilter) -> Result<()> {
        {
            let mut inodes: HashMap<_, InodeKey, u32> = HashMap::try_from(
                self.ebpf
                    .map_mut(maps::SECRET_INODES)
                    .ok_or_else(|| anyhow!("inode map missing"))?,
            )?;
            sync_map(
                &mut inodes,
                &self.inodes,
                &want.inodes,
                |inodes, key, id| {
                    inodes
                        .insert(key, id, 0)
                        .context("inserting a secret inode")
                },
                |inodes, key| {
                    let _ = inodes.remove(key);
                },
            )?;
        }
        sync_trie::<PATH_KEY_BYTES>(
            &mut self.ebpf,
            maps::PATH_PREFIXES,
            &self.paths.prefixes,
            &want.paths.prefixes,
        )?;
        sync_trie::<PATH_KEY_BYTES>(
            &mut self.ebpf,
            maps::PATH_SUFFIXES,
            &self.paths.suffixes,
            &want.paths.suffixes,
        )?;
        // The cheap checks' keys, derived from the same keys (see `filter.rs` in the probes).
        sync_trie::<LEAF_KEY_BYTES>(
            &mut self.ebpf,
            maps::LEAF_SUFFIXES,
            &self.paths.leaf_keys(),
            &want.paths.leaf_keys(),
        )?;
        sync_trie::<PATH_KEY_BYTES>(
            &mut self.ebpf,
            maps::DIR_PREFIXES,
            &self.paths.dir_keys(),
            &want.paths.dir_keys(),
        )?;
        self.sync_endpoints(&want.endpoints)?;
        self.sync_learned(&want.learned)?;
        let mut named: aya::maps::Array<_, u16> = aya::maps::Array::try_from(
            self.ebpf
                .map_mut(maps::NAMED_PORTS)
                .ok_or_else(|| anyhow!("named-port map missing"))?,
        )?;
        for slot in 0..credwatch_common::NAMED_PORT_SLOTS {
            let port = want.named_ports.get(slot as usize).copied().unwrap_or(0);
            named.set(slot, port, 0).context("setting a named port")?;
        }
        self.inodes = want.inodes.clone();
        self.paths = PathKeys {
            prefixes: want.paths.prefixes.clone(),
            suffixes: want.paths.suffixes.clone(),
        };
        Ok(())
    }
}

/// How the exit programs get the syscall's arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgsMode {
    /// From the task's saved user registers: one tracepoint per open.
    FromRegisters { base: u32, words: [u32; 4] },
    /// Saved by a `sys_enter` program: two tracepoints per open (the fallback).
    SavedAtEntry,
}

impl ArgsMode {
    /// The `mode` label of `credwatch_probe_attached`.
    pub fn label(self) -> &'static str {
        match self {
            ArgsMode::FromRegisters { .. } => "tracepoint-exit",
            ArgsMode::SavedAtEntry => "tracepoint-enter-exit",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            ArgsMode::FromRegisters { .. } => {
                "syscall exit tracepoints, arguments from the saved registers (bpf_task_pt_regs)"
            }
            ArgsMode::SavedAtEntry => "syscall enter+exit tracepoints, arguments saved at entry",
        }
    }
}

/// The best argument source this kernel and architecture allow. `CREDWATCH_PROBE_MODE=
/// enter-exit` forces the fallback (used by the test suite to cover both).
fn choose_mode(btf: &Path) -> Result<ArgsMode> {
    let forced = std::env::var("CREDWATCH_PROBE_MODE").unwrap_or_default();
    match forced.as_str() {
        "" | "auto" => {}
        "enter-exit" => return Ok(ArgsMode::SavedAtEntry),
        other => {
            return Err(anyhow!(
                "CREDWATCH_PROBE_MODE={other:?}: expected auto or enter-exit"
            ));
        }
    }
    Ok(match offsets::syscall_arg_registers(btf)? {
        Some((base, words)) if task_pt_regs_supported() => ArgsMode::FromRegisters { base, words },
        _ => ArgsMode::SavedAtEntry,
    })
}

/// Whether tracepoint programs may call the helpers the exit-only mode needs.
fn task_pt_regs_supported() -> bool {
    use aya::{
        programs::ProgramType,
        sys::{BpfHelper, is_helper_supported},
    };
    [
        BpfHelper::BPF_FUNC_get_current_task_btf,
        BpfHelper::BPF_FUNC_task_pt_regs,
    ]
    .into_iter()
    .all(|helper| is_helper_supported(ProgramType::TracePoint, helper).unwrap_or(false))
}

fn trie_key<const N: usize>(bytes: &[u8]) -> Key<[u8; N]> {
    let mut data = [0u8; N];
    let n = bytes.len().min(N);
    data[..n].copy_from_slice(&bytes[..n]);
    Key::new((n * 8) as u32, data)
}

/// Makes the trie `name` (keys of `N` bytes) hold `want` instead of `have`.
fn sync_trie<const N: usize>(
    ebpf: &mut Ebpf,
    name: &str,
    have: &BTreeMap<Vec<u8>, u32>,
    want: &BTreeMap<Vec<u8>, u32>,
) -> Result<()> {
    let mut trie: LpmTrie<_, [u8; N], u32> = LpmTrie::try_from(
        ebpf.map_mut(name)
            .ok_or_else(|| anyhow!("{name} map missing"))?,
    )?;
    sync_map(
        &mut trie,
        have,
        want,
        |trie, bytes, id| {
            trie.insert(&trie_key::<N>(bytes), id, 0)
                .with_context(|| format!("inserting into {name}"))
        },
        |trie, bytes| {
            let _ = trie.remove(&trie_key::<N>(bytes));
        },
    )
}

/// Brings one kernel map from `have` to `want`: new and changed entries first, stale ones
/// after, so nothing wanted is missing while the map changes.
fn sync_map<M, K: Ord, V: PartialEq>(
    map: &mut M,
    have: &BTreeMap<K, V>,
    want: &BTreeMap<K, V>,
    insert: impl Fn(&mut M, &K, &V) -> Result<()>,
    remove: impl Fn(&mut M, &K),
) -> Result<()> {
    for (key, value) in want {
        if have.get(key) != Some(value) {
            insert(map, key, value)?;
        }
    }
    for key in have.keys().filter(|k| !want.contains_key(*k)) {
        remove(map, key);
    }
    Ok(())
}

/// Prints the kernel programs' diagnostics (numbers only: nothing a workload wrote).
pub struct KernelLogger;

impl log::Log for KernelLogger {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        eprintln!(
            "[kernel {} {}] {}",
            record.level(),
            record.target(),
            record.args()
        );
    }

    fn flush(&self) {}
}

/// The per-CPU counters of the kernel programs.
pub struct KernelStats {
    map: PerCpuArray<MapData, u64>,
    /// `INSPECTING`: connections whose first payloads the egress program reads now.
    inspecting: Option<aya::maps::Array<MapData, i64>>,
}

impl KernelStats {
    /// Connections being read now (the kernel's count, which may run high, never low).
    pub fn inspecting(&self) -> i64 {
        self.inspecting
            .as_ref()
            .and_then(|m| m.get(&0, 0).ok())
            .unwrap_or(0)
    }

    /// Totals over all CPUs: `(probe name, outcome name, count)`.
    pub fn read(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut out = Vec::with_capacity(STATS_ENTRIES as usize);
        for (p, probe_name) in probe::NAMES.iter().enumerate() {
            for (o, outcome_name) in outcome::NAMES.iter().enumerate() {
                let index = (p as u32) * outcome::COUNT + o as u32;
                let total = self.map.get(&index, 0).map(|v| v.iter().sum()).unwrap_or(0);
                out.push((*probe_name, *outcome_name, total));
            }
        }
        out
    }
}

fn raise_memlock_limit() -> std::io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The cgroup2 root, where the cgroup programs attach (their effect is inherited by every
/// cgroup below, so all containers are covered).
fn cgroup2_root() -> Result<std::fs::File> {
    let root =
        crate::containers::cgroup::cgroup2_mount().ok_or_else(|| anyhow!("no cgroup2 mount"))?;
    std::fs::File::open(&root).with_context(|| format!("opening {}", root.display()))
}

fn probe_status(probe: &'static str, mode: &'static str, result: Result<()>) -> ProbeStatus {
    match result {
        Ok(()) => ProbeStatus {
            probe,
            mode: Some(mode),
            detail: String::new(),
        },
        Err(err) => ProbeStatus {
            probe,
            mode: None,
            detail: format!("{err:#}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use credwatch_common::maps;

    use super::table::{self, Attach};

    /// Every map and program the agent asks for by name is in the embedded object: a rename
    /// on either side fails here, unprivileged, instead of at load time on a node.
    #[test]
    fn the_embedded_object_has_every_map_and_program_the_agent_names() {
        let object =
            aya_obj::Object::parse(super::PROGRAMS).expect("the embedded eBPF object parses");
        for map in [
            maps::EVENTS,
            maps::STATS,
            maps::SECRET_INODES,
            maps::PATH_PREFIXES,
            maps::PATH_SUFFIXES,
            maps::ENDPOINTS,
            maps::NAMED_PORTS,
            maps::LEARNED_ENDPOINTS,
            maps::REPEATS,
            maps::SUPPRESSED,
            maps::INSPECTED,
            maps::LEAF_SUFFIXES,
            maps::DIR_PREFIXES,
            maps::FILTER_EPOCH,
            maps::INSPECTING,
        ] {
            assert!(object.maps.contains_key(map), "map {map} missing");
        }
        // Every program a row of the probe table attaches.
        let programs: Vec<String> = table::PROBES
            .iter()
            .flat_map(|spec| match &spec.attach {
                Attach::FileOpenSyscall | Attach::Syscall => vec![
                    format!("sys_enter_{}", spec.name),
                    format!("sys_exit_{}", spec.name),
                ],
                Attach::BtfTracepoints(names)
                | Attach::IoUring(names)
                | Attach::CgroupSockAddr(names) => names.iter().map(|n| n.to_string()).collect(),
                Attach::CgroupTracepoint => vec![spec.name.to_string()],
                Attach::CgroupSockRelease(program) => vec![program.to_string()],
                Attach::CgroupSkb { program, .. } => vec![program.to_string()],
            })
            .collect();
        for program in &programs {
            assert!(
                object.programs.contains_key(program),
                "program {program} missing"
            );
        }
    }
}
