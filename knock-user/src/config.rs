//! The TOML configuration: parsed with serde, validated as a whole, then
//! flattened into what the XDP program's maps hold (`KernelConfig`).
//!
//! Every problem names the line and the key; nothing is applied from a file
//! with any problem.

use std::{collections::HashMap, fmt, net::IpAddr, ops::Range, str::FromStr, time::Duration};

use ipnet::IpNet;
use knock_common::{
    Addr, IPPROTO_TCP, IPPROTO_UDP, Knock, MAX_RULES, MAX_STEPS, PortRoles, RuleConfig, Settings,
    ipv4_mapped, port_roles_index,
};
use serde::{Deserialize, Deserializer, de};
use toml::Spanned;

/// Shortest sequence accepted, and the length below which a warning is given.
const MIN_STEPS: usize = 2;
const RECOMMENDED_STEPS: usize = 3;
/// Largest map size accepted (keeps a typo from asking for gigabytes).
const MAX_MAP_ENTRIES: u32 = 1 << 24;

/// A configuration that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not TOML, an unknown key, or a value of the wrong form; the message
    /// carries the line, the column and the key.
    #[error("{0}")]
    Syntax(#[source] toml::de::Error),
    /// Well-formed, but breaks a rule of the configuration.
    #[error("line {line}: {key}: {problem}")]
    Invalid {
        line: usize,
        key: String,
        problem: String,
    },
}

/// A knock step or protected port written `tcp:PORT` or `udp:PORT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortSpec(pub Knock);

impl FromStr for PortSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (proto, port) = s
            .split_once(':')
            .ok_or_else(|| format!("`{s}` is not of the form tcp:PORT or udp:PORT"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("`{port}` in `{s}` is not a port (1-65535)"))?;
        match proto {
            "tcp" => Ok(PortSpec(Knock::tcp(port))),
            "udp" => Ok(PortSpec(Knock::udp(port))),
            _ => Err(format!("`{proto}` in `{s}` is not a protocol (tcp or udp)")),
        }
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.0.proto {
            IPPROTO_TCP => "tcp",
            IPPROTO_UDP => "udp",
            _ => "?",
        };
        write!(f, "{proto}:{}", self.0.port)
    }
}

/// Parses "500ms", "10s", "5m", "1h" (and combinations such as "1h 30m").
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration such as 500ms, 10s, 5m or 1h ({e})"))?;
    if duration.is_zero() {
        return Err(format!("`{s}` is zero; it must be longer"));
    }
    Ok(duration)
}

fn from_str_de<'de, D: Deserializer<'de>, T, E: fmt::Display>(
    deserializer: D,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, D::Error> {
    let s = String::deserialize(deserializer)?;
    parse(&s).map_err(de::Error::custom)
}

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_str_de(deserializer, str::parse)
    }
}

/// A duration as written in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_str_de(deserializer, parse_duration).map(ConfigDuration)
    }
}

/// An allow/deny entry: an address or a CIDR prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix(pub IpNet);

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_str_de(deserializer, |s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map(|net| Prefix(net.trunc()))
                .map_err(|_| format!("`{s}` is not an address or CIDR prefix"))
        })
    }
}

impl Prefix {
    /// The prefix in the one key form: IPv4 mapped into IPv6.
    pub fn mapped(&self) -> (u32, Addr) {
        match self.0 {
            IpNet::V4(net) => (
                u32::from(net.prefix_len()) + 96,
                ipv4_mapped(net.addr().octets()),
            ),
            IpNet::V6(net) => (u32::from(net.prefix_len()), net.addr().octets()),
        }
    }
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    interfaces: Vec<Spanned<String>>,
    #[serde(default)]
    allow: Vec<Prefix>,
    #[serde(default)]
    deny: Vec<Prefix>,
    #[serde(default)]
    denied_events_per_second: Option<u32>,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    flows: FlowTimeouts,
    #[serde(default, rename = "rule")]
    rules: Vec<FileRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRule {
    name: Spanned<String>,
    sequence: Spanned<Vec<PortSpec>>,
    sequence_timeout: ConfigDuration,
    open_for: ConfigDuration,
    protect: Spanned<Vec<PortSpec>>,
}

/// Map sizes: the most sources mid-sequence, live grants and admitted flows
/// the filter keeps at once.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub progress_entries: Spanned<u32>,
    pub grant_entries: Spanned<u32>,
    pub flow_entries: Spanned<u32>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            progress_entries: Spanned::new(0..0, 65_536),
            grant_entries: Spanned::new(0..0, 8_192),
            flow_entries: Spanned::new(0..0, 65_536),
        }
    }
}

/// How long admitted flows live without traffic.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct FlowTimeouts {
    pub tcp_idle: ConfigDuration,
    pub tcp_closing: ConfigDuration,
    pub udp_idle: ConfigDuration,
}

