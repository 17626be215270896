//! This instance's part in a fleet (`[fleet]`): the store's connection,
//! the loop that renews this instance's lease with its session counts and
//! policy digests and brings in the blocks other instances made, and what
//! the login gate asks of the store.
//!
//! Local state stays the truth of this instance: the store adds the
//! others'. When it is unreachable every decision is local (the log and
//! `switchyard_fleet_store_up` say so once); when it returns, this
//! instance's blocks and counts are published again.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tracing::{info, warn};

use super::Shared;
use crate::fleet::{Failure, Peer, Settings, Store};

/// How often blocks made elsewhere are fetched.
const BLOCKS_EVERY: Duration = Duration::from_millis(250);

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The store, its connection task until it is spawned, and what the last
/// lease renewal saw of the fleet.
pub struct Fleet {
    /// The client.
    pub store: Store,
    task: Mutex<Option<Task>>,
    lease: Duration,
    peers: Mutex<Vec<Peer>>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet").field("store", &self.store).finish()
    }
}

impl Fleet {
    /// The fleet of `config`, if it has a `[fleet]` table.
    pub fn of(config: &crate::config::Config) -> anyhow::Result<Option<Self>> {
        let Some(f) = &config.fleet else {
            return Ok(None);
        };
        let instance = f.instance_name();
        let (store, task) = Store::new(Settings {
            url: f.store.get_ref().expose(),
            password: f.password.as_ref().map(|p| p.expose().as_str()),
            instance: &instance,
            key_prefix: &f.key_prefix,
            timeout: Duration::from_millis(f.timeout_ms),
            lease: Duration::from_millis(f.lease_ms),
        })
        .map_err(anyhow::Error::msg)?;
        Ok(Some(Self {
            store,
            task: Mutex::new(Some(Box::pin(task))),
            lease: Duration::from_millis(f.lease_ms),
            peers: Mutex::default(),
        }))
    }

    /// The `/status` part.
    pub fn status(&self) -> Value {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let instances: Vec<Value> = peers
            .iter()
            .map(|p| {
                let info: Value = serde_json::from_str(&p.info).unwrap_or(Value::Null);
                json!({ "instance": p.instance, "info": info })
            })
            .collect();
        json!({
            "store": self.store.shown(),
            "up": self.store.is_up(),
            "instance": self.store.instance(),
            "lease_ms": self.lease.as_millis() as u64,
            "instances": instances,
        })
    }

    /// Live instances the last renewal saw.
    pub fn peers(&self) -> usize {
        self.peers.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Runs the store's connection and the sync loop (on the control thread's
/// event loop), until the process stops.
pub(super) async fn run(shared: Arc<Shared>) {
    let Some(fleet) = &shared.fleet else {
        return;
    };
    let task = fleet.task.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(task) = task {
        tokio::spawn(task);
    }
    sync(&shared, fleet).await;
}

/// Every [`BLOCKS_EVERY`]: the blocks made elsewhere; every third of the
/// lease: the lease renewed. On the store's return: this instance's blocks
/// published, the lease renewed at once.
async fn sync(shared: &Shared, fleet: &Fleet) {
    let mut latest_block_end = 0i64;
    let mut next_refresh = tokio::time::Instant::now();
    let mut was_up = false;
    let mut said_policies = String::new();
    loop {
        tokio::time::sleep(BLOCKS_EVERY).await;
        let store = &fleet.store;
        let up = store.is_up();
        if up && !was_up {
            publish_blocks(shared, store).await;
            next_refresh = tokio::time::Instant::now();
            // Everything in force again: blocks made while this instance
            // could not see the store end before later ones if their
            // `block_ms` was shorter.
            latest_block_end = 0;
        }
        was_up = up;
        if !up {
            continue;
        }
        if let Ok((blocks, latest)) = store.blocks_after(latest_block_end).await {
            latest_block_end = latest;
            let now = Instant::now();
            for (ip, left) in blocks {
                if let Ok(ip) = ip.parse::<IpAddr>()
                    && shared.throttle.block(ip, left, now)
                {
                    info!(client_ip = %ip, blocked_for_ms = left.as_millis() as u64, "client address blocked by another instance of the fleet");
                }
            }
        }
        if tokio::time::Instant::now() >= next_refresh {
            next_refresh = tokio::time::Instant::now() + fleet.lease / 3;
            if let Ok(peers) = store
                .refresh(fleet.lease, &info(shared), &counts(shared))
                .await
            {
                let policies = differing_policies(&peers);
                if policies != said_policies {
                    if !policies.is_empty() {
                        warn!(policies = %policies, "instances of the fleet run different policies");
                    }
                    said_policies = policies;
                }
                *fleet.peers.lock().unwrap_or_else(|p| p.into_inner()) = peers;
            }
        }
    }
}

/// What this instance publishes in its lease: version, start, policies.
fn info(shared: &Shared) -> String {
    let state = shared.state();
    let mut policies = serde_json::Map::new();
    policies.insert("".into(), json!(state.policy.hash()));
    for name in state.named.keys() {
        policies.insert(name.clone(), json!(state.policy_named(Some(name)).hash()));
    }
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": shared.uptime().as_secs(),
        "policies": policies,
    })
    .to_string()
}

