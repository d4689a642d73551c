//! The host's answers to steered packets, on their way out: a TCP RST
//! sent from port 0, or an ICMP / ICMPv6 error quoting a packet sent to
//! port 0, whose peer and port `STEERED` knows (`conceal`), gets back the
//! ports of the packet the prober sent: the RST's own ports, or the quoted
//! header's ports and checksum, with the checksums over them updated. Any
//! other packet leaves untouched, and so does an answer from port 0 that
//! no steered packet explains (a probe of port 0 itself).
//!
//! This runs as a TC egress program (`xknock_restore`, in `programs.rs`)
//! on every interface the filter guards; it reads and writes through the
//! socket buffer's helpers, which check every offset.

use aya_ebpf::{EbpfContext as _, helpers::generated::bpf_skb_load_bytes, programs::TcContext};
use knock_common::{
    Answer, IPPROTO_FRAGMENT, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
    IPV6_HEADER_LEN, MAX_IPV6_EXT_HEADERS, MAX_VLAN_DEPTH, STEER_TO_PORT, SteerKey, TCP_RST,
    is_ipv6_extension, quotes_a_packet,
};

use crate::conceal;

const ETH_HEADER_LEN: usize = 14;
const VLAN_TAG_LEN: usize = 4;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// `BPF_F_PSEUDO_HDR` is not set: ports and quotes are not in the
/// pseudo-header. The low bits give the size of the field replaced.
const CSUM_WORD: u64 = 2;
/// Where the checksum is in an ICMP header, a TCP header and a UDP header.
const ICMP_CHECK_AT: usize = 2;
const TCP_CHECK_AT: usize = 16;
const UDP_CHECK_AT: usize = 6;
/// Where the ICMP error's quote starts, after its header.
const QUOTE_AT: usize = 8;

/// Gives an answer to a steered packet back its ports; counts what it did
/// when the packet was such an answer (or looked like one).
#[inline(always)]
pub fn restore(ctx: &TcContext) {
    if let Some(answer) = try_restore(ctx) {
        conceal::count(answer);
    }
}

/// Where the IP header starts, and whether it is IPv6; `None` for anything
/// but IP.
#[inline(always)]
fn network(ctx: &TcContext) -> Option<(usize, bool)> {
    let mut offset = ETH_HEADER_LEN;
    let mut ethertype = u16::from_be_bytes(two(ctx, offset - 2)?);
    for _ in 0..MAX_VLAN_DEPTH {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        ethertype = u16::from_be_bytes(two(ctx, offset + 2)?);
        offset += VLAN_TAG_LEN;
    }
    match ethertype {
        ETH_P_IPV4 => Some((offset, false)),
        ETH_P_IPV6 => Some((offset, true)),
        _ => None,
    }
}

/// `None`: not an answer from port 0.
#[inline(always)]
fn try_restore(ctx: &TcContext) -> Option<Answer> {
    let (l3, v6) = network(ctx)?;
    // The answer goes to the peer: its destination address.
    let (proto, l4, peer) = if v6 {
        (
            byte(ctx, l3 + 6)?,
            l3 + IPV6_HEADER_LEN,
            Peer { at: l3 + 24, v6 },
        )
    } else {
        let header_len = usize::from(byte(ctx, l3)? & 0x0f) * 4;
        (
            byte(ctx, l3 + 9)?,
            l3 + header_len,
            Peer { at: l3 + 16, v6 },
        )
    };
    match proto {
        IPPROTO_TCP => rst(ctx, l4, peer),
        IPPROTO_ICMP if !v6 => quoted(ctx, l4, false),
        IPPROTO_ICMPV6 if v6 => quoted(ctx, l4, true),
        _ => None,
    }
}

/// An RST from port 0 to a steered flow's peer and port.
#[inline(always)]
fn rst(ctx: &TcContext, l4: usize, peer: Peer) -> Option<Answer> {
    let ports = four(ctx, l4)?;
    if [ports[0], ports[1]] != STEER_TO_PORT || byte(ctx, l4 + 13)? & TCP_RST == 0 {
        return None;
    }
    let key = peer.key(ctx, [ports[2], ports[3]], IPPROTO_TCP)?;
    let Some(steered) = conceal::steered(&key) else {
        return Some(Answer::Unmatched);
    };
    // The RST goes back: from the port probed to the prober's port.
    replace(ctx, l4, STEER_TO_PORT, steered.dst_port, l4 + TCP_CHECK_AT)?;
    replace(ctx, l4 + 2, key.port, steered.src_port, l4 + TCP_CHECK_AT)?;
    Some(Answer::Restored)
}