impl Default for FlowTimeouts {
    fn default() -> Self {
        Self {
            tcp_idle: ConfigDuration(Duration::from_secs(24 * 3600)),
            tcp_closing: ConfigDuration(Duration::from_secs(120)),
            udp_idle: ConfigDuration(Duration::from_secs(120)),
        }
    }
}

/// One validated rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub sequence: Vec<PortSpec>,
    pub sequence_timeout: Duration,
    pub open_for: Duration,
    pub protect: Vec<PortSpec>,
}

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub interfaces: Vec<String>,
    pub allow: Vec<Prefix>,
    pub deny: Vec<Prefix>,
    pub denied_events_per_second: u32,
    pub limits: Limits,
    pub flows: FlowTimeouts,
    pub rules: Vec<Rule>,
    /// Legal but unwise choices, each naming its line.
    pub warnings: Vec<String>,
}

const DEFAULT_DENIED_EVENTS_PER_SECOND: u32 = 10;

/// Turns byte offsets into 1-based line numbers.
struct Lines<'a>(&'a str);

impl Lines<'_> {
    fn of(&self, span: Range<usize>) -> usize {
        self.0[..span.start.min(self.0.len())].matches('\n').count() + 1
    }
}

impl Config {
    /// Parses and validates a whole file.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let file: File = toml::from_str(text).map_err(ConfigError::Syntax)?;
        let lines = Lines(text);
        let invalid = |span: Range<usize>, key: &str, problem: String| ConfigError::Invalid {
            line: lines.of(span),
            key: key.to_owned(),
            problem,
        };
        let mut warnings = Vec::new();

        for iface in &file.interfaces {
            let name = iface.get_ref();
            if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
                return Err(invalid(
                    iface.span(),
                    "interfaces",
                    format!("`{name}` is not an interface name"),
                ));
            }
        }
        for (key, limit) in [
            ("limits.progress_entries", &file.limits.progress_entries),
            ("limits.grant_entries", &file.limits.grant_entries),
            ("limits.flow_entries", &file.limits.flow_entries),
        ] {
            if !(1..=MAX_MAP_ENTRIES).contains(limit.get_ref()) {
                return Err(invalid(
                    limit.span(),
                    key,
                    format!("{} is outside 1..={MAX_MAP_ENTRIES}", limit.get_ref()),
                ));
            }
        }
        if file.rules.is_empty() {
            return Err(invalid(
                0..0,
                "rule",
                "no [[rule]]: there is nothing to protect".into(),
            ));
        }
        if file.rules.len() > MAX_RULES {
            return Err(invalid(
                file.rules[MAX_RULES].name.span(),
                "rule",
                format!("at most {MAX_RULES} rules are supported"),
            ));
        }

        // Where each protected port, first step and sequence is used, to find collisions.
        let mut protected_by: HashMap<PortSpec, &str> = HashMap::new();
        let mut first_steps: HashMap<PortSpec, &str> = HashMap::new();
        let mut sequences: HashMap<&[PortSpec], &str> = HashMap::new();
        let mut rules = Vec::with_capacity(file.rules.len());
        for rule in &file.rules {
            let name = rule.name.get_ref().as_str();
            if name.is_empty() {
                return Err(invalid(
                    rule.name.span(),
                    "name",
                    "a rule needs a name".into(),
                ));
            }
            if rules.iter().any(|r: &Rule| r.name == name) {
                return Err(invalid(
                    rule.name.span(),
                    "name",
                    format!("rule `{name}` is defined twice"),
                ));
            }
            let sequence = rule.sequence.get_ref();
            let at = |key: &str, problem: String| {
                invalid(
                    rule.sequence.span(),
                    &format!("rule `{name}`: {key}"),
                    problem,
                )
            };
            if sequence.len() < MIN_STEPS {
                return Err(at(
                    "sequence",
                    format!(
                        "{} step(s) is too short to be secret; use at least {RECOMMENDED_STEPS}",
                        sequence.len()
                    ),
                ));
            }
            if sequence.len() > MAX_STEPS {
                return Err(at(
                    "sequence",
                    format!("at most {MAX_STEPS} steps are supported"),
                ));
            }
            if sequence.len() < RECOMMENDED_STEPS {
                warnings.push(format!(
                    "line {}: rule `{name}`: sequence: only {} steps; {RECOMMENDED_STEPS} or more are much harder to guess",
                    lines.of(rule.sequence.span()),
                    sequence.len()
                ));
            }
            for (i, step) in sequence.iter().enumerate() {
                if sequence[..i].contains(step) {
                    return Err(at(
                        "sequence",
                        format!("{step} appears twice; copies of a step look like retransmissions"),
                    ));
                }
            }
            let ports: Vec<u16> = sequence.iter().map(|s| s.0.port).collect();
            if ports.windows(2).all(|w| w[0] < w[1]) || ports.windows(2).all(|w| w[0] > w[1]) {
                warnings.push(format!(
                    "line {}: rule `{name}`: sequence: ports are monotonic, the order a port scan uses; shuffle them",
                    lines.of(rule.sequence.span())
                ));
            }
            if let Some(other) = sequences.insert(sequence, name) {
                return Err(at(
                    "sequence",
                    format!("the same sequence as rule `{other}`"),
                ));
            }
            if let Some(other) = first_steps.insert(sequence[0], name) {
                warnings.push(format!(
                    "line {}: rule `{name}`: sequence: starts with {} like rule `{other}`; each rule still needs its own full sequence",
                    lines.of(rule.sequence.span()),
                    sequence[0]
                ));
            }

            let protect = rule.protect.get_ref();
            let at = |problem: String| {
                invalid(
                    rule.protect.span(),
                    &format!("rule `{name}`: protect"),
                    problem,
                )
            };
            if protect.is_empty() {
                return Err(at("protects nothing; list ports such as \"tcp:22\"".into()));
            }
            for (i, port) in protect.iter().enumerate() {
                if protect[..i].contains(port) {
                    return Err(at(format!("{port} is listed twice")));
                }
                protected_by.entry(*port).or_insert(name);
            }
            rules.push(Rule {
                name: name.to_owned(),
                sequence: sequence.clone(),
                sequence_timeout: rule.sequence_timeout.0,
                open_for: rule.open_for.0,
                protect: protect.clone(),
            });
        }
        for rule in &file.rules {
            for step in rule.sequence.get_ref() {
                if let Some(protector) = protected_by.get(step) {
                    return Err(invalid(
                        rule.sequence.span(),
                        &format!("rule `{}`: sequence", rule.name.get_ref()),
                        format!(
                            "{step} is a knock step and also protected by rule `{protector}`; a knock port must not be a service port"
                        ),
                    ));
                }
            }
        }

        Ok(Config {
            interfaces: file
                .interfaces
                .into_iter()
                .map(Spanned::into_inner)
                .collect(),
            allow: file.allow,
            deny: file.deny,
            denied_events_per_second: file
                .denied_events_per_second
                .unwrap_or(DEFAULT_DENIED_EVENTS_PER_SECOND),
            limits: file.limits,
            flows: file.flows,
            rules,
            warnings,
        })
    }
}

