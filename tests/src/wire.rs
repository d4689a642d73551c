//! Raw frames on the client's veth: probes built to the byte (checksums,
//! TOS, flags, sequence numbers, IPv4 options, IPv6 extension headers,
//! fragments) and the answers that come back, read as
//! named fields so that an answer from xknock can be compared, field by
//! field, with the one the server's kernel gives at a port where nothing
//! listens.

use std::{
    cell::RefCell,
    collections::HashMap,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::atomic::{AtomicU32, Ordering},
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

/// An AF_PACKET socket on one interface of a namespace: sends frames and
/// reads every frame that arrives.
pub struct Wire {
    fd: OwnedFd,
    index: i32,
}

/// A frame read from a `Wire`: whether it went out of the interface rather
/// than in, and when the kernel saw it (on a `Wire::stamped` socket).
pub struct Received {
    pub frame: Vec<u8>,
    pub outgoing: bool,
    pub stamp: Option<Duration>,
}

/// The identifier of the echo requests a `Wire` sends.
const ECHO_ID: u16 = 0x786b;

impl Wire {
    pub fn open(ns: &Netns, iface: &str) -> Wire {
        Wire::open_with(ns, iface, false)
    }

    /// A wire whose frames carry the kernel's time of arrival (or, for a
    /// frame going out, of leaving): SO_TIMESTAMPNS.
    pub fn stamped(ns: &Netns, iface: &str) -> Wire {
        Wire::open_with(ns, iface, true)
    }

    fn open_with(ns: &Netns, iface: &str, stamped: bool) -> Wire {
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
                if stamped {
                    let on: libc::c_int = 1;
                    let rc = libc::setsockopt(
                        raw,
                        libc::SOL_SOCKET,
                        libc::SO_TIMESTAMPNS,
                        (&raw const on).cast(),
                        size_of::<libc::c_int>() as u32,
                    );
                    assert_eq!(rc, 0, "SO_TIMESTAMPNS: {}", std::io::Error::last_os_error());
                }
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
        while self.read(Duration::ZERO).is_some() {}
    }

    /// The next incoming frame within `wait` (an empty one for a frame
    /// going out).
    fn receive(&self, wait: Duration) -> Option<Vec<u8>> {
        self.read(wait)
            .map(|got| if got.outgoing { Vec::new() } else { got.frame })
    }

    /// The next frame, in or out, within `wait`.
    pub fn read(&self, wait: Duration) -> Option<Received> {
        let mut poll = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = wait.as_micros().div_ceil(1000) as i32;
        // SAFETY: one pollfd on the stack; then recvmsg fills a buffer, an
        // address and a control buffer, all on this stack frame, and reads
        // only the control messages the kernel wrote within its length.
        unsafe {
            if libc::poll(&mut poll, 1, millis) <= 0 {
                return None;
            }
            let mut buf = vec![0u8; 2048];
            let mut from: libc::sockaddr_ll = std::mem::zeroed();
            let mut control = [0u64; 16];
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_name = (&raw mut from).cast();
            msg.msg_namelen = size_of::<libc::sockaddr_ll>() as u32;
            msg.msg_iov = &raw mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = size_of_val(&control);
            let n = libc::recvmsg(self.fd.as_raw_fd(), &raw mut msg, 0);
            if n < 0 {
                return None;
            }
            let mut stamp = None;
            let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET
                    && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
                {
                    let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                    stamp = Some(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32));
                }
                cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
            }
            buf.truncate(n as usize);
            Some(Received {
                frame: buf,
                outgoing: from.sll_pkttype == libc::PACKET_OUTGOING,
                stamp,
            })
        }
    }

    /// Sends `probe` (its fragments in order, if it has some) and returns
    /// the TCP, ICMP and ICMPv6 frames from its destination to its source
    /// within `wait`.
    pub fn exchange(
        &self,
        probe: &Probe,
        to: [u8; 6],
        from: [u8; 6],
        wait: Duration,
    ) -> Vec<Vec<u8>> {
        self.exchange_frames(&probe.frames(to, from), probe, to, from, wait)
    }

    /// Like `exchange`, sending `frames` (say, the probe's fragments in
    /// another order, or some of them).
    pub fn exchange_frames(
        &self,
        frames: &[Vec<u8>],
        probe: &Probe,
        to: [u8; 6],
        from: [u8; 6],
        wait: Duration,
    ) -> Vec<Vec<u8>> {
        self.exchange_batch(&[(frames.to_vec(), probe)], to, from, wait)
            .pop()
            .expect("one probe")
    }

    /// Sends each probe's frames, then returns each probe's answers within
    /// `wait`: with more than one probe, an answer belongs to the probe
    /// whose source port it is addressed to (TCP) or quotes (ICMP), so the
    /// probes need source ports of their own.
    ///
    /// Right after an IPv4 answer without DF (an ICMP error, whose ID comes
    /// from the kernel's counter for this peer) it sends an echo request:
    /// the reply's ID, from the same counter, is what `fields` shows the
    /// answer's ID against.
    pub fn exchange_batch(
        &self,
        batch: &[(Vec<Vec<u8>>, &Probe)],
        to: [u8; 6],
        from: [u8; 6],
        wait: Duration,
    ) -> Vec<Vec<Vec<u8>>> {
        self.drain();
        for (frames, _) in batch {
            for frame in frames {
                self.send(frame);
            }
        }
        let mut answers = vec![Vec::new(); batch.len()];
        // Answers waiting for the echo reply sent after them: (answer,
        // when it arrived, how many answers without DF and echo replies
        // had arrived by then, the echo's sequence number).
        let mut pending: Vec<(Vec<u8>, Instant, u32, u16)> = Vec::new();
        let mut counted = 0;
        let deadline = Instant::now() + wait;
        // While an echo reply is due, a little longer.
        let mut echo_deadline = deadline;
        loop {
            let until = if pending.is_empty() {
                deadline
            } else {
                deadline.max(echo_deadline)
            };
            let Some(left) = until.checked_duration_since(Instant::now()) else {
                break;
            };
            let Some(frame) = self.receive(left) else {
                continue;
            };
            if frame.len() <= 14 || frame[6..12] != to {
                continue;
            }
            let ip = &frame[14..];
            if let Some((echo_seq, echo_ident)) = echo_reply(ip) {
                let anchored: Vec<_> = pending
                    .extract_if(.., |(_, _, _, seq)| *seq == echo_seq)
                    .collect();
                for (answer, at, count, _) in anchored {
                    // The answers and echo replies that came between took
                    // IDs from the counter too.
                    let between = counted - count;
                    let slack = at.elapsed().as_millis() as u32 + 1;
                    ANCHORS.with_borrow_mut(|anchors| {
                        anchors.insert(answer, (echo_ident, between + slack))
                    });
                }
                counted += 1;
                continue;
            }
            let owner = (0..batch.len()).find(|&i| {
                answers_probe(ip, batch[i].1) && (batch.len() == 1 || belongs(ip, batch[i].1))
            });
            let Some(owner) = owner else {
                continue;
            };
            if ip[0] >> 4 == 4 && ip[6] & 0x40 == 0 {
                counted += 1;
                let probe = batch[owner].1;
                let sequence = counted as u16;
                self.send(&ethernet(
                    &echo_request(probe.src, probe.dst, sequence),
                    true,
                    to,
                    from,
                ));
                pending.push((frame.clone(), Instant::now(), counted, sequence));
                echo_deadline = Instant::now() + Duration::from_millis(200);
            }
            answers[owner].push(frame);
        }
        answers
    }

    /// Sends an echo request from `src` to `dst` and returns the ID of the
    /// reply's IP header, if one comes within `wait`.
    pub fn ping(
        &self,
        src: IpAddr,
        dst: IpAddr,
        to: [u8; 6],
        from: [u8; 6],
        wait: Duration,
    ) -> Option<u16> {
        self.drain();
        let sequence = 0xfff0;
        self.send(&ethernet(&echo_request(src, dst, sequence), true, to, from));
        let deadline = Instant::now() + wait;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let frame = self.receive(left)?;
            if frame.len() > 14
                && frame[6..12] == to
                && let Some((seq, ident)) = echo_reply(&frame[14..])
                && seq == sequence
            {
                return Some(ident);
            }
        }
        None
    }

    /// The round trip of `probe` to its first answer, between the times
    /// the kernel stamped the probe leaving and the answer arriving, as
    /// `tap` (a `Wire::stamped` on this wire's interface) saw them; None
    /// when no answer comes within `wait`, `Err` when the kernel did not
    /// stamp the frames as they passed (it only does while its timestamp
    /// switch is on, which it turns on a moment after a socket asks; until
    /// then a frame gets the time it is read, which measures nothing).
    pub fn round_trip(
        &self,
        tap: &Wire,
        probe: &Probe,
        to: [u8; 6],
        from: [u8; 6],
        wait: Duration,
    ) -> Option<Result<Duration, Unstamped>> {
        let frame = probe.frame(to, from);
        tap.drain();
        self.drain();
        self.send(&frame);
        let after_send = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970");
        let mut sent = None;
        let deadline = Instant::now() + wait;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let got = tap.read(left)?;
            if got.outgoing {
                if got.frame == frame {
                    sent = got.stamp;
                }
            } else if got.frame.len() > 14
                && got.frame[6..12] == to
                && answers_probe(&got.frame[14..], probe)
            {
                let (sent, arrived) = (
                    sent.expect("the probe's stamp"),
                    got.stamp.expect("a stamp"),
                );
                // Stamped as it left, the probe's time is before send
                // returned; stamped when read, after.
                if sent >= after_send {
                    return Some(Err(Unstamped));
                }
                return Some(Ok(arrived.saturating_sub(sent)));
            }
        }
        None
    }
}

