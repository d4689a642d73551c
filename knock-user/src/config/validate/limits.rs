//! `[limits]`, `[flows]` and `[penalty]`: only the map sizes need a check
//! beyond their types (any duration and failure count is accepted).

use super::report::Report;
use crate::config::{ConfigError, Limits};

/// Largest map size accepted (keeps a typo from asking for gigabytes).
const MAX_MAP_ENTRIES: u32 = 1 << 24;

/// Every configuration-sized map's size is within 1..=MAX_MAP_ENTRIES.
pub(super) fn check(limits: &Limits, report: &Report) -> Result<(), ConfigError> {
    for (key, limit) in [
        ("limits.first_step_entries", &limits.first_step_entries),
        ("limits.progress_entries", &limits.progress_entries),
        ("limits.grant_entries", &limits.grant_entries),
        ("limits.flow_entries", &limits.flow_entries),
        ("limits.penalty_entries", &limits.penalty_entries),
    ] {
        if !(1..=MAX_MAP_ENTRIES).contains(limit.get_ref()) {
            return Err(report.invalid(
                limit.span(),
                key,
                format!("{} is outside 1..={MAX_MAP_ENTRIES}", limit.get_ref()),
            ));
        }
    }
    Ok(())
}
