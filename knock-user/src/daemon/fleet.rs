//! The daemon's side of the fleet: what this host's kernel grants goes to
//! the session to publish, what the fleet grants and revokes comes back
//! into the kernel's maps, and each of them becomes an event line. The
//! kernel's clock is not the wall clock: expiries cross over as "this far
//! from now" on each side.

use std::{net::IpAddr, time::SystemTime};

use crate::{
    config::Config,
    daemon::events::{Record, RecordKind, RuleBook},
    fleet::{self, Change, FleetLink, FromFleet, LocalGrant, ToFleet, unix_ms},
    loader::{
        key_addr,
        maps::{Maps, MapsError, display_addr},
        monotonic_ns,
    },
};

/// Following the fleet, for `run`.
pub struct Following {
    link: FleetLink,
    node: String,
}

/// What a grant came from, as published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Knock,
    Spa,
    /// Found in the kernel, not seen made (`xknock grant`, a knock while no
    /// `run` followed, one made while the fleet was away).
    Found,
}

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::Knock => "knock",
            Via::Spa => "spa",
            Via::Found => "local",
        }
    }
}

/// Milliseconds on the wall clock when the kernel's clock reads `kernel_ns`.
fn wall_ms(kernel_ns: u64, now_ms: u64, now_ns: u64) -> u64 {
    if kernel_ns >= now_ns {
        now_ms.saturating_add((kernel_ns - now_ns) / 1_000_000)
    } else {
        now_ms.saturating_sub((now_ns - kernel_ns) / 1_000_000)
    }
}

/// The kernel's clock when the wall clock reads `wall`, if that is still
/// ahead.
fn kernel_ns(wall: u64, now_ms: u64, now_ns: u64) -> Option<u64> {
    (wall > now_ms).then(|| now_ns.saturating_add((wall - now_ms).saturating_mul(1_000_000)))
}

impl Following {
    /// Starts following the fleet `config` names, if it names one.
    pub fn start(config: &Config) -> Option<Following> {
        let fleet = config.fleet.as_ref()?;
        log::info!(
            "fleet: node {} of {} on {}",
            fleet.node,
            fleet.prefix,
            fleet.endpoints.join(", ")
        );
        Some(Following {
            link: fleet::start(fleet, config),
            node: fleet.node.clone(),
        })
    }

    /// The session's state, for metrics.
    pub fn status(&self) -> std::sync::Arc<fleet::FleetStatus> {
        std::sync::Arc::clone(&self.link.status)
    }

    /// The next message from the session.
    pub async fn next(&mut self) -> Option<FromFleet> {
        self.link.from_fleet.recv().await
    }

    /// A grant this host just made, until `expires_ns` (kernel clock).
    pub fn granted(&self, addr: IpAddr, rule: &str, expires_ns: u64, via: Via) {
        let now_ms = unix_ms(SystemTime::now());
        let grant = LocalGrant {
            addr,
            rule: rule.to_owned(),
            expires_ms: wall_ms(expires_ns, now_ms, monotonic_ns()),
            granted_ms: now_ms,
            via: via.name(),
        };
        drop(self.link.to_fleet.send(ToFleet::Granted(grant)));
    }

    /// This host's live grants, for the session to set beside the fleet's.
    pub fn sweep(&self, maps: &Maps, rules: &RuleBook, config: &Config) -> Result<(), MapsError> {
        let (now_ms, now_ns) = (unix_ms(SystemTime::now()), monotonic_ns());
        let grants = maps
            .grants()?
            .into_iter()
            .filter(|(_, grant)| grant.expires_ns > now_ns)
            .filter_map(|(key, grant)| {
                let (name, _) = rules.get(key.rule)?;
                let open_for = config.rules.iter().find(|r| r.name == name)?.open_for;
                let expires_ms = wall_ms(grant.expires_ns, now_ms, now_ns);
                let open_for_ms = u64::try_from(open_for.as_millis()).unwrap_or(u64::MAX);
                Some(LocalGrant {
                    addr: display_addr(&key.addr),
                    rule: name.to_owned(),
                    expires_ms,
                    granted_ms: expires_ms.saturating_sub(open_for_ms).min(now_ms),
                    via: Via::Found.name(),
                })
            })
            .collect();
        drop(self.link.to_fleet.send(ToFleet::Local(grants)));
        Ok(())
    }

