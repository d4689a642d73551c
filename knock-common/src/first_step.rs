//! First steps: where a source that sent only the first step of a rule's
//! sequence is remembered until its second step. A spoofed flood at a
//! first knock port sends nothing else, so its cost per packet is this
//! table's: a set-associative array of one-word records (`FIRST_STEPS`), a
//! bucket of `FIRST_STEP_WAYS` words per cache line. A keyed hash of the
//! source picks the bucket (every rule's first steps of a source share
//! it); a fingerprint of the source and the rule's sequence, the rule, and
//! the time of the step fill one word, written with one store. A new first
//! step takes a free way or the oldest; nothing else ever lives here, so a
//! flood of them can only displace other first steps. The second step
//! moves a source on to `PROGRESS`. Plain Rust, host-tested.
//!
//! A client's first step survives a flood of R new first steps a second
//! for the d it waits before its second step unless `FIRST_STEP_WAYS`
//! newer ones land in its bucket meanwhile: with N records in N / W
//! buckets of W ways, those arrive as a Poisson count of mean W·R·d/N, and
//! the odds of survival are P(Poisson(W·R·d/N) < W).

use crate::{Progress, RuleConfig};

/// Records per bucket: eight words, one 64-byte cache line.
pub const FIRST_STEP_WAYS: usize = 8;
/// Fewest records of a table: two buckets (the bucket's hash bits are then
/// at least one, which the fingerprint leans on).
pub const MIN_FIRST_STEP_RECORDS: u32 = 2 * FIRST_STEP_WAYS as u32;
/// A first step's time is kept in units of 2^20 ns (about 1.05 ms), ...
pub const FIRST_STEP_UNIT_SHIFT: u32 = 20;
/// ... in this many bits: a record's age reads true up to 2^48 ns (about
/// 78 hours), far past any sequence timeout the configuration accepts.
const TIME_BITS: u32 = 28;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;
const RULE_BITS: u32 = 4;
/// A record's top 16 bits are its source's part of the fingerprint.
const SOURCE_SHIFT: u32 = 48;
const _: () = assert!(crate::MAX_RULES == 1 << RULE_BITS);
const _: () = assert!(TIME_BITS + RULE_BITS == 32);

/// The longest sequence timeout a first step's record can time: half its
/// clock's span, for a wide margin.
pub const MAX_FIRST_STEP_TIMEOUT_NS: u64 = 1 << (TIME_BITS + FIRST_STEP_UNIT_SHIFT - 1);

/// Value of `FIRST_STEPS`, an array of `first_step_buckets(records)`
/// buckets: `FIRST_STEP_WAYS` records (`FirstStep`'s words), zero where
/// free. The map is BPF_F_MMAPABLE: the loader reads and clears single
/// words through its own mapping.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FirstStepBucket {
    pub ways: [u64; FIRST_STEP_WAYS],
}
const _: () = assert!(size_of::<FirstStepBucket>() == 64);

/// Buckets of a table of `records` first steps: rounded up to a power of
/// two, at least `MIN_FIRST_STEP_RECORDS`, then per `FIRST_STEP_WAYS`.
pub const fn first_step_buckets(records: u32) -> u32 {
    let records = if records < MIN_FIRST_STEP_RECORDS {
        MIN_FIRST_STEP_RECORDS
    } else {
        records
    };
    match records.checked_next_power_of_two() {
        Some(records) => records / FIRST_STEP_WAYS as u32,
        None => 1 << (31 - FIRST_STEP_WAYS.trailing_zeros()),
    }
}

/// `Settings::first_step_bucket_bits` of a table of `buckets` (a power of
/// two, at least two).
pub const fn first_step_bucket_bits(buckets: u32) -> u32 {
    buckets.trailing_zeros()
}

/// Where one source's first step through one rule's current sequence is
/// kept: its bucket, and the upper 36 bits of its record (fingerprint and
/// rule).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FirstStepKey {
    pub bucket: u32,
    /// Fingerprint (32 bits) and rule (4 bits), as in the record's word
    /// shifted right by `TIME_BITS`.
    tag: u64,
}

