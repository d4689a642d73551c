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
    Answer, CONCEAL_CLOSED, IPPROTO_TCP, IPPROTO_UDP, STEER_TO_PORT, STEERED_SLOTS, Settings,
    SteerKey, Steered, SteeredSlot, TCP_CHECK_AT, UDP_CHECK_AT, replace_udp_words, replace_words,
    steered_port, steered_slot,
};

use crate::parse::{self, Parsed, Transport, bytes_at, store_at};

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
    /// peer's steered flow of that source port is cleared; it passes.
    PortZero,
    /// A stopped packet: steered, or (`Unrecorded`) to be dropped.
    Stopped(Answer),
}

/// Steers a stopped packet to port 0 for the host to answer, recording its
/// ports first (`Unrecorded`, to be dropped, when it cannot be); clears
/// the steered flow a packet to port 0 names.
#[inline(always)]
pub fn handle(ctx: &XdpContext, settings: Option<&Settings>) -> Handed {
    let Ok(Parsed::Transport(l4)) = parse::parse(ctx) else {
        return Handed::Stopped(Answer::Unrecorded);
    };
    if l4.dst_port == STEER_TO_PORT {
        forget(ctx, &l4);
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
    let check_at = match l4.proto {
        IPPROTO_TCP => TCP_CHECK_AT,
        IPPROTO_UDP => UDP_CHECK_AT,
        _ => return None,
    };
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
    let key = SteerKey {
        peer: packet.src(),
        port,
        proto: l4.proto,
        _pad: 0,
    };
    let (l3, v6) = l4.network();
    let first_word = if v6 {
        bytes_at::<4>(ctx, l3).ok()?
    } else {
        [0; 4]
    };
    let original = Steered {
        src_port: from[0],
        dst_port: from[1],
        check,
        _pad: [0; 2],
        first_word,
    };
    let slot = STEERED.get_ptr_mut(steered_slot(port))?;
    // SAFETY: a slot of the array; a reader that meets it half written
    // finds it torn (`SteeredSlot::holds`) and takes nothing from it.
    unsafe {
        *slot = SteeredSlot {
            key,
            steered: original,
        }
    };
    let to = [port, STEER_TO_PORT];
    let check = if l4.proto == IPPROTO_TCP {
        replace_words(check, &from, &to)
    } else {
        replace_udp_words(check, &from, &to)
    };
    store_at(
        ctx,
        at,
        &[port[0], port[1], STEER_TO_PORT[0], STEER_TO_PORT[1]],
    )
    .ok()?;
    store_at(ctx, at + check_at, &check).ok()?;
    Some(Answer::Steered)
}

/// A packet of the peer's own to port 0: whatever a steered flow of the
/// same peer and source port left is forgotten, so the host's answer to
/// it leaves as the host made it.
#[inline(always)]
fn forget(ctx: &XdpContext, l4: &Transport) {
    let Ok(packet) = l4.with_source(ctx) else {
        return;
    };
    let Some(slot) = STEERED.get_ptr_mut(steered_slot(packet.src_port)) else {
        return;
    };
    let key = SteerKey {
        peer: packet.src(),
        port: packet.src_port,
        proto: l4.proto,
        _pad: 0,
    };
    // SAFETY: a slot of the array, written whole or not at all by this
    // CPU; a racing writer's flow may be lost, and its answer then leaves
    // as the host made it.
    unsafe {
        if (*slot).key == key {
            *slot = SteeredSlot::default();
        }
    }
}

/// The ports a steered flow of `key` came with, if its slot holds it whole.
#[inline(always)]
pub fn steered(key: &SteerKey, seed: u32) -> Option<Steered> {
    let slot = STEERED.get(steered_slot(key.port))?;
    slot.holds(key, seed)
}

/// Counts a steering (or its failure) or an answer by its kind.
#[inline(always)]
pub fn count(answer: Answer) {
    if let Some(counter) = ANSWERS.get_ptr_mut(answer as u32) {
        // SAFETY: a per-CPU slot, only touched by this CPU while it runs us.
        unsafe { *counter += 1 };
    }
}
