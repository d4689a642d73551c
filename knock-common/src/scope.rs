//! Grant scopes: how much of the knocking address a rule's grant admits (a
//! prefix of it, for clients behind carrier NAT or with IPv6 privacy
//! addresses), and the key a grant is stored under. Plain Rust,
//! host-tested.
//!
//! A rule's scope is kept, per family, as the host bits its grants leave
//! out and their mask: zero (what a zeroed `RuleConfig` holds) is the
//! address alone, so no configuration can widen a grant by leaving a field
//! unset. The XDP program clears the mask's bits without a branch.

use crate::{Addr, AddrWords, addr_words, words_addr};

/// The widest grant scopes: an IPv4 /16 and an IPv6 /32, as host bits.
pub const MAX_IPV4_HOST_BITS: u32 = 16;
pub const MAX_IPV6_HOST_BITS: u32 = 96;

/// The mask of one word (bits `32 * word` to `32 * word + 31` of the
/// 128-bit address, in the address's byte order) that keeps a prefix of
/// `128 - host_bits` bits.
#[inline(always)]
const fn word_mask(word: u32, host_bits: u32) -> u32 {
    let prefix = 128u32.saturating_sub(host_bits);
    let start = 32 * word;
    let kept = if prefix <= start {
        0
    } else if prefix - start >= 32 {
        32
    } else {
        prefix - start
    };
    let big_endian = if kept == 0 {
        0
    } else {
        u32::MAX << (32 - kept)
    };
    // The word was read from the address's bytes in native order.
    u32::from_ne_bytes(big_endian.to_be_bytes())
}

/// The address words with their last `host_bits` bits cleared: the prefix
/// a scoped grant is stored under.
#[inline(always)]
pub const fn prefix_words(words: &AddrWords, host_bits: u32) -> AddrWords {
    [
        words[0] & word_mask(0, host_bits),
        words[1] & word_mask(1, host_bits),
        words[2] & word_mask(2, host_bits),
        words[3] & word_mask(3, host_bits),
    ]
}

/// The bits of an address that a prefix leaving out `host_bits` clears:
/// what `RuleConfig` keeps per family.
pub const fn host_mask(host_bits: u32) -> AddrWords {
    let keep = prefix_words(&[u32::MAX; 4], host_bits);
    [!keep[0], !keep[1], !keep[2], !keep[3]]
}

/// Whether address words are an IPv4 address mapped into IPv6 (one
/// comparison: the XDP program's verifier walks every branch).
#[inline(always)]
pub const fn is_ipv4_mapped(words: &AddrWords) -> bool {
    (words[0] | words[1] | (words[2] ^ u32::from_ne_bytes([0, 0, 0xff, 0xff]))) == 0
}

/// Key of `GRANTS`: the prefix a grant admits, and the rule. The prefix
/// length rides in `rule` above the rule's index, as the host bits it
/// leaves out: a grant of the address alone has none, so its key is the
/// address and the index (as before scopes). A grant made under another
/// scope than the rule has now is found by nobody.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GrantKey {
    /// The prefix: the address with its host bits cleared.
    pub addr: Addr,
    /// The rule's index, plus `host_bits << GRANT_HOST_BITS_SHIFT`.
    pub rule: u32,
}
const _: () = assert!(size_of::<GrantKey>() == 20);

/// Where the host bits sit in `GrantKey::rule`.
pub const GRANT_HOST_BITS_SHIFT: u32 = 8;

impl GrantKey {
    /// The key of a grant of rule `rule` (an index) to the prefix of
    /// `words` that leaves out `host_bits`.
    #[inline(always)]
    pub const fn new(words: &AddrWords, rule: u32, host_bits: u32) -> GrantKey {
        GrantKey {
            addr: words_addr(&prefix_words(words, host_bits)),
            rule: rule | (host_bits << GRANT_HOST_BITS_SHIFT),
        }
    }

    /// `new`, from the scope's `host_mask` (without a branch).
    #[inline(always)]
    pub const fn masked(
        words: &AddrWords,
        host_mask: &AddrWords,
        rule: u32,
        host_bits: u32,
    ) -> GrantKey {
        GrantKey {
            addr: words_addr(&[
                words[0] & !host_mask[0],
                words[1] & !host_mask[1],
                words[2] & !host_mask[2],
                words[3] & !host_mask[3],
            ]),
            rule: rule | (host_bits << GRANT_HOST_BITS_SHIFT),
        }
    }

