//! The fleet: hosts that share their grants, revokes and spent secrets
//! through etcd (`[fleet]`), so that a knock, an SPA packet or `xknock
//! grant` on one opens all of them, `xknock revoke` on one closes all of
//! them, and a secret spent on one is spent on all.
//!
//! What is shared lives under the fleet's prefix (`record`): a key per
//! grant (its absolute expiry in the value, a lease to tidy it up), per
//! revoke, per spend, per host. A `run` follows it (`session`: list at a
//! revision, watch from the next, start over on any failure on the next
//! member, with the requests of `store`) and keeps what it knows (`view`),
//! which decides what this host's kernel gets. The kernel's maps are the
//! daemon's alone: the session sends it `FromFleet` messages and takes
//! `ToFleet` ones.
//!
//! Never open because of etcd: a host that cannot reach it keeps every
//! grant it has until each one's own expiry and opens only on what it
//! decides itself; it publishes those when it is back.

mod messages;
pub mod record;
mod session;
mod store;
pub mod view;

use std::{fmt::Write as _, sync::Arc, time::Duration};

use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

pub use messages::{FleetStatus, FromFleet, SpendOutcome, ToFleet};
pub use record::{NodeRecord, RevokeRecord, SpendRecord, Spent, unix_ms};
pub use session::HEARTBEAT;
pub use view::{Change, LocalGrant};

use crate::config::{Config, RuleKind, fleet::Fleet};

/// The daemon's end of a running session.
pub struct FleetLink {
    pub to_fleet: mpsc::UnboundedSender<ToFleet>,
    pub from_fleet: mpsc::UnboundedReceiver<FromFleet>,
    pub status: Arc<FleetStatus>,
}

/// Starts following `fleet` on the current event loop, announcing this
/// host with `config`'s fingerprint.
pub fn start(fleet: &Fleet, config: &Config) -> FleetLink {
    let (to_fleet, from_daemon) = mpsc::unbounded_channel();
    let (to_daemon, from_fleet) = mpsc::unbounded_channel();
    let status = Arc::new(FleetStatus::default());
    tokio::spawn(session::follow(
        fleet.clone(),
        fingerprint(config),
        from_daemon,
        to_daemon,
        Arc::clone(&status),
    ));
    FleetLink {
        to_fleet,
        from_fleet,
        status,
    }
}

/// How long a revoke is remembered at least: a host away for less than
/// this undoes the revoked grants when it is back.
pub const REVOKE_MEMORY: Duration = Duration::from_secs(3600);

/// `xknock revoke` for the whole fleet; returns how many of the fleet's
/// grant keys it removed.
pub fn revoke(fleet: &Fleet, revoke: &RevokeRecord) -> Result<usize, String> {
    block_on(store::revoke(fleet, revoke, REVOKE_MEMORY))
}

/// How long `status` waits for etcd to list the fleet's hosts.
const HOSTS_PATIENCE: Duration = Duration::from_secs(4);

/// The fleet's hosts, as their lease-held keys say.
pub fn hosts(fleet: &Fleet) -> Result<Vec<NodeRecord>, String> {
    block_on(async {
        tokio::time::timeout(HOSTS_PATIENCE, store::hosts(fleet))
            .await
            .unwrap_or_else(|_| Err(format!("no member answered within {HOSTS_PATIENCE:?}")))
    })
}

/// Runs `future` on an event loop of its own, for the commands that are
/// not `run`.
fn block_on<T>(future: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting an event loop: {e}"))?
        .block_on(future)
}

/// What the fleet's hosts must agree on, hashed: every rule's name, what
/// it protects, how long it opens, and what opens it (a rotating rule's
/// secret by a sequence it derives, an SPA entry's port and age). Hosts
/// whose fingerprints differ open differently; `status` says so.
pub fn fingerprint(config: &Config) -> String {
    let mut canonical = String::new();
    let mut rules: Vec<_> = config.rules.iter().collect();
    rules.sort_by(|a, b| a.name.cmp(&b.name));
    for rule in rules {
        let protect: Vec<String> = rule.protect.iter().map(ToString::to_string).collect();
        let opens = match &rule.kind {
            RuleKind::Fixed { sequence } => {
                let steps: Vec<String> = sequence.iter().map(ToString::to_string).collect();
                format!("fixed {}", steps.join(","))
            }
            // The live line moves as lines are spent; the file is the same.
            RuleKind::OneTime { .. } => "one-time".to_owned(),
            RuleKind::Rotating(rotating) => {
                let first: Vec<String> = rotating
                    .sequence(0)
                    .unwrap_or_default()
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                format!(
                    "rotating {}ms {} {}",
                    rotating.rotate.as_millis(),
                    rotating.steps,
                    first.join(",")
                )
            }
            RuleKind::Spa(spa) => {
                // Said only when given: fingerprints of entries without it
                // stay what hosts before `source` compute.
                let sources: Vec<String> = spa.sources.iter().map(|p| p.0.to_string()).collect();
                let sources = if sources.is_empty() {
                    String::new()
                } else {
                    format!(" source {}", sources.join(","))
                };
                format!(
                    "spa udp:{} {}s {}{sources}",
                    spa.listen,
                    spa.max_age.as_secs(),
                    spa.require_source_address
                )
            }
        };
        // Said only when wider than the address: fingerprints of rules
        // without a scope stay what hosts before scopes compute.
        let scope = if rule.grant_scope.is_wider() {
            format!("|scope {} {}", rule.grant_scope.ipv4, rule.grant_scope.ipv6)
        } else {
            String::new()
        };
        _ = writeln!(
            canonical,
            "{}|{}|{}ms|{}ms|{opens}{scope}",
            rule.name,
            protect.join(","),
            rule.open_for.as_millis(),
            rule.sequence_timeout.as_millis()
        );
    }
    record::hex(&Sha256::digest(canonical.as_bytes())[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: &str = "[[rule]]\nname = \"ssh\"\nsequence = [\"tcp:3721\", \"udp:4728\", \"tcp:6742\"]\nsequence_timeout = \"10s\"\nopen_for = \"60s\"\nprotect = [\"tcp:22\"]\n";

    #[test]
    fn fingerprints_tell_rules_apart_not_hosts() {
        let base = Config::parse(RULE).expect("valid");
        let print = fingerprint(&base);
        assert_eq!(print.len(), 16);
        let elsewhere = Config::parse(&format!(
            "interfaces = [\"eth1\"]\n{RULE}[fleet]\netcd = [\"http://10.0.0.5:2379\"]\nnode = \"b\"\n"
        ))
        .expect("valid");
        assert_eq!(fingerprint(&elsewhere), print, "host settings do not count");
        for changed in [
            RULE.replace("tcp:6742", "tcp:6743"),
            RULE.replace("60s", "61s"),
            RULE.replace("tcp:22\"", "tcp:2222\""),
            RULE.replace("\"ssh\"", "\"ssh2\""),
        ] {
            let other = Config::parse(&changed).expect("valid");
            assert_ne!(fingerprint(&other), print, "{changed}");
        }
    }
}
