//! The loader's side of Single Packet Authorization: a datagram the filter
//! handed over is checked as fwknopd checks it (`fwknop` decodes it), and
//! either grants its source (or the address it names) the SPA entry's
//! ports, or is refused with a reason.
//!
//! The order is fwknopd's: a packet accepted before is a replay whatever
//! else it is; then the HMAC (before anything is decrypted); then the
//! packet is remembered, so it never counts twice, and only then its age
//! and its request are judged.

use std::{
    net::IpAddr,
    time::{Duration, SystemTime},
};

use knock_common::{Addr, Knock};

use crate::{
    config::{Config, PortSpec, Prefix},
    fwknop::{self, Keys, MessageType, Proto, Refusal, unix_seconds},
    loader::maps::{Maps, MapsError, Remembered},
};

/// Why a packet opened nothing: the `reason` of an `spa_refused` event.
/// (The kernel's verdicts are `knock_common::Reason`; what the decoder
/// finds wrong with a packet, `fwknop::Refusal`.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpaRefusal {
    /// No SPA entry's HMAC key authenticates it: forged, damaged, or made
    /// with other keys.
    BadHmac,
    /// Accepted before (within `max_age`).
    Replay,
    /// Its timestamp is further from now than `max_age` (either way).
    TooOld,
    /// Authentic, but asks for what the entry does not give: a port it
    /// does not protect, a NAT or command message, `0.0.0.0` where a
    /// source address is required, a denied address.
    NotAllowed,
    /// Authentic but undecodable, or no SPA packet at all.
    Malformed,
    /// The replay cache is full of packets younger than their `max_age`:
    /// nothing more can be accepted until some age out.
    ReplayCacheFull,
    /// Authentic and new here, but the fleet could not record it spent
    /// (`offline_spend = "refuse"`).
    FleetUnreachable,
}

impl SpaRefusal {
    pub fn name(self) -> &'static str {
        match self {
            SpaRefusal::BadHmac => "bad_hmac",
            SpaRefusal::Replay => "replay",
            SpaRefusal::TooOld => "too_old",
            SpaRefusal::NotAllowed => "not_allowed",
            SpaRefusal::Malformed => "malformed",
            SpaRefusal::ReplayCacheFull => "replay_cache_full",
            SpaRefusal::FleetUnreachable => "fleet_unreachable",
        }
    }
}

/// What became of one datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Grant(SpaGrant),
    Refuse {
        /// The SPA entry whose keys authenticated it, if one did.
        rule: Option<String>,
        reason: SpaRefusal,
        /// What exactly, for the operator.
        detail: String,
    },
}

/// A request that checked out: the grant to put in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpaGrant {
    pub rule: String,
    /// The entry's rule index.
    pub index: u32,
    /// Who is admitted: the address in the request, or the packet's source.
    pub addr: IpAddr,
    /// What the request named (all within the entry's `protect`).
    pub ports: Vec<PortSpec>,
    pub open_for: Duration,
}

/// Where accepted packets are remembered (the pinned `REPLAY` map; a plain
/// set in tests).
pub trait ReplayCache {
    /// Whether `key` is remembered.
    fn seen(&self, key: &[u8; 32]) -> Result<bool, MapsError>;
    /// Remembers `key` until `until` (Unix seconds), unless it already is.
    fn remember(&mut self, key: &[u8; 32], until: u64) -> Result<Remembered, MapsError>;
    /// Forgets keys remembered until before `now`.
    fn prune(&mut self, now: u64) -> Result<usize, MapsError>;
}

impl ReplayCache for Maps {
    fn seen(&self, key: &[u8; 32]) -> Result<bool, MapsError> {
        self.replayed(key)
    }

    fn remember(&mut self, key: &[u8; 32], until: u64) -> Result<Remembered, MapsError> {
        self.remember_replay(key, until)
    }

    fn prune(&mut self, now: u64) -> Result<usize, MapsError> {
        self.prune_replays(now)
    }
}

/// One `[[spa]]` as the judge needs it.
struct Entry {
    name: String,
    index: u32,
    listen: u16,
    keys: Keys,
    protect: Vec<PortSpec>,
    open_for: Duration,
    max_age: Duration,
    require_source_address: bool,
    /// `source`: the prefixes its packets may come from; empty: any.
    sources: Vec<Prefix>,
}

