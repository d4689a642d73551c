//! Concealment by the host's own answers. A TCP segment or UDP datagram
//! that xknock stops (with `conceal = "closed"`) is not answered by xknock:
//! it is steered to destination port 0, where nothing can listen, and
//! passed to the host's stack, which answers it (or stays silent) exactly
//! as it answers at any closed port. Its source port is replaced too, by a
//! keyed hash of the peer, both ports and the protocol (`steered_port`),
//! so that each steered flow is told apart in the answer by the port it is
//! sent to. The egress program finds the original ports by that: the
//! `STEERED` array has a slot for each steered port (`SteeredSlot`), which
//! the steering writes and the egress program reads back, and puts them
//! back: in a TCP RST's ports, or in the header an ICMP error quotes, with
//! the checksums the change touches. A plain array slot costs the steering
//! one write, where a hash map insert took a lock; its writes are not
//! atomic, so a reader checks that a slot is whole (`SteeredSlot::holds`).
//!
//! The replacement port is a function of the flow, not drawn per packet:
//! the kernel's answers hash the flow (the IPv6 flow label of an RST), and
//! a probe sent twice must get the same answer twice, as at a closed port.
//!
//! Plain Rust, host-tested; the XDP and TC programs run the same functions.

use crate::{
    AddrWords, ICMP_DEST_UNREACH, ICMP_PARAMETERPROB, ICMP_TIME_EXCEEDED, ICMPV6_DEST_UNREACH,
    ICMPV6_PARAMPROB, ICMPV6_PKT_TOOBIG, ICMPV6_TIME_EXCEED, TCP_ACK, TCP_FIN, TCP_SYN, addr_words,
    checksum::Sum,
};

/// A steered flow as its answer names it: the peer a steered packet came
/// from, the source port it was given, and its protocol; the kernel's
/// answer goes to that peer and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SteerKey {
    /// The peer, IPv4-mapped for IPv4.
    pub peer: [u8; 16],
    /// The source port the packet was given (`steered_port`), big-endian.
    pub port: [u8; 2],
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<SteerKey>() == 20);

/// What a steered packet carried before it was steered, all big-endian as
/// on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Steered {
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    /// The L4 checksum as it came (an ICMP error quotes it).
    pub check: [u8; 2],
    /// `ECHO_EXACT`: an answer to this packet echoes `echo`; `ECHO_ANY`:
    /// what it echoes cannot be known here (a first fragment).
    pub echo_kind: u8,
    pub _pad: u8,
    /// An IPv6 packet's first word (version, traffic class, flow label):
    /// the label an RST that reflects it carries.
    pub first_word: [u8; 4],
    /// What the host's answer echoes of the packet (`segment_echo`,
    /// `datagram_echo`): an answer that echoes anything else answers
    /// another flow that took the slot since.
    pub echo: [u8; 4],
}
const _: () = assert!(size_of::<Steered>() == 16);

/// `Steered::echo_kind`.
pub const ECHO_ANY: u8 = 0;
pub const ECHO_EXACT: u8 = 1;

impl Steered {
    /// A packet of the peer's own to port 0 (not steered): its answer
    /// leaves as the host made it.
    #[inline(always)]
    pub fn to_port_zero(&self) -> bool {
        self.dst_port == STEER_TO_PORT
    }
}

/// What the host's RST to a TCP segment echoes of it (RFC 9293 3.10.7.1,
/// as `tcp_v4_send_reset` and `tcp_v6_send_reset` build it): to a segment
/// with ACK, its acknowledgment number, as the RST's sequence number; to
/// one without, its sequence number plus the SYN, FIN and data it
/// occupies, as the RST's acknowledgment number. Big-endian.
#[inline(always)]
pub fn segment_echo(flags: u8, seq: [u8; 4], ack: [u8; 4], data_len: u32) -> [u8; 4] {
    if flags & TCP_ACK != 0 {
        return ack;
    }
    let occupied = u32::from(flags & TCP_SYN != 0) + u32::from(flags & TCP_FIN != 0) + data_len;
    u32::from_be_bytes(seq).wrapping_add(occupied).to_be_bytes()
}

/// What an RST echoes of the segment it answers (see `segment_echo`).
#[inline(always)]
pub fn rst_echo(flags: u8, seq: [u8; 4], ack: [u8; 4]) -> [u8; 4] {
    if flags & TCP_ACK != 0 { ack } else { seq }
}

