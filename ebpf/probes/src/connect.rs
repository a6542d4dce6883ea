//! Connects to credential endpoints. Three programs share the work:
//!
//! - `sys_enter_connect` marks the thread as inside connect(2) and keeps the user's sockaddr
//!   pointer (tracepoint arguments, so this works in both probe modes);
//! - `cgroup/connect4|6` (on the cgroup2 root) see the address the kernel is about to connect
//!   to, already copied from user memory, for every TCP/UDP connect — including those that do
//!   not go through connect(2): io_uring's IORING_OP_CONNECT and TCP Fast Open sendmsg. Inside
//!   connect(2) they only note the match on the thread's mark; outside it they emit at once
//!   (there is no result to wait for);
//! - `sys_exit_connect` emits a matched connect with its result. Where the hooks could not be
//!   attached (or did not run: a non-INET socket, an early error) it reads the sockaddr itself.
//!
//! An address matches when it is in the endpoint LPM trie (IPv4 as ::ffff:a.b.c.d), or was
//! learned from this cgroup's own DNS answers (the learned-endpoint map), with the port in
//! that entry's port set. Everything else is only counted.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_user,
        generated::{bpf_get_current_cgroup_id, bpf_get_socket_cookie, bpf_ktime_get_boot_ns},
    },
    maps::lpm_trie::Key,
    programs::SockAddrContext,
};
use credwatch_common::{
    ConnectRecord, DNS_GRACE_NS, ENDPOINT_PORTS, ENDPOINT_RULE, ENDPOINT_RULE_MASK, KIND_CONNECT,
    LearnedKey, NAMED_PORT_SLOTS, RecordHeader, SNI_CANDIDATE, SuppressedKey, TaskIdentity,
    connect_source, endpoint_flag, outcome, probe,
};

use crate::{
    CONNECTS, DNS_RECENT, ENDPOINTS, LEARNED_ENDPOINTS, NAMED_PORTS, budget, record::is_agent,
    requests, stats::count,
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// What the cgroup hook found for a thread inside connect(2).
const ENTERED: u32 = 0;
const HOOK_FILTERED: u32 = 1;
const HOOK_MATCHED: u32 = 2;

/// A thread inside connect(2).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct InConnect {
    sockaddr: u64,
    state: u32,
    endpoint: u32,
    family: u16,
    port: u16,
    _pad: u32,
    addr: [u8; 16],
    cookie: u64,
}

/// An address and port as the process asked (IPv4 mapped into IPv6).
struct Target {
    family: u16,
    port: u16,
    addr: [u8; 16],
    /// The socket's cookie (0 where no socket is at hand: the syscall fallback).
    cookie: u64,
    /// A stream (TCP) socket.
    stream: bool,
}

pub fn enter(sockaddr: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if is_agent(pid_tgid) {
        return;
    }
    let mark = InConnect {
        sockaddr,
        state: ENTERED,
        endpoint: 0,
        family: 0,
        port: 0,
        _pad: 0,
        addr: [0; 16],
        cookie: 0,
    };
    let _ = CONNECTS.insert(&pid_tgid, &mark, 0);
}

/// `cgroup/connect4`: the IPv4 address and port the kernel is about to connect to.
pub fn hook4(ctx: &SockAddrContext) {
    // Plain loads at constant offsets: the verifier refuses arithmetic on the context pointer.
    let (ip4, port) = unsafe {
        let sa = ctx.sock_addr;
        (
            core::ptr::read_volatile(&raw const (*sa).user_ip4),
            core::ptr::read_volatile(&raw const (*sa).user_port),
        )
    };
    let mut addr = [0u8; 16];
    addr[10] = 0xff;
    addr[11] = 0xff;
    addr[12..16].copy_from_slice(&ip4.to_ne_bytes());
    hook(Target {
        family: AF_INET,
        // user_port holds the port in network byte order in its low 16 bits.
        port: u16::from_be(port as u16),
        addr,
        cookie: unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) },
        stream: is_stream(ctx),
    });
}

/// `cgroup/connect6`: the IPv6 (or v4-mapped) address and port.
pub fn hook6(ctx: &SockAddrContext) {
    let (words, port) = unsafe {
        let sa = ctx.sock_addr;
        (
            [
                core::ptr::read_volatile(&raw const (*sa).user_ip6[0]),
                core::ptr::read_volatile(&raw const (*sa).user_ip6[1]),
                core::ptr::read_volatile(&raw const (*sa).user_ip6[2]),
                core::ptr::read_volatile(&raw const (*sa).user_ip6[3]),
            ],
            core::ptr::read_volatile(&raw const (*sa).user_port),
        )
    };
    let mut addr = [0u8; 16];
    for (i, word) in words.iter().enumerate() {
        addr[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    hook(Target {
        family: AF_INET6,
        port: u16::from_be(port as u16),
        addr,
        cookie: unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) },
        stream: is_stream(ctx),
    });
}

