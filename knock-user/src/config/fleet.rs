//! `[fleet]`: the etcd cluster a fleet of hosts shares its grants, revokes
//! and spent secrets through, and this host's name in it.

use std::fmt;

/// Hosts whose `prefix` is the same form one fleet, unless it is written.
pub const DEFAULT_PREFIX: &str = "/xknock";

/// A validated `[fleet]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Fleet {
    /// etcd's client URLs (`http://host:port`, or `https://` with `ca_file`).
    pub endpoints: Vec<String>,
    /// Every key of the fleet is under it; no trailing `/`.
    pub prefix: String,
    /// This host's name in the fleet: the host name unless written.
    pub node: String,
    /// TLS to etcd, when the endpoints are `https://`.
    pub tls: Option<FleetTls>,
    /// What a spend that cannot be recorded fleet-wide does.
    pub offline_spend: OfflineSpend,
}

impl fmt::Debug for Fleet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fleet")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("node", &self.node)
            .field("tls", &self.tls.as_ref().map(|tls| tls.identity.is_some()))
            .field("offline_spend", &self.offline_spend)
            .finish()
    }
}

/// The PEM files of `ca_file`, and of `cert_file` and `key_file` when etcd
/// asks clients for a certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct FleetTls {
    pub ca_pem: String,
    /// The client certificate and its key.
    pub identity: Option<(String, String)>,
}

/// What happens to an SPA packet or a one-time or rotating sequence while
/// its spend cannot be recorded in etcd.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OfflineSpend {
    /// Refused: nothing that must be spent fleet-wide opens while the
    /// fleet cannot be told (a lock-out rather than a replay).
    #[default]
    Refuse,
    /// Decided on this host's own records and published when etcd is back
    /// (a replay on another host rather than a lock-out).
    Local,
}

impl OfflineSpend {
    pub fn name(self) -> &'static str {
        match self {
            OfflineSpend::Refuse => "refuse",
            OfflineSpend::Local => "local",
        }
    }
}
