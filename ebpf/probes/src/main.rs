//! credwatch kernel programs: file-open syscall tracepoints with an in-kernel credential filter.
//!
//! `sys_exit_*` reads the syscall's arguments from the task's saved registers (or, where that
//! is not available, from what `sys_enter_*` saved per thread), goes from the new fd to the
//! `struct file`, resolves (dev, ino) and the path as the task sees it, and asks three maps that
//! the agent fills from the credential catalogue (secret inodes, path prefixes, reversed path
//! suffixes). Only matches reach the ring buffer; everything is counted in `STATS`.
#![no_std]
#![no_main]
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod budget;
mod cgroup;
mod connect;
mod diag;
mod dns;
mod filter;
mod memory;
mod moves;
mod open;
mod packet;
mod process;
mod record;
mod repeats;
mod requests;
mod stats;
mod uring;
mod vfs;

use aya_ebpf::{
    Global,
    macros::{btf_tracepoint, cgroup_skb, cgroup_sock, cgroup_sock_addr, map, tracepoint},
    maps::{HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{
        BtfTracePointContext, SkBuffContext, SockAddrContext, SockContext, TracePointContext,
    },
};
use credwatch_common::{
    Budget, CgroupRecord, DirKey, DirVerdict, DnsRecord, EndpointValue, FileKey, InodeKey,
    IoUringOffsets, KernelOffsets, LeafKeyData, LearnedKey, NAMED_PORT_SLOTS, PathKeyData,
    ProcessRecord, REPEAT_ENTRIES, RepeatKey, RepeatValue, RequestRecord, STATS_ENTRIES,
    SUPPRESSED_ENTRIES, SuppressedKey, cgroup_event, filter_epoch, probe,
};

/// Filled by the agent from `/sys/kernel/btf/vmlinux` before load.
#[unsafe(no_mangle)]
static OFFSETS: Global<KernelOffsets> = Global::new(unsafe { core::mem::zeroed() });
/// The agent's own pid: its file opens are not reported.
#[unsafe(no_mangle)]
static AGENT_TGID: Global<u32> = Global::new(0);
/// io_uring's request layout, filled by the agent from BTF (`valid` = 0: not known).
#[unsafe(no_mangle)]
static URING_OFFSETS: Global<IoUringOffsets> = Global::new(unsafe { core::mem::zeroed() });
/// Each cgroup's record budget (zero: none), set by the agent.
#[unsafe(no_mangle)]
static BUDGET: Global<Budget> = Global::new(Budget {
    cost_ns: 0,
    cap_ns: 0,
    dns_cap_ns: 0,
});
/// Number of possible CPUs, for finding a slot left on another CPU.
#[unsafe(no_mangle)]
static NR_CPUS: Global<u32> = Global::new(1);

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);
#[map(name = "STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STATS_ENTRIES, 0);
#[map(name = "SECRET_INODES")]
static SECRET_INODES: HashMap<InodeKey, u32> = HashMap::with_max_entries(65536, 0);
#[map(name = "PATH_PREFIXES")]
static PATH_PREFIXES: LpmTrie<PathKeyData, u32> = LpmTrie::with_max_entries(4096, 0);
#[map(name = "PATH_SUFFIXES")]
static PATH_SUFFIXES: LpmTrie<PathKeyData, u32> = LpmTrie::with_max_entries(4096, 0);
/// The cheap checks that spare most opens the path walk (see `filter.rs`): the file-name
/// ends of the suffix keys, the directories above each prefix key, what was decided per
/// directory and per file, and the generation of the keys (and secret inodes) those decisions
/// were made with.
#[map(name = "LEAF_SUFFIXES")]
static LEAF_SUFFIXES: LpmTrie<LeafKeyData, u32> = LpmTrie::with_max_entries(4096, 0);
#[map(name = "DIR_PREFIXES")]
static DIR_PREFIXES: LpmTrie<PathKeyData, u32> = LpmTrie::with_max_entries(16384, 0);
#[map(name = "DIR_VERDICTS")]
static DIR_VERDICTS: LruHashMap<DirKey, DirVerdict> = LruHashMap::with_max_entries(16384, 0);
/// Opened files found not to be credentials (value: the epoch of that decision).
#[map(name = "FILE_VERDICTS")]
static FILE_VERDICTS: LruHashMap<FileKey, u64> = LruHashMap::with_max_entries(32768, 0);
#[map(name = "FILTER_EPOCH")]
static FILTER_EPOCH: aya_ebpf::maps::Array<u64> =
    aya_ebpf::maps::Array::with_max_entries(filter_epoch::SLOTS, 0);
