//! Probes built to the byte: a TCP segment or UDP datagram with its IP
//! header, IPv4 options, IPv6 extension headers, and fragments.

use std::{
    net::IpAddr,
    sync::atomic::{AtomicU32, Ordering},
};

use knock_common::checksum::{Sum, pseudo_v4, pseudo_v6};

use super::{ACK, TCP, UDP};

/// A TCP segment or UDP datagram to send raw.
#[derive(Clone, Debug)]
pub struct Probe {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub src_port: u16,
    pub dst_port: u16,
    /// TOS (IPv4) or traffic class (IPv6).
    pub tos: u8,
    pub tcp_flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub payload: Vec<u8>,
    /// Sends the L4 checksum off by one, as `nmap --badsum` does.
    pub bad_checksum: bool,
    /// IPv4 options, as sent (padded with zeros to a whole word).
    pub ip_options: Vec<u8>,
    /// IPv6 extension headers between the fixed header and the segment, in
    /// order; each one's next-header byte is set when the packet is built.
    pub ipv6_ext: Vec<Ext>,
    /// Where to cut the fragmentable part (the L4 segment, after the IPv6
    /// headers that precede a fragment header) into fragments: byte offsets,
    /// each a multiple of 8. Empty: one unfragmented packet.
    pub split: Vec<usize>,
    /// The IPv4 ID (its low 16 bits) or the IPv6 fragment header's ID. A
    /// fragmented probe needs one of its own: the kernel reassembles
    /// fragments by (addresses, protocol, ID).
    pub ident: u32,
}

/// An IPv6 extension header: the next-header value that names it, and its
/// bytes (the first, its own next-header field, is set by `Probe::packet`).
#[derive(Clone, Debug)]
pub struct Ext {
    pub kind: u8,
    pub bytes: Vec<u8>,
}

impl Ext {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const DESTINATION: u8 = 60;

    /// A hop-by-hop or destination options header carrying `options`
    /// (type-length-value), padded with PadN to a multiple of 8 bytes.
    pub fn options(kind: u8, options: &[u8]) -> Ext {
        let mut bytes = vec![0, 0];
        bytes.extend_from_slice(options);
        match (8 - bytes.len() % 8) % 8 {
            0 => {}
            1 => bytes.push(0),
            n => {
                bytes.extend_from_slice(&[1, (n - 2) as u8]);
                bytes.resize(bytes.len() + n - 2, 0);
            }
        }
        bytes[1] = (bytes.len() / 8 - 1) as u8;
        Ext { kind, bytes }
    }
}

/// The chain of `exts` with each next-header byte set, followed by `last`:
/// the value that names the first header (or `last` when there is none),
/// and the bytes.
fn chain(exts: &[Ext], last: u8) -> (u8, Vec<u8>) {
    let mut bytes = Vec::new();
    for (i, ext) in exts.iter().enumerate() {
        let mut header = ext.bytes.clone();
        header[0] = exts.get(i + 1).map_or(last, |next| next.kind);
        bytes.extend_from_slice(&header);
    }
    (exts.first().map_or(last, |ext| ext.kind), bytes)
}

/// Builds the headers of one fragment: (length of its data, offset, more
/// fragments follow).
type FragmentHeader<'a> = Box<dyn Fn(usize, usize, bool) -> Vec<u8> + 'a>;

static NEXT_IDENT: AtomicU32 = AtomicU32::new(0);

/// An ID for a fragmented probe, unique in this process (and unlikely to
/// meet one of an earlier run still waiting in a reassembly queue).
pub fn fresh_ident() -> u32 {
    let base = std::process::id().wrapping_mul(0x9e37_79b9);
    base.wrapping_add(NEXT_IDENT.fetch_add(0x1_0001, Ordering::Relaxed))
}

