//! What the wire says: protocol numbers, header sizes and flags, the limits
//! of the parser's walk over a frame. One definition each, for the XDP program, the loader and the tests.

/// Ethernet: the header, a VLAN tag, and the EtherTypes the programs read.
pub const ETH_HEADER_LEN: usize = 14;
pub const VLAN_TAG_LEN: usize = 4;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

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

/// IPv6 extension headers (and AH) by their next-header numbers.
pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_DSTOPTS: u8 = 60;
pub const IPPROTO_MOBILITY: u8 = 135;
pub const IPPROTO_HIP: u8 = 139;
pub const IPPROTO_SHIM6: u8 = 140;

/// Whether `next_header` is an IPv6 extension header (one the parser walks
/// past, or AH).
#[inline(always)]
pub fn is_ipv6_extension(next_header: u8) -> bool {
    matches!(
        next_header,
        IPPROTO_HOPOPTS
            | IPPROTO_ROUTING
            | IPPROTO_FRAGMENT
            | IPPROTO_AH
            | IPPROTO_DSTOPTS
            | IPPROTO_MOBILITY
            | IPPROTO_HIP
            | IPPROTO_SHIM6
    )
}

/// TCP header flags.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_URG: u8 = 0x20;

/// ICMP and ICMPv6 message types: echo requests, and the errors that
/// quote the packet they answer.
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETERPROB: u8 = 12;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_DEST_UNREACH: u8 = 1;
pub const ICMPV6_PKT_TOOBIG: u8 = 2;
pub const ICMPV6_TIME_EXCEED: u8 = 3;
pub const ICMPV6_PARAMPROB: u8 = 4;

/// Header sizes without options.
pub const IPV4_HEADER_LEN: usize = 20;
pub const IPV6_HEADER_LEN: usize = 40;
pub const TCP_HEADER_LEN: usize = 20;
/// Where a TCP and a UDP header hold their checksum.
pub const TCP_CHECK_AT: usize = 16;
pub const UDP_CHECK_AT: usize = 6;

/// Where the checksum of a `proto` header is: TCP's or UDP's, else none.
#[inline(always)]
pub fn l4_check_at(proto: u8) -> Option<usize> {
    match proto {
        IPPROTO_TCP => Some(TCP_CHECK_AT),
        IPPROTO_UDP => Some(UDP_CHECK_AT),
        _ => None,
    }
}
pub const UDP_HEADER_LEN: usize = 8;
pub const ICMP_HEADER_LEN: usize = 8;

/// XDP program return codes (`enum xdp_action`), as a test run reports them.
pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