/// Threads inside a rename or a mount change (see `moves.rs`).
/// When each CPU last printed a diagnostic (`diag.rs`).
#[map(name = "DIAG_LAST")]
static DIAG_LAST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "MOVES_PENDING")]
static MOVES_PENDING: LruHashMap<u64, u8> = LruHashMap::with_max_entries(16384, 0);
/// Arguments saved at syscall entry (see `open::enter`): one slot per CPU, and a hash for the
/// rare open that is still blocked when the next one on its CPU begins. The exit tracepoint
/// runs even when a signal ends the syscall, so entries are always taken back out.
#[map(name = "PENDING_SLOT")]
static PENDING_SLOT: PerCpuArray<open::PendingOpen> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "PENDING_SPILL")]
static PENDING_SPILL: HashMap<u64, open::PendingOpen> = HashMap::with_max_entries(16384, 0);
/// Credential endpoint addresses (v6, IPv4 mapped), filled from the catalogue.
#[map(name = "ENDPOINTS")]
static ENDPOINTS: LpmTrie<[u8; 16], EndpointValue> = LpmTrie::with_max_entries(4096, 0);
/// Addresses learned from each cgroup's own DNS answers, filled by the agent.
#[map(name = "LEARNED_ENDPOINTS")]
static LEARNED_ENDPOINTS: HashMap<LearnedKey, EndpointValue> = HashMap::with_max_entries(8192, 0);
/// Ports of host-name endpoints (0 = unused slot), filled by the agent.
#[map(name = "NAMED_PORTS")]
static NAMED_PORTS: aya_ebpf::maps::Array<u16> =
    aya_ebpf::maps::Array::with_max_entries(NAMED_PORT_SLOTS, 0);
/// Threads inside connect(2) (pid_tgid → what the cgroup hook found), see `connect.rs`. LRU so
/// that a mark whose exit never ran (probes attached mid-syscall) cannot fill it.
#[map(name = "CONNECTS")]
static CONNECTS: LruHashMap<u64, connect::InConnect> = LruHashMap::with_max_entries(16384, 0);

/// Threads inside ptrace / process_vm_readv / process_vm_writev (see `memory.rs`).
#[map(name = "MEMORY_CALLS")]
static MEMORY_CALLS: LruHashMap<u64, memory::InMemoryCall> = LruHashMap::with_max_entries(4096, 0);
/// io_uring open requests between submission and completion (see `uring.rs`).
#[map(name = "URING_OPENS")]
static URING_OPENS: LruHashMap<u64, open::UringOpen> = LruHashMap::with_max_entries(1024, 0);
/// Per-CPU working memory for an io_uring open request (too large for the stack).
#[map(name = "URING_SCRATCH")]
static URING_SCRATCH: PerCpuArray<open::UringOpen> = PerCpuArray::with_max_entries(1, 0);
/// When each cgroup last received a DNS answer (boot ns).
#[map(name = "DNS_RECENT")]
static DNS_RECENT: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);
/// Per-CPU working memory for DNS records.
#[map(name = "DNS_SCRATCH")]
static DNS_SCRATCH: PerCpuArray<DnsRecord> = PerCpuArray::with_max_entries(1, 0);
/// Connections whose payloads are inspected (socket cookie → progress), see `requests.rs`.
/// LRU: a closed connection's entry makes room. Large (~2.5 MiB), because a container that
/// pushed another's watched connection out would hide that connection's later requests: each
/// watched connect takes from its container's record budget (burst 10,000, then 1,000/s), so
/// evicting from 32,768 takes a sustained, recorded flood of tens of seconds.
const INSPECTED_SOCKETS: u32 = 32_768;
#[map(name = "INSPECTED")]
static INSPECTED: LruHashMap<u64, requests::Inspected> =
    LruHashMap::with_max_entries(INSPECTED_SOCKETS, 0);
