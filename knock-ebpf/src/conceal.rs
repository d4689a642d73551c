//! Concealment: a packet stopped at a knock port, or at a protected port for
//! a source without a grant, gets what this host's kernel answers at a port
//! where nothing listens: a TCP RST (RFC 9293, as `tcp_v4_send_reset` and
//! `tcp_v6_send_reset` build it), or an ICMP / ICMPv6 port unreachable
//! within the kernel's ICMP rate limits. The answer is built in place of the
//! packet and sent back with XDP_TX. It depends on the packet alone, never
//! on knock progress, grants or penalties, so no step can be guessed on its
//! own. Where the kernel stays silent (an RST, a wrong checksum, a fragment,
//! a broadcast, a martian source), so does this.
//!
//! The answer is a program of its own, `xknock_conceal` (in `programs.rs`),
//! that the filter tail-calls for the packets it stops: the verifier checks
//! it once, not once for every way the filter can reach a drop. Without it
//! (an empty `CONCEAL` slot) the packet is dropped silently.

use aya_ebpf::{
    bindings::xdp_md,
    cty::c_void,
    helpers::generated::{
        bpf_csum_diff, bpf_get_prandom_u32, bpf_ktime_get_coarse_ns, bpf_loop, bpf_xdp_adjust_head,
        bpf_xdp_adjust_tail, bpf_xdp_load_bytes,
    },
    macros::map,
    maps::{Array, PerCpuArray, ProgramArray},
    programs::XdpContext,
};
use knock_common::{
    Answer, ICMP_DEST_UNREACH, ICMP_HEADER_LEN, ICMP_PORT_UNREACH, ICMPV6_DEST_UNREACH,
    ICMPV6_PORT_UNREACH, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, IPV4_HEADER_LEN,
    IPV6_HEADER_LEN, SOURCE_HORIZON_SLOTS, Settings, TCP_ACK, TCP_FIN, TCP_HEADER_LEN, TCP_RST,
    TCP_SYN, UDP_HEADER_LEN, addr_words,
    checksum::{Sum, pseudo_v4, pseudo_v6},
    flow_label, ipv4_mapped,
    ratelimit::{GlobalIcmpBudget, PeerIcmpRate},
    source_slot,
};

use crate::parse::{self, Parsed, Transport, bytes_at, store_at};

#[map]
static CONCEAL: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map]
static ANSWERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Answer::COUNT, 0);
#[map]
static ICMP_GLOBAL: Array<GlobalIcmpBudget> = Array::with_max_entries(1, 0);
#[map]
static ICMP_PEERS: Array<PeerIcmpRate> = Array::with_max_entries(SOURCE_HORIZON_SLOTS, 0);
/// Where `sum_packet` copies a chunk of the packet: the stack has no room.
/// One word longer than a chunk, so the verifier sees that a chunk rounded
/// up to whole words still fits.
#[map]
static SUM_SCRATCH: PerCpuArray<[u32; CHUNK / 4 + 1]> = PerCpuArray::with_max_entries(1, 0);

const IPV4_DONT_FRAGMENT: u8 = 0x40;
const ECN_MASK: u8 = 0x03;
/// `IPTOS_TOS_MASK` and `IPTOS_PREC_INTERNETCONTROL`: an ICMP error keeps
/// the probe's TOS bits and takes the internetwork-control precedence.
const IPTOS_TOS_MASK: u8 = 0x1e;
const IPTOS_PREC_INTERNETCONTROL: u8 = 0xc0;
/// An ICMP error is at most 576 bytes (RFC 1812, `icmp_send`); an ICMPv6
/// one at most the IPv6 minimum MTU (RFC 4443, `icmp6_send`).
const ICMP_ERROR_MAX: usize = 576;
const ICMPV6_ERROR_MAX: usize = 1280;
/// Largest L4 length whose checksum is checked; longer ones get no answer.
/// Covers a 9000-byte jumbo frame.
const MAX_SUMMED: usize = 9216;
/// Bytes summed per helper call, copied to the stack first.
const CHUNK: usize = 512;

