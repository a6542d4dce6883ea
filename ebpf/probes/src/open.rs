//! The file-open probes: save arguments at syscall entry, inspect and filter at exit.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_user,
        generated::{
            self as generated, bpf_get_current_cgroup_id, bpf_ktime_get_boot_ns,
            bpf_probe_read_kernel, bpf_probe_read_kernel_str, bpf_probe_read_user_str,
        },
    },
    maps::lpm_trie::Key,
};
use credwatch_common::{
    FILE_OPEN_FIXED_BYTES, FileOpenRecord, KIND_FILE_OPEN, KernelOffsets, PATH_BYTES, PathKeyData,
    RAW_PATH_BYTES, RecordHeader, RepeatKey, SECRET_RULE, SuppressedKey, matched, outcome,
    path_flag, probe,
};

use crate::{
    PENDING_SLOT, PENDING_SPILL, SCRATCH, budget, filter,
    repeats::{self, Repeat},
    stats::count,
    vfs::{self, KPath, PATH_MASK, offset},
};

pub const AT_FDCWD: i32 = -100;
/// creat(path, mode) == open(path, O_CREAT|O_WRONLY|O_TRUNC, mode)
pub const CREAT_FLAGS: u32 = 0o1101;
pub const O_LARGEFILE: u32 = 0o100000;
const RAW_MASK: usize = RAW_PATH_BYTES - 1;

/// Syscall arguments saved at entry for the exit program.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingOpen {
    /// The owning thread; 0 marks a free slot.
    pid_tgid: u64,
    path_ptr: u64,
    dirfd: i32,
    flags: u32,
    probe: u32,
    /// 1: only `pid_tgid` and `probe` are known; the arguments are still in the task's saved
    /// registers, read only for an open that is reported (`args_from_regs`).
    from_regs: u32,
}

#[repr(C)]
pub struct Scratch {
    rec: FileOpenRecord,
    /// The path string the process passed (copied into `rec.tail` behind the path).
    raw: [u8; RAW_PATH_BYTES],
    /// The access's key in the `REPEATS` map.
    repeat: RepeatKey,
    /// Its key in the `SUPPRESSED` map, should its cgroup be over budget.
    suppressed: SuppressedKey,
    /// The catalogue entry its path matched (see `SuppressedKey::rule`).
    rule: u32,
    key: Key<PathKeyData>,
    cheap: filter::Cheap,
}

/// Saves the arguments in this CPU's slot. Nearly every open enters and exits on one CPU with
/// no other open in between, so the slot is all the exit needs, at the cost of a memory write
/// (a hash update here cost ~100 ns per open). When the slot still holds another thread's open
/// (that thread is blocked inside its open), those arguments move to the spill hash first.
pub fn enter(probe: u32, dirfd: i32, path_ptr: u64, flags: u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if crate::record::is_agent(pid_tgid) {
        return;
    }
    let Some(slot) = PENDING_SLOT.get_ptr_mut(0) else {
        return;
    };
    let slot = unsafe { &mut *slot };
    if slot.pid_tgid != 0 && slot.pid_tgid != pid_tgid {
        if PENDING_SPILL.insert(&slot.pid_tgid, &*slot, 0).is_err() {
            crate::diag::spill_full(slot.pid_tgid as u32);
        }
    }
    *slot = PendingOpen {
        pid_tgid,
        path_ptr,
        dirfd,
        flags,
        probe,
        from_regs: 0,
    };
}

/// Finds and removes this thread's saved arguments: this CPU's slot, the spill hash, or (the
/// thread slept and woke up elsewhere) another CPU's slot.
fn take_pending(pid_tgid: u64) -> Option<PendingOpen> {
    if let Some(slot) = PENDING_SLOT.get_ptr_mut(0) {
        let slot = unsafe { &mut *slot };
        if slot.pid_tgid == pid_tgid {
            let taken = *slot;
            slot.pid_tgid = 0;
            return Some(taken);
        }
    }
    if let Some(spilled) = unsafe { PENDING_SPILL.get(&pid_tgid) }.copied() {
        let _ = PENDING_SPILL.remove(&pid_tgid);
        return Some(spilled);
    }
    let mut search = SlotSearch {
        pid_tgid,
        found: None,
    };
    unsafe {
        generated::bpf_loop(
            crate::NR_CPUS.load(),
            search_slot as *mut core::ffi::c_void,
            (&mut search as *mut SlotSearch).cast(),
            0,
        );
    }
    search.found
}