/// How many entries `INSPECTED` holds, or more (never fewer): while it is 0, the egress
/// program lets every packet through after one array load (`requests.rs`).
#[map(name = "INSPECTING")]
static INSPECTING: aya_ebpf::maps::Array<i64> = aya_ebpf::maps::Array::with_max_entries(1, 0);
/// Per-CPU working memory for request records.
#[map(name = "REQUEST_SCRATCH")]
static REQUEST_SCRATCH: PerCpuArray<RequestRecord> = PerCpuArray::with_max_entries(1, 0);
/// Per-CPU working memory for cgroup records.
#[map(name = "CGROUP_SCRATCH")]
static CGROUP_SCRATCH: PerCpuArray<CgroupRecord> = PerCpuArray::with_max_entries(1, 0);
/// Per-CPU working memory for process records.
#[map(name = "PROCESS_SCRATCH")]
static PROCESS_SCRATCH: PerCpuArray<ProcessRecord> = PerCpuArray::with_max_entries(1, 0);
/// Repeats of credential accesses per window (see `repeats.rs`), per CPU so counting needs no
/// atomics; the agent sums the CPUs, reports and deletes the entries of finished windows.
#[map(name = "REPEATS")]
static REPEATS: PerCpuHashMap<RepeatKey, RepeatValue> =
    PerCpuHashMap::with_max_entries(REPEAT_ENTRIES, 0);
/// Each cgroup's remaining record budget (see `budget.rs`). LRU: a cgroup that is gone makes
/// room; one evicted while active only starts again with a full bucket.
#[map(name = "BUCKETS")]
static BUCKETS: LruHashMap<u64, budget::Bucket> = LruHashMap::with_max_entries(16384, 0);
/// Accesses cut by a cgroup's budget, per catalogue entry and window, per CPU; the agent
/// reports and deletes finished windows.
#[map(name = "SUPPRESSED")]
static SUPPRESSED: PerCpuHashMap<SuppressedKey, RepeatValue> =
    PerCpuHashMap::with_max_entries(SUPPRESSED_ENTRIES, 0);
/// Per-CPU working memory: far too large for the 512-byte BPF stack.
#[map(name = "SCRATCH")]
static SCRATCH: PerCpuArray<open::Scratch> = PerCpuArray::with_max_entries(1, 0);
/// Where the path walk assembles a path (`vfs::Walk`).
#[map(name = "WALK")]
static WALK: PerCpuArray<vfs::Walk> = PerCpuArray::with_max_entries(1, 0);

// Syscall tracepoint layout: 8-byte common header, `int __syscall_nr` padded to 8, then each
// argument (or the return value) as 8 bytes. The agent checks this against the tracepoint
// `format` files before attaching.
const ARG0: usize = 16;
const ARG1: usize = 24;
const ARG2: usize = 32;
const RET: usize = 16;

/// A syscall exit's return value: a load from the tracepoint's record, which the verifier
/// allows directly (no `bpf_probe_read` call, as `read_at` makes).
#[inline(always)]
fn syscall_ret(ctx: &TracePointContext) -> i64 {
    use aya_ebpf::EbpfContext as _;
    unsafe { core::ptr::read_volatile((ctx.as_ptr() as *const u8).add(RET) as *const i64) }
}

#[inline(always)]
fn arg(ctx: &TracePointContext, offset: usize) -> u64 {
    unsafe { ctx.read_at::<u64>(offset) }.unwrap_or(0)
}

