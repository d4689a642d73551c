//! The knock state the filter keeps per source: progress through
//! sequences, grants, admitted flows, penalties, spent sequences; and what
//! the daemon and the operator do to it (grant, revoke, sweep, clear a
//! retired rule's).

use std::sync::atomic::Ordering;

use knock_common::{
    Addr, Flow, FlowKey, Grant, GrantKey, IPPROTO_UDP, Penalty, Progress, RuleConfig,
    SourceHorizon, SourceRule, SpentKey, addr_words, horizon_units, is_ipv4_mapped,
};

use super::base::{Maps, MapsError, entries, map_error, remove_where};
use crate::loader::table::name;

/// A grant the sweeper found expired and removed: its prefix and rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpiredGrant {
    pub key: GrantKey,
}

impl Maps {
    /// Every grant, live or expired but not yet swept.
    pub fn grants(&self) -> Result<Vec<(GrantKey, Grant)>, MapsError> {
        Ok(entries(&self.grants_map()?))
    }

    /// The key of a grant of rule `rule` to `addr`: the prefix of `addr`
    /// the rule's scope admits, as the kernel keys it.
    pub fn grant_key(&self, addr: &Addr, rule: u32) -> Result<GrantKey, MapsError> {
        let config = self
            .rules_map()?
            .get(&rule, 0)
            .map_err(map_error(name::RULES))?;
        let words = addr_words(addr);
        Ok(config.grant_key(&words, !is_ipv4_mapped(&words), rule))
    }

