//! The validated configuration: what every other part of xknock reads.

use std::{
    path::PathBuf,
    time::{Duration, SystemTime},
};

use super::{
    file::{Conceal, FlowTimeouts, Limits, PenaltyConfig},
    fleet, one_time, rotating, spa,
    values::{GrantScope, PortSpec, Prefix},
};

/// Where the filter is pinned unless `pin_dir` says otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/xknock";

/// Denied attempts and first steps reported per CPU and second.
pub(super) const DEFAULT_FLOOD_EVENTS_PER_SECOND: u32 = 20;

/// SPA datagrams each CPU hands to the loader per second: far more than
/// people knock, far less than a flood.
pub(super) const DEFAULT_SPA_DATAGRAMS_PER_SECOND: u32 = 100;

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
    /// What of the knocking (or named) address its grants admit.
    pub grant_scope: GrantScope,
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
    /// `[fleet]`: the hosts this one shares its grants and spends with.
    pub fleet: Option<fleet::Fleet>,
    /// Legal but unwise choices, each naming its line.
    pub warnings: Vec<String>,
    /// The text it was read from. A one-time line used while the file
    /// cannot be loaded moves on by reading this anew, with the sequences
    /// file as it is then.
    pub source: String,
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