/// `policy name: digests` for every policy whose digest differs between
/// live instances, or "".
fn differing_policies(peers: &[Peer]) -> String {
    let mut by_name: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for p in peers {
        let Ok(v) = serde_json::from_str::<Value>(&p.info) else {
            continue;
        };
        if let Some(policies) = v["policies"].as_object() {
            for (name, digest) in policies {
                by_name.entry(name.clone()).or_default().insert(
                    digest
                        .as_str()
                        .unwrap_or_default()
                        .chars()
                        .take(12)
                        .collect(),
                );
            }
        }
    }
    by_name
        .into_iter()
        .filter(|(_, d)| d.len() > 1)
        .map(|(name, d)| {
            let name = if name.is_empty() {
                "[policy]".into()
            } else {
                name
            };
            format!("{name}: {}", d.into_iter().collect::<Vec<_>>().join(" / "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// This instance's sessions of users with a limit.
fn counts(shared: &Shared) -> Vec<(String, u32)> {
    let state = shared.state();
    shared
        .user_sessions
        .snapshot()
        .into_iter()
        .filter(|(user, _)| state.config.user_limit(user).is_some())
        .collect()
}

/// Publishes the blocks this instance holds (made while the store was
/// away, or before it came).
async fn publish_blocks(shared: &Shared, store: &Store) {
    for (ip, left) in shared.throttle.blocks(Instant::now()) {
        if store.publish_block(&ip.to_string(), left).await.is_err() {
            return;
        }
    }
}

/// Counts a failed login of `key` in the store; a block it reached
/// (here or elsewhere) applies here at once. True when that blocked the
/// address here.
pub(super) async fn failure(shared: &Shared, key: IpAddr) -> bool {
    let Some(fleet) = &shared.fleet else {
        return false;
    };
    let t = shared.state().config.throttle.clone();
    if t.max_failures == 0 {
        return false;
    }
    match fleet
        .store
        .failure(
            &key.to_string(),
            Duration::from_millis(t.window_ms),
            t.max_failures,
            Duration::from_millis(t.block_ms),
        )
        .await
    {
        Ok(Failure::Blocked(left)) => shared.throttle.block(key, left, Instant::now()),
        Ok(Failure::Counted) | Err(_) => false,
    }
}

/// A login of `key` succeeded: its failures are forgotten fleet-wide.
pub(super) fn success(shared: &Shared, key: IpAddr) {
    if let Some(fleet) = &shared.fleet {
        fleet.store.success(&key.to_string());
    }
}

/// Counts a session of `user` (limit `limit`) in the store too, once this
/// instance counted it: `Err(limit)` when the fleet holds as many. An
/// unreachable store leaves the decision to this instance's own count.
pub(super) async fn claim(
    shared: &Shared,
    claim: &mut super::limits::UserClaim,
    user: &str,
    limit: Option<u32>,
) -> Result<(), u32> {
    let (Some(fleet), Some(limit)) = (&shared.fleet, limit) else {
        return Ok(());
    };
    match fleet.store.claim(user, limit).await {
        Ok(Ok(_)) => {
            claim.counted_in(fleet.store.clone());
            Ok(())
        }
        Ok(Err(_)) => Err(limit),
        Err(_) => Ok(()),
    }
}
