//! Validation: the file as written, with the files it names already read
//! (`File::load`), to a `Config` and its warnings, or the first problem,
//! naming its line and key. A function of data alone: it reads nothing.
//!
//! One checker per section (`top` for the top-level keys and lists,
//! `limits`, `rule`, `spa`, `fleet`) and `cross` for what rules may not share. They
//! run in one fixed order, so a file with several problems is always told
//! of the same one first.

mod cross;
mod fleet;
mod limits;
mod report;
mod rule;
mod spa;
mod top;

use std::path::PathBuf;

use report::Report;
use toml::Spanned;

use super::{
    file::File,
    model::{
        Config, ConfigError, DEFAULT_FLOOD_EVENTS_PER_SECOND, DEFAULT_PIN_DIR,
        DEFAULT_SPA_DATAGRAMS_PER_SECOND, Rule,
    },
};

/// The configuration `file` describes; `text` is what it was parsed from.
pub(super) fn validate(text: &str, file: File) -> Result<Config, ConfigError> {
    let mut report = Report::new(text);
    top::check(&file, &mut report)?;
    limits::check(&file.limits, &report)?;
    cross::count(&file, &report)?;
    cross::names(&file, &report)?;
    for spa in &file.spas {
        spa::protect(spa, &report)?;
    }

    let reserved = cross::reserved(&file);
    let mut rules: Vec<Rule> = Vec::with_capacity(file.rules.len() + file.spas.len());
    // Where each rule's sequence is written, for problems found later.
    let mut spans = Vec::with_capacity(rules.capacity());
    for file_rule in &file.rules {
        let (rule, span) = rule::check(file_rule, &reserved, &mut report)?;
        cross::rule(&rules, &rule, span.clone(), &mut report)?;
        rules.push(rule);
        spans.push(span);
    }
    for file_spa in &file.spas {
        let spa = spa::keys(file_spa, &report)?;
        cross::spa_listen(&rules, file_spa, &spa, &report)?;
        spa::max_age(file_spa, &spa, &report)?;
        rules.push(spa::rule(file_spa, spa, &mut report)?);
        spans.push(file_spa.name.span());
    }
    cross::all(&rules, &spans, &report)?;
    let fleet = match &file.fleet {
        Some(written) => {
            let fleet = fleet::check(written, &report)?;
            fleet::own_traffic(&fleet, written, &rules, &spans, &report)?;
            Some(fleet)
        }
        None => None,
    };

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
        fleet,
        warnings: report.warnings,
        source: text.to_owned(),
    })
}
