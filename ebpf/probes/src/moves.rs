//! Moves in the file tree that can put a directory where a prefix key points: `mv /tmp/x
//! /etc/ssh`, `mount --move`, `move_mount(2)`, an io_uring rename. What the filter remembers
//! per directory and per file (`filter.rs`) is keyed by dentries and mounts, which such a move
//! keeps, so every one of them advances the tree generation (`filter_epoch::TREE`) when it
//! begins and again when it ends: nothing decided before or during the move counts after it.
//!
//! Most renames cannot do that (a file written and renamed over its old name, a log
//! rotated): a rename counts as a move only when its new name (or, for an exchange, either
//! name) ends in a name on the way to a prefix key (`MOVE_NAMES`, filled by the agent), or
//! when that name cannot be read whole. Every mount counts (mounts are rare; containers make a
//! few as they start).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated},
    maps::lpm_trie::Key,
};
use credwatch_common::{MOVE_KEY_BYTES, MoveKeyData, filter_epoch, outcome, probe};

use crate::{FILTER_EPOCH, MOVE_NAMES, MOVE_SCRATCH, MOVES_PENDING, stats::count};

/// `renameat2`'s RENAME_EXCHANGE: each name ends up in the other's place.
const RENAME_EXCHANGE: u64 = 2;
/// How much of a new name is read. A longer one (`/etc/./././…/ssh`) counts as a move.
const NAME_BYTES: usize = 256;
const NAME_MASK: usize = NAME_BYTES - 1;

/// Working memory for reading a name (per CPU).
#[repr(C)]
pub struct Scratch {
    name: [u8; NAME_BYTES],
    /// Room for a copy that starts near the name's end (the verifier sees up to 64 bytes).
    _room: [u8; MOVE_KEY_BYTES],
    key: Key<MoveKeyData>,
    /// Positions go through map memory so the compiler keeps the masks the verifier needs.
    start: u32,
    take: u32,
}

/// rename(2), renameat(2), renameat2(2) begin.
pub fn rename_enter(old: u64, new: u64, flags: u64) {
    count(probe::TREE_MOVE, outcome::SEEN);
    let into_place = unsafe {
        names_a_prefix_dir(new) || (flags & RENAME_EXCHANGE != 0 && names_a_prefix_dir(old))
    };
    if into_place {
        begin();
    } else {
        count(probe::TREE_MOVE, outcome::FILTERED);
    }
}

/// mount(2), move_mount(2) begin.
pub fn mount_enter() {
    count(probe::TREE_MOVE, outcome::SEEN);
    begin();
}

/// Any of them ended (successfully or not).
pub fn exit() {
    let thread = bpf_get_current_pid_tgid();
    if unsafe { MOVES_PENDING.get(&thread) }.is_some() {
        let _ = MOVES_PENDING.remove(&thread);
        advance();
    }
}

/// An io_uring rename was submitted (`done`: it completed). Its names are not read: rare.
pub fn io_uring_rename(done: bool, end_unseen: bool) {
    if !done {
        count(probe::TREE_MOVE, outcome::SEEN);
        if end_unseen {
            // Submitted with IOSQE_CQE_SKIP_SUCCESS: its completion is never traced.
            count(probe::TREE_MOVE, outcome::UNMATCHED);
        }
    }
    advance();
}

fn begin() {
    advance();
    let _ = MOVES_PENDING.insert(&bpf_get_current_pid_tgid(), &1u8, 0);
}

/// One more move in the file tree: every remembered verdict stops counting.
fn advance() {
    if let Some(tree) = FILTER_EPOCH.get_ptr_mut(filter_epoch::TREE) {
        // Shared by every CPU: an atomic add (BPF's `lock xadd`; the programs only ever add).
        // The BPF target has no `AtomicU64`, so the intrinsic behind it.
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                tree, 1,
            )
        };
    }
}

/// Whether the user-space path `name` ends in a name on the way to a prefix key: its last
/// component (trailing `/`s ignored) with a `/` after it, against `MOVE_NAMES`.
#[inline(always)]
unsafe fn names_a_prefix_dir(name: u64) -> bool {
    let Some(s) = MOVE_SCRATCH.get_ptr_mut(0) else {
        return true;
    };
    let s = unsafe { &mut *s };
    let read = unsafe {
        generated::bpf_probe_read_user_str(
            s.name.as_mut_ptr().cast(),
            NAME_BYTES as u32,
            name as *const _,
        )
    };
    if read <= 0 {
        count(probe::TREE_MOVE, outcome::READ_ERROR);
        crate::diag::unreadable_name(bpf_get_current_pid_tgid() as u32, read);
        return true;
    }
    // Without its NUL; a name that fills the buffer may have been cut short.
    let len = read as usize - 1;
    if len >= NAME_BYTES - 1 {
        return true;
    }
    let mut end = len;
    for _ in 0..NAME_BYTES {
        if end == 0 || s.name[(end - 1) & NAME_MASK] != b'/' {
            break;
        }
        end -= 1;
    }
    let mut start = end;
    for _ in 0..NAME_BYTES {
        if start == 0 || s.name[(start - 1) & NAME_MASK] == b'/' {
            break;
        }
        start -= 1;
    }
    let n = end - start;
    if n == 0 {
        // "/" or "": nothing lands anywhere new.
        return false;
    }
    let take = if n > MOVE_KEY_BYTES {
        MOVE_KEY_BYTES
    } else {
        n
    };
    unsafe {
        core::ptr::write_volatile(&mut s.start, start as u32);
        core::ptr::write_volatile(&mut s.take, take as u32);
        let start = core::ptr::read_volatile(&s.start) as usize & NAME_MASK;
        let take = core::ptr::read_volatile(&s.take) as usize & (MOVE_KEY_BYTES * 2 - 1);
        if take == 0 || take > MOVE_KEY_BYTES {
            return true;
        }
        generated::bpf_probe_read_kernel(
            s.key.data.as_mut_ptr().cast(),
            take as u32,
            s.name.as_ptr().add(start).cast(),
        );
        // A whole name must be a directory's whole name: "ssh/" does not start "sshd/".
        let bytes = if take < MOVE_KEY_BYTES {
            s.key.data[take & (MOVE_KEY_BYTES - 1)] = b'/';
            take + 1
        } else {
            MOVE_KEY_BYTES
        };
        s.key.prefix_len = (bytes * 8) as u32;
        MOVE_NAMES.get(&s.key).is_some()
    }
}
