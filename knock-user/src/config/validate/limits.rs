//! `[limits]`, `[flows]` and `[penalty]`: only the map sizes need a check
//! beyond their types (any duration and failure count is accepted).

use super::report::Report;
use crate::config::{file::Limits, kernel::MapLimit, model::ConfigError};

/// Largest map size accepted (keeps a typo from asking for gigabytes).
const MAX_MAP_ENTRIES: u32 = 1 << 24;

/// Every configuration-sized map's size is within 1..=MAX_MAP_ENTRIES.
#[expect(
    clippy::expect_used,
    reason = "an invariant: every limit checked here has a [limits] key"
)]
pub(super) fn check(limits: &Limits, report: &Report<'_>) -> Result<(), ConfigError> {
    for (limit, value) in [
        (MapLimit::FirstStepEntries, &limits.first_step_entries),
        (MapLimit::ProgressEntries, &limits.progress_entries),
        (MapLimit::GrantEntries, &limits.grant_entries),
        (MapLimit::FlowEntries, &limits.flow_entries),
        (MapLimit::PenaltyEntries, &limits.penalty_entries),
    ] {
        if !(1..=MAX_MAP_ENTRIES).contains(value.get_ref()) {
            return Err(report.invalid(
                value.span(),
                limit.key().expect("a [limits] key"),
                format!("{} is outside 1..={MAX_MAP_ENTRIES}", value.get_ref()),
            ));
        }
    }
    Ok(())
}
