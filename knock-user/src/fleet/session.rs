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

use etcd_client::{Client, EventType, GetOptions, PutOptions, WatchOptions};
use tokio::sync::mpsc;

use super::{
    messages::{FleetStatus, FromFleet, SpendOutcome, ToFleet},
    record::{Entry, Keys, NodeRecord, SpendRecord, Spent, encode, hex, unix_ms},
    store::{Failure, connect, publish_grant, record_spend},
    view::{Change, View},
};
use crate::config::fleet::{Fleet, OfflineSpend};

/// How often this host rewrites its node key and renews its lease; its
/// heartbeats come back on the watch, or the watch has stalled.
pub const HEARTBEAT: Duration = Duration::from_millis(500);
/// Heartbeats written but not seen back before the watch counts as stalled.
const STALLED_BEATS: u64 = 6;
/// The node key's lease: a host gone this long drops out of `status`.
const NODE_TTL_SECS: i64 = 10;
/// Waits between attempts, doubling up to the last.
const BACKOFF: [Duration; 4] = [
    Duration::from_millis(100),
    Duration::from_millis(300),
    Duration::from_secs(1),
    Duration::from_secs(2),
];

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
    let instance = instance_id();
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
            instance: &instance,
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

/// A run's `NodeRecord::instance`: 64 random bits, hex.
fn instance_id() -> String {
    let mut bytes = [0u8; 8];
    // Without randomness, the time tells runs apart well enough.
    if getrandom::fill(&mut bytes).is_err() {
        bytes = unix_ms(SystemTime::now()).to_be_bytes();
    }
    hex(&bytes)
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
    /// This run's `NodeRecord::instance`.
    instance: &'a str,
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
        let mut clash_told = false;
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
                                self.view.delete_revoke(revoke.net(), revoke.rule.as_deref());
                                None
                            }
                            Entry::Node(node) => {
                                if put && node.node == self.fleet.node {
                                    if node.instance == self.instance {
                                        seen = seen.max(node.beat);
                                    } else if !clash_told {
                                        clash_told = true;
                                        log::error!(
                                            "fleet: another host announces itself as node `{}` too: every host needs a `node` of its own (each skips spends it thinks are its own)",
                                            node.node
                                        );
                                    }
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
            instance: self.instance.to_owned(),
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
