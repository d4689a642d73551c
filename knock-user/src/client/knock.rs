//! The knock client: sends a sequence of TCP SYNs, UDP datagrams and ICMP
//! echo requests.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket},
    thread,
    time::Duration,
};

use knock_common::{IPPROTO_ICMP, IPPROTO_TCP, checksum::Sum};
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::PortSpec;

/// Payload of UDP knocks; the filter only looks at the port.
const UDP_KNOCK_PAYLOAD: &[u8] = b"xknock";

/// Resolves HOST (a name, an address, or a bracketed IPv6 address).
pub fn resolve(host: &str) -> io::Result<IpAddr> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(addr) = bare.parse() {
        return Ok(addr);
    }
    (bare, 0)
        .to_socket_addrs()?
        .next()
        .map(|addr| addr.ip())
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("`{host}` has no address")))
}

/// Sends each knock to `target`, waiting `delay` between them.
pub fn send_sequence(target: IpAddr, knocks: &[PortSpec], delay: Duration) -> io::Result<()> {
    for (i, knock) in knocks.iter().enumerate() {
        if i > 0 && !delay.is_zero() {
            thread::sleep(delay);
        }
        if knock.0.proto == IPPROTO_TCP {
            send_syn(SocketAddr::new(target, knock.0.port))?;
        } else if knock.0.proto == IPPROTO_ICMP {
            send_echo(target, knock.0.port)?;
        } else {
            send_datagram(target, knock.0.port, UDP_KNOCK_PAYLOAD)?;
        }
    }
    Ok(())
}

/// Sends one UDP datagram to `port` of `target`.
pub fn send_datagram(target: IpAddr, port: u16, payload: &[u8]) -> io::Result<()> {
    let any: IpAddr = match target {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let bind = SocketAddr::new(any, 0);
    UdpSocket::bind(bind)?.send_to(payload, SocketAddr::new(target, port))?;
    Ok(())
}

/// Sends one SYN: a non-blocking connect, closed at once. Closing a socket in
/// SYN-SENT sends nothing more, so no retransmitted SYN can arrive after a
/// later step and reset the sequence.
fn send_syn(addr: SocketAddr) -> io::Result<()> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Sends one echo request with `size` bytes of payload, as `ping -s SIZE`
/// does: through a ping socket where the host allows this user one
/// (net.ipv4.ping_group_range), else a raw socket (root or CAP_NET_RAW).
fn send_echo(target: IpAddr, size: u16) -> io::Result<()> {
    let (domain, protocol, echo_request) = match target {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4, 8),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6, 128),
    };
    let mut message = vec![0x61u8; 8 + usize::from(size)];
    message[..8].copy_from_slice(&[echo_request, 0, 0, 0, 0, 0, 0, 1]);
    // A raw ICMPv4 socket sends the checksum as given; ping sockets and
    // ICMPv6 fill in their own.
    let checksum = Sum::ZERO.slice(&message).checksum();
    message[2..4].copy_from_slice(&checksum.to_be_bytes());
    let socket = Socket::new(domain, Type::DGRAM, Some(protocol))
        .or_else(|_| Socket::new(domain, Type::RAW, Some(protocol)))?;
    socket.send_to(&message, &SocketAddr::new(target, 0).into())?;
    Ok(())
}
