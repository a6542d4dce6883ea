//! Types and limits shared by the kernel programs (`credwatch-probes`) and the agent.
//!
//! Everything that crosses the kernel/user boundary is `#[repr(C)]`, fixed-size and has explicit
//! padding, so both sides agree on the layout without trusting the compiler. Discriminants are
//! plain integers: the agent maps them with `TryFrom` and never transmutes raw bytes into enums or
//! `bool`s.
#![no_std]

/// Version of the wire records. Bump on any layout change.
pub const WIRE_VERSION: u16 = 5;

/// Record kinds (the `kind` field of [`RecordHeader`]).
pub const KIND_FILE_OPEN: u16 = 1;
pub const KIND_PROCESS: u16 = 2;
pub const KIND_CGROUP: u16 = 3;
pub const KIND_CONNECT: u16 = 4;
pub const KIND_DNS: u16 = 5;
pub const KIND_MEMORY: u16 = 6;
pub const KIND_REQUEST: u16 = 7;

/// Bytes kept of a DNS response: the EDNS buffer size resolvers use by default (DNS Flag Day
/// 2020), so answers with several records and a CNAME chain fit.
pub const DNS_BYTES: usize = 1232;

/// Bytes kept of each payload sent on an inspected connection (a request line and its first
/// headers, a ClientHello segment; longer ones are cut).
pub const REQUEST_BYTES: usize = 2048;
/// Payloads inspected per connection. The one that reaches it is marked
/// [`request_flag::LAST`]: the agent records the connection, since later requests go unseen.
pub const REQUEST_SEGMENTS: u32 = 32;
/// Payloads read of a TLS connection a ClientHello may name: a post-quantum key share makes a
/// ClientHello ~1.8 KB, which can arrive in two.
pub const TLS_SEGMENTS: u32 = 2;
/// [`ConnectRecord::endpoint`] of a connect to an address nothing names, on a host-name
/// endpoint's port: its TLS ClientHello may name it.
pub const SNI_CANDIDATE: u32 = u32::MAX;
/// [`EndpointValue::id`] (and `ConnectRecord::endpoint`) of an HTTP proxy containers are
/// configured with: its connections' requests name the real target.
pub const PROXY_ENDPOINT: u32 = u32::MAX - 1;

/// Ports kept per catalogue endpoint in the kernel's address map (0 entries = any port).
pub const ENDPOINT_PORTS: usize = 8;
/// Ports of the catalogue's host-name endpoints (slots of the NAMED_PORTS array).
pub const NAMED_PORT_SLOTS: u32 = 16;
/// How long after a DNS answer a cgroup's connects to those ports still reach userspace when
/// the address is not (yet) in the endpoint map: the agent learns answers asynchronously.
pub const DNS_GRACE_NS: u64 = 2_000_000_000;

/// Bytes kept of a cgroup path.
pub const CGROUP_PATH_BYTES: usize = 512;

/// Bytes kept of a new program's path and of its argv (NUL-separated).
pub const FILENAME_BYTES: usize = 256;
pub const ARGS_BYTES: usize = 1024;

/// Bytes kept of the path the process passed to the syscall.
pub const RAW_PATH_BYTES: usize = 1024;
/// Bytes kept of the resolved path (PATH_MAX).
pub const PATH_BYTES: usize = 4096;
/// Longest key an LPM trie accepts (the kernel's LPM_DATA_SIZE_MAX).
pub const PATH_KEY_BYTES: usize = 256;
/// How many dentries and mount crossings the kernel walks before it gives up and records the
/// path as truncated (the tail it has is still reported).
pub const MAX_PATH_STEPS: u32 = 40;

