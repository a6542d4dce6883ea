//! Moves in the file tree: renames (`mv /tmp/x /etc/ssh`, `mv /tmp/x /run/secrets/x`),
//! mount changes (mount, move_mount, umount, pivot_root) and io_uring renames. What the filter
//! remembers per directory and per file (`filter.rs`) is keyed by dentries and mounts, which a
//! move keeps, so every move advances the tree generation (`filter_epoch::TREE`) when it begins
//! and again when it ends: nothing decided before or during it counts after it.
//!
//! Every rename counts. Whether the renamed entry is a directory, and where a relative or
//! symlinked new name lands, cannot be told from a syscall's arguments (nor safely: another
//! thread can change the name after it is read); the hooks that could tell (fexit, BPF-LSM)
//! are refused on these machines. A rename therefore costs the node's next opens of each file
//! one path walk, never a missed credential.

use aya_ebpf::helpers::bpf_get_current_pid_tgid;
use credwatch_common::{filter_epoch, outcome, probe};

use crate::{
    FILTER_EPOCH, MOVES_PENDING,
    stats::{count, shared_add},
};

/// A rename or a mount change begins.
pub fn enter() {
    count(probe::TREE_MOVE, outcome::SEEN);
    advance();
    let _ = MOVES_PENDING.insert(&bpf_get_current_pid_tgid(), &1u8, 0);
}

/// It ended (successfully or not).
pub fn exit() {
    let thread = bpf_get_current_pid_tgid();
    if unsafe { MOVES_PENDING.get(&thread) }.is_some() {
        let _ = MOVES_PENDING.remove(&thread);
        advance();
    }
}

/// An io_uring rename was submitted (`done`: it completed).
pub fn io_uring_rename(done: bool, end_unseen: bool) {
    if !done {
        count(probe::TREE_MOVE, outcome::SEEN);
        if end_unseen {
            // Submitted with IOSQE_CQE_SKIP_SUCCESS: its completion is never traced, and it
            // may run much later (linked behind a read that waits). Nothing it could outlive
            // may be remembered from now on: the filter stops remembering until the agent
            // restarts (legitimate programs hardly ever rename this way).
            count(probe::TREE_MOVE, outcome::UNMATCHED);
            if let Some(remember) = FILTER_EPOCH.get_ptr_mut(filter_epoch::REMEMBER) {
                unsafe { *remember = 0 };
            }
        }
    }
    advance();
}

/// One more move in the file tree: every remembered verdict stops counting.
fn advance() {
    if let Some(tree) = FILTER_EPOCH.get_ptr_mut(filter_epoch::TREE) {
        shared_add(tree, 1u64);
    }
}