struct SlotSearch {
    pid_tgid: u64,
    found: Option<PendingOpen>,
}

#[inline(never)]
unsafe extern "C" fn search_slot(cpu: u64, ctx: *mut core::ffi::c_void) -> i64 {
    let search = unsafe { &mut *(ctx as *mut SlotSearch) };
    let key = 0u32;
    let slot = unsafe {
        generated::bpf_map_lookup_percpu_elem(
            core::ptr::addr_of!(PENDING_SLOT) as *mut _,
            (&key as *const u32).cast(),
            cpu as u32,
        )
    } as *mut PendingOpen;
    if slot.is_null() {
        return 1;
    }
    let slot = unsafe { &mut *slot };
    if slot.pid_tgid != search.pid_tgid {
        return 0;
    }
    search.found = Some(*slot);
    slot.pid_tgid = 0;
    1
}

/// The syscall's arguments from the registers saved at syscall entry, which the kernel leaves
/// intact for argument registers: one read, and no entry program at all.
fn args_from_regs(o: &KernelOffsets, probe: u32, pid_tgid: u64) -> Option<PendingOpen> {
    let words: [u64; 8] = unsafe {
        let task = generated::bpf_get_current_task_btf();
        let regs = generated::bpf_task_pt_regs(task) as u64;
        vfs::read(regs, o.regs_base).ok()?
    };
    let arg = |i: usize| words[(o.regs_arg[i] & 7) as usize];
    let (dirfd, path_ptr, flags) = match probe {
        probe::OPEN => (AT_FDCWD, arg(0), arg(1) as u32),
        probe::CREAT => (AT_FDCWD, arg(0), CREAT_FLAGS),
        probe::OPENAT2 => {
            let how = arg(2) as *const u64;
            (
                arg(0) as i32,
                arg(1),
                unsafe { bpf_probe_read_user(how) }.unwrap_or(0) as u32,
            )
        }
        probe::OPEN_BY_HANDLE_AT => (arg(0) as i32, 0, arg(2) as u32),
        _ => (arg(0) as i32, arg(1), arg(2) as u32),
    };
    Some(PendingOpen {
        pid_tgid,
        path_ptr,
        dirfd,
        flags,
        probe,
        from_regs: 0,
    })
}

pub fn exit(probe: u32, ret: i64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if crate::record::is_agent(pid_tgid) {
        return;
    }
    let offsets = vfs::offsets();
    if offsets.valid == 0 {
        return;
    }
    let pending = if offsets.args_from_regs != 0 && ret >= 0 {
        Some(PendingOpen {
            pid_tgid,
            path_ptr: 0,
            dirfd: AT_FDCWD,
            flags: 0,
            probe,
            from_regs: 1,
        })
    } else if offsets.args_from_regs != 0 {
        args_from_regs(offsets, probe, pid_tgid)
    } else {
        take_pending(pid_tgid).filter(|p| p.probe == probe)
    };
    // Entered before the probes attached, or the arguments were lost: count, don't guess.
    let Some(pending) = pending else {
        crate::diag::unmatched_exit(probe, pid_tgid as u32);
        return count(probe, outcome::UNMATCHED);
    };
    judge(offsets, pending, ret);
}

/// An io_uring open request as submitted (`uring.rs` keeps it until its completion).
#[repr(C)]
pub struct UringOpen {
    pub dirfd: i32,
    pub flags: u32,
    /// NUL-terminated (cut at RAW_PATH_BYTES - 1).
    pub path: [u8; RAW_PATH_BYTES],
}

