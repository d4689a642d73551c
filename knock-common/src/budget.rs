//! The per-CPU budget for the events a flood can cause (denied attempts,
//! first steps): at most so many a second, with the clock read rarely once
//! the budget is spent. Plain Rust, host-tested.

/// Rate limit state for the events a flood can cause, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventBudget {
    pub window_start_ns: u64,
    pub used: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<EventBudget>() == 16);

/// Once over budget, the clock is read on every this many candidates only,
/// so a flood does not pay for it per packet; a new window may start that
/// many candidates late.
pub const BUDGET_CLOCK_INTERVAL: u32 = 64;

impl EventBudget {
    /// Whether one more event a flood can cause may go out: at most `limit`
    /// per window, and a window lasts at least a second. `now` (the clock,
    /// in ns) is called when a window starts, and then only on every
    /// `BUDGET_CLOCK_INTERVAL`th candidate over the limit.
    #[inline(always)]
    pub fn admit(&mut self, limit: u32, mut now: impl FnMut() -> u64) -> bool {
        // `used` counts every candidate since the window began, so the
        // common case is one increment and one comparison.
        let seen = self.used;
        self.used = seen.wrapping_add(1);
        if seen == 0 {
            self.window_start_ns = now();
        }
        if seen < limit {
            return true;
        }
        if !(seen - limit).is_multiple_of(BUDGET_CLOCK_INTERVAL) {
            return false;
        }
        let now = now();
        if now.wrapping_sub(self.window_start_ns) < 1_000_000_000 {
            return false;
        }
        self.window_start_ns = now;
        self.used = 1;
        limit > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    /// Offers `n` candidates at `at`; returns how many went out and how
    /// often the clock was read.
    fn offer(budget: &mut EventBudget, limit: u32, n: u32, at: u64) -> (u32, u32) {
        let mut reads = 0;
        let admitted = (0..n)
            .filter(|_| {
                budget.admit(limit, || {
                    reads += 1;
                    at
                })
            })
            .count();
        (admitted as u32, reads)
    }

    #[test]
    fn a_flood_gets_the_limit_per_second_and_rarely_reads_the_clock() {
        let mut budget = EventBudget::default();
        assert_eq!(offer(&mut budget, 20, 10_000, 5 * SECOND), (20, 157));
        assert_eq!(offer(&mut budget, 20, 10_000, 5 * SECOND + SECOND / 2).0, 0);
        let (admitted, _) = offer(&mut budget, 20, 10_000, 6 * SECOND + 1);
        assert_eq!(admitted, 20, "a second later the budget is back");
    }

    #[test]
    fn under_the_limit_the_clock_is_read_once_per_window() {
        let mut budget = EventBudget::default();
        assert_eq!(offer(&mut budget, 20, 19, SECOND), (19, 1));
    }

    #[test]
    fn a_zero_limit_admits_nothing() {
        let mut budget = EventBudget::default();
        assert_eq!(offer(&mut budget, 0, 1000, 10 * SECOND).0, 0);
        assert_eq!(offer(&mut budget, 0, 1000, 20 * SECOND).0, 0);
    }
}
