//! Test-only access: moving the kernel's timestamps, planting state.

use std::{
    collections::BTreeMap,
    os::fd::{AsFd as _, AsRawFd as _, RawFd},
    sync::atomic::Ordering,
};

use aya::{
    Pod,
    maps::{HashMap, MapData},
};
use knock_common::{
    Addr, Grant, GrantKey, HORIZON_UNIT_SHIFT, Progress, SourceHorizon, SourceRule, record_aged,
};

use super::base::{Maps, MapsError, entries, map_data, map_error, remove_where};
use crate::loader::table::name;

/// Rewrites every value of hash map `name` with `change`.
fn rewrite<K: Pod, V: Pod>(
    name: &'static str,
    mut map: HashMap<&mut MapData, K, V>,
    change: impl Fn(&mut V),
) -> Result<(), MapsError> {
    for (key, mut value) in entries(&map) {
        change(&mut value);
        map.insert(&key, &value, 0).map_err(map_error(name))?;
    }
    Ok(())
}

impl Maps {
    /// Moves every timestamp the kernel stored back by `ns`, as if that much
    /// time had passed (the program compares with wrapping arithmetic, except
    /// grant and penalty ends, which must not wrap into the future); the
    /// horizons of `sources` move back by whole units, rounded down, so they
    /// still cover what they covered.
    pub fn age(&mut self, ns: u64, sources: &[Addr]) -> Result<(), MapsError> {
        self.change_first_steps(|word| record_aged(word, ns))?;
        rewrite(
            name::PROGRESS,
            self.progress_map_mut()?,
            |p: &mut Progress| {
                p.started_ns = p.started_ns.wrapping_sub(ns);
            },
        )?;
        rewrite(name::GRANTS, self.grants_map_mut()?, |g| {
            g.expires_ns = g.expires_ns.saturating_sub(ns);
        })?;
        rewrite(name::PENALTIES, self.penalties_map_mut()?, |p| {
            p.window_start_ns = p.window_start_ns.wrapping_sub(ns);
            p.ignored_until_ns = p.ignored_until_ns.saturating_sub(ns);
        })?;
        rewrite(name::FLOWS, self.flows_map_mut()?, |f| {
            f.last_seen_ns = f.last_seen_ns.wrapping_sub(ns);
        })?;
        let units = (ns >> HORIZON_UNIT_SHIFT) as u32;
        // Each slot once, though sources may share one.
        let mut slots = BTreeMap::new();
        for addr in sources {
            let (slot, horizon) = self.source_horizon(addr)?;
            slots.insert(slot, horizon);
        }
        for (slot, horizon) in slots {
            let aged = SourceHorizon {
                knocking_until: horizon.knocking_until.saturating_sub(units),
                admitted_until: horizon.admitted_until.saturating_sub(units),
                failing_until: horizon.failing_until.saturating_sub(units),
                ..horizon
            };
            self.set_source_horizon(slot, &aged)?;
        }
        Ok(())
    }

    /// Removes every grant and flow.
    pub fn clear_grants_and_flows(&mut self) -> Result<(), MapsError> {
        remove_where(self.grants_map_mut()?, |_, _| true);
        remove_where(self.flows_map_mut()?, |_, _| true);
        Ok(())
    }

    /// Stores progress as if the kernel had made it at `now` (kernel
    /// clock): a first step through the rule's current sequence.
    pub fn plant_progress(
        &mut self,
        key: &SourceRule,
        progress: &Progress,
        now: u64,
    ) -> Result<(), MapsError> {
        if progress.next_step <= 1 {
            return self.plant_first_step(&key.addr, key.rule, progress.started_ns, now);
        }
        // Counted in the source's slot, as the kernel counts it.
        let (slot, _) = self.source_horizon(&key.addr)?;
        self.mapped_horizons()?
            .word(slot, core::mem::offset_of!(SourceHorizon, later_steps))
            .fetch_add(1, Ordering::SeqCst);
        self.progress_map_mut()?
            .insert(key, progress, 0)
            .map_err(map_error(name::PROGRESS))
    }

    /// Stores a grant without raising its source's horizon.
    pub fn plant_grant(&mut self, key: &GrantKey, grant: &Grant) -> Result<(), MapsError> {
        self.grants_map_mut()?
            .insert(key, grant, 0)
            .map_err(map_error(name::GRANTS))
    }

    /// The fd of every map, by name, to read what the kernel charges for it.
    pub fn fds(&self) -> BTreeMap<&'static str, RawFd> {
        self.maps
            .iter()
            .map(|(name, map)| (*name, map_data(map).fd().as_fd().as_raw_fd()))
            .collect()
    }
}
