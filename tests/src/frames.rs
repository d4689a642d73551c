//! Hand-built Ethernet frames for the filter: VLAN tags, IPv4 options and
//! fragments, IPv6 extension headers, TCP and UDP. Checksums are left zero
//! unless asked for: the filter never looks at them, concealment does (a
//! probe with a wrong checksum gets no answer, as from the kernel).

use std::net::IpAddr;

use knock_common::{
    ICMP_ECHO_REQUEST, ICMPV6_ECHO_REQUEST,
    checksum::{Sum, pseudo_v4, pseudo_v6},
};
pub use knock_common::{
    IPPROTO_AH as AUTH, IPPROTO_DSTOPTS as DEST_OPTS, IPPROTO_FRAGMENT as FRAGMENT,
    IPPROTO_HOPOPTS as HOP_BY_HOP, IPPROTO_ICMP as ICMP, IPPROTO_ICMPV6 as ICMPV6,
    IPPROTO_ROUTING as ROUTING, IPPROTO_TCP as TCP, IPPROTO_UDP as UDP, TCP_ACK, TCP_FIN, TCP_PSH,
    TCP_RST, TCP_SYN,
};

const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

/// Where an IPv4 or IPv6 packet sits among its fragments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fragment {
    Whole,
    /// Offset zero with more fragments to come.
    First,
    /// A fragment after the first (offset in 8-byte units, non-zero).
    Later(u16),
}

/// One TCP segment or UDP datagram and how it is framed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub src_port: u16,
    pub dst_port: u16,
    /// TCP flags; ignored for UDP.
    pub tcp_flags: u8,
    /// Outer to inner: 0x88a8 (802.1ad) or 0x8100 (802.1Q).
    pub vlan_tags: Vec<u16>,
    /// Bytes of IPv4 options (a multiple of 4, at most 40).
    pub ipv4_options: usize,
    /// IPv6 extension headers in order (HOP_BY_HOP, ROUTING, DEST_OPTS,
    /// AUTH; FRAGMENT comes from `fragment`).
    pub ipv6_ext: Vec<u8>,
    pub fragment: Fragment,
    pub payload: usize,
    /// Whether the IPv4 header and L4 checksums are filled in (otherwise
    /// zero, which the filter never checks but concealment does).
    pub checksums: bool,
}

impl Frame {
    /// A TCP SYN (or other flags) from `src` to `dst`'s `port`.
    pub fn tcp(src: IpAddr, dst: IpAddr, port: u16, flags: u8) -> Frame {
        Frame {
            src,
            dst,
            proto: TCP,
            src_port: 40000,
            dst_port: port,
            tcp_flags: flags,
            vlan_tags: Vec::new(),
            ipv4_options: 0,
            ipv6_ext: Vec::new(),
            fragment: Fragment::Whole,
            payload: 0,
            checksums: false,
        }
    }

    pub fn udp(src: IpAddr, dst: IpAddr, port: u16) -> Frame {
        Frame {
            proto: UDP,
            payload: 6,
            ..Frame::tcp(src, dst, port, 0)
        }
    }

    /// The frame's bytes, and the offsets where each header starts and the
    /// transport header ends (truncating at one of them cuts a header off).
    /// An echo request (ICMP or ICMPv6, by the family) with `size` bytes of
    /// payload, as `ping -s SIZE` sends.
    pub fn echo(src: IpAddr, dst: IpAddr, size: usize) -> Frame {
        Frame {
            proto: if src.is_ipv4() { ICMP } else { ICMPV6 },
            payload: size,
            ..Frame::tcp(src, dst, 0, 0)
        }
    }

    fn is_icmp(&self) -> bool {
        self.proto == ICMP || self.proto == ICMPV6
    }

