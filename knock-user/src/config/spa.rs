//! `[[spa]]`: Single Packet Authorization entries, fwknop's keys and policy.

use std::{fmt, time::Duration};

use super::values::Prefix;
use crate::fwknop::Keys;

/// fwknop's `MAX_SPA_PACKET_AGE` default.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(120);

/// fwknop's default SPA port.
pub const DEFAULT_LISTEN: u16 = 62201;

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
    /// fwknop's `SOURCE`: the prefixes packets may come from to use this
    /// entry; empty: any.
    pub sources: Vec<Prefix>,
}

impl fmt::Debug for Spa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spa")
            .field("listen", &self.listen)
            .field("key", &"<secret>")
            .field("hmac_key", &"<secret>")
            .field("max_age", &self.max_age)
            .field("require_source_address", &self.require_source_address)
            .field("sources", &self.sources)
            .finish()
    }
}

impl Spa {
    /// An entry's own keys, `key_base64` and `hmac_key_base64` checked.
    pub(super) fn new(
        listen: u16,
        key_base64: &str,
        hmac_key_base64: &str,
        max_age: Duration,
        require_source_address: bool,
        sources: Vec<Prefix>,
    ) -> Spa {
        Spa {
            listen,
            key_base64: key_base64.trim().to_owned(),
            hmac_key_base64: hmac_key_base64.trim().to_owned(),
            max_age,
            require_source_address,
            sources,
        }
    }

    /// The entry's keys, as the fwknop format uses them.
    #[expect(
        clippy::expect_used,
        reason = "an invariant: the keys were checked when the configuration was read"
    )]
    pub fn keys(&self) -> Keys {
        Keys::from_base64(&self.key_base64, &self.hmac_key_base64)
            .expect("checked when the configuration was read")
    }
}
