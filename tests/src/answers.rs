//! An independent model of concealment (README, "Concealment"): for a
//! packet the filter stops at a knock or protected port, the frame this
//! host's kernel would send back from a closed port, or nothing. Written
//! from RFC 9293 (RST), RFC 792 / 1812 and RFC 4443 (port unreachables) and
//! the kernel behaviour the README names, over plain slices, for the
//! differential tests to compare with the XDP program's output byte by byte.

use std::collections::HashMap;

use knock_common::{
    addr_words,
    checksum::{Sum, pseudo_v4, pseudo_v6},
    flow_label, source_slot,
};

/// What the host puts in its answers, and how many port unreachables a peer
/// gets before its budget runs dry (the tests lift the global budget and set
/// an interval far longer than a case, so the per-peer burst decides).
#[derive(Clone, Copy, Debug)]
pub struct Host {
    pub ttl: u8,
    pub hop_limit: u8,
    /// The seed of the filter's load: it picks a peer's rate-limit slot and
    /// hashes IPv6 flow labels.
    pub seed: u32,
    pub burst: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Silent,
    /// The frame sent back; for an ICMP error over IPv4 its IP ID (bytes
    /// `id_at..id_at + 2`) is the kernel's random pick, and so is the header
    /// checksum over it.
    Frame {
        bytes: Vec<u8>,
        random_id_at: Option<usize>,
    },
}

pub struct Concealment {
    closed: bool,
    host: Host,
    /// Port unreachables sent per rate-limit slot.
    sent: HashMap<u32, u32>,
}

const TCP: u8 = 6;
const UDP: u8 = 17;
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

fn be16(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_be_bytes([b[at], b[at + 1]]))
}

fn mapped(v4: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[10] = 0xff;
    out[11] = 0xff;
    out[12..].copy_from_slice(&v4[..4]);
    out
}

/// The IP layer of a stopped packet.
struct Ip<'a> {
    /// Ethernet header and VLAN tags.
    link: &'a [u8],
    /// The IP packet, cut to its stated length.
    packet: &'a [u8],
    v6: bool,
    src: [u8; 16],
    dst: [u8; 16],
    tos: u8,
    /// Offset of the TCP/UDP header in `packet`, and the protocol.
    l4: usize,
    proto: u8,
}

impl Concealment {
    pub fn new(closed: bool, host: Host) -> Concealment {
        Concealment {
            closed,
            host,
            sent: HashMap::new(),
        }
    }

    /// The answer to `frame`, which the filter stopped.
    pub fn answer(&mut self, frame: &[u8]) -> Answer {
        if !self.closed {
            return Answer::Silent;
        }
        self.build(frame).unwrap_or(Answer::Silent)
    }

    fn build(&mut self, frame: &[u8]) -> Option<Answer> {
        // Only to this host's unicast address, from a unicast sender.
        if frame.len() < 14 || frame[0] & 1 != 0 || frame[6] & 1 != 0 {
            return None;
        }
        let ip = ip_layer(frame)?;
        match ip.proto {
            TCP => self.rst(&ip),
            UDP => self.unreachable(&ip),
            _ => None,
        }
    }

    fn rst(&self, ip: &Ip<'_>) -> Option<Answer> {
        let seg = ip.packet.get(ip.l4..)?;
        if seg.len() < 20 {
            return None;
        }
        let data_offset = usize::from(seg[12] >> 4) * 4;
        let flags = seg[13];
        if flags & RST != 0
            || data_offset < 20
            || data_offset > seg.len()
            || !checksum_ok(ip, seg, 16)
        {
            return None;
        }
        let (seq, ack, answer_flags) = if flags & ACK != 0 {
            (u32::from_be_bytes(seg[8..12].try_into().ok()?), 0, RST)
        } else {
            let seq = u32::from_be_bytes(seg[4..8].try_into().ok()?);
            let consumed = u32::from(flags & SYN != 0)
                + u32::from(flags & FIN != 0)
                + (seg.len() - data_offset) as u32;
            (0, seq.wrapping_add(consumed), RST | ACK)
        };
        let mut tcp = Vec::with_capacity(20);
        tcp.extend_from_slice(&seg[2..4]);
        tcp.extend_from_slice(&seg[0..2]);
        tcp.extend_from_slice(&seq.to_be_bytes());
        tcp.extend_from_slice(&ack.to_be_bytes());
        tcp.extend_from_slice(&[0x50, answer_flags, 0, 0, 0, 0, 0, 0]);
        let sum = pseudo(ip, true, TCP, 20).slice(&tcp).checksum();
        tcp[16..18].copy_from_slice(&sum.to_be_bytes());
        // The probe's DSCP, never its ECN bits.
        let tos = ip.tos & !0x03;
        let header = if ip.v6 {
            let label = flow_label(
                self.host.seed,
                &addr_words(&ip.src),
                &addr_words(&ip.dst),
                u32::from_be_bytes(seg[0..4].try_into().ok()?),
            );
            ipv6_header(ip, tos, label, 20, TCP, self.host.hop_limit)
        } else {
            ipv4_header(ip, tos, [0, 0], 0x40, 40, TCP, self.host.ttl)
        };
        Some(Answer::Frame {
            bytes: [link_back(ip.link), header, tcp].concat(),
            random_id_at: None,
        })
    }

