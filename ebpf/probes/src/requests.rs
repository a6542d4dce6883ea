//! What is sent on connections whose first bytes decide what they are: requests to endpoints
//! whose requests decide whether a call is a credential access (instance metadata and the
//! other plain-HTTP credential services: the region or the instance id is not a credential,
//! `/latest/meta-data/iam/security-credentials/` is), and TLS ClientHellos of connections on a
//! host-name endpoint's port to an address nothing named (the server name names them). The
//! connect hook puts such a connection's socket cookie into `INSPECTED`; this `cgroup_skb`
//! egress program (on the cgroup2 root) copies the first bytes of each of its first
//! `REQUEST_SEGMENTS` (TLS: `TLS_SEGMENTS`) payloads to userspace. Every other packet costs a
//! cookie lookup in a small map. Every packet is let through.

use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::{self, bpf_get_socket_cookie, bpf_ktime_get_boot_ns, bpf_skb_cgroup_id},
    programs::SkBuffContext,
};
use credwatch_common::{
    KIND_REQUEST, REQUEST_BYTES, REQUEST_FIXED_BYTES, REQUEST_SEGMENTS, RecordHeader,
    RequestRecord, TLS_SEGMENTS, endpoint_flag, outcome, probe, request_flag,
};

use crate::{EVENTS, INSPECTED, REQUEST_SCRATCH, budget, packet, stats::count};

/// A connection being inspected (value of `INSPECTED`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Inspected {
    /// Payloads copied so far.
    pub payloads: u32,
    /// Payloads to copy at most.
    pub limit: u32,
}

/// Called by the connect hook for a connection whose payloads are read (`flags`: the
/// endpoint's `endpoint_flag`s).
#[inline(always)]
pub fn watch(cookie: u64, flags: u32) {
    let fresh = Inspected {
        payloads: 0,
        limit: if flags & endpoint_flag::INSPECT_REQUESTS != 0 {
            REQUEST_SEGMENTS
        } else {
            TLS_SEGMENTS
        },
    };
    let _ = INSPECTED.insert(&cookie, &fresh, 0);
}

/// Called by the connect hook for a connection that is not watched: a socket connected again
/// elsewhere stops being read.
#[inline(always)]
pub fn unwatch(cookie: u64) {
    let _ = INSPECTED.remove(&cookie);
}

pub fn egress(ctx: &SkBuffContext) {
    // Cheapest test first: almost no socket is being inspected.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(state) = INSPECTED.get_ptr_mut(&cookie) else {
        return;
    };
    let (payload, mut flags) = match tcp_payload(ctx) {
        Some(Segment::Tcp { payload, urgent }) => {
            (payload, if urgent { request_flag::URGENT } else { 0 })
        }
        // A watched connection's payload that cannot be located is reported, not skipped:
        // IPv6 extension headers must not hide a request.
        Some(Segment::Unparsed) => (ctx.len() as usize, request_flag::UNPARSED),
        None => return,
    };
    let payload_len = (ctx.len() as usize).saturating_sub(payload);
    if payload_len == 0 && flags & request_flag::UNPARSED == 0 {
        return; // a bare ACK, SYN or FIN
    }
    count(probe::ENDPOINT_REQUEST, outcome::SEEN);
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.as_ptr().cast()) };
    // From the sender's record budget like any record (a container opening connection after
    // connection to the metadata service must not fill the ring buffer). Over it, the payload
    // still goes up, without its bytes (a header-sized record) and marked unparsed: the agent
    // records it as `unreadable`, so spending the budget first cannot hide a request.
    if !budget::take(cgroup_id, now) {
        count(probe::ENDPOINT_REQUEST, outcome::OVER_BUDGET);
        flags |= request_flag::UNPARSED;
    }
    let state = unsafe { &mut *state };
    state.payloads += 1;
    let last = state.payloads >= state.limit;
    if last {
        let _ = INSPECTED.remove(&cookie);
    }
    let Some(rec) = REQUEST_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let rec = unsafe { &mut *rec };
    let len = if payload_len > REQUEST_BYTES {
        REQUEST_BYTES
    } else {
        payload_len
    };
    // The helper refuses zero-length reads. The compiler knows `len` is at least 1 from the
    // test above and would drop a second test, so the verifier (which lost that fact) is shown
    // the bounds on a fresh copy.
    let len = unsafe { core::ptr::read_volatile(&len) };
    if len > REQUEST_BYTES {
        return;
    }
    if len > 0 && flags & request_flag::UNPARSED == 0 {
        let loaded = unsafe {
            generated::bpf_skb_load_bytes(
                ctx.as_ptr().cast(),
                payload as u32,
                rec.data.as_mut_ptr().cast(),
                len as u32,
            )
        };
        if loaded != 0 {
            // Reported all the same, as unparsed: the agent judges what it cannot read.
            flags |= request_flag::UNPARSED;
            count(probe::ENDPOINT_REQUEST, outcome::READ_ERROR);
        }
    }
    rec.header = RecordHeader::of::<RequestRecord>(KIND_REQUEST);
    rec.boot_ns = now;
    rec.cookie = cookie;
    rec.cgroup_id = cgroup_id;
    let unparsed = flags & request_flag::UNPARSED != 0;
    let copied = if unparsed { 0 } else { len };
    rec.len = copied as u32;
    rec.payload_len = payload_len as u32;
    rec.flags = flags | if last { request_flag::LAST } else { 0 };
    rec._pad = 0;
    // At its used size (most requests are a few hundred bytes of the 2,048 kept).
    let size = REQUEST_FIXED_BYTES + copied;
    if size > core::mem::size_of::<RequestRecord>() {
        return;
    }
    rec.header.size = size as u32;
    let used =
        unsafe { core::slice::from_raw_parts((rec as *const RequestRecord).cast::<u8>(), size) };
    if EVENTS.output::<[u8]>(used, 0).is_ok() {
        count(probe::ENDPOINT_REQUEST, outcome::EMITTED);
    } else {
        count(probe::ENDPOINT_REQUEST, outcome::LOST);
    }
}

enum Segment {
    Tcp {
        payload: usize,
        urgent: bool,
    },
    /// An IPv6 packet whose next header is not TCP (extension headers).
    Unparsed,
}

/// Where a TCP segment's payload starts (IPv4, or IPv6 without extension headers), and
/// whether it carries urgent data.
fn tcp_payload(ctx: &SkBuffContext) -> Option<Segment> {
    let (version, protocol, l4) = packet::ip(ctx)?;
    if protocol != packet::TCP {
        // (a watched socket is a TCP socket: over IPv6 this is an extension header)
        return (version == 6).then_some(Segment::Unparsed);
    }
    // URG is bit 5 of the TCP header's byte 13.
    let flags: u8 = ctx.load(l4 + 13).ok()?;
    Some(Segment::Tcp {
        payload: packet::tcp_payload(ctx, l4)?,
        urgent: flags & 0x20 != 0,
    })
}
