//! A validated configuration flattened into what the XDP program's maps
//! hold.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use knock_common::{
    Addr, CONCEAL_CLOSED, CONCEAL_DROP, Knock, MAX_RULES, ONCE, ONCE_HELD, PortRoles, RuleConfig,
    Settings, first_step_bucket_bits, first_step_buckets, horizon_span, host_mask,
    port_roles_index, sequence_tag,
};

use super::{file::Conceal, model::Config, values::PortSpec, values::Prefix};

/// What the XDP program's maps hold for a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelConfig {
    pub settings: Settings,
    /// Indexed by rule index; an index no rule owns holds a free slot
    /// (`steps == 0`).
    pub rules: Vec<RuleConfig>,
    /// The rule indexes of each of the configuration's rules (one per
    /// part), in file order.
    pub slots: Vec<Vec<u32>>,
    /// `PORT_ROLES` entries that are not all zero.
    pub port_roles: Vec<(u32, PortRoles)>,
    pub allow: Vec<(u32, Addr)>,
    pub deny: Vec<(u32, Addr)>,
    pub first_step_entries: u32,
    pub progress_entries: u32,
    pub grant_entries: u32,
    pub flow_entries: u32,
    pub penalty_entries: u32,
}

/// A size the configuration gives one of the XDP program's maps (which
/// map: the loader's map table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapLimit {
    FirstStepEntries,
    ProgressEntries,
    GrantEntries,
    FlowEntries,
    PenaltyEntries,
    /// As many entries as `allow` has prefixes (at least one).
    AllowList,
    /// As many entries as `deny` has prefixes (at least one).
    DenyList,
}

impl MapLimit {
    /// The `[limits]` key that sets it; `None` for the lists, which the
    /// prefixes they hold size.
    pub fn key(self) -> Option<&'static str> {
        match self {
            MapLimit::FirstStepEntries => Some("limits.first_step_entries"),
            MapLimit::ProgressEntries => Some("limits.progress_entries"),
            MapLimit::GrantEntries => Some("limits.grant_entries"),
            MapLimit::FlowEntries => Some("limits.flow_entries"),
            MapLimit::PenaltyEntries => Some("limits.penalty_entries"),
            MapLimit::AllowList | MapLimit::DenyList => None,
        }
    }
}

/// A configuration that the kernel cannot represent.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct KernelConfigError {
    pub key: String,
    pub problem: String,
}

fn nanos(key: &str, duration: Duration) -> Result<u64, KernelConfigError> {
    u64::try_from(duration.as_nanos()).map_err(|_| KernelConfigError {
        key: key.to_owned(),
        problem: format!("{duration:?} is too long"),
    })
}

impl TryFrom<&Config> for KernelConfig {
    type Error = KernelConfigError;

    /// The rules at indexes in file order, with rotating sequences as they
    /// are now.
    fn try_from(config: &Config) -> Result<Self, Self::Error> {
        KernelConfig::placed(config, &config.slots_in_order(), SystemTime::now())
    }
}

impl KernelConfig {
    /// How many entries `limit` gives its map.
    pub fn entries(&self, limit: MapLimit) -> u32 {
        let list =
            |prefixes: &[(u32, Addr)]| u32::try_from(prefixes.len().max(1)).unwrap_or(u32::MAX);
        match limit {
            // Records in buckets of `FIRST_STEP_WAYS`, the map's entries.
            MapLimit::FirstStepEntries => first_step_buckets(self.first_step_entries),
            MapLimit::ProgressEntries => self.progress_entries,
            MapLimit::GrantEntries => self.grant_entries,
            MapLimit::FlowEntries => self.flow_entries,
            MapLimit::PenaltyEntries => self.penalty_entries,
            MapLimit::AllowList => list(&self.allow),
            MapLimit::DenyList => list(&self.deny),
        }
    }

