//! Per-CPU counters, one row per probe and one column per outcome (see `credwatch_common`).

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
