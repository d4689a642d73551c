//! `[[spa]]`: Single Packet Authorization entries, fwknop's keys and policy.

use std::{fmt, ops::Range, time::Duration};

use knock_common::IPPROTO_UDP;
use serde::Deserialize;
use toml::Spanned;

use super::{ConfigDuration, ConfigError, PortSpec};
use crate::fwknop::{KeyError, Keys};

/// fwknop's `MAX_SPA_PACKET_AGE` default.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(120);

/// fwknop's default SPA port.
pub const DEFAULT_LISTEN: u16 = 62201;

/// An `[[spa]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileSpa {
    pub name: Spanned<String>,
    #[serde(default)]
    listen: Option<Spanned<PortSpec>>,
    key_base64: Spanned<String>,
    hmac_key_base64: Spanned<String>,
    pub open_for: ConfigDuration,
    pub protect: Spanned<Vec<PortSpec>>,
    #[serde(default)]
    max_age: Option<Spanned<ConfigDuration>>,
    #[serde(default)]
    require_source_address: bool,
}

/// A validated `[[spa]]`'s own keys (its name, `open_for` and `protect`
/// are its rule's).
#[derive(Clone, PartialEq, Eq)]
pub struct Spa {
    /// The UDP port its packets are sent to.
    pub listen: u16,
    /// fwknop's `KEY_BASE64` and `HMAC_KEY_BASE64`, checked (`keys`).
    key_base64: String,
    hmac_key_base64: String,
    /// Packets whose timestamp is further than this from now are refused;
    /// accepted ones are remembered this long, and refused again.
    pub max_age: Duration,
    /// Refuse requests for `0.0.0.0` (fwknop's `-s`: "the address this
    /// packet comes from") and take only an explicit address.
    pub require_source_address: bool,
}

impl fmt::Debug for Spa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spa")
            .field("listen", &self.listen)
            .field("key", &"<secret>")
            .field("hmac_key", &"<secret>")
            .field("max_age", &self.max_age)
            .field("require_source_address", &self.require_source_address)
            .finish()
    }
}

impl Spa {
    /// The entry's keys, as the fwknop format uses them.
    pub fn keys(&self) -> Keys {
        Keys::from_base64(&self.key_base64, &self.hmac_key_base64)
            .expect("checked when the configuration was read")
    }
}

impl FileSpa {
    /// The checked `[[spa]]` keys of its own.
    pub(super) fn spa(
        &self,
        invalid: &impl Fn(Range<usize>, &str, String) -> ConfigError,
    ) -> Result<Spa, ConfigError> {
        let name = self.name.get_ref();
        let key_at = |key: &str| format!("spa `{name}`: {key}");
        let Some(listen) = self.listen_port() else {
            // Only a `listen` written with another protocol has no UDP port.
            let written = self.listen.as_ref().map(|l| l.get_ref().to_string());
            return Err(invalid(
                self.listen_span(),
                &key_at("listen"),
                format!(
                    "{} is not a UDP port; SPA packets are UDP datagrams (fwknop sends to udp:{DEFAULT_LISTEN})",
                    written.unwrap_or_default()
                ),
            ));
        };
        if let Err(error) =
            Keys::from_base64(self.key_base64.get_ref(), self.hmac_key_base64.get_ref())
        {
            let (key, span) = match error {
                KeyError::EncryptionLength(_) | KeyError::Base64("encryption") => {
                    ("key_base64", self.key_base64.span())
                }
                _ => ("hmac_key_base64", self.hmac_key_base64.span()),
            };
            return Err(invalid(
                span,
                &key_at(key),
                format!("{error} (`fwknop --key-gen` makes a pair)"),
            ));
        }
        Ok(Spa {
            listen,
            key_base64: self.key_base64.get_ref().trim().to_owned(),
            hmac_key_base64: self.hmac_key_base64.get_ref().trim().to_owned(),
            max_age: self
                .max_age
                .as_ref()
                .map_or(DEFAULT_MAX_AGE, |a| a.get_ref().0),
            require_source_address: self.require_source_address,
        })
    }

    /// The UDP port it listens on; `None` when `listen` is not UDP.
    pub(super) fn listen_port(&self) -> Option<u16> {
        match &self.listen {
            None => Some(DEFAULT_LISTEN),
            Some(listen) => {
                let spec = listen.get_ref().0;
                (spec.proto == IPPROTO_UDP).then_some(spec.port)
            }
        }
    }

    /// Where `listen` is written, else where the entry starts.
    pub(super) fn listen_span(&self) -> Range<usize> {
        self.listen
            .as_ref()
            .map_or_else(|| self.name.span(), Spanned::span)
    }
}