    fn unreachable(&mut self, ip: &Ip<'_>) -> Option<Answer> {
        let datagram = ip.packet.get(ip.l4..)?;
        if datagram.len() < 8 {
            return None;
        }
        let length = be16(datagram, 4);
        if length < 8 || length > datagram.len() {
            return None;
        }
        // The kernel trims the packet to the UDP length.
        let datagram = &datagram[..length];
        let packet = &ip.packet[..ip.l4 + length];
        let zero = datagram[6] == 0 && datagram[7] == 0;
        if (zero && ip.v6) || (!zero && !checksum_ok(ip, datagram, 6)) {
            return None;
        }
        let slot = source_slot(&addr_words(&ip.src), self.host.seed);
        let sent = self.sent.entry(slot).or_default();
        if *sent >= self.host.burst {
            return None;
        }
        *sent += 1;
        let (header_len, limit) = if ip.v6 { (40, 1280) } else { (20, 576) };
        let quote = &packet[..packet.len().min(limit - header_len - 8)];
        let mut icmp = if ip.v6 {
            vec![1, 4, 0, 0, 0, 0, 0, 0]
        } else {
            vec![3, 3, 0, 0, 0, 0, 0, 0]
        };
        icmp.extend_from_slice(quote);
        let base = if ip.v6 {
            pseudo(ip, true, 58, icmp.len())
        } else {
            Sum::ZERO
        };
        let sum = base.slice(&icmp).checksum();
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        let link = link_back(ip.link);
        let (header, random_id_at) = if ip.v6 {
            let label = flow_label(
                self.host.seed,
                &addr_words(&ip.src),
                &addr_words(&ip.dst),
                58,
            );
            let header = ipv6_header(ip, 0, label, icmp.len(), 58, self.host.hop_limit);
            (header, None)
        } else {
            let tos = (ip.tos & 0x1e) | 0xc0;
            let header = ipv4_header(ip, tos, [0, 0], 0, 20 + icmp.len(), 1, self.host.ttl);
            (header, Some(link.len() + 4))
        };
        Some(Answer::Frame {
            bytes: [link, header, icmp].concat(),
            random_id_at,
        })
    }
}

/// The Ethernet header with its addresses swapped, tags kept.
fn link_back(link: &[u8]) -> Vec<u8> {
    let mut out = link.to_vec();
    out[0..6].copy_from_slice(&link[6..12]);
    out[6..12].copy_from_slice(&link[0..6]);
    out
}

/// The pseudo-header of the answer (`reply`: from the probe's destination
/// back to its source) or of the probe.
fn pseudo(ip: &Ip<'_>, reply: bool, proto: u8, length: usize) -> Sum {
    let (from, to) = if reply {
        (&ip.dst, &ip.src)
    } else {
        (&ip.src, &ip.dst)
    };
    if ip.v6 {
        pseudo_v6(from, to, proto, length as u32)
    } else {
        pseudo_v4(
            &from[12..].try_into().expect("4 bytes"),
            &to[12..].try_into().expect("4 bytes"),
            proto,
            length as u16,
        )
    }
}

