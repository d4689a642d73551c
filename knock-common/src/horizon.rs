//! Source horizons: per hash slot of source addresses, until when a source
//! there may hold knock progress, a grant or an admitted flow, so the XDP
//! program skips the map lookups for a (spoofed) source whose slot has long
//! gone quiet. Plain Rust, host-tested.

use crate::{AddrWords, addr_words, ipv4_mapped};

/// Slots in `SOURCE_HORIZONS`; a power of two.
pub const SOURCE_HORIZON_SLOTS: u32 = 1 << 16;
/// Horizons count in units of 2^30 ns (about 1.07 s), so they fit a `u32`.
pub const HORIZON_UNIT_SHIFT: u32 = 30;

/// Value of `SOURCE_HORIZONS`, an array indexed by `source_slot`: until when
/// (in horizon units of the kernel's monotonic clock) a source hashing to
/// this slot may hold knock progress, a grant or an admitted flow, or a
/// record of failures that still counts (zero: never), and how many entries
/// past a first step it may hold.
///
/// The XDP program only ever raises the horizons, whenever it creates or
/// uses such state, so a horizon in the past proves that no source hashing
/// here has any, and a packet from a spoofed source skips the map lookups.
/// A source that shares a live slot just takes the full path.
///
/// The map is BPF_F_MMAPABLE: the loader changes single words of a slot
/// atomically through its own mapping, never the whole slot (which could
/// undo what the XDP program wrote there in the same moment).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceHorizon {
    pub knocking_until: u32,
    pub admitted_until: u32,
    /// Until when a source here may have a record in `PENALTIES` that
    /// still counts (its window of failures or its penalty): past it, a
    /// record is as good as none, and a first step skips the lookup.
    pub failing_until: u32,
    /// How many entries `PROGRESS` (sources past their first step) may
    /// hold for sources here: added to before each insert, taken from after
    /// each removal that took an entry; one the LRU evicts is never taken
    /// off, so this may count too many, never too few. At zero a first step
    /// skips the lookup. A count, not a horizon: a lapsed sequence still
    /// resets at its source's next knock, however late.
    pub later_steps: u32,
}
const _: () = assert!(size_of::<SourceHorizon>() == 16);

/// A kernel clock reading in horizon units.
#[inline(always)]
pub const fn horizon_units(ns: u64) -> u32 {
    (ns >> HORIZON_UNIT_SHIFT) as u32
}

/// How far past now a horizon is raised to cover state living `lifetime_ns`:
/// rounded up, plus one unit for the truncation of now and one for two CPUs
/// raising the same slot at once (the later write may carry the earlier now).
pub const fn horizon_span(lifetime_ns: u64) -> u32 {
    let units = lifetime_ns.div_ceil(1 << HORIZON_UNIT_SHIFT) + 2;
    if units > u32::MAX as u64 / 2 {
        u32::MAX / 2
    } else {
        units as u32
    }
}

/// Index of a source's slot in `SOURCE_HORIZONS`: a seeded multiplicative
/// hash of its address words (`source_hash`), top bits.
#[inline(always)]
pub fn source_slot(words: &AddrWords, seed: u32) -> u32 {
    slot_of(source_hash(words, seed))
}

/// A seeded multiplicative hash of a source's address words: its horizon
/// slot's (`source_slot`) and its first steps' (`FirstStepKey`).
#[inline(always)]
pub fn source_hash(words: &AddrWords, seed: u32) -> u32 {
    let mut hash = seed;
    for word in *words {
        hash = slot_round(hash, word);
    }
    hash
}

/// `source_slot` of an IPv4 address (its IPv4-mapped words), from
/// `ipv4_slot_prefix(seed)` and the address's own word: one multiply on
/// the packet's path where the whole hash takes four, one after the other.
#[inline(always)]
pub fn ipv4_source_slot(prefix: u32, word: u32) -> u32 {
    slot_of(ipv4_source_hash(prefix, word))
}

