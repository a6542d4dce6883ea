//! `cgroup:cgroup_mkdir` / `cgroup_rmdir` on the cgroup2 hierarchy: id and path of every new
//! and removed cgroup (containers among them), reported in the same ring buffer as the events
//! of the processes that will run in it, so the path is known before their first event.

use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::{bpf_ktime_get_boot_ns, bpf_probe_read_kernel_str},
    programs::TracePointContext,
};
use credwatch_common::{CGROUP_PATH_BYTES, CgroupRecord, KIND_CGROUP, RecordHeader, outcome};

use crate::{CGROUP_SCRATCH, stats::count};

// Tracepoint layout (checked against its `format` file by the agent before attaching):
// int root @8, int level @12, u64 id @16, __data_loc char[] path @24.
const ROOT: usize = 8;
const ID: usize = 16;
const PATH_LOC: usize = 24;

pub fn event(ctx: &TracePointContext, probe: u32, event: u32) {
    count(probe, outcome::SEEN);
    // The cgroup2 ("default") hierarchy has id 0; v1 controller hierarchies are not watched.
    if unsafe { ctx.read_at::<i32>(ROOT) }.unwrap_or(-1) != 0 {
        return count(probe, outcome::FILTERED);
    }
    let Some(rec) = CGROUP_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let rec = unsafe { &mut *rec };
    let (Ok(id), Ok(loc)) = (unsafe { ctx.read_at::<u64>(ID) }, unsafe {
        ctx.read_at::<u32>(PATH_LOC)
    }) else {
        return count(probe, outcome::READ_ERROR);
    };
    rec.header = RecordHeader::of::<CgroupRecord>(KIND_CGROUP);
    rec.boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    rec.event = event;
    rec.id = id;
    // __data_loc: offset of the string in the record in the low 16 bits.
    let src = unsafe { (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize) };
    let n = unsafe {
        bpf_probe_read_kernel_str(
            rec.path.as_mut_ptr().cast(),
            CGROUP_PATH_BYTES as u32,
            src.cast(),
        )
    };
    if n <= 0 {
        return count(probe, outcome::READ_ERROR);
    }
    rec.path_len = n as u32 - 1;
    if n as usize >= CGROUP_PATH_BYTES {
        count(probe, outcome::TRUNCATED);
    }
    crate::record::emit(probe, rec);
}