#[tracepoint(category = "syscalls", name = "sys_enter_open")]
pub fn sys_enter_open(ctx: TracePointContext) -> u32 {
    open::enter(
        probe::OPEN,
        open::AT_FDCWD,
        arg(&ctx, ARG0),
        arg(&ctx, ARG1) as u32,
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_openat")]
pub fn sys_enter_openat(ctx: TracePointContext) -> u32 {
    open::enter(
        probe::OPENAT,
        arg(&ctx, ARG0) as i32,
        arg(&ctx, ARG1),
        arg(&ctx, ARG2) as u32,
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_openat2")]
pub fn sys_enter_openat2(ctx: TracePointContext) -> u32 {
    // `struct open_how` starts with `__u64 flags`; all O_* flags fit in its low 32 bits.
    let how = arg(&ctx, ARG2);
    let flags = unsafe { aya_ebpf::helpers::bpf_probe_read_user(how as *const u64) }.unwrap_or(0);
    open::enter(
        probe::OPENAT2,
        arg(&ctx, ARG0) as i32,
        arg(&ctx, ARG1),
        flags as u32,
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_creat")]
pub fn sys_enter_creat(ctx: TracePointContext) -> u32 {
    open::enter(
        probe::CREAT,
        open::AT_FDCWD,
        arg(&ctx, ARG0),
        open::CREAT_FLAGS,
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_open_by_handle_at")]
pub fn sys_enter_open_by_handle_at(ctx: TracePointContext) -> u32 {
    // No path: the file is named by a handle relative to a mount fd.
    open::enter(
        probe::OPEN_BY_HANDLE_AT,
        arg(&ctx, ARG0) as i32,
        0,
        arg(&ctx, ARG2) as u32,
    );
    0
}

macro_rules! exit_program {
    ($fn_name:ident, $tp:literal, $probe:expr) => {
        #[tracepoint(category = "syscalls", name = $tp)]
        pub fn $fn_name(ctx: TracePointContext) -> u32 {
            open::exit($probe, syscall_ret(&ctx));
            0
        }
    };
}

exit_program!(sys_exit_open, "sys_exit_open", probe::OPEN);
exit_program!(sys_exit_openat, "sys_exit_openat", probe::OPENAT);
exit_program!(sys_exit_openat2, "sys_exit_openat2", probe::OPENAT2);
exit_program!(sys_exit_creat, "sys_exit_creat", probe::CREAT);
exit_program!(
    sys_exit_open_by_handle_at,
    "sys_exit_open_by_handle_at",
    probe::OPEN_BY_HANDLE_AT
);

#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> i32 {
    process::fork(&ctx);
    0
}

#[btf_tracepoint(function = "sched_process_exec")]
pub fn sched_process_exec(ctx: BtfTracePointContext) -> i32 {
    process::exec(&ctx);
    0
}

#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(ctx: BtfTracePointContext) -> i32 {
    process::exit(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_connect")]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    connect::enter(arg(&ctx, ARG1));
    0
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    connect::hook4(&ctx);
    1
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    connect::hook6(&ctx);
    1
}

#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    connect::exit(arg(&ctx, RET) as i64);
    0
}

// Another process's memory: rare syscalls, enter+exit.
#[tracepoint(category = "syscalls", name = "sys_enter_ptrace")]
pub fn sys_enter_ptrace(ctx: TracePointContext) -> u32 {
    // ptrace(request, pid, addr, data)
    memory::enter(
        credwatch_common::memory_syscall::PTRACE,
        arg(&ctx, ARG1),
        arg(&ctx, ARG0),
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_ptrace")]
pub fn sys_exit_ptrace(ctx: TracePointContext) -> u32 {
    memory::exit(arg(&ctx, RET) as i64);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_process_vm_readv")]
pub fn sys_enter_process_vm_readv(ctx: TracePointContext) -> u32 {
    // process_vm_readv(pid, local_iov, liovcnt, remote_iov, riovcnt, flags)
    memory::enter(
        credwatch_common::memory_syscall::PROCESS_VM_READV,
        arg(&ctx, ARG0),
        0,
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_process_vm_readv")]
pub fn sys_exit_process_vm_readv(ctx: TracePointContext) -> u32 {
    memory::exit(arg(&ctx, RET) as i64);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_process_vm_writev")]
pub fn sys_enter_process_vm_writev(ctx: TracePointContext) -> u32 {
    memory::enter(
        credwatch_common::memory_syscall::PROCESS_VM_WRITEV,
        arg(&ctx, ARG0),
        0,
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_process_vm_writev")]
pub fn sys_exit_process_vm_writev(ctx: TracePointContext) -> u32 {
    memory::exit(arg(&ctx, RET) as i64);
    0
}

#[cgroup_skb(ingress)]
pub fn dns_answers(ctx: SkBuffContext) -> i32 {
    dns::ingress(&ctx);
    1
}

#[cgroup_skb(egress)]
pub fn endpoint_requests(ctx: SkBuffContext) -> i32 {
    requests::egress(&ctx);
    1
}

/// A socket is released: a connection still being inspected will send nothing more.
#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    requests::released(&ctx);
    1
}

// io_uring: raw (BTF) tracepoints, which hand over the kernel's pointers; a perf tracepoint
// would first build its trace record (with the opcode's name) on every request.
#[btf_tracepoint(function = "io_uring_submit_req")]
pub fn io_uring_submit_req(ctx: BtfTracePointContext) -> i32 {
    uring::submit(ctx.arg(0));
    0
}

/// (ctx, req, cqe); the agent checks the prototype in BTF.
#[btf_tracepoint(function = "io_uring_complete")]
pub fn io_uring_complete(ctx: BtfTracePointContext) -> i32 {
    uring::complete(ctx.arg(1), ctx.arg(2));
    0
}

#[tracepoint(category = "cgroup", name = "cgroup_mkdir")]
pub fn cgroup_mkdir(ctx: TracePointContext) -> u32 {
    cgroup::event(&ctx, probe::CGROUP_MKDIR, cgroup_event::MKDIR);
    0
}

#[tracepoint(category = "cgroup", name = "cgroup_rmdir")]
pub fn cgroup_rmdir(ctx: TracePointContext) -> u32 {
    cgroup::event(&ctx, probe::CGROUP_RMDIR, cgroup_event::RMDIR);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

// Moves in the file tree (`moves.rs`): every rename and mount change, at its start and end.

#[tracepoint(category = "syscalls", name = "sys_enter_rename")]
pub fn sys_enter_rename(_ctx: TracePointContext) -> u32 {
    moves::enter();
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_rename")]
pub fn sys_exit_rename(_ctx: TracePointContext) -> u32 {
    moves::exit();
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_renameat")]
pub fn sys_enter_renameat(_ctx: TracePointContext) -> u32 {
    moves::enter();
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_renameat")]
pub fn sys_exit_renameat(_ctx: TracePointContext) -> u32 {
    moves::exit();
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_renameat2")]
pub fn sys_enter_renameat2(_ctx: TracePointContext) -> u32 {
    moves::enter();
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_renameat2")]
pub fn sys_exit_renameat2(_ctx: TracePointContext) -> u32 {
    moves::exit();
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_mount")]
pub fn sys_enter_mount(_ctx: TracePointContext) -> u32 {
    moves::enter();
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_mount")]
pub fn sys_exit_mount(_ctx: TracePointContext) -> u32 {
    moves::exit();
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_move_mount")]
pub fn sys_enter_move_mount(_ctx: TracePointContext) -> u32 {
    moves::enter();
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_move_mount")]
pub fn sys_exit_move_mount(_ctx: TracePointContext) -> u32 {
    moves::exit();
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_umount")]
pub fn sys_enter_umount(_ctx: TracePointContext) -> u32 {
    moves::enter();
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_umount")]
pub fn sys_exit_umount(_ctx: TracePointContext) -> u32 {
    moves::exit();
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_pivot_root")]
pub fn sys_enter_pivot_root(_ctx: TracePointContext) -> u32 {
    moves::enter();
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_pivot_root")]
pub fn sys_exit_pivot_root(_ctx: TracePointContext) -> u32 {
    moves::exit();
    0
}