    /// The configuration with its rules at the given indexes (`slots[i]`
    /// for the parts of `config.rules[i]`, each below `MAX_RULES`, none
    /// twice), where a running filter keeps the state of rules it already
    /// has, and rotating sequences as they are at `now`.
    pub fn placed(
        config: &Config,
        slots: &[Vec<u32>],
        now: SystemTime,
    ) -> Result<Self, KernelConfigError> {
        assert_eq!(slots.len(), config.rules.len(), "slots for every rule");
        let used = slots
            .iter()
            .flatten()
            .max()
            .map_or(0, |&max| max as usize + 1);
        assert!(used <= MAX_RULES, "slots are below MAX_RULES");
        let mut rules = vec![RuleConfig::default(); used];
        let mut roles: HashMap<u32, PortRoles> = HashMap::new();
        let mut scoped_rules = 0;
        for (parts, rule) in slots.iter().zip(&config.rules) {
            let sequences = rule
                .sequences_at(now)
                .map_err(|problem| KernelConfigError {
                    key: format!("rule `{}`", rule.name),
                    problem,
                })?;
            assert_eq!(parts.len(), sequences.len(), "a slot for every part");
            // What every part of the rule shares.
            let (ipv4_host_bits, ipv6_host_bits) = rule.grant_scope.host_bits();
            let shared = RuleConfig {
                ipv4_host_mask: host_mask(ipv4_host_bits),
                ipv6_host_mask: host_mask(ipv6_host_bits),
                ipv4_host_bits: ipv4_host_bits as u8,
                ipv6_host_bits: ipv6_host_bits as u8,
                sequence_timeout_ns: nanos(
                    &format!("rule `{}`: sequence_timeout", rule.name),
                    rule.sequence_timeout,
                )?,
                open_for_ns: nanos(&format!("rule `{}`: open_for", rule.name), rule.open_for)?,
                // In a fleet, what opens once opens only once the fleet
                // has recorded it spent.
                once: match (rule.opens_once(), config.fleet.is_some()) {
                    (false, _) => 0,
                    (true, false) => ONCE,
                    (true, true) => ONCE | ONCE_HELD,
                },
                ..Default::default()
            };
            #[expect(
                clippy::expect_used,
                reason = "an invariant: a validated configuration holds tcp, udp and icmp only"
            )]
            let index_of = |spec: &PortSpec| {
                port_roles_index(spec.0.proto, spec.0.port)
                    .expect("config only holds tcp, udp and icmp")
            };
            for (&index, sequence) in parts.iter().zip(&sequences) {
                let bit = 1u16 << index;
                if rule.grant_scope.is_wider() {
                    scoped_rules |= u32::from(bit);
                }
                let mut kernel_rule = RuleConfig {
                    steps: sequence.len() as u32,
                    ..shared
                };
                for (slot, step) in kernel_rule.sequence.iter_mut().zip(sequence) {
                    *slot = step.0;
                }
                let steps: Vec<Knock> = sequence.iter().map(|s| s.0).collect();
                kernel_rule.sequence_tag = sequence_tag(&steps);
                rules[index as usize] = kernel_rule;
                for step in sequence {
                    roles.entry(index_of(step)).or_default().knock_rules |= bit;
                }
                for port in &rule.protect {
                    roles.entry(index_of(port)).or_default().protect_rules |= bit;
                }
                if let Some(spa) = rule.spa() {
                    let listen = PortSpec(Knock::udp(spa.listen));
                    roles.entry(index_of(&listen)).or_default().spa_rules |= bit;
                }
            }
        }
        let mut port_roles: Vec<_> = roles.into_iter().collect();
        port_roles.sort_by_key(|(index, _)| *index);
        let allow: Vec<_> = config.allow.iter().map(Prefix::mapped).collect();
        let deny: Vec<_> = config.deny.iter().map(Prefix::mapped).collect();
        let tcp_idle_ns = nanos("flows.tcp_idle", config.flows.tcp_idle.0)?;
        let tcp_closing_ns = nanos("flows.tcp_closing", config.flows.tcp_closing.0)?;
        let udp_idle_ns = nanos("flows.udp_idle", config.flows.udp_idle.0)?;
        let longest_sequence = rules.iter().map(|r| r.sequence_timeout_ns).max();
        let rules_in_use = rules.len() as u32;
        let longest_admission = rules
            .iter()
            .map(|r| r.open_for_ns)
            .chain([tcp_idle_ns, tcp_closing_ns, udp_idle_ns])
            .max();
        let penalty_window_ns = nanos("penalty.window", config.penalty.window.0)?;
        let penalty_ns = nanos("penalty.duration", config.penalty.duration.0)?;
        Ok(KernelConfig {
            settings: Settings {
                rules: rules_in_use,
                flood_events_per_sec: config.flood_events_per_second,
                spa_datagrams_per_sec: config.spa_datagrams_per_second,
                allow_entries: allow.len() as u32,
                deny_entries: deny.len() as u32,
                tcp_idle_ns,
                tcp_closing_ns,
                udp_idle_ns,
                penalty_failures: config.penalty.failures,
                knocking_horizon: horizon_span(longest_sequence.unwrap_or(0)),
                penalty_window_ns,
                penalty_ns,
                failing_horizon: horizon_span(penalty_window_ns.max(penalty_ns)),
                first_step_bucket_bits: first_step_bucket_bits(first_step_buckets(
                    *config.limits.first_step_entries.get_ref(),
                )),
                admitted_horizon: horizon_span(longest_admission.unwrap_or(0)),
                scoped_rules,
                // The loader keeps the one its pin directory holds.
                source_seed: 0,
                conceal: match config.conceal {
                    Conceal::Closed => CONCEAL_CLOSED,
                    Conceal::Drop => CONCEAL_DROP,
                },
                // The loader reads the host's own values at load.
                ..Settings::default()
            },
            rules,
            slots: slots.to_vec(),
            port_roles,
            allow,
            deny,
            first_step_entries: *config.limits.first_step_entries.get_ref(),
            progress_entries: *config.limits.progress_entries.get_ref(),
            grant_entries: *config.limits.grant_entries.get_ref(),
            flow_entries: *config.limits.flow_entries.get_ref(),
            penalty_entries: *config.limits.penalty_entries.get_ref(),
        })
    }
}
