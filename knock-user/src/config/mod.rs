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

pub use kernel::{KernelConfig, KernelConfigError};
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

/// One validated rule: a `[[rule]]`, or an `[[spa]]` entry (a rule
/// without a sequence whose grants come from the loader).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    /// Where its sequences come from.
    pub kind: RuleKind,
    pub sequence_timeout: Duration,
    pub open_for: Duration,
    pub protect: Vec<PortSpec>,
}

/// What opens a rule's ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleKind {
    /// `sequence`: the same steps every time.
    Fixed { sequence: Vec<PortSpec> },
    /// `sequences_file`: the file's first unused line, which opens once
    /// and is then marked used and replaced. `sequence` is empty (and
    /// `file.line` 0) when no line is left: the rule then opens nothing.
    OneTime {
        file: one_time::OneTime,
        sequence: Vec<PortSpec>,
    },
    /// `secret_file`: sequences derived from a secret and the time window
    /// (`Rule::sequences_at`); each opens once.
    Rotating(rotating::Rotating),
    /// `[[spa]]`: no sequence; its grants come from the loader when a
    /// packet checks out.
    Spa(spa::Spa),
}

impl Rule {
    /// The sequence written for it: a fixed rule's, or a one-time rule's
    /// live line; empty for a one-time rule with no line left, a rotating
    /// rule (whose sequences come from `sequences_at`) and an SPA entry.
    pub fn sequence(&self) -> &[PortSpec] {
        match &self.kind {
            RuleKind::Fixed { sequence } | RuleKind::OneTime { sequence, .. } => sequence,
            RuleKind::Rotating(_) | RuleKind::Spa(_) => &[],
        }
    }

    /// Its live one-time line, if it is a one-time rule.
    pub fn one_time(&self) -> Option<&one_time::OneTime> {
        match &self.kind {
            RuleKind::OneTime { file, .. } => Some(file),
            _ => None,
        }
    }

    /// Its secret and schedule, if it is a rotating rule.
    pub fn rotating(&self) -> Option<&rotating::Rotating> {
        match &self.kind {
            RuleKind::Rotating(rotating) => Some(rotating),
            _ => None,
        }
    }

    /// Its keys and policy, if it is an SPA entry.
    pub fn spa(&self) -> Option<&spa::Spa> {
        match &self.kind {
            RuleKind::Spa(spa) => Some(spa),
            _ => None,
        }
    }

    /// Whether each sequence opens once: a one-time or a rotating rule's.
    pub fn opens_once(&self) -> bool {
        matches!(self.kind, RuleKind::OneTime { .. } | RuleKind::Rotating(_))
    }

    /// How many steps it takes to knock (0 for an SPA entry).
    pub fn steps(&self) -> usize {
        match &self.kind {
            RuleKind::Rotating(rotating) => rotating.steps,
            _ => self.sequence().len(),
        }
    }

    /// How many rule indexes the rule takes in the kernel: two for a
    /// rotating rule (the current window's sequence and the one before),
    /// else one.
    pub fn parts(&self) -> usize {
        match self.kind {
            RuleKind::Rotating(_) => 2,
            _ => 1,
        }
    }

    /// The sequence of each part at `now`. A rotating rule's part 0 holds
    /// the sequence of whichever of the current and the previous window is
    /// even, part 1 the odd one's: a sequence stays in its part (and keeps
    /// the progress made with it) for both windows it is live.
    pub fn sequences_at(&self, now: SystemTime) -> Result<Vec<Vec<PortSpec>>, String> {
        let RuleKind::Rotating(rotating) = &self.kind else {
            return Ok(vec![self.sequence().to_vec()]);
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
        match &self.kind {
            RuleKind::Rotating(rotating) => rotating.sequence(rotating.window(now)),
            _ => Ok(self.sequence().to_vec()),
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
            .filter_map(Rule::rotating)
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
        for (key, limit) in [
            ("limits.first_step_entries", &file.limits.first_step_entries),
            ("limits.progress_entries", &file.limits.progress_entries),
            ("limits.grant_entries", &file.limits.grant_entries),
            ("limits.flow_entries", &file.limits.flow_entries),
            ("limits.penalty_entries", &file.limits.penalty_entries),
        ] {
            if !(1..=MAX_MAP_ENTRIES).contains(limit.get_ref()) {
                return Err(invalid(
                    limit.span(),
                    key,
                    format!("{} is outside 1..={MAX_MAP_ENTRIES}", limit.get_ref()),
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
            let new_rule = |kind| Rule {
                name: name.to_owned(),
                kind,
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
                    .find(|r| r.rotating().is_some_and(|o| o.same_key(&rotating)))
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
                rules.push(new_rule(RuleKind::Rotating(rotating)));
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
                            rules.push(new_rule(RuleKind::OneTime {
                                file: one_time::OneTime { path, line: 0 },
                                sequence: Vec::new(),
                            }));
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
            rules.push(new_rule(match once {
                Some(file) => RuleKind::OneTime {
                    file,
                    sequence: sequence.clone(),
                },
                None => RuleKind::Fixed {
                    sequence: sequence.clone(),
                },
            }));
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
            if let Some(rule) = rules.iter().find(|r| r.sequence().contains(&listen)) {
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
                kind: RuleKind::Spa(spa),
                sequence_timeout: Duration::ZERO,
                open_for: file_spa.open_for.0,
                protect: file_spa.protect.get_ref().clone(),
            });
        }
        let spa_listens: Vec<u16> = rules.iter().filter_map(|r| Some(r.spa()?.listen)).collect();
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
            for step in rule.sequence() {
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
mod tests;
