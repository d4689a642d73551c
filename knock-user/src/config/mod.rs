//! The TOML configuration: parsed with serde, validated as a whole, then
//! flattened into what the XDP program's maps hold (`KernelConfig`).
//!
//! Every problem names the line and the key; nothing is applied from a file
//! with any problem.

mod kernel;
pub mod one_time;
pub mod rotating;
pub mod spa;
mod values;

use std::{
    collections::HashMap,
    ops::Range,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

pub use kernel::{KernelConfig, KernelConfigError, MapLimit};
use knock_common::{MAX_RULES, MAX_STEPS, RULE_NAME_BYTES};
use serde::Deserialize;
use toml::Spanned;
pub use values::{ConfigDuration, MAX_ICMP_KNOCK_SIZE, PortSpec, Prefix, parse_duration};

/// Shortest sequence accepted, and the length below which a warning is given.
const MIN_STEPS: usize = 2;
const RECOMMENDED_STEPS: usize = 3;
/// Largest map size accepted (keeps a typo from asking for gigabytes).
const MAX_MAP_ENTRIES: u32 = 1 << 24;
/// Where the filter is pinned unless `pin_dir` says otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/xknock";

/// A configuration that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not TOML, an unknown key, or a value of the wrong form; the message
    /// carries the line, the column and the key.
    #[error(transparent)]
    Syntax(toml::de::Error),
    /// Well-formed, but breaks a rule of the configuration.
    #[error("line {line}: {key}: {problem}")]
    Invalid {
        line: usize,
        key: String,
        problem: String,
    },
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    interfaces: Vec<Spanned<String>>,
    #[serde(default)]
    pin_dir: Option<Spanned<PathBuf>>,
    #[serde(default)]
    allow: Vec<Spanned<Prefix>>,
    #[serde(default)]
    deny: Vec<Spanned<Prefix>>,
    #[serde(default)]
    flood_events_per_second: Option<u32>,
    #[serde(default)]
    conceal: Conceal,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    flows: FlowTimeouts,
    #[serde(default)]
    penalty: PenaltyConfig,
    #[serde(default)]
    spa_datagrams_per_second: Option<u32>,
    #[serde(default, rename = "rule")]
    rules: Vec<FileRule>,
    #[serde(default, rename = "spa")]
    spas: Vec<spa::FileSpa>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRule {
    name: Spanned<String>,
    #[serde(default)]
    sequence: Option<Spanned<Vec<PortSpec>>>,
    #[serde(default)]
    sequences_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    secret_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    rotate: Option<Spanned<ConfigDuration>>,
    #[serde(default)]
    steps: Option<Spanned<usize>>,
    #[serde(default)]
    port_range: Option<Spanned<rotating::PortRange>>,
    sequence_timeout: ConfigDuration,
    open_for: ConfigDuration,
    protect: Spanned<Vec<PortSpec>>,
}

/// Map sizes: the most sources after a first step, sources further along,
/// live grants, admitted flows and failing sources the filter keeps at once.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub first_step_entries: Spanned<u32>,
    pub progress_entries: Spanned<u32>,
    pub grant_entries: Spanned<u32>,
    pub flow_entries: Spanned<u32>,
    pub penalty_entries: Spanned<u32>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            first_step_entries: Spanned::new(0..0, 65_536),
            progress_entries: Spanned::new(0..0, 16_384),
            grant_entries: Spanned::new(0..0, 8_192),
            flow_entries: Spanned::new(0..0, 65_536),
            penalty_entries: Spanned::new(0..0, 65_536),
        }
    }
}

/// A source whose attempts fail `failures` times within `window` has its
/// knocks ignored for `duration`; `failures = 0` turns this off.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PenaltyConfig {
    pub failures: u32,
    pub window: ConfigDuration,
    pub duration: ConfigDuration,
}

impl Default for PenaltyConfig {
    fn default() -> Self {
        Self {
            failures: 5,
            window: ConfigDuration(Duration::from_secs(60)),
            duration: ConfigDuration(Duration::from_secs(300)),
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
    /// The live sequence; empty when a one-time file has no unused line
    /// (the rule then opens nothing), and for a rotating rule, whose
    /// sequences come from `sequences_at`.
    pub sequence: Vec<PortSpec>,
    /// Where a one-time sequence came from: it opens once, and is then
    /// marked used and replaced.
    pub once: Option<one_time::OneTime>,
    /// A rotating rule's secret and schedule.
    pub rotating: Option<rotating::Rotating>,
    /// An `[[spa]]`'s keys and policy: it has no sequence, and its grants
    /// come from the loader when a packet checks out.
    pub spa: Option<spa::Spa>,
    pub sequence_timeout: Duration,
    pub open_for: Duration,
    pub protect: Vec<PortSpec>,
}

impl Rule {
    /// How many rule indexes the rule takes in the kernel: two for a
    /// rotating rule (the current window's sequence and the one before),
    /// else one.
    pub fn parts(&self) -> usize {
        if self.rotating.is_some() { 2 } else { 1 }
    }

    /// The sequence of each part at `now`. A rotating rule's part 0 holds
    /// the sequence of whichever of the current and the previous window is
    /// even, part 1 the odd one's: a sequence stays in its part (and keeps
    /// the progress made with it) for both windows it is live.
    pub fn sequences_at(&self, now: SystemTime) -> Result<Vec<Vec<PortSpec>>, String> {
        let Some(rotating) = &self.rotating else {
            return Ok(vec![self.sequence.clone()]);
        };
        let current = rotating.window(now);
        let mut parts = vec![Vec::new(), Vec::new()];
        for window in [current, current.saturating_sub(1)] {
            parts[(window % 2) as usize] = rotating.sequence(window)?;
        }
        Ok(parts)
    }

    /// What a client sends at `now`.
    pub fn sequence_at(&self, now: SystemTime) -> Result<Vec<PortSpec>, String> {
        match &self.rotating {
            Some(rotating) => rotating.sequence(rotating.window(now)),
            None => Ok(self.sequence.clone()),
        }
    }
}

/// What a packet stopped at a knock port, or at a protected port for a
/// source without a grant, gets back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Conceal {
    /// What a closed port of this host answers: a TCP RST, or an ICMP port
    /// unreachable (rate limited as the kernel limits it).
    #[default]
    Closed,
    /// Nothing, for hosts whose firewall drops every unused port anyway.
    Drop,
}

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub interfaces: Vec<String>,
    /// Where the filter's maps and links are pinned (bpffs).
    pub pin_dir: PathBuf,
    pub allow: Vec<Prefix>,
    pub deny: Vec<Prefix>,
    pub flood_events_per_second: u32,
    /// SPA datagrams each CPU hands to the loader per second.
    pub spa_datagrams_per_second: u32,
    pub conceal: Conceal,
    pub limits: Limits,
    pub flows: FlowTimeouts,
    pub penalty: PenaltyConfig,
    pub rules: Vec<Rule>,
    /// Legal but unwise choices, each naming its line.
    pub warnings: Vec<String>,
}

impl Config {
    /// The rule indexes of each rule's parts when they are placed in file
    /// order (a fresh filter, tests).
    pub fn slots_in_order(&self) -> Vec<Vec<u32>> {
        let mut next = 0;
        self.rules
            .iter()
            .map(|rule| {
                let parts = (next..next + rule.parts() as u32).collect();
                next += rule.parts() as u32;
                parts
            })
            .collect()
    }