/// What an ICMP error to a UDP datagram echoes of it, as the host got it:
/// its length and checksum fields (the quote carries the whole header).
#[inline(always)]
pub fn datagram_echo(len: [u8; 2], check: [u8; 2]) -> [u8; 4] {
    [len[0], len[1], check[0], check[1]]
}

/// One slot of the `STEERED` array: the flow last steered with the slot's
/// port, and what its packet carried.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SteeredSlot {
    pub key: SteerKey,
    pub steered: Steered,
}
const _: () = assert!(size_of::<SteeredSlot>() == 36);

/// `STEERED`'s slots: one for each port a flow can be steered with. A
/// slot holds its flow until another is steered with the same port: an
/// answer follows its packet within microseconds, a reassembly timeout
/// within a minute.
pub const STEERED_SLOTS: u32 = 1 << 16;

/// The slot of the flows steered with `port`.
#[inline(always)]
pub fn steered_slot(port: [u8; 2]) -> u32 {
    u32::from(u16::from_be_bytes(port))
}

impl SteeredSlot {
    /// What the packet of `key`'s flow carried, if this slot holds that
    /// flow, whole, and the answer echoing `echo` answers it. Whole: the
    /// steered port recomputed from the slot's peer and original ports
    /// must be `key`'s (a packet to port 0 keeps its own), which a slot
    /// that two writers raced over, or that was read while written, fails.
    /// And a flow of the same peer and steered port that took the slot
    /// since (a collision, one chance in 65,535) fails the echo.
    #[inline(always)]
    pub fn holds(&self, key: &SteerKey, seed: u32, echo: [u8; 4]) -> Option<Steered> {
        let steered = self.steered;
        if self.key != *key || (steered.echo_kind != ECHO_ANY && steered.echo != echo) {
            return None;
        }
        let whole = if steered.to_port_zero() {
            steered.src_port == key.port
        } else {
            key.port
                == steered_port(
                    seed,
                    &addr_words(&self.key.peer),
                    steered.src_port,
                    steered.dst_port,
                    key.proto,
                )
        };
        whole.then_some(steered)
    }
}

/// The port where the host's stack answers as at a closed port: no socket
/// can be bound to it.
pub const STEER_TO_PORT: [u8; 2] = [0, 0];

/// The source port a packet from `peer` (`src_port` to `dst_port`,
/// `proto`) is steered with: a keyed hash of them, never zero.
#[inline(always)]
pub fn steered_port(
    seed: u32,
    peer: &AddrWords,
    src_port: [u8; 2],
    dst_port: [u8; 2],
    proto: u8,
) -> [u8; 2] {
    let ports = ports_word(src_port, dst_port);
    let words = [peer[0], peer[1], peer[2], peer[3], ports, u32::from(proto)];
    let hash = keyed_hash(seed ^ 0x2545_f491, &words);
    let port = (hash ^ (hash >> 16)) as u16;
    if port == 0 {
        [0, 1]
    } else {
        port.to_be_bytes()
    }
}

/// Two big-endian ports as one word, source first.
#[inline(always)]
fn ports_word(src_port: [u8; 2], dst_port: [u8; 2]) -> u32 {
    u32::from_be_bytes([src_port[0], src_port[1], dst_port[0], dst_port[1]])
}

/// A multiplicative hash of `words`, started from `start` (the seed mixed
/// with a constant of each use, so that the steered port and the label are
/// independent hashes of one flow).
#[inline(always)]
fn keyed_hash<const N: usize>(start: u32, words: &[u32; N]) -> u32 {
    let mut hash = start;
    let mut i = 0;
    while i < N {
        hash = (hash ^ words[i]).wrapping_mul(0x9e37_79b1);
        hash ^= hash >> 15;
        i += 1;
    }
    hash
}

/// The IPv6 flow label mask of a header's first word.
pub const FLOW_LABEL_MASK: u32 = 0x000f_ffff;
/// The label bit the kernel sets on every label it makes when
/// `net.ipv6.flowlabel_state_ranges` is on.
const FLOW_LABEL_STATELESS: u32 = 0x0008_0000;

