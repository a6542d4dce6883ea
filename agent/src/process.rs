//! Process context for a record, read from procfs while the process is still there.
//!
//! What the kernel put in the record (pid, tid, uid, gid, comm) is always present; exe, args,
//! parent chain and start time are added when `/proc/<pid>` still exists, and simply absent
//! otherwise (the record says what is known).

use std::{os::unix::ffi::OsStrExt as _, path::PathBuf};

use crate::events::FileOpen;

const MAX_ANCESTORS: usize = 8;

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
    /// Seconds since the Unix epoch, nanosecond precision.
    pub start_time_ns: Option<i128>,
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

pub fn describe(open: &FileOpen) -> ProcessInfo {
    let mut info = ProcessInfo {
        pid: open.pid,
        tid: open.tid,
        uid: open.uid,
        gid: open.gid,
        comm: open.comm.clone(),
        exe: exe(open.pid),
        args: args(open.pid),
        ..Default::default()
    };
    if let Ok(process) = procfs::process::Process::new(open.pid as i32) {
        if let Ok(stat) = process.stat() {
            info.ppid = Some(stat.ppid as u32);
            info.start_time_ns = start_time_ns(stat.starttime);
        }
        if let Ok(status) = process.status() {
            info.ns_pid = status
                .nspid
                .and_then(|ns| ns.last().copied())
                .map(|p| p as u32);
        }
    }
    let mut next = info.ppid;
    while let Some(pid) = next.filter(|&p| p > 0) {
        if info.ancestors.len() >= MAX_ANCESTORS {
            break;
        }
        info.ancestors.push(Ancestor {
            pid,
            exe: exe(pid),
            args: args(pid),
        });
        next = procfs::process::Process::new(pid as i32)
            .and_then(|p| p.stat())
            .ok()
            .map(|s| s.ppid as u32)
            .filter(|&ppid| ppid != pid);
    }
    info
}

fn exe(pid: u32) -> Option<Vec<u8>> {
    std::fs::read_link(PathBuf::from(format!("/proc/{pid}/exe")))
        .ok()
        .map(|p| p.as_os_str().as_bytes().to_vec())
}

/// argv as raw bytes: procfs' String API would lose non-UTF-8 arguments.
fn args(pid: u32) -> Option<Vec<Vec<u8>>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let raw = raw.strip_suffix(&[0]).unwrap_or(&raw);
    if raw.is_empty() {
        return Some(Vec::new());
    }
    Some(raw.split(|&b| b == 0).map(<[u8]>::to_vec).collect())
}

fn start_time_ns(ticks_since_boot: u64) -> Option<i128> {
    let boot = procfs::boot_time_secs().ok()? as i128;
    let hz = procfs::ticks_per_second() as i128;
    Some(boot * 1_000_000_000 + ticks_since_boot as i128 * 1_000_000_000 / hz)
}
