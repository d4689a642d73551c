//! The client side: `xknock knock` sends a rule's sequence (fixed,
//! one-time or rotating) or an SPA request to a host.

pub mod knock;
pub mod sent;
pub mod spa;

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, anyhow, bail};

use crate::config::{PortSpec, RuleKind, load_config, one_time};

/// `xknock knock HOST --config F --spa NAME`: one SPA packet asking for
/// every port the entry protects, for `allow_ip` or the packet's source.
pub fn send_spa(
    host: &str,
    path: &Path,
    name: &str,
    allow_ip: Option<IpAddr>,
) -> anyhow::Result<()> {
    let config = load_config(path)?;
    let (rule, spa) = config
        .rules
        .iter()
        .filter(|r| r.name == name)
        .find_map(|r| Some((r, r.spa()?)))
        .ok_or_else(|| anyhow!("{} has no [[spa]] named `{name}`", path.display()))?;
    let target = knock::resolve(host).with_context(|| format!("cannot resolve `{host}`"))?;
    let packet = spa::request(rule, spa, allow_ip, SystemTime::now())?;
    knock::send_datagram(target, spa.listen, packet.as_bytes())
        .with_context(|| format!("sending an SPA packet to {target}"))?;
    log::info!(
        "sent an SPA packet to {target} udp:{} asking for {} for {}",
        spa.listen,
        rule.protect
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        allow_ip.map_or_else(|| "this host's address".to_owned(), |a| a.to_string())
    );
    Ok(())
}

pub fn send_knock(
    host: &str,
    steps: Vec<PortSpec>,
    config: Option<PathBuf>,
    rule: Option<String>,
    delay: Duration,
) -> anyhow::Result<()> {
    let mut once = None;
    let mut rotating = None;
    let steps = match (config, rule) {
        (Some(path), Some(name)) => {
            let config = load_config(&path)?;
            let rule = config
                .rules
                .into_iter()
                .find(|r| r.name == name)
                .ok_or_else(|| anyhow!("{} has no rule named `{name}`", path.display()))?;
            match rule.kind {
                RuleKind::Rotating(r) => {
                    let (window, steps) = sent::next_window(&r)?;
                    rotating = Some((r, window));
                    steps
                }
                RuleKind::Fixed { sequence } if !sequence.is_empty() => sequence,
                RuleKind::OneTime { file, sequence } if !sequence.is_empty() => {
                    once = Some(file);
                    sequence
                }
                // A one-time rule with no line left, or an SPA entry.
                RuleKind::Fixed { .. } | RuleKind::OneTime { .. } | RuleKind::Spa(_) => {
                    bail!("rule `{name}` has no unused one-time sequence left")
                }
            }
        }
        _ if steps.is_empty() => {
            bail!("give the steps (tcp:PORT udp:PORT ...) or --config and --rule")
        }
        _ => steps,
    };
    let target = knock::resolve(host).with_context(|| format!("cannot resolve `{host}`"))?;
    knock::send_sequence(target, &steps, delay).with_context(|| format!("knocking on {target}"))?;
    // A rotating sequence opens once: the next knock waits for the next.
    if let Some((r, window)) = rotating {
        sent::record(&r, window);
    }
    // A one-time sequence is spent once sent: the next knock takes the next.
    if let Some(used) = once {
        one_time::mark_used(&used.path, used.line).with_context(|| {
            format!("marking line {} of {} used", used.line, used.path.display())
        })?;
    }
    let steps: Vec<String> = steps.iter().map(ToString::to_string).collect();
    log::info!("knocked on {target}: {}", steps.join(" "));
    Ok(())
}
