//! What rules and SPA entries may not share: names, secrets, sequences,
//! first steps (a warning), and ports that would be a knock step, a
//! protected port or an SPA port at once; and how many rule indexes they
//! take together.
//!
//! Each rule is set beside the ones before it as it is checked (`rule`,
//! `spa_listen`), and all of them once every one is in (`all`).

use std::ops::Range;

use knock_common::{IPPROTO_UDP, Knock, MAX_RULES, RULE_NAME_BYTES};
use toml::Spanned;

use super::report::Report;
use crate::config::{
    file::{File, FileSpa},
    model::ConfigError,
    model::Rule,
    model::RuleKind,
    spa::Spa,
    values::PortSpec,
};

/// Something to protect, and no more rules and SPA entries than the kernel
/// has indexes.
pub(super) fn count(file: &File, report: &Report<'_>) -> Result<(), ConfigError> {
    if file.rules.is_empty() && file.spas.is_empty() {
        return Err(report.invalid(
            0..0,
            "rule",
            "no [[rule]] and no [[spa]]: there is nothing to protect".into(),
        ));
    }
    if file.rules.len() + file.spas.len() > MAX_RULES {
        return Err(report.invalid(
            0..0,
            "rule",
            format!("at most {MAX_RULES} rules and SPA entries are supported"),
        ));
    }
    Ok(())
}

/// Every port a rule or SPA entry protects and every SPA port: the steps
/// no rotating sequence draws.
pub(super) fn reserved(file: &File) -> Vec<PortSpec> {
    let spa_ports = file.spas.iter().filter_map(FileSpa::listen_port);
    let mut reserved: Vec<PortSpec> = file
        .rules
        .iter()
        .map(|r| &r.protect)
        .chain(file.spas.iter().map(|s| &s.protect))
        .flat_map(|protect| protect.get_ref().iter().copied())
        .filter(|p| !p.is_icmp())
        .chain(spa_ports.map(|port| PortSpec(Knock::udp(port))))
        .collect();
    reserved.sort_by_key(|p| (p.0.proto, p.0.port));
    reserved.dedup();
    reserved
}

/// Every rule's and SPA entry's name: present, short enough for the
/// kernel's record, and not one that came before.
pub(super) fn names(file: &File, report: &Report<'_>) -> Result<(), ConfigError> {
    let all = || {
        file.rules
            .iter()
            .map(|r| &r.name)
            .chain(file.spas.iter().map(|s| &s.name))
    };
    for (i, name) in all().enumerate() {
        check_name(name, all().take(i), report)?;
    }
    Ok(())
}

fn check_name<'a>(
    name: &Spanned<String>,
    mut before: impl Iterator<Item = &'a Spanned<String>>,
    report: &Report<'_>,
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
    Err(report.invalid(name.span(), "name", problem))
}

/// A rule beside the rules `before` it, its sequence written at `span`: a
/// secret or a sequence of another's is refused, a first step of
/// another's is a warning.
pub(super) fn rule(
    before: &[Rule],
    rule: &Rule,
    span: Range<usize>,
    report: &mut Report<'_>,
) -> Result<(), ConfigError> {
    let name = &rule.name;
    if let RuleKind::Rotating(rotating) = &rule.kind {
        if let Some(other) = before
            .iter()
            .find(|r| r.rotating().is_some_and(|o| o.same_key(rotating)))
        {
            return Err(report.invalid(
                span,
                &format!("rule `{name}`: secret_file"),
                format!(
                    "the same secret as rule `{}`: both would knock with one sequence; `xknock keygen` makes another",
                    other.name
                ),
            ));
        }
        return Ok(());
    }
    // A rule with no sequence (a one-time file with no line left) shares nothing.
    let sequence = rule.sequence();
    let Some(first) = sequence.first() else {
        return Ok(());
    };
    let key = format!("rule `{name}`: sequence");
    if let Some(other) = before.iter().find(|r| r.sequence() == sequence) {
        return Err(report.invalid(
            span,
            &key,
            format!("the same sequence as rule `{}`", other.name),
        ));
    }
    // The latest rule before that starts the same way.
    if let Some(other) = before
        .iter()
        .rev()
        .find(|r| r.sequence().first() == Some(first))
    {
        report.warn(
            span,
            &key,
            format!(
                "starts with {first} like rule `{}`; each rule still needs its own full sequence",
                other.name
            ),
        );
    }
    Ok(())
}

/// An SPA entry's port beside the rules and entries `before` it: never a
/// port one of them protects, nor a knock step.
pub(super) fn spa_listen(
    before: &[Rule],
    file: &FileSpa,
    spa: &Spa,
    report: &Report<'_>,
) -> Result<(), ConfigError> {
    let listen = PortSpec(Knock::udp(spa.listen));
    let at = |problem: String| {
        report.invalid(
            file.listen_span(),
            &format!("spa `{}`: listen", file.name.get_ref()),
            problem,
        )
    };
    if let Some(protector) = before.iter().find(|r| r.protect.contains(&listen)) {
        return Err(at(format!(
            "{listen} is protected by rule `{}`; an SPA port must not be a service port",
            protector.name
        )));
    }
    if let Some(rule) = before.iter().find(|r| r.sequence().contains(&listen)) {
        return Err(at(format!(
            "{listen} is a knock step of rule `{}`",
            rule.name
        )));
    }
    Ok(())
}

/// Every rule and SPA entry, each with where its sequence (or, for an SPA
/// entry, its name) is written: no SPA port is protected, the rule indexes
/// fit, and no knock step is a protected port.
pub(super) fn all(
    rules: &[Rule],
    spans: &[Range<usize>],
    report: &Report<'_>,
) -> Result<(), ConfigError> {
    let spa_listens: Vec<u16> = rules.iter().filter_map(|r| Some(r.spa()?.listen)).collect();
    for (rule, span) in rules.iter().zip(spans) {
        if let Some(port) = rule
            .protect
            .iter()
            .find(|p| p.0.proto == IPPROTO_UDP && spa_listens.contains(&p.0.port))
        {
            return Err(report.invalid(
                span.clone(),
                &format!("rule `{}`: protect", rule.name),
                format!("{port} is an SPA port; an SPA port must not be a service port"),
            ));
        }
    }
    let parts: usize = rules.iter().map(Rule::parts).sum();
    if parts > MAX_RULES {
        return Err(report.invalid(
            0..0,
            "rule",
            format!(
                "the rules need {parts} rule indexes (a rotating rule takes two); at most {MAX_RULES} are supported"
            ),
        ));
    }
    for (rule, span) in rules.iter().zip(spans) {
        for step in rule.sequence() {
            if let Some(protector) = rules.iter().find(|r| r.protect.contains(step)) {
                return Err(report.invalid(
                    span.clone(),
                    &format!("rule `{}`: sequence", rule.name),
                    format!(
                        "{step} is a knock step and also protected by rule `{}`; a knock port must not be a service port",
                        protector.name
                    ),
                ));
            }
        }
    }
    Ok(())
}