/// Why no answer: the kernel would not give one either.
#[derive(Clone, Copy)]
struct Silent;

impl From<parse::ParseError> for Silent {
    fn from(_: parse::ParseError) -> Silent {
        Silent
    }
}

/// Hands a packet the filter stopped to `xknock_conceal`; returns only if
/// that program is not in place.
#[inline(always)]
pub fn hand_over(ctx: &XdpContext) {
    // SAFETY: the slot holds an XDP program of this object or nothing.
    unsafe { CONCEAL.tail_call(ctx, 0) };
}

/// The answer a closed port of this host would give to the packet the
/// filter stopped, built in its place; `Unanswerable` where the kernel
/// would stay silent.
#[inline(always)]
pub fn answer(ctx: &XdpContext, settings: &Settings) -> Answer {
    build(ctx, settings).unwrap_or(Answer::Unanswerable)
}

/// Counts an answer (or the silence) by its kind.
#[inline(always)]
pub fn count(answer: Answer) {
    if let Some(counter) = ANSWERS.get_ptr_mut(answer as u32) {
        // SAFETY: a per-CPU slot, only touched by this CPU while it runs us.
        unsafe { *counter += 1 };
    }
}

/// The IP layer of a probe, as far as an answer needs it.
#[derive(Clone, Copy)]
struct Probe {
    /// Where the IP header starts (after Ethernet and VLAN tags).
    l3: usize,
    /// The IP packet's length (header, extension headers and payload).
    l3_len: usize,
    /// Where the TCP or UDP header starts, and its length with payload.
    l4: usize,
    l4_len: usize,
    /// Addresses in the one key form; the answer goes from `dst` to `src`.
    src: [u8; 16],
    dst: [u8; 16],
    /// TOS or traffic class.
    tos: u8,
    v6: bool,
}

impl Probe {
    #[inline(always)]
    fn v4(addr: &[u8; 16]) -> [u8; 4] {
        [addr[12], addr[13], addr[14], addr[15]]
    }

    /// The sum of the L4 pseudo-header for a segment of `length` bytes
    /// from `from` to `to`.
    #[inline(always)]
    fn pseudo(&self, from: &[u8; 16], to: &[u8; 16], proto: u8, length: usize) -> Sum {
        if self.v6 {
            pseudo_v6(from, to, proto, length as u32)
        } else {
            pseudo_v4(&Probe::v4(from), &Probe::v4(to), proto, length as u16)
        }
    }

    /// Whether the probe's L4 checksum verifies, as the kernel checks it
    /// before answering. A checksum left to offload by a local sender on
    /// veth (the pseudo-header sum alone) counts as right, as the kernel
    /// trusts such packets.
    #[inline(always)]
    fn checksum_ok(&self, ctx: &XdpContext, proto: u8, field: [u8; 2]) -> Result<bool, Silent> {
        let pseudo = self.pseudo(&self.src, &self.dst, proto, self.l4_len);
        if u16::from_be_bytes(field) == pseudo.folded() {
            return Ok(true);
        }
        Ok(pseudo
            .plus(sum_packet(ctx, self.l4, self.l4_len)?)
            .verifies())
    }
}

#[inline(always)]
fn build(ctx: &XdpContext, settings: &Settings) -> Result<Answer, Silent> {
    let Parsed::Transport(transport) = parse::parse(ctx)? else {
        return Err(Silent);
    };
    let eth = bytes_at::<12>(ctx, 0)?;
    // Only frames addressed to this host, from a unicast sender: the kernel
    // answers PACKET_HOST only.
    if eth[0] & 1 != 0 || eth[6] & 1 != 0 {
        return Err(Silent);
    }
    if !transport.whole {
        return Err(Silent);
    }
    let probe = read_probe(ctx, &transport)?;
    match transport.proto {
        IPPROTO_TCP => rst(ctx, settings, &probe),
        IPPROTO_UDP => port_unreachable(ctx, settings, &probe),
        _ => Err(Silent),
    }
}

