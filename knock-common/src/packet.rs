//! What the wire says: protocol numbers, header sizes and flags, the limits
//! of the parser's walk over a frame, and the IPv6 flow label of an answer.
//! One definition each, for the XDP program, the loader and the tests.

use crate::AddrWords;

/// VLAN tags (802.1Q / 802.1ad) the parser walks before giving up (fail closed).
pub const MAX_VLAN_DEPTH: usize = 2;
/// IPv6 extension headers the parser walks before giving up (fail closed).
pub const MAX_IPV6_EXT_HEADERS: usize = 8;
/// Largest offset at which the parser reads a header; keeps offsets provably
/// bounded for the verifier (MTU-sized frames never come near it). A header
/// starting beyond it counts as truncated.
pub const MAX_HEADER_OFFSET: usize = 4096;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
/// ICMP; as a `Knock::proto`, an echo request of either family (ICMP over
/// IPv4, ICMPv6 over IPv6), whose `port` is its payload size.
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;

/// The IPv6 flow label of an answer from `dst` back to `src`: a seeded
/// hash of the flow, 20 bits, never zero, as the kernel's automatic flow
/// labels are (the same flow always gets the same label).
#[inline(always)]
pub fn flow_label(seed: u32, src: &AddrWords, dst: &AddrWords, ports: u32) -> u32 {
    let words = [
        src[0], src[1], src[2], src[3], dst[0], dst[1], dst[2], dst[3], ports,
    ];
    let mut hash = seed ^ 0x5bd1_e995;
    let mut i = 0;
    while i < words.len() {
        hash = (hash ^ words[i]).wrapping_mul(0x9e37_79b1);
        hash ^= hash >> 15;
        i += 1;
    }
    let label = hash & 0x000f_ffff;
    if label == 0 { 1 } else { label }
}
