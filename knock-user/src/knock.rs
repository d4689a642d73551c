//! The knock client: sends a sequence of TCP SYNs and UDP datagrams.

use std::{
    io,
    net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket},
    thread,
    time::Duration,
};

use knock_common::IPPROTO_TCP;
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
        let addr = SocketAddr::new(target, knock.0.port);
        if knock.0.proto == IPPROTO_TCP {
            send_syn(addr)?;
        } else {
            let bind: SocketAddr = match target {
                IpAddr::V4(_) => "0.0.0.0:0".parse().expect("literal"),
                IpAddr::V6(_) => "[::]:0".parse().expect("literal"),
            };
            UdpSocket::bind(bind)?.send_to(UDP_KNOCK_PAYLOAD, addr)?;
        }
    }
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
