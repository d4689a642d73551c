//! Parsing a frame down to what the filter needs: source address, protocol,
//! ports and TCP flags, or an ICMP echo request's payload size. Every read
//! goes through `bytes_at`; every loop is bounded by a constant; anything
//! that cannot be parsed to the ports of a TCP/UDP packet is an error, which
//! the caller drops (fail closed). Other ICMP, and echo requests that are
//! fragmented or malformed, pass as other protocols do.

use aya_ebpf::programs::XdpContext;
use knock_common::{
    Addr, AddrWords, ETH_HEADER_LEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6,
    ICMP_ECHO_REQUEST, ICMP_HEADER_LEN, ICMPV6_ECHO_REQUEST, IPPROTO_AH, IPPROTO_DSTOPTS,
    IPPROTO_FRAGMENT, IPPROTO_HIP, IPPROTO_HOPOPTS, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_MOBILITY,
    IPPROTO_ROUTING, IPPROTO_SHIM6, IPPROTO_TCP, IPPROTO_UDP, IPV4_HEADER_LEN, IPV6_HEADER_LEN,
    Knock, MAX_HEADER_OFFSET, MAX_IPV6_EXT_HEADERS, MAX_VLAN_DEPTH, Reason, TCP_ACK,
    TCP_HEADER_LEN, TCP_SYN, UDP_HEADER_LEN, VLAN_TAG_LEN, addr_words, ipv4_mapped,
    is_ipv6_extension, words_addr,
};

const IPV4_FRAGMENT_OFFSET_MASK: u16 = 0x1fff;
const IPV4_MORE_FRAGMENTS: u8 = 0x20;
const IPV4_SOURCE: usize = 12;
const IPV6_SOURCE: usize = 8;
const IPV6_FRAGMENT_HEADER_LEN: usize = 8;

/// A TCP segment or UDP datagram, as far as the filter cares.
#[derive(Clone, Copy)]
pub struct Packet {
    /// The source address in the one key form, as words (see `src`).
    pub src_words: AddrWords,
    /// Network byte order.
    pub src_port: [u8; 2],
    pub l4: Transport,
}

/// A TCP or UDP header, or an ICMP echo request, and where its source
/// address is: most packets are decided by their port alone, and never need
/// the address read.
#[derive(Clone, Copy)]
pub struct Transport {
    /// `IPPROTO_TCP`, `IPPROTO_UDP`, or `IPPROTO_ICMP` for an echo request
    /// of either family.
    pub proto: u8,
    /// Network byte order; an echo request's payload size.
    pub dst_port: [u8; 2],
    /// Zero for UDP.
    pub tcp_flags: u8,
    source: Source,
    /// Where the TCP or UDP header starts.
    header_at: usize,
    /// Neither the first of several fragments nor behind an IPv6
    /// authentication header: the kernel would take the packet as it is
    /// (it reassembles fragments and drops AH it holds no SA for).
    pub whole: bool,
}

/// Where the source address sits in the frame.
#[derive(Clone, Copy)]
enum Source {
    Ipv4(usize),
    Ipv6(usize),
}

impl Packet {
    /// The knock this TCP segment, UDP datagram or echo request makes.
    #[inline(always)]
    pub fn knock(&self) -> Knock {
        Knock::new(self.l4.proto, self.l4.dst_port())
    }

    /// The source address in the one key form.
    #[inline(always)]
    pub fn src(&self) -> Addr {
        words_addr(&self.src_words)
    }
}

impl Transport {
    /// The whole packet, with the source address (in the one key form) and
    /// port read from the frame.
    #[inline(always)]
    pub fn with_source(self, ctx: &XdpContext) -> Result<Packet, ParseError> {
        let src_words = match self.source {
            Source::Ipv4(offset) => {
                let mapped = addr_words(&ipv4_mapped([0; 4]));
                [
                    mapped[0],
                    mapped[1],
                    mapped[2],
                    u32::from_ne_bytes(bytes_at::<4>(ctx, offset)?),
                ]
            }
            Source::Ipv6(offset) => addr_words(&bytes_at::<16>(ctx, offset)?),
        };
        let src_port = bytes_at::<2>(ctx, self.header_at)?;
        Ok(Packet {
            src_words,
            src_port,
            l4: self,
        })
    }

    pub fn dst_port(&self) -> u16 {
        u16::from_be_bytes(self.dst_port)
    }