#[inline(always)]
fn read_probe(ctx: &XdpContext, transport: &Transport) -> Result<Probe, Silent> {
    let frame_len = ctx.data_end() - ctx.data();
    let (l3, v6) = transport.network();
    let l4 = transport.header_at();
    let (src, dst, tos, l3_len) = if v6 {
        let header = bytes_at::<IPV6_HEADER_LEN>(ctx, l3)?;
        let payload = usize::from(u16::from_be_bytes([header[4], header[5]]));
        let src: [u8; 16] = sub(&header, 8);
        let dst: [u8; 16] = sub(&header, 24);
        // A jumbogram (payload 0), and sources the kernel drops on input:
        // unspecified, loopback, multicast, IPv4-mapped. No answer to a
        // multicast destination either.
        if payload == 0
            || src == [0; 16]
            || src == LOOPBACK_V6
            || src[0] == 0xff
            || src[..12] == ipv4_mapped([0; 4])[..12]
            || dst[0] == 0xff
        {
            return Err(Silent);
        }
        let tclass = (header[0] << 4) | (header[1] >> 4);
        (src, dst, tclass, IPV6_HEADER_LEN + payload)
    } else {
        let header = bytes_at::<IPV4_HEADER_LEN>(ctx, l3)?;
        let header_len = usize::from(header[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([header[2], header[3]]));
        // The kernel drops a bad header checksum.
        if total < header_len || !sum_packet(ctx, l3, header_len)?.verifies() {
            return Err(Silent);
        }
        let src = [header[12], header[13], header[14], header[15]];
        let dst = [header[16], header[17], header[18], header[19]];
        if martian_v4(src) || martian_v4(dst) {
            return Err(Silent);
        }
        (ipv4_mapped(src), ipv4_mapped(dst), header[1], total)
    };
    // The kernel drops a packet shorter than its IP header says.
    if l3 + l3_len > frame_len || l4 > l3 + l3_len {
        return Err(Silent);
    }
    Ok(Probe {
        l3,
        l3_len,
        l4,
        l4_len: l3 + l3_len - l4,
        src,
        dst,
        tos,
        v6,
    })
}

const LOOPBACK_V6: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// Addresses never answered: this network (0/8), loopback (127/8),
/// multicast, reserved and the limited broadcast (224.0.0.0 and up).
#[inline(always)]
fn martian_v4(addr: [u8; 4]) -> bool {
    addr[0] == 0 || addr[0] == 127 || addr[0] >= 224
}

#[inline(always)]
fn sub<const N: usize, const M: usize>(bytes: &[u8; N], at: usize) -> [u8; M] {
    let mut out = [0u8; M];
    let mut i = 0;
    while i < M {
        out[i] = bytes[at + i];
        i += 1;
    }
    out
}

/// The RST a closed port sends (`tcp_v4_send_reset`): to a segment with
/// ACK, an RST whose sequence number is that ACK; to any other, an RST+ACK
/// acknowledging its SYN, FIN and payload. No answer to an RST.
#[inline(always)]
fn rst(ctx: &XdpContext, settings: &Settings, probe: &Probe) -> Result<Answer, Silent> {
    let tcp = bytes_at::<TCP_HEADER_LEN>(ctx, probe.l4)?;
    let header_len = usize::from(tcp[12] >> 4) * 4;
    let flags = tcp[13];
    if flags & TCP_RST != 0 || header_len < TCP_HEADER_LEN || header_len > probe.l4_len {
        return Err(Silent);
    }
    if !probe.checksum_ok(ctx, IPPROTO_TCP, [tcp[16], tcp[17]])? {
        return Ok(Answer::BadChecksum);
    }
    let (seq, ack, answer_flags) = if flags & TCP_ACK != 0 {
        ([tcp[8], tcp[9], tcp[10], tcp[11]], 0u32, TCP_RST)
    } else {
        let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
        let payload = (probe.l4_len - header_len) as u32;
        let consumed = u32::from(flags & TCP_SYN != 0) + u32::from(flags & TCP_FIN != 0);
        (
            [0; 4],
            seq.wrapping_add(consumed).wrapping_add(payload),
            TCP_RST | TCP_ACK,
        )
    };
    let ack = ack.to_be_bytes();
    let mut segment = [
        tcp[2],
        tcp[3],
        tcp[0],
        tcp[1],
        seq[0],
        seq[1],
        seq[2],
        seq[3],
        ack[0],
        ack[1],
        ack[2],
        ack[3],
        0x50,
        answer_flags,
        0,
        0,
        0,
        0,
        0,
        0,
    ];
    let checksum = probe
        .pseudo(&probe.dst, &probe.src, IPPROTO_TCP, TCP_HEADER_LEN)
        .bytes(&segment)
        .checksum()
        .to_be_bytes();
    segment[16] = checksum[0];
    segment[17] = checksum[1];
    // The kernel's RST reflects the probe's DSCP (not its ECN bits).
    let tos = probe.tos & !ECN_MASK;
    if probe.v6 {
        let label = flow_label(
            settings.source_seed,
            &addr_words(&probe.src),
            &addr_words(&probe.dst),
            u32::from_be_bytes([tcp[0], tcp[1], tcp[2], tcp[3]]),
        );
        resize(ctx, probe.l3 + IPV6_HEADER_LEN + TCP_HEADER_LEN)?;
        let ip = ipv6_header(
            probe,
            tos,
            label,
            TCP_HEADER_LEN,
            IPPROTO_TCP,
            settings.hop_limit,
        );
        swap_macs(ctx)?;
        store_at(ctx, probe.l3, &ip)?;
        store_at(ctx, probe.l3 + IPV6_HEADER_LEN, &segment)?;
    } else {
        resize(ctx, probe.l3 + IPV4_HEADER_LEN + TCP_HEADER_LEN)?;
        // DF set and IP ID 0, as for every packet of the kernel's own
        // unconnected reply socket.
        let ip = ipv4_header(
            probe,
            tos,
            [0, 0],
            IPV4_DONT_FRAGMENT,
            IPV4_HEADER_LEN + TCP_HEADER_LEN,
            IPPROTO_TCP,
            settings.ttl,
        );
        swap_macs(ctx)?;
        store_at(ctx, probe.l3, &ip)?;
        store_at(ctx, probe.l3 + IPV4_HEADER_LEN, &segment)?;
    }
    Ok(Answer::Rst)
}

/// The ICMP (IPv4) or ICMPv6 port unreachable a closed UDP port gets
/// (`__udp4_lib_rcv` -> `icmp_send`, `__udp6_lib_rcv` -> `icmpv6_send`),
/// quoting the datagram as far as the error's size limit allows.
#[inline(always)]
fn port_unreachable(
    ctx: &XdpContext,
    settings: &Settings,
    probe: &Probe,
) -> Result<Answer, Silent> {
    let udp = bytes_at::<UDP_HEADER_LEN>(ctx, probe.l4)?;
    let length = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    // The kernel drops a datagram longer than its packet, and trims one
    // shorter: it then sums and quotes only up to the UDP length.
    if length < UDP_HEADER_LEN || length > probe.l4_len {
        return Err(Silent);
    }
    let probe = Probe {
        l3_len: probe.l3_len - (probe.l4_len - length),
        l4_len: length,
        ..*probe
    };
    let field = [udp[6], udp[7]];
    // IPv4 UDP may go without a checksum; IPv6 UDP may not.
    if field == [0, 0] {
        if probe.v6 {
            return Ok(Answer::BadChecksum);
        }
    } else if !probe.checksum_ok(ctx, IPPROTO_UDP, field)? {
        return Ok(Answer::BadChecksum);
    }
    if !within_icmp_limits(settings, &probe) {
        return Ok(Answer::RateLimited);
    }
    let (header_len, limit) = if probe.v6 {
        (IPV6_HEADER_LEN, ICMPV6_ERROR_MAX)
    } else {
        (IPV4_HEADER_LEN, ICMP_ERROR_MAX)
    };
    let quote_len = probe.l3_len.min(limit - header_len - ICMP_HEADER_LEN);
    let quoted = sum_packet(ctx, probe.l3, quote_len)?;
    let icmp_len = ICMP_HEADER_LEN + quote_len;
    if probe.v6 {
        let mut icmp = [ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH, 0, 0, 0, 0, 0, 0];
        let checksum = probe
            .pseudo(&probe.dst, &probe.src, IPPROTO_ICMPV6, icmp_len)
            .bytes(&icmp)
            .plus(quoted)
            .checksum()
            .to_be_bytes();
        icmp[2] = checksum[0];
        icmp[3] = checksum[1];
        let label = flow_label(
            settings.source_seed,
            &addr_words(&probe.src),
            &addr_words(&probe.dst),
            u32::from(IPPROTO_ICMPV6),
        );
        let ip = ipv6_header(
            &probe,
            0,
            label,
            icmp_len,
            IPPROTO_ICMPV6,
            settings.hop_limit,
        );
        send_error(ctx, &probe, quote_len, &ip, &icmp)?;
    } else {
        let mut icmp = [ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, 0, 0, 0, 0, 0, 0];
        let checksum = Sum::ZERO.bytes(&icmp).plus(quoted).checksum().to_be_bytes();
        icmp[2] = checksum[0];
        icmp[3] = checksum[1];
        // SAFETY: a helper without arguments. The kernel's IDs for packets
        // without DF come from a keyed hash: unpredictable, like these.
        let id = (unsafe { bpf_get_prandom_u32() } as u16).to_be_bytes();
        let tos = (probe.tos & IPTOS_TOS_MASK) | IPTOS_PREC_INTERNETCONTROL;
        let ip = ipv4_header(
            &probe,
            tos,
            id,
            0,
            header_len + icmp_len,
            IPPROTO_ICMP,
            settings.ttl,
        );
        send_error(ctx, &probe, quote_len, &ip, &icmp)?;
    }
    Ok(Answer::Unreachable)
}

/// Turns the probe into its ICMP error: room for the new IP header (`H`
/// bytes) and ICMP header in front of the probe's own IP packet, which
/// stays where it is as the quote, cut to `quote_len`.
#[inline(always)]
fn send_error<const H: usize>(
    ctx: &XdpContext,
    probe: &Probe,
    quote_len: usize,
    ip: &[u8; H],
    icmp: &[u8; ICMP_HEADER_LEN],
) -> Result<(), Silent> {
    let grow = H + ICMP_HEADER_LEN;
    make_room(ctx, probe.l3, grow)?;
    resize(ctx, probe.l3 + grow + quote_len)?;
    swap_macs(ctx)?;
    store_at(ctx, probe.l3, ip)?;
    store_at(ctx, probe.l3 + H, icmp)?;
    Ok(())
}

/// The kernel's two ICMP limits: the global budget, then the peer's bucket;
/// an error that passes both draws 0 to 2 credits from the budget.
#[inline(always)]
fn within_icmp_limits(settings: &Settings, probe: &Probe) -> bool {
    let interval = if probe.v6 {
        settings.icmpv6_ratelimit_ms
    } else {
        settings.icmp_ratelimit_ms
    };
    if settings.icmp_msgs_per_sec == 0 && interval == 0 {
        return true;
    }
    // SAFETY: a helper without arguments, allowed for XDP programs.
    let now_ms = (unsafe { bpf_ktime_get_coarse_ns() } / 1_000_000) as u32;
    let Some(global) = ICMP_GLOBAL.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a value pointer the array lookup just returned; CPUs racing on
    // it may lose a credit, as the kernel's own budget may.
    let global = unsafe { &mut *global };
    if settings.icmp_msgs_per_sec != 0
        && !global.allow(now_ms, settings.icmp_msgs_per_sec, settings.icmp_msgs_burst)
    {
        return false;
    }
    let slot = source_slot(&addr_words(&probe.src), settings.source_seed);
    let Some(peer) = ICMP_PEERS.get_ptr_mut(slot) else {
        return false;
    };
    // SAFETY: as above.
    if !unsafe { &mut *peer }.allow(now_ms, interval) {
        return false;
    }
    if settings.icmp_msgs_per_sec != 0 {
        // SAFETY: a helper without arguments.
        global.consume(unsafe { bpf_get_prandom_u32() } % 3);
    }
    true
}

#[inline(always)]
fn ipv4_header(
    probe: &Probe,
    tos: u8,
    id: [u8; 2],
    flags: u8,
    total: usize,
    proto: u8,
    ttl: u8,
) -> [u8; IPV4_HEADER_LEN] {
    let total = (total as u16).to_be_bytes();
    let (from, to) = (Probe::v4(&probe.dst), Probe::v4(&probe.src));
    let mut header = [
        0x45, tos, total[0], total[1], id[0], id[1], flags, 0, ttl, proto, 0, 0, from[0], from[1],
        from[2], from[3], to[0], to[1], to[2], to[3],
    ];
    let checksum = Sum::ZERO.bytes(&header).checksum().to_be_bytes();
    header[10] = checksum[0];
    header[11] = checksum[1];
    header
}

#[inline(always)]
fn ipv6_header(
    probe: &Probe,
    tclass: u8,
    label: u32,
    payload: usize,
    next_header: u8,
    hop_limit: u8,
) -> [u8; IPV6_HEADER_LEN] {
    let payload = (payload as u16).to_be_bytes();
    let mut header = [0u8; IPV6_HEADER_LEN];
    header[0] = 0x60 | (tclass >> 4);
    header[1] = (tclass << 4) | ((label >> 16) as u8 & 0x0f);
    header[2] = (label >> 8) as u8;
    header[3] = label as u8;
    header[4] = payload[0];
    header[5] = payload[1];
    header[6] = next_header;
    header[7] = hop_limit;
    let mut i = 0;
    while i < 16 {
        header[8 + i] = probe.dst[i];
        header[24 + i] = probe.src[i];
        i += 1;
    }
    header
}

/// Swaps the Ethernet source and destination; VLAN tags stay as they are.
#[inline(always)]
fn swap_macs(ctx: &XdpContext) -> Result<(), Silent> {
    let macs = bytes_at::<12>(ctx, 0)?;
    let swapped: [u8; 12] = [
        macs[6], macs[7], macs[8], macs[9], macs[10], macs[11], macs[0], macs[1], macs[2], macs[3],
        macs[4], macs[5],
    ];
    store_at(ctx, 0, &swapped)?;
    Ok(())
}

/// Makes the frame `len` bytes long, cutting (or growing) its tail.
#[inline(always)]
fn resize(ctx: &XdpContext, len: usize) -> Result<(), Silent> {
    let current = ctx.data_end() - ctx.data();
    let delta = len as i64 - current as i64;
    if delta != 0 {
        // SAFETY: the context is this program's; the helper checks the delta
        // against the buffer and fails cleanly if it cannot apply it.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta as i32) } != 0 {
            return Err(Silent);
        }
    }
    Ok(())
}

