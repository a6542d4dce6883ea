//! Reads of kernel VFS structures: fd → `struct file`, and the dentry/mount walk that turns a
//! (vfsmount, dentry) pair into a path as the task sees it. Field offsets come from the
//! `OFFSETS` global that the agent fills from the running kernel's BTF; the agent also checks
//! the layout facts this file relies on to batch reads (see `offsets.rs` in the agent):
//! `struct path` is {mnt, dentry}, `struct qstr` is {hash, len, name} and `d_name` directly
//! follows `d_parent`. Every `bpf_probe_read_kernel` costs tens of nanoseconds on every open,
//! so reads are batched and per-mount values cached.

use aya_ebpf::helpers::{bpf_probe_read_kernel, generated};
use credwatch_common::{KernelOffsets, MAX_PATH_STEPS, PATH_BYTES, path_flag};

/// The walk assembles the path backwards so that it ends at `PATH_BYTES` in a scratch buffer of
/// twice that size: masking a position with `PATH_MASK` and adding one name (≤ 255 bytes) can
/// then never leave the buffer, which is what the verifier needs to see.
pub const PATH_MASK: usize = PATH_BYTES - 1;
pub const WALK_BYTES: usize = PATH_BYTES * 2;
const NAME_MAX_MASK: u64 = 0xff;

/// The offsets global, read in place: the verifier then knows every field as a constant
/// (the global is frozen) and nothing is copied to the exit program's full stack. The
/// pointer is laundered through a volatile load so the compiler cannot fold the fields to
/// the zeros the global is compiled with.
#[inline(always)]
pub fn offsets() -> &'static KernelOffsets {
    let at = core::ptr::addr_of!(crate::OFFSETS) as *const KernelOffsets;
    unsafe { &*core::ptr::read_volatile(&at) }
}

/// A field offset from `OFFSETS`, read straight from the frozen global so that the verifier
/// sees a constant (a copy of the whole struct on the stack loses that): typed loads need it.
macro_rules! offset {
    ($field:ident) => {{
        #[allow(unused_unsafe)]
        let value = unsafe {
            core::ptr::read_volatile(core::ptr::addr_of!(
                (*(core::ptr::addr_of!(crate::OFFSETS) as *const credwatch_common::KernelOffsets))
                    .$field
            ))
        };
        value
    }};
}
pub(crate) use offset;

/// A field of a kernel object the verifier knows the type of (the task from
/// `bpf_get_current_task_btf`, and the structs reached from it through pointer fields), read
/// with a plain load: the verifier checks the offset against the kernel's BTF and makes the
/// load fault-safe, at the cost of a load instead of a `bpf_probe_read_kernel` call (~30 ns
/// each here). Pointers to anything but a struct come back untyped (plain numbers).
#[inline(always)]
pub unsafe fn typed<T>(base: *const u8, offset: u32) -> T {
    unsafe { core::ptr::read_volatile(base.add(offset as usize) as *const T) }
}

/// The current task's `fs` and `files` (typed).
#[inline(always)]
pub fn current_fs_files() -> (*const u8, *const u8) {
    unsafe {
        let task = generated::bpf_get_current_task_btf() as *const u8;
        (
            typed(task, offset!(task_fs)),
            typed(task, offset!(task_files)),
        )
    }
}

/// A `struct path` (mnt, dentry) at `at` in a typed struct (`fs->root`, `fs->pwd`).
#[inline(always)]
pub fn typed_path(base: *const u8, at: u32) -> KPath {
    unsafe {
        KPath {
            mnt: typed(base, at),
            dentry: typed(base, at + 8),
        }
    }
}

/// `files->fdt->fd[fd]` from a typed `files`, bounds-checked against `max_fds`: typed loads
/// down to the fd array (an array of pointers, which BTF access does not type), one read.
#[inline(always)]
pub fn typed_fd_to_file(files: *const u8, fd: u32) -> Result<u64, i32> {
    unsafe {
        let fdt: *const u8 = typed(files, offset!(files_fdt));
        let max_fds: u32 = typed(fdt, offset!(fdtable_max_fds));
        if fd >= max_fds {
            return Err(-9);
        }
        let fd_array: u64 = typed(fdt, offset!(fdtable_fd));
        let file: u64 = read(fd_array, fd * 8)?;
        if file == 0 {
            return Err(-9);
        }
        Ok(file)
    }
}

