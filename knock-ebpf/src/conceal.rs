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
//! records each steered flow's ports, by the source port it was given, so
//! the egress program (`restore`) can give the answer back the ports the
//! prober used. The knock has counted before: the answer never depends on
//! it.
//!
//! The steering is a program of its own, `xknock_conceal` (in
//! `programs.rs`), that the filter tail-calls for the packets it stops: the
//! verifier checks it once, not once for every way the filter can reach a
//! drop. Without it (an empty `CONCEAL` slot) the packet is dropped.

use aya_ebpf::{
    macros::map,
    maps::{LruHashMap, PerCpuArray, ProgramArray},
    programs::XdpContext,
};
use knock_common::{
    Answer, IPPROTO_TCP, IPPROTO_UDP, STEER_TO_PORT, STEERED_ENTRIES, Settings, SteerKey, Steered,
    replace_udp_words, replace_words, steered_port,
};

use crate::parse::{self, Parsed, Transport, bytes_at, store_at};

#[map]
static CONCEAL: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map]
static ANSWERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Answer::COUNT, 0);
/// The ports of each steered flow, by its peer, the source port it was
/// given and its protocol: what the egress program puts back.
#[map]
static STEERED: LruHashMap<SteerKey, Steered> = LruHashMap::with_max_entries(STEERED_ENTRIES, 0);

/// Where a TCP and a UDP header hold their checksum.
const TCP_CHECK_AT: usize = 16;
const UDP_CHECK_AT: usize = 6;

/// Hands a packet the filter stopped to `xknock_conceal`; returns only if
/// that program is not in place.
#[inline(always)]
pub fn hand_over(ctx: &XdpContext) {
    // SAFETY: the slot holds an XDP program of this object or nothing.
    unsafe { CONCEAL.tail_call(ctx, 0) };
}

/// Steers the stopped packet to port 0 for the host to answer, recording
/// its ports first; `Unrecorded` (the packet is to be dropped) when it
/// cannot be.
#[inline(always)]
pub fn steer(ctx: &XdpContext, settings: &Settings) -> Answer {
    try_steer(ctx, settings).unwrap_or(Answer::Unrecorded)
}

#[inline(always)]
fn try_steer(ctx: &XdpContext, settings: &Settings) -> Option<Answer> {
    let Parsed::Transport(l4) = parse::parse(ctx).ok()? else {
        return None;
    };
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
    let original = Steered {
        src_port: from[0],
        dst_port: from[1],
        check,
        _pad: [0; 2],
    };
    STEERED.insert(&key, &original, 0).ok()?;
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
pub fn forget(ctx: &XdpContext, l4: &Transport) {
    if let Ok(packet) = l4.with_source(ctx) {
        let key = SteerKey {
            peer: packet.src(),
            port: packet.src_port,
            proto: l4.proto,
            _pad: 0,
        };
        let _ = STEERED.remove(&key);
    }
}

/// The ports a steered flow of `key` came with.
#[inline(always)]
pub fn steered(key: &SteerKey) -> Option<Steered> {
    // SAFETY: the value is copied out at once.
    unsafe { STEERED.get(key) }.copied()
}

/// Counts a steering (or its failure) or an answer by its kind.
#[inline(always)]
pub fn count(answer: Answer) {
    if let Some(counter) = ANSWERS.get_ptr_mut(answer as u32) {
        // SAFETY: a per-CPU slot, only touched by this CPU while it runs us.
        unsafe { *counter += 1 };
    }
}
