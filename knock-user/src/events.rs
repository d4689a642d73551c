//! Turning kernel events into lines an operator (text) or a script (JSON) reads.

use std::{net::IpAddr, time::SystemTime};

use knock_common::{Event, Knock, event_kind, reset_cause};
use serde::Serialize;

use crate::{
    config::{Config, PortSpec},
    filter::{ExpiredGrant, display_addr, monotonic_ns},
};

/// How `run` prints events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EventFormat {
    /// One readable line per event.
    Text,
    /// One JSON object per line.
    Json,
}

/// One event, ready to print.
#[derive(Debug, Serialize, PartialEq)]
pub struct Record {
    pub time: String,
    pub event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    pub source: IpAddr,
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
fn seconds_until(deadline_ns: u64) -> f64 {
    let left = deadline_ns.saturating_sub(monotonic_ns());
    (left as f64 / 1e9 * 10.0).round() / 10.0
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

impl Record {
    /// Decodes one ring-buffer record.
    pub fn from_kernel(bytes: &[u8], config: &Config) -> Result<Record, DecodeError> {
        if bytes.len() != size_of::<Event>() {
            return Err(DecodeError::Size(bytes.len()));
        }
        // SAFETY: the length matches and `Event` is plain old data, so any
        // bytes are a valid value; read_unaligned copes with any alignment.
        let event: Event = unsafe { bytes.as_ptr().cast::<Event>().read_unaligned() };
        let rule = config.rules.get(usize::from(event.rule));
        let port = PortSpec(Knock {
            port: event.port,
            proto: event.proto,
            _pad: 0,
        })
        .to_string();
        let mut record = Record {
            time: now_rfc3339(),
            event: "",
            rule: rule.map(|r| r.name.clone()),
            source: display_addr(&event.addr),
            port: Some(port),
            step: None,
            steps: rule.map(|r| r.sequence.len()),
            reason: None,
            expires_in_secs: None,
            ignored_for_secs: None,
        };
        match event.kind {
            event_kind::PROGRESS => {
                record.event = "progress";
                record.step = Some(event.step);
            }
            event_kind::RESET => {
                record.event = "reset";
                record.reason = Some(match event.detail {
                    reset_cause::TIMEOUT => "timeout",
                    _ => "wrong_packet",
                });
            }
            event_kind::GRANT => {
                record.event = "grant";
                record.expires_in_secs = Some(seconds_until(event.expires_ns));
            }
            event_kind::DENIED => {
                record.event = "denied";
                record.steps = None;
            }
            event_kind::PENALIZED => {
                record.event = "penalized";
                record.steps = None;
                record.ignored_for_secs = Some(seconds_until(event.expires_ns));
            }
            kind => return Err(DecodeError::Kind(kind)),
        }
        Ok(record)
    }

    /// A grant the sweeper removed.
    pub fn expired(grant: &ExpiredGrant, config: &Config) -> Record {
        Record {
            time: now_rfc3339(),
            event: "expired",
            rule: config
                .rules
                .get(grant.rule as usize)
                .map(|r| r.name.clone()),
            source: display_addr(&grant.source),
            port: None,
            step: None,
            steps: None,
            reason: None,
            expires_in_secs: None,
            ignored_for_secs: None,
        }
    }

    pub fn render(&self, format: EventFormat) -> String {
        match format {
            EventFormat::Json => serde_json::to_string(self).expect("records always serialize"),
            EventFormat::Text => {
                let mut line = format!("{} {:<8} {}", self.time, self.event, self.source);
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
                line
            }
        }
    }
}
