//! Source horizons: per slot of source addresses, until when a source there
//! may hold knock progress, a grant or an admitted flow, or a record of
//! failures that still counts, and how many later steps it may hold. A
//! packet from a source whose horizon has passed skips every lookup of that
//! state, which is what keeps a spoofed flood cheap.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{bindings::BPF_F_MMAPABLE, macros::map, maps::Array};
use knock_common::{
    AddrWords, SOURCE_HORIZON_SLOTS, Settings, SourceHorizon, horizon_units, ipv4_source_hash,
    ipv4_source_slot, source_slot,
};

use crate::{parse::Packet, settings::now_ns};

#[map]
static SOURCE_HORIZONS: Array<SourceHorizon> =
    Array::with_max_entries(SOURCE_HORIZON_SLOTS, BPF_F_MMAPABLE);

/// The packet's source's slot in `SOURCE_HORIZONS` (`source_slot`, which
/// for IPv4 starts from the loader's `ipv4_slot_prefix`).
#[inline(always)]
pub fn slot(settings: &Settings, packet: &Packet) -> u32 {
    slot_of(settings, &packet.src_words, packet.l4.is_ipv6())
}

/// The `SOURCE_HORIZONS` slot of address words (IPv4-mapped unless
/// `ipv6`): a source's, or the prefix a scoped grant admits.
#[inline(always)]
pub fn slot_of(settings: &Settings, words: &AddrWords, ipv6: bool) -> u32 {
    if ipv6 {
        source_slot(words, settings.source_seed)
    } else {
        ipv4_source_slot(settings.ipv4_slot_prefix, words[3])
    }
}

/// The packet's source's `source_hash`, from which its `SOURCE_HORIZONS`
/// slot and its `FIRST_STEPS` bucket are cut.
#[inline(always)]
pub fn source_hash(settings: &Settings, packet: &Packet) -> u32 {
    if packet.l4.is_ipv6() {
        knock_common::source_hash(&packet.src_words, settings.source_seed)
    } else {
        ipv4_source_hash(settings.ipv4_slot_prefix, packet.src_words[3])
    }
}

/// A copy of a `SOURCE_HORIZONS` slot. The lookup cannot fail (the index
/// is in range); if it did, the answer would be "may hold state".
#[inline(always)]
pub fn at(slot: u32) -> SourceHorizon {
    SOURCE_HORIZONS.get(slot).copied().unwrap_or(SourceHorizon {
        knocking_until: u32::MAX,
        admitted_until: u32::MAX,
        failing_until: u32::MAX,
        later_steps: u32::MAX,
    })
}

/// A copy of a `SOURCE_HORIZONS` slot as stored, if the index is in range.
/// (`at` reads the map itself: through this function the filter's `xknock`
/// compiled to ten instructions more.)
#[allow(dead_code, reason = "only the traced object reads it")]
#[inline(always)]
pub fn stored(slot: u32) -> Option<SourceHorizon> {
    SOURCE_HORIZONS.get(slot).copied()
}

/// Now, if the horizon `until` still covers it. A slot never raised answers
/// without reading the clock, which spares a spoofed flood the cost.
#[inline(always)]
pub fn covered_now(until: u32) -> Option<u64> {
    if until == 0 {
        return None;
    }
    let now = now_ns();
    (until > horizon_units(now)).then_some(now)
}

/// The horizons of a `SOURCE_HORIZONS` slot.
#[derive(Clone, Copy)]
pub enum Horizon {
    Knocking,
    Admitted,
    Failing,
}

/// Raises one of a slot's horizons to its span past `now`. Racing CPUs may
/// lose each other's write; `horizon_span` allows for that.
#[inline(always)]
pub fn raise(settings: &Settings, slot: u32, horizon: Horizon, now: u64) {
    let Some(slot) = SOURCE_HORIZONS.get_ptr_mut(slot) else {
        return;
    };
    // SAFETY: a value pointer the array lookup just returned; a u32 store
    // cannot tear.
    let slot = unsafe { &mut *slot };
    let (until, span) = match horizon {
        Horizon::Knocking => (&mut slot.knocking_until, settings.knocking_horizon),
        Horizon::Admitted => (&mut slot.admitted_until, settings.admitted_horizon),
        Horizon::Failing => (&mut slot.failing_until, settings.failing_horizon),
    };
    let raised = horizon_units(now).wrapping_add(span);
    if *until < raised {
        *until = raised;
    }
}

/// Counts an entry about to be put in `PROGRESS` for a source of `slot`
/// (before the insert, so the count never falls short of the entries).
#[inline(always)]
pub fn add_later_step(slot: u32) {
    count_later_steps(slot, 1);
}

/// Takes off an entry just removed from `PROGRESS` for a source of `slot`.
#[inline(always)]
pub fn remove_later_step(slot: u32) {
    count_later_steps(slot, 1u32.wrapping_neg());
}

/// Adds `change` to `slot`'s `later_steps` in one atomic instruction (CPUs
/// count there at once; the target's `Atomic*` types offer no
/// read-modify-write, the intrinsic compiles to BPF's `lock add`).
#[inline(always)]
fn count_later_steps(slot: u32, change: u32) {
    let Some(slot) = SOURCE_HORIZONS.get_ptr_mut(slot) else {
        return;
    };
    // SAFETY: a value pointer the array lookup just returned, valid while
    // the map lives, aligned for its u32 fields; every change to
    // `later_steps` is atomic.
    unsafe {
        atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(&raw mut (*slot).later_steps, change)
    };
}
