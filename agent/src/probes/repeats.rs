//! The kernel's per-window counts: repeats of reported credential accesses (the `REPEATS`
//! map, see `ebpf/probes/src/repeats.rs`) and accesses a cgroup's budget cut (`SUPPRESSED`,
//! `budget.rs`). Read once a window is over, then deleted.

use anyhow::{Result, anyhow};
use aya::{
    Pod,
    maps::{MapData, PerCpuHashMap},
};
use credwatch_common::{REPEAT_WINDOW_SHIFT, RepeatKey, RepeatValue, SuppressedKey};

/// Repeats of one access in one window, summed over the CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repeats {
    pub count: u64,
    /// Boot-time ns of the first and the last repeat.
    pub first_ns: u64,
    pub last_ns: u64,
}

/// A key that carries its window.
pub trait Windowed: Pod + Eq + std::hash::Hash {
    fn epoch(&self) -> u32;
}

impl Windowed for RepeatKey {
    fn epoch(&self) -> u32 {
        self.epoch
    }
}

impl Windowed for SuppressedKey {
    fn epoch(&self) -> u32 {
        self.epoch
    }
}

/// One of the per-window, per-CPU count maps.
pub struct WindowCounts<K: Windowed> {
    map: PerCpuHashMap<MapData, K, RepeatValue>,
}

pub type KernelRepeats = WindowCounts<RepeatKey>;
pub type KernelSuppressed = WindowCounts<SuppressedKey>;

/// The window a boot-time instant falls in, as the kernel numbers it.
pub fn epoch_of(boot_ns: u64) -> u32 {
    (boot_ns >> REPEAT_WINDOW_SHIFT) as u32 + 1
}

impl<K: Windowed> WindowCounts<K> {
    pub fn take(ebpf: &mut aya::Ebpf, name: &str) -> Result<Self> {
        let map = ebpf
            .take_map(name)
            .ok_or_else(|| anyhow!("{name} map missing"))?;
        Ok(WindowCounts {
            map: PerCpuHashMap::try_from(map)?,
        })
    }

    /// Entries whose window ended at least one whole window before `now_epoch` (the kernel no
    /// longer touches them), or every entry with `all` (the probes are gone).
    pub fn finished(&self, now_epoch: u32, all: bool) -> Vec<(K, Repeats)> {
        let mut out = Vec::new();
        for key in self.map.keys().filter_map(Result::ok) {
            if !all && key.epoch() + 2 > now_epoch {
                continue;
            }
            let Ok(values) = self.map.get(&key, 0) else {
                continue;
            };
            out.push((key, sum(values.iter())));
        }
        out
    }

    pub fn forget(&mut self, keys: &[K]) {
        for key in keys {
            let _ = self.map.remove(key);
        }
    }
}

fn sum<'a>(per_cpu: impl Iterator<Item = &'a RepeatValue>) -> Repeats {
    let mut total = Repeats {
        count: 0,
        first_ns: u64::MAX,
        last_ns: 0,
    };
    for v in per_cpu.filter(|v| v.count > 0) {
        total.count += v.count;
        total.first_ns = total.first_ns.min(v.first_ns);
        total.last_ns = total.last_ns.max(v.last_ns);
    }
    if total.count == 0 {
        total.first_ns = 0;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_cpus() {
        let v = |count, first_ns, last_ns| RepeatValue {
            count,
            first_ns,
            last_ns,
        };
        let cpus = [v(0, 0, 0), v(3, 20, 50), v(2, 10, 40)];
        assert_eq!(
            sum(cpus.iter()),
            Repeats {
                count: 5,
                first_ns: 10,
                last_ns: 50
            }
        );
        assert_eq!(sum([v(0, 0, 0)].iter()).count, 0);
    }

    #[test]
    fn windows_are_numbered_like_the_kernel() {
        assert_eq!(epoch_of(0), 1);
        assert_eq!(epoch_of((1 << 30) - 1), 1);
        assert_eq!(epoch_of(1 << 30), 2);
    }
}
