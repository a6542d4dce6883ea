//! Every probe the agent attaches and how: adding one is a row here, its programs in
//! `ebpf/probes`, and — when it counts in the kernel's `STATS` — an id and a name in
//! `credwatch_common::probe`. The status of each row is reported at start
//! (`credwatch_probe_attached{probe,mode}`); a row that cannot attach is reported and skipped,
//! except that at least one file-open probe must attach.

use aya::programs::CgroupSkbAttachType;

/// How a probe's programs attach.
pub enum Attach {
    /// A file-open syscall: `sys_exit_<name>`, and `sys_enter_<name>` when the arguments
    /// cannot come from the saved registers (the mode chosen at start, `ArgsMode`).
    FileOpenSyscall,
    /// `sys_enter_<name>` and `sys_exit_<name>`: syscalls rare enough for the pair.
    Syscall,
    /// BTF tracepoints, each program named like its tracepoint.
    BtfTracepoints(&'static [&'static str]),
    /// The io_uring tracepoints, which need the request layout from the kernel's BTF.
    IoUring(&'static [&'static str]),
    /// `cgroup:<name>`.
    CgroupTracepoint,
    /// A cgroup_skb program on the cgroup2 root (every cgroup below inherits it).
    CgroupSkb {
        program: &'static str,
        direction: CgroupSkbAttachType,
    },
    /// cgroup/connect hooks on the cgroup2 root.
    CgroupSockAddr(&'static [&'static str]),
    /// A cgroup/sock_release program on the cgroup2 root.
    CgroupSockRelease(&'static str),
}

pub struct ProbeSpec {
    /// As reported (`probe` label), and the syscall or tracepoint name where one is implied.
    pub name: &'static str,
    pub attach: Attach,
    /// It sees moves in the file tree: unless every such probe is attached, the kernel
    /// filter remembers nothing (`filter_epoch::REMEMBER`).
    pub sees_moves: bool,
}

const fn probe(name: &'static str, attach: Attach) -> ProbeSpec {
    ProbeSpec {
        name,
        attach,
        sees_moves: false,
    }
}

/// A syscall that can move a directory or a mount (`moves.rs`).
const fn move_syscall(name: &'static str) -> ProbeSpec {
    ProbeSpec {
        name,
        attach: Attach::Syscall,
        sees_moves: true,
    }
}

pub const PROBES: &[ProbeSpec] = &[
    // File opens (the in-kernel filter; `open.rs`).
    probe("open", Attach::FileOpenSyscall),
    probe("openat", Attach::FileOpenSyscall),
    probe("openat2", Attach::FileOpenSyscall),
    probe("creat", Attach::FileOpenSyscall),
    probe("open_by_handle_at", Attach::FileOpenSyscall),
    // The process table (`process.rs`): without them records have what procfs knows while
    // the process exists.
    probe(
        "sched_process_exec",
        Attach::BtfTracepoints(&["sched_process_exec"]),
    ),
    probe(
        "sched_process_fork",
        Attach::BtfTracepoints(&["sched_process_fork"]),
    ),
    probe(
        "sched_process_exit",
        Attach::BtfTracepoints(&["sched_process_exit"]),
    ),
    // Containers coming and going (`cgroup.rs`): without them a very short-lived one may be
    // found from its live cgroup and runtime state only.
    probe("cgroup_mkdir", Attach::CgroupTracepoint),
    probe("cgroup_rmdir", Attach::CgroupTracepoint),
    // io_uring opens, and `io_uring_submit_req` to count those whose completion is skipped
    // (`uring.rs`).
    // (They also see io_uring renames: a move.)
    ProbeSpec {
        name: "io_uring_open",
        attach: Attach::IoUring(&["io_uring_submit_req", "io_uring_complete"]),
        sees_moves: true,
    },
    // DNS answers to every process (`dns.rs`).
    probe(
        "dns",
        Attach::CgroupSkb {
            program: "dns_answers",
            direction: CgroupSkbAttachType::Ingress,
        },
    ),
    // connect(2) (`connect.rs`), and connects that bypass it (io_uring, TCP Fast Open).
    probe("connect", Attach::Syscall),
    probe(
        "cgroup_connect",
        Attach::CgroupSockAddr(&["connect4", "connect6"]),
    ),
    // What is sent on connections whose requests or ClientHello are read (`requests.rs`).
    probe(
        "endpoint_request",
        Attach::CgroupSkb {
            program: "endpoint_requests",
            direction: CgroupSkbAttachType::Egress,
        },
    ),
    // Sockets released: connections being read are forgotten, so the egress program goes
    // back to letting every packet through at once (`requests.rs`).
    probe("socket_release", Attach::CgroupSockRelease("sock_release")),
    // Another process's memory (`memory.rs`).
    probe("ptrace", Attach::Syscall),
    probe("process_vm_readv", Attach::Syscall),
    probe("process_vm_writev", Attach::Syscall),
    // Moves in the file tree, which the filter's remembered verdicts must not outlive
    // (`moves.rs`).
    move_syscall("rename"),
    move_syscall("renameat"),
    move_syscall("renameat2"),
    move_syscall("mount"),
    move_syscall("move_mount"),
    move_syscall("umount"),
    move_syscall("pivot_root"),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Every probe that counts in the kernel's `STATS` under a name of its own is in the
    /// table under that name (a probe missing here would never attach).
    #[test]
    fn every_counted_probe_is_attached_by_a_row() {
        let names: Vec<&str> = PROBES.iter().map(|p| p.name).collect();
        for counted in credwatch_common::probe::NAMES {
            // Counted by rows named after their syscalls.
            let by_syscalls = matches!(counted, "process_memory" | "tree_move");
            assert!(
                by_syscalls || names.contains(&counted),
                "{counted} has no row"
            );
        }
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "a probe named twice");
    }
}