/// Frames that the kernel did not timestamp as they passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unstamped;

/// (Addresses, the prober's port, flow label) of a TCP answer.
type LabelKey = (Vec<u8>, u16, u32);

thread_local! {
    /// For each IPv4 answer `exchange` read without DF: the ID of the echo
    /// reply that followed it, and by how much more than one the counter
    /// may have moved in between (answers that came between, and the
    /// milliseconds, +1, that passed).
    static ANCHORS: RefCell<HashMap<Vec<u8>, (u16, u32)>> = RefCell::default();
    /// The flow label of each TCP answer seen by `fields`, by (addresses,
    /// the prober's port, label): the server port it first came from.
    static LABELS: RefCell<HashMap<LabelKey, u16>> = RefCell::default();
}

/// An IPv4 echo request with `sequence`, from `src` to `dst`.
fn echo_request(src: IpAddr, dst: IpAddr, sequence: u16) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) else {
        panic!("echo requests are IPv4 here")
    };
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&ECHO_ID.to_be_bytes());
    icmp.extend_from_slice(&sequence.to_be_bytes());
    icmp.extend_from_slice(b"xknock!!");
    let sum = Sum::ZERO.slice(&icmp).checksum();
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0x77, 0x77, 0x40, 0, 64, ICMP, 0, 0]);
    ip.extend_from_slice(&s.octets());
    ip.extend_from_slice(&d.octets());
    let sum = Sum::ZERO.slice(&ip).checksum();
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(&icmp);
    ip
}

