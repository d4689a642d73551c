//! The fleet's records in etcd, one request or transaction each:
//! connecting to a member, publishing a grant, recording a spend if no
//! host has, revoking for the whole fleet, listing its hosts. The session
//! follows the fleet with them; `revoke` and `status` use them once.

use std::time::{Duration, SystemTime};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, PutOptions,
    TlsOptions, Txn, TxnOp, TxnOpResponse,
};

use super::record::{
    Entry, GrantRecord, Keys, NodeRecord, RevokeRecord, SpendRecord, encode, meet, unix_ms,
};
use crate::config::fleet::Fleet;

/// How long connecting to a member may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one request may take (a member without a leader fails sooner:
/// requests require one).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How long after a grant's end its key stays (the lease is only tidying).
const GRANT_KEY_MARGIN_SECS: u64 = 5;
/// Why a request or the session failed, for the operator.
pub type Failure = String;

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

/// Revokes on every host of the fleet: the grants that meet the revoke's
/// address or prefix (of its rule only, if it names one) made until now,
/// and with `flows` their connections. The grants' keys go, and a revoke
/// record stays as long as any of them could have lasted, so that a host
/// away now undoes them when it is back.
pub async fn revoke(
    fleet: &Fleet,
    revoke: &RevokeRecord,
    memory: Duration,
) -> Result<usize, Failure> {
    let keys = Keys::new(&fleet.prefix);
    let mut client = connect_any(fleet).await?;
    let failed = |what: &'static str| move |e: etcd_client::Error| format!("{what}: {e}");
    // Every grant, to find those of prefixes holding the address too.
    let listed = client
        .get(keys.grants(), Some(GetOptions::new().with_prefix()))
        .await
        .map_err(failed("reading the grants"))?;
    let now = unix_ms(SystemTime::now());
    let revoked: Vec<(Vec<u8>, GrantRecord)> = listed
        .kvs()
        .iter()
        .filter_map(|kv| match keys.decode(kv.key(), kv.value()) {
            Some(Entry::Grant(grant))
                if meet(revoke.net(), grant.net())
                    && revoke.rule.as_deref().is_none_or(|r| r == grant.rule) =>
            {
                Some((kv.key().to_vec(), grant))
            }
            _ => None,
        })
        .collect();
    let longest_ms = revoked
        .iter()
        .map(|(_, grant)| grant.expires_ms.saturating_sub(now))
        .max()
        .unwrap_or(0);
    let ttl = longest_ms.div_ceil(1000).max(memory.as_secs()) + GRANT_KEY_MARGIN_SECS;
    let lease = client
        .lease_grant(i64::try_from(ttl).unwrap_or(i64::MAX), None)
        .await
        .map_err(failed("granting the revoke's lease"))?;
    let mut ops: Vec<TxnOp> = revoked
        .iter()
        .map(|(key, _)| TxnOp::delete(key.clone(), None))
        .collect();
    ops.push(TxnOp::put(
        keys.revoke(revoke.net(), revoke.rule.as_deref()),
        encode(revoke),
        Some(PutOptions::new().with_lease(lease.id())),
    ));
    // One transaction: no host sees the grants gone without the revoke.
    client
        .txn(Txn::new().and_then(ops))
        .await
        .map_err(failed("revoking"))?;
    Ok(revoked.len())
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
