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
    programs::{SkBuffContext, SockContext},
};
use credwatch_common::{
    KIND_REQUEST, REQUEST_BYTES, REQUEST_FIXED_BYTES, REQUEST_SEGMENTS, RecordHeader,
    RequestRecord, TLS_SEGMENTS, endpoint_flag, outcome, probe, request_flag,
};

use crate::{
    INSPECTED, INSPECTING, REQUEST_SCRATCH, budget, packet,
    stats::{count, shared_add},
};

/// A connection being inspected (value of `INSPECTED`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Inspected {
    /// Payloads copied so far.
    pub payloads: u32,
    /// Payloads to copy at most.
    pub limit: u32,
}

/// `INSPECTED`'s entries are counted in `INSPECTING` so that, while there are none (nearly
/// always), a packet costs one array load. The count may only ever be too high (a slower
/// packet), never too low (a skipped request): it goes up before an entry is added and down
/// after one is removed, and an entry the LRU evicts is never subtracted.
#[inline(always)]
fn add_inspecting(n: i64) {
    if let Some(count) = INSPECTING.get_ptr_mut(0) {
        shared_add(count, n);
    }
}

/// Whether no connection at all is being read (nearly always): then nothing else is looked at.
#[inline(always)]
fn none_inspected() -> bool {
    INSPECTING.get(0).is_none_or(|n| *n <= 0)
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
    add_inspecting(1);
    if INSPECTED.insert(&cookie, &fresh, BPF_NOEXIST).is_err() {
        // Watched already (connected again): that entry is replaced, and counted once. Only
        // an update of an entry that is there gives the count back; if the add failed for
        // another reason, the count keeps it (too high is only slower).
        if INSPECTED.insert(&cookie, &fresh, BPF_EXIST).is_ok() {
            add_inspecting(-1);
        } else {
            let _ = INSPECTED.insert(&cookie, &fresh, BPF_NOEXIST);
        }
    }
}

/// Stops reading a connection (and counts its entry out, if it had one): after its last
/// payload, at its FIN or RST, when its socket is released, and when the connect hook sees it
/// connected again elsewhere.
#[inline(always)]
pub fn unwatch(cookie: u64) {
    if INSPECTED.remove(&cookie).is_ok() {
        add_inspecting(-1);
    }
}

/// A socket is released (cgroup/sock_release on the cgroup2 root): if it was being inspected,
/// forget it. This is what keeps `INSPECTING` at 0 between inspections: a connect that failed
/// (no FIN is ever sent) or a socket closed before its last payload would otherwise be counted
/// for as long as the LRU keeps its entry.
#[inline(always)]
pub fn released(ctx: &SockContext) {
    if none_inspected() {
        return;
    }
    unwatch(unsafe { bpf_get_socket_cookie(ctx.as_ptr()) });
}

/// `BPF_NOEXIST`: add only if the key is not there; `BPF_EXIST`: update only if it is.
const BPF_NOEXIST: u64 = 1;
const BPF_EXIST: u64 = 2;

pub fn egress(ctx: &SkBuffContext) {
    // Cheapest test first: almost always no socket at all is being inspected.
    if none_inspected() {
        return;
    }
    // Then whether this socket is.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(state) = INSPECTED.get_ptr_mut(&cookie) else {
        return;
    };
    // FIN or RST: nothing more will be sent after this segment (whose payload, if any, is
    // read like any other), so the connection is forgotten.
    let mut closing = false;
    let (payload, mut flags) = match tcp_payload(ctx) {
        Some(Segment::Tcp {
            payload,
            urgent,
            closing: fin_or_rst,
        }) => {
            closing = fin_or_rst;
            (payload, if urgent { request_flag::URGENT } else { 0 })
        }
        // A watched connection's payload that cannot be located is reported, not skipped:
        // IPv6 extension headers must not hide a request.
        Some(Segment::Unparsed) => (ctx.len() as usize, request_flag::UNPARSED),
        None => return,
    };
    let payload_len = (ctx.len() as usize).saturating_sub(payload);
    if payload_len == 0 && flags & request_flag::UNPARSED == 0 {
        // A bare ACK, SYN, FIN or RST.
        if closing {
            unwatch(cookie);
        }
        return;
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
    let last = state.payloads >= state.limit || closing;
    if last {
        unwatch(cookie);
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
    crate::record::emit_used(probe::ENDPOINT_REQUEST, rec, size);
}

enum Segment {
    Tcp {
        payload: usize,
        urgent: bool,
        /// FIN or RST.
        closing: bool,
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
    // The TCP header's byte 13: URG 0x20, RST 0x04, FIN 0x01.
    let flags: u8 = ctx.load(l4 + 13).ok()?;
    Some(Segment::Tcp {
        payload: packet::tcp_payload(ctx, l4)?,
        urgent: flags & 0x20 != 0,
        closing: flags & 0x05 != 0,
    })
}
