//! The kernel's per-window counts: repeats of reported credential accesses (the `REPEATS`
//! map, see `ebpf/probes/src/repeats.rs`) and accesses a cgroup's budget cut (`SUPPRESSED`,
//! `budget.rs`). Read once a window is over, then deleted.

use std::os::fd::AsFd as _;

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
    /// The same map, for the batch reads and deletes aya has no call for.
    fd: std::os::fd::OwnedFd,
    /// Possible CPUs: a per-CPU value is one slot per possible CPU.
    nr_cpus: usize,
    /// Whether this kernel does batch operations on the map (5.6+); else key by key.
    batch: bool,
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
        let aya::maps::Map::PerCpuHashMap(data) = &map else {
            return Err(anyhow!("{name} is not a per-CPU hash"));
        };
        let fd = data.fd().as_fd().try_clone_to_owned()?;
        let nr_cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        Ok(WindowCounts {
            map: PerCpuHashMap::try_from(map)?,
            fd,
            nr_cpus,
            batch: true,
        })
    }

    /// Entries whose window ended at least one whole window before `now_epoch` (the kernel no
    /// longer touches them), or every entry with `all` (the probes are gone), summed over the
    /// CPUs. Read every 500 ms: in batches where the kernel can (a few syscalls for thousands
    /// of entries; key by key it is two per entry, and a sweep of 20,000 distinct files made
    /// that a quarter of the agent's CPU).
    pub fn finished(&mut self, now_epoch: u32, all: bool) -> Vec<(K, Repeats)> {
        let is_finished = |key: &K| all || key.epoch() + 2 <= now_epoch;
        if self.batch {
            match batch::lookup_all::<K>(&self.fd, self.nr_cpus) {
                Ok(entries) => {
                    return entries
                        .into_iter()
                        .filter(|(key, _)| is_finished(key))
                        .map(|(key, values)| (key, sum(values.iter())))
                        .collect();
                }
                Err(err) => {
                    log::info!("kernel counts: no batch reads ({err}); reading key by key");
                    self.batch = false;
                }
            }
        }
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
        if self.batch && batch::delete(&self.fd, keys).is_ok() {
            return;
        }
        for key in keys {
            let _ = self.map.remove(key);
        }
    }
}

/// `BPF_MAP_LOOKUP_BATCH` and `BPF_MAP_DELETE_BATCH` (kernel 5.6+) through bpf(2): aya 0.14
/// has no batch operations.
mod batch {
    use std::{
        io,
        os::fd::{AsRawFd as _, OwnedFd},
    };

    use aya::Pod;
    use credwatch_common::RepeatValue;

    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
    /// Entries per syscall.
    const BATCH: usize = 1024;

    /// `union bpf_attr`'s `batch` member (the layout is kernel ABI).
    #[repr(C)]
    #[derive(Default)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }

    fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
        // SAFETY: `attr` is a valid `bpf_attr` prefix of the size passed; the buffers it
        // points to are sized for `count` entries by the callers.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Every key with its per-CPU values.
    pub fn lookup_all<K: Pod>(
        fd: &OwnedFd,
        nr_cpus: usize,
    ) -> io::Result<Vec<(K, Vec<RepeatValue>)>> {
        let key_size = std::mem::size_of::<K>();
        // The kernel lays each per-CPU value out in 8-byte-aligned slots.
        let slot = std::mem::size_of::<RepeatValue>().next_multiple_of(8);
        let mut keys = vec![0u8; BATCH * key_size];
        let mut values = vec![0u8; BATCH * nr_cpus * slot];
        // Opaque position tokens (a bucket index for hashes).
        let (mut token_in, mut token_out) = (0u64, 0u64);
        let mut first = true;
        let mut out = Vec::new();
        loop {
            let mut attr = BatchAttr {
                in_batch: if first {
                    0
                } else {
                    &token_in as *const u64 as u64
                },
                out_batch: &mut token_out as *mut u64 as u64,
                keys: keys.as_mut_ptr() as u64,
                values: values.as_mut_ptr() as u64,
                count: BATCH as u32,
                map_fd: fd.as_raw_fd() as u32,
                ..Default::default()
            };
            let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
            let got = (attr.count as usize).min(BATCH);
            for i in 0..got {
                // SAFETY: the kernel wrote `got` keys of K's size; K is plain data.
                let key: K =
                    unsafe { std::ptr::read_unaligned(keys[i * key_size..].as_ptr().cast()) };
                let per_cpu = (0..nr_cpus)
                    .map(|cpu| {
                        let at = (i * nr_cpus + cpu) * slot;
                        // SAFETY: as above; RepeatValue is plain data.
                        unsafe { std::ptr::read_unaligned(values[at..].as_ptr().cast()) }
                    })
                    .collect();
                out.push((key, per_cpu));
            }
            match result {
                Ok(()) => {}
                // The last batch (possibly empty).
                Err(err) if err.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
                Err(err) => return Err(err),
            }
            token_in = token_out;
            first = false;
        }
    }

    /// Deletes `keys`.
    pub fn delete<K: Pod>(fd: &OwnedFd, keys: &[K]) -> io::Result<()> {
        for chunk in keys.chunks(BATCH) {
            let mut attr = BatchAttr {
                keys: chunk.as_ptr() as u64,
                count: chunk.len() as u32,
                map_fd: fd.as_raw_fd() as u32,
                ..Default::default()
            };
            match bpf(BPF_MAP_DELETE_BATCH, &mut attr) {
                Ok(()) => {}
                // A key already gone stops the batch there (`count` = keys deleted before
                // it): go on after it.
                Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {
                    let done = attr.count as usize + 1;
                    if done < chunk.len() {
                        delete(fd, &chunk[done..])?;
                    }
                }
                Err(err) => return Err(err),
            }
        }
        Ok(())
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
