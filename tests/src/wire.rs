//! Raw frames on the client's veth: probes built to the byte (checksums,
//! TOS, flags, sequence numbers) and the answers that come back, read as
//! named fields so that an answer from xknock can be compared, field by
//! field, with the one the server's kernel gives at a port where nothing
//! listens.

use std::{
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use knock_common::{
    IPPROTO_ICMP as ICMP, IPPROTO_ICMPV6 as ICMPV6,
    checksum::{Sum, pseudo_v4, pseudo_v6},
};
pub use knock_common::{
    IPPROTO_TCP as TCP, IPPROTO_UDP as UDP, TCP_ACK as ACK, TCP_FIN as FIN, TCP_PSH as PSH,
    TCP_RST as RST, TCP_SYN as SYN, TCP_URG as URG,
};

use crate::Netns;

/// The Ethernet address of `iface` in `ns`.
pub fn mac_of(ns: &Netns, iface: &str) -> [u8; 6] {
    let out = ns.ip(&["link", "show", "dev", iface]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mac = text
        .split_whitespace()
        .skip_while(|word| *word != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC for {iface}: {text}"));
    let bytes: Vec<u8> = mac
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("hex"))
        .collect();
    bytes.try_into().expect("six bytes")
}

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
        }
    }

    pub fn udp(src: IpAddr, dst: IpAddr, dst_port: u16, payload: usize) -> Probe {
        Probe {
            proto: UDP,
            payload: (0..payload).map(|i| (i % 251) as u8).collect(),
            ..Probe::tcp(src, dst, dst_port, 0)
        }
    }

    /// The IP packet (no Ethernet header).
    pub fn packet(&self) -> Vec<u8> {
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
        let mut ip = Vec::new();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                ip.extend_from_slice(&[0x45, self.tos]);
                ip.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
                ip.extend_from_slice(&[0x43, 0x21, 0x40, 0, 64, self.proto, 0, 0]);
                ip.extend_from_slice(&s.octets());
                ip.extend_from_slice(&d.octets());
                let sum = Sum::ZERO.slice(&ip).checksum();
                ip[10..12].copy_from_slice(&sum.to_be_bytes());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                ip.extend_from_slice(&[0x60 | (self.tos >> 4), self.tos << 4, 0x12, 0x34]);
                ip.extend_from_slice(&(l4.len() as u16).to_be_bytes());
                ip.extend_from_slice(&[self.proto, 64]);
                ip.extend_from_slice(&s.octets());
                ip.extend_from_slice(&d.octets());
            }
            _ => unreachable!(),
        }
        ip.extend_from_slice(&l4);
        ip
    }

    /// The whole Ethernet frame from `from` to `to`.
    pub fn frame(&self, to: [u8; 6], from: [u8; 6]) -> Vec<u8> {
        let mut frame = Vec::new();
        frame.extend_from_slice(&to);
        frame.extend_from_slice(&from);
        let ethertype: u16 = if self.src.is_ipv4() { 0x0800 } else { 0x86dd };
        frame.extend_from_slice(&ethertype.to_be_bytes());
        frame.extend_from_slice(&self.packet());
        frame
    }
}

/// An AF_PACKET socket on one interface of a namespace: sends frames and
/// reads every frame that arrives.
pub struct Wire {
    fd: OwnedFd,
    index: i32,
}

impl Wire {
    pub fn open(ns: &Netns, iface: &str) -> Wire {
        let iface = iface.to_owned();
        ns.within(move || {
            let name = std::ffi::CString::new(iface.clone()).expect("name");
            // SAFETY: plain socket calls; the fd is owned from here on.
            unsafe {
                let index = libc::if_nametoindex(name.as_ptr()) as i32;
                assert_ne!(index, 0, "no interface {iface}");
                let raw = libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW,
                    (libc::ETH_P_ALL as u16).to_be() as i32,
                );
                assert!(raw >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
                let fd = OwnedFd::from_raw_fd(raw);
                let mut addr: libc::sockaddr_ll = std::mem::zeroed();
                addr.sll_family = libc::AF_PACKET as u16;
                addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
                addr.sll_ifindex = index;
                let rc = libc::bind(
                    raw,
                    (&raw const addr).cast(),
                    size_of::<libc::sockaddr_ll>() as u32,
                );
                assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
                Wire { fd, index }
            }
        })
    }