/// Map names, shared so a rename cannot silently break the agent.
pub mod maps {
    pub const EVENTS: &str = "EVENTS";
    pub const STATS: &str = "STATS";
    pub const SECRET_INODES: &str = "SECRET_INODES";
    pub const PATH_PREFIXES: &str = "PATH_PREFIXES";
    pub const PATH_SUFFIXES: &str = "PATH_SUFFIXES";
    pub const ENDPOINTS: &str = "ENDPOINTS";
    pub const NAMED_PORTS: &str = "NAMED_PORTS";
    pub const LEARNED_ENDPOINTS: &str = "LEARNED_ENDPOINTS";
    pub const REPEATS: &str = "REPEATS";
    pub const SUPPRESSED: &str = "SUPPRESSED";
    pub const INSPECTED: &str = "INSPECTED";
    pub const LEAF_SUFFIXES: &str = "LEAF_SUFFIXES";
    pub const DIR_PREFIXES: &str = "DIR_PREFIXES";
    pub const FILTER_EPOCH: &str = "FILTER_EPOCH";
    pub const INSPECTING: &str = "INSPECTING";
}

/// Names of the load-time globals the agent sets.
pub mod globals {
    pub const OFFSETS: &str = "OFFSETS";
    pub const AGENT_TGID: &str = "AGENT_TGID";
    pub const NR_CPUS: &str = "NR_CPUS";
    pub const URING_OFFSETS: &str = "URING_OFFSETS";
    pub const BUDGET: &str = "BUDGET";
}

/// The probes, in the order of the stats map rows: the file-open syscalls, then the process
/// lifecycle tracepoints.
pub mod probe {
    pub const OPEN: u32 = 0;
    pub const OPENAT: u32 = 1;
    pub const OPENAT2: u32 = 2;
    pub const CREAT: u32 = 3;
    pub const OPEN_BY_HANDLE_AT: u32 = 4;
    pub const EXEC: u32 = 5;
    pub const FORK: u32 = 6;
    pub const EXIT: u32 = 7;
    pub const CGROUP_MKDIR: u32 = 8;
    pub const CGROUP_RMDIR: u32 = 9;
    pub const CONNECT: u32 = 10;
    pub const DNS: u32 = 11;
    /// Connects outside connect(2) (io_uring, TCP Fast Open), seen by `cgroup/connect4|6`.
    pub const CGROUP_CONNECT: u32 = 12;
    /// IORING_OP_OPENAT/OPENAT2 through io_uring (no syscall of their own).
    pub const IO_URING_OPEN: u32 = 13;
    /// Another process's memory: ptrace attach/seize, process_vm_readv/writev.
    pub const PROCESS_MEMORY: u32 = 14;
    /// What is sent on connections to endpoints whose requests are inspected (cgroup_skb
    /// egress on the cgroup2 root).
    pub const ENDPOINT_REQUEST: u32 = 15;
    /// Renames and mounts that can move a directory under a prefix key (see `filter_epoch`).
    pub const TREE_MOVE: u32 = 16;
    pub const COUNT: u32 = 17;
    /// Names as used in metrics and log records (`sys_` dropped).
    pub const NAMES: [&str; COUNT as usize] = [
        "open",
        "openat",
        "openat2",
        "creat",
        "open_by_handle_at",
        "sched_process_exec",
        "sched_process_fork",
        "sched_process_exit",
        "cgroup_mkdir",
        "cgroup_rmdir",
        "connect",
        "dns",
        "cgroup_connect",
        "io_uring_open",
        "process_memory",
        "endpoint_request",
        "tree_move",
    ];
}

/// A cgroup v2 directory was created or removed. The path travels in the record, so a
/// container that is gone before the agent looks is still known by its cgroup path.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CgroupRecord {
    pub header: RecordHeader,
    pub boot_ns: u64,
    /// 1 = mkdir, 2 = rmdir.
    pub event: u32,
    pub path_len: u32,
    pub id: u64,
    /// The path below the cgroup2 root ("/system.slice/x.scope").
    pub path: [u8; CGROUP_PATH_BYTES],
}

/// [`CgroupRecord::event`] values (not the probe ids `probe::CGROUP_MKDIR`/`RMDIR`).
pub mod cgroup_event {
    pub const MKDIR: u32 = 1;
    pub const RMDIR: u32 = 2;
}

/// Who made a syscall, and when: the same block after the header of every record of one (a
/// file open, a connect, a memory access), filled by one kernel helper (`record::identify`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TaskIdentity {
    /// `bpf_ktime_get_boot_ns()` at syscall exit.
    pub boot_ns: u64,
    /// Thread-group id (the userspace pid) and thread id, as seen from the host.
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    /// cgroup v2 id (inode number of the cgroup directory).
    pub cgroup_id: u64,
    /// The task's `start_boottime`, which identifies the process together with `pid`.
    pub start_boottime: u64,
    pub comm: [u8; 16],
}

