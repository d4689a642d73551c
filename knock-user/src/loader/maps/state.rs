//! The knock state the filter keeps per source: progress through
//! sequences, grants, admitted flows, penalties, spent sequences; and what
//! the daemon and the operator do to it (grant, revoke, sweep, clear a
//! retired rule's).

use std::sync::atomic::Ordering;

use knock_common::{
    Addr, Flow, FlowKey, Grant, IPPROTO_UDP, Penalty, Progress, SourceHorizon, SourceRule,
    SpentKey, horizon_units,
};

use super::base::{Maps, MapsError, entries, map_error, remove_where};
use crate::loader::table::name;

/// A grant the sweeper found expired and removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpiredGrant {
    pub source: Addr,
    pub rule: u32,
}

impl Maps {
    /// Every grant, live or expired but not yet swept.
    pub fn grants(&self) -> Result<Vec<(SourceRule, Grant)>, MapsError> {
        Ok(entries(&self.grants_map()?))
    }

    /// `addr`'s grant of rule `rule`, if it has one.
    pub fn grant_of(&self, addr: &Addr, rule: u32) -> Result<Option<Grant>, MapsError> {
        match self.grants_map()?.get(&SourceRule { addr: *addr, rule }, 0) {
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
    /// kernel does when a sequence completes: the source's admitted horizon
    /// first (else the filter could skip the lookup that finds the grant),
    /// then the grant.
    pub fn grant(&mut self, addr: &Addr, rule: u32, grant: Grant) -> Result<(), MapsError> {
        let expires_ns = grant.expires_ns;
        let (slot, horizon) = self.source_horizon(addr)?;
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
            .insert(&SourceRule { addr: *addr, rule }, &grant, 0)
            .map_err(map_error(name::GRANTS))
    }

    /// Removes `addr`'s grants (of the rule indexes `rules` only, if given) and, with
    /// `flows`, the connections they admitted; returns how many of each.
    pub fn revoke(
        &mut self,
        addr: &Addr,
        rules: Option<&[u32]>,
        flows: bool,
    ) -> Result<(usize, usize), MapsError> {
        self.revoke_granted_by(addr, rules, flows, u64::MAX)
    }

    /// `revoke`, of the grants made at `granted_by` (kernel clock) or
    /// before only.
    pub fn revoke_granted_by(
        &mut self,
        addr: &Addr,
        rules: Option<&[u32]>,
        flows: bool,
        granted_by: u64,
    ) -> Result<(usize, usize), MapsError> {
        let of_rule = |r: u32| rules.is_none_or(|wanted| wanted.contains(&r));
        let grants = remove_where(self.grants_map_mut()?, |k, g| {
            k.addr == *addr && of_rule(k.rule) && g.granted_ns <= granted_by
        });
        let flows = if flows {
            remove_where(self.flows_map_mut()?, |k, f| {
                k.addr == *addr && of_rule(f.rule)
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
        remove_where(self.grants_map_mut()?, |k, _| rules.contains(&k.rule));
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
            .map(|(key, _)| ExpiredGrant {
                source: key.addr,
                rule: key.rule,
            })
            .collect())
    }
}
