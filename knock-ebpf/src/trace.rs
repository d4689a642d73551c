//! Logs every decision the filter makes about one source through aya-log:
//! the framing it parsed, the roles of the port, the state it found, and the
//! verdict. Only the traced object (`traced.rs`, whose `xknock_trace`
//! program logs through it) has this module; the filter that normally runs
//! carries no trace code.
//!
//! The source comes from the loader at load time (`TRACE_SOURCE`, a
//! read-only global), as does aya-log's level.

use aya_ebpf::{
    Global,
    macros::map,
    maps::{PerCpuArray, ProgramArray},
    programs::XdpContext,
};
use aya_log_ebpf::info;
use knock_common::{AddrWords, MAX_RULES, Reason, SourceRule, horizon_units};

use crate::{
    guard, horizon, knocking,
    parse::{self, Parsed},
    settings::{self, now_ns},
};

/// The traced source, in the one key form, as `AddrWords`.
#[unsafe(no_mangle)]
static TRACE_SOURCE: Global<AddrWords> = Global::new([0; 4]);

/// The program that logs and then acts on the verdict (`xknock_trace`),
/// set by the loader for the length of a trace.
#[map]
static TRACE_PROGRAM: ProgramArray = ProgramArray::with_max_entries(1, 0);
/// The verdict, handed from the filter to `xknock_trace`.
#[map]
static TRACE_REASON: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Hands the packet and its verdict to `xknock_trace`, which logs the
/// decision if the packet comes from the traced source and then does with
/// the packet what the filter would. Returns only if that program is not in
/// place (the trace's loader is gone): the filter then acts on its own.
///
/// A program of its own, because the verifier checks it once: inlined, it
/// would be checked on every path to a verdict, past the verifier's limit.
#[inline(always)]
pub fn decision(ctx: &XdpContext, reason: Reason) {
    if let Some(slot) = TRACE_REASON.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot, only touched by this CPU while it runs us.
        unsafe { *slot = reason as u32 };
    }
    // SAFETY: the slot holds `xknock_trace` of this object or nothing.
    unsafe { TRACE_PROGRAM.tail_call(ctx, 0) };
}

/// The verdict `decision` handed over to `xknock_trace`; one that cannot
/// be read fails closed.
#[inline(always)]
pub fn handed_over() -> Reason {
    TRACE_REASON
        .get(0)
        .and_then(|index| Reason::decode(*index))
        .unwrap_or(Reason::DropMalformed)
}

/// Logs the decision `reason` about the packet in `ctx` if it comes from
/// the traced source. The packet is parsed again: the filter's own path
/// stays exactly as it is without tracing.
#[inline(always)]
pub fn log(ctx: &XdpContext, reason: Reason) {
    let _ = traced(ctx, reason);
}

#[inline(always)]
fn traced(ctx: &XdpContext, reason: Reason) -> Option<()> {
    let Ok(Parsed::Transport(l4)) = parse::parse(ctx) else {
        return None;
    };
    let packet = l4.with_source(ctx).ok()?;
    if packet.src_words != TRACE_SOURCE.load() {
        return None;
    }
    let settings = settings::settings()?;
    let roles = settings::roles_of(packet.l4.proto, packet.l4.dst_port());
    let slot = horizon::slot(settings, &packet);
    let horizon = horizon::stored(slot).unwrap_or_default();
    let now = horizon_units(now_ns());
    let src = packet.src();
    let source_hash = horizon::source_hash(settings, &packet);
    let mut progress: u32 = 0;
    let mut grants: u32 = 0;
    for rule in 0..MAX_RULES as u32 {
        let key = SourceRule { addr: src, rule };
        if knocking::has_progress(settings, &key, source_hash) {
            progress |= 1 << rule;
        }
        if guard::has_grant(&packet.src_words, packet.l4.is_ipv6(), rule) {
            grants |= 1 << rule;
        }
    }
    let in_flow = u8::from(guard::has_flow(&packet));
    let (l3, ipv6) = packet.l4.network();
    info!(
        ctx,
        "source {:i} proto {} port {} flags {:x} | ipv6 {} ip at {} l4 at {} | knock rules {:x} protect rules {:x} | horizons knocking {} admitted {} failing {} now {} | progress rules {:x} grant rules {:x} flow {} | {}",
        src,
        packet.l4.proto,
        packet.l4.dst_port(),
        packet.l4.tcp_flags,
        u8::from(ipv6),
        l3 as u32,
        packet.l4.header_at() as u32,
        roles.knock_rules,
        roles.protect_rules,
        horizon.knocking_until,
        horizon.admitted_until,
        horizon.failing_until,
        now,
        progress,
        grants,
        in_flow,
        reason.name()
    );
    Some(())
}
