//! The rules as the knock program reads them and the state it keeps per
//! source: knock steps, a rule's sequence and its tag, a source's progress,
//! and the spent sequences that open only once.

use crate::{Addr, AddrWords, GrantKey, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

/// Rules per configuration: protected-port and knock-port roles are `u16` bitmasks.
pub const MAX_RULES: usize = 16;
/// Steps per knock sequence.
pub const MAX_STEPS: usize = 16;

/// One knock step or protected port: a protocol and a port (host byte
/// order); for an ICMP echo request, the size of its payload.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Knock {
    pub port: u16,
    /// `IPPROTO_TCP`, `IPPROTO_UDP` or `IPPROTO_ICMP`.
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<Knock>() == 4);

impl Knock {
    /// A packet of protocol `proto` to `port` (for ICMP, an echo request
    /// with `port` bytes of payload), padding zeroed.
    pub const fn new(proto: u8, port: u16) -> Self {
        Self {
            port,
            proto,
            _pad: 0,
        }
    }
    pub const fn tcp(port: u16) -> Self {
        Self::new(IPPROTO_TCP, port)
    }
    pub const fn udp(port: u16) -> Self {
        Self::new(IPPROTO_UDP, port)
    }
    /// An ICMP or ICMPv6 echo request with `size` bytes of payload.
    pub const fn icmp(size: u16) -> Self {
        Self::new(IPPROTO_ICMP, size)
    }
}

/// `RuleConfig::sequence_tag` of a sequence: progress stored under another
/// tag belongs to a sequence the rule no longer has, and counts for nothing.
/// Never zero (a free slot's).
pub fn sequence_tag(sequence: &[Knock]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for step in sequence {
        for byte in step.port.to_le_bytes().into_iter().chain([step.proto]) {
            hash = (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193);
        }
    }
    hash.max(1)
}

/// One rule as the kernel sees it; its protected ports live in `PORT_ROLES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleConfig {
    pub sequence: [Knock; MAX_STEPS],
    /// How many entries of `sequence` are in use; zero: a free slot.
    pub steps: u32,
    /// `sequence_tag(sequence)`, stamped on the progress it makes.
    pub sequence_tag: u32,
    pub sequence_timeout_ns: u64,
    pub open_for_ns: u64,
    /// `ONCE`: the sequence opens once (a one-time or rotating sequence);
    /// completing it again after that grants nothing (see `SpentKey`).
    /// With `ONCE_HELD` too, completing it grants nothing by itself: the
    /// loader grants once the fleet has recorded the spend (`EventKind::Held`).
    pub once: u32,
    /// What its grants to an IPv4, and to an IPv6 address leave out of
    /// the address (`host_mask`; zero: nothing, the address alone), and
    /// how many bits that is (`GrantKey` records it).
    pub ipv4_host_mask: AddrWords,
    pub ipv6_host_mask: AddrWords,
    pub ipv4_host_bits: u8,
    pub ipv6_host_bits: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<RuleConfig>() == 4 * MAX_STEPS + 64);

impl RuleConfig {
    /// The key of its grant to `words` (of an IPv6 address if `ipv6`,
    /// else of an IPv4-mapped one), which is rule `index`: the prefix its
    /// scope admits.
    #[inline(always)]
    pub const fn grant_key(&self, words: &AddrWords, ipv6: bool, index: u32) -> GrantKey {
        // One branch, not an index: the verifier refuses a map value at an
        // offset it cannot bound.
        let (mask, host_bits) = if ipv6 {
            (&self.ipv6_host_mask, self.ipv6_host_bits)
        } else {
            (&self.ipv4_host_mask, self.ipv4_host_bits)
        };
        GrantKey::masked(words, mask, index, host_bits as u32)
    }
}

/// `RuleConfig::once`: each sequence opens once.
pub const ONCE: u32 = 1;
/// `RuleConfig::once`: ... and only once the fleet has recorded it spent.
pub const ONCE_HELD: u32 = 2;

/// Key of the pinned `SPENT` map: a sequence of a rule that has opened once
/// (its value: when, kernel clock). Only completed knocks insert, so no
/// flood can evict an entry; a sequence the loader has since replaced needs
/// none.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SpentKey {
    pub rule: u32,
    pub sequence_tag: u32,
}
const _: () = assert!(size_of::<SpentKey>() == 8);

/// Entries of `SPENT`.
pub const SPENT_ENTRIES: u32 = 4096;

/// Key of `FIRST_STEPS`, `PROGRESS` and `GRANTS`: one source's state for one rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceRule {
    pub addr: Addr,
    pub rule: u32,
}
const _: () = assert!(size_of::<SourceRule>() == 20);

/// Value of `FIRST_STEPS` (sources that sent only the first step, the map a
/// spoofed flood can churn) and `PROGRESS` (sources past the first step):
/// how far a source has come through a rule's sequence.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// When the first step arrived (kernel monotonic clock, ns).
    pub started_ns: u64,
    /// Index of the step expected next; steps before it were accepted.
    pub next_step: u32,
    /// The rule's `sequence_tag` when the progress was made.
    pub sequence_tag: u32,
}
const _: () = assert!(size_of::<Progress>() == 16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knock_new_is_what_the_named_constructors_build() {
        assert_eq!(Knock::new(IPPROTO_TCP, 22), Knock::tcp(22));
        assert_eq!(Knock::new(IPPROTO_UDP, 53), Knock::udp(53));
        assert_eq!(Knock::new(IPPROTO_ICMP, 64), Knock::icmp(64));
        assert_eq!(Knock::new(IPPROTO_UDP, 53)._pad, 0);
    }
}
