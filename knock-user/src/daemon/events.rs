//! Turning kernel events into lines an operator (text) or a script (JSON) reads.

use std::{fmt, net::IpAddr, time::SystemTime};

use ipnet::IpNet;
use knock_common::{Addr, Event, EventKind, Knock, ResetCause};
use serde::{Serialize, Serializer};

use crate::{
    config::{Config, PortSpec},
    daemon::spa::Verdict,
    loader::{ExpiredGrant, display_addr, grant_prefix, monotonic_ns, scope_prefix},
};

/// The rules of the running configuration by rule index, which is what the
/// kernel's events name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleBook {
    /// Name and number of steps at each index.
    by_index: Vec<Option<(String, usize)>>,
    /// The host bits each index's grants leave out: IPv4, IPv6.
    scopes: Vec<(u32, u32)>,
}

impl RuleBook {
    /// `config`'s rules, placed at `slots` (`slots[i]` for the parts of
    /// `config.rules[i]`).
    pub fn new(config: &Config, slots: &[Vec<u32>]) -> RuleBook {
        let used = slots.iter().flatten().max().map_or(0, |&m| m as usize + 1);
        let mut by_index = vec![None; used];
        let mut scopes = vec![(0, 0); used];
        for (rule, parts) in config.rules.iter().zip(slots) {
            let steps = rule.steps();
            for &slot in parts {
                by_index[slot as usize] = Some((rule.name.clone(), steps));
                scopes[slot as usize] = rule.grant_scope.host_bits();
            }
        }
        RuleBook { by_index, scopes }
    }

    /// The prefix of `source` that rule `index` grants, when its scope is
    /// wider than the address.
    pub fn granted(&self, index: u32, source: IpAddr) -> Option<IpNet> {
        let (ipv4, ipv6) = self.scopes.get(index as usize).copied()?;
        let host_bits = if source.is_ipv4() { ipv4 } else { ipv6 };
        (host_bits > 0).then(|| scope_prefix(source, host_bits))
    }

    /// `config`'s rules at indexes in file order.
    pub fn in_order(config: &Config) -> RuleBook {
        RuleBook::new(config, &config.slots_in_order())
    }

    /// The name and steps of the rule at `index`.
    pub fn get(&self, index: u32) -> Option<(&str, usize)> {
        let (name, steps) = self.by_index.get(index as usize)?.as_ref()?;
        Some((name, *steps))
    }
}

/// How `run` prints events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EventFormat {
    /// One readable line per event.
    Text,
    /// One JSON object per line.
    Json,
}

/// What a `Record` reports: a kind of kernel event, or one of the loader's
/// own (SPA verdicts, expired grants).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// A knock step was accepted.
    Progress,
    /// A source's progress was thrown away (`reason` says why).
    Reset,
    /// A knock sequence was completed and opened its rule.
    Grant,
    /// A sequence the fleet spends was completed; it opens once the fleet
    /// has recorded it (then a `grant`, else a `reset`).
    Held,
    /// A packet to a protected port was dropped.
    Denied,
    /// A source failed too often; its knocks are ignored for a while.
    Penalized,
    /// An SPA packet opened ports.
    SpaGrant,
    /// An SPA packet opened nothing (`reason` says why).
    SpaRefused,
    /// The sweeper removed a grant that ran out.
    Expired,
    /// Another host of the fleet granted; this one admits too.
    FleetGrant,
    /// A host of the fleet revoked; this one removed what it undoes.
    FleetRevoke,
    /// Following the fleet in etcd (again).
    FleetOnline,
    /// Not following the fleet: everything stays as it is, and only this
    /// host's own decisions open it.
    FleetOffline,
}

impl RecordKind {
    /// The name it is printed under, in text and JSON alike: the one place
    /// each kind's name is written.
    pub const fn name(self) -> &'static str {
        match self {
            RecordKind::Progress => "progress",
            RecordKind::Reset => "reset",
            RecordKind::Grant => "grant",
            RecordKind::Held => "held",
            RecordKind::Denied => "denied",
            RecordKind::Penalized => "penalized",
            RecordKind::SpaGrant => "spa_grant",
            RecordKind::SpaRefused => "spa_refused",
            RecordKind::Expired => "expired",
            RecordKind::FleetGrant => "fleet_grant",
            RecordKind::FleetRevoke => "fleet_revoke",
            RecordKind::FleetOnline => "fleet_online",
            RecordKind::FleetOffline => "fleet_offline",
        }
    }
}

