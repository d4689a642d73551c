//! Sources one step into a sequence (`FIRST_STEPS`): buckets of one-word
//! records (`knock_common::first_step`), read and changed a word at a time
//! through a mapping of the map. A record holds a fingerprint, not the
//! source: the loader can count them, find those of sources it names, and
//! clear those of a rule, but not list who they are.

use std::sync::atomic::Ordering;

use knock_common::{
    Addr, FIRST_STEP_WAYS, FirstStepBucket, FirstStepKey, Progress, RuleConfig, Settings,
    SourceRule, addr_words, record_progress, record_rule, source_hash,
};

use super::{
    base::{Maps, MapsError, map_data, map_error},
    counters::Occupancy,
    mapped::Mapped,
};
use crate::loader::table::name;

impl Maps {
    /// `FIRST_STEPS` mapped into this process.
    pub(super) fn mapped_first_steps(&self) -> Result<&Mapped, MapsError> {
        let buckets = map_data(self.map(name::FIRST_STEPS)?)
            .info()
            .map_err(map_error(name::FIRST_STEPS))?
            .max_entries();
        let len = buckets as usize * size_of::<FirstStepBucket>();
        self.mapped(name::FIRST_STEPS, &self.first_steps, len)
    }

    /// How many first steps the table holds (made at any time: a record
    /// stays until a newer one takes its way), of how many it has room for.
    pub fn first_step_occupancy(&self) -> Result<Occupancy, MapsError> {
        let mapped = self.mapped_first_steps()?;
        let held = (0..mapped.words64())
            .filter(|&index| mapped.word64(index).load(Ordering::Relaxed) != 0)
            .count();
        Ok(Occupancy {
            entries: u32::try_from(held).unwrap_or(u32::MAX),
            max_entries: u32::try_from(mapped.words64()).unwrap_or(u32::MAX),
        })
    }

    /// The first steps that sources `addrs` made through their rules'
    /// current sequences, as progress read at `now` (kernel clock).
    pub fn first_steps_of(
        &self,
        addrs: &[Addr],
        now: u64,
    ) -> Result<Vec<(SourceRule, Progress)>, MapsError> {
        let settings = self.settings()?;
        let rules = self.rules()?;
        let mapped = self.mapped_first_steps()?;
        let mut found = Vec::new();
        for addr in addrs {
            for (index, rule) in (0u32..).zip(&rules).filter(|(_, r)| r.steps > 0) {
                let key = first_step_key(&settings, addr, index, rule);
                let Some(bucket) = Bucket::of(mapped, key) else {
                    continue;
                };
                if let Some(word) = key.find(|way| bucket.read(way)) {
                    let progress = record_progress(word, now, rule.sequence_tag);
                    found.push((
                        SourceRule {
                            addr: *addr,
                            rule: index,
                        },
                        progress,
                    ));
                }
            }
        }
        Ok(found)
    }

    /// Removes every first step of the rule indexes `rules`.
    pub(super) fn clear_first_steps(&self, rules: &[u32]) -> Result<(), MapsError> {
        self.change_first_steps(|word| {
            if rules.contains(&record_rule(word)) {
                0
            } else {
                word
            }
        })
    }

    /// Replaces every record held with `change` of it, each word in one
    /// step (unless the program wrote it meanwhile, which wins).
    pub(super) fn change_first_steps(&self, change: impl Fn(u64) -> u64) -> Result<(), MapsError> {
        let mapped = self.mapped_first_steps()?;
        for index in 0..mapped.words64() {
            let word = mapped.word64(index);
            let now = word.load(Ordering::Relaxed);
            if now != 0 {
                let _ =
                    word.compare_exchange(now, change(now), Ordering::SeqCst, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    #[cfg(feature = "testing")]
    /// Stores a first step of `addr` through rule index `index` made at
    /// `started_ns`, as the program would at `now` (kernel clock).
    pub(super) fn plant_first_step(
        &self,
        addr: &Addr,
        index: u32,
        started_ns: u64,
        now: u64,
    ) -> Result<(), MapsError> {
        use knock_common::{displaced, way_of};

        let settings = self.settings()?;
        let rules = self.rules()?;
        let Some(rule) = rules.get(index as usize) else {
            return Ok(());
        };
        let key = first_step_key(&settings, addr, index, rule);
        if let Some(bucket) = Bucket::of(self.mapped_first_steps()?, key) {
            let old = match key.find(|way| bucket.read(way)) {
                Some(word) => word,
                None => displaced(|way| bucket.read(way), now),
            };
            if let Some(way) = way_of(|way| bucket.read(way), old) {
                bucket
                    .way(way)
                    .store(key.record(started_ns), Ordering::SeqCst);
            }
        }
        Ok(())
    }
}

/// Where `addr`'s first step through `rule` (at rule index `index`) lives.
fn first_step_key(settings: &Settings, addr: &Addr, index: u32, rule: &RuleConfig) -> FirstStepKey {
    let hash = source_hash(&addr_words(addr), settings.source_seed);
    FirstStepKey::of_rule(hash, settings.first_step_bucket_bits, index, rule)
}

/// One bucket of a mapped `FIRST_STEPS`.
struct Bucket<'a> {
    mapped: &'a Mapped,
    first: usize,
}

impl<'a> Bucket<'a> {
    /// `key`'s bucket, if the mapping holds it.
    fn of(mapped: &'a Mapped, key: FirstStepKey) -> Option<Bucket<'a>> {
        let first = key.bucket as usize * FIRST_STEP_WAYS;
        (first + FIRST_STEP_WAYS <= mapped.words64()).then_some(Bucket { mapped, first })
    }

    fn way(&self, way: usize) -> &'a std::sync::atomic::AtomicU64 {
        self.mapped.word64(self.first + way % FIRST_STEP_WAYS)
    }

    fn read(&self, way: usize) -> u64 {
        self.way(way).load(Ordering::Relaxed)
    }
}
