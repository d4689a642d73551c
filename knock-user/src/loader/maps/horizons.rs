//! The sources' horizons (`SOURCE_HORIZONS`): read and written whole
//! through the bpf syscall, and a word at a time through a mapping of the
//! map, as the XDP program changes them.

use knock_common::{Addr, SOURCE_HORIZON_SLOTS, SourceHorizon, addr_words, source_slot};

use super::{
    base::{Maps, MapsError, map_error},
    mapped::Mapped,
};
use crate::loader::table::name;

impl Maps {
    /// Where `addr`'s horizons live in `SOURCE_HORIZONS` (the slot depends
    /// on the instance's seed), and their value.
    pub fn source_horizon(&self, addr: &Addr) -> Result<(u32, SourceHorizon), MapsError> {
        let seed = self.settings()?.source_seed;
        let slot = source_slot(&addr_words(addr), seed);
        let horizon = self
            .source_horizons_map()?
            .get(&slot, 0)
            .map_err(map_error(name::SOURCE_HORIZONS))?;
        Ok((slot, horizon))
    }

    /// Overwrites a whole `SOURCE_HORIZONS` slot: for tests and the bench,
    /// while no traffic runs (`grant` changes one word, atomically).
    pub fn set_source_horizon(
        &mut self,
        slot: u32,
        horizon: &SourceHorizon,
    ) -> Result<(), MapsError> {
        self.source_horizons_map_mut()?
            .set(slot, horizon, 0)
            .map_err(map_error(name::SOURCE_HORIZONS))
    }

    /// `SOURCE_HORIZONS` mapped into this process.
    pub(super) fn mapped_horizons(&self) -> Result<&Mapped, MapsError> {
        let len = SOURCE_HORIZON_SLOTS as usize * size_of::<SourceHorizon>();
        self.mapped(name::SOURCE_HORIZONS, &self.horizons, len)
    }
}
