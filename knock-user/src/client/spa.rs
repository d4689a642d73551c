//! The SPA request `xknock knock --spa` sends: fwknop's format, which
//! fwknopd accepts too.

use std::{net::IpAddr, time::SystemTime};

use crate::fwknop::{self, Proto, unix_seconds};

/// The SPA packet `xknock knock --spa` sends for `rule` (an `[[spa]]`
/// entry): an access request for every port it protects, for `allow_ip`,
/// or for the address the packet comes from (`0.0.0.0`, fwknop's `-s`).
pub fn request(
    rule: &crate::config::Rule,
    spa: &crate::config::spa::Spa,
    allow_ip: Option<IpAddr>,
    now: SystemTime,
) -> anyhow::Result<String> {
    let keys = spa.keys();
    let mut ports = Vec::with_capacity(rule.protect.len());
    for port in &rule.protect {
        let proto = match port.0.proto {
            knock_common::IPPROTO_TCP => Proto::Tcp,
            knock_common::IPPROTO_UDP => Proto::Udp,
            _ => anyhow::bail!("{port} cannot be asked for in an SPA request"),
        };
        ports.push((proto, port.0.port));
    }
    let addr = match allow_ip {
        None => std::net::Ipv4Addr::UNSPECIFIED,
        Some(IpAddr::V4(v4)) => v4,
        Some(IpAddr::V6(v6)) => anyhow::bail!(
            "fwknop's requests carry IPv4 addresses only; leave out --allow-ip and send from {v6} to be admitted by source"
        ),
    };
    let outgoing = fwknop::Outgoing {
        user: std::env::var("USER").unwrap_or_else(|_| "xknock".into()),
        timestamp: unix_seconds(now),
        access: fwknop::Access { addr, ports },
        client_timeout: None,
    };
    Ok(fwknop::seal(&outgoing, &keys)?)
}
