//! Following the fleet in etcd, one member at a time: connect, announce
//! this host under a lease, list the prefix at a revision, watch it from
//! the next one, publish what this host granted; on any failure (the
//! member down, cut off from its quorum, a stalled or compacted watch) say
//! so, move to the next member and start over with a fresh list. Nothing
//! here touches the kernel: changes go up to the daemon as messages.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant, SystemTime},
};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions,
    Identity, PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::mpsc;

use super::{
    messages::{FleetStatus, FromFleet, SpendOutcome, ToFleet},
    record::{
        Entry, GrantRecord, Keys, NodeRecord, RevokeRecord, SpendRecord, Spent, encode, unix_ms,
    },
    view::{Change, View},
};
use crate::config::fleet::{Fleet, OfflineSpend};

/// How long connecting to a member may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one request may take (a member without a leader fails sooner:
/// requests require one).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How often this host rewrites its node key and renews its lease; its
/// heartbeats come back on the watch, or the watch has stalled.
pub const HEARTBEAT: Duration = Duration::from_millis(500);
/// Heartbeats written but not seen back before the watch counts as stalled.
const STALLED_BEATS: u64 = 6;
/// The node key's lease: a host gone this long drops out of `status`.
const NODE_TTL_SECS: i64 = 10;
/// How long after a grant's end its key stays (the lease is only tidying).
const GRANT_KEY_MARGIN_SECS: u64 = 5;
/// Waits between attempts, doubling up to the last.
const BACKOFF: [Duration; 4] = [
    Duration::from_millis(100),
    Duration::from_millis(300),
    Duration::from_secs(1),
    Duration::from_secs(2),
];

/// Why following stopped.
type Failure = String;

/// Connects to `endpoint` as `fleet` says (TLS when it has files).
pub async fn connect(fleet: &Fleet, endpoint: &str) -> Result<Client, etcd_client::Error> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
        .with_require_leader(true);
    if let Some(tls) = &fleet.tls {
        let mut config = TlsOptions::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
        if let Some((cert, key)) = &tls.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        options = options.with_tls(config);
    }
    Client::connect([endpoint], Some(options)).await
}

/// Connects to the first member of `fleet` that answers, trying each in turn.
pub async fn connect_any(fleet: &Fleet) -> Result<Client, Failure> {
    let mut failures = Vec::new();
    for endpoint in &fleet.endpoints {
        match connect(fleet, endpoint).await {
            Ok(mut client) => match client.status().await {
                Ok(_) => return Ok(client),
                Err(error) => failures.push(format!("{endpoint}: {error}")),
            },
            Err(error) => failures.push(format!("{endpoint}: {error}")),
        }
    }
    Err(failures.join("; "))
}

/// Publishes `grant` under a lease that ends a little after it.
pub async fn publish_grant(
    client: &mut Client,
    keys: &Keys,
    grant: &GrantRecord,
) -> Result<(), etcd_client::Error> {
    let left_ms = grant.expires_ms.saturating_sub(unix_ms(SystemTime::now()));
    let ttl = left_ms.div_ceil(1000) + GRANT_KEY_MARGIN_SECS;
    let lease = client
        .lease_grant(i64::try_from(ttl).unwrap_or(i64::MAX), None)
        .await?;
    client
        .put(
            keys.grant(grant.addr, &grant.rule),
            encode(grant),
            Some(PutOptions::new().with_lease(lease.id())),
        )
        .await?;
    Ok(())
}

/// Records `spent` for the fleet unless a host already has: `None` when
/// this host is the first, else the host that was.
pub async fn record_spend(
    client: &mut Client,
    keys: &Keys,
    record: &SpendRecord,
    ttl: Duration,
) -> Result<Option<String>, etcd_client::Error> {
    let key = keys.spend(&record.spent);
    let lease = client
        .lease_grant(
            i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX),
            None,
        )
        .await?;
    let txn = Txn::new()
        .when(vec![Compare::create_revision(
            key.clone(),
            CompareOp::Equal,
            0,
        )])
        .and_then(vec![TxnOp::put(
            key.clone(),
            encode(record),
            Some(PutOptions::new().with_lease(lease.id())),
        )])
        .or_else(vec![TxnOp::get(key, None)]);
    let response = client.txn(txn).await?;
    if response.succeeded() {
        return Ok(None);
    }
    // Spent before: by whom, as its record says.
    let holder = response.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(got) => {
            got.kvs()
                .first()
                .and_then(|kv| match keys.decode(kv.key(), kv.value()) {
                    Some(Entry::Spend(spend)) => Some(spend.node),
                    _ => None,
                })
        }
        _ => None,
    });
    Ok(Some(holder.unwrap_or_else(|| "another host".into())))
}