/// What the XDP program's maps hold for a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelConfig {
    pub settings: Settings,
    pub rules: Vec<RuleConfig>,
    /// `PORT_ROLES` entries that are not all zero.
    pub port_roles: Vec<(u32, PortRoles)>,
    pub allow: Vec<(u32, Addr)>,
    pub deny: Vec<(u32, Addr)>,
    pub progress_entries: u32,
    pub grant_entries: u32,
    pub flow_entries: u32,
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

    fn try_from(config: &Config) -> Result<Self, Self::Error> {
        let mut rules = Vec::with_capacity(config.rules.len());
        let mut roles: HashMap<u32, PortRoles> = HashMap::new();
        for (index, rule) in config.rules.iter().enumerate() {
            let bit = 1u16 << index;
            let mut kernel_rule = RuleConfig {
                steps: rule.sequence.len() as u32,
                sequence_timeout_ns: nanos(
                    &format!("rule `{}`: sequence_timeout", rule.name),
                    rule.sequence_timeout,
                )?,
                open_for_ns: nanos(&format!("rule `{}`: open_for", rule.name), rule.open_for)?,
                ..Default::default()
            };
            for (slot, step) in kernel_rule.sequence.iter_mut().zip(&rule.sequence) {
                *slot = step.0;
            }
            rules.push(kernel_rule);
            let index_of = |spec: &PortSpec| {
                port_roles_index(spec.0.proto, spec.0.port).expect("config only holds tcp and udp")
            };
            for step in &rule.sequence {
                roles.entry(index_of(step)).or_default().knock_rules |= bit;
            }
            for port in &rule.protect {
                roles.entry(index_of(port)).or_default().protect_rules |= bit;
            }
        }
        let mut port_roles: Vec<_> = roles.into_iter().collect();
        port_roles.sort_by_key(|(index, _)| *index);
        let allow: Vec<_> = config.allow.iter().map(Prefix::mapped).collect();
        let deny: Vec<_> = config.deny.iter().map(Prefix::mapped).collect();
        Ok(KernelConfig {
            settings: Settings {
                rules: rules.len() as u32,
                denied_events_per_sec: config.denied_events_per_second,
                allow_entries: allow.len() as u32,
                deny_entries: deny.len() as u32,
                tcp_idle_ns: nanos("flows.tcp_idle", config.flows.tcp_idle.0)?,
                tcp_closing_ns: nanos("flows.tcp_closing", config.flows.tcp_closing.0)?,
                udp_idle_ns: nanos("flows.udp_idle", config.flows.udp_idle.0)?,
            },
            rules,
            port_roles,
            allow,
            deny,
            progress_entries: *config.limits.progress_entries.get_ref(),
            grant_entries: *config.limits.grant_entries.get_ref(),
            flow_entries: *config.limits.flow_entries.get_ref(),
        })
    }
}