    /// The grant of rule `rule` that admits `addr` (of its prefix, for a
    /// scoped rule), if there is one.
    pub fn grant_of(&self, addr: &Addr, rule: u32) -> Result<Option<Grant>, MapsError> {
        let key = self.grant_key(addr, rule)?;
        match self.grants_map()?.get(&key, 0) {
            Ok(grant) => Ok(Some(grant)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(error) => Err(map_error(name::GRANTS)(error)),
        }
    }

    /// Every admitted flow.
    pub fn flows(&self) -> Result<Vec<(FlowKey, Flow)>, MapsError> {
        Ok(entries(&self.flows_map()?))
    }

    /// Sequences that opened once and may not again: (rule index, sequence
    /// tag) and when.
    pub fn spent(&self) -> Result<Vec<(SpentKey, u64)>, MapsError> {
        Ok(entries(&self.spent_map()?))
    }

    /// Records rule `rule`'s sequence `sequence_tag` as spent (another host
    /// of the fleet opened with it).
    pub fn mark_spent(&mut self, rule: u32, sequence_tag: u32, now: u64) -> Result<(), MapsError> {
        self.spent_map_mut()?
            .insert(&SpentKey { rule, sequence_tag }, &now, 0)
            .map_err(map_error(name::SPENT))
    }

    /// Forgets that rule `rule`'s sequence `sequence_tag` was spent here
    /// (the fleet could not record it, so it did not open: it may again).
    pub fn unspend(&mut self, rule: u32, sequence_tag: u32) -> Result<(), MapsError> {
        match self
            .spent_map_mut()?
            .remove(&SpentKey { rule, sequence_tag })
        {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(error) => Err(map_error(name::SPENT)(error)),
        }
    }

    /// Progress of sources `addrs` at `now` (kernel clock), both tables:
    /// their first steps (through their rules' current sequences), and
    /// further.
    pub fn progress_of(
        &self,
        addrs: &[Addr],
        now: u64,
    ) -> Result<Vec<(SourceRule, Progress)>, MapsError> {
        let mut all = self.first_steps_of(addrs, now)?;
        all.extend(
            entries(&self.progress_map()?)
                .into_iter()
                .filter(|(key, _)| addrs.contains(&key.addr)),
        );
        Ok(all)
    }

    /// Sources' records of failed attempts (their windows and penalties).
    pub fn penalties(&self) -> Result<Vec<(Addr, Penalty)>, MapsError> {
        Ok(entries(&self.penalties_map()?))
    }

    /// Progress of sources past their first step (`PROGRESS` alone).
    pub fn later_progress(&self) -> Result<Vec<(SourceRule, Progress)>, MapsError> {
        Ok(entries(&self.progress_map()?))
    }

    /// Grants `addr` rule `rule` as `grant` says (kernel clock), as the
    /// kernel does when a sequence completes: the prefix of `addr` the
    /// rule's scope admits (the address alone without a scope); its
    /// admitted horizon first (else the filter could skip the lookup that
    /// finds the grant), then the grant. Returns the key granted.
    pub fn grant(&mut self, addr: &Addr, rule: u32, grant: Grant) -> Result<GrantKey, MapsError> {
        let key = self.grant_key(addr, rule)?;
        let expires_ns = grant.expires_ns;
        let (slot, horizon) = self.source_horizon(&key.addr)?;
        // Past the grant's end, as `horizon_span` would raise it from now.
        let until = horizon_units(expires_ns).saturating_add(2);
        if horizon.admitted_until < until {
            // That word alone, atomically: the slot's other words are the
            // XDP program's to raise and count at any moment. (A raise of
            // the same word by the program at the same moment may win with
            // its own span: at least any `open_for` or idle time of the
            // configuration.)
            self.mapped_horizons()?
                .word(slot, core::mem::offset_of!(SourceHorizon, admitted_until))
                .fetch_max(until, Ordering::SeqCst);
        }
        self.grants_map_mut()?
            .insert(&key, &grant, 0)
            .map_err(map_error(name::GRANTS))?;
        Ok(key)
    }

    /// Removes the grants that meet `prefix` (the addresses of the
    /// `host_bits` below `addr`: grants of prefixes holding it, and grants
    /// inside it), of the rule indexes `rules` only, if given, and, with
    /// `flows`, the connections from those prefixes they admitted; returns
    /// how many of each.
    pub fn revoke(
        &mut self,
        addr: &Addr,
        host_bits: u32,
        rules: Option<&[u32]>,
        flows: bool,
    ) -> Result<(usize, usize), MapsError> {
        self.revoke_granted_by(addr, host_bits, rules, flows, u64::MAX)
    }

    /// `revoke`, of the grants made at `granted_by` (kernel clock) or
    /// before only.
    pub fn revoke_granted_by(
        &mut self,
        addr: &Addr,
        host_bits: u32,
        rules: Option<&[u32]>,
        flows: bool,
        granted_by: u64,
    ) -> Result<(usize, usize), MapsError> {
        let of_rule = |r: u32| rules.is_none_or(|wanted| wanted.contains(&r));
        let asked = GrantKey::new(&addr_words(addr), 0, host_bits);
        let grants = remove_where(self.grants_map_mut()?, |k, g| {
            meet(k, &asked) && of_rule(k.rule_index()) && g.granted_ns <= granted_by
        });
        let flows = if flows {
            remove_where(self.flows_map_mut()?, |k, f| {
                let words = addr_words(&k.addr);
                of_rule(f.rule)
                    && (asked.admits(&words)
                        || grants
                            .iter()
                            .any(|(g, _)| g.rule_index() == f.rule && g.admits(&words)))
            })
            .len()
        } else {
            0
        };
        Ok((grants.len(), flows))
    }

    /// Removes every grant, flow and progress of the rule indexes `rules`.
    pub fn clear_rules(&mut self, rules: &[u32]) -> Result<(), MapsError> {
        if rules.is_empty() {
            return Ok(());
        }
        self.clear_first_steps(rules)?;
        remove_where(self.progress_map_mut()?, |k, _| rules.contains(&k.rule));
        remove_where(self.grants_map_mut()?, |k, _| {
            rules.contains(&k.rule_index())
        });
        remove_where(self.flows_map_mut()?, |_, f| rules.contains(&f.rule));
        Ok(())
    }

    /// Removes grants that expired and flows idle past their timeout at
    /// `now` (kernel clock); returns the expired grants so they can be
    /// reported.
    pub fn sweep(&mut self, now: u64) -> Result<Vec<ExpiredGrant>, MapsError> {
        let settings = self.settings()?;
        let expired = remove_where(self.grants_map_mut()?, |_, g| g.expires_ns <= now);
        remove_where(self.flows_map_mut()?, |key, flow| {
            let timeout = match (key.proto, flow.closing) {
                (IPPROTO_UDP, _) => settings.udp_idle_ns,
                (_, 0) => settings.tcp_idle_ns,
                _ => settings.tcp_closing_ns,
            };
            now.saturating_sub(flow.last_seen_ns) > timeout
        });
        Ok(expired
            .into_iter()
            .map(|(key, _)| ExpiredGrant { key })
            .collect())
    }

    /// Removes the grants made under another scope than their rule has in
    /// `rules` (the configuration in place, by index): a reload changed
    /// the rule's `grant_scope`, and no lookup finds their keys any more.
    /// Returns how many.
    pub fn drop_rescoped_grants(&mut self, rules: &[RuleConfig]) -> Result<usize, MapsError> {
        Ok(remove_where(self.grants_map_mut()?, |k, _| {
            let Some(rule) = rules.get(k.rule_index() as usize) else {
                return false;
            };
            let words = addr_words(&k.addr);
            let now = if is_ipv4_mapped(&words) {
                rule.ipv4_host_bits
            } else {
                rule.ipv6_host_bits
            };
            k.host_bits() != u32::from(now)
        })
        .len())
    }
}

/// Whether two grant prefixes share an address: one holds the other.
fn meet(a: &GrantKey, b: &GrantKey) -> bool {
    let wider = a.host_bits().max(b.host_bits());
    GrantKey::new(&addr_words(&a.addr), 0, wider).addr
        == GrantKey::new(&addr_words(&b.addr), 0, wider).addr
}