    pub fn send(&self, frame: &[u8]) {
        // SAFETY: a sockaddr_ll on the stack and a buffer the call only reads.
        unsafe {
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = self.index;
            addr.sll_halen = 6;
            let sent = libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(
                sent,
                frame.len() as isize,
                "sendto: {}",
                std::io::Error::last_os_error()
            );
        }
    }

    /// Drops whatever arrived so far.
    pub fn drain(&self) {
        while self.receive(Duration::ZERO).is_some() {}
    }

    /// The next incoming frame within `wait`.
    fn receive(&self, wait: Duration) -> Option<Vec<u8>> {
        let mut poll = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd on the stack; then a buffer recvfrom fills.
        unsafe {
            if libc::poll(&mut poll, 1, wait.as_millis() as i32) <= 0 {
                return None;
            }
            let mut buf = vec![0u8; 2048];
            let mut from: libc::sockaddr_ll = std::mem::zeroed();
            let mut len = size_of::<libc::sockaddr_ll>() as u32;
            let n = libc::recvfrom(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&raw mut from).cast(),
                &mut len,
            );
            if n < 0 {
                return None;
            }
            // Only what came in, not our own frames going out.
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                return Some(Vec::new());
            }
            buf.truncate(n as usize);
            Some(buf)
        }
    }

    /// Sends `probe` and returns the TCP, ICMP and ICMPv6 frames from
    /// `server` to the probe's source within `wait`.
    pub fn exchange(
        &self,
        probe: &Probe,
        to: [u8; 6],
        from: [u8; 6],
        wait: Duration,
    ) -> Vec<Vec<u8>> {
        self.drain();
        self.send(&probe.frame(to, from));
        let deadline = Instant::now() + wait;
        let mut answers = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Some(frame) = self.receive(left) else {
                break;
            };
            if frame.len() > 14 && frame[6..12] == to && answers_probe(&frame[14..], probe) {
                answers.push(frame);
            }
        }
        answers
    }
}

/// Whether an IP packet is a TCP, ICMP or ICMPv6 packet to the probe's
/// source from its destination (neighbour discovery excluded).
fn answers_probe(ip: &[u8], probe: &Probe) -> bool {
    match (probe.src, probe.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            ip.len() >= 20
                && ip[0] >> 4 == 4
                && (ip[9] == TCP || ip[9] == ICMP)
                && ip[12..16] == d.octets()
                && ip[16..20] == s.octets()
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            ip.len() >= 48
                && ip[0] >> 4 == 6
                && (ip[6] == TCP || (ip[6] == ICMPV6 && ip[40] < 128))
                && ip[8..24] == d.octets()
                && ip[24..40] == s.octets()
        }
        _ => false,
    }
}