/// A `connect()` to an address (and port) of a catalogue endpoint.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ConnectRecord {
    pub header: RecordHeader,
    pub task: TaskIdentity,
    /// 0, or -errno (-EINPROGRESS for a non-blocking connect in progress).
    pub result: i64,
    /// AF_INET or AF_INET6 as the process asked.
    pub family: u16,
    /// Host byte order.
    pub port: u16,
    /// The endpoint map's value (catalogue endpoint index + 1), or 0: not in the map, but the
    /// cgroup received a DNS answer just before (the agent decides from what it learned).
    pub endpoint: u32,
    /// Which program saw it (`connect_source`).
    pub source: u32,
    pub _pad: u32,
    /// IPv6, or IPv4 mapped into IPv6 (::ffff:a.b.c.d).
    pub addr: [u8; 16],
    /// The socket's cookie (0: not known, the cgroup hook did not run): names the connection
    /// in [`RequestRecord`]s.
    pub cookie: u64,
}

/// A payload sent on a connection to an endpoint whose requests are inspected (instance
/// metadata and the other plain-HTTP credential services): its first bytes, for the agent to
/// read the request line. Nothing else about the connection is repeated: the connect record
/// with the same cookie came first.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RequestRecord {
    pub header: RecordHeader,
    pub boot_ns: u64,
    pub cookie: u64,
    /// cgroup of the sending socket.
    pub cgroup_id: u64,
    /// Bytes used in `data`.
    pub len: u32,
    /// The payload's whole length (more than `len` when cut).
    pub payload_len: u32,
    /// `request_flag` bits.
    pub flags: u32,
    pub _pad: u32,
    pub data: [u8; REQUEST_BYTES],
}

/// Bytes of a [`RequestRecord`] before `data`: it leaves the kernel at this plus `len`.
pub const REQUEST_FIXED_BYTES: usize = core::mem::offset_of!(RequestRecord, data);

/// Bits of [`RequestRecord::flags`].
pub mod request_flag {
    /// The connection's last inspected payload ([`super::REQUEST_SEGMENTS`]).
    pub const LAST: u32 = 1;
    /// The segment carries urgent data (the receiver may take a byte out of the stream): what
    /// was copied is not what the server reads.
    pub const URGENT: u32 = 2;
    /// The payload could not be located (IPv6 extension headers): nothing was copied.
    pub const UNPARSED: u32 = 4;
}

/// Bits of [`EndpointValue::flags`].
pub mod endpoint_flag {
    /// What connections to it send is inspected (the catalogue lists `httpPaths`).
    pub const INSPECT_REQUESTS: u32 = 1;
    /// The connection's TLS ClientHello is read for its server name.
    pub const INSPECT_TLS: u32 = 2;
}

/// A syscall that reaches into another process's memory (ATT&CK T1003.007): `ptrace`
/// PTRACE_ATTACH or PTRACE_SEIZE (every later peek goes through that attachment), or
/// `process_vm_readv` / `process_vm_writev`. The target is the pid as the caller named it (in
/// its own pid namespace); the agent resolves it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct MemoryRecord {
    pub header: RecordHeader,
    pub task: TaskIdentity,
    /// The syscall's return value (-errno on failure).
    pub result: i64,
    /// The ptrace request (0 for process_vm_*).
    pub request: u64,
    pub target: u32,
    /// `memory_syscall`.
    pub syscall: u32,
}

pub mod memory_syscall {
    pub const PTRACE: u32 = 1;
    pub const PROCESS_VM_READV: u32 = 2;
    pub const PROCESS_VM_WRITEV: u32 = 3;
    /// The ptrace requests that start access to another process (linux/ptrace.h).
    pub const PTRACE_ATTACH: u64 = 16;
    pub const PTRACE_SEIZE: u64 = 0x4206;
}