/// An open that io_uring completed (see `uring.rs`): `ret` is the new fd in the task's fd
/// table or -errno; `submitted` is what the request held at submission (its path in kernel
/// memory, dirfd and flags), when the probes saw it. A success is judged like a syscall's open
/// (without the submission: no raw path, the opened file's flags). A failure is only counted:
/// judging it by its path here pushes `exit` over the BPF stack limit (LLVM then lays out the
/// shared code differently).
/// Not inlined: its stack (like `exit`'s) is near the BPF limit on its own.
#[inline(never)]
pub fn io_uring_opened(ret: i64, submitted: Option<&UringOpen>) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if crate::record::is_agent(pid_tgid) {
        return;
    }
    let offsets = vfs::offsets();
    if offsets.valid == 0 {
        return;
    }
    if ret < 0 {
        count(probe::IO_URING_OPEN, outcome::SEEN);
        return count(probe::IO_URING_OPEN, outcome::FILTERED);
    }
    let (path_ptr, dirfd, flags) = match submitted {
        Some(s) => (s.path.as_ptr() as u64, s.dirfd, s.flags),
        None => {
            let flags = unsafe {
                vfs::typed_fd_to_file(vfs::current_fs_files().1, ret as u32)
                    .and_then(|file| vfs::read::<u32>(file, offsets.file_f_flags))
            };
            let Ok(flags) = flags else {
                return count(probe::IO_URING_OPEN, outcome::READ_ERROR);
            };
            // The kernel adds O_LARGEFILE on 64-bit; the process did not ask for it.
            (0, AT_FDCWD, flags & !O_LARGEFILE)
        }
    };
    let pending = PendingOpen {
        pid_tgid,
        path_ptr,
        dirfd,
        flags,
        probe: probe::IO_URING_OPEN,
        from_regs: 0,
    };
    judge(offsets, pending, ret);
}

/// Inspects an open's result, filters it and emits the record; counts every outcome.
#[inline(always)]
fn judge(offsets: &KernelOffsets, mut pending: PendingOpen, ret: i64) {
    let probe = pending.probe;
    count(probe, outcome::SEEN);
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let scratch = unsafe { &mut *scratch };
    match unsafe { inspect(offsets, scratch, &mut pending, ret) } {
        Ok(true) => {
            let now = unsafe { bpf_ktime_get_boot_ns() };
            let rec = &mut scratch.rec;
            let object = if ret >= 0 {
                rec.ino
            } else {
                let len = rec.path_len as usize;
                unsafe { repeats::path_hash(core::ptr::addr_of!(scratch.key.data).cast(), len) }
            };
            scratch.repeat = RepeatKey {
                cgroup_id: unsafe { bpf_get_current_cgroup_id() },
                dev: if ret >= 0 { rec.dev as u64 } else { 0 },
                object,
                result: if ret >= 0 { 0 } else { ret },
                pid: (pending.pid_tgid >> 32) as u32,
                flags: pending.flags,
                probe,
                epoch: 0,
            };
            let repeat = repeats::check(&mut scratch.repeat, now);
            if let Repeat::Counted = repeat {
                count(probe, outcome::AGGREGATED);
                return;
            }
            let cgroup_id = scratch.repeat.cgroup_id;
            if !budget::take(cgroup_id, now) {
                // Its repeats go through the budget too (a key whose first access was never
                // reported would have nothing to summarise).
                if let Repeat::First = repeat {
                    repeats::forget(&scratch.repeat);
                }
                scratch.suppressed = SuppressedKey {
                    cgroup_id,
                    rule: if scratch.rec.secret_id != 0 {
                        SECRET_RULE | scratch.rec.secret_id
                    } else {
                        scratch.rule
                    },
                    epoch: 0,
                };
                if budget::suppress(&mut scratch.suppressed, now) {
                    count(probe, outcome::OVER_BUDGET);
                } else {
                    count(probe, outcome::LOST);
                }
                return;
            }
            let rec = &mut scratch.rec;
            rec.repeat_object = object;
            rec.repeat_epoch = match repeat {
                Repeat::First => scratch.repeat.epoch,
                _ => 0,
            };
            let size = fill_record(&mut scratch.rec, &pending, ret, now);
            // Only the used part of the tail leaves the kernel.
            if !crate::record::emit_used(probe, &scratch.rec, size) {
                // Nothing reported it: let the next repeat be reported rather than counted.
                if let Repeat::First = repeat {
                    repeats::forget(&scratch.repeat);
                }
            }
        }
        Ok(false) => count(probe, outcome::FILTERED),
        Err(_) => count(probe, outcome::READ_ERROR),
    }
    let flags = scratch.rec.path_flags;
    if flags & path_flag::TRUNCATED != 0 {
        count(probe, outcome::TRUNCATED);
    }
    if flags & path_flag::READ_ERROR != 0 {
        count(probe, outcome::READ_ERROR);
    }
    if flags & (path_flag::TRUNCATED | path_flag::READ_ERROR) != 0 {
        crate::diag::walk_problem(probe, pending.pid_tgid as u32, flags);
    }
}

