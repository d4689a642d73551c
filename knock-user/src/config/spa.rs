//! `[[spa]]`: Single Packet Authorization entries, fwknop's keys and policy.

use std::{fmt, ops::Range, time::Duration};

use base64::{
    Engine as _, alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};
use knock_common::IPPROTO_UDP;
use serde::Deserialize;
use toml::Spanned;

use super::{ConfigDuration, ConfigError, PortSpec};

/// fwknop's `MAX_SPA_PACKET_AGE` default.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(120);

/// fwknop's default SPA port.
pub const DEFAULT_LISTEN: u16 = 62201;

/// Longest keys fwknop takes: AES-256's key, and SHA-512's block for HMAC.
const MAX_KEY_BYTES: usize = 32;
const MAX_HMAC_KEY_BYTES: usize = 128;

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
    /// fwknop's `KEY_BASE64`, decoded.
    pub key: Vec<u8>,
    /// fwknop's `HMAC_KEY_BASE64`, decoded.
    pub hmac_key: Vec<u8>,
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

/// Standard base64 with or without `=` (fwknop writes keys with it; some
/// tools strip it).
const KEY_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

fn decode_key(text: &str, longest: usize) -> Result<Vec<u8>, String> {
    let key = KEY_BASE64
        .decode(text.trim())
        .map_err(|e| format!("not base64 ({e}); `fwknop --key-gen` makes a pair of keys"))?;
    if key.is_empty() {
        return Err("is empty".into());
    }
    if key.len() > longest {
        return Err(format!(
            "{} bytes; fwknop takes at most {longest}",
            key.len()
        ));
    }
    Ok(key)
}

impl FileSpa {
    /// The checked `[[spa]]` keys of its own.
    pub(super) fn spa(
        &self,
        invalid: &impl Fn(Range<usize>, &str, String) -> ConfigError,
    ) -> Result<Spa, ConfigError> {
        let name = self.name.get_ref();
        let key_at = |key: &str| format!("spa `{name}`: {key}");
        let listen = match &self.listen {
            None => DEFAULT_LISTEN,
            Some(listen) if listen.get_ref().0.proto == IPPROTO_UDP => listen.get_ref().0.port,
            Some(listen) => {
                return Err(invalid(
                    listen.span(),
                    &key_at("listen"),
                    format!(
                        "{} is not a UDP port; SPA packets are UDP datagrams (fwknop sends to udp:{DEFAULT_LISTEN})",
                        listen.get_ref()
                    ),
                ));
            }
        };
        let key = decode_key(self.key_base64.get_ref(), MAX_KEY_BYTES)
            .map_err(|problem| invalid(self.key_base64.span(), &key_at("key_base64"), problem))?;
        let hmac_key =
            decode_key(self.hmac_key_base64.get_ref(), MAX_HMAC_KEY_BYTES).map_err(|problem| {
                invalid(
                    self.hmac_key_base64.span(),
                    &key_at("hmac_key_base64"),
                    problem,
                )
            })?;
        if key == hmac_key {
            return Err(invalid(
                self.hmac_key_base64.span(),
                &key_at("hmac_key_base64"),
                "the same as key_base64; fwknop needs two different keys".into(),
            ));
        }
        Ok(Spa {
            listen,
            key,
            hmac_key,
            max_age: self
                .max_age
                .as_ref()
                .map_or(DEFAULT_MAX_AGE, |a| a.get_ref().0),
            require_source_address: self.require_source_address,
        })
    }

    /// Where `listen` is written, else where the entry starts.
    pub(super) fn listen_span(&self) -> Range<usize> {
        self.listen
            .as_ref()
            .map_or_else(|| self.name.span(), Spanned::span)
    }
}
