//! The messages between the daemon and the session, and the session's
//! state as metrics read it.

use std::{
    sync::atomic::{AtomicBool, AtomicI64, AtomicU64},
    time::Duration,
};

use super::{
    record::{SpendRecord, Spent},
    view::{Change, LocalGrant},
};

/// What the daemon tells the session.
#[derive(Debug)]
pub enum ToFleet {
    /// A grant this host just made (a knock, an SPA packet): published at once.
    Granted(LocalGrant),
    /// Every live grant of this host's kernel, at each sweep: what the
    /// fleet lacks is published, what a revoke undid is removed.
    Local(Vec<LocalGrant>),
    /// The configuration changed (a reload): its fingerprint, announced
    /// from the next heartbeat on.
    Fingerprint(String),
    /// Record `spent` for the fleet if no host has yet (`ticket` comes back
    /// with the outcome); the record lasts `ttl`.
    Spend {
        ticket: u64,
        spent: Spent,
        ttl: Duration,
    },
}

/// What became of a spend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpendOutcome {
    /// This host is the first: it opens.
    Recorded,
    /// Another host (or this one, before) spent it first.
    Taken { node: String },
    /// etcd could not be asked; `offline_spend` decides. (With `local`, the
    /// session records it once the fleet is back.)
    Unrecorded { reason: String },
}

/// What the session tells the daemon.
#[derive(Debug)]
pub enum FromFleet {
    /// Something for this host's kernel.
    Change(Change),
    /// Following the fleet, from `revision` on.
    Online { endpoint: String, revision: i64 },
    /// Not following it any more; why.
    Offline { reason: String },
    /// The outcome of the spend `ticket`.
    Spent { ticket: u64, outcome: SpendOutcome },
    /// Another host spent this (also read when relisting): refuse it here too.
    SpentElsewhere(SpendRecord),
}

/// The session's state, for metrics.
#[derive(Debug, Default)]
pub struct FleetStatus {
    pub connected: AtomicBool,
    /// The last revision of the fleet's keys seen.
    pub revision: AtomicI64,
    /// From another host's grant to its arrival here, the last one seen.
    pub lag_ms: AtomicU64,
    /// Grants of this host published.
    pub published: AtomicU64,
    /// Grants from the fleet handed to the kernel.
    pub planted: AtomicU64,
}