/// Resolves the opened file (or, for a failed open, the lexical path) into `scratch` and runs
/// the filter. Returns whether the open must be reported. Inlined into each caller (as a
/// function of its own its frame and the caller's together exceed the BPF stack).
#[inline(always)]
unsafe fn inspect(
    o: &KernelOffsets,
    scratch: &mut Scratch,
    pending: &mut PendingOpen,
    ret: i64,
) -> Result<bool, i32> {
    let rec = &mut scratch.rec;
    rec.path_flags = 0;
    rec.secret_id = 0;
    rec.dev = 0;
    rec.ino = 0;
    rec.raw_len = 0;
    let buf = unsafe { vfs::walk_buffer(vfs::walk_memory().ok_or(0)?) };
    // The file whose path was walked (not for a failed open's lexical path).
    let mut walked = None;
    unsafe {
        let (fs, files) = vfs::current_fs_files();
        let root = vfs::typed_path(fs, offset!(fs_root));
        let (mut pos, flags) = if ret >= 0 {
            let file = vfs::typed_fd_to_file(files, ret as u32)?;
            let path_at = offset!(file_f_path);
            let [inode, mnt, dentry] = vfs::read_fields(
                file,
                [offset!(file_f_inode), path_at, path_at + 8],
                &mut scratch.cheap.words,
            )?;
            let at = KPath { mnt, dentry };
            if filter::seen_before(&mut scratch.cheap, at, inode, root) {
                return Ok(false);
            }
            let [sb, ino] = vfs::read_fields(
                inode,
                [offset!(inode_i_sb), offset!(inode_i_ino)],
                &mut scratch.cheap.words,
            )?;
            rec.ino = ino;
            rec.dev = vfs::read(sb, o.sb_s_dev)?;
            rec.secret_id = filter::secret_inode(rec.dev, rec.ino);
            if rec.secret_id == 0 {
                if !filter::worth_walking(&mut scratch.cheap, at, root) {
                    if filter::may_remember(&scratch.cheap, at.dentry) {
                        filter::remember_file(&scratch.cheap);
                    }
                    return Ok(false);
                }
            } else {
                scratch.cheap.forget_name();
            }
            walked = Some(at);
            vfs::prepend_path(o, PATH_BYTES, at, root)
        } else {
            // No file to look at: judge the path the process asked for, joined to its base.
            read_raw_path(&mut scratch.raw, rec, pending);
            let raw_len = rec.raw_len as usize & RAW_MASK;
            if raw_len == 0 {
                return Ok(false);
            }
            let pos = PATH_BYTES - raw_len;
            bpf_probe_read_kernel(
                buf.add(pos & PATH_MASK).cast(),
                raw_len as u32,
                scratch.raw.as_ptr().cast(),
            );
            if scratch.raw[0] == b'/' {
                (pos, path_flag::LEXICAL)
            } else {
                let pos = pos - 1;
                *buf.add(pos & PATH_MASK) = b'/';
                let (pos, flags) = match base_dir(files, fs, pending.dirfd) {
                    Ok(base) => vfs::prepend_path(o, pos, base, root),
                    // Unknown base (bad dirfd): only the tail is known.
                    Err(_) => (pos, path_flag::TRUNCATED | path_flag::READ_ERROR),
                };
                (pos, flags | path_flag::LEXICAL)
            }
        };
        if pos >= PATH_BYTES {
            // The file is the root itself.
            pos = PATH_BYTES - 1;
            *buf.add(pos & PATH_MASK) = b'/';
        }
        rec.path_flags |= flags;
        rec.matched = if rec.secret_id != 0 {
            matched::INODE
        } else {
            let truncated = flags & path_flag::TRUNCATED != 0;
            filter::match_path(buf, pos, truncated, &mut scratch.key, &mut scratch.rule)
        };
        if let (Some(at), 0) = (walked, flags)
            && filter::may_remember(&scratch.cheap, at.dentry)
        {
            filter::remember_dir(&mut scratch.cheap, &mut scratch.key, buf, pos, at);
            if rec.matched == 0 {
                // Walked cleanly and matched nothing (`/proc/self/stat` under `/proc/`).
                filter::remember_file(&scratch.cheap);
            }
        }
        if rec.matched == 0 {
            return Ok(false);
        }
        if pending.from_regs != 0 {
            // Only now that the open is reported are its arguments needed.
            *pending = args_from_regs(o, pending.probe, pending.pid_tgid).ok_or(-22)?;
        }
        let len = (PATH_BYTES - pos) & PATH_MASK;
        rec.path_len = len as u32;
        let tail = rec.tail.as_mut_ptr();
        bpf_probe_read_kernel(tail.cast(), len as u32, buf.add(pos & PATH_MASK).cast());
        if ret >= 0 {
            read_raw_path(&mut scratch.raw, rec, pending);
        }
        // The raw path right behind the resolved one.
        let raw_len = rec.raw_len as usize & RAW_MASK;
        bpf_probe_read_kernel(
            tail.add(len).cast(),
            raw_len as u32,
            scratch.raw.as_ptr().cast(),
        );
        Ok(true)
    }
}

