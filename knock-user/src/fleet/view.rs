//! What this host knows of the fleet (its grants and revokes, as last read
//! from etcd), and what follows from it for this host's kernel and for
//! etcd. Pure: the session feeds it what etcd says and what the kernel
//! holds, and carries out what it answers.
//!
//! The rules it keeps:
//! - a grant from the fleet is planted unless a revoke made after it is
//!   known; a grant's key going away (its lease, a revoke) changes
//!   nothing by itself: the kernel ends a grant at its own expiry, and a
//!   revoke says so with a record of its own;
//! - a live grant of this host that the fleet lacks (made while etcd was
//!   away, by `xknock grant`, or while no `run` was following) is
//!   published, unless a known revoke made after it undoes it: then it is
//!   removed here too.

use std::{collections::HashMap, net::IpAddr};

use ipnet::IpNet;

use super::record::{GrantRecord, RevokeRecord, net};

/// A grant in this host's kernel, with its times on the wall clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalGrant {
    pub addr: IpAddr,
    pub rule: String,
    pub expires_ms: u64,
    /// When it was made: exact for a grant just made, else its expiry less
    /// the rule's `open_for`.
    pub granted_ms: u64,
    /// What made it (`GrantRecord::via`).
    pub via: &'static str,
    /// `GrantRecord::prefix_len`.
    pub prefix_len: Option<u8>,
}

/// How much later than the fleet's copy a local grant must end to be
/// published again: the two clocks it is converted through drift apart by
/// milliseconds.
const SAME_EXPIRY_MS: u64 = 1_000;

/// What follows for this host's kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Admit as this grant says, until its expiry (or a later one the
    /// kernel already holds).
    Plant(GrantRecord),
    /// A revoke made now: end `addr`'s grants of the rule (every rule if
    /// none) and, with `flows`, their connections.
    Remove(RevokeRecord),
    /// A revoke made earlier, learned late (relisting, or judging a grant
    /// the fleet lacks): end the grants made before it
    /// (`RevokeRecord::covers`), and with `flows` the connections.
    Undo(RevokeRecord),
}

/// The fleet as this host last read it.
#[derive(Debug)]
pub struct View {
    node: String,
    grants: HashMap<(IpAddr, String), GrantRecord>,
    revokes: HashMap<(IpNet, Option<String>), RevokeRecord>,
}

impl View {
    /// An empty view for the host `node`.
    pub fn new(node: &str) -> View {
        View {
            node: node.to_owned(),
            grants: HashMap::new(),
            revokes: HashMap::new(),
        }
    }

    /// The fleet as read whole at one revision: the grants to plant, and
    /// the revokes to undo what was granted before them. A revoke made
    /// since this host last heard from the fleet (`heard_ms`) ends the
    /// connections too if it says so; an older one has done that already.
    pub fn relist(
        &mut self,
        grants: Vec<GrantRecord>,
        revokes: Vec<RevokeRecord>,
        now_ms: u64,
        heard_ms: u64,
    ) -> Vec<Change> {
        self.grants.clear();
        self.revokes = revokes
            .into_iter()
            .map(|r| ((r.net(), r.rule.clone()), r))
            .collect();
        let mut changes: Vec<Change> = self
            .revokes
            .values()
            .map(|r| {
                Change::Undo(RevokeRecord {
                    flows: r.flows && r.at_ms > heard_ms,
                    ..r.clone()
                })
            })
            .collect();
        changes.extend(grants.into_iter().filter_map(|g| self.put_grant(g, now_ms)));
        changes
    }

    /// A grant written to the fleet: planted if it is live and no revoke
    /// made after it is known.
    pub fn put_grant(&mut self, grant: GrantRecord, now_ms: u64) -> Option<Change> {
        if self.revoked(grant.net(), &grant.rule, grant.granted_ms) {
            return None;
        }
        let live = grant.expires_ms > now_ms;
        self.grants
            .insert((grant.addr, grant.rule.clone()), grant.clone());
        live.then_some(Change::Plant(grant))
    }

    /// A grant's key went away: the fleet no longer holds it (nothing
    /// changes in the kernel).
    pub fn delete_grant(&mut self, addr: IpAddr, rule: &str) {
        self.grants.remove(&(addr, rule.to_owned()));
    }

    /// A revoke written to the fleet: removed here at once.
    pub fn put_revoke(&mut self, revoke: RevokeRecord) -> Change {
        self.grants
            .retain(|(_, rule), grant| !revoke.covers(grant.net(), rule, grant.granted_ms));
        self.revokes
            .insert((revoke.net(), revoke.rule.clone()), revoke.clone());
        Change::Remove(revoke)
    }

    /// A revoke's key went away (its lease ended).
    pub fn delete_revoke(&mut self, net: IpNet, rule: Option<&str>) {
        self.revokes.remove(&(net, rule.map(str::to_owned)));
    }

    /// This host's live grants beside the fleet's: those the fleet lacks
    /// are published (and from now on known), those a known revoke undoes
    /// are removed.
    pub fn local(&mut self, grants: &[LocalGrant], now_ms: u64) -> (Vec<GrantRecord>, Vec<Change>) {
        let mut publish = Vec::new();
        let mut remove = Vec::new();
        for local in grants.iter().filter(|g| g.expires_ms > now_ms) {
            let key = (local.addr, local.rule.clone());
            let known = self
                .grants
                .get(&key)
                .is_some_and(|g| g.expires_ms.saturating_add(SAME_EXPIRY_MS) >= local.expires_ms);
            if known {
                continue;
            }
            if let Some(revoke) = self.revokes.values().find(|r| {
                r.covers(
                    net(local.addr, local.prefix_len),
                    &local.rule,
                    local.granted_ms,
                )
            }) {
                remove.push(Change::Undo(RevokeRecord {
                    rule: Some(local.rule.clone()),
                    ..revoke.clone()
                }));
                continue;
            }
            let record = GrantRecord {
                addr: local.addr,
                rule: local.rule.clone(),
                expires_ms: local.expires_ms,
                granted_ms: local.granted_ms,
                node: self.node.clone(),
                via: local.via.to_owned(),
                prefix_len: local.prefix_len,
            };
            self.grants.insert(key, record.clone());
            publish.push(record);
        }
        (publish, remove)
    }

