//! The values a configuration file is written with: steps and ports
//! (`tcp:22`), durations (`10s`), address prefixes (`192.0.2.0/24`).

use std::{fmt, net::IpAddr, str::FromStr, time::Duration};

use ipnet::IpNet;
use knock_common::{Addr, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Knock, ipv4_mapped};
use serde::{Deserialize, Deserializer, de};

/// Largest payload of an ICMP knock: what one unfragmented ICMPv6 echo
/// request carries in a 1500-byte MTU (the filter cannot size a fragmented
/// one, and `ping -s` beyond it fragments).
pub const MAX_ICMP_KNOCK_SIZE: u16 = 1500 - 40 - 8;

/// A knock step or protected port written `tcp:PORT` or `udp:PORT`, or a
/// knock step `icmp:SIZE`: an echo request (ICMP or ICMPv6) with SIZE bytes
/// of payload, as `ping -s SIZE` sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortSpec(pub Knock);

impl PortSpec {
    /// An ICMP echo step, which knocks but has nothing to protect.
    pub fn is_icmp(&self) -> bool {
        self.0.proto == IPPROTO_ICMP
    }
}

impl FromStr for PortSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (proto, number) = s
            .split_once(':')
            .ok_or_else(|| format!("`{s}` is not of the form tcp:PORT, udp:PORT or icmp:SIZE"))?;
        if proto == "icmp" {
            let size = number
                .parse::<u16>()
                .ok()
                .filter(|&size| size <= MAX_ICMP_KNOCK_SIZE)
                .ok_or_else(|| {
                    format!(
                        "`{number}` in `{s}` is not an echo payload size (0-{MAX_ICMP_KNOCK_SIZE}, what fits one unfragmented packet)"
                    )
                })?;
            return Ok(PortSpec(Knock::icmp(size)));
        }
        let port: u16 = number
            .parse()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("`{number}` in `{s}` is not a port (1-65535)"))?;
        match proto {
            "tcp" => Ok(PortSpec(Knock::tcp(port))),
            "udp" => Ok(PortSpec(Knock::udp(port))),
            _ => Err(format!(
                "`{proto}` in `{s}` is not a protocol (tcp, udp or icmp)"
            )),
        }
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.0.proto {
            IPPROTO_TCP => "tcp",
            IPPROTO_UDP => "udp",
            IPPROTO_ICMP => "icmp",
            _ => "?",
        };
        write!(f, "{proto}:{}", self.0.port)
    }
}

/// Parses "500ms", "10s", "5m", "1h" (and combinations such as "1h 30m").
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration such as 500ms, 10s, 5m or 1h ({e})"))?;
    if duration.is_zero() {
        return Err(format!("`{s}` is zero; it must be longer"));
    }
    Ok(duration)
}

fn from_str_de<'de, D: Deserializer<'de>, T, E: fmt::Display>(
    deserializer: D,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, D::Error> {
    let s = String::deserialize(deserializer)?;
    parse(&s).map_err(de::Error::custom)
}

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_str_de(deserializer, str::parse)
    }
}

/// A duration as written in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_str_de(deserializer, parse_duration).map(ConfigDuration)
    }
}

/// An allow/deny entry: an address or a CIDR prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix(pub IpNet);

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_str_de(deserializer, |s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map(|net| Prefix(net.trunc()))
                .map_err(|_| format!("`{s}` is not an address or CIDR prefix"))
        })
    }
}

impl Prefix {
    /// An IPv6 prefix wide enough to hold ::ffff:0:0/96, where IPv4 lives.
    #[expect(
        clippy::expect_used,
        reason = "an invariant: ::ffff:0:0/96 is a valid prefix"
    )]
    pub fn covers_all_ipv4(&self) -> bool {
        let IpNet::V6(net) = self.0 else {
            return false;
        };
        let ipv4_space = ipnet::Ipv6Net::new(ipv4_mapped([0; 4]).into(), 96).expect("valid");
        net.contains(&ipv4_space)
    }

    /// Whether `addr` falls in the prefix (IPv4 as `::ffff:a.b.c.d`).
    pub fn contains(&self, addr: IpAddr) -> bool {
        let (len, prefix) = self.mapped();
        let addr = match addr {
            IpAddr::V4(v4) => ipv4_mapped(v4.octets()),
            IpAddr::V6(v6) => v6.octets(),
        };
        let len = len.min(128);
        let (prefix, addr) = (u128::from_be_bytes(prefix), u128::from_be_bytes(addr));
        let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
        prefix & mask == addr & mask
    }

    /// The prefix in the one key form: IPv4 mapped into IPv6.
    pub fn mapped(&self) -> (u32, Addr) {
        match self.0 {
            IpNet::V4(net) => (
                u32::from(net.prefix_len()) + 96,
                ipv4_mapped(net.addr().octets()),
            ),
            IpNet::V6(net) => (u32::from(net.prefix_len()), net.addr().octets()),
        }
    }
}

/// `grant_scope`: the prefix of the knocking (or named) address a grant
/// admits, per family. The defaults admit the address alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrantScope {
    pub ipv4: u8,
    pub ipv6: u8,
}

impl Default for GrantScope {
    fn default() -> Self {
        GrantScope {
            ipv4: 32,
            ipv6: 128,
        }
    }
}

impl GrantScope {
    /// The host bits its grants leave out: IPv4, IPv6 (what the kernel
    /// keeps; lengths are checked before).
    pub fn host_bits(&self) -> (u32, u32) {
        (
            32u32.saturating_sub(u32::from(self.ipv4)),
            128u32.saturating_sub(u32::from(self.ipv6)),
        )
    }

    /// Whether it admits more than the address, in either family.
    pub fn is_wider(&self) -> bool {
        self.host_bits() != (0, 0)
    }
}