/// The directory a relative path starts from: the working directory or the dirfd's file.
unsafe fn base_dir(files: *const u8, fs: *const u8, dirfd: i32) -> Result<KPath, i32> {
    unsafe {
        if dirfd == AT_FDCWD {
            return Ok(vfs::typed_path(fs, offset!(fs_pwd)));
        }
        let file = vfs::typed_fd_to_file(files, dirfd as u32)?;
        vfs::read_path(file + offset!(file_f_path) as u64)
    }
}

/// Copies the path string the process gave into `raw` and notes its length (without the
/// NUL) in the record: from its memory, or for io_uring from the copy kept at submission.
fn read_raw_path(raw: &mut [u8; RAW_PATH_BYTES], rec: &mut FileOpenRecord, pending: &PendingOpen) {
    if pending.path_ptr == 0 {
        return;
    }
    let n = unsafe {
        let (to, from) = (raw.as_mut_ptr().cast(), pending.path_ptr as *const _);
        if pending.probe == probe::IO_URING_OPEN {
            bpf_probe_read_kernel_str(to, RAW_PATH_BYTES as u32, from)
        } else {
            bpf_probe_read_user_str(to, RAW_PATH_BYTES as u32, from)
        }
    };
    if n <= 0 {
        rec.path_flags |= path_flag::RAW_READ_ERROR;
        return;
    }
    let n = n as u32 - 1;
    if n as usize >= RAW_PATH_BYTES - 1 {
        rec.path_flags |= path_flag::RAW_TRUNCATED;
    }
    rec.raw_len = n;
}

/// Fills the record's fixed part; returns the record's size on the wire.
fn fill_record(rec: &mut FileOpenRecord, pending: &PendingOpen, ret: i64, now: u64) -> usize {
    let pid_tgid = pending.pid_tgid;
    // Masked so the verifier sees the size bounded by the record.
    let size = FILE_OPEN_FIXED_BYTES
        + (rec.path_len as usize & PATH_MASK)
        + (rec.raw_len as usize & RAW_MASK);
    rec.header = RecordHeader {
        kind: KIND_FILE_OPEN,
        version: credwatch_common::WIRE_VERSION,
        size: size as u32,
    };
    crate::record::identify(&mut rec.task, now, pid_tgid, unsafe {
        bpf_get_current_cgroup_id()
    });
    rec.probe = pending.probe;
    rec.open_flags = pending.flags;
    rec.result = ret;
    rec.dirfd = pending.dirfd;
    size
}
