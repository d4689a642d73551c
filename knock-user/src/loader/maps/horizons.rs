//! The sources' horizons (`SOURCE_HORIZONS`): read and written whole
//! through the bpf syscall, and a word at a time through a mapping of the
//! map, as the XDP program changes them.

use aya::{maps::MapError, sys::SyscallError};
use knock_common::{Addr, SourceHorizon, addr_words, source_slot};

use super::{
    base::{Maps, MapsError, map_data, map_error},
    mapped::MappedHorizons,
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
    pub(super) fn mapped_horizons(&self) -> Result<&MappedHorizons, MapsError> {
        if let Some(mapped) = self.horizons.get() {
            return Ok(mapped);
        }
        let name = name::SOURCE_HORIZONS;
        let mapped =
            MappedHorizons::map(map_data(self.map(name)?)).map_err(|io_error| MapsError {
                name,
                source: MapError::SyscallError(SyscallError {
                    call: "mmap",
                    io_error,
                }),
            })?;
        // Of two threads mapping at once, one mapping stays; the other is
        // unmapped as it drops.
        Ok(self.horizons.get_or_init(|| mapped))
    }
}