    pub fn build(&self) -> (Vec<u8>, Vec<usize>) {
        let mut out = Vec::with_capacity(128);
        let mut boundaries = vec![0];
        out.extend_from_slice(&SERVER_MAC);
        out.extend_from_slice(&CLIENT_MAC);
        for tpid in &self.vlan_tags {
            out.extend_from_slice(&tpid.to_be_bytes());
            boundaries.push(out.len());
            out.extend_from_slice(&[0x00, 0x64]); // PCP 0, VLAN 100
        }
        let ethertype: u16 = if self.src.is_ipv4() { 0x0800 } else { 0x86dd };
        out.extend_from_slice(&ethertype.to_be_bytes());
        boundaries.push(out.len());
        let ip_start = out.len();
        let transport = self.transport();
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let header_len = 20 + self.ipv4_options;
                let flags_offset: u16 = match self.fragment {
                    Fragment::Whole => 0,
                    Fragment::First => 0x2000, // More Fragments, offset 0
                    Fragment::Later(offset) => offset & 0x1fff,
                };
                out.push(0x40 | (header_len / 4) as u8);
                out.push(0);
                out.extend_from_slice(&((header_len + transport.len()) as u16).to_be_bytes());
                out.extend_from_slice(&[0x12, 0x34]);
                out.extend_from_slice(&flags_offset.to_be_bytes());
                out.extend_from_slice(&[64, self.proto, 0, 0]);
                out.extend_from_slice(&src.octets());
                out.extend_from_slice(&dst.octets());
                if self.ipv4_options > 0 {
                    boundaries.push(out.len());
                    // NOPs, then an End of Options list.
                    out.extend(std::iter::repeat_n(1u8, self.ipv4_options - 1));
                    out.push(0);
                }
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let mut chain: Vec<u8> = self.ipv6_ext.clone();
                if self.fragment != Fragment::Whole {
                    chain.push(FRAGMENT);
                }
                let ext_len: usize = chain.iter().map(|h| ext_header_len(*h)).sum();
                out.extend_from_slice(&[0x60, 0, 0, 0]);
                out.extend_from_slice(&((ext_len + transport.len()) as u16).to_be_bytes());
                out.push(chain.first().copied().unwrap_or(self.proto));
                out.push(64);
                out.extend_from_slice(&src.octets());
                out.extend_from_slice(&dst.octets());
                for (i, header) in chain.iter().enumerate() {
                    boundaries.push(out.len());
                    let next = chain.get(i + 1).copied().unwrap_or(self.proto);
                    let len = ext_header_len(*header);
                    let mut bytes = vec![0u8; len];
                    bytes[0] = next;
                    match *header {
                        FRAGMENT => {
                            let offset = match self.fragment {
                                Fragment::Later(offset) => offset << 3,
                                _ => 1, // offset 0, more fragments
                            };
                            bytes[2..4].copy_from_slice(&offset.to_be_bytes());
                            bytes[4..8].copy_from_slice(&[0, 0, 0x12, 0x34]);
                        }
                        AUTH => bytes[1] = (len / 4 - 2) as u8,
                        _ => bytes[1] = (len / 8 - 1) as u8,
                    }
                    out.extend_from_slice(&bytes);
                }
            }
            _ => panic!("source and destination must be of one family"),
        }
        boundaries.push(out.len());
        let transport_start = out.len();
        out.extend_from_slice(&transport);
        if self.checksums {
            self.fill_checksums(&mut out, ip_start, transport_start);
        }
        // Inside the transport header: after the ports, and its end.
        boundaries.push(transport_start + 4);
        boundaries.push(transport_start + if self.proto == TCP { 20 } else { 8 });
        boundaries.sort_unstable();
        boundaries.dedup();
        (out, boundaries)
    }

    fn fill_checksums(&self, out: &mut [u8], ip_start: usize, transport_start: usize) {
        let length = out.len() - transport_start;
        let pseudo = match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let header = ip_start..transport_start;
                let sum = Sum::ZERO.slice(&out[header]).checksum();
                out[ip_start + 10..ip_start + 12].copy_from_slice(&sum.to_be_bytes());
                if self.proto == ICMP {
                    // ICMP over IPv4 sums its message alone.
                    Sum::ZERO
                } else {
                    pseudo_v4(&src.octets(), &dst.octets(), self.proto, length as u16)
                }
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                pseudo_v6(&src.octets(), &dst.octets(), self.proto, length as u32)
            }
            _ => unreachable!("checked in build"),
        };
        let at = transport_start
            + match self.proto {
                TCP => 16,
                UDP => 6,
                _ => 2,
            };
        let mut sum = pseudo.slice(&out[transport_start..]).checksum();
        if self.proto == UDP && sum == 0 {
            sum = 0xffff;
        }
        out[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    }

    fn transport(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.is_icmp() {
            let echo_request = if self.proto == ICMP {
                ICMP_ECHO_REQUEST
            } else {
                ICMPV6_ECHO_REQUEST
            };
            out.extend_from_slice(&[echo_request, 0, 0, 0, 0x12, 0x34, 0, 1]);
            out.extend(std::iter::repeat_n(0x61u8, self.payload));
            return out;
        }
        out.extend_from_slice(&self.src_port.to_be_bytes());
        out.extend_from_slice(&self.dst_port.to_be_bytes());
        if self.proto == TCP {
            out.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]); // seq, ack
            out.push(5 << 4); // data offset: 20 bytes
            out.push(self.tcp_flags);
            out.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]); // window, checksum, urgent
        } else {
            out.extend_from_slice(&((8 + self.payload) as u16).to_be_bytes());
            out.extend_from_slice(&[0, 0]);
        }
        out.extend(std::iter::repeat_n(0x61u8, self.payload));
        out
    }
}

/// Length of the extension headers the builder makes.
fn ext_header_len(header: u8) -> usize {
    match header {
        AUTH => 12,
        _ => 8,
    }
}