    /// When the first rotating sequence after `after` changes, if any
    /// rule rotates.
    pub fn next_rotation(&self, after: SystemTime) -> Option<SystemTime> {
        self.rules
            .iter()
            .filter_map(|rule| rule.rotating.as_ref())
            .map(|r| r.window_start(r.window(after) + 1))
            .min()
    }
}

/// Denied attempts and first steps reported per CPU and second.
const DEFAULT_FLOOD_EVENTS_PER_SECOND: u32 = 20;

/// SPA datagrams each CPU hands to the loader per second: far more than
/// people knock, far less than a flood.
const DEFAULT_SPA_DATAGRAMS_PER_SECOND: u32 = 100;

/// Turns byte offsets into 1-based line numbers.
struct Lines<'a>(&'a str);

impl Lines<'_> {
    fn of(&self, span: Range<usize>) -> usize {
        self.0[..span.start.min(self.0.len())].matches('\n').count() + 1
    }
}

/// A sequence's length and steps, wherever it was written.
fn check_sequence(sequence: &[PortSpec]) -> Result<(), String> {
    if sequence.len() < MIN_STEPS {
        return Err(format!(
            "{} step(s) is too short to be secret; use at least {RECOMMENDED_STEPS}",
            sequence.len()
        ));
    }
    if sequence.len() > MAX_STEPS {
        return Err(format!("at most {MAX_STEPS} steps are supported"));
    }
    for (i, step) in sequence.iter().enumerate() {
        if sequence[..i].contains(step) {
            return Err(format!(
                "{step} appears twice; copies of a step look like retransmissions"
            ));
        }
    }
    Ok(())
}

/// A rule's or SPA entry's name: present, short enough for the kernel's
/// record, and not one that came `before`.
fn check_name<'a>(
    name: &Spanned<String>,
    mut before: impl Iterator<Item = &'a Spanned<String>>,
    invalid: &impl Fn(Range<usize>, &str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    let text = name.get_ref();
    let problem = if text.is_empty() {
        "a rule needs a name".to_owned()
    } else if text.len() > RULE_NAME_BYTES {
        format!("`{text}` is longer than {RULE_NAME_BYTES} bytes")
    } else if before.any(|other| other.get_ref() == text) {
        format!("rule `{text}` is defined twice (rules and SPA entries share names)")
    } else {
        return Ok(());
    };
    Err(invalid(name.span(), "name", problem))
}