impl Entry {
    /// Whether a packet from `sender` may use it (fwknop's `SOURCE`).
    fn admits(&self, sender: IpAddr) -> bool {
        self.sources.is_empty() || self.sources.iter().any(|prefix| prefix.contains(sender))
    }
}

/// Judges datagrams by the running configuration's `[[spa]]` entries.
pub struct Judge {
    entries: Vec<Entry>,
    deny: Vec<Prefix>,
}

/// A replay cache in memory, of at most `.1` packets: the judge's tests
/// and the fuzz targets (the loader's is the pinned `REPLAY` map).
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Default)]
pub struct MemoryReplays(pub std::collections::HashMap<[u8; 32], u64>, pub usize);

#[cfg(any(test, feature = "testing"))]
impl MemoryReplays {
    /// An empty cache that holds `limit` packets.
    pub fn new(limit: usize) -> MemoryReplays {
        MemoryReplays(std::collections::HashMap::new(), limit)
    }
}

#[cfg(any(test, feature = "testing"))]
impl ReplayCache for MemoryReplays {
    fn seen(&self, key: &[u8; 32]) -> Result<bool, MapsError> {
        Ok(self.0.contains_key(key))
    }

    fn remember(&mut self, key: &[u8; 32], until: u64) -> Result<Remembered, MapsError> {
        if self.0.contains_key(key) {
            return Ok(Remembered::Already);
        }
        if self.0.len() >= self.1 {
            return Ok(Remembered::Full);
        }
        self.0.insert(*key, until);
        Ok(Remembered::Now)
    }

    fn prune(&mut self, now: u64) -> Result<usize, MapsError> {
        let before = self.0.len();
        self.0.retain(|_, until| *until >= now);
        Ok(before - self.0.len())
    }
}

/// Forgets the accepted packets whose `max_age` is over at `now` (a packet
/// that old is refused as too old anyway).
pub fn forget_aged(replays: &mut impl ReplayCache, now: SystemTime) -> Result<usize, MapsError> {
    replays.prune(u64::try_from(unix_seconds(now)).unwrap_or(0))
}

impl Judge {
    /// The `[[spa]]` entries of `config`, whose rules sit at `slots`
    /// (`slots[i]` for `config.rules[i]`).
    pub fn new(config: &Config, slots: &[Vec<u32>]) -> Judge {
        let entries = config
            .rules
            .iter()
            .zip(slots)
            .filter_map(|(rule, parts)| {
                let spa = rule.spa()?;
                Some(Entry {
                    name: rule.name.clone(),
                    index: *parts.first()?,
                    listen: spa.listen,
                    keys: spa.keys(),
                    protect: rule.protect.clone(),
                    open_for: rule.open_for,
                    max_age: spa.max_age,
                    require_source_address: spa.require_source_address,
                    sources: spa.sources.clone(),
                })
            })
            .collect();
        Judge {
            entries,
            deny: config.deny.clone(),
        }
    }