/// Where a connect was seen.
pub mod connect_source {
    /// connect(2): the record carries its result.
    pub const SYSCALL: u32 = 0;
    /// A `cgroup/connect4|6` hook outside connect(2) (io_uring, TCP Fast Open): the connect
    /// is about to be attempted, so there is no result.
    pub const CGROUP_HOOK: u32 = 1;
}

/// A DNS response (UDP from port 53) received by a process, for learning which addresses
/// catalogue host names resolve to.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DnsRecord {
    pub header: RecordHeader,
    pub boot_ns: u64,
    /// cgroup of the receiving socket.
    pub cgroup_id: u64,
    /// Bytes used in `data` (the DNS message; cut at DNS_BYTES).
    pub len: u32,
    pub _pad: u32,
    pub data: [u8; DNS_BYTES],
}

/// Bytes of a [`DnsRecord`] before `data`: it leaves the kernel at this plus `len`.
pub const DNS_FIXED_BYTES: usize = core::mem::offset_of!(DnsRecord, data);

/// Value of the endpoint LPM trie (keys: 128-bit IPv6 or v4-mapped prefixes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointValue {
    /// Catalogue endpoint index + 1.
    pub id: u32,
    /// How many of `ports` are used; 0 = any port.
    pub port_count: u32,
    pub ports: [u16; ENDPOINT_PORTS],
    /// `endpoint_flag` bits.
    pub flags: u32,
    pub _pad: u32,
}

/// Key of the learned-endpoint map: an address that DNS answers received by one cgroup gave
/// for a catalogue host name (IPv4 mapped into IPv6). Learning is per cgroup because cloud
/// APIs share front-end addresses: another container's connect to the same address may be a
/// different service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LearnedKey {
    pub cgroup_id: u64,
    pub addr: [u8; 16],
}

/// Values of [`ProcessRecord::event`].
pub mod process_event {
    pub const EXEC: u32 = 1;
    pub const FORK: u32 = 2;
    pub const EXIT: u32 = 3;
}

/// Columns of the per-CPU stats map: `STATS[probe * outcome::COUNT + outcome]`.
pub mod outcome {
    /// Every completed syscall the probe saw (the agent's own excluded).
    pub const SEEN: u32 = 0;
    /// Decided in the kernel that it cannot be credential access; never left the kernel.
    pub const FILTERED: u32 = 1;
    /// Written to the ring buffer.
    pub const EMITTED: u32 = 2;
    /// A match that could not be written (ring buffer full).
    pub const LOST: u32 = 3;
    /// The path walk hit its bound; the record carries the tail.
    pub const TRUNCATED: u32 = 4;
    /// A kernel or user memory read failed.
    pub const READ_ERROR: u32 = 5;
    /// An exit without a saved enter (e.g. the agent attached mid-syscall).
    pub const UNMATCHED: u32 = 6;
    /// A repeat of an access already reported in the same window: counted in the `REPEATS`
    /// map and reported by the agent as one summary record.
    pub const AGGREGATED: u32 = 7;
    /// Over its cgroup's record budget: counted in the `SUPPRESSED` map (per cgroup and
    /// catalogue entry) instead of written, and reported by the agent as a summary.
    pub const OVER_BUDGET: u32 = 8;
    pub const COUNT: u32 = 9;
    pub const NAMES: [&str; COUNT as usize] = [
        "seen",
        "filtered",
        "emitted",
        "lost",
        "truncated",
        "read_error",
        "unmatched",
        "aggregated",
        "over_budget",
    ];
}

pub const STATS_ENTRIES: u32 = probe::COUNT * outcome::COUNT;

/// Which in-kernel filter map(s) matched (bits of [`FileOpenRecord::matched`]).
pub mod matched {
    pub const INODE: u32 = 1;
    pub const PREFIX: u32 = 2;
    pub const SUFFIX: u32 = 4;
}

