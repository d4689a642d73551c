//! One `[[rule]]` on its own: its `protect`, which one of `sequence`,
//! `sequences_file` and `secret_file` it has, and that kind's keys.

use std::{ops::Range, path::PathBuf, time::Duration};

use knock_common::{MAX_FIRST_STEP_TIMEOUT_NS, MAX_IPV4_HOST_BITS, MAX_IPV6_HOST_BITS, MAX_STEPS};
use toml::Spanned;

use super::report::Report;
use crate::config::{
    file::FileRule,
    model::ConfigError,
    model::Rule,
    model::RuleKind,
    one_time::{self, OneTime},
    rotating::{self, Rotating},
    values::{GrantScope, PortSpec},
};

/// Shortest sequence accepted, and the length below which a warning is given.
const MIN_STEPS: usize = 2;
const RECOMMENDED_STEPS: usize = 3;
/// Longest `sequence_timeout` accepted: within what `FIRST_STEPS` records
/// time (`MAX_FIRST_STEP_TIMEOUT_NS`, about 39 h).
const MAX_SEQUENCE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
const _: () = assert!(MAX_SEQUENCE_TIMEOUT.as_nanos() < MAX_FIRST_STEP_TIMEOUT_NS as u128);

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

/// A rule's or SPA entry's `protect`: TCP and UDP ports, each once.
pub(super) fn check_protect(
    owner: &str,
    protect: &Spanned<Vec<PortSpec>>,
    report: &Report<'_>,
) -> Result<(), ConfigError> {
    let at =
        |problem: String| report.invalid(protect.span(), &format!("{owner}: protect"), problem);
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

/// Narrowest scopes that pass without a warning: a knock opening a /24
/// or a /48 already opens it to everyone there.
const QUIET_IPV4_SCOPE: u8 = 24;
const QUIET_IPV6_SCOPE: u8 = 48;

/// A rule's or SPA entry's `grant_scope`: no wider than an IPv4 /16 or an
/// IPv6 /32 (refused), with a warning past a /24 or a /48.
pub(super) fn check_scope(
    owner: &str,
    scope: Option<&Spanned<GrantScope>>,
    report: &mut Report<'_>,
) -> Result<GrantScope, ConfigError> {
    let Some(scope) = scope else {
        return Ok(GrantScope::default());
    };
    let key = format!("{owner}: grant_scope");
    let value = *scope.get_ref();
    let widest_ipv4 = 32 - MAX_IPV4_HOST_BITS as u8;
    let widest_ipv6 = 128 - MAX_IPV6_HOST_BITS as u8;
    for (family, len, full, widest, quiet) in [
        ("ipv4", value.ipv4, 32, widest_ipv4, QUIET_IPV4_SCOPE),
        ("ipv6", value.ipv6, 128, widest_ipv6, QUIET_IPV6_SCOPE),
    ] {
        if len > full {
            return Err(report.invalid(
                scope.span(),
                &key,
                format!("{family} = {len} is no prefix length (at most {full})"),
            ));
        }
        if len < widest {
            return Err(report.invalid(
                scope.span(),
                &key,
                format!(
                    "{family} = {len} would let one knock open a /{len}; the widest scope is /{widest}"
                ),
            ));
        }
        if len < quiet {
            report.warn(
                scope.span(),
                &key,
                format!(
                    "{family} = {len}: a grant opens the protected ports to every address of a /{len}, anyone sharing it included"
                ),
            );
        }
    }
    Ok(value)
}

/// The rule, checked on its own, and where its sequence comes from (its
/// `sequence`, `sequences_file` or `secret_file`) for problems found when
/// it is set beside the others. A rotating rule never draws a `reserved`
/// step.
pub(super) fn check(
    rule: &FileRule,
    reserved: &[PortSpec],
    report: &mut Report<'_>,
) -> Result<(Rule, Range<usize>), ConfigError> {
    let name = rule.name.get_ref().as_str();
    check_protect(&format!("rule `{name}`"), &rule.protect, report)?;
    if rule.sequence_timeout.0 > MAX_SEQUENCE_TIMEOUT {
        return Err(report.invalid(
            rule.name.span(),
            &format!("rule `{name}`: sequence_timeout"),
            format!(
                "{:?} is longer than the {}h a first step's record can time",
                rule.sequence_timeout.0,
                MAX_SEQUENCE_TIMEOUT.as_secs() / 3600
            ),
        ));
    }
    let given = [
        rule.sequence.is_some(),
        rule.sequences_file.is_some(),
        rule.secret_file.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(report.invalid(
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
            return Err(report.invalid(
                span,
                &format!("rule `{name}`: {key}"),
                "belongs to a rotating rule, one with `secret_file`".into(),
            ));
        }
    }
    #[expect(
        clippy::unreachable,
        reason = "an invariant: exactly one source was checked above"
    )]
    let (kind, span) = match (&rule.sequence, &rule.sequences_file, &rule.secret_file) {
        (_, _, Some(file)) => (
            RuleKind::Rotating(rotating_rule(rule, file, reserved, report)?),
            file.span(),
        ),
        (_, Some(file), _) => (one_time_rule(rule, file, report)?, file.span()),
        (Some(sequence), _, _) => {
            written(name, sequence.get_ref(), sequence.span(), report)?;
            let fixed = RuleKind::Fixed {
                sequence: sequence.get_ref().clone(),
            };
            (fixed, sequence.span())
        }
        (None, None, None) => unreachable!("one source was given"),
    };
    let rule = Rule {
        name: name.to_owned(),
        kind,
        sequence_timeout: rule.sequence_timeout.0,
        open_for: rule.open_for.0,
        protect: rule.protect.get_ref().clone(),
        grant_scope: check_scope(&format!("rule `{name}`"), rule.grant_scope.as_ref(), report)?,
    };
    Ok((rule, span))
}

