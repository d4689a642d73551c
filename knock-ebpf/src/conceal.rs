//! Concealment: with `conceal = "closed"`, a packet stopped at a knock
//! port, an SPA port, or a protected port for a source without a grant is
//! answered by the host's own stack, as at a port where nothing listens.
//! It is steered there: its destination port becomes 0, where no socket
//! can be bound, and its source port a keyed hash of its flow
//! (`knock_common::steer`), both with the checksum updated, and it passes.
//! The kernel then answers (an RST, an ICMP port unreachable or parameter
//! problem, a reassembly timeout) or stays silent (a wrong checksum, a
//! source route, an RST) exactly as it would at a closed port: options,
//! IDs, flow labels, ICMP budgets and timing are its own. `STEERED`
//! records each steered flow's ports in the slot of the source port it was
//! given (one write, no lock: a flood of stopped packets costs it little),
//! so the egress program (`restore`) can give the answer back the ports the
//! prober used. The knock has counted before: the answer never depends on
//! it.
//!
//! The steering is a program of its own, `xknock_conceal` (in
//! `programs.rs`), that the filter tail-calls for the packets it stops: the
//! verifier checks it once, not once for every way the filter can reach a
//! drop. Without it (an empty `CONCEAL` slot) the packet is dropped.

use aya_ebpf::{
    macros::map,
    maps::{Array, PerCpuArray, ProgramArray},
    programs::XdpContext,
};
use knock_common::{
    Answer, CONCEAL_CLOSED, ECHO_ANY, ECHO_EXACT, IPPROTO_TCP, IPPROTO_UDP, IPV6_HEADER_LEN,
    STEER_TO_PORT, STEERED_SLOTS, Settings, SteerKey, Steered, SteeredSlot, datagram_echo,
    l4_check_at, replace_udp_words, replace_words, segment_echo, steered_port, steered_slot,
};

use crate::parse::{self, Packet, Parsed, Transport, bytes_at, store_at};

#[map]
static CONCEAL: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map]
static ANSWERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Answer::COUNT, 0);
/// The ports of each steered flow, in the slot of the source port it was
/// given: what the egress program puts back.
#[map]
static STEERED: Array<SteeredSlot> = Array::with_max_entries(STEERED_SLOTS, 0);

/// Hands a packet the filter stopped to `xknock_conceal`; returns only if
/// that program is not in place.
#[inline(always)]
pub fn hand_over(ctx: &XdpContext) {
    // SAFETY: the slot holds an XDP program of this object or nothing.
    unsafe { CONCEAL.tail_call(ctx, 0) };
}

/// What the steering program made of a packet handed to it.
pub enum Handed {
    /// A packet of the peer's own to port 0 (`Reason::PassPortZero`): its
    /// flow takes the slot of its source port as it is; it passes.
    PortZero,
    /// A stopped packet: steered, or (`Unrecorded`) to be dropped.
    Stopped(Answer),
}

/// Steers a stopped packet to port 0 for the host to answer, recording its
/// ports first (`Unrecorded`, to be dropped, when it cannot be); records a
/// packet to port 0 as it is.
#[inline(always)]
pub fn handle(ctx: &XdpContext, settings: Option<&Settings>) -> Handed {
    let Ok(Parsed::Transport(l4)) = parse::parse(ctx) else {
        return Handed::Stopped(Answer::Unrecorded);
    };
    if l4.dst_port == STEER_TO_PORT {
        record_port_zero(ctx, &l4);
        return Handed::PortZero;
    }
    match settings {
        Some(settings) if settings.conceal == CONCEAL_CLOSED => {
            Handed::Stopped(steer(ctx, settings, &l4).unwrap_or(Answer::Unrecorded))
        }
        _ => Handed::Stopped(Answer::Unrecorded),
    }
}

#[inline(always)]
fn steer(ctx: &XdpContext, settings: &Settings, l4: &Transport) -> Option<Answer> {
    let check_at = l4_check_at(l4.proto)?;
    let packet = l4.with_source(ctx).ok()?;
    let at = l4.header_at();
    let ports = bytes_at::<4>(ctx, at).ok()?;
    let check = bytes_at::<2>(ctx, at + check_at).ok()?;
    let from = [[ports[0], ports[1]], [ports[2], ports[3]]];
    let port = steered_port(
        settings.source_seed,
        &packet.src_words,
        from[0],
        from[1],
        l4.proto,
    );
    let to = [port, STEER_TO_PORT];
    let sent_check = if l4.proto == IPPROTO_TCP {
        replace_words(check, &from, &to)
    } else {
        replace_udp_words(check, &from, &to)
    };
    record(ctx, l4, &packet, port, from, check, sent_check)?;
    store_at(
        ctx,
        at,
        &[port[0], port[1], STEER_TO_PORT[0], STEER_TO_PORT[1]],
    )
    .ok()?;
    store_at(ctx, at + check_at, &sent_check).ok()?;
    Some(Answer::Steered)
}