/// Bits of [`FileOpenRecord::path_flags`].
pub mod path_flag {
    /// The walk hit [`super::MAX_PATH_STEPS`] or filled the buffer: `path` is a tail.
    pub const TRUNCATED: u32 = 1;
    /// A kernel read failed during the walk: `path` may be incomplete.
    pub const READ_ERROR: u32 = 2;
    /// The raw path was longer than [`super::RAW_PATH_BYTES`].
    pub const RAW_TRUNCATED: u32 = 4;
    /// The raw path could not be read from user memory.
    pub const RAW_READ_ERROR: u32 = 8;
    /// The open failed, so there is no file: `path` is the base directory (root, cwd or dirfd)
    /// joined with the raw path, not normalised and with symlinks unresolved.
    pub const LEXICAL: u32 = 16;
    /// The walk reached the top of a mount tree that is not the task's root (the file lives
    /// outside the process' view, e.g. reached through a passed fd or another namespace).
    pub const OUTSIDE_ROOT: u32 = 32;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RecordHeader {
    pub kind: u16,
    pub version: u16,
    /// Size of the whole record in bytes.
    pub size: u32,
}

impl RecordHeader {
    /// The header of a `T` record of `kind`, in this wire version.
    pub const fn of<T>(kind: u16) -> RecordHeader {
        RecordHeader {
            kind,
            version: WIRE_VERSION,
            size: core::mem::size_of::<T>() as u32,
        }
    }
}

/// One file-open syscall that the in-kernel filter let through.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FileOpenRecord {
    pub header: RecordHeader,
    pub task: TaskIdentity,
    /// One of [`probe`].
    pub probe: u32,
    /// Open flags (for openat2 the low 32 bits of `open_how.flags`, which hold all O_* flags).
    pub open_flags: u32,
    /// Syscall return: the new fd, or `-errno`.
    pub result: i64,
    /// Inode number and kernel-encoded `dev_t` of the opened file (0 when the open failed).
    pub ino: u64,
    pub dev: u32,
    /// The dirfd argument (`AT_FDCWD` = -100), or the mount fd for `open_by_handle_at`.
    pub dirfd: i32,
    /// Value from the secret-inode map (the catalogue entry + 1), 0 when it did not match.
    pub secret_id: u32,
    /// Bits of [`matched`].
    pub matched: u32,
    /// Bits of [`path_flag`].
    pub path_flags: u32,
    /// Bytes used in `path` and `raw_path`.
    pub path_len: u32,
    pub raw_len: u32,
    /// The window of the [`RepeatKey`] this record opened (repeats of it in that window are
    /// counted in the kernel), or 0: not aggregated (the map was full).
    pub repeat_epoch: u32,
    /// [`RepeatKey::object`] of this access.
    pub repeat_object: u64,
    /// The resolved path (`path_len` bytes) immediately followed by the raw path (`raw_len`
    /// bytes). Only `FILE_OPEN_FIXED_BYTES + path_len + raw_len` bytes leave the kernel, so a
    /// 30-byte path costs ~30 bytes of ring buffer, not the whole array.
    pub tail: [u8; FILE_OPEN_TAIL_BYTES],
}

/// Aggregation windows are `boot_ns >> REPEAT_WINDOW_SHIFT` (~1.07 s).
pub const REPEAT_WINDOW_SHIFT: u32 = 30;
/// Accesses whose repeats the kernel can count at once (entries live for one window plus
/// the agent's sweep).
pub const REPEAT_ENTRIES: u32 = 16384;

/// Identical credential accesses (same cgroup, process, object, syscall, flags and result)
/// in one window: the first is reported as a record, the rest are only counted here and the
/// agent reports them as one summary once the window is over. A flood of one access thus
/// costs one map update per repeat, not ring-buffer space that other accesses need.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RepeatKey {
    pub cgroup_id: u64,
    /// The opened file's device (kernel encoding) and inode; for a failed open (no file) dev
    /// 0 and `object` a hash of the path's last 256 bytes and its length.
    pub dev: u64,
    pub object: u64,
    /// -errno, or 0 for any successful open (the fd number does not make an access distinct).
    pub result: i64,
    pub pid: u32,
    pub flags: u32,
    pub probe: u32,
    /// `(boot_ns >> REPEAT_WINDOW_SHIFT) + 1`.
    pub epoch: u32,
}

