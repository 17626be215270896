//! One client session, phase by phase: greet, authenticate, route, open the
//! backend session, answer the client, relay. Every phase before the relay
//! runs under the login deadline; the client hears OK only after the backend
//! has accepted the login, so packets are never merged or reordered across
//! the login/command boundary.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::net::TcpStream;
use tokio::time::{Instant as Deadline, timeout_at};
use tracing::{Instrument, field, info, info_span, warn};

use super::limits::UserClaim;
use super::profile::ServerProfile;
use super::{Shared, State, authn, change_user, codes, kill, relay, reuse};
use crate::auth::{self, Sha1Password};
use crate::backend::{self, BackendError, BackendSession, LoginRequest};
use crate::conn::{ConnError, PacketStream};
use crate::metrics::Outcome;
use crate::policy::RouteError;
use crate::pool::{BackendLease, Pool};
use crate::protocol::{
    CapabilityFlags, ErrPacket, Greeting, HandshakeResponse, MariaDbCapabilities,
    NATIVE_PASSWORD_PLUGIN, SSL_REQUEST_LEN,
};

/// Largest packet a client may send before it is logged in.
const MAX_CLIENT_LOGIN_PACKET: usize = 16 * 1024;

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

/// A client that has logged in and the backend session it is bound to.
struct Established {
    registration: kill::Registration,
    backend: BackendSession,
    lease: BackendLease,
    _user: UserClaim,
    ctx: SessionCtx,
}

/// What a logged-in session keeps for a COM_CHANGE_USER: little, since
/// every idle session holds it.
#[derive(Debug)]
pub(super) struct SessionCtx {
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
    pending: super::limits::PendingClaim,
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
        let Some(ready) = Box::pin(log_in(socket, peer, shared, policy, started, pending)).await
        else {
            return;
        };
        let Ready {
            registration,
            mut client_tcp,
            mut client_rest,
            mut backend_tcp,
            mut backend_rest,
            mut lease,
            mut user,
            timeouts,
            mut ctx,
        } = ready;
        let metrics = &shared.metrics;
        let place = |lease: &BackendLease, ctx: &SessionCtx| kill::Place {
            backend: lease.backend().addr,
            thread: ctx.backend_thread,
        };
        registration.moved(place(&lease, &ctx));
        let (mut from_client, mut to_client) = (0, 0);
        let end = loop {
            let options = relay::Options {
                stop: relay::Stop {
                    drain: &shared.stopping,
                    now: &shared.force_stop,
                },
                timeouts,
                metrics,
                kills: (&shared.sessions, lease.backend().addr),
                keep_backend: ctx.pool.idle_sessions > 0,
            };
            let (stats, after) =
                relay::relay(client_tcp, client_rest, backend_tcp, backend_rest, options).await;
            from_client += stats.from_client;
            to_client += stats.to_client;
            if stats.end == relay::End::IdleTimeout {
                metrics
                    .idle_closed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let (client, rest, backend) = match after {
                relay::After::ChangeUser {
                    client,
                    client_rest,
                    backend,
                } => (client, client_rest, backend),
                relay::After::Quit { backend } => {
                    let quitting = reuse::Quitting {
                        stream: backend,
                        thread_id: ctx.backend_thread,
                        nonce: &ctx.backend_nonce,
                        capabilities: ctx.backend_caps,
                        shape: ctx.shape(),
                    };
                    reuse::keep(quitting, lease.backend().addr, &ctx.pool, metrics).await;
                    break stats.end;
                }
                relay::After::Close => break stats.end,
            };
            let bound = change_user::Bound {
                client,
                client_rest: rest,
                backend,
                backend_rest: bytes::BytesMut::new(),
                lease,
                user,
            };
            // Boxed: rare, and its state is large.
            let Some(next) =
                Box::pin(change_user::handle(bound, &mut ctx, shared, peer, policy)).await
            else {
                break relay::End::ChangeUser;
            };
            client_tcp = next.client;
            client_rest = next.client_rest;
            backend_tcp = next.backend;
            backend_rest = next.backend_rest;
            lease = next.lease;
            user = next.user;
            registration.moved(place(&lease, &ctx));
        };
        info!(
            duration_ms = started.elapsed().as_millis() as u64,
            bytes_from_client = from_client,
            bytes_to_client = to_client,
            end = end.as_str(),
            "session finished"
        );
    }
    .instrument(span)
    .await
}