/// The session: follows the fleet until the daemon goes away.
pub async fn follow(
    fleet: Fleet,
    mut fingerprint: String,
    mut from_daemon: mpsc::UnboundedReceiver<ToFleet>,
    to_daemon: mpsc::UnboundedSender<FromFleet>,
    status: Arc<FleetStatus>,
) {
    let keys = Keys::new(&fleet.prefix);
    let mut view = View::new(&fleet.node);
    let mut spends = Spends::default();
    // When this host last heard from the fleet (a watch response): a revoke
    // made later was missed.
    let mut heard_ms = 0;
    let mut next = 0;
    let mut failures = 0usize;
    loop {
        let endpoint = fleet.endpoints[next % fleet.endpoints.len()].clone();
        next += 1;
        let mut session = Session {
            fleet: &fleet,
            keys: &keys,
            fingerprint: &mut fingerprint,
            endpoint: &endpoint,
            view: &mut view,
            spends: &mut spends,
            heard_ms: &mut heard_ms,
            to_daemon: &to_daemon,
            status: &status,
        };
        let failure = session.run(&mut from_daemon).await;
        let was_online = status.connected.swap(false, Ordering::Relaxed);
        let Some(failure) = failure else { return };
        if was_online {
            failures = 0;
            if to_daemon
                .send(FromFleet::Offline { reason: failure })
                .is_err()
            {
                return;
            }
        } else {
            if failures == 0 {
                // The first member tried after losing the fleet, or at start.
                log::warn!("fleet: {endpoint}: {failure}");
            } else {
                log::debug!("fleet: {endpoint}: {failure}");
            }
            failures += 1;
        }
        let wait = BACKOFF[failures.min(BACKOFF.len() - 1)];
        // The daemon's messages wait meanwhile: what it grants is in its
        // kernel, and published from there once the fleet is back.
        // Spends wait a little for it.
        let resume = Instant::now() + wait;
        loop {
            if !spends.expire(&fleet, &to_daemon, "etcd is unreachable") {
                return;
            }
            let wake = spends.next_deadline().map_or(resume, |d| d.min(resume));
            tokio::select! {
                () = tokio::time::sleep_until(wake.into()) => if Instant::now() >= resume { break },
                message = from_daemon.recv() => match message {
                    None => return,
                    Some(ToFleet::Spend { ticket, spent, ttl }) => spends.ask(ticket, spent, ttl),
                    Some(ToFleet::Fingerprint(print)) => fingerprint = print,
                    Some(ToFleet::Granted(_) | ToFleet::Local(_)) => {}
                },
            }
        }
    }
}

/// How long a spend waits for the fleet (a member down, an election)
/// before `offline_spend` decides it.
const SPEND_PATIENCE: Duration = Duration::from_secs(3);

/// A spend asked for and not yet recorded.
struct Waiting {
    ticket: u64,
    spent: Spent,
    ttl: Duration,
    /// When `offline_spend` decides it, if the fleet is not back by then.
    deadline: Instant,
}

/// Spends waiting for the fleet, and those decided here without it
/// (`offline_spend = "local"`), recorded once it is back.
#[derive(Default)]
struct Spends {
    waiting: Vec<Waiting>,
    later: Vec<(SpendRecord, Duration)>,
}

impl Spends {
    fn ask(&mut self, ticket: u64, spent: Spent, ttl: Duration) {
        self.waiting.push(Waiting {
            ticket,
            spent,
            ttl,
            deadline: Instant::now() + SPEND_PATIENCE,
        });
    }

    /// The first deadline of a waiting spend.
    fn next_deadline(&self) -> Option<Instant> {
        self.waiting.iter().map(|w| w.deadline).min()
    }

    /// Tells the daemon of every waiting spend past its deadline that it
    /// could not be recorded (keeping it for later with `local`); false
    /// once the daemon is gone.
    fn expire(
        &mut self,
        fleet: &Fleet,
        to_daemon: &mpsc::UnboundedSender<FromFleet>,
        reason: &str,
    ) -> bool {
        let now = Instant::now();
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|w| w.deadline <= now);
        self.waiting = waiting;
        for spend in due {
            if fleet.offline_spend == OfflineSpend::Local {
                let record = SpendRecord {
                    spent: spend.spent,
                    node: fleet.node.clone(),
                    at_ms: unix_ms(SystemTime::now()),
                };
                self.later.push((record, spend.ttl));
            }
            let outcome = SpendOutcome::Unrecorded {
                reason: reason.to_owned(),
            };
            let message = FromFleet::Spent {
                ticket: spend.ticket,
                outcome,
            };
            if to_daemon.send(message).is_err() {
                return false;
            }
        }
        true
    }
}

