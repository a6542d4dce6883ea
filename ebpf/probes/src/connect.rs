//! `connect()` to credential endpoints: at syscall exit (arguments from the saved registers),
//! the address the process asked for — IPv4, IPv6 or v4-mapped IPv6 — is looked up in the
//! endpoint LPM trie (IPv4 as ::ffff:a.b.c.d), then its port in that entry's port set. Only
//! matches leave the kernel.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_probe_read_user,
        generated::{self, bpf_get_current_cgroup_id, bpf_ktime_get_boot_ns},
    },
    maps::lpm_trie::Key,
};
use credwatch_common::{
    ConnectRecord, DNS_GRACE_NS, ENDPOINT_PORTS, KIND_CONNECT, NAMED_PORT_SLOTS, RecordHeader,
    WIRE_VERSION, outcome, probe,
};

use crate::{AGENT_TGID, DNS_RECENT, ENDPOINTS, EVENTS, NAMED_PORTS, OFFSETS, stats::count, vfs};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

pub fn exit(ret: i64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 == AGENT_TGID.load() {
        return;
    }
    count(probe::CONNECT, outcome::SEEN);
    let o = OFFSETS.load();
    if o.valid == 0 || o.args_from_regs == 0 {
        return;
    }
    let words: [u64; 8] = match unsafe {
        let task = generated::bpf_get_current_task_btf();
        let regs = generated::bpf_task_pt_regs(task) as u64;
        vfs::read(regs, o.regs_base)
    } {
        Ok(words) => words,
        Err(_) => return count(probe::CONNECT, outcome::READ_ERROR),
    };
    let sockaddr = words[(o.regs_arg[1] & 7) as usize];
    let Ok(family) = (unsafe { bpf_probe_read_user(sockaddr as *const u16) }) else {
        return count(probe::CONNECT, outcome::READ_ERROR);
    };
    let mut addr = [0u8; 16];
    let port_bytes: [u8; 2];
    match family {
        AF_INET => {
            // sockaddr_in: family, port (network order), address.
            let Ok(sin) = (unsafe { bpf_probe_read_user(sockaddr as *const [u8; 8]) }) else {
                return count(probe::CONNECT, outcome::READ_ERROR);
            };
            addr[10] = 0xff;
            addr[11] = 0xff;
            addr[12..16].copy_from_slice(&sin[4..8]);
            port_bytes = [sin[2], sin[3]];
        }
        AF_INET6 => {
            // sockaddr_in6: family, port, flowinfo, address.
            let Ok(sin6) = (unsafe { bpf_probe_read_user(sockaddr as *const [u8; 24]) }) else {
                return count(probe::CONNECT, outcome::READ_ERROR);
            };
            addr.copy_from_slice(&sin6[8..24]);
            port_bytes = [sin6[2], sin6[3]];
        }
        _ => return count(probe::CONNECT, outcome::FILTERED),
    }
    let port = u16::from_be_bytes(port_bytes);
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let endpoint_id = match ENDPOINTS.get(Key::new(128, addr)) {
        Some(endpoint) if port_matches(endpoint.port_count, &endpoint.ports, port) => endpoint.id,
        // Not (yet) known: the agent learns DNS answers asynchronously, so a connect right after
        // an answer to this cgroup, on a host-name endpoint's port, goes up unconfirmed.
        _ if just_resolved(cgroup_id) && named_port(port) => 0,
        _ => return count(probe::CONNECT, outcome::FILTERED),
    };
    let uid_gid = bpf_get_current_uid_gid();
    let record = ConnectRecord {
        header: RecordHeader {
            kind: KIND_CONNECT,
            version: WIRE_VERSION,
            size: core::mem::size_of::<ConnectRecord>() as u32,
        },
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        cgroup_id,
        start_boottime: unsafe {
            vfs::read(generated::bpf_get_current_task(), o.task_start_boottime)
        }
        .unwrap_or(0),
        result: ret,
        family,
        port,
        endpoint: endpoint_id,
        addr,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    if EVENTS.output::<ConnectRecord>(&record, 0).is_ok() {
        count(probe::CONNECT, outcome::EMITTED);
    } else {
        count(probe::CONNECT, outcome::LOST);
    }
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
