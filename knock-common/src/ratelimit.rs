//! The kernel's ICMP error rate limits, so that a closed-port answer from
//! the XDP program runs dry exactly when the kernel's own would: a global
//! budget (`net.ipv4.icmp_msgs_per_sec`, `icmp_msgs_burst`, shared by IPv4
//! and IPv6: `icmp_global_allow` and `icmp_global_consume` in
//! net/ipv4/icmp.c) and a per-peer token bucket (`net.ipv4.icmp_ratelimit`,
//! `net.ipv6.icmp.ratelimit`: `inet_peer_xrlim_allow` in
//! net/ipv4/inetpeer.c). Times are in milliseconds of the kernel's monotonic
//! clock, where the kernel counts jiffies. Plain Rust, host-tested.

/// How many times the per-peer interval a peer may save up
/// (`XRLIM_BURST_FACTOR`).
pub const BURST_FACTOR: u32 = 6;

/// The global budget: one slot, shared by every CPU (as the kernel's is by
/// every CPU; racing updates may lose a credit, which the kernel accepts too).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlobalIcmpBudget {
    /// When credit was last added.
    pub stamp_ms: u32,
    /// Messages that may still go out; may run negative after `consume`.
    pub credit: i32,
}
const _: () = assert!(size_of::<GlobalIcmpBudget>() == 8);

impl GlobalIcmpBudget {
    /// `icmp_global_allow`: whether another error may go out now. Credit is
    /// refilled at `per_sec`, at most every 20 ms, and capped at `burst`.
    #[inline(always)]
    pub fn allow(&mut self, now_ms: u32, per_sec: u32, burst: u32) -> bool {
        if self.credit > 0 {
            return true;
        }
        let delta = now_ms.wrapping_sub(self.stamp_ms).min(1000);
        if delta < 1000 / 50 {
            return false;
        }
        let incr = u64::from(per_sec) * u64::from(delta) / 1000;
        if incr == 0 {
            return false;
        }
        self.stamp_ms = now_ms;
        let burst = i64::from(burst.min(i32::MAX as u32));
        self.credit = (i64::from(self.credit) + incr as i64).min(burst) as i32;
        true
    }

    /// `icmp_global_consume`: an error went out and costs `credits` (the
    /// kernel draws 0, 1 or 2 at random so the budget leaks no exact count).
    #[inline(always)]
    pub fn consume(&mut self, credits: u32) {
        self.credit = self.credit.saturating_sub(credits.min(2) as i32);
    }
}

/// One peer's token bucket. Indexed by a seeded hash of the peer's address
/// (the `SOURCE_HORIZONS` slot), so peers that share a slot share a bucket:
/// a collision can only make answers scarcer, never more plentiful.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerIcmpRate {
    /// When the bucket was last looked at; zero for never.
    pub last_ms: u32,
    /// Saved-up milliseconds, at most `BURST_FACTOR` intervals.
    pub tokens: u32,
}
const _: () = assert!(size_of::<PeerIcmpRate>() == 8);

impl PeerIcmpRate {
    /// `inet_peer_xrlim_allow`: one error per `interval_ms`, with a burst of
    /// `BURST_FACTOR`. A new peer starts as if last seen a minute ago, so
    /// with a full bucket. An interval of zero never limits.
    #[inline(always)]
    pub fn allow(&mut self, now_ms: u32, interval_ms: u32) -> bool {
        if interval_ms == 0 {
            return true;
        }
        let elapsed = if self.last_ms == 0 {
            60_000
        } else {
            now_ms.wrapping_sub(self.last_ms)
        };
        let mut tokens = self
            .tokens
            .saturating_add(elapsed)
            .min(interval_ms.saturating_mul(BURST_FACTOR));
        // Zero means never: a clock reading of exactly zero is stored as 1.
        self.last_ms = now_ms.max(1);
        let allowed = tokens >= interval_ms;
        if allowed {
            tokens -= interval_ms;
        }
        self.tokens = tokens;
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_peer_gets_a_burst_of_six_then_one_per_interval() {
        let mut peer = PeerIcmpRate::default();
        let now = 5_000_000;
        let burst = (0..10).filter(|_| peer.allow(now, 1000)).count();
        assert_eq!(burst, BURST_FACTOR as usize);
        assert!(!peer.allow(now + 999, 1000));
        assert!(peer.allow(now + 1000, 1000));
        assert!(!peer.allow(now + 1500, 1000));
        // A long pause saves up no more than the burst.
        let later = now + 3_600_000;
        assert_eq!((0..10).filter(|_| peer.allow(later, 1000)).count(), 6);
    }

    #[test]
    fn a_zero_interval_never_limits() {
        let mut peer = PeerIcmpRate::default();
        assert!((0..100).all(|_| peer.allow(42, 0)));
    }

    #[test]
    fn the_clock_may_wrap() {
        let mut peer = PeerIcmpRate::default();
        for _ in 0..6 {
            assert!(peer.allow(u32::MAX - 10, 1000));
        }
        assert!(!peer.allow(u32::MAX, 1000));
        assert!(peer.allow(989, 1000));
    }

    #[test]
    fn the_global_budget_refills_at_the_rate_up_to_the_burst() {
        let mut global = GlobalIcmpBudget::default();
        let mut now = 10_000;
        let mut sent = 0;
        // Each error costs one credit here (the kernel draws 0 to 2).
        while global.allow(now, 1000, 50) {
            global.consume(1);
            sent += 1;
            assert!(sent <= 50, "ran past the burst");
        }
        assert_eq!(sent, 50);
        // Under 20 ms later nothing is added.
        now += 19;
        assert!(!global.allow(now, 1000, 50));
        // 100 ms later 100 credits are due, capped at the burst.
        now += 100;
        assert!(global.allow(now, 1000, 50));
        assert_eq!(global.credit, 50);
    }

    #[test]
    fn a_low_rate_adds_nothing_until_a_whole_message_is_due() {
        let mut global = GlobalIcmpBudget {
            stamp_ms: 1000,
            credit: 0,
        };
        assert!(!global.allow(1020, 10, 50), "10/s adds 0.2 in 20 ms");
        assert!(global.allow(1100, 10, 50));
        assert_eq!(global.credit, 1);
    }
}