/// `SOCK_STREAM`: only TCP connections send a ClientHello worth reading.
fn is_stream(ctx: &SockAddrContext) -> bool {
    const SOCK_STREAM: u32 = 1;
    unsafe { core::ptr::read_volatile(&raw const (*ctx.sock_addr).type_) == SOCK_STREAM }
}

/// Both hooks; the connect always proceeds.
fn hook(target: Target) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if is_agent(pid_tgid) {
        return;
    }
    let mut endpoint = endpoint_for(&target);
    // On a host-name endpoint's port, a TCP connection to an address nothing names yet (an
    // /etc/hosts entry, a hard-coded address, DNS the agent did not see): its TLS ClientHello
    // may name it. Within the cgroup's record budget, so that a container opening connections
    // by the thousand cannot take the ring buffer from the others.
    if target.cookie != 0
        && target.stream
        && matches!(endpoint, None | Some((0, _)))
        && named_port(target.port)
    {
        if budget::take(unsafe { bpf_get_current_cgroup_id() }, unsafe {
            bpf_ktime_get_boot_ns()
        }) {
            let id = endpoint.map_or(SNI_CANDIDATE, |(id, _)| id);
            endpoint = Some((id, endpoint_flag::INSPECT_TLS));
        } else {
            count(probe::CGROUP_CONNECT, outcome::OVER_BUDGET);
        }
    }
    if target.cookie != 0 {
        // Only TCP connections are watched, and one whose requests are read takes from the
        // cgroup's record budget first: the map of watched sockets is shared, and a container
        // connecting in a loop must not push another's watched connection out of it.
        let watch = match endpoint {
            Some((_, flags)) if flags & endpoint_flag::INSPECT_REQUESTS != 0 => {
                target.stream && {
                    let within = budget::take(unsafe { bpf_get_current_cgroup_id() }, unsafe {
                        bpf_ktime_get_boot_ns()
                    });
                    if !within {
                        count(probe::CGROUP_CONNECT, outcome::OVER_BUDGET);
                    }
                    within
                }
            }
            Some((_, flags)) => flags != 0 && target.stream,
            None => false,
        };
        match endpoint {
            Some((_, flags)) if watch => requests::watch(target.cookie, flags),
            // The socket may have been watched for an earlier connect (connect(AF_UNSPEC),
            // then elsewhere): what it sends now is not that connection's.
            _ => requests::unwatch(target.cookie),
        }
    }
    if let Some(mark) = CONNECTS.get_ptr_mut(&pid_tgid) {
        // Inside connect(2): sys_exit_connect emits it with the result.
        let mark = unsafe { &mut *mark };
        match endpoint {
            Some((id, _)) => {
                mark.state = HOOK_MATCHED;
                mark.endpoint = id;
                mark.family = target.family;
                mark.port = target.port;
                mark.addr = target.addr;
                mark.cookie = target.cookie;
            }
            None => mark.state = HOOK_FILTERED,
        }
        return;
    }
    count(probe::CGROUP_CONNECT, outcome::SEEN);
    match endpoint {
        Some((id, _)) => emit(
            probe::CGROUP_CONNECT,
            pid_tgid,
            &target,
            id,
            0,
            connect_source::CGROUP_HOOK,
        ),
        None => count(probe::CGROUP_CONNECT, outcome::FILTERED),
    }
}

pub fn exit(ret: i64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(mark) = (unsafe { CONNECTS.get(&pid_tgid) }).copied() else {
        // Entered before the probes were attached, or the mark could not be stored (then the
        // cgroup hook reported the connect itself): counted, not guessed.
        if !is_agent(pid_tgid) {
            count(probe::CONNECT, outcome::UNMATCHED);
        }
        return;
    };
    let _ = CONNECTS.remove(&pid_tgid);
    count(probe::CONNECT, outcome::SEEN);
    let (target, endpoint) = match mark.state {
        HOOK_MATCHED => (
            Target {
                family: mark.family,
                port: mark.port,
                addr: mark.addr,
                cookie: mark.cookie,
                stream: false,
            },
            mark.endpoint,
        ),
        HOOK_FILTERED => return count(probe::CONNECT, outcome::FILTERED),
        // No hook ran (not attached here, a non-INET socket, an early error): read it ourselves.
        _ => {
            let Some(target) = read_sockaddr(mark.sockaddr) else {
                return;
            };
            match endpoint_for(&target) {
                Some((id, _)) => (target, id),
                None => return count(probe::CONNECT, outcome::FILTERED),
            }
        }
    };
    emit(
        probe::CONNECT,
        pid_tgid,
        &target,
        endpoint,
        ret,
        connect_source::SYSCALL,
    );
}

