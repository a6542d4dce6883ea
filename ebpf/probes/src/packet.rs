//! The IP and TCP headers of a packet a `cgroup_skb` program sees (it starts at the network
//! header), shared by the DNS and request programs.

use aya_ebpf::programs::SkBuffContext;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;

/// The IP header: (version, next protocol, offset of the transport header). IPv6 extension
/// headers are not walked: their type is returned as the protocol.
#[inline(always)]
pub fn ip(ctx: &SkBuffContext) -> Option<(u8, u8, usize)> {
    let first: u8 = ctx.load(0).ok()?;
    match first >> 4 {
        4 => Some((4, ctx.load::<u8>(9).ok()?, ((first & 0x0f) as usize) * 4)),
        6 => Some((6, ctx.load::<u8>(6).ok()?, 40)),
        _ => None,
    }
}

/// Offset of a TCP segment's payload, from the data offset (in 32-bit words) in the high nibble
/// of the header's byte 12.
#[inline(always)]
pub fn tcp_payload(ctx: &SkBuffContext, l4: usize) -> Option<usize> {
    let data_offset: u8 = ctx.load(l4 + 12).ok()?;
    Some(l4 + ((data_offset >> 4) as usize) * 4)
}