/// A live sequence, written at `span`: its length and steps, and warnings
/// for one that is short or in a port scan's order.
fn written(
    name: &str,
    sequence: &[PortSpec],
    span: Range<usize>,
    report: &mut Report<'_>,
) -> Result<(), ConfigError> {
    let key = format!("rule `{name}`: sequence");
    check_sequence(sequence).map_err(|problem| report.invalid(span.clone(), &key, problem))?;
    if sequence.len() < RECOMMENDED_STEPS {
        report.warn(
            span.clone(),
            &key,
            format!(
                "only {} steps; {RECOMMENDED_STEPS} or more are much harder to guess",
                sequence.len()
            ),
        );
    }
    let ports: Vec<u16> = sequence.iter().map(|s| s.0.port).collect();
    if ports.windows(2).all(|w| w[0] < w[1]) || ports.windows(2).all(|w| w[0] > w[1]) {
        report.warn(
            span,
            &key,
            "ports are monotonic, the order a port scan uses; shuffle them".into(),
        );
    }
    Ok(())
}

/// A one-time rule: its file's first unused line, with every unused line
/// checked (not only the live one).
fn one_time_rule(
    rule: &FileRule,
    file: &Spanned<PathBuf>,
    report: &mut Report<'_>,
) -> Result<RuleKind, ConfigError> {
    let name = rule.name.get_ref();
    #[expect(
        clippy::expect_used,
        reason = "an invariant: File::load reads every sequences_file"
    )]
    let loaded = rule
        .sequences
        .as_ref()
        .expect("File::load reads every sequences_file");
    let path = &loaded.path;
    let at = |problem: String| {
        report.invalid(
            file.span(),
            &format!("rule `{name}`: sequences_file"),
            format!("{}: {problem}", path.display()),
        )
    };
    let text = loaded.text.as_ref().map_err(|e| at(e.clone()))?;
    let mut parsed = Vec::new();
    for (number, line) in one_time::unused_lines_in(text) {
        let steps = one_time::parse_line(&line)
            .and_then(|steps| check_sequence(&steps).map(|()| steps))
            .map_err(|problem| at(format!("line {number}: {problem}")))?;
        parsed.push((number, steps));
    }
    let Some((line, sequence)) = parsed.into_iter().next() else {
        report.warn(
            file.span(),
            &format!("rule `{name}`: sequences_file"),
            format!(
                "{} has no unused sequence left; the rule opens nothing until one is added",
                path.display()
            ),
        );
        let file = OneTime {
            path: path.clone(),
            line: 0,
        };
        return Ok(RuleKind::OneTime {
            file,
            sequence: Vec::new(),
        });
    };
    written(name, &sequence, file.span(), report)?;
    let file = OneTime {
        path: path.clone(),
        line,
    };
    Ok(RuleKind::OneTime { file, sequence })
}

/// A rotating rule's secret and keys, and warnings about its secret file
/// and a short sequence.
fn rotating_rule(
    rule: &FileRule,
    file: &Spanned<PathBuf>,
    reserved: &[PortSpec],
    report: &mut Report<'_>,
) -> Result<Rotating, ConfigError> {
    let name = rule.name.get_ref();
    #[expect(
        clippy::expect_used,
        reason = "an invariant: File::load reads every secret_file"
    )]
    let (loaded, mode) = rule
        .secret
        .as_ref()
        .expect("File::load reads every secret_file");
    let path = &loaded.path;
    let key_at = |key: &str| format!("rule `{name}`: {key}");
    let at_file = |problem: &str| {
        report.invalid(
            file.span(),
            &key_at("secret_file"),
            format!("{}: {problem}", path.display()),
        )
    };
    let text = loaded.text.as_deref().map_err(|e| at_file(e))?;
    let key = rotating::parse_secret(text).map_err(|e| at_file(&e))?;
    let mode = mode.as_ref().map_err(|e| at_file(e))?;
    let warning = rotating::readable_by_others(path, *mode);
    let steps = rule
        .steps
        .as_ref()
        .map_or(rotating::DEFAULT_STEPS, |s| *s.get_ref());
    if !(MIN_STEPS..=MAX_STEPS).contains(&steps) {
        let span = rule
            .steps
            .as_ref()
            .map_or_else(|| file.span(), Spanned::span);
        return Err(report.invalid(
            span,
            &key_at("steps"),
            format!("{steps} is outside {MIN_STEPS}..={MAX_STEPS}"),
        ));
    }
    let rotate = rule
        .rotate
        .as_ref()
        .map_or(rotating::DEFAULT_ROTATE, |r| r.get_ref().0);
    if let Some(span) = rule.rotate.as_ref().map(Spanned::span)
        && rotate < rotating::MIN_ROTATE
    {
        return Err(report.invalid(
            span,
            &key_at("rotate"),
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
    let rotating = Rotating::new(path.clone(), key, rotate, steps, range, reserved.to_vec())
        .map_err(|problem| {
            let span = rule
                .port_range
                .as_ref()
                .map_or_else(|| file.span(), Spanned::span);
            report.invalid(span, &key_at("port_range"), problem)
        })?;
    if let Some(warning) = warning {
        report.warn(file.span(), &key_at("secret_file"), warning);
    }
    if rotating.steps < RECOMMENDED_STEPS {
        report.warn(
            file.span(),
            &key_at("steps"),
            format!(
                "only {}; {RECOMMENDED_STEPS} or more are much harder to guess",
                rotating.steps
            ),
        );
    }
    Ok(rotating)
}