/// Each cgroup's record budget, a token bucket kept as credit in nanoseconds: a record costs
/// `cost_ns` (1 s / records per second) and credit accrues with time up to `cap_ns` (the
/// burst). Decided before ring-buffer space is taken, so a noisy cgroup's excess never crowds
/// out another's records. `cost_ns` 0 = no budget.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    pub cost_ns: u64,
    pub cap_ns: u64,
    /// The burst of a cgroup's DNS-answer bucket (`DNS_BUCKET`): answers are up to 1,232 bytes
    /// each, so a record budget's burst of them could fill the ring buffer on its own.
    pub dns_cap_ns: u64,
}

/// Accesses a cgroup's budget cut, per catalogue entry and window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SuppressedKey {
    pub cgroup_id: u64,
    /// The catalogue file entry (the path tries' value), or `SECRET_RULE | secret id` for a
    /// known secret inode.
    pub rule: u32,
    /// As in [`RepeatKey::epoch`].
    pub epoch: u32,
}

/// Marks [`SuppressedKey::rule`] as a secret-inode id rather than a catalogue entry.
pub const SECRET_RULE: u32 = 1 << 31;
/// [`SuppressedKey::rule`] of DNS answers a cgroup received over its DNS budget (not read).
pub const DNS_RULE: u32 = 1 << 30;
/// Marks [`SuppressedKey::rule`] as a connect's endpoint id (`ConnectRecord::endpoint` within
/// `ENDPOINT_RULE_MASK`: 0 unconfirmed, `ENDPOINT_RULE_MASK` a TLS candidate).
pub const ENDPOINT_RULE: u32 = 1 << 29;
pub const ENDPOINT_RULE_MASK: u32 = ENDPOINT_RULE - 1;
/// Set in a [`Budget`] bucket key (a cgroup id, an inode number far below it) for the cgroup's
/// DNS-answer bucket: its own budget, so a container's DNS answers and its file accesses never
/// spend each other's.
pub const DNS_BUCKET: u64 = 1 << 63;
pub const SUPPRESSED_ENTRIES: u32 = 4096;

/// How often a [`RepeatKey`]'s access was repeated after its record, and when.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RepeatValue {
    pub count: u64,
    pub first_ns: u64,
    pub last_ns: u64,
}

/// Room for the longest path and the longest raw path.
pub const FILE_OPEN_TAIL_BYTES: usize = PATH_BYTES + RAW_PATH_BYTES;
/// Size of a [`FileOpenRecord`] without its tail: the smallest record on the wire.
pub const FILE_OPEN_FIXED_BYTES: usize = core::mem::offset_of!(FileOpenRecord, tail);

/// A process was created (fork of a new thread group), replaced its program (exec) or ended
/// (exit of the thread-group leader). Together they keep the agent's process table, so records
/// name exe, argv and ancestors even of processes gone before userspace looked.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ProcessRecord {
    pub header: RecordHeader,
    pub boot_ns: u64,
    /// One of [`process_event`].
    pub event: u32,
    /// Thread-group id, and the parent's.
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// `task->exit_code` for EXIT.
    pub exit_code: i32,
    /// `task->start_boottime` (ns since boot): with `pid`, the process' identity.
    pub start_boottime: u64,
    pub cgroup_id: u64,
    pub filename_len: u32,
    pub args_len: u32,
    /// Bits of [`process_flag`].
    pub flags: u32,
    pub _pad: u32,
    pub comm: [u8; 16],
    pub filename: [u8; FILENAME_BYTES],
    /// argv, NUL-separated, as the process' memory holds it.
    pub args: [u8; ARGS_BYTES],
}

/// A fork or exit record leaves the kernel without `filename` and `args`; an exec record
/// without the unused part of `args`.
pub const PROCESS_FIXED_BYTES: usize = core::mem::offset_of!(ProcessRecord, filename);
pub const PROCESS_ARGS_OFFSET: usize = core::mem::offset_of!(ProcessRecord, args);

pub mod process_flag {
    pub const ARGS_TRUNCATED: u32 = 1;
    pub const FILENAME_TRUNCATED: u32 = 2;
    pub const ARGS_READ_ERROR: u32 = 4;
}