    /// The verdict on `payload`, sent from `source` to UDP `port` at `now`;
    /// an authentic packet is remembered in `replays`.
    pub fn judge(
        &self,
        source: &Addr,
        port: u16,
        payload: &[u8],
        now: SystemTime,
        replays: &mut impl ReplayCache,
    ) -> Result<Verdict, MapsError> {
        let refuse = |rule: Option<&Entry>, reason, detail: String| Verdict::Refuse {
            rule: rule.map(|e| e.name.clone()),
            reason,
            detail,
        };
        let listening: Vec<&Entry> = self.entries.iter().filter(|e| e.listen == port).collect();
        // Who a refusal names before a key picked the entry.
        let only = match listening.as_slice() {
            [one] => Some(*one),
            _ => None,
        };
        if listening.is_empty() {
            return Ok(refuse(
                None,
                SpaRefusal::Malformed,
                format!("no SPA entry listens on udp:{port}"),
            ));
        }
        let key = fwknop::replay_key(payload);
        if replays.seen(&key)? {
            return Ok(refuse(only, SpaRefusal::Replay, "accepted before".into()));
        }
        let mut opened = None;
        // An entry whose keys authenticate the packet but whose `source`
        // leaves its sender out (fwknopd would not try that stanza).
        let mut elsewhere = None;
        let sender = crate::loader::maps::display_addr(source);
        for entry in listening {
            match fwknop::open(payload, &entry.keys) {
                Ok(_) if !entry.admits(sender) => {
                    elsewhere.get_or_insert(entry);
                }
                Ok(request) => {
                    opened = Some((entry, request));
                    break;
                }
                Err(Refusal::BadHmac) => continue,
                Err(other) => {
                    return Ok(refuse(
                        Some(entry),
                        SpaRefusal::Malformed,
                        other.to_string(),
                    ));
                }
            }
        }
        let Some((entry, request)) = opened else {
            if let Some(entry) = elsewhere {
                return Ok(refuse(
                    Some(entry),
                    SpaRefusal::NotAllowed,
                    format!("sent from {sender}, which is not among the entry's sources"),
                ));
            }
            return Ok(refuse(
                only,
                SpaRefusal::BadHmac,
                "no key of this port authenticates it".into(),
            ));
        };
        let now_secs = unix_seconds(now);
        let until =
            u64::try_from(now_secs.saturating_add(entry.max_age.as_secs() as i64)).unwrap_or(0);
        // A full cache first forgets what aged out; still full, it refuses
        // rather than forgets what could be replayed.
        let remembered = match replays.remember(&key, until)? {
            Remembered::Full => {
                forget_aged(replays, now)?;
                replays.remember(&key, until)?
            }
            first => first,
        };
        match remembered {
            Remembered::Now => {}
            Remembered::Already => {
                return Ok(refuse(
                    Some(entry),
                    SpaRefusal::Replay,
                    "accepted before".into(),
                ));
            }
            Remembered::Full => {
                return Ok(refuse(
                    Some(entry),
                    SpaRefusal::ReplayCacheFull,
                    "every remembered packet is younger than max_age".into(),
                ));
            }
        }
        let age = now_secs.saturating_sub(request.timestamp);
        if age.unsigned_abs() > entry.max_age.as_secs() {
            let detail = if age >= 0 {
                format!("sent {age}s ago; max_age is {}s", entry.max_age.as_secs())
            } else {
                format!(
                    "dated {}s in the future; max_age is {}s",
                    -age,
                    entry.max_age.as_secs()
                )
            };
            return Ok(refuse(Some(entry), SpaRefusal::TooOld, detail));
        }
        let not_allowed = |detail: String| Ok(refuse(Some(entry), SpaRefusal::NotAllowed, detail));
        let (MessageType::Access | MessageType::ClientTimeoutAccess) = request.message_type else {
            return not_allowed(format!(
                "a {:?} message; only access requests are served",
                request.message_type
            ));
        };
        let Some(access) = &request.access else {
            return Ok(refuse(
                Some(entry),
                SpaRefusal::Malformed,
                "an access message without an access request".into(),
            ));
        };
        let mut ports = Vec::with_capacity(access.ports.len());
        for (proto, number) in &access.ports {
            let spec = PortSpec(match proto {
                Proto::Tcp => Knock::tcp(*number),
                Proto::Udp => Knock::udp(*number),
            });
            if !entry.protect.contains(&spec) {
                return not_allowed(format!("{spec} is not among the ports this entry opens"));
            }
            ports.push(spec);
        }
        if ports.is_empty() {
            return not_allowed("the request names no port".into());
        }
        let addr = if access.addr.is_unspecified() {
            if entry.require_source_address {
                return not_allowed(format!(
                    "asks for {} (the packet's source); this entry requires the address",
                    access.addr
                ));
            }
            crate::loader::maps::display_addr(source)
        } else {
            IpAddr::V4(access.addr)
        };
        if self.deny.iter().any(|prefix| prefix.contains(addr)) {
            return not_allowed(format!("{addr} is on the denylist"));
        }
        let open_for = match request.client_timeout {
            Some(secs) if secs > 0 => entry.open_for.min(Duration::from_secs(u64::from(secs))),
            _ => entry.open_for,
        };
        Ok(Verdict::Grant(SpaGrant {
            rule: entry.name.clone(),
            index: entry.index,
            addr,
            ports,
            open_for,
        }))
    }
}

