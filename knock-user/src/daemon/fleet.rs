//! The daemon's side of the fleet: what this host's kernel grants goes to
//! the session to publish, what the fleet grants and revokes comes back
//! into the kernel's maps, and each of them becomes an event line. The
//! kernel's clock is not the wall clock: expiries cross over as "this far
//! from now" on each side.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use ipnet::IpNet;
use knock_common::{Addr, Event, Grant};

use crate::{
    config::{Config, RuleKind, fleet::OfflineSpend},
    daemon::{
        events::{Record, RecordKind, RuleBook, now_rfc3339, seconds_until},
        spa::{SpaGrant, SpaRefusal, Verdict},
    },
    fleet::{
        self, Change, FleetLink, FromFleet, LocalGrant, RevokeRecord, SpendOutcome, SpendRecord,
        Spent, ToFleet, unix_ms,
    },
    fwknop::unix_seconds,
    loader::{
        grant_from_now, grant_prefix, key_addr,
        maps::{Maps, MapsError, display_addr},
        monotonic_ns,
    },
};

/// Following the fleet, for `run`.
pub struct Following {
    link: FleetLink,
    node: String,
    offline_spend: OfflineSpend,
    /// Spends asked of the fleet and not yet answered, by ticket.
    pending: HashMap<u64, Pending>,
    next_ticket: u64,
}

/// What waits for the fleet to record a spend.
enum Pending {
    /// A completed sequence the kernel held (`EventKind::Held`).
    Sequence {
        /// The `held` line, which becomes a `grant` or a `reset`.
        record: Box<Record>,
        addr: Addr,
        rule: u32,
        tag: u32,
        grant: Grant,
    },
    /// An SPA packet that checked out, from `source` to `port`.
    Spa {
        grant: SpaGrant,
        source: Addr,
        port: u16,
        granted: Grant,
    },
}

/// What the daemon does after a message of the fleet: lines to print, and
/// the one-time rule whose line was spent (marked used, the next put in
/// place), if any.
#[derive(Default)]
pub struct Applied {
    pub records: Vec<Record>,
    pub one_time: Option<String>,
}

impl Applied {
    fn record(record: Record) -> Applied {
        Applied {
            records: vec![record],
            one_time: None,
        }
    }
}

/// What `apply` changes: the running filter's maps, the configuration it
/// runs and where its rules are placed.
pub struct Target<'a> {
    pub maps: &'a mut Maps,
    pub config: &'a Config,
    pub slots: &'a [Vec<u32>],
}

impl<'a> Target<'a> {
    /// The rule indexes of the rule `name`, if the configuration has it.
    fn indexes(&self, name: &str) -> Option<&'a [u32]> {
        let position = self.config.rules.iter().position(|r| r.name == name)?;
        self.slots.get(position).map(Vec::as_slice)
    }
}

