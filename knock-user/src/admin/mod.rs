//! The operator's commands against a pinned filter, whether or not a `run`
//! is alive: `status` (in [`status`]), and those that change its state from
//! outside: `grant`, `revoke`, `detach`.

pub mod status;

use std::{net::IpAddr, time::Duration};

use status::{Pinned, StatusError};

use crate::loader::{key_addr, monotonic_ns, pins::PinDir, read_instance};

/// `xknock grant`: admits `addr` to rule `rule` for `duration` (the rule's
/// `open_for` if none); returns the duration granted.
pub fn grant(
    pins: &PinDir,
    addr: IpAddr,
    rule: &str,
    duration: Option<Duration>,
) -> Result<Duration, StatusError> {
    let mut pinned = Pinned::open(pins)?;
    // Every index of a rule admits to the same ports.
    let index = pinned.rule_indexes(rule)?[0];
    let duration = duration
        .unwrap_or_else(|| Duration::from_nanos(pinned.rule(index).map_or(0, |r| r.open_for_ns)));
    let expires_ns = monotonic_ns().saturating_add(duration.as_nanos() as u64);
    pinned.maps.grant(&key_addr(addr), index, expires_ns)?;
    Ok(duration)
}

/// `xknock revoke`: removes `addr`'s grants (of `rule` only, if given) and,
/// with `flows`, the connections they admitted; returns how many of each.
pub fn revoke(
    pins: &PinDir,
    addr: IpAddr,
    rule: Option<&str>,
    flows: bool,
) -> Result<(usize, usize), StatusError> {
    let mut pinned = Pinned::open(pins)?;
    let indexes = rule.map(|r| pinned.rule_indexes(r)).transpose()?;
    Ok(pinned
        .maps
        .revoke(&key_addr(addr), indexes.as_deref(), flows)?)
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