/// Opens `grow` bytes between the link-layer header (`l2_len` bytes:
/// Ethernet and up to two VLAN tags) and the IP header.
#[inline(always)]
fn make_room(ctx: &XdpContext, l2_len: usize, grow: usize) -> Result<(), Silent> {
    // SAFETY: as in `resize`; the headroom XDP guarantees is 256 bytes.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(grow as i32)) } != 0 {
        return Err(Silent);
    }
    let ethernet = bytes_at::<14>(ctx, grow)?;
    store_at(ctx, 0, &ethernet)?;
    if l2_len >= 18 {
        let tag = bytes_at::<4>(ctx, grow + 14)?;
        store_at(ctx, 14, &tag)?;
    }
    if l2_len >= 22 {
        let tag = bytes_at::<4>(ctx, grow + 18)?;
        store_at(ctx, 18, &tag)?;
    }
    Ok(())
}

/// The ones-complement sum of `len` packet bytes from `offset`: one
/// `bpf_loop` round per `CHUNK`, so the verifier checks the chunk once
/// rather than once per round and per path that gets here.
#[inline(always)]
fn sum_packet(ctx: &XdpContext, offset: usize, len: usize) -> Result<Sum, Silent> {
    if offset > MAX_SUMMED || len > MAX_SUMMED {
        return Err(Silent);
    }
    let mut chunks = Chunks {
        ctx: ctx.ctx,
        at: offset as u32,
        end: (offset + len) as u32,
        sum: Sum::ZERO,
        failed: false,
    };
    // SAFETY: the callback is a BPF subprogram with the signature bpf_loop
    // expects, and `chunks` outlives the call.
    unsafe {
        bpf_loop(
            (MAX_SUMMED / CHUNK) as u32 + 1,
            sum_chunk as *mut c_void,
            (&raw mut chunks).cast(),
            0,
        )
    };
    if chunks.failed || chunks.at != chunks.end {
        return Err(Silent);
    }
    Ok(chunks.sum)
}

