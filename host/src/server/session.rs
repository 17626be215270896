//! One client session, phase by phase: greet, authenticate, route, open the
//! backend session, answer the client, relay. Every phase before the relay
//! runs under the login deadline; the client hears OK only after the backend
//! has accepted the login, so packets are never merged or reordered across
//! the login/command boundary.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;
use tokio::time::{Instant as Deadline, timeout_at};
use tracing::{Instrument, field, info, info_span, warn};

use super::limits::UserClaim;
use super::profile::ServerProfile;
use super::{Shared, State, codes, relay};
use crate::auth::{self, Sha1Password};
use crate::backend::{self, BackendError, BackendSession, LoginRequest};
use crate::conn::{ConnError, PacketStream};
use crate::metrics::Outcome;
use crate::policy::RouteError;
use crate::pool::{BackendLease, Pool};
use crate::protocol::{
    AuthSwitchRequest, CapabilityFlags, ErrPacket, Greeting, HandshakeResponse,
    NATIVE_PASSWORD_PLUGIN, SSL_REQUEST_LEN,
};

/// Largest packet a client may send before it is logged in.
const MAX_CLIENT_LOGIN_PACKET: usize = 16 * 1024;

/// Why a login did not complete.
#[derive(Debug)]
enum LoginError {
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
    fn deny(err: ErrPacket, seq: u8, outcome: Outcome, reason: impl Into<String>) -> Self {
        Self::Deny {
            err,
            seq,
            outcome,
            reason: reason.into(),
        }
    }

    fn client(e: ConnError) -> Self {
        match e {
            ConnError::Closed => Self::Close("client closed the connection during login".into()),
            e => Self::Close(format!("client: {e}")),
        }
    }
}

/// A client that has logged in and the backend session it is bound to.
struct Established {
    backend: BackendSession,
    lease: BackendLease,
    _user: UserClaim,
}

/// The client's verified login.
struct Authenticated {
    response: HandshakeResponse,
    password: Sha1Password,
    next_seq: u8,
}

/// Serves one client connection to its end.
pub(super) async fn serve(
    socket: TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    policy: Option<&str>,
) {
    let span = info_span!(
        "session",
        client = %peer,
        user = field::Empty,
        pool = field::Empty,
        backend = field::Empty
    );
    async move {
        let started = Instant::now();
        // Boxed: the login's state is freed once it is over, so that an
        // idle session's task holds only the relay's.
        let Some(ready) = Box::pin(log_in(socket, peer, shared, policy, started)).await else {
            return;
        };
        let Ready {
            client_tcp,
            client_rest,
            backend_tcp,
            backend_rest,
            lease,
            user,
            idle_timeout,
        } = ready;
        let metrics = &shared.metrics;
        let options = relay::Options {
            idle_timeout,
            metrics,
        };
        let stats = relay::relay(client_tcp, client_rest, backend_tcp, backend_rest, options).await;
        if stats.end == relay::IDLE_END {
            metrics
                .idle_closed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        // The backend and the user count this session until the relay is
        // over.
        drop((lease, user));
        info!(
            duration_ms = started.elapsed().as_millis() as u64,
            bytes_from_client = stats.from_client,
            bytes_to_client = stats.to_client,
            end = stats.end,
            "session finished"
        );
    }
    .instrument(span)
    .await
}

/// A logged-in session, ready to relay.
struct Ready {
    client_tcp: crate::conn::Stream,
    client_rest: bytes::BytesMut,
    backend_tcp: crate::conn::Stream,
    backend_rest: bytes::BytesMut,
    lease: BackendLease,
    user: UserClaim,
    idle_timeout: Option<std::time::Duration>,
}

/// Runs the login under its deadline and answers a refusal; `None` when the
/// session is over.
async fn log_in(
    socket: TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    policy: Option<&str>,
    started: Instant,
) -> Option<Ready> {
    let state = shared.state();
    let metrics = &shared.metrics;
    let deadline = Deadline::now() + state.config.login_timeout();
    let mut client = PacketStream::new(socket, MAX_CLIENT_LOGIN_PACKET);
    let outcome = timeout_at(
        deadline,
        login(&mut client, peer, shared, &state, policy, deadline),
    )
    .await;
    let established = match outcome {
        Ok(Ok(e)) => e,
        Ok(Err(LoginError::Deny {
            err,
            seq,
            outcome,
            reason,
        })) => {
            metrics.login(outcome);
            warn!(code = err.code, "login refused: {reason}");
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(1),
                client.write(seq, &err.encode()),
            )
            .await;
            return None;
        }
        Ok(Err(LoginError::Close(reason))) => {
            metrics.login(Outcome::Abandoned);
            warn!("login abandoned: {reason}");
            return None;
        }
        Err(_) => {
            metrics.login(Outcome::Timeout);
            warn!("login timed out; closing");
            return None;
        }
    };
    metrics.login(Outcome::Ok);
    metrics.login_latency.observe(started.elapsed());
    let Established {
        backend,
        lease,
        _user,
    } = established;
    let (client_tcp, client_rest) = client.into_parts();
    let (backend_tcp, backend_rest) = backend.stream.into_parts();
    // Nothing of the login is kept while the session relays, not even the
    // state it logged in with (a reload frees what it replaced).
    Some(Ready {
        client_tcp,
        client_rest,
        backend_tcp,
        backend_rest,
        lease,
        user: _user,
        idle_timeout: match state.config.idle_timeout_ms {
            0 => None,
            ms => Some(std::time::Duration::from_millis(ms)),
        },
    })
}