/// Mixes one word into a hash: the multiplicative round the source hash
/// (`source_hash`) uses.
#[inline(always)]
const fn round(hash: u32, word: u32) -> u32 {
    (hash ^ word).wrapping_mul(0x9e37_79b1)
}

impl FirstStepKey {
    /// The key of rule `rule` (its current `sequence_tag`) for a source
    /// whose `source_hash` is `source_hash`, in a table of 2^`bucket_bits`
    /// buckets.
    ///
    /// One more round of the hash gives a value whose top bits are the
    /// bucket and whose halves, folded, the source's part of the
    /// fingerprint (for IPv4 the hash is a bijection of the address: in a
    /// table of at least 2^16 buckets two IPv4 sources never share a
    /// fingerprint). The
    /// fingerprint's other 16 bits come from the sequence tag, so a first
    /// step made through a sequence the rule no longer has is found by
    /// nobody (but one in 2^15); their lowest bit is set, so no record is
    /// zero.
    #[inline(always)]
    pub fn new(source_hash: u32, bucket_bits: u32, rule: u32, sequence_tag: u32) -> Self {
        let bits = bucket_bits.clamp(1, 31);
        let hash = round(source_hash, 0x2545_f491);
        let sequence = (sequence_tag.wrapping_mul(0x85eb_ca6b) >> 16) | 1;
        // The hash's low bits depend only on the address's low bits (and an
        // IPv4 address loads with its last octet on top): fold the top in.
        let fingerprint = ((hash ^ (hash >> 16)) << 16) | sequence;
        FirstStepKey {
            bucket: hash >> (32 - bits),
            tag: (u64::from(fingerprint) << RULE_BITS) | u64::from(rule & ((1 << RULE_BITS) - 1)),
        }
    }

    /// Whether `word` is a record of this key's source, through any rule
    /// and sequence (or of a source that shares its part of the
    /// fingerprint, one in 2^16).
    #[inline(always)]
    pub const fn of_source(self, word: u64) -> bool {
        word != 0 && word >> SOURCE_SHIFT == self.tag >> (SOURCE_SHIFT - TIME_BITS)
    }

    /// Whether a bucket (its ways read with `read`) holds a record of this
    /// key's source (`of_source`).
    #[inline(always)]
    pub fn source_in(self, read: impl Fn(usize) -> u64) -> bool {
        let mut way = 0;
        while way < FIRST_STEP_WAYS {
            if self.of_source(read(way)) {
                return true;
            }
            way += 1;
        }
        false
    }

    /// The key of `rule` (at rule index `index`) for a source.
    #[inline(always)]
    pub fn of_rule(source_hash: u32, bucket_bits: u32, index: u32, rule: &RuleConfig) -> Self {
        Self::new(source_hash, bucket_bits, index, rule.sequence_tag)
    }

    /// Whether `word` is this key's record.
    #[inline(always)]
    pub const fn holds(self, word: u64) -> bool {
        word >> TIME_BITS == self.tag
    }

    /// The record of this key's first step made at `now_ns`.
    #[inline(always)]
    pub const fn record(self, now_ns: u64) -> u64 {
        self.tag << TIME_BITS | (now_ns >> FIRST_STEP_UNIT_SHIFT) & TIME_MASK
    }

    /// This key's record in a bucket (its ways read with `read`), if any.
    #[inline(always)]
    pub fn find(self, read: impl Fn(usize) -> u64) -> Option<u64> {
        let mut way = 0;
        while way < FIRST_STEP_WAYS {
            let word = read(way);
            if self.holds(word) {
                return Some(word);
            }
            way += 1;
        }
        None
    }
}

/// The record a new first step displaces in a bucket (its ways read with
/// `read`) at `now_ns`: none (zero) while a way is free, else the oldest.
///
/// Callers write by record, never by way (`replace`): the XDP program's
/// verifier then follows one path out of each loop, not one per way.
#[inline(always)]
pub fn displaced(read: impl Fn(usize) -> u64, now_ns: u64) -> u64 {
    let mut chosen = 0;
    let mut oldest = 0;
    let mut way = 0;
    while way < FIRST_STEP_WAYS {
        let word = read(way);
        if word == 0 {
            return 0;
        }
        let age = age_units(word, now_ns);
        if age >= oldest {
            oldest = age;
            chosen = word;
        }
        way += 1;
    }
    chosen
}