/// Fields of one kernel struct at byte offsets `at`, with a single read of the 64 bytes from
/// the lowest one's word when they all lie within them (they do for `file`, `inode` and
/// `dentry` on the kernels seen), else one read each. Each comes back as the 8 bytes from its
/// offset (a 4-byte field in the low half). `words` is scratch memory (the exit program's
/// stack is full).
#[inline(always)]
pub unsafe fn read_fields<const N: usize>(
    base: u64,
    at: [u32; N],
    words: &mut [u64; 8],
) -> Result<[u64; N], i32> {
    let low = at.iter().copied().min().unwrap_or(0) & !7;
    let high = at.iter().copied().max().unwrap_or(0) + 8;
    let mut out = [0u64; N];
    unsafe {
        if high <= low + 64 {
            read_words(words, 8, base + low as u64)?;
            for (field, value) in at.iter().zip(out.iter_mut()) {
                *value = words[((field - low) / 8) as usize & 7] >> ((field & 7) * 8);
            }
        } else {
            for (field, value) in at.iter().zip(out.iter_mut()) {
                *value = read(base, *field)?;
            }
        }
    }
    Ok(out)
}

/// The first `n` (≤ 8) words at `from` into `words`.
#[inline(always)]
unsafe fn read_words(words: &mut [u64; 8], n: u32, from: u64) -> Result<(), i32> {
    let copied = unsafe {
        generated::bpf_probe_read_kernel(words.as_mut_ptr().cast(), n * 8, from as *const _)
    };
    if copied != 0 {
        Err(copied as i32)
    } else {
        Ok(())
    }
}

#[inline(always)]
pub unsafe fn read<T>(base: u64, offset: u32) -> Result<T, i32> {
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) }
}

/// Two 8-byte fields of one struct with a single read when they are adjacent (the offsets are
/// load-time constants, so the verifier keeps only the branch this kernel needs).
#[inline(always)]
pub unsafe fn read_pair(base: u64, a: u32, b: u32) -> Result<(u64, u64), i32> {
    unsafe {
        if b == a + 8 {
            let [x, y] = read::<[u64; 2]>(base, a)?;
            Ok((x, y))
        } else if a == b + 8 {
            let [y, x] = read::<[u64; 2]>(base, b)?;
            Ok((x, y))
        } else {
            Ok((read(base, a)?, read(base, b)?))
        }
    }
}

/// A `struct path`: (vfsmount *, dentry *).
#[derive(Clone, Copy)]
pub struct KPath {
    pub mnt: u64,
    pub dentry: u64,
}

/// Reads a `struct path` (two pointers) in one go.
#[inline(always)]
pub unsafe fn read_path(path_addr: u64) -> Result<KPath, i32> {
    let [mnt, dentry] = unsafe { read::<[u64; 2]>(path_addr, 0)? };
    Ok(KPath { mnt, dentry })
}

/// The walk's working memory (per CPU, the `WALK` map): the path is assembled backwards in
/// `buf`, ending at `PATH_BYTES`, and starts at `pos`. Its own map, so the file, process and
/// io_uring programs that walk depend on this module, not the other way round.
#[repr(C)]
pub struct Walk {
    pos: u64,
    buf: [u8; WALK_BYTES],
}

#[inline(always)]
pub fn walk_memory() -> Option<*mut Walk> {
    crate::WALK.get_ptr_mut(0)
}

#[inline(always)]
pub unsafe fn walk_buffer(walk: *mut Walk) -> *mut u8 {
    unsafe { core::ptr::addr_of_mut!((*walk).buf) as *mut u8 }
}

#[inline(always)]
unsafe fn walk_pos(walk: *mut Walk) -> u64 {
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*walk).pos)) }
}