async fn login(
    client: &mut PacketStream,
    peer: SocketAddr,
    shared: &Shared,
    state: &State,
    policy: Option<&str>,
    deadline: Deadline,
) -> Result<Established, LoginError> {
    let nonce = auth::generate_nonce();
    let profile = shared.profile.get();
    greet(
        client,
        &profile,
        &nonce,
        shared.connection_id(),
        state.tls.is_some(),
    )
    .await?;
    let auth = authenticate(client, peer, shared, state, &nonce).await?;
    let span = tracing::Span::current();
    let user = auth.response.username.as_str();
    span.record("user", user);
    let claim = shared
        .user_sessions
        .claim(user, state.config.user_limit(user))
        .map_err(|limit| {
            LoginError::deny(
                codes::user_limit(user, limit),
                auth.next_seq,
                Outcome::UserLimit,
                format!("user '{user}' has {limit} sessions already"),
            )
        })?;
    let pool = route(shared, state, policy, &auth, peer).await?;
    span.record("pool", pool.name.as_str());
    let (lease, backend) = open_backend(&pool, &auth, &profile, state, deadline).await?;
    span.record("backend", field::display(lease.backend().addr));
    // Only now does the client hear OK: the backend's own OK (its status
    // flags and session state), in the client's sequence.
    client
        .write(auth.next_seq, &backend.ok)
        .await
        .map_err(|e| LoginError::client(e.into()))?;
    Ok(Established {
        backend,
        lease,
        _user: claim,
    })
}

/// Phase 1: the greeting, with a fresh nonce and the backends' identity.
async fn greet(
    client: &mut PacketStream,
    profile: &ServerProfile,
    nonce: &[u8; auth::NONCE_LEN],
    connection_id: u32,
    tls: bool,
) -> Result<(), LoginError> {
    let mut capabilities = profile.capabilities;
    capabilities.set(CapabilityFlags::CLIENT_SSL, tls);
    let greeting = Greeting {
        server_version: profile.version.clone(),
        connection_id,
        auth_data: nonce.to_vec(),
        capabilities,
        charset: profile.charset,
        status: profile.status,
        mariadb_capabilities: profile.mariadb_capabilities,
        auth_plugin: NATIVE_PASSWORD_PLUGIN.into(),
    };
    client
        .write(0, &greeting.encode())
        .await
        .map_err(|e| LoginError::client(e.into()))
}

