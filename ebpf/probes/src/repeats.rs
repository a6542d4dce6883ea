//! In-kernel aggregation of identical credential accesses (see `credwatch_common::RepeatKey`):
//! a flood of one access must not take the ring buffer from the accesses that matter.

use aya_ebpf::bindings::BPF_NOEXIST;
use credwatch_common::{PATH_KEY_BYTES, REPEAT_WINDOW_SHIFT, RepeatKey, RepeatValue};

use crate::REPEATS;

/// What to do with a matched access.
pub enum Repeat {
    /// The first in its window: report it (the key is in the map; `forget` it if the record
    /// cannot be written, so the next repeat is reported instead of counted).
    First,
    /// Counted in the map: nothing to write.
    Counted,
    /// The map is full: report it without aggregation.
    Untracked,
}

/// `key` (in per-CPU scratch memory: the stack is nearly full) gets its window here.
#[inline(always)]
pub fn check(key: &mut RepeatKey, now: u64) -> Repeat {
    key.epoch = (now >> REPEAT_WINDOW_SHIFT) as u32 + 1;
    let key = &*key;
    // Two tries: another CPU may insert the same key between our lookup and insert.
    for _ in 0..2 {
        if let Some(value) = REPEATS.get_ptr_mut(key) {
            bump(unsafe { &mut *value }, now);
            return Repeat::Counted;
        }
        if REPEATS
            .insert(key, &RepeatValue::default(), BPF_NOEXIST as u64)
            .is_ok()
        {
            return Repeat::First;
        }
    }
    Repeat::Untracked
}

/// Counts one more access in this CPU's slot of a per-window count: a plain add is exact
/// (the agent sums the CPUs).
#[inline(always)]
pub fn bump(value: &mut RepeatValue, now: u64) {
    if value.count == 0 {
        value.first_ns = now;
    }
    value.count += 1;
    value.last_ns = now;
}

pub fn forget(key: &RepeatKey) {
    let _ = REPEATS.remove(key);
}

/// A hash of a path for a failed open (no inode to name it): the reversed path's first
/// `len` bytes of `reversed` (the suffix-trie key, `PATH_KEY_BYTES` long) and its length.
/// Paths of one length that share their last 256 bytes share a key: their repeats are counted
/// together (both are still reported once per window).
#[inline(always)]
pub unsafe fn path_hash(reversed: *const u8, len: usize) -> u64 {
    let words = reversed as *const u64;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ len as u64;
    for i in 0..PATH_KEY_BYTES / 8 {
        let valid = len.saturating_sub(i * 8);
        if valid == 0 {
            break;
        }
        let mut word = unsafe { *words.add(i) };
        if valid < 8 {
            // Bytes past the path are whatever the buffer held before.
            word &= (1u64 << (valid * 8)) - 1;
        }
        hash = (hash ^ word).wrapping_mul(0x0100_0000_01b3);
        hash ^= hash >> 29;
    }
    hash
}