/// A probe's L4 checksum (at `field` of `l4`) verifies, or is the bare
/// pseudo-header sum a local sender leaves to offload.
fn checksum_ok(ip: &Ip<'_>, l4: &[u8], field: usize) -> bool {
    let pseudo = pseudo(ip, false, ip.proto, l4.len());
    be16(l4, field) == usize::from(pseudo.folded()) || pseudo.slice(l4).verifies()
}

fn ipv4_header(
    ip: &Ip<'_>,
    tos: u8,
    id: [u8; 2],
    flags: u8,
    total: usize,
    proto: u8,
    ttl: u8,
) -> Vec<u8> {
    let mut h = vec![0x45, tos];
    h.extend_from_slice(&(total as u16).to_be_bytes());
    h.extend_from_slice(&[id[0], id[1], flags, 0, ttl, proto, 0, 0]);
    h.extend_from_slice(&ip.dst[12..]);
    h.extend_from_slice(&ip.src[12..]);
    let sum = Sum::ZERO.slice(&h).checksum();
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    h
}

fn ipv6_header(ip: &Ip<'_>, tclass: u8, label: u32, payload: usize, next: u8, hop: u8) -> Vec<u8> {
    let first = (6u32 << 28) | (u32::from(tclass) << 20) | (label & 0x000f_ffff);
    let mut h = first.to_be_bytes().to_vec();
    h.extend_from_slice(&(payload as u16).to_be_bytes());
    h.extend_from_slice(&[next, hop]);
    h.extend_from_slice(&ip.dst);
    h.extend_from_slice(&ip.src);
    h
}

/// The IP layer, when the kernel would take the packet as it is: its
/// header sound, whole (no fragment, no authentication header), from and to
/// addresses it answers.
fn ip_layer(frame: &[u8]) -> Option<Ip<'_>> {
    let mut at = 12;
    let mut ethertype = be16(frame, at);
    for _ in 0..2 {
        if ethertype != 0x8100 && ethertype != 0x88a8 {
            break;
        }
        at += 4;
        ethertype = be16(frame.get(..at + 2)?, at);
    }
    let l3 = at + 2;
    let link = &frame[..l3];
    let rest = frame.get(l3..)?;
    match ethertype {
        0x0800 => {
            let header_len = usize::from(*rest.first()? & 0x0f) * 4;
            let header = rest.get(..header_len.max(20))?;
            let total = be16(header, 2);
            if total < header_len || total > rest.len() || !Sum::ZERO.slice(header).verifies() {
                return None;
            }
            // More fragments to come: the kernel reassembles first.
            if header[6] & 0x20 != 0 {
                return None;
            }
            let (src, dst) = (&header[12..16], &header[16..20]);
            let martian = |a: &[u8]| a[0] == 0 || a[0] == 127 || a[0] >= 224;
            if martian(src) || martian(dst) {
                return None;
            }
            Some(Ip {
                link,
                packet: &rest[..total],
                v6: false,
                src: mapped(src),
                dst: mapped(dst),
                tos: header[1],
                l4: header_len,
                proto: header[9],
            })
        }
        0x86dd => {
            let header = rest.get(..40)?;
            let payload = be16(header, 4);
            if payload == 0 || 40 + payload > rest.len() {
                return None;
            }
            let src: [u8; 16] = header[8..24].try_into().ok()?;
            let dst: [u8; 16] = header[24..40].try_into().ok()?;
            let unspecified = src == [0; 16];
            let loopback = src == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
            let v4_mapped = src[..12] == mapped(&[0; 4])[..12];
            if unspecified || loopback || v4_mapped || src[0] == 0xff || dst[0] == 0xff {
                return None;
            }
            let packet = &rest[..40 + payload];
            let mut next = header[6];
            let mut l4 = 40;
            for _ in 0..8 {
                match next {
                    0 | 43 | 60 | 135 | 139 | 140 => {
                        next = *packet.get(l4)?;
                        l4 += (usize::from(*packet.get(l4 + 1)?) + 1) * 8;
                    }
                    // A fragment is reassembled first; AH without an SA is dropped.
                    44 | 51 => return None,
                    _ => break,
                }
            }
            if l4 > packet.len() {
                return None;
            }
            Some(Ip {
                link,
                packet,
                v6: true,
                src,
                dst,
                tos: (header[0] << 4) | (header[1] >> 4),
                l4,
                proto: next,
            })
        }
        _ => None,
    }
}