/// The flow label an RST from the host to a steered flow leaves with, in
/// place of `made` (the one the host made, a hash of the steered ports):
/// `made` itself when it is zero (no automatic labels) or the probe's own
/// (`reflected`: the host reflects labels); else, as the host's own labels
/// are, a keyed hash of the flow the prober sent (never zero, the host's
/// stateless bit kept), which no probe of port 0 reproduces.
#[inline(always)]
pub fn steered_label(seed: u32, peer: &AddrWords, steered: &Steered, made: u32) -> u32 {
    let reflected = u32::from_be_bytes(steered.first_word) & FLOW_LABEL_MASK;
    if made == 0 || made == reflected {
        return made;
    }
    let ports = ports_word(steered.src_port, steered.dst_port);
    let words = [peer[0], peer[1], peer[2], peer[3], ports];
    let hash = keyed_hash(seed ^ 0x5bd1_e995, &words);
    let label = (hash & (FLOW_LABEL_MASK & !FLOW_LABEL_STATELESS)) | (made & FLOW_LABEL_STATELESS);
    if label == 0 { 1 } else { label }
}

/// Whether an ICMP (`v6`: ICMPv6) message of `icmp_type` is an error that
/// quotes the packet it answers: destination unreachable, time exceeded,
/// parameter problem (and, for IPv6, packet too big).
#[inline(always)]
pub fn quotes_a_packet(v6: bool, icmp_type: u8) -> bool {
    if v6 {
        matches!(
            icmp_type,
            ICMPV6_DEST_UNREACH | ICMPV6_PKT_TOOBIG | ICMPV6_TIME_EXCEED | ICMPV6_PARAMPROB
        )
    } else {
        matches!(
            icmp_type,
            ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETERPROB
        )
    }
}

/// A checksum field (big-endian) after the 16-bit words `from` it covered
/// became `to` (RFC 1624, eq. 3).
#[inline(always)]
pub fn replace_words<const N: usize>(
    check: [u8; 2],
    from: &[[u8; 2]; N],
    to: &[[u8; 2]; N],
) -> [u8; 2] {
    let mut sum = Sum::ZERO.word(!u16::from_be_bytes(check));
    let mut i = 0;
    while i < N {
        sum = sum
            .word(!u16::from_be_bytes(from[i]))
            .word(u16::from_be_bytes(to[i]));
        i += 1;
    }
    (!sum.folded()).to_be_bytes()
}

