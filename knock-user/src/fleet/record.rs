//! What the fleet keeps in etcd, under its prefix: one key a grant, a
//! revoke and a host, each holding a JSON record. Pure: the keys a record
//! lives at and what a key and its value say.

use std::{net::IpAddr, time::SystemTime};

use ipnet::IpNet;
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
    /// The prefix's length when the grant admits a prefix of `addr` (its
    /// rule's `grant_scope`); none: `addr` alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_len: Option<u8>,
}

impl GrantRecord {
    /// The addresses it admits.
    pub fn net(&self) -> IpNet {
        net(self.addr, self.prefix_len)
    }
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
    /// The prefix's length when it revokes a prefix of `addr`: every grant
    /// inside it or holding it. None: the grants that admit `addr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_len: Option<u8>,
}

impl RevokeRecord {
    /// The addresses whose grants it ends.
    pub fn net(&self) -> IpNet {
        net(self.addr, self.prefix_len)
    }

    /// Whether it undoes `rule`'s grant of `granted` (an address or a
    /// prefix) made at `granted_ms`: one that shares an address with it.
    /// The two times may come from two hosts' clocks: a grant made within
    /// their skew of the revoke may go either way (a revoke heard live
    /// removes every grant it names, whenever made).
    pub fn covers(&self, granted: IpNet, rule: &str, granted_ms: u64) -> bool {
        meet(self.net(), granted)
            && self.rule.as_deref().is_none_or(|r| r == rule)
            && granted_ms <= self.at_ms
    }
}

/// `addr`'s prefix of `len` bits (the address alone without one).
pub fn net(addr: IpAddr, len: Option<u8>) -> IpNet {
    let full = if addr.is_ipv4() { 32 } else { 128 };
    // A length past the family's is the address alone: never wider.
    IpNet::new(addr, len.unwrap_or(full).min(full))
        .unwrap_or_else(|_| IpNet::from(addr))
        .trunc()
}

/// Whether two prefixes share an address (one holds the other).
pub fn meet(a: IpNet, b: IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// How a prefix names its key: the address alone, or `ADDR_LEN` (a key's
/// `/` separates its parts).
fn key_part(net: IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        format!("{}_{}", net.network(), net.prefix_len())
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

    /// Every grant is under it.
    pub fn grants(&self) -> String {
        format!("{}grants/", self.root)
    }

    /// Every grant of `addr` is under it.
    pub fn grants_of(&self, addr: IpAddr) -> String {
        format!("{}grants/{addr}/", self.root)
    }

    /// The key of a revoke of `net` (an address alone, or a prefix).
    pub fn revoke(&self, net: IpNet, rule: Option<&str>) -> String {
        let target = key_part(net);
        match rule {
            Some(rule) => format!("{}revokes/{target}/{rule}", self.root),
            None => format!("{}revokes/{target}", self.root),
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
#[expect(
    clippy::expect_used,
    reason = "records are plain structs that always serialize"
)]
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
            prefix_len: None,
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
            prefix_len: None,
        };
        assert_eq!(
            keys.decode(keys.revoke(revoke.net(), None).as_bytes(), &encode(&revoke)),
            Some(Entry::Revoke(revoke))
        );
        // A prefix's revoke keys apart from its network address's.
        let prefix = RevokeRecord {
            addr: "fd19::".parse().expect("address"),
            rule: Some("ssh".into()),
            flows: true,
            at_ms: 1_500,
            node: "b".into(),
            prefix_len: Some(64),
        };
        assert_eq!(
            keys.revoke(prefix.net(), prefix.rule.as_deref()),
            "/xknock/prod/revokes/fd19::_64/ssh"
        );
        assert_eq!(
            keys.revoke(net("fd19::".parse().expect("address"), None), None),
            "/xknock/prod/revokes/fd19::"
        );
        // Records written before scopes read as the address alone.
        let old = br#"{"addr":"198.19.0.9","rule":null,"flows":false,"at_ms":5,"node":"n"}"#;
        let Some(Entry::Revoke(old)) = keys.decode(b"/xknock/prod/revokes/198.19.0.9", old) else {
            panic!("an older revoke decodes");
        };
        assert_eq!(old.net(), "198.19.0.9/32".parse::<IpNet>().expect("net"));
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
            prefix_len: None,
        };
        let alone = net(addr, None);
        assert!(revoke(None).covers(alone, "ssh", 1_000));
        assert!(revoke(Some("ssh")).covers(alone, "ssh", 999));
        assert!(!revoke(Some("web")).covers(alone, "ssh", 999));
        assert!(!revoke(None).covers(alone, "ssh", 1_001), "granted after");
        assert!(!revoke(None).covers(net([198, 19, 0, 8].into(), None), "ssh", 0));
        // A prefix's grant is undone by a revoke of an address in it, and
        // a prefix's revoke undoes the grants inside it.
        let slash24 = net(addr, Some(24));
        assert_eq!(slash24.to_string(), "198.19.0.0/24");
        assert!(revoke(None).covers(slash24, "ssh", 0));
        assert!(!revoke(None).covers(net([198, 19, 1, 9].into(), Some(24)), "ssh", 0));
        let of_prefix = RevokeRecord {
            addr: [198, 19, 0, 0].into(),
            prefix_len: Some(24),
            ..revoke(None)
        };
        assert!(of_prefix.covers(net([198, 19, 0, 200].into(), None), "ssh", 0));
        assert!(!of_prefix.covers(net([198, 19, 1, 200].into(), None), "ssh", 0));
    }
}
