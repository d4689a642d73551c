//! The Internet checksum (RFC 1071) over big-endian 16-bit words, as the
//! wire carries them: what the XDP program uses to check a probe's checksum
//! and to sign the answer it builds, and what the tests' model recomputes.
//! Plain Rust, host-tested.

/// A running ones-complement sum. Words are added in big-endian order, so
/// `checksum` is the value to store big-endian in a header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sum(u64);

impl Sum {
    pub const ZERO: Sum = Sum(0);

    /// Adds bytes that start at an even offset of the checksummed region;
    /// an odd last byte counts as the high half of a word padded with zero.
    #[inline(always)]
    pub fn bytes<const N: usize>(self, bytes: &[u8; N]) -> Sum {
        let mut sum = self.0;
        let mut i = 0;
        while i + 1 < N {
            sum += u64::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
            i += 2;
        }
        if N % 2 == 1 {
            sum += u64::from(bytes[N - 1]) << 8;
        }
        Sum(sum)
    }

    /// Adds a slice, as `bytes` does (host code: the model and the tests).
    pub fn slice(self, bytes: &[u8]) -> Sum {
        let mut sum = self.0;
        let (words, rest) = bytes.as_chunks::<2>();
        for word in words {
            sum += u64::from(u16::from_be_bytes(*word));
        }
        if let [last] = rest {
            sum += u64::from(*last) << 8;
        }
        Sum(sum)
    }

    #[inline(always)]
    pub fn word(self, word: u16) -> Sum {
        Sum(self.0 + u64::from(word))
    }

    #[inline(always)]
    pub fn plus(self, other: Sum) -> Sum {
        Sum(self.0 + other.0)
    }

    /// Adds a partial sum the kernel computed in the CPU's byte order
    /// (`bpf_csum_diff`, `csum_partial`): its 16-bit fold, read back as the
    /// bytes it stands for.
    #[inline(always)]
    pub fn native_partial(self, partial: u32) -> Sum {
        let folded = fold(u64::from(partial));
        self.word(u16::from_be_bytes(folded.to_ne_bytes()))
    }

    /// The folded sum, not complemented.
    #[inline(always)]
    pub fn folded(self) -> u16 {
        fold(self.0)
    }

    /// The checksum to store (big-endian) in a header whose checksum field
    /// was zero while summing.
    #[inline(always)]
    pub fn checksum(self) -> u16 {
        !self.folded()
    }

    /// Whether a region summed with its checksum field in place verifies.
    #[inline(always)]
    pub fn verifies(self) -> bool {
        self.folded() == 0xffff
    }
}

#[inline(always)]
fn fold(mut sum: u64) -> u16 {
    // Four rounds fold any u64 into 16 bits; a constant bound for the verifier.
    let mut round = 0;
    while round < 4 {
        sum = (sum & 0xffff) + (sum >> 16);
        round += 1;
    }
    sum as u16
}

/// The TCP/UDP/ICMPv6 pseudo-header of IPv4 (RFC 793, 768).
#[inline(always)]
pub fn pseudo_v4(src: &[u8; 4], dst: &[u8; 4], proto: u8, length: u16) -> Sum {
    Sum::ZERO
        .bytes(src)
        .bytes(dst)
        .word(u16::from(proto))
        .word(length)
}

/// The pseudo-header of IPv6 (RFC 8200, section 8.1).
#[inline(always)]
pub fn pseudo_v6(src: &[u8; 16], dst: &[u8; 16], next_header: u8, length: u32) -> Sum {
    Sum::ZERO
        .bytes(src)
        .bytes(dst)
        .word((length >> 16) as u16)
        .word(length as u16)
        .word(u16::from(next_header))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's RST captured from this machine (veth, 198.18.99.1 ->
    /// .2): IP header checksum e8a7 and TCP checksum 5cef.
    const RST: [u8; 40] = [
        0x45, 0x00, 0x00, 0x28, 0x00, 0x00, 0x40, 0x00, 0x40, 0x06, 0xe8, 0xa7, 0xc6, 0x12, 0x63,
        0x01, 0xc6, 0x12, 0x63, 0x02, 0x11, 0x5c, 0x9f, 0x62, 0x00, 0x00, 0x00, 0x00, 0xf3, 0x23,
        0x5c, 0xd6, 0x50, 0x14, 0x00, 0x00, 0x5c, 0xef, 0x00, 0x00,
    ];

    #[test]
    fn verifies_a_real_ip_header_and_segment() {
        let ip: [u8; 20] = RST[..20].try_into().unwrap();
        assert!(Sum::ZERO.bytes(&ip).verifies());
        let pseudo = pseudo_v4(&[198, 18, 99, 1], &[198, 18, 99, 2], 6, 20);
        assert!(pseudo.slice(&RST[20..]).verifies());
        let mut broken = RST;
        broken[30] ^= 1;
        assert!(!pseudo.slice(&broken[20..]).verifies());
    }

    #[test]
    fn computes_the_checksum_it_verifies() {
        let mut ip: [u8; 20] = RST[..20].try_into().unwrap();
        ip[10] = 0;
        ip[11] = 0;
        assert_eq!(Sum::ZERO.bytes(&ip).checksum(), 0xe8a7);
    }

    #[test]
    fn odd_lengths_pad_the_last_byte() {
        assert_eq!(
            Sum::ZERO.slice(&[0x12, 0x34, 0x56]).folded(),
            0x1234 + 0x5600
        );
        assert_eq!(
            Sum::ZERO.bytes(&[0x12u8, 0x34, 0x56]),
            Sum::ZERO.slice(&[0x12, 0x34, 0x56])
        );
    }

    #[test]
    fn folds_carries() {
        let sum = Sum::ZERO.word(0xffff).word(0xffff).word(0x0002);
        assert_eq!(sum.folded(), 0x0002);
        assert_eq!(Sum(u64::MAX).folded(), 0xffff);
    }

    #[test]
    fn a_native_partial_sum_reads_as_its_bytes() {
        // What csum_partial gives on this CPU for the bytes 12 34 56 78.
        let bytes = [0x12u8, 0x34, 0x56, 0x78];
        let native = u32::from(u16::from_ne_bytes([0x12, 0x34]))
            + u32::from(u16::from_ne_bytes([0x56, 0x78]));
        assert_eq!(
            Sum::ZERO.native_partial(native),
            Sum::ZERO.word(Sum::ZERO.bytes(&bytes).folded())
        );
    }
}
