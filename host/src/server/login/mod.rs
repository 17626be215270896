//! The login gate: what the first login and COM_CHANGE_USER share.
//!
//! [`admit`] is the one path from a client's credentials to a routed
//! session: the throttle's gate, the account lookup, the authentication
//! exchange ([`exchange`]), the TLS rule, the user's session limit and the
//! policy's route. [`backend`] opens (or takes over) the backend session.
//! Dependencies flow one way: `session` and `change_user` use this module,
//! which uses neither.

mod backend;
mod exchange;
mod services;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tracing::warn;

use super::limits::UserClaim;
use super::{Shared, State, codes, reuse};
use crate::auth::{self, Sha1Password};
use crate::conn::Stream;
use crate::conn::{ConnError, PacketStream};
use crate::metrics::Outcome;
use crate::policy::RouteError;
use crate::pool::{BackendLease, Pool};
use crate::protocol::{CapabilityFlags, ErrPacket, MariaDbCapabilities};

pub(super) use backend::open_backend;
pub(super) use exchange::Attempt;
#[cfg(test)]
pub(in crate::server) use services::Known;
pub(in crate::server) use services::Services;

/// Why a login (or a COM_CHANGE_USER) did not complete.
#[derive(Debug)]
pub(super) enum LoginError {
    /// Answer the client with `err` at sequence id `seq`, then close.
    Deny {
        err: ErrPacket,
        seq: u8,
        outcome: Outcome,
        reason: String,
    },
    /// Close without an answer (the client broke the protocol or left).
    Close(String),
}

impl LoginError {
    pub(super) fn deny(
        err: ErrPacket,
        seq: u8,
        outcome: Outcome,
        reason: impl Into<String>,
    ) -> Self {
        Self::Deny {
            err,
            seq,
            outcome,
            reason: reason.into(),
        }
    }

    pub(super) fn client(e: ConnError) -> Self {
        match e {
            ConnError::Closed => Self::Close("client closed the connection during login".into()),
            e => Self::Close(format!("client: {e}")),
        }
    }
}

/// What a logged-in session keeps for a COM_CHANGE_USER: little, since
/// every idle session holds it.
#[derive(Debug)]
pub(in crate::server) struct SessionCtx {
    /// The backend session's thread id.
    pub backend_thread: u32,
    /// The nonce the client's login (and its COM_CHANGE_USER) answers.
    pub nonce: [u8; auth::NONCE_LEN],
    /// The client's capabilities, as it logged in.
    pub capabilities: CapabilityFlags,
    /// Its MariaDB extended capabilities.
    pub mariadb_capabilities: MariaDbCapabilities,
    /// Its max packet size.
    pub max_packet_size: u32,
    /// Its character set.
    pub charset: u8,
    /// What Switchyard offered it.
    pub offered: CapabilityFlags,
    /// The MariaDB extended capabilities offered.
    pub offered_mariadb: MariaDbCapabilities,
    /// The pool the session is in.
    pub pool: Arc<Pool>,
    /// The backend session's greeting nonce.
    pub backend_nonce: Box<[u8]>,
    /// The backend session's capabilities.
    pub backend_caps: CapabilityFlags,
}

impl SessionCtx {
    /// The shape of this client session, for a kept backend session.
    pub(super) fn shape(&self) -> reuse::Shape {
        reuse::Shape::of(
            (self.capabilities, self.offered),
            (self.mariadb_capabilities, self.offered_mariadb),
        )
    }
}

/// A session bound to its backend: what the relay runs on.
#[derive(Debug)]
pub(in crate::server) struct Bound {
    /// The client's stream.
    pub client: Stream,
    /// Bytes read from the client and not relayed yet.
    pub client_rest: BytesMut,
    /// The backend's stream.
    pub backend: Stream,
    /// Bytes read from the backend and not relayed yet.
    pub backend_rest: BytesMut,
    /// The backend's count of this session.
    pub lease: BackendLease,
    /// The user's count of this session.
    pub user: UserClaim,
}

impl Bound {
    /// Both streams, with what was read from each and not relayed yet.
    pub(in crate::server) fn new(
        (client, backend): (PacketStream, PacketStream),
        lease: BackendLease,
        user: UserClaim,
    ) -> Self {
        let (client, client_rest) = client.into_parts();
        let (backend, backend_rest) = backend.into_parts();
        Self {
            client,
            client_rest,
            backend,
            backend_rest,
            lease,
            user,
        }
    }
}

/// Where a login comes from: the proxy, the state in force, the client's
/// address and the listener's policy.
#[derive(Clone, Copy)]
pub(super) struct Gate<'a> {
    pub shared: &'a Shared,
    pub state: &'a State,
    pub peer: SocketAddr,
    pub policy: Option<&'a str>,
}

/// A client the gate let through: its password (as SHA1, for the
/// backend), its count against the user's limit, the pool the policy
/// chose, and the sequence id of the packet that answers it.
pub(super) struct Admitted {
    pub password: Sha1Password,
    pub claim: UserClaim,
    pub pool: Arc<Pool>,
    pub seq: u8,
}

