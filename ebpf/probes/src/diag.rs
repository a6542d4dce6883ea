//! Kernel-side diagnostics of rare conditions, through aya-log: what the `STATS` counters only
//! count (a walk cut short, a kernel read that failed, an exit without its saved arguments, a
//! spill that found no room) with the probe and the thread. Off unless the agent is asked
//! (`--kernel-log LEVEL`): the level is a frozen global, so with it off the verifier drops
//! every statement here. Each is a call of its own (not inlined), so the programs that call
//! them keep their stack frames as they were.

use aya_log_ebpf::{debug, warn};

/// Any value: aya-log's macros take a context they do not use.
const NO_CTX: () = ();

/// A path walk that hit its bound (the record carries the path's tail) or whose kernel read
/// failed (`path_flag` bits).
#[inline(never)]
pub fn walk_problem(probe: u32, tid: u32, flags: u32) {
    warn!(
        &NO_CTX,
        "path walk incomplete: probe {} thread {} path_flags {:x}", probe, tid, flags
    );
}

/// A syscall exit whose arguments were not saved (entered before the probes attached, or
/// their slot was taken).
#[inline(never)]
pub fn unmatched_exit(probe: u32, tid: u32) {
    debug!(
        &NO_CTX,
        "exit without saved arguments: probe {} thread {}", probe, tid
    );
}

/// A blocked open's arguments could not move to the spill hash (full): its exit will not
/// find them.
#[inline(never)]
pub fn spill_full(tid: u32) {
    warn!(
        &NO_CTX,
        "pending-open spill full: thread {} loses its arguments", tid
    );
}

/// A renamed name that could not be read: taken as a move into place.
#[inline(never)]
pub fn unreadable_name(tid: u32, error: i64) {
    debug!(
        &NO_CTX,
        "rename: name unreadable (error {}) in thread {}", error, tid
    );
}
