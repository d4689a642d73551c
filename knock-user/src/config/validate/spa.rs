//! One `[[spa]]` on its own: its port, its keys, its `max_age` and its
//! `protect`.

use std::time::Duration;

use super::{
    report::Report,
    rule::{check_protect, check_scope},
};
use crate::{
    config::{
        file::FileSpa,
        model::{ConfigError, Rule, RuleKind},
        spa::{DEFAULT_LISTEN, DEFAULT_MAX_AGE, Spa},
        values::Prefix,
    },
    fwknop::{KeyError, Keys},
};

/// The entry's `protect`, as a rule's is checked.
pub(super) fn protect(spa: &FileSpa, report: &Report<'_>) -> Result<(), ConfigError> {
    check_protect(
        &format!("spa `{}`", spa.name.get_ref()),
        &spa.protect,
        report,
    )
}

/// The entry's `listen` port and keys, checked.
pub(super) fn keys(spa: &FileSpa, report: &Report<'_>) -> Result<Spa, ConfigError> {
    let name = spa.name.get_ref();
    let key_at = |key: &str| format!("spa `{name}`: {key}");
    let Some(listen) = spa.listen_port() else {
        // Only a `listen` written with another protocol has no UDP port.
        let written = spa.listen.as_ref().map(|l| l.get_ref().to_string());
        return Err(report.invalid(
            spa.listen_span(),
            &key_at("listen"),
            format!(
                "{} is not a UDP port; SPA packets are UDP datagrams (fwknop sends to udp:{DEFAULT_LISTEN})",
                written.unwrap_or_default()
            ),
        ));
    };
    if let Err(error) = Keys::from_base64(spa.key_base64.get_ref(), spa.hmac_key_base64.get_ref()) {
        let (key, span) = match error {
            KeyError::EncryptionLength(_) | KeyError::Base64("encryption") => {
                ("key_base64", spa.key_base64.span())
            }
            _ => ("hmac_key_base64", spa.hmac_key_base64.span()),
        };
        return Err(report.invalid(
            span,
            &key_at(key),
            format!("{error} (`fwknop --key-gen` makes a pair)"),
        ));
    }
    Ok(Spa::new(
        listen,
        spa.key_base64.get_ref(),
        spa.hmac_key_base64.get_ref(),
        spa.max_age
            .as_ref()
            .map_or(DEFAULT_MAX_AGE, |a| a.get_ref().0),
        spa.require_source_address,
        sources(spa, report)?,
    ))
}

/// The entry's `source`: fwknop's SOURCE, at least one prefix when given.
fn sources(spa: &FileSpa, report: &Report<'_>) -> Result<Vec<Prefix>, ConfigError> {
    let Some(source) = &spa.source else {
        return Ok(Vec::new());
    };
    if source.get_ref().is_empty() {
        return Err(report.invalid(
            source.span(),
            &format!("spa `{}`: source", spa.name.get_ref()),
            "lists no prefix; leave it out to take packets from anywhere".into(),
        ));
    }
    Ok(source.get_ref().clone())
}

/// The entry's `max_age`: fwknop's timestamps count seconds.
pub(super) fn max_age(file: &FileSpa, spa: &Spa, report: &Report<'_>) -> Result<(), ConfigError> {
    if spa.max_age < Duration::from_secs(1) {
        return Err(report.invalid(
            file.name.span(),
            &format!("spa `{}`: max_age", file.name.get_ref()),
            "must be at least 1s: fwknop's timestamps count seconds".into(),
        ));
    }
    Ok(())
}

/// The entry as a rule: one without a sequence, which takes a rule index.
pub(super) fn rule(file: &FileSpa, spa: Spa, report: &mut Report<'_>) -> Result<Rule, ConfigError> {
    let name = file.name.get_ref();
    Ok(Rule {
        name: name.clone(),
        kind: RuleKind::Spa(spa),
        sequence_timeout: Duration::ZERO,
        open_for: file.open_for.0,
        protect: file.protect.get_ref().clone(),
        grant_scope: check_scope(&format!("spa `{name}`"), file.grant_scope.as_ref(), report)?,
    })
}
