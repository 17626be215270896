//! [`Control`] for the running server: what `/status` and `/metrics` show
//! and what reload, drain and policy upload do.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::{Value, json};
use tracing::info;

use super::Shared;
use super::state::State;
use crate::admin::Control;
use crate::metrics::{self, Outcome, header, label};
use crate::pool::{Backend, Lag, Pools};

impl Control for Shared {
    fn token_digest(&self) -> Option<[u8; 32]> {
        self.state().admin_token.as_deref().copied()
    }

    fn status(&self) -> Value {
        status(self)
    }

    fn metrics(&self) -> String {
        render_metrics(self)
    }

    async fn reload(self: &Arc<Self>) -> Result<(), String> {
        Shared::reload(self).await
    }

    fn set_drain(&self, addr: SocketAddr, drain: bool) -> Option<()> {
        let backend = self.registry.alive().into_iter().find(|b| b.addr == addr)?;
        if backend.set_drain(drain) {
            info!(backend = %addr, drain, "backend drain set from the admin endpoint");
        }
        Some(())
    }

    fn has_policy(&self, name: &str) -> bool {
        self.state().named.contains_key(name)
    }

    fn health(&self) -> crate::admin::Health {
        Shared::health(self)
    }

    fn drain_instance(&self) -> bool {
        Shared::drain_instance(self)
    }

    async fn swap_policy(
        self: &Arc<Self>,
        bytes: Vec<u8>,
        which: Option<String>,
    ) -> Result<String, String> {
        Shared::swap_policy(self, bytes, None, which).await
    }
}

fn lag_json(lag: Lag) -> (Value, &'static str) {
    match lag {
        Lag::Unknown => (Value::Null, "unknown"),
        Lag::NotReplica => (Value::Null, "not-replica"),
        Lag::Stopped => (Value::Null, "stopped"),
        Lag::Seconds(s) => (json!(s), "running"),
    }
}