/// Phase 2: the handshake response, an auth switch when the client started
/// with another plugin, and the check against the stored hash.
async fn authenticate(
    client: &mut PacketStream,
    peer: SocketAddr,
    shared: &Shared,
    state: &State,
    nonce: &[u8; auth::NONCE_LEN],
) -> Result<Authenticated, LoginError> {
    let mut packet = client.read_seq(1).await.map_err(LoginError::client)?;
    // An SSLRequest: the TLS handshake, then the real response at seq 2.
    let mut seq = 1u8;
    if packet.payload.len() == SSL_REQUEST_LEN
        && packet.payload.len() >= 4
        && CapabilityFlags::from_bits_retain(u32::from_le_bytes([
            packet.payload[0],
            packet.payload[1],
            packet.payload[2],
            packet.payload[3],
        ]))
        .contains(CapabilityFlags::CLIENT_SSL)
    {
        let Some(tls) = &state.tls else {
            return Err(LoginError::Close(
                "client asked for TLS, which is not configured".into(),
            ));
        };
        client
            .start_tls(&tls.0)
            .await
            .map_err(|e| LoginError::Close(format!("TLS handshake failed: {e}")))?;
        seq = 2;
        packet = client.read_seq(seq).await.map_err(LoginError::client)?;
    }
    let response = HandshakeResponse::decode(&packet.payload)
        .map_err(|e| LoginError::Close(format!("bad handshake response: {e}")))?;
    let plugin = response
        .auth_plugin
        .as_deref()
        .unwrap_or(NATIVE_PASSWORD_PLUGIN);
    let (auth_data, next_seq) = if plugin == NATIVE_PASSWORD_PLUGIN {
        (response.auth_response.clone(), seq + 1)
    } else if response
        .capabilities
        .contains(CapabilityFlags::CLIENT_PLUGIN_AUTH)
    {
        let switch = AuthSwitchRequest {
            plugin: NATIVE_PASSWORD_PLUGIN.into(),
            data: nonce.to_vec(),
        };
        client
            .write(seq + 1, &switch.encode())
            .await
            .map_err(|e| LoginError::client(e.into()))?;
        let p = client.read_seq(seq + 2).await.map_err(LoginError::client)?;
        (p.payload.to_vec(), seq + 3)
    } else {
        return Err(LoginError::Close(format!(
            "client uses auth plugin '{plugin}' and cannot switch"
        )));
    };
    let host = peer.ip().to_string();
    let user = response.username.as_str();
    let stored = match state.users.get(user) {
        Some(h) => Some(h.clone()),
        None => match state.config.users.from_backend() {
            Some(t) => match shared.loaded_users.get(user) {
                Some(h) => Some(h),
                // Perhaps created since the last refresh: read the accounts
                // again (at most every `min_refresh_ms`) and look again.
                None => {
                    let min = std::time::Duration::from_millis(t.min_refresh_ms);
                    // Boxed: a rare path whose large future would otherwise
                    // size every session's task.
                    Box::pin(shared.loaded_users.refresh_if_due(state, min)).await;
                    shared.loaded_users.get(user)
                }
            },
            None => None,
        },
    };
    let verified = match &stored {
        Some(stored) => auth::verify_native(stored, nonce, &auth_data),
        None => {
            auth::verify_unknown_user(nonce, &auth_data);
            None
        }
    };
    match verified {
        Some(_) if state.config.requires_tls(user) && !client.is_tls() => {
            // As a wrong password would be answered: nothing tells the
            // client more than that the login failed.
            Err(LoginError::deny(
                codes::access_denied(user, &host, !auth_data.is_empty()),
                next_seq,
                Outcome::AccessDenied,
                format!("user '{user}' must log in over TLS"),
            ))
        }
        Some(password) => {
            shared.throttle.success(peer.ip());
            Ok(Authenticated {
                password,
                next_seq,
                response,
            })
        }
        None => {
            if shared
                .throttle
                .failure(peer.ip(), &state.config.throttle, Instant::now())
            {
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
            Err(LoginError::deny(
                codes::access_denied(user, &host, !auth_data.is_empty()),
                next_seq,
                Outcome::AccessDenied,
                format!("access denied for user '{user}'"),
            ))
        }
    }
}

/// Phase 3: the policy chooses the pool.
async fn route(
    shared: &Shared,
    state: &State,
    policy_name: Option<&str>,
    auth: &Authenticated,
    peer: SocketAddr,
) -> Result<Arc<Pool>, LoginError> {
    let user = auth.response.username.as_str();
    let db = auth.response.database.as_deref();
    let seq = auth.next_seq;
    let policy = state.policy_named(policy_name);
    let metrics = &shared.metrics;
    let started = Instant::now();
    let answer = policy.route(user, db, &peer.to_string()).await;
    metrics.policy_latency.observe(started.elapsed());
    let counted = |c: &std::sync::atomic::AtomicU64| {
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    };
    // A failure is routed per `on_error`, when it names a pool.
    let on_error = |why: String| {
        counted(&metrics.policy_errors);
        match state
            .config
            .policy_config(policy_name)
            .on_error_pool()
            .and_then(|p| state.pools.get(p))
        {
            Some(pool) => {
                warn!(
                    "policy {} failed: {why}; routed to pool '{}' per on_error",
                    policy.name(),
                    pool.name
                );
                Ok(Arc::clone(pool))
            }
            None => Err(LoginError::deny(
                codes::policy_failed(user, &why),
                seq,
                Outcome::PolicyFailed,
                format!("policy {} failed: {why}", policy.name()),
            )),
        }
    };
    match answer {
        Ok(name) => match state.pools.get(&name) {
            Some(pool) => Ok(Arc::clone(pool)),
            None => on_error(format!("it chose pool '{name}', which is not configured")),
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
        Err(RouteError::Failed(why)) => on_error(why),
    }
}

/// Phase 4: a backend of the pool, by the pool's balancing order; a backend
/// that cannot be reached is skipped for the next one.
async fn open_backend(
    pool: &Pool,
    auth: &Authenticated,
    offered: &ServerProfile,
    state: &State,
    deadline: Deadline,
) -> Result<(BackendLease, BackendSession), LoginError> {
    let request = LoginRequest {
        client: &auth.response,
        password: &auth.password,
        offered: offered.capabilities,
        offered_mariadb: offered.mariadb_capabilities,
    };
    let seq = auth.next_seq;
    let mut tried = 0;
    for candidate in pool.candidates() {
        let now = Deadline::now();
        if now >= deadline {
            break;
        }
        let Some(lease) = pool.lease(&candidate) else {
            // It reached its max_connections meanwhile.
            continue;
        };
        tried += 1;
        let backend = &candidate.backend;
        let attempt_deadline = deadline.min(now + state.config.connect_timeout());
        let result = timeout_at(
            attempt_deadline,
            backend::open(backend.addr, &request, pool.tls.as_ref()),
        )
        .await
        .unwrap_or(Err(BackendError::Timeout));
        match result {
            Ok(session) => return Ok((lease, session)),
            Err(e) if e.is_backend_fault() => {
                if backend.mark_failed(format!("login attempt: {e}")) {
                    warn!(backend = %backend.addr, error = %e, "backend failed a login; out of service until its checks pass; trying the next one");
                } else {
                    info!(backend = %backend.addr, error = %e, "backend still failing; trying the next one");
                }
            }
            Err(BackendError::Refused(err)) => {
                let reason = format!(
                    "backend {} refused: {} {}",
                    backend.addr, err.code, err.message
                );
                return Err(LoginError::deny(err, seq, Outcome::BackendRefused, reason));
            }
            Err(e) => {
                return Err(LoginError::deny(
                    codes::backend_unsupported(&e.to_string()),
                    seq,
                    Outcome::BackendUnsupported,
                    format!("backend {}: {e}", backend.addr),
                ));
            }
        }
    }
    Err(LoginError::deny(
        codes::no_backend(&pool.name, tried),
        seq,
        Outcome::NoBackend,
        format!("no backend of pool '{}' available", pool.name),
    ))
}
