//! What the filter reports: events on the `EVENTS` ring buffer, the flood
//! budget that bounds the events a flood can cause, and the per-CPU counter
//! of every verdict by reason.

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use knock_common::{Event, EventBudget, Reason, Settings};

use crate::{parse::Packet, settings::now_ns};

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Reason::COUNT, 0);
#[map]
static FLOOD_EVENT_BUDGET: PerCpuArray<EventBudget> = PerCpuArray::with_max_entries(1, 0);
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);
/// Events the full ring buffer could not take.
#[map]
static LOST_EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Counts a verdict by its reason.
#[inline(always)]
pub fn count(reason: Reason) {
    if let Some(counter) = COUNTERS.get_ptr_mut(reason as u32) {
        // SAFETY: a per-CPU slot, only touched by this CPU while it runs us.
        unsafe { *counter += 1 };
    }
}

/// Denied attempts and first steps can come at flood rate: each CPU reports
/// at most `flood_events_per_sec` of them per window of at least a second.
#[inline(always)]
pub fn within_flood_budget(settings: &Settings) -> bool {
    within_budget(&FLOOD_EVENT_BUDGET, settings.flood_events_per_sec)
}

/// Whether this CPU's budget in `budgets` (slot 0) admits one more of at
/// most `limit` a second.
#[inline(always)]
pub fn within_budget(budgets: &PerCpuArray<EventBudget>, limit: u32) -> bool {
    let Some(budget) = budgets.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a per-CPU slot, only touched by this CPU while it runs us.
    let budget = unsafe { &mut *budget };
    budget.admit(limit, now_ns)
}

/// Reports a packet stopped at a protected port, within the flood budget.
#[inline(always)]
pub fn denied(settings: &Settings, packet: &Packet) {
    if within_flood_budget(settings) {
        emit(&Event::denied(&packet.src(), packet.knock()));
    }
}

/// Puts one event on the ring buffer; a full ring buffer loses the event
/// (counted), never the verdict.
#[inline(always)]
pub fn emit(event: &Event) {
    if EVENTS.output(event, 0).is_err()
        && let Some(lost) = LOST_EVENTS.get_ptr_mut(0)
    {
        // SAFETY: a per-CPU slot, only touched by this CPU while it runs us.
        unsafe { *lost += 1 };
    }
}
