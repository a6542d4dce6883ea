//! Process lifecycle: `sched_process_fork` (new thread groups only), `sched_process_exec` and
//! `sched_process_exit` (thread-group leaders) as BTF tracepoints, reported so that the agent
//! keeps a process table that outlives the processes.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_uid_gid,
        generated::{
            bpf_get_current_cgroup_id, bpf_ktime_get_boot_ns, bpf_probe_read_kernel_str,
            bpf_probe_read_user,
        },
    },
    programs::BtfTracePointContext,
};
use credwatch_common::{
    ARGS_BYTES, FILENAME_BYTES, KIND_PROCESS, KernelOffsets, PATH_BYTES, PROCESS_ARGS_OFFSET,
    PROCESS_FIXED_BYTES, ProcessRecord, RecordHeader, outcome, path_flag, probe, process_event,
    process_flag,
};

use crate::{
    PROCESS_SCRATCH,
    stats::count,
    vfs::{self, PATH_MASK, read},
};

const ARGS_MASK: usize = ARGS_BYTES - 1;
const FILENAME_MASK: usize = FILENAME_BYTES - 1;

/// (pid, tgid, start_boottime, parent tgid) of a task.
unsafe fn identity(o: &KernelOffsets, task: u64) -> Option<(u32, u32, u64, u32)> {
    unsafe {
        let pid: u32 = read(task, o.task_pid).ok()?;
        let tgid: u32 = read(task, o.task_tgid).ok()?;
        let start: u64 = read(task, o.task_start_boottime).ok()?;
        let parent: u64 = read(task, o.task_real_parent).ok()?;
        let ppid: u32 = read(parent, o.task_tgid).unwrap_or(0);
        Some((pid, tgid, start, ppid))
    }
}

/// Fills the common part of the scratch record for `task` and returns it.
unsafe fn begin(o: &KernelOffsets, event: u32, task: u64) -> Option<&'static mut ProcessRecord> {
    let (pid, tgid, start, ppid) = unsafe { identity(o, task)? };
    // Threads come and go inside a process; the table tracks processes.
    if pid != tgid {
        return None;
    }
    let rec = unsafe { &mut *PROCESS_SCRATCH.get_ptr_mut(0)? };
    let uid_gid = bpf_get_current_uid_gid();
    rec.header = RecordHeader::of::<ProcessRecord>(KIND_PROCESS);
    rec.boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    rec.event = event;
    rec.pid = tgid;
    rec.ppid = ppid;
    rec.uid = uid_gid as u32;
    rec.gid = (uid_gid >> 32) as u32;
    rec.exit_code = 0;
    rec.start_boottime = start;
    rec.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    rec.filename_len = 0;
    rec.args_len = 0;
    rec.flags = 0;
    rec._pad = 0;
    rec.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    Some(rec)
}

/// Writes the record at its used size: fork and exit without filename and argv, exec without
/// the unused part of argv.
fn emit(probe: u32, rec: &mut ProcessRecord) {
    let size = if rec.event == process_event::EXEC {
        PROCESS_ARGS_OFFSET + (rec.args_len as usize & ARGS_MASK)
    } else {
        PROCESS_FIXED_BYTES
    };
    rec.header.size = size as u32;
    crate::record::emit_used(probe, rec, size);
}

/// The offsets global, in place (a copy on the stack would not fit beside the exec probe's).
fn ready() -> Option<&'static KernelOffsets> {
    let o = crate::vfs::offsets();
    (o.valid != 0).then_some(o)
}

/// sched_process_fork(struct task_struct *parent, struct task_struct *child)
pub fn fork(ctx: &BtfTracePointContext) {
    count(probe::FORK, outcome::SEEN);
    let Some(o) = ready() else { return };
    let child: u64 = ctx.arg(1);
    match unsafe { begin(o, process_event::FORK, child) } {
        Some(rec) => {
            if crate::record::is_agent((rec.pid as u64) << 32) {
                return;
            }
            emit(probe::FORK, rec)
        }
        None => count(probe::FORK, outcome::FILTERED),
    }
}

/// sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
pub fn exec(ctx: &BtfTracePointContext) {
    count(probe::EXEC, outcome::SEEN);
    let Some(o) = ready() else { return };
    let task: u64 = ctx.arg(0);
    let bprm: u64 = ctx.arg(2);
    let Some(rec) = (unsafe { begin(o, process_event::EXEC, task) }) else {
        return count(probe::EXEC, outcome::FILTERED);
    };
    unsafe {
        if !resolved_exe(o, task, bprm, rec) {
            // The path as given to execve (may be relative, or /proc/self/exe).
            let filename: u64 = read(bprm, o.binprm_filename).unwrap_or(0);
            let n = bpf_probe_read_kernel_str(
                rec.filename.as_mut_ptr().cast(),
                FILENAME_BYTES as u32,
                filename as *const _,
            );
            if n > 0 {
                rec.filename_len = n as u32 - 1;
                if n as usize >= FILENAME_BYTES {
                    rec.flags |= process_flag::FILENAME_TRUNCATED;
                }
            }
        }
        read_args(o, task, rec);
    }
    emit(probe::EXEC, rec);
}

/// The executable's path as the process sees it, resolved from `bprm->file` with the same walk
/// as file opens (symlinks and `/proc/self/exe` resolved). Keeps the tail of a longer path.
unsafe fn resolved_exe(o: &KernelOffsets, task: u64, bprm: u64, rec: &mut ProcessRecord) -> bool {
    unsafe {
        let Ok(file) = read::<u64>(bprm, o.binprm_file) else {
            return false;
        };
        let Ok(fs) = read::<u64>(task, o.task_fs) else {
            return false;
        };
        let (Ok(root), Ok(at)) = (
            vfs::read_path(fs + o.fs_root as u64),
            vfs::read_path(file + o.file_f_path as u64),
        ) else {
            return false;
        };
        let (pos, flags) = vfs::prepend_path(o, PATH_BYTES, at, root);
        if flags & path_flag::READ_ERROR != 0 || pos >= PATH_BYTES {
            return false;
        }
        let Some(walk) = vfs::walk_memory() else {
            return false;
        };
        let buf = vfs::walk_buffer(walk);
        let len = PATH_BYTES - pos;
        let mut start = pos;
        if len > FILENAME_MASK {
            start = PATH_BYTES - FILENAME_MASK;
            rec.flags |= process_flag::FILENAME_TRUNCATED;
        }
        if flags & path_flag::TRUNCATED != 0 {
            rec.flags |= process_flag::FILENAME_TRUNCATED;
        }
        // A string read with a constant size bound (the verifier cannot follow a clamped
        // length through LLVM's optimisations): the path ends at PATH_BYTES, so end it there.
        *buf.add(PATH_BYTES) = 0;
        let n = bpf_probe_read_kernel_str(
            rec.filename.as_mut_ptr().cast(),
            FILENAME_BYTES as u32,
            buf.add(start & PATH_MASK).cast(),
        );
        if n <= 0 {
            return false;
        }
        rec.filename_len = n as u32 - 1;
        true
    }
}

/// argv from the new program's memory (`mm->arg_start..arg_end`), bounded.
unsafe fn read_args(o: &KernelOffsets, task: u64, rec: &mut ProcessRecord) {
    unsafe {
        let Ok(mm) = read::<u64>(task, o.task_mm) else {
            return;
        };
        let (Ok(start), Ok(end)) = (
            read::<u64>(mm, o.mm_arg_start),
            read::<u64>(mm, o.mm_arg_end),
        ) else {
            rec.flags |= process_flag::ARGS_READ_ERROR;
            return;
        };
        let mut len = end.saturating_sub(start) as usize;
        if len > ARGS_MASK {
            len = ARGS_MASK;
            rec.flags |= process_flag::ARGS_TRUNCATED;
        }
        let len = len & ARGS_MASK;
        if bpf_probe_read_user(rec.args.as_mut_ptr().cast(), len as u32, start as *const _) != 0 {
            rec.flags |= process_flag::ARGS_READ_ERROR;
            return;
        }
        rec.args_len = len as u32;
    }
}

/// sched_process_exit(struct task_struct *p, ...)
pub fn exit(ctx: &BtfTracePointContext) {
    count(probe::EXIT, outcome::SEEN);
    let Some(o) = ready() else { return };
    let task: u64 = ctx.arg(0);
    let Some(rec) = (unsafe { begin(o, process_event::EXIT, task) }) else {
        return count(probe::EXIT, outcome::FILTERED);
    };
    rec.exit_code = unsafe { read(task, o.task_exit_code) }.unwrap_or(0);
    emit(probe::EXIT, rec);
}