/// A UDP checksum field after the same change: zero (IPv4: no checksum)
/// stays zero, and a computed zero is sent as all ones (RFC 768).
#[inline(always)]
pub fn replace_udp_words<const N: usize>(
    check: [u8; 2],
    from: &[[u8; 2]; N],
    to: &[[u8; 2]; N],
) -> [u8; 2] {
    if check == [0, 0] {
        return check;
    }
    let check = replace_words(check, from, to);
    if check == [0, 0] { [0xff, 0xff] } else { check }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::pseudo_v4;

    fn segment(src_port: [u8; 2], dst_port: [u8; 2]) -> Vec<u8> {
        let mut tcp = vec![0u8; 24];
        tcp[0..2].copy_from_slice(&src_port);
        tcp[2..4].copy_from_slice(&dst_port);
        tcp[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        tcp[12] = 0x50;
        tcp[13] = 0x02;
        tcp[20..24].copy_from_slice(b"data");
        let sum = pseudo_v4(&[10, 0, 0, 2], &[10, 0, 0, 1], 6, 24).slice(&tcp);
        tcp[16..18].copy_from_slice(&sum.checksum().to_be_bytes());
        tcp
    }

    #[test]
    fn an_incremental_update_gives_the_checksum_computed_anew() {
        for (sport, dport) in [(40000u16, 22u16), (1, 65535), (0xffff, 0xffff), (12345, 0)] {
            let before = segment(sport.to_be_bytes(), dport.to_be_bytes());
            let to = [[0x9a, 0x0f], STEER_TO_PORT];
            let after = segment(to[0], to[1]);
            let check = replace_words(
                [before[16], before[17]],
                &[[before[0], before[1]], [before[2], before[3]]],
                &to,
            );
            assert_eq!(check, [after[16], after[17]], "{sport} -> {dport}");
            // And back again, as the egress program restores a quote.
            let back = replace_words(
                check,
                &to,
                &[[before[0], before[1]], [before[2], before[3]]],
            );
            assert_eq!(back, [before[16], before[17]]);
        }
    }

    #[test]
    fn a_udp_datagram_without_checksum_keeps_none_and_never_gets_zero() {
        assert_eq!(replace_udp_words([0, 0], &[[0, 53]], &[[0, 0]]), [0, 0]);
        // A field that would come out zero is sent as all ones.
        // 0xfffe covers a sum of 1; the word 1 becoming 0 leaves a sum of
        // 0, whose checksum 0xffff stays (the +0 form RFC 768 sends).
        assert_eq!(
            replace_udp_words([0xff, 0xfe], &[[0, 1]], &[[0, 0]]),
            [0xff, 0xff]
        );
        // A sum of all ones would give a zero field: sent as all ones.
        assert_eq!(replace_words([0xff, 0xff], &[[0, 0]], &[[0, 0]]), [0, 0]);
        assert_eq!(
            replace_udp_words([0xff, 0xff], &[[0, 0]], &[[0, 0]]),
            [0xff, 0xff]
        );
    }

    #[test]
    fn a_slot_gives_back_only_the_whole_flow_it_holds() {
        let seed = 0x1234_5678;
        let flow = |peer: [u8; 16], sport: u16, dport: u16| {
            let (src_port, dst_port) = (sport.to_be_bytes(), dport.to_be_bytes());
            let port = steered_port(seed, &addr_words(&peer), src_port, dst_port, 6);
            SteeredSlot {
                key: SteerKey {
                    peer,
                    port,
                    proto: 6,
                    _pad: 0,
                },
                steered: Steered {
                    src_port,
                    dst_port,
                    check: [0xab, 0xcd],
                    echo_kind: ECHO_EXACT,
                    echo: [1, 2, 3, 4],
                    ..Steered::default()
                },
            }
        };
        let a = flow([7; 16], 40000, 22);
        let b = flow([9; 16], 40001, 3721);
        let echo = a.steered.echo;
        assert_eq!(a.holds(&a.key, seed, echo), Some(a.steered));
        assert_eq!(a.holds(&b.key, seed, echo), None, "another flow's key");
        assert_eq!(a.holds(&a.key, seed ^ 1, echo), None, "another load's seed");
        assert_eq!(
            a.holds(&a.key, seed, [9; 4]),
            None,
            "an answer to another packet"
        );
        let fragment = SteeredSlot {
            steered: Steered {
                echo_kind: ECHO_ANY,
                ..a.steered
            },
            ..a
        };
        assert!(
            fragment.holds(&a.key, seed, [9; 4]).is_some(),
            "a first fragment's"
        );
        // Torn: one writer's key, the other's ports.
        let torn = SteeredSlot {
            key: a.key,
            steered: b.steered,
        };
        assert_eq!(torn.holds(&a.key, seed, b.steered.echo), None);
        let torn = SteeredSlot {
            key: SteerKey {
                peer: b.key.peer,
                ..a.key
            },
            steered: a.steered,
        };
        assert_eq!(torn.holds(&torn.key, seed, echo), None);
        // A packet to port 0 keeps its own source port.
        let zero = SteeredSlot {
            key: SteerKey {
                port: [0x9c, 0x40],
                ..a.key
            },
            steered: Steered {
                src_port: [0x9c, 0x40],
                dst_port: STEER_TO_PORT,
                ..a.steered
            },
        };
        let held = zero.holds(&zero.key, seed, echo).expect("its own slot");
        assert!(held.to_port_zero());
        assert_eq!(
            steered_slot(a.key.port),
            u32::from(u16::from_be_bytes(a.key.port))
        );
        assert!(steered_slot([0xff, 0xff]) < STEERED_SLOTS);
    }

    #[test]
    fn an_rst_label_is_a_keyed_hash_of_the_probed_flow_unless_the_host_made_none_or_reflected() {
        let peer = [1, 2, 3, 4];
        let steered = |sport: u16, dport: u16, label: u32| Steered {
            src_port: sport.to_be_bytes(),
            dst_port: dport.to_be_bytes(),
            first_word: (0x6000_0000 | label).to_be_bytes(),
            ..Steered::default()
        };
        let flow = steered(40000, 22, 0x12345);
        let label = steered_label(7, &peer, &flow, 0x0abcd);
        assert_ne!(label, 0);
        assert_eq!(label & !FLOW_LABEL_MASK, 0);
        // The same flow, the same label, whatever the steered hash was.
        assert_eq!(label, steered_label(7, &peer, &flow, 0x05555));
        assert_ne!(
            label,
            steered_label(7, &peer, &steered(40001, 22, 0x12345), 0x0abcd)
        );
        assert_ne!(
            label,
            steered_label(7, &peer, &steered(40000, 23, 0x12345), 0x0abcd)
        );
        assert_ne!(label, steered_label(8, &peer, &flow, 0x0abcd));
        // No automatic labels, or reflected ones: the host's, as made.
        assert_eq!(steered_label(7, &peer, &flow, 0), 0);
        assert_eq!(steered_label(7, &peer, &flow, 0x12345), 0x12345);
        // The stateless bit as the host set it.
        assert_eq!(
            steered_label(7, &peer, &flow, 0x80001) & FLOW_LABEL_STATELESS,
            FLOW_LABEL_STATELESS
        );
        assert_eq!(
            steered_label(7, &peer, &flow, 0x00001) & FLOW_LABEL_STATELESS,
            0
        );
    }

    #[test]
    fn an_rst_echoes_what_the_segment_it_answers_says_it_would() {
        let (seq, ack) = (0xffff_fff0u32.to_be_bytes(), 0x1234_5678u32.to_be_bytes());
        // A SYN: its sequence number and one, wrapping.
        let syn = segment_echo(TCP_SYN, seq, ack, 0);
        assert_eq!(syn, 0xffff_fff1u32.to_be_bytes());
        assert_eq!(rst_echo(TCP_ACK | crate::TCP_RST, [0; 4], syn), syn);
        // FIN with 33 bytes of data, and a bare segment with 16.
        assert_eq!(
            segment_echo(TCP_FIN, seq, ack, 33),
            0x0000_0012u32.to_be_bytes()
        );
        assert_eq!(segment_echo(0, seq, ack, 16), 0u32.to_be_bytes());
        // With ACK: the acknowledgment number, whatever else it carries.
        let acked = segment_echo(TCP_ACK | TCP_SYN | TCP_FIN, seq, ack, 100);
        assert_eq!(acked, ack);
        assert_eq!(rst_echo(crate::TCP_RST, acked, [0; 4]), ack);
        assert_eq!(datagram_echo([0, 20], [0xab, 0xcd]), [0, 20, 0xab, 0xcd]);
    }

    #[test]
    fn errors_quote_and_informational_messages_do_not() {
        for v4 in [3, 11, 12] {
            assert!(quotes_a_packet(false, v4));
        }
        for other in [0, 4, 5, 8, 13, 128, 255] {
            assert!(!quotes_a_packet(false, other), "{other}");
        }
        for v6 in [1, 2, 3, 4] {
            assert!(quotes_a_packet(true, v6));
        }
        for other in [0, 5, 128, 129, 135, 136] {
            assert!(!quotes_a_packet(true, other), "{other}");
        }
    }

    #[test]
    fn the_steered_port_depends_on_the_whole_flow_and_the_seed_and_is_never_zero() {
        let peer = [1, 2, 3, 4];
        let base = steered_port(7, &peer, [0x9c, 0x40], [0, 22], 6);
        assert_eq!(base, steered_port(7, &peer, [0x9c, 0x40], [0, 22], 6));
        assert_ne!(base, steered_port(8, &peer, [0x9c, 0x40], [0, 22], 6));
        assert_ne!(
            base,
            steered_port(7, &[1, 2, 3, 5], [0x9c, 0x40], [0, 22], 6)
        );
        assert_ne!(base, steered_port(7, &peer, [0x9c, 0x41], [0, 22], 6));
        assert_ne!(base, steered_port(7, &peer, [0x9c, 0x40], [0, 23], 6));
        assert_ne!(base, steered_port(7, &peer, [0x9c, 0x40], [0, 22], 17));
        // Over every destination port of one probe, no zero and few repeats.
        let mut seen = std::collections::HashSet::new();
        for port in 0..=u16::MAX {
            let steered = steered_port(7, &peer, [0x9c, 0x40], port.to_be_bytes(), 6);
            assert_ne!(steered, [0, 0]);
            seen.insert(steered);
        }
        assert!(seen.len() > 40_000, "{} distinct of 65536", seen.len());
    }
}
