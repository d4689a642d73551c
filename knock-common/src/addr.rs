//! Source addresses: the one 16-byte key form every map uses (IPv6, or
//! IPv4 mapped into IPv6), and the four words the XDP program carries an
//! address in. Plain Rust, host-tested.

/// A source address: IPv6, or IPv4 mapped into IPv6 (`::ffff:a.b.c.d`).
pub type Addr = [u8; 16];

/// Maps an IPv4 address into the one key form.
pub const fn ipv4_mapped(v4: [u8; 4]) -> Addr {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

/// An address as four native-order words with its bytes unchanged: how the
/// XDP program carries and hashes it (four registers, not sixteen bytes).
pub type AddrWords = [u32; 4];

#[inline(always)]
pub const fn addr_words(addr: &Addr) -> AddrWords {
    [
        u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]),
        u32::from_ne_bytes([addr[4], addr[5], addr[6], addr[7]]),
        u32::from_ne_bytes([addr[8], addr[9], addr[10], addr[11]]),
        u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]]),
    ]
}

#[inline(always)]
pub const fn words_addr(words: &AddrWords) -> Addr {
    // SAFETY: the same size, and every bit pattern is a valid byte array.
    // (A copy, where building the bytes one by one would have the compiler
    // split the words into sixteen values.)
    unsafe { core::mem::transmute::<AddrWords, Addr>(*words) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_keep_the_address_bytes() {
        let addr = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];
        assert_eq!(words_addr(&addr_words(&addr)), addr);
    }

    #[test]
    fn ipv4_maps_into_the_ipv6_form() {
        assert_eq!(
            std::net::Ipv6Addr::from(ipv4_mapped([192, 0, 2, 7])),
            std::net::Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped()
        );
    }
}