/// What `sum_chunk` works through, on the caller's stack.
struct Chunks {
    ctx: *mut xdp_md,
    at: u32,
    end: u32,
    sum: Sum,
    failed: bool,
}

/// Sums the next chunk, copied out by `bpf_xdp_load_bytes` (which checks
/// the bounds) into a per-CPU scratch buffer and summed by `bpf_csum_diff`.
/// Returns 0 to go on, 1 to stop.
#[inline(never)]
extern "C" fn sum_chunk(_round: u64, chunks: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer sum_packet gave it.
    let chunks = unsafe { &mut *chunks.cast::<Chunks>() };
    if chunks.at >= chunks.end {
        return 1;
    }
    let Some(scratch) = SUM_SCRATCH.get_ptr_mut(0) else {
        chunks.failed = true;
        return 1;
    };
    // SAFETY: a per-CPU slot, only touched by this CPU while it runs us.
    let scratch = unsafe { &mut *scratch };
    let left = (chunks.end - chunks.at) as usize;
    // The chunk's last byte, 0..CHUNK, in a form the verifier follows.
    let last_byte = left.min(CHUNK).wrapping_sub(1) & (CHUNK - 1);
    let take = last_byte + 1;
    let last_word = last_byte / 4;
    // SAFETY: `scratch` is CHUNK + 4 bytes long and the helper writes at
    // most `take` <= CHUNK bytes into it; it fails cleanly when the packet
    // is shorter.
    let loaded = unsafe {
        bpf_xdp_load_bytes(
            chunks.ctx,
            chunks.at,
            scratch.as_mut_ptr().cast(),
            take as u32,
        )
    };
    // bpf_csum_diff sums whole words: up to three zero bytes round the
    // chunk up, and add nothing (an odd last byte so counts as the high
    // half of a word, as RFC 1071 wants).
    let word = scratch[last_word].to_ne_bytes();
    let keep = take - last_word * 4;
    let mut padded = [0u8; 4];
    let mut i = 0;
    while i < 4 {
        if i < keep {
            padded[i] = word[i];
        }
        i += 1;
    }
    scratch[last_word] = u32::from_ne_bytes(padded);
    // SAFETY: the helper only reads the first `last_word + 1` <= CHUNK / 4
    // words of `scratch`.
    let partial = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            scratch.as_mut_ptr(),
            ((last_word + 1) * 4) as u32,
            0,
        )
    };
    if loaded != 0 || partial < 0 {
        chunks.failed = true;
        return 1;
    }
    chunks.sum = chunks.sum.native_partial(partial as u32);
    chunks.at += take as u32;
    0
}