/// Key of the secret-inode map. `dev` is the kernel encoding (`MAJOR << 20 | MINOR`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InodeKey {
    pub dev: u64,
    pub ino: u64,
}

/// Data of the path LPM tries (prefixes forwards, suffixes byte-reversed).
pub type PathKeyData = [u8; PATH_KEY_BYTES];

/// How much of a file name the cheap name check looks at (its end, byte-reversed).
pub const LEAF_KEY_BYTES: usize = 32;
/// Data of the file-name trie: for each suffix key, its part after the last `/`, with that
/// `/` (`/.aws/credentials` → `/credentials`), byte-reversed and cut to [`LEAF_KEY_BYTES`].
pub type LeafKeyData = [u8; LEAF_KEY_BYTES];

/// A directory whose files' prefix verdict the kernel remembers (see `filter.rs`): the
/// directory's dentry in a mount, seen from a root. Kernel addresses, never leave the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirKey {
    pub mnt: u64,
    pub dentry: u64,
    pub root_mnt: u64,
    pub root_dentry: u64,
}

/// An opened file the kernel has found not to be a credential, remembered so that the next
/// open of it is decided by one lookup (see `filter.rs`). Everything a verdict depends on is
/// in the key: the dentry with its name (the name's hash is salted with the parent, so a
/// rename or a move makes another key), its inode, its mount and the root it is seen from.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileKey {
    pub dentry: u64,
    /// `d_name.hash_len`: the name's hash and length.
    pub name: u64,
    pub parent: u64,
    pub inode: u64,
    pub mnt: u64,
    pub root_mnt: u64,
    pub root_dentry: u64,
}

/// What the kernel remembers about a directory.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirVerdict {
    /// The mount's root dentry: a file that is the mount's root (a bind-mounted file) is
    /// named by its mount point, not by this directory, and is always walked.
    pub mnt_root: u64,
    /// The filter's epoch when this was decided (see [`filter_epoch`]); others are ignored.
    pub epoch: u64,
    /// Non-zero: a prefix key can match a file here, walk.
    pub walk: u32,
    pub _pad: u32,
}

/// Slots of the `FILTER_EPOCH` array. A remembered verdict counts only while the sum of both
/// is what it was when the verdict was made: both only ever grow, so the sum changes with
/// either and never comes back.
pub mod filter_epoch {
    /// Advanced by the agent after every change of the path keys or the secret inodes.
    pub const KEYS: u32 = 0;
    /// Advanced by the programs around every move in the file tree (a rename, a mount
    /// change, an io_uring rename): remembered verdicts are keyed by dentries, which a move
    /// keeps.
    pub const TREE: u32 = 1;
    /// Set to 1 by the agent once every probe that advances `TREE` is attached; until then
    /// (or if one cannot attach) nothing is remembered and every open is decided afresh.
    pub const REMEMBER: u32 = 2;
    pub const SLOTS: u32 = 3;
}

/// Byte offsets of the kernel struct fields the probes read, found in the running kernel's BTF
/// at start-up (Rust eBPF has no CO-RE relocations, so nothing here is compiled in).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_files: u32,
    pub task_fs: u32,
    pub files_fdt: u32,
    pub fdtable_max_fds: u32,
    pub fdtable_fd: u32,
    pub file_f_path: u32,
    pub file_f_inode: u32,
    pub file_f_flags: u32,
    pub path_mnt: u32,
    pub path_dentry: u32,
    pub fs_root: u32,
    pub fs_pwd: u32,
    pub dentry_d_parent: u32,
    /// `dentry.d_seq`: its sequence (the first u32) changes on every rename of the dentry.
    pub dentry_d_seq: u32,
    pub dentry_d_name: u32,
    pub qstr_len: u32,
    pub qstr_name: u32,
    pub inode_i_ino: u32,
    pub inode_i_sb: u32,
    pub sb_s_dev: u32,
    pub mount_mnt: u32,
    pub mount_mnt_parent: u32,
    pub mount_mnt_mountpoint: u32,
    pub vfsmount_mnt_root: u32,
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_real_parent: u32,
    pub task_start_boottime: u32,
    pub task_mm: u32,
    pub task_exit_code: u32,
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    pub binprm_filename: u32,
    pub binprm_file: u32,
    /// Non-zero when the exit programs read the syscall arguments from the task's saved user
    /// registers (`bpf_task_pt_regs`), so no entry program is needed; 0 = saved at entry.
    pub args_from_regs: u32,
    /// Offset in `struct pt_regs` of the first of 8 words read at once, and the word index of
    /// syscall arguments 0..3 in them.
    pub regs_base: u32,
    pub regs_arg: [u32; 4],
    /// Non-zero once the agent has filled the struct; the probes do nothing until then.
    pub valid: u32,
}

