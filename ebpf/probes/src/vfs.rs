//! Reads of kernel VFS structures: fd → `struct file`, and the dentry/mount walk that turns a
//! (vfsmount, dentry) pair into a path as the task sees it. Field offsets come from the
//! `OFFSETS` global that the agent fills from the running kernel's BTF.

use aya_ebpf::helpers::{bpf_probe_read_kernel, generated};
use credwatch_common::{KernelOffsets, MAX_PATH_STEPS, PATH_BYTES, path_flag};

/// The walk assembles the path backwards so that it ends at `PATH_BYTES` in a scratch buffer of
/// twice that size: masking a position with `PATH_MASK` and adding one name (≤ 255 bytes) can
/// then never leave the buffer, which is what the verifier needs to see.
pub const PATH_MASK: usize = PATH_BYTES - 1;
pub const WALK_BYTES: usize = PATH_BYTES * 2;
const NAME_MAX_MASK: u32 = 0xff;

#[inline(always)]
pub unsafe fn read<T>(base: u64, offset: u32) -> Result<T, i32> {
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) }
}

/// A `struct path`: (vfsmount *, dentry *).
#[derive(Clone, Copy)]
pub struct KPath {
    pub mnt: u64,
    pub dentry: u64,
}

#[inline(always)]
pub unsafe fn read_path(o: &KernelOffsets, path_addr: u64) -> Result<KPath, i32> {
    unsafe {
        Ok(KPath {
            mnt: read(path_addr, o.path_mnt)?,
            dentry: read(path_addr, o.path_dentry)?,
        })
    }
}

/// `current->files->fdt->fd[fd]`, bounds-checked against `max_fds`.
#[inline(always)]
pub unsafe fn fd_to_file(o: &KernelOffsets, task: u64, fd: u32) -> Result<u64, i32> {
    unsafe {
        let files: u64 = read(task, o.task_files)?;
        let fdt: u64 = read(files, o.files_fdt)?;
        let max_fds: u32 = read(fdt, o.fdtable_max_fds)?;
        if fd >= max_fds {
            return Err(-9);
        }
        let fd_array: u64 = read(fdt, o.fdtable_fd)?;
        let file: u64 = read(fd_array, fd * 8)?;
        if file == 0 {
            return Err(-9);
        }
        Ok(file)
    }
}

/// The task's root and working directory (`current->fs->{root,pwd}`).
#[inline(always)]
pub unsafe fn task_root_and_pwd(o: &KernelOffsets, task: u64) -> Result<(KPath, KPath), i32> {
    unsafe {
        let fs: u64 = read(task, o.task_fs)?;
        Ok((
            read_path(o, fs + o.fs_root as u64)?,
            read_path(o, fs + o.fs_pwd as u64)?,
        ))
    }
}

/// Prepends the path of `at` (up to `root`) to the scratch walk buffer, whose current content
/// starts at `pos` and ends at `PATH_BYTES`. Returns the new start and `path_flag` bits. Mount
/// points are crossed the way `d_path` does. The number of steps is bounded; running out marks
/// the result truncated (what was assembled, the tail, is kept).
///
/// The loop runs under `bpf_loop`, so the verifier checks one step once instead of unrolling
/// every iteration together with everything that follows the walk.
#[inline(always)]
pub unsafe fn prepend_path(o: &KernelOffsets, pos: usize, at: KPath, root: KPath) -> (usize, u32) {
    let mut state = WalkState {
        pos: pos as u64,
        vfsmnt: at.mnt,
        dentry: at.dentry,
        mount: at.mnt.wrapping_sub(o.mount_mnt as u64),
        root_mnt: root.mnt,
        root_dentry: root.dentry,
        flags: 0,
        done: 0,
    };
    unsafe {
        generated::bpf_loop(
            MAX_PATH_STEPS,
            walk_callback as *mut core::ffi::c_void,
            (&mut state as *mut WalkState).cast(),
            0,
        );
    }
    if state.done == 0 {
        state.flags |= path_flag::TRUNCATED;
    }
    (state.pos as usize, state.flags)
}

#[repr(C)]
struct WalkState {
    pos: u64,
    vfsmnt: u64,
    dentry: u64,
    mount: u64,
    root_mnt: u64,
    root_dentry: u64,
    flags: u32,
    done: u32,
}

#[inline(never)]
unsafe extern "C" fn walk_callback(_index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    let state = unsafe { &mut *(ctx as *mut WalkState) };
    let stop = |state: &mut WalkState, flags: u32| {
        state.flags |= flags;
        state.done = 1;
        1
    };
    if state.dentry == state.root_dentry && state.vfsmnt == state.root_mnt {
        return stop(state, 0);
    }
    let Some(scratch) = crate::SCRATCH.get_ptr_mut(0) else {
        return stop(state, path_flag::READ_ERROR);
    };
    let buf = unsafe { crate::open::walk_buffer(scratch) };
    let o = crate::OFFSETS.load();
    let step = unsafe {
        walk_step(
            &o,
            buf,
            state.pos as usize,
            &mut state.vfsmnt,
            &mut state.dentry,
            &mut state.mount,
        )
    };
    match step {
        Step::Name(pos) => {
            state.pos = pos as u64;
            0
        }
        Step::MountCrossed => 0,
        Step::Done(flags) => stop(state, flags),
    }
}

enum Step {
    Name(usize),
    MountCrossed,
    Done(u32),
}

#[inline(always)]
unsafe fn walk_step(
    o: &KernelOffsets,
    buf: *mut u8,
    pos: usize,
    vfsmnt: &mut u64,
    dentry: &mut u64,
    mount: &mut u64,
) -> Step {
    unsafe {
        let Ok(mnt_root) = read::<u64>(*vfsmnt, o.vfsmount_mnt_root) else {
            return Step::Done(path_flag::READ_ERROR);
        };
        let Ok(parent) = read::<u64>(*dentry, o.dentry_d_parent) else {
            return Step::Done(path_flag::READ_ERROR);
        };
        if *dentry == mnt_root || *dentry == parent {
            // Top of this mount: continue from its mount point in the parent mount.
            let Ok(mnt_parent) = read::<u64>(*mount, o.mount_mnt_parent) else {
                return Step::Done(path_flag::READ_ERROR);
            };
            if mnt_parent == *mount || mnt_parent == 0 {
                return Step::Done(path_flag::OUTSIDE_ROOT);
            }
            let Ok(mountpoint) = read::<u64>(*mount, o.mount_mnt_mountpoint) else {
                return Step::Done(path_flag::READ_ERROR);
            };
            *dentry = mountpoint;
            *mount = mnt_parent;
            *vfsmnt = mnt_parent + o.mount_mnt as u64;
            return Step::MountCrossed;
        }
        let name_at = *dentry + o.dentry_d_name as u64;
        let (Ok(len), Ok(name)) = (
            read::<u32>(name_at, o.qstr_len),
            read::<u64>(name_at, o.qstr_name),
        ) else {
            return Step::Done(path_flag::READ_ERROR);
        };
        let len = (len & NAME_MAX_MASK) as usize;
        // Keep at least one byte free so the finished path is never longer than PATH_MASK.
        if pos < len + 2 {
            return Step::Done(path_flag::TRUNCATED);
        }
        let pos = pos - len;
        let dst = buf.add(pos & PATH_MASK);
        if generated::bpf_probe_read_kernel(dst.cast(), len as u32, name as *const _) != 0 {
            return Step::Done(path_flag::READ_ERROR);
        }
        let pos = pos - 1;
        *buf.add(pos & PATH_MASK) = b'/';
        *dentry = parent;
        Step::Name(pos)
    }
}