/// How long a spend is kept in etcd: an SPA packet's for twice its
/// `max_age`; a rotating window's while it and the one after it are live;
/// a one-time line's a week (every host marks it used in its file meanwhile).
fn spend_ttl(config: &Config, rule: &str) -> Duration {
    match config
        .rules
        .iter()
        .find(|r| r.name == rule)
        .map(|r| &r.kind)
    {
        Some(RuleKind::Rotating(rotating)) => rotating.rotate * 3,
        Some(RuleKind::Spa(spa)) => spa.max_age * 2,
        _ => Duration::from_secs(7 * 24 * 3600),
    }
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

/// The wall clock and the kernel's, read together: times cross between
/// them as "this far from now".
#[derive(Clone, Copy, Debug)]
struct Clocks {
    wall_ms: u64,
    kernel_ns: u64,
}

impl Clocks {
    fn now() -> Clocks {
        Clocks {
            wall_ms: unix_ms(SystemTime::now()),
            kernel_ns: monotonic_ns(),
        }
    }

    /// The wall clock (Unix ms) when the kernel's reads `kernel_ns`.
    fn wall(self, kernel_ns: u64) -> u64 {
        if kernel_ns >= self.kernel_ns {
            self.wall_ms
                .saturating_add((kernel_ns - self.kernel_ns) / 1_000_000)
        } else {
            self.wall_ms
                .saturating_sub((self.kernel_ns - kernel_ns) / 1_000_000)
        }
    }

    /// The kernel's clock when the wall clock reads `wall_ms`, past or ahead.
    fn kernel(self, wall_ms: u64) -> u64 {
        if wall_ms >= self.wall_ms {
            self.kernel_ns
                .saturating_add((wall_ms - self.wall_ms).saturating_mul(1_000_000))
        } else {
            self.kernel_ns
                .saturating_sub((self.wall_ms - wall_ms).saturating_mul(1_000_000))
        }
    }
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
            offline_spend: fleet.offline_spend,
            pending: HashMap::new(),
            next_ticket: 0,
        })
    }

    /// Asks the fleet to record `spent`, for `pending`.
    fn spend(&mut self, spent: Spent, ttl: Duration, pending: Pending) {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.pending.insert(ticket, pending);
        drop(
            self.link
                .to_fleet
                .send(ToFleet::Spend { ticket, spent, ttl }),
        );
    }

    /// A sequence the kernel held (`record` of `event`): it opens once the
    /// fleet has recorded it spent.
    pub fn hold_sequence(
        &mut self,
        record: Record,
        event: &Event,
        maps: &Maps,
        config: &Config,
    ) -> Result<(), MapsError> {
        let rule = u32::from(event.rule);
        let rules = maps.rules()?;
        let (tag, open_for) = rules
            .get(rule as usize)
            .map_or((0, 0), |r| (r.sequence_tag, r.open_for_ns));
        let Some(name) = record.rule.clone() else {
            return Ok(());
        };
        let pending = Pending::Sequence {
            record: Box::new(record),
            addr: event.addr,
            rule,
            tag,
            // Made when the last step came, as the kernel would have.
            grant: Grant {
                expires_ns: event.expires_ns,
                granted_ns: event.expires_ns.saturating_sub(open_for),
            },
        };
        self.spend(
            Spent::Sequence {
                rule: name.clone(),
                tag,
            },
            spend_ttl(config, &name),
            pending,
        );
        Ok(())
    }

    /// An SPA packet (`payload`) that checked out: it opens once the fleet
    /// has recorded it spent.
    pub fn hold_spa(
        &mut self,
        grant: SpaGrant,
        source: Addr,
        port: u16,
        payload: &[u8],
        config: &Config,
    ) {
        let ttl = spend_ttl(config, &grant.rule);
        let pending = Pending::Spa {
            granted: grant_from_now(grant.open_for),
            grant,
            source,
            port,
        };
        self.spend(
            Spent::spa(&crate::fwknop::replay_key(payload)),
            ttl,
            pending,
        );
    }

    /// The configuration now running (a reload): the fleet is told its
    /// fingerprint.
    pub fn reconfigured(&self, config: &Config) {
        let print = fleet::fingerprint(config);
        drop(self.link.to_fleet.send(ToFleet::Fingerprint(print)));
    }

    /// The session's state, for metrics.
    pub fn status(&self) -> std::sync::Arc<fleet::FleetStatus> {
        std::sync::Arc::clone(&self.link.status)
    }

    /// The next message from the session.
    pub async fn next(&mut self) -> Option<FromFleet> {
        self.link.from_fleet.recv().await
    }

    /// A grant this host just made (kernel clock), of an address or a
    /// prefix.
    pub fn granted(&self, granted: IpNet, rule: &str, grant: Grant, via: Via) {
        let clocks = Clocks::now();
        let grant = LocalGrant {
            addr: granted.network(),
            prefix_len: prefix_len(granted),
            rule: rule.to_owned(),
            expires_ms: clocks.wall(grant.expires_ns),
            granted_ms: clocks.wall(grant.granted_ns),
            via: via.name(),
        };
        drop(self.link.to_fleet.send(ToFleet::Granted(grant)));
    }

    /// This host's live grants, for the session to set beside the fleet's.
    pub fn sweep(&self, maps: &Maps, rules: &RuleBook) -> Result<(), MapsError> {
        let clocks = Clocks::now();
        let grants = maps
            .grants()?
            .into_iter()
            .filter(|(_, grant)| grant.expires_ns > clocks.kernel_ns)
            .filter_map(|(key, grant)| {
                let (name, _) = rules.get(key.rule_index())?;
                Some(LocalGrant {
                    addr: display_addr(&key.addr),
                    prefix_len: prefix_len(grant_prefix(&key)),
                    rule: name.to_owned(),
                    expires_ms: clocks.wall(grant.expires_ns),
                    granted_ms: clocks.wall(grant.granted_ns),
                    via: Via::Found.name(),
                })
            })
            .collect();
        drop(self.link.to_fleet.send(ToFleet::Local(grants)));
        Ok(())
    }

    /// Carries out what the session says in `target`.
    pub fn apply(&mut self, message: FromFleet, target: Target<'_>) -> Result<Applied, MapsError> {
        match message {
            FromFleet::Spent { ticket, outcome } => match self.pending.remove(&ticket) {
                Some(pending) => self.spent(pending, outcome, target),
                None => Ok(Applied::default()),
            },
            FromFleet::SpentElsewhere(spend) => spent_elsewhere(&spend, target),
            other => Ok(Applied {
                records: self.change(other, target)?.into_iter().collect(),
                one_time: None,
            }),
        }
    }

    /// What a recorded, taken or unrecorded spend does.
    #[expect(
        clippy::unreachable,
        reason = "a recorded spend is the opening branch, matched first"
    )]
    fn spent(
        &self,
        pending: Pending,
        outcome: SpendOutcome,
        target: Target<'_>,
    ) -> Result<Applied, MapsError> {
        let opens = match &outcome {
            SpendOutcome::Recorded => true,
            SpendOutcome::Unrecorded { .. } => self.offline_spend == OfflineSpend::Local,
            SpendOutcome::Taken { .. } => false,
        };
        match pending {
            Pending::Sequence {
                mut record,
                addr,
                rule,
                tag,
                grant,
            } => {
                let name = record.rule.clone();
                let mut one_time = name.clone();
                // Said now, when it is decided.
                record.time = now_rfc3339();
                if opens {
                    let key = target.maps.grant(&addr, rule, grant)?;
                    if let Some(name) = &name {
                        self.granted(grant_prefix(&key), name, grant, Via::Knock);
                    }
                    record.granted = (key.host_bits() > 0).then(|| grant_prefix(&key));
                    record.event = RecordKind::Grant;
                    record.expires_in_secs = Some(seconds_until(grant.expires_ns));
                } else {
                    record.event = RecordKind::Reset;
                    record.expires_in_secs = None;
                    record.steps = None;
                    match outcome {
                        SpendOutcome::Recorded => unreachable!("a recorded spend opens"),
                        SpendOutcome::Taken { node } => {
                            record.reason = Some("spent");
                            record.detail = Some(format!("opened on {node} first"));
                        }
                        SpendOutcome::Unrecorded { reason } => {
                            // Not spent after all: the client may knock it
                            // again once the fleet can record it.
                            target.maps.unspend(rule, tag)?;
                            one_time = None;
                            record.reason = Some("fleet_unreachable");
                            record.detail = Some(format!("{reason}; offline_spend = \"refuse\""));
                        }
                    }
                }
                Ok(Applied {
                    records: vec![*record],
                    one_time: one_time.filter(|_| {
                        target
                            .config
                            .rules
                            .iter()
                            .any(|r| Some(&r.name) == name.as_ref() && r.one_time().is_some())
                    }),
                })
            }
            Pending::Spa {
                grant,
                source,
                port,
                granted,
            } => {
                let mut admitted = None;
                let verdict = if opens {
                    let key = target
                        .maps
                        .grant(&key_addr(grant.addr), grant.index, granted)?;
                    self.granted(grant_prefix(&key), &grant.rule, granted, Via::Spa);
                    admitted = Some(key);
                    Verdict::Grant(grant)
                } else {
                    let (reason, detail) = match outcome {
                        SpendOutcome::Recorded => unreachable!("a recorded spend opens"),
                        SpendOutcome::Taken { node } => {
                            (SpaRefusal::Replay, format!("accepted on {node} before"))
                        }
                        SpendOutcome::Unrecorded { reason } => (
                            SpaRefusal::FleetUnreachable,
                            format!("{reason}; offline_spend = \"refuse\""),
                        ),
                    };
                    Verdict::Refuse {
                        rule: Some(grant.rule),
                        reason,
                        detail,
                    }
                };
                let mut record = Record::spa(&verdict, &source, port);
                record.granted = admitted
                    .filter(|key| key.host_bits() > 0)
                    .map(|key| grant_prefix(&key));
                Ok(Applied::record(record))
            }
        }
    }

    /// A grant, a revoke, or the fleet coming or going.
    fn change(&self, message: FromFleet, target: Target<'_>) -> Result<Option<Record>, MapsError> {
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
                let Some(&index) = target.indexes(&grant.rule).and_then(|parts| parts.first())
                else {
                    log::warn!(
                        "fleet: {} granted {} rule `{}`, which this host's configuration does not have",
                        grant.node,
                        grant.addr,
                        grant.rule
                    );
                    return Ok(None);
                };
                let clocks = Clocks::now();
                if grant.expires_ms <= clocks.wall_ms {
                    return Ok(None);
                }
                let expires_ns = clocks.kernel(grant.expires_ms);
                let addr = key_addr(grant.addr);
                // Planted only as this host's rule scopes it: a grant of
                // another prefix length (the hosts' rules differ, which
                // `status` flags) would widen or miss what was granted.
                let ours = grant_prefix(&target.maps.grant_key(&addr, index)?);
                if ours != grant.net() {
                    log::warn!(
                        "fleet: {} granted {} rule `{}`, which this host's rule grants as {ours} (grant_scope differs): not planted here",
                        grant.node,
                        grant.net(),
                        grant.rule
                    );
                    return Ok(None);
                }
                let held = target.maps.grant_of(&addr, index)?;
                // A grant the kernel holds longer stays as it is. One of this
                // host's own that its kernel no longer holds was revoked or
                // swept here: its echo (a publish still on its way when a
                // local revoke removed it) does not bring it back.
                let own = grant.node == self.node;
                if held.is_some_and(|held| held.expires_ns >= expires_ns) || (own && held.is_none())
                {
                    return Ok(None);
                }
                let planted = Grant {
                    expires_ns,
                    granted_ns: clocks.kernel(grant.granted_ms),
                };
                let key = target.maps.grant(&addr, index, planted)?;
                if grant.node == self.node {
                    return Ok(None);
                }
                let mut record = Record::new(RecordKind::FleetGrant, Some(grant.addr));
                record.granted = (key.host_bits() > 0).then(|| grant_prefix(&key));
                record.rule = Some(grant.rule);
                record.node = Some(grant.node);
                record.expires_in_secs =
                    Some(((grant.expires_ms - clocks.wall_ms) as f64 / 100.0).round() / 10.0);
                Ok(Some(record))
            }
            FromFleet::Change(Change::Remove(revoke)) => self.revoked(revoke, u64::MAX, target),
            FromFleet::Change(Change::Undo(revoke)) => {
                let granted_by = Clocks::now().kernel(revoke.at_ms);
                self.revoked(revoke, granted_by, target)
            }
            FromFleet::Spent { .. } | FromFleet::SpentElsewhere(_) => Ok(None),
        }
    }

    /// Carries out `revoke` for the grants made at `granted_by` (kernel
    /// clock) or before.
    fn revoked(
        &self,
        revoke: RevokeRecord,
        granted_by: u64,
        target: Target<'_>,
    ) -> Result<Option<Record>, MapsError> {
        let rules = match &revoke.rule {
            Some(name) => match target.indexes(name) {
                Some(parts) => Some(parts),
                None => return Ok(None),
            },
            None => None,
        };
        let net = revoke.net();
        let (grants, flows) = target.maps.revoke_granted_by(
            &key_addr(net.network()),
            u32::from(net.max_prefix_len() - net.prefix_len()),
            rules,
            revoke.flows,
            granted_by,
        )?;
        if grants == 0 && flows == 0 && revoke.node == self.node {
            return Ok(None);
        }
        let mut record = Record::new(RecordKind::FleetRevoke, Some(revoke.addr));
        record.granted = revoke.prefix_len.map(|_| net);
        record.rule = revoke.rule;
        record.node = Some(revoke.node);
        record.detail = Some(format!("{grants} grant(s), {flows} flow(s) removed"));
        Ok(Some(record))
    }
}