/// One connection to one member.
struct Session<'a> {
    fleet: &'a Fleet,
    keys: &'a Keys,
    fingerprint: &'a mut String,
    endpoint: &'a str,
    view: &'a mut View,
    spends: &'a mut Spends,
    heard_ms: &'a mut u64,
    to_daemon: &'a mpsc::UnboundedSender<FromFleet>,
    status: &'a FleetStatus,
}

impl Session<'_> {
    /// Follows until something fails (what, returned), or the daemon is
    /// gone (`None`).
    async fn run(&mut self, from_daemon: &mut mpsc::UnboundedReceiver<ToFleet>) -> Option<Failure> {
        let error = |what: &str| {
            let what = what.to_owned();
            move |e: etcd_client::Error| format!("{what}: {e}")
        };
        let mut client = match connect(self.fleet, self.endpoint).await {
            Ok(client) => client,
            Err(e) => return Some(error("connecting")(e)),
        };
        let lease = match client.lease_grant(NODE_TTL_SECS, None).await {
            Ok(lease) => lease.id(),
            Err(e) => return Some(error("granting the node's lease")(e)),
        };
        let (mut keeper, mut kept) = match client.lease_keep_alive(lease).await {
            Ok(pair) => pair,
            Err(e) => return Some(error("keeping the node's lease")(e)),
        };
        let mut beat = 0u64;
        if let Err(e) = self.announce(&mut client, lease, beat).await {
            return Some(error("announcing this host")(e));
        }
        // The whole prefix at one revision, then everything after it.
        let listed = match client
            .get(
                self.keys.root.clone(),
                Some(GetOptions::new().with_prefix()),
            )
            .await
        {
            Ok(listed) => listed,
            Err(e) => return Some(error("listing the fleet")(e)),
        };
        let revision = listed.header().map_or(0, |h| h.revision());
        let (mut grants, mut revokes) = (Vec::new(), Vec::new());
        for kv in listed.kvs() {
            match self.keys.decode(kv.key(), kv.value()) {
                Some(Entry::Grant(grant)) => grants.push(grant),
                Some(Entry::Revoke(revoke)) => revokes.push(revoke),
                Some(Entry::Spend(spend)) if spend.node != self.fleet.node => {
                    if !self.tell(FromFleet::SpentElsewhere(spend)) {
                        return None;
                    }
                }
                Some(Entry::Spend(_) | Entry::Node(_)) | None => {}
            }
        }
        let now = unix_ms(SystemTime::now());
        for change in self.view.relist(grants, revokes, now, *self.heard_ms) {
            if !self.tell(FromFleet::Change(change)) {
                return None;
            }
        }
        // What opened here while the fleet was away is spent fleet-wide now.
        while let Some((record, ttl)) = self.spends.later.first().cloned() {
            match record_spend(&mut client, self.keys, &record, ttl).await {
                Ok(None) => {}
                Ok(Some(node)) => log::warn!(
                    "fleet: {:?} opened here while etcd was away, and on {node} too",
                    record.spent
                ),
                Err(e) => return Some(error("recording a spend made while away")(e)),
            }
            self.spends.later.remove(0);
        }
        // What waited for the fleet is decided now.
        while let Some(waiting) = self.spends.waiting.pop() {
            if let Err(failure) = self.spend(&mut client, &waiting).await {
                self.spends.waiting.push(waiting);
                return failure;
            }
        }
        let mut watch = match client
            .watch(
                self.keys.root.clone(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1)
                        .with_prev_key()
                        .with_progress_notify(),
                ),
            )
            .await
        {
            Ok(watch) => watch,
            Err(e) => return Some(error("watching the fleet")(e)),
        };
        self.status.revision.store(revision, Ordering::Relaxed);
        self.status.connected.store(true, Ordering::Relaxed);
        if !self.tell(FromFleet::Online {
            endpoint: self.endpoint.to_owned(),
            revision,
        }) {
            return None;
        }
        let mut seen = beat;
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        loop {
            tokio::select! {
                message = watch.message() => {
                    let response = match message {
                        Ok(Some(response)) => response,
                        Ok(None) => return Some("the watch ended".into()),
                        Err(e) => return Some(error("watching the fleet")(e)),
                    };
                    if response.canceled() {
                        return Some(if response.compact_revision() > 0 {
                            format!("the watch's revision was compacted (to {}): listing anew", response.compact_revision())
                        } else {
                            format!("the watch was canceled: {}", response.cancel_reason())
                        });
                    }
                    if let Some(header) = response.header() {
                        self.status.revision.store(header.revision(), Ordering::Relaxed);
                    }
                    *self.heard_ms = unix_ms(SystemTime::now());
                    for event in response.events() {
                        let put = event.event_type() == EventType::Put;
                        let kv = if put { event.kv() } else { event.prev_kv() };
                        let Some(kv) = kv else { continue };
                        let Some(entry) = self.keys.decode(kv.key(), kv.value()) else { continue };
                        let now = unix_ms(SystemTime::now());
                        let change = match entry {
                            Entry::Grant(grant) if put => {
                                if grant.node != self.fleet.node {
                                    self.status.lag_ms.store(now.saturating_sub(grant.granted_ms), Ordering::Relaxed);
                                }
                                self.view.put_grant(grant, now)
                            }
                            Entry::Grant(grant) => {
                                self.view.delete_grant(grant.addr, &grant.rule);
                                None
                            }
                            Entry::Revoke(revoke) if put => Some(self.view.put_revoke(revoke)),
                            Entry::Revoke(revoke) => {
                                self.view.delete_revoke(revoke.addr, revoke.rule.as_deref());
                                None
                            }
                            Entry::Node(node) => {
                                if put && node.node == self.fleet.node {
                                    seen = seen.max(node.beat);
                                }
                                None
                            }
                            Entry::Spend(spend) => {
                                if put && spend.node != self.fleet.node
                                    && !self.tell(FromFleet::SpentElsewhere(spend))
                                {
                                    return None;
                                }
                                None
                            }
                        };
                        if let Some(change) = change
                            && !self.tell(FromFleet::Change(change))
                        {
                            return None;
                        }
                    }
                }
                message = from_daemon.recv() => {
                    let message = message?;
                    let locals = match message {
                        ToFleet::Granted(grant) => vec![grant],
                        ToFleet::Local(grants) => grants,
                        ToFleet::Fingerprint(print) => {
                            // Announced with the next heartbeat.
                            *self.fingerprint = print;
                            continue;
                        }
                        ToFleet::Spend { ticket, spent, ttl } => {
                            let waiting = Waiting {
                                ticket,
                                spent,
                                ttl,
                                deadline: Instant::now() + SPEND_PATIENCE,
                            };
                            if let Err(failure) = self.spend(&mut client, &waiting).await {
                                // It waits for the next member.
                                self.spends.waiting.push(waiting);
                                return failure;
                            }
                            continue;
                        }
                    };
                    let (publish, remove) = self.view.local(&locals, unix_ms(SystemTime::now()));
                    for change in remove {
                        if !self.tell(FromFleet::Change(change)) {
                            return None;
                        }
                    }
                    for grant in &publish {
                        if let Err(e) = publish_grant(&mut client, self.keys, grant).await {
                            return Some(error("publishing a grant")(e));
                        }
                        self.status.published.fetch_add(1, Ordering::Relaxed);
                    }
                }
                _ = heartbeat.tick() => {
                    if beat.saturating_sub(seen) >= STALLED_BEATS {
                        return Some(format!("the watch has not shown this host's last {STALLED_BEATS} heartbeats: it has stalled"));
                    }
                    beat += 1;
                    if let Err(e) = keeper.keep_alive().await {
                        return Some(error("renewing the node's lease")(e));
                    }
                    if let Err(e) = self.announce(&mut client, lease, beat).await {
                        return Some(error("writing a heartbeat")(e));
                    }
                }
                renewed = kept.message() => match renewed {
                    Ok(Some(renewed)) if renewed.ttl() > 0 => {}
                    Ok(Some(_)) => return Some("the node's lease expired".into()),
                    Ok(None) => return Some("the lease keep-alive ended".into()),
                    Err(e) => return Some(error("renewing the node's lease")(e)),
                },
            }
        }
    }

    /// Records a spend and tells the daemon the outcome; on an error,
    /// what to return (`Some` failure, `None` once the daemon is gone).
    async fn spend(
        &mut self,
        client: &mut Client,
        waiting: &Waiting,
    ) -> Result<(), Option<Failure>> {
        let record = SpendRecord {
            spent: waiting.spent.clone(),
            node: self.fleet.node.clone(),
            at_ms: unix_ms(SystemTime::now()),
        };
        let outcome = match record_spend(client, self.keys, &record, waiting.ttl).await {
            Ok(None) => SpendOutcome::Recorded,
            Ok(Some(node)) => SpendOutcome::Taken { node },
            Err(e) => return Err(Some(format!("recording a spend: {e}"))),
        };
        if self.tell(FromFleet::Spent {
            ticket: waiting.ticket,
            outcome,
        }) {
            Ok(())
        } else {
            Err(None)
        }
    }

    /// Writes this host's node key (heartbeat `beat`) under `lease`.
    async fn announce(
        &self,
        client: &mut Client,
        lease: i64,
        beat: u64,
    ) -> Result<(), etcd_client::Error> {
        let record = NodeRecord {
            node: self.fleet.node.clone(),
            fingerprint: self.fingerprint.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            beat,
            at_ms: unix_ms(SystemTime::now()),
        };
        client
            .put(
                self.keys.node(&self.fleet.node),
                encode(&record),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await?;
        Ok(())
    }

    /// Sends `message` to the daemon; false once it is gone.
    fn tell(&self, message: FromFleet) -> bool {
        if let FromFleet::Change(Change::Plant(_)) = &message {
            self.status.planted.fetch_add(1, Ordering::Relaxed);
        }
        self.to_daemon.send(message).is_ok()
    }
}

