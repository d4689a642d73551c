//! The programs of the filter's object and the step every verdict goes
//! through: the top of knock-ebpf. Each program calls down into the concern
//! modules (settings, parse, filter, knocking, guard, horizon, events,
//! verdict, conceal, spa, trace); none of those calls back up. `main.rs`
//! and `traced.rs` build their objects from this module alike: only their
//! `trace` differs, a no-op in the filter that normally runs.
//!
//! The programs hand packets on by tail calls: the filter (`xknock`) to
//! `xknock_knock` for packets that may be knock steps; both of them, through
//! `conclude`, to `xknock_conceal` for the packets they stop (with
//! `conceal = "closed"`) and, in the traced object, to `xknock_trace`. Each
//! is a program of its own so the verifier checks it once, not once for
//! every path that leads to it. `xknock_restore` is no XDP program: it runs
//! on the same interfaces' egress (TC) and gives the host's answers to the
//! packets `xknock_conceal` steered back their ports.

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use knock_common::{Answer, Reason};

use crate::{
    conceal::{self, Handed},
    events, filter, knocking, restore, settings, trace, verdict,
};

/// The filter: every packet's verdict, counted and acted on. A frame that
/// cannot be parsed down to what the decision needs is dropped.
#[xdp]
pub fn xknock(ctx: XdpContext) -> u32 {
    let reason = filter::try_xknock(&ctx).unwrap_or_else(|error| error.reason());
    conclude(&ctx, reason)
}

/// Runs a TCP SYN, UDP datagram or echo request that may be a knock step
/// through every rule's state machine, then decides it as the filter would.
/// A program of its own (the filter tail-calls it for packets to knock
/// ports and from sources mid-sequence) so the verifier checks the knock
/// rules once, apart from the filter's many parsing paths: together they
/// passed its limit.
#[xdp]
pub fn xknock_knock(ctx: XdpContext) -> u32 {
    // Nothing handed over cannot happen; if it did, fail closed.
    let reason = try_knock().unwrap_or(Reason::DropMalformed);
    conclude(&ctx, reason)
}

#[inline(always)]
fn try_knock() -> Option<Reason> {
    let handover = *knocking::handed_over()?;
    let settings = settings::settings()?;
    if let Some(reason) = knocking::plain_first_step(settings, &handover) {
        return Some(reason);
    }
    Some(knocking::judge(settings, &handover).unwrap_or_else(|| {
        filter::beyond_knocks(
            settings,
            &handover.packet,
            handover.roles,
            handover.slot,
            handover.admitted_until,
        )
    }))
}

/// Steers a packet the filter stopped to the host's closed port 0, for the
/// host to answer as a closed port answers (`conceal`); drops it where that
/// cannot be done, or with `conceal = "drop"`. Also clears the steered flow
/// a packet of the peer's own to port 0 names, and passes that packet.
#[xdp]
pub fn xknock_conceal(ctx: XdpContext) -> u32 {
    match conceal::handle(&ctx, settings::settings()) {
        Handed::PortZero => xdp_action::XDP_PASS,
        Handed::Stopped(answer) => {
            conceal::count(answer);
            match answer {
                Answer::Steered => xdp_action::XDP_PASS,
                _ => xdp_action::XDP_DROP,
            }
        }
    }
}

/// Gives the host's answers to steered packets back their ports on the way
/// out (`restore`); every packet goes on (to the next TC program, if any)
/// but an answer whose flow's slot another flow took since, which is
/// dropped.
#[classifier]
pub fn xknock_restore(ctx: TcContext) -> i32 {
    if restore::restore(&ctx) {
        TC_ACT_UNSPEC
    } else {
        TC_ACT_SHOT
    }
}

/// Counts the verdict, lets a running trace see it (the trace then acts on
/// it), and acts on it.
#[inline(always)]
fn conclude(ctx: &XdpContext, reason: Reason) -> u32 {
    events::count(reason);
    // Returns unless a trace takes the packet over (and acts as below).
    trace::decision(ctx, reason);
    verdict::act(ctx, reason)
}
