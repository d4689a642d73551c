//! What the fleet keeps in etcd, under its prefix: one key a grant, a
//! revoke and a host, each holding a JSON record. Pure: the keys a record
//! lives at and what a key and its value say.

use std::{net::IpAddr, time::SystemTime};

use serde::{Deserialize, Serialize};

/// A grant made on some host: `grants/ADDR/RULE`, under a lease that ends
/// a little after it (the lease only tidies up: every host's kernel ends
/// the grant at `expires_ms` on its own).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRecord {
    pub addr: IpAddr,
    /// The rule's name (rule indexes differ from host to host).
    pub rule: String,
    /// When it ends, Unix milliseconds.
    pub expires_ms: u64,
    /// When it was made, Unix milliseconds (a revoke undoes what was made
    /// before it).
    pub granted_ms: u64,
    /// The host that made it.
    pub node: String,
    /// What made it: `knock`, `spa` or `grant` (the command).
    pub via: String,
}

/// A revoke made on some host: `revokes/ADDR` (every rule) or
/// `revokes/ADDR/RULE`. It ends the grants of `addr` made before `at_ms`
/// on every host, also those a host learns of only later.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeRecord {
    pub addr: IpAddr,
    /// The rule, or every rule.
    pub rule: Option<String>,
    /// Whether the connections the grants admitted end too.
    pub flows: bool,
    /// When it was made, Unix milliseconds.
    pub at_ms: u64,
    pub node: String,
}

impl RevokeRecord {
    /// Whether it undoes `rule`'s grant of `addr` made at `granted_ms`.
    /// The two times may come from two hosts' clocks: a grant made within
    /// their skew of the revoke may go either way (a revoke heard live
    /// removes every grant it names, whenever made).
    pub fn covers(&self, addr: IpAddr, rule: &str, granted_ms: u64) -> bool {
        self.addr == addr
            && self.rule.as_deref().is_none_or(|r| r == rule)
            && granted_ms <= self.at_ms
    }
}

/// A host of the fleet: `nodes/NODE`, under a lease its `xknock run` keeps
/// alive, rewritten every heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node: String,
    /// The configuration's rules, hashed (`fingerprint`): hosts that differ
    /// open differently.
    pub fingerprint: String,
    /// The xknock version it runs.
    pub version: String,
    /// Drawn by each `run` at random: two hosts given the same `node` tell
    /// each other apart by it.
    pub instance: String,
    /// Heartbeats written since it connected; it sees them come back on its
    /// watch, or knows the watch has stalled.
    pub beat: u64,
    /// When it wrote this, Unix milliseconds.
    pub at_ms: u64,
}

/// What was spent: an SPA packet (its replay digest, hex) or a rule's
/// sequence (one-time line or rotating window, by its sequence tag).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Spent {
    Spa { digest: String },
    Sequence { rule: String, tag: u32 },
}

impl Spent {
    /// An SPA packet, by its replay digest.
    pub fn spa(digest: &[u8; 32]) -> Spent {
        Spent::Spa {
            digest: hex(digest),
        }
    }

    /// The replay digest of an SPA packet's spend, if it reads as one.
    pub fn spa_digest(&self) -> Option<[u8; 32]> {
        let Spent::Spa { digest } = self else {
            return None;
        };
        let bytes: Option<Vec<u8>> = (0..digest.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(digest.get(i..i + 2)?, 16).ok())
            .collect();
        bytes?.try_into().ok()
    }
}

/// `bytes` in lowercase hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A secret spent on some host: `spent/spa/DIGEST` or
/// `spent/sequence/RULE/TAG`, created only if absent: the first host to
/// write it opened, every other refuses it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendRecord {
    pub spent: Spent,
    /// The host that opened with it.
    pub node: String,
    pub at_ms: u64,
}

/// One key of the fleet, as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Grant(GrantRecord),
    Revoke(RevokeRecord),
    Node(NodeRecord),
    Spend(SpendRecord),
}