/// Revokes on every host of the fleet: the grants of `addr` (of `rule`
/// only, if given) made until now, and with `flows` their connections.
/// The grants' keys go, and a revoke record stays as long as any of them
/// could have lasted, so that a host away now undoes them when it is back.
pub async fn revoke(
    fleet: &Fleet,
    revoke: &RevokeRecord,
    memory: Duration,
) -> Result<usize, Failure> {
    let keys = Keys::new(&fleet.prefix);
    let mut client = connect_any(fleet).await?;
    let failed = |what: &'static str| move |e: etcd_client::Error| format!("{what}: {e}");
    let (grants, options) = match &revoke.rule {
        Some(rule) => (keys.grant(revoke.addr, rule), None),
        None => (
            keys.grants_of(revoke.addr),
            Some(GetOptions::new().with_prefix()),
        ),
    };
    let listed = client
        .get(grants.clone(), options)
        .await
        .map_err(failed("reading the grants"))?;
    let now = unix_ms(SystemTime::now());
    let longest_ms = listed
        .kvs()
        .iter()
        .filter_map(|kv| match keys.decode(kv.key(), kv.value()) {
            Some(Entry::Grant(grant)) => Some(grant.expires_ms.saturating_sub(now)),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    let ttl = longest_ms.div_ceil(1000).max(memory.as_secs()) + GRANT_KEY_MARGIN_SECS;
    let lease = client
        .lease_grant(i64::try_from(ttl).unwrap_or(i64::MAX), None)
        .await
        .map_err(failed("granting the revoke's lease"))?;
    let delete = match &revoke.rule {
        Some(_) => TxnOp::delete(grants, None),
        None => TxnOp::delete(grants, Some(DeleteOptions::new().with_prefix())),
    };
    let put = TxnOp::put(
        keys.revoke(revoke.addr, revoke.rule.as_deref()),
        encode(revoke),
        Some(PutOptions::new().with_lease(lease.id())),
    );
    // One transaction: no host sees the grants gone without the revoke.
    let txn = Txn::new().and_then(vec![delete, put]);
    client.txn(txn).await.map_err(failed("revoking"))?;
    Ok(listed.kvs().len())
}

/// The fleet's hosts, as their node keys say.
pub async fn hosts(fleet: &Fleet) -> Result<Vec<NodeRecord>, Failure> {
    let keys = Keys::new(&fleet.prefix);
    let mut client = connect_any(fleet).await?;
    let listed = client
        .get(keys.nodes(), Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|e| format!("listing the fleet's hosts: {e}"))?;
    let mut nodes: Vec<NodeRecord> = listed
        .kvs()
        .iter()
        .filter_map(|kv| match keys.decode(kv.key(), kv.value()) {
            Some(Entry::Node(node)) => Some(node),
            _ => None,
        })
        .collect();
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(nodes)
}