/// The (sequence number, IP ID) of an echo reply to a `Wire`'s request.
fn echo_reply(ip: &[u8]) -> Option<(u16, u16)> {
    let header_len = usize::from(ip.first()? & 0x0f) * 4;
    let icmp = ip.get(header_len..header_len + 8)?;
    (ip[0] >> 4 == 4 && ip[9] == ICMP && icmp[0] == 0 && icmp[4..6] == ECHO_ID.to_be_bytes())
        .then(|| (be16(icmp, 6), be16(ip, 4)))
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Whether an IP packet is a TCP, ICMP or ICMPv6 packet to the probe's
/// source from its destination (echo replies and neighbour discovery
/// excluded).
fn answers_probe(ip: &[u8], probe: &Probe) -> bool {
    match (probe.src, probe.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            ip.len() >= 20
                && ip[0] >> 4 == 4
                && (ip[9] == TCP || ip[9] == ICMP)
                && ip[12..16] == d.octets()
                && ip[16..20] == s.octets()
                && echo_reply(ip).is_none()
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

/// Whether an answer (IP packet) is addressed to the probe's source port,
/// or quotes a packet from it.
fn belongs(ip: &[u8], probe: &Probe) -> bool {
    let (proto, l4) = transport(ip);
    match proto {
        Some(TCP) => l4.len() >= 4 && be16(l4, 2) == probe.src_port,
        Some(ICMP | ICMPV6) if l4.len() > 8 => {
            let (_, quoted) = transport(&l4[8..]);
            quoted.len() >= 2 && be16(quoted, 0) == probe.src_port
        }
        _ => false,
    }
}

/// The protocol and payload after an IP header and its extension headers;
/// no protocol for a fragment that is not the first.
fn transport(ip: &[u8]) -> (Option<u8>, &[u8]) {
    if ip.len() < 20 {
        return (None, &[]);
    }
    if ip[0] >> 4 == 4 {
        let header_len = usize::from(ip[0] & 0x0f) * 4;
        let first = be16(ip, 6) & 0x1fff == 0;
        return (first.then_some(ip[9]), ip.get(header_len..).unwrap_or(&[]));
    }
    let (mut next, mut at) = (ip.get(6).copied(), 40);
    while let Some(kind) = next {
        match kind {
            Ext::HOP_BY_HOP | Ext::ROUTING | Ext::DESTINATION if ip.len() >= at + 2 => {
                next = Some(ip[at]);
                at += (usize::from(ip[at + 1]) + 1) * 8;
            }
            Ext::FRAGMENT if ip.len() >= at + 8 => {
                next = (be16(ip, at + 2) & 0xfff8 == 0).then_some(ip[at]);
                at += 8;
            }
            _ => break,
        }
    }
    (next, ip.get(at..).unwrap_or(&[]))
}

/// An answer as named fields: every header field, with checksums replaced
/// by whether they verify, the probed port by `PORT`, and a quoted probe by
/// how much of it (or of which fragment) is quoted and where the quote
/// differs. Nothing is masked: what the kernel computes from a counter or a
/// secret is shown against what it must equal wherever the kernel answers,
/// so two probes that the kernel answers alike read alike. The IPv4 ID of
/// an answer without DF is read against the echo reply `exchange` provoked
/// right after it (the kernel's per-peer counter hands out both); an
/// ICMPv6 error's flow label is shown as it is (the kernel hashes its type
/// and code, the same for every port); a TCP answer's (a keyed hash of its
/// flow, so it differs by port) as its own, or as that of another port when
/// two ports' answers share one; a timestamp of now in an IPv4 option (or
/// in a quoted one) as `<now>`.
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
        put("ip.id", ip_id(frame));
        put("ip.flags_fragment", hex(&ip[6..8]));
        put("ip.ttl", ip[8].to_string());
        put("ip.protocol", ip[9].to_string());
        put(
            "ip.checksum",
            verifies(Sum::ZERO.slice(&ip[..header_len]), false),
        );
        put("ip.src", hex(&ip[12..16]));
        put("ip.dst", hex(&ip[16..20]));
        put("ip.options", options(&ip[20..header_len]));
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
        let label = be32(ip, 0) & 0x000f_ffff;
        put("ip6.flow_label", flow_label(ip, label));
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
            put("icmp.quote", quote(&l4[8..], probe));
        }
        other => put("unexpected protocol", other.to_string()),
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The IPv4 ID of an answer: as it is with DF (the kernel's is zero), else
/// against the echo reply that followed it.
fn ip_id(frame: &[u8]) -> String {
    let ip = &frame[14..];
    if ip[6] & 0x40 != 0 {
        return hex(&ip[4..6]);
    }
    let id = be16(ip, 4);
    match ANCHORS.with_borrow(|anchors| anchors.get(frame).copied()) {
        // The kernel's counter moves by one for each ID it hands out, plus
        // a random number below the jiffies since it last moved (none when
        // they come within one): so the echo reply's is one more, or more
        // by the IDs handed out between and the jiffies that passed (at
        // most one a millisecond). Where within that, the order in which
        // answers came decides, so all of it reads alike.
        Some((echo, allowance)) => match echo.wrapping_sub(id) {
            behind if behind >= 1 && u32::from(behind) <= 1 + allowance => {
                "from the counter of the next echo reply's".into()
            }
            behind => format!("the next echo reply's - {behind}"),
        },
        None => format!("{} (no echo reply after it)", hex(&ip[4..6])),
    }
}

/// An IPv6 answer's flow label: as it is for ICMPv6 (the kernel hashes the
/// ICMP type and code, not the probe, so every port gets the same); for a
/// TCP answer, whether another server port's answer had it too.
fn flow_label(ip: &[u8], label: u32) -> String {
    if label == 0 || ip[6] != TCP || ip.len() < 44 {
        return format!("{label:05x}");
    }
    let (server_port, client_port) = (be16(ip, 40), be16(ip, 42));
    let key = (ip[8..40].to_vec(), client_port, label);
    let first = LABELS.with_borrow_mut(|labels| *labels.entry(key).or_insert(server_port));
    if first == server_port {
        "a hash of this flow".into()
    } else {
        format!("the same as from port {first}")
    }
}

/// Milliseconds since midnight UTC, as an IPv4 timestamp option counts.
fn now_ms() -> u32 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970");
    ((since.as_secs() % 86_400) * 1000 + u64::from(since.subsec_millis())) as u32
}

/// The byte ranges of the timestamps a host filled in the IPv4 options
/// `opts`.
fn timestamps(opts: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut at = 0;
    let mut stamps = Vec::new();
    while at < opts.len() {
        match opts[at] {
            0 => break,
            1 => at += 1,
            kind => {
                let len = usize::from(*opts.get(at + 1).unwrap_or(&0));
                if len < 2 || at + len > opts.len() {
                    break;
                }
                if kind == 68 && len >= 4 {
                    let filled = usize::from(opts[at + 2]).saturating_sub(1).min(len);
                    let step = if opts[at + 3] & 0x0f == 0 { 4 } else { 8 };
                    let mut slot = 4;
                    while slot + step <= filled {
                        let stamp = at + slot + step - 4;
                        stamps.push(stamp..stamp + 4);
                        slot += step;
                    }
                }
                at += len;
            }
        }
    }
    stamps
}

/// Whether four bytes are a timestamp of now (within a minute).
fn is_now(bytes: &[u8]) -> bool {
    let stamp = u32::from_be_bytes(bytes.try_into().expect("four bytes"));
    stamp.abs_diff(now_ms()) < 60_000
}

/// IPv4 options as hex, with each timestamp that is now shown as `<now>`.
fn options(opts: &[u8]) -> String {
    let stamps = timestamps(opts);
    let mut out = String::new();
    let mut at = 0;
    while at < opts.len() {
        if let Some(stamp) = stamps.iter().find(|s| s.start == at)
            && is_now(&opts[stamp.clone()])
        {
            out.push_str("<now>");
            at += 4;
        } else {
            out.push_str(&hex(&opts[at..=at]));
            at += 1;
        }
    }
    out
}

/// What an ICMP error quotes: how much of the probe, or of which of its
/// fragments, and where the quote differs from what was sent (a host
/// fills in options it records into, as it received them).
fn quote(quoted: &[u8], probe: &Probe) -> String {
    let mut sent = vec![("the probe".to_owned(), probe.packet())];
    if !probe.split.is_empty() {
        for (i, piece) in probe.pieces().into_iter().enumerate() {
            sent.push((format!("fragment {}", i + 1), piece));
        }
    }
    let stamps = if quoted.first().is_some_and(|b| b >> 4 == 4) {
        let header_len = usize::from(quoted[0] & 0x0f) * 4;
        timestamps(quoted.get(20..header_len).unwrap_or(&[]))
            .into_iter()
            .map(|r| r.start + 20..r.end + 20)
            .collect()
    } else {
        Vec::new()
    };
    let differences = |bytes: &[u8]| -> Option<Vec<String>> {
        if quoted.len() > bytes.len() {
            return None;
        }
        let mut differ = Vec::new();
        let mut at = 0;
        while at < quoted.len() {
            if let Some(stamp) = stamps.iter().find(|s| s.start == at)
                && quoted[stamp.clone()] != bytes[stamp.clone()]
            {
                let now = if is_now(&quoted[stamp.clone()]) {
                    "<now>".into()
                } else {
                    hex(&quoted[stamp.clone()])
                };
                differ.push(format!("{at}: {now}"));
                at += 4;
            } else if quoted[at] != bytes[at] {
                differ.push(format!("{at}: {:02x}", quoted[at]));
                at += 1;
            } else {
                at += 1;
            }
        }
        Some(differ)
    };
    let best = sent
        .iter()
        .filter_map(|(name, bytes)| Some((name, bytes.len(), differences(bytes)?)))
        .min_by_key(|(_, _, differ)| differ.len());
    match best {
        Some((name, len, differ)) if differ.len() <= 12 => {
            let mut text = format!("{name}'s first {} of {len} bytes", quoted.len());
            if !differ.is_empty() {
                text.push_str(&format!(", but at {}", differ.join(", ")));
            }
            text
        }
        _ => format!("not the probe: {}", hex(quoted)),
    }
}

fn verifies(sum: Sum, offloaded: bool) -> String {
    if sum.verifies() || offloaded {
        "ok"
    } else {
        "WRONG"
    }
    .into()
}