/// Another host spent an SPA packet or a sequence: this one refuses it too,
/// and a one-time rule whose line it was moves to its next line.
fn spent_elsewhere(spend: &SpendRecord, target: Target<'_>) -> Result<Applied, MapsError> {
    match &spend.spent {
        Spent::Spa { .. } => {
            let Some(key) = spend.spent.spa_digest() else {
                return Ok(Applied::default());
            };
            let longest = target
                .config
                .rules
                .iter()
                .filter_map(|r| Some(r.spa()?.max_age))
                .max()
                .unwrap_or_default();
            let until = u64::try_from(unix_seconds(SystemTime::now()))
                .unwrap_or(0)
                .saturating_add(longest.as_secs());
            target.maps.remember_replay(&key, until)?;
            Ok(Applied::default())
        }
        Spent::Sequence { rule, tag } => {
            let Some(parts) = target.indexes(rule) else {
                return Ok(Applied::default());
            };
            let now = monotonic_ns();
            for &index in parts {
                target.maps.mark_spent(index, *tag, now)?;
            }
            let current = target
                .config
                .rules
                .iter()
                .find(|r| &r.name == rule && r.one_time().is_some_and(|once| once.line > 0))
                .map(|r| {
                    let steps: Vec<_> = r.sequence().iter().map(|s| s.0).collect();
                    knock_common::sequence_tag(&steps)
                });
            Ok(Applied {
                records: Vec::new(),
                one_time: (current == Some(*tag)).then(|| rule.clone()),
            })
        }
    }
}

/// A prefix's length as the fleet's records carry it: none for an
/// address alone.
fn prefix_len(net: IpNet) -> Option<u8> {
    (net.prefix_len() < net.max_prefix_len()).then_some(net.prefix_len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_cross_between_the_clocks_as_time_from_now() {
        let clocks = Clocks {
            wall_ms: 1_700_000_000_000,
            kernel_ns: 5_000_000_000,
        };
        assert_eq!(clocks.wall(65_000_000_000), 1_700_000_060_000);
        assert_eq!(clocks.wall(4_000_000_000), 1_699_999_999_000);
        assert_eq!(clocks.kernel(1_700_000_060_000), 65_000_000_000);
        assert_eq!(clocks.kernel(1_699_999_999_000), 4_000_000_000);
        assert_eq!(clocks.kernel(0), 0, "before the kernel's clock began");
    }
}