/// The sockaddr a process passed to connect(2); `None` (counted) when unreadable or not INET.
fn read_sockaddr(sockaddr: u64) -> Option<Target> {
    let Ok(family) = (unsafe { bpf_probe_read_user(sockaddr as *const u16) }) else {
        count(probe::CONNECT, outcome::READ_ERROR);
        return None;
    };
    let mut addr = [0u8; 16];
    let port_bytes: [u8; 2];
    match family {
        AF_INET => {
            // sockaddr_in: family, port (network order), address.
            let Ok(sin) = (unsafe { bpf_probe_read_user(sockaddr as *const [u8; 8]) }) else {
                count(probe::CONNECT, outcome::READ_ERROR);
                return None;
            };
            addr[10] = 0xff;
            addr[11] = 0xff;
            addr[12..16].copy_from_slice(&sin[4..8]);
            port_bytes = [sin[2], sin[3]];
        }
        AF_INET6 => {
            // sockaddr_in6: family, port, flowinfo, address.
            let Ok(sin6) = (unsafe { bpf_probe_read_user(sockaddr as *const [u8; 24]) }) else {
                count(probe::CONNECT, outcome::READ_ERROR);
                return None;
            };
            addr.copy_from_slice(&sin6[8..24]);
            port_bytes = [sin6[2], sin6[3]];
        }
        _ => {
            count(probe::CONNECT, outcome::FILTERED);
            return None;
        }
    }
    Some(Target {
        family,
        port: u16::from_be_bytes(port_bytes),
        addr,
        cookie: 0,
        stream: false,
    })
}

/// The catalogue endpoint (index + 1) of a credential endpoint and its `endpoint_flag`s: a
/// catalogue address, or one this cgroup's own DNS answers named. `Some((0, 0))` for an
/// unconfirmed connect (see `just_resolved`); `None` for everything else.
fn endpoint_for(target: &Target) -> Option<(u32, u32)> {
    if let Some(e) = ENDPOINTS.get(Key::new(128, target.addr))
        && port_matches(e.port_count, &e.ports, target.port)
    {
        return Some((e.id, e.flags));
    }
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let learned = LearnedKey {
        cgroup_id,
        addr: target.addr,
    };
    if let Some(e) = unsafe { LEARNED_ENDPOINTS.get(&learned) }
        && port_matches(e.port_count, &e.ports, target.port)
    {
        return Some((e.id, e.flags));
    }
    // Not (yet) known: the agent learns DNS answers asynchronously, so a connect right after
    // an answer to this cgroup, on a host-name endpoint's port, goes up unconfirmed.
    (just_resolved(cgroup_id) && named_port(target.port)).then_some((0, 0))
}

// Inlined: BPF calls take at most five arguments.
#[inline(always)]
fn emit(probe: u32, pid_tgid: u64, target: &Target, endpoint: u32, result: i64, source: u32) {
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    // From the cgroup's record budget like a file access: a container connecting to the
    // metadata service in a loop is counted per endpoint and window, not written out whole.
    if !budget::take(cgroup_id, now) {
        let mut key = SuppressedKey {
            cgroup_id,
            rule: ENDPOINT_RULE | (endpoint & ENDPOINT_RULE_MASK),
            epoch: 0,
        };
        let outcome = if budget::suppress(&mut key, now) {
            outcome::OVER_BUDGET
        } else {
            outcome::LOST
        };
        return count(probe, outcome);
    }
    let mut record = ConnectRecord {
        header: RecordHeader::of::<ConnectRecord>(KIND_CONNECT),
        task: TaskIdentity::default(),
        result,
        family: target.family,
        port: target.port,
        endpoint,
        source,
        _pad: 0,
        addr: target.addr,
        cookie: target.cookie,
    };
    crate::record::identify(&mut record.task, now, pid_tgid, cgroup_id);
    crate::record::emit(probe, &record);
}

fn just_resolved(cgroup_id: u64) -> bool {
    let Some(at) = (unsafe { DNS_RECENT.get(&cgroup_id) }).copied() else {
        return false;
    };
    unsafe { bpf_ktime_get_boot_ns() }.saturating_sub(at) < DNS_GRACE_NS
}

fn named_port(port: u16) -> bool {
    let mut found = false;
    for slot in 0..NAMED_PORT_SLOTS {
        if let Some(p) = NAMED_PORTS.get(slot) {
            found |= *p != 0 && *p == port;
        }
    }
    found
}

/// An empty port set means any port.
#[inline(always)]
fn port_matches(count: u32, ports: &[u16; ENDPOINT_PORTS], port: u16) -> bool {
    if count == 0 {
        return true;
    }
    let mut found = false;
    for (i, p) in ports.iter().enumerate() {
        found |= (i as u32) < count && *p == port;
    }
    found
}
