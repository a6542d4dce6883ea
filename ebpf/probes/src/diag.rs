//! Kernel-side diagnostics of rare conditions, through aya-log: what the `STATS` counters only
//! count (a walk cut short, a kernel read that failed, an exit without its saved arguments, a
//! spill that found no room) with the probe and the thread. Off unless the agent is asked
//! (`--kernel-log LEVEL`): the level is a frozen global, so with it off the verifier drops
//! every statement here. At most one line per CPU every 10 ms. Each is a call of its own (not inlined), so the programs that call
//! them keep their stack frames as they were.

use aya_ebpf::helpers::generated::bpf_ktime_get_boot_ns;
use aya_log_ebpf::{
    debug,
    macro_support::{Level, level_enabled},
    warn,
};

use crate::DIAG_LAST;

/// Any value: aya-log's macros take a context they do not use.
const NO_CTX: () = ();
/// At most one line per CPU this often: a container opening deep paths in a loop must not
/// flood the agent's stderr (and the loop that reads it) when the log is on.
const EVERY_NS: u64 = 10_000_000;

/// Whether `level` is on and this CPU has not logged within `EVERY_NS`.
#[inline(always)]
fn due(level: Level) -> bool {
    if !level_enabled(level) {
        return false;
    }
    let Some(last) = DIAG_LAST.get_ptr_mut(0) else {
        return false;
    };
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let last = unsafe { &mut *last };
    if now.wrapping_sub(*last) < EVERY_NS {
        return false;
    }
    *last = now;
    true
}

/// A path walk that hit its bound (the record carries the path's tail) or whose kernel read
/// failed (`path_flag` bits).
#[inline(never)]
pub fn walk_problem(probe: u32, tid: u32, flags: u32) {
    if !due(Level::Warn) {
        return;
    }
    warn!(
        &NO_CTX,
        "path walk incomplete: probe {} thread {} path_flags {:x}", probe, tid, flags
    );
}

/// A syscall exit whose arguments were not saved (entered before the probes attached, or
/// their slot was taken).
#[inline(never)]
pub fn unmatched_exit(probe: u32, tid: u32) {
    if !due(Level::Debug) {
        return;
    }
    debug!(
        &NO_CTX,
        "exit without saved arguments: probe {} thread {}", probe, tid
    );
}

/// A blocked open's arguments could not move to the spill hash (full): its exit will not
/// find them.
#[inline(never)]
pub fn spill_full(tid: u32) {
    if !due(Level::Warn) {
        return;
    }
    warn!(
        &NO_CTX,
        "pending-open spill full: thread {} loses its arguments", tid
    );
}
