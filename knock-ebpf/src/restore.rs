//! The host's answers to steered packets, on their way out: a TCP RST
//! sent from port 0, or an ICMP / ICMPv6 error quoting a packet sent to
//! port 0, whose peer and port `STEERED` holds (`conceal`), gets back the
//! ports of the packet the prober sent: the RST's own ports, or the quoted
//! header's ports and checksum, with the checksums over them updated. Any
//! other packet leaves untouched, and so does an answer from port 0 that
//! no steered packet explains (a probe of port 0 itself).
//!
//! This runs as a TC egress program (`xknock_restore`, in `programs.rs`)
//! on every interface the filter guards, so every packet that leaves pays
//! for it: it reads headers in place (bounds-checked), and calls helpers
//! only for an answer from port 0.

use aya_ebpf::{EbpfContext as _, helpers::generated::bpf_skb_load_bytes, programs::TcContext};
use knock_common::{
    Answer, ETH_HEADER_LEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, FLOW_LABEL_MASK,
    IPPROTO_FRAGMENT, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, IPV6_HEADER_LEN,
    MAX_HEADER_OFFSET, MAX_IPV6_EXT_HEADERS, MAX_VLAN_DEPTH, STEER_TO_PORT, SteerKey, TCP_CHECK_AT,
    TCP_RST, VLAN_TAG_LEN, addr_words, datagram_echo, is_ipv6_extension, l4_check_at,
    quotes_a_packet, rst_echo, segment_echo, steered_label,
};

use crate::{conceal, settings};

/// `BPF_F_PSEUDO_HDR` is not set: ports and quotes are not in the
/// pseudo-header. The low bits give the size of the field replaced.
const CSUM_WORD: u64 = 2;
const CSUM_PORTS: u64 = 4;
/// Where the checksum is in an ICMP header.
const ICMP_CHECK_AT: usize = 2;
/// Where the ICMP error's quote starts, after its header.
const QUOTE_AT: usize = 8;

/// Gives an answer to a steered packet back its ports; counts what it did
/// when the packet was an answer from port 0. False: the packet is such an
/// answer, but its flow's slot holds another flow, and it must not leave.
#[inline(always)]
pub fn restore(ctx: &TcContext) -> bool {
    let Some(answer) = try_restore(ctx) else {
        return true;
    };
    conceal::count(answer);
    answer != Answer::Unmatched
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
        IPPROTO_TCP => rst(ctx, l3, l4, peer),
        IPPROTO_ICMP if !v6 => quoted(ctx, l4, false),
        IPPROTO_ICMPV6 if v6 => quoted(ctx, l4, true),
        _ => None,
    }
}

/// An RST from port 0 to a steered flow's peer and port.
#[inline(always)]
fn rst(ctx: &TcContext, l3: usize, l4: usize, peer: Peer) -> Option<Answer> {
    let ports = four(ctx, l4)?;
    if [ports[0], ports[1]] != STEER_TO_PORT || byte(ctx, l4 + 13)? & TCP_RST == 0 {
        return None;
    }
    let numbers = loaded::<8>(ctx, l4 + 4)?;
    let echo = rst_echo(
        byte(ctx, l4 + 13)?,
        [numbers[0], numbers[1], numbers[2], numbers[3]],
        [numbers[4], numbers[5], numbers[6], numbers[7]],
    );
    let key = peer.key(ctx, [ports[2], ports[3]], IPPROTO_TCP)?;
    let seed = settings::settings()?.source_seed;
    let Some(steered) = conceal::steered(&key, seed, echo) else {
        return Some(Answer::Unmatched);
    };
    if steered.to_port_zero() {
        return Some(Answer::PortZero);
    }
    // The RST goes back: from the port probed to the prober's port.
    let to = [
        steered.dst_port[0],
        steered.dst_port[1],
        steered.src_port[0],
        steered.src_port[1],
    ];
    replace_ports(ctx, l4, ports, to, l4 + TCP_CHECK_AT)?;
    if peer.v6 {
        // The host hashed the steered ports into the label: the label the
        // prober sees is one of the flow it sent (outside every checksum).
        let word = u32::from_be_bytes(four(ctx, l3)?);
        let made = word & FLOW_LABEL_MASK;
        let label = steered_label(seed, &addr_words(&key.peer), &steered, made);
        if label != made {
            ctx.store(l3, &((word & !FLOW_LABEL_MASK) | label).to_be_bytes(), 0)
                .ok()?;
        }
    }
    Some(Answer::Restored)
}

