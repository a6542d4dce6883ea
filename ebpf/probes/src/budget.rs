//! Per-cgroup record budgets (see `credwatch_common::Budget`): a container that floods or
//! sweeps gets its excess counted here, per catalogue entry, and every other container keeps
//! its share of the ring buffer.

use credwatch_common::{DNS_BUCKET, REPEAT_WINDOW_SHIFT, RepeatValue, SuppressedKey};

use crate::{BUCKETS, BUDGET, SUPPRESSED};

/// A cgroup's credit (ns) at `last_ns`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Bucket {
    credit_ns: u64,
    last_ns: u64,
}

/// Takes one record from `cgroup_id`'s budget; false when it has none left.
#[inline(always)]
pub fn take(cgroup_id: u64, now: u64) -> bool {
    let budget = BUDGET.load();
    take_from(cgroup_id, now, budget.cost_ns, budget.cap_ns)
}

/// Takes one DNS answer from `cgroup_id`'s DNS bucket (its own, with a smaller burst).
#[inline(always)]
pub fn take_dns(cgroup_id: u64, now: u64) -> bool {
    let budget = BUDGET.load();
    take_from(
        cgroup_id | DNS_BUCKET,
        now,
        budget.cost_ns,
        budget.dns_cap_ns,
    )
}

#[inline(always)]
fn take_from(key: u64, now: u64, cost_ns: u64, cap_ns: u64) -> bool {
    if cost_ns == 0 {
        return true;
    }
    let Some(bucket) = BUCKETS.get_ptr_mut(&key) else {
        // A cgroup's first record: a full bucket, less this one. (Several CPUs may race on a
        // bucket; a budget needs no more precision than that.)
        let fresh = Bucket {
            credit_ns: cap_ns.saturating_sub(cost_ns),
            last_ns: now,
        };
        let _ = BUCKETS.insert(&key, &fresh, 0);
        return true;
    };
    let bucket = unsafe { &mut *bucket };
    let mut credit = bucket.credit_ns + now.saturating_sub(bucket.last_ns);
    if credit > cap_ns {
        credit = cap_ns;
    }
    bucket.last_ns = now;
    if credit < cost_ns {
        bucket.credit_ns = credit;
        return false;
    }
    bucket.credit_ns = credit - cost_ns;
    true
}

/// Counts an access the budget cut. False when it could not even be counted (the map is
/// full): the caller counts it as lost.
#[inline(always)]
pub fn suppress(key: &mut SuppressedKey, now: u64) -> bool {
    key.epoch = (now >> REPEAT_WINDOW_SHIFT) as u32 + 1;
    let key = &*key;
    for _ in 0..2 {
        if let Some(value) = SUPPRESSED.get_ptr_mut(key) {
            crate::repeats::bump(unsafe { &mut *value }, now);
            return true;
        }
        // Inserted empty, then counted through the lookup above (on this CPU).
        if SUPPRESSED
            .insert(
                key,
                &RepeatValue::default(),
                aya_ebpf::bindings::BPF_NOEXIST as u64,
            )
            .is_err()
            && SUPPRESSED.get_ptr_mut(key).is_none()
        {
            return false;
        }
    }
    false
}