    /// Where the IP header starts, and whether it is IPv6.
    pub fn network(&self) -> (usize, bool) {
        match self.source {
            Source::Ipv4(at) => (at - IPV4_SOURCE, false),
            Source::Ipv6(at) => (at - IPV6_SOURCE, true),
        }
    }

    /// Whether the packet came over IPv6.
    #[inline(always)]
    pub fn is_ipv6(&self) -> bool {
        matches!(self.source, Source::Ipv6(_))
    }

    /// Where the TCP or UDP header starts.
    pub fn header_at(&self) -> usize {
        self.header_at
    }

    /// A TCP SYN without ACK, any UDP datagram, or an echo request: what
    /// knocks (and, but for echo requests, what opens a new connection).
    pub fn opens_connection(&self) -> bool {
        self.proto == IPPROTO_UDP
            || self.proto == IPPROTO_ICMP
            || self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }

    /// An ICMP or ICMPv6 echo request.
    pub fn is_echo(&self) -> bool {
        self.proto == IPPROTO_ICMP
    }
}

pub enum Parsed {
    NotIp,
    OtherProtocol,
    LaterFragment,
    Transport(Transport),
}

#[derive(Clone, Copy)]
pub enum ParseError {
    /// The frame ends before a header the filter needs.
    Truncated,
    /// An IP header with the wrong version or an impossible length.
    BadIpHeader,
    TooManyVlanTags,
    ExtHeaderChainTooLong,
}

impl ParseError {
    pub fn reason(self) -> Reason {
        match self {
            ParseError::Truncated | ParseError::BadIpHeader => Reason::DropMalformed,
            ParseError::TooManyVlanTags => Reason::DropTooManyVlanTags,
            ParseError::ExtHeaderChainTooLong => Reason::DropExtHeaderChainTooLong,
        }
    }
}

/// Copies `N` bytes at `offset` out of the packet, or fails if the frame is
/// shorter.
#[inline(always)]
pub fn bytes_at<const N: usize>(ctx: &XdpContext, offset: usize) -> Result<[u8; N], ParseError> {
    let start = ctx.data();
    let end = ctx.data_end();
    if offset > MAX_HEADER_OFFSET || start + offset + N > end {
        return Err(ParseError::Truncated);
    }
    // SAFETY: the check above proves [start + offset, start + offset + N)
    // lies inside the packet, and a byte array has alignment 1.
    Ok(unsafe { *((start + offset) as *const [u8; N]) })
}