impl From<EventKind> for RecordKind {
    fn from(kind: EventKind) -> RecordKind {
        match kind {
            EventKind::Progress => RecordKind::Progress,
            EventKind::Reset => RecordKind::Reset,
            EventKind::Grant => RecordKind::Grant,
            EventKind::Held => RecordKind::Held,
            EventKind::Denied => RecordKind::Denied,
            EventKind::Penalized => RecordKind::Penalized,
        }
    }
}

/// Its name, padded as the format asks (the text line aligns it).
impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// Its name, as a JSON string.
impl Serialize for RecordKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// One event, ready to print.
#[derive(Debug, Serialize, PartialEq)]
pub struct Record {
    pub time: String,
    pub event: RecordKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Whom it is about (not said of the fleet's own comings and goings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<IpAddr>,
    /// The packet's protocol and destination port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// Seconds until a grant expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_secs: Option<f64>,
    /// Seconds a penalized source's knocks are ignored for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignored_for_secs: Option<f64>,
    /// Who an SPA request admitted, when not its source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admitted: Option<IpAddr>,
    /// The prefix a grant admits, when its rule's scope is wider than the
    /// address (`grant_scope`).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "prefix_string"
    )]
    pub granted: Option<IpNet>,
    /// The ports an SPA request opened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ports: Option<String>,
    /// What exactly was wrong with a refused SPA packet, what a revoke
    /// removed, why the fleet was lost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The host of the fleet that granted or revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The etcd member followed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The fleet's revision from which it is followed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
}

/// A prefix as JSON: its text, `198.51.100.0/24`.
fn prefix_string<S: Serializer>(prefix: &Option<IpNet>, serializer: S) -> Result<S::Ok, S::Error> {
    match prefix {
        Some(prefix) => serializer.collect_str(prefix),
        None => serializer.serialize_none(),
    }
}

/// Why a kernel event could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The record is not the size of an `Event`.
    #[error("event record of {0} bytes, expected {expected}", expected = size_of::<Event>())]
    Size(usize),
    /// The event kind is not one this loader knows.
    #[error("unknown event kind {0}")]
    Kind(u8),
}

