//! The process table: fed by the kernel's fork/exec/exit events and seeded from procfs at
//! start-up, so a record names exe, argv and ancestors even of a process that exited before
//! userspace looked (the usual case for `cat` or `curl`). A process is identified by (pid, start
//! time), so a reused pid is never mistaken for the process that had it before.

use std::{
    collections::{HashMap, VecDeque},
    os::unix::ffi::OsStrExt as _,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    escape::escape_bytes,
    events::{FileOpen, ProcessEvent, ProcessEventKind, split_args},
};

const MAX_ANCESTORS: usize = 8;
/// How long an exited process stays known: records of its last opens may still be queued.
pub const EXITED_GRACE: Duration = Duration::from_secs(30);

/// What a process runs: its executable and command line as the kernel gave them (footprints
/// judge these) and as records show them (escaped). Made once per exec and shared — by the
/// process's children until they exec, and by every record of it and its descendants — so a
/// record costs reference counts, not a copy and an escape of every ancestor's command line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Program {
    pub exe: Option<Vec<u8>>,
    pub args: Option<Vec<Vec<u8>>>,
    pub shown_exe: Option<Arc<str>>,
    pub shown_args: Option<Arc<[String]>>,
}

impl Program {
    pub fn new(exe: Option<Vec<u8>>, args: Option<Vec<Vec<u8>>>) -> Arc<Self> {
        Arc::new(Program {
            shown_exe: exe.as_deref().map(|e| escape_bytes(e).into()),
            shown_args: args
                .as_ref()
                .map(|a| a.iter().map(|s| escape_bytes(s)).collect()),
            exe,
            args,
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Proc {
    /// `task->start_boottime` in ns (procfs-seeded entries: clock-tick precision).
    pub start_ns: u64,
    pub ppid: u32,
    pub program: Arc<Program>,
    pub cgroup_id: u64,
    exited: Option<Instant>,
    /// The pid inside its pid namespace, looked up once (on its first access).
    ns_pid: Option<Option<u32>>,
}

/// What a record says about the process that made an access.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub tid: u32,
    pub ppid: Option<u32>,
    pub uid: u32,
    pub gid: u32,
    pub comm: Vec<u8>,
    pub program: Arc<Program>,
    /// ns since boot.
    pub start_boottime: Option<u64>,
    /// The pid as the process' own pid namespace numbers it (innermost `NSpid`).
    pub ns_pid: Option<u32>,
    pub ancestors: Vec<Ancestor>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ancestor {
    pub pid: u32,
    pub program: Arc<Program>,
}

pub struct ProcessTable {
    procs: HashMap<u32, Proc>,
    exited: VecDeque<(Instant, u32, u64)>,
    /// Live entries whose process was missing from /proc at the last reconciliation.
    gone_last_look: std::collections::HashSet<u32>,
    /// ns per clock tick, for comparing procfs start times with the kernel's.
    tick_ns: u64,
}

impl Default for ProcessTable {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessTable {
    pub fn new() -> Self {
        ProcessTable {
            procs: HashMap::new(),
            exited: VecDeque::new(),
            gone_last_look: Default::default(),
            tick_ns: 1_000_000_000 / procfs::ticks_per_second().max(1),
        }
    }

    /// A live process in each of `cgroups` (for looking into its container's filesystem).
    pub fn pids_in_cgroups(&self, cgroups: &[u64]) -> Vec<u32> {
        // The longest-lived process of each: a container's filesystem is read through its
        // /proc/<pid>/root, which a short-lived `cat` would take away mid-search.
        let mut found: HashMap<u64, (u64, u32)> = HashMap::new();
        for (pid, p) in &self.procs {
            if p.exited.is_none() && cgroups.contains(&p.cgroup_id) {
                let oldest = found.entry(p.cgroup_id).or_insert((p.start_ns, *pid));
                if p.start_ns < oldest.0 {
                    *oldest = (p.start_ns, *pid);
                }
            }
        }
        found.into_values().map(|(_, pid)| pid).collect()
    }

    /// Every process alive now, from procfs.
    pub fn seed_from_procfs(&mut self) {
        let cgroup2 = crate::containers::cgroup::cgroup2_mount();
        let Ok(all) = procfs::process::all_processes() else {
            return;
        };
        for process in all.flatten() {
            let pid = process.pid as u32;
            let Ok(stat) = process.stat() else { continue };
            self.procs.insert(
                pid,
                Proc {
                    start_ns: stat.starttime * self.tick_ns,
                    ppid: stat.ppid as u32,
                    program: Program::new(read_exe(pid), read_args(pid)),
                    cgroup_id: cgroup2
                        .as_deref()
                        .and_then(|m| cgroup_id_of(m, pid))
                        .unwrap_or(0),
                    exited: None,
                    ns_pid: None,
                },
            );
        }
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    pub fn apply(&mut self, event: &ProcessEvent) {
        log::trace!(
            "process {:?} pid={} ppid={} start={} exe={:?}",
            event.kind,
            event.pid,
            event.ppid,
            event.start_boottime,
            event.filename.as_deref().map(String::from_utf8_lossy)
        );
        match event.kind {
            ProcessEventKind::Fork => {
                // The child runs the parent's program until it execs.
                let program = self
                    .procs
                    .get(&event.ppid)
                    .map(|p| p.program.clone())
                    .unwrap_or_default();
                self.procs.insert(
                    event.pid,
                    Proc {
                        start_ns: event.start_boottime,
                        ppid: event.ppid,
                        program,
                        cgroup_id: event.cgroup_id,
                        exited: None,
                        ns_pid: None,
                    },
                );
            }
            ProcessEventKind::Exec => {
                let entry = self.procs.entry(event.pid).or_default();
                entry.start_ns = event.start_boottime;
                entry.ppid = event.ppid;
                entry.cgroup_id = event.cgroup_id;
                entry.exited = None;
                entry.program = Program::new(event.filename.clone(), event.args.clone());
            }
            ProcessEventKind::Exit => {
                // Only the process that exited: a procfs-seeded entry may already be a newer
                // process that reused the pid.
                let tick_ns = self.tick_ns;
                if let Some(entry) = self.procs.get_mut(&event.pid)
                    && same_start(entry.start_ns, event.start_boottime, tick_ns)
                {
                    let now = Instant::now();
                    entry.exited = Some(now);
                    self.exited.push_back((now, event.pid, entry.start_ns));
                }
            }
        }
    }

    /// Marks as exited every live entry whose process has been gone from `/proc` at two looks in
    /// a row: an exit the table never heard of (its record lost to a full ring buffer, or a
    /// process looked up in procfs after its exit event had passed). Returns how many there
    /// were. The entries stay for the usual grace, as a record of theirs may still be queued.
    pub fn reconcile_with_procfs(&mut self, now: Instant) -> usize {
        let dir = match std::fs::read_dir("/proc") {
            Ok(dir) => dir,
            Err(err) => {
                log::warn!("reading /proc to find exits the table missed: {err}");
                return 0;
            }
        };
        // /proc lists thread-group leaders only: exactly the processes the table tracks.
        let live: std::collections::HashSet<u32> = dir
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        self.reconcile(now, |pid| live.contains(&pid))
    }

    fn reconcile(&mut self, now: Instant, alive: impl Fn(u32) -> bool) -> usize {
        let mut missed = 0;
        let mut gone = std::collections::HashSet::new();
        for (pid, entry) in &mut self.procs {
            if entry.exited.is_some() || alive(*pid) {
                continue;
            }
            // Gone at the last look too: its exit event was not merely still queued.
            if self.gone_last_look.contains(pid) {
                entry.exited = Some(now);
                self.exited.push_back((now, *pid, entry.start_ns));
                missed += 1;
            } else {
                gone.insert(*pid);
            }
        }
        self.gone_last_look = gone;
        missed
    }

    /// Forgets processes that exited more than `EXITED_GRACE` ago.
    pub fn expire(&mut self, now: Instant) {
        while let Some(&(at, pid, start)) = self.exited.front() {
            if now.duration_since(at) < EXITED_GRACE {
                break;
            }
            self.exited.pop_front();
            // Only if the pid still names that process (not a newer one that reused it).
            if self
                .procs
                .get(&pid)
                .is_some_and(|p| p.start_ns == start && p.exited.is_some())
            {
                self.procs.remove(&pid);
            }
        }
    }

    /// The entry for (pid, start time), if the table knows that process.
    /// The cgroup of a live process in the table.
    pub fn cgroup_of(&self, pid: u32) -> Option<u64> {
        self.get(pid, 0).map(|p| p.cgroup_id)
    }

    fn get(&self, pid: u32, start_ns: u64) -> Option<&Proc> {
        let entry = self.procs.get(&pid)?;
        same_start(entry.start_ns, start_ns, self.tick_ns).then_some(entry)
    }

    /// How a container process came to be: `"init"` when it is the container's first process
    /// (`init_pid`) or descends from it, `"exec"` when its ancestry leaves the container
    /// (`cgroup_id`) without passing through it (`runc exec`, `kubectl exec`, CRI ExecSync).
    /// None when the ancestry is not known far enough to tell.
    pub fn container_entry(&self, pid: u32, cgroup_id: u64, init_pid: u32) -> Option<&'static str> {
        let mut current = pid;
        for _ in 0..64 {
            if current == init_pid {
                return Some("init");
            }
            let entry = self.procs.get(&current)?;
            let parent = self.procs.get(&entry.ppid);
            match parent {
                // The topmost process of the container that is not its init: exec'd in.
                Some(p) if p.cgroup_id != cgroup_id && entry.ppid != init_pid => {
                    return Some("exec");
                }
                Some(_) => current = entry.ppid,
                None if entry.ppid <= 1 => return Some("exec"),
                None => return None,
            }
        }
        None
    }

    /// The process behind a connect.
    pub fn describe_connect(&mut self, c: &crate::events::Connect) -> ProcessInfo {
        // The same lookup as for a file open; only these fields matter to it.
        let as_open = FileOpen {
            boot_ns: c.boot_ns,
            pid: c.pid,
            tid: c.tid,
            uid: c.uid,
            gid: c.gid,
            cgroup_id: c.cgroup_id,
            result: c.result.unwrap_or(0),
            start_boottime: c.start_boottime,
            comm: c.comm.clone(),
            ..Default::default()
        };
        self.describe(&as_open)
    }

    /// The process behind a file open, from the table, falling back to procfs.
    pub fn describe(&mut self, open: &FileOpen) -> ProcessInfo {
        let mut info = ProcessInfo {
            pid: open.pid,
            tid: open.tid,
            uid: open.uid,
            gid: open.gid,
            comm: open.comm.clone(),
            start_boottime: (open.start_boottime != 0).then_some(open.start_boottime),
            ..Default::default()
        };
        if self.get(open.pid, open.start_boottime).is_none() {
            // Started before the agent saw it and not seeded (a race at start-up): ask procfs
            // once and remember the answer.
            if let Ok(stat) = procfs::process::Process::new(open.pid as i32).and_then(|p| p.stat())
            {
                self.procs.insert(
                    open.pid,
                    Proc {
                        start_ns: open.start_boottime,
                        ppid: stat.ppid as u32,
                        program: Program::new(read_exe(open.pid), read_args(open.pid)),
                        cgroup_id: open.cgroup_id,
                        exited: None,
                        ns_pid: None,
                    },
                );
            }
        }
        let tick_ns = self.tick_ns;
        info.ns_pid = match self.procs.get_mut(&open.pid) {
            // A process keeps its namespace pid: one procfs read per process, not per access.
            Some(p) if same_start(p.start_ns, open.start_boottime, tick_ns) => {
                *p.ns_pid.get_or_insert_with(|| ns_pid(open.pid))
            }
            _ => ns_pid(open.pid),
        };
        if let Some(entry) = self.get(open.pid, open.start_boottime) {
            info.ppid = Some(entry.ppid);
            info.program = entry.program.clone();
            let mut next = entry.ppid;
            while next > 0 && info.ancestors.len() < MAX_ANCESTORS {
                let Some(parent) = self.procs.get(&next) else {
                    info.ancestors.push(Ancestor {
                        pid: next,
                        ..Default::default()
                    });
                    break;
                };
                info.ancestors.push(Ancestor {
                    pid: next,
                    program: parent.program.clone(),
                });
                // The chain inside the process' own cgroup and the process that started it
                // there (the runtime, `runc exec`, a shell on the host): the host's ancestry
                // above a container is the same in every record, says nothing about the access
                // and was most of a record's bytes.
                let started_it = open.cgroup_id != 0
                    && parent.cgroup_id != 0
                    && parent.cgroup_id != open.cgroup_id;
                if parent.ppid == next || started_it {
                    break;
                }
                next = parent.ppid;
            }
        }
        info
    }
}

/// Whether two start times name the same process. Seeded entries only have clock-tick
/// precision; a `seen` of 0 means unknown.
fn same_start(known: u64, seen: u64, tick_ns: u64) -> bool {
    known == seen || known / tick_ns == seen / tick_ns || seen == 0
}

/// The cgroup v2 id of a process: the inode of its cgroup directory.
fn cgroup_id_of(cgroup2: &std::path::Path, pid: u32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    let path = crate::containers::cgroup::path_of_pid(pid)?;
    std::fs::metadata(cgroup2.join(path.trim_start_matches('/')))
        .ok()
        .map(|m| m.ino())
}

fn read_exe(pid: u32) -> Option<Vec<u8>> {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.as_os_str().as_bytes().to_vec())
}

/// argv as raw bytes: procfs' String API would lose non-UTF-8 arguments.
/// At most what the exec probe keeps (`ARGS_BYTES`): a command line read from procfs (a process
/// older than the agent) can be any length and is repeated in every record it appears in.
fn read_args(pid: u32) -> Option<Vec<Vec<u8>>> {
    use std::io::Read as _;
    let mut raw = Vec::new();
    std::fs::File::open(format!("/proc/{pid}/cmdline"))
        .and_then(|f| {
            f.take(credwatch_common::ARGS_BYTES as u64)
                .read_to_end(&mut raw)
        })
        .ok()?;
    Some(split_args(&raw))
}

/// The host pid of the process that `caller`'s pid namespace numbers `target` (the pid a
/// container process passes to ptrace or process_vm_readv). None when the caller is gone or
/// no process matches.
pub fn host_pid_in_namespace_of(caller: u32, target: u32) -> Option<u32> {
    let namespace = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
    let caller_ns = namespace(&caller.to_string())?;
    if Some(&caller_ns) == namespace("self").as_ref() {
        return Some(target);
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if namespace(&pid.to_string()).as_ref() == Some(&caller_ns) && ns_pid(pid) == Some(target) {
            return Some(pid);
        }
    }
    None
}

fn ns_pid(pid: u32) -> Option<u32> {
    let status = procfs::process::Process::new(pid as i32)
        .ok()?
        .status()
        .ok()?;
    status.nspid?.last().map(|&p| p as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: ProcessEventKind, pid: u32, ppid: u32, start: u64, exe: &str) -> ProcessEvent {
        ProcessEvent {
            kind,
            boot_ns: 0,
            pid,
            ppid,
            uid: 0,
            gid: 0,
            exit_code: 0,
            start_boottime: start,
            cgroup_id: 0,
            comm: Vec::new(),
            filename: (kind == ProcessEventKind::Exec).then(|| exe.as_bytes().to_vec()),
            args: (kind == ProcessEventKind::Exec).then(|| vec![exe.as_bytes().to_vec()]),
            args_truncated: false,
        }
    }

    fn open(pid: u32, start: u64) -> FileOpen {
        FileOpen {
            pid,
            tid: pid,
            result: 3,
            dirfd: -100,
            start_boottime: start,
            ..Default::default()
        }
    }

    /// Pids far above any real pid_max, so procfs never answers for them.
    const SHELL: u32 = 40_000_001;
    const CAT: u32 = 40_000_002;

    #[test]
    fn exited_processes_keep_their_story_until_they_expire() {
        let mut table = ProcessTable::new();
        table.apply(&event(ProcessEventKind::Exec, SHELL, 1, 100, "/bin/sh"));
        table.apply(&event(ProcessEventKind::Fork, CAT, SHELL, 200, ""));
        table.apply(&event(ProcessEventKind::Exec, CAT, SHELL, 200, "/bin/cat"));
        table.apply(&event(ProcessEventKind::Exit, CAT, SHELL, 200, ""));
        let info = table.describe(&open(CAT, 200));
        assert_eq!(info.program.exe.as_deref(), Some(&b"/bin/cat"[..]));
        assert_eq!(info.ppid, Some(SHELL));
        assert_eq!(
            info.ancestors[0].program.exe.as_deref(),
            Some(&b"/bin/sh"[..])
        );
        assert_eq!(info.ancestors[1].pid, 1);
        table.expire(Instant::now() + EXITED_GRACE + Duration::from_secs(1));
        assert!(table.describe(&open(CAT, 200)).program.exe.is_none());
        assert!(table.describe(&open(SHELL, 100)).program.exe.is_some());
    }

    #[test]
    fn ancestry_stops_at_the_process_that_started_the_container() {
        const INIT: u32 = 40_000_020;
        const RUNC: u32 = 40_000_021;
        let mut table = ProcessTable::new();
        let mut ev = |pid, ppid, cgroup, exe| {
            let mut e = event(ProcessEventKind::Exec, pid, ppid, 1, exe);
            e.cgroup_id = cgroup;
            table.apply(&e);
        };
        ev(SHELL, 1, 1, "/bin/bash"); // on the host
        ev(RUNC, SHELL, 1, "/usr/sbin/runc");
        ev(INIT, RUNC, 7, "/bin/sh");
        ev(CAT, INIT, 7, "/bin/cat");
        let mut chain = |cgroup_id| -> Vec<u32> {
            let mut access = open(CAT, 1);
            access.cgroup_id = cgroup_id;
            let info = table.describe(&access);
            info.ancestors.iter().map(|a| a.pid).collect()
        };
        assert_eq!(
            chain(7),
            [INIT, RUNC],
            "the host shell above runc is left out"
        );
        // An unknown cgroup: the whole chain.
        assert_eq!(chain(0)[..3], [INIT, RUNC, SHELL]);
    }

    #[test]
    fn a_reused_pid_is_not_the_old_process() {
        let mut table = ProcessTable::new();
        table.apply(&event(ProcessEventKind::Exec, CAT, 1, 200, "/bin/cat"));
        assert!(
            table
                .describe(&open(CAT, 999_999_999_999))
                .program
                .exe
                .is_none()
        );
    }

    #[test]
    fn exec_entered_processes_are_told_from_the_inits_tree() {
        const INIT: u32 = 40_000_010;
        const RUNC_EXEC: u32 = 40_000_011;
        const EXECD: u32 = 40_000_012;
        let mut table = ProcessTable::new();
        let mut ev = |kind, pid, ppid, cgroup| {
            let mut e = event(kind, pid, ppid, 1, "/bin/sh");
            e.cgroup_id = cgroup;
            table.apply(&e);
        };
        ev(ProcessEventKind::Exec, SHELL, 1, 1); // the shim, on the host
        ev(ProcessEventKind::Exec, INIT, SHELL, 7);
        ev(ProcessEventKind::Exec, CAT, INIT, 7);
        ev(ProcessEventKind::Exec, RUNC_EXEC, SHELL, 1);
        ev(ProcessEventKind::Exec, EXECD, RUNC_EXEC, 7);
        assert_eq!(table.container_entry(INIT, 7, INIT), Some("init"));
        assert_eq!(table.container_entry(CAT, 7, INIT), Some("init"));
        assert_eq!(table.container_entry(EXECD, 7, INIT), Some("exec"));
        assert_eq!(table.container_entry(40_000_099, 7, INIT), None, "unknown");
    }

    #[test]
    fn a_forked_child_runs_its_parents_program() {
        let mut table = ProcessTable::new();
        table.apply(&event(ProcessEventKind::Exec, SHELL, 1, 100, "/bin/sh"));
        table.apply(&event(ProcessEventKind::Fork, CAT, SHELL, 200, ""));
        assert_eq!(
            table.describe(&open(CAT, 200)).program.exe.as_deref(),
            Some(&b"/bin/sh"[..])
        );
    }

    #[test]
    fn an_exit_of_an_earlier_process_does_not_end_the_pids_new_owner() {
        let mut table = ProcessTable::new();
        table.apply(&event(
            ProcessEventKind::Exec,
            CAT,
            1,
            5_000_000_000,
            "/bin/cat",
        ));
        table.apply(&event(ProcessEventKind::Exit, CAT, 1, 1_000_000_000, ""));
        table.expire(Instant::now() + EXITED_GRACE + Duration::from_secs(1));
        assert!(
            table
                .describe(&open(CAT, 5_000_000_000))
                .program
                .exe
                .is_some()
        );
    }

    #[test]
    fn processes_whose_exit_was_missed_are_forgotten_after_the_grace() {
        let mut table = ProcessTable::new();
        table.apply(&event(ProcessEventKind::Exec, SHELL, 1, 100, "/bin/sh"));
        table.apply(&event(ProcessEventKind::Exec, CAT, SHELL, 200, "/bin/cat"));
        let now = Instant::now();
        // The first look may race with an exit event still in the ring buffer.
        assert_eq!(table.reconcile(now, |pid| pid == SHELL), 0);
        assert_eq!(table.reconcile(now, |pid| pid == SHELL), 1);
        assert_eq!(table.reconcile(now, |pid| pid == SHELL), 0, "counted once");
        // Still known during the grace: a record of its last access may be queued.
        assert!(table.describe(&open(CAT, 200)).program.exe.is_some());
        table.expire(now + EXITED_GRACE + Duration::from_secs(1));
        assert_eq!(table.len(), 1);
        assert!(table.describe(&open(SHELL, 100)).program.exe.is_some());
    }
}