/// Writes `bytes` into the packet at `offset`, or fails if the frame is
/// shorter.
#[inline(always)]
pub fn store_at<const N: usize>(
    ctx: &XdpContext,
    offset: usize,
    bytes: &[u8; N],
) -> Result<(), ParseError> {
    let start = ctx.data();
    let end = ctx.data_end();
    if offset > MAX_HEADER_OFFSET || start + offset + N > end {
        return Err(ParseError::Truncated);
    }
    // SAFETY: the check above proves [start + offset, start + offset + N)
    // lies inside the packet, which the program may write; alignment is 1.
    unsafe { *((start + offset) as *mut [u8; N]) = *bytes };
    Ok(())
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Parsed, ParseError> {
    let mut ethertype = u16::from_be_bytes(bytes_at::<2>(ctx, ETH_HEADER_LEN - 2)?);
    // Untagged IPv4 first: the common frame, with a constant offset.
    if ethertype == ETH_P_IPV4 {
        return parse_ipv4(ctx, ETH_HEADER_LEN);
    }
    let mut offset = ETH_HEADER_LEN;
    for _ in 0..MAX_VLAN_DEPTH {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        ethertype = u16::from_be_bytes(bytes_at::<2>(ctx, offset + 2)?);
        offset += VLAN_TAG_LEN;
    }
    match ethertype {
        ETH_P_IPV4 => parse_ipv4(ctx, offset),
        ETH_P_IPV6 => parse_ipv6(ctx, offset),
        ETH_P_8021Q | ETH_P_8021AD => Err(ParseError::TooManyVlanTags),
        _ => Ok(Parsed::NotIp),
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, offset: usize) -> Result<Parsed, ParseError> {
    let header = bytes_at::<IPV4_HEADER_LEN>(ctx, offset)?;
    let header_len = usize::from(header[0] & 0x0f) * 4;
    if header[0] >> 4 != 4 || header_len < IPV4_HEADER_LEN {
        return Err(ParseError::BadIpHeader);
    }
    if u16::from_be_bytes([header[6], header[7]]) & IPV4_FRAGMENT_OFFSET_MASK != 0 {
        return Ok(Parsed::LaterFragment);
    }
    let source = Source::Ipv4(offset + IPV4_SOURCE);
    let whole = header[6] & IPV4_MORE_FRAGMENTS == 0;
    let ip_end = offset + usize::from(u16::from_be_bytes([header[2], header[3]]));
    let network = Network {
        source,
        whole,
        ip_end,
        echo_request: (IPPROTO_ICMP, ICMP_ECHO_REQUEST),
    };
    parse_transport(ctx, offset + header_len, header[9], network)
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, offset: usize) -> Result<Parsed, ParseError> {
    let header = bytes_at::<IPV6_HEADER_LEN>(ctx, offset)?;
    if header[0] >> 4 != 6 {
        return Err(ParseError::BadIpHeader);
    }
    let source = Source::Ipv6(offset + IPV6_SOURCE);
    let ip_end = offset + IPV6_HEADER_LEN + usize::from(u16::from_be_bytes([header[4], header[5]]));
    let mut next_header = header[6];
    let mut offset = offset + IPV6_HEADER_LEN;
    let mut whole = true;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next_header {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_MOBILITY
            | IPPROTO_HIP | IPPROTO_SHIM6 => {
                let ext = bytes_at::<2>(ctx, offset)?;
                next_header = ext[0];
                offset += (usize::from(ext[1]) + 1) * 8;
            }
            IPPROTO_AH => {
                whole = false;
                let ext = bytes_at::<2>(ctx, offset)?;
                next_header = ext[0];
                offset += (usize::from(ext[1]) + 2) * 4;
            }
            IPPROTO_FRAGMENT => {
                let ext = bytes_at::<IPV6_FRAGMENT_HEADER_LEN>(ctx, offset)?;
                if u16::from_be_bytes([ext[2], ext[3]]) >> 3 != 0 {
                    return Ok(Parsed::LaterFragment);
                }
                whole = false;
                next_header = ext[0];
                offset += IPV6_FRAGMENT_HEADER_LEN;
            }
            _ => break,
        }
    }
    if is_ipv6_extension(next_header) {
        return Err(ParseError::ExtHeaderChainTooLong);
    }
    let network = Network {
        source,
        whole,
        ip_end,
        echo_request: (IPPROTO_ICMPV6, ICMPV6_ECHO_REQUEST),
    };
    parse_transport(ctx, offset, next_header, network)
}

/// What the IP layer tells the transport parser.
struct Network {
    source: Source,
    /// Not a fragment and not behind AH (see `Transport::whole`).
    whole: bool,
    /// Where the IP packet ends, by its own length field.
    ip_end: usize,
    /// The protocol and type of an echo request in this family.
    echo_request: (u8, u8),
}

#[inline(always)]
fn parse_transport(
    ctx: &XdpContext,
    offset: usize,
    proto: u8,
    network: Network,
) -> Result<Parsed, ParseError> {
    let (proto, dst_port, tcp_flags) = match proto {
        IPPROTO_TCP => {
            let header = bytes_at::<TCP_HEADER_LEN>(ctx, offset)?;
            (proto, [header[2], header[3]], header[13])
        }
        IPPROTO_UDP => {
            let header = bytes_at::<UDP_HEADER_LEN>(ctx, offset)?;
            (proto, [header[2], header[3]], 0)
        }
        _ if proto == network.echo_request.0 => match echo_size(ctx, offset, &network) {
            Some(size) => (IPPROTO_ICMP, size.to_be_bytes(), 0),
            None => return Ok(Parsed::OtherProtocol),
        },
        _ => return Ok(Parsed::OtherProtocol),
    };
    Ok(Parsed::Transport(Transport {
        proto,
        dst_port,
        tcp_flags,
        source: network.source,
        header_at: offset,
        whole: network.whole,
    }))
}

/// The payload size of a whole echo request whose ICMP header starts at
/// `offset`; `None` for any other ICMP message, a fragment, or lengths that
/// do not add up (such packets pass, as ICMP always did).
#[inline(always)]
fn echo_size(ctx: &XdpContext, offset: usize, network: &Network) -> Option<u16> {
    let header = bytes_at::<ICMP_HEADER_LEN>(ctx, offset).ok()?;
    if header[0] != network.echo_request.1 || header[1] != 0 || !network.whole {
        return None;
    }
    let size = network.ip_end.checked_sub(offset + ICMP_HEADER_LEN)?;
    u16::try_from(size).ok()
}