/// The keys of one fleet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    /// The fleet's prefix with a `/` after it: everything it owns.
    pub root: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            root: format!("{prefix}/"),
        }
    }

    pub fn grant(&self, addr: IpAddr, rule: &str) -> String {
        format!("{}grants/{addr}/{rule}", self.root)
    }

    /// Every grant of `addr` is under it.
    pub fn grants_of(&self, addr: IpAddr) -> String {
        format!("{}grants/{addr}/", self.root)
    }

    pub fn revoke(&self, addr: IpAddr, rule: Option<&str>) -> String {
        match rule {
            Some(rule) => format!("{}revokes/{addr}/{rule}", self.root),
            None => format!("{}revokes/{addr}", self.root),
        }
    }

    pub fn node(&self, node: &str) -> String {
        format!("{}nodes/{node}", self.root)
    }

    /// Every host's key is under it.
    pub fn nodes(&self) -> String {
        format!("{}nodes/", self.root)
    }

    pub fn spend(&self, spent: &Spent) -> String {
        match spent {
            Spent::Spa { digest } => format!("{}spent/spa/{digest}", self.root),
            Spent::Sequence { rule, tag } => {
                format!("{}spent/sequence/{rule}/{tag:08x}", self.root)
            }
        }
    }

    /// What `key` holding `value` is, if it is one of the fleet's records
    /// and reads as one.
    pub fn decode(&self, key: &[u8], value: &[u8]) -> Option<Entry> {
        let rest = key.strip_prefix(self.root.as_bytes())?;
        if rest.starts_with(b"grants/") {
            serde_json::from_slice(value).ok().map(Entry::Grant)
        } else if rest.starts_with(b"revokes/") {
            serde_json::from_slice(value).ok().map(Entry::Revoke)
        } else if rest.starts_with(b"nodes/") {
            serde_json::from_slice(value).ok().map(Entry::Node)
        } else if rest.starts_with(b"spent/") {
            serde_json::from_slice(value).ok().map(Entry::Spend)
        } else {
            None
        }
    }
}

/// Milliseconds since the Unix epoch at `at`.
pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A record as a key's value.
pub fn encode(record: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(record).expect("records always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_their_keys() {
        let keys = Keys::new("/xknock/prod");
        let addr: IpAddr = "fd19::7".parse().expect("address");
        let grant = GrantRecord {
            addr,
            rule: "ssh".into(),
            expires_ms: 2_000,
            granted_ms: 1_000,
            node: "a".into(),
            via: "knock".into(),
        };
        let key = keys.grant(addr, "ssh");
        assert_eq!(key, "/xknock/prod/grants/fd19::7/ssh");
        assert!(key.starts_with(&keys.grants_of(addr)));
        assert_eq!(
            keys.decode(key.as_bytes(), &encode(&grant)),
            Some(Entry::Grant(grant.clone()))
        );
        let revoke = RevokeRecord {
            addr,
            rule: None,
            flows: true,
            at_ms: 1_500,
            node: "b".into(),
        };
        assert_eq!(
            keys.decode(keys.revoke(addr, None).as_bytes(), &encode(&revoke)),
            Some(Entry::Revoke(revoke))
        );
        let spend = SpendRecord {
            spent: Spent::Sequence {
                rule: "ssh-once".into(),
                tag: 0xdead_beef,
            },
            node: "a".into(),
            at_ms: 9,
        };
        let key = keys.spend(&spend.spent);
        assert_eq!(key, "/xknock/prod/spent/sequence/ssh-once/deadbeef");
        assert_eq!(
            keys.decode(key.as_bytes(), &encode(&spend)),
            Some(Entry::Spend(spend))
        );
        let digest = [0xa5; 32];
        assert_eq!(Spent::spa(&digest).spa_digest(), Some(digest));
        for damaged in ["a5", "zz", ""] {
            let spent = Spent::Spa {
                digest: damaged.into(),
            };
            assert_eq!(spent.spa_digest(), None, "{damaged}");
        }
        let key = keys.grant(addr, "ssh");
        // Another fleet's keys, unknown kinds and damaged values are not ours.
        let other = Keys::new("/xknock/test");
        assert_eq!(other.decode(key.as_bytes(), &encode(&grant)), None);
        assert_eq!(keys.decode(b"/xknock/prod/other/x", b"{}"), None);
        assert_eq!(keys.decode(key.as_bytes(), b"{\"addr\":"), None);
    }

    #[test]
    fn a_revoke_undoes_what_was_granted_before_it() {
        let addr: IpAddr = [198, 19, 0, 9].into();
        let revoke = |rule: Option<&str>| RevokeRecord {
            addr,
            rule: rule.map(str::to_owned),
            flows: false,
            at_ms: 1_000,
            node: "b".into(),
        };
        assert!(revoke(None).covers(addr, "ssh", 1_000));
        assert!(revoke(Some("ssh")).covers(addr, "ssh", 999));
        assert!(!revoke(Some("web")).covers(addr, "ssh", 999));
        assert!(!revoke(None).covers(addr, "ssh", 1_001), "granted after");
        assert!(!revoke(None).covers([198, 19, 0, 8].into(), "ssh", 0));
    }
}