#[inline(always)]
unsafe fn set_walk_pos(walk: *mut Walk, pos: u64) {
    unsafe { core::ptr::write_volatile(core::ptr::addr_of_mut!((*walk).pos), pos) }
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
    let Some(walk) = walk_memory() else {
        return (pos, path_flag::READ_ERROR);
    };
    // The position lives in map memory, not in the loop state: the verifier then sees an
    // unknown bounded value in every iteration and can prove the loop body once, instead of
    // following a constant that shrinks by a different amount in each iteration.
    unsafe { set_walk_pos(walk, pos as u64) };
    let mut state = WalkState {
        vfsmnt: at.mnt,
        dentry: at.dentry,
        mount: at.mnt.wrapping_sub(o.mount_mnt as u64),
        mnt_root: unsafe { read(at.mnt, o.vfsmount_mnt_root).unwrap_or(0) },
        root_mnt: root.mnt,
        root_dentry: root.dentry,
        d_parent: o.dentry_d_parent,
        mount_mnt: o.mount_mnt,
        mnt_parent: o.mount_mnt_parent,
        mnt_mountpoint: o.mount_mnt_mountpoint,
        vfsmount_mnt_root: o.vfsmount_mnt_root,
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
    (unsafe { walk_pos(walk) } as usize, state.flags)
}

/// Walk state on the caller's stack (bpf_loop's context). The offsets the step needs are
/// copied in once so a step does not reload the whole offsets global.
#[repr(C)]
struct WalkState {
    vfsmnt: u64,
    dentry: u64,
    mount: u64,
    /// `vfsmnt->mnt_root`, cached until the walk crosses into another mount.
    mnt_root: u64,
    root_mnt: u64,
    root_dentry: u64,
    d_parent: u32,
    mount_mnt: u32,
    mnt_parent: u32,
    mnt_mountpoint: u32,
    vfsmount_mnt_root: u32,
    flags: u32,
    done: u32,
}

#[inline(never)]
unsafe extern "C" fn walk_callback(_index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    let s = unsafe { &mut *(ctx as *mut WalkState) };
    if s.dentry == s.root_dentry && s.vfsmnt == s.root_mnt {
        return stop(s, 0);
    }
    // d_parent, then d_name = {hash_len (len in the high half), name}: one read.
    let Ok([parent, hash_len, name]) = (unsafe { read::<[u64; 3]>(s.dentry, s.d_parent) }) else {
        return stop(s, path_flag::READ_ERROR);
    };
    if s.dentry == s.mnt_root || s.dentry == parent {
        return unsafe { cross_mount(s) };
    }
    let len = ((hash_len >> 32) & NAME_MAX_MASK) as usize;
    let Some(walk) = walk_memory() else {
        return stop(s, path_flag::READ_ERROR);
    };
    let pos = unsafe { walk_pos(walk) } as usize;
    // Keep at least one byte free so the finished path is never longer than PATH_MASK.
    if pos < len + 2 {
        return stop(s, path_flag::TRUNCATED);
    }
    unsafe {
        let buf = walk_buffer(walk);
        let pos = pos - len;
        if generated::bpf_probe_read_kernel(
            buf.add(pos & PATH_MASK).cast(),
            len as u32,
            name as *const _,
        ) != 0
        {
            return stop(s, path_flag::READ_ERROR);
        }
        let pos = pos - 1;
        *buf.add(pos & PATH_MASK) = b'/';
        set_walk_pos(walk, pos as u64);
    }
    s.dentry = parent;
    0
}

/// At the top of a mount: continue from its mount point in the parent mount.
#[inline(always)]
unsafe fn cross_mount(s: &mut WalkState) -> i64 {
    unsafe {
        let Ok((mnt_parent, mountpoint)) = read_pair(s.mount, s.mnt_parent, s.mnt_mountpoint)
        else {
            return stop(s, path_flag::READ_ERROR);
        };
        if mnt_parent == s.mount || mnt_parent == 0 {
            // The top of the mount tree without meeting the task's root.
            return stop(s, path_flag::OUTSIDE_ROOT);
        }
        s.dentry = mountpoint;
        s.mount = mnt_parent;
        s.vfsmnt = mnt_parent + s.mount_mnt as u64;
        s.mnt_root = read(s.vfsmnt, s.vfsmount_mnt_root).unwrap_or(0);
    }
    0
}

#[inline(always)]
fn stop(s: &mut WalkState, flags: u32) -> i64 {
    s.flags |= flags;
    s.done = 1;
    1
}