    /// Carries out what the session says in `maps` (rules placed at
    /// `slots`); returns the line to print, if any.
    pub fn apply(
        &self,
        message: FromFleet,
        maps: &mut Maps,
        config: &Config,
        slots: &[Vec<u32>],
    ) -> Result<Option<Record>, MapsError> {
        let indexes = |name: &str| {
            config
                .rules
                .iter()
                .position(|r| r.name == name)
                .and_then(|i| slots.get(i))
        };
        match message {
            FromFleet::Online { endpoint, revision } => {
                let mut record = Record::new(RecordKind::FleetOnline, None);
                record.endpoint = Some(endpoint);
                record.revision = Some(revision);
                Ok(Some(record))
            }
            FromFleet::Offline { reason } => {
                let mut record = Record::new(RecordKind::FleetOffline, None);
                record.detail = Some(format!(
                    "{reason}; enforcing what this host knows, opening only on its own decisions"
                ));
                Ok(Some(record))
            }
            FromFleet::Change(Change::Plant(grant)) => {
                let Some(&index) = indexes(&grant.rule).and_then(|parts| parts.first()) else {
                    log::warn!(
                        "fleet: {} granted {} rule `{}`, which this host's configuration does not have",
                        grant.node,
                        grant.addr,
                        grant.rule
                    );
                    return Ok(None);
                };
                let (now_ms, now_ns) = (unix_ms(SystemTime::now()), monotonic_ns());
                let Some(expires_ns) = kernel_ns(grant.expires_ms, now_ms, now_ns) else {
                    return Ok(None);
                };
                let addr = key_addr(grant.addr);
                // A grant the kernel holds longer stays as it is.
                if maps
                    .grant_expiry(&addr, index)?
                    .is_some_and(|held| held >= expires_ns)
                {
                    return Ok(None);
                }
                maps.grant(&addr, index, expires_ns)?;
                if grant.node == self.node {
                    return Ok(None);
                }
                let mut record = Record::new(RecordKind::FleetGrant, Some(grant.addr));
                record.rule = Some(grant.rule);
                record.node = Some(grant.node);
                record.expires_in_secs =
                    Some(((grant.expires_ms - now_ms) as f64 / 100.0).round() / 10.0);
                Ok(Some(record))
            }
            FromFleet::Change(Change::Remove(revoke)) => {
                let rules = match &revoke.rule {
                    Some(name) => match indexes(name) {
                        Some(parts) => Some(parts.as_slice()),
                        None => return Ok(None),
                    },
                    None => None,
                };
                let (grants, flows) = maps.revoke(&key_addr(revoke.addr), rules, revoke.flows)?;
                if grants == 0 && flows == 0 && revoke.node == self.node {
                    return Ok(None);
                }
                let mut record = Record::new(RecordKind::FleetRevoke, Some(revoke.addr));
                record.rule = revoke.rule;
                record.node = Some(revoke.node);
                record.detail = Some(format!("{grants} grant(s), {flows} flow(s) removed"));
                Ok(Some(record))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries_cross_between_the_clocks_as_time_left() {
        let (now_ms, now_ns) = (1_700_000_000_000, 5_000_000_000);
        assert_eq!(
            wall_ms(now_ns + 60_000_000_000, now_ms, now_ns),
            now_ms + 60_000
        );
        assert_eq!(
            wall_ms(now_ns - 1_000_000_000, now_ms, now_ns),
            now_ms - 1_000
        );
        assert_eq!(
            kernel_ns(now_ms + 60_000, now_ms, now_ns),
            Some(now_ns + 60_000_000_000)
        );
        assert_eq!(kernel_ns(now_ms, now_ms, now_ns), None, "over already");
    }
}
