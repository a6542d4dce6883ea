//! What every record shares: who made the syscall (one `TaskIdentity` block, filled here) and
//! how it leaves the kernel (written to the ring buffer and counted as emitted or lost).

use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_uid_gid, generated::bpf_get_current_task,
};
use credwatch_common::{TaskIdentity, outcome};

use crate::{AGENT_TGID, EVENTS, stats::count, vfs};

/// Whether `pid_tgid` is the agent's own (its own opens and syscalls are not watched).
#[inline(always)]
pub fn is_agent(pid_tgid: u64) -> bool {
    (pid_tgid >> 32) as u32 == AGENT_TGID.load()
}

/// Fills the record's identity block for the current task.
#[inline(always)]
pub fn identify(task: &mut TaskIdentity, now: u64, pid_tgid: u64, cgroup_id: u64) {
    let uid_gid = bpf_get_current_uid_gid();
    task.boot_ns = now;
    task.pid = (pid_tgid >> 32) as u32;
    task.tid = pid_tgid as u32;
    task.uid = uid_gid as u32;
    task.gid = (uid_gid >> 32) as u32;
    task.cgroup_id = cgroup_id;
    task.start_boottime =
        unsafe { vfs::read(bpf_get_current_task(), vfs::offsets().task_start_boottime) }
            .unwrap_or(0);
    task.comm = bpf_get_current_comm().unwrap_or([0; 16]);
}

/// Writes a fixed-size record; counts it under `probe`. Returns whether it was written.
#[inline(always)]
pub fn emit<T>(probe: u32, record: &T) -> bool {
    counted(probe, EVENTS.output::<T>(record, 0).is_ok())
}

/// Writes the first `size` bytes of a variable-size record (its header says how many: the
/// caller bounds `size` by the record); counts it under `probe`.
#[inline(always)]
pub fn emit_used<T>(probe: u32, record: &T, size: usize) -> bool {
    let used = unsafe { core::slice::from_raw_parts((record as *const T).cast::<u8>(), size) };
    counted(probe, EVENTS.output::<[u8]>(used, 0).is_ok())
}

#[inline(always)]
fn counted(probe: u32, written: bool) -> bool {
    count(
        probe,
        if written {
            outcome::EMITTED
        } else {
            outcome::LOST
        },
    );
    written
}