/// An ICMP or ICMPv6 error quoting a TCP or UDP packet sent to port 0.
#[inline(always)]
fn quoted(ctx: &TcContext, icmp: usize, v6: bool) -> Option<Answer> {
    let icmp_type = byte(ctx, icmp)?;
    if !quotes_a_packet(v6, icmp_type) {
        return None;
    }
    // A rare packet (an error the host sends): its quote is read through
    // the helper, wherever it lies in the buffer.
    let quote = icmp + QUOTE_AT;
    let (proto, l4, peer, ip_len) = if v6 {
        quoted_v6(ctx, quote)?
    } else {
        // A later fragment quotes no ports; steered packets are first ones.
        if u16::from_be_bytes(loaded::<2>(ctx, quote + 6)?) & 0x1fff != 0 {
            return None;
        }
        let header_len = usize::from(loaded::<1>(ctx, quote)?[0] & 0x0f) * 4;
        // The quoted packet came from the peer: its source address.
        let peer = Peer {
            at: quote + 12,
            v6: false,
        };
        let ip_len = usize::from(u16::from_be_bytes(loaded::<2>(ctx, quote + 2)?));
        (
            loaded::<1>(ctx, quote + 9)?[0],
            quote + header_len,
            peer,
            ip_len,
        )
    };
    let check_at = l4_check_at(proto)?;
    let ports = loaded::<4>(ctx, l4)?;
    if [ports[2], ports[3]] != STEER_TO_PORT {
        return None;
    }
    let echo = quoted_echo(ctx, proto, l4, quote + ip_len);
    let key = peer.key(ctx, [ports[0], ports[1]], proto)?;
    let seed = settings::settings()?.source_seed;
    let Some(steered) = conceal::steered(&key, seed, echo) else {
        return Some(Answer::Unmatched);
    };
    if steered.to_port_zero() {
        return Some(Answer::PortZero);
    }
    let icmp_check = icmp + ICMP_CHECK_AT;
    let to = [
        steered.src_port[0],
        steered.src_port[1],
        steered.dst_port[0],
        steered.dst_port[1],
    ];
    replace_ports(ctx, l4, ports, to, icmp_check)?;
    // The quote may end before the checksum (a short TCP quote).
    if let Some(check) = loaded::<2>(ctx, l4 + check_at) {
        replace(ctx, l4 + check_at, check, steered.check, icmp_check)?;
    }
    Some(Answer::Restored)
}

/// What the quoted packet, whose transport header is at `l4` and which
/// ends at `end` (by its IP length), says an answer to it echoes: as the
/// steering recorded it (`conceal::echo`). A quote too short to say is
/// echoed by nothing a record holds (but a first fragment's).
#[inline(always)]
fn quoted_echo(ctx: &TcContext, proto: u8, l4: usize, end: usize) -> [u8; 4] {
    if proto == IPPROTO_UDP {
        return loaded::<4>(ctx, l4 + 4)
            .map_or([0; 4], |f| datagram_echo([f[0], f[1]], [f[2], f[3]]));
    }
    let Some(f) = loaded::<10>(ctx, l4 + 4) else {
        return [0; 4];
    };
    let data_len = end.saturating_sub(l4 + usize::from(f[8] >> 4) * 4);
    segment_echo(
        f[9],
        [f[0], f[1], f[2], f[3]],
        [f[4], f[5], f[6], f[7]],
        data_len as u32,
    )
}

/// The protocol, header offset, source and IP length of the packet an
/// ICMPv6 error quotes at `quote`, past its extension headers.
#[inline(always)]
fn quoted_v6(ctx: &TcContext, quote: usize) -> Option<(u8, usize, Peer, usize)> {
    let peer = Peer {
        at: quote + 8,
        v6: true,
    };
    let mut next = loaded::<1>(ctx, quote + 6)?[0];
    let mut offset = quote + IPV6_HEADER_LEN;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        if !is_ipv6_extension(next) {
            break;
        }
        let ext = loaded::<4>(ctx, offset)?;
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
    let payload = usize::from(u16::from_be_bytes(loaded::<2>(ctx, quote + 4)?));
    Some((next, offset, peer, IPV6_HEADER_LEN + payload))
}

/// The `N` bytes at `at`, read in place from the packet's linear part.
#[inline(always)]
fn bytes<const N: usize>(ctx: &TcContext, at: usize) -> Option<[u8; N]> {
    let start = ctx.data();
    if at > MAX_HEADER_OFFSET || start + at + N > ctx.data_end() {
        return None;
    }
    // SAFETY: the `N` bytes lie within the packet, as just checked.
    Some(unsafe { *((start + at) as *const [u8; N]) })
}

/// The `N` bytes at `at`, copied out by the helper (which finds them in
/// the paged part too).
#[inline(always)]
fn loaded<const N: usize>(ctx: &TcContext, at: usize) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    load_into(ctx, at, &mut out)?;
    Some(out)
}

/// The byte at `at` (read with the one after it: a one-byte bound compiles
/// to `ptr >= end`, from which the verifier learns no range).
#[inline(always)]
fn byte(ctx: &TcContext, at: usize) -> Option<u8> {
    bytes::<2>(ctx, at).map(|b| b[0])
}

/// The two bytes at `at`, as on the wire.
#[inline(always)]
fn two(ctx: &TcContext, at: usize) -> Option<[u8; 2]> {
    bytes::<2>(ctx, at)
}

/// The four bytes at `at`, as on the wire.
#[inline(always)]
fn four(ctx: &TcContext, at: usize) -> Option<[u8; 4]> {
    bytes::<4>(ctx, at)
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

/// Writes `to` over the two ports at `at` (which hold `from`) and updates
/// the checksum at `check_at` that covers them.
#[inline(always)]
fn replace_ports(
    ctx: &TcContext,
    at: usize,
    from: [u8; 4],
    to: [u8; 4],
    check_at: usize,
) -> Option<()> {
    ctx.l4_csum_replace(
        check_at,
        u64::from(u32::from_ne_bytes(from)),
        u64::from(u32::from_ne_bytes(to)),
        CSUM_PORTS,
    )
    .ok()?;
    ctx.store(at, &to, 0).ok()
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
