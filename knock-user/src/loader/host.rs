//! What this host's kernel puts in the answers of its closed ports, read
//! from its sysctls when the filter loads, so that xknock's answers at knock
//! and protected ports carry the same values and run dry at the same rates.

use std::{fs, path::Path};

use knock_common::{ICMP_DEST_UNREACH, ICMPV6_DEST_UNREACH, Settings};

/// The kernel's defaults, for a sysctl that cannot be read.
const DEFAULT_TTL: u8 = 64;
const DEFAULT_MSGS_PER_SEC: u32 = 1000;
const DEFAULT_MSGS_BURST: u32 = 50;
const DEFAULT_RATELIMIT_MS: u32 = 1000;
/// `icmp_ratemask` bit of ICMP_DEST_UNREACH.
const DEST_UNREACH_BIT: u32 = 1 << ICMP_DEST_UNREACH;

/// The answer-shaping values of one host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostAnswers {
    pub ttl: u8,
    pub hop_limit: u8,
    pub icmp_msgs_per_sec: u32,
    pub icmp_msgs_burst: u32,
    /// Zero when `icmp_ratemask` exempts port unreachables.
    pub icmp_ratelimit_ms: u32,
    pub icmpv6_ratelimit_ms: u32,
}

impl HostAnswers {
    /// Reads /proc/sys/net in this process's network namespace.
    pub fn read() -> HostAnswers {
        HostAnswers::read_from(Path::new("/proc/sys/net"))
    }

    fn read_from(net: &Path) -> HostAnswers {
        let number = |path: &str| -> Option<u32> {
            fs::read_to_string(net.join(path)).ok()?.trim().parse().ok()
        };
        let ttl = number("ipv4/ip_default_ttl")
            .and_then(|n| u8::try_from(n).ok())
            .unwrap_or(DEFAULT_TTL);
        let hop_limit = number("ipv6/conf/all/hop_limit")
            .and_then(|n| u8::try_from(n).ok())
            .unwrap_or(DEFAULT_TTL);
        let v4_limited =
            number("ipv4/icmp_ratemask").is_none_or(|mask| mask & DEST_UNREACH_BIT != 0);
        let v6_limited = fs::read_to_string(net.join("ipv6/icmp/ratemask"))
            .ok()
            .is_none_or(|list| in_ranges(list.trim(), u32::from(ICMPV6_DEST_UNREACH)));
        HostAnswers {
            ttl,
            hop_limit,
            icmp_msgs_per_sec: number("ipv4/icmp_msgs_per_sec").unwrap_or(DEFAULT_MSGS_PER_SEC),
            icmp_msgs_burst: number("ipv4/icmp_msgs_burst").unwrap_or(DEFAULT_MSGS_BURST),
            icmp_ratelimit_ms: if v4_limited {
                number("ipv4/icmp_ratelimit").unwrap_or(DEFAULT_RATELIMIT_MS)
            } else {
                0
            },
            icmpv6_ratelimit_ms: if v6_limited {
                number("ipv6/icmp/ratelimit").unwrap_or(DEFAULT_RATELIMIT_MS)
            } else {
                0
            },
        }
    }

    /// `settings` with these values in place.
    pub fn apply(&self, settings: Settings) -> Settings {
        Settings {
            ttl: self.ttl,
            hop_limit: self.hop_limit,
            icmp_msgs_per_sec: self.icmp_msgs_per_sec,
            icmp_msgs_burst: self.icmp_msgs_burst,
            icmp_ratelimit_ms: self.icmp_ratelimit_ms,
            icmpv6_ratelimit_ms: self.icmpv6_ratelimit_ms,
            ..settings
        }
    }
}

/// Whether `value` is in a sysctl list such as `0-1,3-127`.
fn in_ranges(list: &str, value: u32) -> bool {
    list.split(',').any(|range| {
        let (low, high) = range.split_once('-').unwrap_or((range, range));
        match (low.trim().parse::<u32>(), high.trim().parse::<u32>()) {
            (Ok(low), Ok(high)) => (low..=high).contains(&value),
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_hosts_values_and_its_ratemasks() {
        let dir = tempfile::tempdir().unwrap();
        let write = |path: &str, text: &str| {
            let path = dir.path().join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        };
        write("ipv4/ip_default_ttl", "61\n");
        write("ipv6/conf/all/hop_limit", "62\n");
        write("ipv4/icmp_msgs_per_sec", "10\n");
        write("ipv4/icmp_msgs_burst", "5\n");
        write("ipv4/icmp_ratelimit", "250\n");
        write("ipv4/icmp_ratemask", "6168\n");
        write("ipv6/icmp/ratelimit", "300\n");
        write("ipv6/icmp/ratemask", "0-1,3-127\n");
        let host = HostAnswers::read_from(dir.path());
        assert_eq!(
            host,
            HostAnswers {
                ttl: 61,
                hop_limit: 62,
                icmp_msgs_per_sec: 10,
                icmp_msgs_burst: 5,
                icmp_ratelimit_ms: 250,
                icmpv6_ratelimit_ms: 300,
            }
        );
        // Masks that exempt port unreachables turn the per-peer limit off.
        write("ipv4/icmp_ratemask", "0\n");
        write("ipv6/icmp/ratemask", "0,2-127\n");
        let host = HostAnswers::read_from(dir.path());
        assert_eq!((host.icmp_ratelimit_ms, host.icmpv6_ratelimit_ms), (0, 0));
    }

    #[test]
    fn falls_back_to_the_kernels_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let host = HostAnswers::read_from(dir.path());
        assert_eq!((host.ttl, host.hop_limit), (64, 64));
        assert_eq!((host.icmp_msgs_per_sec, host.icmp_msgs_burst), (1000, 50));
        assert_eq!(
            (host.icmp_ratelimit_ms, host.icmpv6_ratelimit_ms),
            (1000, 1000)
        );
    }
}