    /// Whether a known revoke undoes `rule`'s grant of `addr` made at
    /// `granted_ms`.
    fn revoked(&self, granted: IpNet, rule: &str, granted_ms: u64) -> bool {
        self.revokes
            .values()
            .any(|r| r.covers(granted, rule, granted_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 19, 0, 9));

    fn grant(node: &str, granted_ms: u64, expires_ms: u64) -> GrantRecord {
        GrantRecord {
            addr: A,
            rule: "ssh".into(),
            expires_ms,
            granted_ms,
            node: node.into(),
            via: "knock".into(),
            prefix_len: None,
        }
    }

    fn revoke(rule: Option<&str>, at_ms: u64) -> RevokeRecord {
        RevokeRecord {
            addr: A,
            rule: rule.map(str::to_owned),
            flows: true,
            at_ms,
            node: "b".into(),
            prefix_len: None,
        }
    }

    fn local(granted_ms: u64, expires_ms: u64) -> LocalGrant {
        LocalGrant {
            addr: A,
            rule: "ssh".into(),
            expires_ms,
            granted_ms,
            via: "knock",
            prefix_len: None,
        }
    }

    #[test]
    fn live_grants_are_planted_and_expired_ones_are_not() {
        let mut view = View::new("a");
        let live = grant("b", 1_000, 61_000);
        assert_eq!(
            view.put_grant(live.clone(), 2_000),
            Some(Change::Plant(live))
        );
        assert_eq!(view.put_grant(grant("b", 1_000, 1_500), 2_000), None);
        let listed = view.relist(
            vec![grant("c", 0, 10_000), grant("c", 0, 100)],
            vec![],
            50,
            0,
        );
        assert_eq!(listed.len(), 2);
        assert_eq!(view.relist(vec![grant("c", 0, 100)], vec![], 200, 0), []);
    }

    #[test]
    fn a_revoke_removes_at_once_and_undoes_older_grants_learned_later() {
        let mut view = View::new("a");
        let removed = view.put_revoke(revoke(None, 5_000));
        assert_eq!(removed, Change::Remove(revoke(None, 5_000)));
        // A grant published before the revoke but read after it: not planted.
        assert_eq!(view.put_grant(grant("c", 4_000, 60_000), 6_000), None);
        // One made after it is.
        assert!(view.put_grant(grant("c", 5_001, 60_000), 6_000).is_some());
        // The revoke's key going away forgets it.
        view.delete_revoke(net(A, None), None);
        assert!(view.put_grant(grant("c", 4_000, 60_000), 6_000).is_some());
    }

    #[test]
    fn local_grants_the_fleet_lacks_are_published_once() {
        let mut view = View::new("a");
        let (publish, remove) = view.local(&[local(1_000, 61_000), local(0, 500)], 1_000);
        assert_eq!(remove, []);
        assert_eq!(publish.len(), 1, "the live one only");
        assert_eq!(
            (
                publish[0].node.as_str(),
                publish[0].expires_ms,
                publish[0].via.as_str()
            ),
            ("a", 61_000, "knock")
        );
        let (again, _) = view.local(&[local(1_000, 61_000)], 2_000);
        assert_eq!(again, [], "known from now on");
        // Extended here (a new knock): published again.
        let (extended, _) = view.local(&[local(30_000, 90_000)], 30_000);
        assert_eq!(extended.len(), 1);
        // A fleet's copy that ends as late (within the clocks' drift) is known.
        view.relist(vec![grant("b", 0, 120_000)], vec![], 40_000, 0);
        assert_eq!(view.local(&[local(40_000, 120_900)], 40_000).0, []);
        assert_eq!(view.local(&[local(40_000, 121_100)], 40_000).0.len(), 1);
    }

    #[test]
    fn a_local_grant_older_than_a_known_revoke_is_removed_not_published() {
        let mut view = View::new("a");
        // Revoked on another host while this one was away; read on relisting.
        let relisted = view.relist(vec![], vec![revoke(Some("ssh"), 5_000)], 6_000, 4_000);
        assert_eq!(
            relisted,
            [Change::Undo(revoke(Some("ssh"), 5_000))],
            "missed while away: flows end too"
        );
        let again = view.relist(vec![], vec![revoke(Some("ssh"), 5_000)], 7_000, 6_500);
        let Change::Undo(heard) = &again[0] else {
            panic!("{again:?}")
        };
        assert!(!heard.flows, "heard before: its flows ended then");
        let (publish, remove) = view.local(&[local(4_000, 60_000)], 6_000);
        assert_eq!(publish, []);
        assert_eq!(remove, [Change::Undo(revoke(Some("ssh"), 5_000))]);
        // A knock after the revoke stands.
        let (publish, remove) = view.local(&[local(5_500, 60_000)], 6_000);
        assert_eq!((publish.len(), remove.len()), (1, 0));
        // A grant's key deleted by its lease or a revoke is not a revoke.
        view.delete_grant(A, "ssh");
        assert_eq!(view.local(&[local(5_500, 60_000)], 6_000).0.len(), 1);
    }
}