/// A packet of the peer's own to port 0: its flow takes the slot of its
/// source port as it is, so the host's answer to it leaves as the host
/// made it (and a steered flow's answer from that slot, unmatched, does
/// not leave with ports that are not its prober's).
#[inline(always)]
fn record_port_zero(ctx: &XdpContext, l4: &Transport) -> Option<()> {
    let check_at = l4_check_at(l4.proto)?;
    let packet = l4.with_source(ctx).ok()?;
    let check = bytes_at::<2>(ctx, l4.header_at() + check_at).ok()?;
    let ports = [packet.src_port, STEER_TO_PORT];
    record(ctx, l4, &packet, packet.src_port, ports, check, check)
}

/// Writes the flow of `packet`, sent to the host from port `port`, into
/// that port's slot: its original ports and checksum `check`, and what the
/// host's answer will echo of it (with the checksum it gets,
/// `sent_check`).
#[inline(always)]
fn record(
    ctx: &XdpContext,
    l4: &Transport,
    packet: &Packet,
    port: [u8; 2],
    ports: [[u8; 2]; 2],
    check: [u8; 2],
    sent_check: [u8; 2],
) -> Option<()> {
    let (l3, v6) = l4.network();
    let first_word = if v6 {
        bytes_at::<4>(ctx, l3).ok()?
    } else {
        [0; 4]
    };
    let (echo_kind, echo) = echo(ctx, l4, l3, v6, sent_check)?;
    let slot = STEERED.get_ptr_mut(steered_slot(port))?;
    // SAFETY: a slot of the array; a reader that meets it half written
    // finds it torn (`SteeredSlot::holds`) and takes nothing from it.
    unsafe {
        *slot = SteeredSlot {
            key: SteerKey {
                peer: packet.src(),
                port,
                proto: l4.proto,
                _pad: 0,
            },
            steered: Steered {
                src_port: ports[0],
                dst_port: ports[1],
                check,
                echo_kind,
                _pad: 0,
                first_word,
                echo,
            },
        }
    };
    Some(())
}

/// What the host's answer to the packet will echo of it: a TCP segment's
/// sequence or acknowledgment number (`segment_echo`), which a first
/// fragment cannot tell (its data goes on in other fragments); a UDP
/// datagram's length and checksum as the host gets them.
#[inline(always)]
fn echo(
    ctx: &XdpContext,
    l4: &Transport,
    l3: usize,
    v6: bool,
    sent_check: [u8; 2],
) -> Option<(u8, [u8; 4])> {
    let at = l4.header_at();
    if l4.proto == IPPROTO_UDP {
        let len = bytes_at::<2>(ctx, at + 4).ok()?;
        return Some((ECHO_EXACT, datagram_echo(len, sent_check)));
    }
    if !l4.whole {
        return Some((ECHO_ANY, [0; 4]));
    }
    let header = bytes_at::<10>(ctx, at + 4).ok()?;
    let ip_end = if v6 {
        let payload = bytes_at::<2>(ctx, l3 + 4).ok()?;
        l3 + IPV6_HEADER_LEN + usize::from(u16::from_be_bytes(payload))
    } else {
        let total = bytes_at::<2>(ctx, l3 + 2).ok()?;
        l3 + usize::from(u16::from_be_bytes(total))
    };
    let data_at = at + usize::from(header[8] >> 4) * 4;
    // Lengths that do not add up: the host drops the segment unanswered.
    let data_len = ip_end.saturating_sub(data_at);
    let seq = [header[0], header[1], header[2], header[3]];
    let ack = [header[4], header[5], header[6], header[7]];
    Some((
        ECHO_EXACT,
        segment_echo(l4.tcp_flags, seq, ack, data_len as u32),
    ))
}

/// The ports a steered flow of `key` came with, if its slot holds it whole
/// and an answer echoing `echo` answers it.
#[inline(always)]
pub fn steered(key: &SteerKey, seed: u32, echo: [u8; 4]) -> Option<Steered> {
    let slot = STEERED.get(steered_slot(key.port))?;
    slot.holds(key, seed, echo)
}

/// Counts a steering (or its failure) or an answer by its kind.
#[inline(always)]
pub fn count(answer: Answer) {
    if let Some(counter) = ANSWERS.get_ptr_mut(answer as u32) {
        // SAFETY: a per-CPU slot, only touched by this CPU while it runs us.
        unsafe { *counter += 1 };
    }
}
