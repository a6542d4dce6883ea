//! DNS responses arriving at any process (a `cgroup_skb` ingress program on the cgroup2 root,
//! inherited by every cgroup below): UDP packets and TCP segments from port 53 are copied to
//! userspace, which learns the addresses of catalogue host names from them. Over TCP a message
//! has a 2-byte length first, and only a segment that starts a message is useful (answers for
//! API hosts fit in one). Every packet is let through.

use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::{self, bpf_ktime_get_boot_ns, bpf_skb_cgroup_id},
    programs::SkBuffContext,
};
use core::mem::size_of;

use credwatch_common::{
    DNS_BYTES, DNS_FIXED_BYTES, DNS_RULE, DnsRecord, KIND_DNS, RecordHeader, SuppressedKey,
    outcome, probe,
};

use crate::{
    DNS_RECENT, DNS_SCRATCH, budget,
    packet::{self, TCP, UDP},
    stats::count,
};

const DNS_PORT: u16 = 53;
const DNS_HEADER: usize = 12;

pub fn ingress(ctx: &SkBuffContext) {
    let Some(payload) = dns_payload(ctx) else {
        return;
    };
    count(probe::DNS, outcome::SEEN);
    let Some(rec) = DNS_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let rec = unsafe { &mut *rec };
    // At least a DNS header (the helper refuses zero-length reads), at most DNS_BYTES.
    let available = (ctx.len() as usize).saturating_sub(payload);
    if available < DNS_HEADER {
        return count(probe::DNS, outcome::FILTERED);
    }
    let len = if available > DNS_BYTES {
        DNS_BYTES
    } else {
        available
    };
    let loaded = unsafe {
        generated::bpf_skb_load_bytes(
            ctx.as_ptr().cast(),
            payload as u32,
            rec.data.as_mut_ptr().cast(),
            len as u32,
        )
    };
    if loaded != 0 {
        return count(probe::DNS, outcome::READ_ERROR);
    }
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.as_ptr().cast()) };
    // Every answer a container receives goes up, so a container answering itself in a loop
    // must not take the ring buffer from the others: its own DNS budget, excess counted.
    if !budget::take_dns(cgroup_id, now) {
        let mut key = SuppressedKey {
            cgroup_id,
            rule: DNS_RULE,
            epoch: 0,
        };
        let outcome = if budget::suppress(&mut key, now) {
            outcome::OVER_BUDGET
        } else {
            outcome::LOST
        };
        return count(probe::DNS, outcome);
    }
    rec.header = RecordHeader::of::<DnsRecord>(KIND_DNS);
    rec.boot_ns = now;
    rec.cgroup_id = cgroup_id;
    // Connects from this cgroup right after the answer may go to an address the agent has not
    // put into the endpoint map yet (see connect.rs).
    let _ = DNS_RECENT.insert(&rec.cgroup_id, &rec.boot_ns, 0);
    rec.len = len as u32;
    rec._pad = 0;
    // At its used size: most answers are a few hundred bytes of the 1,232 kept.
    let size = DNS_FIXED_BYTES + len;
    if size > size_of::<DnsRecord>() {
        return;
    }
    rec.header.size = size as u32;
    crate::record::emit_used(probe::DNS, rec, size);
}

/// Offset of the DNS message when the packet is UDP or TCP from port 53 (IPv4, or IPv6 without
/// extension headers).
fn dns_payload(ctx: &SkBuffContext) -> Option<usize> {
    let (_, protocol, l4) = packet::ip(ctx)?;
    if protocol != UDP && protocol != TCP {
        return None;
    }
    let source_port: [u8; 2] = ctx.load(l4).ok()?;
    if u16::from_be_bytes(source_port) != DNS_PORT {
        return None;
    }
    if protocol == UDP {
        return Some(l4 + 8);
    }
    // TCP: after the header, the message's length prefix.
    Some(packet::tcp_payload(ctx, l4)? + 2)
}
