//! The one typed layer over the filter's maps: `run`, `status`, `grant`,
//! `revoke`, the tests and the bench all read and write the kernel's state
//! through it, whether the maps come from a program just loaded or from the
//! pins of a filter no process holds.
//!
//! Which maps it holds, and their types, come from the map table
//! (`loader::table`): one typed accessor per map (`accessors.rs`), and
//! what the daemon and the operator do with them by concern: the knock
//! state and grants (`state.rs`), first steps (`first_steps.rs`), the
//! sources' horizons (`horizons.rs`),
//! the configuration (`configuration.rs`), the counters (`counters.rs`),
//! the SPA replay keys (`replay.rs`), and what only tests and the bench do
//! (`testing.rs`).

mod accessors;
mod base;
mod configuration;
mod counters;
mod first_steps;
mod horizons;
mod mapped;
mod replay;
mod state;
#[cfg(feature = "testing")]
mod testing;

pub use self::{
    base::{Maps, MapsError, display_addr, grant_prefix, key_addr, map_data, scope_prefix},
    counters::Occupancy,
    replay::Remembered,
    state::ExpiredGrant,
};
