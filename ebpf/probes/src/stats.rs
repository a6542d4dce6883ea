//! Per-CPU counters, one row per probe and one column per outcome (see `credwatch_common`),
//! and the one way to add to a counter every CPU shares.

use credwatch_common::outcome;

use crate::STATS;

#[inline(always)]
pub fn count(probe: u32, what: u32) {
    let index = probe * outcome::COUNT + what;
    if let Some(counter) = STATS.get_ptr_mut(index) {
        // Per-CPU slot and tracepoints do not nest on one CPU, so a plain add is exact.
        unsafe { *counter += 1 };
    }
}

/// Adds `n` to a counter shared by every CPU (a map value): BPF's atomic add. The BPF target
/// has no `AtomicU64`/`AtomicI64`, so the intrinsic behind them.
#[inline(always)]
pub fn shared_add<T: Copy>(counter: *mut T, n: T) {
    unsafe {
        core::intrinsics::atomic_xadd::<T, T, { core::intrinsics::AtomicOrdering::Relaxed }>(
            counter, n,
        )
    };
}