    /// The rule's index.
    pub const fn rule_index(&self) -> u32 {
        self.rule & ((1 << GRANT_HOST_BITS_SHIFT) - 1)
    }

    /// The host bits the grant leaves out (0: the address alone).
    pub const fn host_bits(&self) -> u32 {
        self.rule >> GRANT_HOST_BITS_SHIFT
    }

    /// The prefix's length in the 128-bit form (an IPv4 /24 is 120).
    pub const fn mapped_len(&self) -> u32 {
        128u32.saturating_sub(self.host_bits())
    }

    /// Whether the grant admits `words`.
    pub const fn admits(&self, words: &AddrWords) -> bool {
        let prefix = prefix_words(words, self.host_bits());
        let own = addr_words(&self.addr);
        prefix[0] == own[0] && prefix[1] == own[1] && prefix[2] == own[2] && prefix[3] == own[3]
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::ipv4_mapped;

    fn v6(text: &str) -> AddrWords {
        addr_words(&text.parse::<Ipv6Addr>().unwrap().octets())
    }

    fn v4(text: &str) -> AddrWords {
        addr_words(&ipv4_mapped(text.parse::<Ipv4Addr>().unwrap().octets()))
    }

    /// Independent of `word_mask`: the prefix through u128 arithmetic.
    fn reference(words: &AddrWords, host_bits: u32) -> AddrWords {
        let value = u128::from_be_bytes(words_addr(words));
        let mask = if host_bits >= 128 {
            0
        } else {
            u128::MAX << host_bits
        };
        addr_words(&(value & mask).to_be_bytes())
    }

    #[test]
    fn prefixes_clear_exactly_the_host_bits() {
        let addrs = [
            v6("2001:db8:1234:5678:9abc:def0:1357:2468"),
            v6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            v4("198.51.100.77"),
        ];
        for words in &addrs {
            for host_bits in 0..=128 {
                assert_eq!(
                    prefix_words(words, host_bits),
                    reference(words, host_bits),
                    "{host_bits}"
                );
            }
        }
    }

    #[test]
    fn an_ipv4_scope_keeps_the_mapped_prefix() {
        let key = GrantKey::new(&v4("198.51.100.77"), 3, 8);
        assert_eq!(key.addr, ipv4_mapped([198, 51, 100, 0]));
        assert_eq!(
            (key.rule_index(), key.host_bits(), key.mapped_len()),
            (3, 8, 120)
        );
        assert!(key.admits(&v4("198.51.100.1")));
        assert!(key.admits(&v4("198.51.100.255")));
        assert!(!key.admits(&v4("198.51.101.77")));
        assert!(!key.admits(&v6("::198.51.100.77")));
        assert!(is_ipv4_mapped(&v4("198.51.100.77")));
        assert!(!is_ipv4_mapped(&v6("2001:db8::1")));
    }

    #[test]
    fn an_ipv6_slash_64_admits_its_privacy_addresses() {
        let key = GrantKey::new(&v6("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), 0, 64);
        assert_eq!(
            key.addr,
            "2001:db8:1:2::".parse::<Ipv6Addr>().unwrap().octets()
        );
        assert!(key.admits(&v6("2001:db8:1:2:1111:2222:3333:4444")));
        assert!(!key.admits(&v6("2001:db8:1:3:aaaa:bbbb:cccc:dddd")));
    }

    #[test]
    fn the_address_alone_keys_as_before_scopes() {
        let words = v6("2001:db8::7");
        let key = GrantKey::new(&words, 5, 0);
        assert_eq!((key.addr, key.rule), (words_addr(&words), 5));
        assert!(key.admits(&words));
        assert!(!key.admits(&v6("2001:db8::8")));
    }

    #[test]
    fn masks_clear_what_prefixes_clear() {
        let words = v6("2001:db8:1234:5678:9abc:def0:1357:2468");
        for host_bits in 0..=128 {
            let key = GrantKey::masked(&words, &host_mask(host_bits), 2, host_bits);
            assert_eq!(key, GrantKey::new(&words, 2, host_bits), "{host_bits}");
        }
        assert_eq!(host_mask(0), [0; 4]);
    }
}
