//! Reference XDP programs the benchmarks measure xknock against, and the
//! flood generator they drive it with. Not part of the filter.
#![no_std]
#![no_main]

mod object;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::bpf_get_prandom_u32,
    macros::{map, xdp},
    maps::Array,
    programs::XdpContext,
};

/// Bytes of the flood's frame: Ethernet, a 20-byte IPv4 header and a
/// 20-byte TCP header.
pub const FLOOD_FRAME_LEN: usize = 14 + 20 + 20;

/// The frame `xdp_flood` sends, set by the bench before a run.
#[map]
static FLOOD_TEMPLATE: Array<[u8; FLOOD_FRAME_LEN]> = Array::with_max_entries(1, 0);

/// The floor of per-packet cost: does nothing.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The ceiling of drop rate: drops everything unread.
#[xdp]
pub fn xdp_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// The least a filter must do: read the TCP destination port of an
/// untagged IPv4 frame (assumed, not checked) and drop port 22.
#[xdp]
pub fn xdp_read_drop(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + TCP_DST_PORT + 2 > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: the check above keeps the read inside the frame.
    let port = unsafe { *((start + TCP_DST_PORT) as *const [u8; 2]) };
    if port == 22u16.to_be_bytes() {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// The least a correct filter must do, and the reference xknock's paths are
/// measured against: a minimal fail-closed port filter for IPv4 and IPv6.
/// It reads the EtherType, then for IPv4 the version, the real header length
/// (IHL), the fragment offset (later fragments pass) and the protocol, for
/// IPv6 the next header (no extension headers); then the TCP or UDP
/// destination port, and drops TCP port 22. A frame too short for what it
/// must read, or an IPv4 header with a bad version or length, is dropped:
/// it fails closed. Everything else (non-IP, other protocols) passes.
#[xdp]
pub fn xdp_minimal_filter(ctx: XdpContext) -> u32 {
    minimal_filter(&ctx).unwrap_or(xdp_action::XDP_DROP)
}

#[inline(always)]
fn minimal_filter(ctx: &XdpContext) -> Option<u32> {
    const ETH_LEN: usize = 14;
    const TCP: u8 = 6;
    const UDP: u8 = 17;
    let (proto, l4) = match read::<2>(ctx, ETH_LEN - 2)? {
        [0x08, 0x00] => {
            let ip = read::<20>(ctx, ETH_LEN)?;
            let header_len = usize::from(ip[0] & 0x0f) * 4;
            if ip[0] >> 4 != 4 || header_len < 20 {
                return None;
            }
            if u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0 {
                return Some(xdp_action::XDP_PASS);
            }
            (ip[9], ETH_LEN + header_len)
        }
        [0x86, 0xdd] => (read::<40>(ctx, ETH_LEN)?[6], ETH_LEN + 40),
        _ => return Some(xdp_action::XDP_PASS),
    };
    if proto != TCP && proto != UDP {
        return Some(xdp_action::XDP_PASS);
    }
    let port = read::<4>(ctx, l4)?;
    if proto == TCP && [port[2], port[3]] == 22u16.to_be_bytes() {
        Some(xdp_action::XDP_DROP)
    } else {
        Some(xdp_action::XDP_PASS)
    }
}

/// `N` bytes at `offset`, or `None` past the end of the frame.
#[inline(always)]
fn read<const N: usize>(ctx: &XdpContext, offset: usize) -> Option<[u8; N]> {
    // A bound the verifier can follow through the variable IPv4 offset.
    if offset > 128 || ctx.data() + offset + N > ctx.data_end() {
        return None;
    }
    // SAFETY: the check above keeps the read inside the frame; byte arrays
    // need no alignment.
    Some(unsafe { *((ctx.data() + offset) as *const [u8; N]) })
}

/// Offsets in an untagged Ethernet + 20-byte IPv4 + TCP frame.
const IPV4_CHECKSUM: usize = 14 + 10;
const TCP_DST_PORT: usize = 14 + 20 + 2;
const IPV4_SRC: usize = 14 + 12;
const TCP_CHECKSUM: usize = 14 + 20 + 16;

/// RFC 1624 incremental update of a ones'-complement checksum after a
/// 32-bit field changed from `old` to `new`.
#[inline(always)]
fn updated_checksum(checksum: [u8; 2], old: [u8; 4], new: [u8; 4]) -> [u8; 2] {
    let word = |b: [u8; 4], i: usize| u32::from(u16::from_be_bytes([b[i], b[i + 1]]));
    let mut sum = u32::from(!u16::from_be_bytes(checksum));
    sum += (!word(old, 0) & 0xffff) + (!word(old, 2) & 0xffff) + word(new, 0) + word(new, 2);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_be_bytes()
}

/// Under BPF_PROG_TEST_RUN live frames: gives the template TCP/IPv4 frame a
/// random source address, keeping both checksums valid so the kernel's
/// stack and conntrack judge it like a real packet, and transmits it.
#[xdp]
pub fn xdp_flood(ctx: XdpContext) -> u32 {
    flood(&ctx, false)
}

/// `xdp_flood` for a receiver that rewrites the frame it passes to its
/// host (xknock's concealment steers it to port 0): live-frames mode
/// recycles pages as the host frees them, so the steered frame would be
/// the one sent next, and `FLOOD_TEMPLATE` is written over every frame
/// first. The bench floods the closed port it is compared with the same
/// way.
#[xdp]
pub fn xdp_flood_restoring(ctx: XdpContext) -> u32 {
    flood(&ctx, true)
}

#[inline(always)]
fn flood(ctx: &XdpContext, restore: bool) -> u32 {
    let start = ctx.data();
    if start + FLOOD_FRAME_LEN > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    if restore {
        let Some(template) = FLOOD_TEMPLATE.get(0) else {
            return xdp_action::XDP_ABORTED;
        };
        // SAFETY: the check above keeps every access inside the frame.
        // Written without reading the frame: a steered frame keeps its MAC
        // addresses, so no part of it tells it from the template.
        unsafe { *(start as *mut [u8; FLOOD_FRAME_LEN]) = *template };
    }
    // SAFETY: a helper without arguments.
    let new = unsafe { bpf_get_prandom_u32() }.to_be_bytes();
    // SAFETY: the check above keeps every access inside the frame; byte
    // arrays need no alignment.
    unsafe {
        let src = (start + IPV4_SRC) as *mut [u8; 4];
        let ip_checksum = (start + IPV4_CHECKSUM) as *mut [u8; 2];
        let tcp_checksum = (start + TCP_CHECKSUM) as *mut [u8; 2];
        let old = *src;
        *ip_checksum = updated_checksum(*ip_checksum, old, new);
        *tcp_checksum = updated_checksum(*tcp_checksum, old, new);
        *src = new;
    }
    xdp_action::XDP_TX
}