impl Probe {
    pub fn tcp(src: IpAddr, dst: IpAddr, dst_port: u16, flags: u8) -> Probe {
        Probe {
            src,
            dst,
            proto: TCP,
            src_port: 40123,
            dst_port,
            tos: 0,
            tcp_flags: flags,
            seq: 0x1234_5678,
            ack: if flags & ACK != 0 { 0x0bad_cafe } else { 0 },
            payload: Vec::new(),
            bad_checksum: false,
            ip_options: Vec::new(),
            ipv6_ext: Vec::new(),
            split: Vec::new(),
            ident: 0x4321,
        }
    }

    pub fn udp(src: IpAddr, dst: IpAddr, dst_port: u16, payload: usize) -> Probe {
        Probe {
            proto: UDP,
            payload: (0..payload).map(|i| (i % 251) as u8).collect(),
            ..Probe::tcp(src, dst, dst_port, 0)
        }
    }

    /// This probe cut into fragments at `split` (see `Probe::split`), with
    /// an ID of its own.
    pub fn fragmented(self, split: &[usize]) -> Probe {
        Probe {
            split: split.to_vec(),
            ident: fresh_ident(),
            ..self
        }
    }

    /// The TCP segment or UDP datagram, checksummed.
    fn segment(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        l4.extend_from_slice(&self.src_port.to_be_bytes());
        l4.extend_from_slice(&self.dst_port.to_be_bytes());
        let checksum_at = if self.proto == TCP {
            l4.extend_from_slice(&self.seq.to_be_bytes());
            l4.extend_from_slice(&self.ack.to_be_bytes());
            l4.extend_from_slice(&[5 << 4, self.tcp_flags, 0xfa, 0xf0, 0, 0, 0, 0]);
            16
        } else {
            l4.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
            l4.extend_from_slice(&[0, 0]);
            6
        };
        l4.extend_from_slice(&self.payload);
        let pseudo = match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                pseudo_v4(&s.octets(), &d.octets(), self.proto, l4.len() as u16)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                pseudo_v6(&s.octets(), &d.octets(), self.proto, l4.len() as u32)
            }
            _ => panic!("one family"),
        };
        let mut checksum = pseudo.slice(&l4).checksum();
        if self.proto == UDP && checksum == 0 {
            checksum = 0xffff;
        }
        if self.bad_checksum {
            checksum = checksum.wrapping_sub(1).max(1);
        }
        l4[checksum_at..checksum_at + 2].copy_from_slice(&checksum.to_be_bytes());
        l4
    }

    /// An IPv4 header with this probe's options for `payload` bytes.
    fn ipv4_header(&self, payload: usize, flags_fragment: u16, options: bool) -> Vec<u8> {
        let (IpAddr::V4(s), IpAddr::V4(d)) = (self.src, self.dst) else {
            panic!("an IPv4 probe")
        };
        let mut opts = if options {
            self.ip_options.clone()
        } else {
            Vec::new()
        };
        opts.resize(opts.len().div_ceil(4) * 4, 0);
        let header_len = 20 + opts.len();
        let mut ip = vec![0x40 | (header_len / 4) as u8, self.tos];
        ip.extend_from_slice(&((header_len + payload) as u16).to_be_bytes());
        ip.extend_from_slice(&(self.ident as u16).to_be_bytes());
        ip.extend_from_slice(&flags_fragment.to_be_bytes());
        ip.extend_from_slice(&[64, self.proto, 0, 0]);
        ip.extend_from_slice(&s.octets());
        ip.extend_from_slice(&d.octets());
        ip.extend_from_slice(&opts);
        let sum = Sum::ZERO.slice(&ip).checksum();
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        ip
    }

    /// An IPv6 header for `payload` bytes after it, the first of them named
    /// by `next`.
    fn ipv6_header(&self, payload: usize, next: u8) -> Vec<u8> {
        let (IpAddr::V6(s), IpAddr::V6(d)) = (self.src, self.dst) else {
            panic!("an IPv6 probe")
        };
        let mut ip = vec![0x60 | (self.tos >> 4), self.tos << 4, 0x12, 0x34];
        ip.extend_from_slice(&(payload as u16).to_be_bytes());
        ip.extend_from_slice(&[next, 64]);
        ip.extend_from_slice(&s.octets());
        ip.extend_from_slice(&d.octets());
        ip
    }

    /// The IP packet (no Ethernet header), unfragmented: what the kernel
    /// holds once it has reassembled the fragments.
    pub fn packet(&self) -> Vec<u8> {
        let l4 = self.segment();
        let mut ip = if self.src.is_ipv4() {
            // Fragments cannot carry DF, nor can what they reassemble to.
            let flags = if self.split.is_empty() { 0x4000 } else { 0 };
            self.ipv4_header(l4.len(), flags, true)
        } else {
            let (next, exts) = chain(&self.ipv6_ext, self.proto);
            let mut ip = self.ipv6_header(exts.len() + l4.len(), next);
            ip.extend_from_slice(&exts);
            ip
        };
        ip.extend_from_slice(&l4);
        ip
    }

    /// The IP packets to send: the fragments, or the packet alone. IPv4
    /// options go in the first fragment only; an IPv6 fragment header
    /// follows the hop-by-hop and routing headers.
    pub fn pieces(&self) -> Vec<Vec<u8>> {
        if self.split.is_empty() {
            return vec![self.packet()];
        }
        let (headers, data): (FragmentHeader<'_>, Vec<u8>) = if self.src.is_ipv4() {
            let header = move |len: usize, offset: usize, more: bool| {
                let flags = u16::from(more) << 13 | (offset / 8) as u16;
                self.ipv4_header(len, flags, offset == 0)
            };
            (Box::new(header), self.segment())
        } else {
            let unfragmentable = self
                .ipv6_ext
                .iter()
                .take_while(|ext| matches!(ext.kind, Ext::HOP_BY_HOP | Ext::ROUTING))
                .count();
            let (first, unfrag) = chain(&self.ipv6_ext[..unfragmentable], Ext::FRAGMENT);
            let (inner, rest) = chain(&self.ipv6_ext[unfragmentable..], self.proto);
            let mut data = rest;
            data.extend_from_slice(&self.segment());
            let header = move |len: usize, offset: usize, more: bool| {
                let mut ip = self.ipv6_header(unfrag.len() + 8 + len, first);
                ip.extend_from_slice(&unfrag);
                ip.extend_from_slice(&[inner, 0]);
                ip.extend_from_slice(&(offset as u16 | u16::from(more)).to_be_bytes());
                ip.extend_from_slice(&self.ident.to_be_bytes());
                ip
            };
            (Box::new(header), data)
        };
        let mut cuts = vec![0];
        cuts.extend(self.split.iter().copied());
        cuts.push(data.len());
        cuts.windows(2)
            .map(|cut| {
                let (start, end) = (cut[0], cut[1]);
                assert!(
                    start % 8 == 0 && start < end,
                    "fragments at {:?}",
                    self.split
                );
                let mut piece = headers(end - start, start, end < data.len());
                piece.extend_from_slice(&data[start..end]);
                piece
            })
            .collect()
    }

    /// The whole Ethernet frame from `from` to `to`.
    pub fn frame(&self, to: [u8; 6], from: [u8; 6]) -> Vec<u8> {
        ethernet(&self.packet(), self.src.is_ipv4(), to, from)
    }

    /// The frames of `pieces`, in order.
    pub fn frames(&self, to: [u8; 6], from: [u8; 6]) -> Vec<Vec<u8>> {
        self.pieces()
            .iter()
            .map(|piece| ethernet(piece, self.src.is_ipv4(), to, from))
            .collect()
    }
}

/// An IP packet in an Ethernet frame.
pub fn ethernet(packet: &[u8], ipv4: bool, to: [u8; 6], from: [u8; 6]) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&to);
    frame.extend_from_slice(&from);
    let ethertype: u16 = if ipv4 { 0x0800 } else { 0x86dd };
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(packet);
    frame
}