/// An ICMP or ICMPv6 error quoting a TCP or UDP packet sent to port 0.
#[inline(always)]
fn quoted(ctx: &TcContext, icmp: usize, v6: bool) -> Option<Answer> {
    let icmp_type = byte(ctx, icmp)?;
    if !quotes_a_packet(v6, icmp_type) {
        return None;
    }
    let quote = icmp + QUOTE_AT;
    let (proto, l4, peer) = if v6 {
        quoted_v6(ctx, quote)?
    } else {
        // A later fragment quotes no ports; steered packets are first ones.
        if u16::from_be_bytes(two(ctx, quote + 6)?) & 0x1fff != 0 {
            return None;
        }
        let header_len = usize::from(byte(ctx, quote)? & 0x0f) * 4;
        // The quoted packet came from the peer: its source address.
        let peer = Peer {
            at: quote + 12,
            v6: false,
        };
        (byte(ctx, quote + 9)?, quote + header_len, peer)
    };
    let check_at = match proto {
        IPPROTO_TCP => TCP_CHECK_AT,
        IPPROTO_UDP => UDP_CHECK_AT,
        _ => return None,
    };
    let ports = four(ctx, l4)?;
    if [ports[2], ports[3]] != STEER_TO_PORT {
        return None;
    }
    let key = peer.key(ctx, [ports[0], ports[1]], proto)?;
    let Some(steered) = conceal::steered(&key) else {
        return Some(Answer::Unmatched);
    };
    let icmp_check = icmp + ICMP_CHECK_AT;
    replace(ctx, l4, key.port, steered.src_port, icmp_check)?;
    replace(ctx, l4 + 2, STEER_TO_PORT, steered.dst_port, icmp_check)?;
    // The quote may end before the checksum (a short TCP quote).
    if let Some(check) = two(ctx, l4 + check_at) {
        replace(ctx, l4 + check_at, check, steered.check, icmp_check)?;
    }
    Some(Answer::Restored)
}

/// The protocol, header offset and source of the packet an ICMPv6 error
/// quotes at `quote`, past its extension headers.
#[inline(always)]
fn quoted_v6(ctx: &TcContext, quote: usize) -> Option<(u8, usize, Peer)> {
    let peer = Peer {
        at: quote + 8,
        v6: true,
    };
    let mut next = byte(ctx, quote + 6)?;
    let mut offset = quote + IPV6_HEADER_LEN;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        if !is_ipv6_extension(next) {
            break;
        }
        let ext = four(ctx, offset)?;
        offset += match next {
            IPPROTO_FRAGMENT => {
                if u16::from_be_bytes([ext[2], ext[3]]) >> 3 != 0 {
                    return None;
                }
                8
            }
            knock_common::IPPROTO_AH => (usize::from(ext[1]) + 2) * 4,
            _ => (usize::from(ext[1]) + 1) * 8,
        };
        next = ext[0];
    }
    Some((next, offset, peer))
}

/// The byte at `at`. Fields are read one by one in types of their own
/// alignment: the verifier refuses misaligned reads of a copied array.
#[inline(always)]
fn byte(ctx: &TcContext, at: usize) -> Option<u8> {
    ctx.load::<u8>(at).ok()
}

/// The two bytes at `at`, as on the wire.
#[inline(always)]
fn two(ctx: &TcContext, at: usize) -> Option<[u8; 2]> {
    ctx.load::<u16>(at).ok().map(u16::to_ne_bytes)
}

/// The four bytes at `at`, as on the wire.
#[inline(always)]
fn four(ctx: &TcContext, at: usize) -> Option<[u8; 4]> {
    ctx.load::<u32>(at).ok().map(u32::to_ne_bytes)
}

/// Where the peer's address is in the packet.
#[derive(Clone, Copy)]
struct Peer {
    at: usize,
    v6: bool,
}

impl Peer {
    /// The key of the steered flow of this peer, `port` and `proto`. The
    /// address is read straight into the key: the verifier refuses the
    /// misaligned stack reads a copy of it can compile to.
    #[inline(always)]
    fn key(self, ctx: &TcContext, port: [u8; 2], proto: u8) -> Option<SteerKey> {
        let mut key = SteerKey {
            peer: [0; 16],
            port,
            proto,
            _pad: 0,
        };
        if self.v6 {
            load_into(ctx, self.at, &mut key.peer)?;
        } else {
            key.peer[10] = 0xff;
            key.peer[11] = 0xff;
            let v4: &mut [u8; 4] = (&mut key.peer[12..]).try_into().ok()?;
            load_into(ctx, self.at, v4)?;
        }
        Some(key)
    }
}

/// Copies the `N` bytes at `at` into `dst`.
#[inline(always)]
fn load_into<const N: usize>(ctx: &TcContext, at: usize, dst: &mut [u8; N]) -> Option<()> {
    // SAFETY: the helper writes at most `N` bytes to `dst`, which holds `N`,
    // and checks the offset against the packet.
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.as_ptr().cast_const(),
            at as u32,
            dst.as_mut_ptr().cast(),
            N as u32,
        )
    };
    (ret == 0).then_some(())
}

/// Writes `to` over the 16-bit field at `at` (which holds `from`) and
/// updates the checksum at `check_at` that covers it.
#[inline(always)]
fn replace(ctx: &TcContext, at: usize, from: [u8; 2], to: [u8; 2], check_at: usize) -> Option<()> {
    ctx.l4_csum_replace(
        check_at,
        u64::from(u16::from_ne_bytes(from)),
        u64::from(u16::from_ne_bytes(to)),
        CSUM_WORD,
    )
    .ok()?;
    ctx.store(at, &to, 0).ok()
}