/// A logged-in session, ready to relay.
struct Ready {
    registration: kill::Registration,
    client_tcp: crate::conn::Stream,
    client_rest: bytes::BytesMut,
    backend_tcp: crate::conn::Stream,
    backend_rest: bytes::BytesMut,
    lease: BackendLease,
    user: UserClaim,
    timeouts: relay::Timeouts,
    ctx: SessionCtx,
}

/// Runs the login under its deadline and answers a refusal; `None` when the
/// session is over.
async fn log_in(
    socket: TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    policy: Option<&str>,
    started: Instant,
    pending: super::limits::PendingClaim,
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
    // The login is over, either way: no longer pending.
    drop(pending);
    let established = match outcome {
        Ok(Ok(e)) => e,
        Ok(Err(LoginError::Deny {
            err,
            seq,
            outcome,
            reason,
        })) => {
            metrics.login(outcome);
            // Reasons hold client-chosen text (user names): escaped, so a
            // name cannot start a log line of its own.
            warn!(
                code = err.code,
                "login refused: {}",
                crate::logging::escape_controls(&reason)
            );
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(1),
                client.write(seq, &err.encode()),
            )
            .await;
            return None;
        }
        Ok(Err(LoginError::Close(reason))) => {
            metrics.login(Outcome::Abandoned);
            warn!(
                "login abandoned: {}",
                crate::logging::escape_controls(&reason)
            );
            return None;
        }
        Err(_) => {
            metrics.login(Outcome::Timeout);
            // Silent connections that hold a login slot count as failures.
            throttle_failure(shared, &state, peer);
            warn!("login timed out; closing");
            return None;
        }
    };
    metrics.login(Outcome::Ok);
    metrics.login_latency.observe(started.elapsed());
    let Established {
        registration,
        backend,
        lease,
        _user,
        ctx,
    } = established;
    let (client_tcp, client_rest) = client.into_parts();
    let (backend_tcp, backend_rest) = backend.stream.into_parts();
    // Nothing of the login is kept while the session relays, not even the
    // state it logged in with (a reload frees what it replaced).
    Some(Ready {
        registration,
        client_tcp,
        client_rest,
        backend_tcp,
        backend_rest,
        lease,
        user: _user,
        ctx,
        timeouts: relay::Timeouts::from_config(&state.config),
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
    // The greeting's connection id, held until the session ends.
    let registration = shared.sessions.reserve();
    let id = registration.id();
    greet(
        client,
        &profile,
        &nonce,
        id,
        state.tls.is_some(),
        state.config.auth.default_plugin.name(),
    )
    .await?;
    let auth = authenticate(client, peer, shared, state, &nonce).await?;
    let span = tracing::Span::current();
    let user = auth.response.username.as_str();
    span.record("user", user);
    let claim = claim_user(shared, state, user, auth.next_seq)?;
    let pool = route(
        shared,
        state,
        policy,
        (user, auth.response.database.as_deref()),
        peer,
        auth.next_seq,
    )
    .await?;
    span.record("pool", pool.name.as_str());
    let request = LoginRequest {
        client: &auth.response,
        password: &auth.password,
        offered: profile.capabilities,
        offered_mariadb: profile.mariadb_capabilities,
    };
    let (lease, mut backend) = open_backend(
        &pool,
        &request,
        auth.next_seq,
        (state, &shared.metrics),
        deadline,
    )
    .await?;
    span.record("backend", field::display(lease.backend().addr));
    // The backend accepted the login: only now are the address's failures
    // forgotten.
    shared.throttle.success(client_key(state, peer));
    // Only now does the client hear OK: the backend's own OK (its status
    // flags and session state), in the client's sequence.
    client
        .write(auth.next_seq, &backend.ok)
        .await
        .map_err(|e| LoginError::client(e.into()))?;
    let ctx = SessionCtx {
        backend_thread: backend.thread_id,
        nonce,
        capabilities: auth.response.capabilities,
        mariadb_capabilities: auth.response.mariadb_capabilities,
        max_packet_size: auth.response.max_packet_size,
        charset: auth.response.charset,
        offered: profile.capabilities,
        offered_mariadb: profile.mariadb_capabilities,
        pool,
        backend_nonce: std::mem::take(&mut backend.nonce).into_boxed_slice(),
        backend_caps: backend.capabilities,
    };
    Ok(Established {
        registration,
        backend,
        lease,
        _user: claim,
        ctx,
    })
}

/// Phase 1: the greeting, with a fresh nonce and the backends' identity.
async fn greet(
    client: &mut PacketStream,
    profile: &ServerProfile,
    nonce: &[u8; auth::NONCE_LEN],
    connection_id: u32,
    tls: bool,
    plugin: &str,
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
        auth_plugin: plugin.into(),
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
    let host = peer.ip().to_string();
    let user = response.username.as_str();
    // Blocked since the connection was accepted: no more guesses.
    throttle_gate(shared, state, peer, seq + 1)?;
    let stored = lookup_account(shared, state, user, peer);
    let verdict = authn::exchange(
        client,
        shared,
        state,
        stored.as_ref(),
        authn::Attempt {
            user,
            client_plugin: response
                .capabilities
                .contains(CapabilityFlags::CLIENT_PLUGIN_AUTH)
                .then(|| {
                    response
                        .auth_plugin
                        .as_deref()
                        .unwrap_or(NATIVE_PASSWORD_PLUGIN)
                }),
            data: response.auth_response.clone(),
            can_switch: response
                .capabilities
                .contains(CapabilityFlags::CLIENT_PLUGIN_AUTH),
            nonce,
            seq: seq + 1,
        },
    )
    .await?;
    let next_seq = verdict.seq;
    let used_password = verdict.used_password;
    match verdict.password {
        Some(_) if state.config.requires_tls(user) && !client.is_tls() => {
            // As a wrong password would be answered: nothing tells the
            // client more than that the login failed.
            Err(LoginError::deny(
                codes::access_denied(user, &host, used_password),
                next_seq,
                Outcome::AccessDenied,
                format!("user '{user}' must log in over TLS"),
            ))
        }
        Some(password) => Ok(Authenticated {
            password,
            next_seq,
            response,
        }),
        None => {
            throttle_failure(shared, state, peer);
            Err(LoginError::deny(
                codes::access_denied(user, &host, used_password),
                next_seq,
                Outcome::AccessDenied,
                format!("access denied for user '{user}'"),
            ))
        }
    }
}

/// The stored verifier of `user` for a client at `peer`: from the file,
/// else loaded from the primary. A user not known yet has the accounts read
/// again in the background (rate-limited): the answer does not wait for
/// it, so how long a login takes does not tell whether the user exists.
pub(super) fn lookup_account(
    shared: &Shared,
    state: &State,
    user: &str,
    peer: SocketAddr,
) -> Option<crate::auth::PasswordHash> {
    if let Some(h) = state.users.get(user) {
        return Some(h.clone());
    }
    state.config.users.from_backend()?;
    let found = shared.loaded_users.get(user, peer.ip());
    if found.is_none() {
        shared.loaded_users.request_refresh();
    }
    found
}

/// Counts a session of `user`, or the ERR 1226 (at `seq`) if it has as
/// many as it may.
pub(super) fn claim_user(
    shared: &Shared,
    state: &State,
    user: &str,
    seq: u8,
) -> Result<UserClaim, LoginError> {
    shared
        .user_sessions
        .claim(user, state.config.user_limit(user))
        .map_err(|limit| {
            LoginError::deny(
                codes::user_limit(user, limit),
                seq,
                Outcome::UserLimit,
                format!("user '{user}' has {limit} sessions already"),
            )
        })
}

/// The address `peer` is counted by in the throttle and the pending
/// logins.
pub(super) fn client_key(state: &State, peer: SocketAddr) -> std::net::IpAddr {
    super::limits::client_key(peer.ip(), state.config.throttle.ipv6_prefix)
}

/// Refuses (ERR 1129 at `seq`) an address the throttle blocks: checked at
/// every authentication, the first login's and COM_CHANGE_USER's, not only
/// when the connection was accepted.
pub(super) fn throttle_gate(
    shared: &Shared,
    state: &State,
    peer: SocketAddr,
    seq: u8,
) -> Result<(), LoginError> {
    match shared
        .throttle
        .check(client_key(state, peer), Instant::now())
    {
        super::limits::Verdict::Allow => Ok(()),
        super::limits::Verdict::Blocked(left) => Err(LoginError::deny(
            codes::host_blocked(&peer.ip().to_string(), left),
            seq,
            Outcome::Throttled,
            "client address blocked after failed logins",
        )),
    }
}

/// Counts a failed login of `peer` towards the throttle.
pub(super) fn throttle_failure(shared: &Shared, state: &State, peer: SocketAddr) {
    if shared.throttle.failure(
        client_key(state, peer),
        &state.config.throttle,
        Instant::now(),
    ) {
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
pub(super) async fn route(
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

/// A kept backend session of `addr` logged in to for `request`, if the
/// pool keeps them and one fits: `Some(Ok)` to use, `Some(Err)` the
/// backend's refusal of the user (`BackendError::Refused`, as a new login
/// would have been refused), `None` to open a new session (none kept, or
/// the kept one failed).
async fn take_kept(
    pool: &Pool,
    addr: std::net::SocketAddr,
    request: &LoginRequest<'_>,
    metrics: &crate::metrics::Metrics,
    deadline: Deadline,
) -> Option<Result<BackendSession, BackendError>> {
    if pool.idle_sessions == 0 {
        return None;
    }
    let shape = reuse::Shape::of(
        (request.client.capabilities, request.offered),
        (request.client.mariadb_capabilities, request.offered_mariadb),
    );
    while let Some(kept) = reuse::take(addr, shape, pool.tls.as_ref(), metrics) {
        match timeout_at(deadline, reuse::take_over(kept, request)).await {
            Ok(Ok(session)) => {
                metrics.backend_reused.fetch_add(1, Ordering::Relaxed);
                return Some(Ok(session));
            }
            Ok(Err(BackendError::NotAtRest(why))) => {
                metrics.backend_not_at_rest.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(backend = %addr, why, "a kept backend session was not at rest; closed");
            }
            Ok(Err(e)) => match e.into_refusal() {
                Ok(err) => return Some(Err(BackendError::Refused(err))),
                Err(e) => {
                    info!(backend = %addr, error = %e, "a kept backend session failed; opening a new one");
                    return None;
                }
            },
            Err(_) => {
                info!(backend = %addr, "a kept backend session did not answer; opening a new one");
                return None;
            }
        }
    }
    None
}

/// Phase 4: a backend of the pool, by the pool's balancing order; a backend
/// that cannot be reached is skipped for the next one.
pub(super) async fn open_backend(
    pool: &Pool,
    request: &LoginRequest<'_>,
    seq: u8,
    (state, metrics): (&State, &crate::metrics::Metrics),
    deadline: Deadline,
) -> Result<(BackendLease, BackendSession), LoginError> {
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
        let result = match take_kept(pool, backend.addr, request, metrics, attempt_deadline).await {
            Some(kept) => kept,
            None => timeout_at(
                attempt_deadline,
                backend::open(backend.addr, request, pool.tls.as_ref()),
            )
            .await
            .unwrap_or(Err(BackendError::Timeout)),
        };
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