/// An answer as named fields: every header field, with checksums replaced
/// by whether they verify, the probed port by `PORT`, what the kernel makes
/// random by `random`, and a quoted probe by how much of it is quoted.
pub fn fields(frame: &[u8], probe: &Probe) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut put = |name: &str, value: String| out.push((name.to_owned(), value));
    let port = |p: u16| {
        if p == probe.dst_port {
            "PORT".to_owned()
        } else {
            p.to_string()
        }
    };
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let be16 = |b: &[u8], at: usize| u16::from_be_bytes([b[at], b[at + 1]]);
    let be32 = |b: &[u8], at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    put("eth.dst", hex(&frame[0..6]));
    put("eth.src", hex(&frame[6..12]));
    put("eth.type", hex(&frame[12..14]));
    let ip = &frame[14..];
    let (proto, l4, pseudo) = if ip[0] >> 4 == 4 {
        let header_len = usize::from(ip[0] & 0x0f) * 4;
        let total = usize::from(be16(ip, 2));
        put("ip.version_ihl", hex(&ip[0..1]));
        put("ip.tos", hex(&ip[1..2]));
        put("ip.total_length", total.to_string());
        let df = ip[6] & 0x40 != 0;
        // Without DF the kernel draws IDs from a keyed hash.
        put("ip.id", if df { hex(&ip[4..6]) } else { "random".into() });
        put("ip.flags_fragment", hex(&ip[6..8]));
        put("ip.ttl", ip[8].to_string());
        put("ip.protocol", ip[9].to_string());
        put(
            "ip.checksum",
            verifies(Sum::ZERO.slice(&ip[..header_len]), false),
        );
        put("ip.src", hex(&ip[12..16]));
        put("ip.dst", hex(&ip[16..20]));
        put("ip.options", hex(&ip[20..header_len]));
        put("frame.padding", (ip.len() - total).to_string());
        let l4 = &ip[header_len..total];
        let pseudo = pseudo_v4(
            &ip[12..16].try_into().unwrap(),
            &ip[16..20].try_into().unwrap(),
            ip[9],
            l4.len() as u16,
        );
        (ip[9], l4, pseudo)
    } else {
        let payload = usize::from(be16(ip, 4));
        put("ip6.version", (ip[0] >> 4).to_string());
        put(
            "ip6.traffic_class",
            format!("{:02x}", (ip[0] << 4) | (ip[1] >> 4)),
        );
        // The kernel's automatic flow labels hash the flow with a secret.
        let label = be32(ip, 0) & 0x000f_ffff;
        put(
            "ip6.flow_label",
            if label == 0 {
                "0".into()
            } else {
                "hashed".into()
            },
        );
        put("ip6.payload_length", payload.to_string());
        put("ip6.next_header", ip[6].to_string());
        put("ip6.hop_limit", ip[7].to_string());
        put("ip6.src", hex(&ip[8..24]));
        put("ip6.dst", hex(&ip[24..40]));
        let l4 = &ip[40..40 + payload];
        let pseudo = pseudo_v6(
            &ip[8..24].try_into().unwrap(),
            &ip[24..40].try_into().unwrap(),
            ip[6],
            payload as u32,
        );
        (ip[6], l4, pseudo)
    };
    match proto {
        TCP => {
            put("tcp.src_port", port(be16(l4, 0)));
            put("tcp.dst_port", port(be16(l4, 2)));
            put("tcp.seq", format!("{:08x}", be32(l4, 4)));
            put("tcp.ack", format!("{:08x}", be32(l4, 8)));
            put("tcp.data_offset", (l4[12] >> 4).to_string());
            put("tcp.flags", format!("{:02x}", l4[13]));
            put("tcp.window", be16(l4, 14).to_string());
            // The kernel leaves an IPv6 RST's checksum to offload (the
            // pseudo-header sum alone), which a real NIC completes.
            let offloaded = be16(l4, 16) == pseudo.folded();
            put("tcp.checksum", verifies(pseudo.slice(l4), offloaded));
            put("tcp.urgent", be16(l4, 18).to_string());
            put("tcp.rest", hex(&l4[20..]));
        }
        ICMP | ICMPV6 => {
            put("icmp.type", l4[0].to_string());
            put("icmp.code", l4[1].to_string());
            let sum = if proto == ICMP { Sum::ZERO } else { pseudo };
            put("icmp.checksum", verifies(sum.slice(l4), false));
            put("icmp.rest_of_header", hex(&l4[4..8]));
            let quoted = &l4[8..];
            let sent = probe.packet();
            let matches = sent.starts_with(quoted);
            put(
                "icmp.quote",
                if matches {
                    format!("the probe's first {} of {} bytes", quoted.len(), sent.len())
                } else {
                    format!("not the probe: {}", hex(quoted))
                },
            );
        }
        other => put("unexpected protocol", other.to_string()),
    }
    out
}

fn verifies(sum: Sum, offloaded: bool) -> String {
    if sum.verifies() || offloaded {
        "ok"
    } else {
        "WRONG"
    }
    .into()
}
