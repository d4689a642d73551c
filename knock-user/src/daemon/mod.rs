//! `xknock run` and what runs beside it: the event stream, the sweeper,
//! the filter's generations (reloads, rotations), the SPA judge, the
//! metrics endpoint, and `xknock trace`.

pub mod events;
pub mod fleet;
pub mod generations;
pub mod listeners;
pub mod metrics;
pub mod run;
pub mod spa;
pub mod trace;
