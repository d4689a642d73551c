//! The operator's commands against a pinned filter, whether or not a `run`
//! is alive: `status` (in [`status`]), and those that change its state from
//! outside: `grant`, `revoke`, `detach`; and their fleet-wide parts: a
//! revoke for every host, the fleet's hosts for `status`.

pub mod status;

use std::time::{Duration, SystemTime};

use ipnet::IpNet;

use status::{Pinned, StatusError};

use crate::{
    config::{Config, fleet::Fleet},
    fleet::{RevokeRecord, unix_ms},
    loader::{grant_from_now, grant_prefix, key_addr, pins::PinDir, read_instance},
};

/// `xknock grant`: admits `target` to rule `rule` for `duration` (the
/// rule's `open_for` if none): an address, whose prefix a rule with a
/// `grant_scope` admits, as a knock from it would; or a prefix of the
/// rule's scope. Returns what it admitted and for how long.
pub fn grant(
    pins: &PinDir,
    target: IpNet,
    rule: &str,
    duration: Option<Duration>,
) -> Result<(IpNet, Duration), StatusError> {
    let mut pinned = Pinned::open(pins)?;
    // Every index of a rule admits to the same ports.
    let index = pinned.rule_indexes(rule)?[0];
    let config = pinned.rule(index)?;
    let host_bits = u32::from(if target.addr().is_ipv4() {
        config.ipv4_host_bits
    } else {
        config.ipv6_host_bits
    });
    let asked = u32::from(target.max_prefix_len() - target.prefix_len());
    if asked != 0 && asked != host_bits {
        let scope = target.max_prefix_len() as u32 - host_bits;
        return Err(StatusError::Scope(format!(
            "rule `{rule}` grants /{scope} prefixes (its grant_scope), not a /{}: grant {} or a /{scope}",
            target.prefix_len(),
            target.network()
        )));
    }
    let duration = duration.unwrap_or_else(|| Duration::from_nanos(config.open_for_ns));
    let key = pinned
        .maps
        .grant(&key_addr(target.network()), index, grant_from_now(duration))?;
    Ok((grant_prefix(&key), duration))
}

/// `xknock revoke`: removes the grants that admit `target`, an address, or
/// that meet it, a prefix (of `rule` only, if given) and, with `flows`,
/// the connections they admitted; returns how many of each.
pub fn revoke(
    pins: &PinDir,
    target: IpNet,
    rule: Option<&str>,
    flows: bool,
) -> Result<(usize, usize), StatusError> {
    let mut pinned = Pinned::open(pins)?;
    let indexes = rule.map(|r| pinned.rule_indexes(r)).transpose()?;
    Ok(pinned.maps.revoke(
        &key_addr(target.network()),
        u32::from(target.max_prefix_len() - target.prefix_len()),
        indexes.as_deref(),
        flows,
    )?)
}

/// `xknock detach`: takes the filter off every interface and removes its
/// pins; false when nothing was pinned there.
pub fn detach(pins: &PinDir) -> Result<bool, StatusError> {
    if !pins.root().exists() {
        return Ok(false);
    }
    let _owner = pins.own_any_layout()?;
    let had_links = !pins.links()?.is_empty() || read_instance(pins).ok().flatten().is_some();
    pins.remove()?;
    Ok(had_links)
}

/// `xknock revoke` on a fleet's other hosts: records the revoke in etcd
/// (they remove the grants, and the flows with `flows`); returns how many
/// of the fleet's grant keys it removed.
pub fn revoke_fleet(
    fleet: &Fleet,
    target: IpNet,
    rule: Option<&str>,
    flows: bool,
) -> Result<usize, String> {
    crate::fleet::revoke(
        fleet,
        &RevokeRecord {
            addr: target.network(),
            prefix_len: (target.prefix_len() < target.max_prefix_len())
                .then_some(target.prefix_len()),
            rule: rule.map(str::to_owned),
            flows,
            at_ms: unix_ms(SystemTime::now()),
            node: fleet.node.clone(),
        },
    )
}

/// The fleet's hosts, for `status`: each host's name, version, and whether
/// its rules are this configuration's.
#[derive(Debug, serde::Serialize)]
pub struct FleetHosts {
    pub prefix: String,
    /// This configuration's fingerprint.
    pub fingerprint: String,
    pub hosts: Vec<FleetHost>,
    /// Why the hosts could not be read, if they could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, serde::Serialize)]
pub struct FleetHost {
    pub node: String,
    pub version: String,
    pub fingerprint: String,
    /// Whether its configuration's rules differ from this one's.
    pub differs: bool,
    /// Seconds since its last heartbeat.
    pub seen_secs_ago: f64,
}

impl FleetHosts {
    /// Reads the hosts of `config`'s fleet from etcd.
    pub fn read(config: &Config, fleet: &Fleet) -> FleetHosts {
        let fingerprint = crate::fleet::fingerprint(config);
        let now = unix_ms(SystemTime::now());
        let (hosts, error) = match crate::fleet::hosts(fleet) {
            Ok(nodes) => (
                nodes
                    .into_iter()
                    .map(|node| FleetHost {
                        differs: node.fingerprint != fingerprint,
                        seen_secs_ago: now.saturating_sub(node.at_ms) as f64 / 1000.0,
                        node: node.node,
                        version: node.version,
                        fingerprint: node.fingerprint,
                    })
                    .collect(),
                None,
            ),
            Err(error) => (Vec::new(), Some(error)),
        };
        FleetHosts {
            prefix: fleet.prefix.clone(),
            fingerprint,
            hosts,
            error,
        }
    }

    pub fn render_text(&self) -> String {
        let mut text = format!(
            "fleet {} (this configuration: {}):\n",
            self.prefix, self.fingerprint
        );
        if let Some(error) = &self.error {
            text += &format!("  etcd unreachable: {error}\n");
        }
        for host in &self.hosts {
            text += &format!(
                "  {} xknock {} rules {}{} (seen {:.1}s ago)\n",
                host.node,
                host.version,
                host.fingerprint,
                if host.differs {
                    " DIFFERENT CONFIGURATION"
                } else {
                    ""
                },
                host.seen_secs_ago
            );
        }
        text
    }
}