/// `source_hash` of an IPv4 address, as `ipv4_source_slot` computes it.
#[inline(always)]
pub fn ipv4_source_hash(prefix: u32, word: u32) -> u32 {
    slot_round(prefix, word)
}

/// The state of `source_slot`'s hash after the three words every
/// IPv4-mapped address shares; the loader computes it once with the seed
/// (`Settings::ipv4_slot_prefix`).
pub const fn ipv4_slot_prefix(seed: u32) -> u32 {
    let mapped = addr_words(&ipv4_mapped([0; 4]));
    let mut hash = seed;
    let mut i = 0;
    while i < 3 {
        hash = slot_round(hash, mapped[i]);
        i += 1;
    }
    hash
}

#[inline(always)]
const fn slot_round(hash: u32, word: u32) -> u32 {
    (hash ^ word).wrapping_mul(0x9e37_79b1)
}

#[inline(always)]
const fn slot_of(hash: u32) -> u32 {
    const _: () = assert!(SOURCE_HORIZON_SLOTS.is_power_of_two());
    hash >> (32 - SOURCE_HORIZON_SLOTS.trailing_zeros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ipv4_shortcut_finds_the_slot_the_whole_hash_does() {
        for seed in [0, 1, 0x9e37_79b1, u32::MAX, 0x1234_5678] {
            let prefix = ipv4_slot_prefix(seed);
            for v4 in [
                [0, 0, 0, 0],
                [192, 0, 2, 1],
                [198, 18, 0, 2],
                [255; 4],
                [10, 1, 2, 3],
            ] {
                let words = addr_words(&ipv4_mapped(v4));
                assert_eq!(
                    ipv4_source_slot(prefix, words[3]),
                    source_slot(&words, seed),
                    "seed {seed:#x}, {v4:?}"
                );
                assert_eq!(
                    ipv4_source_hash(prefix, words[3]),
                    source_hash(&words, seed),
                    "seed {seed:#x}, {v4:?}"
                );
            }
        }
    }

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn a_horizon_outlives_the_state_even_when_a_racing_write_loses_a_unit() {
        for lifetime in [SECOND / 2, 10 * SECOND, 24 * 3600 * SECOND] {
            for start in [0, 1, (1 << HORIZON_UNIT_SHIFT) - 1, 123_456_789_012_345] {
                let last_live = start + lifetime;
                let until = horizon_units(start) + horizon_span(lifetime) - 1;
                assert!(
                    until > horizon_units(last_live),
                    "lifetime {lifetime} from {start}: horizon {until} ends before the state"
                );
            }
        }
    }

    #[test]
    fn spans_of_absurd_lifetimes_stay_far_from_wrapping() {
        assert_eq!(horizon_span(u64::MAX), u32::MAX / 2);
    }

    #[test]
    fn sources_spread_over_the_slots_and_the_seed_moves_them() {
        let sources = 4 * SOURCE_HORIZON_SLOTS;
        let mut per_slot = vec![0u32; SOURCE_HORIZON_SLOTS as usize];
        let mut moved = 0;
        for i in 0..sources {
            let words = addr_words(&ipv4_mapped((0x0a00_0000 + i).to_be_bytes()));
            let slot = source_slot(&words, 0x1234_5678);
            per_slot[slot as usize] += 1;
            moved += u32::from(slot != source_slot(&words, 0x8765_4321));
        }
        // Four sources per slot on average; a fair hash leaves few slots
        // empty (e^-4, under 2 %) and none crowded.
        let empty = per_slot.iter().filter(|&&n| n == 0).count() as u32;
        assert!(empty < SOURCE_HORIZON_SLOTS / 40, "{empty} empty slots");
        assert!(per_slot.iter().all(|&n| n < 20), "a crowded slot");
        assert!(moved > sources * 9 / 10, "only {moved} sources moved");
    }
}