/// The one admission path of both logins: refused if the address is
/// blocked; the exchange against the stored verifier (an unknown user goes
/// through the same exchange); a wrong password, or a right one from a
/// client without TLS where the account requires it, is ERR 1045 and counts
/// towards the throttle (the same answer and the same count, so neither
/// tells a right password from a wrong one); then the user's session limit
/// and the policy's route for `db`. What it needs of the proxy comes
/// through `services` ([`Gate`] in the running proxy).
pub(super) async fn admit(
    client: &mut PacketStream,
    services: &impl Services,
    attempt: Attempt<'_>,
    db: Option<&str>,
) -> Result<Admitted, LoginError> {
    let user = attempt.user;
    if let Some(left) = services.blocked() {
        // Blocked since the connection was accepted: no more guesses.
        return Err(LoginError::deny(
            codes::host_blocked(&services.host(), left),
            attempt.seq,
            Outcome::Throttled,
            "client address blocked after failed logins",
        ));
    }
    let known = services.lookup(user);
    let account = (known.stored.as_ref(), known.plugin);
    let verdict = exchange::exchange(client, services, account, attempt).await?;
    let seq = verdict.seq;
    let password = match verdict.password {
        Some(p) if !known.require_tls || client.is_tls() => p,
        right => {
            services.failed().await;
            let reason = if right.is_some() {
                format!("user '{user}' must log in over TLS")
            } else {
                format!("access denied for user '{user}'")
            };
            return Err(LoginError::deny(
                codes::access_denied(user, &services.host(), verdict.used_password),
                seq,
                Outcome::AccessDenied,
                reason,
            ));
        }
    };
    tracing::Span::current().record("user", user);
    let claim = services.claim(user, known.limit).await.map_err(|limit| {
        LoginError::deny(
            codes::user_limit(user, limit),
            seq,
            Outcome::UserLimit,
            format!("user '{user}' has {limit} sessions already"),
        )
    })?;
    let pool = services.route(user, db, seq).await?;
    Ok(Admitted {
        password,
        claim,
        pool,
        seq,
    })
}

/// The stored verifier of `user` (not in the file) for a client at `peer`,
/// loaded from the primary. A user not known yet has the accounts read
/// again in the background (rate-limited): the answer does not wait for
/// it, so how long a login takes does not tell whether the user exists.
fn lookup_loaded(
    shared: &Shared,
    state: &State,
    user: &str,
    peer: SocketAddr,
) -> Option<crate::auth::PasswordHash> {
    state.config.users.from_backend()?;
    let found = shared.loaded_users.get(user, peer.ip());
    if found.is_none() {
        shared.loaded_users.request_refresh();
    }
    found
}

/// The address `peer` is counted by in the throttle and the pending
/// logins.
pub(super) fn client_key(state: &State, peer: SocketAddr) -> std::net::IpAddr {
    super::limits::client_key(peer.ip(), state.config.throttle.ipv6_prefix)
}

/// Counts a failed login of `peer` towards the throttle, here and in the
/// fleet store.
pub(super) async fn throttle_failure(shared: &Shared, state: &State, peer: SocketAddr) {
    let key = client_key(state, peer);
    let here = shared
        .throttle
        .failure(key, &state.config.throttle, Instant::now());
    let fleet = super::fleet::failure(shared, key).await;
    if here || fleet {
        shared
            .metrics
            .throttle_blocks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        warn!(
            client_ip = %peer.ip(),
            failures = state.config.throttle.max_failures,
            block_ms = state.config.throttle.block_ms,
            "client address blocked after repeated failed logins"
        );
    }
}

/// Phase 3: the policy chooses the pool.
async fn route(
    shared: &Shared,
    state: &State,
    policy_name: Option<&str>,
    (user, db): (&str, Option<&str>),
    peer: SocketAddr,
    seq: u8,
) -> Result<Arc<Pool>, LoginError> {
    let policy = state.policy_named(policy_name);
    let metrics = &shared.metrics;
    let started = Instant::now();
    let answer = policy.route(user, db, &peer.to_string()).await;
    metrics.policy_latency.observe(started.elapsed());
    let counted = |c: &std::sync::atomic::AtomicU64| {
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    };
    // A failure is routed per `on_error`, when it names a pool.
    // `why` goes to the log; the client is told only what the host itself
    // knows (`told`), never the engine's error text.
    let on_error = |why: String, told: &str| {
        counted(&metrics.policy_errors);
        match state
            .config
            .policy_config(policy_name)
            .on_error_pool()
            .and_then(|p| state.pools.get(p))
        {
            Some(pool) => {
                warn!(
                    "policy {} failed: {}; routed to pool '{}' per on_error",
                    policy.name(),
                    crate::logging::escape_controls(&why),
                    pool.name
                );
                Ok(Arc::clone(pool))
            }
            None => Err(LoginError::deny(
                codes::policy_failed(user, told),
                seq,
                Outcome::PolicyFailed,
                format!("policy {} failed: {why}", policy.name()),
            )),
        }
    };
    match answer {
        Ok(name) => match state.pools.get(&name) {
            Some(pool) => Ok(Arc::clone(pool)),
            None => {
                let why = format!("it chose pool '{name}', which is not configured");
                on_error(why.clone(), &why)
            }
        },
        Err(RouteError::Refused(text)) => {
            counted(&metrics.policy_refusals);
            Err(LoginError::deny(
                codes::policy_refused(&text),
                seq,
                Outcome::PolicyRefused,
                format!("policy {} refused: {text}", policy.name()),
            ))
        }
        Err(RouteError::Failed(why)) => {
            let told = if why == "did not answer in time" {
                "it did not answer in time"
            } else {
                "it failed (the proxy's log says why)"
            };
            on_error(why, told)
        }
    }
}

#[cfg(test)]
mod tests;
