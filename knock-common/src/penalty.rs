//! The penalty for repeated failures: a source whose knocks fail (reset
//! its progress) too often within a window has its knocks ignored for a
//! while. Plain Rust, so the XDP program and the host unit tests run the
//! same code.

use crate::Settings;

/// Value of `PENALTIES` (keyed by source address): recent failures.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Penalty {
    /// When the current counting window began.
    pub window_start_ns: u64,
    /// Knocks from the source are ignored until then.
    pub ignored_until_ns: u64,
    /// Failures counted in the current window.
    pub failures: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<Penalty>() == 24);

/// Records one failure at `now_ns`; returns true when it starts a penalty.
/// Shared by the XDP program and the host tests.
#[inline(always)]
pub fn record_failure(settings: &Settings, penalty: &mut Penalty, now_ns: u64) -> bool {
    if now_ns.wrapping_sub(penalty.window_start_ns) > settings.penalty_window_ns {
        penalty.window_start_ns = now_ns;
        penalty.failures = 0;
    }
    penalty.failures += 1;
    if settings.penalty_failures == 0 || penalty.failures < settings.penalty_failures {
        return false;
    }
    penalty.failures = 0;
    penalty.window_start_ns = now_ns;
    penalty.ignored_until_ns = now_ns + settings.penalty_ns;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn settings(failures: u32) -> Settings {
        Settings {
            penalty_failures: failures,
            penalty_window_ns: 60 * SECOND,
            penalty_ns: 300 * SECOND,
            ..Settings::default()
        }
    }

    #[test]
    fn the_nth_failure_within_the_window_starts_a_penalty() {
        let settings = settings(3);
        let mut penalty = Penalty::default();
        assert!(!record_failure(&settings, &mut penalty, 100 * SECOND));
        assert!(!record_failure(&settings, &mut penalty, 110 * SECOND));
        assert!(record_failure(&settings, &mut penalty, 120 * SECOND));
        assert_eq!(penalty.ignored_until_ns, 420 * SECOND);
        assert_eq!(penalty.failures, 0, "the count starts over after a penalty");
    }

    #[test]
    fn failures_spread_wider_than_the_window_never_add_up() {
        let settings = settings(3);
        let mut penalty = Penalty::default();
        for minute in 1..10 {
            assert!(!record_failure(
                &settings,
                &mut penalty,
                minute * 61 * SECOND
            ));
        }
        assert_eq!(penalty.ignored_until_ns, 0);
    }

    #[test]
    fn zero_failures_turns_the_penalty_off() {
        let settings = settings(0);
        let mut penalty = Penalty::default();
        for second in 0..100 {
            assert!(!record_failure(&settings, &mut penalty, second * SECOND));
        }
    }
}
