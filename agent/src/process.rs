//! The process table: fed by the kernel's fork/exec/exit events and seeded from procfs at
//! start-up, so a record names exe, argv and ancestors even of a process that exited before
//! userspace looked (the usual case for `cat` or `curl`). A process is identified by (pid, start
//! time), so a reused pid is never mistaken for the process that had it before.

use std::{
    collections::{HashMap, VecDeque},
    os::unix::ffi::OsStrExt as _,
    time::{Duration, Instant},
};

use crate::events::{FileOpen, ProcessEvent, ProcessEventKind, split_args};

const MAX_ANCESTORS: usize = 8;
/// How long an exited process stays known: records of its last opens may still be queued.
pub const EXITED_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Proc {
    /// `task->start_boottime` in ns (procfs-seeded entries: clock-tick precision).
    pub start_ns: u64,
    pub ppid: u32,
    pub exe: Option<Vec<u8>>,
    pub args: Option<Vec<Vec<u8>>>,
    pub cgroup_id: u64,
    exited: Option<Instant>,
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
    pub exe: Option<Vec<u8>>,
    pub args: Option<Vec<Vec<u8>>>,
    /// ns since boot.
    pub start_boottime: Option<u64>,
    /// The pid as the process' own pid namespace numbers it (innermost `NSpid`).
    pub ns_pid: Option<u32>,
    pub ancestors: Vec<Ancestor>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ancestor {
    pub pid: u32,
    pub exe: Option<Vec<u8>>,
    pub args: Option<Vec<Vec<u8>>>,
}

pub struct ProcessTable {
    procs: HashMap<u32, Proc>,
    exited: VecDeque<(Instant, u32, u64)>,
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
            tick_ns: 1_000_000_000 / procfs::ticks_per_second().max(1),
        }
    }

    /// A live process in each of `cgroups` (for looking into its container's filesystem).
    pub fn pids_in_cgroups(&self, cgroups: &[u64]) -> Vec<u32> {
        let mut found: HashMap<u64, u32> = HashMap::new();
        for (pid, p) in &self.procs {
            if p.exited.is_none() && cgroups.contains(&p.cgroup_id) {
                found.entry(p.cgroup_id).or_insert(*pid);
            }
        }
        found.into_values().collect()
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
                    exe: read_exe(pid),
                    args: read_args(pid),
                    cgroup_id: cgroup2
                        .as_deref()
                        .and_then(|m| cgroup_id_of(m, pid))
                        .unwrap_or(0),
                    exited: None,
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
                let (exe, args) = self
                    .procs
                    .get(&event.ppid)
                    .map(|p| (p.exe.clone(), p.args.clone()))
                    .unwrap_or_default();
                self.procs.insert(
                    event.pid,
                    Proc {
                        start_ns: event.start_boottime,
                        ppid: event.ppid,
                        exe,
                        args,
                        cgroup_id: event.cgroup_id,
                        exited: None,
                    },
                );
            }
            ProcessEventKind::Exec => {
                let entry = self.procs.entry(event.pid).or_default();
                entry.start_ns = event.start_boottime;
                entry.ppid = event.ppid;
                entry.cgroup_id = event.cgroup_id;
                entry.exited = None;
                entry.exe = event.filename.clone();
                entry.args = event.args.clone();
            }
            ProcessEventKind::Exit => {
                if let Some(entry) = self.procs.get_mut(&event.pid) {
                    let now = Instant::now();
                    entry.exited = Some(now);
                    self.exited.push_back((now, event.pid, entry.start_ns));
                }
            }
        }
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
    fn get(&self, pid: u32, start_ns: u64) -> Option<&Proc> {
        let entry = self.procs.get(&pid)?;
        // Seeded entries only have clock-tick precision.
        let same =
            entry.start_ns == start_ns || entry.start_ns / self.tick_ns == start_ns / self.tick_ns;
        (same || start_ns == 0).then_some(entry)
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
            syscall: crate::events::Syscall::Openat,
            flags: 0,
            result: c.result.unwrap_or(0),
            dev: 0,
            ino: 0,
            dirfd: 0,
            start_boottime: c.start_boottime,
            secret_id: 0,
            matched: 0,
            path_flags: 0,
            comm: c.comm.clone(),
            raw_path: None,
            path: Vec::new(),
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
            ns_pid: ns_pid(open.pid),
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
                        exe: read_exe(open.pid),
                        args: read_args(open.pid),
                        cgroup_id: open.cgroup_id,
                        exited: None,
                    },
                );
            }
        }
        if let Some(entry) = self.get(open.pid, open.start_boottime) {
            info.ppid = Some(entry.ppid);
            info.exe = entry.exe.clone();
            info.args = entry.args.clone();
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
                    exe: parent.exe.clone(),
                    args: parent.args.clone(),
                });
                if parent.ppid == next {
                    break;
                }
                next = parent.ppid;
            }
        }
        info
    }
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
fn read_args(pid: u32) -> Option<Vec<Vec<u8>>> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .map(|raw| split_args(&raw))
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
            boot_ns: 0,
            pid,
            tid: pid,
            uid: 0,
            gid: 0,
            cgroup_id: 0,
            syscall: crate::events::Syscall::Openat,
            flags: 0,
            result: 3,
            dev: 0,
            ino: 0,
            dirfd: -100,
            start_boottime: start,
            secret_id: 0,
            matched: 0,
            path_flags: 0,
            comm: Vec::new(),
            raw_path: None,
            path: Vec::new(),
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
        assert_eq!(info.exe.as_deref(), Some(&b"/bin/cat"[..]));
        assert_eq!(info.ppid, Some(SHELL));
        assert_eq!(info.ancestors[0].exe.as_deref(), Some(&b"/bin/sh"[..]));
        assert_eq!(info.ancestors[1].pid, 1);
        table.expire(Instant::now() + EXITED_GRACE + Duration::from_secs(1));
        assert!(table.describe(&open(CAT, 200)).exe.is_none());
        assert!(table.describe(&open(SHELL, 100)).exe.is_some());
    }

    #[test]
    fn a_reused_pid_is_not_the_old_process() {
        let mut table = ProcessTable::new();
        table.apply(&event(ProcessEventKind::Exec, CAT, 1, 200, "/bin/cat"));
        assert!(table.describe(&open(CAT, 999_999_999_999)).exe.is_none());
    }

    #[test]
    fn a_forked_child_runs_its_parents_program() {
        let mut table = ProcessTable::new();
        table.apply(&event(ProcessEventKind::Exec, SHELL, 1, 100, "/bin/sh"));
        table.apply(&event(ProcessEventKind::Fork, CAT, SHELL, 200, ""));
        assert_eq!(
            table.describe(&open(CAT, 200)).exe.as_deref(),
            Some(&b"/bin/sh"[..])
        );
    }
}