#[cfg(test)]
mod tests {
    use knock_common::ipv4_mapped;

    use super::*;

    const KEY: &str = "wqpO0bCb8v0WXmVOiK2LDsWbx84d7V5NzC4dgQlcCRM=";
    const HMAC_KEY: &str =
        "Kxo4R01PrSUXAbpKKe7vuuDrh6OMLbiCHoSWxdfz3fsyHcIp/A2VYw8JMusAK9W5ZlAqBzEtx/grXJr5Rg/5Mw==";
    const OTHER_KEY: &str = "aGVsbG8gd29ybGQsIGhlbGxvIHdvcmxkIQ==";

    fn config(extra: &str) -> Config {
        Config::parse(&format!(
            "deny = [\"203.0.113.9\"]\n[[spa]]\nname = \"fwknop\"\nkey_base64 = \"{KEY}\"\nhmac_key_base64 = \"{HMAC_KEY}\"\nopen_for = \"30s\"\nprotect = [\"tcp:22\", \"udp:51820\"]\nmax_age = \"60s\"\n{extra}"
        ))
        .expect("valid")
    }

    fn keys(key: &str) -> Keys {
        let decode = |k: &str| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(k)
                .expect("base64")
        };
        Keys::new(decode(key), decode(HMAC_KEY)).expect("keys")
    }

    fn packet(
        key: &str,
        addr: &str,
        ports: &[(Proto, u16)],
        at: i64,
        timeout: Option<u32>,
    ) -> Vec<u8> {
        fwknop::seal(
            &fwknop::Outgoing {
                user: "alice".into(),
                timestamp: at,
                access: fwknop::Access {
                    addr: addr.parse().expect("address"),
                    ports: ports.to_vec(),
                },
                client_timeout: timeout,
            },
            &keys(key),
        )
        .expect("sealed")
        .into_bytes()
    }

    const SOURCE: Addr = ipv4_mapped([198, 18, 0, 2]);

    fn now() -> (SystemTime, i64) {
        let now = SystemTime::now();
        (now, unix_seconds(now))
    }

    /// What `judge` says at `now` of `payload` from `SOURCE` to udp:62201.
    fn judged_at(
        judge: &Judge,
        cache: &mut MemoryReplays,
        payload: &[u8],
        now: SystemTime,
    ) -> Verdict {
        judge
            .judge(&SOURCE, 62201, payload, now, cache)
            .expect("judged")
    }

    fn reason(verdict: &Verdict) -> Option<SpaRefusal> {
        match verdict {
            Verdict::Grant(_) => None,
            Verdict::Refuse { reason, .. } => Some(*reason),
        }
    }

    #[test]
    fn an_entry_with_a_source_takes_packets_from_it_only() {
        // SOURCE (198.18.0.2) is in the first prefix, not the second.
        let (now, secs) = now();
        let fresh = || packet(KEY, "198.18.0.7", &[(Proto::Tcp, 22)], secs, None);
        let inside = config("source = [\"198.18.0.0/24\", \"2001:db8::/32\"]\n");
        let judge = Judge::new(&inside, &inside.slots_in_order());
        let mut cache = MemoryReplays::new(10);
        let verdict = judged_at(&judge, &mut cache, &fresh(), now);
        assert!(matches!(verdict, Verdict::Grant(_)), "{verdict:?}");

        let outside = config("source = [\"203.0.113.0/24\"]\n");
        let judge = Judge::new(&outside, &outside.slots_in_order());
        let mut cache = MemoryReplays::new(10);
        let verdict = judged_at(&judge, &mut cache, &fresh(), now);
        let Verdict::Refuse {
            reason,
            detail,
            rule,
        } = &verdict
        else {
            panic!("granted: {verdict:?}")
        };
        assert_eq!(*reason, SpaRefusal::NotAllowed);
        assert_eq!(rule.as_deref(), Some("fwknop"));
        assert!(
            detail.contains("198.18.0.2") && detail.contains("sources"),
            "{detail}"
        );
        assert!(
            cache.0.is_empty(),
            "not remembered: the entry never took it"
        );

        // The same keys in a second entry whose source holds the sender.
        let both = Config::parse(&format!(
            "[[spa]]\nname = \"far\"\nkey_base64 = \"{KEY}\"\nhmac_key_base64 = \"{HMAC_KEY}\"\nopen_for = \"30s\"\nprotect = [\"tcp:22\"]\nsource = [\"203.0.113.0/24\"]\n\
             [[spa]]\nname = \"near\"\nlisten = \"udp:62201\"\nkey_base64 = \"{KEY}\"\nhmac_key_base64 = \"{HMAC_KEY}\"\nopen_for = \"30s\"\nprotect = [\"tcp:22\"]\nsource = [\"198.18.0.2\"]\n"
        ))
        .expect("valid");
        let judge = Judge::new(&both, &both.slots_in_order());
        let mut cache = MemoryReplays::new(10);
        let verdict = judged_at(&judge, &mut cache, &fresh(), now);
        let Verdict::Grant(grant) = verdict else {
            panic!("refused: {verdict:?}")
        };
        assert_eq!(grant.rule, "near");
    }

    #[test]
    fn a_fresh_request_is_granted_once() {
        let config = config("");
        let judge = Judge::new(&config, &config.slots_in_order());
        let mut cache = MemoryReplays::new(10);
        let (now, secs) = now();
        let fresh = packet(KEY, "198.18.0.7", &[(Proto::Tcp, 22)], secs, None);
        let verdict = judged_at(&judge, &mut cache, &fresh, now);
        let Verdict::Grant(grant) = verdict else {
            panic!("refused: {verdict:?}")
        };
        assert_eq!(grant.addr, "198.18.0.7".parse::<IpAddr>().expect("address"));
        assert_eq!((grant.rule.as_str(), grant.index), ("fwknop", 0));
        assert_eq!(grant.ports, [PortSpec(Knock::tcp(22))]);
        assert_eq!(grant.open_for, Duration::from_secs(30));
        let again = judged_at(&judge, &mut cache, &fresh, now);
        assert_eq!(reason(&again), Some(SpaRefusal::Replay));
        // Remembered for max_age, then forgotten (and then too old anyway).
        assert_eq!(
            cache.0.values().copied().collect::<Vec<_>>(),
            [secs as u64 + 60]
        );
    }

    #[test]
    fn requests_are_judged_in_fwknopds_order() {
        let config = config("require_source_address = true");
        let judge = Judge::new(&config, &config.slots_in_order());
        let mut cache = MemoryReplays::new(100);
        let (now, secs) = now();
        let mut judged = |payload: &[u8], port| {
            reason(
                &judge
                    .judge(&SOURCE, port, payload, now, &mut cache)
                    .expect("judged"),
            )
        };
        let tcp22 = [(Proto::Tcp, 22)];
        assert_eq!(
            judged(&packet(OTHER_KEY, "198.18.0.2", &tcp22, secs, None), 62201),
            Some(SpaRefusal::Malformed),
            "right HMAC key, wrong key"
        );
        let mut flipped = packet(KEY, "198.18.0.2", &tcp22, secs, None);
        flipped[60] = if flipped[60] == b'A' { b'B' } else { b'A' };
        assert_eq!(judged(&flipped, 62201), Some(SpaRefusal::BadHmac));
        assert_eq!(
            judged(b"not an SPA packet at all", 62201),
            Some(SpaRefusal::Malformed)
        );
        assert_eq!(
            judged(&packet(KEY, "198.18.0.2", &tcp22, secs, None), 9),
            Some(SpaRefusal::Malformed),
            "no entry on that port"
        );
        let old = packet(KEY, "198.18.0.2", &tcp22, secs - 61, None);
        assert_eq!(judged(&old, 62201), Some(SpaRefusal::TooOld));
        assert_eq!(
            judged(&old, 62201),
            Some(SpaRefusal::Replay),
            "remembered once authentic"
        );
        assert_eq!(
            judged(&packet(KEY, "198.18.0.2", &tcp22, secs + 61, None), 62201),
            Some(SpaRefusal::TooOld)
        );
        assert_eq!(
            judged(&packet(KEY, "198.18.0.2", &tcp22, secs + 59, None), 62201),
            None,
            "within max_age either way"
        );
        assert_eq!(
            judged(
                &packet(KEY, "198.18.0.2", &[(Proto::Tcp, 2222)], secs, None),
                62201
            ),
            Some(SpaRefusal::NotAllowed)
        );
        assert_eq!(
            judged(
                &packet(
                    KEY,
                    "198.18.0.2",
                    &[(Proto::Tcp, 22), (Proto::Udp, 53)],
                    secs,
                    None
                ),
                62201
            ),
            Some(SpaRefusal::NotAllowed),
            "every port must be allowed"
        );
        assert_eq!(
            judged(&packet(KEY, "0.0.0.0", &tcp22, secs, None), 62201),
            Some(SpaRefusal::NotAllowed),
            "an address is required"
        );
        assert_eq!(
            judged(&packet(KEY, "203.0.113.9", &tcp22, secs, None), 62201),
            Some(SpaRefusal::NotAllowed),
            "a denied address"
        );
    }

    #[test]
    fn the_source_stands_in_for_0_0_0_0_and_a_client_timeout_only_shortens() {
        let config = config("");
        let judge = Judge::new(&config, &config.slots_in_order());
        let mut cache = MemoryReplays::new(10);
        let (now, secs) = now();
        let both = [(Proto::Tcp, 22), (Proto::Udp, 51820)];
        let mut grant = |payload: Vec<u8>, source: &Addr| match judge
            .judge(source, 62201, &payload, now, &mut cache)
            .expect("judged")
        {
            Verdict::Grant(grant) => grant,
            refused => panic!("refused: {refused:?}"),
        };
        let v6: Addr = "fd18::2"
            .parse::<std::net::Ipv6Addr>()
            .expect("v6")
            .octets();
        let short = grant(packet(KEY, "0.0.0.0", &both, secs, Some(5)), &v6);
        assert_eq!(short.addr, "fd18::2".parse::<IpAddr>().expect("address"));
        assert_eq!(short.open_for, Duration::from_secs(5));
        assert_eq!(short.ports.len(), 2);
        let long = grant(packet(KEY, "0.0.0.0", &both, secs, Some(3600)), &SOURCE);
        assert_eq!(long.addr, "198.18.0.2".parse::<IpAddr>().expect("address"));
        assert_eq!(
            long.open_for,
            Duration::from_secs(30),
            "never past open_for"
        );
    }

    #[test]
    fn a_full_cache_is_pruned_then_refuses_rather_than_forgets() {
        let config = config("");
        let judge = Judge::new(&config, &config.slots_in_order());
        let mut cache = MemoryReplays::new(1);
        let (now, secs) = now();
        let tcp22 = [(Proto::Tcp, 22)];
        cache.0.insert([7; 32], 0); // long expired: pruned to make room
        let first = judged_at(
            &judge,
            &mut cache,
            &packet(KEY, "198.18.0.2", &tcp22, secs, None),
            now,
        );
        assert_eq!(reason(&first), None);
        let second = judged_at(
            &judge,
            &mut cache,
            &packet(KEY, "198.18.0.2", &tcp22, secs, None),
            now,
        );
        assert_eq!(reason(&second), Some(SpaRefusal::ReplayCacheFull));
    }

    #[test]
    fn a_port_shared_by_entries_tries_each_key() {
        let config = Config::parse(&format!(
            "[[spa]]\nname = \"a\"\nkey_base64 = \"{OTHER_KEY}\"\nhmac_key_base64 = \"{KEY}\"\nopen_for = \"30s\"\nprotect = [\"tcp:22\"]\n\
             [[spa]]\nname = \"b\"\nkey_base64 = \"{KEY}\"\nhmac_key_base64 = \"{HMAC_KEY}\"\nopen_for = \"10s\"\nprotect = [\"tcp:22\"]\n"
        ))
        .expect("valid");
        let judge = Judge::new(&config, &config.slots_in_order());
        let mut cache = MemoryReplays::new(10);
        let (now, secs) = now();
        let verdict = judged_at(
            &judge,
            &mut cache,
            &packet(KEY, "198.18.0.2", &[(Proto::Tcp, 22)], secs, None),
            now,
        );
        let Verdict::Grant(grant) = verdict else {
            panic!("refused: {verdict:?}")
        };
        assert_eq!((grant.rule.as_str(), grant.index), ("b", 1));
    }
}