/// Seconds from now until `deadline_ns` (kernel clock), to a tenth.
pub fn seconds_until(deadline_ns: u64) -> f64 {
    let left = deadline_ns.saturating_sub(monotonic_ns());
    (left as f64 / 1e9 * 10.0).round() / 10.0
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

impl Record {
    /// A record of `event` about `source`, with nothing else said yet.
    pub fn new(event: RecordKind, source: Option<IpAddr>) -> Record {
        Record {
            time: now_rfc3339(),
            event,
            rule: None,
            source,
            port: None,
            step: None,
            steps: None,
            reason: None,
            expires_in_secs: None,
            ignored_for_secs: None,
            admitted: None,
            granted: None,
            ports: None,
            detail: None,
            node: None,
            endpoint: None,
            revision: None,
        }
    }

    /// What the loader made of a datagram from `source` to SPA port `port`.
    pub fn spa(verdict: &Verdict, source: &Addr, port: u16) -> Record {
        let source = display_addr(source);
        let mut record = match verdict {
            Verdict::Grant(grant) => {
                let mut record = Record::new(RecordKind::SpaGrant, Some(source));
                record.rule = Some(grant.rule.clone());
                record.admitted = (grant.addr != source).then_some(grant.addr);
                let ports: Vec<String> = grant.ports.iter().map(PortSpec::to_string).collect();
                record.ports = Some(ports.join(","));
                record.expires_in_secs = Some(grant.open_for.as_secs_f64());
                record
            }
            Verdict::Refuse {
                rule,
                reason,
                detail,
            } => {
                let mut record = Record::new(RecordKind::SpaRefused, Some(source));
                record.rule = rule.clone();
                record.reason = Some(reason.name());
                record.detail = Some(detail.clone());
                record
            }
        };
        record.port = Some(PortSpec(Knock::udp(port)).to_string());
        record
    }

    /// Decodes one ring-buffer record.
    pub fn from_kernel(bytes: &[u8], rules: &RuleBook) -> Result<Record, DecodeError> {
        let event = Event::decode(bytes).ok_or(DecodeError::Size(bytes.len()))?;
        let rule = rules.get(u32::from(event.rule));
        let port = PortSpec(Knock::new(event.proto, event.port)).to_string();
        let kind = event.kind().map_err(DecodeError::Kind)?;
        let mut record = Record {
            rule: rule.map(|(name, _)| name.to_owned()),
            port: Some(port),
            steps: rule.map(|(_, steps)| steps),
            ..Record::new(kind.into(), Some(display_addr(&event.addr)))
        };
        match kind {
            EventKind::Progress => {
                record.step = Some(event.step);
            }
            EventKind::Reset => {
                record.reason = Some(match event.reset_cause() {
                    Some(ResetCause::Timeout) => "timeout",
                    Some(ResetCause::Spent) => "spent",
                    Some(ResetCause::WrongPacket) | None => "wrong_packet",
                });
            }
            EventKind::Grant | EventKind::Held => {
                record.expires_in_secs = Some(seconds_until(event.expires_ns));
                record.granted = record
                    .source
                    .and_then(|source| rules.granted(u32::from(event.rule), source));
            }
            EventKind::Denied => {
                record.steps = None;
            }
            EventKind::Penalized => {
                record.steps = None;
                record.ignored_for_secs = Some(seconds_until(event.expires_ns));
            }
        }
        Ok(record)
    }

    /// A grant the sweeper removed: its address, or its prefix.
    pub fn expired(grant: &ExpiredGrant, rules: &RuleBook) -> Record {
        let key = &grant.key;
        Record {
            rule: rules.get(key.rule_index()).map(|(name, _)| name.to_owned()),
            granted: (key.host_bits() > 0).then(|| grant_prefix(key)),
            ..Record::new(RecordKind::Expired, Some(display_addr(&key.addr)))
        }
    }

    #[expect(
        clippy::expect_used,
        reason = "records are plain structs that always serialize"
    )]
    pub fn render(&self, format: EventFormat) -> String {
        match format {
            EventFormat::Json => serde_json::to_string(self).expect("records always serialize"),
            EventFormat::Text => {
                let mut line = format!("{} {:<8}", self.time, self.event);
                if let Some(source) = self.source {
                    line += &format!(" {source}");
                }
                if let Some(rule) = &self.rule {
                    line += &format!(" rule={rule}");
                }
                if let Some(port) = &self.port {
                    line += &format!(" {port}");
                }
                if let (Some(step), Some(steps)) = (self.step, self.steps) {
                    line += &format!(" step={step}/{steps}");
                }
                if let Some(reason) = self.reason {
                    line += &format!(" reason={reason}");
                }
                if let Some(secs) = self.expires_in_secs {
                    line += &format!(" open_for={secs}s");
                }
                if let Some(secs) = self.ignored_for_secs {
                    line += &format!(" ignored_for={secs}s");
                }
                if let Some(admitted) = self.admitted {
                    line += &format!(" admitted={admitted}");
                }
                if let Some(granted) = self.granted {
                    line += &format!(" granted={granted}");
                }
                if let Some(ports) = &self.ports {
                    line += &format!(" ports={ports}");
                }
                if let Some(node) = &self.node {
                    line += &format!(" node={node}");
                }
                if let Some(endpoint) = &self.endpoint {
                    line += &format!(" endpoint={endpoint}");
                }
                if let Some(revision) = self.revision {
                    line += &format!(" revision={revision}");
                }
                if let Some(detail) = &self.detail {
                    line += &format!(" ({detail})");
                }
                line
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use knock_common::ipv4_mapped;

    use super::*;

    fn config() -> RuleBook {
        RuleBook::in_order(
            &Config::parse(
                "[[rule]]\nname = \"ssh\"\nsequence = [\"tcp:7291\", \"udp:4728\", \"tcp:6742\"]\n\
             sequence_timeout = \"10s\"\nopen_for = \"60s\"\nprotect = [\"tcp:22\"]\n",
            )
            .expect("valid"),
        )
    }

    fn bytes(event: &Event) -> Vec<u8> {
        // SAFETY: Event is plain old data without padding.
        unsafe {
            std::slice::from_raw_parts(std::ptr::from_ref(event).cast::<u8>(), size_of::<Event>())
        }
        .to_vec()
    }

    #[test]
    fn progress_renders_as_text_and_json() {
        let event = Event::progress(&ipv4_mapped([198, 18, 0, 2]), Knock::udp(4728), 0, 2);
        let record = Record::from_kernel(&bytes(&event), &config()).expect("decodes");
        let text = record.render(EventFormat::Text);
        assert!(
            text.ends_with(" progress 198.18.0.2 rule=ssh udp:4728 step=2/3"),
            "{text}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&record.render(EventFormat::Json)).expect("json");
        assert_eq!(json["event"], "progress");
        assert_eq!(json["source"], "198.18.0.2");
        assert_eq!(json["rule"], "ssh");
        assert_eq!(json["port"], "udp:4728");
        assert_eq!(
            (json["step"].as_u64(), json["steps"].as_u64()),
            (Some(2), Some(3))
        );
    }

    #[test]
    fn reset_and_denied_carry_reason_and_address_family() {
        let mut v6 = [0u8; 16];
        v6[0] = 0xfd;
        v6[1] = 0x18;
        v6[15] = 2;
        let reset = Event::reset(&v6, Knock::tcp(6742), 0, ResetCause::Timeout);
        let text = Record::from_kernel(&bytes(&reset), &config())
            .expect("decodes")
            .render(EventFormat::Text);
        assert!(
            text.contains(" reset    fd18::2 rule=ssh tcp:6742 reason=timeout"),
            "{text}"
        );
        let denied = Event::denied(&v6, Knock::tcp(22));
        let text = Record::from_kernel(&bytes(&denied), &config())
            .expect("decodes")
            .render(EventFormat::Text);
        assert!(text.ends_with(" denied   fd18::2 tcp:22"), "{text}");
    }

    #[test]
    fn malformed_records_are_refused() {
        assert!(matches!(
            Record::from_kernel(&[0; 7], &config()),
            Err(DecodeError::Size(7))
        ));
        let unknown = Event {
            kind: 99,
            ..Event::default()
        };
        assert!(matches!(
            Record::from_kernel(&bytes(&unknown), &config()),
            Err(DecodeError::Kind(99))
        ));
    }

    /// Scripts and tests read these names: text and JSON print each kind
    /// under the name it always had, padded alike in text.
    #[test]
    fn every_kind_prints_under_its_name() {
        let kinds = [
            (RecordKind::Progress, "progress"),
            (RecordKind::Reset, "reset"),
            (RecordKind::Grant, "grant"),
            (RecordKind::Held, "held"),
            (RecordKind::Denied, "denied"),
            (RecordKind::Penalized, "penalized"),
            (RecordKind::SpaGrant, "spa_grant"),
            (RecordKind::SpaRefused, "spa_refused"),
            (RecordKind::Expired, "expired"),
            (RecordKind::FleetGrant, "fleet_grant"),
            (RecordKind::FleetRevoke, "fleet_revoke"),
            (RecordKind::FleetOnline, "fleet_online"),
            (RecordKind::FleetOffline, "fleet_offline"),
        ];
        let source: IpAddr = [198, 18, 0, 2].into();
        for (kind, name) in kinds {
            let record = Record::new(kind, Some(source));
            let json: serde_json::Value =
                serde_json::from_str(&record.render(EventFormat::Json)).expect("json");
            assert_eq!(json["event"], name);
            let text = record.render(EventFormat::Text);
            assert_eq!(
                text,
                format!("{} {:<8} 198.18.0.2", record.time, name),
                "{text}"
            );
        }
    }

    #[test]
    fn kernel_kinds_become_the_records_of_the_same_name() {
        let kinds = [
            (EventKind::Progress, RecordKind::Progress),
            (EventKind::Reset, RecordKind::Reset),
            (EventKind::Grant, RecordKind::Grant),
            (EventKind::Held, RecordKind::Held),
            (EventKind::Denied, RecordKind::Denied),
            (EventKind::Penalized, RecordKind::Penalized),
        ];
        for (kernel, record) in kinds {
            assert_eq!(RecordKind::from(kernel), record);
            let event = Event {
                kind: kernel as u8,
                ..Event::default()
            };
            let decoded = Record::from_kernel(&bytes(&event), &config()).expect("decodes");
            assert_eq!(decoded.event, record);
        }
    }
}
