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
    time::{Duration, Instant},
};

use knock_common::{IPPROTO_ICMP as ICMP, IPPROTO_ICMPV6 as ICMPV6, checksum::Sum};
pub use knock_common::{
    IPPROTO_TCP as TCP, IPPROTO_UDP as UDP, TCP_ACK as ACK, TCP_FIN as FIN, TCP_PSH as PSH,
    TCP_RST as RST, TCP_SYN as SYN, TCP_URG as URG,
};

use crate::Netns;

mod fields;
mod probe;

pub use fields::fields;
pub use probe::{Ext, Probe, ethernet, fresh_ident};

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
        if let Err(e) = self.try_send(frame) {
            panic!("sendto: {e}");
        }
    }

    /// Sends `frame`, or says why not (ENOBUFS while a flood fills the
    /// interface's queue).
    pub fn try_send(&self, frame: &[u8]) -> std::io::Result<()> {
        // SAFETY: a sockaddr_ll on the stack and a buffer the call only reads.
        let sent = unsafe {
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = self.index;
            addr.sll_halen = 6;
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if sent == frame.len() as isize {
            Ok(())
        } else if sent < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Err(std::io::Error::other(format!(
                "sent {sent} of {} bytes",
                frame.len()
            )))
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

thread_local! {
    /// For each IPv4 answer `exchange` read without DF: the ID of the echo
    /// reply that followed it, and by how much more than one the counter
    /// may have moved in between (answers that came between, and the
    /// milliseconds, +1, that passed).
    static ANCHORS: RefCell<HashMap<Vec<u8>, (u16, u32)>> = RefCell::default();
}

/// The echo reply's ID and allowance `exchange` noted for `answer`.
fn anchor(answer: &[u8]) -> Option<(u16, u32)> {
    ANCHORS.with_borrow(|anchors| anchors.get(answer).copied())
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