/// A rule's or SPA entry's `protect`: TCP and UDP ports, each once.
fn check_protect(
    owner: &str,
    protect: &Spanned<Vec<PortSpec>>,
    invalid: &impl Fn(Range<usize>, &str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    let at = |problem: String| invalid(protect.span(), &format!("{owner}: protect"), problem);
    let ports = protect.get_ref();
    if ports.is_empty() {
        return Err(at("protects nothing; list ports such as \"tcp:22\"".into()));
    }
    for (i, port) in ports.iter().enumerate() {
        if port.is_icmp() {
            return Err(at(format!(
                "{port} is a knock step form; protect TCP or UDP ports"
            )));
        }
        if ports[..i].contains(port) {
            return Err(at(format!("{port} is listed twice")));
        }
    }
    Ok(())
}

/// Steps of a rotating sequence unless `steps` says otherwise.
const DEFAULT_ROTATING_STEPS: usize = 4;
/// How often a rotating sequence changes unless `rotate` says otherwise
/// (TOTP's period).
const DEFAULT_ROTATE: Duration = Duration::from_secs(30);

/// A rotating rule's keys, checked, and a warning about its secret file.
fn rotating_rule(
    rule: &FileRule,
    file: &Spanned<PathBuf>,
    dir: &Path,
    reserved: &[PortSpec],
    invalid: &impl Fn(Range<usize>, &str, String) -> ConfigError,
) -> Result<(rotating::Rotating, Option<String>), ConfigError> {
    let name = rule.name.get_ref();
    let path = dir.join(file.get_ref());
    let (key, warning) = rotating::read_secret(&path).map_err(|problem| {
        invalid(
            file.span(),
            &format!("rule `{name}`: secret_file"),
            format!("{}: {problem}", path.display()),
        )
    })?;
    let steps = rule
        .steps
        .as_ref()
        .map_or(DEFAULT_ROTATING_STEPS, |s| *s.get_ref());
    if !(MIN_STEPS..=MAX_STEPS).contains(&steps) {
        let span = rule.steps.as_ref().map_or(file.span(), Spanned::span);
        return Err(invalid(
            span,
            &format!("rule `{name}`: steps"),
            format!("{steps} is outside {MIN_STEPS}..={MAX_STEPS}"),
        ));
    }
    let rotate = rule
        .rotate
        .as_ref()
        .map_or(DEFAULT_ROTATE, |r| r.get_ref().0);
    if let Some(span) = rule.rotate.as_ref().map(Spanned::span)
        && rotate < rotating::MIN_ROTATE
    {
        return Err(invalid(
            span,
            &format!("rule `{name}`: rotate"),
            format!(
                "must be at least {}s: each rotation loads the filter anew, which takes about a second",
                rotating::MIN_ROTATE.as_secs()
            ),
        ));
    }
    let range = rule
        .port_range
        .as_ref()
        .map_or(rotating::DEFAULT_PORT_RANGE, |r| *r.get_ref());
    let rotating = rotating::Rotating::new(path, key, rotate, steps, range, reserved.to_vec())
        .map_err(|problem| {
            let span = rule.port_range.as_ref().map_or(file.span(), Spanned::span);
            invalid(span, &format!("rule `{name}`: port_range"), problem)
        })?;
    Ok((rotating, warning))
}

impl Config {
    /// Parses and validates a whole file.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_in(text, Path::new("."))
    }

    /// Parses a file whose relative paths (`sequences_file`) are relative to
    /// `dir`, the directory it is in.
    pub fn parse_in(text: &str, dir: &Path) -> Result<Config, ConfigError> {
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
        if let Some(dir) = &file.pin_dir {
            let path = dir.get_ref();
            if !path.is_absolute() || path == Path::new("/") {
                return Err(invalid(
                    dir.span(),
                    "pin_dir",
                    format!(
                        "`{}` is not an absolute directory below a bpffs mount such as {DEFAULT_PIN_DIR}",
                        path.display()
                    ),
                ));
            }
        }
        for (key, list) in [("allow", &file.allow), ("deny", &file.deny)] {
            for prefix in list {
                if prefix.get_ref().covers_all_ipv4() {
                    warnings.push(format!(
                        "line {}: {key}: {} also covers every IPv4 address (IPv4 is matched as ::ffff:a.b.c.d)",
                        lines.of(prefix.span()),
                        prefix.get_ref().0
                    ));
                }
            }
        }
        for (limit, value) in [
            (MapLimit::FirstStepEntries, &file.limits.first_step_entries),
            (MapLimit::ProgressEntries, &file.limits.progress_entries),
            (MapLimit::GrantEntries, &file.limits.grant_entries),
            (MapLimit::FlowEntries, &file.limits.flow_entries),
            (MapLimit::PenaltyEntries, &file.limits.penalty_entries),
        ] {
            if !(1..=MAX_MAP_ENTRIES).contains(value.get_ref()) {
                return Err(invalid(
                    value.span(),
                    limit.key().expect("a [limits] key"),
                    format!("{} is outside 1..={MAX_MAP_ENTRIES}", value.get_ref()),
                ));
            }
        }
        if file.rules.is_empty() && file.spas.is_empty() {
            return Err(invalid(
                0..0,
                "rule",
                "no [[rule]] and no [[spa]]: there is nothing to protect".into(),
            ));
        }
        if file.rules.len() + file.spas.len() > MAX_RULES {
            return Err(invalid(
                0..0,
                "rule",
                format!("at most {MAX_RULES} rules and SPA entries are supported"),
            ));
        }

        // Where each protected port, first step and sequence is used, to find collisions.
        let mut protected_by: HashMap<PortSpec, &str> = HashMap::new();
        // Every protected port and SPA port, which no rotating sequence draws.
        let spa_ports = file.spas.iter().filter_map(spa::FileSpa::listen_port);
        let mut all_protected: Vec<PortSpec> = file
            .rules
            .iter()
            .map(|r| &r.protect)
            .chain(file.spas.iter().map(|s| &s.protect))
            .flat_map(|protect| protect.get_ref().iter().copied())
            .filter(|p| !p.is_icmp())
            .chain(spa_ports.map(|port| PortSpec(knock_common::Knock::udp(port))))
            .collect();
        all_protected.sort_by_key(|p| (p.0.proto, p.0.port));
        all_protected.dedup();
        let mut first_steps: HashMap<PortSpec, &str> = HashMap::new();
        let mut sequences: HashMap<Vec<PortSpec>, &str> = HashMap::new();
        // Where each rule's sequence was written, for errors found later.
        let mut sequence_spans: Vec<Range<usize>> = Vec::new();
        let mut rules: Vec<Rule> = Vec::with_capacity(file.rules.len());
        let all_names = file
            .rules
            .iter()
            .map(|r| &r.name)
            .chain(file.spas.iter().map(|s| &s.name));
        for (i, name) in all_names.clone().enumerate() {
            check_name(name, all_names.clone().take(i), &invalid)?;
        }
        for spa in &file.spas {
            check_protect(
                &format!("spa `{}`", spa.name.get_ref()),
                &spa.protect,
                &invalid,
            )?;
        }
        for rule in &file.rules {
            let name = rule.name.get_ref().as_str();
            check_protect(&format!("rule `{name}`"), &rule.protect, &invalid)?;
            let protect = rule.protect.get_ref();
            for port in protect {
                protected_by.entry(*port).or_insert(name);
            }
            let new_rule = |sequence: Vec<PortSpec>, once, rotating| Rule {
                name: name.to_owned(),
                sequence,
                once,
                rotating,
                spa: None,
                sequence_timeout: rule.sequence_timeout.0,
                open_for: rule.open_for.0,
                protect: protect.clone(),
            };

            let given = [
                rule.sequence.is_some(),
                rule.sequences_file.is_some(),
                rule.secret_file.is_some(),
            ];
            if given.iter().filter(|g| **g).count() != 1 {
                return Err(invalid(
                    rule.name.span(),
                    &format!("rule `{name}`"),
                    "give one of `sequence`, `sequences_file` or `secret_file`".into(),
                ));
            }
            if rule.secret_file.is_none() {
                let spans = [
                    ("rotate", rule.rotate.as_ref().map(Spanned::span)),
                    ("steps", rule.steps.as_ref().map(Spanned::span)),
                    ("port_range", rule.port_range.as_ref().map(Spanned::span)),
                ];
                if let Some((key, Some(span))) = spans.into_iter().find(|(_, s)| s.is_some()) {
                    return Err(invalid(
                        span,
                        &format!("rule `{name}`: {key}"),
                        "belongs to a rotating rule, one with `secret_file`".into(),
                    ));
                }
            }
            if let Some(file) = &rule.secret_file {
                let (rotating, warning) = rotating_rule(rule, file, dir, &all_protected, &invalid)?;
                if let Some(other) = rules
                    .iter()
                    .find(|r| r.rotating.as_ref().is_some_and(|o| o.same_key(&rotating)))
                {
                    return Err(invalid(
                        file.span(),
                        &format!("rule `{name}`: secret_file"),
                        format!(
                            "the same secret as rule `{}`: both would knock with one sequence; `xknock keygen` makes another",
                            other.name
                        ),
                    ));
                }
                if let Some(warning) = warning {
                    warnings.push(format!(
                        "line {}: rule `{name}`: secret_file: {warning}",
                        lines.of(file.span())
                    ));
                }
                if rotating.steps < RECOMMENDED_STEPS {
                    warnings.push(format!(
                        "line {}: rule `{name}`: steps: only {}; {RECOMMENDED_STEPS} or more are much harder to guess",
                        lines.of(file.span()),
                        rotating.steps
                    ));
                }
                sequence_spans.push(file.span());
                rules.push(new_rule(Vec::new(), None, Some(rotating)));
                continue;
            }
            let (sequence, span, once) = match (&rule.sequence, &rule.sequences_file) {
                (Some(sequence), _) => (sequence.get_ref().clone(), sequence.span(), None),
                (None, Some(file)) => {
                    let path = dir.join(file.get_ref());
                    let at = |problem: String| {
                        invalid(
                            file.span(),
                            &format!("rule `{name}`: sequences_file"),
                            format!("{}: {problem}", path.display()),
                        )
                    };
                    let unused = one_time::unused_lines(&path).map_err(|e| at(e.to_string()))?;
                    // Every line must be usable, not only the live one.
                    let mut parsed = Vec::with_capacity(unused.len());
                    for (number, line) in &unused {
                        let steps = one_time::parse_line(line)
                            .and_then(|steps| check_sequence(&steps).map(|()| steps))
                            .map_err(|problem| at(format!("line {number}: {problem}")))?;
                        parsed.push((*number, steps));
                    }
                    match parsed.into_iter().next() {
                        Some((line, steps)) => {
                            (steps, file.span(), Some(one_time::OneTime { path, line }))
                        }
                        None => {
                            warnings.push(format!(
                                "line {}: rule `{name}`: sequences_file: {} has no unused sequence left; the rule opens nothing until one is added",
                                lines.of(file.span()),
                                path.display()
                            ));
                            sequence_spans.push(file.span());
                            rules.push(new_rule(
                                Vec::new(),
                                Some(one_time::OneTime { path, line: 0 }),
                                None,
                            ));
                            continue;
                        }
                    }
                }
                (None, None) => unreachable!("one source was given"),
            };
            let sequence = &sequence;
            let at = |key: &str, problem: String| {
                invalid(span.clone(), &format!("rule `{name}`: {key}"), problem)
            };
            check_sequence(sequence).map_err(|problem| at("sequence", problem))?;
            if sequence.len() < RECOMMENDED_STEPS {
                warnings.push(format!(
                    "line {}: rule `{name}`: sequence: only {} steps; {RECOMMENDED_STEPS} or more are much harder to guess",
                    lines.of(span.clone()),
                    sequence.len()
                ));
            }
            let ports: Vec<u16> = sequence.iter().map(|s| s.0.port).collect();
            if ports.windows(2).all(|w| w[0] < w[1]) || ports.windows(2).all(|w| w[0] > w[1]) {
                warnings.push(format!(
                    "line {}: rule `{name}`: sequence: ports are monotonic, the order a port scan uses; shuffle them",
                    lines.of(span.clone())
                ));
            }
            if let Some(other) = sequences.insert(sequence.clone(), name) {
                return Err(at(
                    "sequence",
                    format!("the same sequence as rule `{other}`"),
                ));
            }
            if let Some(other) = first_steps.insert(sequence[0], name) {
                warnings.push(format!(
                    "line {}: rule `{name}`: sequence: starts with {} like rule `{other}`; each rule still needs its own full sequence",
                    lines.of(span.clone()),
                    sequence[0]
                ));
            }
            sequence_spans.push(span.clone());
            rules.push(new_rule(sequence.clone(), once, None));
        }
        for file_spa in &file.spas {
            let name = file_spa.name.get_ref();
            let spa = file_spa.spa(&invalid)?;
            let listen = PortSpec(knock_common::Knock::udp(spa.listen));
            let at = |problem: String| {
                invalid(
                    file_spa.listen_span(),
                    &format!("spa `{name}`: listen"),
                    problem,
                )
            };
            if let Some(protector) = protected_by.get(&listen) {
                return Err(at(format!(
                    "{listen} is protected by rule `{protector}`; an SPA port must not be a service port"
                )));
            }
            if let Some(rule) = rules.iter().find(|r| r.sequence.contains(&listen)) {
                return Err(at(format!(
                    "{listen} is a knock step of rule `{}`",
                    rule.name
                )));
            }
            for port in file_spa.protect.get_ref() {
                protected_by.entry(*port).or_insert(name);
            }
            if spa.max_age < Duration::from_secs(1) {
                return Err(invalid(
                    file_spa.name.span(),
                    &format!("spa `{name}`: max_age"),
                    "must be at least 1s: fwknop's timestamps count seconds".into(),
                ));
            }
            sequence_spans.push(file_spa.name.span());
            rules.push(Rule {
                name: name.clone(),
                sequence: Vec::new(),
                once: None,
                rotating: None,
                spa: Some(spa),
                sequence_timeout: Duration::ZERO,
                open_for: file_spa.open_for.0,
                protect: file_spa.protect.get_ref().clone(),
            });
        }
        let spa_listens: Vec<u16> = rules
            .iter()
            .filter_map(|r| Some(r.spa.as_ref()?.listen))
            .collect();
        for (rule, span) in rules.iter().zip(&sequence_spans) {
            if let Some(port) = rule
                .protect
                .iter()
                .find(|p| p.0.proto == knock_common::IPPROTO_UDP && spa_listens.contains(&p.0.port))
            {
                return Err(invalid(
                    span.clone(),
                    &format!("rule `{}`: protect", rule.name),
                    format!("{port} is an SPA port; an SPA port must not be a service port"),
                ));
            }
        }
        let parts: usize = rules.iter().map(Rule::parts).sum();
        if parts > MAX_RULES {
            return Err(invalid(
                0..0,
                "rule",
                format!(
                    "the rules need {parts} rule indexes (a rotating rule takes two); at most {MAX_RULES} are supported"
                ),
            ));
        }
        for (rule, span) in rules.iter().zip(&sequence_spans) {
            for step in &rule.sequence {
                if let Some(protector) = protected_by.get(step) {
                    return Err(invalid(
                        span.clone(),
                        &format!("rule `{}`: sequence", rule.name),
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
            pin_dir: file
                .pin_dir
                .map_or_else(|| PathBuf::from(DEFAULT_PIN_DIR), Spanned::into_inner),
            allow: file.allow.into_iter().map(Spanned::into_inner).collect(),
            deny: file.deny.into_iter().map(Spanned::into_inner).collect(),
            flood_events_per_second: file
                .flood_events_per_second
                .unwrap_or(DEFAULT_FLOOD_EVENTS_PER_SECOND),
            spa_datagrams_per_second: file
                .spa_datagrams_per_second
                .unwrap_or(DEFAULT_SPA_DATAGRAMS_PER_SECOND),
            conceal: file.conceal,
            limits: file.limits,
            flows: file.flows,
            penalty: file.penalty,
            rules,
            warnings,
        })
    }
}

#[cfg(test)]
mod tests {
    use knock_common::{
        CONCEAL_CLOSED, CONCEAL_DROP, IPPROTO_TCP, IPPROTO_UDP, Knock, PortRoles, horizon_span,
        ipv4_mapped, port_roles_index,
    };

    use super::*;

    const EXAMPLE: &str = r#"# xknock.toml
interfaces = ["eth0"]            # `xknock run --iface IF` (repeatable) overrides
allow = ["192.0.2.0/24"]         # optional: always admitted to protected ports
deny  = ["198.51.100.7/32"]      # optional: never admitted, knocks ignored

[[rule]]
name = "ssh"
sequence = ["tcp:3721", "udp:4728", "tcp:6742"]
sequence_timeout = "10s"         # durations: "500ms", "10s", "5m", "1h"
open_for = "60s"
protect = ["tcp:22"]
"#;

    fn error(text: &str) -> String {
        Config::parse(text)
            .expect_err("config must be refused")
            .to_string()
    }

    fn with_rule(rule_lines: &str) -> String {
        format!("[[rule]]\nname = \"ssh\"\n{rule_lines}")
    }

    const SEQUENCE: &str = "sequence = [\"tcp:3721\", \"udp:4728\", \"tcp:1234\"]\n";
    const TIMES: &str = "sequence_timeout = \"10s\"\nopen_for = \"60s\"\n";

    const SPA_KEYS: &str = "key_base64 = \"wqpO0bCb8v0WXmVOiK2LDsWbx84d7V5NzC4dgQlcCRM=\"\nhmac_key_base64 = \"Kxo4R01PrSUXAbpKKe7vuuDrh6OMLbiCHoSWxdfz3fsyHcIp/A2VYw8JMusAK9W5ZlAqBzEtx/grXJr5Rg/5Mw==\"\n";

    fn with_spa(spa_lines: &str) -> String {
        format!("[[spa]]\nname = \"fwknop\"\n{spa_lines}")
    }

    #[test]
    fn an_spa_entry_takes_a_rule_index_and_its_udp_port() {
        let text = format!(
            "{}{SEQUENCE}{TIMES}protect = [\"tcp:22\"]\n{}listen = \"udp:62201\"\n{SPA_KEYS}open_for = \"30s\"\nprotect = [\"tcp:22\", \"tcp:443\"]\n",
            with_rule(""),
            with_spa("")
        );
        let config = Config::parse(&text).expect("valid");
        let spa = config.rules[1].spa.as_ref().expect("an SPA entry");
        assert_eq!(spa.listen, 62201);
        let _ = spa.keys();
        assert_eq!(spa.max_age, Duration::from_secs(120), "fwknop's default");
        assert!(!spa.require_source_address);
        assert!(config.rules[1].sequence.is_empty());
        assert!(
            !format!("{spa:?}").contains("wqpO"),
            "no key in Debug output"
        );
        let kernel = KernelConfig::try_from(&config).expect("fits");
        assert_eq!(kernel.rules.len(), 2);
        assert_eq!(kernel.rules[1].steps, 0, "no sequence: nothing knocks it");
        assert_eq!(kernel.settings.spa_datagrams_per_sec, 100);
        let roles: HashMap<u32, PortRoles> = kernel.port_roles.iter().copied().collect();
        let at = |proto, port| {
            roles
                .get(&port_roles_index(proto, port).expect("tcp/udp"))
                .copied()
        };
        assert_eq!(at(IPPROTO_UDP, 62201).map(|r| r.spa_rules), Some(0b10));
        assert_eq!(at(IPPROTO_TCP, 22).map(|r| r.protect_rules), Some(0b11));
        assert_eq!(at(IPPROTO_TCP, 443).map(|r| r.protect_rules), Some(0b10));

        // An SPA entry alone is a configuration; listen defaults to fwknop's port.
        let alone = Config::parse(&format!(
            "{}{SPA_KEYS}open_for = \"30s\"\nprotect = [\"tcp:22\"]\nmax_age = \"30s\"\nrequire_source_address = true\n",
            with_spa("")
        ))
        .expect("valid");
        let spa = alone.rules[0].spa.as_ref().expect("an SPA entry");
        assert_eq!(
            (spa.listen, spa.max_age, spa.require_source_address),
            (62201, Duration::from_secs(30), true)
        );
    }

    #[test]
    fn spa_entries_are_checked() {
        let spa = |lines: &str| {
            format!(
                "{}{lines}open_for = \"30s\"\nprotect = [\"tcp:22\"]\n",
                with_spa("")
            )
        };
        let tcp = error(&spa(&format!("listen = \"tcp:62201\"\n{SPA_KEYS}")));
        assert!(
            tcp.contains("listen") && tcp.contains("not a UDP port"),
            "{tcp}"
        );
        let not_b64 = error(&spa(
            "key_base64 = \"not base64!\"\nhmac_key_base64 = \"aGVsbG8=\"\n",
        ));
        assert!(
            not_b64.contains("key_base64") && not_b64.contains("not base64"),
            "{not_b64}"
        );
        let long = error(&spa(&format!(
            "key_base64 = \"{}\"\nhmac_key_base64 = \"aGVsbG8=\"\n",
            "QUFB".repeat(11)
        )));
        assert!(long.contains("fwknop takes 1 to 32"), "{long}");
        let same = error(&spa(
            "key_base64 = \"aGVsbG8=\"\nhmac_key_base64 = \"aGVsbG8\"\n",
        ));
        assert!(same.contains("are the same"), "{same}");
        let missing = error(&spa("key_base64 = \"aGVsbG8=\"\n"));
        assert!(missing.contains("hmac_key_base64"), "{missing}");

        let rule =
            |protect: &str| format!("{}{SEQUENCE}{TIMES}protect = [{protect}]\n", with_rule(""));
        let protected = error(&format!("{}{}", rule("\"udp:62201\""), spa(SPA_KEYS)));
        assert!(
            protected.contains("SPA port must not be a service port"),
            "{protected}"
        );
        let knock_step = error(&format!(
            "{}{}",
            rule("\"tcp:22\""),
            spa(&format!("listen = \"udp:4728\"\n{SPA_KEYS}"))
        ));
        assert!(
            knock_step.contains("knock step of rule `ssh`"),
            "{knock_step}"
        );
        let twice = error(&format!(
            "{}{}",
            rule("\"tcp:22\""),
            spa(SPA_KEYS).replace("fwknop", "ssh")
        ));
        assert!(twice.contains("defined twice"), "{twice}");
        let open_nothing = error(&format!(
            "{}{SPA_KEYS}open_for = \"30s\"\nprotect = []\n",
            with_spa("")
        ));
        assert!(open_nothing.contains("protects nothing"), "{open_nothing}");
    }

    #[test]
    fn product_example_parses() {
        let config = Config::parse(EXAMPLE).expect("the documented example is valid");
        assert_eq!(config.interfaces, ["eth0"]);
        let rule = &config.rules[0];
        assert_eq!(rule.name, "ssh");
        assert_eq!(
            rule.sequence,
            [
                PortSpec(Knock::tcp(3721)),
                PortSpec(Knock::udp(4728)),
                PortSpec(Knock::tcp(6742))
            ]
        );
        assert_eq!(rule.sequence_timeout, Duration::from_secs(10));
        assert_eq!(rule.open_for, Duration::from_secs(60));
        assert_eq!(rule.protect, [PortSpec(Knock::tcp(22))]);
        assert_eq!(config.allow[0].mapped(), (120, ipv4_mapped([192, 0, 2, 0])));
        assert_eq!(
            config.deny[0].mapped(),
            (128, ipv4_mapped([198, 51, 100, 7]))
        );
        // 3721 < 4728 < 6742: the example is monotonic, which is worth a warning.
        assert_eq!(config.warnings.len(), 1);
        assert!(config.warnings[0].contains("line 8") && config.warnings[0].contains("monotonic"));
    }

    #[test]
    fn kernel_config_flattens_rules_and_port_roles() {
        let config = Config::parse(EXAMPLE).expect("valid");
        let kernel = KernelConfig::try_from(&config).expect("fits the kernel");
        assert_eq!(kernel.settings.rules, 1);
        assert_eq!(kernel.settings.allow_entries, 1);
        assert_eq!(kernel.rules[0].steps, 3);
        assert_eq!(kernel.rules[0].sequence[1], Knock::udp(4728));
        assert_eq!(kernel.rules[0].open_for_ns, 60_000_000_000);
        let role = |proto, port| {
            let index = port_roles_index(proto, port).expect("tcp/udp");
            kernel
                .port_roles
                .iter()
                .find(|(i, _)| *i == index)
                .map(|(_, r)| *r)
        };
        assert_eq!(
            role(IPPROTO_TCP, 22),
            Some(PortRoles {
                protect_rules: 1,
                ..PortRoles::default()
            })
        );
        assert_eq!(
            role(IPPROTO_UDP, 4728),
            Some(PortRoles {
                knock_rules: 1,
                ..PortRoles::default()
            })
        );
        assert_eq!(
            role(IPPROTO_TCP, 4728),
            None,
            "protocol is part of the port"
        );
        assert_eq!(kernel.port_roles.len(), 4);
    }

    #[test]
    fn conceal_defaults_to_closed_and_takes_drop() {
        let rule = format!("{}{SEQUENCE}{TIMES}protect = [\"tcp:22\"]\n", with_rule(""));
        let kernel = |text: &str| {
            KernelConfig::try_from(&Config::parse(text).expect("valid"))
                .expect("fits")
                .settings
                .conceal
        };
        assert_eq!(Config::parse(&rule).unwrap().conceal, Conceal::Closed);
        assert_eq!(kernel(&rule), CONCEAL_CLOSED);
        assert_eq!(kernel(&format!("conceal = \"drop\"\n{rule}")), CONCEAL_DROP);
        assert_eq!(
            kernel(&format!("conceal = \"closed\"\n{rule}")),
            CONCEAL_CLOSED
        );
        let e = error(&format!("conceal = \"silent\"\n{rule}"));
        assert!(e.contains("line 1") && e.contains("silent"), "{e}");
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let e = error(&format!(
            "{}{SEQUENCE}{TIMES}protect = [\"tcp:22\"]\nopen = \"5s\"\n",
            with_rule("")
        ));
        assert!(
            e.contains("line 7") && e.contains("unknown field `open`"),
            "{e}"
        );
        let e = error(&format!("bogus = 1\n{}", with_rule("")));
        assert!(e.contains("line 1") && e.contains("bogus"), "{e}");
    }

    #[test]
    fn bad_ports_are_refused() {
        for (spec, problem) in [
            ("tcp:99999", "not a port"),
            ("tcp:0", "not a port"),
            ("sctp:22", "not a protocol"),
            ("22", "tcp:PORT"),
        ] {
            let e = error(&with_rule(&format!(
                "{SEQUENCE}{TIMES}protect = [\"{spec}\"]\n"
            )));
            assert!(e.contains("line 6") && e.contains(problem), "{spec}: {e}");
        }
    }

    #[test]
    fn bad_durations_are_refused() {
        for value in ["\"10\"", "\"ten seconds\"", "\"0s\"", "10"] {
            let e = error(&with_rule(&format!(
                "{SEQUENCE}sequence_timeout = {value}\nopen_for = \"60s\"\nprotect = [\"tcp:22\"]\n"
            )));
            assert!(
                e.contains("line 4") && e.contains("sequence_timeout"),
                "{value}: {e}"
            );
        }
        let ok = with_rule(&format!(
            "{SEQUENCE}sequence_timeout = \"500ms\"\nopen_for = \"1h\"\nprotect = [\"tcp:22\"]\n"
        ));
        let rule = &Config::parse(&ok).expect("valid").rules[0];
        assert_eq!(rule.sequence_timeout, Duration::from_millis(500));
        assert_eq!(rule.open_for, Duration::from_secs(3600));
    }

    #[test]
    fn sequences_that_are_empty_short_long_or_repeating_are_refused() {
        let rule = |sequence: &str| {
            with_rule(&format!(
                "sequence = [{sequence}]\n{TIMES}protect = [\"tcp:22\"]\n"
            ))
        };
        let e = error(&rule(""));
        assert!(
            e.contains("line 3") && e.contains("sequence") && e.contains("too short"),
            "{e}"
        );
        let e = error(&rule("\"tcp:1000\""));
        assert!(e.contains("too short"), "{e}");
        let long: Vec<String> = (0..17)
            .map(|i| format!("\"tcp:{}\"", 5000 - i * 7))
            .collect();
        let e = error(&rule(&long.join(", ")));
        assert!(e.contains("at most 16 steps"), "{e}");
        let e = error(&rule("\"tcp:1000\", \"udp:2000\", \"tcp:1000\""));
        assert!(e.contains("tcp:1000 appears twice"), "{e}");
        let two =
            Config::parse(&rule("\"tcp:2000\", \"udp:1000\"")).expect("two steps are allowed");
        assert!(
            two.warnings.iter().any(|w| w.contains("only 2 steps")),
            "{:?}",
            two.warnings
        );
    }

    #[test]
    fn knock_port_that_is_protected_is_refused() {
        let text = format!(
            "{}\n[[rule]]\nname = \"vpn\"\nsequence = [\"udp:9000\", \"tcp:22\", \"udp:8000\"]\n{TIMES}protect = [\"udp:51820\"]\n",
            with_rule(&format!("{SEQUENCE}{TIMES}protect = [\"tcp:22\"]\n"))
        );
        let e = error(&text);
        assert!(
            e.contains("line 10")
                && e.contains("tcp:22 is a knock step and also protected by rule `ssh`"),
            "{e}"
        );
    }

    #[test]
    fn colliding_rules_are_refused_or_warned() {
        let rule = |name: &str, sequence: &str, protect: &str| {
            format!(
                "[[rule]]\nname = \"{name}\"\nsequence = [{sequence}]\n{TIMES}protect = [\"{protect}\"]\n"
            )
        };
        let same = rule("a", "\"tcp:5000\", \"udp:3000\", \"tcp:4000\"", "tcp:22")
            + &rule("b", "\"tcp:5000\", \"udp:3000\", \"tcp:4000\"", "tcp:23");
        assert!(error(&same).contains("the same sequence as rule `a`"));
        let shared_start = rule("a", "\"tcp:5000\", \"udp:3000\", \"tcp:4000\"", "tcp:22")
            + &rule("b", "\"tcp:5000\", \"udp:6000\", \"tcp:4500\"", "tcp:23");
        let config = Config::parse(&shared_start).expect("a shared first step is allowed");
        assert!(
            config
                .warnings
                .iter()
                .any(|w| w.contains("starts with tcp:5000 like rule `a`"))
        );
        let twice = rule("a", "\"tcp:5000\", \"udp:3000\", \"tcp:4000\"", "tcp:22")
            + &rule("a", "\"tcp:5001\", \"udp:3001\", \"tcp:4001\"", "tcp:23");
        assert!(error(&twice).contains("rule `a` is defined twice"));
    }

    #[test]
    fn missing_rules_and_keys_are_refused() {
        assert!(error("interfaces = [\"eth0\"]\n").contains("no [[rule]]"));
        let e = error(&with_rule(&format!("{SEQUENCE}{TIMES}")));
        assert!(e.contains("missing field `protect`"), "{e}");
        let e = error(&with_rule(&format!("{SEQUENCE}{TIMES}protect = []\n")));
        assert!(e.contains("protects nothing"), "{e}");
    }

    #[test]
    fn lists_take_prefixes_and_addresses_of_both_families() {
        let text = format!(
            "allow = [\"2001:db8::/32\", \"203.0.113.9\"]\ndeny = [\"10.1.2.3/8\"]\n{}",
            with_rule(&format!("{SEQUENCE}{TIMES}protect = [\"tcp:22\"]\n"))
        );
        let config = Config::parse(&text).expect("valid");
        assert_eq!(config.allow[0].mapped().0, 32);
        assert_eq!(
            config.allow[1].mapped(),
            (128, ipv4_mapped([203, 0, 113, 9]))
        );
        // Host bits are cleared so the trie holds the prefix itself.
        assert_eq!(config.deny[0].mapped(), (104, ipv4_mapped([10, 0, 0, 0])));
        let everything = format!(
            "allow = [\"::/0\"]\ndeny = [\"2001:db8::/32\"]\n{}",
            with_rule(&format!("{SEQUENCE}{TIMES}protect = [\"tcp:22\"]\n"))
        );
        let warnings = Config::parse(&everything).expect("valid").warnings;
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("line 1: allow: ::/0 also covers every IPv4 address"),
            "{warnings:?}"
        );
        let e = error(&format!("deny = [\"300.1.1.1\"]\n{}", with_rule("")));
        assert!(
            e.contains("line 1") && e.contains("not an address or CIDR prefix"),
            "{e}"
        );
    }

    #[test]
    fn limits_and_interfaces_are_checked() {
        let rule = with_rule(&format!("{SEQUENCE}{TIMES}protect = [\"tcp:22\"]\n"));
        let e = error(&format!("[limits]\ngrant_entries = 0\n{rule}"));
        assert!(
            e.contains("line 2") && e.contains("limits.grant_entries"),
            "{e}"
        );
        let e = error(&format!(
            "interfaces = [\"a-very-long-interface-name\"]\n{rule}"
        ));
        assert!(
            e.contains("line 1") && e.contains("not an interface name"),
            "{e}"
        );
        let config = Config::parse(&format!(
            "[limits]\nflow_entries = 1024\n[flows]\nudp_idle = \"30s\"\n{rule}"
        ))
        .expect("valid");
        let kernel = KernelConfig::try_from(&config).expect("fits");
        assert_eq!(kernel.flow_entries, 1024);
        assert_eq!(kernel.first_step_entries, 65_536);
        assert_eq!(kernel.progress_entries, 16_384);
        assert_eq!(kernel.settings.udp_idle_ns, 30_000_000_000);
    }

    #[test]
    fn penalty_has_safe_defaults_and_can_be_tuned_or_turned_off() {
        let rule = with_rule(&format!("{SEQUENCE}{TIMES}protect = [\"tcp:22\"]\n"));
        let kernel = |text: &str| {
            KernelConfig::try_from(&Config::parse(text).expect("valid")).expect("fits")
        };
        let defaults = kernel(&rule).settings;
        assert_eq!(
            (
                defaults.penalty_failures,
                defaults.penalty_window_ns,
                defaults.penalty_ns
            ),
            (5, 60_000_000_000, 300_000_000_000)
        );
        let tuned = kernel(&format!(
            "[penalty]\nfailures = 3\nwindow = \"10s\"\nduration = \"1h\"\n{rule}"
        ))
        .settings;
        assert_eq!(
            (tuned.penalty_failures, tuned.penalty_ns),
            (3, 3_600_000_000_000)
        );
        assert_eq!(
            kernel(&format!("[penalty]\nfailures = 0\n{rule}"))
                .settings
                .penalty_failures,
            0
        );
        let e = error(&format!("[penalty]\nduration = \"forever\"\n{rule}"));
        assert!(e.contains("line 2") && e.contains("duration"), "{e}");
    }

    #[test]
    fn horizons_cover_the_longest_sequence_and_the_longest_admission() {
        let text = "[flows]\ntcp_idle = \"2h\"\n[[rule]]\nname = \"a\"\n\
                    sequence = [\"tcp:1\", \"udp:2\", \"tcp:3\"]\nsequence_timeout = \"10s\"\n\
                    open_for = \"3h\"\nprotect = [\"tcp:22\"]\n\
                    [[rule]]\nname = \"b\"\nsequence = [\"tcp:4\", \"udp:5\", \"tcp:6\"]\n\
                    sequence_timeout = \"40s\"\nopen_for = \"1m\"\nprotect = [\"tcp:23\"]\n";
        let kernel = KernelConfig::try_from(&Config::parse(text).expect("valid")).expect("fits");
        let second = 1_000_000_000;
        assert_eq!(kernel.settings.knocking_horizon, horizon_span(40 * second));
        assert_eq!(
            kernel.settings.admitted_horizon,
            horizon_span(3 * 3600 * second)
        );
    }

    #[test]
    fn the_failing_horizon_covers_the_longer_of_the_penalty_window_and_the_penalty() {
        let second = 1_000_000_000;
        for (penalty, longer) in [
            ("window = \"10m\"\nduration = \"1m\"", 600 * second),
            ("window = \"1m\"\nduration = \"2h\"", 7200 * second),
        ] {
            let rule = with_rule(&format!("{SEQUENCE}{TIMES}protect = [\"tcp:22\"]\n"));
            let text = format!("[penalty]\n{penalty}\n{rule}");
            let kernel =
                KernelConfig::try_from(&Config::parse(&text).expect("valid")).expect("fits");
            assert_eq!(
                kernel.settings.failing_horizon,
                horizon_span(longer),
                "{penalty}"
            );
        }
    }

    #[test]
    fn icmp_steps_take_a_payload_size_and_are_never_protected() {
        let ok = with_rule(&format!(
            "sequence = [\"icmp:512\", \"udp:4728\", \"tcp:6742\"]\n{TIMES}protect = [\"tcp:8443\"]\n"
        ));
        let config = Config::parse(&ok).expect("valid");
        assert_eq!(config.rules[0].sequence[0], PortSpec(Knock::icmp(512)));
        assert_eq!(config.rules[0].sequence[0].to_string(), "icmp:512");
        let kernel = KernelConfig::try_from(&config).expect("fits");
        let index = port_roles_index(knock_common::IPPROTO_ICMP, 512).expect("icmp");
        assert!(
            kernel
                .port_roles
                .iter()
                .any(|(i, r)| *i == index && r.knock_rules == 1)
        );
        for (bad, needle) in [
            ("icmp:1453", "not an echo payload size"),
            ("icmp:x", "not an echo payload size"),
            ("gre:1", "not a protocol (tcp, udp or icmp)"),
        ] {
            let text = with_rule(&format!(
                "sequence = [\"{bad}\", \"udp:4728\", \"tcp:6742\"]\n{TIMES}protect = [\"tcp:22\"]\n"
            ));
            assert!(error(&text).contains(needle), "{bad}: {}", error(&text));
        }
        let protected = with_rule(&format!("{SEQUENCE}{TIMES}protect = [\"icmp:64\"]\n"));
        assert!(
            error(&protected).contains("protect TCP or UDP ports"),
            "{}",
            error(&protected)
        );
    }

    #[test]
    fn a_one_time_rule_takes_the_first_unused_line_and_checks_them_all() {
        let dir = tempfile::tempdir().expect("tempdir");
        let otp = dir.path().join("ssh.otp");
        std::fs::write(
            &otp,
            "#7001,7002,7003\n8001:udp,8002,8003:udp\n9001,9002,9003\n",
        )
        .expect("write");
        let text = with_rule(&format!(
            "sequences_file = \"ssh.otp\"\n{TIMES}protect = [\"tcp:22\"]\n"
        ));
        let config = Config::parse_in(&text, dir.path()).expect("valid");
        let rule = &config.rules[0];
        assert_eq!(
            rule.sequence,
            [
                PortSpec(Knock::udp(8001)),
                PortSpec(Knock::tcp(8002)),
                PortSpec(Knock::udp(8003))
            ]
        );
        assert_eq!(rule.once.as_ref().map(|o| o.line), Some(2));
        assert_eq!(
            KernelConfig::try_from(&config).expect("fits").rules[0].once,
            1
        );
        // A bad later line is found now, not when its turn comes.
        std::fs::write(&otp, "7001,7002,7003\n8001,8001,8003\n").expect("write");
        let error = Config::parse_in(&text, dir.path())
            .expect_err("refused")
            .to_string();
        assert!(error.contains("line 2: tcp:8001 appears twice"), "{error}");
        // Both forms at once, or neither, are refused.
        let both = with_rule(&format!(
            "{SEQUENCE}sequences_file = \"ssh.otp\"\n{TIMES}protect = [\"tcp:22\"]\n"
        ));
        assert!(
            Config::parse_in(&both, dir.path())
                .expect_err("refused")
                .to_string()
                .contains("one of `sequence`, `sequences_file` or `secret_file`")
        );
        // Every line used: the rule opens nothing, with a warning.
        std::fs::write(&otp, "#7001,7002,7003\n").expect("write");
        let config = Config::parse_in(&text, dir.path()).expect("valid");
        assert!(config.rules[0].sequence.is_empty());
        assert!(
            config
                .warnings
                .iter()
                .any(|w| w.contains("no unused sequence"))
        );
    }

    /// A secret file with mode 600 in `dir`.
    fn secret(dir: &Path, name: &str, secret: &str) {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.join(name);
        std::fs::write(&path, format!("{secret}\n")).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }

    const KEY_A: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    const KEY_B: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";

    #[test]
    fn a_rotating_rule_takes_two_indexes_with_this_and_the_last_windows_sequences() {
        let dir = tempfile::tempdir().expect("tempdir");
        secret(dir.path(), "ssh.key", KEY_A);
        let text = format!(
            "{}{TIMES}protect = [\"tcp:22\"]\n{}secret_file = \"ssh.key\"\nrotate = \"30s\"\nsteps = 5\n{TIMES}protect = [\"tcp:2222\"]\n",
            with_rule(SEQUENCE),
            "[[rule]]\nname = \"rot\"\n"
        );
        let config = Config::parse_in(&text, dir.path()).expect("valid");
        assert!(
            config.warnings.iter().all(|w| !w.contains("ssh.key")),
            "{:?}",
            config.warnings
        );
        let rule = &config.rules[1];
        let rotating = rule.rotating.as_ref().expect("rotating");
        assert_eq!(
            (rotating.steps, rotating.rotate),
            (5, Duration::from_secs(30))
        );
        assert_eq!(rule.parts(), 2);
        assert_eq!(config.slots_in_order(), [vec![0], vec![1, 2]]);
        // 1000 * 30s + 1s: window 1000 (even: part 0), and 999 (part 1).
        let now = std::time::UNIX_EPOCH + Duration::from_secs(30_001);
        let kernel = KernelConfig::placed(&config, &config.slots_in_order(), now).expect("fits");
        let steps = |index: usize| -> Vec<Knock> {
            let r = &kernel.rules[index];
            r.sequence[..r.steps as usize].to_vec()
        };
        let window = |w| -> Vec<Knock> {
            rotating
                .sequence(w)
                .expect("derives")
                .iter()
                .map(|s| s.0)
                .collect()
        };
        assert_eq!(steps(1), window(1000));
        assert_eq!(steps(2), window(999));
        assert_eq!(
            rule.sequence_at(now).expect("derives"),
            rotating.sequence(1000).expect("derives")
        );
        assert!(
            kernel.rules[1].once == 1 && kernel.rules[2].once == 1,
            "each opens once"
        );
        assert_eq!(kernel.rules[0].once, 0);
        // Both parts guard the rule's port; the knock ports are the steps'.
        let roles = |spec: &str| {
            let spec: PortSpec = spec.parse().expect("spec");
            let index = port_roles_index(spec.0.proto, spec.0.port).expect("index");
            kernel
                .port_roles
                .iter()
                .find(|(i, _)| *i == index)
                .map(|(_, r)| *r)
        };
        assert_eq!(roles("tcp:2222").expect("guarded").protect_rules, 0b110);
        let first = PortSpec(window(999)[0]).to_string();
        assert_ne!(roles(&first).expect("a knock port").knock_rules & 0b100, 0);
        // A window later, 1001 (odd) replaces 999 and 1000 stays where it was.
        let later = now + Duration::from_secs(30);
        let next = KernelConfig::placed(&config, &config.slots_in_order(), later).expect("fits");
        assert_eq!(next.rules[1], kernel.rules[1]);
        assert_ne!(next.rules[2].sequence_tag, kernel.rules[2].sequence_tag);
        assert_eq!(
            config.next_rotation(now),
            Some(std::time::UNIX_EPOCH + Duration::from_secs(30_030))
        );
        // Never a protected port, in any window.
        for w in 0..2000 {
            assert!(
                !rotating
                    .sequence(w)
                    .expect("derives")
                    .contains(&PortSpec(Knock::tcp(2222)))
            );
        }
    }

    #[test]
    fn rotating_rules_are_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        secret(dir.path(), "a.key", KEY_A);
        secret(dir.path(), "a-copy.key", KEY_A);
        secret(dir.path(), "b.key", KEY_B);
        std::fs::write(dir.path().join("short.key"), "c2hvcnQ=\n").expect("write");
        let rule = |name: &str, keys: &str| {
            format!("[[rule]]\nname = \"{name}\"\n{keys}{TIMES}protect = [\"tcp:22\"]\n")
        };
        let refused = |text: &str| {
            Config::parse_in(text, dir.path())
                .expect_err("refused")
                .to_string()
        };
        let e = refused(&rule("r", "secret_file = \"a.key\"\nsteps = 1\n"));
        assert!(e.contains("steps") && e.contains("outside 2..=16"), "{e}");
        let e = refused(&rule("r", "secret_file = \"a.key\"\nrotate = \"1s\"\n"));
        assert!(e.contains("rotate") && e.contains("at least 2s"), "{e}");
        let e = refused(&rule("r", "secret_file = \"short.key\"\n"));
        assert!(e.contains("too short"), "{e}");
        let e = refused(&rule("r", "secret_file = \"missing.key\"\n"));
        assert!(e.contains("missing.key"), "{e}");
        let e = refused(&rule("r", &format!("{SEQUENCE}rotate = \"30s\"\n")));
        assert!(e.contains("rotate") && e.contains("secret_file"), "{e}");
        let e = refused(&rule(
            "r",
            "secret_file = \"a.key\"\nport_range = \"5000-5010\"\n",
        ));
        assert!(
            e.contains("port_range 5000-5010") && e.contains("widen"),
            "{e}"
        );
        let e = refused(&format!(
            "{}{}",
            rule("r", "secret_file = \"a.key\"\n"),
            rule("s", "secret_file = \"a-copy.key\"\n")
        ));
        assert!(e.contains("the same secret as rule `r`"), "{e}");
        let two = format!(
            "{}{}",
            rule("r", "secret_file = \"a.key\"\n"),
            rule(
                "s",
                "secret_file = \"b.key\"\nport_range = \"40000-41000\"\n"
            )
        );
        let config = Config::parse_in(&two, dir.path()).expect("valid");
        let s = config.rules[1].rotating.as_ref().expect("rotating");
        assert_eq!(
            config.rules[0].rotating.as_ref().expect("rotating").rotate,
            Duration::from_secs(30)
        );
        assert!(
            s.sequence(7)
                .expect("derives")
                .iter()
                .all(|p| (40000..=41000).contains(&p.0.port))
        );
        // A rotating rule takes two of the 16 indexes.
        let keys: Vec<String> = (0..9)
            .map(|i| {
                let name = format!("k{i}.key");
                secret(dir.path(), &name, &rotating::keygen().expect("random"));
                rule(&format!("r{i}"), &format!("secret_file = \"{name}\"\n"))
            })
            .collect();
        let e = refused(&keys.concat());
        assert!(e.contains("18 rule indexes"), "{e}");
        Config::parse_in(&keys[..8].concat(), dir.path()).expect("16 indexes fit");
        // A secret others can read is a warning.
        std::fs::write(dir.path().join("open.key"), format!("{KEY_B}\n")).expect("write");
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(
            dir.path().join("open.key"),
            std::fs::Permissions::from_mode(0o644),
        )
        .expect("chmod");
        let config = Config::parse_in(&rule("r", "secret_file = \"open.key\"\n"), dir.path())
            .expect("valid");
        assert!(
            config.warnings.iter().any(|w| w.contains("chmod 600")),
            "{:?}",
            config.warnings
        );
    }
}
