//! Reaching into another process's memory (ATT&CK T1003.007): `ptrace` PTRACE_ATTACH and
//! PTRACE_SEIZE (every later peek or poke goes through that attachment) and
//! `process_vm_readv` / `process_vm_writev`. The enter program notes the call per thread, the
//! exit program emits it with its result. These syscalls are rare, so every such call is
//! recorded (within the cgroup's record budget); the agent resolves the target and exempts a
//! process reading itself.

use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid,
    generated::{bpf_get_current_cgroup_id, bpf_ktime_get_boot_ns},
};
use credwatch_common::{
    KIND_MEMORY, MemoryRecord, RecordHeader, TaskIdentity, memory_syscall, outcome, probe,
};

use crate::{MEMORY_CALLS, budget, stats::count};

/// A thread inside one of the syscalls.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct InMemoryCall {
    request: u64,
    target: u32,
    syscall: u32,
}

pub fn enter(syscall: u32, target: u64, request: u64) {
    if syscall == memory_syscall::PTRACE
        && request != memory_syscall::PTRACE_ATTACH
        && request != memory_syscall::PTRACE_SEIZE
    {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if crate::record::is_agent(pid_tgid) {
        return;
    }
    let call = InMemoryCall {
        request,
        target: target as u32,
        syscall,
    };
    let _ = MEMORY_CALLS.insert(&pid_tgid, &call, 0);
}

pub fn exit(ret: i64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(call) = (unsafe { MEMORY_CALLS.get(&pid_tgid) }).copied() else {
        return;
    };
    let _ = MEMORY_CALLS.remove(&pid_tgid);
    count(probe::PROCESS_MEMORY, outcome::SEEN);
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    // A process dumping memory region by region makes thousands of calls: its container's
    // budget keeps it from crowding out the others (the excess is counted).
    if !budget::take(cgroup_id, now) {
        return count(probe::PROCESS_MEMORY, outcome::OVER_BUDGET);
    }
    let mut record = MemoryRecord {
        header: RecordHeader::of::<MemoryRecord>(KIND_MEMORY),
        task: TaskIdentity::default(),
        result: ret,
        request: call.request,
        target: call.target,
        syscall: call.syscall,
    };
    crate::record::identify(&mut record.task, now, pid_tgid, cgroup_id);
    crate::record::emit(probe::PROCESS_MEMORY, &record);
}