/// The first way of a bucket (read with `read`) that holds `word`, to be
/// replaced; none if another write took it meanwhile.
#[inline(always)]
pub fn way_of(read: impl Fn(usize) -> u64, word: u64) -> Option<usize> {
    let mut way = 0;
    while way < FIRST_STEP_WAYS {
        if read(way) == word {
            return Some(way);
        }
        way += 1;
    }
    None
}

/// How long ago (in units of 2^`FIRST_STEP_UNIT_SHIFT` ns) record `word`
/// was made, as of `now_ns`.
#[inline(always)]
pub const fn age_units(word: u64, now_ns: u64) -> u64 {
    ((now_ns >> FIRST_STEP_UNIT_SHIFT).wrapping_sub(word)) & TIME_MASK
}

/// The rule index record `word` belongs to.
pub const fn record_rule(word: u64) -> u32 {
    ((word >> TIME_BITS) & ((1 << RULE_BITS) - 1)) as u32
}

/// The progress record `word` stands for, read at `now_ns`, through a
/// sequence tagged `sequence_tag`: its first step accepted, made at the
/// start of the time unit it was made in.
#[inline(always)]
pub const fn record_progress(word: u64, now_ns: u64, sequence_tag: u32) -> Progress {
    let now_units = now_ns >> FIRST_STEP_UNIT_SHIFT;
    Progress {
        started_ns: now_units.wrapping_sub(age_units(word, now_ns)) << FIRST_STEP_UNIT_SHIFT,
        next_step: 1,
        sequence_tag,
    }
}