/// The `/status` document.
fn status(shared: &Shared) -> Value {
    let state = shared.state();
    let configured: Vec<SocketAddr> = state.pools.backends().map(|b| b.addr).collect();
    let backends: Vec<Value> = shared
        .registry
        .alive()
        .iter()
        .map(|b| {
            let (lag, replication) = lag_json(b.lag());
            json!({
                "addr": b.addr.to_string(),
                "state": if b.is_up() { "up" } else { "down" },
                "draining": b.is_draining(),
                "configured": configured.contains(&b.addr),
                "sessions": b.active_sessions(),
                "read_only": b.read_only(),
                "lag_seconds": lag,
                "replication": replication,
                "gtid_slave_pos": b.gtid_pos().map(|p| p.to_string()),
                "last_error": b.last_error(),
            })
        })
        .collect();
    let pools: Vec<Value> = state
        .pools
        .iter()
        .map(|p| {
            let s = state.pools.status_of(p);
            let cfg = &state.config.pools[&p.name];
            json!({
                "name": p.name,
                // As the configuration spells them.
                "balance": cfg.balance,
                "role": cfg.role,
                "max_lag": cfg.max_lag,
                "writer": cfg.writer.as_ref().map(|w| w.get_ref()),
                "reader": cfg.reader.as_ref().map(|r| r.get_ref()),
                "when_all_down": cfg.when_all_down,
                "healthy_backends": s.healthy_backends,
                "total_backends": s.total_backends,
                "active_sessions": s.active_sessions,
                "max_lag_ms": s.max_lag_ms,
                "backends": p.members.iter().map(|m| json!({
                    "addr": m.backend.addr.to_string(),
                    "weight": m.weight,
                    "max_connections": m.max_connections,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let users: Vec<Value> = shared
        .user_sessions
        .snapshot()
        .into_iter()
        .map(|(user, n)| json!({ "user": user, "sessions": n }))
        .collect();
    let logins: serde_json::Map<String, Value> = Outcome::ALL
        .iter()
        .map(|o| (o.label().to_owned(), json!(shared.metrics.logins(*o))))
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": shared.uptime().as_secs(),
        "shutting_down": shared.is_shutting_down(),
        "ready": shared.health().unready.is_none(),
        "draining": shared.health().unready == Some("draining"),
        "fleet": shared.fleet.as_ref().map(|f| f.status()),
        "sessions": shared.metrics.sessions.load(std::sync::atomic::Ordering::Relaxed),
        "policy": { "name": state.policy.name(), "sha256": state.policy.hash() },
        "policies": state.named.iter().map(|(n, p)| (n.clone(), json!({ "name": p.name(), "sha256": p.hash() }))).collect::<serde_json::Map<_, _>>(),
        "pools": pools,
        "backends": backends,
        "users": users,
        "accounts_loaded_from_primary": shared.loaded_users.len(),
        "throttled_addresses": shared.throttle.blocked(std::time::Instant::now()),
        "logins": logins,
        "statements": shared.metrics.split.status(),
        "multiplex": shared.metrics.multiplex.status(),
    })
}

/// Everything for `/metrics`.
fn render_metrics(shared: &Shared) -> String {
    let mut out = String::with_capacity(8192);
    shared.metrics.render(&mut out);
    let state = shared.state();
    render_backends(&mut out, &shared.registry.alive(), &state.pools);
    render_pools(&mut out, &state.pools);
    render_users_and_clients(&mut out, shared);
    render_policies(&mut out, &state);
    render_fleet(&mut out, shared);
    metrics::gauge(
        &mut out,
        "switchyard_ready",
        "1 while the instance takes new clients (GET /ready answers 200), 0 once draining or stopping.",
        i64::from(shared.health().unready.is_none()),
    );
    metrics::gauge(
        &mut out,
        "switchyard_uptime_seconds",
        "Time since the process started serving.",
        shared.uptime().as_secs() as i64,
    );
    out
}

/// The fleet store's figures, with `[fleet]`.
fn render_fleet(out: &mut String, shared: &Shared) {
    let Some(fleet) = &shared.fleet else {
        return;
    };
    metrics::gauge(
        out,
        "switchyard_fleet_store_up",
        "1 while the fleet store is connected; 0 while limits are this instance's own.",
        i64::from(fleet.store.is_up()),
    );
    metrics::counter(
        out,
        "switchyard_fleet_store_errors_total",
        "Fleet store commands that failed (unreachable, timed out, refused); the instance decided locally.",
        fleet.store.errors(),
    );
    metrics::gauge(
        out,
        "switchyard_fleet_instances",
        "Live instances of the fleet at the last lease renewal (this one included).",
        fleet.peers() as i64,
    );
}

/// A gauge with one line per backend (of those `f` gives a value for).
fn per_backend(
    out: &mut String,
    backends: &[Arc<Backend>],
    name: &str,
    help: &str,
    f: &dyn Fn(&Backend) -> Option<f64>,
) {
    header(out, name, help, "gauge");
    for b in backends {
        if let Some(v) = f(b) {
            let _ = writeln!(out, "{name}{{backend=\"{}\"}} {v}", b.addr);
        }
    }
}

/// The backends still in use: health, draining, sessions, replication.
fn render_backends(out: &mut String, backends: &[Arc<Backend>], pools: &Pools) {
    per_backend(
        out,
        backends,
        "switchyard_backend_up",
        "Whether the backend passes its health checks (1) or not (0).",
        &|b| Some(if b.is_up() { 1.0 } else { 0.0 }),
    );
    per_backend(
        out,
        backends,
        "switchyard_backend_draining",
        "Whether the backend takes no new sessions (drained, or removed from the configuration).",
        &|b| {
            let configured = pools.backend(b.addr).is_some();
            Some(if b.is_draining() || !configured {
                1.0
            } else {
                0.0
            })
        },
    );
    per_backend(
        out,
        backends,
        "switchyard_backend_sessions",
        "Sessions relayed to the backend (including logins in progress).",
        &|b| Some(f64::from(b.active_sessions())),
    );
    per_backend(
        out,
        backends,
        "switchyard_backend_replication_lag_seconds",
        "Replication lag as last measured (absent when unknown or stopped).",
        &|b| match b.lag() {
            Lag::Seconds(s) => Some(s as f64),
            Lag::NotReplica => Some(0.0),
            _ => None,
        },
    );
    per_backend(
        out,
        backends,
        "switchyard_backend_read_only",
        "The backend's read_only as last read (absent when unknown).",
        &|b| b.read_only().map(|r| if r { 1.0 } else { 0.0 }),
    );
}

/// The pools: their healthy backends.
fn render_pools(out: &mut String, pools: &Pools) {
    header(
        out,
        "switchyard_pool_healthy_backends",
        "Backends of the pool that qualify for a new session.",
        "gauge",
    );
    for p in pools.iter() {
        let _ = writeln!(
            out,
            "switchyard_pool_healthy_backends{{pool=\"{}\"}} {}",
            label(&p.name),
            pools.status_of(p).healthy_backends
        );
    }
    header(
        out,
        "switchyard_pool_lagging_backends",
        "Backends of the pool that are up but behind its max_lag (or whose replication stopped or cannot be read): they take no new sessions.",
        "gauge",
    );
    for p in pools.iter() {
        let _ = writeln!(
            out,
            "switchyard_pool_lagging_backends{{pool=\"{}\"}} {}",
            label(&p.name),
            p.lagging()
        );
    }
}

/// Sessions per user, accounts loaded, client addresses throttled.
fn render_users_and_clients(out: &mut String, shared: &Shared) {
    header(
        out,
        "switchyard_user_sessions",
        "Sessions per user.",
        "gauge",
    );
    for (user, n) in shared.user_sessions.snapshot() {
        let _ = writeln!(
            out,
            "switchyard_user_sessions{{user=\"{}\"}} {n}",
            label(&user)
        );
    }
    metrics::gauge(
        out,
        "switchyard_accounts_loaded",
        "Accounts loaded from the primary (users.source = \"backend\").",
        shared.loaded_users.len() as i64,
    );
    metrics::gauge(
        out,
        "switchyard_throttled_addresses",
        "Client addresses blocked after failed logins.",
        shared.throttle.blocked(std::time::Instant::now()) as i64,
    );
}

/// The policies in use: the one of `listen`, and the named ones.
fn render_policies(out: &mut String, state: &State) {
    header(
        out,
        "switchyard_policy_info",
        "The routing policy in use.",
        "gauge",
    );
    let policies = std::iter::once(("", &state.policy))
        .chain(state.named.iter().map(|(n, p)| (n.as_str(), p)));
    for (which, p) in policies {
        let _ = writeln!(
            out,
            "switchyard_policy_info{{policy=\"{}\",name=\"{}\",sha256=\"{}\"}} 1",
            label(which),
            label(p.name()),
            p.hash()
        );
    }
}
