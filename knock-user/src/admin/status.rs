//! What the filter pinned at a `pin_dir` is doing, read from its pins (a
//! `run` process may or may not be alive), and `Pinned`, the opened filter
//! that `grant`, `revoke` and `detach` (in `admin`) change.

use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr};

use aya::programs::links::{FdLink, PinnedLink};
use knock_common::{Instance, MAX_RULES, PORT_ROLES_ENTRIES, RuleConfig};
use serde::Serialize;

use crate::{
    config::PortSpec,
    loader::{
        FilterError, grant_prefix,
        maps::{Maps, Occupancy, display_addr},
        monotonic_ns,
        pins::{PinDir, PinError, interface_index},
        read_instance,
    },
};

/// Why a command against the pinned filter failed.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Pins(#[from] PinError),
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error(transparent)]
    Maps(#[from] crate::loader::maps::MapsError),
    #[error("the pinned XDP link {0}")]
    Link(String, #[source] aya::programs::links::LinkError),
    #[error("the running filter has no rule named `{0}` (its rules: {1})")]
    NoSuchRule(String, String),
    /// A prefix asked of a rule that grants prefixes of another length.
    #[error("{0}")]
    Scope(String),
    /// What `status --check` found wrong.
    #[error("{0}")]
    Unhealthy(String),
}

/// An interface the filter is on.
#[derive(Debug, Serialize)]
pub struct InterfaceStatus {
    pub name: String,
    pub mode: String,
    pub link_id: u32,
    pub program_id: u32,
    /// The egress program that gives the host's answers to steered packets
    /// their ports back, if its pinned link is there.
    pub egress_program_id: Option<u32>,
    /// Whether the interface the link was made on is gone (deleted, or
    /// replaced by another of the same name): the filter then runs nowhere
    /// there, though its pin stays.
    pub gone: bool,
}

/// A rule as the running filter holds it.
#[derive(Debug, Serialize)]
pub struct RuleStatus {
    pub index: u32,
    pub name: String,
    pub sequence: Vec<String>,
    pub sequence_timeout_secs: f64,
    pub open_for_secs: f64,
    pub protect: Vec<String>,
    /// The ports an `[[spa]]` entry takes SPA packets on (it has no
    /// sequence).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub spa_listen: Vec<String>,
    /// The prefixes its grants admit, when wider than the address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant_scope: Option<ScopeStatus>,
}

/// A rule's `grant_scope`: prefix lengths.
#[derive(Debug, Serialize)]
pub struct ScopeStatus {
    pub ipv4: u32,
    pub ipv6: u32,
}

/// A live grant.
#[derive(Debug, Serialize)]
pub struct GrantStatus {
    /// The address it admits, or its prefix's first address.
    pub source: IpAddr,
    /// The prefix's length, when it admits a prefix (`grant_scope`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix_len: Option<u8>,
    pub rule: String,
    pub expires_in_secs: f64,
}

/// Everything `xknock status` reports.
#[derive(Debug, Serialize)]
pub struct Status {
    pub pin_dir: String,
    pub layout: u32,
    pub generation: u64,
    pub interfaces: Vec<InterfaceStatus>,
    pub rules: Vec<RuleStatus>,
    pub grants: Vec<GrantStatus>,
    pub admitted_flows: usize,
    pub maps: BTreeMap<&'static str, Occupancy>,
    pub verdicts: BTreeMap<&'static str, u64>,
    pub answers: BTreeMap<&'static str, u64>,
    pub events_lost: u64,
    /// SPA packets remembered as accepted (refused if they come again).
    pub spa_replay_entries: usize,
}

/// A pinned filter opened for reading or changing its state.
pub struct Pinned {
    pub instance: Instance,
    pub maps: Maps,
}

impl Pinned {
    pub fn open(pins: &PinDir) -> Result<Pinned, StatusError> {
        pins.require_filter()?;
        let instance =
            read_instance(pins)?.ok_or_else(|| PinError::NoFilter(pins.root().into()))?;
        let maps = Maps::open(pins, instance.generation)?;
        Ok(Pinned { instance, maps })
    }

    /// The indexes of the rule named `name`, lowest first (a rotating rule
    /// has two).
    pub fn rule_indexes(&self, name: &str) -> Result<Vec<u32>, StatusError> {
        let indexes: Vec<u32> = (0..MAX_RULES as u32)
            .filter(|&i| self.instance.rules[i as usize].get() == Some(name))
            .collect();
        if indexes.is_empty() {
            // A rotating rule's two indexes need not be neighbours.
            let mut names: Vec<&str> = Vec::new();
            for held in self.instance.rules.iter().filter_map(|r| r.get()) {
                if !names.contains(&held) {
                    names.push(held);
                }
            }
            return Err(StatusError::NoSuchRule(name.to_owned(), names.join(", ")));
        }
        Ok(indexes)
    }

    fn rule_name(&self, index: u32) -> String {
        self.instance
            .rules
            .get(index as usize)
            .and_then(|r| r.get())
            .map_or_else(|| format!("#{index}"), str::to_owned)
    }

    /// The rule config at `index` in the running configuration.
    pub fn rule(&self, index: u32) -> Result<RuleConfig, StatusError> {
        Ok(self
            .maps
            .rules()?
            .get(index as usize)
            .copied()
            .unwrap_or_default())
    }
}

fn secs(ns: u64) -> f64 {
    (ns as f64 / 1e8).round() / 10.0
}

/// The ports a rule index protects, and those it takes SPA packets on.
#[derive(Clone, Default)]
struct PortsOf {
    protect: Vec<String>,
    spa: Vec<String>,
}

/// The ports of each rule index, from the configuration's port roles.
fn ports_of_rules(maps: &Maps) -> Result<Vec<PortsOf>, StatusError> {
    let roles = maps.port_roles_map()?;
    let mut ports = vec![PortsOf::default(); MAX_RULES];
    for index in 0..PORT_ROLES_ENTRIES {
        let Ok(role) = roles.get(&index, 0) else {
            continue;
        };
        if role.protect_rules == 0 && role.spa_rules == 0 {
            continue;
        }
        let (proto, port) = if index < 65536 {
            (knock_common::IPPROTO_TCP, index as u16)
        } else {
            (knock_common::IPPROTO_UDP, (index - 65536) as u16)
        };
        let spec = PortSpec(knock_common::Knock::new(proto, port)).to_string();
        for (rule, of) in ports.iter_mut().enumerate() {
            if role.protect_rules & (1 << rule) != 0 {
                of.protect.push(spec.clone());
            }
            if role.spa_rules & (1 << rule) != 0 {
                of.spa.push(spec.clone());
            }
        }
    }
    Ok(ports)
}

impl Status {
    pub fn read(pins: &PinDir) -> Result<Status, StatusError> {
        let pinned = Pinned::open(pins)?;
        let mut interfaces = Vec::new();
        for link in pins.links()? {
            let error = |e| StatusError::Link(link.path.display().to_string(), e);
            let info = FdLink::from(PinnedLink::from_pin(&link.path).map_err(error)?)
                .info()
                .map_err(error)?;
            let egress = pins.egress_link(&link.iface);
            let egress_program_id = match PinnedLink::from_pin(&egress) {
                Ok(pinned) => {
                    let error = |e| StatusError::Link(egress.display().to_string(), e);
                    Some(FdLink::from(pinned).info().map_err(error)?.program_id())
                }
                Err(_) => None,
            };
            // The link's interface, and the one of its name here now.
            let held = link.ifindex().unwrap_or(0);
            let gone = held == 0 || held != interface_index(&link.iface);
            interfaces.push(InterfaceStatus {
                name: link.iface,
                mode: link.mode,
                link_id: info.id(),
                program_id: info.program_id(),
                egress_program_id,
                gone,
            });
        }
        let ports = ports_of_rules(&pinned.maps)?;
        let mut rules = Vec::new();
        for (index, rule) in pinned.maps.rules()?.iter().enumerate() {
            let Some(name) = pinned.instance.rules[index].get() else {
                continue;
            };
            let steps = (rule.steps as usize).min(rule.sequence.len());
            rules.push(RuleStatus {
                index: index as u32,
                name: name.to_owned(),
                sequence: rule.sequence[..steps]
                    .iter()
                    .map(|k| PortSpec(*k).to_string())
                    .collect(),
                sequence_timeout_secs: secs(rule.sequence_timeout_ns),
                open_for_secs: secs(rule.open_for_ns),
                protect: ports[index].protect.clone(),
                spa_listen: ports[index].spa.clone(),
                grant_scope: (rule.ipv4_host_bits != 0 || rule.ipv6_host_bits != 0).then(|| {
                    ScopeStatus {
                        ipv4: 32 - u32::from(rule.ipv4_host_bits),
                        ipv6: 128 - u32::from(rule.ipv6_host_bits),
                    }
                }),
            });
        }
        let now = monotonic_ns();
        let mut grants: Vec<GrantStatus> = pinned
            .maps
            .grants()?
            .into_iter()
            .filter(|(_, grant)| grant.expires_ns > now)
            .map(|(key, grant)| GrantStatus {
                source: display_addr(&key.addr),
                prefix_len: (key.host_bits() > 0).then(|| grant_prefix(&key).prefix_len()),
                rule: pinned.rule_name(key.rule_index()),
                expires_in_secs: secs(grant.expires_ns - now),
            })
            .collect();
        grants.sort_by(|a, b| (a.source, &a.rule).cmp(&(b.source, &b.rule)));
        let settings = pinned.maps.settings()?;
        let admitted_flows = pinned
            .maps
            .flows()?
            .iter()
            .filter(|(key, flow)| {
                let idle = match (key.proto, flow.closing) {
                    (knock_common::IPPROTO_UDP, _) => settings.udp_idle_ns,
                    (_, 0) => settings.tcp_idle_ns,
                    _ => settings.tcp_closing_ns,
                };
                now.saturating_sub(flow.last_seen_ns) <= idle
            })
            .count();
        Ok(Status {
            pin_dir: pins.root().display().to_string(),
            layout: pinned.instance.layout,
            generation: pinned.instance.generation,
            interfaces,
            rules,
            grants,
            admitted_flows,
            maps: pinned.maps.occupancy()?,
            verdicts: pinned.maps.counters()?,
            answers: pinned.maps.answers()?,
            events_lost: pinned.maps.lost_events()?,
            spa_replay_entries: pinned.maps.replay_entries()?,
        })
    }

    /// What `status --check` fails on: the filter attached nowhere, or on
    /// an interface that is gone.
    pub fn check(&self) -> Result<(), StatusError> {
        let gone: Vec<&str> = self
            .interfaces
            .iter()
            .filter(|iface| iface.gone)
            .map(|iface| iface.name.as_str())
            .collect();
        if !gone.is_empty() {
            return Err(StatusError::Unhealthy(format!(
                "the filter's interface(s) {} are gone",
                gone.join(", ")
            )));
        }
        if self.interfaces.is_empty() {
            return Err(StatusError::Unhealthy(
                "the filter is attached to no interface".to_owned(),
            ));
        }
        Ok(())
    }

    /// The report for a person.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "filter pinned at {} (layout {}, configuration {})",
            self.pin_dir, self.layout, self.generation
        );
        if self.interfaces.is_empty() {
            let _ = writeln!(
                out,
                "interfaces: none (the filter is not attached anywhere)"
            );
        }
        for iface in &self.interfaces {
            if iface.gone {
                let _ = writeln!(
                    out,
                    "interface {}: GONE (the filter runs nowhere there; its pinned link {} is left): run `xknock run` again once it is back, or `xknock detach`",
                    iface.name, iface.link_id
                );
                continue;
            }
            let egress = iface.egress_program_id.map_or_else(
                || "no egress program (answers to concealed ports are not restored)".to_owned(),
                |id| format!("egress program {id}"),
            );
            let _ = writeln!(
                out,
                "interface {} ({} mode): program {}, link {}, {egress}",
                iface.name, iface.mode, iface.program_id, iface.link_id
            );
        }
        for rule in &self.rules {
            let scope = rule.grant_scope.as_ref().map_or(String::new(), |scope| {
                format!(
                    " to the knocker's IPv4 /{} or IPv6 /{}",
                    scope.ipv4, scope.ipv6
                )
            });
            if !rule.spa_listen.is_empty() {
                let _ = writeln!(
                    out,
                    "spa {}: SPA packets to {} open {}{scope} for {}s",
                    rule.name,
                    rule.spa_listen.join(" "),
                    rule.protect.join(" "),
                    rule.open_for_secs
                );
                continue;
            }
            let _ = writeln!(
                out,
                "rule {}: {} within {}s opens {}{scope} for {}s",
                rule.name,
                rule.sequence.join(" "),
                rule.sequence_timeout_secs,
                rule.protect.join(" "),
                rule.open_for_secs
            );
        }
        let _ = writeln!(out, "grants: {}", self.grants.len());
        for grant in &self.grants {
            let prefix = grant
                .prefix_len
                .map_or(String::new(), |len| format!("/{len}"));
            let _ = writeln!(
                out,
                "  {}{prefix} rule={} expires_in={}s",
                grant.source, grant.rule, grant.expires_in_secs
            );
        }
        let _ = writeln!(out, "admitted flows: {}", self.admitted_flows);
        let maps: Vec<String> = self
            .maps
            .iter()
            .map(|(name, o)| format!("{}={}/{}", name.to_lowercase(), o.entries, o.max_entries))
            .collect();
        let _ = writeln!(out, "maps: {}", maps.join(" "));
        let _ = writeln!(out, "verdicts: {}", nonzero(&self.verdicts));
        let _ = writeln!(out, "answers: {}", nonzero(&self.answers));
        let _ = writeln!(out, "events lost: {}", self.events_lost);
        if self.rules.iter().any(|r| !r.spa_listen.is_empty()) {
            let _ = writeln!(out, "spa packets remembered: {}", self.spa_replay_entries);
        }
        out
    }
}

/// The counters that moved, as `name=count` words.
pub fn nonzero(counts: &BTreeMap<&str, u64>) -> String {
    let listed: Vec<String> = counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(name, n)| format!("{name}={n}"))
        .collect();
    listed.join(" ")
}