/// `record` moved `ns` into the past (for tests, which age every stored
/// time to pass it), rounded so its age grows by `ns` at least: a record
/// that was due to time out by then has.
pub const fn record_aged(word: u64, ns: u64) -> u64 {
    if word == 0 {
        return 0;
    }
    let units = ns.div_ceil(1 << FIRST_STEP_UNIT_SHIFT);
    (word & !TIME_MASK) | (word.wrapping_sub(units) & TIME_MASK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{addr_words, ipv4_mapped, source_hash};

    const MS: u64 = 1_000_000;

    fn key(source: [u8; 4], rule: u32, tag: u32) -> FirstStepKey {
        let words = addr_words(&ipv4_mapped(source));
        FirstStepKey::new(source_hash(&words, 0x1234_5678), 10, rule, tag)
    }

    #[test]
    fn a_record_is_found_by_its_key_alone() {
        let now = 123_456 * MS;
        let k = key([192, 0, 2, 1], 3, 77);
        let word = k.record(now);
        assert_ne!(word, 0);
        assert!(k.holds(word));
        assert_eq!(record_rule(word), 3);
        assert!(!key([192, 0, 2, 2], 3, 77).holds(word), "another source");
        assert!(!key([192, 0, 2, 1], 4, 77).holds(word), "another rule");
        assert!(!key([192, 0, 2, 1], 3, 78).holds(word), "another sequence");
    }

    #[test]
    fn two_ipv4_sources_never_share_a_record_in_a_large_table() {
        // The hash is a bijection of the address: the bucket (16 bits or
        // more) and the source's part of the fingerprint (16) tell it.
        let mut seen = std::collections::HashMap::new();
        for i in 0..200_000u32 {
            let words = addr_words(&ipv4_mapped(i.wrapping_mul(2_654_435_761).to_be_bytes()));
            let k = FirstStepKey::new(source_hash(&words, 0x1234_5678), 16, 0, 1);
            let tag = k.record(0) >> TIME_BITS;
            assert_eq!(seen.insert((k.bucket, tag), i), None, "source {i}");
        }
    }

    #[test]
    fn a_source_is_told_in_its_records_of_any_rule() {
        let now = 77 * MS;
        let a = key([192, 0, 2, 1], 3, 77);
        let other_rule = key([192, 0, 2, 1], 5, 1234);
        assert!(other_rule.of_source(a.record(now)));
        assert!(!key([192, 0, 2, 9], 3, 77).of_source(a.record(now)));
        assert!(!a.of_source(0), "a free way is no one's");
        let ways = [
            0,
            key([10, 0, 0, 1], 0, 1).record(now),
            other_rule.record(now),
        ];
        assert!(a.source_in(|w| ways.get(w).copied().unwrap_or(0)));
        assert!(!key([10, 9, 9, 9], 0, 1).source_in(|w| ways.get(w).copied().unwrap_or(0)));
    }

    #[test]
    fn the_start_reads_back_to_its_time_unit() {
        for started in [0, 5 * MS, 1 << 40, u64::MAX / 3] {
            for later in [0, 1, 999 * MS, 10_500 * MS, 3_600_000 * MS] {
                let word = key([10, 0, 0, 1], 0, 9).record(started);
                let now = started + later;
                let progress = record_progress(word, now, 9);
                let unit = 1 << FIRST_STEP_UNIT_SHIFT;
                assert_eq!(
                    progress.started_ns,
                    started / unit * unit,
                    "{started} +{later}"
                );
                assert_eq!(progress.next_step, 1);
                assert_eq!(progress.sequence_tag, 9);
            }
        }
    }

    #[test]
    fn the_longest_timeout_is_read_true() {
        let word = key([10, 0, 0, 1], 0, 9).record(7 * MS);
        let now = 7 * MS + MAX_FIRST_STEP_TIMEOUT_NS + MS;
        let started = record_progress(word, now, 9).started_ns;
        assert!(now - started > MAX_FIRST_STEP_TIMEOUT_NS);
    }

    #[test]
    fn a_new_step_takes_a_free_way_then_the_oldest() {
        let now = 1_000_000 * MS;
        let mut ways = [0u64; FIRST_STEP_WAYS];
        for (i, way) in ways.iter_mut().enumerate().take(FIRST_STEP_WAYS - 1) {
            *way = key([10, 0, 0, i as u8], 0, 1).record(now - (i as u64 + 1) * 10 * MS);
        }
        assert_eq!(displaced(|w| ways[w], now), 0, "a free way");
        assert_eq!(way_of(|w| ways[w], 0), Some(FIRST_STEP_WAYS - 1));
        ways[FIRST_STEP_WAYS - 1] = key([10, 0, 1, 0], 0, 1).record(now - 5 * MS);
        // Way 6 was made 70 ms ago, the longest.
        let oldest = displaced(|w| ways[w], now);
        assert_eq!(oldest, ways[FIRST_STEP_WAYS - 2]);
        assert_eq!(way_of(|w| ways[w], oldest), Some(FIRST_STEP_WAYS - 2));
        let k = key([10, 0, 0, 3], 0, 1);
        assert_eq!(k.find(|w| ways[w]), Some(ways[3]));
        assert_eq!(key([10, 0, 0, 3], 1, 1).find(|w| ways[w]), None);
    }

    #[test]
    fn aging_a_record_makes_it_at_least_that_much_older() {
        let now = 50_000 * MS;
        let word = key([10, 0, 0, 1], 2, 5).record(now);
        for ns in [1, MS, 10_500 * MS, 3 * MS + 7] {
            let aged = record_aged(word, ns);
            assert!(key([10, 0, 0, 1], 2, 5).holds(aged));
            let started = record_progress(aged, now, 5).started_ns;
            assert!(now - started >= ns, "aged {ns}: {}", now - started);
            assert!(now - started < ns + 2 * (1 << FIRST_STEP_UNIT_SHIFT));
        }
        assert_eq!(record_aged(0, MS), 0, "a free way stays free");
    }

    #[test]
    fn buckets_are_powers_of_two_of_at_least_two() {
        assert_eq!(first_step_buckets(1), 2);
        assert_eq!(first_step_buckets(16), 2);
        assert_eq!(first_step_buckets(17), 4);
        assert_eq!(first_step_buckets(65_536), 8192);
        assert_eq!(first_step_buckets(1 << 20), 1 << 17);
        assert_eq!(first_step_buckets(u32::MAX), 1 << 28);
        assert_eq!(first_step_bucket_bits(first_step_buckets(1 << 20)), 17);
    }
}