/// io_uring's request layout, from BTF; optional (io_uring may be compiled out), so kept apart
/// from [`KernelOffsets`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoUringOffsets {
    /// Offset in `struct io_kiocb` of an open request's `io_open.file_slot` (non-zero: the file
    /// goes into the ring's fixed-file table, not the fd table).
    pub open_file_slot: u32,
    /// Offset of `io_kiocb.opcode` (u8).
    pub opcode: u32,
    /// Offset of `io_kiocb.flags` (u64; its low bits are the SQE flags).
    pub flags: u32,
    /// Offsets in `struct io_kiocb` of an open request's `io_open.filename` (a `struct
    /// filename *`, whose `name` is the kernel's copy of the path), `dfd` and `how.flags`.
    pub open_filename: u32,
    pub open_dfd: u32,
    pub open_how_flags: u32,
    /// Offset of `filename.name`.
    pub filename_name: u32,
    /// Non-zero when the agent found both.
    pub valid: u32,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all are #[repr(C)] structs of integers and byte arrays with no implicit padding.
    unsafe impl aya::Pod for super::FileOpenRecord {}
    unsafe impl aya::Pod for super::ProcessRecord {}
    unsafe impl aya::Pod for super::CgroupRecord {}
    unsafe impl aya::Pod for super::ConnectRecord {}
    unsafe impl aya::Pod for super::MemoryRecord {}
    unsafe impl aya::Pod for super::DnsRecord {}
    unsafe impl aya::Pod for super::EndpointValue {}
    unsafe impl aya::Pod for super::LearnedKey {}
    unsafe impl aya::Pod for super::IoUringOffsets {}
    unsafe impl aya::Pod for super::InodeKey {}
    unsafe impl aya::Pod for super::RepeatKey {}
    unsafe impl aya::Pod for super::RepeatValue {}
    unsafe impl aya::Pod for super::SuppressedKey {}
    unsafe impl aya::Pod for super::Budget {}
    unsafe impl aya::Pod for super::KernelOffsets {}
}

// The wire layout is a contract between the kernel programs and the agent: sizes are checked
// when either is compiled, so a field added, resized or reordered changes them on purpose
// (and WIRE_VERSION with them), never by accident. The same holds for map keys and values.
const _: () = {
    use core::mem::size_of;
    assert!(size_of::<RecordHeader>() == 8);
    assert!(size_of::<FileOpenRecord>() == 5248);
    assert!(FILE_OPEN_FIXED_BYTES == 128);
    assert!(size_of::<ProcessRecord>() == 1368);
    assert!(PROCESS_FIXED_BYTES == 88 && PROCESS_ARGS_OFFSET == 344);
    assert!(size_of::<CgroupRecord>() == 544);
    assert!(size_of::<TaskIdentity>() == 56);
    assert!(size_of::<ConnectRecord>() == 112);
    assert!(size_of::<RequestRecord>() == 2096);
    assert!(size_of::<MemoryRecord>() == 88);
    assert!(size_of::<DnsRecord>() == 1264);
    assert!(size_of::<RepeatKey>() == 48);
    assert!(size_of::<RepeatValue>() == 24);
    assert!(size_of::<SuppressedKey>() == 16);
    assert!(size_of::<Budget>() == 24);
    assert!(size_of::<InodeKey>() == 16);
    assert!(size_of::<DirKey>() == 32);
    assert!(size_of::<DirVerdict>() == 24);
    assert!(size_of::<FileKey>() == 56);
    assert!(size_of::<EndpointValue>() == 32);
    assert!(size_of::<LearnedKey>() == 24);
};
